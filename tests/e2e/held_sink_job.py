"""A job that stages its sink and then waits, for the tests of two jobs publishing into one
destination at once (run through the Driver).

    python held_sink_job.py scheduler --job_id J --data_root D -i a.parquet ... -o DEST [--hold DIR] [--before] [--sink_mode M]

Plan: Parquet → SqlEngineNode → DataSinkNode(DEST) → a PythonScriptNode that reads the staged
result and, with ``--hold DIR``, writes ``DIR/holding`` and waits until ``DIR/go`` exists; the
publication comes once it returns, so the job keeps its staged folder beside DEST meanwhile.
With ``--before``, the wait comes before the sink instead (its destination was checked when the
job was planned; its preparation, which clears leftovers beside DEST, comes once ``go`` exists),
and the sink publishes what the waiting node wrote: nothing. ``--sink_mode``: the sink's mode (``overwrite``).
"""

from __future__ import annotations

import os
import time

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, PythonScriptNode, RootNode, SqlEngineNode


def held_plan(input_paths, dest: str, hold: str, before: bool = False, mode: str = "overwrite") -> LogicalPlan:
    ctx = Context()
    rows = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(input_paths)),), "select id from {0}")

    def wait(runtime_ctx, inputs, output_path) -> bool:
        assert all(os.path.exists(p) for p in inputs[0].resolved_paths)  # the staged files (or the rows)
        if hold:
            open(os.path.join(hold, "holding"), "w").close()
            while not os.path.exists(os.path.join(hold, "go")):
                time.sleep(0.05)
        return True

    if before:
        return LogicalPlan(
            ctx, RootNode(ctx, [DataSinkNode(ctx, (PythonScriptNode(ctx, (rows,), process_func=wait),), dest, mode=mode)])
        )
    sink = DataSinkNode(ctx, (rows,), dest, mode=mode)
    return LogicalPlan(ctx, RootNode(ctx, [PythonScriptNode(ctx, (sink,), process_func=wait)]))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-o", "--dest", required=True)
    driver.add_argument("--hold", default="")
    driver.add_argument("--before", action="store_true")
    driver.add_argument("--sink_mode", default="overwrite")
    args = driver.get_arguments()
    driver.run(held_plan(args["input_paths"], args["dest"], args["hold"], args["before"], args["sink_mode"]))


if __name__ == "__main__":
    main()
