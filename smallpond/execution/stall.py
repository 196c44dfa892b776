"""A log line when a job has made no progress for a while, naming what is still running.

Tasks are not timed out (a long DuckDB sort and a Python call that never returns look the same
from outside), so a job whose tasks hang would otherwise wait without a word. :class:`StallLog`
watches the scheduler: once no attempt has ended for ``SP_STALL_LOG`` seconds (default
:data:`DEFAULT_SECONDS`; ``off`` turns it off) while attempts are running, it logs a warning
that names each running attempt, its node, the line that built the node and how long it has
run, then again after twice as long, and so on (a long task is named a few times, not every
minute). Any attempt ending starts the count again.

An attempt the scheduler submitted has not always started: it may wait on a worker behind a short
attempt, or in the queue backend's ``todo/`` for an executor to take it. The backend says which
attempts have started and where (:meth:`~smallpond.execution.executors.base.Executor.attempt_places`:
the worker process, the executor); the warning names those as running, with that place, and the
others as waiting to start, with what they wait for. Where the backend can (all three:
:mod:`~smallpond.execution.stacks`), the warning also shows the Python stack of each attempt it
names as running: the line a hung task is stuck on.

Invariants: it only reads the scheduler's state (a listener never changes it); nothing is logged
while nothing runs (a job waiting for executors or for another job's cache entry says so
elsewhere).
"""

from __future__ import annotations

import time
from typing import Optional

from smallpond.common import SWITCH_OFF, env_setting, logger
from smallpond.execution.sched_state import SchedulerListener
from smallpond.logical.base import created_at

#: seconds without an attempt ending before the first warning
DEFAULT_SECONDS = 60.0
#: at most this many running attempts are named in one warning
MAX_NAMED = 5


def stall_seconds() -> Optional[float]:
    """Seconds without progress before the first warning (``SP_STALL_LOG``), or None if off."""
    text = env_setting("SP_STALL_LOG")
    if not text:
        return DEFAULT_SECONDS
    if text in SWITCH_OFF and text != "0":
        return None
    try:
        value = float(text)
    except ValueError:
        logger.warning("SP_STALL_LOG={!r} is neither a number of seconds nor 'off'; using {}", text, DEFAULT_SECONDS)
        return DEFAULT_SECONDS
    return value if value > 0 else None


class StallLog(SchedulerListener):
    """Warns when running attempts have gone ``seconds`` without any attempt ending (module doc)."""

    def __init__(self, seconds: Optional[float] = None, executor=None) -> None:
        self.seconds = stall_seconds() if seconds is None else seconds
        self.executor = executor  # says which attempts in flight have started (see the module doc)
        self._last = time.time()
        self._wait = self.seconds

    def _progress(self, *_args) -> None:
        self._last = time.time()
        self._wait = self.seconds

    on_start = on_completion = on_inline = on_reused = on_resumed = on_cancelled = _progress

    def on_tick(self, state, elapsed: float) -> None:
        if self.seconds is None:
            return
        now = time.time()
        if not state.running:
            self._progress()
            return
        quiet = now - self._last
        if quiet < self._wait:
            return
        self._wait *= 2
        places = self._places()
        started, waiting = [], []
        for key, attempts in state.running.items():
            for attempt, r in attempts.items():
                ran, where = places.get((key, attempt), (True, ""))
                (started if ran else waiting).append((r.since, key, attempt, where))
        lines = _named(state, sorted(started), now, "running{}", " on {}")
        lines += _named(state, sorted(waiting), now, "waiting to start{}", ": {}")
        also = f" and {len(waiting)} waiting to start" if waiting else ""
        where = self._stacks([(key, attempt) for _, key, attempt, _ in sorted(started)[:MAX_NAMED]])
        logger.warning(
            "no task has finished for {:.0f} s; {} attempt(s) still running{}:\n{}\n{}"
            "Tasks are not timed out: if one hangs, stop the job (Ctrl-C) and rerun it to resume{}; "
            "SP_STALL_LOG=off silences this",
            quiet,
            len(started),
            also,
            "\n".join(lines),
            where,
            "" if where else " (py-spy dump --pid <worker pid> shows where a Python task is)",
        )

    def _stacks(self, attempts: list) -> str:
        """Where each of ``attempts`` is, from its worker's stack (if the backend can tell)."""
        if self.executor is None or not attempts:
            return ""
        try:
            stacks = self.executor.attempt_stacks(attempts)
        except Exception as e:  # a log line never fails a job
            logger.debug("stall warning: the executor cannot give its attempts' stacks: {!r}", e)
            return ""
        parts = []
        for key, attempt in attempts:
            text = stacks.get((key, attempt))
            if text:
                parts.append(f"Where {key} (attempt {attempt}) is now, innermost call first:\n" + _indent(text) + "\n")
        return "".join(parts)

    def _places(self) -> dict:
        if self.executor is None:
            return {}
        try:
            return self.executor.attempt_places()
        except Exception as e:  # a log line never fails a job
            logger.debug("stall warning: the executor cannot say where its attempts are: {!r}", e)
            return {}


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _named(state, attempts: list, now: float, what: str, where: str) -> list:
    """One line per attempt ``(since, key, attempt, place)`` (the first :data:`MAX_NAMED`): ``what``
    it does, ``where`` (when the backend says), and when it was submitted."""
    lines = []
    for since, key, attempt, place in attempts[:MAX_NAMED]:
        task = state.tasks.get(key)
        node = f" of {created_at(task.node_label, task.location)}" if task is not None else ""
        done = what.format(where.format(place) if place else "")
        lines.append(f"  {key} (attempt {attempt}){node}: {done} (submitted {now - since:.0f} s ago)")
    if len(attempts) > MAX_NAMED:
        lines.append(f"  ... and {len(attempts) - MAX_NAMED} more")
    return lines
