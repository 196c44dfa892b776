"""Range partitioning: split points (given, or computed from a sample) and the producer using them.

The producer is the hash-partition producer (:class:`~smallpond.execution.ops.partition.HashPartitionTask`,
both engines) with another partition-index expression: a binary search over the split points
written as nested ``CASE`` (``log2(n)`` comparisons per row), so partition ``i`` holds the keys
``split[i-1] <= k < split[i]``. NULL keys (and NaN, which DuckDB orders after every number) go to
the last partition, where ``ORDER BY`` puts them. On the arrow engine, a fixed-size binary key with
given split points of one length up to 8 bytes (GraySort's) is bucketed with numpy instead
(:func:`binary_range_keys`, the same partitions), and the task never opens DuckDB.

Sampled split points (``RangePartitionNode(npartitions=N)``) come from :class:`RangeSampleTask`,
which runs before the producers: a seeded reservoir sample of the key column over all the input,
reduced to its distinct keys with their counts, from which :func:`balanced_split_indices` picks
the ``N-1`` boundaries minimizing the largest partition. The sample runs on one DuckDB thread
(DuckDB's seeded sample is reproducible only so) and its seed is the task's, so a rerun picks the
same split points as the run whose producers it resumes.
"""

from __future__ import annotations

import datetime
import decimal
import math
import numbers
import operator
import os
from typing import List, Optional, Sequence

from smallpond.common import is_bool, quote_identifier, quote_literal
from smallpond.errors import ColumnNotFoundError, UserCodeError, columns_not_found
from smallpond.execution.ops.duckdb import create_input_views, open_connection, run_sql
from smallpond.execution.ops.partition import HashPartitionTask
from smallpond.execution.ops.sql import reads_unknown_columns
from smallpond.execution.ops.structural import merge_datasets
from smallpond.execution.task import Task
from smallpond.io.columns import bind_columns
from smallpond.logical.dataset import DataSet, ParquetDataSet


def key_column_of(node, columns: Sequence[str]) -> str:
    """The range key: the input's column that the node's ``key_column`` names, bound as DuckDB
    binds a name and as every other key is (:func:`~smallpond.io.columns.bind_columns`: the same
    name, else the one differing from it only in case), else the input's first column."""
    key = node.key_column or (columns[0] if columns else None)
    where = "the range partition's input"
    try:
        bound = bind_columns([key], columns, where) if key is not None else {}
    except ColumnNotFoundError as e:
        raise ColumnNotFoundError(f"key_column={key!r}: {e}") from None
    if key not in bound:
        raise columns_not_found([key], where, list(columns), f"key_column={key!r}")
    return bound[key]


def sql_literal(value) -> str:
    """An SQL literal for a split point given in Python; DuckDB casts it to the key's type when comparing.

    A number is written as the plain ``int``/``float`` it equals, never as its own ``repr``: a
    subclass's is not SQL (``np.float64(2.5)``, what ``np.quantile`` returns) and could be any text.

    NumPy's integers and ``float32`` are numbers too (not ``int``/``float`` subclasses).

    >>> import numpy as np
    >>> [sql_literal(v) for v in (np.float64(2.5), 3, np.int64(7), np.float32(0.5), float("inf"), "it's")]
    ['2.5', '3', '7', '0.5', "'inf'", "'it''s'"]
    """
    if is_bool(value):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(operator.index(value))
    if isinstance(value, numbers.Real):  # (a Decimal is not one: written exactly below)
        value = float(value)
        return repr(value) if math.isfinite(value) else quote_literal(repr(value))
    if isinstance(value, (bytes, bytearray)):
        return quote_literal("".join(f"\\x{b:02X}" for b in value))
    if isinstance(value, (str, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)):
        return quote_literal(str(value))
    return quote_literal(str(value))


def range_index_sql(key_sql: str, points: List[str], npartitions: int) -> str:
    """SQL computing each row's partition: the number of split points ``<= key`` (NULL: the last).

    ``points`` are SQL literals in ascending order; fewer than ``npartitions - 1`` of them leave
    the partitions above the last one empty.
    """

    def tree(lo: int, hi: int) -> str:  # the index lies in [lo, hi]; points[lo..hi-1] separate
        if lo >= hi:
            return str(lo)
        mid = (lo + hi + 1) // 2
        return f"CASE WHEN {key_sql} < {points[mid - 1]} THEN {tree(lo, mid - 1)} ELSE {tree(mid, hi)} END"

    points = list(points[: npartitions - 1])
    return f"CAST(CASE WHEN {key_sql} IS NULL THEN {npartitions - 1} ELSE {tree(0, len(points))} END AS BIGINT)"


