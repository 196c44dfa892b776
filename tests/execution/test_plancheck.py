"""smallpond.execution.plancheck: a query that cannot bind fails the job before its turn.

Each pipeline puts a slow stage (rows that sleep, writing a marker when done) before the faulty
node, so without the check the job would fail only once the slow stage is over: the tests assert
that the error is the plan check's and that the slow stage had not finished when it came.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest

import smallpond
from smallpond.errors import PlanError
from smallpond.execution import plancheck

SLOW_SECONDS = 3.0
SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])


@pytest.fixture
def check_now(monkeypatch):
    monkeypatch.setenv("SP_PLAN_CHECK", "0")


def _slow_frame(sp, markers: str, rows: int = 4):
    """``rows`` one-row partitions, each held up SLOW_SECONDS by a Python map (schema given, so the
    nodes after it have known inputs)."""
    os.makedirs(markers, exist_ok=True)

    def slow(row):
        time.sleep(SLOW_SECONDS)
        open(os.path.join(markers, str(row["a"])), "w").close()
        return row

    df = sp.from_arrow(pa.table({"a": list(range(rows)), "b": list(range(rows))})).repartition(rows, by_rows=True)
    return df.map(slow, schema=SCHEMA)


HOLD_SECONDS = 60.0


def _held_up_shuffle(ctx, parquet_files, marker: str):
    """``id, key`` of the files, through a stage that waits for ``marker`` (never created; at most
    HOLD_SECONDS), then shuffled by ``key``: what comes after can only run once the stage gives up,
    so a job that ends sooner was ended by the plan check. (The stage's output schema is declared
    as ``map(schema=...)`` declares it.)"""
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import ArrowStreamNode, DataSetPartitionNode, DataSourceNode, HashPartitionNode

    def held_up(runtime_ctx, readers):
        deadline = time.monotonic() + HOLD_SECONDS
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        for reader in readers:
            yield reader.read_all().select(["id", "key"])

    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    rows = DataSetPartitionNode(ctx, (src,), 2, partition_by_rows=True)
    slow = ArrowStreamNode(ctx, (rows,), process_func=held_up)
    slow.output_schema = pa.schema([("id", pa.int64()), ("key", pa.int64())])
    return HashPartitionNode(ctx, (slow,), 2, "key")


@pytest.fixture
def sp(data_root):
    session = smallpond.init(data_root=data_root, num_executors=2, task_cache="off")
    yield session
    session.shutdown()


def _fails_early(df, markers: str) -> PlanError:
    with pytest.raises(PlanError) as info:
        df.to_arrow()
    assert len(os.listdir(markers)) < 4, "the error came only after the slow stage had finished"
    return info.value


def test_a_missing_column_fails_the_job_before_its_node_runs(sp, tmp_path, check_now):
    markers = str(tmp_path / "markers")
    bad = sp.partial_sql("select a, nope from {0}", _slow_frame(sp, markers))
    err = _fails_early(bad, markers)
    text = str(err)
    assert "partial_sql" in text and "SqlEngineNode" in text
    assert f"{__file__}:" in text  # where the node was created
    assert 'Referenced column "nope" not found' in text
    assert "query: select a, nope from {0}" in text


def test_a_syntax_error_is_shown_in_the_query(sp, tmp_path, check_now):
    markers = str(tmp_path / "markers")
    err = _fails_early(sp.partial_sql("selec a from {0}", _slow_frame(sp, markers)), markers)
    assert 'syntax error at or near "selec"' in str(err)
    # a RuntimeError too, as the task's own error (TaskError, upstream's RuntimeError) that a job
    # shorter than the check's delay raises: `except RuntimeError` catches the bad query either way
    assert isinstance(err, RuntimeError)


def test_a_hash_key_that_is_no_column_fails_early_also_when_fused_with_sql(sp, tmp_path, check_now):
    markers = str(tmp_path / "markers")
    # the SQL node is fused into the partition's producers: the check reads the nodes as built
    df = sp.partial_sql("select a + b as c from {0}", _slow_frame(sp, markers)).repartition(2, hash_by="a")
    err = _fails_early(df, markers)
    assert "HashPartitionNode" in str(err) and "repartition" in str(err)
    assert "partition key ['a']" in str(err) and "query:" not in str(err)
    assert "hash_columns=['a']: column 'a' not found in the input (its columns: c)" in str(err)


def test_data_dependent_errors_are_left_to_the_tasks(sp, tmp_path, check_now):
    # a type error may depend on the types read: the check does not report it, and the tasks'
    # own error comes (after the slow stage)
    markers = str(tmp_path / "markers")
    df = _slow_frame(sp, markers, rows=2)
    with pytest.raises(Exception) as info:
        sp.partial_sql("select a::int[] + 1 as x from {0}", df).to_arrow()
    assert not isinstance(info.value, PlanError)
    assert len(os.listdir(markers)) >= 1  # as in test_the_check_is_off_when_asked


def test_the_check_is_off_when_asked(sp, tmp_path, monkeypatch):
    monkeypatch.setenv("SP_PLAN_CHECK", "off")
    markers = str(tmp_path / "markers")
    with pytest.raises(Exception) as info:
        sp.partial_sql("select nope from {0}", _slow_frame(sp, markers, rows=2)).to_arrow()
    assert not isinstance(info.value, PlanError)
    assert 'Referenced column "nope" not found' in str(info.value)
    # the error came from a task, after the slow stage's first partition ended: the query of that
    # partition may fail, and end the job, before the other slow partition ends (under load)
    assert len(os.listdir(markers)) >= 1


def test_good_queries_pass_the_check(sp, tmp_path, check_now):
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]})).repartition(3, by_rows=True)
    out = sp.partial_sql("select a + b as c, {cpu_limit} as n from {0} -- sum;", df).repartition(2, hash_by="c")
    out = sp.partial_sql("select sum(c) as s from {0}", out)
    assert sum(out.to_pandas()["s"].tolist()) == 21


def test_check_delay_reads_the_environment(monkeypatch):
    monkeypatch.delenv("SP_PLAN_CHECK", raising=False)
    assert plancheck.check_delay() == plancheck.DEFAULT_DELAY
    monkeypatch.setenv("SP_PLAN_CHECK", "0")
    assert plancheck.check_delay() == 0.0
    monkeypatch.setenv("SP_PLAN_CHECK", "2.5")
    assert plancheck.check_delay() == 2.5
    for off in ("off", "false", "no"):
        monkeypatch.setenv("SP_PLAN_CHECK", off)
        assert plancheck.check_delay() is None


def test_only_data_independent_errors_are_definite():
    import duckdb

    conn = duckdb.connect()
    conn.execute("create table t (a integer)")
    errors = {}
    for name, sql in {
        "syntax": "selec a from t",
        "column": "select nope from t",
        "table": "select x.a from t",
        "types": "select a::int[] + 1 from t",
        "function": "select no_such_function(a) from t",
    }.items():
        try:
            conn.execute(sql)
        except duckdb.Error as e:
            errors[name] = e
    assert {k for k, e in errors.items() if plancheck.definite(e)} == {"syntax", "column", "table"}


def test_node_graphs_are_checked_too(make_rt, parquet_files, tmp_path, check_now):
    from smallpond.execution.job import run_job
    from smallpond.logical.node import Context, LogicalPlan, SqlEngineNode

    ctx = Context()
    shuffled = _held_up_shuffle(ctx, parquet_files, str(tmp_path / "never"))
    bad = SqlEngineNode(ctx, (shuffled,), "select id, name from {0}")  # name was left out above
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, bad), make_rt(), num_workers=2)
    assert "SqlEngineNode" in str(info.value) and 'Referenced column "name" not found' in str(info.value)
    assert "query: select id, name from {0}" in str(info.value)


def test_an_error_about_a_node_that_ran_is_not_reported():
    # a task of the node finished: its query did bind, whatever the check concluded (the check is
    # then wrong about it, e.g. a schema it could not know exactly), so the job goes on
    from types import SimpleNamespace

    node = SimpleNamespace(id=7, label="SqlEngineNode-000007", location="x.py:1")
    task = SimpleNamespace(node=node, node_id=7, exec_on_scheduler=False)
    check = plancheck.PlanCheck(0.0, lambda: [node])
    check._thread = object()  # started
    check._found = [(node, "query: select nope from {0}", "Binder Error: Referenced column")]
    check.tick(SimpleNamespace(done={"t1": object()}, tasks={"t1": task}), 1.0)  # no error
    check._found = [(node, "query: select nope from {0}", "Binder Error: Referenced column")]
    with pytest.raises(PlanError, match="SqlEngineNode-000007 created at x.py:1"):
        check.tick(SimpleNamespace(done={}, tasks={"t1": task}), 1.0)
    # a task run in the scheduler (a projection's) read no data: it proves nothing
    task.exec_on_scheduler = True
    check._found = [(node, "query: select nope from {0}", "Binder Error: Referenced column")]
    with pytest.raises(PlanError):
        check.tick(SimpleNamespace(done={"t1": object()}, tasks={"t1": task}), 1.0)


def test_a_projection_of_a_missing_column_is_reported(make_rt, parquet_files, tmp_path, check_now):
    # a projection's task only rewrites a description (in the scheduler, at once): its consumers
    # read the columns, so its having finished does not mean its columns exist
    from smallpond.execution.job import run_job
    from smallpond.logical.node import Context, LogicalPlan, ProjectionNode, SqlEngineNode

    ctx = Context()
    projected = ProjectionNode(ctx, _held_up_shuffle(ctx, parquet_files, str(tmp_path / "never")), ["id", "name"])
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, SqlEngineNode(ctx, (projected,), "select * from {0}")), make_rt(), num_workers=2)
    assert "ProjectionNode" in str(info.value) and 'Referenced column "name" not found' in str(info.value)
    assert "columns ['id', 'name']" in str(info.value)


def test_a_range_partition_key_that_is_no_column_is_reported(make_rt, parquet_files, tmp_path, check_now):
    from smallpond.execution.job import run_job
    from smallpond.logical.node import Context, LogicalPlan, RangePartitionNode

    ctx = Context()
    shuffled = _held_up_shuffle(ctx, parquet_files, str(tmp_path / "never"))
    ranged = RangePartitionNode(ctx, (shuffled,), [10, 20], key_column="name", cpu_limit=1, memory_limit=None)
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, ranged), make_rt(), num_workers=2)
    assert "RangePartitionNode" in str(info.value) and "key_column='name': column 'name' not found" in str(info.value)


def test_a_shuffle_key_that_is_no_number_is_reported(make_rt, parquet_files, tmp_path, check_now):
    """A shuffle key of a type that is no number (a string, even of digits) fails every task of
    the shuffle whatever the data: the check reports it before the node's turn."""
    from smallpond.execution.job import run_job
    from smallpond.logical.node import Context, LogicalPlan, ShuffleNode, SqlEngineNode

    ctx = Context()
    shuffled = _held_up_shuffle(ctx, parquet_files, str(tmp_path / "never"))
    keyed = SqlEngineNode(ctx, (shuffled,), "select id, CAST(key % 2 AS VARCHAR) as s from {0}")
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, ShuffleNode(ctx, (keyed,), 2, "s")), make_rt(), num_workers=2)
    assert "ShuffleNode" in str(info.value) and "partition key 's'" in str(info.value)
    assert "the shuffle key 's' is of type VARCHAR in the data, not a number" in str(info.value)


