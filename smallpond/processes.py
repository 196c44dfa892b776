"""Processes by their start: a live process told from a later one that reuses its PID (job locks,
task-cache claims, queue executors, publication holders), read from ``/proc`` on Linux.

A record of a process keeps its PID with :func:`process_start_time` (epoch seconds, psutil's
``create_time``) and :func:`process_start_id` (a token a step of the wall clock does not move);
:func:`same_process_start` compares a running process with such a record. :func:`wait_exit` tells
when a child process has exited, the moment it does.
"""

from __future__ import annotations

import functools
import os


def process_start_time(pid: int) -> "float | None":
    """When process ``pid`` started, in seconds since the epoch (psutil's ``create_time``); None
    if there is no such process or it cannot be read. With the PID, it tells a process from a
    later one that reuses the number (job locks, task cache claims).

    On Linux it is read from ``/proc`` as psutil computes it there (the start time in clock ticks
    after boot, field 22 of ``/proc/{pid}/stat``, plus ``btime`` of ``/proc/stat``), without
    importing psutil: ~5 ms at every job's start, before its first worker could start.
    """
    import os
    import sys

    if sys.platform.startswith("linux"):
        try:
            return _boot_time() + _start_ticks(pid) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def process_start_id(pid: int) -> "str | None":
    """Process ``pid``'s start as a token that a change of the wall clock does not move:
    ``"{boot id}:{start in clock ticks after boot}"`` on Linux, None elsewhere or if unknown.

    :func:`process_start_time` is the boot time (``btime``, which the kernel derives from the wall
    clock) plus the ticks, so when the clock is stepped (NTP, a virtual machine resumed after a
    pause) a process's start time read later differs from the one recorded: by seconds, enough
    to take a live job's lock holder for a process that reused its PID. Records keep both; this
    one decides where both sides know it (:func:`same_process_start`).
    """
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return f"{_boot_id()}:{_start_ticks(pid)}"
    except (OSError, ValueError, IndexError):
        return None


def same_process_start(pid: int, started: "float | None", start_id: "str | None") -> "bool | None":
    """Whether the running process ``pid`` is the one recorded as started at ``started`` (epoch
    seconds) with ``start_id`` (:func:`process_start_id`); None if that cannot be told (no such
    process readable, nothing recorded). The id decides when the record has one, else the times,
    within a second."""
    if start_id:
        now = process_start_id(pid)
        if now is not None:
            return now == start_id
    if started:
        actual = process_start_time(pid)
        if actual is not None:
            return abs(actual - float(started)) <= 1.0
    return None


def _start_ticks(pid: int) -> int:
    """Process ``pid``'s start in clock ticks after boot: field 22 of ``/proc/{pid}/stat`` (Linux)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19])  # fields from the 3rd on


@functools.lru_cache(maxsize=None)
def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", "rb") as f:
        return f.read().decode().strip()


@functools.lru_cache(maxsize=None)
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until the child process ``pid`` has exited, without reaping it; True once it has,
    False after ``timeout`` seconds or where this cannot be told (no pidfd: Linux before 5.3, or
    ``pid`` reaped already). The caller reaps it (``Popen.wait``, ``waitpid``), at once then.

    ``Popen.wait(timeout)`` polls ``waitpid`` with sleeps that double from 0.5 ms to 50 ms, so
    it returns up to twice the time a process takes to die: a killed worker with DuckDB loaded
    dies in 4-5 ms here and was reaped after 7.5 ms, or after 63.5 ms when its death took just
    over 31.5 ms, at the end of every job. A pidfd is readable the moment the process exits.
    (The pid is not reused meanwhile: a child that has not been reaped keeps its number.)
    """
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)
