"""The publication protocol of ops/sink.py: a crash after any rename, then a roll forward.

Every rename of a publication (the journal's own, the swap's, each append's) is made to crash in
turn; rolling the journal forward must then give the new complete result (or, when the crash came
before the journal was written, leave the previous one), with user files untouched.
"""

from __future__ import annotations

import os

import pytest

from smallpond.execution.ops import sink, sink_journal, sink_pending, sink_record
from smallpond.execution.ops.sink import DataSinkTask, PublicationError, journal_path, publish, roll_forward, staging_path
from smallpond.execution.task import PartitionInfo
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode
from tests.e2e.safety_helpers import snapshot


class Crash(Exception):
    pass


def setup(tmp_path, make_rt, mode, kind="link"):
    rt = make_rt()
    rt.initialize()
    dest = tmp_path / "dest"
    dest.mkdir(parents=True)
    (dest / "old.parquet").write_bytes(b"old")
    (dest / ".MANIFEST.txt").write_text(f"{dest / 'old.parquet'}\n")
    # an earlier publication's: what it wrote is recorded under the data root
    records = rt.sink_records_dir
    sink_record.save(
        sink_record.record_path(records, str(dest)), sink_record.record_of(records, str(dest), str(dest), ["old.parquet"])
    )
    if mode == "append":
        (dest / "user.txt").write_text("mine")
    ctx = Context()
    node = DataSinkNode(ctx, (DataSourceNode(ctx, None),), str(dest), type=kind, mode=mode)
    task = DataSinkTask(node, 7, [PartitionInfo()], [])
    staging = staging_path(rt, task)
    os.makedirs(staging)
    new_names = ["new1.parquet", "new2.parquet"] if mode == "overwrite" else ["old.ab12-0.parquet", "new.ab12-1.parquet"]
    for n in new_names:
        with open(os.path.join(staging, n), "w") as f:
            f.write(n)
    with open(os.path.join(staging, ".MANIFEST.txt"), "w") as f:
        f.write("".join(f"{dest / n}\n" for n in new_names))
    record = {"path": os.path.join(rt.completed_task_dir, f"{task.key}.commit"), "data": b"record"}
    return rt, dest, task, record, new_names


def expected_new(dest, mode, new_names):
    files = {n: n.encode() for n in new_names}
    if mode == "append":
        files.update({"old.parquet": b"old", "user.txt": b"mine"})
        listed = [str(dest / "old.parquet")] + [str(dest / n) for n in new_names]
    else:
        listed = [str(dest / n) for n in new_names]
    files[".MANIFEST.txt"] = "".join(p + "\n" for p in listed).encode()
    return files


def count_renames(monkeypatch, limit):
    calls = {"n": 0}
    real_rename, real_replace, real_exchange = os.rename, os.replace, sink_journal.exchange_paths

    def wrap(fn):
        def inner(*args, **kwargs):
            if calls["n"] >= limit:
                raise Crash()
            calls["n"] += 1
            return fn(*args, **kwargs)

        return inner

    monkeypatch.setattr(os, "rename", wrap(real_rename))
    monkeypatch.setattr(os, "replace", wrap(real_replace))
    monkeypatch.setattr(sink_journal, "exchange_paths", wrap(real_exchange))
    return calls


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two_renames"])
@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_crash_after_each_rename_then_roll_forward(tmp_path, make_rt, monkeypatch, mode, exchange):
    if not exchange:
        monkeypatch.setattr(sink_journal, "exchange_paths", lambda a, b: False)
    # a dry run counts the renames of one publication
    rt, dest, task, record, new_names = setup(tmp_path / "dry", make_rt, mode)
    calls = count_renames(monkeypatch, 10**6)
    publish(rt, [(task, record)])
    total = calls["n"]
    monkeypatch.undo()
    if not exchange:
        monkeypatch.setattr(sink_journal, "exchange_paths", lambda a, b: False)
    assert snapshot(str(dest)) == expected_new(dest, mode, new_names)
    assert total >= 3

    for crash_at in range(total):
        base = tmp_path / f"crash{crash_at}"
        rt, dest, task, record, new_names = setup(base, make_rt, mode)
        old = snapshot(str(dest))
        with monkeypatch.context() as m:
            count_renames(m, crash_at)
            with pytest.raises(Crash):
                publish(rt, [(task, record)])
        at_crash = snapshot(str(dest)) if dest.exists() else None
        if mode == "overwrite" and exchange:
            # with an atomic exchange a reader sees the previous or the new result, nothing else
            assert at_crash in (old, expected_new(dest, mode, new_names))
        journal = os.path.exists(journal_path(rt))
        # a publication that may have moved something is seen by other jobs' nesting checks
        marked = [p.destinations for p in sink_pending.pending(rt.sink_records_dir)]
        assert marked == ([[os.path.realpath(dest)]] if journal else []), f"crash after {crash_at} renames"
        roll_forward(rt)
        assert sink_pending.pending(rt.sink_records_dir) == []
        if journal:
            assert snapshot(str(dest)) == expected_new(dest, mode, new_names), f"crash after {crash_at} renames"
            assert open(record["path"], "rb").read() == b"record"
            assert not os.path.exists(sink_pending.mark_path(rt.sink_records_dir, rt.job_root))
        else:  # the crash came before the journal was written: nothing was published
            assert snapshot(str(dest)) == old
            assert not os.path.exists(record["path"])
        assert not os.path.exists(journal_path(rt))
        assert not [n for n in os.listdir(base) if ".old-" in n]