def test_a_dry_run_says_which_nodes_would_fail_and_why(sp, data_root, make_rt, parquet_files):
    # explain(dry_run=True) and the Driver's --dry_run check the plan at once (nothing runs)
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]})).repartition(3, by_rows=True)
    fused = sp.partial_sql("select a + b as c from {0}", df).repartition(2, hash_by="a")
    text = sp.partial_sql("select c, nope from {0}", fused).explain(dry_run=True)
    lines = text.splitlines()
    hash_line = next(i for i, ln in enumerate(lines) if ln.startswith("HashPartitionNode"))
    assert "would fail: the plan check: hash_columns=['a']: column 'a' not found in the input" in lines[hash_line + 1]
    assert "fused into it" not in lines[hash_line + 1]  # the key is the partition's own
    assert "would fail" in text and text.count("would fail: the plan check") >= 3, text
    good = sp.partial_sql("select a + b as c from {0}", df).explain(dry_run=True)
    assert "would fail" not in good

    from smallpond.execution.job import dry_run_plan
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

    ctx = Context()
    bad = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "selec id from {0}")
    text = str(dry_run_plan(LogicalPlan(ctx, bad), make_rt()))
    assert 'would fail: the plan check: Parser Error: syntax error at or near "selec"' in text


def test_a_python_compute_node_with_output_schema_gives_its_consumers_known_inputs(make_rt, parquet_files):
    # ArrowComputeNode and PandasComputeNode write every output with their output_schema=, as the
    # stream nodes do: a query after one is checked (it was skipped as "schema unknown", so the
    # job ran the Python stage first and failed only at the query's turn)
    from smallpond.execution.job import dry_run_plan
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, PandasComputeNode, SqlEngineNode

    for node_type in (ArrowComputeNode, PandasComputeNode):
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
        py = node_type(ctx, (src,), process_func=lambda rt, tables: tables[0], output_schema=pa.schema([("id", pa.int64())]))
        bad = SqlEngineNode(ctx, (py,), "select id, nope from {0}")
        text = str(dry_run_plan(LogicalPlan(ctx, bad), make_rt()))
        assert 'would fail: the plan check: Binder Error: Referenced column "nope" not found' in text, text


