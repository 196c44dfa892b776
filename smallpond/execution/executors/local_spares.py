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

A kept worker that ends (after its wait, because a module of the user's was loaded, or killed) is
reaped at once, not left a zombie until the next job or the process's exit: a thread of this
module (:func:`_reap_ended`, running only while workers are kept) waits for their exits, told by
the kernel (a pidfd per worker; where there is none, it looks every :data:`REAP_POLL_SECONDS`), and
reaps each by its own PID (``Popen.poll``), never ``waitpid(-1)``, which would take the exit
status of another child of the user's code.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Dict, List, Optional

from smallpond.io.filesystem import close_quietly

if TYPE_CHECKING:  # (local imports this module)
    from smallpond.execution.executors.local import _Worker

#: how long the next job waits for a kept worker's answer to PARK (seconds; ~10-50 ms is usual)
PARK_ANSWER_SECONDS = 5.0
#: where the kernel cannot tell a worker's exit (no pidfd), how often the reaper looks (seconds)
REAP_POLL_SECONDS = 5.0
_lock = threading.Lock()
_key: Optional[tuple] = None
_spares: List["_Worker"] = []
_atexit = False
_reaper: Optional[threading.Thread] = None  # the thread reaping kept workers that end (module docstring)
_wake: List[int] = []  # the pipe that tells it the kept workers changed: [read end, write end]
_ending = False  # this process is exiting: no later job can take a worker (see process_ending)


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
        keep = enabled() and not _ending
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
        if _spares:
            _watch_ended()
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


def process_ending() -> None:
    """This process is exiting (a session shut down by ``atexit``): no later job can take a worker,
    so from now on none is kept, and those kept are stopped now. A worker parked then would let go
    of its job for nothing and, once it found its driver gone, tear its interpreter down (DuckDB,
    Arrow: ~0.3 s of CPU), holding the script's output pipes open meanwhile; and a handler that
    :func:`park` registers with ``atexit`` while ``atexit`` runs is never called."""
    global _ending
    _ending = True
    release()


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


def _watch_ended() -> None:
    """Have the reaper watch the kept workers as they are now (called holding ``_lock``)."""
    global _reaper
    if not _wake:
        _wake.extend(os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))
    if _reaper is None:
        _reaper = threading.Thread(target=_reap_ended, name="smallpond-kept-workers", daemon=True)
        _reaper.start()
    else:
        try:
            os.write(_wake[1], b"x")
        except BlockingIOError:
            pass  # woken already


def _reap_ended() -> None:
    """The reaper: until no worker is kept, wait for one of them to end (or for the kept workers
    to change), then reap those that ended, each by its PID, and forget them."""
    global _reaper
    import select

    while True:
        with _lock:
            watched = list(_spares)
            if not watched:
                _reaper = None
                return
        pidfds, exact = [], True
        for w in watched:
            try:
                pidfds.append(os.pidfd_open(w.pid))
            except (AttributeError, OSError):  # no pidfd (Linux before 5.3), or it ended and was reaped
                exact = False
        try:
            poller = select.poll()
            for fd in [_wake[0], *pidfds]:
                poller.register(fd, select.POLLIN)
            poller.poll(None if exact else int(REAP_POLL_SECONDS * 1000))
        finally:
            for fd in pidfds:
                os.close(fd)
        try:
            while os.read(_wake[0], 64):
                pass
        except BlockingIOError:
            pass
        with _lock:
            ended = [w for w in _spares if not w.alive()]  # (Popen.poll: waitpid of its own PID, reaping it)
            for w in ended:
                _spares.remove(w)
                w.close()


def _after_fork_in_child() -> None:
    # the kept workers are the parent's children, and the reaper thread and its pipe the parent's
    # (a child reading that pipe would take the parent's wake-ups): a child starts with none, its
    # copies of their descriptors closed, and a lock no thread of the parent may be holding
    global _lock, _reaper
    _lock = threading.Lock()
    _reaper = None
    for w in _spares:
        w.close()
    _spares.clear()
    for fd in _wake:
        close_quietly(fd)
    _wake.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
