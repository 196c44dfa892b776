"""Start a local worker by forking the scheduler's process, when that is as good as a fresh one.

A worker is normally a fresh interpreter (``python -m smallpond.execution.worker``), which spends
~75 ms of CPU starting Python and importing smallpond's attempt machinery before it can take its
first task: on the critical path of every first result, since the scheduler waits for that task.
A process that has loaded nothing but the standard library, smallpond and the modules a worker
loads anyway holds no more than a fresh worker would, so a copy of it (``os.fork``) is a worker
that starts in about a millisecond.

:func:`fork_refusal` says whether this process is such a process (None) or why not; the
local executor forks only then and starts a fresh interpreter otherwise. The conditions, each
closing one known way a forked child differs from a fresh interpreter:

- Linux (``/proc``; elsewhere fork is unsafe with system frameworks), and ``SP_FORK_WORKERS`` is
  not ``0``;
- one OS thread (``/proc/self/task``): no lock can be held by a thread the child does not have
  (an import, an allocator, a library's pool); this rules out any library that started threads;
- every loaded module is of the standard library, smallpond, cloudpickle or psutil (what
  smallpond imports before its first worker starts), or one that every interpreter here loads
  at start-up (named by an ``import`` line of a ``.pth`` file in a site-packages folder, or
  ``sitecustomize``): no other library (DuckDB, Arrow, NumPy keep native state; any library may
  hold connections or files), and none of the user's own modules (a fresh worker imports them
  as their files are now: an edited file must not run as the old code);
- no handler on any stdlib logger, loguru not loaded and no job's log sinks open (their sinks
  are files and streams of this process), and ``sys.stdout``/``sys.stderr`` are the interpreter's own;
- no interpreter option on the command line (``-O``, ``-W``, ``-X``, ...: a fresh worker is
  started without them) and not the development mode.

In the child (:func:`_child`), before it runs :func:`~smallpond.execution.worker.worker_main`:
every file descriptor but 0-2 and the worker's two sockets is closed (as ``subprocess`` does: a pipe
or socket of the user's must not stay open in a worker), stdin reads ``/dev/null``, signal
handlers and warning filters are a fresh interpreter's (the script's ``warnings.simplefilter``
calls do not reach a fresh worker either), ``__main__`` is an empty module (in a fresh worker it is not the
user's script either: a function pickled by name from the script fails the same way; the
script's objects stay alive, held by its frame), the driver's objects are frozen for the garbage
collector (none is ever finalized in the child: a file's buffer is never flushed twice, a closed
descriptor never closed again) and collection is on, and it always
ends with ``os._exit`` (the driver's ``atexit`` handlers are never run). It dies with its parent
(``PR_SET_PDEATHSIG``) as a fresh worker does. Other process-wide settings the script changed
at run time (the recursion limit, the default socket timeout, ...) carry over, as in any fork. Ready long before its driver has set up the job
(log sinks, planning), it imports DuckDB and opens its shared database meanwhile, unless its
first task is there already.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, Optional

from smallpond.execution.module_kinds import MAINS, kind_of, library_roots
from smallpond.import_path import worker_import_path


def fork_refusal(modules: Optional[Dict[str, object]] = None, threads: Optional[int] = None) -> Optional[str]:
    """None if this process may fork a worker, else why not (see the module's docstring).

    ``modules`` and ``threads`` stand for ``sys.modules`` and this process's OS threads (tests).
    """
    from smallpond.common import SWITCH_OFF, env_switch

    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return f"not Linux ({sys.platform})"
    if env_switch("SP_FORK_WORKERS") in SWITCH_OFF:
        return "SP_FORK_WORKERS is off"
    if threads is None:
        try:
            threads = len(os.listdir("/proc/self/task"))
        except OSError as e:
            return f"cannot count threads: {e}"
    if threads != 1:
        return f"{threads} threads"
    modules = sys.modules if modules is None else modules
    if "loguru" in modules:
        return "loguru is loaded"
    if _job_log_open():
        return "the job's log sinks are open"
    roots = library_roots()
    for name, module in list(modules.items()):
        if kind_of(name, module, roots) is None:
            return f"module {name} ({getattr(module, '__file__', None)}) is not one a fresh worker would have"
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        return "sys.stdout or sys.stderr is replaced"
    options = _interpreter_options(getattr(sys, "orig_argv", []))
    if options or sys.flags.dev_mode:
        return f"interpreter options {options or ['-X dev']}"
    if "logging" in modules and _logging_configured(modules["logging"]):
        return "a stdlib logger has handlers"
    return None


def _job_log_open() -> bool:
    """Whether smallpond's logger holds sinks written without loguru (a running job's console and
    log file, see :mod:`~smallpond.execution.joblog`): a file of this process a child must not write."""
    from smallpond.common import _SmallpondLogger

    return bool(_SmallpondLogger._plain)


def _interpreter_options(orig_argv) -> list:
    """The options given to the interpreter itself (``python -O -W error script.py``: ``-O``,
    ``-W``), the ones before the script, ``-c`` or ``-m``."""
    options = []
    for arg in orig_argv[1:]:
        if arg in ("-c", "-m") or not arg.startswith("-") or arg == "-":
            break
        options.append(arg)
    return options


def _logging_configured(logging) -> bool:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return any(lg.handlers for lg in loggers)


class ForkedProcess:
    """A forked worker, with the part of :class:`subprocess.Popen` the local executor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): as Popen says
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.returncode is None:
            from smallpond.processes import wait_exit

            wait_exit(self.pid, 3600.0 if timeout is None else timeout)  # then reaped at once below
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_worker(child_fd: int, rt_path: str, index: int, control_fd: Optional[int] = None, warm: bool = True) -> ForkedProcess:
    """Fork a worker that serves the socket ``child_fd`` and answers take-backs on ``control_fd``
    (the caller closes its copies after); with ``warm``, it opens DuckDB while it waits for its
    first attempt (see :func:`~smallpond.execution.worker.worker_main`)."""
    for stream in (sys.stdout, sys.stderr):  # else the child writes their buffers out again
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(child_fd, rt_path, index, parent, control_fd, warm)  # never returns
    return ForkedProcess(pid)


