"""Acceptance: bad input fails fast with an error naming the culprit, and no sink holds a partial result.

* bad node parameters fail when the node is built: the message names the parameter, the bad value
  and the user's call site (file:line);
* a missing input path, a corrupt Parquet file and bad SQL fail the job at once (no retries): the
  error names the file or the SQL text and where the node was created;
* after a failed job a DataSinkNode's output_path does not exist, or still holds exactly the
  previous complete result.
"""

from __future__ import annotations

import os
from typing import Callable, List

import pytest

from smallpond.errors import JobFailed, ParameterError, TaskError
from smallpond.execution.job import run_job
from smallpond.logical.dataset import CsvDataSet, ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LimitNode,
    LogicalPlan,
    Node,
    ShuffleNode,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files, parquet_paths_in, write_corrupt_parquet

THIS_FILE = os.path.abspath(__file__)


def innermost_line_here(excinfo) -> int:
    """The line of this file closest to where the exception was raised (the node's call site)."""
    line, tb = None, excinfo.tb
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == THIS_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def source(ctx: Context) -> Node:
    return DataSourceNode(ctx, ParquetDataSet(["/nonexistent/x.parquet"]))


BAD_NODES = {
    "npartitions=0": (lambda ctx: DataSetPartitionNode(ctx, (source(ctx),), 0), ["npartitions", "got 0"]),
    "hash npartitions=0": (lambda ctx: HashPartitionNode(ctx, (source(ctx),), 0, ["a"]), ["npartitions", "got 0"]),
    "output_name with a slash": (
        lambda ctx: SqlEngineNode(ctx, (source(ctx),), "select * from {0}", output_name="a/b"),
        ["output_name", "'a/b'"],
    ),
    "sink relative output_path": (
        lambda ctx: DataSinkNode(ctx, (source(ctx),), "relative/dir"),
        ["output_path", "absolute", "'relative/dir'"],
    ),
    "sink output_path with a line break": (
        lambda ctx: DataSinkNode(ctx, (source(ctx),), "/tmp/out\nx"),
        ["output_path", "line break", "'/tmp/out\\nx'"],
    ),
    "sink input with a line break": (
        lambda ctx: DataSinkNode(
            ctx,
            (DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(["/nonexistent/a\rb.parquet"])),), 2),),
            "/tmp/o",
            type="manifest",
        ),
        ["input path", "'/nonexistent/a\\rb.parquet'", "line break", ".MANIFEST.txt"],
    ),
    "node relative output_path": (
        lambda ctx: SqlEngineNode(ctx, (source(ctx),), "select 1", output_path="relative/dir"),
        ["output_path", "absolute", "'relative/dir'"],
    ),
    "hash_columns not a list": (
        lambda ctx: HashPartitionNode(ctx, (source(ctx),), 2, 1),
        ["hash_columns", "got 1"],
    ),
    "shuffle by an empty column": (
        lambda ctx: ShuffleNode(ctx, (source(ctx),), 2, data_partition_column=" "),
        ["data_partition_column", "got ' '"],
    ),
    "engine_type": (
        lambda ctx: HashPartitionNode(ctx, (source(ctx),), 2, ["a"], engine_type="polars"),
        ["engine_type", "'polars'", "duckdb"],
    ),
    "negative limit": (lambda ctx: LimitNode(ctx, source(ctx), -1), ["limit", "got -1"]),
    "unbalanced brace in SQL": (
        lambda ctx: SqlEngineNode(ctx, (source(ctx),), "select '{' from {0}"),
        ["{{", "select '{' from {0}"],
    ),
    "rows and column": (
        lambda ctx: DataSetPartitionNode(ctx, (source(ctx),), 2, partition_by_rows=True, data_partition_column="k"),
        ["partition_by_rows", "data_partition_column"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_NODES))
def test_bad_node_parameters_fail_at_build_time(case):
    build, expected = BAD_NODES[case]
    with pytest.raises(ParameterError) as info:
        build(Context())
    message = str(info.value)
    for text in expected:
        assert text in message
    assert f"{THIS_FILE}:{innermost_line_here(info)}" in message, message
    # upstream raised bare assertions here; scripts that catch AssertionError keep working
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ValueError)


