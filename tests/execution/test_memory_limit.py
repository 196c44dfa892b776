"""``enforce_memory_limit``: an attempt using more memory than the scheduler gave it is stopped and
fails with OutOfMemory (retried with twice the memory, a bounded number of times); nothing it wrote
is published; attempts within their limits, and DuckDB keeping to its own, are untouched.

Real jobs on real Parquet: the tasks allocate real memory (hundreds of MiB, one attempt at a time)
in the ways :mod:`tests.execution.memory_job` describes. The Driver's flag is run end to end, on
the embedded backend and on the queue backend with executors started by ``mpirun``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import Decision, JobFailed
from smallpond.execution.attempt import logged_attempts
from smallpond.execution.commit import read_commit
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, PythonScriptNode, RootNode, SqlEngineNode
from tests.execution.memory_job import memory_plan, use_libraries
from tests.processes import alive

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="the memory watch reads /proc (Linux)")

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEMORY_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory_job.py")


@pytest.fixture
def source(tmp_path):
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"x": list(range(100))}), path)
    return path


def run_memory_job(tmp_path, source, mode: str, *, enforce: bool = True, alloc_mb: int = 600, limit_mb: int = 100):
    """Run :func:`memory_plan` on one worker with 3 attempts at most (100, 200 and 400 MiB)."""
    rt = make_runtime_ctx(None, None, str(tmp_path / "jobs"), enforce_memory_limit=enforce, console_log_level="WARNING")
    markers = str(tmp_path / "markers")
    os.makedirs(markers, exist_ok=True)
    plan = memory_plan([source], mode, alloc_mb, limit_mb, markers)
    try:
        return rt, run_job(plan, rt, num_workers=1, max_retry_count=2), None
    except JobFailed as e:
        return rt, None, e


def assert_out_of_memory(rt, failed: JobFailed, how: str) -> None:
    """The job failed on the hog's task with OutOfMemory, after 3 attempts with doubled limits,
    and nothing any attempt wrote is left in the job's folders."""
    assert failed is not None, "the job succeeded"
    (err,) = failed.errors
    assert err.cause_type == "OutOfMemory" and err.decision is Decision.RETRY_WITH_MORE_MEMORY, err
    text = str(err)
    key = err.task_key
    assert key.startswith("ArrowComputeTask-") and err.attempt == 2, text
    assert re.search(rf"{key} attempt 2 of ArrowComputeNode-\d+ \(created at .*memory_job\.py:\d+\) used \d+ MiB", text), text
    assert "more than the 400 MiB memory limit it was given" in text and how in text, text
    assert [a for k, a in logged_attempts(rt.log_root) if k == key] == [0, 1, 2]
    leftovers = [p for root in (rt.staging_root, rt.output_root) for p in glob.glob(os.path.join(root, "*", f"{key}*"))]
    assert leftovers == [], leftovers


def test_python_code_over_its_limit_fails_with_out_of_memory(tmp_path, source):
    rt, _, failed = run_memory_job(tmp_path, source, "loop")
    assert_out_of_memory(rt, failed, "; stopped.")


def test_without_enforcement_the_same_job_succeeds(tmp_path, source):
    rt, plan, failed = run_memory_job(tmp_path, source, "loop", enforce=False)
    assert failed is None
    assert pq.read_table(plan.final_output.resolved_paths).column("x").to_pylist() == list(range(100))


def test_code_that_swallows_the_interrupt_never_commits(tmp_path, source):
    rt, _, failed = run_memory_job(tmp_path, source, "swallow")
    assert_out_of_memory(rt, failed, "; stopped.")


def test_code_stuck_in_c_ends_its_worker_and_fails_with_out_of_memory(tmp_path, source):
    # the one worker is replaced after each attempt: the retries run, and fail the same way
    rt, _, failed = run_memory_job(tmp_path, source, "blocked")
    assert_out_of_memory(rt, failed, "(it runs in C), so its worker process")


def test_memory_of_child_processes_counts_and_they_are_killed(tmp_path, source):
    rt, _, failed = run_memory_job(tmp_path, source, "child")
    assert_out_of_memory(rt, failed, "(it runs in C), so its worker process")
    children = [int(open(p).read()) for p in sorted(glob.glob(str(tmp_path / "markers" / "child.*")))]
    # killed with the worker (SIGKILL): one may still be freeing its memory as the job ends
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children) == 3 and not any(alive(pid) for pid in children)


