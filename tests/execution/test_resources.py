"""Resource hints: a task asking for more CPU or memory than the machine has is clamped with a
warning (never left waiting forever), and the limits reach DuckDB."""

from __future__ import annotations

import warnings

import pytest

from smallpond.common import TB
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode


def test_oversized_requests_are_clamped_with_a_warning(tmp_path):
    rt = make_runtime_ctx(None, None, str(tmp_path))
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1 as x", cpu_limit=10_000, memory_limit=100 * TB)
    with pytest.warns(UserWarning, match="clamped"):
        tasks = Planner(rt).plan(node)
    assert tasks[-1].cpu_limit == rt.usable_cpu_count
    assert tasks[-1].memory_limit <= rt.usable_memory_size


def test_oversized_job_still_runs(tmp_path):
    ctx = Context()
    q = "select current_setting('threads') as threads, current_setting('memory_limit') as mem"
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), q, cpu_limit=512, memory_limit=64 * TB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path)))
    row = ep.final_output.to_arrow_table().to_pylist()[0]
    assert int(row["threads"]) == ep.ctx.usable_cpu_count


def test_limits_become_duckdb_settings(tmp_path):
    ctx = Context()
    q = "select current_setting('threads') as threads, current_setting('memory_limit') as mem"
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), q, cpu_limit=1, memory_limit=512 * 2**20, memory_overcommit_ratio=1.0)
    ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path)))
    row = ep.final_output.to_arrow_table().to_pylist()[0]
    assert int(row["threads"]) == 1
    assert row["mem"].replace(" ", "") in ("512.0MiB", "512MiB", "536.8MB", "536.8MB")


def test_tasks_are_clamped_to_the_executors_largest_attempt(tmp_path):
    """On a cluster the limit is one node's CPUs and memory, not this machine's (Job passes them)."""
    rt = make_runtime_ctx(None, None, str(tmp_path))
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1 as x", cpu_limit=2, memory_limit=3 * 2**30)
    with pytest.warns(UserWarning, match="clamped") as record:
        tasks = Planner(rt, attempt_limits=(1, 2**30)).plan(node)
    assert (tasks[-1].cpu_limit, tasks[-1].memory_limit) == (1, 2**30)
    assert "exceeds the 1 usable CPUs" in str(record[0].message)
