"""Global sort: range-partition by sampled split points, sort each partition, and the partitions
in order are one sorted dataset.

Run it as a job::

    python examples/global_sort.py scheduler --job_id my-sort --data_root /tmp/sp \\
        -i data/*.parquet -k key -n 8 -o sorted/

``RangePartitionNode(npartitions=n)`` samples the key column (a seeded reservoir sample over all
the input) and picks ``n - 1`` split points that balance the partitions as well as the data
allows: a key that repeats a lot (skew) is never split, and the other partitions share the rest.
Partition ``i`` holds the keys in ``[split[i-1], split[i])``; NULL keys are last, as in ``ORDER BY``.
Each partition is sorted by DuckDB, and its files carry the partition index in their Parquet
metadata (``SMALLPOND:__data_partition__``), so the output read partition by partition is in
global order. Rerunning the same command resumes the job.
"""

from __future__ import annotations

import os
from typing import List

from smallpond.common import escape_braces, quote_identifier
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, RangePartitionNode, SqlEngineNode


def global_sort(input_paths: List[str], key: str, npartitions: int, output_path: str) -> LogicalPlan:
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(input_paths))
    ranges = RangePartitionNode(ctx, (source,), npartitions=npartitions, key_column=key)
    # ties are broken by every column, so the order is the same in every run; the query is a format
    # string ({0} is the input), so braces in the key's name are doubled
    order_by = escape_braces(quote_identifier(key))
    sorted_parts = SqlEngineNode(ctx, (ranges,), f"select * from {{0}} order by {order_by}, columns(*)")
    return LogicalPlan(ctx, DataSinkNode(ctx, (sorted_parts,), os.path.abspath(output_path)))


def read_in_order(output_path: str):
    """The sorted result: the output files in partition order (from their Parquet metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def partition(path: str) -> int:
        return int(pq.read_metadata(path).metadata[b"SMALLPOND:__data_partition__"])

    files = sorted(
        (f for f in os.listdir(output_path) if f.endswith(".parquet")), key=lambda f: partition(os.path.join(output_path, f))
    )
    return pa.concat_tables([pq.read_table(os.path.join(output_path, f)) for f in files], promote_options="permissive")


def main() -> None:
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    driver.add_argument("-k", "--key", required=True)
    driver.add_argument("-n", "--npartitions", type=int, default=8)
    driver.add_argument("-o", "--output_path", required=True)
    args = driver.get_arguments()
    driver.run(global_sort(**args))


if __name__ == "__main__":
    main()
