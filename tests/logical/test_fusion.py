"""Fewer passes: a SQL node read only by a hash partition or shuffle runs inside its producers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    ShuffleNode,
    SqlEngineNode,
)
from smallpond.logical.optimizer import optimize
from tests.datagen import read_parquet


def user_sort_plan(inputs, fused_sql_kwargs=None, extra_consumer=False, shuffle_kwargs=None):
    """The reference's sort shape: partitions → SQL adding a bucket → shuffle by it → sort."""
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), 4)
    bucket = SqlEngineNode(
        ctx, (parts,), "select *, id % 3 as bucket, {__data_partition__} as src from {0}", **(fused_sql_kwargs or {})
    )
    shuffled = ShuffleNode(ctx, (bucket,), 3, data_partition_column="bucket", **(shuffle_kwargs or {}))
    ordered = SqlEngineNode(ctx, (shuffled,), "select id, bucket, src from {0} order by id")
    if extra_consumer:  # another node reads the bucket node too: it must be computed once, as is
        from smallpond.logical.node import ArrowComputeNode, RootNode

        other = ArrowComputeNode(ctx, (bucket,), process_func=_first_table, output_name="other")
        return LogicalPlan(ctx, RootNode(ctx, [ordered, other])), bucket, shuffled
    return LogicalPlan(ctx, ordered), bucket, shuffled


def _first_table(runtime_ctx, tables):
    return tables[0]


def task_kinds(exec_plan):
    kinds = {}
    for t in exec_plan.tasks.values():
        kinds[type(t).__name__] = kinds.get(type(t).__name__, 0) + 1
    return kinds


def expected(inputs):
    t = read_parquet(inputs)
    return sorted((i, i % 3) for i in t.column("id").to_pylist())


def result_rows(exec_plan):
    t = exec_plan.final_output.to_arrow_table()
    return t


def test_sql_before_a_shuffle_runs_in_its_producers(make_rt, parquet_files):
    plan, bucket, shuffled = user_sort_plan(parquet_files)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    kinds = task_kinds(exec_plan)
    # one producer per input partition runs the bucket query; no task of the bucket node alone
    assert kinds["HashPartitionTask"] == 4
    assert not any(t.node_id == int(bucket.id) for t in exec_plan.tasks.values())
    t = result_rows(exec_plan)
    assert sorted(zip(t.column("id").to_pylist(), t.column("bucket").to_pylist())) == expected(parquet_files)
    # placeholders in the fused query see the input partition the producer reads
    assert sorted(set(t.column("src").to_pylist())) == [0, 1, 2]
    for part in range(3):
        ids = [i for i, b in zip(t.column("id").to_pylist(), t.column("bucket").to_pylist()) if b == part]
        assert all(i % 3 == part for i in ids)


@pytest.mark.parametrize("why", ["output_name", "two_consumers", "use_parquet_writer"])
def test_not_fused_when_the_sql_result_is_needed_elsewhere(make_rt, parquet_files, why):
    """Nor when the shuffle asks for ``use_parquet_writer``: its one-file-per-partition writer reads
    Parquet files (a fused producer runs the query and partitions it in one DuckDB COPY)."""
    kwargs = {"output_name": "buckets"} if why == "output_name" else {}
    shuffle_kwargs = {"use_parquet_writer": True} if why == "use_parquet_writer" else {}
    plan, bucket, _ = user_sort_plan(parquet_files, kwargs, extra_consumer=why == "two_consumers", shuffle_kwargs=shuffle_kwargs)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert sum(1 for t in exec_plan.tasks.values() if t.node_id == int(bucket.id)) == 4
    if why == "use_parquet_writer":
        t = exec_plan.final_output.to_arrow_table()
        assert sorted(zip(t.column("id").to_pylist(), t.column("bucket").to_pylist())) == expected(parquet_files)
    if why == "output_name":
        assert exec_plan.get_output("buckets").num_rows == 30


