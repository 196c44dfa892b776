"""What an attempt used of its process: CPU seconds and peak memory (resident set), per attempt.

A worker process runs one attempt at a time (on every backend), so the process's figures over an
attempt are the attempt's: the CPU time of all its threads (DuckDB's too), and the highest
resident set size the process reached while it ran. They travel in the attempt's stats (``cpu``,
``peak_memory``, beside ``memory``, what the scheduler reserved for it) into the event log, the
report and the job's summary, where a node whose tasks peaked above what they reserved is named.

Peak memory is Linux only: the kernel keeps the process's high-water mark (``VmHWM`` in
``/proc/self/status``), and writing ``5`` to ``/proc/self/clear_refs`` resets it to the current
resident size, which is done as each attempt starts (well under 10 µs for both). It is the whole
process's resident size: the interpreter, smallpond and the libraries the task loaded (~100 MB)
are part of it. Memory of child processes the task starts is not counted, nor their CPU time.
Elsewhere, or where ``/proc`` cannot be written, the peak is not reported (None).
"""

from __future__ import annotations

import os
from typing import Optional

_STATUS_FIELD = b"VmHWM:"


class _Proc:
    """This process's ``clear_refs`` and ``status`` files, opened once (again after a fork: a
    forked child must not reset or read its parent's)."""

    pid = -1
    reset_fd: Optional[int] = None
    status_fd: Optional[int] = None

    @classmethod
    def fds(cls):
        pid = os.getpid()
        if cls.pid != pid:
            cls.pid = pid
            cls.reset_fd = cls.status_fd = None  # a parent's descriptors are left to it
            try:
                cls.status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
                cls.reset_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:  # not Linux, or /proc is read-only here
                if cls.status_fd is not None:
                    os.close(cls.status_fd)
                cls.status_fd = None
        return cls.reset_fd, cls.status_fd


def start_peak() -> bool:
    """Reset the process's memory high-water mark to its current resident size; False if it cannot
    be measured here."""
    reset_fd, _ = _Proc.fds()
    if reset_fd is None:
        return False
    try:
        os.write(reset_fd, b"5")
        return True
    except OSError:
        return False


def peak_since_start() -> Optional[int]:
    """The highest resident size (bytes) of this process since :func:`start_peak`, or None."""
    _, status_fd = _Proc.fds()
    if status_fd is None:
        return None
    try:
        text = os.pread(status_fd, 16384, 0)
    except OSError:
        return None
    i = text.find(_STATUS_FIELD)
    if i < 0:
        return None
    fields = text[i + len(_STATUS_FIELD) : text.find(b"\n", i)].split()
    try:
        return int(fields[0]) * 1024  # "kB"
    except (IndexError, ValueError):
        return None


def over_reservation(peak: Optional[int], reserved: Optional[int]) -> bool:
    """Whether an attempt's peak memory is clearly above what it reserved: by more than a quarter
    and more than the ~256 MB a worker process holds before any task (its interpreter and
    libraries), so that small tasks' reservations are not flagged for the process's own size."""
    if not peak or not reserved:
        return False
    return peak > reserved * 1.25 and peak - reserved > 256 * 1024 * 1024
