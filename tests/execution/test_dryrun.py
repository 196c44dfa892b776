"""Dry runs: the Driver's ``--dry_run`` and ``DataFrame.explain(dry_run=True)`` say what will run
and what will be reused, and why, without running anything."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SORT_EXAMPLE = os.path.join(REPO_ROOT, "examples", "sort_mock_urls.py")


def sort_example(args, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SORT_EXAMPLE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_driver_dry_run_runs_nothing_and_says_why(url_files, tmp_path, data_root):
    common = ["--data_root", data_root, "-i", *url_files, "-n", "3", "-o", str(tmp_path / "out")]
    before = sort_example(["scheduler", "--job_id", "dry-1", "--dry_run", *common], str(tmp_path)).stdout
    assert "0 reused from the task cache" in before
    assert "never computed (no earlier build of this task in the cache)" in before
    assert "publishes to" in before
    assert not os.path.exists(tmp_path / "out"), "a dry run publishes nothing"
    assert not glob.glob(os.path.join(data_root, "*.*")), "a dry run creates no job folder"

    sort_example(["scheduler", "--job_id", "build-1", *common], str(tmp_path))
    after = sort_example(["scheduler", "--job_id", "dry-2", "--dry_run", *common], str(tmp_path)).stdout
    assert "reused (written by" in after and "of job" in after
    assert "never computed" not in after
    # only the sinks (the example's and the named output's) would run again
    running = [line for line in after.splitlines() if "will run:" in line]
    assert len(running) == 2 and all("DataSinkTask" in line and "publishes to" in line for line in running), after

    # a new sort key: the node's parameters changed for the sort and everything after it
    with open(url_files[0], "a") as f:
        f.write("com.example.new/page.html\taGVsbG8=\n")
    changed = sort_example(["scheduler", "--job_id", "dry-3", "--dry_run", *common], str(tmp_path)).stdout
    assert f"input file {url_files[0]} changed" in changed


def test_dataframe_explain_dry_run(tmp_path):
    import smallpond

    sp = smallpond.init(job_id="explain-dry", data_root=str(tmp_path / "root"))
    try:
        df = sp.from_items([{"a": i % 3, "b": i} for i in range(30)]).repartition(3, hash_by="a")
        df = sp.partial_sql("select a, sum(b) as s from {0} group by a", df)
        planner = sp._job.planner
        planned, next_id = dict(planner.tasks), planner.next_task_id
        text = df.explain(dry_run=True)
        assert "== What will run ==" in text and "will run: never computed" in text
        assert sp._job.scheduler.state.done == {}, "explaining computes nothing"
        assert planner.tasks == planned and planner.next_task_id == next_id, "nor plans anything in the session"
        rows = sorted(df.take_all(), key=lambda r: r["a"])
        assert rows == [{"a": a, "s": sum(b for b in range(30) if b % 3 == a)} for a in range(3)]
        assert "computed earlier in this session" in df.explain(dry_run=True)
    finally:
        sp.shutdown()
    sp2 = smallpond.init(job_id="explain-dry-2", data_root=str(tmp_path / "root"))
    try:
        df = sp2.from_items([{"a": i % 3, "b": i} for i in range(30)]).repartition(3, hash_by="a")
        df = sp2.partial_sql("select a, sum(b) as s from {0} group by a", df)
        text = df.explain(dry_run=True)
        assert "0 task(s) will run" in text and "will run:" not in text, text
        assert "reused (written by" in text
    finally:
        sp2.shutdown()


def _marked_copy(runtime_ctx, input_datasets, output_path) -> bool:
    """Copies its partition's rows; fails while the file named by SP_TEST_DRYRUN_MARKER exists."""
    import pyarrow.parquet as pq

    if os.path.exists(os.environ.get("SP_TEST_DRYRUN_MARKER", "")):
        raise RuntimeError("marker present")
    table = input_datasets[0].to_arrow_table()
    pq.write_table(table, os.path.join(output_path, "rows.parquet"))
    return True


