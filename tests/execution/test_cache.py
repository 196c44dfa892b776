"""The task cache's folder: entries are signed and verified, claims are exclusive, cleaning is LRU.

Real files on disk, real processes for claims; no job runs here (see tests/e2e/test_incremental.py).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ParameterError
from smallpond.execution.cache import TaskCache, clean, file_check, open_cache, read_claim
from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet


def write_output(folder: str, n: int = 3, rows: int = 100) -> ParquetDataSet:
    """A task's committed output folder with ``n`` Parquet files (one in a subfolder)."""
    paths = []
    for i in range(n):
        sub = os.path.join(folder, f"k={i}") if i == n - 1 else folder
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, f"out-{i}.parquet")
        pq.write_table(pa.table({"x": list(range(i * rows, (i + 1) * rows))}), p)
        paths.append(p)
    return ParquetDataSet(paths, root_dir=None)


@pytest.fixture
def cache(tmp_path) -> TaskCache:
    c = TaskCache(str(tmp_path / "cache"))
    c.check()
    return c


def insert(cache: TaskCache, tmp_path, key: str = "a" * 64, **kw):
    out = str(tmp_path / f"job-out-{key[:6]}")
    ds = write_output(out, **kw)
    assert cache.insert(key, ds, out, {"task": "T-000001", "job": "j1"}) is not None
    return ds, out


def entry_bytes(cache: TaskCache, key: str) -> int:
    """Bytes of an entry: its record and, beside it, its files."""
    return sum(os.path.getsize(p) for p in glob.glob(cache.entry_path(key) + "*"))


def test_insert_lookup_and_link_round_trip(cache, tmp_path):
    ds, out = insert(cache, tmp_path)
    entry = cache.lookup("a" * 64)
    assert entry is not None and entry.task == "T-000001" and entry.job == "j1"
    linked, folder = cache.link_into(entry, str(tmp_path / "job2" / "Node" / "T-000001"), 0)
    assert os.path.basename(folder).startswith("T-000001.0.")
    assert [os.path.relpath(p, folder) for p in linked.resolved_paths] == [os.path.relpath(p, out) for p in ds.resolved_paths]
    for a, b in zip(ds.resolved_paths, linked.resolved_paths):
        assert os.path.samefile(a, b)  # hard links: no copy of the data
    assert pq.read_table(linked.resolved_paths).num_rows == 300


def test_a_partitioned_output_is_rebased_part_by_part(cache, tmp_path):
    out = str(tmp_path / "out")
    parts = PartitionedDataSet([write_output(os.path.join(out, f"p{i}"), n=1) for i in range(2)])
    assert cache.insert("b" * 64, parts, out, {}) is not None
    linked, folder = cache.link_into(cache.lookup("b" * 64), str(tmp_path / "j" / "T"), 1)
    assert [len(d.resolved_paths) for d in linked.datasets] == [1, 1]
    assert all(p.startswith(folder + os.sep) and os.path.exists(p) for p in linked.paths)


def test_an_output_with_files_elsewhere_is_not_cached(cache, tmp_path):
    ds = write_output(str(tmp_path / "elsewhere"))
    assert cache.insert("c" * 64, ds, str(tmp_path / "out"), {}) is None
    assert cache.lookup("c" * 64) is None


def test_the_first_entry_for_a_key_stays(cache, tmp_path):
    insert(cache, tmp_path, rows=10)
    out = str(tmp_path / "second")
    assert cache.insert("a" * 64, write_output(out, rows=20), out, {}) is None
    assert pq.read_table(cache.lookup("a" * 64).record["dataset"].resolved_paths).num_rows == 30


@pytest.mark.parametrize("damage", ["truncate", "append", "delete", "touch", "head", "tail"])
def test_an_entry_whose_files_do_not_verify_is_not_served_and_is_removed(cache, tmp_path, damage, log_messages):
    ds, out = insert(cache, tmp_path)
    victim = ds.resolved_paths[0]  # a hard link of the entry's file: damaging it damages the entry
    st = os.stat(victim)
    if damage == "truncate":
        os.truncate(victim, st.st_size - 1)
    elif damage == "append":
        with open(victim, "ab") as f:
            f.write(b"x")
    elif damage == "delete":
        os.unlink(dict(cache.lookup("a" * 64).files())[os.path.relpath(victim, out)])
    elif damage == "touch":
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:  # same size, same modification time, one byte changed at either end
        with open(victim, "r+b") as f:
            f.seek(0 if damage == "head" else st.st_size - 10)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.lookup("a" * 64) is None
    assert not os.path.exists(cache.entry_path("a" * 64)), "a bad entry is removed"
    assert any("is not served" in m for m in log_messages)


