"""The SQL engine task: a node's queries over its input partitions, in DuckDB."""

from __future__ import annotations

import os
import re
from typing import List, Optional

from smallpond.common import EMPTY_PLACEHOLDER_COLUMN, as_subquery, quote_identifier
from smallpond.errors import UserCodeError
from smallpond.execution.ops.duckdb import (
    copy_to_parquet,
    create_input_views,
    duckdb_errors_as,
    format_query,
    has_final_order_by,
    input_ctes,
    is_query,
    open_connection,
    run_sql,
    sql_may_draw_random,
    sql_may_outlive_task,
    task_memory,
    with_input_ctes,
)
from smallpond.execution.ops.elastic import copy_with_offered_threads
from smallpond.execution.task import Task
from smallpond.io.columns import fold_case
from smallpond.io.sqltext import without_quoted_text
from smallpond.logical.dataset import DataSet, ParquetDataSet


def columns_unknown(ds: DataSet) -> bool:
    """An input with no files and no schema to take its columns from (it reads as no columns)."""
    if not isinstance(ds, ParquetDataSet) or not ds.empty or ds.schema is not None:
        return False
    return not getattr(ds, "_schema_path", None)


def reads_unknown_columns(ds: DataSet, columns: List[str]) -> bool:
    """Whether a view over input ``ds`` with ``columns`` (its own, or those of a query of it that
    kept them: ``select * from {0}``) is an input whose columns are unknown (:func:`columns_unknown`),
    read as it is: no rows, its one column the placeholder. A partition has nothing to split there
    and no key to look for, whatever it was given (a key it names is not "not found")."""
    return columns == [EMPTY_PLACEHOLDER_COLUMN] and columns_unknown(ds)


def unknown_columns_hint(e: Exception, unknown: List[int]) -> Optional[UserCodeError]:
    """``e`` with a hint saying why, when a query failed over inputs (their indices: ``unknown``)
    whose columns are unknown (:func:`columns_unknown`): a column the query names is not there
    (DuckDB names the placeholder column, or, for an input given an alias, its "Values list")."""
    text = str(e)
    if not unknown or (EMPTY_PLACEHOLDER_COLUMN not in text and "Values list" not in text):
        return None
    hint = UserCodeError(
        f"{e}\nHINT: input(s) {', '.join('{%d}' % i for i in unknown)} of this task are empty partitions whose "
        "columns are unknown: a Python function (a DataFrame map/flat_map/map_batches, an ArrowStreamNode, "
        "ArrowBatchNode or ArrowComputeNode) produced no rows there and could not tell its output schema. "
        "Pass schema= (a pyarrow.Schema) to that map/flat_map/map_batches, or output_schema= to that node."
    )
    hint.sql = getattr(e, "sql", None)
    return hint


def holds_no_rows(ds: DataSet) -> bool:
    """Whether input ``ds`` has no rows, for ``skip_task_with_empty_input``: it has no files, or
    it is Parquet and its row count (its files' footers, or its row ranges) is zero.

    The second case is the usual empty partition: a partition producer gives a partition no row
    fell into a placeholder file with the columns and no rows (so its columns are known), and
    such a partition is as empty as one without files. Only asked when the option is on.
    """
    if ds.empty:
        return True
    if not isinstance(ds, ParquetDataSet):
        return False
    try:
        return ds.num_rows == 0
    except Exception:  # an unreadable input: the query fails on it, with the file named
        return False


