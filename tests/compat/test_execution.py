"""Upstream's tests/test_execution.py cases (reference §6), run as jobs through ``run_job``
(upstream's TestFabric harness is not public). Outputs are compared with pyarrow / DuckDB.
"""

from __future__ import annotations

import functools
import glob
import os
import random
from typing import Iterable, List

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from smallpond.common import GB, MB, pytest_running
from smallpond.execution.task import RuntimeContext, StreamOutput
from smallpond.logical.dataset import ArrowTableDataSet, DataSet, ParquetDataSet, SqlQueryDataSet
from smallpond.logical.node import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LogicalPlan,
    PandasBatchNode,
    PandasComputeNode,
    ProjectionNode,
    PythonScriptNode,
    SqlEngineNode,
    UnionNode,
)
from smallpond.logical.udf import UDFListType, UDFType
from tests.compat.conftest import assert_same_rows


class CopyInputArrowNode(ArrowComputeNode):
    def process(self, runtime_ctx: RuntimeContext, input_tables: List[pa.Table]) -> pa.Table:
        return input_tables[0]


class CopyInputStreamNode(ArrowStreamNode):
    def process(self, runtime_ctx: RuntimeContext, input_readers: List[pa.RecordBatchReader]) -> Iterable[pa.Table]:
        for batch_idx, batch in enumerate(input_readers[0]):
            yield StreamOutput(pa.Table.from_batches([batch]), batch_indices=[batch_idx], force_checkpoint=pytest_running())


class CopyInputBatchNode(ArrowBatchNode):
    def process(self, runtime_ctx: RuntimeContext, input_tables: List[pa.Table]) -> pa.Table:
        return input_tables[0]


def _read_output(path_glob: str) -> pa.Table:
    return ParquetDataSet([path_glob], recursive=True).to_arrow_table()


@pytest.mark.parametrize("use_duckdb_reader", [False, True])
def test_arrow_task(run_plan, compat_data, tmp_path, use_duckdb_reader):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    data_table = dataset.to_arrow_table()
    data_files = DataSourceNode(ctx, dataset)
    data_partitions = DataSetPartitionNode(ctx, (data_files,), npartitions=7)
    if use_duckdb_reader:
        data_partitions = ProjectionNode(ctx, data_partitions, columns=["*", "string_split(url, '/')[3] as parsed_host"])
        data_table = data_table.append_column("parsed_host", pc.list_element(pc.split_pattern(data_table.column("url"), "/"), 2))
    output_dir = str(tmp_path / "output")
    arrow_compute = CopyInputArrowNode(
        ctx, (data_partitions,), use_duckdb_reader=use_duckdb_reader, output_name="arrow_compute", output_path=output_dir
    )
    arrow_stream = CopyInputStreamNode(
        ctx,
        (data_partitions,),
        streaming_batch_size=40,
        use_duckdb_reader=use_duckdb_reader,
        output_name="arrow_stream",
        output_path=output_dir,
    )
    arrow_batch = CopyInputBatchNode(
        ctx,
        (data_partitions,),
        streaming_batch_size=30,
        use_duckdb_reader=use_duckdb_reader,
        output_name="arrow_batch",
        output_path=output_dir,
    )
    data_sink = DataSinkNode(ctx, (arrow_compute, arrow_stream, arrow_batch), output_path=str(tmp_path / "sink"))
    plan = LogicalPlan(ctx, data_sink)
    exec_plan = run_plan(plan, num_workers=2)  # upstream ran this on 2 executors
    assert exec_plan.successful
    for name in ("arrow_compute", "arrow_stream", "arrow_batch"):
        out = _read_output(os.path.join(output_dir, name, "**", "*.parquet"))
        assert_same_rows(out, data_table)
        assert_same_rows(exec_plan.get_output(name).to_arrow_table(), data_table)
    sink_files = glob.glob(str(tmp_path / "sink" / "*.parquet"))
    assert sum(ParquetDataSet([f]).num_rows for f in sink_files) == 3 * data_table.num_rows
    assert os.path.exists(str(tmp_path / "sink" / ".MANIFEST.txt"))


