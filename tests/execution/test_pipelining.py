"""Short tasks are queued on busy workers (pipelining); a worker's queue survives its death."""

from __future__ import annotations

import os

import pytest

import smallpond.execution.executors.local as local
from smallpond.execution.commit import read_commit
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    LogicalPlan,
    PythonScriptNode,
    SqlEngineNode,
)


def _note_partition(runtime_ctx, inputs, output_path, crash_on=None):
    index = runtime_ctx.task.partition_infos_as_dict["__data_partition__"]
    if index == crash_on and runtime_ctx.task.retry_count == 0:
        os._exit(3)  # the worker dies with tasks queued behind this one
    with open(os.path.join(output_path, "index.txt"), "w") as f:
        f.write(str(index))
    return True


def _plan(files, n, crash_on=None, memory_limit=None):
    import functools

    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), n, partition_by_rows=True)
    node = PythonScriptNode(
        ctx, (parts,), process_func=functools.partial(_note_partition, crash_on=crash_on), memory_limit=memory_limit
    )
    return LogicalPlan(ctx, node), node


def _indexes(exec_plan, node):
    out = []
    for t in exec_plan.tasks.values():
        if t.node_id == int(node.id):
            for path in exec_plan.results[t.key].resolved_paths:
                out.append(int(open(path).read()))
    return sorted(out)


@pytest.fixture
def queue_everything(monkeypatch):
    """Let every task queue behind a running one, however long, and count queued submissions."""
    queued = []
    original = local.LocalExecutor.submit

    def submit(self, task, inputs, attempt, *, memory, queue=False):
        if queue:
            queued.append(task.key)
        return original(self, task, inputs, attempt, memory=memory, queue=queue)

    monkeypatch.setattr(local, "QUEUE_BEHIND_SECONDS", 1e9)
    monkeypatch.setattr(local.LocalExecutor, "submit", submit)
    return queued


def test_tiny_tasks_are_queued_behind_running_ones(parquet_files, make_rt, queue_everything):
    plan, node = _plan(parquet_files, 30)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert _indexes(exec_plan, node) == list(range(30))
    assert len(queue_everything) > 0  # after the first tasks of the node, workers got a second one


def test_a_worker_holds_at_most_queue_depth_attempts(parquet_files, make_rt, queue_everything, monkeypatch):
    """Workers are kept fed (more than one attempt queued when the scheduler has them), but never
    hold more than QUEUE_DEPTH attempts: a long queue would keep tasks from idle workers."""
    most = []
    original = local.LocalExecutor._send

    def send(self, w, entry):
        ok = original(self, w, entry)
        most.append(len(w.inflight))
        return ok

    monkeypatch.setattr(local.LocalExecutor, "_send", send)
    plan, node = _plan(parquet_files, 60)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert _indexes(exec_plan, node) == list(range(60))
    assert max(most) == local.QUEUE_DEPTH


def test_tasks_queued_on_a_dying_worker_run_on_its_replacement(parquet_files, make_rt, queue_everything):
    plan, node = _plan(parquet_files, 12, crash_on=5)
    rt = make_rt()
    exec_plan = run_job(plan, rt, num_workers=1)
    assert _indexes(exec_plan, node) == list(range(12))
    attempts = {
        t.partition_infos_as_dict["__data_partition__"]: read_commit(rt, t)["attempt"]
        for t in exec_plan.tasks.values()
        if t.node_id == int(node.id)
    }
    # only the task that killed its worker was retried; the ones queued behind it were not charged
    assert attempts == {i: (1 if i == 5 else 0) for i in range(12)}
    assert queue_everything


def test_tasks_needing_more_than_a_workers_share_of_memory_are_not_queued(parquet_files, make_rt, queue_everything):
    import psutil

    plan, node = _plan(parquet_files, 8, memory_limit=int(psutil.virtual_memory().total * 0.9))
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert _indexes(exec_plan, node) == list(range(8))
    assert queue_everything == []  # they wait for memory, as without pipelining


def test_a_queued_submit_finds_a_worker_after_its_short_task_stopped_being_short(parquet_files, make_rt):
    """The scheduler saw a queue slot; by the time it submits, no worker counts as short any more
    (their task ran past the mark, or nothing is known of the node): it queues anyway."""
    plan, node = _plan(parquet_files, 2)
    rt = make_rt()
    rt.initialize()
    from smallpond.execution.planner import Planner
    from smallpond.execution.scheduler import Scheduler

    planner = Planner(rt)
    tasks = planner.plan(node)
    upstream = sorted({k for t in tasks for k in t.input_keys})
    results = Scheduler(rt, None).run([planner.tasks[k] for k in upstream], planner.tasks)
    ex = local.LocalExecutor(rt, 1)
    ex.start()
    try:
        ex.submit(tasks[0], [results[k] for k in tasks[0].input_keys], 0, memory=256 << 20)
        assert ex.queue_slots() == 0  # nothing is known of this node: not short
        ex.submit(tasks[1], [results[k] for k in tasks[1].input_keys], 0, memory=256 << 20, queue=True)
        done = []
        while len(done) < 2:
            done.extend(ex.poll(5))
    finally:
        ex.shutdown()
    assert sorted((c.key, c.ok) for c in done) == sorted((t.key, True) for t in tasks)


def _spawn_counter(monkeypatch):
    spawned = []
    original = local.LocalExecutor._spawn

    def spawn(self):
        w = original(self)
        spawned.append(w.index)
        return w

    monkeypatch.setattr(local.LocalExecutor, "_spawn", spawn)
    return spawned


def test_a_job_that_never_runs_two_tasks_at_once_starts_one_worker(parquet_files, make_rt, monkeypatch):
    # a one-partition plan on a pool of 4: the other three interpreters would only compete with
    # the scheduler and the one worker for the cores
    spawned = _spawn_counter(monkeypatch)
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select count(*) as n from {0}")
    exec_plan = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=4)
    assert exec_plan.successful
    assert spawned == [0]


def test_workers_are_started_as_tasks_find_the_started_ones_busy(parquet_files, make_rt, monkeypatch):
    spawned = _spawn_counter(monkeypatch)
    plan, node = _plan(parquet_files, 6)
    exec_plan = run_job(plan, make_rt(), num_workers=3)
    assert _indexes(exec_plan, node) == list(range(6))
    assert spawned == [0, 1, 2]  # never more than the pool's size
