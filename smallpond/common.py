"""Public constants and small helpers shared by every layer.

Nothing here imports heavy modules: `import smallpond.common` must stay cheap.
"""

from __future__ import annotations

import contextlib
import gc
import math
import numbers
import sys
import threading
from typing import Any, Dict, Iterable, Iterator, List, Sequence, TypeVar

T = TypeVar("T")

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
TB = 1024 * GB

DEFAULT_MAX_RETRY_COUNT = 5
DEFAULT_MAX_FAIL_COUNT = 3
MAX_ROW_GROUP_SIZE = 10 * 1024 * 1024
MAX_ROW_GROUP_BYTES = 2 * GB
MAX_NUM_ROW_GROUPS = 256
MAX_PARQUET_FILE_BYTES = 8 * GB
DEFAULT_ROW_GROUP_SIZE = 122880
DEFAULT_ROW_GROUP_BYTES = DEFAULT_ROW_GROUP_SIZE * 4 * KB
DEFAULT_BATCH_SIZE = 122880
RAND_SEED_BYTE_LEN = 128
DATA_PARTITION_COLUMN_NAME = "__data_partition__"
#: the one column SQL sees in an empty input whose columns are unknown (it has no rows); an output
#: that still has it (and no rows) says nothing about the real columns and is dropped
EMPTY_PLACEHOLDER_COLUMN = "__empty__"
PARQUET_METADATA_KEY_PREFIX = "SMALLPOND:"
INPUT_VIEW_PREFIX = "__input"
GENERATED_COLUMNS = ("filename", "file_row_number")


def pytest_running() -> bool:
    import sys

    return "pytest" in sys.modules


def imported_module(name: str):
    """The module ``name`` if its import is complete, else None (not imported, or being imported).

    A module another thread is importing is in ``sys.modules`` before its body has run, without
    most of its attributes: ``smallpond.init`` imports pyarrow and pandas (and so numpy) in a
    background thread (``session.warm_result_imports``), so ``sys.modules.get("numpy")`` may be
    a half-initialized numpy while a job is planned. ``importlib`` marks such a module's spec
    ``_initializing`` until its body is done (CPython reads the same flag).
    """
    mod = sys.modules.get(name)
    if mod is None or getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return None
    return mod


def import_in_background(modules):
    """Import ``modules`` in order in a background thread; returns the thread, or None if every
    one is imported (or being imported) already.

    Python holds a lock per module being imported, so code importing one of them meanwhile waits
    for it to be done rather than importing it twice (see :func:`imported_module` for reading
    ``sys.modules`` meanwhile). A module that is missing or fails is left for whoever needs it to
    get the error. The thread is not a daemon: an interpreter that exits early waits for it, and
    is never torn down in the middle of an import.
    """
    import sys
    import threading

    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return None

    def run() -> None:
        import importlib

        for name in todo:
            try:
                importlib.import_module(name)
            except BaseException:
                return

    thread = threading.Thread(target=run, name="smallpond-warm-imports")
    thread.start()
    return thread


def clamp_value(val, minval, maxval):
    return max(minval, min(val, maxval))


def clamp_row_group_size(val, minval=DEFAULT_ROW_GROUP_SIZE, maxval=MAX_ROW_GROUP_SIZE):
    return clamp_value(val, minval, maxval)


def clamp_row_group_bytes(val, minval=DEFAULT_ROW_GROUP_BYTES, maxval=MAX_ROW_GROUP_BYTES):
    return clamp_value(val, minval, maxval)


def split_into_rows(items: Sequence[T], npartitions: int) -> List[List[T]]:
    """Split into `npartitions` contiguous chunks; the first ``len % n`` chunks get one extra item.

    >>> split_into_rows(list(range(10)), 3)
    [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    """
    items = list(items)
    if npartitions <= 0:
        raise ValueError(f"npartitions must be positive, got {npartitions}")
    q, r = divmod(len(items), npartitions)
    out, start = [], 0
    for i in range(npartitions):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


def split_into_cols(items: Sequence[T], npartitions: int) -> List[List[T]]:
    """Round-robin split.

    >>> split_into_cols(list(range(5)), 2)
    [[0, 2, 4], [1, 3]]
    """
    if npartitions <= 0:
        raise ValueError(f"npartitions must be positive, got {npartitions}")
    items = list(items)
    return [items[i::npartitions] for i in range(npartitions)]


