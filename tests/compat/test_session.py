"""Upstream's tests/test_session.py and the ``smallpond.init`` contract (reference §1.1, §1.2, §1.7)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from datetime import datetime

import pytest

import smallpond


def _status(sp) -> str:
    with open(os.path.join(sp._runtime_ctx.log_root, ".STATUS")) as f:
        return f.read()


def test_shutdown_cleanup(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path))
    assert os.path.exists(sp._runtime_ctx.queue_root), "queue directory should exist"
    assert os.path.exists(sp._runtime_ctx.staging_root), "staging directory should exist"
    assert os.path.exists(sp._runtime_ctx.temp_root), "temp directory should exist"

    # create some tasks and complete them
    df = sp.from_items([1, 2, 3])
    df.write_parquet(sp._runtime_ctx.output_root)
    sp.shutdown()

    # shutdown should clean up directories
    assert not os.path.exists(sp._runtime_ctx.queue_root), "queue directory should be cleared"
    assert not os.path.exists(sp._runtime_ctx.staging_root), "staging directory should be cleared"
    assert not os.path.exists(sp._runtime_ctx.temp_root), "temp directory should be cleared"
    assert "success" in _status(sp)


def test_shutdown_no_cleanup_on_failure(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path))
    df = sp.from_items([1, 2, 3])
    try:
        # create a task that will fail
        df.map(lambda x: x / 0).compute()
    except Exception:
        pass
    else:
        raise AssertionError("the task should fail")
    sp.shutdown()

    # shutdown should not clean up directories
    assert os.path.exists(sp._runtime_ctx.queue_root), "queue directory should not be cleared"
    assert os.path.exists(sp._runtime_ctx.staging_root), "staging directory should not be cleared"
    assert os.path.exists(sp._runtime_ctx.temp_root), "temp directory should not be cleared"
    assert "failure" in _status(sp)


def test_shutdown_is_idempotent_and_keeps_output_when_asked(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path), _remove_output_root=False)
    sp.from_items([1]).map("item", output_name="kept").compute()
    sp.shutdown()
    sp.shutdown()
    assert os.path.isdir(sp.runtime_ctx.output_root)
    assert _status(sp).count("success") == 1


def test_job_root_layout(tmp_path):
    job_id = str(uuid.uuid4())
    when = datetime(2024, 1, 2, 3, 4, 5)
    sp = smallpond.init(job_id=job_id, job_time=when, data_root=str(tmp_path))
    try:
        assert sp.runtime_ctx.job_root == os.path.join(str(tmp_path), f"2024-01-02-03-04-05.{job_id}")
        for d in ("config", "log", "queue", "output", "staging", "temp"):
            assert os.path.isdir(os.path.join(sp.runtime_ctx.job_root, d)), d
        assert str(sp.runtime_ctx.job_id) == job_id
    finally:
        sp.shutdown()


def test_environment_variables(tmp_path, monkeypatch):
    job_id = str(uuid.uuid4())
    monkeypatch.setenv("SP_JOBID", job_id)
    monkeypatch.setenv("SP_JOB_TIME", "2023-05-06T07:08:09")
    monkeypatch.setenv("SP_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setenv("SP_NUM_EXECUTORS", "2")
    monkeypatch.setenv("SP_BIND_NUMA_NODE", "0")
    monkeypatch.setenv("SP_MEMORY_ALLOCATOR", "system")
    sp = smallpond.init()
    try:
        cfg = sp.config
        assert cfg.job_id == job_id
        assert cfg.job_time == datetime(2023, 5, 6, 7, 8, 9)
        assert cfg.data_root == str(tmp_path / "env_root")
        assert cfg.num_executors == 2
        assert cfg.bind_numa_node is False
        assert cfg.memory_allocator == "system"
        assert sp.runtime_ctx.job_root == os.path.join(str(tmp_path / "env_root"), f"2023-05-06-07-08-09.{job_id}")
        assert sp.from_items([1, 2]).count() == 2
    finally:
        sp.shutdown()


def test_arguments_win_over_environment(tmp_path, monkeypatch):
    """§8.11: upstream let the environment override init() arguments, against its docstring; ours
    follows the docstring."""
    monkeypatch.setenv("SP_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setenv("SP_NUM_EXECUTORS", "3")
    sp = smallpond.init(data_root=str(tmp_path / "arg_root"), num_executors=1)
    try:
        assert sp.config.data_root == str(tmp_path / "arg_root") and sp.config.num_executors == 1
    finally:
        sp.shutdown()


def test_job_time_as_datetime_iso_or_epoch(tmp_path):
    """§8.11: upstream documented float epoch seconds but only a datetime worked."""
    when = datetime(2024, 5, 6, 7, 8, 9)
    for value in (when, when.isoformat(), when.timestamp()):
        sp = smallpond.init(data_root=str(tmp_path), job_time=value)
        try:
            assert os.path.basename(sp.runtime_ctx.job_root).startswith("2024-05-06-07-08-09.")
        finally:
            sp.shutdown()


def test_accepted_extra_arguments(tmp_path):
    """job_name, memory_allocator and bind_numa_node are accepted."""
    sp = smallpond.init(data_root=str(tmp_path), job_name="compat", memory_allocator="system", bind_numa_node=False)
    try:
        assert sp.from_items([1, 2, 3]).count() == 3
    finally:
        sp.shutdown()


def test_ray_address_of_no_cluster_fails_at_init_naming_it(tmp_path):
    """ray_address selects the Ray backend (tests/e2e/test_ray_session.py); with no cluster there,
    init fails at once naming the address instead of running elsewhere."""
    pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra (CI installs it)")
    from smallpond.errors import ClusterError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ClusterError, match=address):
        smallpond.init(data_root=str(tmp_path), ray_address=address)


def test_version():
    assert isinstance(smallpond.__version__, str) and smallpond.__version__


def test_shutdown_registered_at_exit(tmp_path):
    """init() registers shutdown with atexit: a script that never calls it still records success."""
    code = (
        "import smallpond, sys\n"
        f"sp = smallpond.init(data_root={str(tmp_path)!r})\n"
        "sp.from_items([1, 2]).compute()\n"
        "print(sp.runtime_ctx.job_root)\n"
    )
    env = dict(os.environ, SP_PROGRESS="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    job_root = proc.stdout.strip().splitlines()[-1]
    with open(os.path.join(job_root, "log", ".STATUS")) as f:
        assert "success" in f.read()
    assert not os.path.exists(os.path.join(job_root, "staging"))


def test_rerun_with_same_job_reuses_completed_tasks(tmp_path):
    """§1.7: re-running the same script with the same job_id + job_time + data_root skips the tasks
    that completed (the first run failed, so its staging area, with the checkpoints, was kept)."""
    marker_dir = str(tmp_path / "runs")
    os.makedirs(marker_dir)
    job_id, when = str(uuid.uuid4()), datetime(2024, 2, 3, 4, 5, 6)

    def tag(row):
        import os
        import uuid

        open(os.path.join(marker_dir, uuid.uuid4().hex), "w").close()
        return row

    def script(fail: bool) -> int:
        sp = smallpond.init(job_id=job_id, job_time=when, data_root=str(tmp_path / "root"))
        try:
            base = sp.from_items(list(range(4))).repartition(2, by_rows=True).map(tag)
            n = base.count()
            if fail:
                with pytest.raises(Exception, match="ZeroDivisionError|division by zero"):
                    base.map(lambda r: {"x": 1 // 0}).compute()
            return n
        finally:
            sp.shutdown()

    assert script(fail=True) == 4
    assert len(os.listdir(marker_dir)) == 4
    assert script(fail=False) == 4
    assert len(os.listdir(marker_dir)) == 4  # nothing of `tag` ran again


def test_sp_spawn_runs_the_script_through_the_platform(tmp_path):
    """§1.1: with SP_SPAWN=1, init() starts the script once more through the platform (here the
    base one: a subprocess), with the SP_* variables but SP_SPAWN, and exits with status 0; only
    the spawned run computes."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, smallpond\n"
        "print('start', os.getpid(), os.environ.get('SP_SPAWN'), flush=True)\n"
        "sp = smallpond.init()\n"
        "print('done', os.getpid(), os.environ.get('SP_MARK'), sp.from_items([1, 2, 3]).count(), flush=True)\n"
        "sp.shutdown()\n"
    )
    env = dict(os.environ, SP_SPAWN="1", SP_PLATFORM="base", SP_DATA_ROOT=str(tmp_path / "root"), SP_MARK="m1", SP_PROGRESS="0")
    # the spawned process inherits stdout: run() returns once both closed it
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith(("start", "done"))]
    starts = [line for line in lines if line[0] == "start"]
    dones = [line for line in lines if line[0] == "done"]
    assert [s[2] for s in starts] == ["1", "None"], proc.stdout
    assert len(dones) == 1 and dones[0][1] == starts[1][1] != starts[0][1], proc.stdout
    assert dones[0][2:] == ["m1", "3"]
    # one job: the spawning process made no job folder
    assert len([d for d in os.listdir(tmp_path / "root") if not d.startswith(".")]) == 1


