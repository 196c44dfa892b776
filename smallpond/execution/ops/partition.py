"""Partition producers that move data: hash, shuffle-by-value and range partitioning.

One task reads its input once and routes every row to one of ``npartitions`` outputs, either in
one DuckDB ``COPY ... PARTITION_BY`` pass or (``engine_type="arrow"``) by Arrow batches whose
partition index DuckDB computes, so both engines assign rows alike.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional

from smallpond.common import MB, as_subquery, quote_identifier, quote_literal, sql_fragment
from smallpond.errors import UserCodeError, columns_not_found
from smallpond.execution.ops.duckdb import (
    copy_target_dir,
    create_input_views,
    duckdb_errors_as,
    format_query,
    open_connection,
    run_sql,
    sql_may_draw_random,
    sql_may_outlive_task,
    task_memory,
    writer_row_group_bytes,
)
from smallpond.execution.ops.partition_arrow import (
    _arrow_keeps_types,
    _arrow_row_group_reader,
    _arrow_writes_for_less,
    _CopyShapedWriters,
    _int64_array,
    _PartitionWriters,
    open_parquet_writer,
    writes_like_copy,
)
from smallpond.execution.ops.shuffle_keys import (
    direct_keys,
    key_error_from_duckdb,
    key_out_of_range,
    shuffle_index_sql,
)
from smallpond.execution.ops.sql import columns_unknown, reads_unknown_columns, unknown_columns_hint
from smallpond.execution.ops.structural import merge_datasets
from smallpond.execution.task import Task
from smallpond.io.columns import fold_case
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.io.sqltext import fragment_problem
from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet
from smallpond.logical.dataset_base import parses_as_select_item

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _keeps_input_column(node, col: str, columns: List[str]) -> bool:
    """Whether the input's own column named like the partition column is data to keep: a hash
    partition that drops its partition column (the DataFrame's ``repartition(hash_by=...)``,
    ``random_shuffle``), or a shuffle whose key is an expression named after its dimension
    (``repartition(by="a % 3")``), must not drop the user's ``__data_partition__`` with it; the
    partition is then carried by an internal column. A column whose name differs from the
    partition column's only in case is that column (:func:`_same_name`)."""
    if not any(_same_name(c, col) for c in columns):
        return False
    if node.shuffle_only:
        return node.data_partition_column not in columns  # the key is computed, not this column
    return bool(node.drop_partition_column)


def _same_name(a: str, b: str) -> bool:
    """Whether DuckDB takes column names ``a`` and ``b`` for one name: it compares them in any case.
    A query selecting both gets the second renamed (``__data_partition___1``) by its ``COPY``, whose
    ``PARTITION_BY`` then named folders that no partition is read from: every row was lost."""
    return fold_case(a) == fold_case(b)


def _key_sql(key: str, columns: List[str]) -> str:
    """A partition key the user wrote, in SQL: a column of the data it names, in any case (as
    DuckDB binds a name), quoted; other text that is one select item, as the expression it is
    (``"item % 10"``); anything else is a name, quoted, that the data lacks (DuckDB says so).
    Pasted raw, a name differing from its column in case was read as an expression (``"X-1"``
    for a column ``x-1`` silently hashed ``x - 1``), and a key holding ``;`` ran statements of
    its own (``"1 FROM t; COPY ... TO 'f'; SELECT 1"`` wrote a file, in the plan check and in
    each task)."""
    if key in columns:
        return quote_identifier(key)
    same = [c for c in columns if _same_name(c, key)]
    if len(same) == 1:
        return quote_identifier(same[0])
    return sql_fragment(key) if _is_key_expression(key) else quote_identifier(key)


def _is_key_expression(key: str) -> bool:
    """Whether a partition key that names no column is SQL: one expression (``"item % 10"``), not
    a list or an aliased item (``"a, b"`` was pasted into ``hash(...)`` as two keys, typed as one,
    and into a shuffle's ``CAST((a, b) AS BIGINT)``), nor text that is no select item at all."""
    return parses_as_select_item(key) and fragment_problem(key, "expression") is None


def _internal_column(columns: List[str]) -> str:
    """The name of the internal partition column: ``__sp_partition__``, or that name with more
    underscores if the data has a column so named, in any case (it would be replaced, or
    renamed by DuckDB, and its rows lost)."""
    taken = {fold_case(c) for c in columns}
    name = "__sp_partition__"
    while name in taken:
        name += "_"
    return name


