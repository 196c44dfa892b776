"""The Ray backend against a real Ray cluster on this machine (a head without CPUs, two worker nodes).

This test process connects to the cluster as a Ray driver and drives a
:class:`~smallpond.execution.executors.ray.RayExecutor` directly: attempts run on worker nodes,
two attempts of one task run at once and one is cancelled, a killed Ray worker or a removed node
is a ``WorkerLost``, oversized requests are clamped instead of waiting forever, the capacity follows
nodes joining and leaving, unpicklable tasks fail at submit, and a node that cannot see the data
root (a real node in its own mount namespace) fails the start naming that node.
"""

from __future__ import annotations

import faulthandler
import functools
import glob
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

import pytest

from smallpond.errors import TaskError, WorkerLost
from smallpond.execution.commit import read_commit
from smallpond.execution.planner import Planner
from smallpond.execution.scheduler import Scheduler
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, PythonScriptNode, SqlEngineNode
from tests.processes import alive
from tests.ray_cluster import connected_cluster

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    """The session's Ray cluster, with this process connected to it as a driver."""
    yield from connected_cluster()


def record(
    runtime_ctx,
    inputs,
    output_path,
    log: str,
    sleep: float = 0.0,
    die_on_first: bool = False,
    swallow: bool = False,
    release: str = "",
) -> bool:
    """A task: note its attempt in ``log``, maybe kill its own process or sleep (noting an
    interrupt, which ``swallow`` ignores; a first attempt sleeps until the file ``release`` exists,
    when given, ``sleep`` seconds at most), then write a file."""
    task = runtime_ctx.task
    with open(log, "a") as f:
        f.write(f"start {task.key} {task.retry_count} {os.getpid()}\n")
    if die_on_first and task.retry_count == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if task.retry_count == 0:
        try:
            for _ in range(int(sleep * 20)):
                if release and os.path.exists(release):
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:  # what ray.cancel raises in a running task
            with open(log, "a") as f:
                f.write(f"interrupted {task.key} {task.retry_count}\n")
            if not swallow:
                raise
    with open(os.path.join(output_path, "out.txt"), "w") as f:
        f.write(str(task.retry_count))
    with open(log, "a") as f:
        f.write(f"end {task.key} {task.retry_count}\n")
    return True


def prepared(rt, parquet_files, n: int = 1, sql: str = "", **kwargs) -> Tuple[List, Callable, Dict]:
    """The ``n`` tasks of a PythonScriptNode running :func:`record` (or of a SqlEngineNode running
    ``sql``), their inputs (computed here), and every planned task by key."""
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), n, partition_by_rows=True)
    if sql:
        node = SqlEngineNode(ctx, (parts,), sql)
    else:
        node = PythonScriptNode(ctx, (parts,), process_func=functools.partial(record, **kwargs))
    planner = Planner(rt)
    tasks = planner.plan(node)
    upstream = sorted({k for t in tasks for k in t.input_keys})
    results = Scheduler(rt, None).run([planner.tasks[k] for k in upstream], planner.tasks)
    return tasks, lambda t: [results[k] for k in t.input_keys], planner.tasks


def executor_for(rt, **kwargs):
    from smallpond.execution.executors.ray import RayExecutor

    rt.initialize()
    ex = RayExecutor(rt, None, **kwargs)  # None: this process is connected already
    ex.start()
    return ex


def wait_for(ex, n: int, deadline: float = 120) -> List:
    """Poll until ``n`` completions arrived (a hang guard, not a timing assertion)."""
    out: List = []
    end = time.monotonic() + deadline
    while len(out) < n and time.monotonic() < end:
        out.extend(ex.poll(0.2))
    assert len(out) >= n, f"only {len(out)} of {n} completions after {deadline}s"
    return out


def wait_started(ex, log: str, key: str, attempt: int, deadline: float = 60) -> None:
    """Poll ``ex`` (nothing may complete meanwhile) until ``log`` says the attempt started, or
    ``deadline`` seconds passed."""
    end = time.monotonic() + deadline
    while not any(line.startswith(f"start {key} {attempt}") for line in lines(log)) and time.monotonic() < end:
        assert ex.poll(0.1) == []


