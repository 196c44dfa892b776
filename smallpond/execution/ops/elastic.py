"""Elastic threads in the worker: use the DuckDB threads the scheduler offered only where the
output's bytes cannot depend on them.

By default (``elastic_threads="safe"``) the scheduler offers a lone SQL task that may be row-wise
(:meth:`~smallpond.execution.ops.sql.SqlEngineTask.may_be_row_wise`, a look at its text) more
threads than its ``cpu_limit``; the task takes them only if (0) its whole SQL, inputs included,
names no function whose values follow the threads, which no plan shows (:func:`text_refusal`:
random numbers, ``current_setting``, the connection's statement counts; checked before the
connection takes the threads, so a task declining there runs the statements it runs without
them), (1) DuckDB's physical plan of its ``COPY`` is an
order-keeping batch copy of whole input chunks (:func:`plan_refusal`) and (2) every row group it
wrote was closed by its row count, not its bytes (:func:`row_groups_refusal`).
Otherwise, or if its ``COPY`` ran out of memory with them (DuckDB 2.0.1 buffers a row group per
thread: 600k rows made 1 KB wide, at 460 MiB, failed with two threads and not with one), it runs
(again) with ``cpu_limit`` threads, says so in the attempt's log, and reports
``threads_declined`` so the scheduler stops offering to the node's other tasks.

Measured with DuckDB 2.0.1 (2M rows in 5 Parquet files of odd row-group sizes, threads 1/2/4,
3-4 runs each, memory 4 GiB and 96 MiB; session 42's NOTES.md): a ``COPY`` to one Parquet file
of a scan of several files, a projection (float math, string functions, casts, structs, lists,
CASE) or a LIMIT (a ``STREAMING_LIMIT``) wrote the same bytes at every thread count. The rows
keep their order under anything order-preserving, but the *row groups* do not: the batch copy
closes a group at the first whole chunk past ``ROW_GROUP_SIZE`` rows, and an operator that thins
or splits chunks (a filter, also one pushed into the scan such as a row range's ``file_row_number
BETWEEN``, an UNNEST) leaves chunks whose sizes follow how the threads took the input: other
row-group sizes, other files, even run to run at 2 threads. A UNION ALL of two scans joined its
inputs' last chunks into other groups at 1 thread than at 2 or 4; a row group closed by
``ROW_GROUP_SIZE_BYTES`` (wide rows, a small memory limit) may be closed elsewhere too. (A LIMIT
of more than 50 rows, ``late_materialization_max_rows``, but fewer than the input's, or with an
OFFSET, is planned with a sort and a join: refused.) Joins, aggregates (grouped
or not), DISTINCT, windows and sorts with ties change the rows or their order and never pass.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from smallpond.common import logger
from smallpond.errors import OutOfMemory
from smallpond.execution.ops.duckdb import (
    copy_to_parquet,
    run_sql,
    set_threads,
    single_file_copy,
    task_threads,
    writer_row_group_bytes,
)
from smallpond.execution.task import Task
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.io.paths import duckdb_file_literal

#: the operators of a physical plan that hand every chunk of their input on whole, in its order
ROW_WISE_OPERATORS = frozenset({"READ_PARQUET", "PROJECTION", "STREAMING_LIMIT"})

#: the root of a plan whose COPY keeps the query's row order (DuckDB's plain COPY_TO_FILE does not)
ORDERED_COPY = "BATCH_COPY_TO_FILE"


#: names whose values follow DuckDB's threads though its plan shows nothing: random numbers (each
#: thread draws from a state of its own: ``random()``, ``uuid()``) and settings (``current_setting
#: ('threads')`` is folded into a constant of a plain projection); and the connection's counts of
#: its statements (``current_query_id()``, ``txid_current()``, ``current_transaction_id()``), which
#: the plan check's ``EXPLAIN`` moves on: they would follow whether threads were offered
_THREAD_DEPENDENT_NAMES = re.compile(r"rand|uuid|shuffle|current_setting|query_id|txid|transaction_id", re.IGNORECASE)


def text_refusal(sql: str) -> Optional[str]:
    """None unless a name in ``sql`` (the whole statement, its inputs' ``columns=`` expressions and
    queries included; quoted or not, strings and comments aside: DuckDB's tokenizer) may call a
    function whose values follow the thread count (:data:`_THREAD_DEPENDENT_NAMES`; a column of
    such a name too: that costs threads, never bytes)."""
    import duckdb

    try:
        tokens = duckdb.tokenize(sql)
    except Exception as e:  # (no proof then, and cpu_limit's threads)
        return f"its SQL could not be tokenized ({type(e).__name__})"
    for i, (start, kind) in enumerate(tokens):
        if kind == duckdb.token_type.identifier:
            name = sql[start : tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)].strip()
            if _THREAD_DEPENDENT_NAMES.search(name):
                return f"its SQL names {name} (its values may follow the threads)"
    return None


def _walk(node: dict):
    yield node
    for child in node.get("children", ()):
        yield from _walk(child)


def plan_refusal(conn, copy_sql: str) -> Optional[str]:
    """None if DuckDB's physical plan of the ``COPY`` statement ``copy_sql`` writes the same bytes
    at any thread count (an ordered batch copy over :data:`ROW_WISE_OPERATORS`, no filter in a
    scan), else what stands in the way. Costs one ``EXPLAIN``: about 1 to 8 ms."""
    rows = run_sql(conn, f"EXPLAIN (FORMAT json) {copy_sql}")
    try:  # (another DuckDB may explain otherwise: then no proof, and cpu_limit's threads)
        plans = json.loads(rows[0][1])
        names = [p.get("name", "?") for p in plans]
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        return f"its plan could not be read ({type(e).__name__})"
    if len(plans) != 1 or names[0] != ORDERED_COPY:
        return f"its COPY is not an ordered batch copy ({', '.join(names)})"
    for node in _walk(plans[0]):
        name = node.get("name", "?")
        if node is plans[0]:
            continue
        if name not in ROW_WISE_OPERATORS:
            return f"its plan has {name}"
        info = node.get("extra_info")
        if not isinstance(info, dict) or any("filter" in str(key).lower() for key in info):
            return f"its plan has a filter in {name}" if isinstance(info, dict) else f"its plan's {name} could not be read"
    return None


def row_groups_refusal(conn, path: str, row_group_size: int) -> Optional[str]:
    """None if every row group of the Parquet file ``path`` but the last holds at least
    ``row_group_size`` rows (each was closed by its row count), else which one did not: a group
    closed by ``ROW_GROUP_SIZE_BYTES`` or by memory may be written otherwise with other threads.
    Read by DuckDB on ``conn`` (~10 ms; pyarrow.parquet would cost a worker ~110 ms to import)."""
    groups = run_sql(
        conn,
        f"SELECT row_group_id, max(row_group_num_rows) FROM parquet_metadata({duckdb_file_literal(path)}) GROUP BY 1 ORDER BY 1",
    )
    for i, rows in groups[:-1]:
        if rows < row_group_size:
            return f"its row group {i} was closed at {rows} rows, before {row_group_size}"
    return None


#: the share of ``ROW_GROUP_SIZE_BYTES`` that a row group of the inputs' average row width may fill
#: before the threads are declined without trying: past it the written groups are likely to be
#: closed by their bytes (the check after the write would then refuse them, and the file be written
#: twice); DuckDB counts a row's bytes otherwise than a Parquet footer, hence the margin
WIDE_ROWS_SHARE = 0.5

#: the input files whose footers are read for the rows' average width (a sample of a large input)
WIDTH_SAMPLE_FILES = 16


def width_refusal(task: Task, inputs, row_group_size: int) -> Optional[str]:
    """A reason to decline the threads before writing, or None: the Parquet inputs' rows are so
    wide on average (uncompressed bytes per row, from up to :data:`WIDTH_SAMPLE_FILES` footers) that
    a row group of ``row_group_size`` rows would fill more than :data:`WIDE_ROWS_SHARE` of the
    writer's ``ROW_GROUP_SIZE_BYTES``. Only an estimate saving a second write: whether the groups
    really were closed by their row count is checked on the file (:func:`row_groups_refusal`)."""
    from smallpond.io.parquet_footer import read_row_summary

    paths = [p for d in inputs for p in (getattr(d, "resolved_paths", None) or []) if p.endswith((".parquet", ".parq"))]
    rows = size = 0
    for path in paths[:WIDTH_SAMPLE_FILES]:
        try:
            summary = read_row_summary(path)
        except OSError:
            summary = None
        if summary is not None:
            rows, size = rows + summary[0], size + summary[1]
    if rows <= 0:
        return None
    limit = writer_row_group_bytes(task, max(1, int(task.cpu_limit)))
    width = size / rows
    if width * row_group_size > WIDE_ROWS_SHARE * limit:
        return f"its input rows of ~{width:.0f} bytes would close row groups by their bytes (ROW_GROUP_SIZE_BYTES {limit})"
    return None


def copy_with_offered_threads(
    task: Task, conn, query: str, output_dir: str, prefix: str, cpu_overcommit_ratio: float, inputs=()
) -> int:
    """``COPY (query)`` to one Parquet file with the threads the scheduler offered (``task.threads``)
    if its output cannot depend on them, else with ``cpu_limit``'s (the file written with the
    offered ones, if any, is removed first: the engine wrote it). Returns rows written. ``inputs``:
    the datasets the query reads (their rows' width: :func:`width_refusal`)."""
    path, copy_sql = single_file_copy(task, query, output_dir, prefix)
    row_group_size = ParquetWriterOptions.for_task(task).row_group_size
    reason = text_refusal(query) or width_refusal(task, inputs, row_group_size)
    raised = reason is None  # (conn has cpu_limit's threads until the text passed: open_connection)
    if raised:
        set_threads(conn, task_threads(task, cpu_overcommit_ratio))
        reason = plan_refusal(conn, copy_sql)
    if reason is None:
        try:
            rows = copy_to_parquet(task, conn, query, output_dir, prefix, per_thread_output=False)
        except OutOfMemory:  # (each thread buffers row groups of its own: cpu_limit's may fit)
            reason = f"it ran out of memory with {task.threads} threads"
        else:
            reason = row_groups_refusal(conn, path, row_group_size)
            if reason is None:
                return rows
        if os.path.exists(path):
            os.remove(path)
    offered = task.threads
    task.threads = None  # from here on (and for the task's next batches): its cpu_limit
    threads = task_threads(task, cpu_overcommit_ratio)
    if raised:
        set_threads(conn, threads)
    task.stats["threads_declined"] = reason
    logger.info(
        "{}: runs with threads={} (the elastic threads={} declined: {}, so its output could depend on them)",
        task.key,
        threads,
        offered,
        reason,
    )
    return copy_to_parquet(task, conn, query, output_dir, prefix, per_thread_output=False)
