"""A task's commit record is its task-cache entry's record too: one file under two names, signed
with the job's secret and the cache's (``SPSIG3``, :func:`smallpond.io.filesystem.signed_bytes`).

Real jobs on real Parquet: the entry's record is the commit record's inode, a later job reuses the
entries, a shared record that is damaged is trusted by neither reader (the task runs again), and
a record signed by the job alone is not served by the cache.
"""

from __future__ import annotations

import glob
import os

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.io.filesystem import signed_bytes, unverified_payload
from tests.datagen import generate_parquet_files, tree_digest
from tests.e2e.test_incremental import Events, incremental_plan


def entry_records(cache: str):
    """Each entry's record: the file named by its key (its files beside it have a dot in their name)."""
    return sorted(p for p in glob.glob(os.path.join(cache, "entries", "*", "*")) if "." not in os.path.basename(p))


def commit_records(rt):
    return sorted(glob.glob(os.path.join(rt.completed_task_dir, "*.commit")))


def build(tmp_path, job_id: str, sink: str, events=None):
    inputs = sorted(glob.glob(str(tmp_path / "in" / "*.parquet"))) or generate_parquet_files(
        str(tmp_path / "in"), nfiles=4, rows_per_file=10
    )
    rt = make_runtime_ctx(job_id, None, str(tmp_path / "root"), task_cache=str(tmp_path / "cache"))
    result = run_job(incremental_plan(inputs, str(tmp_path / sink)), rt, num_workers=2, listeners=[events] if events else [])
    assert result.successful
    return rt


def results(sink) -> dict:
    """The sink's files and their digests, without its manifest (which names the job)."""
    return {k: v for k, v in tree_digest(str(sink)).items() if not k.startswith(".MANIFEST")}


def shared_pairs(rt, cache: str):
    """(commit record, entry record) that are one file."""
    by_inode = {os.stat(p).st_ino: p for p in commit_records(rt)}
    return [(by_inode[os.stat(r).st_ino], r) for r in entry_records(cache) if os.stat(r).st_ino in by_inode]


def test_the_commit_record_is_the_entry_record_and_a_later_job_reuses_it(tmp_path):
    cache = str(tmp_path / "cache")
    rt = build(tmp_path, "a", "s1")
    records = entry_records(cache)
    pairs = shared_pairs(rt, cache)
    assert records and len(pairs) == len(records), "every entry's record is its task's commit record (one file fewer a task)"
    for commit, record in pairs:
        assert os.stat(record).st_nlink == 2 and open(commit, "rb").read()[:6] == b"SPSIG3"
    second = Events()
    build(tmp_path, "b", "s2", second)
    assert len(second.reused) == len(records) and not [k for k in second.submitted if not k.startswith("DataSinkTask")]
    assert results(tmp_path / "s1") == results(tmp_path / "s2")


def test_a_damaged_shared_record_is_trusted_by_neither_and_the_task_runs_again(tmp_path, log_messages):
    cache = str(tmp_path / "cache")
    rt = build(tmp_path, "a", "s1")
    # a task of the last SQL node (the highest-numbered), which the sink reads
    commit, record = max(p for p in shared_pairs(rt, cache) if "SqlEngineTask" in p[0])
    key = os.path.basename(commit)[: -len(".commit")]
    data = open(record, "rb").read()
    open(record, "wb").write(data[: len(data) // 2])  # in place: the commit record is this file too
    assert open(commit, "rb").read() == data[: len(data) // 2]
    before = results(tmp_path / "s1")
    for name in os.listdir(tmp_path / "s1"):  # the sink runs again, and what it needs
        os.remove(os.path.join(tmp_path, "s1", name))
    again = Events()
    build(tmp_path, "a", "s1", again)  # the same job: resume
    assert key in again.submitted and key not in again.reused, "the torn record is neither a checkpoint nor an entry"
    assert any("torn or damaged" in m for m in log_messages)
    assert results(tmp_path / "s1") == before
    assert open(commit, "rb").read()[:6] == b"SPSIG3", "the task's new record is whole"


def test_a_record_signed_by_the_job_alone_is_not_served_by_the_cache(tmp_path, log_messages):
    cache = str(tmp_path / "cache")
    rt = build(tmp_path, "a", "s1")
    commit, record = shared_pairs(rt, cache)[0]
    key = os.path.basename(commit)[: -len(".commit")]
    payload = unverified_payload(open(record, "rb").read())
    os.remove(record)
    open(record, "wb").write(signed_bytes(payload, rt.secret))  # the job's signature, not the cache's
    second = Events()
    build(tmp_path, "b", "s2", second)
    assert key in second.submitted and key not in second.reused
    assert any("not signed by this cache" in m for m in log_messages)
    assert results(tmp_path / "s1") == results(tmp_path / "s2")


def leftovers(cache: str):
    """Files in the entries' folders that no record is beside (an insertion that did not finish)."""
    names = glob.glob(os.path.join(cache, "entries", "*", "*.*"))
    return sorted(p for p in names if not os.path.exists(os.path.join(os.path.dirname(p), os.path.basename(p).partition(".")[0])))


def test_a_worker_killed_while_it_fills_the_cache(tmp_path, monkeypatch):
    """kill -9 of a worker after it committed its task and linked the entry's files, before the
    entry's record: the job completes (the task is committed; its retry loses to that record), no
    entry is visible, only files no record names; the next job computes those tasks and fills the
    cache, the one after reuses everything, and clean removes the leftovers once they are old."""
    from smallpond.execution import cache_entries
    from smallpond.execution.cache import clean

    cache = str(tmp_path / "cache")
    monkeypatch.setenv("SP_TEST_CRASH_AT", "before_cache_record:SqlEngineTask")
    rt = build(tmp_path, "a", "s1")
    assert not [c for c, _ in shared_pairs(rt, cache) if "SqlEngineTask" in c], "no entry of a killed insertion"
    orphans = leftovers(cache)
    assert orphans, "the killed insertions left their files"
    monkeypatch.delenv("SP_TEST_CRASH_AT")
    second = Events()
    rt2 = build(tmp_path, "b", "s2", second)
    sql = [k for k in second.submitted if k.startswith("SqlEngineTask")]
    assert sql and not [k for k in second.reused if k.startswith("SqlEngineTask")]
    assert [c for c, _ in shared_pairs(rt2, cache) if "SqlEngineTask" in c], "the next job filled the cache"
    third = Events()
    build(tmp_path, "c", "s3", third)
    assert not [k for k in third.submitted if not k.startswith("DataSinkTask")], "everything reused"
    assert results(tmp_path / "s1") == results(tmp_path / "s2") == results(tmp_path / "s3")
    entries = entry_records(cache)
    clean(cache, max_bytes=1 << 40, dry_run=False)
    assert all(os.path.exists(p) for p in orphans), "an hour is not up: perhaps insertions under way"
    monkeypatch.setattr(cache_entries, "ORPHAN_SECONDS", -1.0)
    clean(cache, max_bytes=1 << 40, dry_run=False)
    assert not any(os.path.exists(p) for p in orphans) and entry_records(cache) == entries
    fourth = Events()
    build(tmp_path, "d", "s4", fourth)
    assert not [k for k in fourth.submitted if not k.startswith("DataSinkTask")], "the entries kept their files"
