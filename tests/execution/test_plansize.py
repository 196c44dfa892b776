"""smallpond.execution.plansize: a plan too large for the scheduler's memory is refused before any
task is built, naming the node, its call site, the count and the limit; and the bound of the
tasks a plan can run at once in workers (the workers a local executor forks at a job's start)."""

from __future__ import annotations

import random

import pytest

from smallpond.common import GB, MB
from smallpond.errors import PlanError
from smallpond.execution.planner import Planner
from smallpond.execution.plansize import BYTES_PER_TASK, check_plan_size, most_tasks_at_once, task_limit
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.graph import topological_order
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LimitNode,
    LogicalPlan,
    ProjectionNode,
    SqlEngineNode,
    UnionNode,
)


@pytest.fixture(autouse=True)
def no_env_limit(monkeypatch):
    monkeypatch.delenv("SP_MAX_TASKS", raising=False)


def hash_plan(files, npartitions: int):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(files))
    parts = HashPartitionNode(ctx, (src,), npartitions, ["id"])  # line named by the error
    line = parts.location
    return LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select count(*) from {0}")), parts, line


def test_a_plan_larger_than_memory_holds_is_refused_before_any_task_is_built(make_rt, parquet_files):
    rt = make_rt(max_usable_memory_size=64 * MB)  # room for 4,096 tasks
    plan, parts, line = hash_plan(parquet_files, 10_000)
    planner = Planner(rt)
    with pytest.raises(PlanError) as info:
        planner.create_exec_plan(plan)
    message = str(info.value)
    assert f"{parts!r}" in message and line.startswith(__file__) and line in message, message
    assert "npartitions=10,000" in message and "4,096 " in message and "SP_MAX_TASKS" in message, message
    assert not planner.tasks  # refused from the counts alone: nothing was built


def test_a_plan_that_fits_is_planned(make_rt, parquet_files):
    rt = make_rt(max_usable_memory_size=64 * MB)
    plan, _, _ = hash_plan(parquet_files, 1_000)
    assert len(Planner(rt).create_exec_plan(plan).tasks) > 2_000


def test_the_limit_is_set_or_removed_by_the_environment(make_rt, parquet_files, monkeypatch):
    monkeypatch.setenv("SP_MAX_TASKS", "100")
    with pytest.raises(PlanError, match="more than the 100 "):
        Planner(make_rt()).create_exec_plan(hash_plan(parquet_files, 200)[0])
    monkeypatch.setenv("SP_MAX_TASKS", "off")
    plan = hash_plan(parquet_files, 10_000)[0]
    assert len(Planner(make_rt(max_usable_memory_size=64 * MB)).create_exec_plan(plan).tasks) > 10_000


def test_a_million_tasks_fit_a_24_gb_scheduler():
    assert task_limit(24 * GB) >= 1_000_000
    assert task_limit(24 * GB) == 24 * GB // BYTES_PER_TASK
    ctx = Context()
    node = EvenlyDistributedPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(["/x.parquet"])),), 1_000_000)
    counts = check_plan_size(topological_order([node], lambda n: n.input_deps), {}, 0, 24 * GB)
    assert sum(counts.values()) < 1_000_010
    with pytest.raises(PlanError, match="1,000,003 tasks"):
        check_plan_size(topological_order([node], lambda n: n.input_deps), {}, 0, 8 * GB)


def test_nested_producers_x_consumers_is_refused_before_any_task_is_built(make_rt, parquet_files, monkeypatch):
    monkeypatch.setenv("SP_MAX_TASKS", "off")  # only the per-node bound of upstream 0.15 applies
    ctx = Context()
    outer = EvenlyDistributedPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 3_000)
    inner = EvenlyDistributedPartitionNode(ctx, (outer,), 2_000, dimension="inner", nested=True)
    planner = Planner(make_rt())
    with pytest.raises(PlanError) as info:
        planner.create_exec_plan(LogicalPlan(ctx, inner))
    message = str(info.value)
    assert repr(inner) in message and inner.location in message and "6,000,000" in message and "4,096,000" in message
    assert not planner.tasks


