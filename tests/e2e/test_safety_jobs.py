"""Job folders, checkpoints and crash windows (issue 8, parts 3 and 4).

* torn commit records count as absent (warning, the task runs again); forged ones are refused;
* a lost secret gives a clear error and ``restart`` as the way out, moving the old folder aside;
* a folder that is not safely the user's is never resumed; a world-writable data root warns;
* a lock keeps a second run of the same job out, and a stale lock is taken over;
* an unreadable committed intermediate is recomputed from the task that wrote it.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

import smallpond
from smallpond.execution.job import run_job
from smallpond.execution.ownership import JobFolderError
from smallpond.io.filesystem import SignatureError, unverified_payload
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.datagen import generate_parquet_files
from tests.e2e.counting_job import counting_plan
from tests.e2e.safety_helpers import published_rows, snapshot


def counter_lines(path) -> list:
    return open(path).read().split() if os.path.exists(path) else []


def commits(rt, prefix=""):
    return sorted(glob.glob(os.path.join(rt.completed_task_dir, f"{prefix}*.commit")))


def started(rt) -> dict:
    """How many attempts of each task started, from the attempts' logs."""
    import collections

    from smallpond.execution.attempt import logged_attempts

    return dict(collections.Counter(key for key, _ in logged_attempts(rt.log_root)))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_torn_commit_record_counts_as_absent(tmp_path, make_rt, log_messages, damage):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    # the task cache off: with it, a task whose record is torn is reused from its entry instead of run
    rt = make_rt(job_id, task_cache="off")
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), rt, num_workers=2)
    before = started(rt)
    record = commits(rt, "SqlEngineTask")[0]
    data = open(record, "rb").read()
    open(record, "wb").write(b"" if damage == "empty" else data[: len(data) // 2])
    shutil.rmtree(sink)  # so the sink, and what it needs, runs again
    rt2 = make_rt(job_id, task_cache="off")
    run_job(counting_plan(inputs, counter, sink, npartitions=3, sleep=0), rt2, num_workers=2)
    key = os.path.basename(record)[: -len(".commit")]
    after = started(rt2)
    again = sorted(k for k in after if after[k] > before.get(k, 0))
    assert again == sorted([key] + [k for k in after if k.startswith("DataSinkTask")]), (
        "only the torn task (and the sink) ran again"
    )
    assert any("torn or damaged" in m or "not a signed record" in m for m in log_messages)
    assert published_rows(sink, "id") == list(range(20))
    assert open(record, "rb").read()[:6] == b"SPSIG2", "the rerun wrote a whole record"


@pytest.mark.parametrize("layout", ["SPSIG2", "SPSIG3"])
def test_forged_commit_record_is_refused_naming_the_file(tmp_path, make_rt, layout):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    rt = make_rt(job_id)
    run_job(counting_plan(inputs, counter, sink, npartitions=2, sleep=0), rt, num_workers=1)
    record = commits(rt, "ArrowComputeTask")[0]
    data = open(record, "rb").read()
    assert data[:6] == b"SPSIG3", "with the task cache on, the commit record is the cache entry's too (signed twice)"
    payload = unverified_payload(data)
    # a well-formed record (correct plain digest) with signatures made without the secrets (a
    # record of two keepers: neither slot holds this job's)
    forged = layout.encode() + hashlib.sha256(payload).digest() + bytes(32 if layout == "SPSIG2" else 64) + payload
    open(record, "wb").write(forged)
    with pytest.raises(SignatureError, match="planted") as info:
        run_job(counting_plan(inputs, counter, sink, npartitions=2, sleep=0), make_rt(job_id), num_workers=1)
    assert record in str(info.value)


def test_lost_secret_gives_a_way_out(tmp_path, make_rt):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    counter, sink, job_id = str(tmp_path / "counter"), str(tmp_path / "sink"), str(uuid.uuid4())
    rt = make_rt(job_id, task_cache="off")  # with the task cache, a restarted job reuses its entries
    run_job(counting_plan(inputs, counter, sink, npartitions=2, sleep=0), rt, num_workers=1)
    os.remove(rt.layout.secret_path)
    with pytest.raises(JobFolderError, match="secret .* is missing.*restart=True"):
        run_job(counting_plan(inputs, counter, sink, npartitions=2, sleep=0), make_rt(job_id, task_cache="off"), num_workers=1)
    old = snapshot(rt.job_root)
    rt2 = make_rt(job_id, task_cache="off")
    run_job(counting_plan(inputs, counter, sink, npartitions=2, sleep=0), rt2, num_workers=1, restart=True)
    assert published_rows(sink, "id") == list(range(5))
    aside = glob.glob(rt.job_root + ".restarted-*")
    assert len(aside) == 1 and snapshot(aside[0]) == old, "the old folder is moved aside whole, never deleted"
    assert len(counter_lines(counter)) == 4, "the restarted job ran everything again"


def test_driver_restart_flag(tmp_path, data_root):
    from smallpond.execution.driver import Driver

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    job_id = str(uuid.uuid4())

    def run(*extra):
        driver = Driver()
        driver.parse_arguments(["scheduler", "--job_id", job_id, "--data_root", data_root, *extra])
        ctx = Context()
        return driver.run(
            LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), "select * from {0}")),
            stop_process_on_done=False,
        )

    assert run() is not None
    root = glob.glob(os.path.join(data_root, f"*.{job_id}"))[0]
    os.remove(os.path.join(root, "config", "secret"))
    assert run() is None
    assert run("--restart") is not None
    assert glob.glob(root + ".restarted-*")


