"""One contract, every backend: the same plans, the same results, the same failure behaviour.

Each test runs a real job through the Driver command line (a subprocess, as users run it) on the
backend under test (see conftest.py: embedded worker processes, a Ray cluster, queue executors)
and checks:

* the results equal the embedded run's / plain pyarrow's;
* injected faults fire and are retried, and the result is still right;
* SIGKILL of the driver, then the same command: only unfinished tasks run again;
* SIGTERM of the driver: exit status 143 and status ``interrupted``; the same command resumes;
* a worker killed in the middle of a job: the job still finishes with the right output;
* bad SQL: exit status 70 and the SQL in the message, without retries;
* ``sys.exit()`` or KeyboardInterrupt in a task's code: exit status 70 and a message saying so,
  without retries;
* the task cache: a second job (new job id, same inputs, same data root) runs no task the first
  one computed (entries are inserted where the attempt commits: the worker, whatever the backend)
  and gives the same output.
* a function of a module the script found through a folder it put on ``sys.path`` itself runs
  in the workers (they import it from there, as the driver did).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import List, NamedTuple

import psutil
import pytest

from tests.datagen import generate_mock_urls, generate_parquet_files, read_parquet
from tests.e2e.test_reproducible_random import RANDOM_JOB, parquet_digests, random_job_command
from tests.e2e.test_resume import (
    COUNTING_JOB,
    NPARTITIONS,
    WORKER_TASKS,
    committed,
    counter_lines,
    expected_rows,
    sink_rows,
    started,
    wait_for_commits,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SORT_EXAMPLE = os.path.join(REPO, "examples", "sort_mock_urls.py")
GLOBAL_SORT_EXAMPLE = os.path.join(REPO, "examples", "global_sort.py")
EX_SOFTWARE = 70


def counting_command(backend, job_id, data_root, inputs, counter, sink, *extra: str) -> List[str]:
    return [
        sys.executable,
        COUNTING_JOB,
        backend.driver_mode(),
        "--job_id",
        job_id,
        "--data_root",
        data_root,
        *backend.driver_args(),
        *extra,
        "-i",
        *inputs,
        "-c",
        counter,
        "-o",
        sink,
        "-n",
        str(NPARTITIONS),
    ]


class CountingJob(NamedTuple):
    """A run of the counting job: its inputs, counter and sink files, data root, id and command."""

    inputs: List[str]
    counter: str
    sink: str
    data_root: str
    job_id: str
    cmd: List[str]


def counting_job(backend, tmp_path, rows_per_file: int, *extra: str) -> CountingJob:
    """Four input files of ``rows_per_file`` rows under ``tmp_path``, and the counting job's command
    over them (``extra``: its options) for a new job id."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=rows_per_file)
    counter, sink, data_root = str(tmp_path / "counter"), str(tmp_path / "sink"), str(tmp_path / "root")
    job_id = str(uuid.uuid4())
    cmd = counting_command(backend, job_id, data_root, inputs, counter, sink, *extra)
    return CountingJob(inputs, counter, sink, data_root, job_id, cmd)


def assert_rerun_resumed(job: CountingJob, root: str, started_before, done_before, what: str) -> None:
    """The rerun after ``what`` started no task committed before it, and the sink has every row."""
    started_after = started(root)
    rerun_started = {k for k in started_after if started_after[k] > started_before.get(k, 0)}
    assert not rerun_started & done_before, f"a task committed before {what} ran again"
    assert sink_rows(job.sink) == expected_rows(job.inputs)


