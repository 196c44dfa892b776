"""Acceptance: the same plan on the same inputs gives byte-identical outputs, names included,
whatever the job id, the job time and the number of workers.

The URL-sort example (Driver, ``-o``) and the quick start (DataFrame API, ``write_parquet``) each
run twice, with different job ids and 1 then 2 workers, into the *same* output folder (the
manifest lists absolute paths of the published files, so the comparison is only fair at one
place): the folder is hashed after the first run and again after the second. The task cache is
off, or the second run would only relink the first run's files.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.datagen import tree_digest

SORT_EXAMPLE = os.path.join(REPO_ROOT, "examples", "sort_mock_urls.py")
QUICKSTART = os.path.join(REPO_ROOT, "examples", "quickstart.py")


def run(cmd, cwd, env=None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sort_example_is_byte_identical_across_jobs_and_worker_counts(url_files, tmp_path, data_root):
    out = str(tmp_path / "out")
    digests = []
    for job_id, workers in (("sort-run-1", "1"), ("sort-run-2", "2")):
        cmd = [sys.executable, SORT_EXAMPLE, "scheduler", "--job_id", job_id, "--data_root", data_root]
        cmd += ["--num_executors", workers, "--task_cache", "off", "-i", *url_files, "-n", "3", "-o", out]
        run(cmd, str(tmp_path))
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]
    assert len([n for n in digests[0] if n.endswith(".parquet")]) == 3


def test_quickstart_is_byte_identical_across_jobs_and_worker_counts(tmp_path):
    sys.path.insert(0, os.path.dirname(QUICKSTART))
    try:
        from quickstart import make_prices
    finally:
        sys.path.pop(0)
    prices = str(tmp_path / "prices.parquet")
    make_prices(prices, rows=20_000)
    out = str(tmp_path / "output")
    digests = []
    for job_id, workers in (("qs-run-1", "1"), ("qs-run-2", "2")):
        env = dict(
            os.environ, SP_JOBID=job_id, SP_NUM_EXECUTORS=workers, SP_TASK_CACHE="off", SP_DATA_ROOT=str(tmp_path / "root")
        )
        run([sys.executable, QUICKSTART, prices, out], str(tmp_path), env)
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]
    assert len([n for n in digests[0] if n.endswith(".parquet")]) == 3


def test_parquet_metadata_names_no_job(tmp_path):
    import smallpond

    sp = smallpond.init(job_id="metadata-job", data_root=str(tmp_path / "root"), task_cache="off")
    try:
        df = sp.from_items([{"a": i} for i in range(10)]).repartition(2, hash_by="a")
        df = sp.partial_sql("select a from {0}", df)
        df.write_parquet(str(tmp_path / "out"))
    finally:
        sp.shutdown()
    files = [os.path.join(tmp_path / "out", n) for n in os.listdir(tmp_path / "out") if n.endswith(".parquet")]
    assert files
    for p in files:
        md = {k.decode(): v.decode() for k, v in (pq.read_metadata(p).metadata or {}).items()}
        assert "SMALLPOND:__task_key__" in md
        assert not any("job" in k for k in md), md
        assert not any("metadata-job" in v or sp.runtime_ctx.job_id.hex in v.replace("-", "") for v in md.values())


@pytest.mark.parametrize("seed", [None, 7])
def test_random_shuffle_depends_only_on_the_seed(tmp_path, seed):
    import smallpond

    def shuffled(job_id: str, workers: int, seed):
        sp = smallpond.init(
            job_id=job_id, data_root=str(tmp_path / job_id), num_executors=workers, random_seed=seed, task_cache="off"
        )
        try:
            return [r["x"] for r in sp.from_items([{"x": i} for i in range(200)]).random_shuffle().take_all()]
        finally:
            sp.shutdown()

    a, b = shuffled("shuffle-a", 1, seed), shuffled("shuffle-b", 2, seed)
    assert a == b and sorted(a) == list(range(200)) and a != list(range(200))
    assert shuffled("shuffle-c", 1, 99 if seed is None else None) != a


def test_retried_attempts_write_the_same_files(url_files, tmp_path, data_root):
    """Attempt numbers appear in no file name: a run whose tasks all failed twice (injected
    faults) before succeeding writes what a run without failures writes."""
    out = str(tmp_path / "out")
    digests = []
    for job_id, faults in (("clean-run", "0"), ("faulty-run", "0.9")):
        cmd = [sys.executable, SORT_EXAMPLE, "scheduler", "--job_id", job_id, "--data_root", data_root, "--task_cache", "off"]
        cmd += ["--fault_inject_prob", faults, "--max_fail_count", "3", "-i", *url_files, "-n", "2", "-o", out]
        run(cmd, str(tmp_path))
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]


def test_row_groups_do_not_follow_the_memory_a_task_gets():
    from smallpond.execution.ops.duckdb import MAX_ROW_GROUP_BYTES_PER_WRITER, writer_row_group_bytes
    from smallpond.execution.task import Task

    class _Node:
        id, label, location, output_name, output_path = 1, "N-1", "x:1", None, None
        cpu_limit, gpu_limit, memory_limit = 1, 0, None

    task = Task(_Node(), 1, [], [])
    sizes = set()
    for memory in (4 << 30, 12 << 30, 64 << 30):  # one worker or many, a small machine or a big one
        task.memory_limit = memory
        sizes.add(writer_row_group_bytes(task, 1))
        task.memory_limit = memory * 16
        sizes.add(writer_row_group_bytes(task, 16))
    assert sizes == {MAX_ROW_GROUP_BYTES_PER_WRITER}
