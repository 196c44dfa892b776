"""Work stealing in the embedded backend: attempts queued behind a running one move to an idle
worker, each once, and only those the worker that held them never started.

The queue backend's side (an executor gives such attempts back to ``queue/todo``) is tested in
``test_queue_backend.py``.
"""

from __future__ import annotations

import functools
import os
import time

import smallpond.execution.executors.local as local
from smallpond.execution.job import run_job
from smallpond.execution.planner import Planner
from smallpond.execution.scheduler import Scheduler
from smallpond.execution.worker import Claims
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode
from tests.execution.queue_job import wait_for_ends

#: how long the slow task waits for the others at most: without stealing, the ones queued behind
#: it never end while it waits, so it gives up after this long
WAIT_CAP = 20.0


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


def _plan(files, markers: str, n: int, slow: int):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), n, partition_by_rows=True)
    node = PythonScriptNode(ctx, (parts,), process_func=functools.partial(_mark, markers=markers, n=n, slow=slow))
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


def _planned(rt, files, markers: str, n: int, slow: int):
    plan, node = _plan(files, markers, n, slow)
    planner = Planner(rt)
    tasks = planner.plan(node)
    upstream = sorted({k for t in tasks for k in t.input_keys})
    results = Scheduler(rt, None).run([planner.tasks[k] for k in upstream], planner.tasks)
    return [(t, [results[k] for k in t.input_keys]) for t in tasks]


def _poll_all(ex, count: int):
    done = []
    deadline = time.monotonic() + 60
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
