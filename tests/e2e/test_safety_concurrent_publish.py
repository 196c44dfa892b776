"""Two jobs publishing into one destination at the same time: neither removes what the other,
still running, staged beside the destination or set aside there (ops/sink_leftovers.py).

Job X stages its sink's result and waits (a Python task downstream of the sink waits for a file);
job Y publishes into the same destination meanwhile. Y's sink removes the leftovers of
publications it finds beside the destination, but only those whose job no longer runs: X's staged
folder stays, and X publishes when it goes on. Leftovers of jobs that are gone still go.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time
import uuid

from smallpond.execution.ops import sink, sink_journal, sink_record
from smallpond.execution.ops.sink_leftovers import (
    aside_record,
    owner_path,
    owner_record,
    remove_stale_siblings,
    write_owner,
)
from smallpond.execution.ownership import JobLock
from tests.datagen import generate_parquet_files
from tests.e2e.safety_helpers import manifest, published_rows
from tests.execution.test_publication import setup as prepared_sink

HELD_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "held_sink_job.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def held_job(data_root, files, dest, *hold):
    cmd = [sys.executable, HELD_JOB, "scheduler", "--job_id", str(uuid.uuid4()), "--data_root", data_root,
           "--num_executors", "1", "-i", *files, "-o", dest, *hold]  # fmt: skip
    return cmd, dict(os.environ, PYTHONPATH=ROOT)


def siblings(folder) -> list:
    return sorted(n for n in os.listdir(folder) if n.startswith("D."))


def test_a_running_jobs_staged_result_survives_another_job_publishing_there(tmp_path, data_root):
    dest, hold = str(tmp_path / "D"), tmp_path / "hold"
    hold.mkdir()
    files_x = generate_parquet_files(str(tmp_path / "x"), nfiles=2, rows_per_file=5, seed=0, prefix="x-")
    files_y = generate_parquet_files(str(tmp_path / "y"), nfiles=2, rows_per_file=7, seed=1, prefix="y-")
    cmd, env = held_job(data_root, files_x, dest, "--hold", str(hold))
    x = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (hold / "holding").exists():  # X staged its result and waits
            assert x.poll() is None, x.stderr.read()[-3000:]
            time.sleep(0.05)
        staged = siblings(tmp_path)
        assert len(staged) == 2 and staged[1] == staged[0] + ".owner", staged
        cmd_y, env = held_job(data_root, files_y, dest)
        y = subprocess.run(cmd_y, env=env, capture_output=True, text=True, timeout=180)
        assert y.returncode == 0, y.stderr[-3000:]
        assert published_rows(dest, "id") == list(range(14))
        assert siblings(tmp_path) == staged, "Y removed the result X staged"
        (y_log,) = glob.glob(
            os.path.join(data_root, f"*.{cmd_y[cmd_y.index('--job_id') + 1]}", "log", "tasks", "DataSinkTask-*.log")
        )
        with open(y_log) as f:
            assert f"kept {tmp_path / staged[0]} beside {dest}: job " in f.read()  # and why, in Y's sink's log
    finally:
        (hold / "go").touch()
        _, err = x.communicate(timeout=180)
    assert x.returncode == 0, err[-3000:]
    assert published_rows(dest, "id") == list(range(10))  # X published last, over Y's result
    # nothing of the owner records is published, and none is left beside the destination
    assert sorted(os.listdir(dest)) == sorted([".MANIFEST.txt"] + [os.path.basename(p) for p in manifest(dest)])
    assert siblings(tmp_path) == []


OTHER_JOBS_SINK = """
import sys
from smallpond.execution.ops.sink_leftovers import remove_stale_siblings
remove_stale_siblings(sys.argv[1], job_root=sys.argv[2])  # what another job's sink does first
"""


def test_a_previous_result_set_aside_by_a_running_publication_is_not_removed(tmp_path, make_rt):
    """X has swapped its new result in and set the previous one aside, with a file a user dropped
    into the destination during the job; before X's discard step moves that file back, another
    job's sink (a real process) clears leftovers beside the destination: the set-aside folder is
    X's, and X runs, so it stays and the user's file comes back."""
    rt, dest, task, record, new_names = prepared_sink(tmp_path, make_rt, "overwrite")
    lock = JobLock(rt.layout)
    lock.acquire()  # this process runs job X
    try:
        steps = sink.plan_steps(rt, task)
        (dest / "late.txt").write_text("arrived during the job")
        swap = next(i for i, s in enumerate(steps) if s[0] == "swap")
        owner = owner_record(rt.job_root)
        for step in steps[: swap + 1]:
            sink_journal._step(step, owner)
        aside = steps[swap][3]
        assert os.path.isdir(aside) and os.path.exists(owner_path(aside))
        other = str(tmp_path / "data_root" / "another-job")
        subprocess.run(
            [sys.executable, "-c", OTHER_JOBS_SINK, str(dest), other], check=True, env=dict(os.environ, PYTHONPATH=ROOT)
        )
        assert os.path.isdir(aside), "another job's sink removed the previous result X set aside"
        for step in steps[swap + 1 :]:
            sink_journal._step(step, owner)
    finally:
        lock.release()
    assert (dest / "late.txt").read_text() == "arrived during the job"
    assert sorted(os.listdir(dest)) == sorted([".MANIFEST.txt", "late.txt"] + new_names)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("dest.")]


def _job_folder(tmp_path, name, holder=None):
    root = tmp_path / "jobs" / name
    (root / "config").mkdir(parents=True)
    if holder is not None:
        (root / "config" / "job.lock").write_text(json.dumps(holder))
    return str(root)


def _leftover(tmp_path, name, job_root):
    folder = tmp_path / name
    write_owner(str(folder), owner_record(job_root))
    folder.mkdir()
    (folder / "part.parquet").write_bytes(b"PAR1")
    return folder


def test_which_leftovers_a_sink_removes(tmp_path, log_messages):
    """Removed: leftovers of a job whose lock is gone (it finished) or whose holder is a process
    that exited, of this very job, and of an older smallpond (no owner record); an owner record
    whose folder went is removed with the same rule. Kept: those of a job run by a live process
    here, and of one run on another host (cannot be told: a warning says so and how to remove it).
    A set-aside previous result goes only by the list of its files its owner record carries; one
    without that list is kept whole as ``D.kept-*``, with a warning."""
    from smallpond.processes import process_start_id, process_start_time

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    me = os.getpid()
    alive = {"host": socket.gethostname(), "pid": me, "started": process_start_time(me), "start_id": process_start_id(me)}
    jobs = {
        "finished": _job_folder(tmp_path, "finished"),
        "crashed": _job_folder(tmp_path, "crashed", {"host": socket.gethostname(), "pid": dead_pid, "start_id": "x:1"}),
        "this": _job_folder(tmp_path, "this", alive),
        "running": _job_folder(tmp_path, "running", alive),
        "elsewhere": _job_folder(tmp_path, "elsewhere", dict(alive, host=socket.gethostname() + "-not-this-one")),
    }
    made = {
        "finished": _leftover(tmp_path, "D.staging-0000000a-1", jobs["finished"]),
        "crashed": _leftover(tmp_path, "D.old-0000000b", jobs["crashed"]),
        "this": _leftover(tmp_path, "D.staging-0000000c-2", jobs["this"]),
        "running": _leftover(tmp_path, "D.staging-0000000d-3", jobs["running"]),
        "running_old": _leftover(tmp_path, "D.old-0000000d", jobs["running"]),
        "elsewhere": _leftover(tmp_path, "D.staging-0000000e-4", jobs["elsewhere"]),
    }
    crashed_part = str(made["crashed"] / "part.parquet")
    write_owner(
        str(made["crashed"]), aside_record(owner_record(jobs["crashed"]), {"part.parquet": sink_record.identity(crashed_part)})
    )
    _leftover(tmp_path, "D.old-00000012", jobs["crashed"])  # set aside with no list of what may go
    (tmp_path / "D.staging-0000000f-5").mkdir()  # an older smallpond's: no owner record
    write_owner(str(tmp_path / "D.old-00000010"), owner_record(jobs["crashed"]))  # its folder went first
    write_owner(str(tmp_path / "D.old-00000011"), owner_record(jobs["running"]))  # its folder comes next
    (tmp_path / "D.old-2025").mkdir()  # a user's
    (tmp_path / "D.old-2025.owner").write_text("a user's notes")

    remove_stale_siblings(str(tmp_path / "D"), job_root=jobs["this"])

    kept = ["running", "running_old", "elsewhere"]
    expected = sorted(
        [made[k].name for k in kept]
        + [made[k].name + ".owner" for k in kept]
        + ["D.kept-00000012", "D.old-00000011.owner", "D.old-2025", "D.old-2025.owner"]
    )
    assert siblings(tmp_path) == expected
    assert os.listdir(tmp_path / "D.kept-00000012") == ["part.parquet"]
    assert len([m for m in log_messages if "D.kept-00000012" in m and "remove it by hand" in m]) == 1
    warned = [m for m in log_messages if "D.staging-0000000e-4" in m]
    assert len(warned) == 1 and "cannot be checked from here" in warned[0] and "remove" in warned[0], log_messages
    assert not [m for m in log_messages if "0000000d" in m]  # a job running here is no cause for a warning
