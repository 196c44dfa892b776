"""The planner makes as many hash-partition producers as can run at once."""

from __future__ import annotations

import pytest

from smallpond.execution.ops.partition import HashPartitionTask
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, HashPartitionNode, LogicalPlan


@pytest.mark.parametrize("parallelism,cpu_limit,producers", [(2, 1, 2), (2, 2, 1), (4, 2, 2), (4, 3, 1), (1, 1, 1)])
def test_one_producer_per_worker_it_can_use(parquet_files, make_rt, parallelism, cpu_limit, producers):
    ctx = Context()
    node = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 4, ["key"], cpu_limit=cpu_limit)
    rt = make_rt()
    rt.initialize()
    plan = Planner(rt, parallelism=parallelism).create_exec_plan(LogicalPlan(ctx, node))
    assert sum(isinstance(t, HashPartitionTask) for t in plan.tasks.values()) == producers