def _child(child_fd: int, rt_path: str, index: int, parent: int, control_fd: Optional[int] = None, warm: bool = True) -> None:
    code = 1
    try:
        import gc
        import types

        gc.freeze()  # the driver's objects are never collected here: no finalizer of theirs runs
        gc.enable()  # as in a fresh interpreter, whatever the driver chose
        main = types.ModuleType("__main__")
        for name in MAINS:
            sys.modules[name] = main
        _close_fds_but(child_fd, control_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        _default_signals()
        _default_warnings()
        from smallpond.execution import worker

        sys.argv = [worker.__file__, str(child_fd), rt_path, str(index)] + ([] if control_fd is None else [str(control_fd)])
        os.environ["PYTHONPATH"] = worker_import_path()  # as a fresh worker's
        worker.die_with_parent(parent)
        from multiprocessing.connection import Connection

        control = None if control_fd is None else Connection(control_fd)
        worker.worker_main(Connection(child_fd), rt_path, index, warm_while_idle=warm, control=control)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)


def _default_warnings() -> None:
    """The warning filters a fresh interpreter starts with: CPython's defaults (a release build's),
    under those of ``PYTHONWARNINGS`` (the only source left: no ``-W``, no development mode)."""
    import warnings

    warnings.resetwarnings()
    if not hasattr(sys, "gettotalrefcount"):
        warnings.filters[:] = [
            ("default", None, DeprecationWarning, "__main__", 0),
            ("ignore", None, DeprecationWarning, None, 0),
            ("ignore", None, PendingDeprecationWarning, None, 0),
            ("ignore", None, ImportWarning, None, 0),
            ("ignore", None, ResourceWarning, None, 0),
        ]
    warnings._processoptions(sys.warnoptions)
    warnings._filters_mutated()


def _close_fds_but(*keep: Optional[int]) -> None:
    """Close every descriptor above 2 except those of ``keep`` (``/proc/self/fd``, as subprocess does)."""
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed by now


def _default_signals() -> None:
    """The signal dispositions a fresh interpreter starts with: Python's own handlers, not the
    driver's (a job's SIGTERM handler, the user's)."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if sig == signal.SIGINT:
            fresh = signal.default_int_handler
        elif sig in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None)):
            fresh = signal.SIG_IGN  # what Python sets at start-up
        else:
            fresh = signal.SIG_DFL
        if handler is not fresh and handler is not None:
            try:
                signal.signal(sig, fresh)
            except (ValueError, OSError):
                pass
