"""The ``smallpond`` command, run for real in subprocesses: jobs, status, logs, report, clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from smallpond.errors import JobFailed
from smallpond.execution.job import run_job
from smallpond.execution.runtime import user_dir
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.conftest import REPO_ROOT


def cli(*args, data_root=None, env_root=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    env.pop("SP_DATA_ROOT", None)
    if env_root:
        env["SP_DATA_ROOT"] = env_root
    argv = [sys.executable, "-m", "smallpond", *args] + (["--data_root", data_root] if data_root else [])
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _job(make_rt, parquet_files, sql, job_id):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    rt = make_rt(job_id)
    try:
        run_job(LogicalPlan(ctx, SqlEngineNode(ctx, (src,), sql)), rt, num_workers=1)
    except JobFailed:
        pass
    return rt


@pytest.fixture
def two_jobs(make_rt, parquet_files, no_plan_check):
    ok = _job(make_rt, parquet_files, "select * from {0}", "11111111-0000-0000-0000-000000000001")
    bad = _job(make_rt, parquet_files, "select nope from {0}", "22222222-0000-0000-0000-000000000002")
    return ok, bad


def test_jobs_status_and_exit_codes(two_jobs, data_root):
    ok, bad = two_jobs
    out = cli("jobs", env_root=data_root)  # the data root from SP_DATA_ROOT
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "AGE", "STATE"]
    assert any(str(ok.job_id) in ln and "success" in ln for ln in lines)
    assert any(str(bad.job_id) in ln and "failure" in ln for ln in lines)
    assert cli("jobs", "--state", "failure", data_root=data_root).stdout.count("\n") == 2  # header + 1

    st = cli("status", "1111", data_root=data_root)  # a prefix
    assert st.returncode == 0 and "succeeded" in st.stdout and "report.html" in st.stdout
    st = cli("status", str(bad.job_id), data_root=data_root)
    assert st.returncode == 1 and "nope" in st.stdout and "task log:" in st.stdout
    st = cli("status", bad.job_root)  # a folder path needs no data root
    assert st.returncode == 1
    missing = cli("status", "99999999", data_root=data_root)
    assert missing.returncode == 2 and "no job matching" in missing.stderr
    assert cli("status", data_root=data_root).returncode == 2  # JOB is required: argparse's usage error
    assert cli("frobnicate").returncode == 2
    helped = cli("--help")
    assert helped.returncode == 0 and all(v in helped.stdout for v in ("jobs", "status", "logs", "report", "clean"))


def test_status_dates_the_start_and_ages_the_last_change_of_state(two_jobs, data_root):
    # AGE is the time since log/.STATUS last changed (a job resumed or ended hours after it
    # started): status said "started <time>, <that age> ago", as if the job had started then
    import time

    ok, _ = two_jobs
    status = os.path.join(ok.log_root, ".STATUS")
    three_hours_ago = time.time() - 3 * 3600
    os.utime(status, (three_hours_ago, three_hours_ago))
    first = cli("status", str(ok.job_id), data_root=data_root).stdout.splitlines()[0]
    assert f"started {ok.job_time:%Y-%m-%d %H:%M:%S}; state last changed 3h ago" in first, first


def test_logs_of_a_job_and_of_a_task(two_jobs, data_root):
    _, bad = two_jobs
    events = [json.loads(x) for x in open(os.path.join(bad.log_root, "events.jsonl"))]
    failed = next(e for e in events if e["ev"] == "failed")
    out = cli("logs", str(bad.job_id)[:8], data_root=data_root)
    assert out.returncode == 0 and "smallpond job" in out.stdout  # the job log
    number = failed["key"].rsplit("-", 1)[1].lstrip("0")
    task = cli("logs", str(bad.job_id), number, data_root=data_root)  # a task by its number
    assert task.returncode == 0 and f"==> {os.path.join(bad.log_root, failed['log'])} <==" in task.stdout
    assert "nope" in task.stdout
    listed = cli("logs", str(bad.job_id), "--list", data_root=data_root)
    assert failed["log"] in listed.stdout
    assert cli("logs", str(bad.job_id), "NoSuchTask-1", data_root=data_root).returncode == 2


def test_logs_of_a_task_whose_attempts_logged_nothing_of_their_own(two_jobs, data_root):
    """A quiet attempt leaves no file in log/tasks/; its start and done lines are found in the
    worker processes' logs, by key, number or prefix."""
    ok, _ = two_jobs
    events = [json.loads(x) for x in open(os.path.join(ok.log_root, "events.jsonl"))]
    done = next(e for e in events if e["ev"] == "done" and e["key"].startswith("SqlEngineTask-"))
    assert done["log"].startswith("workers/") and os.path.exists(os.path.join(ok.log_root, done["log"]))
    assert not os.path.exists(os.path.join(ok.log_root, "tasks", f"{done['key']}.0.log"))
    for ref in (done["key"], done["key"].rsplit("-", 1)[1].lstrip("0")):
        out = cli("logs", str(ok.job_id), ref, data_root=data_root)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"==> {done['key']}: its attempts logged nothing of their own; their start and done lines <=="
        assert [ln.split(" - ")[1].split(" attempt")[0] for ln in lines[1:]] == [f"start {done['key']}", f"done {done['key']}"]
    assert cli("logs", str(ok.job_id), "NoSuchTask-1", data_root=data_root).returncode == 2


