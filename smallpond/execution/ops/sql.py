"""DuckDB tasks: the SQL engine and the single-pass hash partitioner.

Each task opens its own in-memory DuckDB connection with ``threads`` = the task's CPUs,
``memory_limit`` = its memory and a private spill directory under ``temp/``, so a task larger than
its memory spills instead of failing.
"""

from __future__ import annotations

import os
import re
import socket
import string
from typing import Dict, List, Optional

from smallpond.common import MB
from smallpond.errors import OutOfMemory, UserCodeError
from smallpond.execution.task import Task, default_memory_limit
from smallpond.logical.dataset import DataSet, ParquetDataSet, PartitionedDataSet

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


def classify_duckdb_error(e: BaseException, sql: str) -> BaseException:
    """Turn a DuckDB exception into OutOfMemory (retry) or UserCodeError (fail fast)."""
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


def share_database_in_process(enabled: bool = True) -> None:
    """Let SQL tasks in this process share one DuckDB database (workers turn this on)."""
    global _share_database
    _share_database = enabled


def sql_may_outlive_task(queries: List[str]) -> bool:
    """True if SQL text might leave state behind in the database it ran in (conservative)."""
    return any(_MAY_OUTLIVE_TASK.search(q) for q in queries)


def _shared_database(runtime_ctx):
    import duckdb

    key = (os.getpid(), runtime_ctx.temp_root)
    db = _shared_databases.get(key)
    if db is None:
        db = duckdb.connect(config={"allow_unsigned_extensions": "true"})
        # DuckDB keeps one spill directory per database: one per worker process
        spill = os.path.join(runtime_ctx.temp_root, f"duckdb-{socket.gethostname()}-{os.getpid()}")
        os.makedirs(spill, exist_ok=True)
        db.execute(f"SET temp_directory = '{spill}'")
        _shared_databases[key] = db
    return db