@pytest.mark.parametrize("platform", ["base", "mpi"])
def test_sp_spawn_exits_with_the_status_of_the_run_it_started(tmp_path, platform):
    """The SP_SPAWN parent waits for the run it started and exits as it did: a job that failed is
    not reported to cron (or ``&&``) as a success. (Upstream exits 0 at once.) Through mpirun too
    (the default where it is on the PATH), whose --enable-recovery made it exit 0 whatever its rank
    did: a run killed by SIGKILL is 137 on both."""
    import shutil

    if platform == "mpi" and shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (.ci/run installs openmpi-bin)")
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, smallpond\n"
        "sp = smallpond.init()\n"
        "print('child', os.getpid(), flush=True)\n"
        "if os.environ['SP_MARK'] == 'kill':\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "raise SystemExit(int(os.environ['SP_MARK']))\n"
    )
    for mark, wanted in (("0", 0), ("3", 3), ("kill", 137)):
        env = dict(os.environ, SP_SPAWN="1", SP_PLATFORM=platform, SP_DATA_ROOT=str(tmp_path / "root"), SP_MARK=mark)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == wanted, proc.stderr
        assert proc.stdout.count("child") == 1, proc.stdout
        assert (f"exit status {wanted}" in proc.stderr) == (wanted != 0), proc.stderr


