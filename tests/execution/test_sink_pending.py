"""Publication marks (ops/sink_pending.py): a publication begun and not finished counts while its
journal exists, and the nesting checks (ops/sink_overlap.py) refuse a folder inside or around it."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from smallpond.execution.ops import sink_pending
from smallpond.execution.ops.sink_overlap import nested_since_planned, pending_nested
from smallpond.execution.runtime import sink_records_dir


def _job(data_root, name="2026-01-01-00-00-00.11111111-1111-1111-1111-111111111111", journal=True):
    job = os.path.join(data_root, name)
    os.makedirs(os.path.join(job, "config"))
    if journal:
        open(sink_pending.job_journal(job), "wb").close()
    return job


def test_a_mark_counts_while_its_journal_exists(tmp_path, data_root):
    records = sink_records_dir(data_root)
    job = _job(data_root)
    out = str(tmp_path / "out")
    sink_pending.mark(records, job, [out])
    (found,) = sink_pending.pending(records)
    assert found.job == os.path.realpath(job) and found.destinations == [os.path.realpath(out)]
    assert found.journal == os.path.join(os.path.realpath(job), "config", "publication.journal")
    assert sink_pending.pending(records, exclude=job) == []  # the job's own mark is not another job's
    os.remove(sink_pending.job_journal(job))  # finished or given up, its mark not removed yet: stale
    assert sink_pending.pending(records) == []
    sink_pending.unmark(records, job)
    assert os.listdir(sink_pending.marks_dir(records)) == []


def test_a_mark_not_named_after_its_job_is_ignored(tmp_path, data_root):
    records = sink_records_dir(data_root)
    job, other = _job(data_root), _job(data_root, "2026-01-01-00-00-00.22222222-2222-2222-2222-222222222222")
    sink_pending.mark(records, job, [str(tmp_path / "out")])
    os.rename(sink_pending.mark_path(records, job), sink_pending.mark_path(records, other))
    assert sink_pending.pending(records) == []


def test_a_later_publication_of_the_job_replaces_its_mark(tmp_path, data_root):
    """One mark per job: an earlier publication's stale mark never counts once the job publishes elsewhere."""
    records = sink_records_dir(data_root)
    job = _job(data_root)
    sink_pending.mark(records, job, [str(tmp_path / "a")])
    sink_pending.mark(records, job, [str(tmp_path / "b")])
    (found,) = sink_pending.pending(records)
    assert found.destinations == [os.path.realpath(tmp_path / "b")]


@pytest.mark.parametrize("dest, nests", [("out/sub", "above"), ("", "below"), ("out", None), ("other", None), ("outer", None)])
def test_the_nesting_checks_see_a_pending_publication(tmp_path, data_root, dest, nests):
    """``out`` is being published by a job that was killed: a folder inside it or around it is
    refused, naming the job and what to do; ``out`` itself (an overwrite or append by the usual
    rules) and folders beside it are not."""
    records = sink_records_dir(data_root)
    job = _job(data_root)
    out = str(tmp_path / "out")
    sink_pending.mark(records, job, [out])
    mine = str(tmp_path / dest) if dest else str(tmp_path)
    found = pending_nested(mine, records)
    why = nested_since_planned(mine, records)
    if nests is None:
        assert found is None and why is None
        return
    assert found[0] == os.path.realpath(out) and found[1] == (nests == "above")
    assert f"job {os.path.realpath(job)} began publishing a result into {os.path.realpath(out)}" in why
    assert (
        "the job is not running: it stopped before finishing its publication (it was killed, or it failed). Rerun that job" in why
    )
    assert "killed while it published" not in why  # it may have failed: not said as a fact
    assert nested_since_planned(mine, records, job_root=job) is None  # its own publication


def test_clean_prunes_the_marks_of_job_folders_that_are_gone(tmp_path, data_root):
    """``smallpond clean`` removes a mark whose job folder is gone (it can never have a journal
    again), never one of a job folder still there, journal or not."""
    from tests.test_cli import cli

    records = sink_records_dir(data_root)
    running = _job(data_root)  # publishing: its journal is there
    finished = _job(data_root, "2026-01-01-00-00-00.22222222-2222-2222-2222-222222222222", journal=False)
    gone = os.path.join(data_root, "2026-01-01-00-00-00.33333333-3333-3333-3333-333333333333")
    for job in (running, finished, gone):
        sink_pending.mark(records, job, [str(tmp_path / "out")])
    assert cli("clean", data_root=data_root).returncode == 0  # a dry run removes nothing
    assert len(os.listdir(sink_pending.marks_dir(records))) == 3
    assert cli("clean", "--yes", data_root=data_root).returncode == 0
    left = sorted(os.listdir(sink_pending.marks_dir(records)))
    assert left == sorted(os.path.basename(sink_pending.mark_path(records, j)) for j in (running, finished))