def test_logs_of_a_task_reused_from_the_task_cache_name_the_job_that_ran_it(make_rt, parquet_files, data_root):
    """A task served from the task cache ran no attempt in its job, so nothing of it is in the job's
    logs: ``logs JOB TASK`` says where it came from (it said "no log of task" and exited 2)."""
    first = _job(make_rt, parquet_files, "select * from {0}", "33333333-0000-0000-0000-000000000003")
    second = _job(make_rt, parquet_files, "select * from {0}", "44444444-0000-0000-0000-000000000004")
    events = [json.loads(x) for x in open(os.path.join(second.log_root, "events.jsonl"))]
    reused = next(e for e in events if e["ev"] == "reused" and e["key"].startswith("SqlEngineTask-"))
    for ref in (reused["key"], reused["key"].rsplit("-", 1)[1].lstrip("0")):
        out = cli("logs", str(second.job_id), ref, data_root=data_root)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(
            f"{reused['key']} ran no attempt in job {second.job_id}: it was reused from the task cache, "
            f"as written by {reused['key']} of job {first.job_id}"
        ), out.stdout
    # the job that ran it has its start and done lines
    ran = cli("logs", str(first.job_id), reused["key"], data_root=data_root)
    assert ran.returncode == 0 and f"start {reused['key']}" in ran.stdout
    assert cli("logs", str(second.job_id), "NoSuchTask-1", data_root=data_root).returncode == 2


