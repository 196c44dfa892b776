"""How the task cache tells that a file is still the one it recorded: size, modification time and a
digest of the first and last 64 KiB (at least the whole Parquet footer), see
:mod:`smallpond.execution.cache` (its invariant "only verified entries are served")."""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Tuple

from smallpond.io.filesystem import READ_FLAGS, pread_full
from smallpond.io.parquet_footer import DIGEST_MAX_FOOTER_BYTES, footer_length

HEAD_TAIL_BYTES = 64 * 1024


def file_check(path: str, size: Optional[int] = None) -> str:
    """A digest of a file's size, its first and last 64 KiB and (for Parquet) its whole footer."""
    fd = os.open(path, READ_FLAGS)
    try:
        return _check_fd(fd, os.fstat(fd).st_size if size is None else size)
    finally:
        os.close(fd)


def stat_and_check(path: str) -> Tuple[int, int, str]:
    """(size, modification time, :func:`file_check`) of a file, opening it once."""
    fd = os.open(path, READ_FLAGS)
    try:
        st = os.fstat(fd)
        return st.st_size, st.st_mtime_ns, _check_fd(fd, st.st_size)
    finally:
        os.close(fd)


def _check_fd(fd: int, size: int) -> str:
    """(plain system calls: a Python file object costs more than reading a small output)"""
    h = hashlib.sha256(str(size).encode())
    head = pread_full(fd, min(HEAD_TAIL_BYTES, size), 0)
    h.update(head)
    if size <= HEAD_TAIL_BYTES:  # a small file: read whole already (the usual task output of a test)
        h.update(head)
        return h.hexdigest()
    tail = HEAD_TAIL_BYTES
    if size >= 12:
        footer = footer_length(pread_full(fd, 8, size - 8), size, DIGEST_MAX_FOOTER_BYTES)
        if footer is not None:
            tail = max(tail, footer + 8)
    start = max(0, size - tail)
    h.update(pread_full(fd, size - start, start))
    return h.hexdigest()


def verify_files(files) -> Optional[str]:
    """None if every file of an entry is as recorded, else what is wrong. ``files``: (path relative
    to the task's output folder, where it is in the entry, and from the entry's record its size,
    modification time and :func:`file_check`) of each file."""
    for rel, path, size, mtime_ns, check in files:
        try:
            st = os.stat(path)
        except OSError:
            return f"file {rel} is missing"
        if st.st_size != size:
            return f"file {rel} has {st.st_size} bytes, not {size}"
        if st.st_mtime_ns != mtime_ns:
            return f"file {rel} was modified after it was cached"
        try:
            if file_check(path, size) != check:
                return f"file {rel} does not match its checksum"
        except OSError as e:
            return f"file {rel} cannot be read ({e})"
    return None
