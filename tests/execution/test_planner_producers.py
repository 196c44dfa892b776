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
