"""The logical layer stays light: importing it loads neither Ray nor the execution layer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "smallpond.execution")))))
"""


@pytest.mark.parametrize(
    "module",
    [
        "smallpond.logical",
        "smallpond.logical.node",
        "smallpond.logical.dataset",
        "smallpond.logical.udf",
        "smallpond.common",
        "smallpond.io.arrow",
        # upstream's import path, forwarded by smallpond.compat: the planner loads on first use only
        "smallpond.logical.planner",
    ],
)
def test_logical_layer_imports_no_execution_and_no_ray(module):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import {module} loaded {loaded}"


def test_building_a_plan_imports_no_execution():
    code = """
import json, sys
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, HashPartitionNode, LogicalPlan, SqlEngineNode
ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(["/nonexistent/*.parquet"]))
node = SqlEngineNode(ctx, (HashPartitionNode(ctx, (DataSetPartitionNode(ctx, (src,), 3),), 4, ["a"]),), "select * from {0}")
plan = LogicalPlan(ctx, node)
text = str(plan) + plan.graph().source
print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "smallpond.execution")))))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