def get_nth_partition(items: Sequence[T], n: int, npartitions: int) -> List[T]:
    """The n-th chunk of :func:`split_into_rows` without building the others."""
    q, r = divmod(len(items), npartitions)
    start = n * q + min(n, r)
    end = start + q + (1 if n < r else 0)
    return list(items[start:end])


def quote_identifier(name: str) -> str:
    """``name`` as a SQL identifier, whatever characters it holds (DuckDB's double quotes).

    >>> quote_identifier('a"b')
    '"a""b"'
    """
    return '"' + str(name).replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a SQL string literal.

    >>> quote_literal("it's")
    "'it''s'"
    """
    return "'" + str(text).replace("'", "''") + "'"


def is_bool(value) -> bool:
    """Whether ``value`` is a boolean: Python's or NumPy's (``np.bool_``, no subclass of ``bool``)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def as_flag(owner: str, name: str, value) -> bool:
    """A yes/no parameter as a bool: ``True``/``False`` (NumPy's too), ``None`` (False, as upstream
    took it), an integer ``1``/``0`` (NumPy's too) or the text ``"true"``/``"false"``/``"1"``/``"0"``
    (any case). Anything else is refused, naming ``owner`` and ``name``: ``"false"`` must not count
    as true, and no other text reaches the SQL.

    >>> as_flag("CsvDataSet", "header", "False"), as_flag("CsvDataSet", "header", 1), as_flag("x", "y", None)
    (False, True, False)
    """
    if value is None or is_bool(value):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    from smallpond.errors import ParameterError

    raise ParameterError(f"{owner}: {name} must be True or False, got {value!r}")


def sql_bool(value) -> str:
    """A flag as an SQL boolean literal: ``true`` or ``false``, never the value's own text (an
    option given as ``"true) UNION ALL SELECT ..."`` would otherwise be pasted into the query).

    >>> sql_bool(True), sql_bool(0), sql_bool("true) --")
    ('true', 'false', 'true')
    """
    return "true" if value else "false"


def escape_braces(text: str) -> str:
    """``text`` as it stands for itself in a SQL string that is formatted (``partial_sql``,
    ``filter``, ``map``, a SQL node's query), where ``{0}`` names an input: braces doubled.

    >>> escape_braces(quote_literal("a{0}b"))
    "'a{{0}}b'"
    >>> "select * from {0} where s = " + escape_braces(quote_literal("a{0}b"))
    "select * from {0} where s = 'a{{0}}b'"
    """
    return str(text).replace("{", "{{").replace("}", "}}")


def as_subquery(sql: str) -> str:
    """A query as it can be put between parentheses (``COPY (...)``, ``FROM (...)``): without
    trailing semicolons, comments and blanks (a trailing ``--`` comment would swallow the closing
    parenthesis, a semicolon ends the statement).

    >>> as_subquery("select 1;  ")
    'select 1'
    >>> as_subquery("select 1; -- one row")
    'select 1'
    >>> as_subquery("select '--;' as s")
    "select '--;' as s"
    """
    text = sql.rstrip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if "--" not in text.rpartition("\n")[2] and not text.endswith("*/"):
        return text
    # a comment at the end, perhaps after a semicolon: DuckDB's tokenizer tells a comment from
    # "--" in a string literal; trailing comment and ";" tokens are cut off
    try:
        import duckdb

        tokens = duckdb.tokenize(text)
    except Exception:  # (an unterminated literal: DuckDB will report it)
        return sql_fragment(text)
    cut = len(text)
    while tokens and (tokens[-1][1] == duckdb.token_type.comment or text.startswith(";", tokens[-1][0])):
        cut = tokens.pop()[0]
    return text[:cut].rstrip()


def sql_fragment(text: str) -> str:
    """A piece of SQL (a condition, a select list, an ORDER BY item) as it can be followed by more
    SQL: ending with a line break when its last line holds ``--``, whose comment would otherwise
    swallow what follows (``where (a > 1 -- big)`` loses its parenthesis, ``order by b -- new, a``
    silently drops ``a``). Text without ``--`` on its last line is returned as it is.

    >>> sql_fragment("a > 1 -- big ones")
    'a > 1 -- big ones\\n'
    >>> sql_fragment("a > 1")
    'a > 1'
    """
    return text + "\n" if "--" in text.rpartition("\n")[2] else text


def loguru_file_path(path: str) -> str:
    """``path`` for a loguru file sink, which formats it (``{time}``): braces are kept literal.

    >>> loguru_file_path("/data/{0}/job.log")
    '/data/{{0}}/job.log'
    """
    return escape_braces(path)