def run(cmd, cwd, backend=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(backend.env() if backend else os.environ, SP_PROGRESS="0")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def start(cmd, cwd, backend, **kwargs) -> subprocess.Popen:
    env = dict(backend.env(), SP_PROGRESS="0")
    return subprocess.Popen(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def attempts_used(root: str) -> int:
    """Attempts beyond the first, over all tasks (from the attempts' logs: their own files and
    the worker processes' logs, where a quiet attempt's start line is)."""
    from smallpond.execution.attempt import logged_attempts

    return sum(1 for _, attempt in logged_attempts(os.path.join(root, "log")) if attempt > 0)


def test_same_result_as_plain_pyarrow(backend, tmp_path):
    job = counting_job(backend, tmp_path, 30, "--sleep", "0")
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        proc = run(job.cmd, tmp_path, backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sink_rows(job.sink) == expected_rows(job.inputs)
    assert len(counter_lines(job.counter)) == NPARTITIONS
    # each attempt a worker ran reports what it used (execution/resource_use.py), on every backend
    (events,) = glob.glob(os.path.join(job.data_root, "*", "log", "events.jsonl"))
    with open(events) as f:
        done = [e for e in map(json.loads, f) if e["ev"] == "done"]
    assert done and all(e.get("memory", 0) > 0 and "cpu" in e for e in done), done
    if sys.platform.startswith("linux"):
        assert all(e.get("peak_memory", 0) > 0 for e in done), done


def test_example_gives_the_embedded_output(backend, tmp_path):
    """examples/sort_mock_urls.py unchanged: the same sorted rows as an embedded run."""
    urls = generate_mock_urls(str(tmp_path / "urls"), nfiles=4, nlines=50)
    outputs = {}
    for name, mode, args in [("embedded", "scheduler", []), (backend.name, backend.driver_mode(), backend.driver_args())]:
        out = str(tmp_path / f"out-{name}")
        job_id, data_root = str(uuid.uuid4()), str(tmp_path / name)
        cmd = [sys.executable, SORT_EXAMPLE, mode, "--job_id", job_id, "--data_root", data_root]
        side = backend.job_side(SORT_EXAMPLE, job_id, data_root) if name == backend.name else contextlib.nullcontext()
        with side:
            proc = run([*cmd, *args, "-i", *urls, "-n", "3", "-o", out], tmp_path, backend if name == backend.name else None)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = read_parquet(sorted(glob.glob(os.path.join(out, "data_sink", "*.parquet"))))
        outputs[name] = table.sort_by([("host", "ascending"), ("url", "ascending")]).to_pylist()
    assert outputs[backend.name] == outputs["embedded"]
    assert len(outputs["embedded"]) == 200


def test_global_sort_example_gives_the_embedded_output(backend, tmp_path):
    """examples/global_sort.py unchanged (range partitioning with sampling): the same order."""
    from tests.datagen import generate_parquet_files

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=40)
    outputs = {}
    for name, mode, args in [("embedded", "scheduler", []), (backend.name, backend.driver_mode(), backend.driver_args())]:
        out = str(tmp_path / f"out-{name}")
        job_id, data_root = str(uuid.uuid4()), str(tmp_path / name)
        cmd = [sys.executable, GLOBAL_SORT_EXAMPLE, mode, "--job_id", job_id, "--data_root", data_root]
        side = backend.job_side(GLOBAL_SORT_EXAMPLE, job_id, data_root) if name == backend.name else contextlib.nullcontext()
        with side:
            proc = run(
                [*cmd, *args, "-i", *inputs, "-k", "key", "-n", "3", "-o", out],
                tmp_path,
                backend if name == backend.name else None,
            )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = _import_global_sort().read_in_order(out).to_pylist()
    assert outputs[backend.name] == outputs["embedded"]
    keys = [r["key"] for r in outputs["embedded"]]
    assert keys == sorted(keys) and len(set(keys)) > 3
    assert len(outputs["embedded"]) == 120


def test_random_draws_give_the_embedded_bytes_after_a_retry(backend, tmp_path):
    """tests/e2e/random_job.py (Python's and NumPy's global generators, a set's order, random
    shuffles, ``random()`` in SQL), one of its tasks failing once after its draws on this backend:
    the same bytes as a clean embedded run."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=30)
    markers = tmp_path / "markers"
    markers.mkdir()
    outputs = {}
    for name, mode, args in [("embedded", "scheduler", []), (backend.name, backend.driver_mode(), backend.driver_args())]:
        out, job_id, data_root = str(tmp_path / f"out-{name}"), str(uuid.uuid4()), str(tmp_path / name)
        extra = ["--task_cache", "off", *args] + (["--fail_once", str(markers)] if name == backend.name else [])
        side = backend.job_side(RANDOM_JOB, job_id, data_root) if name == backend.name else contextlib.nullcontext()
        with side:
            cmd = random_job_command(inputs, out, job_id, data_root, *extra, mode=mode)
            proc = run(cmd, tmp_path, backend if name == backend.name else None)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = parquet_digests(out)
    assert (markers / "failed-once").exists(), "no attempt failed: the test proves nothing"
    assert len(outputs["embedded"]) == 3 and outputs[backend.name] == outputs["embedded"]


def _import_global_sort():
    import importlib.util

    spec = importlib.util.spec_from_file_location("global_sort_example", GLOBAL_SORT_EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_injected_faults_are_retried(backend, tmp_path):
    job = counting_job(backend, tmp_path, 30, "--sleep", "0", "--fault_inject", "0.3")
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        proc = run(job.cmd, tmp_path, backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sink_rows(job.sink) == expected_rows(job.inputs)
    (root,) = glob.glob(os.path.join(job.data_root, f"*.{job.job_id}"))
    assert attempts_used(root) > 0, "no injected fault fired: the test proves nothing"


def test_resume_after_sigkill_of_the_driver(backend, tmp_path):
    job = counting_job(backend, tmp_path, 40, "--sleep", "0.1")
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        proc = start(job.cmd, tmp_path, backend, start_new_session=True)
        root = wait_for_commits(os.path.join(job.data_root, f"*.{job.job_id}"), 8, proc, deadline=240)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        time.sleep(1.0)  # let workers of the killed driver notice (they must not commit into its place twice)
        done_before = committed(root)
        started_before = started(root)
        assert len(done_before) < WORKER_TASKS, "the job finished before it was killed"

        rerun = run(job.cmd, tmp_path, backend)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_rerun_resumed(job, root, started_before, done_before, "the kill")


def test_sigterm_interrupts_the_job_which_then_resumes(backend, tmp_path):
    # the same outcome on every backend (on Ray too, whose ray.init sets a SIGTERM handler of its
    # own): exit status 143, status interrupted, one line saying how to resume; the same command
    # then runs only what did not finish. (On Ray the running attempts are cancelled by a mark on
    # the data root: ray.cancel, forced or not, raced with an attempt finishing, and Ray's core
    # worker then aborted the driver, "Tried to complete task that was not pending", exit status 1.)
    job = counting_job(backend, tmp_path, 40, "--sleep", "0.2")
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        proc = start(job.cmd, tmp_path, backend)
        try:
            root = wait_for_commits(os.path.join(job.data_root, f"*.{job.job_id}"), 4, proc, deadline=240)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        with open(os.path.join(root, "log", ".STATUS")) as f:
            assert f.read().split()[-1].startswith("interrupted@")
        assert err.count("was interrupted (SIGTERM); run the same command again") == 1, err[-3000:]
        assert "JobTerminated: 143" in err, err[-3000:]  # the summary names the signal, not an exit of Ray's
    done_before, started_before = committed(root), started(root)
    assert len(done_before) < WORKER_TASKS, "the job finished before the signal"
    # the rerun; executors started by hand ended with the interrupted run, so new ones are started
    # for it, before the driver (they find the interrupted run's end and must wait for the rerun)
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        rerun = run(job.cmd, tmp_path, backend)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_rerun_resumed(job, root, started_before, done_before, "the signal")


def test_a_killed_worker_does_not_fail_the_job(backend, tmp_path):
    job = counting_job(backend, tmp_path, 40, "--sleep", "0.3")
    with backend.job_side(COUNTING_JOB, job.job_id, job.data_root):
        proc = start(job.cmd, tmp_path, backend)
        try:
            root = wait_for_commits(os.path.join(job.data_root, f"*.{job.job_id}"), 2, proc, deadline=240)
            killed = backend.kill_one_worker(proc.pid, root)
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
    assert proc.returncode == 0, f"after killing {killed}:\n{err[-3000:]}"
    assert sink_rows(job.sink) == expected_rows(job.inputs)


BAD_SQL_JOB = """
import sys
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

driver = Driver()
driver.add_argument("-i", "--input_paths", nargs="+")
args = driver.get_arguments()
ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(args["input_paths"]))
driver.run(LogicalPlan(ctx, SqlEngineNode(ctx, (src,), "select idd, from {0}")))
"""


def run_script_job(backend, tmp_path, name: str, text: str, inputs: List[str], *extra: str, env_backend=None, timeout=300):
    """Run a Driver script (``text``) on ``backend`` over ``inputs``; returns the process and the
    job's folder."""
    script = tmp_path / name
    script.write_text(text)
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    cmd = [sys.executable, str(script), backend.driver_mode(), "--job_id", job_id, "--data_root", data_root]
    with backend.job_side(str(script), job_id, data_root):
        proc = run([*cmd, *backend.driver_args(), "-i", *inputs, *extra], tmp_path, env_backend or backend, timeout=timeout)
    (root,) = glob.glob(os.path.join(data_root, f"*.{job_id}"))
    return proc, root


def test_bad_sql_fails_fast_with_the_sql(backend, tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    proc, root = run_script_job(backend, tmp_path, "bad_sql.py", BAD_SQL_JOB, inputs)
    assert proc.returncode == EX_SOFTWARE
    assert "select idd, from" in proc.stderr
    assert attempts_used(root) == 0, "a parse error was retried"


EXITING_JOB = """
import sys
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan

driver = Driver()
driver.add_argument("-i", "--input_paths", nargs="+")
driver.add_argument("--how")
args = driver.get_arguments()
HOW = args["how"]  # travels with the function, to workers that do not share this environment


def leave(runtime_ctx, tables):
    if HOW == "exit0":
        sys.exit(0)
    raise KeyboardInterrupt()

ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(args["input_paths"]))
driver.run(LogicalPlan(ctx, ArrowComputeNode(ctx, (DataSetPartitionNode(ctx, (src,), 2),), process_func=leave)))
"""


@pytest.mark.parametrize(
    "how, said, retried",
    [
        ("exit0", "SystemExit: the task's code called sys.exit(0)", True),
        ("kbint", "KeyboardInterrupt: the task's code raised KeyboardInterrupt", False),
    ],
)
def test_an_exit_of_the_tasks_code_fails_the_task_saying_so(backend, tmp_path, how, said, retried):
    # not a lost worker (reads like an out-of-memory kill) nor a cancelled Ray task: the task
    # failed, by what its code did; sys.exit() is retried as a crash of the worker always was
    # (tests/compat/test_execution.py exits on a first attempt only), KeyboardInterrupt is not
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    proc, root = run_script_job(backend, tmp_path, "exiting.py", EXITING_JOB, inputs, "--how", how)
    assert proc.returncode == EX_SOFTWARE, proc.stderr[-3000:]
    failed = [line for line in proc.stderr.splitlines() if " failed: " in line and line.lstrip().startswith("task ")]
    assert failed and all(said in line and "ArrowComputeNode" in line for line in failed), proc.stderr[-3000:]
    assert "WorkerLost" not in proc.stderr and "TaskCancelledError" not in proc.stderr, proc.stderr[-3000:]
    assert (attempts_used(root) > 0) == retried, "retried" if not retried else "not retried"


LATE_BAD_SQL_JOB = """
import os, time
import pyarrow as pa
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowStreamNode, Context, DataSetPartitionNode, DataSourceNode, HashPartitionNode, LogicalPlan, SqlEngineNode,
)

driver = Driver()
driver.add_argument("-i", "--input_paths", nargs="+")
driver.add_argument("-m", "--marker")
args = driver.get_arguments()


def held_up(runtime_ctx, readers):
    # waits (at most two minutes) for a file nobody creates: the job can only end early by the
    # plan check's error
    deadline = time.monotonic() + 120
    while not os.path.exists(args["marker"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for reader in readers:
        yield reader.read_all().select(["id", "key"])


ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(args["input_paths"]))
rows = DataSetPartitionNode(ctx, (src,), 4, partition_by_rows=True)
slow = ArrowStreamNode(ctx, (rows,), process_func=held_up)
slow.output_schema = pa.schema([("id", pa.int64()), ("key", pa.int64())])  # what map(schema=...) sets
shuffled = HashPartitionNode(ctx, (slow,), 2, "key")
driver.run(LogicalPlan(ctx, SqlEngineNode(ctx, (shuffled,), "select id, name from {0}")))
"""


def test_a_query_that_cannot_bind_fails_the_job_before_its_turn(backend, tmp_path):
    # the plan check runs in the scheduler's process whatever the backend: the bad node comes
    # after a stage held up until the job ends, and the job fails with a PlanError (no task fails)
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=30)
    marker = str(tmp_path / "never")
    env_backend = _WithEnv(backend, SP_PLAN_CHECK="0")
    proc, root = run_script_job(
        backend, tmp_path, "late_bad_sql.py", LATE_BAD_SQL_JOB, inputs, "-m", marker, env_backend=env_backend, timeout=240
    )
    assert proc.returncode == EX_SOFTWARE, proc.stderr[-3000:]
    assert "PlanError" in proc.stderr and 'Referenced column "name" not found' in proc.stderr, proc.stderr[-3000:]
    assert events_of(root, "failed") == [], "a task failed: the check did not come first"


class _WithEnv:
    """A backend whose jobs run with some more environment variables."""

    def __init__(self, backend, **env: str) -> None:
        self.backend, self.extra = backend, env

    def env(self):
        return dict(self.backend.env(), **self.extra)


def events_of(root: str, kind: str) -> List[dict]:
    with open(os.path.join(root, "log", "events.jsonl")) as f:
        return [e for e in map(json.loads, f) if e.get("ev") == kind]


def test_a_second_job_reuses_the_first_jobs_tasks_from_the_cache(backend, tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=30)
    counter, data_root = str(tmp_path / "counter"), str(tmp_path / "root")
    nparts, roots = 4, []
    for n in range(2):
        job_id, sink = str(uuid.uuid4()), str(tmp_path / f"sink{n}")
        cmd = counting_command(backend, job_id, data_root, inputs, counter, sink, "--sleep", "0")
        cmd[cmd.index("-n") + 1] = str(nparts)  # few tasks: this test is run on every backend
        with backend.job_side(COUNTING_JOB, job_id, data_root):
            proc = run(cmd, tmp_path, backend)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sink_rows(sink) == expected_rows(inputs)
        (root,) = glob.glob(os.path.join(data_root, f"*.{job_id}"))
        roots.append(root)
    assert len(counter_lines(counter)) == nparts, "the second job computed a task again"
    assert not events_of(roots[0], "reused")
    reused = events_of(roots[1], "reused")
    # every task of the first job that writes files of its own (compute + sort per partition),
    # except the sink (published, not cached)
    assert len(reused) == 2 * nparts, [e["key"] for e in reused]
    assert {e["from_job"] for e in reused} == {os.path.basename(roots[0]).split(".", 1)[1]}


SYS_PATH_LIB = """
import os


def count_rows(runtime_ctx, input_datasets, output_path):
    with open(os.path.join(output_path, "rows.txt"), "w") as f:
        f.write(str(sum(ds.num_rows for ds in input_datasets)))
    return True
"""

SYS_PATH_JOB = """
import sys
sys.path.insert(0, {libs!r})  # a folder of the user's modules, added at run time (not on PYTHONPATH)
import sp_sys_path_lib
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode

driver = Driver()
driver.add_argument("-i", "--input_paths", nargs="+")
args = driver.get_arguments()
ctx = Context()
parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(args["input_paths"])),), npartitions=2)
node = PythonScriptNode(ctx, (parts,), process_func=sp_sys_path_lib.count_rows, output_name="counted")
driver.run(LogicalPlan(ctx, node))
"""


def test_a_module_found_through_the_scripts_own_sys_path_is_found_by_the_workers(backend, tmp_path):
    """A function of a module the script found through a folder it put on ``sys.path`` itself
    travels by reference: every backend's workers must import it from there, as the driver did
    (embedded and queue workers got the driver's path; Ray workers did not, and failed)."""
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "sp_sys_path_lib.py").write_text(SYS_PATH_LIB)
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=5)
    proc, root = run_script_job(backend, tmp_path, "sys_path_job.py", SYS_PATH_JOB.format(libs=str(libs)), inputs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [open(p).read() for p in glob.glob(os.path.join(root, "output", "counted", "**", "rows.txt"), recursive=True)]
    assert sorted(counts) == ["5", "5"]