def test_a_query_reading_files_itself_is_not_judged_on_their_present_columns(parquet_files, tmp_path):
    # the side file lacks "price" now; the job may rewrite it (a stage before the query writes a
    # new version) before the query runs: the check must not fail the job on today's file
    import threading

    import pyarrow.parquet as pq

    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode

    side = str(tmp_path / "side.parquet")
    pq.write_table(pa.table({"key": pa.array([1], pa.int64())}), side)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    joined = SqlEngineNode(ctx, (src,), f"select {{0}}.id, s.price from {{0}} join read_parquet('{side}') s using (key)")
    scanned = SqlEngineNode(ctx, (src,), f"select price from '{side}'")
    typo = SqlEngineNode(ctx, (src,), f"select nope from {{0}} join read_parquet('{side}') s using (key)")
    syntax = SqlEngineNode(ctx, (src,), f"selec price from read_parquet('{side}')")
    plain = SqlEngineNode(ctx, (src,), "select price from {0}")
    found = plancheck.find_errors([src, joined, scanned, typo, syntax, plain], threading.Event())
    # a column missing from its own input is still definite, but the check cannot tell which
    # side a name was looked for: a query reading files itself is only judged on its syntax
    assert [n for n, _, _ in found] == [syntax, plain]


def test_queries_reading_files_themselves_are_recognised():
    reads = [
        "select * from {0} join read_parquet('x.parquet') using (k)",
        "select * from READ_CSV_AUTO ('a.csv')",
        "select * from parquet_scan(['a', 'b'])",
        "select * from 'data/*.parquet'",
        'select * from {0} join "d.csv" using (k)',
        "select * from{0}join'd.csv'using (k)",
        "select * from/* the lookup */'d.csv'",
        "select * from query('select * from ''x.csv''')",
        "select * from glob('x/*')",
        "attach 'x.db' as x (read_only); select * from {0} join x.t using (k)",
        "select * from parquet_metadata('x.parquet')",
        # a file after a comma of a FROM list, at any depth, after a join's condition or a lateral
        "select * from {0}, 'x.parquet'",
        'select * from {0} as a,"x.parquet"',
        "select * from {0} join {1} using (k) /* c */ , 'x.parquet'",
        "select * from {0} join {1} on {0}.s = 'a', 'x.parquet'",
        "select * from (select * from {0}, lateral (select 1) t, 'x.parquet')",
        # statements that scan a table they name, and SQL in a string run by query() / query_table()
        "describe 'x.parquet'",
        "SUMMARIZE'x.parquet'",
        "pivot 'x.parquet' on x using count(*)",
        "select * from query_table(['x.parquet'])",
        "select * from query(E'select * from \\'x.parquet\\'')",
        "select * from {0} union all by name table 'x.parquet'",
        "merge into t using 'x.parquet' as s on t.k = s.k when matched then update",
        # a reserved word read as a name (b.order) does not end the FROM list; 1.from is 1. and FROM
        "select * from {0} a join {1} b on a.k = b.order, 'x.parquet'",
        "select 1.from {0}, 'x.parquet'",
        "select a.as from {0}, 'x.parquet'",
        "select * from {0} where s is distinct from 'x' union all select * from 'y.csv'",
        "select * -- is distinct\nfrom 'x.parquet'",
        "select * from {0} join {1} using (k) -- keyed\n join 'x.parquet' using (k)",
        "select * from query('select * from ''x.parquet'' -- all')",
    ]
    plain = [
        "select a, b from {0}",
        "select readme from {0}",
        "select * from {0} join {1} using (k)",
        "select 'from' as f from {0}",
        "select * from {0} where e like '%join' or e = 'came from'",
        "select attach, database from {0}",
        # strings after commas that are not in a FROM list
        "select a, 'x', \"b\" from {0}",
        "select * from {0} where a in ('x', 'y') or b = 'describe'",
        "select a, 'b' from {0} group by a, 'b' order by 1, 'x'",
        "select * from {0} union all select 'a', 'b'",
        "with a as (select 'x' as s), b as (select 'y') select * from a, b",
        "select (select max(k) from {1}), 'x' from {0}",
        "select * from {0}, unnest(['a', 'b']) window w as (order by 'x', 'y')",
        "select * from {0} where s = 'query(1)' or s = 'query_table('",  # (query() is code, not text)
        'create table "t" as select * from {0}; select * from t join {1} using (k)',  # (a quoted name after TABLE)
        # no FROM list begins at the FROM of 'is distinct from' nor at a name spelt from
        "select a is distinct from b, 'x' as c from {0}",
        "select a is not distinct from b as d, 'x' as c from {0}",
        "select st.from, 'x' from {0}",
        "select a as from, 'x' as c from {0}",
        "select * from {0} where s is distinct from 'done' or s is not distinct from \"q\"",
        "select * from {0} -- pulled from 'elsewhere', really",  # (a comment runs nothing)
        "select * from {0} /* came from 'old.parquet' /* nested */ */",
    ]
    assert all(plancheck.reads_own_data(q) for q in reads)
    assert not any(plancheck.reads_own_data(q) for q in plain)