def run_failing(plan: LogicalPlan, rt, log_messages: List[str]) -> TaskError:
    with pytest.raises(JobFailed) as info:
        run_job(plan, rt, num_workers=2)
    assert not [m for m in log_messages if "retrying" in m], "a user error was retried"
    err = info.value.errors[0]
    assert isinstance(err, TaskError)
    assert err.attempt == 0
    tasks_dir = os.path.join(rt.log_root, "tasks")
    retried = [f for f in os.listdir(tasks_dir) if not f.endswith(".0.log")] if os.path.isdir(tasks_dir) else []
    assert not retried, retried
    with open(rt.job_status_path) as f:
        assert f.read().split()[-1].startswith("failure@")
    return err


def assert_no_partial_sink(sink: str) -> None:
    assert not os.path.exists(sink), f"{sink} exists after a failed job: {os.listdir(sink)}"
    parent = os.path.dirname(sink)
    leftovers = [n for n in os.listdir(parent) if n.startswith(os.path.basename(sink) + ".")]
    assert not leftovers, f"staging leftovers next to the sink: {leftovers}"


def sink_plan(build: Callable[[Context], Node], sink: str) -> LogicalPlan:
    ctx = Context()
    return LogicalPlan(ctx, DataSinkNode(ctx, (build(ctx),), sink))


@pytest.mark.parametrize("kind", ["file", "glob", "csv"])
def test_missing_input_path(tmp_path, make_rt, log_messages, kind):
    missing = {
        "file": str(tmp_path / "nope.parquet"),
        "glob": str(tmp_path / "nothing_here" / "*.parquet"),
        "csv": str(tmp_path / "nope.csv"),
    }[kind]
    dataset = CsvDataSet([missing], {"a": "varchar"}) if kind == "csv" else ParquetDataSet([missing])
    sink = str(tmp_path / "sink")
    plan = sink_plan(lambda ctx: SqlEngineNode(ctx, (DataSourceNode(ctx, dataset),), "select * from {0}"), sink)
    err = run_failing(plan, make_rt(), log_messages)
    assert missing in err.message
    assert err.location.startswith(THIS_FILE + ":")
    assert_no_partial_sink(sink)


@pytest.fixture
def inputs_with_corrupt_file(tmp_path) -> List[str]:
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=10)
    write_corrupt_parquet(files[1])
    return files


CORRUPT_READERS = {
    # one partition per file: the other partitions succeed, the job still fails as a whole
    "sql": lambda ctx, files: SqlEngineNode(
        ctx, (DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 3),), "select * from {0}"
    ),
    # all files in one task: the message must still single out the bad one
    "sql one task": lambda ctx, files: SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), "select * from {0}"),
    "arrow one task": lambda ctx, files: ArrowComputeNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), process_func=lambda rt, ts: ts[0]
    ),
    "partition by rows": lambda ctx, files: DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 2, partition_by_rows=True
    ),
    "hash partition": lambda ctx, files: HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 2, ["key"]),
}


@pytest.mark.parametrize("reader", sorted(CORRUPT_READERS))
def test_corrupt_parquet_file(tmp_path, make_rt, log_messages, inputs_with_corrupt_file, reader):
    sink = str(tmp_path / "sink")
    plan = sink_plan(lambda ctx: CORRUPT_READERS[reader](ctx, inputs_with_corrupt_file), sink)
    err = run_failing(plan, make_rt(), log_messages)
    assert inputs_with_corrupt_file[1] in err.message
    assert inputs_with_corrupt_file[0] not in err.message
    assert err.location.startswith(THIS_FILE + ":")
    assert_no_partial_sink(sink)


