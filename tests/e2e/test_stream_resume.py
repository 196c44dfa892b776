"""Acceptance (issue 12): kill a job during a long ArrowStreamNode task after its first checkpoint;
the rerun of the same command processes only the batches after that checkpoint, and the output
has every row exactly once.

The job (tests/e2e/stream_job.py) runs through the Driver as a subprocess: 20 batches of 10 rows,
a forced checkpoint after batch 7; the process function blocks at batch 9 until a marker file
exists. The test waits for the block, checks the checkpoint record is on disk, kills the driver's
whole process group with SIGKILL, creates the marker and runs the same command again.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.datagen import parquet_paths_in, read_parquet
from tests.execution.stream_helpers import counted_lines

STREAM_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stream_job.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_killed_stream_task_resumes_from_its_checkpoint(tmp_path):
    inputs = []
    for i in range(4):  # 200 ids in 4 files
        path = str(tmp_path / f"in{i}.parquet")
        pq.write_table(pa.table({"id": pa.array(range(i * 50, (i + 1) * 50), pa.int64())}), path)
        inputs.append(path)
    data_root, counter, sink, marker = (str(tmp_path / n) for n in ("root", "counter", "sink", "go-on"))
    job_id = str(uuid.uuid4())
    cmd = [sys.executable, STREAM_JOB, "scheduler", "--job_id", job_id, "--data_root", data_root, "--num_executors", "2"]
    cmd += ["-i", *inputs, "-c", counter, "-o", sink, "--checkpoint_at", "7", "--hang_at", "9", "--hang_marker", marker]
    env = dict(os.environ, PYTHONPATH=REPO, SP_PROGRESS="0")

    proc = subprocess.Popen(
        cmd, cwd=str(tmp_path), env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(marker + ".waiting"):
        if proc.poll() is not None:
            pytest.fail(f"the job ended before reaching batch 9:\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the stream task never reached batch 9")
        time.sleep(0.05)
    records = glob.glob(os.path.join(data_root, f"*.{job_id}", "staging", "stream_checkpoints", "*", "progress"))
    assert len(records) == 1, "the checkpoint after batch 7 is on disk before the kill"
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
    proc.communicate()
    psutil.wait_procs(workers, timeout=30)
    first_run = [first for _, first in counted_lines(counter)]
    assert first_run == list(range(0, 100, 10)), "batches 0..9 were processed before the kill"
    assert not os.path.exists(sink)

    open(marker, "w").close()  # the rerun does not block
    rerun = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    second_run = [first for _, first in counted_lines(counter)][len(first_run) :]
    assert second_run == list(range(80, 200, 10)), "only the batches after the checkpoint (0..7) are processed again"

    table = read_parquet(parquet_paths_in(sink))
    assert sorted(table.column("id").to_pylist()) == list(range(200)), "every row exactly once"
    assert table.column("doubled").to_pylist() == [2 * i for i in table.column("id").to_pylist()]
    root = glob.glob(os.path.join(data_root, f"*.{job_id}"))[0]
    assert not glob.glob(os.path.join(root, "staging", "stream_checkpoints", "*", "progress"))
