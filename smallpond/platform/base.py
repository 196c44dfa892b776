"""The base platform: launches executor processes as plain subprocesses of this process.

A platform knows how to start ``num_nodes`` copies of a Python program somewhere (here: on this
machine) and how to stop them. It knows nothing about jobs, queues or tasks; the queue backend
(:mod:`smallpond.execution.executors.queue`) decides what to start.

Invariants:

* :meth:`Platform.start_job` returns one id per launched process group, and every id it returned
  can be polled (:meth:`Platform.poll_job`) and stopped (:meth:`Platform.stop_job`): no launch is
  left without a handle (upstream's MPI launcher returned none, so its jobs could not be stopped).
* Each launched process gets ``SP_EXECUTORS_ON_HOST`` (how many executors this launch put on the
  host), so executors sharing a machine split its CPUs instead of each taking all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime
from typing import Dict, List, Optional, Sequence

from smallpond.common import logger
from smallpond.import_path import worker_import_path

#: extra options every platform understands (others are warned about and ignored)
KNOWN_EXTRA_OPTS = ("log_path",)


class Platform:
    """Starts executor processes as plain subprocesses on this machine.

    Example::

        platform = Platform()
        ids = platform.start_job(2, "-m", ["smallpond.execution.driver", "executor", "--job_id", job_id])
        ...
        for i in ids:
            platform.stop_job(i)
    """

    #: the name :func:`smallpond.platform.get_platform` knows this platform by
    name = "base"

    def __init__(self) -> None:
        self._procs: Dict[str, subprocess.Popen] = {}
        self._logs: Dict[str, object] = {}

    @staticmethod
    def is_available() -> bool:
        """Whether this platform can be picked automatically (the base platform never is)."""
        return False

    # -- launching -------------------------------------------------------------------------------
    def start_job(
        self,
        num_nodes: int,
        entrypoint: str,
        args: Sequence[str],
        envs: Optional[Dict[str, str]] = None,
        extra_opts: Optional[Dict[str, object]] = None,
    ) -> List[str]:
        """Start ``num_nodes`` processes ``python entrypoint *args``; returns their ids.

        Args:
            num_nodes: how many processes.
            entrypoint: the script to run; ``"-m"`` runs the module named by ``args[0]``.
            args: its arguments.
            envs: environment variables set for the processes (on top of this one's).
            extra_opts: ``log_path``: append the processes' stdout and stderr to this file
                (default: inherit this process's). Other keys are launcher-specific.
        """
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {num_nodes!r}")
        opts = self._check_extra_opts(extra_opts)
        env = self._environment(envs, num_nodes)
        ids = []
        for _ in range(num_nodes):
            ids.append(self._popen([sys.executable, entrypoint, *args], env, opts.get("log_path")))
        return ids

    def _check_extra_opts(self, extra_opts: Optional[Dict[str, object]]) -> Dict[str, object]:
        opts = dict(extra_opts or {})
        unknown = sorted(k for k in opts if k not in KNOWN_EXTRA_OPTS + self.extra_opts_names())
        if unknown:
            logger.warning("{}: ignoring launcher options it does not know: {}", type(self).__name__, unknown)
        return opts

    def extra_opts_names(self) -> tuple:
        """Launcher-specific keys of ``extra_opts`` (none for the base platform)."""
        return ()

    @staticmethod
    def _environment(envs: Optional[Dict[str, str]], on_host: int) -> Dict[str, str]:
        env = dict(os.environ)
        # the launcher's import path, so user modules the plan refers to resolve in executors
        env["PYTHONPATH"] = worker_import_path()
        env["SP_EXECUTORS_ON_HOST"] = str(on_host)
        env.update({str(k): str(v) for k, v in (envs or {}).items()})
        return env

    def _popen(self, cmd: List[str], env: Dict[str, str], log_path: Optional[str]) -> str:
        out = None
        if log_path:
            os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
            out = open(log_path, "ab")
        # own process group: a Ctrl-C in the launcher's terminal is for the launcher, which
        # stops its executors itself. Not a session of their own: the kernel's autogroup
        # scheduling shares CPU between sessions, so a new session would give the executors a
        # CPU share apart from the launcher's (as if they ran on another machine)
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None, **group
        )
        job_id = str(proc.pid)
        self._procs[job_id] = proc
        if out is not None:
            self._logs[job_id] = out
        logger.debug("{}: started {} as pid {}", type(self).__name__, " ".join(cmd), proc.pid)
        return job_id

    # -- watching and stopping -------------------------------------------------------------------
    def poll_job(self, job_id: str) -> Optional[int]:
        """The exit status of a launched job, or None while it runs."""
        proc = self._procs.get(str(job_id))
        if proc is None:
            raise KeyError(f"no job {job_id!r} was started by this platform")
        code = proc.poll()
        if code is not None:
            self._close_log(str(job_id))
        return code

    def wait_job(self, job_id: str, timeout: Optional[float] = None) -> Optional[int]:
        """Wait up to ``timeout`` seconds for a launched job; its exit status, or None if it still runs."""
        proc = self._procs.get(str(job_id))
        if proc is None:
            raise KeyError(f"no job {job_id!r} was started by this platform")
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close_log(str(job_id))
        return code

    def stop_job(self, job_id: str, grace: float = 5.0) -> None:
        """Stop a launched job and every process it started: SIGTERM, then SIGKILL after ``grace`` s.

        The processes are found by descent, not by process group: mpirun puts its ranks in
        groups of their own, so killing its group would orphan them.
        """
        import psutil

        proc = self._procs.get(str(job_id))
        try:
            leader = psutil.Process(proc.pid if proc is not None else int(job_id))
            procs = [leader] + leader.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, left = psutil.wait_procs(procs, timeout=grace)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=grace)
        if proc is not None:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            self._close_log(str(job_id))

    def _close_log(self, job_id: str) -> None:
        f = self._logs.pop(job_id, None)
        if f is not None:
            f.close()

    # -- defaults (upstream's Platform API) --------------------------------------------------------
    @staticmethod
    def default_job_id() -> str:
        return str(uuid.uuid4())

    @staticmethod
    def default_job_time() -> datetime:
        return datetime.now()

    @staticmethod
    def default_data_root() -> str:
        return os.path.expanduser(os.path.join("~", ".smallpond", "data"))

    @staticmethod
    def default_share_log_analytics() -> bool:
        return False

    @staticmethod
    def shared_log_root() -> Optional[str]:
        return None

    @staticmethod
    def grafana_homepath() -> Optional[str]:
        return None

    @staticmethod
    def default_memory_allocator() -> str:
        return "system"


class Manual(Platform):
    """Starts nothing: executors are started by hand (``python script.py executor --job_id ...``)."""

    name = "manual"

    def start_job(self, num_nodes, entrypoint, args, envs=None, extra_opts=None) -> List[str]:
        return []
