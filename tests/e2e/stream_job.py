"""A streaming job for the kill-and-resume acceptance test (run through the Driver).

    python stream_job.py scheduler --job_id J --data_root D -i a.parquet -c COUNTER -o SINK
        [--batch_size 10] [--checkpoint_at 7] [--hang_at 9 --hang_marker PATH]

Plan: Parquet → one ArrowStreamNode task (tests/execution/stream_helpers.stream_with_forced_checkpoint:
each batch doubled, a forced checkpoint after batch ``checkpoint_at``, every processed batch
recorded in COUNTER) → DataSinkNode(SINK).
"""

from __future__ import annotations

import functools

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowStreamNode, Context, DataSinkNode, DataSourceNode, LogicalPlan
from tests.execution.stream_helpers import stream_with_forced_checkpoint


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-c", "--counter", required=True)
    driver.add_argument("-o", "--sink_path", required=True)
    driver.add_argument("--batch_size", type=int, default=10)
    driver.add_argument("--checkpoint_at", type=int, default=7)
    driver.add_argument("--hang_at", type=int, default=None)
    driver.add_argument("--hang_marker", default=None)
    args = driver.get_arguments()
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(args["input_paths"]))
    fn = functools.partial(
        stream_with_forced_checkpoint,
        counter=args["counter"],
        checkpoint_at=args["checkpoint_at"],
        hang_at=args["hang_at"],
        hang_marker=args["hang_marker"],
    )
    stream = ArrowStreamNode(ctx, (source,), process_func=fn, streaming_batch_size=args["batch_size"])
    driver.run(LogicalPlan(ctx, DataSinkNode(ctx, (stream,), args["sink_path"])))


if __name__ == "__main__":
    main()