def test_group_writable_job_folder_is_not_resumed(tmp_path, make_rt):
    job_id = str(uuid.uuid4())
    rt = make_rt(job_id)
    rt.initialize()
    os.chmod(rt.job_root, 0o770)
    with pytest.raises(JobFolderError, match="writable by its group"):
        make_rt(job_id).initialize()
    os.chmod(rt.job_root, 0o700)
    make_rt(job_id).initialize()  # fixed: resumable again


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a folder owned by another user")
def test_job_folder_of_another_user_is_not_adopted(tmp_path, data_root, log_messages):
    """Another user plants a folder with the victim's job id (and its own secret) in a shared root."""
    from datetime import datetime

    from smallpond.execution.job import make_runtime_ctx
    from smallpond.execution.runtime import JOB_TIME_FORMAT, parse_job_id

    job_id = "nightly"
    planted_time = datetime(2020, 1, 1, 0, 0, 0)
    planted = os.path.join(data_root, f"{planted_time:{JOB_TIME_FORMAT}}.{parse_job_id(job_id)}")
    os.makedirs(os.path.join(planted, "config"))
    open(os.path.join(planted, "config", "secret"), "wb").write(b"attacker's key")
    for path in (planted, os.path.join(planted, "config"), os.path.join(planted, "config", "secret")):
        os.chown(path, 65534, 65534)
    # the newest folder with this id is the planted one: it is skipped, never resumed
    rt = make_runtime_ctx(job_id, None, data_root)
    assert rt.job_root != planted
    assert any("owned by uid 65534" in m for m in log_messages)
    # pointed at it explicitly (same job time): refused, naming the owner
    rt = make_runtime_ctx(job_id, planted_time, data_root)
    with pytest.raises(JobFolderError, match="owned by uid 65534"):
        rt.initialize()


def test_world_writable_data_root_warns(tmp_path, log_messages):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    sp = smallpond.init(data_root=str(shared), num_executors=1)
    sp.shutdown()
    assert any("writable by every user" in m for m in log_messages)


def test_same_job_twice_at_once_is_refused_and_stale_lock_taken_over(tmp_path, log_messages):
    job_id = str(uuid.uuid4())
    root = str(tmp_path / "root")
    first = smallpond.init(job_id=job_id, data_root=root, num_executors=1)
    try:
        with pytest.raises(JobFolderError, match=rf"already being run by process {os.getpid()} on host {socket.gethostname()}"):
            smallpond.init(job_id=job_id, data_root=root, num_executors=1)
    finally:
        first.shutdown()
    lock = os.path.join(first.runtime_ctx.config_root, "job.lock")
    assert not os.path.exists(lock), "the lock is released at shutdown"
    # a lock left by a process that is gone (this host) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "token": "x"}, f)
    again = smallpond.init(job_id=job_id, data_root=root, num_executors=1)
    again.shutdown()
    assert any("took over the stale job lock" in m for m in log_messages)
    # a lock held on another host is never taken over: the message says what to do
    with open(lock, "w") as f:
        json.dump({"host": "elsewhere.example", "pid": 1, "token": "y"}, f)
    with pytest.raises(JobFolderError, match=rf"host elsewhere.example.*remove {lock}"):
        smallpond.init(job_id=job_id, data_root=root, num_executors=1)
    assert os.path.exists(lock)