def test_the_whole_parquet_footer_is_checked(tmp_path):
    """A footer longer than the 64 KiB tail: a change at its start is still seen."""
    path = str(tmp_path / "wide.parquet")
    pq.write_table(pa.table({f"a_rather_long_column_name_{i:05d}": [i] for i in range(3000)}), path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(size - 8)
        footer = int.from_bytes(f.read(4), "little")
    assert footer > 2 * 64 * 1024, "the test needs a footer longer than the tail read"
    before = file_check(path)
    with open(path, "r+b") as f:
        f.seek(size - 8 - footer + 16)  # inside the footer, far from both ends of the file
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    assert file_check(path) != before


def _check_as_first_written(path):
    """The file check as entries written by earlier releases computed it (through a Python file
    object): their records must keep verifying."""
    import hashlib

    tail_bytes = 64 * 1024
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256(str(size).encode())
        head = f.read(tail_bytes)
        h.update(head)
        if size <= tail_bytes:
            h.update(head)
            return h.hexdigest()
        tail = tail_bytes
        if size >= 12:
            f.seek(size - 8)
            end = f.read(8)
            if end[4:] == b"PAR1":
                footer = int.from_bytes(end[:4], "little")
                if 0 < footer <= min(64 * 1024 * 1024, size - 12):
                    tail = max(tail, footer + 8)
        start = max(0, size - tail)
        f.seek(start)
        h.update(f.read(size - start))
        return h.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 11, 12, 100, 65535, 65536, 65537, 200_000])
def test_file_check_digests_are_those_of_earlier_entries(tmp_path, size):
    path = str(tmp_path / f"f{size}")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    assert file_check(path) == _check_as_first_written(path)


def test_file_check_digests_of_parquet_are_those_of_earlier_entries(tmp_path):
    small, wide = str(tmp_path / "small.parquet"), str(tmp_path / "wide.parquet")
    pq.write_table(pa.table({"a": list(range(100_000))}), small)
    pq.write_table(pa.table({f"a_rather_long_column_name_{i:05d}": [i] for i in range(3000)}), wide)
    for path in (small, wide):
        assert file_check(path) == _check_as_first_written(path)


def test_a_record_not_signed_by_this_cache_is_refused(cache, tmp_path, log_messages):
    insert(cache, tmp_path)
    other = TaskCache(str(tmp_path / "other"))
    other.check()
    # a record signed with another cache's secret, put where this cache's record was
    record_path = cache.entry_path("a" * 64)
    from smallpond.io.filesystem import dump, load

    record = load(record_path, secret=cache.secret)
    dump(record, record_path, secret=other.secret)  # (the format of io.filesystem.dump)
    assert cache.lookup("a" * 64) is None
    assert any("not signed by this cache" in m for m in log_messages)


def test_a_dry_lookup_changes_nothing(cache, tmp_path):
    ds, _ = insert(cache, tmp_path)
    os.truncate(ds.resolved_paths[0], 10)
    assert cache.lookup("a" * 64, drop=False) is None
    assert os.path.exists(cache.entry_path("a" * 64))


def test_a_folder_others_could_write_is_refused(tmp_path):
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(ParameterError, match="writable by group or others"):
        TaskCache(str(path)).check()


def test_a_cache_path_that_cannot_be_a_folder_is_an_error_naming_the_cache_and_its_settings(tmp_path):
    """A file where the cache's folder should be gave the bare OSError ("[Errno 17] File exists:
    '/x/side.txt/'"), naming neither the task cache nor how to point it elsewhere."""
    side = tmp_path / "side.txt"
    side.write_text("mine")
    for path, why in ((side, f"{side} is a file, not a folder"), (side / "sub", f"a folder above {side / 'sub'} is a file")):
        with pytest.raises(ParameterError) as info:
            TaskCache(str(path)).check()
        text = str(info.value)
        assert text.startswith(f"task cache {path} cannot be used: {why};"), text
        assert "SP_TASK_CACHE" in text and "task_cache='off'" in text
    assert side.read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="changing a folder's owner needs root")