def test_dry_run_names_the_recomputed_producer_behind_a_shuffle(tmp_path, monkeypatch):
    # a task after a shuffle reads its partition gathered from every producer; when the
    # producers were recomputed (here: committed by a run of this job that failed later), the
    # dry run names them, not the gathering step run on the scheduler
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.errors import JobFailed
    from smallpond.execution.job import dry_run_plan, make_runtime_ctx, run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, HashPartitionNode, LogicalPlan, PythonScriptNode

    data = tmp_path / "in.parquet"
    marker = tmp_path / "marker"
    monkeypatch.setenv("SP_TEST_DRYRUN_MARKER", str(marker))
    cache = str(tmp_path / "cache")

    def plan():
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet([str(data)], root_dir=None))
        parts = HashPartitionNode(ctx, (src,), 3, hash_columns=["host"])
        return LogicalPlan(ctx, PythonScriptNode(ctx, (parts,), process_func=_marked_copy))

    def rt(job_id):
        return make_runtime_ctx(job_id, None, str(tmp_path / "root"), task_cache=cache, console_log_level="WARNING")

    pq.write_table(pa.table({"host": [f"h{i % 5}" for i in range(40)], "n": list(range(40))}), data)
    run_job(plan(), rt("first"), num_workers=2)
    pq.write_table(pa.table({"host": [f"h{i % 5}" for i in range(41)], "n": list(range(41))}), data)
    marker.write_text("fail")
    try:
        run_job(plan(), rt("second"), num_workers=2, max_fail_count=1, max_retry_count=0)
    except JobFailed:
        pass
    marker.unlink()
    result = dry_run_plan(plan(), rt("second"))
    producers = result.of("resumed")
    assert producers and all(v.task.key.startswith("HashPartitionTask") for v in producers), result
    running = [v for v in result.of("run") if v.task.key.startswith("PythonScriptTask")]
    assert len(running) == 3, result
    for v in running:
        text = "; ".join(v.reasons)
        assert "was recomputed" in text and "HashPartitionTask" in text and "PartitionConsumerTask" not in text, text


BAD_QUERY_SCRIPT = """
import sys
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

driver = Driver()
driver.add_argument("-i", "--input_paths", nargs="+")
driver.add_argument("-q", "--query")
args = driver.get_arguments()
ctx = Context()
node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(args["input_paths"])),), args["query"])
driver.run(LogicalPlan(ctx, node))
"""


def test_a_dry_run_that_finds_a_task_would_fail_exits_70(parquet_files, tmp_path, data_root):
    # so that a dry run can gate a scheduled build
    script = tmp_path / "drv.py"
    script.write_text(BAD_QUERY_SCRIPT)

    def dry(query: str, job: str) -> subprocess.CompletedProcess:
        argv = [
            sys.executable,
            str(script),
            "--job_id",
            job,
            "--data_root",
            data_root,
            "--dry_run",
            "-i",
            *parquet_files,
            "-q",
            query,
        ]
        return subprocess.run(argv, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)

    bad = dry("select nope from {0}", "dry-bad")
    assert bad.returncode == 70, bad.stderr[-2000:]
    assert "1 would fail" in bad.stdout and "task(s) would fail" in bad.stderr
    good = dry("select id from {0}", "dry-good")
    assert good.returncode == 0, good.stderr[-2000:]


def test_a_dry_run_says_why_sql_reading_a_file_itself_is_never_reused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import smallpond

    lookup = str(tmp_path / "lookup.parquet")
    pq.write_table(pa.table({"a": [0, 1, 2], "w": [10, 20, 30]}), lookup)
    sp = smallpond.init(job_id="dry-reads", data_root=str(tmp_path / "root"))
    try:
        df = sp.from_items([{"a": i % 3, "b": i} for i in range(30)])
        df = sp.partial_sql(f"select a, b * w as bw from {{0}} join '{lookup}' using (a)", df)
        text = df.explain(dry_run=True)
        assert (
            "will run: its SQL reads files itself, which the task cache cannot see change, so its results are never reused"
            in text
        )
    finally:
        sp.shutdown()