def test_user_file_dropped_in_during_the_job_is_moved_back(tmp_path, make_rt, monkeypatch):
    rt, dest, task, record, new_names = setup(tmp_path, make_rt, "overwrite")
    real = sink.plan_steps

    def plan_then_drop(runtime_ctx, t):
        steps = real(runtime_ctx, t)
        (dest / "late.txt").write_text("arrived during the job")  # after the check, before the swap
        return steps

    monkeypatch.setattr(sink, "plan_steps", plan_then_drop)
    publish(rt, [(task, record)])
    assert (dest / "late.txt").read_text() == "arrived during the job"
    assert sorted(os.listdir(dest)) == sorted([".MANIFEST.txt", "late.txt"] + new_names)


@pytest.mark.parametrize("kind", ["link", "manifest"])
def test_a_users_manifest_that_arrived_during_the_job_is_not_replaced(tmp_path, make_rt, kind):
    # the plan's check saw smallpond's manifest; a user's file took its place while the job ran
    rt, dest, task, record, _ = setup(tmp_path, make_rt, "overwrite", kind)
    (dest / ".MANIFEST.txt").write_text("mine\n")
    before = snapshot(str(dest))
    with pytest.raises(PublicationError, match=r"\.MANIFEST\.txt appeared while the job ran and smallpond did not write it"):
        publish(rt, [(task, record)])
    assert snapshot(str(dest)) == before
    assert not os.path.exists(record["path"]) and not os.path.exists(journal_path(rt))


def test_a_users_manifest_dropped_in_after_the_check_is_set_aside_not_deleted(tmp_path, make_rt, monkeypatch):
    # a new (empty) destination holds no manifest of ours: a .MANIFEST.txt that arrives between the
    # publication's check and its swap is a user's, kept (the new result's manifest has its name)
    rt, dest, task, record, new_names = setup(tmp_path, make_rt, "overwrite")
    for name in os.listdir(dest):
        os.unlink(dest / name)
    real = sink.plan_steps

    def plan_then_drop(runtime_ctx, t):
        steps = real(runtime_ctx, t)
        (dest / ".MANIFEST.txt").write_text("mine")
        return steps

    monkeypatch.setattr(sink, "plan_steps", plan_then_drop)
    publish(rt, [(task, record)])
    assert sorted(os.listdir(dest)) == sorted([".MANIFEST.txt"] + new_names)
    # kept in a folder no clean-up removes (a later sink removes the .old-* of interrupted publications)
    sink.remove_stale_siblings(str(dest))
    kept = [os.path.join(tmp_path, n, ".MANIFEST.txt") for n in os.listdir(tmp_path) if n.startswith("dest.kept-")]
    assert [open(p).read() for p in kept] == ["mine"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("dest.old-")]


@pytest.mark.parametrize("existing", [True, False], ids=["existing_destination", "new_destination"])
def test_journal_is_fsynced_only_where_a_destination_exists(tmp_path, make_rt, monkeypatch, existing):
    # a power loss in the middle of swapping out a previous result (or appending beside a user's
    # files) must find the journal on disk; a new destination holds only this job's files, which
    # a re-run publishes again, so its publication skips the fsyncs (each waits for the writeback
    # of everything the job just wrote)
    rt, dest, task, record, new_names = setup(tmp_path, make_rt, "overwrite")
    if not existing:
        for name in os.listdir(dest):
            os.unlink(dest / name)
        dest.rmdir()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    publish(rt, [(task, record)])
    assert snapshot(str(dest)) == expected_new(dest, "overwrite", new_names)
    journal_dir = os.path.dirname(journal_path(rt))
    if existing:
        journal_at = [i for i, p in enumerate(synced) if os.path.basename(p).startswith(".publication.journal.tmp-")]
        assert journal_at, synced
        # the publication mark (ops/sink_pending.py) is on disk before the journal, and so before any step
        mark = os.path.basename(sink_pending.mark_path(rt.sink_records_dir, rt.job_root))
        mark_at = [i for i, p in enumerate(synced) if os.path.basename(p).startswith(f".{mark}.tmp-")]
        assert mark_at and mark_at[0] < journal_at[0], synced
        assert journal_dir in synced and str(dest) in synced and str(tmp_path) in synced
    else:
        assert synced == []


