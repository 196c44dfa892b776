"""Python stacks of running workers, on request: where a task that seems to hang is.

A local worker registers :mod:`faulthandler` on ``SIGUSR1`` when it starts (:func:`enable`): the
signal makes it write every thread's Python stack into its own file under
``temp/stacks/{host}-{pid}.txt``. faulthandler writes from its C signal handler, so the stack comes out
while the task runs, including when a thread holds the GIL inside C code (a regular expression
that backtracks, a C extension's loop), where a Python thread asked to dump would wait.

The stall warning (:mod:`~smallpond.execution.stall`) asks for the stacks of the attempts it
names (:func:`request`): it signals their workers, waits for each dump to be whole, and
shows the frames of the thread that runs the attempt. Only a process that registered is ever
signalled (a worker running an attempt has; ``SIGUSR1`` would end one that had not). A queue/MPI
executor is asked through ``queue/epoch`` and asks its own workers the same way
(:meth:`~smallpond.execution.executors.queue.QueueExecutor.attempt_stacks`). On Ray, the
worker's cancel watcher dumps the stacks when a request file appears
(:meth:`~smallpond.execution.executors.cancel_marks.CancelMarks.request_stack`); being a Python
thread, it cannot while the attempt holds the GIL in C code, and it says first that it is
answering, so that the driver waits up to :data:`PATIENCE` for one slow to (every step it takes
waits for the GIL).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Set, Tuple

#: the signal a worker dumps its stacks on
SIGNAL = getattr(signal, "SIGUSR1", None)
#: at most this many lines of one worker's dump are shown in a warning
MAX_LINES = 30
#: how long :func:`request` waits at most for a worker whose answer is on its way: on a machine
#: at a load of 10 or more a worker may wait a while for a CPU to take the signal and to write
PATIENCE = 10.0

_HOST = socket.gethostname().replace(os.sep, "_")
_file = None  # the open dump file of this process (faulthandler keeps only its descriptor)


def stack_path(temp_root: str, pid: int) -> str:
    """The dump file of process ``pid`` of this host (temp/ may be shared by several hosts)."""
    return os.path.join(temp_root, "stacks", f"{_HOST}-{pid}.txt")


def enable(temp_root: str) -> None:
    """In a worker: write every thread's stack to :func:`stack_path` on :data:`SIGNAL` (a worker
    kept for the next job calls it again with that job's temp root: the dumps go there from then on)."""
    global _file
    import faulthandler

    path = stack_path(temp_root, os.getpid())
    if SIGNAL is None or (_file is not None and _file.name == path):
        return
    if _file is not None:
        faulthandler.unregister(SIGNAL)
        _file.close()
        _file = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _file = open(path, "w")
    except OSError:
        return  # no dumps: the stall warning names the task without its stack
    faulthandler.register(SIGNAL, file=_file, all_threads=True, chain=False)


def remove(temp_root: str, pid: int) -> None:
    """Remove a worker's dump file (the worker has ended)."""
    try:
        os.unlink(stack_path(temp_root, pid))
    except OSError:
        pass


def request(temp_root: str, pids: Dict[Hashable, int], timeout: float = 1.0, patience: float = PATIENCE) -> Dict[Hashable, str]:
    """Signal each worker in ``pids`` (any key -> pid) and return what it wrote, by key. A dump is
    taken once it is whole: on Linux, once the worker's handler has returned (faulthandler blocks
    the signal while it writes; a worker preempted mid-dump on a loaded machine wrote only part of
    its stack), elsewhere once the file has stopped growing. A worker whose answer is on its way
    (the signal not yet taken: it waits for a CPU, or is stopped; its handler still writing) is
    waited for up to ``patience`` seconds, unless it has not taken the signal of a request before
    (in an uninterruptible wait, for a read that hangs: a stall warning would hold the scheduler
    ``patience`` seconds each time); one with nothing on its way after ``timeout`` seconds (ended,
    no dump file, no dump) is left out."""
    if SIGNAL is None:
        return {}
    sizes: Dict[int, int] = {}
    free: Dict[int, Set[str]] = {}  # the threads that did not block the signal when it was sent
    stuck: Set[int] = set()  # those that have not taken the signal of a request before: not waited for
    for pid in set(pids.values()):
        try:
            sizes[pid] = os.path.getsize(stack_path(temp_root, pid))
        except OSError:
            continue  # never registered (or gone): a signal could kill it
        try:
            pending, blocked, threads = _signal_state(pid)
        except OSError:
            del sizes[pid]  # (gone)
            continue
        if pending:  # (the last request's signal, not taken since: a hung read, not a loaded machine)
            stuck.add(pid)
        free[pid] = threads - blocked
        try:
            os.kill(pid, SIGNAL)
        except OSError:
            del sizes[pid]
    texts: Dict[int, str] = {}
    last: Dict[int, int] = {}

    def answered(pid: int) -> Optional[bool]:
        """True once its whole dump is read (or it is gone: none will come), None while its answer
        is on its way, else False."""
        try:  # (the handler's state first: once it has returned, the size read after it is final)
            pending, blocked, _ = _signal_state(pid)
            size = os.path.getsize(stack_path(temp_root, pid))
        except OSError:
            return True
        grown = size > sizes[pid]
        if pending is None:  # (no /proc: a file that has stopped growing)
            whole, on_its_way = grown and last.get(pid) == size, grown
            last[pid] = size
        else:
            on_its_way = pending or bool(blocked & free[pid])  # (sent, or a handler running)
            whole = grown and not on_its_way
        if whole:
            with open(stack_path(temp_root, pid), "rb") as f:
                f.seek(sizes[pid])
                texts[pid] = f.read(size - sizes[pid]).decode("utf-8", "replace")
            return True
        return None if on_its_way and pid not in stuck else False

    await_answers(sizes, answered, timeout, interval=0.02, patience=patience)
    return {key: texts[pid] for key, pid in pids.items() if pid in texts}


