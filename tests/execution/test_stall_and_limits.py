"""Nothing hangs silently, and bad resource hints are clear errors: a job whose running tasks go
quiet logs which ones are still running and where they were built; a worker killed by a signal is
reported with the signal's name; NaN, infinite and sub-byte limits are refused where the node is
built."""

from __future__ import annotations

import functools
import math
import os
import signal
import time

import numpy as np
import pyarrow as pa
import pytest

from smallpond.errors import JobFailed, ParameterError
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.execution.test_stacks import released_by_the_stall_warning


def _slow(runtime_ctx, tables, release: str):
    end = time.monotonic() + 30  # until the test saw the stall warning, 30 s at most
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.05)
    return pa.table({"x": [1]})


def _killed(runtime_ctx, tables):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_quiet_job_names_the_tasks_still_running(tmp_path, monkeypatch, log_messages):
    monkeypatch.setenv("SP_STALL_LOG", "1")
    ctx = Context()
    release = str(tmp_path / "warned")
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, None),), process_func=functools.partial(_slow, release=release))
    with released_by_the_stall_warning(release):
        run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path)))
    stalls = [m for m in log_messages if "still running" in m]
    assert stalls, log_messages
    assert "ArrowComputeTask-" in stalls[0] and node.label in stalls[0]
    assert f"created at {node.location}" in stalls[0] and __file__ in stalls[0]


def test_a_worker_killed_by_a_signal_is_named(tmp_path):
    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, None),), process_func=_killed)
    with pytest.raises(JobFailed) as info:
        run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path)), max_retry_count=0)
    text = str(info.value.errors[0])
    assert "killed by SIGKILL" in text and "OOM killer" in text, text
    assert node.label in text and __file__ in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu_limit": math.nan},
        {"cpu_limit": math.inf},
        {"gpu_limit": math.nan},
        {"memory_limit": math.nan},
        {"memory_limit": math.inf},
        {"memory_limit": 0.5},
    ],
)
def test_non_finite_limits_are_refused_where_the_node_is_built(kwargs):
    ctx = Context()
    with pytest.raises(ParameterError, match=f"{next(iter(kwargs))} must be .*finite") as info:
        SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1", **kwargs)
    assert f"{__file__}:" in str(info.value)


def test_numpy_integer_limits_are_numbers():
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1", cpu_limit=np.int64(2), memory_limit=np.int64(2**30))
    assert (node.cpu_limit, node.memory_limit) == (2, 2**30)


def test_each_clamp_is_reported_with_the_call_site(tmp_path):
    from smallpond.common import TB
    from smallpond.execution.planner import Planner

    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1", cpu_limit=10_000, memory_limit=100 * TB)
    with pytest.warns(UserWarning) as caught:
        Planner(make_runtime_ctx(None, None, str(tmp_path))).plan(node)
    texts = [str(w.message) for w in caught]
    for limit in ("cpu_limit 10000", f"memory_limit {100 * TB}"):
        assert any(limit in t and f"created at {node.location}" in t for t in texts), texts