@pytest.mark.parametrize(
    "query,culprit",
    [
        ("selec * from {0}", "selec *"),
        ("select no_such_column from {0}", "no_such_column"),
    ],
)
def test_bad_sql(tmp_path, make_rt, log_messages, query, culprit, no_plan_check):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    sink = str(tmp_path / "sink")
    plan = sink_plan(lambda ctx: SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), query), sink)
    err = run_failing(plan, make_rt(), log_messages)
    assert err.sql is not None and culprit in err.sql
    assert culprit in str(err)
    assert f"node created at: {THIS_FILE}:" in str(err)
    assert_no_partial_sink(sink)


BAD_KEYS = {  # name: (node over src, text of the key, the error's words)
    # a key named as a column: the error names the parameter and the input's columns
    "hash by no column": (
        lambda ctx, src, e: HashPartitionNode(ctx, (src,), 2, ["nope"], engine_type=e),
        "nope",
        "hash_columns=['nope']: column 'nope' not found in the input (its columns: id, key, name)",
    ),
    "shuffle by no column": (lambda ctx, src, e: ShuffleNode(ctx, (src,), 2, "nope % 2", engine_type=e), "nope", "Binder Error"),
    # a key that is no single expression is a name (never pasted: it could hold statements of its own)
    "shuffle by no SQL": (
        lambda ctx, src, e: ShuffleNode(ctx, (src,), 2, "nope +", engine_type=e),
        "nope",
        "data_partition_column='nope +': column 'nope +' not found in the input (its columns: id, key, name); "
        "as SQL, 'nope +' is no single expression",
    ),
    # a key holding a clause of its own (it parses as a select list) is a name too: pasted, it
    # failed to parse in the task, inside hash(...)
    "hash by a clause": (
        lambda ctx, src, e: HashPartitionNode(ctx, (src,), 2, ["id from (select 9 as id) union all select id"], engine_type=e),
        "id from",
        "column 'id from (select 9 as id) union all select id' not found in the input (its columns: id, key, name); "
        "as SQL, 'id from (select 9 as id) union all select id' is no single expression",
    ),
    # a key is one expression: a list was pasted into hash(...) as several keys typed as one, and
    # into a shuffle's CAST((id, key) AS BIGINT); an alias failed to parse there
    "hash by a list": (
        lambda ctx, src, e: HashPartitionNode(ctx, (src,), 2, ["id, key % 2"], engine_type=e),
        "id, key % 2",
        "column 'id, key % 2' not found in the input (its columns: id, key, name); as SQL, 'id, key % 2' is no single expression",
    ),
    # names that are no plain identifiers, in one text: not split when the node is built (only
    # 'id, key' is, as upstream's concat_ws('##', id, key) read it), so the error says how to
    # give them
    "hash by a list to quote": (
        lambda ctx, src, e: HashPartitionNode(
            ctx, (SqlEngineNode(ctx, (src,), 'select id as "first id", key from {0}'),), 2, ["first id, key"], engine_type=e
        ),
        "first id, key",
        "column 'first id, key' not found in the input (its columns: first id, key); as SQL, 'first id, key' is no single"
        " expression (keys are given as a list: ['first id', 'key'])",
    ),
    "shuffle by an alias": (
        lambda ctx, src, e: ShuffleNode(ctx, (src,), 2, "id % 2 as p", engine_type=e),
        "id % 2 as p",
        "column 'id % 2 as p' not found in the input (its columns: id, key, name); as SQL, 'id % 2 as p' is no single",
    ),
    # binds, then fails on the data (each batch, in the arrow engine)
    "shuffle by no number": (
        lambda ctx, src, e: ShuffleNode(ctx, (src,), 2, "CAST(name AS INTEGER)", engine_type=e),
        "name",
        "Conversion Error",
    ),
    # a key that is no number, refused by its type (the arrow engine too, which casts no string)
    "shuffle by a string": (
        lambda ctx, src, e: ShuffleNode(ctx, (src,), 2, "name || 'x'", engine_type=e),
        "name",
        "the shuffle key \"name || 'x'\" is of type VARCHAR in the data, not a number",
    ),
}


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_a_partition_key_that_cannot_bind_or_cast(tmp_path, make_rt, log_messages, engine, case, no_plan_check):
    """A hash key's types (DESCRIBE) and the arrow engine's key (per batch) were queried outside
    run_sql: DuckDB's binder, parser or conversion error was retried twice as if transient, and a
    hash key's error showed the input's view instead of the statement naming the key."""
    build, culprit, error = BAD_KEYS[case]
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    sink = str(tmp_path / "sink")
    plan = sink_plan(lambda ctx: build(ctx, DataSourceNode(ctx, ParquetDataSet(files)), engine), sink)
    err = run_failing(plan, make_rt(), log_messages)
    assert err.sql is not None and culprit in err.sql
    assert error in err.message
    assert f"node created at: {THIS_FILE}:" in str(err)
    assert_no_partial_sink(sink)


