"""Outputs never lose a user's data (issue 8, part 1).

Reproductions of the issue, and the guarantees behind them:

* a user's file next to an earlier result is never deleted: the default mode refuses the folder
  before anything runs, naming the file; ``append`` writes beside it;
* an output inside (or containing) an input is refused at plan time; the inputs stay byte for byte;
* the sink modes (overwrite / append / error / ignore);
* a job publishes all its sinks or none.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import JobFailed, ParameterError, PlanError
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.datagen import generate_parquet_files, write_corrupt_parquet
from tests.e2e.safety_helpers import manifest, published_rows, snapshot


@pytest.fixture
def sp(tmp_path):
    session = smallpond.init(data_root=str(tmp_path / "root"), num_executors=2)
    yield session
    session.shutdown()


def ids(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n))})


def test_user_file_beside_an_earlier_result_is_never_deleted(sp, tmp_path):
    out = tmp_path / "out"
    sp.from_arrow(ids(10)).write_parquet(str(out))
    (out / "user_notes.txt").write_text("mine")
    before = snapshot(str(out))
    executed = len(sp._job.scheduler.state.executed)
    with pytest.raises(PlanError) as info:
        sp.from_arrow(ids(20)).write_parquet(str(out))
    message = str(info.value)
    assert "user_notes.txt" in message and "1 file(s)" in message and "mode='append'" in message
    assert "test_safety_outputs.py" in message  # the user's call site
    assert snapshot(str(out)) == before  # previous result and the user's file, byte for byte
    assert len(sp._job.scheduler.state.executed) == executed, "a task ran before the refusal"
    # append writes beside the user's file and keeps it
    sp.from_arrow(ids(5, 100)).write_parquet(str(out), mode="append")
    assert (out / "user_notes.txt").read_text() == "mine"
    assert published_rows(str(out), "id") == list(range(10)) + list(range(100, 105))
    assert all(os.path.dirname(p) == str(out) for p in manifest(str(out)))


def test_refusal_names_the_first_files_and_the_count(sp, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(8):
        (out / f"mine{i}.csv").write_text(str(i))
    with pytest.raises(PlanError, match=r"8 file\(s\) in it: 'mine0.csv', .*'mine4.csv' \(and 3 more\)"):
        sp.from_arrow(ids(3)).write_parquet(str(out))
    assert sorted(os.listdir(out)) == [f"mine{i}.csv" for i in range(8)]


def test_output_inside_a_recursively_read_input_is_refused(sp, tmp_path):
    """The issue's reproduction: the second run read its own output (400 rows) and deleted inputs."""
    inputs = tmp_path / "in"
    generate_parquet_files(str(inputs), nfiles=2, rows_per_file=100)
    (inputs / "README").write_text("user's")
    before = snapshot(str(inputs))
    df = sp.read_parquet(str(inputs / "**" / "*.parquet"), recursive=True)
    assert df.count() == 200
    with pytest.raises(PlanError, match="inside input pattern"):
        df.write_parquet(str(inputs / "out"))
    assert snapshot(str(inputs)) == before


@pytest.mark.parametrize("where", ["equal", "parent", "inside_file"])
def test_output_overlapping_an_input_is_refused(sp, tmp_path, where):
    inputs = tmp_path / "d" / "in"
    files = generate_parquet_files(str(inputs), nfiles=2, rows_per_file=5)
    before = snapshot(str(inputs))
    df = sp.read_parquet(files)
    target = {"equal": str(inputs), "parent": str(tmp_path / "d"), "inside_file": os.path.join(files[0], "x")}[where]
    with pytest.raises(PlanError, match="input"):
        df.write_parquet(target)
    assert snapshot(str(inputs)) == before


def test_output_over_the_data_root_or_a_job_folder_is_refused(sp, tmp_path):
    rt = sp.runtime_ctx
    df = sp.from_arrow(ids(3))
    with pytest.raises(PlanError, match="data root"):
        df.write_parquet(rt.data_root)
    with pytest.raises(PlanError, match="data root"):
        df.write_parquet(str(tmp_path))
    with pytest.raises(PlanError, match="job folder"):
        df.write_parquet(os.path.join(rt.job_root, "staging", "mine"))
    df.write_parquet(os.path.join(rt.output_root, "mine"))  # the job's own output folder is for outputs


def test_overwrite_replaces_only_the_earlier_result(sp, tmp_path):
    out = tmp_path / "out"
    sp.from_arrow(ids(10)).repartition(3, by_rows=True).write_parquet(str(out))
    first = set(os.listdir(out))
    sp.from_arrow(ids(4, 50)).write_parquet(str(out))
    assert published_rows(str(out), "id") == list(range(50, 54))
    assert not (first - {".MANIFEST.txt"}) & set(os.listdir(out)) or len(os.listdir(out)) == 2
    assert sorted(os.listdir(out)) == sorted([".MANIFEST.txt"] + [os.path.basename(p) for p in manifest(str(out))])
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out.")], "staging or old folders left behind"