def lines(path: str) -> List[str]:
    return open(path).read().split("\n")[:-1] if os.path.exists(path) else []


def test_an_attempt_runs_on_a_worker_node_and_commits(cluster, make_rt, parquet_files, tmp_path):
    rt = make_rt()
    (task,), inputs, _ = prepared(rt, parquet_files, log=str(tmp_path / "log"))
    ex = executor_for(rt)
    try:
        assert ex.capacity.num_cpus == 4 and ex.capacity.num_workers == 4  # two nodes of two CPUs; the head has none
        assert set(ex.nodes) == set(cluster.worker_node_ids())
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        (c,) = wait_for(ex, 1)
    finally:
        ex.shutdown()
    assert c.ok, c.error
    assert (c.key, c.attempt) == (task.key, 0)
    node_id = c.worker.split("/ray-node-")[1].split("/")[0]
    assert node_id in cluster.worker_node_ids()
    rec = read_commit(rt, task)
    assert rec["worker"] == c.worker and rec["attempt"] == 0
    assert open(c.dataset.resolved_paths[0]).read() == "0"
    capped = executor_for(make_rt(), num_workers=1)  # num_executors: at most this many attempts at once
    capped.shutdown()
    assert capped.capacity.num_workers == 1 and capped.capacity.num_cpus == 4


def test_two_attempts_of_one_task_run_at_once_and_a_cancelled_one_is_not_reported(cluster, make_rt, parquet_files, tmp_path):
    """What speculative execution needs: attempt 0 (slow) and attempt 1 run together; 0 is cancelled."""
    rt = make_rt()
    log = str(tmp_path / "log")
    # attempt 0 sleeps until cancelled (a fixed 4 s ended it first on a loaded machine)
    (task,), inputs, _ = prepared(rt, parquet_files, log=log, sleep=30.0)
    ex = executor_for(rt)
    try:
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        wait_started(ex, log, task.key, 0)
        ex.submit(task, inputs(task), 1, memory=256 << 20)
        assert ex.free_slots() == 2
        (c,) = wait_for(ex, 1)
        assert (c.attempt, c.ok) == (1, True)
        ex.cancel(task.key, 0)
        assert ex.free_slots() == 4
        # the cancelled attempt is interrupted where it is (a cancel that asks: its worker process
        # is not killed), so it never ends or commits
        end = time.monotonic() + 60
        while f"interrupted {task.key} 0" not in lines(log) and time.monotonic() < end:
            assert ex.poll(0.2) == []
        assert f"interrupted {task.key} 0" in lines(log)
        assert ex.poll(0.5) == []
    finally:
        ex.shutdown()
    assert f"end {task.key} 0" not in lines(log)
    assert read_commit(rt, task)["attempt"] == 1


def logged(rt, text: str) -> bool:
    """Whether a line of the job's logs (its attempts' and worker processes') holds ``text``."""
    for folder, _, names in os.walk(rt.log_root):
        for name in names:
            with open(os.path.join(folder, name), errors="replace") as f:
                if text in f.read():
                    return True
    return False


def test_a_cancelled_attempt_that_carries_on_never_commits_and_leaves_no_files(cluster, make_rt, parquet_files, tmp_path):
    # code that swallows the interrupt (or a DuckDB query, which runs on to its end) goes on after
    # the cancel: the attempt still must not commit, and removes the output it renamed into place
    rt = make_rt()
    log = str(tmp_path / "log")
    (task,), inputs, _ = prepared(rt, parquet_files, log=log, sleep=30.0, swallow=True)
    ex = executor_for(rt)
    try:
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        wait_started(ex, log, task.key, 0)
        ex.cancel(task.key, 0)
        end = time.monotonic() + 60
        while not logged(rt, f"cancelled {task.key} attempt 0") and time.monotonic() < end:
            assert ex.poll(0.2) == []
        assert ex.poll(0.5) == []
    finally:
        ex.shutdown()
    assert [f"interrupted {task.key} 0", f"end {task.key} 0"] == lines(log)[1:], "the task's code did not carry on"
    assert read_commit(rt, task) is None, "a cancelled attempt committed"
    base = task.output_base(rt)
    assert glob.glob(base + ".*") == [], "a cancelled attempt left its output behind"