def test_report_rebuilds_the_page(two_jobs, data_root):
    ok, _ = two_jobs
    page = os.path.join(ok.log_root, "report.html")
    os.remove(page)
    out = cli("report", str(ok.job_id), "--trace", data_root=data_root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [page, os.path.join(ok.log_root, "timeline_exec.json")]
    assert '<svg class="plan"' in open(page).read()


def test_clean_is_a_dry_run_unless_yes_and_never_touches_running_jobs_or_other_files(two_jobs, data_root, tmp_path):
    ok, bad = two_jobs
    # a running job: .STATUS says running and the process that started it (this one) is alive
    running = os.path.join(data_root, "2026-01-01-00-00-00.33333333-0000-0000-0000-000000000003")
    os.makedirs(os.path.join(running, "log"))
    with open(os.path.join(running, "log", ".STATUS"), "w") as f:
        f.write("running@2026-01-01-00-00-00\n")
    with open(os.path.join(running, "log", "events.jsonl"), "w") as f:
        start = {"ev": "job_start", "t": 0, "job_id": "33333333", "host": os.uname().nodename, "pid": os.getpid()}
        f.write(json.dumps(start) + "\n")
    # not job folders: a user's file and a look-alike without .STATUS
    user_file = os.path.join(data_root, "notes.txt")
    open(user_file, "w").write("mine")
    lookalike = os.path.join(data_root, "2026-01-01-00-00-00.44444444-0000-0000-0000-000000000004")
    os.makedirs(lookalike)

    dry = cli("clean", data_root=data_root)
    assert dry.returncode == 0 and "would remove" in dry.stdout and "--yes" in dry.stdout
    assert os.path.isdir(ok.job_root) and os.path.isdir(bad.job_root)  # nothing deleted
    assert running not in dry.stdout

    only_failed = cli("clean", "--state", "failure", "--yes", data_root=data_root)
    assert only_failed.returncode == 0
    assert not os.path.exists(bad.job_root) and os.path.isdir(ok.job_root)

    assert "nothing to remove" in cli("clean", "--older-than", "7d", data_root=data_root).stdout
    assert cli("clean", "--state", "running", data_root=data_root).returncode == 2  # never running jobs

    cli("clean", "--yes", data_root=data_root)
    assert not os.path.exists(ok.job_root)
    assert os.path.isdir(running) and os.path.isdir(lookalike) and open(user_file).read() == "mine"


def test_clean_keeps_a_job_whose_files_a_published_manifest_lists(make_rt, parquet_files, data_root, tmp_path):
    """A type="manifest" result outside the job folder lists the job's own files: clean keeps that
    job (saying which manifest, in the dry run too) while the result lists them, removes the other
    finished jobs, and removes it too once the result is gone."""
    import pyarrow.parquet as pq

    from smallpond.execution.catalog import JobLookupError, describe_job, remove_job

    dest = str(tmp_path / "published")
    ctx = Context()
    query = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")
    publisher = make_rt("55555555-0000-0000-0000-000000000005")
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (query,), dest, type="manifest")), publisher, num_workers=1)
    other = _job(make_rt, parquet_files, "select * from {0}", "66666666-0000-0000-0000-000000000006")
    manifest = os.path.join(dest, ".MANIFEST.txt")
    listed = ParquetDataSet([dest]).resolved_paths
    assert listed and all(p.startswith(publisher.job_root + os.sep) for p in listed)

    dry = cli("clean", data_root=data_root)
    assert dry.returncode == 0, dry.stderr
    assert f"keeping {publisher.job_root}" in dry.stdout and manifest in dry.stdout, dry.stdout
    assert f"would remove {other.job_root}" in dry.stdout and f"would remove {publisher.job_root}" not in dry.stdout
    done = cli("clean", "--yes", data_root=data_root)
    assert done.returncode == 0, done.stderr
    assert f"keeping {publisher.job_root}" in done.stdout and not os.path.exists(other.job_root), done.stdout
    assert sum(pq.read_metadata(p).num_rows for p in ParquetDataSet([dest]).resolved_paths) == 30
    with pytest.raises(JobLookupError) as refused:  # remove_job itself refuses it, naming the manifest
        remove_job(data_root, describe_job(publisher.job_root))
    assert manifest in str(refused.value)

    os.remove(manifest)  # the result is gone: nothing reads the job's files any more
    os.rmdir(dest)
    done = cli("clean", "--yes", data_root=data_root)
    assert done.returncode == 0 and f"removing {publisher.job_root}" in done.stdout, done.stdout
    assert not os.path.exists(publisher.job_root)


def test_the_console_script_is_declared():
    import tomllib

    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["smallpond"] == "smallpond.cli:main"
    from smallpond.cli import main

    assert callable(main)


def test_cache_clean(two_jobs, data_root):
    """``smallpond cache clean`` bounds the task cache under the data root (a dry run unless --yes)."""
    entries = os.path.join(user_dir(data_root), "task_cache", "entries")
    names = [os.path.join(entries, d, k) for d in os.listdir(entries) for k in os.listdir(os.path.join(entries, d))]
    cached = [p for p in names if "." not in os.path.basename(p)]  # the records (their files have a dot)
    assert cached, "the successful job's task is in the cache"
    dry = cli("cache", "clean", "--max-bytes", "0", data_root=data_root)
    assert dry.returncode == 0 and f"would remove {len(cached)} entr" in dry.stdout and "--yes" in dry.stdout, dry.stdout
    assert all(os.path.exists(p) for p in cached)
    done = cli("cache", "clean", "--max-bytes", "0", "--yes", data_root=data_root)
    assert done.returncode == 0 and f"removed {len(cached)} entr" in done.stdout
    assert not any(os.path.exists(p) for p in names), "the entries are gone, records and files"
    assert cli("cache", "clean", data_root=data_root).returncode == 2  # neither bound given
    elsewhere = cli("cache", "clean", "--older-than", "1d", "--task_cache", data_root, data_root=data_root)
    assert elsewhere.returncode == 2 and "not a task cache" in elsewhere.stderr


def _as_other_user(args):
    """``args`` run as user nobody (needs root and setpriv), else as this user."""
    if os.geteuid() != 0:
        return list(args)
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot run the command as another user")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*as_nobody, sys.executable, "-c", "import smallpond"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        cwd="/",
        timeout=60,
    )
    if probe.returncode != 0:  # an interpreter under /root (pyenv's shared libpython): not for nobody
        pytest.skip(f"this interpreter does not start as user nobody: {probe.stderr.strip()[-200:]}")
    return [*as_nobody, *args]


