"""Local workers kept idle between the jobs of one process, for the next job that would start the same ones.

A fresh worker interpreter spends ~0.35 s of CPU before its first task does real work (Python's
start and smallpond's imports, then DuckDB's and Arrow's in that task): on the critical path of
every job, and twice on two cores. DuckDB in the user's own process pays it once. So when a job
ends (:meth:`LocalExecutor.shutdown`), its idle workers are kept here instead of killed, and the
next job of this process whose workers would start exactly the same way takes them
(:func:`take`), telling each the new job (:data:`~smallpond.execution.worker.JOIN`).

A worker is kept only if it holds nothing a fresh one would not, once it has let go of its job:

- a fresh interpreter (a fork holds this process's state; it is cheap to start anyway);
- it never ran an attempt that may run the user's Python (:attr:`Task.runs_user_python`), and
  has no module of the user's loaded (a node's class: :func:`~smallpond.execution.module_kinds.user_modules`,
  checked by the worker, which ends instead of parking): no module, global or thread of the
  user's is in it, and no edited module can run as its old code; a SQL task of its own database
  is closed with its task, the shared database (and Arrow's cached memory) when it is parked
  (:func:`~smallpond.execution.worker.park`);
- idle, alive, and started for the same :func:`spawn_key`: interpreter, working directory,
  environment (with ``PYTHONPATH``, the driver's import path, and ``PYTHONHASHSEED``, the job's
  hash seed: :func:`~smallpond.execution.worker.worker_hash_seed`), the job's environment overrides
  and memory enforcement (set in a worker before DuckDB or Arrow is imported, or for good). A
  worker that joins a job restores the environment it started with and applies that job's
  overrides, log level, task log folder and stack-dump file.

Workers of one key are kept at a time (another key's are killed), each for at most
:data:`~smallpond.execution.worker.PARKED_SECONDS` (then it ends itself). They stay children of
this process: they die with it (``PR_SET_PDEATHSIG``), are killed at its exit, and their CPU time
is this process's children's. ``SP_KEEP_WORKERS=0`` turns keeping off.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:  # (local imports this module)
    from smallpond.execution.executors.local import _Worker

#: how long the next job waits for a kept worker's answer to PARK (seconds; ~10-50 ms is usual)
PARK_ANSWER_SECONDS = 5.0
_lock = threading.Lock()
_key: Optional[tuple] = None
_spares: List["_Worker"] = []
_atexit = False


def enabled() -> bool:
    from smallpond.common import SWITCH_OFF, env_switch

    return env_switch("SP_KEEP_WORKERS") not in SWITCH_OFF


def spawn_key(rt, env: dict) -> tuple:
    """What a worker started with ``env`` for ``rt``'s job keeps of the way it was started."""
    overrides = tuple(sorted((str(k), str(v)) for k, v in (rt.env_overrides or {}).items()))
    return (sys.executable, os.getcwd(), tuple(sorted(env.items())), overrides, bool(rt.enforce_memory_limit))


def park(workers: List["_Worker"], key: tuple) -> List["_Worker"]:
    """Keep those of ``workers`` that may be kept (see the module docstring): started for ``key``,
    the key a worker started now would have; returns the others, for the caller to stop."""
    from smallpond.errors import ParameterError
    from smallpond.execution.worker import PARK

    others = []
    try:
        keep = enabled()
    except ParameterError:  # (told when the job started its first worker)
        keep = False
    with _lock:
        if keep and key != _key:
            _replace_key(key)
        for w in workers:
            if not keep or w.key != key or w.user_code or w.inflight or w.asks or not w.alive():
                others.append(w)
                continue
            try:
                w.conn.send_bytes(PARK)
            except OSError:
                others.append(w)
                continue
            _spares.append(w)
        _watch_exit()
    return others


def take(key: tuple, rt_path: str, index: int) -> Optional["_Worker"]:
    """A kept worker started for ``key``, told to join the job of ``rt_path`` as worker ``index``;
    None if there is none (or keeping is off)."""
    from smallpond.execution.worker import JOIN, PARKED

    if not enabled():
        return None
    with _lock:
        if key != _key:
            return None
        while _spares:
            w = _spares.pop()
            try:  # it says it let go of its job; or it ended (no job came in time, a module of
                # the user's in it, killed), or it is stuck
                parked = w.conn.poll(PARK_ANSWER_SECONDS) and w.conn.recv_bytes() == PARKED
            except (EOFError, OSError):
                parked = False
            if not parked or not w.alive():
                _stop([w])
                continue
            try:
                w.conn.send_bytes(JOIN + pickle.dumps((rt_path, index)))
            except OSError:
                _stop([w])
                continue
            w.index = index
            w.jobs_joined += 1
            w.nodes_sent = set()  # the job's driver numbers its nodes from 0: the worker forgot them
            return w
    return None


def release() -> None:
    """Stop every kept worker."""
    with _lock:
        _replace_key(None)


def kept() -> Dict[int, int]:
    """The workers kept now: pid -> how many later jobs each has joined (benchmarks, tests)."""
    with _lock:
        return {w.pid: w.jobs_joined for w in _spares}


def _replace_key(key: Optional[tuple]) -> None:
    global _key
    _stop(_spares)
    _spares.clear()
    _key = key


def _stop(workers: List["_Worker"]) -> None:
    for w in workers:
        w.close()
        w.kill()
    for w in workers:
        try:
            w.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _watch_exit() -> None:
    global _atexit
    if not _atexit:
        atexit.register(release)
        _atexit = True