def test_a_cancelled_attempt_in_a_long_duckdb_query_stops(cluster, make_rt, parquet_files, tmp_path):
    # a query of hours: the cancel interrupts it (a Python exception alone waits for its end)
    rt = make_rt()
    sql = "select max(md5((a.id + r.range)::varchar)) as m from {0} a, range(1000000000) r"
    (task,), inputs, _ = prepared(rt, parquet_files, sql=sql)
    ex = executor_for(rt)
    try:
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        end = time.monotonic() + 60
        while not logged(rt, f"start {task.key} attempt 0") and time.monotonic() < end:
            assert ex.poll(0.2) == []
        time.sleep(1)  # into the query
        ex.cancel(task.key, 0)
        end = time.monotonic() + 120  # a hang guard: uninterrupted, the query runs for hours
        while not logged(rt, f"cancelled {task.key} attempt 0") and time.monotonic() < end:
            assert ex.poll(0.2) == []
    finally:
        ex.shutdown()
    assert logged(rt, f"cancelled {task.key} attempt 0"), "the query was not interrupted"
    assert read_commit(rt, task) is None


def test_a_running_attempt_shows_its_stack_on_request(cluster, make_rt, parquet_files, tmp_path):
    # what the stall warning shows: the worker's cancel watcher dumps the attempt's stack when
    # asked (a request file beside the cancel marks), the frames of the thread running it
    rt = make_rt()
    log = str(tmp_path / "log")
    (task,), inputs, _ = prepared(rt, parquet_files, log=log, sleep=30)
    ex = executor_for(rt)
    try:
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        wait_started(ex, log, task.key, 0)
        stacks = ex.attempt_stacks([(task.key, 0), ("NoSuchTask-000001", 0)])
        ex.cancel(task.key, 0)
    finally:
        ex.shutdown()
    assert list(stacks) == [(task.key, 0)], stacks
    frames = stacks[(task.key, 0)]
    assert frames.index("in record") < frames.index("in execute_attempt"), frames
    assert __file__ in frames
    assert not glob.glob(os.path.join(rt.temp_root, "ray-cancelled-*", "*.stack*")), "request or answer files left"


def in_c_with_the_gil(runtime_ctx, inputs, output_path, log: str, n: int, release: str, slow_steps: int = 0) -> bool:
    """A task: note its start in ``log``, then call C code that holds the GIL (``(a+)+b``
    backtracking on ``"a" * n``) until the file ``release`` exists (60 s at most), then write a
    file. Meanwhile this worker's stack dumps give the GIL away ``slow_steps`` times before they
    write (as the system calls of a watcher on a slow file system do: each one lets the task
    take the GIL, and the watcher waits for the C call to return)."""
    with open(log, "a") as f:
        f.write(f"start {runtime_ctx.task.key} {runtime_ctx.task.retry_count}\n")
    dump = faulthandler.dump_traceback

    def slow_dump(*args, **kwargs):
        for _ in range(slow_steps):
            time.sleep(0.01)
        return dump(*args, **kwargs)

    faulthandler.dump_traceback = slow_dump  # (this process's, until the task ends: workers are kept)
    try:
        end = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < end:
            re.fullmatch(r"(a+)+b", "a" * n)
    finally:
        faulthandler.dump_traceback = dump
    with open(os.path.join(output_path, "out.txt"), "w") as f:
        f.write("done")
    return True


