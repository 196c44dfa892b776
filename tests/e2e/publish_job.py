"""A job with two sinks, for the publication crash tests (run through the Driver).

    python publish_job.py scheduler --job_id J --data_root D -i a.parquet ... -a SINK_A -b SINK_B

Plan: Parquet → 3 partitions by rows → SqlEngineNode → DataSinkNode(SINK_A), and the same
partitions → SqlEngineNode (ids doubled) → DataSinkNode(SINK_B).
"""

from __future__ import annotations

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    LogicalPlan,
    RootNode,
    SqlEngineNode,
)


def publish_plan(input_paths, sink_a: str, sink_b: str) -> LogicalPlan:
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(input_paths)),), 3, partition_by_rows=True)
    a = SqlEngineNode(ctx, (parts,), "select id from {0}")
    b = SqlEngineNode(ctx, (parts,), "select id * 2 as id from {0}")
    return LogicalPlan(ctx, RootNode(ctx, [DataSinkNode(ctx, (a,), sink_a), DataSinkNode(ctx, (b,), sink_b)]))


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-a", "--sink_a", required=True)
    driver.add_argument("-b", "--sink_b", required=True)
    args = driver.get_arguments()
    driver.run(publish_plan(args["input_paths"], args["sink_a"], args["sink_b"]))


if __name__ == "__main__":
    main()
