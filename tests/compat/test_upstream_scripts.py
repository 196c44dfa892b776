"""Scripts written as upstream 0.15's reference describes them, run as they are.

* Hash partition outputs (reference §2.8 HashPartitionNode, LoadPartitionedDataSetNode,
  ``ParquetDataSet.load_partitioned_datasets``): without ``hive_partitioning`` the files of
  partition k are flat, ``{out}-{k}.{i}.parquet``; with it, ``{col}={k}/…``; with either engine
  every file carries ``SMALLPOND:{column}`` and ``SMALLPOND:{dimension}`` in its key-value
  metadata, so a folder of them, even copied flat by a sink, loads back into its partitions.
"""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LoadPartitionedDataSetNode,
    LogicalPlan,
    ShuffleNode,
    SqlEngineNode,
)

NPARTS = 3


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Three Parquet files of (item, name); item 0..299."""
    root = tmp_path_factory.mktemp("items")
    for f in range(3):
        ids = list(range(f * 100, f * 100 + 100))
        pq.write_table(pa.table({"item": ids, "name": [f"n{i % 37}" for i in ids]}), str(root / f"items{f}.parquet"))
    return ParquetDataSet([str(root / "*.parquet")])


def _kv(path: str) -> dict:
    md = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"SMALLPOND:")}


def _hash_of(rows: list, column: str) -> dict:
    """partition of each item, as DuckDB's hash of ``column`` gives it (both engines agree)."""
    import duckdb

    conn = duckdb.connect()
    try:
        conn.register("keys", pa.table({column: rows}))
        return dict(conn.execute(f"SELECT {column}, hash({column}) % {NPARTS} FROM keys").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("hive", [False, True], ids=["flat", "hive"])
@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_hash_partition_layout_and_metadata(run_plan, items, tmp_path, engine, hive):
    """Each partition file is where upstream put it and names its partition in its metadata."""
    out = str(tmp_path / "out")
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, items),), npartitions=2)
    hashed = HashPartitionNode(
        ctx, (parts,), NPARTS, hash_columns=["item"], data_partition_column="bucket", dimension="dim",
        engine_type=engine, hive_partitioning=hive, output_path=out,
    )  # fmt: skip
    run_plan(LogicalPlan(ctx, hashed))
    files = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    assert files
    want = _hash_of(list(range(300)), "item")
    seen = 0
    for path in files:
        kv = _kv(path)
        k = int(kv["SMALLPOND:bucket"])
        assert kv["SMALLPOND:dim"] == str(k), (path, kv)
        if hive:
            assert os.path.basename(os.path.dirname(path)) == f"bucket={k}", path
        else:  # flat: "{out}-{k}.{i}.parquet" (duckdb) or "{out}-{k}.parquet" (arrow), or "{out}-{k}-empty.parquet"
            assert "=" not in os.path.relpath(path, out), path
            assert f"-{k}." in os.path.basename(path) or os.path.basename(path).endswith(f"-{k}-empty.parquet"), path
        t = pq.read_table(path)
        assert all(want[i] == k for i in t.column("item").to_pylist()), path
        assert set(t.column("bucket").to_pylist()) <= {k}
        seen += t.num_rows
    assert seen == 300


@pytest.mark.parametrize("read_hive", [False, True], ids=["read-flat", "read-hive"])
@pytest.mark.parametrize("write_hive", [False, True], ids=["write-flat", "write-hive"])
@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_sunk_folder_loads_back_into_its_partitions(run_plan, items, tmp_path, engine, write_hive, read_hive):
    """The reference's round trip: hash partition (dropping the key column), sink the files into
    one folder (basenames kept, renamed on collision), then read the folder back with
    ``LoadPartitionedDataSetNode`` and with ``ParquetDataSet.load_partitioned_datasets``.

    The key is in no column and, once sunk, in no folder name: only the files' metadata tells."""
    sink = str(tmp_path / "sunk")
    ctx = Context()
    hashed = HashPartitionNode(
        ctx, (DataSourceNode(ctx, items),), NPARTS, hash_columns=["name"], data_partition_column="bucket",
        engine_type=engine, hive_partitioning=write_hive, drop_partition_column=True,
    )  # fmt: skip
    run_plan(LogicalPlan(ctx, DataSinkNode(ctx, (hashed,), sink)))
    want = _hash_of([f"n{i}" for i in range(37)], "name")
    folder = ParquetDataSet([os.path.join(sink, "*.parquet")])
    loaded = folder.load_partitioned_datasets(NPARTS, "bucket", read_hive)
    assert len(loaded) == NPARTS
    for k, part in enumerate(loaded):
        names = part.to_arrow_table().column("name").to_pylist()
        assert {want[n] for n in names} <= {k}
    assert sum(p.num_rows for p in loaded) == 300

    ctx = Context()
    reloaded = LoadPartitionedDataSetNode(
        ctx, (DataSourceNode(ctx, folder),), NPARTS, data_partition_column="bucket", hive_partitioning=read_hive
    )
    per_part = SqlEngineNode(ctx, (reloaded,), "select {bucket} as k, name from {0}")
    rows = run_plan(LogicalPlan(ctx, per_part)).final_output.to_arrow_table().to_pylist()
    assert len(rows) == 300
    assert all(want[r["name"]] == r["k"] for r in rows)


def test_shuffle_node_writes_flat_files_with_their_key(run_plan, items, tmp_path):
    """ShuffleNode: rows go to the partition their column names; the files are flat, keyed in metadata."""
    out = str(tmp_path / "out")
    ctx = Context()
    keyed = SqlEngineNode(ctx, (DataSourceNode(ctx, items),), "select *, item % 3 as part from {0}")
    shuffled = ShuffleNode(ctx, (keyed,), NPARTS, data_partition_column="part", output_path=out)
    run_plan(LogicalPlan(ctx, shuffled))
    files = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    assert files and all("=" not in os.path.relpath(f, out) for f in files)
    for path in files:
        k = int(_kv(path)["SMALLPOND:part"])
        assert set(pq.read_table(path).column("part").to_pylist()) <= {k}
