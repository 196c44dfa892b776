"""A sort whose input is twice its task's memory limit completes by spilling, within the limit.

DuckDB enforces ``memory_limit`` on what it holds (a task over it fails with OutOfMemory, which
the scheduler would retry with twice the memory), so the sort must finish on its first attempt
with the original limit. Peak memory is checked from outside too: the job runs in a subprocess
whose only children are its workers, and their peak RSS must stay below an idle worker's RSS
plus twice the limit, while the data alone is larger than that margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import gray_sort

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = 2**20
LIMIT = 64 * MB  # the smallest limit a task gets

JOB = r"""
import json, resource, sys
from loguru import logger
logger.remove()
from smallpond.execution.commit import read_commit
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
args = json.loads(sys.argv[1])
ctx = Context()
source = DataSourceNode(ctx, ParquetDataSet(args["inputs"], root_dir=None))
node = SqlEngineNode(ctx, (source,), args["sql"], per_thread_output=False, memory_limit=args["limit"])
rt = make_runtime_ctx(None, None, args["data_root"], console_log_level="WARNING")
plan = run_job(LogicalPlan(ctx, node), rt, num_workers=1)
task = next(t for t in plan.tasks.values() if t.node_id == int(node.id))
print(json.dumps({
    "attempt": read_commit(rt, task)["attempt"],
    "memory_limit": task.memory_limit,
    "files": plan.final_output.resolved_paths,
    "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
}))
"""


def _run_job(tmp_path, inputs, sql):
    # the worker is stopped at the job's end, not kept for a next job, so that it is reaped before
    # the job's process reads its peak (RUSAGE_CHILDREN counts reaped children only: with the
    # worker kept, both peaks read 0 and the bound below held whatever the sort used)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        SP_KEEP_WORKERS="0",
    )
    args = {"inputs": inputs, "sql": sql, "limit": LIMIT, "data_root": str(tmp_path / "jobs")}
    proc = subprocess.run([sys.executable, "-c", JOB, json.dumps(args)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sort_of_twice_the_memory_limit_spills_within_it(tmp_path):
    records = 2 * LIMIT // gray_sort.RECORD_BYTES + 50_000
    inputs = gray_sort.generate_input(str(tmp_path / "data"), records, 2, seed=11, executors=2)
    assert sum(os.path.getsize(f) for f in inputs) > 2 * LIMIT

    idle = _run_job(tmp_path, inputs, "select count(*) as n from {0}")
    result = _run_job(tmp_path, inputs, "select key, payload from {0} order by key")

    assert idle["peak_rss"] > 16 * MB, idle  # the worker's peak was read (a Python with pyarrow and DuckDB)
    assert result["attempt"] == 0 and result["memory_limit"] == LIMIT  # no out-of-memory retry
    gray_sort.validate_sorted(gray_sort.summarize(inputs), result["files"])
    assert result["peak_rss"] < idle["peak_rss"] + 2 * LIMIT, (result["peak_rss"] / MB, idle["peak_rss"] / MB)
