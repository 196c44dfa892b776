"""smallpond.execution.planner: task ids, partition matching (broadcast) and planning errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import PlanError
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner, node_sql
from smallpond.logical.dataset import ParquetDataSet, SqlQueryDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files, read_parquet, rows


def two_inputs(ctx, files, a, b, dim_a=None, dim_b=None):
    src = DataSourceNode(ctx, ParquetDataSet(files))
    left = EvenlyDistributedPartitionNode(ctx, (src,), a, dimension=dim_a)
    right = EvenlyDistributedPartitionNode(ctx, (src,), b, dimension=dim_b)
    return left, right


@pytest.mark.parametrize(
    "a,b,dim_a,dim_b",
    [(3, 4, None, None), (2, 2, "left_dim", "right_dim")],
    ids=["npartitions differ", "dimensions differ"],
)
def test_incompatible_partitionings_fail_at_planning(make_rt, parquet_files, a, b, dim_a, dim_b):
    ctx = Context()
    left, right = two_inputs(ctx, parquet_files, a, b, dim_a, dim_b)
    join = SqlEngineNode(ctx, (left, right), "select * from {0} join {1} using (id)")  # building is fine
    rt = make_rt()
    with pytest.raises(PlanError) as info:
        Planner(rt).create_exec_plan(LogicalPlan(ctx, join))
    assert isinstance(info.value, AssertionError)
    message = str(info.value)
    assert repr(join) in message and __file__ in message
    assert "npartitions" in message


def test_single_partition_input_is_broadcast(make_rt, tmp_path):
    facts = generate_parquet_files(str(tmp_path / "facts"), nfiles=4, rows_per_file=5)
    dims = generate_parquet_files(str(tmp_path / "dims"), nfiles=2, rows_per_file=3, prefix="dim")
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(facts)),), 4)
    small = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(dims)),), 1)
    join = SqlEngineNode(
        ctx,
        (parts, small),
        "select f.id as fid, d.id as did, {__data_partition__} as part from {0} f cross join {1} d",
    )
    plan = LogicalPlan(ctx, join)
    assert join.num_partitions == 4
    exec_plan = Planner(make_rt()).create_exec_plan(plan)
    join_tasks = [t for t in exec_plan.tasks.values() if t.node_id == join.id]
    assert len(join_tasks) == 4
    broadcast_inputs = {t.input_keys[1] for t in join_tasks}
    assert len(broadcast_inputs) == 1, "every partition reads the same single-partition input"
    assert len({t.input_keys[0] for t in join_tasks}) == 4

    result = run_job(LogicalPlan(ctx, join), make_rt(), num_workers=2)
    table = read_parquet(sorted(result.final_output.resolved_paths))
    got = sorted(rows(table, ["fid", "did", "part"]))
    assert got == sorted((f, d, f // 5) for f in range(20) for d in range(6))


def test_task_ids_and_fingerprints_are_deterministic(make_rt, parquet_files, monkeypatch):
    # one job time for both plannings: with none, a job id of no folder yet takes the clock's
    # second, and the sink's output path (hence its fingerprint) differed when the two plannings
    # fell in two seconds (one failure in a loaded .ci/run)
    monkeypatch.setenv("SP_JOB_TIME", "2026-12-06T17:00:00")

    def plan_once():
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
        hashed = HashPartitionNode(ctx, (DataSetPartitionNode(ctx, (src,), 3),), 4, ["key"])
        node = SqlEngineNode(ctx, (hashed,), "select key, count(*) from {0} group by key")
        exec_plan = Planner(make_rt("same-job")).create_exec_plan(LogicalPlan(ctx, node))
        return {k: (t.fingerprint, t.input_keys) for k, t in exec_plan.tasks.items()}

    first = plan_once()
    assert first == plan_once()
    assert all(k.split("-")[-1].isdigit() and len(k.split("-")[-1]) == 6 for k in first)


def test_fingerprint_changes_with_the_sql(make_rt, parquet_files):
    def fingerprints(query):
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), query)
        exec_plan = Planner(make_rt("same-job")).create_exec_plan(LogicalPlan(ctx, node))
        return {k: t.fingerprint for k, t in exec_plan.tasks.items() if k.startswith("SqlEngineTask")}

    a, b = fingerprints("select * from {0}"), fingerprints("select id from {0}")
    assert a.keys() == b.keys() and a != b


def test_nested_partitions_multiply(make_rt, parquet_files):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    outer = EvenlyDistributedPartitionNode(ctx, (src,), 3, dimension="outer")
    inner = HashPartitionNode(ctx, (outer,), 2, ["key"], dimension="inner", nested=True)
    node = SqlEngineNode(ctx, (inner,), "select {outer} as o, {inner} as i, count(*) as n from {0}")
    assert node.num_partitions == 6
    result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=2)
    table = read_parquet(sorted(result.final_output.resolved_paths))
    assert sorted((o, i) for o, i, _ in rows(table)) == [(o, i) for o in range(3) for i in range(2)]
    assert sum(table.column("n").to_pylist()) == 30


@pytest.mark.parametrize(
    "join",
    [
        "join '{}' l using (k)",
        "join'{}' l using (k)",
        ", '{}' l where f.k = l.k",
        'join (select 1 as one) o on true, "{}" l where f.k = l.k',
        "join query_table(['{}']) l using (k)",
    ],
)
def test_sql_reading_a_file_itself_is_neither_resumed_nor_served_from_the_cache(tmp_path, data_root, join):
    """A join with a lookup file the query names itself: the file is rewritten between runs that
    share the task cache (another job) or the job's commits (the same job again). DuckDB needs no
    space between ``join`` (or ``from``) and the quote: without one the query was served stale; so
    was a file named after a comma of the FROM list, or read through query_table()."""
    facts, lookup = str(tmp_path / "facts.parquet"), str(tmp_path / "lookup.parquet")
    pq.write_table(pa.table({"k": pa.array(range(100), pa.int64())}), facts)

    def run(job: str, weight: int, **rt_options):
        pq.write_table(pa.table({"k": pa.array(range(100), pa.int64()), "w": pa.array([weight] * 100, pa.int64())}), lookup)
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet([facts]))
        node = SqlEngineNode(ctx, (src,), f"select sum(f.k * l.w) as s from {{0}} f {join.format(lookup)}")
        ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(job, None, data_root, **rt_options))
        task = next(t for k, t in ep.tasks.items() if k.startswith("SqlEngineTask"))
        return ep.final_output.to_arrow_table().column("s")[0].as_py(), task

    assert run("one", 1)[0] == 4950
    got, task = run("two", 1000)
    assert got == 4950000, "the first job's output was served from the task cache though the lookup file changed"
    resumed = run("one", 7, task_cache=False)[0]  # (no cache: its commit is the only thing to reuse)
    assert resumed == 4950 * 7, "the job's commit was resumed though the lookup file changed"
    assert task.plan_components["unreused"].startswith("its SQL reads files itself")


@pytest.mark.parametrize("condition", ["e like '%join'", "e = 'came from' or e = 'x'", "e in ('join', 'left join')"])
def test_sql_with_a_string_ending_in_from_or_join_is_reused(tmp_path, data_root, condition):
    """A string that ends in the word ``from`` or ``join`` (``like '%join'``) names no file: the
    query is served from the task cache and resumed like any other. The search for ``join'x.csv'``
    (no space) took the string's closing quote for a file's opening one, so such a query and every
    node after it were never reused."""
    _assert_reused_and_resumed(
        tmp_path, data_root, ["user join", "came from", "x", "left join"], f"select count(*) as n from {{0}} where {condition}"
    )


@pytest.mark.parametrize(
    "query",
    [
        "select count(*) as n, min(e) is distinct from max(e) as d, 'x' as c from {0}",
        "select count(*) as n from {0} where e is distinct from 'x'",
        "select n, st.from, 'x' as c from (select count(*) as n, struct_pack(\"from\" := min(e)) as st from {0})",
        "select count(*) as n, min(e) as from, 'x' as c from {0}",
        "select count(*) as n from {0} -- they came from 'old.parquet'",
    ],
)
def test_sql_with_a_from_that_begins_no_from_list_is_reused(tmp_path, data_root, query):
    """A FROM that begins no FROM list (``a is distinct from b``, a name spelt from: ``st.from``,
    ``as from``) followed by a string names no file: the query is served from the task cache and
    resumed. The FROM list scan (a46c966) took the string after the next comma, and the search
    for a file right after FROM took ``is distinct from 'x'``, and ``from 'x'`` in a comment, for a
    file: never reused."""
    _assert_reused_and_resumed(tmp_path, data_root, ["a", "x", "b"], query)


def _assert_reused_and_resumed(tmp_path, data_root, values, query: str) -> None:
    """``query`` (giving a column ``n``) over a file of column ``e`` holding ``values``: a second
    job is served it from the task cache, and a rerun of the first job resumes it."""
    facts = str(tmp_path / "facts.parquet")
    pq.write_table(pa.table({"e": values}), facts)

    def run(job: str, **rt_options):
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([facts])),), query)
        ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(job, None, data_root, **rt_options))
        return ep.final_output.to_arrow_table().column("n")[0].as_py(), ep.num_reused, ep.num_resumed

    n, reused, _ = run("one")
    assert reused == 0
    got, reused, _ = run("two")
    assert got == n and reused > 0, "not served from the task cache"
    assert run("one", task_cache=False)[2] > 0, "not resumed"


def test_what_sql_reads_files_itself_is_found_in_every_node_that_runs_sql():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    fused = HashPartitionNode(ctx, (src,), 4, ["k"])
    fused.pre_sql = "select * from {0} join read_csv('d.csv') using (k)"  # as optimizer.fuse_sql_into_partition sets it
    assert node_sql(fused) == [fused.pre_sql]
    assert node_sql(SqlEngineNode(ctx, (src,), ["set threads=1", "select 1"])) == ["set threads=1", "select 1"]
    assert node_sql(DataSourceNode(ctx, SqlQueryDataSet("select * from 'x.csv'"))) == ["select * from 'x.csv'"]
    assert node_sql(src) == []


def test_an_output_named_finalresults_is_refused_when_the_job_is_planned(make_rt, parquet_files, tmp_path):
    from smallpond.logical.node import DataSinkNode

    ctx = Context()
    named = SqlEngineNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}", output_name="FinalResults"
    )
    root = SqlEngineNode(ctx, (named,), "select count(*) as c from {0}")
    for plan in (LogicalPlan(ctx, root), LogicalPlan(ctx, named)):
        with pytest.raises(PlanError) as info:
            Planner(make_rt()).create_exec_plan(plan)
        message = str(info.value)
        assert message.startswith("SqlEngineNode-") and " 'FinalResults' created at " in message, message
        assert "test_planner.py" in message and "give this output another name" in message
    # a plan whose root is a sink of its own publishes no FinalResults: nothing to clash with
    sink = DataSinkNode(ctx, (named,), str(tmp_path / "mine"))
    Planner(make_rt()).create_exec_plan(LogicalPlan(ctx, sink))


def test_is_final_node_on_a_sink_that_is_not_the_final_output_warns(make_rt, parquet_files, tmp_path):
    """DataSinkNode(is_final_node=True) (reference §2.4): the final output of a job is its root's
    result (reference §4.3); a sink so marked is that result when it is the root, or a RootNode's
    only input, and is not otherwise: then the flag has no effect and says so, naming the sink."""
    import warnings

    from smallpond.logical.node import DataSinkNode, RootNode

    def plan(root_of):
        ctx = Context()
        q = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")
        marked = DataSinkNode(ctx, (q,), str(tmp_path / "marked"), is_final_node=True)
        other = SqlEngineNode(ctx, (q,), "select count(*) as c from {0}")
        return LogicalPlan(ctx, root_of(ctx, marked, other)), marked

    for root_of in (lambda ctx, m, o: m, lambda ctx, m, o: RootNode(ctx, (m,))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ep = Planner(make_rt()).create_exec_plan(plan(root_of)[0])
        assert ep.final_output_path == str(tmp_path / "marked")
    for root_of in (lambda ctx, m, o: RootNode(ctx, (m, o)), lambda ctx, m, o: SqlEngineNode(ctx, (m, o), "select 1")):
        logical, marked = plan(root_of)
        with pytest.warns(UserWarning, match="is_final_node=True has no effect") as caught:
            Planner(make_rt()).create_exec_plan(logical)
        assert f"{marked!r} created at " in str(caught[0].message) and "test_planner.py" in str(caught[0].message)


def test_an_output_name_of_the_longest_length_runs_in_every_kind_of_task(make_rt, parquet_files):
    from smallpond.logical.base import MAX_OUTPUT_NAME_BYTES
    from smallpond.logical.node import ArrowComputeNode, HashPartitionNode

    def name(c: str) -> str:
        return c * MAX_OUTPUT_NAME_BYTES

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    # 16 partitions of keys 0..9: some are empty and get placeholder files
    parts = HashPartitionNode(ctx, (src,), npartitions=16, hash_columns=["key"], output_name=name("h"))
    sql = SqlEngineNode(ctx, (parts,), "select * from {0}", output_name=name("s"), per_thread_output=True)
    arrow = ArrowComputeNode(ctx, (sql,), process_func=lambda rt, tables: tables[0], output_name=name("a"))
    result = run_job(LogicalPlan(ctx, arrow), make_rt(), num_workers=1)
    assert result.final_output.num_rows == 30
    for c in "hsa":
        assert result.get_output(name(c)).num_rows == 30


def test_a_query_calling_python_udfs_draws_from_its_tasks_seed():
    """Its UDFs may draw from the generators seeded per task: two of its tasks alike in all else
    write other numbers, so the task cache keys each with its task number (as for user Python)."""
    from smallpond.execution.planner import draws_from_task_seed
    from smallpond.logical.udf import UDFType, udf

    @udf(params=[UDFType.INTEGER], return_type=UDFType.DOUBLE)
    def noisy(x):
        import random

        return x + random.random()

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    assert draws_from_task_seed(SqlEngineNode(ctx, (src,), "select noisy(a) from {0}", udfs=[noisy]))
    assert not draws_from_task_seed(SqlEngineNode(ctx, (src,), "select a + 1 from {0}"))