def test_stream_checkpoints_start_new_files(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")])
    node = CopyInputStreamNode(ctx, (DataSourceNode(ctx, dataset),), streaming_batch_size=25, output_name="stream")
    exec_plan = run_plan(LogicalPlan(ctx, node))
    out = exec_plan.get_output("stream")
    assert out.num_rows == 100
    assert len(out.resolved_paths) == 4  # one file per forced checkpoint


class CopyInputPandasNode(PandasComputeNode):
    def process(self, runtime_ctx: RuntimeContext, input_dfs: List[pd.DataFrame]) -> pd.DataFrame:
        return input_dfs[0]


class CopyInputPandasBatchNode(PandasBatchNode):
    def process(self, runtime_ctx: RuntimeContext, input_dfs: List[pd.DataFrame]) -> pd.DataFrame:
        return input_dfs[0]


def test_pandas_task(run_plan, compat_data, tmp_path):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    data_table = dataset.to_arrow_table()
    data_partitions = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=4)
    output_dir = str(tmp_path / "output")
    pandas_compute = CopyInputPandasNode(ctx, (data_partitions,), output_name="pandas_compute", output_path=output_dir)
    pandas_batch = CopyInputPandasBatchNode(
        ctx, (data_partitions,), streaming_batch_size=64, output_name="pandas_batch", output_path=output_dir
    )
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (pandas_compute, pandas_batch), output_path=str(tmp_path / "sink")))
    exec_plan = run_plan(plan)
    assert exec_plan.successful
    for name in ("pandas_compute", "pandas_batch"):
        assert_same_rows(_read_output(os.path.join(output_dir, name, "**", "*.parquet")), data_table)


class MergeBatchesArrow(ArrowBatchNode):
    def process(self, runtime_ctx: RuntimeContext, input_tables: List[pa.Table]) -> pa.Table:
        return pa.concat_tables(input_tables)


