"""The stall warning tells the attempts that run from those that wait to start, on every backend
that knows: an attempt the scheduler submitted may wait behind another on a worker (embedded), or
in the queue backend's ``todo/`` for an executor, or behind another on an executor. Counted as
running, it made the warning name more attempts running than there are workers, each "running"
since it was submitted.

Real executors throughout: the embedded backend's worker processes, queue executors started by
hand or by a real ``mpirun``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import List

import pytest

from smallpond.execution.executors.base import Capacity
from smallpond.execution.executors.local import LocalExecutor
from smallpond.execution.sched_state import new_state, reserve
from smallpond.execution.stall import StallLog
from tests.datagen import generate_parquet_files
from tests.execution.test_queue_backend import (  # queue_executor: the fixture
    markers,
    planned_task,
    queue_env,
    queue_executor,  # noqa: F401
    start_executors,
    stop,
    wait_until,
)

MB = 1 << 20


def stall_warning(executor, task, attempts, log_messages) -> str:
    """The warning a :class:`StallLog` of ``executor`` gives once nothing finished for a moment,
    about ``attempts`` of ``task`` as the scheduler's state holds them (submitted, running)."""
    state = new_state(Capacity(1, 1, 1 << 30))
    state.tasks[task.key] = task
    for attempt in attempts:
        reserve(state, task.key, attempt, 1, 0, time.time())
    log = StallLog(seconds=0.01, executor=executor)
    time.sleep(0.05)
    log.on_tick(state, 1.0)
    (warning,) = [m for m in log_messages if "no task has finished" in m]
    return warning


def test_embedded_an_attempt_queued_behind_another_is_waiting(make_rt, tmp_path, log_messages):
    # attempt 1 is sent with queue=True to the only worker, behind attempt 0, which hangs
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=10)
    marks = tmp_path / "marks"
    marks.mkdir()
    rt = make_rt()
    rt.initialize()
    task, task_inputs = planned_task(rt, inputs, str(marks), sleep=600)
    ex = LocalExecutor(rt, 1)
    ex.start()
    try:
        ex.submit(task, task_inputs, 0, memory=256 * MB)
        ex.submit(task, task_inputs, 1, memory=256 * MB, queue=True)
        (pid,) = [w.pid for w in ex.workers]
        assert ex.attempt_places() == {
            (task.key, 0): (True, f"worker process {pid}"),
            (task.key, 1): (False, f"queued behind {task.key} on worker process {pid}"),
        }
        warning = stall_warning(ex, task, [0, 1], log_messages)
    finally:
        ex.shutdown()
    assert "1 attempt(s) still running and 1 waiting to start" in warning, warning
    assert re.search(rf"{task.key} \(attempt 0\) .*: running on worker process {pid} \(submitted", warning), warning
    assert re.search(rf"{task.key} \(attempt 1\) .*: waiting to start: queued behind {task.key}", warning), warning


