"""The queue backend's guarantees, with real executor processes and real files.

* claims are exclusive: every attempt runs on exactly one executor;
* items are signed: a forged one is refused, never run;
* a hung executor is noticed within the timeout, its attempt retried elsewhere, and it exits
  (status 75) when it wakes up;
* a cancelled attempt is killed on its executor and never reported;
* generations: a new scheduler of the job kills what executors still run for the old one before
  it starts (a rerun on another backend too), and an outcome of the old generation is never
  taken for one of the new;
* executors the scheduler launched exit when it is killed (no orphans), executors started later
  are waited for, and a job whose launched executors all die fails with a clear message;
* an executor started by hand after a run ended waits for the rerun (up to ``SP_QUEUE_WAIT``).

The scheduler runs either in this process (a :class:`QueueExecutor` driven directly) or as a
Driver subprocess (``tests/execution/queue_job.py``); executors are always real processes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Dict, List, Tuple

import psutil
import pytest

from smallpond.errors import TaskError, WorkerLost
from smallpond.execution.attempt import run_inline
from smallpond.execution.executors.queue import QueueExecutor
from smallpond.execution.executors.queue_protocol import ItemName, QueuePaths, QueueSettings, read_json
from smallpond.execution.planner import Planner
from smallpond.io.filesystem import signed_bytes, verified_payload
from tests.backends.backend_queue import alive, job_executors
from tests.datagen import generate_parquet_files
from tests.execution.queue_job import queue_plan
from tests.processes import alive as pid_alive

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUEUE_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "queue_job.py")
#: timing of the schedulers run here: a lenient timeout where the test does not depend on it (a
#: loaded machine must not make a live executor look lost), a short one where it does
SETTINGS = QueueSettings(heartbeat=0.2, timeout=10.0, wait=30.0)
FAST = QueueSettings(heartbeat=0.2, timeout=2.0, wait=30.0)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="executors' workers die with them on Linux"),
    pytest.mark.queue,
]


def queue_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ, SP_PROGRESS="0", SP_QUEUE_HEARTBEAT="0.2", SP_QUEUE_TIMEOUT="10", SP_QUEUE_WAIT="30")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def start_executors(n: int, job_id: str, data_root: str, **extra: str) -> List[subprocess.Popen]:
    """``n`` executors started by hand (``queue_job.py executor ...``), sharing this host."""
    cmd = [sys.executable, QUEUE_JOB, "executor", "--job_id", job_id, "--data_root", data_root]
    env = queue_env(SP_EXECUTORS_ON_HOST=str(n), **extra)
    return [
        subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(n)
    ]


def stop(procs: List[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def markers(path: str) -> List[Tuple[str, str, int, int]]:
    """(kind, task key, attempt, pid) of every marker the tasks left."""
    out = []
    for name in os.listdir(path):
        kind, key, attempt, pid = name.split(".")
        out.append((kind, key, int(attempt), int(pid)))
    return out


def wait_until(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"waited {seconds}s for {what}")


def driver_command(job_id: str, data_root: str, inputs: List[str], marker_dir: str, *extra: str) -> List[str]:
    return [
        sys.executable,
        QUEUE_JOB,
        "scheduler",
        "--job_id",
        job_id,
        "--data_root",
        data_root,
        *extra,
        "-i",
        *inputs,
        "-m",
        marker_dir,
    ]


@pytest.fixture
def inputs(tmp_path) -> List[str]:
    return generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)


@pytest.fixture
def marker_dir(tmp_path) -> str:
    path = tmp_path / "markers"
    path.mkdir()
    return str(path)


def planned_task(rt, inputs: List[str], marker_dir: str, sleep: float):
    """The one PythonScript task of a one-partition ``queue_plan`` and its inputs."""
    plan = queue_plan(inputs, marker_dir, npartitions=1, sleep=sleep, always_slow=True)
    planner = Planner(rt)
    tasks = planner.plan(plan.root_node)
    results = {}
    for key, t in planner.tasks.items():  # the metadata-only tasks before it, in planning order
        if t.exec_on_scheduler:
            results[key] = run_inline(rt, t, [results[d] for d in t.input_keys])
    (task,) = tasks
    return task, [results[d] for d in task.input_keys]


@pytest.fixture
def queue_executor(make_rt):
    """A started QueueExecutor (executors by hand) in this process; shut down after the test."""
    executors: List[QueueExecutor] = []

    def make(rt=None, settings: QueueSettings = SETTINGS) -> QueueExecutor:
        rt = rt or make_rt()
        rt.initialize()
        qe = QueueExecutor(rt, platform="manual", settings=settings)
        qe.start()
        executors.append(qe)
        return qe

    yield make
    for qe in executors:
        qe.shutdown()


def poll_until_some(qe: QueueExecutor, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = qe.poll(0.2)
        if out:
            return out
    return []


# -- claims, signatures, cancellation ------------------------------------------------------------


def test_every_attempt_runs_on_exactly_one_executor(tmp_path, inputs, marker_dir):
    """Three executors race for 30 short attempts: each is claimed (and run) once."""
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    procs = start_executors(3, job_id, data_root)
    try:
        cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "manual", "-n", "30")
        cmd += ["--sleep", "0.2"]  # (6 s for one executor alone: on a loaded machine the others have started)
        proc = subprocess.run(cmd, env=queue_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        starts = [m for m in markers(marker_dir) if m[0] == "start"]
        assert len(starts) == 30 and len({m[1] for m in starts}) == 30, sorted(starts)
        # they took turns: more than one executor ran attempts
        assert len({m[3] for m in starts}) > 1
        # three executors on one host, three registrations (upstream's shared one exec id per host)
        (root,) = glob.glob(os.path.join(data_root, "*"))
        assert len(os.listdir(os.path.join(root, "queue", "executors"))) == 3
        for p in procs:
            assert p.wait(30) == 0, p.stderr.read()[-2000:]
    finally:
        stop(procs)


def test_attempts_an_executor_queued_behind_a_long_one_go_to_the_idle_executor(tmp_path, inputs, marker_dir):
    """Two one-CPU executors; partition 5 runs until every other one has ended. The executor
    that runs it claimed attempts to run behind it while it looked short; it gives them back
    (its worker never started them) and the other executor runs them: partition 5 sees them all
    end. Without that they wait behind it, which waits for them (up to 60 s: on a loaded machine the
    others may take many seconds), and it gives up."""
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    procs = start_executors(2, job_id, data_root)
    try:
        cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "manual", "-n", "24")
        cmd += ["--sleep", "60", "--slow_partition", "5"]
        proc = subprocess.run(cmd, env=queue_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        starts = [m for m in markers(marker_dir) if m[0] == "start"]
        assert len(starts) == 24 and len({m[1] for m in starts}) == 24, sorted(starts)  # each ran once
        assert [m[0] for m in markers(marker_dir) if m[0] == "saw"] == ["saw"], "attempts waited behind the slow one"
    finally:
        stop(procs)


def test_a_forged_item_is_refused_not_run(queue_executor, inputs, marker_dir):
    qe = queue_executor()
    task, task_inputs = planned_task(qe.rt, inputs, marker_dir, sleep=0)
    qe.submit(task, task_inputs, 0, memory=256 << 20)
    (item,) = os.listdir(qe.paths.todo)
    path = os.path.join(qe.paths.todo, item)
    with open(path, "rb") as f:
        genuine = f.read()
    # the same content, signed by someone without the job's secret
    with open(path, "wb") as f:
        f.write(signed_bytes(verified_payload(genuine, qe.rt.secret), os.urandom(32)))
    procs = start_executors(1, str(qe.rt.job_id), qe.rt.data_root)
    try:
        (c,) = poll_until_some(qe, 60)
        assert not c.ok and isinstance(c.error, TaskError) and not c.error.retryable
        assert "refused queued item" in str(c.error) and "signature does not match" in str(c.error)
        assert markers(marker_dir) == [], "a forged item was run"
    finally:
        qe.shutdown()
        stop(procs)


def test_an_attempt_given_elastic_threads_is_claimed_for_as_many_cpus(queue_executor, inputs, marker_dir):
    """An executor claims an item for the CPUs its name says (and runs others beside it on the rest):
    an attempt the scheduler gave elastic threads (DuckDB threads beyond its cpu_limit, CPUs it
    reserved) must say those, or a 2-CPU executor would run a second task beside its 2 threads."""
    import copy

    qe = queue_executor()
    task, task_inputs = planned_task(qe.rt, inputs, marker_dir, sleep=0)
    sent = copy.copy(task)
    sent.threads = 3
    qe.submit(task, task_inputs, 0, memory=256 << 20)
    qe.submit(sent, task_inputs, 1, memory=256 << 20)
    names = [ItemName.parse(n) for n in os.listdir(qe.paths.todo)]
    assert [(n.attempt, n.cpus) for n in sorted(names, key=lambda n: n.attempt)] == [(0, task.cpu_limit), (1, 3)]


def test_a_cancelled_attempt_is_killed_and_not_reported(queue_executor, inputs, marker_dir):
    qe = queue_executor()
    task, task_inputs = planned_task(qe.rt, inputs, marker_dir, sleep=30)
    procs = start_executors(1, str(qe.rt.job_id), qe.rt.data_root)
    try:
        qe.submit(task, task_inputs, 0, memory=256 << 20)
        (_, _, _, pid) = wait_until(lambda: markers(marker_dir), 60, "the attempt to start")[0]
        qe.cancel(task.key, 0)
        wait_until(lambda: not pid_alive(pid), 60, "the worker to die")
        assert qe.poll(1.0) == []
        assert [m for m in markers(marker_dir) if m[0] == "end"] == []
        assert os.listdir(qe.paths.member(os.listdir(qe.paths.executors)[0], "claimed")) == []
    finally:
        qe.shutdown()
        stop(procs)


def test_a_killed_executors_worker_dies_with_it_and_its_attempt_is_lost(queue_executor, inputs, marker_dir):
    qe = queue_executor()
    task, task_inputs = planned_task(qe.rt, inputs, marker_dir, sleep=30)
    procs = start_executors(1, str(qe.rt.job_id), qe.rt.data_root)
    try:
        qe.submit(task, task_inputs, 0, memory=256 << 20)
        (_, _, _, pid) = wait_until(lambda: markers(marker_dir), 60, "the attempt to start")[0]
        procs[0].kill()
        (c,) = poll_until_some(qe, 30)
        assert (c.key, c.attempt, c.ok) == (task.key, 0, False) and isinstance(c.error, WorkerLost)
        assert "died" in str(c.error)
        # its worker does not go on running the attempt the scheduler now gives to another
        wait_until(lambda: not pid_alive(pid), 60, "the worker to die")
    finally:
        qe.shutdown()
        stop(procs)


def test_two_attempts_of_one_task_run_at_once_and_one_can_be_cancelled(queue_executor, inputs, marker_dir):
    """What a speculative copy needs: attempts 0 (slow) and 1 (quick) of the same task run side
    by side on two executors; 1 is reported, 0 is cancelled and killed, never reported."""
    qe = queue_executor()
    plan = queue_plan(inputs, marker_dir, npartitions=1, sleep=30, always_slow=False)
    planner = Planner(qe.rt)
    (task,) = planner.plan(plan.root_node)
    results = {}
    for key, t in planner.tasks.items():
        if t.exec_on_scheduler:
            results[key] = run_inline(qe.rt, t, [results[d] for d in t.input_keys])
    task_inputs = [results[d] for d in task.input_keys]
    procs = start_executors(2, str(qe.rt.job_id), qe.rt.data_root)
    try:
        qe.submit(task, task_inputs, 0, memory=256 << 20)
        wait_until(lambda: markers(marker_dir), 60, "attempt 0 to start")
        qe.submit(task, task_inputs, 1, memory=256 << 20)
        (c,) = poll_until_some(qe, 60)
        assert (c.key, c.attempt, c.ok) == (task.key, 1, True)
        (slow_pid,) = [m[3] for m in markers(marker_dir) if m[0] == "start" and m[2] == 0]
        assert psutil.pid_exists(slow_pid), "attempt 0 should still be running"
        qe.cancel(task.key, 0)
        wait_until(
            lambda: not pid_alive(slow_pid),
            10,
            "attempt 0's worker to die",
        )
        assert qe.poll(1.0) == []
        assert [(m[0], m[2]) for m in markers(marker_dir) if m[0] == "end"] == [("end", 1)]
    finally:
        qe.shutdown()
        stop(procs)


# -- generations -----------------------------------------------------------------------------------


@contextlib.contextmanager
def old_generation_attempt(queue_executor, make_rt, inputs, marker_dir):
    """A job's run on the queue backend (``old``) whose executor, started by hand (``procs``), runs
    an attempt of a 30 s task (its worker: ``pid``): yields ``(rt, old, procs, pid)`` once the
    attempt has started; the executor is stopped at the end."""
    rt = make_rt()
    old = queue_executor(rt)
    task, task_inputs = planned_task(rt, inputs, marker_dir, sleep=30)
    procs = start_executors(1, str(rt.job_id), rt.data_root)
    try:
        old.submit(task, task_inputs, 0, memory=256 << 20)
        (_, _, _, pid) = wait_until(lambda: markers(marker_dir), 60, "the old generation's attempt to start")[0]
        yield rt, old, procs, pid
    finally:
        stop(procs)


def test_a_new_scheduler_kills_the_old_generations_attempts_before_it_starts(queue_executor, make_rt, inputs, marker_dir):
    with old_generation_attempt(queue_executor, make_rt, inputs, marker_dir) as (rt, old, procs, pid):
        new = queue_executor(make_rt(str(rt.job_id)))  # the same job: its rerun
        assert new.epoch == old.epoch + 1
        # by the time the new scheduler may read commit records, the old attempt is dead
        assert not pid_alive(pid)
        assert [m for m in markers(marker_dir) if m[0] == "end"] == []
        # the executor started by hand rejoined: it serves the new generation
        task2, inputs2 = planned_task(new.rt, inputs, marker_dir, sleep=0)
        new.submit(task2, inputs2, 0, memory=256 << 20)
        (c,) = poll_until_some(new, 60)
        assert c.ok and c.key == task2.key


def test_an_old_executor_that_does_not_answer_is_fenced_off_before_the_new_scheduler_starts(
    queue_executor, make_rt, inputs, marker_dir
):
    with old_generation_attempt(queue_executor, make_rt, inputs, marker_dir) as (rt, old, procs, pid):
        holder = psutil.Process(procs[0].pid)
        try:
            holder.suspend()  # hung: it cannot acknowledge the new generation (its worker still runs)
            new = queue_executor(make_rt(str(rt.job_id)), FAST)
            # before the new scheduler reads anything, the silent executor has been declared lost
            (member,) = os.listdir(new.paths.executors)
            assert os.path.exists(new.paths.member(member, "lost"))
            holder.resume()
            assert procs[0].wait(30) == 75  # it finds the marker, kills its worker and exits
            assert not pid_alive(pid)
            assert [m for m in markers(marker_dir) if m[0] == "end"] == []
        finally:
            try:
                holder.resume()
            except psutil.Error:
                pass


def test_a_rerun_on_another_backend_first_stops_the_old_runs_attempts(queue_executor, make_rt, inputs, marker_dir):
    """A job run on the queue backend whose scheduler died, rerun embedded (or on Ray): the old
    run's executors would go on with their attempts until they find their scheduler silent
    (``SP_QUEUE_TIMEOUT``), beside the rerun's attempts of the same tasks; before the rerun reads
    any commit record they have dropped them and left."""
    from smallpond.execution.job import Job

    with old_generation_attempt(queue_executor, make_rt, inputs, marker_dir) as (rt, old, procs, pid):
        old._stop.set()  # its scheduler is gone: no heartbeat any more
        job = Job(make_rt(str(rt.job_id)), num_workers=1).start()  # the rerun, embedded
        try:
            assert job.executor.name == "local"
            assert not pid_alive(pid)
            assert procs[0].wait(30) == 0  # the executor ended as at the end of a job
        finally:
            job.finish(True)
        assert [m for m in markers(marker_dir) if m[0] == "end"] == []


def test_an_outcome_of_an_old_generation_is_not_taken_for_the_new_ones(queue_executor, make_rt, inputs, marker_dir):
    rt = make_rt()
    old = queue_executor(rt)
    task, task_inputs = planned_task(rt, inputs, marker_dir, sleep=0)
    old.submit(task, task_inputs, 0, memory=256 << 20)
    (old_item,) = os.listdir(old.paths.todo)
    new = queue_executor(make_rt(str(rt.job_id)))
    new.submit(task, task_inputs, 0, memory=256 << 20)  # the same task and attempt number
    # a late executor of the old generation reports its attempt
    from smallpond.execution.executors.base import Completion
    from smallpond.execution.executors.queue_protocol import encode_completion

    late = Completion(task.key, 0, False, None, WorkerLost("late outcome of the old generation"))
    with open(os.path.join(new.paths.done, old_item), "wb") as f:
        f.write(encode_completion(late, rt.secret))
    assert new.poll(0.5) == []
    assert ItemName.parse(old_item).epoch == old.epoch


def looked_at_the_queue(paths: QueuePaths, proc: subprocess.Popen) -> bool:
    """Whether executor ``proc`` registered and heartbeat twice (reading the queue in between),
    and is still there (its last heartbeat is not the one it writes as it exits)."""
    assert proc.poll() is None, f"the executor exited with {proc.returncode}: {proc.communicate()[1][-2000:]!r}"
    for name in os.listdir(paths.executors):
        info, beat = (read_json(paths.member(name, f)) or {} for f in ("info", "heartbeat"))
        if info.get("pid") == proc.pid and beat.get("n", 0) >= 2 and beat.get("state") != "exited":
            return True
    return False


def test_an_executor_started_by_hand_after_a_run_ended_serves_the_rerun(queue_executor, make_rt, inputs, marker_dir):
    """Started before the rerun of an interrupted job, it finds the last run's end marker: it
    waits for the rerun (a new generation) and serves it, not exits as if the job had ended."""
    rt = make_rt()
    queue_executor(rt).shutdown()  # the interrupted run: its generation ended
    procs = start_executors(1, str(rt.job_id), rt.data_root)
    try:
        wait_until(lambda: looked_at_the_queue(QueuePaths(rt.layout), procs[0]), 60, "the executor to read the queue")
        rerun = queue_executor(make_rt(str(rt.job_id)))
        task, task_inputs = planned_task(rerun.rt, inputs, marker_dir, sleep=0)
        rerun.submit(task, task_inputs, 0, memory=256 << 20)
        (c,) = poll_until_some(rerun, 60)
        assert c.ok and c.key == task.key
        rerun.shutdown()
        assert procs[0].wait(30) == 0
    finally:
        stop(procs)


def test_an_executor_whose_queue_folder_is_removed_ends_as_the_job_did(queue_executor, make_rt):
    # a session that ended removes queue/ with its intermediates, maybe before an executor started
    # by hand read the end marker: its next heartbeat, finding no folder, is the job's end (exit
    # 0), not a failure of the executor (it exited 70 on the FileNotFoundError)
    from smallpond.execution.executors.queue_process import EX_OK, ExecutorProcess, _Exit

    rt = make_rt()
    queue_executor(rt)
    with open(rt.layout.secret_path, "rb") as f:
        executor = ExecutorProcess(rt.layout, f.read())
    executor.register()
    # the removal under way (the executors' folders go before queue/ itself), then done
    for folder in (QueuePaths(rt.layout).member(executor.name), QueuePaths(rt.layout).root):
        shutil.rmtree(folder)
        with pytest.raises(_Exit) as info:
            executor.beat()
        assert (info.value.code, info.value.why) == (EX_OK, "the job's queue folder is gone")


def test_an_executor_that_finds_the_queue_folder_removed_exits_and_does_not_make_it_again(queue_executor, make_rt, monkeypatch):
    # it found the job, then the session ended and removed queue/ before it registered (its
    # registration made the folders again, and it waited for queue/epoch forever); and one whose
    # queue/epoch is gone while the folder is not (a removal under way) exits after the timeout
    from smallpond.execution.executors.queue_process import EX_OK, ExecutorProcess

    monkeypatch.setenv("SP_QUEUE_HEARTBEAT", "0.2")
    monkeypatch.setenv("SP_QUEUE_TIMEOUT", "1")
    rt = make_rt()
    scheduler = queue_executor(rt)
    paths = QueuePaths(rt.layout)
    with open(rt.layout.secret_path, "rb") as f:
        secret = f.read()

    def exit_code() -> int:
        codes: List[int] = []
        runner = threading.Thread(target=lambda: codes.append(ExecutorProcess(rt.layout, secret).run()), daemon=True)
        runner.start()
        runner.join(60)  # a hang guard (it waited forever), not a timing assertion
        assert codes, "the executor did not exit"
        return codes[0]

    os.unlink(paths.epoch)
    assert exit_code() == EX_OK
    # the session ends: its scheduler stops (and with it its heartbeat, written into queue/ every
    # 0.2 s), then its intermediates go (Job.finish). Removed while that heartbeat still ran, the
    # folder got a new file mid-removal now and then: rmtree failed "Directory not empty" (3 of
    # 25 runs under load; every run with a 5 ms heartbeat)
    scheduler.shutdown()
    shutil.rmtree(paths.root)
    assert exit_code() == EX_OK
    assert not os.path.exists(paths.root)


@pytest.mark.parametrize("outcome", [None, "interrupted", "failure"])  # None: a marker written before outcomes
def test_an_executor_started_by_hand_after_the_last_run_waits_then_exits(queue_executor, make_rt, outcome):
    rt = make_rt()
    qe = queue_executor(rt)
    if outcome is not None:
        qe.record_outcome(outcome)
    qe.shutdown()
    assert read_json(QueuePaths(rt.layout).stop).get("outcome") == outcome
    (proc,) = start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="1")
    try:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert b"the job's last run (generation 1) has ended; waiting up to 1s for the next run" in err
        assert b"no new run started within 1s" in err
    finally:
        stop([proc])


def test_an_executor_started_by_hand_after_a_successful_job_exits_at_once(tmp_path, inputs, marker_dir):
    """No rerun is likely after a successful run: it says so and exits instead of waiting."""
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "base", "--num_executors", "1")
    driver = subprocess.run(cmd, env=queue_env(), capture_output=True, text=True, timeout=120)
    assert driver.returncode == 0, driver.stderr[-3000:]
    (stop_path,) = glob.glob(os.path.join(data_root, "*", "queue", "stop"))
    assert read_json(stop_path)["outcome"] == "success"
    (proc,) = start_executors(1, job_id, data_root, SP_QUEUE_WAIT="3600")
    try:
        _, err = proc.communicate(timeout=120)  # a hang guard: without the outcome it waits an hour
        assert proc.returncode == 0, err[-2000:]
        assert b"the job finished successfully (generation 1); nothing to do" in err
        assert b"waiting up to" not in err
    finally:
        stop([proc])


def test_executors_started_by_hand_exit_at_once_while_and_after_a_rerun_on_another_backend(
    queue_executor, make_rt, inputs, marker_dir
):
    """A queue run failed; the job is rerun embedded. An executor waiting for a queue rerun, and
    one started by hand during the embedded run, exit at once (that run serves no queue), saying
    why; one started after it succeeded exits at once too. They waited SP_QUEUE_WAIT (an hour here)."""
    from smallpond.execution.job import Job

    rt = make_rt()
    qe = queue_executor(rt)
    qe.record_outcome("failure")
    qe.shutdown()
    waiting = start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="3600")
    procs = list(waiting)
    try:
        wait_until(lambda: looked_at_the_queue(QueuePaths(rt.layout), waiting[0]), 60, "the executor to read the queue")
        job = Job(make_rt(str(rt.job_id)), num_workers=1).start()  # the rerun, embedded
        try:
            assert job.executor.name == "local"
            procs += start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="3600")
            for proc in procs:
                _, err = proc.communicate(timeout=120)  # a hang guard: without the fix they wait an hour
                assert proc.returncode == 0, err[-2000:]
                assert b"the job is being run on another backend (embedded or Ray, by pid" in err, err[-2000:]
        finally:
            job.finish(True)
        procs += start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="3600")
        _, err = procs[-1].communicate(timeout=120)
        assert procs[-1].returncode == 0, err[-2000:]
        assert b"the job finished successfully on another backend" in err, err[-2000:]
        assert b"waiting up to" not in err
    finally:
        stop(procs)


def test_after_a_failed_rerun_on_another_backend_an_executor_waits_for_the_next_run(queue_executor, make_rt):
    from smallpond.execution.job import Job

    rt = make_rt()
    queue_executor(rt).shutdown()
    Job(make_rt(str(rt.job_id)), num_workers=1).start().finish(False)  # the embedded rerun failed
    assert read_json(QueuePaths(rt.layout).stop)["outcome"] == "other-backend"
    (proc,) = start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="1")
    try:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert b"no new run started within 1s" in err  # a queue rerun may follow: it waited for one
    finally:
        stop([proc])


def test_after_a_run_on_another_backend_an_executor_waits_while_a_new_run_takes_the_job(queue_executor, make_rt):
    """The job says it runs, but its lock is held by another process than the run that ended the
    queue: a queue-backend rerun that has not set its queue up yet. The executor waits for it."""
    from smallpond.execution.executors.queue_protocol import write_json
    from smallpond.execution.job import Job, write_status
    from smallpond.execution.ownership import JobLock

    rt = make_rt()
    queue_executor(rt).shutdown()
    Job(make_rt(str(rt.job_id)), num_workers=1).start().finish(False)  # the embedded run, ended
    paths = QueuePaths(rt.layout)
    write_json(paths.stop, dict(read_json(paths.stop), pid=1))  # (it ran in another process than this one)
    lock = JobLock(rt.layout)
    lock.acquire()  # the rerun took the job
    try:
        write_status(rt, "running")
        (proc,) = start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="2")
        try:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            assert b"no new run started within 2s" in err and b"another backend" not in err, err[-2000:]
        finally:
            stop([proc])
    finally:
        lock.release()


def test_an_executor_finding_a_succeeded_job_without_a_queue_exits_at_once(queue_executor, make_rt):
    """A session removes queue/ when its run succeeded: an executor started by hand then found the
    job and waited SP_QUEUE_WAIT for a queue/epoch that never comes, and exited 1."""
    from smallpond.execution.job import Job

    rt = make_rt()
    Job(rt, num_workers=1).start().finish(True, remove_intermediates=True)
    assert not os.path.exists(rt.queue_root)
    (proc,) = start_executors(1, str(rt.job_id), rt.data_root, SP_QUEUE_WAIT="3600")
    try:
        _, err = proc.communicate(timeout=120)  # a hang guard
        assert proc.returncode == 0, err[-2000:]
        assert b"the job finished successfully (it has no queue" in err, err[-2000:]
    finally:
        stop([proc])


# -- executors lost, killed schedulers, joining -------------------------------------------------------


def test_a_hung_executor_is_lost_and_its_attempt_runs_elsewhere(tmp_path, inputs, marker_dir):
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    procs = start_executors(2, job_id, data_root)
    cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "manual", "-n", "1", "--sleep", "3")
    env = queue_env(SP_QUEUE_TIMEOUT="2")
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: List[psutil.Process] = []
    try:
        (_, key, attempt, worker_pid) = wait_until(lambda: markers(marker_dir), 120, "the first attempt to start")[0]
        holder = psutil.Process(worker_pid).parent()
        stopped = [holder, psutil.Process(worker_pid)]
        for p in stopped:  # the whole executor hangs: supervisor and worker
            p.suspend()
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err[-3000:]
        assert "declared lost" in err
        runs = markers(marker_dir)
        assert ("end", key, attempt, worker_pid) not in runs
        assert any(m[0] == "end" and m[1] == key and m[2] > attempt for m in runs), runs
        holder.resume()  # it wakes up, finds itself declared lost, kills its worker and exits
        code = next(p for p in procs if p.pid == holder.pid).wait(30)
        assert code == 75
        assert not pid_alive(worker_pid)
        assert ("end", key, attempt, worker_pid) not in markers(marker_dir)
    finally:
        for p in stopped:
            try:
                p.resume()
            except psutil.Error:
                pass
        if driver.poll() is None:
            driver.kill()
        stop(procs)


def test_launched_executors_exit_when_their_scheduler_is_killed(tmp_path, inputs, marker_dir):
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "base", "--num_executors", "2", "--sleep", "60")
    driver = subprocess.Popen(cmd, env=queue_env(SP_QUEUE_TIMEOUT="2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(markers(marker_dir)) >= 2, 120, "two attempts to start")
        executors = job_executors(data_root, job_id)
        workers = [m[3] for m in markers(marker_dir)]
        driver.kill()
        driver.wait()
        procs = [psutil.Process(int(i["pid"])) for i in executors if alive(i)] + [psutil.Process(w) for w in workers]
        _, left = psutil.wait_procs(procs, timeout=30)
        assert not left, f"outlived their scheduler: {left}"
        assert [m for m in markers(marker_dir) if m[0] == "end"] == []
    finally:
        if driver.poll() is None:
            driver.kill()


def test_a_scheduler_waits_for_executors_started_after_it(tmp_path, inputs, marker_dir):
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "manual", "-n", "2")
    driver = subprocess.Popen(cmd, env=queue_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs: List[subprocess.Popen] = []
    try:
        wait_until(lambda: glob.glob(os.path.join(data_root, "*", "queue", "epoch")), 120, "the scheduler to start")
        time.sleep(1.0)
        assert driver.poll() is None, "the scheduler did not wait for executors"
        procs = start_executors(1, job_id, data_root)
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err[-3000:]
        assert "waiting for executors; start them with" in err and " executor --job_id " in err
        assert procs[0].wait(30) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
        stop(procs)


def test_a_job_whose_launched_executors_all_exit_fails_with_the_reason(tmp_path, inputs, marker_dir):
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    cmd = driver_command(job_id, data_root, inputs, marker_dir, "--platform", "base", "--num_executors", "2")
    # (a bad SP_EXECUTOR_CPUS did this once; the driver refuses it itself now, test_env_settings)
    proc = subprocess.run(cmd, env=queue_env(SP_TEST_EXECUTOR_EXIT="1"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70
    assert "every executor the 'base' platform started has exited (exit codes [70, 70])" in proc.stderr
    (root,) = glob.glob(os.path.join(data_root, "*"))
    with open(os.path.join(root, "log", "executors.out")) as f:
        assert "SP_TEST_EXECUTOR_EXIT is set: this executor exits at once" in f.read()


def test_speculation_on_the_queue_backend(tmp_path, make_rt):
    """The tech lead's straggler scenario on launched executors: the stalled first attempt can
    never finish, so the job ends only through its speculative copy, and nothing of it is left."""
    from smallpond.execution.commit import read_commit
    from smallpond.execution.job import run_job
    from smallpond.execution.scheduler import Speculation
    from tests.execution.test_speculation import plan as straggler_plan

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=20)
    logical, node = straggler_plan(inputs, str(tmp_path / "never"))
    rt = make_rt()
    executor = QueueExecutor(rt, platform="base", num_executors=2, settings=SETTINGS)
    spec = Speculation.of("aggressive", min_runtime=1.0, multiplier=2.0, quantile=0.5)
    exec_plan = run_job(logical, rt, executor=executor, speculation=spec)
    assert exec_plan.final_output.num_rows == 60
    slow = next(
        t for t in exec_plan.tasks.values() if t.node_id == int(node.id) and t.partition_infos_as_dict["__data_partition__"] == 2
    )
    record = read_commit(rt, slow)
    assert record["attempt"] >= 1, "the stalled first attempt cannot have committed"
    node_dir = os.path.dirname(record["output_dir"])
    assert [n for n in os.listdir(node_dir) if n.startswith(slow.key)] == [os.path.basename(record["output_dir"])]
    assert not glob.glob(os.path.join(rt.staging_root, "*", "*.tmp-*"))