class MergeBatchesPandas(PandasBatchNode):
    def process(self, runtime_ctx: RuntimeContext, input_dfs: List[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(input_dfs)


def test_variable_length_input_datasets(run_plan, compat_data):
    ctx = Context()
    small = ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")])
    large = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    small_partitions = DataSetPartitionNode(ctx, (DataSourceNode(ctx, small),), npartitions=7, partition_by_rows=True)
    large_partitions = DataSetPartitionNode(ctx, (DataSourceNode(ctx, large),), npartitions=7, partition_by_rows=True)
    arrow_batch = MergeBatchesArrow(ctx, (small_partitions, large_partitions), streaming_batch_size=16, output_name="arrow_batch")
    pandas_batch = MergeBatchesPandas(
        ctx, (small_partitions, large_partitions), streaming_batch_size=16, output_name="pandas_batch"
    )
    exec_plan = run_plan(LogicalPlan(ctx, UnionNode(ctx, (arrow_batch, pandas_batch))))
    assert exec_plan.get_output("arrow_batch").num_rows == small.num_rows + large.num_rows
    assert exec_plan.get_output("pandas_batch").num_rows == small.num_rows + large.num_rows


def test_projection_task(run_plan, compat_data):
    ctx = Context()
    # two schemas: (host, url) and (url, domain, date, content), combined by name
    files = [os.path.join(compat_data["mock_urls"], "*.parquet"), os.path.join(compat_data["arrow"], "*.parquet")]
    mixed = ParquetDataSet(files, union_by_name=True)
    source = DataSourceNode(ctx, mixed)
    parts = DataSetPartitionNode(ctx, (source,), npartitions=3)
    projected = ProjectionNode(ctx, parts, columns=["url", "host"], generated_columns=["filename", "file_row_number"])
    # one producer over every partition: a producer reads its files by name (union_by_name), and
    # one whose files all lack ``host`` could not select it (upstream, too, when it split the
    # input by files over several producers); ours are one per input partition unless asked
    partitioned = HashPartitionNode(ctx, (projected,), npartitions=3, hash_columns=["url"], output_name="by_url", num_producers=1)
    # expression columns through a DuckDB reader
    hosts = ProjectionNode(ctx, parts, columns=["url", "string_split(url, '/')[1] as host_expr"], union_by_name=True)
    hosts_sql = SqlEngineNode(ctx, (hosts,), "select url, host_expr from {0}", output_name="hosts")
    exec_plan = run_plan(LogicalPlan(ctx, UnionNode(ctx, (partitioned, hosts_sql))))
    output = exec_plan.get_output("by_url").to_arrow_table()
    assert set(output.column_names) == {"url", "host", "filename", "file_row_number", "__data_partition__"}
    assert output.num_rows == 2000
    assert sum(h is None for h in output.column("host").to_pylist()) == 1000  # the arrow files have no host
    assert set(output.column("__data_partition__").to_pylist()) <= {0, 1, 2}
    names = {os.path.basename(f) for f in output.column("filename").to_pylist()}
    assert names == {f"urls{i}.parquet" for i in range(10)} | {f"data{i}.parquet" for i in range(10)}
    assert sorted(set(output.column("file_row_number").to_pylist())) == list(range(100))
    expr = exec_plan.get_output("hosts").to_arrow_table()
    assert expr.num_rows == 2000
    assert all(u.split("/")[0] == h for u, h in zip(expr.column("url").to_pylist(), expr.column("host_expr").to_pylist()))


def test_arrow_type_in_udfs(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    data_partitions = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    ctx.create_function(
        "split_url",
        lambda urls: pc.split_pattern(urls, "/"),
        [UDFType.VARCHAR],
        UDFListType(UDFType.VARCHAR),
        use_arrow_type=True,
    )
    uniq_hosts = SqlEngineNode(
        ctx,
        (data_partitions,),
        r"select split_url(url)[3] as host from {0}",
        udfs=["split_url"],
        output_name="uniq_hosts",
    )
    exec_plan = run_plan(LogicalPlan(ctx, uniq_hosts))
    hosts = exec_plan.get_output("uniq_hosts").to_arrow_table().column("host").to_pylist()
    expected = [u.split("/")[2] for u in dataset.to_arrow_table().column("url").to_pylist()]
    assert sorted(hosts) == sorted(expected)


class ProcessArrowCompute(ArrowComputeNode):
    def process(self, runtime_ctx, input_tables):
        return input_tables[0].select(["url"])


class ProcessArrowStream(ArrowStreamNode):
    def process(self, runtime_ctx, input_readers):
        for batch in input_readers[0]:
            yield pa.Table.from_batches([batch]).select(["url"])


class ProcessPythonScript(PythonScriptNode):
    def process(self, runtime_ctx: RuntimeContext, input_datasets: List[DataSet], output_path: str) -> bool:
        table = input_datasets[0].to_arrow_table().select(["url"])
        pa.parquet.write_table(table, os.path.join(output_path, f"{runtime_ctx.task.output_filename}.parquet"))
        return True


def test_python_node_with_process_method(run_plan, compat_data):
    import pyarrow.parquet  # noqa: F401 (pa.parquet in ProcessPythonScript)

    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    data_partitions = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    nodes = [
        ProcessArrowCompute(ctx, (data_partitions,), output_name="arrow_compute"),
        ProcessArrowStream(ctx, (data_partitions,), output_name="arrow_stream"),
        ProcessPythonScript(ctx, (data_partitions,), output_name="python_script"),
    ]
    exec_plan = run_plan(LogicalPlan(ctx, UnionNode(ctx, nodes)))
    expected = dataset.to_arrow_table().select(["url"])
    for name in ("arrow_compute", "arrow_stream", "python_script"):
        assert_same_rows(exec_plan.get_output(name).to_arrow_table(), expected)


def test_process_func_and_runtime_ctx(run_plan, compat_data):
    """process_func instead of a subclass; what a process function sees of the runtime context."""
    seen = {}

    def describe(runtime_ctx: RuntimeContext, input_datasets: List[DataSet], output_path: str) -> bool:
        import json
        import os

        task = runtime_ctx.task
        info = {
            "partition": task.partition_infos_as_dict,
            "dims": task.partition_dims,
            "cpu_limit": task.cpu_limit,
            "gpu_limit": task.gpu_limit,
            "memory_limit": task.memory_limit,
            "local_rank": task.local_rank,
            "retry_count": task.retry_count,
            "uint32": task.random_uint32(),
            "float": task.random_float(),
            "np": int(task.numpy_random_gen.integers(0, 1000)),
            "py": task.python_random_gen.random(),
            "output_filename": task.output_filename,
            "same_dir": os.path.abspath(output_path) == os.path.abspath(task.runtime_output_abspath),
            "rows": sum(ds.num_rows for ds in input_datasets),
        }
        task.add_elapsed_time("describe")
        with open(os.path.join(output_path, f"{task.output_filename}.json"), "w") as f:
            json.dump(info, f)
        return True

    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    node = PythonScriptNode(ctx, (parts,), process_func=describe, output_name="described", cpu_limit=1, memory_limit=512 * MB)
    exec_plan = run_plan(LogicalPlan(ctx, node))
    import json

    infos = sorted(
        (json.load(open(p)) for p in exec_plan.get_output("described").resolved_paths),
        key=lambda i: i["partition"]["__data_partition__"],
    )
    assert [i["partition"] for i in infos] == [{"@toplevel@": 0, "__data_partition__": k} for k in range(3)]
    assert all(set(i["dims"]) == {"@toplevel@", "__data_partition__"} for i in infos)
    assert all(i["cpu_limit"] == 1 and i["gpu_limit"] == 0 and i["memory_limit"] == 512 * MB for i in infos)
    assert all(i["local_rank"] == 0 and i["retry_count"] == 0 and i["same_dir"] for i in infos)
    assert all(0 <= i["uint32"] < 2**32 and 0 <= i["float"] < 1 for i in infos)
    assert sum(i["rows"] for i in infos) == dataset.num_rows
    assert len({i["output_filename"] for i in infos}) == 3
    assert len({i["uint32"] for i in infos}) == 3  # seeds differ per task
    _ = seen


def test_random_generators_are_deterministic_per_job(run_plan, compat_data):
    """Seeds derive from task id and the job's random_seed: the same job draws the same numbers."""

    def draw(runtime_ctx, input_tables):
        task = runtime_ctx.task
        return pa.table({"r": [task.random_uint32()], "n": [int(task.numpy_random_gen.integers(0, 2**31))]})

    results = []
    for _ in range(2):
        ctx = Context()
        dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
        parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
        node = ArrowComputeNode(ctx, (parts,), process_func=draw, output_name="draws")
        out = run_plan(LogicalPlan(ctx, node), random_seed=42).get_output("draws").to_arrow_table()
        results.append(sorted(out.to_pylist(), key=repr))
    assert results[0] == results[1]


def test_sql_engine_oom(run_plan, compat_data):
    """memory_limit=2MB: the job still succeeds (upstream relaxed memory and retried)."""
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    node = SqlEngineNode(ctx, (parts,), "select url, content from {0} order by url, content", memory_limit=2 * MB)
    exec_plan = run_plan(LogicalPlan(ctx, node), max_fail_count=10)
    assert exec_plan.successful and exec_plan.final_output.num_rows == dataset.num_rows


def test_task_crash_is_retried(run_plan, compat_data):
    """Upstream failed the job on a worker's non-zero exit unless nonzero_exitcode_as_oom; ours
    retries a lost worker like any retryable failure."""

    def crash_first(runtime_ctx, input_tables):
        import sys

        if runtime_ctx.task.retry_count == 0:
            sys.exit(1)
        return input_tables[0]

    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")])
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, dataset),), process_func=crash_first, output_name="survived")
    exec_plan = run_plan(LogicalPlan(ctx, node))
    assert exec_plan.get_output("survived").num_rows == 100


