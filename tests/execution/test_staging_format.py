"""Staging files that only the engine reads are written uncompressed; every file a user can reach
(sinks, named outputs, the plan's result, what a Python script reads) keeps the node's settings."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from smallpond.execution.job import run_job
from smallpond.execution.planner import engine_only_outputs
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    PythonScriptNode,
    ShuffleNode,
    SqlEngineNode,
)
from tests.datagen import column_chunk_formats


def _codecs(paths):
    return {codec for codec, _ in column_chunk_formats([p for p in paths if os.path.getsize(p) > 0])}


def test_the_user_sort_plan_stages_uncompressed_and_publishes_zstd(make_rt, parquet_files, tmp_path):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=3)
    bucketed = SqlEngineNode(ctx, (parts,), "select id % 2 as bucket, * from {0}")
    shuffled = ShuffleNode(ctx, (bucketed,), 2, data_partition_column="bucket")
    ordered = SqlEngineNode(ctx, (shuffled,), "select * from {0} order by id")
    sink = DataSinkNode(ctx, (ordered,), str(tmp_path / "out"))
    ep = run_job(LogicalPlan(ctx, sink), make_rt(), num_workers=2)
    staged = [p for t in ep.tasks.values() if type(t).__name__ == "HashPartitionTask" for p in ep.results[t.key].resolved_paths]
    assert staged and _codecs(staged) == {"UNCOMPRESSED"}
    published = glob.glob(str(tmp_path / "out" / "*.parquet"))
    assert published and _codecs(published) == {"ZSTD"}
    assert sum(pq.read_metadata(p).num_rows for p in published) == 30


def test_files_a_user_can_reach_keep_the_node_settings():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/nonexistent/x.parquet"]))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=2)
    a = SqlEngineNode(ctx, (parts,), "select * from {0}")  # read by SQL only: staging
    named = SqlEngineNode(ctx, (parts,), "select * from {0}", output_name="kept")  # named output
    b = SqlEngineNode(ctx, (a, named), "select * from {0}")
    to_script = SqlEngineNode(ctx, (parts,), "select * from {0}")
    script = PythonScriptNode(ctx, (to_script,), process_func=lambda *a: True)  # a user reads its files
    through = SqlEngineNode(ctx, (parts,), "select * from {0}")
    regrouped = DataSetPartitionNode(ctx, (through,), npartitions=1)  # passes files on to a sink
    hashed = HashPartitionNode(ctx, (b,), 2, hash_columns=["id"])
    sink = DataSinkNode(ctx, (regrouped,), "/nonexistent/out")
    from smallpond.logical.node import RootNode

    root = RootNode(ctx, [hashed, script, sink])
    engine_only = engine_only_outputs(root)
    assert id(a) in engine_only and id(b) in engine_only
    for kept in (named, to_script, through, regrouped, hashed, sink, root):
        assert id(kept) not in engine_only, kept


def test_the_dataframe_api_keeps_the_node_settings(tmp_path, parquet_files):
    import smallpond

    sp = smallpond.init(data_root=str(tmp_path / "root"))
    try:
        df = sp.read_parquet(parquet_files).repartition(2, hash_by="id")
        df = sp.partial_sql("select * from {0}", df)
        df.write_parquet(str(tmp_path / "out"))
        assert _codecs(glob.glob(str(tmp_path / "out" / "*.parquet"))) == {"ZSTD"}
    finally:
        sp.shutdown()