def _backtracking_length(seconds: float) -> int:
    """A length of ``"a" * n`` on which ``(a+)+b`` backtracks for between half ``seconds`` and
    ``seconds`` (doubling per character), measured here."""
    n, took = 16, 0.0
    while took < 0.02:
        n += 1
        t0 = time.perf_counter()
        re.fullmatch(r"(a+)+b", "a" * n)
        took = time.perf_counter() - t0
    while took * 2 <= seconds:
        n, took = n + 1, took * 2
    return n


def test_an_attempt_holding_the_gil_in_c_code_shows_its_stack(cluster, make_rt, parquet_files, tmp_path, monkeypatch):
    # the watcher is a Python thread: once it gives the GIL away (a system call on a slow file
    # system), each step waits for the task's C call (0.1-0.2 s) to return, 2.4-4.8 s in all
    # here; having said it is answering (0.2 s poll and one C call after the request), it is
    # waited for (with STACKS_WAIT (2 s) for the answer, and no patience, it is lost). The
    # patience is raised from 10 s to 60 s here: on a loaded machine the 24 steps took longer
    # than 10 s (1 run in 3 at load 13-19); what is tested is that a worker answering is waited for
    from smallpond.execution import stacks as stacks_module

    monkeypatch.setattr(stacks_module, "PATIENCE", 60.0)
    rt = make_rt()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 1, partition_by_rows=True)
    func = functools.partial(in_c_with_the_gil, log=log, n=_backtracking_length(0.2), release=release, slow_steps=24)
    planner = Planner(rt)
    (task,) = planner.plan(PythonScriptNode(ctx, (parts,), process_func=func))
    results = Scheduler(rt, None).run([planner.tasks[k] for k in task.input_keys], planner.tasks)
    ex = executor_for(rt)
    try:
        ex.submit(task, [results[k] for k in task.input_keys], 0, memory=256 << 20)
        wait_started(ex, log, task.key, 0)
        time.sleep(1)  # into the loop of C calls
        t0 = time.monotonic()
        stacks = ex.attempt_stacks([(task.key, 0)])
        took = time.monotonic() - t0
        open(release, "w").close()
        (done,) = wait_for(ex, 1)
    finally:
        ex.shutdown()
    assert done.ok, done.error
    assert list(stacks) == [(task.key, 0)], f"no stack after {took:.1f} s"
    frames = stacks[(task.key, 0)]
    assert frames.index("in in_c_with_the_gil") < frames.index("in execute_attempt"), frames
    assert not glob.glob(os.path.join(rt.temp_root, "ray-cancelled-*", "*.stack*")), "request or answer files left"


def test_a_worker_that_said_it_is_answering_is_waited_for_a_bounded_time(monkeypatch, tmp_path):
    # no cluster: the driver's side of the request, with a watcher that takes the request (says
    # it is answering) and answers only once the driver gave up after stacks.PATIENCE (1.5 s
    # here); the next request, which no watcher takes, costs only STACKS_WAIT (0.5 s here), and
    # does not take that late answer for its own
    from smallpond.execution import stacks
    from smallpond.execution.executors import ray as ray_backend
    from smallpond.execution.executors.cancel_marks import STACK_ANSWER, STACK_REQUEST, CancelMarks, mark_path
    from smallpond.execution.executors.ray import RayExecutor

    monkeypatch.setattr(stacks, "PATIENCE", 1.5)
    monkeypatch.setattr(ray_backend, "STACKS_WAIT", 0.5)
    ex = RayExecutor.__new__(RayExecutor)
    ex._marks, ex._inflight = CancelMarks(str(tmp_path / "marks")), {("T-000001", 0): None}
    request = mark_path(ex._marks.folder, "T-000001", 0) + STACK_REQUEST
    given_up = threading.Event()
    watcher = threading.Thread(target=_answer_late, args=(request, given_up))
    watcher.start()
    t0 = time.monotonic()
    assert ex.attempt_stacks([("T-000001", 0)]) == {}
    took = [time.monotonic() - t0]
    given_up.set()
    watcher.join()
    assert os.path.exists(request + STACK_ANSWER)
    t0 = time.monotonic()
    assert ex.attempt_stacks([("T-000001", 0)]) == {}, "an earlier request's answer"
    took.append(time.monotonic() - t0)
    assert 1.4 < took[0] < 5 and took[1] < 1.4, took  # (the second: 0.5 s; 1.5 s if it waited)
    assert os.listdir(ex._marks.folder) == [], "request, answering mark or answer left"