def installed_version(dist: str) -> "str | None":
    """The installed version of distribution ``dist``, None if it is not installed.

    The answer of ``importlib.metadata.version``, read from the ``{name}-{version}.dist-info``
    folder found first on ``sys.path`` without importing ``importlib.metadata`` (~25 ms at a
    job's start, where the engine's versions are recorded); other layouts (eggs, zip files) go
    through ``importlib.metadata``.

    >>> installed_version("no-such-distribution-here") is None
    True
    """
    import os
    import re
    import sys

    want = re.sub(r"[-_.]+", "_", dist).lower()
    if want in _versions_found:
        return _versions_found[want]
    found = None
    for entry in sys.path:
        names = _path_listing.get(entry)
        if names is None:
            try:
                names = _path_listing[entry] = [n for n in os.listdir(entry or ".") if n.endswith(".dist-info")]
            except OSError:
                names = _path_listing[entry] = []
        for n in names:
            name, _, version = n[: -len(".dist-info")].rpartition("-")
            if re.sub(r"[-_.]+", "_", name).lower() == want and version:
                found = version
                break
        if found:
            break
    if found is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version(dist)
        except PackageNotFoundError:
            found = None
    _versions_found[want] = found
    return found


_versions_found: Dict[str, "str | None"] = {}
_path_listing: Dict[str, List[str]] = {}


def human_bytes(n: float) -> str:
    """A byte count with a binary unit.

    >>> human_bytes(4_718_592)
    '4.5 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PiB"  # pragma: no cover


def some_of(items: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` of ``items`` joined by commas, and how many more there are:
    ``"a, b, c and 4 more"``."""
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def human_seconds(s: float) -> str:
    """A duration for people.

    >>> human_seconds(0.25), human_seconds(3.21), human_seconds(600)
    ('250 ms', '3.2 s', '10.0 min')
    """
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class TextBlock(str):
    r"""A ``str`` that a notebook or REPL shows as its text (lines, not a quoted literal with ``\n``).

    >>> TextBlock("a\nb")
    a
    b
    """

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


def next_power_of_two(x: int) -> int:
    return 2 ** (x - 1).bit_length()


def round_up(x: int, align: int = MB) -> int:
    return int(math.ceil(x / align) * align)


def first_value_in_dict(d: Dict[Any, T]) -> T:
    return next(iter(d.values())) if d else None


@contextlib.contextmanager
def rare_full_collections() -> Iterator[None]:
    """Raise the garbage collector's third threshold inside the block, so that its full
    collections are rare: the planner and the scheduler build and hold objects that live as long
    as the job (tasks, their outputs, cache keys), and each full collection walks all of them again
    (at 100,000 tasks they took ~3.5 s of a ~20 s schedule). Young objects are collected as usual;
    the thresholds are put back when the block ends."""
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], max(old[2], 1000))
    try:
        yield
    finally:
        gc.set_threshold(*old)


def chunks(items: Iterable[T], size: int) -> Iterable[List[T]]:
    buf: List[T] = []
    for it in items:
        buf.append(it)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


#: the spellings that turn an ``SP_*`` switch off (``SP_PROGRESS=0``) or on (``SP_SUMMARY=yes``)
SWITCH_OFF = ("0", "false", "off", "no")
SWITCH_ON = ("1", "true", "on", "yes")


def env_setting(name: str) -> str:
    """The value of environment variable ``name``, stripped and lower-cased ("" if unset)."""
    import os

    return os.environ.get(name, "").strip().lower()


def env_switch(name: str, *more: str) -> str:
    """:func:`env_setting` of an on/off variable: "" (unset), a spelling of :data:`SWITCH_OFF` or
    :data:`SWITCH_ON`, or one of ``more``; any other value is an error naming the variable (a
    typo such as ``SP_PROGRESS=flase`` must not be taken silently for "on")."""
    value = env_setting(name)
    if value and value not in SWITCH_OFF + SWITCH_ON + more:
        from smallpond.errors import ParameterError

        allowed = ", ".join(SWITCH_OFF + SWITCH_ON + more)
        raise ParameterError(f"{name} must be one of {allowed} (or unset), got {value!r}")
    return value


