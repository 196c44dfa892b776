"""A job script for the queue backend's tests (run through the Driver, in any mode).

    python queue_job.py scheduler --job_id J --data_root D --platform manual -i a.parquet -m MARKERS -n 8

Plan: Parquet → ``npartitions`` partitions by rows → PythonScriptNode(:func:`mark_and_sleep`),
whose every attempt leaves ``start.{key}.{attempt}.{pid}`` in the markers folder when it starts
and ``end.{key}.{attempt}.{pid}`` when it is about to finish (after sleeping ``--sleep`` seconds
on its first attempt, or on every attempt with ``--always_slow``). With ``--slow_partition K``
only partition K waits, and not for ``--sleep`` seconds but until every other partition has
left its ``end`` marker (at most ``--sleep`` seconds); it leaves ``saw.{key}.{attempt}.{pid}``
if they all had. The others sleep 10 ms.
"""

from __future__ import annotations

import functools
import os
import time

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode


def mark_and_sleep(
    runtime_ctx, input_datasets, output_path, markers: str, sleep: float, always_slow: bool, slow_partition=None, npartitions=0
) -> bool:
    task = runtime_ctx.task
    tag = f"{task.key}.{task.retry_count}.{os.getpid()}"
    open(os.path.join(markers, f"start.{tag}"), "w").close()
    if slow_partition is not None:
        if task.partition_infos_as_dict["__data_partition__"] != slow_partition:
            time.sleep(0.01)
        elif wait_for_ends(markers, npartitions - 1, sleep):
            open(os.path.join(markers, f"saw.{tag}"), "w").close()
    elif always_slow or task.retry_count == 0:
        time.sleep(sleep)
    with open(os.path.join(output_path, "rows.txt"), "w") as f:
        f.write(str(input_datasets[0].num_rows))
    open(os.path.join(markers, f"end.{tag}"), "w").close()
    return True


def wait_for_ends(markers: str, count: int, seconds: float) -> bool:
    """Wait until ``count`` tasks have left their ``end`` markers (True), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while sum(name.startswith("end.") for name in os.listdir(markers)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def queue_plan(
    input_paths, markers: str, npartitions: int = 4, sleep: float = 0.0, always_slow: bool = False, slow_partition=None
) -> LogicalPlan:
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(input_paths)),), npartitions, partition_by_rows=True)
    fn = functools.partial(
        mark_and_sleep,
        markers=markers,
        sleep=sleep,
        always_slow=always_slow,
        slow_partition=slow_partition,
        npartitions=npartitions,
    )
    return LogicalPlan(ctx, PythonScriptNode(ctx, (parts,), process_func=fn))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-m", "--markers", required=True)
    driver.add_argument("-n", "--npartitions", type=int, default=4)
    driver.add_argument("--sleep", type=float, default=0.0)
    driver.add_argument("--always_slow", action="store_true")
    driver.add_argument("--slow_partition", type=int, default=None)
    driver.run(queue_plan(**driver.get_arguments()))


if __name__ == "__main__":
    main()