def _answer_late(request: str, given_up: threading.Event) -> None:
    """A watcher that takes ``request`` (says it is answering) and answers once ``given_up`` is set."""
    from smallpond.execution.executors.cancel_marks import STACK_ANSWER, STACK_ANSWERING

    end = time.monotonic() + 5
    while not os.path.exists(request) and time.monotonic() < end:
        time.sleep(0.01)
    os.rename(request, request + STACK_ANSWERING)
    given_up.wait(10)
    with open(request + STACK_ANSWER, "w") as f:
        f.write("Thread 0x1:\n  File late answer")


def test_a_killed_ray_worker_is_worker_lost(cluster, make_rt, parquet_files, tmp_path):
    rt = make_rt()
    (task,), inputs, _ = prepared(rt, parquet_files, log=str(tmp_path / "log"), die_on_first=True)
    ex = executor_for(rt)
    try:
        ex.submit(task, inputs(task), 0, memory=256 << 20)
        (lost,) = wait_for(ex, 1)
        ex.submit(task, inputs(task), 1, memory=256 << 20)
        (retried,) = wait_for(ex, 1)
    finally:
        ex.shutdown()
    assert not lost.ok and isinstance(lost.error, WorkerLost), lost.error
    assert task.key in str(lost.error)
    assert retried.ok and read_commit(rt, task)["attempt"] == 1
    # Ray did not retry the crashed attempt on its own: our scheduler owns retries
    assert [x.split()[:3] for x in lines(str(tmp_path / "log"))] == [
        ["start", task.key, "0"],
        ["start", task.key, "1"],
        ["end", task.key, "1"],
    ]


def test_a_removed_node_reports_its_attempts_lost(cluster, make_rt, parquet_files, tmp_path):
    """Four slow attempts fill both worker nodes; one node is killed: its two come back as WorkerLost.

    A job starting right after sees the dead node still listed as alive by Ray (its health checks
    take seconds): the data-root check finds it gone, and the start goes on without it. The
    attempts run until that start is over (a release file), not for a fixed time.
    """
    import ray

    rt = make_rt()
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    tasks, inputs, _ = prepared(rt, parquet_files, 4, log=log, sleep=120.0, release=release)
    ex = executor_for(rt)
    try:
        for t in tasks:
            ex.submit(t, inputs(t), 0, memory=256 << 20)
        end = time.monotonic() + 90
        while len([x for x in lines(log) if x.startswith("start")]) < 4 and time.monotonic() < end:
            assert ex.poll(0.1) == []
        victim = cluster.remove_worker(0)
        listed_alive = any(n["NodeID"] == victim and n["Alive"] for n in ray.nodes())
        later = executor_for(make_rt())
        later.shutdown()
        open(release, "w").close()  # the two on the surviving node may end now
        done = wait_for(ex, 4)
    finally:
        ex.shutdown()
        cluster.restore_workers()
    lost = [c for c in done if not c.ok]
    assert len(lost) == 2, [(c.key, c.ok, c.error) for c in done]
    assert all(isinstance(c.error, WorkerLost) for c in lost)
    assert all(victim not in c.worker for c in done if c.ok)
    assert victim not in later.nodes and later.capacity.num_cpus == 2
    if listed_alive:
        assert victim in later._gone