HOLD_JOB = """
import sys, smallpond
sp = smallpond.init(job_id=sys.argv[1], data_root=sys.argv[2], num_executors=1)
print("running", flush=True)
sys.stdin.read()
"""


def test_a_killed_run_not_yet_reaped_does_not_hold_the_job(tmp_path):
    """``kill -9`` of a job's process by a parent that has not reaped it yet (a zombie, which
    ``os.kill(pid, 0)`` still finds) leaves a stale lock: the rerun takes it over instead of
    refusing, forever, that the job is being run by that process."""
    import signal

    job_id = str(uuid.uuid4())
    root = str(tmp_path / "root")
    driver = subprocess.Popen(
        [sys.executable, "-c", HOLD_JOB, job_id, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "running"
        os.kill(driver.pid, signal.SIGKILL)
        while open(f"/proc/{driver.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            pass  # until the kernel has ended it (still unreaped: this test is its parent)
        again = smallpond.init(job_id=job_id, data_root=root, num_executors=1)
        again.shutdown()
    finally:
        driver.kill()
        driver.wait()


HOLD_LOCK = """
import sys, types
from smallpond.execution.ownership import JobLock
lock = JobLock(types.SimpleNamespace(config_root=sys.argv[1], job_root=sys.argv[2]))
lock.acquire()
print(lock._token, flush=True)
sys.stdin.read()  # holds the lock until the test closes its stdin
"""


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path):
    """Two reruns after a crash both read the dead run's lock record; the one that acts on it
    second must not move away the lock the first one took meanwhile (both ran the job)."""
    from types import SimpleNamespace

    from smallpond.execution.ownership import JobLock

    config = tmp_path / "config"
    config.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(config / "job.lock", "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "token": "dead"}, f)
    late = JobLock(SimpleNamespace(config_root=str(config), job_root=str(tmp_path)))
    stale = late._read()  # the late run has read the dead run's record ...
    # ... when another run takes the lock over (a real process, which holds it)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(config), str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        token = holder.stdout.readline().strip()
        assert token and json.loads((config / "job.lock").read_text())["token"] == token
        late._take_over_if_stale(stale)  # what the late run does next with the record it read
        assert json.loads((config / "job.lock").read_text())["token"] == token, "the live holder's lock was moved away"
        with pytest.raises(JobFolderError, match=f"already being run by process {holder.pid}"):
            late.acquire()
    finally:
        holder.communicate("", timeout=30)


def test_a_run_refused_while_the_job_runs_leaves_that_run_alone(tmp_path):
    """A second run of a job that is being run (a Driver or run_job with its id, or a session with
    ``restart``) is refused before it touches the job: the folder is not moved aside, an attempt's
    folder in flight is not removed, and the status still says running."""
    from smallpond.execution.job import make_runtime_ctx

    job_id = str(uuid.uuid4())
    root = str(tmp_path / "root")
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=5)
    first = smallpond.init(job_id=job_id, data_root=root, num_executors=1)
    try:
        rt = first.runtime_ctx
        in_flight = os.path.join(rt.staging_root, "SomeTask", "out.tmp-0123")  # an attempt writing now
        os.makedirs(in_flight)
        status_path = rt.job_status_path
        status = open(status_path).read()
        with pytest.raises(JobFolderError, match="already being run"):
            smallpond.init(job_id=job_id, data_root=root, num_executors=1, restart=True)
        assert not glob.glob(rt.job_root + ".restarted-*"), "the running job's folder was moved aside"
        ctx = Context()
        plan = LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), "select * from {0}"))
        with pytest.raises(JobFolderError, match="already being run"):
            run_job(plan, make_runtime_ctx(job_id, None, root), num_workers=1)
        assert make_runtime_ctx(job_id, None, root).job_root == rt.job_root
        assert os.path.isdir(in_flight), "the refused run removed an attempt in flight"
        assert open(status_path).read() == status, "the refused run wrote the job's status"
        assert first.read_parquet(inputs).count() == 5  # the first run goes on
    finally:
        first.shutdown()