def test_sp_spawn_parent_stopped_stops_the_run(tmp_path):
    """A SIGTERM of the waiting parent (a scheduler's timeout) stops the run it started, and the
    parent's status says it was stopped (128 + 15), not 0."""
    import signal
    import time

    import psutil

    script = tmp_path / "job.py"
    started = tmp_path / "started"
    script.write_text(
        "import os, time, smallpond\n"
        "sp = smallpond.init()\n"
        f"open({str(started)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(300)\n"
    )
    env = dict(os.environ, SP_SPAWN="1", SP_PLATFORM="base", SP_DATA_ROOT=str(tmp_path / "root"), SP_PROGRESS="0")
    log = tmp_path / "stderr"
    with open(log, "w") as err:  # (not a pipe: the run inherits it, and may outlive a broken parent)
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=err)
    child = None
    try:
        deadline = time.monotonic() + 120
        while not (started.exists() and started.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        child = psutil.Process(int(started.read_text()))
        assert proc.poll() is None, f"the parent exited ({proc.returncode}) while its run goes on"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
        child.wait(timeout=30)  # stopped too (psutil raises TimeoutExpired while it runs)
        assert "interrupted and stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if child is not None and child.is_running():
            child.kill()


def test_sp_spawn_without_a_script_file_is_refused(tmp_path):
    """SP_SPAWN=1 re-runs the script; ``python -c`` (or a notebook) has none to re-run."""
    env = dict(os.environ, SP_SPAWN="1", SP_PLATFORM="base", SP_DATA_ROOT=str(tmp_path), SP_PROGRESS="0")
    code = "import smallpond; smallpond.init()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and "SP_SPAWN=1 starts the running script again" in proc.stderr, proc.stderr