def test_attempts_within_their_limits_are_untouched(tmp_path, source):
    """A hog well within its limit, and a DuckDB sort of more than its 64 MiB limit (it spills, and
    what DuckDB keeps outside its limit is within the slack), commit on their first attempt."""
    rows = 3_000_000
    rng = np.random.default_rng(1)
    big = str(tmp_path / "big.parquet")
    pq.write_table(pa.table({"k": rng.integers(0, 1 << 60, rows), "s": [f"payload-{i:020d}" for i in range(rows)]}), big)
    within = memory_plan([source], "loop", 100, 300).root_node
    ctx = within.ctx
    sql = "select k, s from {0} order by k"
    sort = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([big])),), sql, memory_limit=64 * MiB)
    rt = make_runtime_ctx(None, None, str(tmp_path / "jobs"), enforce_memory_limit=True, console_log_level="WARNING")
    plan = run_job(LogicalPlan(ctx, RootNode(ctx, (within, sort))), rt, num_workers=1, max_retry_count=0)
    for node, n in ((within, 100), (sort, rows)):
        (task,) = [t for t in plan.tasks.values() if t.node_id == int(node.id)]
        record = read_commit(rt, task)
        assert record["attempt"] == 0, node
        assert sum(pq.read_metadata(p).num_rows for p in record["dataset"].resolved_paths) == n


def test_libraries_loaded_by_a_workers_first_task_do_not_count(tmp_path, source):
    """numpy, pyarrow, pandas and DuckDB are loaded before a worker's first baseline: Python code
    using them with a tiny limit (1 MiB, and the slack) is not charged ~100 MiB for their import."""
    ctx = Context()
    node = PythonScriptNode(ctx, (DataSourceNode(ctx, ParquetDataSet([source])),), process_func=use_libraries, memory_limit=MiB)
    rt = make_runtime_ctx(None, None, str(tmp_path / "jobs"), enforce_memory_limit=True, console_log_level="WARNING")
    plan = run_job(LogicalPlan(ctx, node), rt, num_workers=1, max_retry_count=0)
    (task,) = [t for t in plan.tasks.values() if t.node_id == int(node.id)]
    assert read_commit(rt, task)["attempt"] == 0
    assert pd.read_parquet(plan.final_output.resolved_paths[0]).x.tolist() == list(range(100))


def _driver(tmp_path, source, *args: str, enforce: bool = True) -> subprocess.CompletedProcess:
    data_root = str(tmp_path / f"driver-{uuid.uuid4().hex[:6]}")
    cmd = [sys.executable, MEMORY_JOB, "scheduler", "--job_id", str(uuid.uuid4()), "--data_root", data_root]
    cmd += ["--max_retry", "2", "-i", source, *args] + (["--enforce_memory_limit"] if enforce else [])
    env = dict(os.environ, SP_PROGRESS="0", SP_QUEUE_HEARTBEAT="0.2", SP_QUEUE_TIMEOUT="10")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_the_drivers_flag_enforces_the_limit(tmp_path, source):
    off = _driver(tmp_path, source, "--hog", "loop", enforce=False)
    assert off.returncode == 0, off.stderr[-3000:]
    on = _driver(tmp_path, source, "--hog", "loop")
    assert on.returncode != 0
    assert re.search(r"OutOfMemory: ArrowComputeTask-\d+ attempt 2 of ArrowComputeNode-\d+ .*memory_job\.py", on.stderr), (
        on.stderr[-3000:]
    )
    assert "more than the 400 MiB memory limit" in on.stderr
    assert "enforce_memory_limit: an attempt of the local backend" in on.stderr and "have no effect" not in on.stderr


@pytest.mark.queue
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")
def test_queue_executors_started_by_mpirun_enforce_the_limit(tmp_path, source):
    # the hard stop, through the executor's worker pool and its outcome file
    on = _driver(tmp_path, source, "--hog", "blocked", "--platform", "mpi", "--num_executors", "1")
    assert on.returncode != 0
    assert re.search(r"OutOfMemory: ArrowComputeTask-\d+ attempt 2 of ArrowComputeNode-\d+ .*memory_job\.py", on.stderr), (
        on.stderr[-3000:]
    )
    assert "(it runs in C), so its worker process" in on.stderr and "WorkerLost" not in on.stderr
