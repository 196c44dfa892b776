"""A log line when a job has made no progress for a while, naming what is still running.

Tasks are not timed out (a long DuckDB sort and a Python call that never returns look the same
from outside), so a job whose tasks hang would otherwise wait without a word. :class:`StallLog`
watches the scheduler: once no attempt has ended for ``SP_STALL_LOG`` seconds (default
:data:`DEFAULT_SECONDS`; ``off`` turns it off) while attempts are running, it logs a warning
that names each running attempt, its node, the line that built the node and how long it has
run, then again after twice as long, and so on (a long task is named a few times, not every
minute). Any attempt ending starts the count again.

Invariants: it only reads the scheduler's state (a listener never changes it); nothing is logged
while nothing runs (a job waiting for executors or for another job's cache entry says so
elsewhere).
"""

from __future__ import annotations

import time
from typing import Optional

from smallpond.common import SWITCH_OFF, env_setting, logger
from smallpond.execution.sched_state import SchedulerListener

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

    def __init__(self, seconds: Optional[float] = None) -> None:
        self.seconds = stall_seconds() if seconds is None else seconds
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
        running = sorted(
            ((key, attempt, r.since) for key, attempts in state.running.items() for attempt, r in attempts.items()),
            key=lambda item: item[2],
        )
        lines = []
        for key, attempt, since in running[:MAX_NAMED]:
            task = state.tasks.get(key)
            where = f" of {task.node_label} created at {task.location}" if task is not None else ""
            lines.append(f"  {key} (attempt {attempt}){where}: running for {now - since:.0f} s")
        if len(running) > MAX_NAMED:
            lines.append(f"  ... and {len(running) - MAX_NAMED} more")
        logger.warning(
            "no task has finished for {:.0f} s; {} attempt(s) still running:\n{}\n"
            "Tasks are not timed out: if one hangs, stop the job (Ctrl-C) and rerun it to resume "
            "(py-spy dump --pid <worker pid> shows where a Python task is); SP_STALL_LOG=off silences this",
            quiet,
            len(running),
            "\n".join(lines),
        )