def test_a_destination_in_the_job_folder_is_not_fsynced(make_rt, monkeypatch):
    # a named output (or FinalResults) exists before it is published, holding the tasks' own
    # output folders: everything there is this job's, so a power loss strands no user file and
    # the publication skips the fsyncs (0.1-0.3 s a job on a virtual disk)
    rt = make_rt()
    rt.initialize()
    dest = os.path.join(rt.job_root, "output", "sorted")
    os.makedirs(os.path.join(dest, "SqlEngineTask-000002.0.ab12"))
    with open(os.path.join(dest, "SqlEngineTask-000002.0.ab12", "part.parquet"), "w") as f:
        f.write("task output")
    ctx = Context()
    node = DataSinkNode(ctx, (DataSourceNode(ctx, None),), dest)
    task = DataSinkTask(node, 7, [PartitionInfo()], [])
    staging = staging_path(rt, task)
    os.makedirs(staging)
    with open(os.path.join(staging, "new.parquet"), "w") as f:
        f.write("new")
    with open(os.path.join(staging, ".MANIFEST.txt"), "w") as f:
        f.write(os.path.join(dest, "new.parquet") + "\n")
    record = {"path": os.path.join(rt.completed_task_dir, f"{task.key}.commit"), "data": b"record"}
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    publish(rt, [(task, record)])
    assert synced == []
    with open(os.path.join(dest, "new.parquet")) as f:
        assert f.read() == "new"


def test_a_listed_file_changed_while_the_job_ran_fails_the_publication(tmp_path, make_rt):
    # the plan's check found the earlier result as smallpond wrote it; a user appended to one of
    # its files before the publication: it is theirs now, and nothing is published
    rt, dest, task, record, _ = setup(tmp_path, make_rt, "overwrite")
    with open(dest / "old.parquet", "ab") as f:
        f.write(b" and mine")
    before = snapshot(str(dest))
    with pytest.raises(PublicationError, match=r"'old.parquet' in .* changed while the job ran"):
        publish(rt, [(task, record)])
    assert snapshot(str(dest)) == before
    assert not os.path.exists(record["path"]) and not os.path.exists(journal_path(rt))


@pytest.mark.parametrize("kind", ["link", "manifest"])
def test_an_append_whose_manifest_a_user_rewrote_while_the_job_ran_publishes_nothing(tmp_path, make_rt, kind):
    # the plan's check found smallpond's recorded manifest; a user rewrote it (in smallpond's form)
    # before the publication: an append would rewrite the user's manifest, so nothing is published
    rt, dest, task, record, _ = setup(tmp_path, make_rt, "append", kind)
    (dest / "mine.parquet").write_bytes(b"mine")
    (dest / ".MANIFEST.txt").write_text(f"{dest / 'old.parquet'}\n{dest / 'mine.parquet'}\n")
    before = snapshot(str(dest))
    with pytest.raises(PublicationError, match=r"'.MANIFEST.txt' in .* changed while the job ran"):
        publish(rt, [(task, record)])
    assert snapshot(str(dest)) == before
    assert not os.path.exists(record["path"]) and not os.path.exists(journal_path(rt))


