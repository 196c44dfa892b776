"""A job script whose tasks draw random numbers in every way a plan can (run through the Driver).

    python random_job.py scheduler --job_id J --data_root D -i a.parquet ... -o SINK [--fail_once DIR]

Plan: Parquet → 3 partitions by rows, files shuffled → ArrowComputeNode (draws from Python's
global ``random`` and NumPy's global generator, writes the iteration order of a set of strings)
→ ArrowStreamNode (draws from NumPy's global generator per batch) → hash partitioning into 3 with
``random_shuffle`` → SqlEngineNode (``random()``) → DataSinkNode(SINK). Every value it writes is
a function of the job's ``random_seed`` and the task, so two runs write the same bytes.

``--fail_once DIR``: the first attempt of the compute task of partition 1 draws its numbers, then
raises ``OSError`` (retried); a marker file in DIR records that it did. ``--stop_once DIR``: the
first run's compute task of partition 2 raises ``KeyError`` (not retried): the job fails, and the
same command then resumes it.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Iterable, List, Optional

import numpy as np
import pyarrow as pa

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    ArrowStreamNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)

WORDS = [f"word-{i}" for i in range(12)]


def _first_time(folder: Optional[str], name: str) -> bool:
    """True the first time it is asked for ``name`` in ``folder`` (a marker file remembers)."""
    if not folder:
        return False
    marker = os.path.join(folder, name)
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    return True


def draw(runtime_ctx, tables: List[pa.Table], fail_once: Optional[str], stop_once: Optional[str]) -> pa.Table:
    table = tables[0]
    n = table.num_rows
    table = table.append_column("py_random", pa.array([random.random() for _ in range(n)], pa.float64()))
    table = table.append_column("np_random", pa.array(np.random.rand(n), pa.float64()))
    table = table.append_column("set_order", pa.array([",".join(set(WORDS))] * n))
    index = runtime_ctx.task.partition_infos_as_dict.get("__data_partition__", 0)
    if index == 1 and _first_time(fail_once, "failed-once"):
        raise OSError("injected: the first attempt fails after drawing its numbers")
    if index == 2 and _first_time(stop_once, "stopped-once"):
        raise KeyError("injected: the job stops here once")
    return table


def draw_per_batch(runtime_ctx, readers: List[pa.RecordBatchReader]) -> Iterable[pa.Table]:
    for batch in readers[0]:
        yield pa.Table.from_batches([batch]).append_column("np_batch", pa.array(np.random.rand(batch.num_rows)))


def random_plan(
    input_paths: List[str], output_path: str, fail_once: Optional[str] = None, stop_once: Optional[str] = None
) -> LogicalPlan:
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(input_paths))
    parts = DataSetPartitionNode(ctx, (source,), 3, partition_by_rows=True, random_shuffle=True)
    drawn = ArrowComputeNode(ctx, (parts,), process_func=functools.partial(draw, fail_once=fail_once, stop_once=stop_once))
    batched = ArrowStreamNode(ctx, (drawn,), process_func=draw_per_batch, streaming_batch_size=7)
    shuffled = HashPartitionNode(ctx, (batched,), 3, random_shuffle=True)
    sql = SqlEngineNode(ctx, (shuffled,), "select *, random() as sql_random from {0}")
    return LogicalPlan(ctx, DataSinkNode(ctx, (sql,), output_path))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-o", "--output_path", required=True)
    driver.add_argument("--fail_once", default=None)
    driver.add_argument("--stop_once", default=None)
    driver.run(random_plan(**driver.get_arguments()))


if __name__ == "__main__":
    main()