def _signal_state(pid: int) -> Tuple[Optional[bool], Set[str], Set[str]]:
    """Whether :data:`SIGNAL` is pending for process ``pid`` (sent, not yet taken by a thread) and
    going to be taken, which of its threads block it (one does while its handler runs, and some for
    good: jemalloc's background thread blocks every signal) and all its threads, from ``/proc``;
    (None, set(), set()) where there is no ``/proc``. OSError if the process is gone (a zombie too:
    it answers nothing). A signal is not going to be taken while the process is stopped (SIGSTOP,
    a debugger) or every thread blocks it: no wait for a CPU or for pages ends that, and waiting
    :data:`PATIENCE` for it held the scheduler 10 s at each stall warning, for no stack."""
    bit = 1 << (SIGNAL - 1)
    try:
        fields = _status_fields(f"/proc/{pid}/status")
    except FileNotFoundError:
        if os.path.isdir("/proc/self/task"):
            raise
        return None, set(), set()
    state = fields.get("State", "").strip()[:1]
    if state in ("Z", "X"):
        raise ProcessLookupError(pid)
    pending = bool(int(fields.get("ShdPnd", "0"), 16) & bit)
    blocked, open_to_it, threads = set(), set(), set(os.listdir(f"/proc/{pid}/task"))
    for tid in threads:
        try:
            thread = _status_fields(f"/proc/{pid}/task/{tid}/status")
        except OSError:
            continue  # (a thread that ended)
        pending = pending or bool(int(thread.get("SigPnd", "0"), 16) & bit)
        (blocked if int(thread.get("SigBlk", "0"), 16) & bit else open_to_it).add(tid)
    return pending and bool(open_to_it) and state not in ("T", "t"), blocked, threads


def _status_fields(path: str) -> Dict[str, str]:
    """The ``name: value`` fields of a ``/proc`` status file (a process's or a thread's)."""
    with open(path) as f:
        return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)


def await_answers(
    pending: Iterable[Hashable],
    answered: Callable[[Hashable], Optional[bool]],
    timeout: float,
    interval: float = 0.05,
    patience: float = 0.0,
) -> Set[Hashable]:
    """Ask ``answered(item)`` for each of ``pending`` every ``interval`` seconds until every one
    has answered (True) or ``timeout`` seconds passed; returns those that did not. An item whose
    answer is on its way (``answered`` returns None: asked, and answering) is waited for up to
    ``patience`` seconds, so a loaded machine, where answering takes a while, does not lose it.
    How each backend collects the stacks it asked for: from worker processes (here), queue
    executors and Ray workers."""
    left, start = set(pending), time.monotonic()
    while left:
        time.sleep(interval)
        looks = {item: answered(item) for item in left}
        left = {item for item, answer in looks.items() if answer is not True}
        waited = time.monotonic() - start
        if waited >= max(timeout, patience) or waited >= timeout and None not in looks.values():
            break
    return left


def attempt_frames(dump: str, marker: str = "execute_attempt", max_lines: int = MAX_LINES) -> str:
    """The part of a faulthandler dump that matters for a task: the stack of the thread running
    the attempt (the one whose frames pass through ``marker``), innermost call first, at most
    ``max_lines`` lines; the whole dump (cut) if no thread matches."""
    blocks: List[str] = [b.strip("\n") for b in dump.split("\n\n") if b.strip()]
    chosen: Optional[str] = next((b for b in blocks if marker in b), None)
    lines = (chosen if chosen is not None else dump.strip("\n")).splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"  ... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)
