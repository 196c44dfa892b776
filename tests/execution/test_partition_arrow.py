"""The writers of the arrow way of a hash partition (``execution/ops/partition_arrow.py``), driven
directly with sorted batches: what they write and the memory they hold.

(The route as a whole, against DuckDB's COPY, is tested in ``test_hash_partition_engines.py``.)
"""

from __future__ import annotations

import os
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.ops.partition_arrow import _CopyShapedWriters, _int64_array

pytestmark = pytest.mark.skipif(
    not hasattr(pq.ParquetWriter, "add_key_value_metadata"), reason="pyarrow 16: the duckdb engine keeps its COPY"
)


def _task(prefix: str = "HashPartitionNode.1-2", hive: bool = False):
    """What the writers ask of a task: its node's writer options, its file prefix, its metadata."""
    node = types.SimpleNamespace(hive_partitioning=hive, engine_type="duckdb", parquet_compression="none")
    return types.SimpleNamespace(
        node=node,
        output_filename=prefix,
        parquet_kv_metadata=lambda extra=None: {f"SMALLPOND:{k}": str(v) for k, v in (extra or {}).items()},
        _partition_kv=lambda k, col: {col: k},
    )


def _feed(writer, batches, n):
    """Each batch to the writer as ``_run_arrow`` gives it: sorted by partition (stable), with counts."""
    for batch in batches:
        keys = batch.column("p").to_numpy().astype(np.uint16)
        order = np.argsort(keys, kind="stable")
        writer.add_batch(batch.select(["id", "s"]).take(_int64_array(order)), np.bincount(keys, minlength=n))


def test_copying_buffered_rows_out_of_their_batches_holds_at_most_one_batch_more(tmp_path):
    """Partitions that get few rows of each batch keep every batch they have a slice of, so once
    the batches held pass ``partitions x row_group_bytes`` the slices are copied out of them. The
    oldest batches go first, a group at a time, each group freed once its slices are copied, and
    a copy is never copied again: the writer's memory (its Arrow pool) stays within that budget and
    three batches, 18.0 of 18.8 MiB here (it was the budget twice over, every buffer copied,
    earlier copies included, before any batch was freed: 21.0 MiB, and 45 MiB copied for 52 MiB
    of input). The files hold every row in input order, in row groups cut at the byte limit."""
    n, row_group_bytes, rows_per_batch, width = 64, 256 << 10, 8_000, 100
    budget = n * row_group_bytes
    batch_bytes = rows_per_batch * (8 + width + 4)

    def batches():
        rng = np.random.default_rng(7)
        for b in range(60):
            ids = np.arange(b * rows_per_batch, (b + 1) * rows_per_batch)
            # partition 0 takes 3 rows in 4; the others a few rows of every batch (a row group's
            # bytes only after ~40 batches), so their buffers keep most batches alive
            p = np.where(rng.random(rows_per_batch) < 0.75, 0, 1 + ids % (n - 1))
            payload = pa.py_buffer(rng.integers(0, 256, size=rows_per_batch * width, dtype=np.uint8))
            offsets = pa.py_buffer(np.arange(0, (rows_per_batch + 1) * width, width, dtype=np.int32))
            s = pa.Array.from_buffers(pa.binary(), rows_per_batch, [None, offsets, payload])
            yield pa.table({"id": ids, "s": s, "p": p})

    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        writer = _CopyShapedWriters(_task(), str(tmp_path), "p", "p", n, False, row_group_bytes)
        try:
            _feed(writer, batches(), n)
            peak = pool.max_memory()
            paths = writer.close()
        finally:
            writer.abort()
    finally:
        pa.set_memory_pool(previous)
    assert peak <= budget + 3 * batch_bytes, (peak >> 10, budget >> 10, batch_bytes >> 10)

    expected = pa.concat_tables(batches())
    for k in range(n):
        (path,) = paths[k]
        assert path.endswith(f"HashPartitionNode.1-2-{k}.0.parquet")
        got = pq.read_table(path)
        want = expected.filter(pa.compute.equal(expected.column("p"), k))
        assert got.column("id").to_pylist() == want.column("id").to_pylist()  # every row, in input order
        assert got.column("s").equals(want.column("s"))
        md = pq.read_metadata(path)
        groups = [md.row_group(i) for i in range(md.num_row_groups)]
        # a row group is cut once its rows reach the byte limit (the piece split at its bytes per row)
        assert all(g.total_byte_size <= 2 * row_group_bytes for g in groups), [g.total_byte_size for g in groups]
        assert sum(g.num_rows for g in groups) == want.num_rows


@pytest.mark.parametrize("hive", [False, True])
def test_the_copy_shaped_files_are_named_as_the_copy_names_them(tmp_path, hive):
    """``{prefix}-{k}.0.parquet``, or with ``hive_partitioning`` ``{column}={k}/{prefix}-0.parquet``
    (the default engine does not send a hive partition this way, but the writer keeps the layout
    if given one), each naming its partition in its metadata."""
    writer = _CopyShapedWriters(_task(hive=hive), str(tmp_path), "p", "p", 3, False, 1 << 20)
    table = pa.table({"id": [0, 1, 2, 3], "s": ["a", "b", "c", "d"], "p": [2, 0, 2, 1]})
    try:
        _feed(writer, [table], 3)
        paths = writer.close()
    finally:
        writer.abort()
    names = [[os.path.relpath(p, tmp_path) for p in ps] for ps in paths]
    if hive:
        assert names == [[f"p={k}/HashPartitionNode.1-2-0.parquet"] for k in range(3)]
    else:
        assert names == [[f"HashPartitionNode.1-2-{k}.0.parquet"] for k in range(3)]
    for k, (path,) in enumerate(paths):
        assert pq.read_schema(path).metadata[b"SMALLPOND:p"] == str(k).encode()
        assert pq.read_table(path).column("id").to_pylist() == [i for i, p in enumerate([2, 0, 2, 1]) if p == k]
