"""Acceptance: SIGKILL at any instant of a publication, then a rerun: every output folder holds the
previous complete result or the new complete one, never a mix, and the rerun completes the new one.

A Driver job with two sinks replaces their earlier results. ``SP_TEST_PUBLISH_STEP_DELAY`` slows
each publication step, and the job (with its workers) is killed once its publication journal
exists, after a different number of steps in each round.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.datagen import generate_parquet_files
from tests.e2e.safety_helpers import manifest, published_rows

PUBLISH_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "publish_job.py")
DELAY = 0.25


def command(job_id, data_root, inputs, a, b):
    return [sys.executable, PUBLISH_JOB, "scheduler", "--job_id", job_id, "--data_root", data_root, "--num_executors", "2",
            "-i", *inputs, "-a", a, "-b", b]  # fmt: skip


def state_of(folder: str, versions: dict) -> str:
    """Which complete version a folder holds ("v0", "v1", ...), or what is wrong with it."""
    if not os.path.isdir(folder):
        return "missing"
    listed = manifest(folder)
    present = sorted(n for n in os.listdir(folder) if n != ".MANIFEST.txt")
    if sorted(os.path.basename(p) for p in listed) != present:
        return f"manifest {listed} does not match files {present}"
    rows = published_rows(folder, "id")
    for name, expected in versions.items():
        if rows == expected:
            return name
    return f"mixed rows {rows}"


@pytest.mark.parametrize("kill_after_steps", [0, 3, 6])
def test_sigkill_during_publication_then_rerun(tmp_path, data_root, kill_after_steps):
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    v0 = generate_parquet_files(str(tmp_path / "v0"), nfiles=2, rows_per_file=5)
    v1 = generate_parquet_files(str(tmp_path / "v1"), nfiles=3, rows_per_file=4, seed=1, prefix="other")
    expect = {
        "A": {"v0": list(range(10)), "v1": list(range(12))},
        "B": {"v0": [2 * i for i in range(10)], "v1": [2 * i for i in range(12)]},
    }
    first = subprocess.run(command(str(uuid.uuid4()), data_root, v0, a, b), capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (state_of(a, expect["A"]), state_of(b, expect["B"])) == ("v0", "v0")

    job_id = str(uuid.uuid4())
    env = dict(os.environ, SP_TEST_PUBLISH_STEP_DELAY=str(DELAY))
    proc = subprocess.Popen(command(job_id, data_root, v1, a, b), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    journal_glob = os.path.join(data_root, f"*.{job_id}", "config", "publication.journal")
    deadline = time.monotonic() + 120
    while not glob.glob(journal_glob):
        assert proc.poll() is None, f"the job ended before publishing: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no publication journal appeared"
        time.sleep(0.01)
    time.sleep(DELAY * (kill_after_steps + 0.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    # at the instant of the kill each folder held one complete version: the swap is atomic
    after_kill = (state_of(a, expect["A"]), state_of(b, expect["B"]))
    assert set(after_kill) <= {"v0", "v1"}, after_kill
    assert glob.glob(journal_glob), "killed during publication, but the journal is gone"

    rerun = subprocess.run(command(job_id, data_root, v1, a, b), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (state_of(a, expect["A"]), state_of(b, expect["B"])) == ("v1", "v1")
    assert not glob.glob(journal_glob)
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]
