"""The event log of a job (log/events.jsonl) and the statistics read back from it."""

from __future__ import annotations

import json
import os
import time

import pytest

from smallpond.errors import JobFailed
from smallpond.execution.events import JobHistory, read_events, scan_last_run
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    PythonScriptNode,
    SqlEngineNode,
)


def _plan(parquet_files, sql="select key, count(*) as n from {0} group by key"):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=3)
    hashed = HashPartitionNode(ctx, (parts,), npartitions=2, hash_columns=["key"])
    counts = SqlEngineNode(ctx, (hashed,), sql)
    return LogicalPlan(ctx, counts), (src, parts, hashed, counts)


def test_a_job_logs_its_nodes_tasks_and_end(make_rt, parquet_files):
    plan, (src, parts, hashed, counts) = _plan(parquet_files)
    rt = make_rt()
    run_job(plan, rt, num_workers=2)
    events = read_events(rt.log_root)
    kinds = [e["ev"] for e in events]
    assert kinds[0] == "job_start" and kinds[-1] == "job_end"
    assert events[-1]["status"] == "success"
    nodes = {e["id"]: e for e in events if e["ev"] == "node"}
    # edges come from the tasks (tasks carry slim nodes without inputs)
    assert nodes[int(parts.id)]["inputs"] == [int(src.id)]
    assert nodes[int(hashed.id)]["inputs"] == [int(parts.id)]
    assert nodes[int(counts.id)]["inputs"] == [int(hashed.id)]
    assert nodes[int(counts.id)]["partitions"] == 2 and nodes[int(counts.id)]["tasks"] == 2
    done = [e for e in events if e["ev"] == "done"]
    submitted = [e for e in events if e["ev"] == "submit"]
    # a submission is written only for an attempt still running at a flush: one that ended
    # first is told by its done event, which carries its start
    assert done and {(e["key"], e["attempt"]) for e in submitted} <= {(e["key"], e["attempt"]) for e in done}
    for e in done:
        assert e["worker"] and e["started"] and e["elapsed"] >= 0
        assert os.path.exists(os.path.join(rt.log_root, e["log"]))  # the attempt's log is where the event says

    run = JobHistory(events).last
    sql = run.nodes[int(counts.id)]
    assert (sql.done, sql.planned, sql.failed, sql.retries) == (2, 2, 0, 0)
    assert sql.rows == 10  # keys 0..9, one row each
    assert sql.written > 0 and sql.read > 0
    assert run.nodes[int(hashed.id)].rows == 30  # the hash partition wrote every input row once
    assert run.status == "success"
    assert os.path.exists(os.path.join(rt.log_root, "report.html"))


def _fail_first_attempt(rt, inputs, output_path):
    task = rt.task
    if task.retry_count == 0:
        raise OSError("transient failure on purpose")
    open(os.path.join(output_path, "ok.txt"), "w").close()
    return True


def test_retries_and_failures_are_logged_with_decisions(make_rt, parquet_files, no_plan_check):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    flaky = PythonScriptNode(ctx, (src,), process_func=_fail_first_attempt)
    rt = make_rt()
    run_job(LogicalPlan(ctx, flaky), rt, num_workers=1)
    run = JobHistory.load(rt.log_root).last
    fails = run.failures
    assert len(fails) == 1 and fails[0]["decision"] == "retry" and "transient failure" in fails[0]["error"]
    assert fails[0]["log"] == f"tasks/{fails[0]['key']}.0.log"
    assert run.nodes[int(flaky.id)].retries == 1 and run.nodes[int(flaky.id)].done == 1

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    bad = SqlEngineNode(ctx, (src,), "select no_such_column from {0}")
    rt = make_rt()
    with pytest.raises(JobFailed):
        run_job(LogicalPlan(ctx, bad), rt, num_workers=1)
    events = read_events(rt.log_root)
    end = events[-1]
    assert end["ev"] == "job_end" and end["status"] == "failure"
    assert "no_such_column" in end["error"] and end["log"].startswith("tasks/SqlEngineTask-")
    failed = [e for e in events if e["ev"] == "failed"]
    assert [e["decision"] for e in failed] == ["fail"]