@pytest.mark.parametrize("kind", ["link", "manifest"])
def test_a_listed_file_changed_after_the_check_is_kept(tmp_path, make_rt, monkeypatch, kind):
    # changed between the publication's check and the removal: the removal checks its identity again
    rt, dest, task, record, new_names = setup(tmp_path, make_rt, "overwrite", kind)
    real = sink.plan_steps

    def plan_then_edit(runtime_ctx, t):
        steps = real(runtime_ctx, t)
        with open(dest / "old.parquet", "ab") as f:
            f.write(b" and mine")
        return steps

    monkeypatch.setattr(sink, "plan_steps", plan_then_edit)
    publish(rt, [(task, record)])
    assert (dest / "old.parquet").read_bytes() == b"old and mine"
    assert sorted(os.listdir(dest)) == sorted([".MANIFEST.txt", "old.parquet"] + ([] if kind == "manifest" else new_names))


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_journal_whose_staged_files_are_gone_is_abandoned_whole(tmp_path, make_rt, mode):
    """Another job's clean-up removed the staged folder of a journal that was not finished: the
    journal is given up before any step runs (the destination is left as it is), the commit record
    it wrote goes (its sink runs again), and a record it did not write stays."""
    import shutil

    from smallpond.execution.ops.sink_journal import Abandoned
    from smallpond.io.filesystem import dump

    rt, dest, task, record, _ = setup(tmp_path, make_rt, mode)
    before = snapshot(str(dest))
    steps = sink.plan_steps(rt, task) + [("write", record["path"], record["data"])]
    other = os.path.join(rt.completed_task_dir, "SqlEngineTask-000001.commit")
    steps.append(("write", other, b"the journal's bytes"))
    dump({"steps": steps, "sync": []}, journal_path(rt), secret=rt.secret)  # an older journal: no destinations
    os.makedirs(rt.completed_task_dir, exist_ok=True)
    with open(record["path"], "wb") as f:  # written by the journal's last steps (its sink counts as published)
        f.write(record["data"])
    with open(other, "wb") as f:  # not the journal's bytes: not its to remove
        f.write(b"another record")
    shutil.rmtree(staging_path(rt, task))
    outcome = roll_forward(rt)
    assert isinstance(outcome, Abandoned) and outcome.destinations == [str(dest)] and outcome.records_removed == 1
    assert snapshot(str(dest)) == before
    assert not os.path.exists(record["path"]) and os.path.exists(other)
    assert not os.path.exists(journal_path(rt))
    assert "can no longer be finished" in outcome.describe() and str(dest) in outcome.describe()


def test_a_folder_that_took_the_staged_folders_inode_is_not_taken_for_the_swapped_result(tmp_path, make_rt):
    """The staged folder of an unfinished journal was removed (another job's preparation) and the
    destination replaced by another job's result, whose folder got the freed inode number (ext4
    reuses them at once): that is not this journal's result swapped in. The journal is abandoned,
    the other result left as it is; told by the inode alone, the rerun finished the publication over
    it (exit 0, its record and commit records written for a result it never published)."""
    import shutil

    from smallpond.execution.ops.sink_journal import Abandoned
    from smallpond.io.filesystem import dump

    rt, dest, task, record, _ = setup(tmp_path, make_rt, "overwrite")
    steps = sink.plan_steps(rt, task) + [("write", record["path"], record["data"])]
    shutil.rmtree(staging_path(rt, task))
    shutil.rmtree(dest)
    dest.mkdir()  # another job's result: the same file names, its own manifest
    (dest / "new1.parquet").write_text("theirs")
    (dest / ".MANIFEST.txt").write_text(f"{dest / 'new1.parquet'}\n")
    # the inode number the removed staged folder had, as a reused one would be
    steps = [s[:4] + (os.stat(dest).st_ino,) + s[5:] if s[0] == "swap" else s for s in steps]
    dump({"steps": steps, "sync": []}, journal_path(rt), secret=rt.secret)
    before = snapshot(str(dest))
    outcome = roll_forward(rt)
    assert isinstance(outcome, Abandoned) and outcome.destinations == [str(dest)]
    assert snapshot(str(dest)) == before
    assert not os.path.exists(record["path"])


def test_a_previous_result_an_interrupted_exchange_left_is_never_published(tmp_path, make_rt):
    """Killed right after its swap exchanged the folders, a journal leaves the previous result at
    its staged folder's name; then the destination was replaced (the user removed that result and
    another job published there anew). The rerun abandons the journal, leaving both folders as
    they are: the folder at the staged name has another inode than the staged one. Told by the
    name alone, the rerun swapped the previous result back in as this job's new one."""
    import shutil

    from smallpond.execution.ops.sink_journal import Abandoned
    from smallpond.io.filesystem import dump, exchange_paths

    rt, dest, task, record, _ = setup(tmp_path, make_rt, "overwrite")
    steps = sink.plan_steps(rt, task) + [("write", record["path"], record["data"])]
    dump({"steps": steps, "sync": []}, journal_path(rt), secret=rt.secret)
    staging = staging_path(rt, task)
    if not exchange_paths(staging, str(dest)):  # what the swap did before the kill
        pytest.skip("this filesystem cannot exchange two folders atomically")
    shutil.rmtree(dest)
    dest.mkdir()  # another job's result
    (dest / "theirs.parquet").write_text("theirs")
    (dest / ".MANIFEST.txt").write_text(f"{dest / 'theirs.parquet'}\n")
    before, left = snapshot(str(dest)), snapshot(staging)
    assert left[".MANIFEST.txt"] == f"{dest / 'old.parquet'}\n".encode()  # the previous result
    outcome = roll_forward(rt)
    assert isinstance(outcome, Abandoned) and outcome.destinations == [str(dest)]
    assert snapshot(str(dest)) == before and snapshot(staging) == left
    assert not os.path.exists(record["path"])


