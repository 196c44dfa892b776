"""DuckDB for tasks: connections with the task's limits, error mapping, and SQL helpers.

Each task gets a connection with ``threads`` = its CPUs (or more, when the scheduler gives a task
whose output cannot change idle CPUs: :func:`task_threads`), ``memory_limit`` = its effective memory
(decided by the scheduler, see :func:`smallpond.execution.runtime.default_memory_limit`) and a
spill directory under ``temp/``, so a task larger than its memory spills instead of failing.

Everything that reaches SQL from outside (paths, column names, values) goes through
:func:`~smallpond.common.quote_literal` / :func:`~smallpond.common.quote_identifier`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import string
from typing import Dict, List, Optional, Tuple

from smallpond.common import MB, as_subquery, quote_literal
from smallpond.errors import OutOfMemory, UserCodeError
from smallpond.execution.task import Task
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.io.sqltext import code_before, is_distinct_from, top_level_text, without_quoted_text, word_is_a_name
from smallpond.logical.dataset import DataSet
from smallpond.logical.determinism import sql_may_draw_random  # noqa: F401  (the ops ask it here)

# DuckDB error classes that can never succeed on retry.
_USER_ERRORS = (
    "ParserException",
    "BinderException",
    "CatalogException",
    "SyntaxException",
    "InvalidInputException",
    "ConversionException",
    "NotImplementedException",
    "TypeMismatchException",
    "OutOfRangeException",
    "ConstraintException",
)


def map_duckdb_error(e: BaseException, sql: str) -> BaseException:
    """A DuckDB exception as the error class the scheduler decides on: :class:`OutOfMemory`
    (retry with more memory), :class:`UserCodeError` (fail fast), or itself (retry)."""
    name = type(e).__name__
    if name == "OutOfMemoryException" or "Out of Memory" in str(e):
        return OutOfMemory(f"DuckDB ran out of memory: {e}")
    if name in _USER_ERRORS:
        err = UserCodeError(f"{name}: {e}")
        err.sql = sql
        return err
    return e


# A DuckDB database costs ~30 ms of CPU to open (it builds its whole function catalog), more than
# a small task's query. Worker processes therefore keep one database and give each task a fresh
# cursor on it: the cursor has its own temp views and tables and its own random seed, and the
# task's threads and memory limit are set on it before it runs. What would outlive a task in a
# shared database (tables or views it creates, settings, attached databases, UDFs) is why a task
# whose SQL might do any of that still gets a database of its own.
_share_database = False
_shared_databases: Dict[tuple, object] = {}
_shared_settings: Dict[int, Dict[str, str]] = {}
_MAY_OUTLIVE_TASK = re.compile(
    r"\b(create|drop|alter|insert|update|delete|truncate|set|reset|pragma|attach|detach|use|install|load|call|"
    r"import|export|checkpoint|begin|commit|rollback|vacuum|comment|prepare|execute|deallocate)\b",
    re.IGNORECASE,
)
#: SQL reading data of its own, beside the inputs it is given ({0}, {1}, ...): a table function
#: over files (read_parquet, parquet_scan, delta_scan, glob, parquet_metadata, ...), a file
#: named after FROM or JOIN (a replacement scan: 'x.csv', "data/*.parquet", COPY t FROM 'f'), an
#: attached or imported database. Searched in the text without its comments, quoted text
#: included (SQL held in a string, as query() runs it, counts too)...
_READS_FILES = re.compile(
    r"\b(?:read_\w+|\w+_scan|glob|sniff_csv|parquet_\w+)\s*\("
    r"|(?<!['\"])\b(?:from|join)\s+['\"]"  # (not the word in quotes: select 'from' as f)
    r"|\battach\s+(?:database\s+)?(?:if\s+not\s+exists\s+)?['\"]"
    r"|\bimport\s+database\b",
    re.IGNORECASE,
)
#: ... and, in the code of the text (without_quoted_text with marks: a string that ends in the
#: word, like '%join', is not taken for one there), a file right after FROM or JOIN without a space
#: (FROM'x.csv', join/*c*/'y.csv') or after the statements that scan a table they name
#: (DESCRIBE 'x.csv', SUMMARIZE, PIVOT, UNPIVOT), a string after TABLE (TABLE 'x.csv', a query
#: of its own) or USING (MERGE INTO t USING 'x.csv'; a quoted name there is a table's: create
#: table "t"), or a table function over SQL in a string (query('...'), query_table('x.parquet'):
#: whatever that SQL reads, which a string may hide: E'\\'x\\'') ...
_NAMES_FILE_RIGHT_AFTER = re.compile(
    r"\b(?:from|join|describe|summarize|pivot|unpivot|pivot_wider|pivot_longer)\s*['\"]"
    r"|\b(?:table|using)\s*'"
    r"|\bquery(?:_table)?\s*\(",
    re.IGNORECASE,
)
#: ... or after a comma in a FROM list (from {0}, 'x.parquet'; from {0} join t using (k), "y.csv"):
#: the words that end a FROM clause at its depth (a parenthesis opens a scope of its own)
_ENDS_FROM_LIST = frozenset(
    "where group having qualify window order limit offset union intersect except select returning set values".split()
)
_CODE_TOKEN = re.compile(r"[\w$]+|[(),'\"]")


def _names_file_after_a_comma_in_from(code: str) -> bool:
    """Whether ``code`` (text with marks, see :func:`without_quoted_text`) holds a string or quoted
    name right after a comma of a FROM list: a table DuckDB reads as a file (a replacement scan),
    as after FROM itself. A word DuckDB reads as a name (``st.from``, ``a as from``, ``b.order``)
    and the FROM of ``is [not] distinct from`` neither begin nor end a FROM list."""
    in_from = [False]  # per depth of parentheses: in a FROM list there
    after_comma = False
    for m in _CODE_TOKEN.finditer(code):
        t = m.group()
        if t in "'\"" and after_comma:
            return True
        after_comma = t == "," and in_from[-1]
        word = t.lower()
        if t == "(":
            in_from.append(False)
        elif t == ")":
            if len(in_from) > 1:
                in_from.pop()
        elif word in ("from", "join") or word in _ENDS_FROM_LIST:
            before = code_before(code, m.start())
            if not word_is_a_name(before):
                in_from[-1] = word in ("from", "join") and not (word == "from" and is_distinct_from(before))
    return False


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def has_final_order_by(sql: str) -> bool:
    """True if the outermost query of ``sql`` ends in ``ORDER BY`` (not one inside a subquery or a
    window): its rows come out in the order the query defines, whatever DuckDB's thread count.

    Measured with DuckDB 2.0.1: a ``COPY`` of such a query writes the same bytes with 1, 2 or 4
    threads when the sort keys are unique and the query only selects, filters and sorts rows
    (spilling or not); rows with equal keys may come out in another order with more than one
    thread (the query does not define their order, and one thread's order is not the input's
    either: DuckDB's sort is not stable). Values an aggregate computes under the ``ORDER BY`` may
    differ too (a floating-point ``sum``/``avg``, the order inside ``list()``), whatever the keys.
    Any other query (a scan, a filter, an aggregate) may be written with other row order.
    """
    return bool(_ORDER_BY.search(top_level_text(sql)))


def task_threads(task: Task, cpu_overcommit_ratio: float = 1.0, offered: bool = True) -> int:
    """The DuckDB threads of an attempt: what the scheduler gave it (elastic threads; not with
    ``offered=False``), else its ``cpu_limit``, times the node's ``cpu_overcommit_ratio``."""
    return max(1, int(round(((task.threads if offered else None) or task.cpu_limit) * cpu_overcommit_ratio)))


#: the DuckDB connections opened since :func:`track_connections` was last called, while tracking
#: is on (a Ray worker, whose cancelled attempt has its queries interrupted from another thread)
_tracked: Optional[list] = None


def track_connections(enabled: bool = True) -> None:
    """Start (or stop) keeping the connections :func:`open_connection` opens, forgetting those kept."""
    global _tracked
    _tracked = [] if enabled else None


def connections_tracked() -> bool:
    """Whether :func:`open_connection` keeps the connections it opens (see :func:`track_connections`)."""
    return _tracked is not None


def interrupt_connections() -> None:
    """Interrupt the queries running on the connections kept (see :func:`track_connections`)."""
    for conn in list(_tracked or ()):
        conn.interrupt()


def share_database_in_process(enabled: bool = True) -> None:
    """Let SQL tasks in this process share one DuckDB database (workers turn this on)."""
    global _share_database
    _share_database = enabled


def open_shared_database(runtime_ctx) -> None:
    """Import DuckDB and open this process's shared database now, if SQL tasks share one here
    (~65 ms of CPU its first SQL task would otherwise spend)."""
    if _share_database:
        _shared_database(runtime_ctx)


def close_shared_databases() -> None:
    """Close this process's shared databases (a worker kept idle for a later job: their buffers,
    and their spill folders in this job's temp root, are this job's)."""
    for db in _shared_databases.values():
        try:
            db.close()
        except Exception:  # (already closed, or DuckDB failing to: the next job opens its own)
            pass
    _shared_databases.clear()
    _shared_settings.clear()  # keyed by id(): a new database may get a closed one's


def sql_may_outlive_task(queries: List[str]) -> bool:
    """True if SQL text might leave state behind in the database it ran in (conservative)."""
    return any(_MAY_OUTLIVE_TASK.search(q) for q in queries)


def sql_reads_files(texts) -> bool:
    """True if SQL text might read files itself (``read_parquet('x')``, ``FROM 'x.csv'``, ``FROM
    {0}, 'x.csv'``, ``DESCRIBE 'x.csv'``, ``query('...')``, ``ATTACH 'x.db'``), beside its inputs:
    searched for, never run (conservative: a quoted name after FROM counts too)."""
    for t in texts:
        if not t:
            continue
        # (without its comments, which run nothing: -- came from 'old.parquet'; a string after
        # is [not] distinct from is a value: where s is distinct from 'done')
        text = without_quoted_text(str(t), keep_quoted=True) if "--" in str(t) or "/*" in str(t) else str(t)
        if any(not is_distinct_from(code_before(text, m.start())) for m in _READS_FILES.finditer(text)):
            return True
        code = without_quoted_text(str(t), marks=True)
        right_after = (m for m in _NAMES_FILE_RIGHT_AFTER.finditer(code) if not is_distinct_from(code_before(code, m.start())))
        if next(right_after, None) is not None or _names_file_after_a_comma_in_from(code):
            return True
    return False


def _shared_database(runtime_ctx):
    import duckdb

    key = (os.getpid(), runtime_ctx.temp_root)
    db = _shared_databases.get(key)
    if db is None:
        db = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        # DuckDB keeps one spill directory per database: one per worker process
        spill = os.path.join(runtime_ctx.temp_root, f"duckdb-{socket.gethostname()}-{os.getpid()}")
        os.makedirs(spill, exist_ok=True)
        db.execute(f"SET temp_directory = {quote_literal(spill)}")
        _shared_databases[key] = db
    return db


def task_memory(task: Task) -> int:
    """The memory limit an attempt runs with (set by the scheduler on the attempt's copy)."""
    if not task.memory_limit:
        raise RuntimeError(f"{task.key} has no effective memory limit: it must be run through execute_attempt")
    return int(task.memory_limit)


def open_connection(
    task: Task,
    runtime_ctx,
    *,
    cpu_overcommit_ratio: float = 1.0,
    memory_overcommit_ratio: float = 0.9,
    shareable: bool = False,
    seeded: bool = True,
    spill: bool = True,
    offered_threads: bool = True,
):
    """A DuckDB connection for ``task`` with its threads, memory limit, spill directory and seed.

    ``shareable``: the caller vouches that the task leaves nothing behind in the database (no
    UDFs, no DDL or settings in its SQL), so a cursor on this worker's shared database will do.
    ``seeded=False``: the caller vouches that its SQL draws no random numbers, so the task's seed
    need not be set (a statement costs ~0.5 ms, a fifth of a tiny task). A fresh cursor starts
    from DuckDB's default seed, as a fresh database does; a database of its own is always seeded.
    ``spill=False``: DuckDB may not spill to disk (``temp_directory`` is ``''``; the shared
    database, which spills, is not used). ``offered_threads=False``: ``cpu_limit``'s threads, even
    if the scheduler offered more (the caller takes them once it has checked they are safe).
    """
    import duckdb

    threads = task_threads(task, cpu_overcommit_ratio, offered_threads)
    memory_mb = max(64, int(task_memory(task) * memory_overcommit_ratio) // MB)
    settings = {"threads": str(threads), "memory_limit": f"'{memory_mb}MiB'"}
    if shareable and _share_database and spill:
        db = _shared_database(runtime_ctx)
        conn = db.cursor()
        # these settings are the database's, not the cursor's: set only what changed (setting
        # memory_limit makes DuckDB trim its buffer pool, ~20 ms even when the value is the same)
        applied = _shared_settings.setdefault(id(db), {})
        todo = {k: v for k, v in settings.items() if applied.get(k) != v}
        applied.update(todo)
        fresh = False
    else:
        conn = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        spill_dir = ""
        if spill:
            spill_dir = os.path.join(task.temp_abspath, "duckdb")
            os.makedirs(spill_dir, exist_ok=True)
        conn.execute(f"SET temp_directory = {quote_literal(spill_dir)}")
        todo = settings
        fresh = True
    for k, v in todo.items():
        conn.execute(f"SET {k} = {v}")
    if fresh:  # a database's own connection shows a progress bar; its cursors do not
        conn.execute("SET enable_progress_bar = false")
    if seeded or fresh:
        conn.execute(f"SELECT setseed({task.rand_seed_float * 2 - 1 if task.rand_seed_float else 0.0})").fetchall()
    if _tracked is not None:
        _tracked.append(conn)
    return conn


def set_threads(conn, threads: int) -> None:
    """Change the DuckDB threads of an open connection (of the shared database: its setting, which
    the next :func:`open_connection` then sets again)."""
    conn.execute(f"SET threads = {int(threads)}")
    for applied in _shared_settings.values():
        applied.pop("threads", None)


def _input_queries(task: Task, conn, datasets: List[DataSet]) -> List[Tuple[str, str]]:
    """``(name, query)`` of each input as the task's SQL sees it (``{0}``, ``{1}``, ...), its UDFs
    bound on ``conn``."""
    from smallpond.logical.dataset_files import ParquetDataSet, case_clash_error

    out = []
    for i, ds in enumerate(datasets):
        clash = case_clash_error(ds) if isinstance(ds, ParquetDataSet) and not ds.empty else None
        if clash is not None:  # DuckDB would silently rename one column and read the other for it
            raise UserCodeError(f"input {i}: {clash}")
        for ctx in getattr(ds, "udfs", []) or []:
            ctx.bind(conn)
        out.append((f"__input_{int(task.id)}_{i:06d}", ds.sql_query_body(conn=conn)))
    return out


def create_input_views(task: Task, conn, datasets: List[DataSet]) -> List[str]:
    names = []
    for name, query in _input_queries(task, conn, datasets):
        sql = f"CREATE OR REPLACE TEMP VIEW {name} AS {query}"
        task._current_sql = sql
        run_sql(conn, sql)
        names.append(name)
    return names


# a statement's first keyword, after blanks and comments
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_FIRST_WORDS = re.compile(r"(with)(\s+recursive)?\b|(select)\b", re.IGNORECASE)


def input_ctes(task: Task, conn, datasets: List[DataSet]) -> Tuple[List[str], str]:
    """The names :func:`create_input_views` would give the inputs, and the text of common table
    expressions defining them (``NOT MATERIALIZED``: inlined where used, as a view is), for
    :func:`with_input_ctes`. Binds the inputs' UDFs as the views would."""
    inputs = _input_queries(task, conn, datasets)
    return [name for name, _ in inputs], ", ".join(f"{name} AS NOT MATERIALIZED ({query})" for name, query in inputs)


def is_query(sql: str) -> bool:
    """True if ``sql`` is a ``SELECT`` or ``WITH`` query (see :func:`with_input_ctes`)."""
    return _FIRST_WORDS.match(sql, _LEADING.match(sql).end()) is not None


def with_input_ctes(sql: str, ctes: str) -> str:
    """``sql`` (a ``SELECT`` or ``WITH`` query, see :func:`is_query`) with the inputs defined in
    its own ``WITH`` clause, so it runs as one statement without a view per input (creating a view
    reads each input's schema: ~1.5 ms a task)."""
    if not ctes:
        return sql
    start = _LEADING.match(sql).end()
    m = _FIRST_WORDS.match(sql, start)
    if m is None:
        raise ValueError(f"not a SELECT or WITH query: {sql[:80]!r}")
    if m.group(3):  # SELECT ...
        return f"{sql[:start]}WITH {ctes} {sql[start:]}"
    head = sql[: m.end()]  # WITH [RECURSIVE]: ours first, then the query's own
    return f"{head} {ctes}, {sql[m.end() :].lstrip()}"


def format_query(task: Task, query: str, views: List[str], extra: Dict[str, object]) -> str:
    named = {
        "rand_seed": task.rand_seed_uint32,
        "cpu_limit": task.cpu_limit,
        "memory_limit": task.memory_limit,
        "output_filename": task.output_filename,
    }
    named.update({p.dimension: p.index for p in task.partition_infos})
    named.update(extra)
    return render_query(query, views, named)


def render_query(query: str, views: List[str], named: Dict[str, object]) -> str:
    """``query`` with ``{0}``, ``{1}``, ... replaced by ``views`` and named placeholders by ``named``;
    an unknown placeholder is a :class:`UserCodeError` listing the ones there are."""
    try:
        return query.format(*views, **named)
    except (KeyError, IndexError) as e:
        fields = sorted({f for _, f, _, _ in string.Formatter().parse(query) if f})
        err = UserCodeError(
            f"unknown placeholder {e} in SQL; the query has {len(views)} input(s) ({{0}}..{{{len(views) - 1}}}) "
            f"and named placeholders {sorted(named)}; it uses {fields}. Write literal braces as '{{{{' and '}}}}'"
        )
        err.sql = query
        raise err from None


@contextlib.contextmanager
def duckdb_errors_as(sql: str):
    """Raise a DuckDB error from the block as :func:`map_duckdb_error` maps it (naming ``sql``,
    what ran: a query or a step such as registering a UDF), from the original; an error it does
    not map propagates as it was."""
    try:
        yield
    except Exception as e:  # duckdb.Error subclasses
        mapped = map_duckdb_error(e, sql)
        if mapped is e:
            raise
        raise mapped from e


def run_sql(conn, sql: str) -> list:
    """Execute and fetch everything (DuckDB refuses new work while a result is unfinished)."""
    with duckdb_errors_as(sql):
        return conn.execute(sql).fetchall()


#: Largest row group a writer buffers, in bytes. A constant so that row groups are cut at the same
#: rows on every machine: the task's memory (which depends on the machine and the worker count)
#: only lowers it below this when the task has less than 8 x 64 MiB per open writer.
MAX_ROW_GROUP_BYTES_PER_WRITER = 64 * MB


def writer_row_group_bytes(task: Task, open_writers: int = 1) -> int:
    """``ROW_GROUP_SIZE_BYTES`` keeping the writers' buffered row groups within 1/8 of the task's
    memory. A writer holds a whole row group before writing it (122880 rows of 100 bytes are
    12 MB), memory DuckDB cannot spill: a sort within a small limit fails there otherwise.

    At most :data:`MAX_ROW_GROUP_BYTES_PER_WRITER`, so that with enough memory the files are the
    same whatever memory the task got.
    """
    share = task_memory(task) // (8 * max(1, open_writers))
    return max(256 * 1024, min(MAX_ROW_GROUP_BYTES_PER_WRITER, share))


@contextlib.contextmanager
def copy_target_dir(path: str):
    """A name for directory ``path`` that DuckDB's directory-writing ``COPY`` handles as given.

    ``COPY ... (PARTITION_BY ...)`` and ``PER_THREAD_OUTPUT`` turn backslashes in the target into
    slashes and then fail. For such a path (a data root may hold any character) a symbolic link
    with a plain name, in the system's temp folder, stands in for it while the ``COPY`` runs; the
    files are written through it into ``path`` itself.
    """
    if "\\" not in path:
        yield path
        return
    import tempfile
    import uuid

    link = os.path.join(tempfile.gettempdir(), f"smallpond-copy-{uuid.uuid4().hex}")
    if "\\" in link:
        raise OSError(f"cannot write into {path!r}: DuckDB cannot write partitioned output under a path holding a backslash")
    os.symlink(path, link)
    try:
        yield link
    finally:
        os.unlink(link)


def _copy_options(task: Task) -> str:
    # (row groups bounded by cpu_limit's writers, never by elastic threads: the bytes would follow them)
    writers = max(1, int(task.cpu_limit))
    return ParquetWriterOptions.for_task(task).duckdb(task.parquet_kv_metadata(), writer_row_group_bytes(task, writers))


def single_file_copy(task: Task, query: str, output_dir: str, prefix: str) -> Tuple[str, str]:
    """The file and the statement of ``COPY (query)`` to one Parquet file, as :func:`copy_to_parquet`
    writes it without per-thread output."""
    path = os.path.join(output_dir, prefix + "-0.parquet")
    return path, f"COPY ({as_subquery(query)}) TO {quote_literal(path)} ({_copy_options(task)})"


def copy_to_parquet(task: Task, conn, query: str, output_dir: str, prefix: str, *, per_thread_output: bool = True) -> int:
    """``COPY (query) TO output_dir`` as Parquet with the node's writer options; returns rows written."""
    if per_thread_output and task.cpu_limit > 1:
        pattern = quote_literal(f"{prefix}-{{i}}")
        with copy_target_dir(output_dir) as target:
            sql = f"COPY ({as_subquery(query)}) TO {quote_literal(target)} ({_copy_options(task)}, PER_THREAD_OUTPUT true, FILENAME_PATTERN {pattern}, OVERWRITE_OR_IGNORE true)"
            rows = run_sql(conn, sql)
    else:
        rows = run_sql(conn, single_file_copy(task, query, output_dir, prefix)[1])
    return int(rows[0][0]) if rows and rows[0] else 0