#: DuckDB types whose hash is not a function of the value alone across types: ``hash(1.0::DOUBLE)``,
#: ``hash(1.0::FLOAT)``, ``hash(1::BIGINT)``, ``hash(1.0::DECIMAL(5,1))`` and
#: ``hash(1.00::DECIMAL(6,2))`` all differ
_INEXACT_NUMERIC = re.compile(r"(FLOAT|REAL|DOUBLE|DECIMAL|NUMERIC)\b", re.IGNORECASE)

#: integer types narrower than BIGINT: a negative value hashes apart from the same BIGINT
#: (``hash((-3)::INTEGER) != hash((-3)::BIGINT)``; non-negative values hash alike), so they are
#: hashed as the BIGINT they equal, which never fails
_NARROW_INTEGER = re.compile(r"(TINYINT|SMALLINT|INTEGER|UTINYINT|USMALLINT|UINTEGER)$", re.IGNORECASE)

#: integer types wider than BIGINT (``hash((-3)::HUGEINT) != hash((-3)::BIGINT)``): a value in
#: BIGINT's range is hashed as that BIGINT
_WIDE_INTEGER = re.compile(r"(UBIGINT|HUGEINT|UHUGEINT)$", re.IGNORECASE)

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


#: DuckDB date and time types whose hash differs from an equal TIMESTAMP's: a DATE, and a
#: timestamp in another unit (pandas writes nanoseconds, DuckDB and Spark microseconds). A
#: TIMESTAMP WITH TIME ZONE already hashes as the TIMESTAMP of the same instant.
_OTHER_TIMESTAMP = re.compile(r"(DATE|TIMESTAMP_NS|TIMESTAMP_MS|TIMESTAMP_S)$", re.IGNORECASE)


def _hash_operand(sql: str, type_name: Optional[str]) -> str:
    """The value hashed for one hash key ``sql`` of DuckDB type ``type_name``.

    Producers of one partitioning may read the key with different types (an int64 file and a
    double file; decimal(5,1) and decimal(6,2)), and a consumer unions them by name, so equal
    values must hash alike whatever their type. BIGINT keys hash as they are; an integer of
    another width, or a float or decimal key, hashes a value in BIGINT's range as that BIGINT
    (DuckDB hashes a negative INTEGER, BIGINT and HUGEINT apart), any other value by the hash of
    its DOUBLE (what a union with a double gives), so ``-3::INTEGER``, ``-3``, ``-3.0`` and
    ``-3.00`` meet, as do ``1.5::FLOAT`` and ``1.5::DOUBLE``. A DATE or a
    timestamp in seconds, milliseconds or nanoseconds hashes as the TIMESTAMP (microseconds) it
    equals, so ``2024-01-01`` meets ``2024-01-01 00:00:00`` whatever the unit of either file.
    """
    if type_name and _OTHER_TIMESTAMP.match(type_name.strip()):
        return f"TRY_CAST(({sql}) AS TIMESTAMP)"  # a DATE past TIMESTAMP's range: NULL, one partition
    type_name = (type_name or "").strip()
    v = f"({sql})"
    if _NARROW_INTEGER.match(type_name):
        return f"CAST({v} AS BIGINT)"
    # a value that is no BIGINT (an integer past its range, a fraction): the hash of its DOUBLE,
    # as a BIGINT (shifted, so it fits), so that every branch, and the key, is a BIGINT; a key
    # of two types (an int32 file and an int64 one, an integer and a double) hashes alike
    by_value = f"CAST(hash(CAST({v} AS DOUBLE)) >> 1 AS BIGINT)"
    if _WIDE_INTEGER.match(type_name):
        return f"CASE WHEN {v} BETWEEN {_BIGINT_MIN} AND {_BIGINT_MAX} THEN CAST({v} AS BIGINT) WHEN {v} IS NOT NULL THEN {by_value} END"
    if not _INEXACT_NUMERIC.match(type_name):
        return sql
    # NaN: DuckDB takes NaN = trunc(NaN) as true, and once a Parquet file's statistics (which
    # leave NaN out) show every value small it drops the abs() guard, so NaN reaches the integer
    # branch, where a CAST fails the task; TRY_CAST gives NULL there and NaN hashes as the double
    return (
        f"CASE WHEN {v} = trunc({v}) AND abs({v}) < 9223372036854775807 THEN coalesce(TRY_CAST({v} AS BIGINT), {by_value}) "
        f"WHEN {v} IS NOT NULL THEN {by_value} END"
    )