def test_another_users_job_folder_is_listed_as_unreadable_and_stops_nothing(parquet_files, tmp_path):
    # job folders are 0700: in a data root shared by several users, each sees folders it cannot
    # read; one of them made `jobs`, `status` (of any job) and `clean` fail with a traceback
    import stat
    import tempfile

    from smallpond.execution.job import make_runtime_ctx

    root = tempfile.mkdtemp(prefix="smallpond-shared-root-")  # reachable by every user (/tmp)
    locked = []
    try:
        os.chmod(root, 0o755)
        theirs, mine = (
            _job(lambda jid: make_runtime_ctx(jid, None, root), parquet_files, "select * from {0}", jid)
            for jid in ("aaaaaaaa-0000-0000-0000-00000000000a", "bbbbbbbb-0000-0000-0000-00000000000b")
        )
        if os.geteuid() == 0:  # the command runs as nobody: mine is readable by it, theirs (0700) not
            for dirpath, _, files in os.walk(mine.job_root):
                os.chmod(dirpath, 0o755)
                for name in files:
                    os.chmod(os.path.join(dirpath, name), 0o644)
        else:
            os.chmod(theirs.job_root, 0)
            locked.append(theirs.job_root)
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, HOME=root)

        def run(*args):
            argv = _as_other_user([sys.executable, "-m", "smallpond", *args, "--data_root", root])
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=root)

        out = run("jobs")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert any(str(theirs.job_id) in ln and "unreadable" in ln for ln in out.stdout.splitlines())
        assert any(str(mine.job_id) in ln and "success" in ln for ln in out.stdout.splitlines())
        out = run("status", "bbbb")
        assert out.returncode == 0 and "succeeded" in out.stdout, out.stderr
        out = run("status", "aaaa")  # theirs: said, without a traceback
        assert out.returncode == 2 and "Traceback" not in out.stderr and "Permission denied" in out.stderr
        assert out.stdout == "", out.stdout  # nothing printed before the error
        out = run("clean")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        (said,) = [ln for ln in out.stdout.splitlines() if str(theirs.job_id) in ln]  # skipped, and why
        assert said.startswith("skipping") and "unreadable" in said and "run clean as its user" in said, said
        if os.geteuid() == 0:  # run as nobody: mine is root's, readable by it but not its to remove
            assert f"skipping {mine.job_root}" in out.stdout and "belongs to user root" in out.stdout, out.stdout
        else:
            assert f"would remove {mine.job_root}" in out.stdout, out.stdout
    finally:
        import shutil

        for path in locked:
            os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(root, ignore_errors=True)


