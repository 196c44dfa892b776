"""Questions about processes the tests started (workers, executors)."""

from __future__ import annotations

import psutil


def alive(pid: int) -> bool:
    """Running and not a zombie, asked once: a process may exit between two questions asked of it
    (``pid_exists`` then ``Process(pid).status()`` raises ``NoSuchProcess`` then)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