def test_prune_keeps_the_mark_of_a_job_folder_made_again_while_it_ran(tmp_path, data_root, monkeypatch):
    """prune reads a mark, finds its job folder gone, and removes it: if that job folder is made
    again in between (a rerun of the same job id and time) and its run writes its mark (before its
    journal), that new mark stays; only the mark read goes. Before, the name was unlinked, and the
    new mark with it: the nesting checks no longer saw that run's publication."""
    records = sink_records_dir(data_root)
    job = os.path.join(data_root, "2026-01-01-00-00-00.33333333-3333-3333-3333-333333333333")
    sink_pending.mark(records, job, [str(tmp_path / "old")])
    real_lexists, rerun = os.path.lexists, []

    def lexists(path):
        found = real_lexists(path)
        if path == os.path.realpath(job) and not rerun:  # prune has read the mark: the rerun, right then
            rerun.append(job)
            _job(data_root, os.path.basename(job), journal=False)
            sink_pending.mark(records, job, [str(tmp_path / "new")])
            open(sink_pending.job_journal(job), "wb").close()
        return found

    monkeypatch.setattr(os.path, "lexists", lexists)
    assert sink_pending.prune(data_root) == 0
    monkeypatch.undo()
    assert rerun, "prune did not look at the job folder"
    (found,) = sink_pending.pending(records)
    assert found.job == os.path.realpath(job) and found.destinations == [os.path.realpath(tmp_path / "new")]
    assert os.listdir(sink_pending.marks_dir(records)) == [os.path.basename(sink_pending.mark_path(records, job))]
    assert sink_pending.prune(data_root) == 0  # its folder is there: it stays
    shutil.rmtree(job)
    assert sink_pending.prune(data_root) == 1 and os.listdir(sink_pending.marks_dir(records)) == []