def test_the_arrow_engines_key_query_reported_is_the_one_that_ran(tmp_path, make_rt, log_messages, no_plan_check):
    """The arrow engine computes each batch's partitions with a query over the batch (a view
    named ``__sp_batch``); the SQL a failure reports is that query, so it fails the same way
    when run over the input (it was reported without the ``AS k`` it ran with, over ``<batch>``)."""
    import duckdb
    import pyarrow.parquet as pq

    build, _, _ = BAD_KEYS["shuffle by no number"]
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    plan = sink_plan(lambda ctx: build(ctx, DataSourceNode(ctx, ParquetDataSet(files)), "arrow"), str(tmp_path / "sink"))
    err = run_failing(plan, make_rt(), log_messages)
    conn = duckdb.connect()
    conn.register("__sp_batch", pq.read_table(files[0]))
    with pytest.raises(duckdb.ConversionException):
        conn.execute(err.sql).fetchall()


@pytest.mark.parametrize(
    "query,culprit",
    [
        ("select * from {1}", "{1}"),
        ("select * from {0} where {nope} = 1", "{nope}"),
        ("select regexp_matches(s, '[0-9]{3}') from {0}", "{3}"),
        ("select '{\"a\": 1}'::json as j from {0}", '{"a"}'),
        ("select {__data_partition__} as p from {0}", "{__data_partition__}"),  # no partition node above
    ],
)
def test_unknown_placeholders_fail_when_the_node_is_built(tmp_path, query, culprit):
    """A placeholder no task of the node will have is an error at build time, naming the node, the
    call site and the placeholder (at run time it would fail every task)."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "x.parquet")]))
    with pytest.raises(ParameterError) as info:
        SqlEngineNode(ctx, (src,), query)
    msg = str(info.value)
    assert f"unknown placeholder {culprit}" in msg and f"created at {THIS_FILE}:" in msg and "'{{'" in msg


def test_an_unknown_placeholder_is_named_alone(tmp_path):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "x.parquet")])),), 2)
    with pytest.raises(ParameterError) as info:
        SqlEngineNode(ctx, (parts,), "select * from {1} where {__data_partition__} >= 0")
    assert "unknown placeholder {1} in SQL" in str(info.value)  # the dimension is known


def test_known_placeholders_pass_the_build_time_check(tmp_path):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "x.parquet")]))
    parts = DataSetPartitionNode(ctx, (src,), 2)
    nested = HashPartitionNode(ctx, (parts,), 2, ["a"], dimension="bucket", nested=True)
    query = (
        "select *, {__data_partition__} as p, {bucket} as b, {rand_seed} as s, {cpu_limit} as c, {memory_limit} as m, "
        "'{output_filename}' as o, {batch_index} as i, {query_index} as q, '[0-9]{{3}}' as r from {0}"
    )
    SqlEngineNode(ctx, (nested,), query)
    SqlEngineNode(ctx, (nested, src), "select * from {0} join {1} using (a)")


@pytest.mark.parametrize("second", ["hash", "shuffle"])
def test_a_dimension_a_partition_replaced_is_unknown_after_it(tmp_path, second):
    # a partition that is not nested replaces the dimensions before it: {__data_partition__} is
    # no placeholder of the tasks after it (it passed the build and the dry run, and failed them)
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "x.parquet")])),), 2)
    if second == "hash":
        again = HashPartitionNode(ctx, (parts,), 3, ["id"], data_partition_column="bucket")
    else:
        again = ShuffleNode(ctx, (parts,), 3, data_partition_column="bucket")
    with pytest.raises(ParameterError) as info:
        SqlEngineNode(ctx, (again,), "select {__data_partition__} as part, * from {0}")
    assert "unknown placeholder {__data_partition__}" in str(info.value) and "'bucket'" in str(info.value)
    SqlEngineNode(ctx, (again,), "select {bucket} as part, * from {0}")


def test_failed_job_leaves_previous_sink_result_intact(tmp_path, make_rt, log_messages, inputs_with_corrupt_file):
    good = generate_parquet_files(str(tmp_path / "good"), nfiles=2, rows_per_file=10)
    sink = str(tmp_path / "sink")

    def plan_over(files):
        return sink_plan(
            lambda ctx: SqlEngineNode(
                ctx, (DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 2),), "select * from {0}"
            ),
            sink,
        )

    run_job(plan_over(good), make_rt(), num_workers=2)
    before = {name: open(os.path.join(sink, name), "rb").read() for name in os.listdir(sink)}
    assert len(parquet_paths_in(sink)) == 2
    run_failing(plan_over(inputs_with_corrupt_file), make_rt(), log_messages)
    after = {name: open(os.path.join(sink, name), "rb").read() for name in os.listdir(sink)}
    assert after == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith("sink.")]


def test_leftovers_of_a_crashed_publication_are_removed(tmp_path, make_rt):
    """A sink killed while copying leaves ``{sink}.staging-*`` beside its output; the next run clears
    it. A previous result an older smallpond set aside (no owner record listing what of it is
    smallpond's) is kept whole, as ``{sink}.kept-*``: nothing in it is proven ours."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    sink = tmp_path / "sink"
    for leftover in ("sink.staging-0badc0de-3", "sink.old-0badc0de"):  # the names publications give
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "half-written.parquet").write_bytes(b"PAR1")
    (tmp_path / "sink.keep").mkdir()  # not ours: left alone
    plan = sink_plan(
        lambda ctx: SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), "select * from {0}"), str(sink)
    )
    run_job(plan, make_rt(), num_workers=1)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("sink")) == ["sink", "sink.keep", "sink.kept-0badc0de"]
    assert os.listdir(tmp_path / "sink.kept-0badc0de") == ["half-written.parquet"]
    assert len(parquet_paths_in(str(sink))) == 1


