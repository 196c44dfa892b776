"""Outputs never lose a user's data (issue 8, part 1).

Reproductions of the issue, and the guarantees behind them:

* a user's file next to an earlier result is never deleted: the default mode refuses the folder
  before anything runs, naming the file; ``append`` writes beside it;
* an output inside (or containing) an input is refused at plan time; the inputs stay byte for byte;
* the sink modes (overwrite / append / error / ignore), the same for a manifest-only sink, and a
  ``.MANIFEST.txt`` smallpond did not write is never replaced, whatever the sink's type;
* a job publishes all its sinks or none.
"""

from __future__ import annotations

import functools
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import JobFailed, ParameterError, PlanError
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSinkNode,
    DataSourceNode,
    LogicalPlan,
    RootNode,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files, write_corrupt_parquet
from tests.e2e.safety_helpers import ids, manifest, published_rows, snapshot


@pytest.fixture
def sp(tmp_path):
    session = smallpond.init(data_root=str(tmp_path / "root"), num_executors=2)
    yield session
    session.shutdown()


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
        return LogicalPlan(ctx, RootNode(ctx, sinks))

    run_job(plan(good), make_rt(), num_workers=2)
    before = {name: snapshot(str(tmp_path / name)) for name in "AB"}
    with pytest.raises(JobFailed):
        run_job(plan(bad), make_rt(), num_workers=2, max_fail_count=1)
    assert {name: snapshot(str(tmp_path / name)) for name in "AB"} == before
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]


def test_a_failed_job_removes_what_a_sink_that_did_not_finish_staged(tmp_path, make_rt):
    """A sink attempt stopped part way (killed when another task failed the job) leaves its
    ``{dest}.staging-{job}-{task}`` folder beside the user's destination; the failed job removes
    it, not only the folders of sinks that finished. (Made here as such an attempt leaves it, for
    a sink whose input fails, so the leftover cannot be the sink's own doing: it never starts.
    Under load the race showed in test_driver_job_publishes_all_sinks_or_none, 2 runs in 15.)"""
    from smallpond.execution.ops.sink import DataSinkTask, staging_path
    from smallpond.execution.planner import Planner

    bad = [write_corrupt_parquet(str(tmp_path / "bad.parquet"))]
    ctx = Context()
    b = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(bad)),), "select id from {0}")
    plan = LogicalPlan(ctx, RootNode(ctx, [DataSinkNode(ctx, (b,), str(tmp_path / "B"))]))
    rt = make_rt()
    planner = Planner(rt)
    planner.plan(plan.root_node)
    (sink_task,) = [t for t in planner.tasks.values() if isinstance(t, DataSinkTask)]
    leftover = staging_path(rt, sink_task)
    os.makedirs(os.path.join(leftover, "part"))
    with pytest.raises(JobFailed):
        run_job(plan, rt, num_workers=2, max_fail_count=1)
    assert not os.path.exists(tmp_path / "B")
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


# -- a manifest-only sink (type="manifest") gets the same modes and the same ownership rule --------


def _count_calls(runtime_ctx, tables, counter):
    with open(counter, "a") as f:
        f.write("x")
    return tables[0]


def sink_plan(inputs, out, counter, **sink_args) -> LogicalPlan:
    """inputs -> a node that counts its calls in ``counter`` -> DataSinkNode(out, **sink_args)."""
    ctx = Context()
    counted = ArrowComputeNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), process_func=functools.partial(_count_calls, counter=counter)
    )
    return LogicalPlan(ctx, DataSinkNode(ctx, (counted,), str(out), **sink_args))