_CHECK_IN_A_FRESH_PROCESS = """
import sys, threading
import pyarrow.parquet as pq
from smallpond.execution import plancheck
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context, DataSourceNode, HashPartitionNode, LogicalPlan, ProjectionNode, ShuffleNode, SqlEngineNode
)
ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet([sys.argv[1]]))
sql = SqlEngineNode(ctx, (src,), "select id, key, id % 3 as b from {0}")
hashed = HashPartitionNode(ctx, (ProjectionNode(ctx, sql, ["id", "key", "b"]),), 3, "key")
shuffled = ShuffleNode(ctx, (hashed,), 3, data_partition_column="b")
nodes = [src, sql, hashed.input_deps[0], hashed, shuffled]
assert plancheck.find_errors(nodes, threading.Event()) == []
print("pandas" in sys.modules)
"""


def test_the_check_does_not_import_pandas(parquet_files):
    # pyarrow's Schema.empty_table() imports pandas (pa.array's check for pandas objects): ~0.25 s
    # of CPU in the scheduler's process of every job longer than the delay, beside its workers
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _CHECK_IN_A_FRESH_PROCESS, parquet_files[0]], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"], proc.stdout


def test_looking_for_files_in_a_long_query_costs_a_few_passes_over_it():
    """sql_reads_files looks at what precedes each keyword (is it a name, is it IS DISTINCT): it
    takes only the text just before it, so a query of 1.2 MB (20,000 selects in a union) costs a
    few passes of the lexer over it (its searches, its code, the FROM list scan), not one copy of
    all before it per keyword (~12 passes at this size, growing with the square of the length)."""
    import time

    from smallpond.execution.ops.duckdb import sql_reads_files
    from smallpond.io.sqltext import without_quoted_text

    query = " union all ".join(f"select a, b, 'x{i}' as s from {{0}} where c = {i}" for i in range(20000))
    start = time.process_time()
    without_quoted_text(query, marks=True)
    one_pass = time.process_time() - start
    start = time.process_time()
    assert not sql_reads_files([query])
    assert time.process_time() - start < 4 * one_pass + 0.1  # (~2.7 passes here; 12 with the copies)