def hash_key_types(conn, src: str, node, columns: List[str], task: Optional[Task] = None) -> Dict[str, str]:
    """The DuckDB type of each of a hash partition ``node``'s key columns (or expressions) over
    the relation ``src`` whose columns are ``columns``, or of a shuffle's key; empty for a random
    partition.

    This is the first statement that names the keys: a key that is no column (nor a valid
    expression) fails here, as the user's error (:func:`run_sql`: not retried), and ``task``'s
    error shows this statement."""
    if node.random_shuffle:
        return {}
    if node.shuffle_only:
        keys, exprs = [node.data_partition_column], [_shuffle_key_value(node, columns)]
    elif node.hash_columns:
        keys, exprs = list(node.hash_columns), [_key_sql(c, columns) for c in node.hash_columns]
    else:
        return {}
    sql = f"DESCRIBE SELECT {', '.join(exprs)} FROM {src}"
    if task is not None:
        task._current_sql = sql
    rows = run_sql(conn, sql)
    return {c: r[1] for c, r in zip(keys, rows)}


def check_key_columns(node, columns: List[str], conn) -> None:
    """Raise :class:`~smallpond.errors.ColumnNotFoundError` for a key of a hash or shuffle partition
    ``node`` (``hash_columns``, or the ``data_partition_column`` of a shuffle) that the user wrote as
    a plain name and is no column of the input (``columns``), rather than DuckDB's binder error
    about the statement smallpond built. A name that DuckDB evaluates on its own (``current_date``)
    is an expression, as any other key text is; text that is no select item is a name too
    (:func:`_key_sql`)."""
    if node.random_shuffle:
        return
    if node.shuffle_only:
        keys, named_by = [node.data_partition_column], f"data_partition_column={node.data_partition_column!r}"
    else:
        keys, named_by = list(node.hash_columns), f"hash_columns={list(node.hash_columns)!r}"
    have = {fold_case(c) for c in columns}
    missing = [
        k
        for k in keys
        if fold_case(k) not in have
        and (not _IDENT.fullmatch(k) and not _is_key_expression(k) or _IDENT.fullmatch(k) and not _binds_alone(conn, k))
    ]
    if missing:
        err = columns_not_found(missing, "the input", list(columns), named_by)
        texts = [k for k in missing if not _IDENT.fullmatch(k)]
        if texts:  # (perhaps meant as an expression: say why it was taken for a name)
            # ('first id, key': columns, but no plain names, which the node splits when it is
            # built as upstream's concat_ws('##', a, b) read 'a, b'; a list of keys names them)
            lists = [[p.strip() for p in k.split(",")] for k in texts if "," in k and not node.shuffle_only]
            lists = [ps for ps in lists if all(fold_case(p) in have for p in ps)]
            hint = f" (keys are given as a list: {lists[0]!r})" if lists else ""
            err = type(err)(f"{err}; as SQL, {', '.join(map(repr, texts))} is no single expression{hint}")
        raise err


def _binds_alone(conn, text: str) -> bool:
    import duckdb

    try:
        conn.execute(f"DESCRIBE SELECT {text}").fetchall()
        return True
    except duckdb.Error:
        return False


def _shuffle_key_value(node, columns: List[str]) -> str:
    """A shuffle's key as the data holds it, in SQL (before ``CAST(... AS BIGINT)`` makes it a
    partition index): the column of that name, or the expression the user wrote."""
    col = node.data_partition_column
    return quote_identifier(col) if col in columns else f"({_key_sql(col, columns)})"


def _key_value(node, key, conn, src: str, columns: List[str], expr: str):
    """A shuffle key as the data holds it (read through ``conn`` from ``src``, rows with
    ``columns``) of a row that goes to partition ``key`` by ``expr``; None where there is no such
    key (a hash or random partition, a NULL key) or the query fails."""
    if not node.shuffle_only or node.random_shuffle or key == "NULL":
        return None
    try:
        sql = f"SELECT {_shuffle_key_value(node, columns)} FROM {src} WHERE {expr} = {int(key)} LIMIT 1"
        rows = conn.execute(sql).fetchall()  # (all: a result left unfetched holds the connection)
    except Exception:  # (the out-of-range error is raised anyway, without the value)
        return None
    return rows[0][0] if rows else None


