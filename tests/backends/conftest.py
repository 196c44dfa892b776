"""The backends the contract suite runs against, and how each is driven.

A backend is described by a :class:`Backend`: the Driver arguments that select it, the
``smallpond.init`` arguments that select it, the environment its jobs run with, what it starts
around each job (:meth:`Backend.job_side`: executors started by hand), how to kill one of its
workers in the middle of a job, and its set-up/tear-down (a Ray cluster is started once per
session). Each backend lives in its own module (``backend_local.py``, ``backend_ray.py``,
``backend_queue.py``, ...) exposing ``make_backend(tmp_path_factory) -> Backend``, or raising
``pytest.skip`` with the reason when it cannot run here (CI installs everything, so nothing is
skipped there).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Dict, Iterator, List

import pytest

BACKEND_MODULES = ["local", "ray", "queue", "queue_byhand"]


class Backend:
    """How the contract suite drives one backend."""

    name = "base"

    def driver_args(self) -> List[str]:
        """Extra Driver arguments (after the mode) that run a job on this backend."""
        return []

    def driver_mode(self) -> str:
        return "scheduler"

    def init_kwargs(self) -> Dict[str, object]:
        """Extra ``smallpond.init`` arguments that run a session on this backend."""
        return {}

    def env(self) -> Dict[str, str]:
        """The environment of this backend's jobs (this process's, plus what the backend sets)."""
        return dict(os.environ)

    @contextlib.contextmanager
    def job_side(self, script: str, job_id: str, data_root: str) -> Iterator[None]:
        """Around one job (all its runs) of ``script``: start and check what the backend needs
        besides the driver (executors started by hand); fail if any of it outlives the job."""
        yield

    def kill_one_worker(self, driver_pid: int, job_root: str) -> str:
        """Kill one worker (process or node) running tasks of the job; returns what was killed."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _available() -> List[str]:
    out = []
    for name in BACKEND_MODULES:
        try:
            importlib.import_module(f"tests.backends.backend_{name}")
        except ImportError:
            continue
        out.append(name)
    return out


_cache: Dict[str, Backend] = {}


@pytest.fixture(
    scope="session",
    # backends that start a cluster or executor processes carry a marker (-m "not ray", "not queue")
    params=[
        pytest.param(n, marks=[pytest.mark.ray] if n == "ray" else [pytest.mark.queue] if n.startswith("queue") else [])
        for n in _available()
    ],
)
def backend(request, tmp_path_factory) -> Backend:
    name = request.param
    if name not in _cache:
        module = importlib.import_module(f"tests.backends.backend_{name}")
        _cache[name] = module.make_backend(tmp_path_factory)
        request.addfinalizer(_cache[name].close)
    return _cache[name]