def users_folder(out, own_manifest: bool = True) -> dict:
    out.mkdir()
    (out / "notes.txt").write_text("hi\n")
    if own_manifest:
        (out / ".MANIFEST.txt").write_text("my own manifest\n")
    return snapshot(str(out))


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_manifest_sink_never_replaces_a_users_manifest(tmp_path, make_rt, mode):
    """Case (a): the user's .MANIFEST.txt (and notes.txt) in the folder: refused when planned, naming the file."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    out, counter = tmp_path / "out", tmp_path / "calls"
    before = users_folder(out)
    with pytest.raises(PlanError) as info:
        run_job(sink_plan(inputs, out, str(counter), type="manifest", mode=mode), make_rt(), num_workers=1)
    message = str(info.value)
    assert f"{out / '.MANIFEST.txt'} was not written by smallpond" in message and f"mode={mode!r}" in message
    assert "'notes.txt'" in message
    assert message.startswith("DataSinkNode created at ") and "test_safety_outputs.py" in message  # the user's call site
    assert snapshot(str(out)) == before  # byte for byte
    assert not counter.exists(), "a task ran before the refusal"


def test_a_users_manifest_alone_is_not_replaced_by_any_sink(tmp_path, make_rt):
    """A folder holding only a user's .MANIFEST.txt: link sinks replaced (deleted) it as their own."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".MANIFEST.txt").write_text("a.parquet\nb.parquet\n")  # relative paths, as a user lists them for read_parquet
    before = snapshot(str(out))
    for kind in ("link", "manifest"):
        with pytest.raises(PlanError, match="was not written by smallpond"):
            run_job(sink_plan(inputs, out, str(tmp_path / "calls"), type=kind), make_rt(), num_workers=1)
        assert snapshot(str(out)) == before


def test_manifest_sink_error_mode_refuses_a_non_empty_folder(tmp_path, make_rt):
    """Case (b): mode='error' and a folder holding only notes.txt: refused when planned."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    out, counter = tmp_path / "out", tmp_path / "calls"
    before = users_folder(out, own_manifest=False)
    with pytest.raises(PlanError, match=r"DataSinkNode created at .*test_safety_outputs.py.*not empty \(mode='error'\)"):
        run_job(sink_plan(inputs, out, str(counter), type="manifest", mode="error"), make_rt(), num_workers=1)
    assert snapshot(str(out)) == before
    assert not counter.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    run_job(sink_plan(inputs, empty, str(counter), type="manifest", mode="error"), make_rt(), num_workers=1)
    assert os.listdir(empty) == [".MANIFEST.txt"] and published_rows(str(empty), "id") == list(range(10))


def test_manifest_sink_ignore_mode_leaves_the_folder_and_computes_nothing(tmp_path, make_rt):
    """Case (c): mode='ignore' and a folder holding only notes.txt: nothing computed, nothing published."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    out, counter = tmp_path / "out", tmp_path / "calls"
    before = users_folder(out, own_manifest=False)
    assert run_job(sink_plan(inputs, out, str(counter), type="manifest", mode="ignore"), make_rt(), num_workers=1).successful
    assert snapshot(str(out)) == before
    assert not counter.exists(), "mode='ignore' computed its input"


def test_manifest_sink_overwrites_its_own_earlier_manifest(tmp_path, make_rt):
    """Overwrite replaces a manifest smallpond wrote; the files it listed (a user's inputs) stay."""
    first = generate_parquet_files(str(tmp_path / "in1"), nfiles=2, rows_per_file=5)
    second = generate_parquet_files(str(tmp_path / "in2"), nfiles=1, rows_per_file=3)
    inputs_before = snapshot(str(tmp_path / "in1"))
    out = tmp_path / "out"

    def plan(inputs):
        ctx = Context()
        return LogicalPlan(ctx, DataSinkNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), str(out), type="manifest"))

    run_job(plan(first), make_rt(), num_workers=1)
    assert manifest(str(out)) == first  # the inputs where they are
    run_job(plan(second), make_rt(), num_workers=1)
    assert os.listdir(out) == [".MANIFEST.txt"] and manifest(str(out)) == second
    assert snapshot(str(tmp_path / "in1")) == inputs_before  # listed by the replaced manifest, not ours to remove
    assert not [n for n in os.listdir(tmp_path) if n.startswith("out.")], "staging or old folders left behind"


