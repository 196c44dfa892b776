"""Local workers kept between the jobs of one process (smallpond.execution.executors.local_spares):
the next job takes them only when they hold nothing a fresh worker would not (real jobs, real
processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pyarrow.parquet as pq
import pytest

from smallpond.execution.attempt import PROCESS_LOG_DIR
from smallpond.execution.executors import local_spares
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode, SqlEngineNode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, PR_SET_PDEATHSIG")


@pytest.fixture(autouse=True)
def no_kept_workers(monkeypatch):
    monkeypatch.delenv("SP_KEEP_WORKERS", raising=False)
    monkeypatch.setenv("SP_FORK_WORKERS", "0")  # fresh interpreters, whatever this process holds
    local_spares.release()
    yield
    local_spares.release()


def _sql_plan(files, n=4):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), n, partition_by_rows=True)
    return LogicalPlan(
        ctx, SqlEngineNode(ctx, (parts,), "select count(*) as n, sum(id) as s, current_setting('threads') as t from {0}")
    )


def _sums(exec_plan):
    rows = [pq.read_table(p).to_pylist() for p in exec_plan.final_output.resolved_paths]
    assert {r["t"] for t in rows for r in t} == {1}  # each task's own settings (cpu_limit 1), kept worker or not
    return sum(r["n"] for t in rows for r in t), sum(r["s"] for t in rows for r in t)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_next_job_of_the_process_takes_the_workers_the_last_one_kept(parquet_files, make_rt):
    first = run_job(_sql_plan(parquet_files), make_rt(), num_workers=2)
    kept = local_spares.kept()
    assert kept and set(kept.values()) == {0}  # kept, none has joined a later job yet
    assert all(_alive(pid) for pid in kept)

    rt = make_rt(task_cache="off")
    second = run_job(_sql_plan(parquet_files), rt, num_workers=2)
    assert _sums(first) == _sums(second) == (30, sum(range(30)))
    again = local_spares.kept()
    assert set(again) == set(kept) and 1 in again.values()  # the same processes, one job later
    # they ran the second job's tasks as its workers: their log lines are in its log folder
    logs = os.listdir(os.path.join(rt.log_root, PROCESS_LOG_DIR))
    assert any(f"-{pid}.log" in name for name in logs for pid in kept)


def test_a_kept_worker_takes_the_size_of_an_input_again_in_its_next_job(tmp_path, make_rt):
    """The ``read`` statistic: a fresh worker would stat the file rewritten since the last job."""
    from smallpond.execution.events import read_events
    from tests.datagen import generate_parquet_files

    def read_bytes(files):
        ctx = Context()
        plan = LogicalPlan(
            ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), "select count(*) as n from {0}")
        )
        rt = make_rt(task_cache="off")
        run_job(plan, rt, num_workers=1)
        return [e["read"] for e in read_events(rt.log_root) if e["ev"] == "done" and e["key"].startswith("SqlEngineTask")]

    files = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=10)
    assert read_bytes(files) == [os.path.getsize(files[0])]
    pid = set(local_spares.kept())
    generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=1000)
    assert read_bytes(files) == [os.path.getsize(files[0])]
    assert set(local_spares.kept()) == pid  # (the kept worker ran it)


def test_a_worker_that_ran_user_python_is_not_kept(parquet_files, make_rt):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 1)

    def script(runtime_ctx, inputs, output_path):
        return True

    run_job(LogicalPlan(ctx, PythonScriptNode(ctx, (parts,), process_func=script)), make_rt(), num_workers=1)
    assert local_spares.kept() == {}


@pytest.mark.parametrize("change", ["random_seed", "environment", "import path"])
def test_workers_started_otherwise_than_the_next_job_would_start_them_are_not_taken(
    parquet_files, make_rt, monkeypatch, tmp_path, change
):
    run_job(_sql_plan(parquet_files), make_rt(random_seed=1), num_workers=2)
    old = set(local_spares.kept())
    assert old
    seed = 1
    if change == "random_seed":  # another PYTHONHASHSEED (worker_hash_seed)
        seed = 2
    elif change == "environment":
        monkeypatch.setenv("SP_TEST_KEPT_WORKER_VARIABLE", "1")
    else:
        monkeypatch.syspath_prepend(str(tmp_path))
    run_job(_sql_plan(parquet_files), make_rt(random_seed=seed), num_workers=2)
    new = local_spares.kept()
    assert new and not set(new) & old and set(new.values()) == {0}
    assert not any(_alive(pid) for pid in old)  # stopped when the others were kept


@pytest.mark.parametrize("reaper", ["reaped", "not_reaped_yet"])
def test_a_kept_worker_killed_meanwhile_is_replaced(parquet_files, make_rt, log_messages, monkeypatch, reaper):
    """The next job never takes a kept worker that died: it starts a fresh one instead, so none of
    its attempts is lost. (Given one, the job would still succeed, through the recovery of a
    worker that dies under a job: its attempt is retried on a replacement; so the test looks at
    the attempts and the log, not only at the result.) Either the reaper forgot it already, or
    (``not_reaped_yet``: a death the reaper has not seen yet) the next job finds it dead when it
    takes it (local_spares.take)."""
    from smallpond.execution.events import read_events

    if reaper == "not_reaped_yet":
        monkeypatch.setattr(local_spares, "_watch_ended", lambda: None)
    run_job(_sql_plan(parquet_files), make_rt(), num_workers=2)
    old = set(local_spares.kept())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    # killed meanwhile: dead before the next job starts (a SIGKILL takes a moment; a worker still
    # dying when it was taken died under the job, 1 run in 8 here since jobs start sooner)
    end = time.monotonic() + 30
    while any(_alive(pid) for pid in old) and time.monotonic() < end:
        time.sleep(0.005)
    rt = make_rt(task_cache="off")
    second = run_job(_sql_plan(parquet_files), rt, num_workers=2)
    assert _sums(second) == (30, sum(range(30)))
    assert not set(local_spares.kept()) & old
    assert not [m for m in log_messages if "died" in m or "WorkerLost" in m]
    events = read_events(rt.log_root)
    assert not [e for e in events if e["ev"] == "failed"], "an attempt failed or was lost"
    assert {e["attempt"] for e in events if e["ev"] == "done"} == {0}  # every task done at its first attempt


def test_nothing_is_kept_when_switched_off(parquet_files, make_rt, monkeypatch):
    monkeypatch.setenv("SP_KEEP_WORKERS", "0")
    run_job(_sql_plan(parquet_files), make_rt(), num_workers=2)
    assert local_spares.kept() == {}


def test_restarted_workers_are_stopped_not_kept(make_rt):
    from smallpond.execution.executors.local import LocalExecutor

    executor = LocalExecutor(make_rt(), 1)
    executor.start()
    pid = executor.workers[0].pid
    executor.restart_workers("a module changed")
    assert not _alive(pid) and local_spares.kept() == {}
    executor.shutdown()


def test_a_kept_worker_ends_itself_when_no_job_comes(monkeypatch):
    from multiprocessing.connection import Pipe

    from smallpond.execution import module_kinds
    from smallpond.execution.worker import PARKED, park

    monkeypatch.setattr(module_kinds, "user_modules", lambda: [])  # (this process has the tests')
    here, there = Pipe()
    assert park(there, seconds=0.05) is False
    assert here.recv_bytes() == PARKED
    here.send_bytes(b"x")
    assert park(there, seconds=5) is True and here.recv_bytes() == PARKED
    monkeypatch.setattr(module_kinds, "user_modules", lambda: ["a_module_of_the_users"])
    assert park(there, seconds=5) is False and not here.poll(0)  # ends at once, says nothing


def test_the_users_modules_are_those_neither_of_python_smallpond_nor_installed():
    import types

    from smallpond.execution.module_kinds import library_roots, user_modules

    def fake(name, path):
        m = types.ModuleType(name)
        m.__file__ = path
        return m

    site = library_roots()[1][0]
    modules = {
        "json": sys.modules["json"],
        "smallpond.common": sys.modules["smallpond.common"],
        "somelib": fake("somelib", os.path.join(site, "somelib", "__init__.py")),
        "helpers": fake("helpers", "/home/someone/project/helpers.py"),
    }
    assert user_modules(modules) == ["helpers"]


def test_a_worker_that_loaded_a_module_of_the_users_is_not_kept(parquet_files, make_rt, monkeypatch, tmp_path):
    """A node of a user's class (SQL only: no user Python runs) makes its worker import the class's
    module; an edit of it before the next job must not leave the old module loaded."""
    (tmp_path / "sp_kept_user_node.py").write_text(
        "from smallpond.logical.node import SqlEngineNode\n\nclass MyNode(SqlEngineNode):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # for both jobs: the workers' key is the same
    from sp_kept_user_node import MyNode

    ctx = Context()
    node = MyNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select count(*) as n from {0}")
    run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    first = set(local_spares.kept())  # (the driver does not know yet)
    run_job(_sql_plan(parquet_files), make_rt(task_cache="off"), num_workers=1)
    assert first and not set(local_spares.kept()) & first
    assert not any(_alive(pid) for pid in first)


def test_kept_workers_die_with_their_driver(parquet_files, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import duckdb  # the driver holds DuckDB: its workers are fresh interpreters
        sys.path.insert(0, {os.getcwd()!r})
        from tests.execution.test_local_spares import _sql_plan
        from smallpond.execution.executors import local_spares
        from smallpond.execution.job import make_runtime_ctx, run_job
        run_job(_sql_plan({parquet_files!r}), make_runtime_ctx("job", None, {str(tmp_path / "root")!r}), num_workers=2)
        print(" ".join(map(str, local_spares.kept())), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, out.stderr
    deadline = time.monotonic() + 30  # (generous: on a loaded machine a dying worker waits for a CPU; a kept one waits 120 s)
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_kept_workers_die_with_their_driver_even_where_their_sockets_stay_open(parquet_files, tmp_path):
    """A kept worker dies with its driver by the kernel's hand (PR_SET_PDEATHSIG), not only because
    its socket to the driver closes (which ends its wait: the test below): here a process the driver
    forked holds copies of those sockets, so no end of file comes, and the workers must still die.
    (test_kept_workers_die_with_their_driver passes without PR_SET_PDEATHSIG: the end of file
    alone ends them there.)"""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        import duckdb
        sys.path.insert(0, {os.getcwd()!r})
        from tests.execution.test_local_spares import _sql_plan
        from smallpond.execution.executors import local_spares
        from smallpond.execution.job import make_runtime_ctx, run_job
        run_job(_sql_plan({parquet_files!r}), make_runtime_ctx("job", None, {str(tmp_path / "root")!r}), num_workers=2)
        copies = [os.dup(w.conn.fileno()) for w in local_spares._spares]  # (the kept workers' sockets)
        holder = os.fork()
        if holder == 0:
            time.sleep(60)
            os._exit(0)
        print(holder, " ".join(map(str, local_spares.kept())), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    # into files, not pipes: the workers inherit them, and reading a pipe to its end would wait for them
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        assert subprocess.run([sys.executable, "-c", script], stdout=out, stderr=err, timeout=120).returncode == -9
        out.seek(0)
        err.seek(0)
        holder, *pids = [int(p) for p in out.read().split()]
        errors = err.read()
    try:
        assert pids, errors
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "kept workers outlived their driver"
    finally:
        for pid in [holder, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_kept_worker_ends_when_its_driver_lets_go_of_it(parquet_files, make_rt):
    """A kept worker's wait for its next job ends at once when its socket to the driver closes (as
    when the driver dies), not after its whole wait (worker.park)."""
    run_job(_sql_plan(parquet_files), make_rt(), num_workers=2)
    pids = set(local_spares.kept())
    assert pids
    for w in list(local_spares._spares):
        assert w.conn.poll(60)  # it said PARKED: it waits for its next job (closed sooner, that answer fails and it ends)
        w.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "a kept worker waited on with no driver"


def test_the_stack_dumps_of_a_worker_that_joins_another_job_go_to_its_temp_root(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from smallpond.execution import stacks
        stacks.enable({str(tmp_path / "a")!r})
        stacks.enable({str(tmp_path / "b")!r})
        os.kill(os.getpid(), stacks.SIGNAL)
        time.sleep(0.5)
        print(stacks.stack_path({str(tmp_path / "b")!r}, os.getpid()))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    with open(out.stdout.strip()) as f:
        assert "most recent call first" in f.read()


def test_the_workers_of_a_failed_run_are_stopped_not_kept(parquet_files, make_rt):
    ctx = Context()
    bad = SqlEngineNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select error('boom in the run') as v from {0}"
    )
    with pytest.raises(Exception, match="boom in the run"):
        run_job(LogicalPlan(ctx, bad), make_rt(), num_workers=2, max_retry_count=0)
    assert local_spares.kept() == {}


def _gone(pid: int) -> bool:
    """Reaped: no process (not even a zombie) has that PID."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


