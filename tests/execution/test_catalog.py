"""Job folders: their state (running, crashed, finished) and the refusal to remove anything else."""

from __future__ import annotations

import json
import os
import socket

import pytest

from smallpond.execution.catalog import JobLookupError, describe_job, find_job, list_jobs, remove_job


def _folder(root, stamp, job_id, status, pid=None):
    path = os.path.join(root, f"{stamp}.{job_id}")
    os.makedirs(os.path.join(path, "log"))
    with open(os.path.join(path, "log", ".STATUS"), "w") as f:
        f.write(f"{status}@{stamp}\n")
    if pid is not None:
        with open(os.path.join(path, "log", "events.jsonl"), "w") as f:
            f.write(json.dumps({"ev": "job_start", "t": 0, "host": socket.gethostname(), "pid": pid}) + "\n")
    return path


A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
C = "cccccccc-0000-0000-0000-000000000003"


def test_states_and_lookup(data_root):
    _folder(data_root, "2026-01-01-00-00-00", A, "success")
    _folder(data_root, "2026-01-02-00-00-00", B, "running", pid=os.getpid())  # alive: this process
    _folder(data_root, "2026-01-03-00-00-00", C, "running", pid=2**22 + 7)  # gone
    states = {j.job_id: j.state for j in list_jobs(data_root)}
    assert states == {A: "success", B: "running", C: "crashed"}
    assert find_job(data_root, "bbbb").job_id == B
    assert find_job(data_root, "2026-01-03").job_id == C  # a prefix of the folder name
    with pytest.raises(JobLookupError, match="matches 3 jobs"):
        find_job(data_root, "2026")
    with pytest.raises(JobLookupError, match="no job matching"):
        find_job(data_root, "dddd")


def test_remove_job_refuses_running_jobs_and_non_job_folders(data_root, tmp_path):
    running = describe_job(_folder(data_root, "2026-01-02-00-00-00", B, "running", pid=os.getpid()))
    with pytest.raises(JobLookupError, match="the job is running"):
        remove_job(data_root, running)
    assert os.path.isdir(running.path)

    elsewhere = tmp_path / "other_root"
    elsewhere.mkdir()
    outside = describe_job(_folder(str(elsewhere), "2026-01-01-00-00-00", A, "success"))
    with pytest.raises(JobLookupError, match="not a job folder directly under"):
        remove_job(data_root, outside)  # a finished job, but not under this data root
    assert os.path.isdir(outside.path)

    link = os.path.join(data_root, f"2026-01-05-00-00-00.{C}")
    os.symlink(outside.path, link)
    with pytest.raises(JobLookupError):
        remove_job(data_root, describe_job(link))
    assert os.path.isdir(outside.path)

    done = describe_job(_folder(data_root, "2026-01-01-00-00-00", A, "success"))
    remove_job(data_root, done)
    assert not os.path.exists(done.path)


def test_remove_job_refuses_a_job_whose_lock_is_held_whatever_its_status_says(data_root):
    # .STATUS may be wrong (an older release, a refused second run that wrote it): the lock decides
    path = _folder(data_root, "2026-01-01-00-00-00", A, "failure")
    os.makedirs(os.path.join(path, "config"))
    lock = os.path.join(path, "config", "job.lock")
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": "x"}, f)
    with pytest.raises(JobLookupError, match=rf"being run by process {os.getpid()}"):
        remove_job(data_root, describe_job(path))
    assert os.path.isdir(path)
    with open(lock, "w") as f:  # its holder is gone: a stale lock does not keep the folder
        json.dump({"host": socket.gethostname(), "pid": 2**22 + 7, "token": "x"}, f)
    remove_job(data_root, describe_job(path))
    assert not os.path.exists(path)