def without_placeholder_column(conn, sql: str):
    """``sql`` less the placeholder column, and whether it had one.

    An input whose columns are unknown (:func:`columns_unknown`) reads as no rows of one column,
    :data:`~smallpond.common.EMPTY_PLACEHOLDER_COLUMN`. Over it and another input, ``SELECT *``
    with ``UNION ALL BY NAME`` (or a join, ``{0}.*`` ...) returns that column beside the real ones,
    as nulls: it is excluded (quoted, in a query that wraps ``sql``). The view of such an input
    cannot go without it: a view has at least one column. A query whose only column is the
    placeholder, or that does not bind (it fails when it runs, with the error and its hint), is
    left as it is.
    """
    placeholder = fold_case(EMPTY_PLACEHOLDER_COLUMN)
    try:
        # (as a subquery, one statement: a second one after ';' ran here, though the query fails)
        columns = [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM ({as_subquery(sql)})").fetchall()]
    except Exception:  # duckdb.Error: the query's own run reports it
        return sql, False
    if [fold_case(c) for c in columns].count(placeholder) != 1 or len(columns) == 1:
        return sql, False
    return f"SELECT * EXCLUDE ({quote_identifier(EMPTY_PLACEHOLDER_COLUMN)}) FROM ({as_subquery(sql)})", True


#: words of SQL that filters, joins, groups, sorts, samples, unions or unnests rows (its output's row
#: groups, or rows, may follow DuckDB's threads) or reads a setting (``current_setting('threads')``)
#: or the connection's count of statements (which the plan check's ``EXPLAIN`` moves on): the
#: scheduler does not offer it more threads by default
_NOT_ROW_WISE = re.compile(
    r"\b(where|join|group|having|qualify|order|distinct|over|window|sample|tablesample|intersect|except"
    r"|union|pivot|unpivot|unnest|recursive|offset|current_setting|current_query_id|txid_current|current_transaction_id)\b",
    re.IGNORECASE,
)


class SqlEngineTask(Task):
    #: honours the job's ``skip_task_with_empty_input`` (part of its cache key when on)
    skips_empty_input = True

    @property
    def runs_user_python(self) -> bool:
        return bool(self.node.udf_contexts)  # (Python UDFs, or extensions: either way, no harm)

    def error_context(self):
        return {"sql": "; ".join(self.node.sql_queries)}

    def estimated_cost(self) -> float:
        return 2.0

    def may_use_more_threads(self) -> bool:
        """Only a final ``ORDER BY`` keeps the row order (up to rows with equal sort keys) whatever the
        thread count (see :func:`has_final_order_by`: values of aggregates under it, a
        floating-point sum or a ``list()``, may still differ); per-thread output files and random
        numbers would follow it."""
        node = self.node
        queries = list(node.sql_queries)
        if not queries or not node.materialize_output or (node.per_thread_output and self.cpu_limit > 1):
            return False
        if node.udf_contexts or sql_may_draw_random(queries):
            return False
        return has_final_order_by(queries[-1])

    def may_be_row_wise(self) -> bool:
        """One query written to one Parquet file, without Python UDFs, random numbers or a clause
        that filters, joins, groups, sorts, unions or unnests (:data:`_NOT_ROW_WISE`, a look at its text):
        the attempt then checks DuckDB's plan (:func:`~smallpond.execution.ops.elastic.plan_refusal`)."""
        node = self.node
        queries = list(node.sql_queries)
        if len(queries) != 1 or not node.materialize_output or node.materialize_in_memory or not is_query(queries[0]):
            return False
        if (node.per_thread_output and self.cpu_limit > 1) or node.udf_contexts or sql_may_draw_random(queries):
            return False
        # (current_setting also quoted, "current_setting"(...): the worker's look at its whole SQL
        # would decline it, text_refusal, after the CPUs were reserved for it)
        return not _NOT_ROW_WISE.search(without_quoted_text(queries[0])) and "current_setting" not in queries[0].lower()

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        if runtime_ctx.skip_task_with_empty_input and any(holds_no_rows(d) for d in inputs):
            return ParquetDataSet.from_files([])
        batches = [inputs]
        if node.batched_processing and len(inputs) == 1 and isinstance(inputs[0], ParquetDataSet) and not inputs[0].empty:
            batches = [[b] for b in inputs[0].partition_by_size(max(1, task_memory(self) // 2))] or [inputs]
        unknown = [i for i, d in enumerate(inputs) if columns_unknown(d)]
        excluded = False
        try:
            for batch_index, batch in enumerate(batches):
                excluded |= self._run_batch(runtime_ctx, batch, output_dir, batch_index, bool(unknown))
        except UserCodeError as e:
            hint = unknown_columns_hint(e, unknown)
            if hint is None:
                raise
            raise hint from e
        files = sorted(os.path.join(output_dir, f) for f in os.listdir(output_dir))
        if unknown:
            files = self._drop_placeholder_outputs(files, excluded)
        return ParquetDataSet.from_files(files)

    def _drop_placeholder_outputs(self, files, excluded: bool):
        """The output files, less those whose columns came from an input's placeholder.

        An empty input whose columns are unknown reads as no rows of one column,
        ``__empty__``; a query over it (``select *``) may write that column, with no rows, or
        without it if it was ``excluded`` (:func:`without_placeholder_column`). Such a file tells
        nothing about the real columns, and read with other partitions' files it would add a bogus
        column to the result, or lack columns they have: it is removed, so this output is empty
        with unknown columns too, as its input was.
        """
        import pyarrow.parquet as pq

        from smallpond.common import logger

        kept = []
        for path in files:
            if path.endswith(".parquet"):
                md = pq.read_metadata(path)
                if md.num_rows == 0 and (excluded or EMPTY_PLACEHOLDER_COLUMN in md.schema.names):
                    os.remove(path)
                    continue
            kept.append(path)
        if len(kept) < len(files):
            logger.info(
                "{}: no rows, over input(s) whose columns are unknown: its output has no file, and no columns either",
                self.key,
            )
        return kept

    def _run_batch(self, runtime_ctx, inputs, output_dir, batch_index, unknown_columns: bool) -> bool:
        """Run the node's queries over ``inputs``; True if the placeholder column of an input whose
        columns are unknown was excluded from the output (see :func:`without_placeholder_column`)."""
        node = self.node
        excluded = False
        shareable = (
            not node.udf_contexts
            and not any(getattr(d, "udfs", None) for d in inputs)
            and not sql_may_outlive_task(node.sql_queries)
        )
        conn = open_connection(
            self,
            runtime_ctx,
            cpu_overcommit_ratio=node.cpu_overcommit_ratio,
            memory_overcommit_ratio=node.memory_overcommit_ratio,
            shareable=shareable,
            spill=node.spill_to_disk,
            seeded=sql_may_draw_random(node.sql_queries) or any(sql_may_draw_random(d.columns or []) for d in inputs),
            # (threads offered to be checked are set only once the SQL's text passes: a task that
            # declines them unread runs the statements elastic_threads=False runs, no SET more)
            offered_threads=not self.threads_checked,
        )
        try:
            for ctx in node.udf_contexts.values():
                with duckdb_errors_as(f"registering UDF {getattr(ctx, 'name', ctx)!r}"):
                    ctx.bind(conn)
            nq = len(node.sql_queries)
            # one query written to Parquet (the usual node) names its inputs in a WITH clause of
            # its own rather than in views: one statement to bind instead of one per input more
            ctes = None
            if nq == 1 and node.materialize_output and not node.materialize_in_memory and is_query(node.sql_queries[0]):
                views, ctes = input_ctes(self, conn, inputs)
            else:
                views = create_input_views(self, conn, inputs)
            for qi, raw in enumerate(node.sql_queries):
                sql = format_query(self, raw, views, {"batch_index": batch_index, "query_index": qi})
                if ctes is not None:
                    sql = with_input_ctes(sql, ctes)
                self._current_sql = sql
                if qi < nq - 1 or not node.materialize_output:
                    run_sql(conn, sql)
                    continue
                if node.materialize_in_memory:
                    # (as a subquery, as COPY runs it otherwise: a second statement after ';' is an
                    # error, never a table of the first statement's result)
                    run_sql(conn, f"CREATE OR REPLACE TEMP TABLE temp_query_result AS SELECT * FROM ({as_subquery(sql)})")
                    sql = "SELECT * FROM temp_query_result"
                if unknown_columns:
                    sql, stripped = without_placeholder_column(conn, sql)
                    excluded |= stripped
                prefix = f"{self.output_filename}-{batch_index}.{qi}"
                if self.threads_checked and self.threads:
                    rows = copy_with_offered_threads(self, conn, sql, output_dir, prefix, node.cpu_overcommit_ratio, inputs)
                else:
                    rows = copy_to_parquet(self, conn, sql, output_dir, prefix, per_thread_output=node.per_thread_output)
                self.stats["rows"] = self.stats.get("rows", 0) + rows
        finally:
            conn.close()
        return excluded
