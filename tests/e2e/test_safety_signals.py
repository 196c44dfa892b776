"""SIGTERM is handled like Ctrl-C (issue 8, part 5): workers stopped and reaped, ``.STATUS`` set to
``interrupted``, one line saying how to resume, exit status 143; the same command then resumes."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

import smallpond
from tests.datagen import generate_parquet_files
from tests.e2e.test_resume import COUNTING_JOB, committed, expected_rows, job_command, sink_rows

RESUME_LINE = "was interrupted (SIGTERM); run the same command again"


def wait_for(predicate, proc, what: str, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def last_status(job_root: str) -> str:
    with open(os.path.join(job_root, "log", ".STATUS")) as f:
        return f.read().split()[-1]


def test_sigterm_stops_a_driver_job_which_then_resumes(tmp_path, data_root):
    assert os.path.exists(COUNTING_JOB)
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=40)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    cmd = job_command(job_id, data_root, inputs, counter, sink, "--sleep", "0.2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    roots = os.path.join(data_root, f"*.{job_id}")
    wait_for(lambda: glob.glob(roots) and len(committed(glob.glob(roots)[0])) >= 4, proc, "4 commits")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.count(RESUME_LINE) == 1 and job_id in err
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "workers outlived the job"
    root = glob.glob(roots)[0]
    assert last_status(root).startswith("interrupted@")
    assert not os.path.exists(os.path.join(root, "config", "job.lock"))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sink_rows(sink) == expected_rows(inputs)
    assert last_status(root).startswith("success@")


SESSION_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import smallpond

    def slow(row):
        time.sleep(0.05)
        return row

    sp = smallpond.init(job_id=sys.argv[1], data_root=sys.argv[2], num_executors=2)
    df = sp.from_items(list(range(400))).repartition(8, by_rows=True).map(slow)
    print("computing", flush=True)
    df.compute()
    print("done", flush=True)
    """
)


def test_sigterm_stops_a_session(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SESSION_SCRIPT)
    data_root, job_id = str(tmp_path / "root"), str(uuid.uuid4())
    proc = subprocess.Popen(
        [sys.executable, str(script), job_id, data_root], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "computing"
    roots = os.path.join(data_root, f"*.{job_id}")
    wait_for(lambda: glob.glob(roots) and committed(glob.glob(roots)[0]), proc, "a commit")
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "done" not in out
    assert err.count(RESUME_LINE) == 1
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive
    assert last_status(glob.glob(roots)[0]).startswith("interrupted@")


def test_a_handler_of_the_users_own_is_left_alone(tmp_path):
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        sp = smallpond.init(data_root=str(tmp_path), num_executors=1)
        assert signal.getsignal(signal.SIGTERM) is mine
        sp.shutdown()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    # with none of its own, the session handles SIGTERM while it lives, then restores the default
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        sp = smallpond.init(data_root=str(tmp_path), num_executors=1)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, mine)
        sp.shutdown()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
