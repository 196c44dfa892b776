"""Acceptance: a job killed with SIGKILL midway resumes with the same command and job id.

The job (tests/e2e/counting_job.py, 33 worker tasks) runs through the Driver as a subprocess. It
is killed once a fixed number of commit records exist; the rerun must finish, must not execute
again any task that was committed before the kill, and must give the output of a clean run.
"""

from __future__ import annotations

import collections
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Set

import psutil
import pytest

from tests.datagen import generate_parquet_files, parquet_paths_in, read_parquet, rows

COUNTING_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "counting_job.py")
NPARTITIONS = 16
WORKER_TASKS = 2 * NPARTITIONS + 1  # compute + sort per partition, and the sink


def job_command(
    job_id: str, data_root: str, inputs: List[str], counter: str, sink: str, *extra: str, npartitions: int = NPARTITIONS
) -> List[str]:
    return [
        sys.executable,
        COUNTING_JOB,
        "scheduler",
        "--job_id",
        job_id,
        "--data_root",
        data_root,
        "--num_executors",
        "2",
        *extra,
        "-i",
        *inputs,
        "-c",
        counter,
        "-o",
        sink,
        "-n",
        str(npartitions),
    ]


def job_root(data_root: str, job_id: str) -> str:
    roots = glob.glob(os.path.join(data_root, f"*.{job_id}"))
    assert len(roots) == 1, roots
    return roots[0]


def committed(root: str) -> Set[str]:
    return {
        os.path.basename(p)[: -len(".commit")] for p in glob.glob(os.path.join(root, "staging", "completed_tasks", "*.commit"))
    }


def started(root: str) -> collections.Counter:
    """How many times each task key was started, from the attempts' logs."""
    from smallpond.execution.attempt import logged_attempts

    return collections.Counter(key for key, _ in logged_attempts(os.path.join(root, "log")))


def counter_lines(counter: str) -> List[str]:
    if not os.path.exists(counter):
        return []
    with open(counter) as f:
        return f.read().split()


def expected_rows(inputs: List[str]) -> List[tuple]:
    t = read_parquet(inputs)
    return sorted((i, k, n, 2 * i) for i, k, n in rows(t, ["id", "key", "name"]))


def sink_rows(sink: str) -> List[tuple]:
    return sorted(rows(read_parquet(parquet_paths_in(sink)), ["id", "key", "name", "doubled"]))


def wait_for_commits(root_glob: str, n: int, proc: subprocess.Popen, deadline: float = 120) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        roots = glob.glob(root_glob)
        if roots and len(committed(roots[0])) >= n:
            return roots[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"job exited with {proc.returncode} before {n} commits:\n{err[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"fewer than {n} commit records after {deadline}s")


@pytest.mark.parametrize("kill", ["process_group", "driver_only"])
def test_resume_after_sigkill(tmp_path, data_root, kill):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=40)
    counter = str(tmp_path / "counter.txt")
    sink = str(tmp_path / "sink")
    job_id = str(uuid.uuid4())
    cmd = job_command(job_id, data_root, inputs, counter, sink, "--sleep", "0.05")

    proc = subprocess.Popen(
        cmd, cwd=str(tmp_path), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    root = wait_for_commits(os.path.join(data_root, f"*.{job_id}"), 10, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    if kill == "process_group":
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers: a crashed machine
    else:
        os.kill(proc.pid, signal.SIGKILL)  # only the driver; its workers notice and exit
    proc.communicate()
    # orphaned workers finish the task they hold, then exit: wait, so the counts below are stable
    # (the rerun would be correct either way)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived their driver: {alive}"
    done_before: Set[str] = committed(root)
    started_before = started(root)
    counted_before = len(counter_lines(counter))
    assert len(done_before) < WORKER_TASKS, "the job finished before it was killed"
    assert not os.path.exists(sink), "a killed job published a partial result"
    with open(os.path.join(root, "log", ".STATUS")) as f:
        assert f.read().split()[-1].startswith("running@")

    rerun = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert job_root(data_root, job_id) == root, "the rerun must reuse the job root"

    started_after = started(root)
    rerun_started: Dict[str, int] = {k: started_after[k] - started_before.get(k, 0) for k in started_after}
    rerun_started = {k: n for k, n in rerun_started.items() if n > 0}
    assert not set(rerun_started) & done_before, "a task committed before the kill ran again"
    assert len(rerun_started) <= WORKER_TASKS - len(done_before)
    assert set(rerun_started) | done_before >= {k for k in started_after}, "some task never finished"
    # the process function's own count agrees: executions in the rerun are of unfinished tasks only
    rerun_counted = counter_lines(counter)[counted_before:]
    assert not set(rerun_counted) & done_before
    assert len(rerun_counted) <= NPARTITIONS - len([k for k in done_before if k.startswith("ArrowComputeTask")])

    assert sink_rows(sink) == expected_rows(inputs)
    with open(os.path.join(root, "log", ".STATUS")) as f:
        assert f.read().split()[-1].startswith("success@")
    # what the killed attempts left half-written is cleaned, never published
    assert not glob.glob(os.path.join(root, "staging", "*", "*.tmp-*"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith("sink.")]

    if kill == "process_group":
        # once finished, a rerun executes nothing and leaves the result as it was
        counted = len(counter_lines(counter))
        again = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stderr[-3000:]
        assert started(root) == started_after
        assert len(counter_lines(counter)) == counted
        assert sink_rows(sink) == expected_rows(inputs)


def test_rerun_republishes_a_deleted_sink(tmp_path, make_rt):
    from smallpond.execution.job import run_job
    from tests.e2e.counting_job import counting_plan

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), make_rt(job_id), num_workers=2)
    assert sink_rows(sink) == expected_rows(inputs)
    shutil.rmtree(sink)
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), make_rt(job_id), num_workers=2)
    assert sink_rows(sink) == expected_rows(inputs)
    assert len(counter_lines(counter)) == 3, "only the sink had to run again"