def test_a_users_folders_named_like_leftovers_are_kept(tmp_path, make_rt):
    """Only the exact names a publication gives its folders are leftovers: a user's backup named
    ``sink.old-2025`` or ``sink.staging-area`` beside the destination is theirs (it was deleted)."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    sink = tmp_path / "sink"
    users = ["sink.old-2025", "sink.staging-area", "sink.old-0badc0de-notes", "sink.staging-0badc0de-3x"]
    for name in users:
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text(name)
    plan = sink_plan(
        lambda ctx: SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), "select * from {0}"), str(sink)
    )
    run_job(plan, make_rt(), num_workers=1)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("sink.")) == sorted(users)
    assert [(tmp_path / n / "mine.txt").read_text() for n in users] == users
    assert len(parquet_paths_in(str(sink))) == 1


LRU_SCRIPT = """
import functools, sys
import pyarrow as pa
import smallpond

@functools.lru_cache(None)
def doubled(x):
    return x * 2

sp = smallpond.init(data_root=sys.argv[1], task_cache="off")
df = sp.from_items(list(range(10))).map(lambda r: {"y": doubled(r["item"])}, schema=pa.schema([("y", pa.int64())]))
try:
    df.to_arrow()
except Exception as e:
    print("ERROR", type(e).__name__, e)