def test_manifest_only_data_sink(run_plan, compat_data, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    src = os.path.join(compat_data["arrow"], "data0.parquet")
    paths = []
    for i in range(1000):
        p = str(links / f"f{i:05d}.parquet")
        os.link(src, p)
        paths.append(p)
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(paths)),), npartitions=16)
    sink_dir = str(tmp_path / "manifest_sink")
    with pytest.warns(DeprecationWarning, match='manifest_only=True is deprecated: write type="manifest"'):
        sink = DataSinkNode(ctx, (parts,), output_path=sink_dir, manifest_only=True)
    run_plan(LogicalPlan(ctx, sink))
    with open(os.path.join(sink_dir, ".MANIFEST.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    assert sorted(lines) == sorted(paths)
    assert [n for n in os.listdir(sink_dir) if n != ".MANIFEST.txt"] == []  # manifest only: no data files


@pytest.mark.parametrize("materialize_in_memory", [False, True])
def test_sql_batched_processing(run_plan, compat_data, materialize_in_memory):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")] * 1)
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    node = SqlEngineNode(
        ctx,
        (parts,),
        "select * from {0}",
        batched_processing=True,
        materialize_in_memory=materialize_in_memory,
        memory_limit=64 * MB,
    )
    exec_plan = run_plan(LogicalPlan(ctx, node))
    assert exec_plan.final_output.num_rows == dataset.num_rows


def test_multiple_sql_queries(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    node = SqlEngineNode(
        ctx,
        (parts,),
        ["create or replace temp table temp_table as select * from {0}", "select * from temp_table"],
        output_name="queries",
    )
    exec_plan = run_plan(LogicalPlan(ctx, node))
    assert exec_plan.get_output("queries").num_rows == dataset.num_rows
    assert node.oneline_query.count("temp_table") == 2


def test_temp_outputs_in_final_results(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=10)
    counts1 = SqlEngineNode(ctx, (parts,), "select count(url) as cnt from {0}")
    counts2 = SqlEngineNode(ctx, (parts,), "select count(domain) as cnt from {0}")
    merged = DataSetPartitionNode(ctx, (UnionNode(ctx, (counts1, counts2)),), npartitions=10)
    exec_plan = run_plan(LogicalPlan(ctx, merged))
    assert exec_plan.final_output.num_rows == 20
    assert sum(exec_plan.final_output.to_arrow_table().column("cnt").to_pylist()) == 2 * dataset.num_rows


def test_override_output_path(run_plan, compat_data, tmp_path):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    url_counts = SqlEngineNode(ctx, (parts,), "select domain, count(*) as cnt from {0} group by domain", output_name="url_counts")
    output_path = str(tmp_path / "override")
    exec_plan = run_plan(LogicalPlan(ctx, url_counts), output_path=output_path)
    assert os.path.isdir(os.path.join(output_path, "url_counts"))
    assert os.path.isdir(os.path.join(output_path, "FinalResults"))
    assert exec_plan.final_output_path.startswith(output_path)
    total = sum(
        ParquetDataSet([os.path.join(output_path, "FinalResults", "*.parquet")]).to_arrow_table().column("cnt").to_pylist()
    )
    assert total == dataset.num_rows


def test_data_sink_avoid_filename_conflicts(run_plan, compat_data, tmp_path):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    source = DataSourceNode(ctx, dataset)
    parts = DataSetPartitionNode(ctx, (source,), npartitions=10)
    # two copies of the same 10 file names
    twice = UnionNode(ctx, (parts, DataSetPartitionNode(ctx, (source,), npartitions=10)))
    link_dir, copy_dir, input_copy_dir = (str(tmp_path / n) for n in ("link", "copy", "input_copy"))
    link_sink = DataSinkNode(ctx, (twice,), output_path=link_dir, type="link")
    copy_sink = DataSinkNode(ctx, (twice,), output_path=copy_dir, type="copy")
    input_copy = DataSinkNode(ctx, (parts,), output_path=input_copy_dir, type="copy")
    run_plan(LogicalPlan(ctx, UnionNode(ctx, (link_sink, copy_sink, input_copy))))
    assert len(os.listdir(link_dir)) == 21  # 20 files + manifest
    assert len(os.listdir(copy_dir)) == 21
    # without a conflict the original names are kept
    assert sorted(os.listdir(input_copy_dir)) == sorted([".MANIFEST.txt"] + [f"data{i}.parquet" for i in range(10)])
    assert ParquetDataSet([os.path.join(copy_dir, "*.parquet")]).num_rows == 2 * dataset.num_rows


def test_literal_datasets_as_data_sources(run_plan):
    ctx = Context()
    num_rows = 10
    query_dataset = SqlQueryDataSet(f"select i as key, random() as val from range({num_rows}) as x(i)")
    table_dataset = ArrowTableDataSet(
        pa.Table.from_arrays([pa.array(range(num_rows)), pa.array(range(num_rows))], names=["key", "val"])
    )
    query_source = DataSourceNode(ctx, query_dataset)
    table_source = DataSourceNode(ctx, table_dataset)
    query_partitions = DataSetPartitionNode(ctx, (query_source,), npartitions=num_rows, partition_by_rows=True)
    table_partitions = DataSetPartitionNode(ctx, (table_source,), npartitions=num_rows, partition_by_rows=True)
    joined_rows = SqlEngineNode(
        ctx,
        (query_partitions, table_partitions),
        "select a.key, a.val, b.val as val2 from {0} as a join {1} as b on a.key = b.key",
    )
    exec_plan = run_plan(LogicalPlan(ctx, joined_rows))
    assert exec_plan.final_output.num_rows == num_rows
    assert sorted(exec_plan.final_output.to_arrow_table().column("key").to_pylist()) == list(range(num_rows))


def choose_random_urls(runtime_ctx: RuntimeContext, input_tables: List[pa.Table], k: int = 5) -> pa.Table:
    urls = input_tables[0].column("url").to_pylist()
    rng = random.Random(runtime_ctx.task.random_uint32())
    return pa.table({"url": rng.sample(urls, k)})


def test_partial_process_func(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    urls5 = ArrowComputeNode(ctx, (parts,), process_func=choose_random_urls, output_name="random_urls_k5")
    urls10 = ArrowComputeNode(
        ctx, (parts,), process_func=functools.partial(choose_random_urls, k=10), output_name="random_urls_k10"
    )
    exec_plan = run_plan(LogicalPlan(ctx, UnionNode(ctx, (urls5, urls10))))
    assert exec_plan.get_output("random_urls_k5").to_arrow_table().num_rows == 3 * 5
    assert exec_plan.get_output("random_urls_k10").to_arrow_table().num_rows == 3 * 10


def test_execution_plan_surface(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    named = SqlEngineNode(ctx, (parts,), "select url from {0}", output_name="named")
    final = SqlEngineNode(ctx, (named,), "select count(*) as n from {0}")
    plan = LogicalPlan(ctx, final)
    exec_plan = run_plan(plan)
    assert exec_plan.successful
    assert exec_plan.analyzed_logical_plan is plan or exec_plan.analyzed_logical_plan is not None
    assert set(exec_plan.named_outputs) == {"named"}
    assert exec_plan.get_output("named").num_rows == dataset.num_rows
    assert exec_plan.get_output("no_such_name") is None
    assert sum(exec_plan.final_output.to_arrow_table().column("n").to_pylist()) == dataset.num_rows
    assert exec_plan.leaves and all(t.key in exec_plan.tasks for t in exec_plan.leaves)
    # named and final outputs land under output/ as upstream: output/{name}/..., FinalResults manifest
    rt = run_plan.runtime_ctx
    assert os.path.exists(os.path.join(rt.output_root, "named", ".MANIFEST.txt"))
    assert os.path.exists(os.path.join(rt.output_root, "FinalResults", ".MANIFEST.txt"))
    with open(os.path.join(rt.job_root, "log", ".STATUS")) as f:
        assert "success" in f.read()


def test_output_files_carry_smallpond_metadata(run_plan, compat_data):
    import pyarrow.parquet as pq

    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    node = SqlEngineNode(ctx, (parts,), "select url from {0}", output_name="kv")
    exec_plan = run_plan(LogicalPlan(ctx, node))
    for path in exec_plan.get_output("kv").resolved_paths:
        md = pq.read_metadata(path).metadata
        assert b"SMALLPOND:__data_partition__" in md and b"SMALLPOND:@toplevel@" in md
        assert os.path.basename(path).startswith("kv-")


_ = (GB, EvenlyDistributedPartitionNode)


def test_sql_placeholders(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    node = SqlEngineNode(
        ctx,
        (parts,),
        [
            "create temp table q0 as select {query_index} as q from {0} limit 1",
            "select {batch_index} as b, (select q from q0) as q0, {query_index} as q1, {cpu_limit} as c, {memory_limit} as m, "
            "'{output_filename}' as f, {rand_seed} as r, {__data_partition__} as p, {{'k': 1}} as lit, count(*) as n from {0}",
        ],
        cpu_limit=1,
        memory_limit=256 * MB,
    )
    rows = sorted(run_plan(LogicalPlan(ctx, node)).final_output.to_arrow_table().to_pylist(), key=lambda r: r["p"])
    assert [r["p"] for r in rows] == [0, 1] and sum(r["n"] for r in rows) == 1000
    for r in rows:
        assert r["b"] == 0 and r["q0"] == 0 and r["q1"] == 1 and r["c"] == 1 and r["m"] == 256 * MB
        assert r["f"] and 0 <= r["r"] < 2**32 and r["lit"] == {"k": 1}
    assert rows[0]["f"] != rows[1]["f"]


def test_process_func_results(run_plan, compat_data):
    """A PythonScript process returning False fails the task; an Arrow process returning None writes nothing."""
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")]))
    nothing = ArrowComputeNode(ctx, (source,), process_func=lambda rt, tables: None, output_name="nothing")
    exec_plan = run_plan(LogicalPlan(ctx, nothing))
    assert exec_plan.get_output("nothing").num_rows == 0

    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")]))
    failing = PythonScriptNode(ctx, (source,), process_func=lambda rt, inputs, out: False)
    with pytest.raises(Exception, match="False"):
        run_plan(LogicalPlan(ctx, failing), max_fail_count=1)
    with open(os.path.join(run_plan.runtime_ctx.job_root, "log", ".STATUS")) as f:
        assert "failure" in f.read()


def test_output_name_with_dashes_and_dots(run_plan, compat_data):
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")]))
    node = SqlEngineNode(ctx, (source,), "select url from {0}", output_name="url-counts.v2")
    exec_plan = run_plan(LogicalPlan(ctx, node))
    out = exec_plan.get_output("url-counts.v2")
    assert out.num_rows == 100
    assert all(os.path.basename(p).startswith("url-counts.v2") for p in out.resolved_paths)
    assert os.path.exists(os.path.join(run_plan.runtime_ctx.output_root, "url-counts.v2", ".MANIFEST.txt"))