@contextlib.contextmanager
def one_executor_running_a_hanging_attempt(qe, tmp_path):
    """A by-hand executor with one worker, joined to ``qe``, running attempt 0 of a task that
    hangs (600 s) once it has started; yields ``(task, its inputs)``; the executor is stopped after."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=10)
    marks = tmp_path / "marks"
    marks.mkdir()
    rt = qe.rt
    procs = start_executors(1, str(rt.job_id), rt.data_root, SP_EXECUTOR_CPUS="1")
    try:
        task, task_inputs = planned_task(rt, inputs, str(marks), sleep=600)
        wait_until(lambda: qe.capacity.num_workers == 1, 60, "the executor to join")
        qe.submit(task, task_inputs, 0, memory=256 * MB)
        wait_until(lambda: markers(str(marks)), 60, "attempt 0 to start")
        yield task, task_inputs
    finally:
        stop(procs)


@pytest.mark.queue
def test_queue_attempts_no_executor_took_are_waiting(queue_executor, make_rt, tmp_path, log_messages):  # noqa: F811
    # one executor with one worker: attempt 0 runs there (it hangs); attempts 1 (queue=True) and 2
    # stay in todo/, as that executor takes no more (none fits beside a long attempt)
    qe = queue_executor()
    with one_executor_running_a_hanging_attempt(qe, tmp_path) as (task, task_inputs):
        qe.submit(task, task_inputs, 1, memory=256 * MB, queue=True)
        qe.submit(task, task_inputs, 2, memory=256 * MB)

        def once_attempt_0_is_listed_started():
            places = qe.attempt_places()
            return places if places.get((task.key, 0), (False, ""))[0] else None

        places = wait_until(once_attempt_0_is_listed_started, 30, "the executor's heartbeat to list attempt 0 as started")
        (member,) = qe._joined()
        assert places == {
            (task.key, 0): (True, f"executor {member.describe()}"),
            (task.key, 1): (False, "in queue/todo, not taken by an executor yet"),
            (task.key, 2): (False, "in queue/todo, not taken by an executor yet"),
        }
        warning = stall_warning(qe, task, [0, 1, 2], log_messages)
    assert "1 attempt(s) still running and 2 waiting to start" in warning, warning
    assert re.search(rf"{task.key} \(attempt 0\) .*: running on executor {re.escape(member.describe())}", warning), warning
    assert warning.count("waiting to start: in queue/todo, not taken by an executor yet") == 2, warning


STALLING_JOB = """
import functools, os, time
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode


def work(runtime_ctx, inputs, output_path, release, marks):
    task = runtime_ctx.task
    open(os.path.join(marks, f"start.{task.key}.{task.retry_count}.{os.getpid()}"), "w").close()
    if task.partition_infos_as_dict["__data_partition__"] >= 6:  # after six quick ones, the rest wait
        while not os.path.exists(release):
            time.sleep(0.05)
    return True


driver = Driver()
driver.add_argument("-i", nargs="+")
driver.add_argument("-r")
driver.add_argument("-m")
args = driver.get_arguments()
ctx = Context()
parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(args["i"])),), 10, partition_by_rows=True)
work = functools.partial(work, release=args["r"], marks=args["m"])
driver.run(LogicalPlan(ctx, PythonScriptNode(ctx, (parts,), process_func=work)))
"""


@pytest.mark.queue
def test_a_stalled_job_on_mpi_executors_names_no_more_running_attempts_than_workers(tmp_path):
    # quick attempts first, so the scheduler queues attempts behind running ones (pipelining);
    # then every worker holds one that waits for the release file, and the warning must name as
    # running only attempts that started, at most one per worker
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (Debian: apt-get install openmpi-bin)")
    script, release, marks = tmp_path / "stalling.py", tmp_path / "release", tmp_path / "marks"
    script.write_text(STALLING_JOB)
    marks.mkdir()
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    cmd = [sys.executable, str(script), "scheduler", "--job_id", "stall", "--data_root", str(tmp_path / "root")]
    cmd += ["--platform", "mpi", "--num_executors", "2", "-i", *inputs, "-r", str(release), "-m", str(marks)]
    env = queue_env(SP_STALL_LOG="2", SP_EXECUTOR_CPUS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # line by line
    reader.start()

    def stall_warnings() -> int:
        return sum("no task has finished" in line for line in list(lines))

    try:
        wait_until(lambda: len(os.listdir(marks)) >= 7, 120, "the attempts that wait to start")
        before = stall_warnings()
        # a warning once nothing has finished for 2 s (SP_STALL_LOG=2): nothing can finish now
        wait_until(lambda: stall_warnings() > before, 60, "a stall warning with every worker held")
        release.touch()
        proc.wait(timeout=120)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines)
    assert proc.returncode == 0, err[-3000:]
    warnings = [w for w in err.split("WARNING") if "no task has finished" in w]
    assert warnings, err[-3000:]
    for w in warnings:
        running = int(re.search(r"(\d+) attempt\(s\) still running", w).group(1))
        assert 1 <= running <= 2, f"two workers, {running} attempts named running:\n{w}"
        assert w.count(": running on executor ") == running, w