def test_optimizer_keeps_the_users_graph_and_explains_the_fusion(parquet_files):
    plan, bucket, shuffled = user_sort_plan(parquet_files)
    before = plan.explain_str()
    opt = optimize(plan.root_node, set(), {})
    assert plan.explain_str() == before, "the user's nodes must not change"
    text = LogicalPlan(plan.ctx, opt).explain_str()
    assert "fused:" in text and repr(bucket) in text and "one pass per input partition" in text
    assert f"{bucket!r} [" not in text, "the fused SQL node is no longer a step of its own"


def test_dataframe_map_then_hash_repartition_is_one_pass(tmp_path, parquet_files):
    import smallpond

    with smallpond.init(data_root=str(tmp_path / "root"), num_executors=2) as sp:
        _check_dataframe_fusion(sp, parquet_files)


def _check_dataframe_fusion(sp, parquet_files):
    df = sp.read_parquet(parquet_files).repartition(3).map("id, id * 10 as x").repartition(2, hash_by="id")
    text = df.explain()
    assert "fused:" in text.split("== Optimized plan ==")[1]
    got = df.to_arrow()
    t = read_parquet(parquet_files)
    want = pa.table({"id": t.column("id"), "x": pc.multiply(t.column("id"), 10)})
    assert sorted(got.select(["id", "x"]).to_pylist(), key=lambda r: r["id"]) == sorted(want.to_pylist(), key=lambda r: r["id"])


def test_hash_partition_node_api_fuses_too(make_rt, parquet_files):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 3)
    sql = SqlEngineNode(ctx, (parts,), "select id, name from {0} where id % 2 = 0")
    hashed = HashPartitionNode(ctx, (sql,), 2, ["id"])
    exec_plan = run_job(LogicalPlan(ctx, hashed), make_rt(), num_workers=2)
    assert task_kinds(exec_plan)["HashPartitionTask"] == 3
    assert sorted(exec_plan.final_output.to_arrow_table().column("id").to_pylist()) == list(range(0, 30, 2))


def test_sql_fused_into_a_partition_runs_as_it_would_alone(tmp_path):
    """The producer runs the SQL node's query as a subquery, as the node alone would: a second
    statement after ';' is the parser error it is there (a view of the text took the first
    statement only, and the rows of the input were silently replaced by 42), and a trailing ';'
    or comment is cut as there."""
    import smallpond

    with smallpond.init(data_root=str(tmp_path / "root"), num_executors=2) as sp:
        df = sp.from_items([{"a": i} for i in range(10)]).repartition(2, by_rows=True)
        for query in ("select * from {0};", "select * from {0} -- all"):
            out = sp.partial_sql(query, df).repartition(2, hash_by="a")
            assert "fused:" in out.explain().split("== Optimized plan ==")[1]
            assert sorted(r["a"] for r in out.take_all()) == list(range(10))
        two = sp.partial_sql("select 42 as a; select * from {0}", df).repartition(2, hash_by="a")
        assert "fused:" in two.explain().split("== Optimized plan ==")[1]
        with pytest.raises(Exception, match="syntax error"):
            two.take_all()


@pytest.mark.parametrize("into", ["sql", "shuffle"])
def test_nodes_built_in_two_folders_are_not_fused(tmp_path, monkeypatch, into):
    """A fused node runs in one folder (its outer node's ``created_cwd``): a child built after an
    os.chdir whose query reads a relative path would read it from the wrong folder."""
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(["x.parquet"])),), 4)
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    plans = []
    for second in ("A", "B"):
        monkeypatch.chdir(tmp_path / "A")
        child = SqlEngineNode(ctx, (parts,), "select *, id % 3 as bucket from {0}")
        monkeypatch.chdir(tmp_path / second)
        if into == "sql":
            outer = SqlEngineNode(ctx, (child,), "select * from {0} where bucket > 0")
        else:
            outer = ShuffleNode(ctx, (child,), 3, data_partition_column="bucket")
        assert (child.created_cwd, outer.created_cwd) == (str(tmp_path / "A"), str(tmp_path / second))
        plans.append(optimize(outer, set(), {}))
    same, apart = plans
    assert same.input_deps == (parts,) and getattr(same, "fused_from", None)  # one folder: fused
    assert apart.input_deps[0].sql_queries == ["select *, id % 3 as bucket from {0}"]  # two: not
    assert getattr(apart, "fused_from", None) is None