def partition_key_expr(node, columns: List[str], types: Optional[Dict[str, str]] = None) -> (str, str):
    """(SQL expression computing each row's partition index, name of the partition column) of a
    hash or shuffle partition ``node`` over rows with ``columns``.

    A name the user gave that is a column of the data is quoted as an identifier; any other
    text is an SQL expression the user wrote (``"item % 10"``, ``"random()"``), used as is.
    ``types`` (:func:`hash_key_types`) are the DuckDB types of the keys: float and decimal hash
    keys are hashed by value, not by type (:func:`_hash_operand`); a shuffle key names its
    partition by a whole number (:func:`shuffle_index_sql`); without them (the plan check,
    which only binds the expression) keys are hashed, or cast, as they are.
    (Also what the plan check binds: :mod:`smallpond.execution.plancheck`.)
    """
    n = node.npartitions
    col = node.data_partition_column
    if node.random_shuffle:
        return f"CAST(floor(random() * {n}) AS BIGINT)", col
    types = types or {}
    if node.shuffle_only:
        index = shuffle_index_sql(node, _shuffle_key_value(node, columns), types.get(col))
        return index, col if col in columns else node.dimension
    cols = ", ".join(_hash_operand(_key_sql(c, columns), types.get(c)) for c in node.hash_columns)
    return f"CAST(hash({cols}) % {n} AS BIGINT)", col


