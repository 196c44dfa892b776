"""Enforcing ``enforce_memory_limit``: an attempt that uses more memory than the scheduler gave it
is stopped and fails with :class:`~smallpond.errors.OutOfMemory` (retried with more memory).

DuckDB keeps to its ``memory_limit`` by itself; Python, Arrow, numpy and pandas code in a task does
not, so a thread of the process running the attempt watches it (every backend runs attempts through
:func:`~smallpond.execution.attempt.execute_attempt`, which starts the watch when the job's
runtime context has ``enforce_memory_limit``; nothing here is imported or run otherwise).

**What is measured.** The attempt's use is what the process's resident memory
(``/proc/self/statm``) has grown by since its lowest point of the attempt (its start, or later if
memory of an earlier attempt, kept by reference cycles, is collected meanwhile: growth that only
refills it is the attempt's too), plus the private memory (USS,
``/proc/{pid}/smaps_rollup``) of the processes it started, found through
``/proc/self/task/*/children`` and theirs in turn: the worker's own baseline (the interpreter,
DuckDB, Arrow, a shared database's cache, what allocators keep from earlier attempts) is not the
attempt's, and a forked child's pages shared with its parent are not counted twice. The libraries
tasks use (numpy, pyarrow, DuckDB, pandas) are imported before the first attempt's baseline is
taken, or their first import (~130 MiB) would count against it. A module the task imports for the
first time in a worker still counts. Resident memory is read every :data:`POLL_SECONDS` (a 2 µs
read); children every :data:`CHILDREN_EVERY` polls (a read per thread of the process).

**How it stops.** Once the use passes the limit and some slack (:data:`SLACK_BYTES`, for memory
DuckDB and Arrow keep outside their own limits), the thread raises :class:`MemoryLimitExceeded`
(a ``KeyboardInterrupt``, which ``except Exception`` does not swallow) in the attempt's thread and
interrupts its DuckDB queries, the way a cancel does (:mod:`~smallpond.execution.executors.cancel_marks`);
the attempt fails with ``OutOfMemory`` and cleans up as any failed attempt (its temp output is
removed, it never commits: :meth:`MemoryWatch.end` raises for an attempt whose code swallowed the
interrupt). Code running in C (a numpy loop, one big allocation) sees the interrupt only when it
returns to Python: if the attempt has not stopped :data:`GRACE_SECONDS` later, or its use passes
:data:`HARD_FACTOR` times that meanwhile, the process must not run away, so in a worker process
(:func:`allow_hard_stop`) the thread writes a note (:func:`note_path`), kills the attempt's child
processes and ends the process (exit status :data:`EXIT_CODE`). The backend that sees the worker
die reads the note (:func:`take_note`) and reports ``OutOfMemory`` instead of a lost worker; its
temp output is left as a crashed worker's is, and removed when the job ends. In the scheduler's
own process (tasks run without an executor) only the interrupt is used.

Limits: the watch samples, so a spike shorter than a poll may pass unseen; and its thread needs
the GIL, so C code that holds the GIL while it allocates (``list(range(10**9))``, ``b"x" * n``)
delays the watch until it returns (numpy's computations, Arrow, DuckDB, I/O, ``sleep`` and
waiting for a child process release it). Linux only (``/proc``); elsewhere the job warns that the
limit is not enforced.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List, Optional

from smallpond.errors import OutOfMemory
from smallpond.execution.executors.cancel_marks import raise_in_thread

#: how often the watch reads the process's resident memory (seconds)
POLL_SECONDS = 0.05
#: the processes an attempt started are looked for (and measured) every this many polls
CHILDREN_EVERY = 5
#: what an attempt may use beyond its limit before it is stopped: the larger of these bytes and this
#: share of the limit. Memory no library counts against its own limit: DuckDB keeps to its
#: ``memory_limit`` (0.9 of the attempt's, at least 64 MiB) only in its buffer pool, and a one-thread
#: sort with a 64 or 128 MiB limit was measured at 70 and 129 MiB (readers' buffers, thread stacks,
#: allocator slack); an attempt is stopped for what its code does, not for that
SLACK_BYTES, SLACK_SHARE = 64 << 20, 1 / 8
#: how long an interrupted attempt has to stop before its worker process is ended (seconds)
GRACE_SECONDS = 2.0
#: an interrupted attempt using more than this many times its limit and slack ends its worker at once
HARD_FACTOR = 2
#: the exit status of a worker process ended by the watch
EXIT_CODE = 88
#: the libraries imported before a worker's first baseline (those not installed are skipped)
PRELOAD = ("numpy", "pyarrow", "pyarrow.parquet", "duckdb", "pandas")

MiB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_hard_stop = False


def supported() -> bool:
    """Whether this machine lets the watch measure a process (``/proc``, Linux)."""
    return os.path.exists("/proc/self/statm")


def allow_hard_stop() -> None:
    """This process is a worker (its backend replaces it if it ends): the watch may end it."""
    global _hard_stop
    _hard_stop = True


class MemoryLimitExceeded(KeyboardInterrupt):
    """Raised in an attempt's thread by the watch (never seen outside the attempt runner)."""


