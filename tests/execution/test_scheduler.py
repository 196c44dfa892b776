"""smallpond.execution.scheduler: the state machine's retry, memory-boost and fail-fast policies.

The executor here is scripted: it answers each submitted attempt with a chosen outcome, so every
test is a fixed sequence of events, checked against the scheduler's state.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import pytest

from smallpond.common import GB, MB
from smallpond.errors import Decision, InjectedFault, JobFailed, OutOfMemory, TaskError, WorkerLost
from smallpond.execution.executors.base import Capacity, Completion, Executor
from smallpond.execution.planner import Planner
from smallpond.execution.scheduler import Running, SchedState, Scheduler, add_tasks, reserve, resize
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode


class ScriptedExecutor(Executor):
    """Completes each attempt at once with the next scripted outcome for its task (default: ok)."""

    capacity = Capacity(2, 2, 8 * GB)

    def __init__(self, script: Dict[str, List[Optional[BaseException]]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.submitted: List[tuple] = []  # (key, attempt, memory_limit)
        self.pending: List[Completion] = []

    def free_slots(self) -> int:
        return 2 - len(self.pending)

    def submit(self, task, inputs, attempt, *, memory, queue=False) -> None:
        self.submitted.append((task.key, attempt, memory))
        outcomes = self.script.get(task.key, [])
        error = outcomes.pop(0) if outcomes else None
        if error is None:
            self.pending.append(Completion(task.key, attempt, True, ParquetDataSet([], root_dir=None)))
        else:
            self.pending.append(Completion(task.key, attempt, False, None, error))

    def poll(self, timeout: float) -> List[Completion]:
        out, self.pending = self.pending, []
        return out

    def cancel(self, key: str, attempt=None) -> None:
        self.pending = [c for c in self.pending if c.key != key]

    def shutdown(self) -> None:
        pass


@pytest.fixture
def plan_tasks(make_rt, parquet_files):
    """An execution plan with two SQL tasks; returns (runtime ctx, exec plan, the SQL task keys)."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    node = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (src,), 2),), "select * from {0}", memory_limit=100 * MB)
    rt = make_rt()
    rt.initialize()
    exec_plan = Planner(rt).create_exec_plan(LogicalPlan(ctx, node))
    sql_keys = sorted(k for k in exec_plan.tasks if k.startswith("SqlEngineTask"))
    return rt, exec_plan, sql_keys


def run(rt, exec_plan, script, **kwargs):
    executor = ScriptedExecutor(script)
    scheduler = Scheduler(rt, executor, **kwargs)
    try:
        scheduler.run([exec_plan.root_task], exec_plan.tasks)
    finally:
        executor.shutdown()
    return scheduler, executor


def attempts_of(executor, key):
    return [(a, m) for k, a, m in executor.submitted if k == key]


def test_retryable_failures_are_retried_until_success(plan_tasks):
    rt, exec_plan, (a, b) = plan_tasks
    lost = WorkerLost("worker died")
    scheduler, executor = run(rt, exec_plan, {a: [InjectedFault("x"), lost]}, max_fail_count=3)
    st = scheduler.state
    assert [x for x, _ in attempts_of(executor, a)] == [0, 1, 2]
    assert [x for x, _ in attempts_of(executor, b)] == [0]
    assert st.attempts == {a: 2} and st.fail_counts == {a: 2}
    assert not st.failed and not st.running and not st.ready and not st.waiting
    assert {a, b} <= st.executed and exec_plan.root_task.key in st.done


def test_out_of_memory_doubles_the_memory_limit(plan_tasks):
    rt, exec_plan, (a, b) = plan_tasks
    scheduler, executor = run(rt, exec_plan, {a: [OutOfMemory("oom"), OutOfMemory("oom again")]})
    assert attempts_of(executor, a) == [(0, 100 * MB), (1, 200 * MB), (2, 400 * MB)]
    assert attempts_of(executor, b) == [(0, 100 * MB)]
    assert a in scheduler.state.done