def test_resumed_tasks_are_logged_as_a_second_run(make_rt, parquet_files):
    plan, nodes = _plan(parquet_files)
    job_id = "resume-events"
    run_job(plan, make_rt(job_id))
    plan, nodes = _plan(parquet_files)
    rt = make_rt(job_id)
    run_job(plan, rt)
    history = JobHistory.load(rt.log_root)
    assert len(history.runs) == 2
    second = history.last
    assert second.total("resumed") > 0 and not second.attempts  # nothing ran again
    scan = scan_last_run(rt.log_root)
    assert scan["resumed"] == second.total("resumed") and scan["done"] == 0 and scan["end"]["status"] == "success"


def test_a_torn_last_line_is_ignored(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    good = [{"ev": "job_start", "t": 1.0, "job_id": "x"}, {"ev": "node", "t": 1.1, "id": 1, "label": "N", "tasks": 1}]
    with open(log / "events.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in good)
        f.write('{"ev":"done","t":1.2,"key":"T-1","no')  # the process died mid-write
    assert read_events(str(log)) == good
    run = JobHistory.load(str(log)).last
    assert run.status == "running" and run.nodes[1].planned == 1


def test_a_run_after_a_torn_last_line_starts_on_a_new_line(make_rt, parquet_files):
    # kill -9 while the log's buffer is written leaves a line without its end; the next run of the
    # job appended its job_start to it, so the report, status and summary took both runs for one
    job_id = "torn-then-resumed"
    plan, _ = _plan(parquet_files)
    rt = make_rt(job_id)
    run_job(plan, rt)
    path = os.path.join(rt.log_root, "events.jsonl")
    lines = open(path, encoding="utf-8").read().splitlines(True)
    with open(path, "w", encoding="utf-8") as f:  # the job_end half written
        f.writelines(lines[:-1])
        f.write(lines[-1][: len(lines[-1]) // 2])
    plan, _ = _plan(parquet_files)
    run_job(plan, make_rt(job_id))
    history = JobHistory.load(rt.log_root)
    assert [r.status for r in history.runs] == ["running", "success"]
    second = history.last
    assert second.total("resumed") > 0 and not second.attempts  # nothing ran again
    scan = scan_last_run(rt.log_root)
    assert scan["done"] == 0 and scan["resumed"] == second.total("resumed") and scan["start"]["ev"] == "job_start"
    # the torn line stays alone: every line holds one event
    assert all(ln.count('{"ev":') == 1 for ln in open(path, encoding="utf-8"))


def test_an_event_glued_to_a_torn_line_is_still_read(tmp_path):
    # logs written before runs started on a new line: the torn event is dropped, the next kept
    log = tmp_path / "log"
    log.mkdir()
    with open(log / "events.jsonl", "w") as f:
        f.write('{"ev":"job_start","t":1.0,"job_id":"x"}\n{"ev":"done","t":1.2,"key":"T-1","no')
        f.write('{"ev":"job_start","t":5.0,"job_id":"x"}\n{"ev":"resumed","t":5.1,"key":"T-1","node":1}\n')
    assert [e["t"] for e in read_events(str(log))] == [1.0, 5.0, 5.1]
    assert len(JobHistory.load(str(log)).runs) == 2
    scan = scan_last_run(str(log))
    assert scan["start"]["t"] == 5.0 and (scan["done"], scan["resumed"]) == (0, 1)


def test_a_killed_run_lasted_until_its_logs_were_last_written(tmp_path):
    # its events are written in batches: the last one written may be its start; its workers'
    # logs say how long it ran ("crashed in 291 ms" for a job that ran 3 s)
    from smallpond.execution.summary import summary_of

    log = tmp_path / "log"
    (log / "workers").mkdir(parents=True)
    start = 1_000_000.0
    with open(log / "events.jsonl", "w") as f:
        f.write(json.dumps({"ev": "job_start", "t": start, "job_id": "abc", "name": "n"}) + "\n")
    os.utime(log / "events.jsonl", (start + 0.3, start + 0.3))
    (log / "workers" / "w.log").write_text("a line\n")
    os.utime(log / "workers" / "w.log", (start + 3.0, start + 3.0))
    (log / "report.html").write_text("written later, by a command")
    text = summary_of(str(tmp_path), state="crashed")
    assert " in 3.0" in text.splitlines()[0], text


def test_a_killed_runs_summary_shows_the_node_whose_tasks_were_running(tmp_path):
    """A node none of whose tasks ended (they were running when the run was killed) is a row of
    the summary, with its running tasks and its wall time until the run's last sign of life: it
    was left out, as a node with nothing done."""
    from smallpond.execution.summary import summary_of

    log = tmp_path / "log"
    log.mkdir()
    start = 1_000_000.0
    events = [
        {"ev": "job_start", "t": start, "job_id": "abc"},
        {"ev": "node", "t": start, "id": 2, "label": "HashPartitionNode-000002", "tasks": 1},
        {"ev": "node", "t": start, "id": 3, "label": "Slow-000003", "tasks": 8},
        {"ev": "done", "t": start + 0.5, "key": "H-1", "node": 2, "attempt": 0, "started": start + 0.1, "elapsed": 0.4},
        {"ev": "submit", "t": start + 1.0, "key": "S-1", "node": 3, "attempt": 0},
        {"ev": "submit", "t": start + 1.1, "key": "S-2", "node": 3, "attempt": 0},
    ]
    (log / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    os.utime(log / "events.jsonl", (start + 3.0, start + 3.0))  # the scheduler's last heartbeat
    text = str(summary_of(str(tmp_path), state="crashed"))
    assert text.splitlines()[0].endswith("crashed in 3.0 s"), text
    row = next((ln for ln in text.splitlines() if "Slow-000003" in ln), None)
    assert row is not None, text
    assert row.split()[1:3] == ["0/8", "2.0"] and row.endswith("(2 running)"), row


def test_a_running_scheduler_marks_its_event_log_written(tmp_path):
    """The event log's modification time is the scheduler's heartbeat (several times a second):
    a run killed while its tasks ran without a line to log lasted, for `smallpond status`, until
    its last write ('crashed in 1.3 s' for a run killed after about 2 s)."""
    from smallpond.execution.events import EventLog

    ev_log = EventLog(str(tmp_path))
    ev_log.emit("job_start", job_id="abc")
    ev_log.flush()
    path = tmp_path / "events.jsonl"
    os.utime(path, (1_000_000.0, 1_000_000.0))
    ev_log.on_tick(None, 5.0)
    assert abs(os.path.getmtime(path) - time.time()) < 60
    ev_log.close()


def test_inline_failures_are_reported_at_the_end(make_rt, tmp_path):
    from smallpond.logical.dataset import FileSet

    ctx = Context()
    # a FileSet cannot be read by SQL: the SQL task fails (fail fast), the inline tasks succeed
    src = DataSourceNode(ctx, FileSet([str(tmp_path / "x.txt")]))
    (tmp_path / "x.txt").write_text("x")
    parts = DataSetPartitionNode(ctx, (src,), npartitions=1)
    bad = SqlEngineNode(ctx, (parts,), "select * from {0}")
    rt = make_rt()
    with pytest.raises(JobFailed):
        run_job(LogicalPlan(ctx, bad), rt, num_workers=1)
    history = JobHistory.load(rt.log_root)
    assert history.last.status == "failure"
    assert history.last.nodes[int(bad.id)].failed == 1


def test_the_log_of_a_run_that_died_shows_the_attempts_still_running(tmp_path):
    """A submission is written at the next flush for an attempt still running then (and skipped
    for one that already ended): the log of a scheduler killed mid-run shows what was running."""
    import types

    from smallpond.errors import WorkerLost
    from smallpond.execution.events import EventLog
    from smallpond.execution.executors.base import Completion
    from smallpond.execution.sched_state import Decision

    log = EventLog(str(tmp_path))
    task = {k: types.SimpleNamespace(key=k, node_id=1) for k in ("A", "B", "C")}
    for k in task:
        log.on_submit(task[k], 0, 1 << 20)
    log.on_completion(task["A"], Completion("A", 0, True, None, None, 0.1, "w", 1.0, {}), None)
    lost = Completion("C", 0, False, None, WorkerLost("gone"), 0.0, "w", 0.0, {})
    log.on_completion(task["C"], lost, Decision.RETRY)
    log.flush()  # then the process dies: no more events
    events = read_events(str(tmp_path))
    submitted = sorted(e["key"] for e in events if e["ev"] == "submit")
    assert submitted == ["B", "C"], "B runs still; C's failure needs its submission for its start"
    run = JobHistory(events).last
    assert (run.node(1).done, run.node(1).running) == (1, 1)


def test_the_latest_runs_scan_counts_tasks_taken_from_the_task_cache(tmp_path):
    # `smallpond jobs` showed done + resumed: a job served from the task cache looked smaller
    from smallpond.execution.catalog import describe_job

    job = tmp_path / "2026-01-01-00-00-00.aaaaaaaa-0000-0000-0000-000000000001"
    log = job / "log"
    log.mkdir(parents=True)
    (log / ".STATUS").write_text("success@2026-01-01-00-00-00\n")
    events = [
        {"ev": "job_start", "t": 1.0, "job_id": "x"},
        {"ev": "reused", "t": 1.1, "key": "T-1"},
        {"ev": "reused", "t": 1.2, "key": "T-2"},
        {"ev": "done", "t": 1.3, "key": "T-3"},
        {"ev": "job_end", "t": 1.4, "status": "success"},
    ]
    with open(log / "events.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
    scan = scan_last_run(str(log))
    assert (scan["done"], scan["reused"], scan["resumed"]) == (1, 2, 0)
    info = describe_job(str(job))
    assert info.tasks_done + info.tasks_resumed + info.tasks_reused == 3


def test_the_history_kept_in_memory_is_the_one_read_back_and_lines_are_plain_json(tmp_path):
    """The event log feeds its in-memory history (the summary, the report of a first run) what it
    writes, in the same order: submissions kept for a flush included (an attempt still running at
    the flush, and one that failed after it, and one taken back after). Attempts' events are
    encoded by a C encoder made once: each line is what ``json.dumps`` makes of it (ASCII only)."""
    import types

    from smallpond.errors import WorkerLost
    from smallpond.execution.events import EventLog
    from smallpond.execution.executors.base import Completion
    from smallpond.execution.sched_state import Decision

    log = EventLog(str(tmp_path))
    task = {k: types.SimpleNamespace(key=k, node_id=1 if k < "D" else 2) for k in ("A", "B", "C", "D", "E")}
    for k in task:
        log.on_submit(task[k], 0, 1 << 20)
    stats = {"rows": 3, "bytes": 10, "read": 15, "cpu": 0.25, "peak_memory": 1 << 20, "memory": 1 << 21}
    log.on_completion(task["A"], Completion("A", 0, True, None, None, 0.1, 'wörker "1"', 1.0, stats), None)
    log.on_inline(types.SimpleNamespace(key="I", node_id=3), True, 0.01)
    log.flush()  # B, C, D, E still run: their submissions are written
    log.on_completion(task["B"], Completion("B", 0, False, None, WorkerLost("gone"), 0.0, "w", 0.0, {}), Decision.RETRY)
    log.on_cancelled(task["D"], 0, "another attempt finished first")
    log.on_submit(task["C"], 1, 1 << 20)
    log.on_completion(task["C"], Completion("C", 1, True, None, None, 0.2, "w", 2.0, {"rows": 1}), None)
    log.close()

    with open(os.path.join(str(tmp_path), "events.jsonl"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        assert line == json.dumps(json.loads(line), separators=(",", ":"), default=str)
    assert '"worker":"w\\u00f6rker \\"1\\""' in lines[0]
    kinds = [(e["ev"], e.get("key")) for e in map(json.loads, lines)]
    assert kinds[:2] == [("done", "A"), ("inline", None)]
    assert sorted(kinds[2:6]) == [("submit", k) for k in "BCDE"]

    read_back = JobHistory.load(str(tmp_path)).last
    in_memory = log.history.last
    assert read_back.attempts == in_memory.attempts
    assert read_back.running == in_memory.running and list(read_back.running) == [("C", 0), ("E", 0)]
    for nid in (1, 2, 3):
        assert vars(read_back.node(nid)) == vars(in_memory.node(nid)), nid
    assert (in_memory.node(1).done, in_memory.node(1).retries, in_memory.node(2).cancelled) == (2, 1, 1)


def _kill_own_worker(rt, inputs, output_path):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_lost_workers_failure_names_the_log_holding_its_start_line(make_rt, parquet_files, no_plan_check):
    """An attempt whose worker was killed logged nothing of its own: its failure, the job's end
    (the summary's "task log:") and the report named ``tasks/{key}.0.log``, a file that does not
    exist. They name the worker's log, which holds the attempt's start line."""
    from smallpond.execution.summary import summary_of

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    killer = PythonScriptNode(ctx, (src,), process_func=_kill_own_worker)
    rt = make_rt()
    with pytest.raises(JobFailed):
        run_job(LogicalPlan(ctx, killer), rt, num_workers=1, max_retry_count=1)
    events = read_events(rt.log_root)
    failed = [e for e in events if e["ev"] == "failed"]
    end = events[-1]
    assert len(failed) == 2 and "WorkerLost" in end["error"]
    for ev in (*failed, end):
        assert ev["log"].startswith("workers/"), ev
        with open(os.path.join(rt.log_root, ev["log"])) as f:
            assert f" - start {failed[0]['key']} attempt {ev.get('attempt', 1)} " in f.read()
    text = str(summary_of(rt.job_root))
    path = next(ln for ln in text.splitlines() if "task log:" in ln).split("task log:", 1)[1].strip()
    assert os.path.exists(path)


def test_an_attempts_worker_log_is_found_in_the_tails_first_then_anywhere(tmp_path):
    from smallpond.execution import events

    workers = tmp_path / "workers"
    workers.mkdir()
    filler = "".join(f"x | INFO | m - done T-{i} attempt 0 in 0.1s\n" for i in range(2000))  # > the tail read first
    (workers / "vm-1.log").write_text("x | INFO | m - start A attempt 0 of N\n" + filler)
    (workers / "vm-2.log").write_text(filler + "x | INFO | m - start B attempt 1 of N\n")
    assert len(filler) > events._LOG_TAIL_BYTES
    assert events.attempt_log_relpath(str(tmp_path), "B", 1) == "workers/vm-2.log"
    assert events.attempt_log_relpath(str(tmp_path), "A", 0) == "workers/vm-1.log"
    assert events.attempt_log_relpath(str(tmp_path), "A", 1) is None
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "A.0.log").write_text("its own\n")
    assert events.attempt_log_relpath(str(tmp_path), "A", 0) == "tasks/A.0.log"
    assert events.existing_attempt_log(str(tmp_path), "tasks/B.1.log") == "workers/vm-2.log"
    assert events.existing_attempt_log(str(tmp_path), "tasks/C.0.log") is None
