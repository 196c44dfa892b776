"""Python, Arrow and pandas nodes (process functions and subclasses), through real jobs."""

from __future__ import annotations

import functools
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.task import StreamOutput
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    LogicalPlan,
    PandasBatchNode,
    PandasComputeNode,
    ProjectionNode,
    PythonScriptNode,
    RootNode,
    SqlEngineNode,
)


@pytest.fixture
def urls(tmp_path):
    t = pa.table({"url": [f"host{i % 7}.com/p{i}" for i in range(200)], "n": list(range(200))})
    for i in range(5):
        pq.write_table(t.slice(i * 40, 40), str(tmp_path / f"u{i}.parquet"))
    return t, str(tmp_path / "u*.parquet")


def run(ctx, root, tmp_path):
    return run_job(LogicalPlan(ctx, root), make_runtime_ctx(None, None, str(tmp_path / "root")))


class CopyCompute(ArrowComputeNode):
    def process(self, runtime_ctx, input_tables):
        assert runtime_ctx.task.partition_infos
        return input_tables[0]


class CopyPandas(PandasComputeNode):
    def process(self, runtime_ctx, input_dfs):
        assert isinstance(input_dfs[0], pd.DataFrame)
        return input_dfs[0]


def stream_copy(runtime_ctx, readers):
    for i, batch in enumerate(readers[0]):
        yield StreamOutput(pa.Table.from_batches([batch]), batch_indices=[i], force_checkpoint=True)


def batch_concat(runtime_ctx, tables):
    return pa.concat_tables([t.select(["n"]) for t in tables])


def pandas_batch(runtime_ctx, dfs):
    return dfs[0][["n"]]


def test_arrow_and_pandas_nodes_copy_input(urls, tmp_path):
    table, pattern = urls
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([pattern])),), 3)
    nodes = [
        CopyCompute(ctx, (parts,), output_name="compute"),
        CopyPandas(ctx, (parts,), output_name="pandas"),
        ArrowStreamNode(ctx, (parts,), process_func=stream_copy, streaming_batch_size=9, output_name="stream"),
        PandasBatchNode(ctx, (parts,), process_func=pandas_batch, streaming_batch_size=11, output_name="pandas_batch"),
    ]
    ep = run(ctx, RootNode(ctx, nodes), tmp_path)
    for name in ("compute", "pandas", "stream"):
        got = ep.get_output(name).to_arrow_table().sort_by("n")
        assert got.column("n").to_pylist() == list(range(200)), name
        assert got.column("url").to_pylist() == table.column("url").to_pylist(), name
    assert sorted(ep.get_output("pandas_batch").to_arrow_table().column("n").to_pylist()) == list(range(200))


def test_arrow_batch_over_inputs_of_different_lengths(urls, tmp_path):
    _, pattern = urls
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([pattern]))
    short = SqlEngineNode(ctx, (src,), "select n from {0} where n < 30")
    node = ArrowBatchNode(ctx, (src, short), process_func=batch_concat, streaming_batch_size=25, output_name="cat")
    ep = run(ctx, node, tmp_path)
    assert ep.get_output("cat").to_arrow_table().num_rows == 230


def test_duckdb_reader_with_expression_columns(urls, tmp_path):
    _, pattern = urls
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([pattern]))
    proj = ProjectionNode(ctx, src, ["n", "string_split(url, '/')[1] as host"], generated_columns=["filename"])
    node = CopyCompute(ctx, (proj,), use_duckdb_reader=True, output_name="hosts")
    ep = run(ctx, node, tmp_path)
    t = ep.get_output("hosts").to_arrow_table()
    assert set(t.column_names) == {"n", "host", "filename"}
    assert set(t.column("host").to_pylist()) == {f"host{i}.com" for i in range(7)}


def choose(runtime_ctx, input_datasets, output_path, k):
    t = input_datasets[0].to_arrow_table().slice(0, k)
    pq.write_table(t, os.path.join(output_path, "chosen.parquet"))
    return True