def test_fully_resumed_rerun_still_gives_every_tasks_result(tmp_path, make_rt):
    """A rerun of a finished job runs no worker task, and the metadata-only tasks behind the
    committed ones (the source, the partitions' producers and consumers) were not needed, so they
    no longer ran: exec_plan.results left them out (get_output and a task's result were gone) and
    the report showed their nodes as waiting. Their outputs are rebuilt from their inputs."""
    from smallpond.execution.events import JobHistory
    from smallpond.execution.job import run_job
    from tests.e2e.counting_job import counting_plan

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    runs = [run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), make_rt(job_id), num_workers=2) for _ in "ab"]
    first, again = runs
    assert len(counter_lines(counter)) == 3, "the rerun ran a compute task"
    assert again.num_resumed > 0 and set(again.results) == set(again.tasks) == set(first.results)
    for key, task in first.tasks.items():
        if task.exec_on_scheduler:
            assert sorted(again.results[key].resolved_paths) == sorted(first.results[key].resolved_paths), key
    run = JobHistory.load(make_rt(job_id).log_root).runs[-1]
    assert {ns.label: ns.state for ns in run.nodes.values()} == {ns.label: "done" for ns in run.nodes.values()}


def test_rerun_republishes_a_deleted_sink_beside_another(tmp_path, make_rt):
    # two sinks under a RootNode: FinalResults (of the root, which has no files) stays committed,
    # and the deleted sink must still be a target of its own (it was not published again)
    from smallpond.execution.job import run_job
    from tests.e2e.publish_job import publish_plan
    from tests.e2e.safety_helpers import published_rows

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    a, b, job_id = str(tmp_path / "A"), str(tmp_path / "B"), str(uuid.uuid4())
    run_job(publish_plan(inputs, a, b), make_rt(job_id), num_workers=2)
    assert published_rows(b, "id") == [2 * i for i in range(10)]
    shutil.rmtree(b)
    a_files = {n: os.stat(os.path.join(a, n)).st_ino for n in os.listdir(a)}
    run_job(publish_plan(inputs, a, b), make_rt(job_id), num_workers=2)
    assert published_rows(b, "id") == [2 * i for i in range(10)]
    assert {n: os.stat(os.path.join(a, n)).st_ino for n in os.listdir(a)} == a_files, "A was published again"


def test_changed_input_is_recomputed_not_reused(tmp_path, make_rt):
    from smallpond.execution.job import run_job
    from tests.e2e.counting_job import counting_plan

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), make_rt(job_id), num_workers=2)
    generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=12, seed=1)  # same names, new rows
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), make_rt(job_id), num_workers=2)
    assert sink_rows(sink) == expected_rows(inputs)
    assert len(sink_rows(sink)) == 24
    assert len(counter_lines(counter)) == 6


def fail_unless_fixed(runtime_ctx, tables):
    if os.environ.get("SP_TEST_SETTING") != "fixed":
        raise RuntimeError(f"SP_TEST_SETTING is {os.environ.get('SP_TEST_SETTING')!r}")
    return tables[0]