def test_a_data_root_check_whose_worker_dies_runs_again_and_keeps_the_node(cluster, make_rt):
    """A Ray worker process killed while it runs a node's data-root check says nothing of the node:
    the check runs again and the node takes part (it was taken for gone: a one-node cluster then
    failed the start with "no alive node with CPUs")."""
    import psutil

    killed: List[int] = []
    done = threading.Event()

    def kill_the_first_check() -> None:
        ours = psutil.Process()  # the test cluster's raylets are this process's children
        while not done.is_set() and not killed:
            for p in ours.children(recursive=True):
                try:
                    if (p.cmdline() or [""])[0].startswith("ray::smallpond-data-root-check"):
                        p.kill()
                        killed.append(p.pid)
                        break
                except psutil.Error:  # ended meanwhile
                    continue

    # a seed of its own: a new PYTHONHASHSEED, so fresh Ray workers, which import the check's
    # module while it is named after the check (a window the killer thread cannot miss)
    rt = make_rt(random_seed=int(time.time_ns() % 1_000_000_007))
    killer = threading.Thread(target=kill_the_first_check, daemon=True)
    killer.start()
    try:
        ex = executor_for(rt)
    finally:
        done.set()
        killer.join()
    try:
        assert killed, "no data-root check was seen running"
        assert set(ex.nodes) == set(cluster.worker_node_ids()), "a node whose check's worker died was dropped"
    finally:
        ex.shutdown()


def test_requests_larger_than_any_node_are_clamped_with_one_warning(cluster, make_rt, parquet_files, tmp_path, log_messages):
    """Ray would keep a request no node can meet pending forever: it is clamped to the largest node."""
    rt = make_rt()
    tasks, inputs, _ = prepared(rt, parquet_files, 2, log=str(tmp_path / "log"))
    ex = executor_for(rt)
    try:
        assert ex.attempt_limits() == (2, 3 << 30)
        for t in tasks:
            t.cpu_limit = 64  # as if planned for a bigger cluster than this one is now
            ex.submit(t, inputs(t), 0, memory=1 << 40)
        assert len(ex._node_refs) == 1  # the node went into the object store once for both tasks
        done = wait_for(ex, 2)
    finally:
        ex.shutdown()
    assert all(c.ok for c in done)
    warnings = [m for m in log_messages if "more than any Ray node has" in m]
    assert len(warnings) == 1 and "clamped to 2 CPU(s)" in warnings[0]
    assert tasks[0].cpu_limit == 64  # the scheduler's task object is not changed


def test_attempts_of_a_node_known_to_be_short_may_queue_in_ray(cluster, make_rt, parquet_files, tmp_path, monkeypatch):
    """Like local workers' pipelining: Ray holds one more short attempt per slot until a CPU frees."""
    import smallpond.execution.executors.ray as ray_backend

    monkeypatch.setattr(ray_backend, "QUEUE_BEHIND_SECONDS", 1e9)  # "short" whatever this machine's load
    rt = make_rt()
    tasks, inputs, _ = prepared(rt, parquet_files, 8, log=str(tmp_path / "log"))
    ex = executor_for(rt)
    try:
        for t in tasks[:4]:
            ex.submit(t, inputs(t), 0, memory=256 << 20)
        assert ex.free_slots() == 0 and ex.queue_slots() == 0  # nothing known of this node yet
        assert all(c.ok for c in wait_for(ex, 4))
        for t in tasks[4:]:
            ex.submit(t, inputs(t), 0, memory=256 << 20)
        assert ex.free_slots() == 0 and ex.queue_slots() == 4  # its attempts are known to be short
        monkeypatch.setattr(ray_backend, "QUEUE_BEHIND_SECONDS", 0.0)
        assert ex.queue_slots() == 0  # ... unless they are not
        monkeypatch.setattr(ray_backend, "QUEUE_BEHIND_SECONDS", 1e9)
        for t in tasks[:4]:
            ex.submit(t, inputs(t), 1, memory=256 << 20, queue=True)
        assert ex.queue_slots() == 0
        assert all(c.ok for c in wait_for(ex, 8))
    finally:
        ex.shutdown()