def test_unreadable_committed_intermediate_is_recomputed(tmp_path, make_rt, log_messages):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    sink, job_id = str(tmp_path / "sink"), str(uuid.uuid4())

    def plan(offset):
        ctx = Context()
        a = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), "select id, key from {0}")
        b = ArrowComputeNode(ctx, (a,), process_func=functools.partial(add_to_ids, offset=offset))
        return LogicalPlan(ctx, DataSinkNode(ctx, (b,), sink))

    rt = make_rt(job_id)
    run_job(plan(0), rt, num_workers=1)
    produced = glob.glob(os.path.join(rt.staging_root, "SqlEngineNode.000002", "SqlEngineTask-*", "*.parquet"))
    assert len(produced) == 1
    with open(produced[0], "r+b") as f:  # a damaged intermediate: its end (the footer) overwritten
        f.seek(-16, os.SEEK_END)
        f.write(b"\0" * 16)
    # the consumer changes, so it runs; its committed producer is resumed, and its file is unreadable
    rt2 = make_rt(job_id)
    result = run_job(plan(100), rt2, num_workers=1)
    assert result.successful
    assert published_rows(sink, "id") == [i + 100 for i in range(20)]
    assert any("cannot be read; recomputing" in m and "SqlEngineTask-000002" in m for m in log_messages)
    from smallpond.execution.attempt import logged_attempts

    ran = [a for a in logged_attempts(rt2.log_root) if a[0].startswith("SqlEngineTask-")]
    assert ran == [("SqlEngineTask-000002", 0), ("SqlEngineTask-000002", 1)], "the producer ran again, once"


def add_to_ids(runtime_ctx, tables, offset):
    import pyarrow.compute as pc

    table = tables[0]
    return table.set_column(table.schema.get_field_index("id"), "id", pc.add(table.column("id"), offset))


def test_a_start_that_fails_after_the_workers_booted_stops_them_and_releases_the_lock(tmp_path, monkeypatch):
    # local workers start before the job's log sinks (so they boot while loguru loads); a failure
    # in a later step of the start must not leave them running or the job folder locked
    import smallpond.execution.job as job_module
    from smallpond.execution.executors.local import LocalExecutor

    started = []
    real_start = LocalExecutor.start

    def spy_start(self):
        real_start(self)
        started.append(list(self.workers))

    def broken_sinks(rt, name):
        raise OSError("the log folder is full")

    monkeypatch.setattr(LocalExecutor, "start", spy_start)
    monkeypatch.setattr(job_module, "_add_log_sinks", broken_sinks)
    job_id = str(uuid.uuid4())
    root = str(tmp_path / "root")
    with pytest.raises(OSError, match="the log folder is full"):
        smallpond.init(job_id=job_id, data_root=root, num_executors=2)
    assert started and len(started[0]) == 1, "the first worker was started before the sinks"
    for w in started[0]:
        assert w.proc.wait(timeout=30) is not None, "a worker outlived the failed start"
    monkeypatch.undo()
    again = smallpond.init(job_id=job_id, data_root=root, num_executors=1)  # the lock was released
    again.shutdown()


