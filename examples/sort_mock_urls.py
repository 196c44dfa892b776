"""Sort mock URLs: TSV → partitions → parse → hash partition by host → sort each partition.

Run it as a job (from the repository's root; the mock data is written on first use)::

    python examples/sort_mock_urls.py scheduler --job_id my-job --data_root /tmp/sp \\
        -i tests/data/mock_urls/*.tsv -n 4

Each input line is ``{url}\\t{base64 payload}`` where a URL looks like ``com.12345.678/page.html``.
The result has one row per line with columns ``host``, ``url`` and ``payload`` (decoded); each
output file holds the rows of some hosts, sorted by ``host, url``. Rerunning the same command
resumes the job: finished tasks are not run again. At the end it prints the job's summary (where
its logs and run report are) and the folder of the result, which ``sp.read_parquet(folder)``
reads (its ``.MANIFEST.txt`` lists the files).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import pyarrow as pa

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import CsvDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    Node,
    SqlEngineNode,
)

IMPORT_SQL = r"""
select split_part(urlstr, '/', 1) as host,
       split_part(urlstr, ' ', 1) as url,
       from_base64(valstr) as payload
from {0}
"""
SORT_KEYS = ["host", "url"]


class SortUrlsNode(ArrowComputeNode):
    """Sort one partition with Arrow (the ``arrow`` engine)."""

    def process(self, runtime_ctx, input_tables: List[pa.Table]) -> pa.Table:
        table = input_tables[0]
        return table.sort_by([(k, "ascending") for k in SORT_KEYS])


def sort_mock_urls(
    input_paths: List[str],
    npartitions: int,
    engine_type: str = "duckdb",
    external_output_path: Optional[str] = None,
) -> LogicalPlan:
    """Build the plan. With ``external_output_path`` the result is also published to
    ``{external_output_path}/data_sink``.
    """
    if engine_type not in ("duckdb", "arrow"):
        raise ValueError(f"engine_type must be one of ['duckdb', 'arrow'], got {engine_type!r}")
    ctx = Context()
    dataset = CsvDataSet(input_paths, schema={"urlstr": "varchar", "valstr": "varchar"}, delim="\t")
    data_files = DataSourceNode(ctx, dataset)
    data_partitions = DataSetPartitionNode(ctx, (data_files,), npartitions=npartitions)
    imported_urls = SqlEngineNode(ctx, (data_partitions,), IMPORT_SQL, output_name="imported_urls")
    urls_partitions = HashPartitionNode(
        ctx, (imported_urls,), npartitions=npartitions, hash_columns=["host"], drop_partition_column=True
    )
    sorted_urls: Node
    if engine_type == "duckdb":
        sorted_urls = SqlEngineNode(ctx, (urls_partitions,), f"select * from {{0}} order by {', '.join(SORT_KEYS)}")
    else:
        sorted_urls = SortUrlsNode(ctx, (urls_partitions,))
    final_node: Node = DataSetPartitionNode(ctx, (sorted_urls,), npartitions=1)
    if external_output_path is not None:
        final_node = DataSinkNode(
            ctx, (final_node,), output_path=os.path.join(os.path.abspath(external_output_path), "data_sink")
        )
    return LogicalPlan(ctx, final_node)


def main() -> None:
    from mock_urls import DEFAULT_PATTERN, input_files

    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", default=[DEFAULT_PATTERN])
    driver.add_argument("-n", "--npartitions", type=int, default=10)
    driver.add_argument("-e", "--engine_type", default="duckdb", choices=("duckdb", "arrow"))
    driver.add_argument("-o", "--external_output_path", default=None)
    args = driver.get_arguments()
    args["input_paths"] = input_files(args["input_paths"])
    plan = sort_mock_urls(**args)
    exec_plan = driver.run(plan, stop_process_on_done=False)
    if exec_plan is None:
        sys.exit(70)  # the summary above says what failed and where its log is
    print(f"sorted URLs: {exec_plan.final_output_path}  (read with smallpond.init().read_parquet(path))")


if __name__ == "__main__":
    main()