def test_capacity_follows_nodes_joining_and_leaving(cluster, make_rt, parquet_files, tmp_path, log_messages):
    rt = make_rt()
    tasks, _, all_tasks = prepared(rt, parquet_files, 3, log=str(tmp_path / "log"))
    ex = executor_for(rt)
    try:
        scheduler = Scheduler(rt, ex)
        assert ex.capacity.num_cpus == 4 and scheduler.state.free_cpus == 4
        extra = cluster.add_worker()
        _poll_until(ex, lambda: ex.capacity.num_cpus == 6)
        assert extra.node_id in ex.nodes
        # the scheduler takes the new capacity in: what is free afterwards is all of it
        results = scheduler.run(tasks, all_tasks)
        assert all(open(results[t.key].resolved_paths[0]).read() == "0" for t in tasks)
        assert scheduler.capacity.num_cpus == 6 and scheduler.state.free_cpus == 6
        cluster.cluster.remove_node(extra, allow_graceful=True)
        _poll_until(ex, lambda: ex.capacity.num_cpus == 4)
        assert extra.node_id not in ex.nodes
        # "left" when Ray reported it dead; "gone" when its data-root check found it dead first
        assert any(("left the cluster" in m or "is gone" in m) and extra.node_id in m for m in log_messages)
    finally:
        ex.shutdown()


def _poll_until(ex, condition, deadline: float = 90) -> None:
    end = time.monotonic() + deadline
    while not condition() and time.monotonic() < end:
        ex.poll(0.2)
        time.sleep(0.2)
    assert condition(), f"not reached after {deadline}s: capacity {ex.capacity}, nodes {list(ex.nodes)}"


def test_a_straggler_on_ray_is_overtaken_by_its_copy(cluster, make_rt, tmp_path):
    """Speculative execution on Ray: the stalled first attempt can only end by being cancelled."""
    from smallpond.execution.executors.ray import RayExecutor
    from smallpond.execution.job import run_job
    from smallpond.execution.scheduler import Speculation
    from tests.datagen import generate_parquet_files
    from tests.execution.test_speculation import plan as stalling_plan

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=20)
    logical, node = stalling_plan(inputs, str(tmp_path / "never"))
    rt = make_rt()
    spec = Speculation.of("aggressive", min_runtime=1.0, multiplier=2.0, quantile=0.5)
    exec_plan = run_job(logical, rt, executor=RayExecutor(rt, None), speculation=spec)
    assert exec_plan.final_output.num_rows == 60
    slow = next(
        t for t in exec_plan.tasks.values() if t.node_id == int(node.id) and t.partition_infos_as_dict["__data_partition__"] == 2
    )
    record = read_commit(rt, slow)
    assert record["attempt"] >= 1 and "/ray-node-" in record["worker"]
    assert set(exec_plan.results[slow.key].to_arrow_table().column("attempt").to_pylist()) == {record["attempt"]}
    node_dir = os.path.dirname(record["output_dir"])
    assert [n for n in os.listdir(node_dir) if n.startswith(slow.key)] == [os.path.basename(record["output_dir"])]


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
def test_ray_workers_keep_arrow_memory_off_huge_pages_and_their_subprocesses_see_the_job_environment(cluster, make_rt):
    """As local workers (tests/execution/test_task_runtime.py): a Ray worker's pyarrow pool asks
    for no huge pages, while the task's code and its subprocesses see neither MIMALLOC_ALLOW_THP
    nor mimalloc's THP setting; the job's own value reaches them, and mimalloc, as it is."""
    import pyarrow as pa

    from smallpond.execution.executors.ray import RayExecutor
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ArrowTableDataSet
    from smallpond.logical.node import ArrowComputeNode, LogicalPlan
    from tests.execution.test_task_runtime import _thp_enabled, arrow_pool_pages

    if pa.default_memory_pool().backend_name != "mimalloc":
        pytest.skip("pyarrow's default pool is not mimalloc")
    ctx = Context()
    parts = DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, ArrowTableDataSet(pa.table({"x": list(range(4))}))),), 2, partition_by_rows=True
    )
    plan = LogicalPlan(ctx, ArrowComputeNode(ctx, (parts,), process_func=arrow_pool_pages))
    mine = _thp_enabled()  # the raylets' (started from this process), so their workers'
    always = "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    thp = "0" if always else mine
    for seed, overrides, var in ((101, {}, ""), (102, {"MIMALLOC_ALLOW_THP": "1"}, "1")):  # (a seed: fresh workers)
        rt = make_rt(random_seed=seed, env_overrides=overrides, task_cache=False)
        rows = run_job(plan, rt, executor=RayExecutor(rt, None)).final_output.to_arrow_table().to_pylist()
        assert rows and all(r["var"] == var and r["child"] == f"{var}|{mine if var else thp}" for r in rows), rows
        if not var:
            assert all(r["huge"] is False and r["thp"] == thp for r in rows), rows
        elif "[madvise]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read():
            assert all(r["huge"] for r in rows), rows  # the job's value reached mimalloc


