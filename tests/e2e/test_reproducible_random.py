"""Acceptance: a job whose tasks draw random numbers writes the same bytes with the same seed, on
a second run, after a retried attempt and after a resume; and no two tasks draw the same stream.

The job (tests/e2e/random_job.py, through the Driver) draws from Python's global ``random``,
NumPy's global generator (in an Arrow task and in a streaming one), writes the iteration order of
a set of strings (Python's hash salt), shuffles files and rows at random and calls ``random()`` in
SQL. The task cache is off, so every run computes every task.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import uuid
from typing import Dict, List

import pyarrow.parquet as pq
import pytest

from tests.datagen import generate_parquet_files

RANDOM_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "random_job.py")
EX_SOFTWARE = 70


def random_job_command(inputs: List[str], out: str, job_id: str, data_root: str, *extra: str, mode="scheduler") -> List[str]:
    return [sys.executable, RANDOM_JOB, mode, "--job_id", job_id, "--data_root", data_root, *extra, "-i", *inputs, "-o", out]


def parquet_digests(folder: str) -> Dict[str, str]:
    """The Parquet files a sink published (name: SHA-256 of its bytes); the manifest, which lists
    absolute paths, is left out so that outputs in two folders compare."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.parquet"))):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run(cmd: List[str], cwd, expect: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, SP_PROGRESS="0", SP_TASK_CACHE="off")
    env.pop("PYTHONHASHSEED", None)  # the workers' salt is the engine's to choose
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


@pytest.fixture
def inputs(tmp_path) -> List[str]:
    return generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=30)


def clean_run(tmp_path, inputs, name: str = "clean", *extra: str) -> Dict[str, str]:
    out = str(tmp_path / name)
    run(random_job_command(inputs, out, str(uuid.uuid4()), str(tmp_path / f"root-{name}"), *extra), tmp_path)
    return parquet_digests(out)


def test_two_runs_draw_the_same_numbers_and_write_the_same_bytes(tmp_path, inputs):
    first = clean_run(tmp_path, inputs, "one-worker", "--num_executors", "1")
    second = clean_run(tmp_path, inputs, "two-workers", "--num_executors", "2")
    assert len(first) == 3
    assert first == second, "the same job and seed wrote other bytes"
    table = pq.read_table(sorted(glob.glob(str(tmp_path / "one-worker" / "*.parquet"))))
    assert table.num_rows == 120
    for column in ("py_random", "np_random", "np_batch", "sql_random"):
        # every task draws a stream of its own: no value is drawn twice
        assert len(set(table.column(column).to_pylist())) == 120, column
    other_seed = clean_run(tmp_path, inputs, "other-seed", "--random_seed", "7")
    assert set(other_seed.values()).isdisjoint(first.values()), "another seed drew the same numbers"


def test_a_retried_attempt_draws_what_the_failed_one_drew(tmp_path, inputs):
    from smallpond.execution.attempt import logged_attempts

    clean = clean_run(tmp_path, inputs)
    markers, out, root = tmp_path / "markers", str(tmp_path / "retried"), str(tmp_path / "root-retried")
    markers.mkdir()
    job_id = str(uuid.uuid4())
    run(random_job_command(inputs, out, job_id, root, "--num_executors", "1", "--fail_once", str(markers)), tmp_path)
    (job_root,) = glob.glob(os.path.join(root, f"*.{job_id}"))
    assert os.path.exists(markers / "failed-once")
    assert any(attempt > 0 for _, attempt in logged_attempts(os.path.join(job_root, "log"))), "no task was retried"
    assert parquet_digests(out) == clean


def test_a_resumed_job_writes_what_an_uninterrupted_one_writes(tmp_path, inputs):
    clean = clean_run(tmp_path, inputs)
    markers, out = tmp_path / "markers", str(tmp_path / "resumed")
    markers.mkdir()
    cmd = random_job_command(inputs, out, "resumed", str(tmp_path / "root-resumed"), "--stop_once", str(markers))
    failed = run(cmd, tmp_path, expect=EX_SOFTWARE)
    assert "the job stops here once" in failed.stderr
    rerun = run(cmd, tmp_path)
    assert "already committed are skipped" in rerun.stderr, rerun.stderr[-3000:]
    assert parquet_digests(out) == clean


def test_a_sample_given_the_tasks_seed_is_the_same_in_every_run(tmp_path):
    # the advice of smallpond.logical.determinism for system/bernoulli samples, which DuckDB
    # otherwise draws from the OS: the task's seed ({rand_seed}) makes them repeat
    import smallpond

    def sampled(job_id: str, seed=None) -> List[int]:
        sp = smallpond.init(job_id=job_id, data_root=str(tmp_path / job_id), random_seed=seed, task_cache="off")
        try:
            df = sp.from_items([{"x": i} for i in range(2000)]).repartition(2, by_rows=True)
            df = sp.partial_sql("select x from {0} using sample 10% (bernoulli, {rand_seed}) order by x", df)
            return [r["x"] for r in df.take_all()]
        finally:
            sp.shutdown()

    first = sampled("sample-a")
    assert 0 < len(first) < 2000
    assert sampled("sample-b") == first
    assert sampled("sample-c", seed=7) != first