@pytest.mark.parametrize("after_crash", ["untouched", "file_rewritten", "file_removed"])
def test_an_abandoned_journal_keeps_the_commit_record_of_a_sink_it_finished_while_intact(tmp_path, make_rt, after_crash):
    """A publication of two sinks stops after the first one's steps (a crash); another job then
    removes the second one's staged folder, and the journal is abandoned. The first sink's result
    is still the one it published: its commit record is written and kept, and it does not run
    again; the second one's is not. A result no longer intact (a user rewrote or removed a
    published file) keeps none: that sink runs again."""
    import shutil

    from smallpond.execution.ops.sink_journal import Abandoned
    from smallpond.io.filesystem import dump

    rt, dest, task, record, new_names = setup(tmp_path, make_rt, "overwrite")
    ctx = Context()
    other = DataSinkTask(DataSinkNode(ctx, (DataSourceNode(ctx, None),), str(tmp_path / "other")), 8, [PartitionInfo()], [])
    staged = staging_path(rt, other)
    os.makedirs(staged)
    with open(os.path.join(staged, "part.parquet"), "w") as f:
        f.write("part")
    with open(os.path.join(staged, ".MANIFEST.txt"), "w") as f:
        f.write(f"{tmp_path / 'other' / 'part.parquet'}\n")
    other_record = {"path": os.path.join(rt.completed_task_dir, f"{other.key}.commit"), "data": b"other record"}
    journal = sink.journal_of(rt, [(task, record), (other, other_record)])
    dump(journal, journal_path(rt), secret=rt.secret)
    first, last = journal["sinks"][0]["steps"]
    owner = sink_journal.owner_record(rt.job_root)
    for step in journal["steps"][first:last]:  # the first sink's steps ran, then the job died
        sink_journal._step(step, owner)
    shutil.rmtree(staged)  # another job's preparation
    if after_crash == "file_rewritten":
        (dest / new_names[0]).write_text("the user's own")
    elif after_crash == "file_removed":
        os.unlink(dest / new_names[1])
    outcome = roll_forward(rt)
    assert isinstance(outcome, Abandoned) and outcome.finished == [str(dest)]
    intact = after_crash == "untouched"
    assert outcome.kept == ([str(dest)] if intact else [])
    assert os.path.exists(record["path"]) == intact
    if intact:
        assert open(record["path"], "rb").read() == b"record"
        assert "count as published" in outcome.describe()
    assert not os.path.exists(other_record["path"]) and not os.path.exists(journal_path(rt))


def test_a_publication_into_the_job_folder_removes_an_earlier_publications_mark(tmp_path, make_rt, monkeypatch):
    """An earlier publication of the job, killed after its journal went and before its mark did,
    left a mark naming its destination: stale while the job has no journal, it would count again
    while a later publication's journal exists. A publication with no destination outside the job's
    folder writes no mark of its own, so it removes that one (ops/sink_pending.py)."""
    rt = make_rt()
    rt.initialize()
    sink_pending.mark(rt.sink_records_dir, rt.job_root, [str(tmp_path / "earlier")])
    dest = os.path.join(rt.job_root, "output", "named")
    ctx = Context()
    task = DataSinkTask(DataSinkNode(ctx, (DataSourceNode(ctx, None),), dest), 7, [PartitionInfo()], [])
    staging = staging_path(rt, task)
    os.makedirs(staging)
    with open(os.path.join(staging, ".MANIFEST.txt"), "w") as f:
        f.write("")
    seen = []
    real = sink_journal._carry_out

    def carry_out(*args):  # while the journal exists
        seen.append([p.destinations for p in sink_pending.pending(rt.sink_records_dir)])
        return real(*args)

    monkeypatch.setattr(sink_journal, "_carry_out", carry_out)
    publish(rt, [(task, {"path": os.path.join(rt.completed_task_dir, f"{task.key}.commit"), "data": b"record"})])
    assert seen == [[]]
    assert not os.path.exists(sink_pending.mark_path(rt.sink_records_dir, rt.job_root))
