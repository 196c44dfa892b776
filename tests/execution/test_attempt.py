"""smallpond.execution.attempt: one attempt's output directory, the exclusive commit, orphans."""

from __future__ import annotations

import glob
import os

import pytest

from smallpond.common import MB
from smallpond.errors import TaskError
from smallpond.execution.attempt import execute_attempt
from smallpond.execution.commit import commit_path, read_commit, remove_orphan_outputs
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode


@pytest.fixture
def sql_task(make_rt, parquet_files):
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select id * 2 as x from {0}")
    rt = make_rt()
    rt.initialize()
    plan = Planner(rt).create_exec_plan(LogicalPlan(ctx, node))
    task = next(t for t in plan.tasks.values() if t.key.startswith("SqlEngineTask"))
    source = next(t for t in plan.tasks.values() if t.key.startswith("DataSourceTask"))
    from smallpond.execution.attempt import run_inline

    inputs = [run_inline(rt, source, [])]
    return rt, task, inputs


def output_dirs(task):
    return sorted(glob.glob(glob.escape(task.runtime_ctx.staging_root if task.runtime_ctx else "") + "/*/*"))


def test_each_attempt_writes_its_own_directory(sql_task):
    rt, task, inputs = sql_task
    ds = execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    (d,) = {os.path.dirname(p) for p in ds.resolved_paths}
    assert os.path.basename(d).startswith(f"{task.key}.0.")
    assert read_commit(rt, task)["output_dir"] == d


def test_an_attempt_that_fails_after_its_rename_removes_its_output_at_once(sql_task):
    # its output directory was renamed into place, then the commit failed (here: the records'
    # folder is not a folder): no record names it, so it goes now, not at the job's end
    rt, task, inputs = sql_task
    os.rmdir(rt.completed_task_dir)
    with open(rt.completed_task_dir, "w"):
        pass
    with pytest.raises(TaskError, match="NotADirectoryError"):
        execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    assert glob.glob(glob.escape(task.output_base(rt)) + ".*") == [], "the failed attempt's output was left behind"


def test_first_attempt_to_commit_wins(sql_task):
    """Two attempts of one task (a speculative copy): the second to finish adopts the first's output."""
    rt, task, inputs = sql_task
    first = execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    second = execute_attempt(rt, task, inputs, 1, memory=256 * MB)
    assert second.resolved_paths == first.resolved_paths
    record = read_commit(rt, task)
    assert record["attempt"] == 0
    node_dir = os.path.dirname(record["output_dir"])
    assert os.listdir(node_dir) == [os.path.basename(record["output_dir"])], "the losing attempt's files must be gone"


def test_first_attempt_to_commit_wins_without_renameat2(sql_task, monkeypatch):
    """Where the filesystem can neither create an unnamed file (O_TMPFILE) nor rename without
    replacing, the commit links a temp record instead: the same winner, and no temp record left
    behind."""
    from smallpond.io import filesystem

    monkeypatch.setattr(filesystem, "_TMPFILE", 0)
    monkeypatch.setattr(filesystem, "rename_noreplace", lambda a, b: False)
    rt, task, inputs = sql_task
    first = execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    second = execute_attempt(rt, task, inputs, 1, memory=256 * MB)
    assert second.resolved_paths == first.resolved_paths
    assert read_commit(rt, task)["attempt"] == 0
    assert os.listdir(os.path.dirname(commit_path(rt, task.key))) == [os.path.basename(commit_path(rt, task.key))]


def test_commit_leaves_no_temp_record(sql_task):
    rt, task, inputs = sql_task
    execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    execute_attempt(rt, task, inputs, 1, memory=256 * MB)  # loses: its temp record must go too
    assert os.listdir(os.path.dirname(commit_path(rt, task.key))) == [os.path.basename(commit_path(rt, task.key))]


def test_a_stale_record_is_replaced(sql_task):
    rt, task, inputs = sql_task
    execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    task.fingerprint = "changed plan"
    execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    assert read_commit(rt, task)["fingerprint"] == "changed plan"


def test_orphans_of_a_crash_between_rename_and_commit_are_removed(sql_task):
    rt, task, inputs = sql_task
    ds = execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    committed_dir = read_commit(rt, task)["output_dir"]
    node_dir = os.path.dirname(committed_dir)
    # an attempt that renamed its output into place and died before committing
    orphan = os.path.join(node_dir, f"{task.key}.1.deadbeef")
    os.makedirs(orphan)
    open(os.path.join(orphan, "x.parquet"), "wb").close()
    # a task that never committed at all
    never = os.path.join(node_dir, "SqlEngineTask-999999.0.abc123")
    os.makedirs(never)
    assert remove_orphan_outputs(rt) == 2
    assert os.listdir(node_dir) == [os.path.basename(committed_dir)]
    assert all(os.path.exists(p) for p in ds.resolved_paths)


