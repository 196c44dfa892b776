"""The job's own log sinks, written without loguru: its console lines and ``log/{name}.log``.

A job's scheduler process adds them with ``logger.add_plain`` (see ``smallpond.common``): they
write loguru's default line (``{time} | {level: <8} | {name}:{function}:{line} - {message}``)
themselves, so a job whose process never imported loguru does not import it for its log (~40 ms
of every job's start). Each can say what it cannot do (``needs_loguru``): a colored console line,
or a file past :data:`PLAIN_FILE_LIMIT` (loguru rotates it); the logger then moves every sink
into loguru (``loguru_args``) and the record, and every later one, is loguru's.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from smallpond.common import LEVEL_NUMBERS, loguru_file_path
from smallpond.io.filesystem import APPEND_FLAGS, close_quietly, write_all

#: a plain file sink hands its file to loguru (which rotates it) once it holds this many bytes
PLAIN_FILE_LIMIT = 10 << 20


class PlainSink:
    """A sink of the job's records: ``write`` (a function taking each line, as a loguru sink) or
    the file ``path`` (appended to, unbuffered); ``options``: loguru's for the same sink."""

    def __init__(self, level, *, write: Optional[Callable[[str], Any]] = None, path: Optional[str] = None, **options) -> None:
        self.level = level
        self.level_no = LEVEL_NUMBERS.get(level, 0) if isinstance(level, str) else int(level)
        self._write = write
        self.path = path
        self.options = options
        # a colored line is loguru's to make; a level of the user's own, loguru's to tell
        self.needs_loguru = bool(options.get("colorize")) or (isinstance(level, str) and level not in LEVEL_NUMBERS)
        self._fd: Optional[int] = None
        self._size = 0
        if path is not None and not self.needs_loguru:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # created when added, as loguru does
            self._fd = os.open(path, APPEND_FLAGS, 0o666)
            self._size = os.fstat(self._fd).st_size

    def write(self, level: str, name: Optional[str], function: str, line: int, message: str) -> None:
        text = log_line(level, name, function, line, message)
        if self._fd is None:
            self._write(text)
            return
        data = text.encode("utf-8", "backslashreplace")
        write_all(self._fd, data)
        self._size += len(data)
        if self._size >= PLAIN_FILE_LIMIT:
            self.needs_loguru = True

    def loguru_args(self) -> Tuple[Any, Dict[str, Any]]:
        target = self._write if self.path is None else loguru_file_path(self.path)
        return target, {"level": self.level, **self.options}

    def close(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None


def log_line(level: str, name: Optional[str], function: str, line: int, message: str) -> str:
    """A record as loguru's default format writes it to a sink without colors."""
    return f"{log_stamp()} | {level: <8} | {name}:{function}:{line} - {message}\n"


_stamp_second = [0, ""]


def log_stamp() -> str:
    """loguru's default time stamp (``YYYY-MM-DD HH:MM:SS.mmm``, local time), its seconds part
    formatted once per second."""
    now = time.time()
    second = int(now)
    if _stamp_second[0] != second:
        _stamp_second[0] = second
        _stamp_second[1] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
    return f"{_stamp_second[1]}.{int((now - second) * 1000):03d}"
