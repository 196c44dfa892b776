"""Work stealing in the embedded backend: attempts queued behind a running one move to an idle
worker, each once, and only those the worker that held them never started. A cancelled queued
attempt is taken back the same way (its worker, and the attempt it runs, live on); a queued
attempt holds CPUs and memory in the scheduler's accounting from when it starts, wherever; and
it is never a straggler: an idle worker is for it, not for a speculative copy.

The queue backend's side (an executor gives such attempts back to ``queue/todo``) is tested in
``test_queue_backend.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import smallpond.execution.executors.local as local
from smallpond.execution.job import run_job
from smallpond.execution.planner import Planner
from smallpond.execution.scheduler import Scheduler, SchedulerListener, Speculation
from smallpond.execution.worker import Claims
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode
from tests.execution.queue_job import wait_for_ends

#: how long the slow task waits for the others at most: without stealing, the ones queued behind
#: it never end while it waits, so it gives up after this long (generous: on a loaded machine the
#: 23 others may take many seconds to run, and the test waits this long only when it fails)
WAIT_CAP = 60.0


def _mark(runtime_ctx, inputs, output_path, markers: str, n: int, slow: int) -> bool:
    """Leave ``start.{i}.{pid}``; partition ``slow`` waits until every other one has left its
    ``end`` marker (leaving ``saw.{i}.{pid}`` if they all did), the others sleep 10 ms."""
    index = runtime_ctx.task.partition_infos_as_dict["__data_partition__"]
    tag = f"{index}.{os.getpid()}"
    open(os.path.join(markers, f"start.{tag}"), "w").close()
    if index != slow:
        time.sleep(0.01)
    elif wait_for_ends(markers, n - 1, WAIT_CAP):
        open(os.path.join(markers, f"saw.{tag}"), "w").close()
    with open(os.path.join(output_path, "index.txt"), "w") as f:
        f.write(str(index))
    open(os.path.join(markers, f"end.{tag}"), "w").close()
    return True


def _hold(runtime_ctx, inputs, output_path, markers: str, held: int, release: str) -> bool:
    """Leave ``start.{i}.{pid}``; partition ``held`` then waits for the file ``release`` (at most
    :data:`WAIT_CAP` seconds); leave ``end.{i}.{pid}``."""
    index = runtime_ctx.task.partition_infos_as_dict["__data_partition__"]
    tag = f"{index}.{os.getpid()}"
    open(os.path.join(markers, f"start.{tag}"), "w").close()
    deadline = time.monotonic() + WAIT_CAP
    while index == held and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(os.path.join(output_path, "index.txt"), "w") as f:
        f.write(str(index))
    open(os.path.join(markers, f"end.{tag}"), "w").close()
    return True


def _plan(files, markers: str, n: int, slow: int, fn=None):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), n, partition_by_rows=True)
    fn = fn or functools.partial(_mark, markers=markers, n=n, slow=slow)
    node = PythonScriptNode(ctx, (parts,), process_func=fn)
    return LogicalPlan(ctx, node), node


def _marks(markers: str, kind: str):
    """(partition, pid) of the markers of ``kind``."""
    out = []
    for name in os.listdir(markers):
        k, index, pid = name.split(".")
        if k == kind:
            out.append((int(index), int(pid)))
    return out


def test_a_worker_gives_up_only_the_attempts_it_has_not_started():
    claims = Claims()
    assert claims.start(1)
    assert claims.take_back([1, 2, 3]) == [2, 3]  # 1 runs: it stays
    assert not claims.start(2) and not claims.start(3)  # skipped when read
    assert claims.start(4)  # sent after the take-back: runs
    assert claims.take_back([4, 5]) == [5]
    assert claims.take_back([5]) == []  # given up once only
    assert not claims.start(5)
    assert claims.take_back([5]) == []  # skipped: gone
    assert claims.start(6)


def test_attempts_queued_behind_a_long_one_run_on_the_idle_worker(parquet_files, make_rt, monkeypatch, tmp_path):
    """Every task may queue behind a running one, and partition 5 runs until all the others have
    ended: it can only see that if none of them waited behind it, i.e. if the ones queued on its
    worker moved to the other, idle worker. Each ran exactly once."""
    monkeypatch.setattr(local, "QUEUE_BEHIND_SECONDS", 1e9)  # whatever runs counts as short
    asked = []
    original = local.LocalExecutor._ask

    def ask(self, w, seqs, give_back=False):
        asked.extend(seqs)
        return original(self, w, seqs, give_back)

    monkeypatch.setattr(local.LocalExecutor, "_ask", ask)
    markers = tmp_path / "markers"
    markers.mkdir()
    n, slow = 24, 5
    plan, node = _plan(parquet_files, str(markers), n, slow)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert exec_plan.successful
    starts = _marks(str(markers), "start")
    assert sorted(i for i, _ in starts) == list(range(n))  # each ran once: none twice, none lost
    slow_pid = next(pid for i, pid in starts if i == slow)
    assert _marks(str(markers), "saw") == [(slow, slow_pid)], "tasks waited behind the slow one"
    assert asked  # attempts were taken back from a worker
    assert any(pid != slow_pid for _, pid in starts)


def _planned(rt, files, markers: str, n: int, slow: int, fn=None):
    plan, node = _plan(files, markers, n, slow, fn)
    planner = Planner(rt)
    tasks = planner.plan(node)
    upstream = sorted({k for t in tasks for k in t.input_keys})
    results = Scheduler(rt, None).run([planner.tasks[k] for k in upstream], planner.tasks)
    return [(t, [results[k] for k in t.input_keys]) for t in tasks]


def _poll_all(ex, count: int):
    done = []
    deadline = time.monotonic() + 120
    while len(done) < count and time.monotonic() < deadline:
        done.extend(ex.poll(1))
    return done


def test_queued_attempts_move_once_and_a_started_one_stays(parquet_files, make_rt, tmp_path):
    """A pool of two with one worker started: the slow task runs there with two queued behind it.
    The poll finds the second worker idle (not started yet) and moves them there; they end
    while the slow one still waits for them. A worker asked for the attempt it runs keeps it."""
    rt = make_rt()
    rt.initialize()
    markers = tmp_path / "markers"
    markers.mkdir()
    (slow, slow_in), *rest = _planned(rt, parquet_files, str(markers), 3, slow=0)
    ex = local.LocalExecutor(rt, 2)
    ex.start()
    try:
        ex.submit(slow, slow_in, 0, memory=256 << 20)
        for task, task_in in rest:  # nothing is known of the node: queued behind the least busy
            ex.submit(task, task_in, 0, memory=256 << 20, queue=True)
        (w0,) = ex.workers
        assert [e.key for e in w0.inflight] == [slow.key] + [t.key for t, _ in rest]
        # the slow one has started: asked for it, its worker keeps it (and the others stay queued)
        deadline = time.monotonic() + 30
        while not _marks(str(markers), "start") and time.monotonic() < deadline:
            time.sleep(0.01)
        ex._ask(w0, [w0.inflight[0].seq])
        done = _poll_all(ex, 3)
    finally:
        ex.shutdown()
    by_key = {c.key: c for c in done}
    assert sorted(by_key) == sorted([slow.key] + [t.key for t, _ in rest]) and len(done) == 3
    assert all(c.ok for c in done), [c.error for c in done]
    assert all(by_key[t.key].worker != by_key[slow.key].worker for t, _ in rest), by_key  # moved
    assert sorted(i for i, _ in _marks(str(markers), "start")) == [0, 1, 2]  # each ran once
    assert _marks(str(markers), "saw")  # the slow one saw them end while it ran


def _wait_for_marks(markers: str, kind: str, count: int):
    deadline = time.monotonic() + 60
    while len(_marks(markers, kind)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return _marks(markers, kind)


@contextlib.contextmanager
def _one_worker_with_two_queued(parquet_files, make_rt, tmp_path, held: int):
    """One worker running partition 0 with 1 and 2 queued behind it (partition ``held`` waits for
    the file ``release``); yields ``(executor, first task, [(task, inputs), ...] queued, pid,
    markers folder, release file)`` and shuts the executor down after."""
    rt = make_rt()
    rt.initialize()
    markers, release = tmp_path / "markers", tmp_path / "release"
    markers.mkdir()
    fn = functools.partial(_hold, markers=str(markers), held=held, release=str(release))
    (first, first_in), *rest = _planned(rt, parquet_files, str(markers), 3, 0, fn)
    ex = local.LocalExecutor(rt, 1)
    ex.start()
    try:
        ex.submit(first, first_in, 0, memory=256 << 20)
        for task, task_in in rest:
            ex.submit(task, task_in, 0, memory=256 << 20, queue=True)
        (w0,) = ex.workers
        yield ex, first, rest, w0.pid, markers, release
    finally:
        ex.shutdown()


def test_cancelling_a_queued_attempt_takes_it_back_and_spares_the_running_one(parquet_files, make_rt, tmp_path):
    """One worker runs partition 0 (it waits for a file) with 1 and 2 queued behind it; 2 is
    cancelled. The worker gives 2 up: 0 goes on in the same process, started once, and ends
    normally, 1 runs after it, 2 never runs and is not reported."""
    with _one_worker_with_two_queued(parquet_files, make_rt, tmp_path, held=0) as (ex, first, rest, pid, markers, release):
        assert _wait_for_marks(str(markers), "start", 1) == [(0, pid)]
        cancelled = rest[1][0]
        ex.cancel(cancelled.key, 0)
        done, deadline = [], time.monotonic() + 60
        while ex.workers[0].asks and time.monotonic() < deadline:  # until the worker's answer is read
            done += ex.poll(0.2)
        assert [w.pid for w in ex.workers] == [pid], "the worker was replaced"
        assert [e.key for e in ex.workers[0].inflight] == [first.key, rest[0][0].key]
        assert ex.attempt_places() == {
            (first.key, 0): (True, f"worker process {pid}"),
            (rest[0][0].key, 0): (False, f"queued behind {first.key} on worker process {pid}"),
        }
        release.touch()
        done += _poll_all(ex, 2)
        done += ex.poll(0.5)  # nothing more: the cancelled attempt has no outcome
    assert sorted(c.key for c in done) == sorted([first.key, rest[0][0].key]), done
    assert all(c.ok for c in done), [c.error for c in done]
    assert sorted(_marks(str(markers), "start")) == [(0, pid), (1, pid)]  # 0 once, in its first worker; 2 never
    assert sorted(_marks(str(markers), "end")) == [(0, pid), (1, pid)]


def test_a_cancelled_attempt_that_started_meanwhile_is_stopped_with_its_worker(parquet_files, make_rt, tmp_path):
    """Partitions 0 and 1 end at once and 2 (queued behind them) starts and waits for a file
    before the driver has read their outcomes. Cancelled then, 2 is not given up (it runs): the
    driver reads the outcomes the worker sent before (both, so neither runs again), then kills
    the worker; 2 is never reported."""
    with _one_worker_with_two_queued(parquet_files, make_rt, tmp_path, held=2) as (ex, first, rest, pid, markers, release):
        (w0,) = ex.workers
        assert sorted(_wait_for_marks(str(markers), "start", 3)) == [(0, pid), (1, pid), (2, pid)]
        assert len(w0.inflight) == 3  # no outcome read yet
        ex.cancel(rest[1][0].key, 0)
        done = _poll_all(ex, 2)
        done += ex.poll(0.5)
        assert w0.proc.poll() is not None and pid not in [w.pid for w in ex.workers]  # stopped
        assert all(not w.inflight for w in ex.workers)
    assert sorted((c.key, c.ok) for c in done) == sorted([(first.key, True), (rest[0][0].key, True)]), done
    assert sorted(_marks(str(markers), "end")) == [(0, pid), (1, pid)]  # each ran once; 2 never ended


class _Accounting(SchedulerListener):
    """Checks, at every round of the scheduler, that each attempt a worker runs holds its CPUs
    and memory in the scheduler's state, and that what is free is what the held ones leave."""

    def __init__(self, executor) -> None:
        self.executor = executor
        self.seen = set()  # the attempts seen running

    def on_tick(self, state, elapsed: float) -> None:
        places = self.executor.attempt_places()
        held = [r for attempts in state.running.values() for r in attempts.values() if r.held]
        cap = self.executor.capacity
        assert state.free_cpus == cap.num_cpus - sum(r.cpus for r in held)
        assert state.free_memory == cap.memory - sum(r.memory for r in held)
        for (key, attempt), (started, where) in places.items():
            r = state.running.get(key, {}).get(attempt)
            if r is None or not started:
                continue
            assert r.held and r.cpus >= 1 and r.memory > 0, f"{key} attempt {attempt} runs on {where} holding nothing"
            self.seen.add((key, attempt))