"""


def test_a_node_the_worker_cannot_unpickle_fails_once_with_the_reason(tmp_path):
    """A function wrapped by functools.lru_cache in the user's script travels by name, and a worker
    (whose ``__main__`` is not the script) cannot load it: the task fails at once, not retried,
    with the unpickling error and what to do; it used to kill the worker (``WorkerLost``, retried)."""
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(LRU_SCRIPT)
    env = dict(os.environ, SP_PROGRESS="0")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "root")], capture_output=True, text=True, timeout=180, env=env
    )
    out = proc.stdout
    assert "ERROR TaskError" in out, (out, proc.stderr[-2000:])
    assert "cannot load the node" in out and "Can't get attribute 'doubled'" in out and "lru_cache" in out
    assert "retrying" not in proc.stderr and "WorkerLost" not in out + proc.stderr


def case_clash_file(tmp_path) -> str:
    """A Parquet file with columns ``A`` and ``a`` (``a`` has 2 values), as pyarrow writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "cases.parquet")
    pq.write_table(pa.table({"A": list(range(8)), "a": [i % 2 for i in range(8)]}), path)
    return path


CASE_CLASH_READERS = {
    "sql": lambda ctx, src: SqlEngineNode(ctx, (src,), "select * from {0}"),
    "hash": lambda ctx, src: HashPartitionNode(ctx, (src,), 4, ["a"]),
    "shuffle": lambda ctx, src: ShuffleNode(ctx, (src,), 2, "a"),
    "sql after a split by files": lambda ctx, src: SqlEngineNode(
        ctx, (DataSetPartitionNode(ctx, (src,), 2),), "select a, count(*) from {0} group by a"
    ),
}


@pytest.mark.parametrize("reader", sorted(CASE_CLASH_READERS))
def test_columns_differing_only_in_case_are_refused_at_planning(tmp_path, make_rt, reader):
    """DuckDB takes ``A`` and ``a`` for one name: it renamed ``a`` to ``a_1`` and hashed ``A`` for
    ``hash_by="a"`` (rows of equal ``a`` in several partitions). Refused before any task is built,
    naming the node, its line, the file, both columns and what to do."""
    from smallpond.errors import PlanError
    from smallpond.execution.planner import Planner

    path = case_clash_file(tmp_path)
    ctx = Context()
    node = CASE_CLASH_READERS[reader](ctx, DataSourceNode(ctx, ParquetDataSet([path])))
    planner = Planner(make_rt())
    with pytest.raises(PlanError) as info:
        planner.create_exec_plan(LogicalPlan(ctx, DataSinkNode(ctx, (node,), str(tmp_path / "sink"))))
    message = str(info.value)
    for text in (repr(node), node.location, path, "'A' and 'a'", "rename one"):
        assert text in message, (text, message)
    assert node.location.startswith(THIS_FILE + ":")
    assert not planner.tasks


def test_columns_differing_only_in_case_written_by_the_job_fail_the_first_reading_task(tmp_path, make_rt, log_messages):
    """Files the job writes are not known at planning: the DuckDB task reading them refuses them
    (no retry), naming the file and both columns."""
    import pyarrow as pa

    def both_cases(rt, tables):
        return pa.table({"A": [1, 2], "a": [3, 4]})

    sink = str(tmp_path / "sink")
    src = str(tmp_path / "in.parquet")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), src)

    def build(ctx):
        written = ArrowComputeNode(ctx, (DataSourceNode(ctx, ParquetDataSet([src])),), process_func=both_cases)
        return SqlEngineNode(ctx, (written,), "select a from {0}")

    err = run_failing(sink_plan(build, sink), make_rt(), log_messages)
    assert "'A' and 'a'" in err.message and "rename one" in err.message and ".parquet" in err.message, err.message
    assert err.location.startswith(THIS_FILE + ":")
    assert_no_partial_sink(sink)


def test_python_code_reads_columns_differing_only_in_case(tmp_path, make_rt):
    """pyarrow keeps both columns: Python nodes over such a file are not refused."""
    import pyarrow.parquet as pq

    path = case_clash_file(tmp_path)
    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), process_func=lambda rt, ts: ts[0])
    result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    table = pq.read_table(sorted(result.final_output.resolved_paths)[0])
    assert table.column_names == ["A", "a"] and table.column("a").to_pylist() == [i % 2 for i in range(8)]