def test_a_data_root_that_is_a_file_is_a_usage_error(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for args in (("jobs",), ("status", "abc"), ("clean",)):
        out = cli(*args, data_root=str(not_a_folder))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "cannot list the data root" in out.stderr


def test_a_job_killed_before_its_first_event_is_crashed_not_running(make_rt, parquet_files, data_root):
    # .STATUS says running from before the executors start (mpirun may take seconds) until the
    # event log's job_start names the process: a kill between them read as running forever
    # (status exit 0, never removed by clean)
    rt = _job(make_rt, parquet_files, "select * from {0}", "33333333-0000-0000-0000-000000000003")
    os.remove(os.path.join(rt.log_root, "events.jsonl"))
    with open(rt.job_status_path, "a") as f:
        f.write("running@2026-01-01-00-00-00\n")
    st = cli("status", rt.job_root)
    assert st.returncode == 1 and "crashed" in st.stdout.splitlines()[0], st.stdout
    assert str(rt.job_id) in cli("clean", data_root=data_root).stdout
    # while a live process holds the job lock, the job runs
    lock = os.path.join(rt.job_root, "config", "job.lock")
    with open(lock, "w") as f:
        json.dump({"host": __import__("socket").gethostname(), "pid": os.getpid()}, f)
    st = cli("status", rt.job_root)
    assert st.returncode == 0 and "running" in st.stdout.splitlines()[0], st.stdout


def _tree(root: str) -> dict:
    """Every path under ``root`` (the root too) with its type, size and modification time."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in [""] + dirs + files:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_a_dry_run_clean_writes_nothing(make_rt, parquet_files, data_root, tmp_path):
    """``smallpond clean`` without --yes changes nothing under the data root, byte for byte: not
    the records folder's index of destinations either (missing here, as before a first lookup, and
    with a record it does not know), although it would remove a job and a stale record."""
    from smallpond.execution.ops import sink_record
    from smallpond.execution.runtime import sink_records_dir

    ctx = Context()
    query = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (query,), str(tmp_path / "kept"), type="manifest")), make_rt(), num_workers=1)
    ctx = Context()
    query = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")
    gone = tmp_path / "gone"
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (query,), str(gone), type="copy")), make_rt(), num_workers=1)
    other = _job(make_rt, parquet_files, "select * from {0}", "77777777-0000-0000-0000-000000000007")
    for name in os.listdir(gone):
        os.remove(gone / name)  # the copied result is gone: its record is stale
    index = os.path.join(sink_records_dir(data_root), sink_record._INDEX)
    if os.path.exists(index):
        os.remove(index)
    # an mtime the clock could not give again, so that a rewrite of any file shows
    for path in _tree(data_root):
        os.utime(os.path.join(data_root, path), ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)
    before = _tree(data_root)

    dry = cli("clean", data_root=data_root)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {other.job_root}" in dry.stdout and "would remove 1 record(s)" in dry.stdout, dry.stdout
    assert _tree(data_root) == before
    done = cli("clean", "--yes", data_root=data_root)  # the index is written by a real clean (a cache)
    assert done.returncode == 0 and "removed 1 record(s)" in done.stdout, done.stdout


def test_a_dry_run_clean_leaves_an_earlier_layout_of_records_where_it_is(data_root):
    """Records of the earlier single-user layout (``.smallpond/sinks``) are moved into the user's
    folder by a real clean, not by a dry run."""
    old = os.path.join(data_root, ".smallpond", "sinks")
    os.makedirs(old)
    before = _tree(data_root)
    dry = cli("clean", data_root=data_root)
    assert dry.returncode == 0, dry.stderr
    assert _tree(data_root) == before
    done = cli("clean", "--yes", data_root=data_root)
    assert done.returncode == 0 and not os.path.exists(old), done.stdout + done.stderr


def test_clean_skips_another_users_jobs_and_says_why(make_rt, parquet_files, data_root):
    """Run by root on a shared data root, clean removed every user's finished jobs, though it read
    only root's records of published results (a result of theirs could list their job's files)."""
    if os.geteuid() != 0:
        pytest.skip("giving a job folder to another user needs root")
    theirs = _job(make_rt, parquet_files, "select * from {0}", "77777777-0000-0000-0000-000000000007")
    mine = _job(make_rt, parquet_files, "select * from {0}", "88888888-0000-0000-0000-000000000008")
    for dirpath, dirs, files in os.walk(theirs.job_root):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirs + files]:
            os.chown(name, 65534, 65534, follow_symlinks=False)
    dry = cli("clean", data_root=data_root)
    assert dry.returncode == 0, dry.stderr
    (said,) = [ln for ln in dry.stdout.splitlines() if theirs.job_root in ln]
    assert said.startswith(f"skipping {theirs.job_root}") and "uid 65534" in said and "run it as that user" in said
    assert f"would remove {mine.job_root}" in dry.stdout
    done = cli("clean", "--yes", data_root=data_root)
    assert done.returncode == 0, done.stderr
    assert os.path.isdir(theirs.job_root) and not os.path.exists(mine.job_root)
    again = cli("clean", "--yes", data_root=data_root)
    assert "nothing to remove" in again.stdout and "1 of other users skipped" in again.stdout, again.stdout


def test_clean_keeps_a_job_that_a_result_in_another_users_records_lists(make_rt, parquet_files, data_root, tmp_path):
    """The records of every user that the cleaning user can read are consulted: a type="manifest"
    result recorded by another user (here: this user's records, moved to another uid's folder)
    that lists this user's job files keeps that job."""
    import shutil

    dest = str(tmp_path / "published")
    ctx = Context()
    query = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")
    publisher = make_rt("99999999-0000-0000-0000-000000000009")
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (query,), dest, type="manifest")), publisher, num_workers=1)
    users = os.path.dirname(user_dir(data_root))
    other = os.path.join(users, str(os.geteuid() + 4242))
    os.makedirs(other, mode=0o700)
    shutil.move(os.path.join(user_dir(data_root), "sinks"), os.path.join(other, "sinks"))
    index = os.listdir(os.path.join(other, "sinks"))
    done = cli("clean", "--yes", data_root=data_root)
    assert done.returncode == 0, done.stderr
    assert f"keeping {publisher.job_root}" in done.stdout and os.path.join(dest, ".MANIFEST.txt") in done.stdout, done.stdout
    assert os.path.isdir(publisher.job_root)
    assert os.listdir(os.path.join(other, "sinks")) == index  # another user's folder: nothing written there
