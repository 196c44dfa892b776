"""Small utilities: capturing stdlib logging in loguru, running commands, background iteration,
wrapping an object."""

from __future__ import annotations

import logging
import queue
import subprocess
import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union


class InterceptHandler(logging.Handler):
    """Send stdlib ``logging`` records to loguru (so they land in smallpond's log files)."""

    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        try:
            level: Union[str, int] = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def capture_stdlib_logging(level: int = logging.INFO) -> None:
    """Route the root stdlib logger through loguru."""
    logging.basicConfig(handlers=[InterceptHandler()], level=level, force=True)


def execute_command(cmd: Union[str, List[str]], env: Optional[Dict[str, str]] = None, shell: bool = False) -> Iterator[str]:
    """Run a command and yield its output lines; raise CalledProcessError on a non-zero exit.

    The pipe is closed and the process waited for however the iteration ends; a caller that stops
    early (``break``, ``close()``) kills the command rather than leave it running."""
    proc = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = False
    try:
        for line in proc.stdout or ():
            yield line.rstrip("\n")
        finished = True
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        code = proc.wait()
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


class ConcurrentIterError(Exception):
    """An exception raised by the producer of a :class:`ConcurrentIter`."""


class ConcurrentIter:
    """Iterate ``iterable`` in a background thread, buffering up to ``max_buffer_size`` items.

    Use as a context manager: ``with ConcurrentIter(it) as items: for x in items: ...``.
    """

    _DONE = object()

    def __init__(self, iterable: Iterable, max_buffer_size: int = 1, name: Optional[str] = None) -> None:
        self.iterable = iterable
        self.queue: "queue.Queue" = queue.Queue(maxsize=max(1, max_buffer_size))
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.name = name

    def _produce(self) -> None:
        try:
            for item in self.iterable:
                while not self.stop.is_set():
                    try:
                        self.queue.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.queue.put((True, self._DONE))
        except BaseException as e:  # handed to the consumer
            self.queue.put((False, e))

    def __enter__(self) -> Iterator:
        self.thread = threading.Thread(target=self._produce, daemon=True, name=self.name)
        self.thread.start()
        return self._consume()

    def _consume(self) -> Iterator:
        while True:
            ok, item = self.queue.get()
            if not ok:
                raise ConcurrentIterError(f"producer failed: {item!r}") from item
            if item is self._DONE:
                return
            yield item

    def __exit__(self, *exc) -> None:
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread is not None:
            self.thread.join(timeout=5)


def overall_stats(
    ctx,
    inp,
    sql_per_part: str,
    sql_on_merged: str,
    output_name: str,
    output_dir: Optional[str] = None,
    cpu_limit: int = 2,
    memory_limit: int = 30 * (1 << 30),
):
    """Statistics over a whole dataset in two SQL steps: ``sql_per_part`` runs on each partition
    of ``inp``, its results are gathered into one partition and ``sql_on_merged`` combines them
    (its output is named ``output_name``). With ``output_dir`` the result is also published there
    by a DataSinkNode. Returns the last node.

    Example::

        stats = overall_stats(ctx, parts, "select count(*) as n from {0}", "select sum(n) as n from {0}", "row_count")
    """
    import os

    from smallpond.logical.node import DataSetPartitionNode, DataSinkNode, SqlEngineNode

    per_part = SqlEngineNode(ctx, (inp,), sql_per_part, cpu_limit=cpu_limit, memory_limit=memory_limit)
    merged = DataSetPartitionNode(ctx, (per_part,), npartitions=1)
    stats = SqlEngineNode(ctx, (merged,), sql_on_merged, output_name=output_name, cpu_limit=cpu_limit, memory_limit=memory_limit)
    if output_dir is not None:
        return DataSinkNode(ctx, (stats,), os.path.abspath(output_dir))
    return stats


def cprofile_to_string(perf_profile, order_by: str = "cumulative", top_k: int = 20) -> str:
    """The ``top_k`` entries of a ``cProfile.Profile`` as text, sorted by ``order_by``."""
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(perf_profile, stream=out).sort_stats(order_by).print_stats(top_k)
    return out.getvalue()


class Wrapper:
    """An object standing for another: what it does not define itself is the wrapped object's.

    Upstream 0.15 has a ``Wrapper`` here; the reference names it without saying what it does, so
    this is the plain proxy a script would subclass: attributes and methods are read from the
    wrapped object (``Wrapper(table).num_rows``), a subclass overrides what it defines, an
    attribute set on the wrapper stays on the wrapper, ``str``/``repr`` are the wrapped object's,
    and it pickles and copies (``copy.deepcopy`` too) with what it wraps (a task may carry one to a
    worker). Operators
    (``len(w)``, ``w[0]``) are not forwarded: Python looks them up on the class.

    >>> class Shouting(Wrapper):
    ...     def upper(self):
    ...         return self._wrapped.upper() + "!"
    >>> w = Shouting("hello")
    >>> w.upper(), w.title(), str(w)
    ('HELLO!', 'Hello', 'hello')
    """

    def __init__(self, base_obj: Any) -> None:
        self._wrapped = base_obj

    def __getattr__(self, name: str) -> Any:
        # (only for names the wrapper lacks; ``_wrapped`` itself missing means a half-built
        # object, as while unpickling: no recursion into it)
        if name == "_wrapped":
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __deepcopy__(self, memo: dict) -> "Wrapper":
        # (defined here: copy.deepcopy looks it up on the instance, so the wrapped object's, found
        # through __getattr__, would return a copy of it alone, the wrapper and its overrides lost)
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            new.__dict__[name] = copy.deepcopy(value, memo)
        return new

    def __str__(self) -> str:
        return str(self._wrapped)

    def __repr__(self) -> str:
        return repr(self._wrapped)