def test_a_folder_owned_by_someone_else_is_refused(tmp_path):
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 54321, -1)
    with pytest.raises(ParameterError, match="owned by uid 54321"):
        TaskCache(str(path)).check()


def test_a_readable_secret_is_refused(tmp_path):
    c = TaskCache(str(tmp_path / "c"))
    c.check()
    os.chmod(os.path.join(c.path, "secret"), 0o644)
    with pytest.raises(ParameterError, match="not private"):
        TaskCache(c.path).check()


def test_the_folder_and_secret_are_private(tmp_path):
    c = open_cache(str(tmp_path / "c"))
    assert os.stat(c.path).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(c.path, "secret")).st_mode & 0o777 == 0o600


# -- claims ------------------------------------------------------------------------------------------


def test_a_claim_is_exclusive_and_released(cache):
    assert cache.claim("k" * 64, "job-a") is None
    assert cache.claim("k" * 64, "job-a") is None, "a process's own claim is its own"
    holder = read_claim(cache.lock_path("k" * 64))
    assert (holder.host, holder.pid, holder.job) == (socket.gethostname(), os.getpid(), "job-a")
    cache.release("k" * 64)
    cache.drain()
    assert not os.path.lexists(cache.lock_path("k" * 64))


def lock_of_process(cache: TaskCache, key: str, proc: subprocess.Popen) -> None:
    import psutil

    with open(cache.lock_path(key), "w") as f:
        json.dump(
            {"host": socket.gethostname(), "pid": proc.pid, "started": psutil.Process(proc.pid).create_time(), "job": "other"}, f
        )


def test_a_live_claim_of_another_process_holds_and_a_dead_ones_is_broken(cache):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_of_process(cache, "k" * 64, proc)
        holder = cache.claim("k" * 64, "job-b")
        assert holder is not None and holder.pid == proc.pid and holder.job == "other"
    finally:
        proc.kill()
        proc.wait()
    assert cache.claim("k" * 64, "job-b") is None, "the claim of a dead process is stale"
    assert read_claim(cache.lock_path("k" * 64)).job == "job-b"


def test_a_claim_from_another_host_is_stale_once_not_refreshed(cache):
    from smallpond.execution.cache import LOCK_STALE_SECONDS

    path = cache.lock_path("k" * 64)
    with open(path, "w") as f:
        json.dump({"host": "some-other-host", "pid": 1, "started": 0, "job": "remote"}, f)
    assert cache.claim("k" * 64, "job-c") is not None, "a fresh remote claim is live"
    old = time.time() - LOCK_STALE_SECONDS - 1
    os.utime(path, (old, old))
    assert cache.claim("k" * 64, "job-c") is None


# -- cleaning ----------------------------------------------------------------------------------------


def test_clean_removes_least_recently_used_first(cache, tmp_path):
    keys = [c * 64 for c in "def"]
    for i, k in enumerate(keys):
        insert(cache, tmp_path, key=k)
        os.utime(cache.entry_path(k), (1000 + i, 1000 + i))  # its record
    # use the oldest: it becomes the most recent
    cache.link_into(cache.lookup(keys[0]), str(tmp_path / "j" / "T"), 0)
    size = entry_bytes(cache, keys[1])
    dry = clean(cache.path, max_bytes=size)
    assert dry.dry_run and set(dry.removed) == {keys[1], keys[2]} and all(os.path.exists(cache.entry_path(k)) for k in keys)
    report = clean(cache.path, max_bytes=size, dry_run=False)
    assert set(report.removed) == {keys[1], keys[2]}
    assert os.path.exists(cache.entry_path(keys[0])) and cache.lookup(keys[0]) is not None
    assert not os.path.exists(cache.entry_path(keys[1]))


def test_clean_older_than(cache, tmp_path):
    insert(cache, tmp_path, key="d" * 64)
    insert(cache, tmp_path, key="e" * 64)
    old = time.time() - 10 * 86400
    os.utime(cache.entry_path("d" * 64), (old, old))
    report = clean(cache.path, older_than=86400, dry_run=False)
    assert report.removed == ["d" * 64]
    assert cache.lookup("e" * 64) is not None


def test_clean_validates_and_refuses_a_non_cache(tmp_path):
    with pytest.raises(ParameterError, match="not a task cache"):
        clean(str(tmp_path))
    with pytest.raises(ParameterError, match="max_bytes"):
        clean(str(tmp_path), max_bytes=-1)