def test_cleanup_root_refuses_a_job_that_is_being_run_and_removes_it_once_that_run_is_gone(tmp_path):
    """``RuntimeContext.cleanup_root()`` and ``initialize(cleanup_root=True)`` (upstream's API)
    removed the folder of a job a live process was running (``smallpond clean`` refuses it): both
    are refused naming the process that holds the job lock, and the folder stays whole. Once that
    run is gone (kill -9: its lock goes stale), the folder is removed, and with it the lock taken
    over for the removal (no run started in it meanwhile)."""
    import signal

    from smallpond.execution.runtime import JobId, RuntimeContext

    def runtime():
        return RuntimeContext(JobId(hex="0" * 32), __import__("datetime").datetime(2026, 1, 2, 3, 4, 5), str(tmp_path / "root"))

    rt = runtime()
    rt.initialize()
    files = sorted(os.path.relpath(os.path.join(d, f), rt.job_root) for d, _, fs in os.walk(rt.job_root) for f in fs)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, rt.config_root, rt.job_root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip()
        for remove in (lambda rt: rt.cleanup_root(), lambda rt: rt.initialize(cleanup_root=True)):
            with pytest.raises(JobFolderError, match=f"job {rt.job_root} is already being run by process {holder.pid} "):
                remove(runtime())
            after = sorted(os.path.relpath(os.path.join(d, f), rt.job_root) for d, _, fs in os.walk(rt.job_root) for f in fs)
            assert after == sorted(files + ["config/job.lock"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    runtime().cleanup_root()
    assert not os.path.lexists(rt.job_root)
    runtime().initialize(cleanup_root=True)  # (nothing there: a fresh folder)
    assert os.path.isdir(rt.config_root) and not os.path.exists(os.path.join(rt.config_root, "job.lock"))


REMOVE_AS_ANOTHER_USER = """
import sys
from datetime import datetime
from smallpond.execution.ownership import JobFolderError
from smallpond.execution.runtime import JobId, RuntimeContext
calls = {"cleanup_root": lambda rt: rt.cleanup_root(), "initialize": lambda rt: rt.initialize(cleanup_root=True),
         "cleanup": lambda rt: rt.cleanup()}
for name in sys.argv[2:]:
    try:
        calls[name](RuntimeContext(JobId(hex="0" * 32), datetime(2026, 1, 2, 3, 4, 5), sys.argv[1]))
        print(name, "done")
    except JobFolderError as e:
        print(name, "refused:", e)
    except OSError as e:
        print(name, "OSError:", e)
"""


def _job_folder_in_shared_root(top: str) -> str:
    """A job folder of this user (root) with a staged file, in a data root every user can reach."""
    from datetime import datetime

    from smallpond.execution.runtime import JobId, RuntimeContext

    rt = RuntimeContext(JobId(hex="0" * 32), datetime(2026, 1, 2, 3, 4, 5), os.path.join(top, "root"))
    rt.initialize()
    os.makedirs(os.path.join(rt.staging_root, "SqlEngineTask.1"))
    open(os.path.join(rt.staging_root, "SqlEngineTask.1", "part-0.parquet"), "wb").write(b"data")
    return rt.job_root


def _give_to_nobody(top: str) -> None:
    """Every file and folder under ``top`` (itself included) owned by user nobody (65534)."""
    for d, dirs, files in os.walk(top):
        for name in [d] + [os.path.join(d, n) for n in dirs + files]:
            os.chown(name, 65534, 65534)


def test_removing_another_users_job_folder_is_refused_naming_it_and_removes_nothing(tmp_path):
    """``cleanup_root()``, ``initialize(cleanup_root=True)`` and ``cleanup()`` run by another user
    (nobody) on a job folder of root's: the folder 0700, as jobs make it, they did nothing at all
    and said nothing (or, with the folder open to them, a bare PermissionError of the job lock);
    with it open to every user (``chmod -R 777``) they removed what they could (the secret, the
    staged files), and a resumed job lost its secret. Now each is refused before anything goes,
    naming the folder, its owner and what to do."""
    import stat
    import tempfile

    from tests.e2e.safety_helpers import tree
    from tests.e2e.test_shared_data_root import _nobody_python, as_nobody

    py = _nobody_python()
    top = tempfile.mkdtemp(prefix="smallpond-other-user-")  # /tmp: reachable by nobody
    try:
        os.chmod(top, 0o755)
        job = _job_folder_in_shared_root(top)
        os.chmod(os.path.dirname(job), 0o1777)
        for mode in (0o700, 0o777):
            for d, dirs, files in os.walk(job):
                for name in [d] + [os.path.join(d, n) for n in dirs + files]:
                    os.chmod(name, mode if stat.S_ISDIR(os.lstat(name).st_mode) or mode == 0o777 else 0o600)
            before = (snapshot(job), tree(job))
            out = as_nobody(py, "-c", REMOVE_AS_ANOTHER_USER, os.path.dirname(job), "cleanup_root", "initialize", "cleanup")
            lines = out.stdout.splitlines()
            assert [line.split(" ", 1)[0] for line in lines] == ["cleanup_root", "initialize", "cleanup"], out
            for line in lines:
                assert (
                    " refused: cannot " in line and f"job {job}: nothing was removed, because {job} is owned by uid 0" in line
                ), line
                assert "not by you (uid 65534" in line and "run this as that user" in line, line
            assert (snapshot(job), tree(job)) == before, f"mode {mode:o}: something was removed"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_folder_in_ones_own_job_folder_that_one_cannot_remove_stops_the_removal_before_it_starts(tmp_path):
    """A job folder of nobody's own holding a folder of root's (a run under sudo, say): removing it
    as nobody used to remove everything else and leave that folder, saying nothing. Now refused
    first, naming that folder; nothing goes. Likewise a job folder in a data root nobody cannot
    change (everything in it went, the folder stayed)."""
    import tempfile

    from tests.e2e.safety_helpers import tree
    from tests.e2e.test_shared_data_root import _nobody_python, as_nobody

    py = _nobody_python()
    top = tempfile.mkdtemp(prefix="smallpond-other-user-")
    try:
        os.chmod(top, 0o755)
        job = _job_folder_in_shared_root(top)
        _give_to_nobody(os.path.dirname(job))
        roots = os.path.join(job, "staging", "SqlEngineTask.1")
        os.chown(roots, 0, 0)
        before = (snapshot(job), tree(job))
        out = as_nobody(py, "-c", REMOVE_AS_ANOTHER_USER, os.path.dirname(job), "cleanup_root", "cleanup")
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out
        for line in lines:
            assert " refused: cannot " in line and f"nothing was removed, because {roots} is owned by uid 0 (root)" in line, line
        assert (snapshot(job), tree(job)) == before
        os.chown(roots, 65534, 65534)  # all of it nobody's now, but the data root is root's (0755)
        os.chown(os.path.dirname(job), 0, 0)
        os.chmod(os.path.dirname(job), 0o755)
        out = as_nobody(py, "-c", REMOVE_AS_ANOTHER_USER, os.path.dirname(job), "cleanup_root")
        assert f"nothing was removed, because you cannot remove what {os.path.dirname(job)} holds" in out.stdout, out
        assert f"run this as a user who can change {os.path.dirname(job)} (its owner: uid 0 (root))" in out.stdout, out
        assert (snapshot(job), tree(job)) == before
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr (an immutable file)")
def test_a_file_that_could_not_be_removed_is_named(tmp_path):
    """What cannot be checked first (here an immutable file, which even root cannot remove) stops
    ``cleanup_root()`` and ``cleanup()`` with an error naming it, not silently; a job lock that
    cannot be made (an immutable ``config/``) stops ``cleanup_root()`` before anything goes, naming it."""
    from smallpond.execution.runtime import JobId, RuntimeContext

    def runtime():
        return RuntimeContext(JobId(hex="0" * 32), __import__("datetime").datetime(2026, 1, 2, 3, 4, 5), str(tmp_path / "root"))

    rt = runtime()
    rt.initialize()
    stuck = os.path.join(rt.staging_root, "stuck")
    open(stuck, "wb").close()
    before = snapshot(rt.job_root)
    if subprocess.run(["chattr", "+i", rt.config_root], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable files")
    try:  # its job lock cannot be made
        with pytest.raises(
            JobFolderError, match=f"nothing was removed, because its job lock {rt.config_root}/job.lock could not be taken"
        ):
            runtime().cleanup_root()
    finally:
        subprocess.run(["chattr", "-i", rt.config_root])
    assert snapshot(rt.job_root) == before
    subprocess.run(["chattr", "+i", stuck], check=True)
    try:
        for remove, action in ((lambda rt: rt.cleanup(), "clean up"), (lambda rt: rt.cleanup_root(), "remove the folder of")):
            with pytest.raises(
                JobFolderError, match=f"could not {action} job {rt.job_root} completely: {stuck} could not be removed"
            ):
                remove(runtime())
            assert os.path.exists(stuck)
    finally:
        subprocess.run(["chattr", "-i", stuck])
    runtime().cleanup_root()
    assert not os.path.lexists(rt.job_root)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr (an immutable file)")
def test_cleanup_removes_every_folder_a_file_that_could_not_be_removed_left_and_then_names_it(tmp_path):
    """``cleanup()`` with a file it cannot remove in ``queue/`` (its first folder): it stopped
    there, saying "What could be removed is gone" while ``temp/``, ``staging/`` and ``output/``
    (a job's largest files) were not even tried. Now each folder goes, then the error names the file."""
    from smallpond.execution.runtime import JobId, RuntimeContext

    rt = RuntimeContext(JobId(hex="0" * 32), __import__("datetime").datetime(2026, 1, 2, 3, 4, 5), str(tmp_path / "root"))
    rt.initialize()
    stuck = os.path.join(rt.queue_root, "stuck")
    open(stuck, "wb").close()
    open(os.path.join(rt.output_root, "part-0.parquet"), "wb").close()
    if subprocess.run(["chattr", "+i", stuck], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable files")
    try:
        with pytest.raises(
            JobFolderError, match=f"could not clean up job {rt.job_root} completely: {stuck} could not be removed"
        ):
            rt.cleanup()
    finally:
        subprocess.run(["chattr", "-i", stuck])
    assert os.listdir(rt.queue_root) == ["stuck"]
    assert [d for d in (rt.temp_root, rt.staging_root, rt.output_root) if os.path.lexists(d)] == [], "not tried"


def test_a_bind_mount_in_ones_own_job_folder_does_not_stop_its_removal(tmp_path):
    """A folder of root's bind-mounted into nobody's job folder (same filesystem, so the same
    device number): remove_path leaves a mount point and what is mounted there, but the check
    before it went into it by device number, found root's folder and refused a removal that
    would have worked. Now both tell a mount point by the mount table: the job's own files go,
    the mounted folder and its file stay."""
    import shlex
    import tempfile

    from tests.e2e.test_shared_data_root import AS_NOBODY, _nobody_python

    py, env = _nobody_python()
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --mount (a bind mount of its own)")
    top = tempfile.mkdtemp(prefix="smallpond-other-user-")
    try:
        os.chmod(top, 0o755)
        job = _job_folder_in_shared_root(top)
        _give_to_nobody(os.path.dirname(job))
        roots = os.path.join(top, "roots")  # root's, same filesystem
        os.makedirs(roots)
        open(os.path.join(roots, "keep"), "wb").write(b"root's")
        point = os.path.join(job, "staging", "mounted")
        os.mkdir(point)
        os.chown(point, 65534, 65534)
        nobody = [*AS_NOBODY, py, "-c", REMOVE_AS_ANOTHER_USER, os.path.dirname(job), "cleanup"]
        script = shlex.join(["mount", "--bind", roots, point]) + " && " + shlex.join(nobody)
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
        assert out.stdout.strip() == "cleanup done", out
        assert not os.path.exists(os.path.join(job, "staging", "SqlEngineTask.1")), "the job's own files stayed"
        assert open(os.path.join(roots, "keep"), "rb").read() == b"root's"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_removing_a_job_folder_in_a_data_root_closed_to_one_is_refused_naming_it(tmp_path):
    """``cleanup_root()`` and ``cleanup()`` run by nobody on a job of a data root of root's (0700):
    before refuse_unless_removable they did nothing and said nothing; with it, a bare
    PermissionError. Now a refusal naming the job folder, that nothing was removed and what to do."""
    import tempfile

    from tests.e2e.test_shared_data_root import _nobody_python, as_nobody

    py = _nobody_python()
    top = tempfile.mkdtemp(prefix="smallpond-other-user-")
    try:
        os.chmod(top, 0o755)
        job = _job_folder_in_shared_root(top)
        os.chmod(os.path.dirname(job), 0o700)
        out = as_nobody(py, "-c", REMOVE_AS_ANOTHER_USER, os.path.dirname(job), "cleanup_root", "cleanup")
        lines = out.stdout.splitlines()
        assert len(lines) == 2, out
        for line in lines:
            assert " refused: cannot " in line and f"nothing was removed, because {job} cannot be looked at" in line, line
        assert os.path.isdir(os.path.join(job, "staging", "SqlEngineTask.1"))
    finally:
        shutil.rmtree(top, ignore_errors=True)
