"""Process functions defined in an importable module (workers load them by reference, so only
the fingerprint walks into the module globals they read)."""

from __future__ import annotations

import threading

LOCK = threading.Lock()
PENDING = (i for i in range(3))  # a generator: neither describable nor picklable


def locked_copy(runtime_ctx, tables):
    with LOCK:
        return tables[0]


def copy_with_generator_around(runtime_ctx, tables):
    _ = PENDING  # read, so the fingerprint includes it
    return tables[0]