def test_python_script_node_with_partial(urls, tmp_path):
    _, pattern = urls
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([pattern])),), 3)
    a = PythonScriptNode(ctx, (parts,), process_func=functools.partial(choose, k=5), output_name="five")
    b = PythonScriptNode(ctx, (parts,), process_func=functools.partial(choose, k=10), output_name="ten")
    ep = run(ctx, RootNode(ctx, (a, b)), tmp_path)
    assert ep.get_output("five").num_rows == 15
    assert ep.get_output("ten").num_rows == 30


def fails(runtime_ctx, input_datasets, output_path):
    return False


def fails_once(marker, runtime_ctx, input_datasets, output_path):
    """Reports a failure (returns False) the first time, as code meeting a transient error would."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        return False
    with open(os.path.join(output_path, "ok.txt"), "w") as f:
        f.write("ok")
    return True


def test_python_script_returning_false_fails_after_its_retries(urls, tmp_path):
    from smallpond.errors import JobFailed

    ctx = Context()
    node = PythonScriptNode(ctx, (DataSourceNode(ctx, None),), process_func=fails)
    rt = make_runtime_ctx(None, None, str(tmp_path / "root"))
    with pytest.raises(JobFailed, match="returned False") as info:
        run_job(LogicalPlan(ctx, node), rt, max_retry_count=2)
    assert "attempt 2" in str(info.value)  # retried, as upstream retried a task that returned False


def test_python_script_returning_false_once_is_retried(urls, tmp_path):
    ctx = Context()
    node = PythonScriptNode(ctx, (DataSourceNode(ctx, None),), process_func=functools.partial(fails_once, str(tmp_path / "m")))
    ep = run(ctx, node, tmp_path)
    assert [os.path.basename(p) for p in ep.final_output.resolved_paths] == ["ok.txt"]


def test_partition_placeholder_and_rand_seed(urls, tmp_path):
    _, pattern = urls
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([pattern])),), 4, partition_by_rows=True)
    node = SqlEngineNode(ctx, (parts,), "select {__data_partition__} as p, {rand_seed} as seed, count(*) as c from {0}")
    ep = run(ctx, node, tmp_path)
    t = ep.final_output.to_arrow_table().sort_by("p")
    assert t.column("p").to_pylist() == [0, 1, 2, 3]
    assert t.column("c").to_pylist() == [50, 50, 50, 50]
    assert len(set(t.column("seed").to_pylist())) == 4


def stream_halves_after_first(runtime_ctx, readers):
    for i, batch in enumerate(readers[0]):
        n = batch.column(batch.schema.get_field_index("n"))
        yield pa.table({"n": n if i == 0 else pa.compute.add(n.cast(pa.float64()), 0.5)})


def stream_int32_after_first(runtime_ctx, readers):
    for i, batch in enumerate(readers[0]):
        n = batch.column(batch.schema.get_field_index("n"))
        yield pa.table({"n": n if i == 0 else n.cast(pa.int32())})


def test_stream_output_is_held_to_the_first_batch_schema_without_changing_values(urls, tmp_path):
    from smallpond.errors import JobFailed

    _, pattern = urls
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([pattern]))
    node = ArrowStreamNode(ctx, (src,), process_func=stream_halves_after_first, streaming_batch_size=50)
    with pytest.raises(JobFailed) as e:
        run(ctx, node, tmp_path)
    text = str(e.value.errors[0])
    assert "'n'" in text and "truncated" in text and "same column types" in text, text
    # a batch whose values all fit is cast (int32 into int64), not refused
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([pattern]))
    node = ArrowStreamNode(ctx, (src,), process_func=stream_int32_after_first, streaming_batch_size=50, output_name="s")
    got = run(ctx, node, tmp_path / "ok").get_output("s").to_arrow_table()
    assert got.schema.field("n").type == pa.int64() and sorted(got.column("n").to_pylist()) == list(range(200))