def test_out_of_memory_reported_by_a_worker_as_task_error(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    err = TaskError("DuckDB ran out of memory", task_key=a, decision=Decision.RETRY_WITH_MORE_MEMORY, cause_type="OutOfMemory")
    _, executor = run(rt, exec_plan, {a: [err]})
    assert attempts_of(executor, a) == [(0, 100 * MB), (1, 200 * MB)]


def test_memory_boost_is_capped_by_the_executor(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    exec_plan.tasks[a].memory_limit = 6 * GB  # as the user asked it of the node
    _, executor = run(rt, exec_plan, {a: [OutOfMemory("oom")]})
    assert attempts_of(executor, a) == [(0, 6 * GB), (1, 8 * GB)]


def test_user_errors_fail_fast(plan_tasks):
    rt, exec_plan, (a, b) = plan_tasks
    err = TaskError("ParserException: syntax error", task_key=a, retryable=False, sql="selec 1")
    with pytest.raises(JobFailed) as info:
        run(rt, exec_plan, {a: [err]})
    assert info.value.errors == [err]
    assert "selec 1" in str(info.value)


def test_gives_up_after_max_fail_count(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    executor = ScriptedExecutor({a: [InjectedFault(str(i)) for i in range(10)]})
    scheduler = Scheduler(rt, executor, max_fail_count=3)
    with pytest.raises(JobFailed):
        scheduler.run([exec_plan.root_task], exec_plan.tasks)
    assert [x for x, _ in attempts_of(executor, a)] == [0, 1, 2]
    assert scheduler.state.fail_counts[a] == 3
    assert set(scheduler.state.failed) == {a}
    assert not scheduler.state.running


def test_gives_up_after_max_retry_count(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    executor = ScriptedExecutor({a: [InjectedFault(str(i)) for i in range(10)]})
    scheduler = Scheduler(rt, executor, max_retry_count=1, max_fail_count=10)
    with pytest.raises(JobFailed):
        scheduler.run([exec_plan.root_task], exec_plan.tasks)
    assert [x for x, _ in attempts_of(executor, a)] == [0, 1]


def test_completions_of_superseded_attempts_are_ignored(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    executor = ScriptedExecutor({})
    scheduler = Scheduler(rt, executor)
    add_tasks(scheduler.state, rt, [exec_plan.root_task], exec_plan.tasks)
    reserve(scheduler.state, a, 1, 1, 100 * MB)
    scheduler._on_completion(Completion(a, 0, False, None, InjectedFault("late")))
    assert scheduler.state.running == {a: {1: Running(1, 100 * MB, 0.0, False)}} and not scheduler.state.fail_counts


def test_duckdb_out_of_memory_is_retried_with_more_memory(make_rt, parquet_files):
    """End to end: a query that needs ~100 MB, given 64 MB, fails with OOM once and then succeeds."""
    import glob
    import os

    from smallpond.execution.job import run_job

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files[:1]))
    query = "select len(l) as n, (select count(*) from {0}) as rows_in from (select list(i) as l from range(3000000) t(i))"
    node = SqlEngineNode(ctx, (src,), query, memory_limit=64 * MB)
    rt = make_rt()
    result = run_job(LogicalPlan(ctx, node), rt, num_workers=1)
    assert result.final_output.to_arrow_table().to_pylist() == [{"n": 3000000, "rows_in": 10}]
    from smallpond.execution.attempt import logged_attempts

    assert [a for k, a in logged_attempts(rt.log_root) if k.startswith("SqlEngineTask-")] == [0, 1]
    (failed,) = glob.glob(os.path.join(rt.log_root, "tasks", "SqlEngineTask-*.0.log"))  # a failure has its own log
    with open(failed) as f:
        assert "Out of Memory" in f.read()


class GrowingExecutor(ScriptedExecutor):
    """A backend whose nodes join while the job runs: its capacity grows after the first submit.

    Machines hold at most 3 GB each (``attempt_limits``), while the whole offers 8 GB and then 16 GB.
    """

    capacity = Capacity(2, 2, 8 * GB)

    def attempt_limits(self):
        return 2, 3 * GB

    def submit(self, task, inputs, attempt, *, memory, queue=False) -> None:
        super().submit(task, inputs, attempt, memory=memory, queue=queue)
        self.capacity = Capacity(4, 4, 16 * GB)


def test_resize_moves_what_is_free_by_the_change():
    st = SchedState(free_cpus=1, free_memory=2 * GB)
    resize(st, Capacity(2, 2, 8 * GB), Capacity(4, 6, 16 * GB))
    assert (st.free_cpus, st.free_memory) == (5, 10 * GB)


def test_the_scheduler_follows_a_changing_capacity(plan_tasks):
    rt, exec_plan, _ = plan_tasks
    executor = GrowingExecutor({})
    scheduler = Scheduler(rt, executor)
    scheduler.run([exec_plan.root_task], exec_plan.tasks)
    assert scheduler.capacity == Capacity(4, 4, 16 * GB)
    assert (scheduler.state.free_cpus, scheduler.state.free_memory) == (4, 16 * GB)


def test_memory_boost_is_capped_by_the_largest_attempt_not_the_whole_cluster(plan_tasks):
    rt, exec_plan, (a, _) = plan_tasks
    exec_plan.tasks[a].memory_limit = 2 * GB
    executor = GrowingExecutor({a: [OutOfMemory("oom"), OutOfMemory("oom")]})
    Scheduler(rt, executor).run([exec_plan.root_task], exec_plan.tasks)
    assert attempts_of(executor, a) == [(0, 2 * GB), (1, 3 * GB), (2, 3 * GB)]


@pytest.fixture
def chain_tasks(make_rt, parquet_files):
    """source → 2 partitions → SQL A → Arrow B (not fused into A); returns (runtime ctx, exec plan, A keys, B keys)."""
    from smallpond.logical.node import ArrowComputeNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    a = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (src,), 2),), "select * from {0}")
    b = ArrowComputeNode(ctx, (a,), process_func=_first_table)
    rt = make_rt()
    rt.initialize()
    exec_plan = Planner(rt).create_exec_plan(LogicalPlan(ctx, b))
    a_keys = sorted(k for k in exec_plan.tasks if k.startswith("SqlEngineTask"))
    b_keys = sorted(k for k in exec_plan.tasks if k.startswith("ArrowComputeTask"))
    assert len(a_keys) == len(b_keys) == 2
    return rt, exec_plan, a_keys, b_keys