@pytest.mark.parametrize("how", ["ends_itself", "killed"])
def test_a_kept_worker_that_ends_is_reaped_at_once(parquet_files, make_rt, monkeypatch, how):
    """A kept worker that ends while kept (its wait over, or killed) was a zombie until the next job
    or the process's exit. It is reaped by its own PID: a child of the user's code keeps its exit
    status (no waitpid(-1))."""
    if how == "ends_itself":
        monkeypatch.setenv("SP_TEST_PARKED_SECONDS", "3")  # (the workers' environment: set before they start)
    users_child = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(7)"])
    run_job(_sql_plan(parquet_files), make_rt(), num_workers=2)
    pids = set(local_spares.kept())
    assert pids
    if how == "killed":
        assert all(_alive(p) for p in pids)  # (not asked of those that end themselves: a slow machine may be past their wait)
        ended = min(pids)
        os.kill(ended, signal.SIGKILL)
    else:
        ended = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_gone(p) for p in pids if ended in (None, p)):
        time.sleep(0.05)
    assert all(_gone(p) for p in pids if ended in (None, p)), {p: psutil.Process(p).status() for p in pids if not _gone(p)}
    assert set(local_spares.kept()) == (pids - {ended} if ended else set())  # the others are still kept
    assert users_child.wait(timeout=30) == 7