def test_rerun_runs_with_the_new_settings(tmp_path, make_rt, monkeypatch):
    """Fix the environment and rerun: workers must see the rerun's settings, not the first run's."""
    from smallpond.errors import JobFailed
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan

    monkeypatch.setenv("SP_TEST_SETTING", "unset")  # restored after the test (run_job sets it)
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)

    def plan():
        ctx = Context()
        return LogicalPlan(
            ctx, ArrowComputeNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), process_func=fail_unless_fixed)
        )

    job_id = str(uuid.uuid4())
    with pytest.raises(JobFailed, match="'broken'"):
        run_job(plan(), make_rt(job_id, env_overrides={"SP_TEST_SETTING": "broken"}), num_workers=1, max_fail_count=1)
    result = run_job(plan(), make_rt(job_id, env_overrides={"SP_TEST_SETTING": "fixed"}), num_workers=1)
    assert result.final_output.num_rows == 5


def tag_with_mode(runtime_ctx, tables):
    import pyarrow as pa

    t = tables[0]
    return t.append_column("mode", pa.array([os.environ.get("SP_TEST_MODE", "?")] * t.num_rows))


def test_a_rerun_with_other_settings_resumes_nothing_they_change(tmp_path, make_rt, monkeypatch):
    """The same job run again with other ``--env_variables`` or ``skip_task_with_empty_input``
    (both keyed by the task cache): its finished tasks' outputs were computed with the old values
    and are not resumed (with the cache off, so only resume could serve them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode

    monkeypatch.setenv("SP_TEST_MODE", "unset")  # restored after the test (run_job sets it)
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)

    def tagged():
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(inputs))
        return LogicalPlan(ctx, ArrowComputeNode(ctx, (src,), process_func=tag_with_mode))

    def modes(mode: str) -> set:
        rt = make_rt("settings-env", task_cache="off", env_overrides={"SP_TEST_MODE": mode})
        return set(run_job(tagged(), rt, num_workers=1).final_output.to_arrow_table().column("mode").to_pylist())

    assert modes("alpha") == {"alpha"}
    assert modes("beta") == {"beta"}, "the rerun resumed the output computed with SP_TEST_MODE=alpha"
    assert modes("beta") == {"beta"}

    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"x": [1]}), path)  # one row: partition 1 of 2 is empty

    def counts(skip: bool) -> list:
        ctx = Context()
        parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 2, partition_by_rows=True)
        plan = LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select count(*) as n from {0}"))
        rt = make_rt("settings-skip", task_cache="off", skip_task_with_empty_input=skip)
        return sorted(r["n"] for r in run_job(plan, rt, num_workers=1).final_output.to_arrow_table().to_pylist())

    assert counts(False) == [0, 1]
    assert counts(True) == [1], "the rerun resumed the row of 0 written for the empty partition"
    assert counts(False) == [0, 1]


def test_torn_record_of_a_task_nothing_needs_is_set_aside_once(tmp_path, data_root):
    """A torn commit record of a task whose consumer is complete (a manifest sink that lists the
    task's files, published): the rerun neither runs the task nor warns that it runs again; it sets
    the record aside (never trusting it), saying so once at the info level, keeps the files the
    manifest lists, and the next rerun is silent about it."""
    import json

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    counter, sink, job_id = str(tmp_path / "counter.txt"), str(tmp_path / "sink"), str(uuid.uuid4())
    cmd = job_command(job_id, data_root, inputs, counter, sink, "--sleep", "0", "--sink_type", "manifest", npartitions=3)
    env = dict(os.environ, SP_TASK_CACHE="off")  # with the cache, the task would be reused from its entry
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    root = job_root(data_root, job_id)
    record = sorted(glob.glob(os.path.join(root, "staging", "completed_tasks", "SqlEngineTask-*.commit")))[0]
    with open(record, "r+b") as f:
        f.truncate(10)
    listed = [line.strip() for line in open(os.path.join(sink, ".MANIFEST.txt"))]
    before = started(root)
    for rerun in (1, 2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert started(root) == before, "a task ran again"
        assert "WARNING" not in done.stderr and "runs again" not in done.stderr, done.stderr[-3000:]
        noted = [line for line in done.stderr.splitlines() if "set aside" in line]
        assert len(noted) == (1 if rerun == 1 else 0) and all("INFO" in line for line in noted), done.stderr[-3000:]
        assert all(os.path.exists(p) for p in listed), "a file the published manifest lists was removed"
    assert not os.path.exists(record) and os.path.exists(record + ".damaged")
    with open(os.path.join(root, "log", "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    last_starts = [i for i, ev in enumerate(events) if ev["ev"] == "job_start"][1]
    assert not [ev for ev in events[last_starts:] if ev["ev"] == "submit"], "a rerun submitted a task"
