"""The arrow way of writing a hash partition: input row groups read by pyarrow, rows moved by Arrow,
one Parquet file per partition and producer written by pyarrow (see ``HashPartitionTask._run_arrow``).

Used by the ``arrow`` engine, by ``use_parquet_writer`` and by the default engine where it costs
less (:func:`_arrow_writes_for_less`); which inputs may go this way, how they are read and how the
partitions' files are written live here.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from smallpond.common import MB
from smallpond.execution.task import Task
from smallpond.io.columns import fold_case
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.io.parquet_kv import writer_adds_key_value_metadata
from smallpond.logical.dataset import ParquetDataSet


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


#: Parquet bytes of input from which the duckdb engine's hash partition is written the arrow
#: engine's way (DuckDB still computes every row's partition). Measured (DuckDB 2.0.1, pyarrow 26,
#: one thread, 7.5M rows of ~110 bytes, zstd level 3): DuckDB's partitioned COPY 1.7-1.9 s per
#: 168 MB file, the Arrow way 1.56-1.73 s (a tenth less: one copy of the rows instead of DuckDB's
#: partition buffers, and Arrow's allocator keeps its pages, 7-15k page faults instead of 50-100k);
#: a whole 2 GB user-plan job 6.9 s of CPU instead of 7.75. Below this size pyarrow's import in a
#: fresh worker (~0.1 s of CPU) would cost more than the task saves. Only the input decides it, so
#: a rerun writes the same files.
ARROW_WRITER_MIN_BYTES = 64 * MB


def writes_like_copy(node) -> bool:
    """Whether a hash partition ``node`` written the arrow way writes its files as DuckDB's COPY
    does (its metadata and types, see :class:`_PartitionWriters`): the duckdb engine's."""
    return node.engine_type != "arrow"


def open_parquet_writer(path: str, schema, options: dict, like_copy: bool):
    """A ``pyarrow.parquet.ParquetWriter`` of ``schema`` (its metadata in the file's key-value
    metadata) into ``path``; ``like_copy``: without the Arrow schema (the duckdb engine's files,
    see :class:`_PartitionWriters`). A writer told not to store the Arrow schema leaves out the
    schema's metadata too, so it is added afterwards (pyarrow 17+; pyarrow 16 keeps the Arrow schema)."""
    import pyarrow.parquet as pq

    if not (like_copy and writer_adds_key_value_metadata()):
        return pq.ParquetWriter(path, schema, **options)
    w = pq.ParquetWriter(path, schema, store_schema=False, **options)
    w.add_key_value_metadata(dict(schema.metadata or {}))
    return w


#: partitions from which the duckdb engine keeps its COPY whatever its input's size: the arrow way
#: holds a file open per partition for the whole task (1,000 partitions failed with "Too many open
#: files" under the usual limit of 1,024 descriptors, where DuckDB's COPY keeps at most 100 open),
#: and its row groups are cut every 32 MB of all partitions together (512 KB apiece at 64)
ARROW_WRITER_MAX_PARTITIONS = 64


def _arrow_writes_for_less(node, ds) -> bool:
    """Whether the duckdb engine's partition of ``ds`` is written the arrow engine's way: a hash
    partition by keys (not a shuffle, a random one or hive folders) of at least
    :data:`ARROW_WRITER_MIN_BYTES` of Parquet (``SP_TEST_ARROW_WRITER_MIN_BYTES``: tests only).
    Not when the node asks for a row group size: the arrow writers cut row groups smaller, each
    time their buffers together reach 32 MB (~20k rows of 100 bytes in 16 partitions); nor into
    more than :data:`ARROW_WRITER_MAX_PARTITIONS` partitions."""
    if node.random_shuffle or node.shuffle_only or not node.hash_columns or node.hive_partitioning:
        return False
    if getattr(node, "parquet_row_group_size", None) or node.npartitions > ARROW_WRITER_MAX_PARTITIONS:
        return False
    if not isinstance(ds, ParquetDataSet) or ds.empty:
        return False
    least = int(os.environ.get("SP_TEST_ARROW_WRITER_MIN_BYTES") or ARROW_WRITER_MIN_BYTES)
    return ds.estimated_data_size >= least


