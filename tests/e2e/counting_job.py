"""A job script for the resume, fault and worker-death scenarios (run through the Driver).

    python counting_job.py scheduler --job_id J --data_root D -i a.parquet ... -c COUNTER -o SINK

Plan: Parquet → ``npartitions`` partitions by rows → ArrowComputeNode (sleeps a little, appends the
task key to the counter file on every execution, adds ``doubled = id * 2``) → SqlEngineNode
(sorted per partition) → one partition → DataSinkNode(SINK). With 16 partitions that is 33 tasks
that run on workers (each writes a commit record).

``--die_once MARKER_DIR`` makes the first execution of each listed partition index kill its own
worker process (SIGKILL, or ``os._exit`` with ``die_how="exit"``); the marker file records that
it happened, so the retry proceeds.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    LogicalPlan,
    SqlEngineNode,
)


def count_and_double(
    runtime_ctx,
    tables: List[pa.Table],
    counter: str,
    sleep: float,
    die_once: Optional[str],
    die_partitions: List[int],
    die_how: str = "kill",
) -> pa.Table:
    task = runtime_ctx.task
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task.key}\n".encode())
    finally:
        os.close(fd)
    index = task.partition_infos_as_dict.get("__data_partition__", 0)
    if die_once and index in die_partitions:
        marker = os.path.join(die_once, f"died-{task.key}")
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            if die_how == "exit":
                os._exit(3)  # no cleanup, no exception: like a crash in native code
            os.kill(os.getpid(), signal.SIGKILL)
    # COUNTING_JOB_EXTRA_SLEEP (in the environment the workers inherit, which is not part of a task's
    # cache key; ``--env_variables`` are) slows one job down without changing its tasks' keys
    time.sleep(sleep + float(os.environ.get("COUNTING_JOB_EXTRA_SLEEP", "0")))
    table = tables[0]
    return table.append_column("doubled", pc.multiply(table.column("id"), 2))


def counting_plan(
    input_paths: List[str],
    counter: str,
    output_path: str,
    npartitions: int = 16,
    sleep: float = 0.05,
    die_once: Optional[str] = None,
    die_partitions: Optional[List[int]] = None,
    die_how: str = "kill",
    sink_type: str = "link",
) -> LogicalPlan:
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(input_paths))
    parts = DataSetPartitionNode(ctx, (source,), npartitions, partition_by_rows=True)
    fn = functools.partial(
        count_and_double,
        counter=counter,
        sleep=sleep,
        die_once=die_once,
        die_partitions=list(die_partitions or []),
        die_how=die_how,
    )
    doubled = ArrowComputeNode(ctx, (parts,), process_func=fn)
    ordered = SqlEngineNode(ctx, (doubled,), "select id, key, name, doubled from {0} order by id")
    merged = DataSetPartitionNode(ctx, (ordered,), 1)
    return LogicalPlan(ctx, DataSinkNode(ctx, (merged,), output_path, type=sink_type))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-c", "--counter", required=True)
    driver.add_argument("-o", "--sink_path", required=True)
    driver.add_argument("-n", "--npartitions", type=int, default=16)
    driver.add_argument("--sleep", type=float, default=0.05)
    driver.add_argument("--die_once", default=None)
    driver.add_argument("--die_partitions", type=int, nargs="*", default=[])
    driver.add_argument("--sink_type", default="link")
    args = driver.get_arguments()
    args["output_path"] = args.pop("sink_path")
    driver.run(counting_plan(**args))


if __name__ == "__main__":
    main()
