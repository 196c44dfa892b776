"""The plan decides how many hash-partition producers there are, never the worker count."""

from __future__ import annotations

import pytest

from smallpond.errors import ParameterError
from smallpond.execution.ops.partition import HashPartitionTask
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    ShuffleNode,
)
from smallpond.logical.partition import SINGLE_INPUT_PRODUCERS


def producers(rt, node, parallelism=None) -> int:
    plan = Planner(rt, parallelism=parallelism).create_exec_plan(LogicalPlan(node.ctx, node))
    return sum(isinstance(t, HashPartitionTask) for t in plan.tasks.values())


@pytest.mark.parametrize("parallelism", [1, 2, 16])
@pytest.mark.parametrize("cpu_limit", [1, 2])
def test_a_single_input_partition_gets_a_fixed_split(parquet_files, make_rt, parallelism, cpu_limit):
    ctx = Context()
    node = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 4, ["key"], cpu_limit=cpu_limit)
    assert producers(make_rt(), node, parallelism) == SINGLE_INPUT_PRODUCERS == 8


@pytest.mark.parametrize("parallelism", [1, 2, 16])
def test_one_producer_per_input_partition(parquet_files, make_rt, parallelism):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 3)
    node = HashPartitionNode(ctx, (parts,), 4, ["key"])
    assert producers(make_rt(), node, parallelism) == 3


def test_num_producers_overrides_and_is_capped(parquet_files, make_rt):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    assert producers(make_rt(), HashPartitionNode(ctx, (src,), 4, ["key"], num_producers=2)) == 2
    assert producers(make_rt(), ShuffleNode(ctx, (src,), 4, "key", num_producers=3)) == 3
    many = DataSetPartitionNode(ctx, (src,), 3)
    capped = HashPartitionNode(ctx, (many,), 4, ["key"])
    capped.max_num_producer_tasks = 2
    assert producers(make_rt(), capped) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_producers_is_validated(parquet_files, bad):
    ctx = Context()
    with pytest.raises(ParameterError, match="num_producers"):
        HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 4, ["key"], num_producers=bad)


@pytest.mark.parametrize("engine", ["duckdb", "arrow", "fused"])
@pytest.mark.parametrize("npartitions", [5, 7])
def test_producers_given_no_files_write_nothing_and_every_partition_keeps_a_file(parquet_files, make_rt, engine, npartitions):
    # DataSetPartitionNode(n) over 3 files leaves n - 3 partitions without a file; their producers
    # write nothing, except the first producer, which leaves a file (rows or a placeholder with
    # the schema) in every partition whatever its input
    import duckdb

    from smallpond.execution.job import run_job
    from smallpond.logical.node import DataSinkNode

    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), npartitions)
    if engine == "fused":  # an SQL node before the partitioning: its producers run that query first
        from smallpond.logical.node import SqlEngineNode

        parts = SqlEngineNode(ctx, (parts,), "select id, key from {0} where id >= 0")
    node = HashPartitionNode(ctx, (parts,), 48, ["id"], engine_type="duckdb" if engine == "fused" else engine)
    plan = run_job(LogicalPlan(ctx, DataSinkNode(ctx, (node,), str(parquet_files[0]) + ".out")), make_rt(), num_workers=2)
    producers = sorted((t for t in plan.tasks.values() if isinstance(t, HashPartitionTask)), key=lambda t: t.producer_index)
    assert [t.producer_index for t in producers] == list(range(npartitions))
    assert all(bool(getattr(t.node, "pre_sql", None)) == (engine == "fused") for t in producers)
    empty = [plan.results[t.input_keys[0]].empty for t in producers]
    assert empty.count(True) == npartitions - 3, empty
    for t, no_input in zip(producers, empty):
        files = [p for d in plan.results[t.key].datasets for p in d.resolved_paths]
        if no_input and t.producer_index > 0:
            assert files == [], f"producer {t.producer_index} was given no file and wrote {files}"
        else:
            assert files, f"producer {t.producer_index} must leave a file in every partition"
    consumers = [t for t in plan.tasks.values() if t.node_id == node.id and not isinstance(t, HashPartitionTask)]
    consumers = [t for t in consumers if type(t).__name__ == "PartitionConsumerTask"]
    assert len(consumers) == 48
    seen = []
    for c in consumers:
        paths = plan.results[c.key].resolved_paths
        assert paths, f"partition {c.key} has no file"
        rel = duckdb.sql(f"SELECT id, key FROM read_parquet({paths!r})")
        assert rel.columns == ["id", "key"]
        seen += [r[0] for r in rel.fetchall()]
    assert sorted(seen) == list(range(30))


def test_grouped_input_partitions_are_dealt_round_robin(parquet_files, make_rt):
    """With fewer producers than input partitions, producer j reads input partitions j, j+n, ...:
    a file partitioning puts its files in the first partitions (4 files in 20 partitions fill
    partitions 0-3), and contiguous blocks would give all of them to one or two producers."""
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 20)
    node = HashPartitionNode(ctx, (parts,), 4, ["key"], num_producers=8)
    plan = Planner(make_rt()).create_exec_plan(LogicalPlan(ctx, node))

    def indices(key):
        task = plan.tasks[key]
        own = task.partition_infos_as_dict.get(parts.dimension)
        return [own] if own is not None else [i for k in task.input_keys for i in indices(k)]

    dealt = sorted(indices(t.input_keys[0]) for t in plan.tasks.values() if isinstance(t, HashPartitionTask))
    assert dealt == sorted([j + 8 * m for m in range(3) if j + 8 * m < 20] for j in range(8))