@pytest.mark.filterwarnings("ignore:.*cannot fingerprint")
def test_an_unpicklable_task_fails_at_submit(cluster, make_rt, parquet_files, tmp_path):
    rt = make_rt()
    lock = threading.Lock()
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 1)
    node = PythonScriptNode(ctx, (parts,), process_func=lambda rc, i, o: lock is not None)
    planner = Planner(rt)
    (task,) = planner.plan(node)
    ex = executor_for(rt)
    try:
        with pytest.raises(TaskError, match="Can't pickle task") as info:
            ex.submit(task, [], 0, memory=256 << 20)
    finally:
        ex.shutdown()
    assert not info.value.retryable


# -- the data root, seen from every node --------------------------------------------------------------


_SLOW_JOB = """
import os, sys, time
from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan

MARKS = os.environ["MARKS"]  # read here: the function carries it to Ray's workers


def slow(runtime_ctx, tables):
    name = f"{runtime_ctx.task.key}.{runtime_ctx.task.retry_count}.{os.getpid()}"
    open(os.path.join(MARKS, f"start-{name}"), "w").close()
    time.sleep(8)
    with open(os.path.join(MARKS, f"end-{name}"), "w") as f:
        f.write(repr(time.time()))
    return tables[0]

d = Driver()
d.add_argument("-i", "--inputs", nargs="+")
args = d.get_arguments()
ctx = Context()
src = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(args["inputs"])),), 2, partition_by_rows=True)
d.run(LogicalPlan(ctx, ArrowComputeNode(ctx, (src,), process_func=slow)))
"""


def test_sigterm_of_a_ray_driver_stops_its_running_attempts(cluster, parquet_files, tmp_path):
    # the driver connected to Ray itself: its shutdown disconnects, and Ray stops the job's
    # attempts (no force-cancel of each, which raced with an attempt finishing meanwhile and
    # made Ray's core worker abort the driver); none running at the signal goes on to finish
    script, marks = tmp_path / "slow_job.py", tmp_path / "marks"
    script.write_text(_SLOW_JOB)
    marks.mkdir()
    cmd = [sys.executable, str(script), "ray", "--job_id", "slow", "--data_root", str(tmp_path / "root")]
    cmd += ["--ray_address", cluster.address, "-i", *parquet_files]
    proc = subprocess.Popen(cmd, env=dict(os.environ, MARKS=str(marks)), stderr=subprocess.PIPE, text=True)

    def running():
        names = os.listdir(marks)
        return [n[len("start-") :] for n in names if n.startswith("start-") and f"end-{n[len('start-') :]}" not in names]

    try:
        end = time.monotonic() + 120
        while not running() and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.2)
        at_signal = running()
        assert at_signal, "no attempt started: " + (proc.stderr.read()[-3000:] if proc.poll() is not None else "")
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    pids = [int(name.rsplit(".", 1)[1]) for name in at_signal]
    end = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "an attempt outlived its driver"
    time.sleep(1)
    late = [n for n in os.listdir(marks) if n.startswith("end-") and float(open(marks / n).read()) > signalled]
    assert not late, f"attempts finished after the driver was stopped: {late}"
