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
    HashPartitionNode,
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


def no_columns(runtime_ctx, tables):
    return tables[0].select([])


def no_columns_stream(runtime_ctx, readers):
    for batch in readers[0]:
        yield pa.Table.from_batches([batch]).select([])


@pytest.mark.parametrize("kind", ["compute", "stream"])
def test_output_rows_without_columns_fail_instead_of_vanishing(urls, tmp_path, kind):
    """Parquet keeps no rows without columns: a function returning 200 rows of no columns had an
    output of 0 rows. It fails, fast, saying so."""
    from smallpond.errors import JobFailed

    _, pattern = urls
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([pattern]))
    if kind == "compute":
        node = ArrowComputeNode(ctx, (src,), process_func=no_columns)
    else:
        node = ArrowStreamNode(ctx, (src,), process_func=no_columns_stream, streaming_batch_size=50)
    with pytest.raises(JobFailed, match="row\\(s\\) with no columns") as info:
        run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path / "root")), max_retry_count=3)
    assert "attempt 0" in str(info.value)  # a user error: not retried


class ReturnsArrow(PandasComputeNode):
    def process(self, runtime_ctx, input_dfs):
        return pa.Table.from_pandas(input_dfs[0])


class BatchReturnsList(PandasBatchNode):
    def process(self, runtime_ctx, input_dfs):
        return input_dfs[0].to_dict("records")


@pytest.mark.parametrize("cls", [ReturnsArrow, BatchReturnsList])
def test_pandas_node_returning_no_dataframe_says_so(urls, tmp_path, cls):
    """Was: AttributeError: 'list' object has no attribute 'is_unique' (from pyarrow)."""
    from smallpond.errors import JobFailed

    _, pattern = urls
    ctx = Context()
    node = cls(ctx, (DataSourceNode(ctx, ParquetDataSet([pattern])),))
    with pytest.raises(JobFailed, match=f"process function of {cls.__name__} must return a pandas DataFrame") as info:
        run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path / "root")), max_retry_count=3)
    assert "attempt 0" in str(info.value)  # a user error: not retried


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


# -- empty partitions of a Python node ----------------------------------------------------------------

KC = pa.schema([("k", pa.string()), ("c", pa.int64())])


def pass_through(runtime_ctx, readers):
    for batch in readers[0]:
        yield batch


def none_when_empty(runtime_ctx, tables):
    return tables[0] if tables[0].num_rows else None


def _one_key_plan(tmp_path, rows: int, *, kind="stream", after="select * from {0}", **node_kw):
    """hash partition(3) of one key (two partitions empty) -> SQL -> a Python node -> SQL ``after`` as 'res'."""
    path = str(tmp_path / f"onekey-{rows}.parquet")
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64()), "k": pa.array(["only"] * rows, pa.string())}), path)
    ctx = Context()
    parts = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), npartitions=3, hash_columns=["k"])
    agg = SqlEngineNode(ctx, (parts,), "select k, count(*) c from {0} group by k")
    if kind == "stream":
        py = ArrowStreamNode(ctx, (agg,), process_func=pass_through, **node_kw)
    else:
        py = ArrowComputeNode(ctx, (agg,), process_func=none_when_empty, **node_kw)
    if after == "rehash":
        rehashed = HashPartitionNode(ctx, (py,), 2, hash_columns=["k"])
        after_node = SqlEngineNode(ctx, (rehashed,), "select k, c from {0}", output_name="res")
    else:
        after_node = SqlEngineNode(ctx, (py,), after, output_name="res")
    return ctx, after_node