def open_connection(
    task: Task,
    runtime_ctx,
    *,
    cpu_overcommit_ratio: float = 1.0,
    memory_overcommit_ratio: float = 0.9,
    shareable: bool = False,
    seeded: bool = True,
):
    """A DuckDB connection for ``task`` with its threads, memory limit, spill directory and seed.

    ``shareable``: the caller vouches that the task leaves nothing behind in the database (no
    UDFs, no DDL or settings in its SQL), so a cursor on this worker's shared database will do.
    ``seeded=False``: the caller vouches that its SQL draws no random numbers, so the task's seed
    need not be set (a statement costs ~0.5 ms, a fifth of a tiny task). A fresh cursor starts
    from DuckDB's default seed, as a fresh database does; a database of its own is always seeded.
    """
    import duckdb

    threads = max(1, int(round(task.cpu_limit * cpu_overcommit_ratio)))
    memory = task.memory_limit or default_memory_limit(runtime_ctx, task.cpu_limit)
    memory_mb = max(64, int(memory * memory_overcommit_ratio) // MB)
    settings = {"threads": str(threads), "memory_limit": f"'{memory_mb}MiB'"}
    if shareable and _share_database:
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
        spill = os.path.join(task.temp_abspath, "duckdb")
        os.makedirs(spill, exist_ok=True)
        conn.execute(f"SET temp_directory = '{spill}'")
        todo = settings
        fresh = True
    for k, v in todo.items():
        conn.execute(f"SET {k} = {v}")
    if fresh:  # a database's own connection shows a progress bar; its cursors do not
        conn.execute("SET enable_progress_bar = false")
    if seeded or fresh:
        conn.execute(f"SELECT setseed({task.rand_seed_float * 2 - 1 if task.rand_seed_float else 0.0})").fetchall()
    return conn


_MAY_DRAW_RANDOM = re.compile(r"rand|sample|uuid|shuffle", re.IGNORECASE)


def sql_may_draw_random(texts) -> bool:
    """True if SQL text might use random numbers (random(), USING SAMPLE, uuid(), ...)."""
    return any(_MAY_DRAW_RANDOM.search(str(t)) for t in texts if t)


def create_input_views(task: Task, conn, datasets: List[DataSet]) -> List[str]:
    names = []
    for i, ds in enumerate(datasets):
        name = f"__input_{int(task.id)}_{i:06d}"
        for ctx in getattr(ds, "udfs", []) or []:
            ctx.bind(conn)
        sql = f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {ds.sql_query_fragment(conn=conn)}"
        task._current_sql = sql
        run_sql(conn, sql)
        names.append(name)
    return names


def format_query(task: Task, query: str, views: List[str], extra: Dict[str, object]) -> str:
    named = {
        "rand_seed": task.rand_seed_uint32,
        "cpu_limit": task.cpu_limit,
        "memory_limit": task.memory_limit or 0,
        "output_filename": task.output_filename,
    }
    named.update({p.dimension: p.index for p in task.partition_infos})
    named.update(extra)
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


def run_sql(conn, sql: str) -> list:
    """Execute and fetch everything (DuckDB refuses new work while a result is unfinished)."""
    try:
        return conn.execute(sql).fetchall()
    except Exception as e:  # duckdb.Error subclasses
        mapped = classify_duckdb_error(e, sql)
        if mapped is e:
            raise
        raise mapped from e


def parquet_options(node, kv: Dict[str, str]) -> str:
    comp = (getattr(node, "parquet_compression", None) or "uncompressed").lower()
    if comp == "none":
        comp = "uncompressed"
    opts = ["FORMAT PARQUET", f"COMPRESSION '{comp}'"]
    level = getattr(node, "parquet_compression_level", None)
    if comp == "zstd" and level is not None:
        opts.append(f"COMPRESSION_LEVEL {int(level)}")
    rgs = getattr(node, "parquet_row_group_size", None)
    if rgs:
        opts.append(f"ROW_GROUP_SIZE {int(rgs)}")
    if getattr(node, "parquet_dictionary_encoding", None) is False:
        # as in the Arrow writer (use_dictionary=False): no dictionary pages, and so no bloom
        # filters (DuckDB builds them from dictionaries). Trying a dictionary on every value of a
        # high-cardinality column and then dropping it is a third of the writer's time on such data.
        opts.append("DICTIONARY_SIZE_LIMIT 0, WRITE_BLOOM_FILTER false")
    if kv:
        items = ", ".join(f"'{k}': '{v}'" for k, v in kv.items())
        opts.append(f"KV_METADATA {{{items}}}")
    return ", ".join(opts)


def writer_buffer_option(task: Task, open_writers: int = 1) -> str:
    """``ROW_GROUP_SIZE_BYTES`` keeping the writers' buffered row groups within 1/8 of the task's
    memory. A writer holds a whole row group before writing it (122880 rows of 100 bytes are
    12 MB), memory DuckDB cannot spill: a sort within a small limit fails there otherwise."""
    rt = task.runtime_ctx
    memory = task.memory_limit or (default_memory_limit(rt, task.cpu_limit) if rt is not None else 0)
    if not memory:
        return ""
    return f", ROW_GROUP_SIZE_BYTES {max(256 * 1024, memory // (8 * max(1, open_writers)))}"


def copy_to_parquet(task: Task, conn, query: str, output_dir: str, prefix: str, *, per_thread_output: bool = True) -> int:
    """``COPY (query) TO output_dir`` as Parquet; returns the number of rows written."""
    opts = parquet_options(task.node, task.parquet_kv_metadata()) + writer_buffer_option(task, max(1, int(task.cpu_limit)))
    if per_thread_output and task.cpu_limit > 1:
        sql = f"COPY ({query}) TO '{output_dir}' ({opts}, PER_THREAD_OUTPUT true, FILENAME_PATTERN '{prefix}-{{i}}', OVERWRITE_OR_IGNORE true)"
    else:
        sql = f"COPY ({query}) TO '{os.path.join(output_dir, prefix + '-0.parquet')}' ({opts})"
    rows = run_sql(conn, sql)
    return int(rows[0][0]) if rows and rows[0] else 0


class SqlEngineTask(Task):
    def error_context(self):
        return {"sql": "; ".join(self.node.sql_queries)}

    def estimated_cost(self) -> float:
        return 2.0

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        if runtime_ctx.skip_task_with_empty_input and any(d.empty for d in inputs):
            return ParquetDataSet([], root_dir=None)
        batches = [inputs]
        if node.batched_processing and len(inputs) == 1 and isinstance(inputs[0], ParquetDataSet) and not inputs[0].empty:
            memory = self.memory_limit or default_memory_limit(runtime_ctx, self.cpu_limit)
            batches = [[b] for b in inputs[0].partition_by_size(max(1, memory // 2))] or [inputs]
        for batch_index, batch in enumerate(batches):
            self._run_batch(runtime_ctx, batch, output_dir, batch_index)
        return ParquetDataSet(sorted(os.path.join(output_dir, f) for f in os.listdir(output_dir)), root_dir=None)

    def _run_batch(self, runtime_ctx, inputs, output_dir, batch_index):
        node = self.node
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
            seeded=sql_may_draw_random(node.sql_queries) or any(sql_may_draw_random(d.columns or []) for d in inputs),
        )
        try:
            for ctx in node.udf_contexts.values():
                try:
                    ctx.bind(conn)
                except Exception as e:
                    mapped = classify_duckdb_error(e, f"registering UDF {getattr(ctx, 'name', ctx)!r}")
                    if mapped is e:
                        raise
                    raise mapped from e
            views = create_input_views(self, conn, inputs)
            nq = len(node.sql_queries)
            for qi, raw in enumerate(node.sql_queries):
                sql = format_query(self, raw, views, {"batch_index": batch_index, "query_index": qi})
                self._current_sql = sql
                if qi < nq - 1 or not node.materialize_output:
                    run_sql(conn, sql)
                    continue
                if node.materialize_in_memory:
                    run_sql(conn, f"CREATE OR REPLACE TEMP TABLE temp_query_result AS {sql}")
                    sql = "SELECT * FROM temp_query_result"
                prefix = f"{self.output_filename}-{batch_index}.{qi}"
                copy_to_parquet(self, conn, sql, output_dir, prefix, per_thread_output=node.per_thread_output)
        finally:
            conn.close()


class HashPartitionTask(Task):
    """Route every row of the input to one of ``npartitions`` partitions in one DuckDB pass.

    The output keeps DuckDB's ``{column}={k}/`` directory layout, so the partition key of each
    file is visible in its path; partitions that receive no rows get an empty placeholder file
    carrying the schema.
    """

    writes_output = True

    def error_context(self):
        node = self.node
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

    def _key_expr(self, columns: List[str]) -> (str, str):
        """(expression computing the partition index, name of the partition column)."""
        node = self.node
        n = node.npartitions
        col = node.data_partition_column
        if getattr(node, "split_points", None) is not None:
            pts = ", ".join(repr(p) if not isinstance(p, str) else "'" + p.replace("'", "''") + "'" for p in node.split_points)
            key = node.key_column
            return f'CAST(len(list_filter([{pts}], lambda x: x <= "{key}")) AS BIGINT)', col
        if node.random_shuffle:
            return f"CAST(floor(random() * {n}) AS BIGINT)", col
        if node.shuffle_only:
            if col in columns:
                return f'CAST("{col}" AS BIGINT)', col
            return f"CAST(({col}) AS BIGINT)", node.dimension
        cols = ", ".join(c if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c) else f'"{c}"' for c in node.hash_columns)
        return f"CAST(hash({cols}) % {n} AS BIGINT)", col

    def run(self, runtime_ctx, inputs, output_dir):
        from smallpond.execution.ops.structural import merge_datasets

        node = self.node
        n = node.npartitions
        ds = merge_datasets(inputs)
        if node.engine_type == "arrow":
            batches = _arrow_row_group_reader(ds)
            if batches is not None:
                return self._run_arrow(runtime_ctx, ds, batches, output_dir)
        conn = open_connection(
            self, runtime_ctx, memory_overcommit_ratio=1.0, shareable=not getattr(ds, "udfs", None), seeded=self._draws_random(ds)
        )
        try:
            views = create_input_views(self, conn, [ds])
            src = views[0]
            columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
            expr, col = self._key_expr(columns)
            keep = [f'"{c}"' for c in columns if c != col]
            select = ", ".join(keep + [f'{expr} AS "{col}"'])
            query = f"SELECT {select} FROM {src}"
            # a key computed from a shuffle expression is not part of the data; a hash key is kept
            # (as upstream does) unless drop_partition_column is set
            computed_key = node.shuffle_only and node.data_partition_column not in columns
            write_col = "false" if node.drop_partition_column or computed_key else "true"
            opts = parquet_options(node, self.parquet_kv_metadata()) + writer_buffer_option(self, n)
            prefix = self.output_filename
            sql = (
                f"COPY ({query}) TO '{output_dir}' ({opts}, PARTITION_BY (\"{col}\"), WRITE_PARTITION_COLUMNS {write_col}, "
                f"FILENAME_PATTERN '{prefix}-{{i}}', OVERWRITE_OR_IGNORE true)"
            )
            self._current_sql = sql
            run_sql(conn, sql)
            parts: List[List[str]] = [[] for _ in range(n)]
            for entry in sorted(os.listdir(output_dir)):
                m = re.fullmatch(re.escape(col) + r"=(.*)", entry)
                if not m:
                    continue
                try:
                    k = int(m.group(1))
                except ValueError:
                    k = None
                if k is None or not 0 <= k < n:
                    raise UserCodeError(f"partition key {m.group(1)} is out of range 0-{n - 1}")
                sub = os.path.join(output_dir, entry)
                parts[k] = sorted(os.path.join(sub, f) for f in os.listdir(sub) if f.endswith(".parquet"))
            if any(not p for p in parts):
                schema = conn.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
                if write_col == "false":
                    schema = schema.remove(schema.get_field_index(col))
                self._write_placeholders(parts, output_dir, col, schema, prefix)
            datasets = []
            for p in parts:
                d = ParquetDataSet(p, root_dir=None)
                datasets.append(d)
            return PartitionedDataSet(datasets)
        finally:
            conn.close()

    def _run_arrow(self, runtime_ctx, ds: ParquetDataSet, reader, output_dir: str) -> PartitionedDataSet:
        """The ``arrow`` engine: stream Arrow batches, split each by partition, append to writers.

        DuckDB still computes the partition of each row (over the Arrow batch, zero-copy), so both
        engines assign rows to the same partitions; the rows are then moved by Arrow (a stable
        radix sort of partition indices and one ``take`` per batch) and written by pyarrow's
        Parquet writer. On wide binary columns this costs about half the CPU of DuckDB's
        partitioned COPY (GraySort records: ~1.0 vs ~2.2 s per 2.6M); on strings hashed by DuckDB
        it is no faster, which is why it is not the default. Rows keep their input order within
        a partition.
        """
        import numpy as np
        import pyarrow as pa

        node = self.node
        n = node.npartitions
        memory = self.memory_limit or default_memory_limit(runtime_ctx, self.cpu_limit)
        # batches of ~1/16 of the task's memory (at most 128 MB); written out every 32 MB at most:
        # buffering more costs more in fresh pages than it saves in row-group overhead
        batch_bytes = max(1 * MB, min(128 * MB, memory // 16))
        columns = list(reader.schema.names)
        expr, col = self._key_expr(columns)
        computed_key = node.shuffle_only and node.data_partition_column not in columns
        write_col = not (node.drop_partition_column or computed_key)
        body_names = [c for c in columns if c != col]
        direct = node.shuffle_only and col in columns  # the partition is a column: no SQL needed
        self._current_sql = f"SELECT {expr} FROM <batch>"
        conn = (
            None
            if direct
            else open_connection(self, runtime_ctx, memory_overcommit_ratio=1.0, shareable=True, seeded=self._draws_random(ds))
        )
        writer = _PartitionWriters(self, output_dir, col, n, write_col, min(32 * MB, batch_bytes))
        try:
            for batch in reader.batches(batch_bytes):
                if batch.num_rows == 0:
                    continue
                if direct:
                    keys = batch.column(col).to_numpy(zero_copy_only=False)
                else:
                    conn.register("__sp_batch", batch)
                    keys = conn.execute(f"SELECT {expr} AS k FROM __sp_batch").fetchnumpy()["k"]
                    conn.unregister("__sp_batch")
                keys = np.asarray(keys)
                if keys.dtype.kind not in "iu" or keys.size and (keys.min() < 0 or keys.max() >= n):
                    bad = keys[(keys < 0) | (keys >= n)][:1] if keys.dtype.kind in "iuf" else keys[:1]
                    raise UserCodeError(f"partition key {bad[0] if len(bad) else keys.dtype} is out of range 0-{n - 1}")
                # numpy's stable sort of 16-bit integers is a radix sort: O(rows)
                keys = keys.astype(np.uint16 if n <= 1 << 16 else np.int64, copy=False)
                order = np.argsort(keys, kind="stable")
                counts = np.bincount(keys, minlength=n)
                body = batch.select(body_names).take(_int64_array(order))
                start = 0
                for k in np.flatnonzero(counts):
                    end = start + int(counts[k])
                    writer.add(int(k), body.slice(start, end - start))
                    start = end
            parts = writer.close()
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
            self._write_placeholders(parts, output_dir, col, schema, self.output_filename)
        return PartitionedDataSet([ParquetDataSet(p, root_dir=None) for p in parts])

    def _write_placeholders(self, parts, output_dir, col, schema, prefix) -> None:
        import pyarrow.parquet as pq

        for k, p in enumerate(parts):
            if p:
                continue
            sub = os.path.join(output_dir, f"{col}={k}")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"{prefix}-{k}-empty.parquet")
            md = dict(schema.metadata or {})
            md.update({kk.encode(): vv.encode() for kk, vv in self.parquet_kv_metadata({col: k}).items()})
            pq.write_table(schema.with_metadata(md).empty_table(), path)
            parts[k] = [path]


class _RowGroupReader:
    """Reads a Parquet dataset's row ranges a row group at a time, as Arrow tables.

    Whole row groups need no re-batching (no copies): the arrow engine splits each table by
    partition anyway. Row groups larger than a batch are read in slices.
    """

    def __init__(self, ds: ParquetDataSet, files: list, schema) -> None:
        self.ds, self.files, self.schema = ds, files, schema

    def batches(self, batch_bytes: int):
        columns = self.ds.columns
        for r, pf in self.files:
            md = pf.metadata
            pos = 0
            for i in range(md.num_row_groups):
                rg = md.row_group(i)
                lo, hi = pos, pos + rg.num_rows
                pos = hi
                if hi <= r.begin or rg.num_rows == 0:
                    continue
                if lo >= r.end:
                    break
                a, b = max(r.begin, lo) - lo, min(r.end, hi) - lo
                if rg.total_byte_size > 2 * batch_bytes:
                    rows = max(1, batch_bytes * rg.num_rows // max(1, rg.total_byte_size))
                    start = 0
                    for piece in pf.iter_batches(batch_size=rows, row_groups=[i], columns=columns, use_threads=False):
                        end = start + piece.num_rows
                        if end > a and start < b:
                            import pyarrow as pa

                            yield pa.Table.from_batches([piece.slice(max(a, start) - start, min(b, end) - max(a, start))])
                        start = end
                    continue
                t = pf.read_row_group(i, columns=columns, use_threads=False)
                yield t if (a, b) == (0, rg.num_rows) else t.slice(a, b - a)


def _arrow_row_group_reader(ds) -> Optional[_RowGroupReader]:
    """A row-group reader for ``ds``, or None if pyarrow cannot read it as DuckDB would (not
    Parquet, expression or generated columns, files whose schemas differ)."""
    if not isinstance(ds, ParquetDataSet) or ds.empty or ds.generated_columns or ds._has_expressions():
        return None
    if ds.columns is not None and "*" in ds.columns:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, schema = [], None
    for r in ds.resolved_row_ranges:
        pf = pq.ParquetFile(r.path)
        s = pf.schema_arrow
        if ds.columns is not None:
            if any(c not in s.names for c in ds.columns):
                return None
            s = pa.schema([s.field(c) for c in ds.columns])
        s = s.remove_metadata()
        if schema is None:
            schema = s
        elif not s.equals(schema):
            return None
        files.append((r, pf))
    return _RowGroupReader(ds, files, schema) if files else None


def _int64_array(values):
    """An Arrow int64 array over a numpy array's memory (``pa.array`` would import pandas, ~0.5 s)."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


class _PartitionWriters:
    """Buffers rows per partition and writes ``{col}={k}/{prefix}-0.parquet`` with pyarrow.

    A partition's rows are written as a row group once it has ``parquet_row_group_size`` of them;
    when all buffers together pass ``max_buffered`` bytes, every buffer is written out.
    """

    def __init__(self, task: Task, output_dir: str, col: str, n: int, write_col: bool, max_buffered: int) -> None:
        from smallpond.common import DEFAULT_ROW_GROUP_SIZE

        node = task.node
        self.task, self.output_dir, self.col, self.n, self.write_col = task, output_dir, col, n, write_col
        self.max_buffered = max_buffered
        self.row_group_size = node.parquet_row_group_size or DEFAULT_ROW_GROUP_SIZE
        comp = str(node.parquet_compression or "none").lower()
        self.options = {
            "compression": "none" if comp == "uncompressed" else comp,
            "use_dictionary": node.parquet_dictionary_encoding,
        }
        if comp == "zstd" and node.parquet_compression_level is not None:
            self.options["compression_level"] = node.parquet_compression_level
        self.buffers: Dict[int, list] = {}
        self.buffered_rows: Dict[int, int] = {}
        self.buffered_bytes = 0
        self.writers: Dict[int, object] = {}
        self.paths: List[List[str]] = [[] for _ in range(n)]
        self.schema = None

    def add(self, k: int, table) -> None:
        self.buffers.setdefault(k, []).append(table)
        self.buffered_rows[k] = self.buffered_rows.get(k, 0) + table.num_rows
        self.buffered_bytes += table.nbytes
        if self.buffered_rows[k] >= self.row_group_size:
            self._flush(k)
        if self.buffered_bytes > self.max_buffered:
            for j in list(self.buffers):
                self._flush(j)

    def _flush(self, k: int) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = self.buffers.pop(k, None)
        if not tables:
            return
        self.buffered_rows.pop(k, None)
        table = pa.concat_tables(tables)
        self.buffered_bytes -= sum(t.nbytes for t in tables)
        if self.write_col:
            table = table.append_column(self.col, _int64_array(np.full(table.num_rows, k, dtype=np.int64)))
        w = self.writers.get(k)
        if w is None:
            if self.schema is None:
                md = dict(table.schema.metadata or {})
                md.update({key.encode(): v.encode() for key, v in self.task.parquet_kv_metadata().items()})
                self.schema = table.schema.with_metadata(md)
            sub = os.path.join(self.output_dir, f"{self.col}={k}")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, f"{self.task.output_filename}-0.parquet")
            md = dict(self.schema.metadata)
            md.update({key.encode(): v.encode() for key, v in self.task.parquet_kv_metadata({self.col: k}).items()})
            w = self.writers[k] = pq.ParquetWriter(path, self.schema.with_metadata(md), **self.options)
            self.paths[k] = [path]
        w.write_table(table.replace_schema_metadata(w.schema.metadata), row_group_size=self.row_group_size)

    def close(self) -> List[List[str]]:
        for k in list(self.buffers):
            self._flush(k)
        for w in self.writers.values():
            w.close()
        self.writers = {}
        return self.paths

    def abort(self) -> None:
        for w in self.writers.values():
            try:
                w.close()
            except Exception:
                pass
        self.writers = {}


def dataset_row_count(ds: DataSet) -> Optional[int]:
    try:
        return ds.num_rows
    except Exception:
        return None