def _share_loguru_lib_dirs(seed=None) -> None:
    """Compute loguru's list of library folders once per ``sys.path``, not once per sink.

    loguru builds an ``ExceptionFormatter`` for every sink added, and each one asks ``sysconfig``
    for the paths of every installation scheme (~11-25 ms on this project's test machine, ~70%
    of a job's start in a process that already imported everything). The answer depends only on
    ``sys.path``, so it is kept per ``sys.path`` and a fresh copy handed out each time. Only that
    private helper of loguru's is wrapped, with the same results; a loguru without it is left
    alone. ``seed``: loguru's global logger, when its import just now was the process's first:
    the default sink it added holds the list for this very ``sys.path`` (~3.5 ms not spent twice).
    """
    import sys

    try:
        from loguru._better_exceptions import ExceptionFormatter
    except Exception:
        return
    original = ExceptionFormatter.__dict__.get("_get_lib_dirs")
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_smallpond_shared", False):
        return
    compute = original.__func__
    memo: Dict[tuple, list] = {}

    def _get_lib_dirs():
        key = tuple(sys.path)
        dirs = memo.get(key)
        if dirs is None:
            memo.clear()
            dirs = memo[key] = compute()
        return list(dirs)

    _get_lib_dirs._smallpond_shared = True  # type: ignore[attr-defined]
    _get_lib_dirs.__wrapped__ = compute  # type: ignore[attr-defined]
    ExceptionFormatter._get_lib_dirs = staticmethod(_get_lib_dirs)
    for handler in getattr(getattr(seed, "_core", None), "handlers", {}).values():
        dirs = getattr(getattr(handler, "_exception_formatter", None), "_lib_dirs", None)
        if isinstance(dirs, list):
            memo[tuple(sys.path)] = list(dirs)
            break


#: what to run once loguru is imported in this process (:func:`when_loguru_is_imported`)
_loguru_callbacks: List[Any] = []