def note_path(log_root: str, key: str, attempt: int) -> str:
    """Where the watch leaves the reason for ending a worker process, for its backend to read."""
    return os.path.join(log_root, "memory", f"{key}.{attempt}")


def take_note(log_root: str, key: str, attempt: int) -> Optional[OutOfMemory]:
    """The :class:`OutOfMemory` of an attempt whose worker the watch ended, or None; the note is
    removed (a rerun that gives an attempt the same number must not find it)."""
    path = note_path(log_root, key, attempt)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        os.unlink(path)
    except OSError:
        return None
    return OutOfMemory(text)


def _statm_rss() -> int:
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE
    finally:
        os.close(fd)


def _children(pid: str) -> List[str]:
    out: List[str] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(p.decode() for p in f.read().split())
        except OSError:
            pass
    return out


def descendants() -> List[str]:
    """The PIDs of the processes this process started, and those they started, and so on."""
    found: List[str] = []
    todo = _children("self")
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(_children(pid))
    return found


def _private_bytes(pid: str) -> int:
    """A process's private resident memory (what it frees when it exits)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return sum(int(line.split()[1]) * 1024 for line in data.split(b"\n") if line.startswith(b"Private_"))


def _children_bytes() -> int:
    return sum(_private_bytes(p) for p in descendants())


def _preload(rt) -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from smallpond.execution.ops.duckdb import open_shared_database

    open_shared_database(rt)  # a worker's shared database (~30 MiB once opened), if SQL tasks share one


class _Watched:
    """The attempt being watched, and what the watch found."""

    def __init__(self, task, attempt: int, limit: int, log_root: str, baseline: int, children: int) -> None:
        self.task = task
        self.attempt = attempt
        self.limit = limit
        self.allowance = limit + max(SLACK_BYTES, int(limit * SLACK_SHARE))  # stopped above this
        self.log_root = log_root
        self.thread = threading.get_ident()
        self.baseline = baseline  # the lowest resident memory seen since the attempt started
        self.children = children  # of the last look for children, counted in every poll until the next
        self.children_base = children
        self.polls = 0
        self.used = 0
        self.stopped_at: Optional[float] = None
        self.error: Optional[OutOfMemory] = None

    def describe(self, how: str) -> str:
        task = self.task
        where = f" (created at {task.location})" if task.location else ""
        return (
            f"{task.key} attempt {self.attempt} of {task.node_label}{where} used {self.used / MiB:.0f} MiB, more than "
            f"the {self.limit / MiB:.0f} MiB memory limit it was given and {(self.allowance - self.limit) / MiB:.0f} MiB "
            "of slack (enforce_memory_limit; measured: the worker process's resident memory grown since the attempt "
            f"started, plus its child processes'); {how}. "
            "Such an attempt is retried with twice the memory (within the job's retries): raise the node's "
            "memory_limit, or split the work into more partitions or smaller batches"
        )


class MemoryWatch:
    """One per process: a thread that watches the attempt running (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Optional[_Watched] = None
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._preloaded = False
        self._tracking = False  # the watch turned DuckDB connection tracking on for the attempt
        #: the error of the last attempt the watch stopped
        self.last_error: Optional[OutOfMemory] = None

    def begin(self, rt, task, attempt: int, limit: int) -> None:
        """The calling thread starts running attempt ``attempt`` of ``task`` with ``limit`` bytes."""
        from smallpond.execution.ops import duckdb as duckdb_ops

        if not self._preloaded:
            _preload(rt)
            self._preloaded = True
        self._tracking = not duckdb_ops.connections_tracked()
        if self._tracking:  # the attempt's connections, to interrupt (a Ray worker tracks them already)
            duckdb_ops.track_connections()
        children = _children_bytes()
        watched = _Watched(task, attempt, int(limit), rt.log_root, _statm_rss(), children)
        with self._lock:
            self._current = watched
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="smallpond-memory-watch", daemon=True)
            self._thread.start()
        self._wake.set()

    def end(self) -> Optional[OutOfMemory]:
        """Stop watching the attempt; its :class:`OutOfMemory` if the watch stopped it, else None.

        After this the watch raises nothing more in the thread (an interrupt sent but not raised
        yet is withdrawn). A second call returns None."""
        with self._lock:
            watched, self._current = self._current, None
            if watched is not None and watched.stopped_at is not None:
                raise_in_thread(watched.thread, None)
        if watched is None:
            return None
        if self._tracking:
            from smallpond.execution.ops.duckdb import track_connections

            track_connections(False)
        return watched.error

    def _watch(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(POLL_SECONDS)
            with self._lock:
                watched = self._current
                if watched is None:
                    self._wake.clear()
                    continue
                self._poll(watched)

    def _poll(self, w: _Watched) -> None:
        w.polls += 1
        if w.polls % CHILDREN_EVERY == 0:
            w.children = _children_bytes()
        rss = _statm_rss()
        w.baseline = min(w.baseline, rss)
        w.used = rss - w.baseline + w.children - w.children_base
        if w.stopped_at is None:
            if w.used > w.allowance:
                w.stopped_at = time.monotonic()
                w.error = self.last_error = OutOfMemory(w.describe("stopped"))
                raise_in_thread(w.thread, MemoryLimitExceeded)
                from smallpond.execution.ops.duckdb import interrupt_connections

                try:
                    interrupt_connections()
                except Exception:  # a connection closed meanwhile
                    pass
            return
        late = time.monotonic() - w.stopped_at > GRACE_SECONDS
        if _hard_stop and (late or w.used > HARD_FACTOR * w.allowance):
            why = (
                f"its code did not return to Python within {GRACE_SECONDS:.0f} s of the interrupt"
                if late
                else f"it went past {HARD_FACTOR}x that before its code returned to Python"
            )
            self._end_process(w, f"{why} (it runs in C), so its worker process {os.getpid()} was ended")

    def _end_process(self, w: _Watched, how: str) -> None:
        text = w.describe(how)
        try:
            path = note_path(w.log_root, w.task.key, w.attempt)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            from smallpond.common import logger

            logger.error("failed {} attempt {}: OutOfMemory: {}", w.task.key, w.attempt, text)
        finally:
            for pid in descendants():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            os._exit(EXIT_CODE)


_watch: Optional[MemoryWatch] = None
_warned = False


def announce(backend: str) -> None:
    """The job's log line about enforcement on ``backend`` (a warning where it cannot be honoured)."""
    from smallpond.common import logger

    if not supported():
        logger.warning(
            "enforce_memory_limit cannot be honoured on this machine (no /proc: Linux only): memory_limit sets DuckDB's "
            "memory_limit and guides scheduling, but Python, Arrow and numpy code in a task may use more"
        )
        return
    logger.info(
        "enforce_memory_limit: an attempt of the {} backend that uses more memory than its limit is stopped and fails "
        "with OutOfMemory (retried with more memory)",
        backend,
    )


def error_of(exc: BaseException) -> BaseException:
    """``exc``, or the :class:`OutOfMemory` it stands for if it is the watch's interrupt (raised
    late: as the attempt was failing otherwise)."""
    if isinstance(exc, MemoryLimitExceeded) and _watch is not None and _watch.last_error is not None:
        return _watch.last_error
    return exc


def watch_attempt(rt, task, attempt: int, limit: int) -> Optional[MemoryWatch]:
    """Start watching the attempt the calling thread runs; call :meth:`MemoryWatch.end` when it
    ends. None (with a warning, once per process) on a machine without ``/proc``."""
    global _watch, _warned
    if not supported():
        if not _warned:
            import socket

            from smallpond.common import logger

            logger.warning("enforce_memory_limit: not enforced in this process: {} has no /proc", socket.gethostname())
            _warned = True
        return None
    if _watch is None:
        _watch = MemoryWatch()
    _watch.begin(rt, task, attempt, limit)
    return _watch


__all__ = [
    "MemoryWatch",
    "MemoryLimitExceeded",
    "watch_attempt",
    "allow_hard_stop",
    "supported",
    "announce",
    "note_path",
    "take_note",
    "error_of",
    "descendants",
    "POLL_SECONDS",
    "GRACE_SECONDS",
    "HARD_FACTOR",
    "EXIT_CODE",
]