def test_clean_from_the_command_line(cache, tmp_path):
    insert(cache, tmp_path, key="d" * 64)
    cmd = [sys.executable, "-m", "smallpond.execution.cache", "clean", cache.path, "--max_bytes", "0"]
    dry = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "would remove 1 entry" in dry.stdout
    assert os.path.exists(cache.entry_path("d" * 64))
    done = subprocess.run(cmd + ["--yes"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed 1 entry" in done.stdout
    assert not os.path.exists(cache.entry_path("d" * 64))
    bad = subprocess.run(
        [sys.executable, "-m", "smallpond.execution.cache", "clean", str(tmp_path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "not a task cache" in bad.stderr


def test_a_job_alone_on_the_cache_claims_nothing_until_another_job_comes(tmp_path, make_rt, monkeypatch):
    """A claim is a file per task; alone on its cache a job takes none. When a second job says it
    uses the cache, the first claims the tasks it is running (before the second claims anything:
    the second waits PRESENCE_GRACE_SECONDS, here 0), and every later task."""
    from types import SimpleNamespace

    from smallpond.execution import cache_keys

    monkeypatch.setattr(cache_keys, "PRESENCE_GRACE_SECONDS", 0.0)
    path = str(tmp_path / "c")

    def task(key):
        return SimpleNamespace(key=key, exec_on_scheduler=False, writes_output=True, plan_components={"params": "p"})

    first = cache_keys.JobCache(make_rt(task_cache=path))
    first.keys.update({"T-1": "a" * 64, "T-2": "b" * 64})
    assert first.claim(task("T-1")) is None and first.solo
    assert os.listdir(os.path.join(path, "locks")) == []
    assert len(os.listdir(os.path.join(path, "jobs"))) == 1
    first.tick()  # alone still: nothing changes
    assert os.listdir(os.path.join(path, "locks")) == []

    second = cache_keys.JobCache(make_rt(task_cache=path))
    assert second._alone() is False  # it finds the first job
    first._presence_checked = 0.0
    first.tick()  # the first notices, and claims the task it runs
    assert not first.solo and os.listdir(os.path.join(path, "locks")) == ["a" * 64 + ".lock"]
    assert first.claim(task("T-2")) is None  # and claims from now on
    assert sorted(os.listdir(os.path.join(path, "locks"))) == ["a" * 64 + ".lock", "b" * 64 + ".lock"]
    first.close()
    second.close()
    assert os.listdir(os.path.join(path, "jobs")) == []
    assert os.listdir(os.path.join(path, "locks")) == []


def test_an_entry_whose_shared_record_cannot_be_linked_writes_its_own(cache, tmp_path):
    """``insert(shared=...)`` links the task's commit record as the entry's record; where that
    link fails (gone, another filesystem) the entry writes a record of its own, and is served."""
    out = str(tmp_path / "job-out")
    ds = write_output(out)
    record = cache.entry_record("d" * 64, ds, out, {"task": "T-000002", "job": "j2"})
    assert [f[0] for f in record["files"]] == ["k=2/out-2.parquet", "out-0.parquet", "out-1.parquet"]
    assert cache.insert("d" * 64, ds, out, {}, shared=(record, str(tmp_path / "no-such.commit"))) is not None
    own = cache.entry_path("d" * 64)
    assert os.stat(own).st_nlink == 1 and open(own, "rb").read()[:6] == b"SPSIG2"
    entry = cache.lookup("d" * 64)
    assert entry is not None and entry.task == "T-000002" and entry.record["dataset"].resolved_paths == ds.resolved_paths


# -- the entries' layout (cache_entries) -------------------------------------------------------------


def shard_names(cache: TaskCache, key: str) -> list:
    return sorted(os.listdir(os.path.dirname(cache.entry_path(key))))


def test_an_entry_is_its_record_with_its_files_beside_it_and_no_folder(cache, tmp_path):
    """No inode per entry but its record: the files are links named after the key and the insertion."""
    ds, out = insert(cache, tmp_path)
    key = "a" * 64
    names = shard_names(cache, key)
    assert names[0] == key and len(names) == 4 and all(n.startswith(key + ".") for n in names[1:])
    assert not any(os.path.isdir(os.path.join(os.path.dirname(cache.entry_path(key)), n)) for n in names)
    entry = cache.lookup(key)
    for rel, where in entry.files():
        assert os.path.samefile(where, os.path.join(out, rel)) and where.endswith(".parquet")
    assert not os.path.isdir(os.path.join(cache.path, "tmp")), "nothing is built elsewhere and renamed"


def test_an_insertion_that_loses_leaves_no_file(cache, tmp_path):
    insert(cache, tmp_path, rows=10)
    before = shard_names(cache, "a" * 64)
    out = str(tmp_path / "second")
    assert cache.insert("a" * 64, write_output(out, rows=20), out, {}) is None
    assert shard_names(cache, "a" * 64) == before


def test_an_insertion_that_fails_midway_publishes_nothing(cache, tmp_path, monkeypatch):
    """The record is published last: a failure while the files are linked leaves no entry and no file."""
    from smallpond.execution import cache as cache_module

    real, calls = cache_module.link_or_copy, []

    def fail_second(src, dst, **kw):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(cache_module, "link_or_copy", fail_second)
    out = str(tmp_path / "out")
    with pytest.raises(OSError):
        cache.insert("a" * 64, write_output(out), out, {})
    assert not os.path.lexists(cache.entry_path("a" * 64)) and shard_names(cache, "a" * 64) == []
    assert cache.lookup("a" * 64) is None


def write_folder_entry(cache: TaskCache, tmp_path, key: str, fmt: int = 1):
    """An entry as earlier releases wrote it: a folder holding the files and ``.record``."""
    from smallpond.execution.cache import _signed_entry

    out = str(tmp_path / f"old-{key[:4]}")
    ds = write_output(out)
    record = cache.entry_record(key, ds, out, {"task": "T-000009", "job": "old"})
    del record["store"]
    record["format"] = fmt
    folder = cache.entry_path(key)
    for rel, *_ in record["files"]:
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        os.link(os.path.join(out, rel), os.path.join(folder, rel))
    with open(os.path.join(folder, ".record"), "wb") as f:
        f.write(_signed_entry({**record, "dataset": ds}, cache.secret))
    return ds, folder


def test_an_entry_of_an_earlier_release_in_a_folder_is_still_served_and_cleaned(cache, tmp_path):
    ds, folder = write_folder_entry(cache, tmp_path, "b" * 64)
    entry = cache.lookup("b" * 64)
    assert entry is not None and entry.in_folder and entry.task == "T-000009"
    linked, _ = cache.link_into(entry, str(tmp_path / "j" / "T"), 0)
    assert pq.read_table(linked.resolved_paths).num_rows == 300
    out = str(tmp_path / "new")
    assert cache.insert("b" * 64, write_output(out), out, {}) is None, "an entry exists: the old one stays"
    assert os.path.isdir(folder) and shard_names(cache, "b" * 64) == ["b" * 64]
    assert cache.insert("b" * 64, write_output(out), out, {}, replace=True) is not None
    assert os.path.isfile(cache.entry_path("b" * 64)) and not cache.lookup("b" * 64).in_folder
    write_folder_entry(cache, tmp_path, "c" * 64)
    report = clean(cache.path, max_bytes=0, dry_run=False)
    assert sorted(report.removed) == ["b" * 64, "c" * 64] and report.removed_bytes > 2 * 3 * 100
    assert not os.listdir(os.path.dirname(cache.entry_path("b" * 64)))
    assert not os.listdir(os.path.dirname(cache.entry_path("c" * 64)))


@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_record_of_another_layout_is_never_misread(cache, tmp_path, where, log_messages):
    """Format 2 in a folder, or format 1 in a file: the files are not where the record says."""
    if where == "folder":
        write_folder_entry(cache, tmp_path, "d" * 64, fmt=2)
    else:
        insert(cache, tmp_path, key="d" * 64)
        from smallpond.execution.cache import _signed_entry
        from smallpond.io.filesystem import load

        path = cache.entry_path("d" * 64)
        record = load(path, secret=cache.secret)  # (written by the entry: insert() had no commit record to link)
        record["format"] = 1
        os.unlink(path)
        with open(path, "wb") as f:
            f.write(_signed_entry(record, cache.secret))
    assert cache.lookup("d" * 64, drop=False) is None
    assert cache.lookup("d" * 64) is None
    assert any("of another format" in m for m in log_messages)
    assert not os.path.lexists(cache.entry_path("d" * 64))


def test_clean_removes_files_no_record_names_once_they_are_old(cache, tmp_path, monkeypatch):
    """A worker killed between linking an entry's files and publishing its record leaves files no
    record names: the key is inserted again (under another token) and served; clean removes the
    leftovers once they are old enough that no insertion can be under way."""
    from smallpond.execution import cache_entries

    out = str(tmp_path / "killed")
    ds = write_output(out, n=1)
    leftover = cache_entries.stored_name(cache.entry_path("e" * 64), "deadbeef", 0, "out-0.parquet")
    os.makedirs(os.path.dirname(leftover), exist_ok=True)
    os.link(ds.resolved_paths[0], leftover)
    assert cache.lookup("e" * 64) is None
    insert(cache, tmp_path, key="e" * 64)
    assert cache.lookup("e" * 64) is not None
    clean(cache.path, max_bytes=1 << 40, dry_run=False)
    assert os.path.exists(leftover), "young: perhaps an insertion under way"
    monkeypatch.setattr(cache_entries, "ORPHAN_SECONDS", -1.0)
    report = clean(cache.path, max_bytes=1 << 40, dry_run=False)
    assert not os.path.exists(leftover) and report.kept == 1 and not report.removed
    assert cache.lookup("e" * 64) is not None, "the entry's own files stay"


@pytest.mark.parametrize("skew", [2 * 3600.0, -2 * 3600.0], ids=["host-ahead", "host-behind"])
def test_clean_tells_the_age_of_leftovers_by_the_caches_clock_not_this_hosts(cache, tmp_path, monkeypatch, skew):
    """Leftovers of crashed insertions (files no record names, folders in tmp/) go once an hour old
    by the clock that stamps the cache's files (on NFS, the server's), not this host's: with this
    host's clock (time.time) 2 hours ahead, an insertion under way looked old and lost its files;
    2 hours behind, a crashed insertion's folder 90 minutes old looked young and stayed."""
    import time

    from smallpond.execution import cache_entries

    ds = write_output(str(tmp_path / "killed"), n=1)
    young = cache_entries.stored_name(cache.entry_path("a" * 64), "deadbeef", 0, "out-0.parquet")  # linked just now
    os.makedirs(os.path.dirname(young), exist_ok=True)
    os.link(ds.resolved_paths[0], young)
    under_way, crashed = (os.path.join(cache.path, "tmp", name) for name in ("under-way", "crashed"))
    for path in (under_way, crashed):
        os.makedirs(path)
    stamp = os.path.getmtime(crashed) - 90 * 60
    os.utime(crashed, (stamp, stamp))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    clean(cache.path, max_bytes=1 << 40, dry_run=False)
    assert os.path.exists(young) and os.path.exists(under_way), "an insertion under way lost its files"
    assert not os.path.exists(crashed), "a crashed insertion's folder stayed"


def test_clean_removes_a_clock_probe_a_killed_clean_left_in_the_cache_folder(cache):
    """``cache clean`` reads the cache's clock with a probe file it makes in the cache folder and
    removes; one that a clean killed meanwhile left stayed there for ever (nothing else looks at
    that folder's files). Now it goes once an hour old, as in the folders of marks and records;
    a young one (another clean's, under way) and a file of another name stay."""
    old, young, other = (os.path.join(cache.path, n) for n in (".clock-probe-0123abc", ".clock-probe-4567def", ".clock-probe-x"))
    for path in (old, young, other):
        open(path, "wb").close()
    stamp = os.path.getmtime(young) - 2 * 3600
    for path in (old, other):
        os.utime(path, (stamp, stamp))
    clean(cache.path, max_bytes=1 << 40, dry_run=False)
    assert not os.path.exists(old), "a killed clean's probe stayed"
    assert os.path.exists(young) and os.path.exists(other)


def test_open_cache_is_one_object_per_folder_and_a_relative_path_follows_the_current_folder(tmp_path, monkeypatch):
    """A worker asks for its job's cache twice an attempt: an absolute path is looked up as given
    (no normalizing each time) and means the folder it names; a relative one is resolved against
    the current folder each time (a worker enters each node's own folder), never kept as given."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    absolute = str(tmp_path / "a" / "cache")
    first = open_cache(absolute)
    assert open_cache(absolute) is first
    assert open_cache(str(tmp_path / "a" / "." / "cache")) is first  # the same folder, spelled otherwise
    monkeypatch.chdir(tmp_path / "a")
    assert open_cache("cache") is first
    monkeypatch.chdir(tmp_path / "b")
    other = open_cache("cache")
    assert other is not first and other.path == str(tmp_path / "b" / "cache")