def test_an_attempt_holds_its_resources_wherever_it_runs_once_started(parquet_files, make_rt, monkeypatch, tmp_path):
    """The job of the stealing test, with a check at every round of the scheduler: an attempt
    sent queued (holding nothing while it waits) holds its CPUs and memory from when it runs,
    behind the one it waited for or on the worker it moved to; and all are freed at the end."""
    monkeypatch.setattr(local, "QUEUE_BEHIND_SECONDS", 1e9)
    moved, steal = [], local.LocalExecutor._took_back

    def took_back(self, w, out):  # records the attempts that move
        before = {(e.key, e.attempt) for e in w.inflight}
        steal(self, w, out)
        moved.extend(before - {(e.key, e.attempt) for e in w.inflight})

    monkeypatch.setattr(local.LocalExecutor, "_took_back", took_back)
    markers = tmp_path / "markers"
    markers.mkdir()
    n, slow = 24, 5
    plan, node = _plan(parquet_files, str(markers), n, slow)
    rt = make_rt()
    ex = local.LocalExecutor(rt, 2)
    check = _Accounting(ex)
    exec_plan = run_job(plan, rt, executor=ex, listeners=[check])
    assert exec_plan.successful
    assert moved, "no attempt moved to the idle worker"
    assert set(moved) & check.seen  # moved attempts ran while the check looked
    assert _marks(str(markers), "saw")


