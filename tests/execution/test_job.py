"""run_job: what a small node-API job does for the script that reads its result next."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.datagen import generate_parquet_files

_PROBE = r"""
import json, sys
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode

files, root, partitions = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
ctx = Context()
source = DataSourceNode(ctx, ParquetDataSet(files))
if partitions > 1:
    source = DataSetPartitionNode(ctx, (source,), partitions, partition_by_rows=True)
node = SqlEngineNode(ctx, (source,), "select count(*) as n from {0}")
rt = make_runtime_ctx(None, None, root, console_log_level="WARNING")
modules = ("pyarrow", "pyarrow.parquet", "smallpond.io.arrow", "duckdb", "pandas")
loaded = lambda: sorted(m for m in modules if m in sys.modules)
before = loaded()
import smallpond.execution.job as job_module
warming, start = [], job_module.import_in_background
job_module.import_in_background = lambda mods: warming.append(start(mods)) or warming[-1]
exec_plan = run_job(LogicalPlan(ctx, node), rt, num_workers=1)
for t in warming:
    if t is not None:
        t.join(60)
after = loaded()
n = exec_plan.final_output.to_arrow_table().column("n")[0].as_py()
print(json.dumps({"before": before, "tasks": len(exec_plan.tasks), "thread": bool(warming), "after": after,
                  "after_read": loaded(), "n": n}))
"""


def _probe(tmp_path, partitions: int, setting=None) -> dict:
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=100)
    env = {k: v for k, v in os.environ.items() if k != "SP_WARM_IMPORTS"}
    if setting is not None:
        env["SP_WARM_IMPORTS"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(files), str(tmp_path / "root"), str(partitions)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("setting", [None, "0"])
def test_a_small_job_imports_what_reading_its_result_needs_while_its_tasks_run(tmp_path, setting):
    state = _probe(tmp_path, 1, setting)
    assert state["before"] == []  # neither planning nor the start needed them
    assert state["n"] == 100
    # reading the result needs pyarrow and its Parquet reader, never DuckDB (only the workers
    # query) nor pandas: warming those cost the job's worker a core's worth of CPU for nothing
    assert state["after_read"] == ["pyarrow", "pyarrow.parquet", "smallpond.io.arrow"]
    if setting == "0":
        assert not state["thread"] and state["after"] == []
    else:
        # all of it imported while the job ran: the read after it imports nothing more
        assert state["thread"] and state["after"] == state["after_read"]


def test_a_large_job_leaves_its_scheduler_alone(tmp_path):
    from smallpond.execution.job import SMALL_JOB_TASKS

    state = _probe(tmp_path, SMALL_JOB_TASKS + 1)
    assert state["tasks"] > SMALL_JOB_TASKS
    assert not state["thread"] and state["after"] == []