def test_a_mark_that_a_killed_clean_set_aside_is_put_back(tmp_path, data_root):
    """prune sets a mark aside (``.{name}.prune-{suffix}``) to remove it only if it is still the one
    read; a clean killed there left the job without a mark (its publication no longer seen by the
    nesting checks). The next prune puts it back and judges it: its job folder is there, so it stays."""
    records = sink_records_dir(data_root)
    job = _job(data_root)
    sink_pending.mark(records, job, [str(tmp_path / "out")])
    path = sink_pending.mark_path(records, job)
    os.rename(path, os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.prune-0123abc"))
    assert sink_pending.pending(records) == []  # lost, until the next clean
    assert sink_pending.prune(data_root) == 0
    (found,) = sink_pending.pending(records)
    assert found.job == os.path.realpath(job)
    assert os.listdir(sink_pending.marks_dir(records)) == [os.path.basename(path)]


def test_the_refusal_says_whether_the_job_runs(tmp_path, data_root):
    """A mark of a job whose lock a live process holds says so (it may be publishing now); a dead
    holder's, or no lock, says the job is not running and to rerun it."""
    import json
    import socket

    from smallpond.execution.ownership import LOCK_NAME
    from smallpond.processes import process_start_id, process_start_time

    records = sink_records_dir(data_root)
    job = _job(data_root)
    out = str(tmp_path / "out")
    sink_pending.mark(records, job, [out])
    (p,) = sink_pending.pending(records)
    assert (
        "the job is not running: it stopped before finishing its publication (it was killed, or it failed). Rerun that job"
        in sink_pending.describe(p, out)
    )
    pid = os.getpid()
    holder = {"host": socket.gethostname(), "pid": pid, "started": process_start_time(pid), "start_id": process_start_id(pid)}
    with open(os.path.join(job, "config", LOCK_NAME), "w") as f:
        json.dump(holder, f)
    said = sink_pending.describe(p, out)
    assert f"the job is running (process {pid} on host {socket.gethostname()} holds its job lock)" in said
    assert "not running" not in said and "or remove that journal to give the publication up" in said


@pytest.mark.parametrize("holder", ["another host", "unreadable"])
def test_the_refusal_does_not_say_a_job_runs_when_that_cannot_be_told(tmp_path, data_root, holder):
    """A job lock held on another host (a Ray or MPI job's driver there, maybe killed with its
    host) or one that cannot be read (torn, or not this user's to read) says nothing of whether
    its holder still runs (ownership.lock_state): the refusal says the job may be running, and
    what to do either way, not that it is running and finishes the publication itself."""
    import json

    from smallpond.execution.ownership import LOCK_NAME

    records = sink_records_dir(data_root)
    job = _job(data_root)
    out = str(tmp_path / "out")
    sink_pending.mark(records, job, [out])
    with open(os.path.join(job, "config", LOCK_NAME), "w") as f:
        if holder == "another host":
            json.dump({"host": "node-that-died", "pid": 4242, "started": 1.0}, f)
        else:
            f.write('{"host": "no')  # torn
    (p,) = sink_pending.pending(records)
    said = sink_pending.describe(p, out)
    assert "the job is running" not in said and "not running" not in said, said
    assert "the job may be running" in said and "cannot be told from this host" in said, said
    if holder == "another host":
        assert "process 4242 on host node-that-died holds its job lock" in said, said
    assert "if it is not, rerun that job (same job id and data root) to finish its publication" in said, said
    assert "or remove that journal to give the publication up" in said


KILLED_WRITER = """
import os, sys, threading, time
from smallpond.execution.ops import sink_pending, sink_record
records, job, out, ready = sys.argv[1:5]
def stuck(src, dst):  # each write stops right before its rename, its temp file written
    open(ready + "." + os.path.basename(dst), "w").close()
    time.sleep(120)
os.replace = stuck
threading.Thread(target=sink_pending.mark, args=(records, job, [out]), daemon=True).start()
threading.Thread(target=sink_record.save, args=(sink_record.record_path(records, out), b"record"), daemon=True).start()
time.sleep(120)
"""


def test_clean_removes_the_temp_files_of_a_writer_killed_mid_write_only(tmp_path, data_root):
    """kill -9 while a mark (publishing/) or a record (sinks/) is written leaves its temp file
    (``.{name}.tmp-{hex}``), which ``smallpond clean --yes`` removes once its writer is gone,
    never while it runs (it holds the temp file locked, here for longer than the age clean waits
    for), nor a file of another name or a young one (a write on a filesystem without locks)."""
    import signal
    import subprocess
    import sys

    from tests.test_cli import cli

    records = sink_records_dir(data_root)
    job, out = _job(data_root), str(tmp_path / "out")
    ready = str(tmp_path / "ready")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, records, job, out, ready], stderr=subprocess.PIPE, text=True)
    folders = (sink_pending.marks_dir(records), records)
    try:
        while len([n for n in os.listdir(tmp_path) if n.startswith("ready.")]) < 2:
            assert writer.poll() is None, writer.stderr.read()[-3000:]
            time.sleep(0.02)
        temps = [os.path.join(f, n) for f in folders for n in os.listdir(f) if ".tmp-" in n]
        assert len(temps) == 2, temps
        old = time.time() - 7200
        for path in temps:  # written two hours ago, and still being written
            os.utime(path, (old, old))
        foreign = [os.path.join(f, n) for f in folders for n in ("notes.txt", ".notes.tmp-0123456789ab")]
        young = [
            os.path.join(f, "." + os.path.basename(t).split(".")[1] + ".json.tmp-0123456789ab") for f, t in zip(folders, temps)
        ]
        for path in foreign + young:
            with open(path, "wb") as f:
                f.write(b"not a leftover")
        for path in foreign:
            os.utime(path, (old, old))
        assert cli("clean", "--yes", data_root=data_root).returncode == 0
        assert all(os.path.exists(p) for p in temps), "a write in progress was removed"
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        done = cli("clean", "--yes", data_root=data_root)
        assert done.returncode == 0, done.stderr
        assert not [p for p in temps if os.path.exists(p)], "the temp files of the killed writer stay"
        assert all(os.path.exists(p) for p in foreign + young)
    finally:
        writer.kill()
        writer.wait()