def _first_table(runtime_ctx, tables):
    return tables[0]


def unreadable(rt, producer_key):
    path = f"{rt.staging_root}/SqlEngineNode.000003/{producer_key}/x.parquet"
    return TaskError("InvalidInputException: No magic bytes", task_key="B", retryable=False, corrupt_inputs=[path])


def test_unreadable_input_recomputes_its_producer_once(chain_tasks):
    rt, exec_plan, (a0, a1), (b0, b1) = chain_tasks
    scheduler, ex = run(rt, exec_plan, {b0: [unreadable(rt, a0)]})
    assert [a for a, _ in attempts_of(ex, a0)] == [0, 1], "the producer ran again, with a new attempt number"
    assert [a for a, _ in attempts_of(ex, b0)] == [0, 1]
    assert [a for a, _ in attempts_of(ex, a1)] == [0] and [a for a, _ in attempts_of(ex, b1)] == [0]
    assert scheduler.state.recomputed == {a0}
    assert scheduler.state.fail_counts.get(b0, 0) == 0, "the consumer's attempt is not counted as its failure"


def test_unreadable_again_after_recomputing_is_reported(chain_tasks):
    rt, exec_plan, (a0, _), (b0, _) = chain_tasks
    with pytest.raises(JobFailed, match="No magic bytes"):
        run(rt, exec_plan, {b0: [unreadable(rt, a0), unreadable(rt, a0)]})


def test_a_task_bigger_than_the_free_cpus_runs_alone(plan_tasks):
    """Executors joined since planning are smaller than the task asked for: it runs once nothing
    else does, instead of the scheduler stalling (seen with one 1-CPU queue executor joined)."""
    rt, exec_plan, (a, b) = plan_tasks
    exec_plan.tasks[a].cpu_limit = 3  # more than the executor's 2 CPUs
    scheduler, executor = run(rt, exec_plan, {})
    assert {a, b} <= scheduler.state.executed
    assert scheduler.state.free_cpus == 2  # all given back


def test_a_large_stage_is_sent_before_every_key_is_computed(make_rt, tmp_path, monkeypatch):
    """With a task cache, the tasks of a stage that become ready at once are looked up a round at
    a time (``LOOKUPS_PER_ROUND``): the first is sent after about one round of keys, not after
    the keys of the whole stage, and every task is still looked up before it is sent."""
    from benchmarks.overhead import make_input, overhead_plan
    from smallpond.execution import scheduler as scheduler_module
    from smallpond.execution.cache_keys import JobCache

    n = 4 * scheduler_module.LOOKUPS_PER_ROUND  # tiny Python tasks, one a row
    rt = make_rt(task_cache=str(tmp_path / "cache"))
    rt.initialize()
    exec_plan = Planner(rt).create_exec_plan(overhead_plan(make_input(str(tmp_path), n), n, "python"))

    looked_up: List[str] = []
    original_look_up = Scheduler._look_up
    monkeypatch.setattr(Scheduler, "_look_up", lambda self, task: looked_up.append(task.key) or original_look_up(self, task))
    keys_at_send: List[int] = []

    class Recording(ScriptedExecutor):
        """Room for the whole stage at once: the scheduler sends more tasks in a round than it
        looks up in one, so most of them are looked up as they are sent."""

        capacity = Capacity(n, n, 64 * GB)

        def free_slots(self) -> int:
            return n - len(self.pending)

        def submit(self, task, inputs, attempt, *, memory, queue=False) -> None:
            assert task.key in looked_up or not JobCache.cacheable(task), f"{task.key} sent without a lookup"
            keys_at_send.append(len(looked_up))
            super().submit(task, inputs, attempt, memory=memory, queue=queue)

    executor = Recording({})
    Scheduler(rt, executor, cache=JobCache(rt)).run([exec_plan.root_task], exec_plan.tasks)
    script_tasks = [k for k in exec_plan.tasks if k.startswith("PythonScriptTask")]
    assert sorted(k for k, _, _ in executor.submitted if k.startswith("PythonScriptTask")) == sorted(script_tasks)
    assert len(script_tasks) == n
    assert sorted(k for k in looked_up if k.startswith("PythonScriptTask")) == sorted(script_tasks)  # each once
    assert keys_at_send[0] <= scheduler_module.LOOKUPS_PER_ROUND + 1 < n
    assert max(keys_at_send[:n]) > scheduler_module.LOOKUPS_PER_ROUND + 1  # some looked up as they were sent