def test_a_queued_attempt_is_no_straggler_and_stealing_comes_before_copies(parquet_files, make_rt, monkeypatch, tmp_path):
    """The stealing job with speculation after 10 ms: the attempts queued behind the slow one
    (which waits for all the others to end) must move to the idle worker. A speculative copy
    there (of one of them, or of the slow one, which would wait too) would leave them waiting
    behind the slow one until it gives up. Every task other than the slow one runs once."""
    monkeypatch.setattr(local, "QUEUE_BEHIND_SECONDS", 1e9)
    markers = tmp_path / "markers"
    markers.mkdir()
    n, slow = 24, 5
    plan, node = _plan(parquet_files, str(markers), n, slow)
    spec = Speculation.of("enable", quantile=0.1, multiplier=1.0, min_runtime=0.01)
    exec_plan = run_job(plan, make_rt(), num_workers=2, speculation=spec)
    assert exec_plan.successful
    starts = _marks(str(markers), "start")
    assert sorted(i for i, _ in starts if i != slow) == sorted(set(range(n)) - {slow}), "a copy of a queued task ran"
    assert slow in {i for i, _ in _marks(str(markers), "saw")}, "tasks waited behind the slow one"


def test_stragglers_leave_out_attempts_that_wait_queued():
    """The policy on a state built by hand: a queued attempt not started is no straggler however
    long it waited, and holds nothing; started, it holds what it reserved and counts from then."""
    from types import SimpleNamespace

    from smallpond.execution.scheduler import SchedState, hold, release, reserve, stragglers, waiting_to_start

    st = SchedState(free_cpus=4, free_memory=400)
    for i in range(4):
        st.tasks[f"T-{i}"] = SimpleNamespace(node_id=1, exec_on_scheduler=False)
    st.runtimes[1] = [1.0, 1.0]
    reserve(st, "T-2", 0, 1, 100, since=100.0)
    reserve(st, "T-3", 0, 1, 100, since=100.0, held=False)
    spec = Speculation.of("enable", quantile=0.5, multiplier=3.0, min_runtime=2.0)
    assert (st.free_cpus, st.free_memory) == (3, 300) and waiting_to_start(st)
    assert stragglers(st, spec, now=110.0) == ["T-2"]
    assert hold(st, "T-3", 0, now=109.0) and not hold(st, "T-3", 0, now=109.5)  # held once
    assert (st.free_cpus, st.free_memory) == (2, 200) and not waiting_to_start(st)
    assert stragglers(st, spec, now=110.0) == ["T-2"]  # T-3 has run 1 s
    assert stragglers(st, spec, now=113.0) == ["T-2", "T-3"]
    assert release(st, "T-3", 0) and not release(st, "T-3", 0)
    reserve(st, "T-1", 0, 1, 100, since=100.0, held=False)
    assert release(st, "T-1", 0) and not hold(st, "T-1", 0, now=101.0)  # cancelled before it started
    assert (st.free_cpus, st.free_memory) == (3, 300)
