"""explain() marks the nodes whose output may differ between two runs of the same plan."""

from __future__ import annotations

from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.determinism import nondeterminism
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)


def ident(runtime_ctx, tables):
    return tables[0]


def test_marks():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    one_thread = SqlEngineNode(ctx, (src,), "select key, count(*) from {0} group by key")
    many_ordered = SqlEngineNode(ctx, (src,), "select * from {0} order by key", cpu_limit=4, per_thread_output=False)
    many_unordered = SqlEngineNode(
        ctx, (src,), "select key, count(*) from {0} group by key", cpu_limit=4, per_thread_output=False
    )
    per_thread = SqlEngineNode(ctx, (src,), "select * from {0} order by key", cpu_limit=4)
    clock = SqlEngineNode(ctx, (src,), "select *, now() as t from {0}")
    seeded = SqlEngineNode(ctx, (src,), "select *, random() as r from {0}")
    batched = SqlEngineNode(ctx, (src,), "select * from {0}", batched_processing=True)
    hashed1 = HashPartitionNode(ctx, (src,), 4, ["key"])
    hashed4 = HashPartitionNode(ctx, (src,), 4, ["key"], cpu_limit=4)
    python = ArrowComputeNode(ctx, (src,), process_func=ident)

    assert nondeterminism(one_thread) == [] and nondeterminism(seeded) == [] and nondeterminism(hashed1) == []
    assert "equal sort keys" in nondeterminism(many_ordered)[0]  # ties: DuckDB measured to reorder them
    assert "no final ORDER BY" in nondeterminism(many_unordered)[0]
    assert "per-thread files" in nondeterminism(per_thread)[0]
    assert nondeterminism(clock) == ["its SQL reads the clock"]
    assert "batched_processing" in nondeterminism(batched)[0]
    assert "row order within partitions" in nondeterminism(hashed4)[0]
    assert "user Python" in nondeterminism(python)[0]

    text = LogicalPlan(ctx, python).explain_str()
    assert "ArrowComputeNode-" in text and "[may differ between runs: user Python" in text
    assert "DataSourceNode" in text and text.count("may differ") == 1