def _arrow_keeps_types(schema) -> bool:
    """Whether pyarrow reads and writes every column of ``schema`` as the type DuckDB reads it as,
    and DuckDB would accept the file (no two names alike in case): integers, floats, strings,
    binaries, booleans, dates, microsecond timestamps and decimals. Anything else (nanosecond or
    INT96 timestamps, half floats, extension, nested types) stays with DuckDB's COPY, and so does
    everything under pyarrow 16, which cannot write a file without its Arrow schema and keep the
    key-value metadata (:func:`open_parquet_writer`): read back, its types would not be the COPY's."""
    import pyarrow as pa

    if not writer_adds_key_value_metadata():
        return False
    t = pa.types
    plain = (t.is_integer, t.is_float32, t.is_float64, t.is_string, t.is_large_string, t.is_binary, t.is_boolean, t.is_date32)
    if len({fold_case(n) for n in schema.names}) != len(schema.names):
        return False
    return all(
        any(is_(f.type) for is_ in plain) or t.is_timestamp(f.type) and f.type.unit == "us" or t.is_decimal128(f.type)
        for f in schema
    )


def _arrow_row_group_reader(ds, mapped: bool = True) -> Optional[_RowGroupReader]:
    """A row-group reader for ``ds``, or None if pyarrow cannot read it as DuckDB would (not
    Parquet, expression or generated columns, files whose schemas differ).

    ``mapped``: read through a memory map of each file (:func:`~smallpond.io.arrow.open_mapped`:
    ~3% less CPU on the benchmark's zstd files, 2.05 vs 2.11 s for 168 MB). Not in a job that
    enforces memory limits: every page of the map a task touches counts in its worker's resident
    memory until the task ends, which ``enforce_memory_limit`` measures (a 620 MB input with a
    256 MB limit was stopped twice for memory and passed at 1 GB, with a peak of 1.9 GB, where
    DuckDB's COPY passed at once). Either way the same rows are read: the files are the same."""
    if not isinstance(ds, ParquetDataSet) or ds.empty or ds.generated_columns or ds._has_expressions():
        return None
    if ds.columns is not None and "*" in ds.columns:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.io.arrow import open_mapped

    files, schema = [], None
    for r in ds.resolved_row_ranges:
        pf = open_mapped(r.path) if mapped else pq.ParquetFile(r.path)
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
    """Buffers rows per partition and writes ``{prefix}-{k}.parquet`` (``{col}={k}/{prefix}-0.parquet``
    with ``hive_partitioning``) with pyarrow.

    A partition's rows are written as a row group once it has ``parquet_row_group_size`` of them;
    when all buffers together pass ``max_buffered`` bytes, every buffer is written out.

    The duckdb engine's files (``use_parquet_writer``, or a large input it sends this way) are
    written as its COPY writes them (:func:`writes_like_copy`): only the task's key-value metadata,
    none of the input's (a pandas file's ``pandas`` entry made ``to_pandas`` take a column for the
    index and lose it; an earlier partition's ``SMALLPOND:`` keys named partitions these rows are no
    longer in), and no Arrow schema, so pyarrow reads the types DuckDB's files give it
    (``string``, not ``large_string``; a time zone as UTC, as DuckDB stores every instant).
    """

    def __init__(self, task: Task, output_dir: str, col: str, dir_col: str, n: int, write_col: bool, max_buffered: int) -> None:
        self.task, self.output_dir, self.col, self.dir_col, self.n, self.write_col = task, output_dir, col, dir_col, n, write_col
        self.max_buffered = max_buffered
        options = ParquetWriterOptions.for_task(task)
        self.row_group_size = options.row_group_size
        self.like_copy = writes_like_copy(task.node)
        self.options = options.pyarrow()
        self.rows = 0
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
                md = {} if self.like_copy else dict(table.schema.metadata or {})
                md.update({key.encode(): v.encode() for key, v in self.task.parquet_kv_metadata().items()})
                self.schema = table.schema.with_metadata(md)
            if self.task.node.hive_partitioning:
                sub = os.path.join(self.output_dir, f"{self.dir_col}={k}")
                os.makedirs(sub, exist_ok=True)
                path = os.path.join(sub, f"{self.task.output_filename}-0.parquet")
            else:  # upstream's flat layout: the partition in the file's name and metadata
                path = os.path.join(self.output_dir, f"{self.task.output_filename}-{k}.parquet")
            md = dict(self.schema.metadata)
            kv = self.task.parquet_kv_metadata(self.task._partition_kv(k, self.col))
            md.update({key.encode(): v.encode() for key, v in kv.items()})
            w = self.writers[k] = open_parquet_writer(path, self.schema.with_metadata(md), self.options, self.like_copy)
            self.paths[k] = [path]
        w.write_table(table.replace_schema_metadata(w.schema.metadata), row_group_size=self.row_group_size)
        self.rows += table.num_rows

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