def test_error_mode(sp, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: fine
    sp.from_arrow(ids(3)).write_parquet(str(out), mode="error")
    before = snapshot(str(out))
    with pytest.raises(PlanError, match="not empty"):
        sp.from_arrow(ids(4)).write_parquet(str(out), mode="errorifexists")
    assert snapshot(str(out)) == before


def test_ignore_mode_leaves_the_folder_and_computes_nothing(sp, tmp_path):
    out = tmp_path / "out"
    sp.from_arrow(ids(3)).write_parquet(str(out))
    before = snapshot(str(out))
    counter = tmp_path / "calls"

    def count(row):
        with open(counter, "a") as f:
            f.write("x")
        return row

    df = sp.from_arrow(ids(7)).map(count).write_parquet_lazy(str(out), mode="ignore")
    assert df.count() == 3  # the folder's existing result
    assert snapshot(str(out)) == before
    assert not counter.exists(), "mode='ignore' computed its input"


def test_bad_mode_fails_at_build_time(sp, tmp_path):
    with pytest.raises(ParameterError, match="mode must be one of"):
        sp.from_arrow(ids(1)).write_parquet(str(tmp_path / "o"), mode="replace")
    with pytest.raises(ParameterError, match="mode must be one of"):
        ctx = Context()
        DataSinkNode(ctx, (DataSourceNode(ctx, None),), "/tmp/x", mode="truncate")


def test_driver_job_publishes_all_sinks_or_none(tmp_path, make_rt):
    """Two sinks; the second's input fails: neither is published, earlier results stay whole."""
    good = generate_parquet_files(str(tmp_path / "good"), nfiles=2, rows_per_file=5)
    bad = [write_corrupt_parquet(str(tmp_path / "bad.parquet"))]

    def plan(second_inputs):
        ctx = Context()
        a = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(good)),), "select id from {0}")
        b = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(second_inputs)),), "select id from {0}")
        sinks = [DataSinkNode(ctx, (a,), str(tmp_path / "A")), DataSinkNode(ctx, (b,), str(tmp_path / "B"))]
        from smallpond.logical.node import RootNode

        return LogicalPlan(ctx, RootNode(ctx, sinks))

    run_job(plan(good), make_rt(), num_workers=2)
    before = {name: snapshot(str(tmp_path / name)) for name in "AB"}
    with pytest.raises(JobFailed):
        run_job(plan(bad), make_rt(), num_workers=2, max_fail_count=1)
    assert {name: snapshot(str(tmp_path / name)) for name in "AB"} == before
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]


def test_named_outputs_of_a_failed_driver_job_are_not_half_published(tmp_path, data_root):
    """``--output_path``: named outputs are copied there only when the whole job succeeded."""
    from smallpond.execution.driver import Driver

    good = generate_parquet_files(str(tmp_path / "good"), nfiles=3, rows_per_file=4)
    bad = write_corrupt_parquet(str(tmp_path / "bad.parquet"))
    published = tmp_path / "published"

    def run(second):
        ctx = Context()
        a = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(good)),), "select id from {0}", output_name="first")
        b = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(second)),), "select id from {0}", output_name="second")
        from smallpond.logical.node import RootNode

        driver = Driver()
        driver.parse_arguments(["scheduler", "--data_root", data_root, "--output_path", str(published), "--max_fail", "1"])
        return driver.run(LogicalPlan(ctx, RootNode(ctx, [a, b])), stop_process_on_done=False)

    assert run([bad]) is None
    assert not published.exists() or not os.listdir(published), "a failed job published a named output"
    assert run(good) is not None
    assert published_rows(str(published / "first"), "id") == list(range(12))
    assert published_rows(str(published / "second"), "id") == list(range(12))


def test_write_parquet_result_is_readable_and_rebased(sp, tmp_path):
    out = tmp_path / "out"
    df = sp.from_arrow(ids(6)).repartition(2, by_rows=True).write_parquet_lazy(str(out))
    assert sorted(r["id"] for r in df.take_all()) == list(range(6))
    for ds in df._datasets():
        assert all(os.path.dirname(p) == str(out) for p in ds.resolved_paths)
    assert pq.read_table(manifest(str(out))[0]).num_rows > 0


def test_a_compute_node_output_path_gets_the_same_overlap_rules(tmp_path, make_rt):
    """A node's own ``output_path=`` (not a sink) inside an input folder is refused at plan time."""
    inputs = tmp_path / "in"
    files = generate_parquet_files(str(inputs), nfiles=2, rows_per_file=5)
    before = snapshot(str(inputs))
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(inputs / "*.parquet")]))
    node = SqlEngineNode(ctx, (src,), "select * from {0}", output_name="mine", output_path=str(inputs))
    with pytest.raises(PlanError, match=r"SqlEngineNode.*inside input pattern"):
        run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    assert snapshot(str(inputs)) == before
    # beside the inputs it is fine, and the output stays in attempt folders of its own
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(files))
    out = tmp_path / "own"
    node = SqlEngineNode(ctx, (src,), "select * from {0}", output_name="mine", output_path=str(out))
    assert run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1).successful
    assert os.listdir(out) == ["mine"]