def when_loguru_is_imported(fn) -> None:
    """Run ``fn()`` once loguru is imported in this process: now if it is already.

    A worker process routes loguru's records into its task logs this way, so a worker whose
    tasks never log through loguru never imports it (~55 ms of its start: loguru imports asyncio).
    smallpond's own logger imports it on its first call, and a task's ``from loguru import
    logger`` is caught by a one-shot import hook; either way ``fn`` runs before the first record.
    """
    import sys

    if "loguru" in sys.modules and not _SmallpondLogger._creating:
        fn()
        return
    _loguru_callbacks.append(fn)
    if "loguru" not in sys.modules and not any(isinstance(f, _LoguruImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _LoguruImportHook())


def _run_loguru_callbacks() -> None:
    while _loguru_callbacks:
        _loguru_callbacks.pop(0)()


class _LoguruImportHook:
    """A one-shot meta path finder: loguru is found by the other finders as usual, and the
    callbacks run as soon as its module has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != "loguru":
            return None
        import importlib.util
        import sys

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = RunAfterExec(spec.loader, _after_loguru_import)
        return spec


def _after_loguru_import(module) -> None:
    if not _SmallpondLogger._creating:  # else smallpond's logger runs them once it exists
        _run_loguru_callbacks()


class RunAfterExec:
    """A loader that calls ``after(module)`` once the module it wraps (``inner``) has executed: a
    post-import hook, for a meta path finder to put on the spec the other finders return (used
    for loguru here, and for ``numpy.random`` by :mod:`smallpond.execution.task`)."""

    def __init__(self, inner, after) -> None:
        self.inner = inner
        self.after = after

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        self.after(module)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class _SmallpondLogger:
    """smallpond's own loguru logger, created on first use.

    It has a core of its own, so the host process's loguru configuration is never touched: the
    library adds its sinks here (a console sink at WARNING by default, the job's log files) and
    removes only those. User code inside tasks logs through loguru's global logger as usual; the
    worker processes route that into each task's log file.

    A job's own sinks (its console lines and ``log/{name}.log``) are added with :meth:`add_plain`:
    until something needs loguru itself they are written without it, so a job whose process never
    imported loguru does not import it (~40 ms of every job's start, most of it asyncio). The first
    call that needs loguru (any call but the plain levels' ``debug`` ... ``critical``, a record
    that one of them cannot write, another sink) creates the logger and moves them into it.
    """

    _logger = None
    #: sinks written without loguru (:meth:`add_plain`), by id (negative), while ``_logger`` is None
    _plain: Dict[int, Any] = {}
    #: a plain sink's id -> its id in loguru, once the logger was created
    _moved: Dict[int, int] = {}
    _plain_ids = 0
    #: the default console sink was removed before the logger was created
    _no_default = False
    _default_sink: "int | None" = None
    #: the default console sink is wanted but not added yet: it is added by the first call that
    #: logs (adding a loguru sink costs milliseconds, and a job replaces it with its own at once)
    _want_default = False
    #: the logger is being created (loguru's import callbacks wait until it exists)
    _creating = False

    def _get(self):
        if _SmallpondLogger._logger is None:
            _SmallpondLogger._creating = True
            try:
                _SmallpondLogger._logger = self._create()
            finally:
                _SmallpondLogger._creating = False
            with _plain_lock:  # the job's plain sinks go on as loguru sinks
                if _SmallpondLogger._no_default:
                    _SmallpondLogger._want_default = _SmallpondLogger._no_default = False
                for plain_id, sink in list(_SmallpondLogger._plain.items()):
                    target, options = sink.loguru_args()
                    _SmallpondLogger._moved[plain_id] = _SmallpondLogger._logger.add(target, **options)
                    sink.close()
                _SmallpondLogger._plain.clear()
            _run_loguru_callbacks()
        return _SmallpondLogger._logger

    def add_plain(self, sink) -> int:
        """Add ``sink``, written without loguru while the logger is not created; returns its id
        (for :meth:`remove`). ``sink`` has ``level_no`` (the lowest level it takes),
        ``needs_loguru`` (True when it can write no more records itself), ``write(level, name,
        function, line, message)``, ``loguru_args()`` (the sink and options to add to loguru
        instead) and ``close()``."""
        if _SmallpondLogger._logger is not None:
            target, options = sink.loguru_args()
            return self.add(target, **options)
        with _plain_lock:
            _SmallpondLogger._plain_ids -= 1
            _SmallpondLogger._plain[_SmallpondLogger._plain_ids] = sink
            return _SmallpondLogger._plain_ids

    def _plain_call(self, level: str):
        """``logger.{level}(message, *args, **kwargs)`` as loguru does it (``message.format(*args,
        **kwargs)`` when given any), written to the plain sinks that take the level."""
        level_no = LEVEL_NUMBERS[level]

        def log(message, *args, **kwargs):
            with _plain_lock:
                # (a warning goes to the default console sink too, unless a job removed it)
                if (
                    _SmallpondLogger._logger is None
                    and _SmallpondLogger._plain
                    and (_SmallpondLogger._no_default or level_no < 30)
                ):
                    sinks = [s for s in _SmallpondLogger._plain.values() if level_no >= s.level_no]
                    if not any(s.needs_loguru for s in sinks):
                        if sinks:
                            import sys

                            frame = sys._getframe(1)
                            text = str(message)
                            if args or kwargs:
                                text = text.format(*args, **kwargs)
                            for s in sinks:
                                s.write(level, frame.f_globals.get("__name__"), frame.f_code.co_name, frame.f_lineno, text)
                        return
            self.__getattr__("opt")(depth=1).log(level, message, *args, **kwargs)

        return log

    @staticmethod
    def _create():
        import sys

        first = "loguru" not in sys.modules  # then sys.path is as when its default sink was added
        from loguru import logger as global_logger

        _share_loguru_lib_dirs(global_logger if first else None)
        try:
            from loguru._logger import Core, Logger

            own = Logger(
                core=Core(),
                exception=None,
                depth=0,
                record=False,
                lazy=False,
                colors=False,
                raw=False,
                capture=True,
                patchers=[],
                extra={},
            )
            _SmallpondLogger._want_default = True
        except Exception:  # a loguru without these internals: share its global logger
            own = global_logger
        return own

    def remove_default_sink(self) -> None:
        """Drop the default console sink (a session or the Driver adds its own at its level)."""
        if _SmallpondLogger._logger is None:
            _SmallpondLogger._no_default = True
            return
        lg = self._get()
        _SmallpondLogger._want_default = False
        if _SmallpondLogger._default_sink is not None:
            try:
                lg.remove(_SmallpondLogger._default_sink)
            except ValueError:
                pass
            _SmallpondLogger._default_sink = None

    def restore_default_sink(self) -> None:
        """Put the default console sink back (when a session or the Driver removed its own): at
        the next call that logs, so a process that ends with its job never pays for it."""
        if _SmallpondLogger._logger is None:
            _SmallpondLogger._no_default = False
            return
        lg = self._get()
        if _SmallpondLogger._default_sink is None and lg is not _global_logger():
            _SmallpondLogger._want_default = True

    def remove(self, handler_id=None) -> None:
        """loguru's ``remove``; removing every sink (no id) also drops the default console sink
        that was not added yet."""
        if isinstance(handler_id, int) and handler_id < 0:  # a plain sink's (add_plain)
            with _plain_lock:
                sink = _SmallpondLogger._plain.pop(handler_id, None)
                if sink is not None:
                    sink.close()
                    return
                if handler_id not in _SmallpondLogger._moved:
                    raise ValueError(f"There is no existing handler with id {handler_id!r}")
                handler_id = _SmallpondLogger._moved.pop(handler_id)
        lg = self._get()
        if handler_id is None:
            _SmallpondLogger._want_default = False
            _SmallpondLogger._default_sink = None
        elif handler_id == _SmallpondLogger._default_sink:
            _SmallpondLogger._default_sink = None
        lg.remove(handler_id)

    def __getattr__(self, name: str):
        if _SmallpondLogger._logger is None and _SmallpondLogger._plain and name in LEVEL_NUMBERS_BY_CALL:
            return self._plain_call(LEVEL_NUMBERS_BY_CALL[name])
        lg = self._get()
        if _SmallpondLogger._want_default and name in _LOGGING_CALLS:
            import sys

            _SmallpondLogger._want_default = False
            _SmallpondLogger._default_sink = lg.add(sys.stderr, level="WARNING")
        return getattr(lg, name)


#: loguru's standard levels, by name
LEVEL_NUMBERS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
#: the logger's methods that log at one of them, and the level's name
LEVEL_NUMBERS_BY_CALL = {name.lower(): name for name in LEVEL_NUMBERS}
_plain_lock = threading.RLock()

#: the logger's methods that log, or return a logger that will (the default sink must be there)
_LOGGING_CALLS = frozenset(
    (
        "trace",
        "debug",
        "info",
        "success",
        "warning",
        "error",
        "critical",
        "exception",
        "log",
        "opt",
        "bind",
        "patch",
        "contextualize",
        "catch",
    )
)


def _global_logger():
    from loguru import logger as global_logger

    return global_logger


#: smallpond's logger (loguru API); see :class:`_SmallpondLogger`
logger = _SmallpondLogger()

from smallpond.errors import InjectedFault, NonzeroExitCode, OutOfMemory, SmallpondError  # noqa: E402,F401

# upstream's common module star-imported the UDF helpers (UDFType, udf, ...); they are forwarded
# lazily so that importing the constants loads no logical-layer code
_UDF_NAMES = (
    "UDFType",
    "UDFStructType",
    "UDFListType",
    "UDFMapType",
    "UDFAnyParameters",
    "UDFContext",
    "PythonUDFContext",
    "ExternalModuleContext",
    "DuckDbExtensionContext",
    "UserDefinedFunction",
    "udf",
)


def __getattr__(name: str):
    if name in _UDF_NAMES:
        from smallpond.logical import udf

        return getattr(udf, name)
    raise AttributeError(f"module 'smallpond.common' has no attribute {name!r}")


__all__ = [
    "some_of",
    "KB", "MB", "GB", "TB",
    "DEFAULT_MAX_RETRY_COUNT", "DEFAULT_MAX_FAIL_COUNT", "MAX_ROW_GROUP_SIZE", "MAX_ROW_GROUP_BYTES",
    "MAX_NUM_ROW_GROUPS", "MAX_PARQUET_FILE_BYTES", "DEFAULT_ROW_GROUP_SIZE", "DEFAULT_ROW_GROUP_BYTES",
    "DEFAULT_BATCH_SIZE", "RAND_SEED_BYTE_LEN", "DATA_PARTITION_COLUMN_NAME", "PARQUET_METADATA_KEY_PREFIX",
    "INPUT_VIEW_PREFIX", "GENERATED_COLUMNS",
    "pytest_running", "clamp_value", "clamp_row_group_size", "clamp_row_group_bytes", "split_into_rows",
    "split_into_cols", "get_nth_partition", "quote_identifier", "quote_literal", "escape_braces",
    "human_bytes", "human_seconds", "TextBlock",
    "next_power_of_two", "round_up",
    "first_value_in_dict", "chunks",
    "SmallpondError", "InjectedFault", "OutOfMemory", "NonzeroExitCode",
    *_UDF_NAMES,
]  # fmt: skip
