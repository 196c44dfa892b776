"""How the queue backend is reached: the Driver's ``executor`` mode and ``--platform``, a session's
``platform=``; and what the embedded default does not load."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import uuid

import pytest

from smallpond.execution.driver import Driver
from tests.backends.backend_queue import alive
from tests.datagen import generate_parquet_files
from tests.execution.test_queue_backend import QUEUE_JOB, queue_env

pytestmark = pytest.mark.queue


def test_executor_mode_needs_no_user_arguments():
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    _, args = driver.parse_arguments(["executor", "--job_id", "j", "--data_root", "/tmp/x"])
    assert args.mode == "executor" and driver.user_args.input_paths is None
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    with pytest.raises(SystemExit):
        driver.parse_arguments(["scheduler", "--job_id", "j"])  # the scheduler still needs them
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+", required=True)
    assert driver.parse_arguments(["scheduler", "-i", "a.parquet"])[0].input_paths == ["a.parquet"]


def test_an_executor_without_a_job_says_what_it_needs(tmp_path):
    env = queue_env()
    env.pop("SP_JOBID", None)
    proc = subprocess.run([sys.executable, QUEUE_JOB, "executor"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70  # the Driver's status of a failure (README); it was 1
    assert "executor mode needs the job to serve: --job_id" in proc.stderr


def test_an_executor_gives_up_waiting_for_a_job_that_never_starts(tmp_path):
    cmd = [sys.executable, QUEUE_JOB, "executor", "--job_id", str(uuid.uuid4()), "--data_root", str(tmp_path)]
    proc = subprocess.run(cmd, env=queue_env(SP_QUEUE_WAIT="0.5"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 70
    assert "gave up after 0s waiting for job" in proc.stderr


def test_a_session_runs_on_the_queue_backend(tmp_path):
    """``init(platform="base", num_executors=2)``: the tasks run on two launched executors, which
    exit when the session shuts down."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=10)
    code = f"""
import glob, json, os, smallpond
sp = smallpond.init(data_root={str(tmp_path / "root")!r}, platform="base", num_executors=2)
df = sp.read_parquet({inputs!r}).repartition(3, hash_by="id")
df = sp.partial_sql("select count(*) as n, sum(id) as s from {{0}}", df)
rows = df.to_arrow().to_pylist()
logs = glob.glob(os.path.join(sp.runtime_ctx.log_root, "executor-*.log"))
backend = sp._job.executor.name
infos = [json.load(open(p)) for p in glob.glob(os.path.join(sp.runtime_ctx.queue_root, "executors", "*", "info"))]
sp.shutdown()
print(json.dumps({{"n": sum(r["n"] for r in rows), "s": sum(r["s"] for r in rows), "logs": len(logs), "backend": backend,
                   "executors": infos}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=queue_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (got["n"], got["s"], got["backend"], got["logs"]) == (30, sum(range(30)), "queue", 2)
    # shut down with the session (its queue folder is removed with the intermediates)
    assert len(got["executors"]) == 2 and not [i for i in got["executors"] if alive(i)]


def test_the_embedded_default_loads_neither_the_queue_backend_nor_a_platform(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    code = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(QUEUE_JOB)!r})
import queue_job
from smallpond.execution.driver import Driver
driver = Driver()
driver.parse_arguments(["scheduler", "--data_root", {str(tmp_path / "root")!r}, "--num_executors", "1"])
assert driver.run(queue_job.queue_plan({inputs!r}, {str(marker_dir)!r}, 2), stop_process_on_done=False) is not None
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("smallpond.platform", "smallpond.execution.executors.queue")))))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=queue_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert len(glob.glob(os.path.join(marker_dir, "end.*"))) == 2


def test_num_executors_with_the_manual_platform_warns(make_rt, log_messages):
    from smallpond.execution.executors.queue import QueueExecutor

    executor = QueueExecutor(make_rt(), platform="manual", num_executors=3)
    assert executor.num_executors == 0
    assert any("num_executors=3 is ignored with platform 'manual'" in m for m in log_messages)