def test_without_its_output_a_record_does_not_count(sql_task):
    rt, task, inputs = sql_task
    ds = execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    for p in ds.resolved_paths:
        os.unlink(p)
    assert os.path.exists(commit_path(rt, task.key))
    assert read_commit(rt, task) is None
    again = execute_attempt(rt, task, inputs, 1, memory=256 * MB)
    assert read_commit(rt, task)["attempt"] == 1 and all(os.path.exists(p) for p in again.resolved_paths)


def test_task_log_sink_writes_each_record_at_once(tmp_path):
    """A running task's log can be read as it grows (nothing is held in a buffer), any text is
    written (a lone surrogate from user data is escaped, not an error), and a missing folder is
    made. The file begins with the attempt's start line, and the start and done lines of every
    attempt are in the process's log."""
    from smallpond.execution.attempt import PROCESS_LOG_DIR, TaskLogSink

    sink = TaskLogSink()
    path = str(tmp_path / "tasks" / "T-000001.0.log")
    sink.begin(path)
    sink.start("start T-000001 attempt 0 of N")
    assert not os.path.exists(path)  # nothing of its own logged yet
    sink.write("first line\n")
    assert open(path).read().splitlines()[1] == "first line"
    sink.write("odd \udcff text\n")
    sink.done("done T-000001 attempt 0 in 0.001s")
    sink.end()
    sink.write("after the attempt: dropped\n")
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0].endswith("| INFO     | smallpond.execution.attempt:execute_attempt - start T-000001 attempt 0 of N")
    assert lines[1:3] == ["first line", "odd \\udcff text"]
    assert lines[3].endswith(" - done T-000001 attempt 0 in 0.001s") and len(lines) == 4
    (process_log,) = (tmp_path / PROCESS_LOG_DIR).iterdir()
    assert [line.split(" - ")[1] for line in process_log.read_text().splitlines()] == [
        "start T-000001 attempt 0 of N",
        "done T-000001 attempt 0 in 0.001s",
    ]


def test_an_attempt_that_logs_nothing_of_its_own_leaves_no_file(tmp_path):
    """A quiet attempt's start and done lines are only in the process's log (a file creation less
    per tiny task); the job's attempts are listed from both places."""
    from smallpond.execution.attempt import TaskLogSink, logged_attempts

    sink = TaskLogSink()
    for key, talks in (("Q-000001", False), ("L-000002", True)):
        sink.begin(str(tmp_path / "tasks" / f"{key}.0.log"))
        sink.start(f"start {key} attempt 0 of N")
        if talks:
            sink.write("a record of its own\n")
        sink.done(f"done {key} attempt 0 in 0.001s")
        sink.end()
    assert sorted(os.listdir(tmp_path / "tasks")) == ["L-000002.0.log"]
    assert logged_attempts(str(tmp_path)) == [("L-000002", 0), ("Q-000001", 0)]


def test_a_new_sink_closes_the_process_log_of_the_one_before(tmp_path, monkeypatch):
    """A Ray worker installs a sink for each job it serves: the previous one's process log is
    closed, not leaked."""
    import smallpond.common
    from smallpond.execution import attempt

    monkeypatch.setattr(attempt, "_process_log_sink", None)
    # not in a worker: leave this process's loguru handlers alone
    monkeypatch.setattr(smallpond.common, "when_loguru_is_imported", lambda callback: None)
    first = attempt.install_task_log_sink("INFO")
    first.begin(str(tmp_path / "a" / "tasks" / "T-000001.0.log"))
    first.start("start T-000001 attempt 0 of N")
    first.end()
    fd = first._process_log[1]
    os.fstat(fd)  # open
    second = attempt.install_task_log_sink("INFO")
    assert attempt._process_log_sink is second and first._process_log is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_sink_above_info_level_writes_no_start_or_done_lines(tmp_path):
    from smallpond.execution.attempt import TaskLogSink

    sink = TaskLogSink(level_no=30)
    sink.begin(str(tmp_path / "tasks" / "W-000001.0.log"))
    sink.start("start W-000001 attempt 0 of N")
    sink.done("done W-000001 attempt 0 in 0.001s")
    sink.end()
    assert not os.path.exists(tmp_path / "tasks") and not os.path.exists(tmp_path / "workers")