def test_a_session_shut_down_at_exit_keeps_no_worker(parquet_files, tmp_path):
    """At the interpreter's exit no later job can take a worker: the session's workers are stopped,
    not parked (a parked worker let go of its job and, finding its driver gone, tore its interpreter
    down: ~0.3 s of CPU while holding the script's output pipes open)."""
    script = textwrap.dedent(
        f"""
        import atexit, os
        from smallpond.execution.executors import local_spares
        # registered before the session's: runs after its shutdown
        atexit.register(lambda: print("kept at exit:", sorted(local_spares.kept()), flush=True))
        import duckdb  # this process holds DuckDB: its workers are fresh interpreters, which may be kept
        import smallpond
        sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=2)
        df = sp.partial_sql("select count(*) as n from {{0}}", sp.read_parquet({parquet_files!r}))
        print("rows:", df.to_arrow().column("n")[0].as_py(), flush=True)
        print("workers:", sorted(w.pid for w in sp._job.executor.workers), flush=True)
        """
    )
    env = dict(os.environ, SP_PROGRESS="0", SP_FORK_WORKERS="0")
    env.pop("SP_KEEP_WORKERS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert int(lines["rows"]) > 0
    workers = eval(lines["workers"])
    assert workers, out.stdout
    assert lines["kept at exit"] == "[]", out.stdout
    assert not any(_alive(pid) for pid in workers)


def test_a_child_forked_from_a_session_does_not_shut_it_down_at_its_exit(parquet_files, tmp_path):
    """A child the user forks (os.fork) and that ends through the interpreter's exit runs the
    parent's atexit handlers: the session's shutdown there removed the parent's job folder, so the
    parent's next job failed (FileNotFoundError in its staging folder); nor stops the workers the
    parent keeps for a later session."""
    script = textwrap.dedent(
        f"""
        import os, sys
        import duckdb  # this process holds DuckDB: its workers are fresh interpreters, which may be kept
        import smallpond
        sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=2)
        src = sp.read_parquet({parquet_files!r})
        print("one:", len(src.map("id + 1 as x").to_pandas()), flush=True)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        print("child:", os.waitpid(pid, 0)[1], flush=True)
        print("two:", len(src.map("id + 2 as y").to_pandas()), flush=True)
        sp.shutdown()  # its workers are kept for a later session of this process
        from smallpond.execution.executors import local_spares
        kept = sorted(local_spares.kept())
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        os.waitpid(pid, 0)
        print("kept:", bool(kept) and sorted(local_spares.kept()) == kept and all(os.path.exists(f"/proc/{{p}}") for p in kept), flush=True)
        """
    )
    env = dict(os.environ, SP_PROGRESS="0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line for line in out.stdout.splitlines() if ": " in line] == ["one: 30", "child: 0", "two: 30", "kept: True"], (
        out.stdout
    )
