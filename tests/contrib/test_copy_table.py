"""contrib nodes copy their input exactly."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.contrib import CopyArrowTable, LogDataSet, StreamCopy
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, RootNode


def test_copy_nodes(tmp_path):
    t = pa.table({"a": list(range(100)), "s": [str(i) for i in range(100)]})
    for i in range(4):
        pq.write_table(t.slice(i * 25, 25), str(tmp_path / f"f{i}.parquet"))
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "*.parquet")]))
    parts = DataSetPartitionNode(ctx, (src,), 2)
    copied = CopyArrowTable(ctx, (parts,), output_name="copied")
    streamed = StreamCopy(ctx, (parts,), output_name="streamed", streaming_batch_size=7)
    logged = LogDataSet(ctx, (parts,), num_rows=3)
    plan = LogicalPlan(ctx, RootNode(ctx, (copied, streamed, logged)))
    ep = run_job(plan, make_runtime_ctx(None, None, str(tmp_path / "root")))
    for name in ("copied", "streamed"):
        got = ep.get_output(name).to_arrow_table().sort_by("a")
        assert got.column("a").to_pylist() == list(range(100))
        assert got.column("s").to_pylist() == [str(i) for i in range(100)]