def _shuffle_plan(make_rt, parquet_files, producers: int, consumers: int):
    """A runtime context and the tasks of ``producers`` partitions shuffled into ``consumers``
    (each consumer depends on every producer: ``producers * consumers`` dependency edges)."""
    from smallpond.logical.node import HashPartitionNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    parts = DataSetPartitionNode(ctx, (src,), producers)
    shuffled = HashPartitionNode(ctx, (parts,), consumers, hash_columns=["id"])
    root = SqlEngineNode(ctx, (shuffled,), "select * from {0}")
    rt = make_rt()
    return rt, Planner(rt).create_exec_plan(LogicalPlan(ctx, root))


def _own_c_calls(fn, *args) -> int:
    """How many built-in functions and methods ``fn(*args)`` calls from its own body (not from
    the functions it calls): a count of its own work, not a time."""
    import sys

    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "c_call" and frame.f_code is fn.__code__:
            count += 1

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return count


def test_a_new_jobs_tasks_are_added_without_walking_their_edges_again(make_rt, parquet_files):
    """A new job (no commit record, no task done) needs every task its targets reach, which the
    topological order lists already: add_tasks does not walk the dependency edges once more to
    find them. That walk popped every edge off a stack (a built-in call per edge, ~3% of the
    scheduler's time per task on a 64-producer shuffle in benchmarks/scale.py). What add_tasks
    itself must do per edge is index the consumers (a setdefault and an append)."""
    producers, consumers = 40, 60
    rt, exec_plan = _shuffle_plan(make_rt, parquet_files, producers, consumers)
    scheduler = Scheduler(rt, ScriptedExecutor({}))
    calls = _own_c_calls(add_tasks, scheduler.state, rt, [exec_plan.root_task], exec_plan.tasks)
    edges = sum(len(t.input_keys) for t in exec_plan.tasks.values())
    assert edges >= producers * consumers > 10 * len(exec_plan.tasks)
    assert calls <= 2.5 * edges, (calls, edges, len(exec_plan.tasks))
    # the same tasks are added as by the walk: all of them, none resumed
    assert set(scheduler.state.tasks) == set(exec_plan.tasks) and not scheduler.state.resumed
    queued = set(scheduler.state.waiting) | {k for _, _, k in scheduler.state.ready} | set(scheduler.state.ready_inline)
    assert queued == set(exec_plan.tasks)


def test_listeners_empty_methods_are_not_called(plan_tasks):
    """The scheduler calls the event methods a listener defines (in its class, or set on the
    instance), and skips :class:`SchedulerListener`'s empty ones: several Python calls fewer per
    task, for events every listener sees but few act on."""
    import sys

    from smallpond.execution.sched_state import SchedulerListener

    rt, exec_plan, _ = plan_tasks
    seen: List[str] = []

    class Completions(SchedulerListener):
        def on_completion(self, task, completion, decision) -> None:
            seen.append(task.key)

    ticks = SchedulerListener()
    ticks.on_tick = lambda state, elapsed: seen.append("tick")  # on the instance, not its class
    empty = {f.__code__ for f in vars(SchedulerListener).values() if callable(f)}
    called = 0

    def profile(frame, event, arg):
        nonlocal called
        if event == "call" and frame.f_code in empty:
            called += 1

    scheduler = Scheduler(rt, ScriptedExecutor({}), listeners=[Completions(), ticks, SchedulerListener()])
    sys.setprofile(profile)
    try:
        scheduler.run([exec_plan.root_task], exec_plan.tasks)
    finally:
        sys.setprofile(None)
    assert called == 0
    submitted = [k for k, _, _ in scheduler.executor.submitted]
    assert sorted(k for k in seen if k != "tick") == sorted(submitted) and len(submitted) >= 2
    assert "tick" in seen