def _published(ep):
    """The schemas of the Parquet files published as 'res' (what a reader of output/res sees)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.dirname(ep.final_output_path) + "/res") for f in fs]
    return [pq.read_schema(f).names for f in sorted(files) if f.endswith(".parquet")]


@pytest.mark.parametrize("kind", ["stream", "compute"])
def test_sql_over_a_python_node_with_empty_partitions_adds_no_placeholder_column(tmp_path, kind, log_messages):
    ctx, node = _one_key_plan(tmp_path, 1000, kind=kind)
    ep = run(ctx, node, tmp_path)
    got = ep.get_output("res").to_arrow_table()
    assert got.column_names == ["k", "c"] and got.to_pylist() == [{"k": "only", "c": 1000}]
    assert _published(ep) == [["k", "c"]]  # the empty partitions publish no file with made-up columns
    assert not any("columns are unknown" in m for m in log_messages)


def test_sql_union_by_name_of_an_empty_python_partition_and_rows_adds_no_placeholder_column(tmp_path):
    """Two of the stream node's three partitions are empty with unknown columns; the other input
    has rows in all three: ``union all by name`` wrote a column ``__empty__`` of nulls there."""
    other_path = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"k": [f"key{i}" for i in range(30)], "c": pa.array(range(30), pa.int64())}), other_path)
    ctx, res = _one_key_plan(tmp_path, 1000)
    py = res.input_deps[0]
    other = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([other_path])),), npartitions=3, hash_columns=["k"])
    other = SqlEngineNode(ctx, (other,), "select k, c from {0}")
    union = SqlEngineNode(ctx, (py, other), "select * from {0} union all by name select * from {1}", output_name="union")
    ep = run(ctx, union, tmp_path)
    got = ep.get_output("union").to_arrow_table()
    assert got.column_names == ["k", "c"]
    assert sorted(got.to_pylist(), key=str) == sorted(
        [{"k": "only", "c": 1000}] + [{"k": f"key{i}", "c": i} for i in range(30)], key=str
    )
    files = [
        p for d, _, fs in os.walk(os.path.dirname(ep.final_output_path) + "/union") for p in (os.path.join(d, f) for f in fs)
    ]
    assert [pq.read_schema(f).names for f in sorted(files) if f.endswith(".parquet")] == [["k", "c"]] * 3


def test_a_result_empty_everywhere_with_unknown_columns_says_so(tmp_path, log_messages):
    ctx, node = _one_key_plan(tmp_path, 0)
    ep = run(ctx, node, tmp_path)
    assert ep.get_output("res").to_arrow_table().column_names == []
    assert _published(ep) == []
    said = [m for m in log_messages if "columns are unknown" in m]
    assert len(said) == 1 and "/res" in said[0] and "output_schema=" in said[0], log_messages


@pytest.mark.parametrize("kind", ["stream", "compute"])
@pytest.mark.parametrize("rows", [1000, 0])
def test_a_declared_output_schema_gives_empty_partitions_their_columns(tmp_path, kind, rows, log_messages):
    ctx, node = _one_key_plan(tmp_path, rows, kind=kind, output_schema=KC)
    ep = run(ctx, node, tmp_path)
    got = ep.get_output("res").to_arrow_table()
    assert got.column_names == ["k", "c"] and got.num_rows == (1 if rows else 0)
    assert _published(ep) == [["k", "c"]] * 3
    assert not any("columns are unknown" in m for m in log_messages)


def test_partitioning_an_empty_output_with_unknown_columns(tmp_path):
    ctx, node = _one_key_plan(tmp_path, 1000, after="rehash")
    ep = run(ctx, node, tmp_path)
    assert ep.get_output("res").to_arrow_table().to_pylist() == [{"k": "only", "c": 1000}]


def test_sql_naming_columns_of_an_empty_output_with_unknown_columns_says_to_declare_them(tmp_path, no_plan_check):
    from smallpond.errors import JobFailed

    ctx, node = _one_key_plan(tmp_path, 1000, after="select k, sum(c) as c from {0} group by k")
    with pytest.raises(JobFailed) as e:
        run(ctx, node, tmp_path)
    assert "output_schema=" in str(e.value.errors[0]) and "schema=" in str(e.value.errors[0])


def test_output_schema_must_be_a_pyarrow_schema():
    from smallpond.errors import ParameterError

    ctx = Context()
    with pytest.raises(ParameterError, match="output_schema"):
        ArrowStreamNode(ctx, (DataSourceNode(ctx, None),), process_func=pass_through, output_schema={"k": "string"})


def test_a_plan_rooted_in_several_sinks_is_not_said_to_have_an_empty_result(tmp_path, log_messages):
    """A RootNode over the user's sinks (the Driver's multi-output shape) has no rows of its own;
    FinalResults over it is empty by design, not a Python function that produced nothing."""
    from smallpond.logical.node import DataSinkNode

    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"k": ["a", "b"]}), path)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([path]))
    sinks = [DataSinkNode(ctx, (src,), str(tmp_path / name)) for name in ("a", "b")]
    run(ctx, RootNode(ctx, tuple(sinks)), tmp_path)
    assert all(os.path.exists(str(tmp_path / name / ".MANIFEST.txt")) for name in ("a", "b"))
    assert not any("columns are unknown" in m for m in log_messages), log_messages


def test_stream_output_takes_a_column_without_nulls_in_its_first_batch_as_nullable(tmp_path):
    """A column that has no NULL in the first file (DuckDB and other writers mark such a column
    REQUIRED) and NULLs in the next: the output file was opened with the first batch's
    non-nullable field, and the next batch failed every attempt ("Column 'f' is declared
    non-nullable but contains nulls"). Found by the differential fuzzer (a hash partition's files
    into an ArrowStreamNode)."""
    required = pa.schema([pa.field("k", pa.int64()), pa.field("f", pa.float64(), nullable=False)])
    pq.write_table(pa.table({"k": [1, 2], "f": [1.0, 2.0]}, schema=required), str(tmp_path / "a.parquet"))
    pq.write_table(pa.table({"k": [3, 4], "f": [None, 4.0]}), str(tmp_path / "b.parquet"))
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "*.parquet")]))
    node = ArrowStreamNode(ctx, (src,), process_func=stream_copy, streaming_batch_size=2)
    table = run(ctx, node, tmp_path).final_output.to_arrow_table()
    assert sorted(zip(table.column("k").to_pylist(), table.column("f").to_pylist())) == [(1, 1.0), (2, 2.0), (3, None), (4, 4.0)]