def balanced_split_indices(counts: Sequence[int], npartitions: int) -> List[int]:
    """Boundaries between distinct sorted keys with ``counts`` rows each, giving ``npartitions``
    partitions whose largest is as small as it can be, and the others as even as that allows.

    Returns ``npartitions - 1`` non-decreasing indices into ``counts``: index ``j`` means the key
    ``j`` starts a new partition. A key is never split, so with fewer distinct keys than
    partitions some indices repeat (empty partitions). Empty ``counts`` give ``[]``.

    First the smallest feasible bound ``B`` on a partition's rows (binary search; a greedy packing
    under a bound uses the fewest partitions); then, left to right, each partition ends at the
    key boundary nearest to an equal share of what is left, among the ends that stay under ``B``
    and leave the rest packable in the partitions left.

    >>> balanced_split_indices([1, 1, 1, 1], 2)
    [2]
    >>> balanced_split_indices([10, 1, 1, 1, 1], 3)  # the heavy key alone, the rest shared
    [1, 3]
    """
    import numpy as np

    n = npartitions
    c = np.asarray(counts, dtype=np.int64)
    d = len(c)
    if n <= 1 or d == 0:
        return []
    prefix = np.concatenate([[0], np.cumsum(c)])
    total = int(prefix[-1])

    def furthest_ends(bound: int):
        """For each start i: the furthest end e > i with rows[i:e] <= bound (at least i + 1)."""
        ends = np.searchsorted(prefix, prefix[:-1] + bound, side="right") - 1
        return np.maximum(ends, np.arange(1, d + 1))

    def parts_needed(bound: int) -> int:
        ends, i, parts = furthest_ends(bound), 0, 0
        while i < d and parts <= n:
            i, parts = int(ends[i]), parts + 1
        return parts

    lo, hi = int(c.max()), max(total, 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if parts_needed(mid) <= n:
            hi = mid
        else:
            lo = mid + 1
    ends = furthest_ends(lo)
    need = np.zeros(d + 1, dtype=np.int64)  # need[i]: fewest partitions for keys i.. under the bound
    for i in range(d - 1, -1, -1):
        need[i] = 1 + need[ends[i]]
    cuts: List[int] = []
    start = 0
    for left in range(n, 1, -1):  # partitions still to make, this one included
        if start >= d:
            break
        target = prefix[start] + (total - prefix[start]) / left
        top = int(ends[start])
        j = int(np.searchsorted(prefix, target, side="left"))
        candidates = sorted({min(max(x, start + 1), top) for x in (j - 1, j)}, key=lambda e: abs(prefix[e] - target))
        end = next((e for e in candidates if need[e] <= left - 1), top)
        if end >= d:
            break
        cuts.append(end)
        start = end
    while len(cuts) < n - 1:  # fewer distinct keys than partitions: the top partitions stay empty
        cuts.append(cuts[-1] if cuts else d - 1)
    return cuts


SPLITS_FILE = "split_points.parquet"


class RangeSampleTask(Task):
    """Compute a range partitioning's split points from a seeded sample of the key column.

    Output: one Parquet file with columns ``j`` (0..n-2) and ``split_point`` (the key's type).
    """

    def estimated_cost(self) -> float:
        return 2.0

    def error_context(self):
        return {"sql": getattr(self, "_current_sql", None) or "sample of the range partition key"}

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        ds = merge_datasets(inputs)
        conn = open_connection(self, runtime_ctx, shareable=False)
        try:
            run_sql(conn, "SET threads = 1")  # a seeded reservoir sample is reproducible on one thread only
            src = create_input_views(self, conn, [ds])[0]
            columns = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
            if reads_unknown_columns(ds, columns):
                # no rows, and no key to sample: no split points, and every partition is empty, as
                # with split points given (or a hash partition of this input)
                sample = "SELECT NULL AS k WHERE false"
            else:
                key = quote_identifier(key_column_of(node, columns))
                sample = (
                    f"SELECT {key} AS k FROM {src} USING SAMPLE reservoir({int(node.sample_size)} ROWS) "
                    f"REPEATABLE ({self.rand_seed_uint32 % 2**31})"
                )
            self._current_sql = sample
            run_sql(
                conn,
                "CREATE TEMP TABLE __sp_keys AS SELECT k, count(*)::BIGINT AS c, "
                f"(row_number() OVER (ORDER BY k) - 1)::BIGINT AS i FROM ({sample}) WHERE k IS NOT NULL GROUP BY k",
            )
            counts = [r[0] for r in conn.execute("SELECT c FROM __sp_keys ORDER BY i").fetchall()]
            chosen = balanced_split_indices(counts, node.npartitions)
            self.stats.update(sampled_rows=sum(counts), distinct_keys=len(counts))
            path = os.path.join(output_dir, f"{self.output_filename}-{SPLITS_FILE}")
            if chosen:
                values = ", ".join(f"({j}, {i})" for j, i in enumerate(chosen))
                query = (
                    f"SELECT sel.j, k AS split_point FROM __sp_keys JOIN (VALUES {values}) AS sel(j, i) "
                    "ON __sp_keys.i = sel.i ORDER BY sel.j"
                )
            else:
                query = "SELECT 0::BIGINT AS j, k AS split_point FROM __sp_keys WHERE false"
            run_sql(conn, f"COPY ({query}) TO {quote_literal(path)} (FORMAT PARQUET)")
        finally:
            conn.close()
        return ParquetDataSet.from_files([path])


def read_split_points(ds: DataSet) -> List[str]:
    """The split points a :class:`RangeSampleTask` wrote, as SQL string literals (exact: DuckDB
    casts a value to VARCHAR and back without loss), in order."""
    import duckdb

    conn = duckdb.connect()
    try:
        rows = conn.execute(f"SELECT CAST(split_point AS VARCHAR) FROM {ds.sql_query_fragment(conn=conn)} ORDER BY j").fetchall()
    finally:
        conn.close()
    return [quote_literal(r[0]) for r in rows]


class RangePartitionTask(HashPartitionTask):
    """Route each row to its key's range; the last input is the split points when they were sampled."""

    def error_context(self):
        if getattr(self, "_current_sql", None):
            return {"sql": self._current_sql}
        return {"sql": f"range partition by {self.node.key_column or '<first column>'}"}

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        if node.sampled:
            *inputs, splits = inputs
            self._points = read_split_points(splits)
        else:
            self._points = [sql_literal(p) for p in node.split_points]
        try:
            return super().run(runtime_ctx, inputs, output_dir)
        except UserCodeError as e:
            text = str(e)
            if "Cannot compare" in text or "Conversion Error" in text or "Could not convert" in text:
                raise UserCodeError(
                    f"split points {node.split_points if not node.sampled else self._points!r} cannot be compared with "
                    f"the key column {getattr(self, '_key', None)!r}: {text}"
                ) from e
            raise

    def _key_expr(self, columns: List[str], conn=None, src: Optional[str] = None) -> (str, str):
        node = self.node
        self._key = key_column_of(node, columns)
        return range_index_sql(quote_identifier(self._key), self._points, node.npartitions), node.data_partition_column

    def _local_partition_keys(self, schema):
        """The arrow engine's partition index of a fixed-size binary key without DuckDB (see
        :func:`binary_range_keys`), when the node's split points allow it; else None."""
        node = self.node
        import pyarrow as pa

        if node.sampled:
            return None
        field = schema.field(self._key)
        if not pa.types.is_fixed_size_binary(field.type):
            return None
        width = field.type.byte_width
        points = binary_split_prefixes(node.split_points[: node.npartitions - 1], width)
        if points is None:
            return None
        key, last = self._key, node.npartitions - 1
        return lambda batch: binary_range_keys(batch.column(key), points, last)


#: the longest split point :func:`binary_split_prefixes` takes: its bytes are one 64-bit integer
_MAX_PREFIX_BYTES = 8


def binary_split_prefixes(points: Sequence, width: int):
    """Split points for :func:`binary_range_keys`: a numpy array of big-endian integers of the
    points' bytes, if every point is ``bytes`` of one length ``L <= min(width, 8)`` and they do
    not decrease; else None (DuckDB computes the partitions).

    A point ``p`` of ``L`` bytes is ``<=`` a ``width``-byte key ``k`` (DuckDB compares blobs byte by
    byte as unsigned, then a shorter one first) exactly when ``p <= k[:L]``: if ``k[:L] == p``, ``k``
    is at least as long. Both read as integers of ``L`` bytes compare the same way.
    """
    import numpy as np

    if not points or not all(isinstance(p, (bytes, bytearray)) for p in points):
        return None
    size = len(points[0])
    if not 1 <= size <= min(width, _MAX_PREFIX_BYTES) or any(len(p) != size for p in points):
        return None
    values = np.array([int.from_bytes(bytes(p), "big") for p in points], dtype=np.uint64)
    if bool((values[1:] < values[:-1]).any()):
        return None  # not ascending: the SQL's binary search decides
    return values, size


def binary_range_keys(column, prepared, last: int):
    """Each row's partition: the number of split points ``<=`` its key, NULL keys ``last`` (what
    :func:`range_index_sql` computes in DuckDB), for a fixed-size binary ``column`` (an Arrow
    array or chunked array) and ``prepared`` = :func:`binary_split_prefixes`."""
    import numpy as np
    import pyarrow as pa

    values, size = prepared
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        width, data = chunk.type.byte_width, chunk.buffers()[1]
        if data is None:  # (no values buffer: every key is NULL)
            out.append(np.full(len(chunk), last, dtype=np.int64))
            continue
        raw = np.frombuffer(data, dtype=np.uint8)
        raw = raw[chunk.offset * width : (chunk.offset + len(chunk)) * width].reshape(-1, width)
        padded = np.zeros((len(chunk), 8), dtype=np.uint8)
        padded[:, 8 - size :] = raw[:, :size]
        prefix = padded.view(">u8").ravel().astype(np.uint64)
        keys = np.searchsorted(values, prefix, side="right").astype(np.int64)
        if chunk.null_count:
            keys[np.asarray(chunk.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = last
        out.append(keys)
    return np.concatenate(out) if len(out) != 1 else out[0]
