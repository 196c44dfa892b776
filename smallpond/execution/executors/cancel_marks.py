"""Cancelling an attempt by asking it, through a marker file on the shared data root.

The Ray backend cannot use ``ray.cancel`` on an attempt that may be running: in Ray 2.60, forced or
not, it races with the attempt's reply in the driver's core worker, which then aborts the driver
("Check failed: it != submissible_tasks_.end() Tried to complete task that was not pending"; seen
here under SIGTERM with either). So the scheduler's side writes ``{folder}/{key}.{attempt}``
(:meth:`CancelMarks.mark`) and forgets the attempt; in the worker process a :class:`CancelWatch`
looks for the mark of the attempt it runs, a few times a second, and stops it:

* a ``KeyboardInterrupt`` is raised in the thread running the attempt (at its next Python
  instruction), and every DuckDB connection the attempt opened is interrupted (a long query
  stops too);
* the attempt asks :meth:`CancelWatch.cancelled` just before it writes its commit record (code
  that swallowed the interrupt gets that far), and a cancelled one never commits; the output it
  renamed into place is removed (:func:`~smallpond.execution.attempt.execute_attempt`).

The folder is one per executor start (a token in its name), so a mark of an earlier run never
cancels an attempt of the same number in a rerun. Ray learns nothing of this: the attempt's task
ends as any other, and its result is not read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Callable, Optional, Tuple

#: how often a worker looks for the mark of the attempt it runs (seconds)
POLL_SECONDS = 0.2
#: a request for the stack of the attempt is its mark's name with this suffix; the answer, the
#: request's name with :data:`STACK_ANSWER` (the stall warning's stacks, :mod:`~smallpond.execution.stacks`).
#: A watcher that took the request renames it with :data:`STACK_ANSWERING` first, so the driver
#: knows the answer is on its way (the watcher is a Python thread: while the attempt holds the GIL
#: in C code, each of its steps waits for the call to return) and waits longer for it
STACK_REQUEST, STACK_ANSWER, STACK_ANSWERING = ".stack", ".txt", ".answering"


def mark_path(folder: str, key: str, attempt: int) -> str:
    return os.path.join(folder, f"{key}.{attempt}")


class CancelMarks:
    """The scheduler's side: ``mark`` an attempt as cancelled (the folder is made on first use)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._made = False

    def mark(self, key: str, attempt: int) -> None:
        self._touch(mark_path(self.folder, key, attempt))

    def request_stack(self, key: str, attempt: int) -> None:
        """Ask the worker running the attempt for its Python stack (:meth:`CancelWatch` dumps it
        within a poll; :meth:`stack_answer` reads it). An answer to an earlier request that came
        after it was withdrawn goes first: it is not this one's."""
        request = mark_path(self.folder, key, attempt) + STACK_REQUEST
        with contextlib.suppress(OSError):
            os.unlink(request + STACK_ANSWER)
        self._touch(request)

    def stack_answer(self, key: str, attempt: int) -> Tuple[Optional[str], bool]:
        """The answer to :meth:`request_stack` (read and removed) or None, and whether its watcher
        has said it is answering (took the request and is writing the answer)."""
        request = mark_path(self.folder, key, attempt) + STACK_REQUEST
        answering = os.path.exists(request + STACK_ANSWERING)  # (first: the answer replaces it)
        try:
            with open(request + STACK_ANSWER) as f:
                text = f.read()
        except OSError:
            return None, answering
        with contextlib.suppress(OSError):
            os.unlink(request + STACK_ANSWER)
        return text, answering

    def withdraw_stack(self, key: str, attempt: int) -> None:
        """Withdraw an unanswered request (a later attempt does not dump for nothing) and the
        answering mark of a watcher that took it (the next request waits only for one that
        takes that request)."""
        request = mark_path(self.folder, key, attempt) + STACK_REQUEST
        for path in (request, request + STACK_ANSWERING):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _touch(self, path: str) -> None:
        """Create the empty file ``path`` in the folder (made on first use)."""
        if not self._made:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            self._made = True
        with open(path, "wb"):
            pass


class CancelWatch:
    """A worker process's side: stops the attempt it runs once its mark appears (module docstring).

    ``interrupt`` is called (from the watching thread) when the mark is found, besides the
    ``KeyboardInterrupt``: it interrupts what the Python exception cannot reach (DuckDB queries).
    """

    def __init__(self, interrupt: Optional[Callable[[], None]] = None) -> None:
        self.interrupt = interrupt
        self._lock = threading.Lock()
        self._current: Optional[Tuple[str, int]] = None  # (mark path, thread id) of the attempt running
        self._thread: Optional[threading.Thread] = None

    def begin(self, folder: str, key: str, attempt: int) -> None:
        """The calling thread starts running attempt ``attempt`` of ``key``."""
        with self._lock:
            self._current = (mark_path(folder, key, attempt), threading.get_ident())
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="smallpond-cancel-watch", daemon=True)
            self._thread.start()

    def end(self) -> None:
        with self._lock:
            self._current = None

    def cancelled(self) -> bool:
        """Whether the attempt running now was cancelled (its mark exists)."""
        current = self._current
        return current is not None and os.path.exists(current[0])

    def _watch(self) -> None:
        stop = threading.Event()
        while not stop.wait(POLL_SECONDS):
            with self._lock:
                current = self._current
                if current is not None:
                    _answer_stack(current[0] + STACK_REQUEST)
                if current is None or not os.path.exists(current[0]):
                    continue
                self._current = (current[0], 0)  # stopped once; cancelled() still answers True
                if current[1]:
                    raise_in_thread(current[1], KeyboardInterrupt)
            if self.interrupt is not None:
                try:
                    self.interrupt()
                except Exception:  # a connection closed meanwhile
                    pass


def _answer_stack(request: str) -> None:
    """Answer a stack request if there is one: say so first (the request renamed to its
    :data:`STACK_ANSWERING` mark: one system call, as few waits for the GIL as can be before the
    driver knows), then every thread's Python stack into ``request + STACK_ANSWER`` (written
    whole, then renamed), and the mark removed."""
    import faulthandler

    answering, answer = request + STACK_ANSWERING, request + STACK_ANSWER
    try:
        os.rename(request, answering)
    except OSError:
        return  # (no request)
    try:
        with open(answer + ".tmp", "w") as f:
            faulthandler.dump_traceback(f, all_threads=True)
        os.replace(answer + ".tmp", answer)
        os.unlink(answering)
    except OSError:
        pass


def raise_in_thread(thread_id: int, exc_type: Optional[type]) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next Python instruction (code running in C
    sees it only once it returns to Python); ``None`` withdraws one not raised yet.

    How an attempt is stopped from a watching thread (a cancel here, the memory limit in
    :mod:`~smallpond.execution.memory_watch`): a ``BaseException``, so the task's ``except
    Exception`` does not swallow it."""
    exc = None if exc_type is None else ctypes.py_object(exc_type)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


__all__ = ["CancelMarks", "CancelWatch", "mark_path", "raise_in_thread", "POLL_SECONDS"]