def test_a_dry_run_after_a_finished_job_that_removed_its_intermediates_publishes_nothing(tmp_path):
    """A job that removed staging/ when it finished kept its sinks' commit records aside
    (config/published/); a dry run of it again, which does not start the job, reads them there
    and says the sink is done, as the real rerun finds it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.execution.job import dry_run_plan, make_runtime_ctx, run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode

    data = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"n": list(range(10))}), data)

    def plan():
        ctx = Context()
        sql = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([data])),), "select n * 2 as m from {0}")
        return LogicalPlan(ctx, DataSinkNode(ctx, (sql,), str(tmp_path / "out"), mode="append"))

    def rt():
        return make_runtime_ctx("fixed", None, str(tmp_path / "root"), task_cache="off", console_log_level="WARNING")

    run_job(plan(), rt(), num_workers=1, remove_output_root=True)
    assert not os.path.exists(os.path.join(rt().job_root, "staging"))
    result = dry_run_plan(plan(), rt())
    assert not [v for v in result.of("run") if v.task.key.startswith("DataSinkTask")], result
    assert [v.task.key for v in result.of("resumed") if v.task.key.startswith("DataSinkTask")], result


def test_the_copy_step_written_for_a_sink_over_a_projection_says_what_it_is(tmp_path):
    """A sink over a projection publishes the projection's result, which a step the optimizer adds
    (materialize_projections) writes first: the dry run listed it as a bare ``SqlEngineNode-N``
    at the sink's line, a node the script never built. Its label says what it copies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.execution.job import dry_run_plan, make_runtime_ctx
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSetPartitionNode, DataSinkNode, DataSourceNode, LogicalPlan, ProjectionNode

    path = str(tmp_path / "ab.parquet")
    pq.write_table(pa.table({"a": [1, 2], "b": [3, 4]}), path)
    ctx = Context()
    projected = ProjectionNode(ctx, DataSourceNode(ctx, ParquetDataSet([path])), ["a"])
    split = DataSetPartitionNode(ctx, (projected,), 2)  # (passes the projection's files on)
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (split,), str(tmp_path / "out")))
    text = str(dry_run_plan(plan, make_runtime_ctx("dry-copy", None, str(tmp_path / "root"))))
    copy = [line for line in text.splitlines() if line.startswith("SqlEngineNode-")]
    assert len(copy) == 1 and f"(copy of what {projected!r} projects, for the sink) @ {__file__}:" in copy[0], text


def test_a_dry_run_says_a_changed_partition_count_is_why_nothing_is_reused(tmp_path):
    """One file more in a partition by files gives every task a partition its node never had: the
    dry run says the count changed, not "never computed" (the node was computed, with 2 partitions)."""
    import duckdb

    import smallpond

    files = []
    for i in range(3):
        files.append(str(tmp_path / f"part{i}.parquet"))
        duckdb.sql(f"copy (select range + {i * 10} as a from range(10)) to '{files[-1]}'")

    def frame(sp, paths):
        df = sp.read_parquet(paths).repartition(len(paths))
        return sp.partial_sql("select count(*) as c from {0}", df)

    sp = smallpond.init(job_id="parts-2", data_root=str(tmp_path / "root"))
    try:
        assert sorted(frame(sp, files[:2]).to_pandas()["c"]) == [10, 10]
    finally:
        sp.shutdown()
    sp = smallpond.init(job_id="parts-3", data_root=str(tmp_path / "root"))
    try:
        text = frame(sp, files).explain(dry_run=True)
    finally:
        sp.shutdown()
    assert "its partition changed: __data_partition__ has 3 partitions, 2 before" in text, text
    assert "never computed" not in text, text


def test_never_computed_names_the_partition_count_that_changed():
    from smallpond.execution.dryrun import never_computed

    def part(i, n, dim="__data_partition__"):
        return repr([("@toplevel@", 0, 1), (dim, i, n)]) + repr(())

    # the node's earlier builds were of 6 partitions; this task is 0 of 7
    earlier = [part(i, 6) for i in range(6)]
    assert never_computed(part(0, 7), earlier) == (
        "its partition changed: __data_partition__ has 7 partitions, 6 before, so no task of its node has an earlier build"
    )
    # the same count: this partition was simply never built (an earlier job stopped before it)
    assert never_computed(part(5, 6), earlier[:3]) == "never computed (no earlier build of this task in the cache)"
    # no build at all, or of another dimension only
    assert never_computed(part(0, 7), []) == "never computed (no earlier build of this task in the cache)"
    assert never_computed(part(0, 7), [part(0, 3, "other")]).startswith("never computed")