def test_a_step_of_the_wall_clock_does_not_make_a_live_process_look_gone(data_root):
    """Records of a process (a job's start, its lock, a task cache claim, a queue executor) keep
    its start time and its start id. After a step of the wall clock (NTP; a virtual machine resumed
    after a pause: 22 s was seen here) the start time read back differs from the recorded one, so
    a live driver looked crashed, its lock stale (``smallpond clean`` could remove its folder)
    and its executors lost. The start id decides where the record has one."""
    import sys

    from smallpond.execution.cache import Claim, claim_is_live
    from smallpond.execution.executors.queue_protocol import process_alive
    from smallpond.processes import process_start_id, process_start_time

    if not sys.platform.startswith("linux"):
        pytest.skip("the start id is read from /proc")
    me = os.getpid()
    stepped = process_start_time(me) - 22.0  # the recorded start, as it reads after the step
    start_id = process_start_id(me)
    path = _folder(data_root, "2026-01-02-00-00-00", B, "running")
    with open(os.path.join(path, "log", "events.jsonl"), "w") as f:
        start = {"ev": "job_start", "t": stepped, "host": socket.gethostname(), "pid": me, "start_id": start_id}
        f.write(json.dumps(start) + "\n")
    os.makedirs(os.path.join(path, "config"))
    with open(os.path.join(path, "config", "job.lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": me, "started": stepped, "start_id": start_id, "token": "x"}, f)
    job = describe_job(path)
    assert job.state == "running"
    with pytest.raises(JobLookupError, match="running"):
        remove_job(data_root, job)
    assert os.path.isdir(path)
    assert claim_is_live(Claim(socket.gethostname(), me, stepped, "j", start_id=start_id))
    assert process_alive(me, stepped, start_id)
    # a record of another process with this pid (another start id) is not this one
    assert not claim_is_live(Claim(socket.gethostname(), me, stepped, "j", start_id=start_id + "0"))
    assert not process_alive(me, stepped, start_id + "0")


def test_a_claim_of_a_killed_process_not_yet_reaped_is_not_live():
    """A task-cache claim of a job killed with kill -9 whose parent has not reaped it (a zombie:
    ``os.kill(pid, 0)`` and its /proc entry still answer) made other jobs wait for a task it would
    never finish, until the claim went stale."""
    import signal
    import subprocess
    import sys
    import time

    from smallpond.execution.cache import Claim, claim_is_live
    from smallpond.processes import process_start_id, process_start_time

    if not sys.platform.startswith("linux"):
        pytest.skip("the process state is read from /proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started, start_id = process_start_time(child.pid), process_start_id(child.pid)
        claim = Claim(socket.gethostname(), child.pid, started, "j", start_id=start_id)
        assert claim_is_live(claim)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the kernel has made it a zombie (not reaped: no wait)
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert not claim_is_live(claim)
    finally:
        child.kill()
        child.wait()


def test_one_pattern_names_job_folders_for_the_catalog_and_the_sinks(data_root):
    """The catalog's JOB_DIR_RE and the sinks' JOB_FOLDER are the runtime's one pattern of a job
    folder's name, which every folder a job makes has (time and id in its groups)."""
    from datetime import datetime

    from smallpond.execution import catalog, runtime
    from smallpond.execution.ops import sink_journal, sink_overlap

    assert catalog.JOB_DIR_RE is runtime.JOB_FOLDER_NAME
    assert sink_overlap.JOB_FOLDER is runtime.JOB_FOLDER_NAME and sink_journal.JOB_FOLDER is runtime.JOB_FOLDER_NAME
    when = datetime(2026, 1, 31, 12, 0, 5)
    for _ in range(20):
        job_id = runtime.JobId.new()
        name = os.path.basename(runtime.JobLayout(data_root, when, job_id).job_root)
        m = runtime.JOB_FOLDER_NAME.fullmatch(name)
        assert m and m.groups() == ("2026-01-31-12-00-05", str(job_id))
    job_id = runtime.parse_job_id("nightly")  # a job id given as any text is a UUID too
    assert runtime.JOB_FOLDER_NAME.fullmatch(os.path.basename(runtime.JobLayout(data_root, when, job_id).job_root))
    for other in (
        "2026-01-31-12-00-05",
        "2026-01-31-12-00-05.nightly",
        f"x2026-01-31-12-00-05.{A}",
        f"2026-01-31-12-00-05.{A}\n",
    ):
        assert not runtime.JOB_FOLDER_NAME.fullmatch(other)


def test_remove_job_refuses_another_users_job_folder(data_root, monkeypatch):
    """Only the user running clean removes its own jobs, root included: whether another user's
    job is finished, or a result of theirs reads it, is not this user's to tell."""
    from smallpond.execution import runtime
    from smallpond.execution.catalog import owned_by_another_user

    path = _folder(data_root, "2026-01-01-00-00-00", A, "success")
    assert owned_by_another_user(path) is None
    mine = runtime.this_uid()
    monkeypatch.setattr(runtime, "this_uid", lambda: mine + 1)  # the same folder, seen by another user
    why = owned_by_another_user(path)
    assert why and f"uid {mine}" in why and "run it as that user" in why
    with pytest.raises(JobLookupError, match="belongs to"):
        remove_job(data_root, describe_job(path))
    assert os.path.isdir(path)