def test_the_counts_bound_what_the_planner_builds(make_rt, parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    parts = DataSetPartitionNode(ctx, (src,), 3)
    nested = EvenlyDistributedPartitionNode(ctx, (parts,), 4, dimension="inner", nested=True)
    sql = SqlEngineNode(ctx, (nested,), "select * from {0}")
    hashed = HashPartitionNode(ctx, (UnionNode(ctx, (sql, sql)),), 5, ["id"])
    root = LimitNode(ctx, hashed, 7)
    planner = Planner(make_rt())
    order = topological_order([root], lambda n: n.input_deps)
    estimate = sum(check_plan_size(order, {}, 0, 1 * GB).values())
    built = len({t.key for t in planner.plan(root)} | set(planner.tasks))
    assert built <= estimate <= 2 * built + 10, (built, estimate)


def _most_runnable_at_once(tasks, seed: int) -> int:
    """The most worker tasks runnable at once while the tasks finish one at a time in a random
    order (tasks run in the scheduler finish as soon as they are runnable)."""
    rng = random.Random(seed)
    done, most = set(), 0
    while len(done) < len(tasks):
        runnable = [t for k, t in sorted(tasks.items()) if k not in done and all(d in done for d in t.input_keys)]
        inline = [t for t in runnable if t.exec_on_scheduler]
        if inline:
            done.update(t.key for t in inline)
            continue
        most = max(most, len(runnable))
        done.add(rng.choice(runnable).key)
    return most


def _branches(files):
    """Three partitions through a chain of SQL, a branch of two partitions beside them, both
    hash-partitioned (a union), then SQL per partition and a limit."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(files))
    chain = SqlEngineNode(
        ctx, (SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (src,), 3),), "select * from {0}"),), "select * from {0}"
    )
    single = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (ProjectionNode(ctx, src, ["id"]),), 2),), "select * from {0}")
    hashed = HashPartitionNode(ctx, (UnionNode(ctx, (chain, single)),), 4, ["id"])
    return LimitNode(ctx, SqlEngineNode(ctx, (hashed,), "select * from {0}"), 5)


def test_the_tasks_a_plan_runs_at_once_are_bounded(make_rt, parquet_files):
    """A local executor forks no more workers at a job's start than this bound (a fork too many
    costs a one-task job ~20 ms of its ~0.35 s): it must never be below what the plan can run,
    checked with every node of a plan of chains, branches and partitionings as the target."""
    seen = {}
    for node in topological_order([_branches(parquet_files)], lambda n: n.input_deps):
        planner = Planner(make_rt())
        planner.plan(node)
        most = max(_most_runnable_at_once(planner.tasks, seed) for seed in range(10))
        seen[type(node).__name__] = (most, most_tasks_at_once(node))
        assert most <= most_tasks_at_once(node), (node, most, most_tasks_at_once(node))
    assert seen["UnionNode"] == (5, 5) and seen["HashPartitionNode"] == (5, 5), seen


def test_a_one_task_plan_runs_one_task_at_once(parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    assert most_tasks_at_once(LogicalPlan(ctx, SqlEngineNode(ctx, (src,), "select count(*) from {0}")).root_node) == 1
    assert most_tasks_at_once(src) == 0  # a source of files is a description: no worker
    two = UnionNode(ctx, (SqlEngineNode(ctx, (src,), "select 1"), SqlEngineNode(ctx, (src,), "select 2")))
    assert most_tasks_at_once(two) == 2
    plan, _, _ = hash_plan(parquet_files, 16)
    assert most_tasks_at_once(plan.root_node) == 16


@pytest.mark.parametrize("npartitions, num_producers", [(1, None), (3, None), (2, 6), (1, 3)])
def test_the_producers_of_a_partitioning_of_one_partition_are_counted(make_rt, parquet_files, npartitions, num_producers):
    """A hash (or range) partitioning of a single input partition splits it among its producers
    (8 by default, or num_producers=): they run at once, however few partitions it makes, so
    the bound counts them, not the input partitions (1) nor the output ones."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    kwargs = {"num_producers": num_producers} if num_producers else {}
    node = SqlEngineNode(ctx, (HashPartitionNode(ctx, (src,), npartitions, ["id"], **kwargs),), "select * from {0}")
    planner = Planner(make_rt())
    planner.plan(node)
    most = max(_most_runnable_at_once(planner.tasks, seed) for seed in range(5))
    assert most > npartitions  # the case: more producers than partitions in or out
    assert most <= most_tasks_at_once(node), (most, most_tasks_at_once(node))
