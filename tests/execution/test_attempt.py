"""smallpond.execution.attempt: one attempt's output directory, the exclusive commit, orphans."""

from __future__ import annotations

import glob
import os

import pytest

from smallpond.common import MB
from smallpond.execution.attempt import commit_path, execute_attempt, read_commit, remove_orphan_outputs
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
    """Where the filesystem cannot rename without replacing, the commit links instead: the same
    winner, and no temp record left behind."""
    import smallpond.execution.attempt as attempt_module

    monkeypatch.setattr(attempt_module, "rename_noreplace", lambda a, b: False)
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
    written (a lone surrogate from user data is escaped, not an error), and a missing folder is made."""
    from smallpond.execution.attempt import TaskLogSink

    sink = TaskLogSink()
    path = str(tmp_path / "tasks" / "T-000001.0.log")
    sink.begin(path)
    sink.write("first line\n")
    assert open(path).read() == "first line\n"
    sink.info("second")
    sink.write("odd \udcff text\n")
    sink.end()
    sink.write("after the attempt: dropped\n")
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0] == "first line" and lines[1].endswith("| INFO     | smallpond.execution.attempt:execute_attempt - second")
    assert lines[2] == "odd \\udcff text" and len(lines) == 3


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