def _logs_through_loguru(runtime_ctx, input_datasets, output_path):
    import logging
    import sys

    quiet_before = "loguru" not in sys.modules
    from loguru import logger

    logger.info("a record from the task's loguru logger")
    logging.getLogger("user.code").warning("a record from stdlib logging")
    from smallpond.common import logger as smallpond_logger

    smallpond_logger.warning("a record from smallpond's logger")
    with open(os.path.join(output_path, "quiet.txt"), "w") as f:
        f.write(str(quiet_before))
    return True


def _writes_whether_loguru_is_loaded(runtime_ctx, input_datasets, output_path):
    import sys

    with open(os.path.join(output_path, "loaded.txt"), "w") as f:
        f.write(str("loguru" in sys.modules))
    return True


def _run_python_task(make_rt, parquet_files, fn):
    """Run ``fn`` as the one task of a PythonScriptNode on one worker: (its runtime context, the
    text of the one file it wrote)."""
    from smallpond.execution.job import run_job
    from smallpond.logical.node import PythonScriptNode

    rt = make_rt(task_cache="off")
    ctx = Context()
    node = PythonScriptNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files[:1])),), process_func=fn)
    [out] = run_job(LogicalPlan(ctx, node), rt, num_workers=1).final_output.resolved_paths
    return rt, open(out).read()


def test_workers_load_loguru_only_when_a_task_logs_through_it(parquet_files, make_rt):
    # a worker writes its tasks' start and done lines itself; loguru (~55 ms to import) is loaded,
    # and routed into the task's log, only once something logs through it
    _, loaded = _run_python_task(make_rt, parquet_files, _writes_whether_loguru_is_loaded)
    assert loaded == "False", "a worker whose task does not log loaded loguru"

    rt, quiet_before = _run_python_task(make_rt, parquet_files, _logs_through_loguru)
    assert quiet_before == "True"
    [log] = glob.glob(os.path.join(rt.log_root, "tasks", "PythonScriptTask-*.0.log"))
    text = open(log).read()
    for line in ("start PythonScriptTask", "a record from the task's loguru logger", "a record from stdlib logging"):
        assert line in text, f"{line!r} is missing from the task log:\n{text}"
    assert "a record from smallpond's logger" in text and "done PythonScriptTask" in text


def test_a_failed_tasks_input_files_are_named_once_each(tmp_path):
    """Inputs that are row ranges of one file name it once in a task error (a range partition's
    sample task read 'x, x, x, x, x (+1 more)')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.execution.attempt_files import input_files as _input_files

    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    for path in (a, b):
        pq.write_table(pa.table({"x": list(range(6))}), path)
    inputs = ParquetDataSet([a]).partition_by_rows(3) + [ParquetDataSet([b])]
    assert _input_files(inputs) == [a, b]
    many = [ParquetDataSet.from_files([str(tmp_path / f"{i}.parquet")]) for i in range(30)]
    assert len(_input_files(many)) == 10


def test_a_node_whose_folder_is_gone_runs_in_the_workers_folder_and_says_so(tmp_path, monkeypatch):
    """A node built in a folder removed since runs in the worker's own folder, where a relative path
    of its SQL may name another file: the attempt's log says so (once), naming the task, the node
    and both folders."""
    from types import SimpleNamespace

    from smallpond.execution import attempt

    gone, here = tmp_path / "gone", tmp_path / "worker"
    gone.mkdir()
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setattr(attempt, "_worker_folder", None)
    monkeypatch.setattr(attempt, "_missing_folders", set())
    monkeypatch.setattr(attempt, "_folder_notes", [])
    task = SimpleNamespace(
        key="SqlEngineTask-000007", node_label="SqlEngineNode-000003", node=SimpleNamespace(created_cwd=str(gone))
    )
    attempt.enter_node_folder(task)
    assert os.getcwd() == str(gone) and attempt._folder_notes == []
    gone.rmdir()
    for _ in range(2):
        attempt.enter_node_folder(task)
        assert os.getcwd() == str(here)
    (said,) = attempt._folder_notes
    assert "cannot be entered" in said and str(gone) in said and "SqlEngineNode-000003" in said and str(here) in said, said


def test_the_attempt_log_says_the_nodes_folder_could_not_be_entered(sql_task, monkeypatch):
    """What enter_node_folder noted is a warning in the log of the attempt that follows, and only there."""
    from smallpond.execution import attempt

    rt, task, inputs = sql_task
    note = f"{task.key} of its node: the folder it was built in, /gone, cannot be entered"
    monkeypatch.setattr(attempt, "_folder_notes", [note])
    execute_attempt(rt, task, inputs, 0, memory=256 * MB)
    with open(os.path.join(rt.log_root, "tasks", f"{task.key}.0.log")) as f:
        log = f.read()
    assert "WARNING" in log and note in log, log
    assert attempt._folder_notes == []