class HashPartitionTask(Task):
    """Route every row of the input to one of ``npartitions`` partitions in one DuckDB pass.

    The files of partition ``k`` are ``{prefix}-{k}.{i}.parquet`` (upstream 0.15's layout; also
    where pyarrow writes a large input, in the COPY's shape: :meth:`_run_arrow`), or with
    ``hive_partitioning`` ``{column}={k}/{prefix}-{i}.parquet``; either way each file names its
    partition in its key-value metadata (``SMALLPOND:{column}`` and ``SMALLPOND:{dimension}``), so
    ``ParquetDataSet.load_partitioned_datasets`` finds it wherever the file is moved. Partitions
    that receive no rows get an empty placeholder file carrying the schema.
    """

    writes_output = True

    def __init__(self, node, task_id, partition_infos, input_keys, producer_index: int = 0) -> None:
        super().__init__(node, task_id, partition_infos, input_keys)
        #: this task's place among its node's producers (given by the planner). The first
        #: producer always leaves a file (rows or a placeholder) in every partition; the others,
        #: when given no input files at all, write nothing: with ``DataSetPartitionNode(20)`` over
        #: 4 files, 16 producers would otherwise each write a placeholder into each partition (5%
        #: of the work of a 2 GB hash partition into 16)
        self.producer_index = producer_index

    def error_context(self):
        node = self.node
        if getattr(node, "pre_sql", None):
            return {"sql": node.pre_sql}  # the query as the user wrote it, placeholders and all
        return (
            {"sql": self._current_sql}
            if getattr(self, "_current_sql", None)
            else {"sql": f"partition by {node.hash_columns or node.data_partition_column}"}
        )

    def estimated_cost(self) -> float:
        return 3.0

    def _draws_random(self, ds) -> bool:
        node = self.node
        return node.random_shuffle or sql_may_draw_random([node.data_partition_column, *node.hash_columns, *(ds.columns or [])])

    def _key_expr(self, columns: List[str], conn=None, src: Optional[str] = None) -> (str, str):
        """The partition index expression over ``src`` (read through ``conn``) with ``columns``."""
        if conn is not None:
            self._current_sql = None  # the error shows the keys, not the statement before
            check_key_columns(self.node, columns, conn)
        types = hash_key_types(conn, src, self.node, columns, self) if conn is not None else None
        return partition_key_expr(self.node, columns, types)

    def _batch_key_value(self, batch, key, direct: bool, conn, columns: List[str], expr: str):
        """The shuffle key as ``batch`` holds it of a row whose partition index ``key`` is out of
        range (:func:`_key_value`): the column's own value, or through DuckDB's ``conn``."""
        node = self.node
        if not node.shuffle_only or node.random_shuffle or isinstance(key, str):
            return None
        if direct:
            import numpy as np

            values = batch.column(node.data_partition_column)
            at = np.flatnonzero(direct_keys(node, values, node.npartitions) == key)
            return values[int(at[0])].as_py() if len(at) else None
        if conn is None:
            return None
        conn.register("__sp_batch", batch)
        try:
            return _key_value(node, int(key), conn, "__sp_batch", columns, expr)
        finally:
            conn.unregister("__sp_batch")

    def _no_rows(self, n: int) -> PartitionedDataSet:
        """The result of a producer with no rows to split: ``n`` empty partitions."""
        self.stats["rows"] = 0
        return PartitionedDataSet([ParquetDataSet.from_files([]) for _ in range(n)])

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        n = node.npartitions
        ds = merge_datasets(inputs)
        pre_sql = getattr(node, "pre_sql", None)
        if pre_sql is None and isinstance(ds, ParquetDataSet) and ds.empty and (self.producer_index > 0 or columns_unknown(ds)):
            # nothing to split; an input whose columns are unknown (a Python node's output with no
            # rows) has no columns to give the placeholders either: every partition is empty like it
            return self._no_rows(n)
        # use_parquet_writer (upstream's option of the duckdb engine): DuckDB computes each row's
        # partition and pyarrow's ParquetWriter writes one file per partition, as the arrow engine
        # does; the duckdb engine goes that way too where it costs less (_arrow_writes_for_less)
        arrow = node.engine_type == "arrow" or node.use_parquet_writer
        if pre_sql is None and (arrow or _arrow_writes_for_less(node, ds)):
            batches = _arrow_row_group_reader(ds, mapped=not getattr(runtime_ctx, "enforce_memory_limit", False))
            if batches is not None and (arrow or _arrow_keeps_types(batches.schema)):
                return self._run_arrow(runtime_ctx, ds, batches, output_dir, copy_shaped=not arrow)
        shareable = not getattr(ds, "udfs", None) and not (pre_sql and sql_may_outlive_task([pre_sql]))
        seeded = self._draws_random(ds) or bool(pre_sql and sql_may_draw_random([pre_sql]))
        conn = open_connection(self, runtime_ctx, memory_overcommit_ratio=1.0, shareable=shareable, seeded=seeded)
        try:
            views = create_input_views(self, conn, [ds])
            src = views[0]
            if pre_sql is not None:
                # fused with the SQL node before it: partition that query's result
                query = format_query(self, pre_sql, views, {"batch_index": 0, "query_index": 0})
                self._current_sql = query
                # (as a subquery, as the SQL node would run it alone: a second statement after a
                # ';' is an error there, and a view of the text as it is took the first one only)
                try:
                    run_sql(
                        conn, f"CREATE OR REPLACE TEMP VIEW __sp_fused_{int(self.id)} AS SELECT * FROM ({as_subquery(query)})"
                    )
                except UserCodeError as e:  # (the SQL node's hint: its input's columns may be unknown)
                    hint = unknown_columns_hint(e, [0] if columns_unknown(ds) else [])
                    if hint is None:
                        raise
                    raise hint from e
                src = f"__sp_fused_{int(self.id)}"
            described = conn.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
            columns = [r[0] for r in described]
            if reads_unknown_columns(ds, columns):  # (a fused `select *` of such an input: as above)
                return self._no_rows(n)
            expr, col = self._key_expr(columns, conn, src)
            # a key computed from a shuffle expression is not part of the data; a hash key is kept
            # (as upstream does) unless drop_partition_column is set
            computed_key = node.shuffle_only and node.data_partition_column not in columns
            write_col = not (node.drop_partition_column or computed_key)
            # DuckDB names the partition directories "{column}={k}": a column name that is not a
            # plain identifier is carried as a separate internal partition column instead, under
            # a name no input column has
            internal = _internal_column(columns)
            part_col = col if _IDENT.fullmatch(col) else internal
            select = [quote_identifier(c) for c in columns if not _same_name(c, col)]
            # a shuffle by a column of the data routes each row by its value as BIGINT, and writes
            # the column as it was (0.4 stays 0.4, '01' stays '01', a uint16 stays a uint16) and
            # where it was (a partition column is written last: a BIGINT key that is not the last
            # column would move, and `select *` of the result would no longer line up with the input)
            key_type = dict((r[0], r[1]) for r in described).get(col)
            data_key = node.shuffle_only and col in columns and (key_type != "BIGINT" or col != columns[-1])
            if data_key:
                write_col = False
            if _keeps_input_column(node, col, columns) or data_key:
                part_col, select = internal, [quote_identifier(c) for c in columns]
            if part_col != col and write_col:
                select.append(f"{expr} AS {quote_identifier(col)}")
            select.append(f"{expr} AS {quote_identifier(part_col)}")
            query = f"SELECT {', '.join(select)} FROM {src}"
            write_part = "true" if write_col and part_col == col else "false"
            opts = ParquetWriterOptions.for_task(self).duckdb(self.parquet_kv_metadata(), writer_row_group_bytes(self, n))
            prefix = self.output_filename
            with copy_target_dir(output_dir) as target:
                sql = (
                    f"COPY ({query}) TO {quote_literal(target)} ({opts}, PARTITION_BY ({quote_identifier(part_col)}), "
                    f"WRITE_PARTITION_COLUMNS {write_part}, FILENAME_PATTERN {quote_literal(prefix + '-{i}')}, OVERWRITE_OR_IGNORE true)"
                )
                self._current_sql = sql
                try:
                    written = run_sql(conn, sql)
                except UserCodeError as e:
                    told = key_error_from_duckdb(node, e)  # (a key naming no partition, as the arrow engine says it)
                    if told is None:
                        raise
                    raise told from e
            self.stats["rows"] = int(written[0][0]) if written and written[0] else 0
            parts: List[List[str]] = [[] for _ in range(n)]
            for entry in sorted(os.listdir(output_dir)):
                m = re.fullmatch(re.escape(part_col) + r"=(.*)", entry)
                if not m:
                    # rows DuckDB wrote where no partition reads them: never dropped in silence
                    raise RuntimeError(
                        f"the partitioned COPY wrote {entry!r} into {output_dir}, not a folder of partition column "
                        f"{part_col!r}; its rows would be lost. SQL: {sql}"
                    )
                try:
                    k = int(m.group(1))
                except ValueError:
                    k = None
                if k is None or not 0 <= k < n:
                    # (DuckDB names the folder of NULL keys __HIVE_DEFAULT_PARTITION__)
                    key = "NULL" if m.group(1) == "__HIVE_DEFAULT_PARTITION__" else m.group(1)
                    raise key_out_of_range(node, key, n, _key_value(node, key, conn, src, columns, expr))
                sub = os.path.join(output_dir, entry)
                parts[k] = self._place_partition(output_dir, sub, k, prefix)
            if any(not p for p in parts) and pre_sql is not None and self.producer_index > 0 and not self.stats["rows"]:
                # the fused query gave no rows (DataSetPartitionNode(20) over 4 files: 16 producers
                # without a file): the first producer, which always runs this query, leaves the
                # placeholders (16 more files each cost these producers ~30 ms apiece)
                return self._no_rows(n)
            if any(not p for p in parts):
                # placeholders written by DuckDB too, with the columns the partitions' files have
                # (pyarrow, which a task of this engine never loads otherwise, costs ~0.3 s to import)
                written_cols = select if write_part == "true" else select[:-1]
                empty = f"SELECT {', '.join(written_cols)} FROM {src} LIMIT 0"
                row_group_bytes = writer_row_group_bytes(self, n)

                def write_empty(path: str, k: int) -> None:
                    kv = self.parquet_kv_metadata(self._partition_kv(k, part_col))
                    opts = ParquetWriterOptions.for_task(self).duckdb(kv, row_group_bytes)
                    run_sql(conn, f"COPY ({empty}) TO {quote_literal(path)} ({opts})")

                return self._with_placeholders(parts, output_dir, part_col, prefix, write_empty)
            return PartitionedDataSet([ParquetDataSet.from_files(p) for p in parts])
        finally:
            conn.close()

    def _partition_kv(self, k: int, *columns: str) -> Dict[str, int]:
        """The key-value metadata naming partition ``k`` in each of its files (unprefixed): the
        partition column, the dimension (upstream 0.15 wrote both) and ``columns``."""
        node = self.node
        return {c: k for c in (node.data_partition_column, node.dimension, *columns)}

    def _place_partition(self, output_dir: str, sub: str, k: int, prefix: str) -> List[str]:
        """The files DuckDB's partitioned COPY wrote for partition ``k`` into the folder ``sub``,
        each given its partition key in its key-value metadata (the COPY gives all its files the
        same metadata) and, unless the node asked for ``hive_partitioning``, moved out of the
        folder as ``{prefix}-{k}.{i}.parquet`` (upstream's flat layout)."""
        from smallpond.io.parquet_kv import set_kv_metadata

        # (the COPY wrote the task's own keys already: set again, they keep their values and places)
        kv = self.parquet_kv_metadata(self._partition_kv(k))
        levels = ParquetWriterOptions.for_task(self).levels("duckdb")  # (kept if the footer is rewritten by pyarrow)
        hive = self.node.hive_partitioning
        files = []
        for name in sorted(os.listdir(sub)):
            if not name.endswith(".parquet"):
                continue
            path = os.path.join(sub, name)
            set_kv_metadata(path, kv, levels)
            if not hive:  # DuckDB's name is "{prefix}-{i}.parquet": the partition goes before i
                flat = os.path.join(output_dir, f"{prefix}-{k}.{name[len(prefix) + 1 :]}")
                os.rename(path, flat)
                path = flat
            files.append(path)
        if not hive:
            os.rmdir(sub)
        return sorted(files)

    def _run_arrow(
        self, runtime_ctx, ds: ParquetDataSet, reader, output_dir: str, copy_shaped: bool = False
    ) -> PartitionedDataSet:
        """The ``arrow`` engine: stream Arrow batches, split each by partition, append to writers.

        DuckDB still computes the partition of each row (over the Arrow batch, zero-copy), so both
        engines assign rows to the same partitions; the rows are then moved by Arrow (a stable
        radix sort of partition indices and one ``take`` per batch) and written by pyarrow's
        Parquet writer. On wide binary columns this costs about half the CPU of DuckDB's
        partitioned COPY (GraySort records: ~1.0 vs ~2.2 s per 2.6M); on strings hashed by DuckDB
        it is no faster, which is why it is not the default. Rows keep their input order within
        a partition.

        ``copy_shaped``: the default engine's partition sent this way (:func:`_arrow_writes_for_less`),
        whose files take the shape its COPY would give them (:class:`_CopyShapedWriters`); else
        upstream's ``{prefix}-{k}.parquet`` (the arrow engine, ``use_parquet_writer``).
        """
        import numpy as np
        import pyarrow as pa

        from smallpond.io.arrow import empty_table

        node = self.node
        n = node.npartitions
        memory = task_memory(self)
        # batches of ~1/16 of the task's memory (at most 128 MB); upstream's files are written out
        # every 32 MB at most (buffering more cost more in fresh pages than it saved in row-group
        # overhead), the COPY-shaped ones by row group, within the COPY's own byte limit
        batch_bytes = max(1 * MB, min(128 * MB, memory // 16))
        columns = list(reader.schema.names)
        expr, col = self._key_expr(columns)
        computed_key = node.shuffle_only and node.data_partition_column not in columns
        write_col = not (node.drop_partition_column or computed_key)
        body_names = [c for c in columns if not _same_name(c, col)]
        # the partition is a column of the data: no SQL needed
        direct = node.shuffle_only and node.data_partition_column in columns
        keep = _keeps_input_column(node, col, columns)
        if keep or direct:  # direct: the user's column is written as it was (not as int64)
            body_names = list(columns)
        if direct:
            write_col = False
        # partition indices computed here without DuckDB, exactly as its SQL would (a range over binary keys)
        local_keys = None if direct else self._local_partition_keys(reader.schema)
        conn = (
            None
            if direct or local_keys is not None
            else open_connection(self, runtime_ctx, memory_overcommit_ratio=1.0, shareable=True, seeded=self._draws_random(ds))
        )
        if conn is not None:
            # the keys' types, as the DuckDB engine sees them, decide how they are hashed
            conn.register("__sp_batch", empty_table(reader.schema))
            try:
                expr, _ = self._key_expr(columns, conn, "__sp_batch")
                conn.unregister("__sp_batch")
            except BaseException:
                conn.close()
                raise
        key_sql = f"SELECT {expr} AS k FROM __sp_batch"  # __sp_batch: the batch, registered as a view
        self._current_sql = None if direct or local_keys is not None else key_sql  # (SQL that runs)
        dir_col = col if _IDENT.fullmatch(col) and not keep else "__sp_partition__"
        if copy_shaped:  # the default engine's files, as its COPY would write them
            writer = _CopyShapedWriters(self, output_dir, col, dir_col, n, write_col, writer_row_group_bytes(self, n))
        else:
            writer = _PartitionWriters(self, output_dir, col, dir_col, n, write_col, min(32 * MB, batch_bytes))
        try:
            for batch in reader.batches(batch_bytes):
                if batch.num_rows == 0:
                    continue
                if direct:
                    keys = direct_keys(node, batch.column(col), n)
                elif local_keys is not None:
                    keys = local_keys(batch)
                else:
                    conn.register("__sp_batch", batch)
                    try:
                        with duckdb_errors_as(key_sql):  # a key that does not bind or cast is the user's
                            keys = conn.execute(key_sql).fetchnumpy()["k"]
                    except UserCodeError as e:
                        told = key_error_from_duckdb(node, e)  # (a key naming no partition, as the arrow engine says it)
                        if told is None:
                            raise
                        raise told from e
                    conn.unregister("__sp_batch")
                # a NULL key: masked (DuckDB's fetchnumpy)
                null = np.ma.isMaskedArray(keys) and bool(np.ma.getmaskarray(keys).any())
                keys = np.asarray(keys)
                if null or keys.dtype.kind not in "iu" or keys.size and (keys.min() < 0 or keys.max() >= n):
                    bad = keys[(keys < 0) | (keys >= n)][:1] if keys.dtype.kind in "iuf" else keys[:1]
                    key = "NULL" if null else bad[0] if len(bad) else keys.dtype
                    raise key_out_of_range(node, key, n, self._batch_key_value(batch, key, direct, conn, columns, expr))
                # numpy's stable sort of 16-bit integers is a radix sort: O(rows)
                keys = keys.astype(np.uint16 if n <= 1 << 16 else np.int64, copy=False)
                order = np.argsort(keys, kind="stable")
                counts = np.bincount(keys, minlength=n)
                writer.add_batch(batch.select(body_names).take(_int64_array(order)), counts)
            parts = writer.close()
            self.stats["rows"] = writer.rows
        finally:
            writer.abort()
            if conn is not None:
                conn.close()
        if any(not p for p in parts):
            schema = writer.schema
            if schema is None:  # no rows at all: the columns the writers would have written
                schema = pa.schema([reader.schema.field(c) for c in body_names])
                if write_col:
                    schema = schema.append(pa.field(col, pa.int64()))
            return self._with_placeholders(
                parts, output_dir, dir_col, self.output_filename, self._arrow_empty_writer(schema, dir_col, not copy_shaped)
            )
        return PartitionedDataSet([ParquetDataSet.from_files(p) for p in parts])

    def _local_partition_keys(self, schema):
        """A function giving the partition index of each row of an Arrow batch with ``schema``
        without DuckDB, exactly as the node's SQL would; None (the default) where only DuckDB can."""
        return None

    def _arrow_empty_writer(self, schema, col: str, row_group: bool = True):
        """Writes an empty partition's placeholder with pyarrow (the arrow engine's, with one empty
        row group; without ``row_group``, none, as DuckDB's COPY writes it)."""

        def write_empty(path: str, k: int) -> None:
            from smallpond.io.arrow import empty_table

            md = dict(schema.metadata or {})
            md.update({kk.encode(): vv.encode() for kk, vv in self.parquet_kv_metadata(self._partition_kv(k, col)).items()})
            # (the duckdb engine's without an Arrow schema, as its other files: _PartitionWriters)
            with open_parquet_writer(path, schema.with_metadata(md), {}, writes_like_copy(self.node)) as w:
                if row_group:
                    w.write_table(empty_table(w.schema))

        return write_empty

    def _with_placeholders(self, parts, output_dir, col, prefix, write_empty) -> PartitionedDataSet:
        """The partitions, each empty one given a placeholder file with the schema, written by
        ``write_empty(path, k)``.

        The partitions also name a file of a non-empty one as their ``_schema_path``: a sample of
        rows from which a Python map infers its output schema on an empty partition.
        """
        sample = next((p[0] for p in parts if p), None)
        for k in [k for k, p in enumerate(parts) if not p]:
            sub = os.path.join(output_dir, f"{col}={k}") if self.node.hive_partitioning else output_dir
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"{prefix}-{k}-empty.parquet")
            write_empty(path, k)
            parts[k] = [path]
        datasets = [ParquetDataSet.from_files(p) for p in parts]
        if sample is not None:
            for ds in datasets:  # all alike, so the partitions still travel as one template
                ds._schema_path = sample
        return PartitionedDataSet(datasets)