def test_manifest_sink_over_an_earlier_copied_result_replaces_it(tmp_path, make_rt):
    """Overwrite replaces the earlier result, of any type: its files go; append keeps a user's file."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    out, counter = tmp_path / "out", str(tmp_path / "calls")
    run_job(sink_plan(inputs, out, counter, type="copy"), make_rt(), num_workers=1)
    copied = manifest(str(out))
    assert copied and all(os.path.dirname(p) == str(out) for p in copied)
    run_job(sink_plan(inputs, out, counter, type="manifest"), make_rt(), num_workers=1)
    assert os.listdir(out) == [".MANIFEST.txt"], "the copied files of the replaced result were left behind, unlisted"
    assert published_rows(str(out), "id") == list(range(10))
    (out / "notes.txt").write_text("mine")
    run_job(sink_plan(inputs, out, counter, type="manifest", mode="append"), make_rt(), num_workers=1)
    assert (out / "notes.txt").read_text() == "mine"
    assert published_rows(str(out), "id") == sorted(2 * list(range(10)))  # both results listed


def test_named_output_of_a_failed_job_is_published_on_resume(tmp_path, make_rt):
    """A named output's folder (in the job folder) holds the task folders its manifest will list:
    they are the job's own, so a resume of the job publishes it instead of refusing the folder."""
    good = generate_parquet_files(str(tmp_path / "good"), nfiles=2, rows_per_file=5)
    bad = [write_corrupt_parquet(str(tmp_path / "bad.parquet"))]
    job_id = str(uuid.uuid4())

    def plan(second):
        ctx = Context()
        a = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(good)),), "select id from {0}", output_name="first")
        b = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(second)),), "select id from {0}")
        return LogicalPlan(ctx, RootNode(ctx, [a, b]))

    with pytest.raises(JobFailed):
        run_job(plan(bad), make_rt(job_id), num_workers=1, max_fail_count=1)
    rt = make_rt(job_id)
    named = os.path.join(rt.output_root, "first")
    assert os.listdir(named) and not os.path.exists(os.path.join(named, ".MANIFEST.txt"))  # the task ran, unpublished
    run_job(plan(good), make_rt(job_id), num_workers=1)
    assert published_rows(named, "id") == list(range(10))


def test_an_overlap_with_a_frame_computed_earlier_names_the_node_that_reads_it(sp, tmp_path):
    """In a session, the inputs of earlier computations count too: writing over a folder an
    earlier frame read is refused, and the message names that frame's source and where it was
    created (the frame being written reads another file)."""
    src = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"k": [1, 2, 3]}), src)
    out = str(tmp_path / "out")
    sp.read_parquet(src).write_parquet(out)
    assert sp.read_parquet(out).count() == 3
    with pytest.raises(
        PlanError, match=r"inside input folder .*\(read by DataSourceNode-\d+ .*created at .*test_safety_outputs\.py:\d+"
    ):
        sp.read_parquet(src).map("k * 2 as k").write_parquet(out)


@pytest.mark.parametrize("second", ["D", "D/inner"])
def test_two_sinks_into_one_folder_are_refused_at_plan_time(tmp_path, make_rt, second):
    """Two sinks of one job into the same folder (or one inside the other): refused before any
    task runs, naming both sinks and where they were created. Before, both ran; each sink's
    preparation removed the other's staged result and the publication refused (same folder), or
    the outer overwrite swapped the inner result out and put it back as a file 'not written by
    smallpond' (nested)."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    ctx = Context()
    rows = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), "select id from {0}")
    first = DataSinkNode(ctx, (rows,), str(tmp_path / "D"))
    other = DataSinkNode(ctx, (rows,), str(tmp_path / second))
    with pytest.raises(PlanError) as e:
        run_job(LogicalPlan(ctx, RootNode(ctx, [first, other])), make_rt(), num_workers=1)
    for node in (first, other):
        assert f"{node.label} created at {node.location}" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["data_root", "in"]  # nothing staged, nothing published
