"""Python stacks of running workers, on request: where a task that seems to hang is.

A local worker registers :mod:`faulthandler` on ``SIGUSR1`` when it starts (:func:`enable`): the
signal makes it write every thread's Python stack into its own file under
``temp/stacks/{host}-{pid}.txt``. faulthandler writes from its C signal handler, so the stack comes out
while the task runs, including when a thread holds the GIL inside C code (a regular expression
that backtracks, a C extension's loop), where a Python thread asked to dump would wait.

The stall warning (:mod:`~smallpond.execution.stall`) asks for the stacks of the attempts it
names (:func:`request`): it signals their workers, waits up to a second for each dump, and
shows the frames of the thread that runs the attempt. Only a process that registered is ever
signalled (a worker running an attempt has; ``SIGUSR1`` would end one that had not). A queue/MPI
executor is asked through ``queue/epoch`` and asks its own workers the same way
(:meth:`~smallpond.execution.executors.queue.QueueExecutor.attempt_stacks`). On Ray, the
worker's cancel watcher dumps the stacks when a request file appears
(:meth:`~smallpond.execution.executors.cancel_marks.CancelMarks.request_stack`); being a Python
thread, it cannot while the attempt holds the GIL in C code.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Set

#: the signal a worker dumps its stacks on
SIGNAL = getattr(signal, "SIGUSR1", None)
#: at most this many lines of one worker's dump are shown in a warning
MAX_LINES = 30

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


def request(temp_root: str, pids: Dict[Hashable, int], timeout: float = 1.0) -> Dict[Hashable, str]:
    """Signal each worker in ``pids`` (any key -> pid) and return what it wrote, by key; a worker
    that wrote nothing within ``timeout`` seconds (ended, or it has no dump file) is left out."""
    if SIGNAL is None:
        return {}
    sizes: Dict[int, int] = {}
    for pid in set(pids.values()):
        try:
            sizes[pid] = os.path.getsize(stack_path(temp_root, pid))
        except OSError:
            continue  # never registered (or gone): a signal could kill it
        try:
            os.kill(pid, SIGNAL)
        except OSError:
            del sizes[pid]
    texts: Dict[int, str] = {}
    last: Dict[int, int] = {}

    def answered(pid: int) -> bool:
        try:
            size = os.path.getsize(stack_path(temp_root, pid))
        except OSError:
            return True  # gone: no answer will come
        if size > sizes[pid] and last.get(pid) == size:  # it wrote, and has stopped writing
            with open(stack_path(temp_root, pid), "rb") as f:
                f.seek(sizes[pid])
                texts[pid] = f.read(size - sizes[pid]).decode("utf-8", "replace")
            return True
        last[pid] = size
        return False

    await_answers(sizes, answered, timeout, interval=0.02)
    return {key: texts[pid] for key, pid in pids.items() if pid in texts}


def await_answers(
    pending: Iterable[Hashable], answered: Callable[[Hashable], bool], timeout: float, interval: float = 0.05
) -> Set[Hashable]:
    """Ask ``answered(item)`` for each of ``pending`` every ``interval`` seconds until every one
    has answered (True) or ``timeout`` seconds passed; returns those that did not. How each backend
    collects the stacks it asked for: from worker processes (here), queue executors and Ray workers."""
    left = set(pending)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(interval)
        left = {item for item in left if not answered(item)}
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
