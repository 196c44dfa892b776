"""The scheduler: one event loop around an explicit state.

:class:`SchedState` is the scheduler's whole state, and it changes only through the functions of
this module (``add_tasks``, ``finish_task``, ``fail_attempt``, ...), as in dask's local
scheduler. Per task key:

* ``waiting``  — some input is not done yet (the keys still missing);
* ``ready``    — inputs done; a heap ordered by critical-path length (longest chain first), then id;
* ``running``  — submitted attempts and what each reserved: ``{key: {attempt: (cpus, memory)}}``;
* ``done``     — output DataSet known (from this run, an earlier computation of this session, a
  matching commit record on disk: that is resume, or an entry of the task cache);
* ``failed``   — gave up, with its TaskError;
* ``fresh``    — tasks made ready since the last round, which the task cache looks up once;
* ``cache_wait`` — tasks another job is computing right now (it holds their key's claim in the
  task cache): when to look again for their entry.

Besides: ``attempts`` (the last attempt number given out), ``fail_counts``, ``memory`` (the
effective memory limit of each task's next attempt, raised after out-of-memory failures),
``recomputed`` (done tasks whose output turned out unreadable and that were run again, once:
:func:`recompute_producers`),
``free_cpus`` / ``free_memory`` (what the executor offers minus what running attempts reserved;
the executor's offer is read every round and may change, e.g. when Ray nodes join or leave),
``resumed`` / ``executed`` / ``reused`` (for the summary: from the job's own commit records, run
here, or taken from the task cache) and ``consumers`` (reverse edges).

The task cache (:mod:`smallpond.execution.cache`), when the job has one: a ready task's key is
computed from its inputs; a verified entry is linked in and the task is done (``reused``);
otherwise the task's key is claimed before it is submitted, and a task whose key another live job
holds waits in ``cache_wait`` (the loop keeps running everything else) until that job's entry
appears, or its claim goes away and this job computes the task itself.

Speculation (:class:`Speculation`, Spark's knobs): a task still running long after most of its
node's tasks finished gets a second attempt on an idle worker; the first attempt to commit wins
(``write_commit`` publishes records exclusively) and the others are cancelled.

Policies, in :func:`fail_attempt`: the error is classified once by
:func:`smallpond.errors.classify` into retry / fail / retry with more memory. A retried task gets
the next attempt number until it has failed ``max_fail_count`` times or used ``max_retry_count``
retries; more memory means twice the last limit, capped by the executor's memory. Metadata-only
tasks run inline here; everything else goes to the executor.

Elastic threads (:func:`elastic_threads`, opt-in: ``elastic_threads=True``): when fewer tasks are
runnable than CPUs are free, a task whose rows are ordered by its SQL (``Task.may_use_more_threads``:
the outermost query ends in ORDER BY) is sent with a share of the free CPUs as its threads and
reserves them; the attempt's copy of the task carries ``threads``, the planned task does not. Off by
default because rows with equal sort keys may come out in another order with more threads, and
the number of threads would follow timing: outputs would no longer be byte-reproducible.

Observers (progress bars, the event log behind the run report, the end-of-job summary) are
:class:`SchedulerListener` objects: they see every event and never change the state.
"""

from __future__ import annotations

import copy
import heapq
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Deque, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from smallpond.common import DEFAULT_MAX_FAIL_COUNT, DEFAULT_MAX_RETRY_COUNT, logger
from smallpond.errors import Decision, JobFailed, TaskError, classify
from smallpond.execution.attempt import execute_attempt, read_commit, run_inline, to_task_error
from smallpond.execution.executors.base import Capacity, Completion, Executor
from smallpond.execution.runtime import RuntimeContext, default_memory_limit
from smallpond.execution.task import Task
from smallpond.logical.graph import critical_path_lengths, topological_order

if TYPE_CHECKING:
    from smallpond.execution.cache_keys import JobCache

#: how often a task waiting for another job's cache entry looks again (seconds)
CACHE_WAIT_RECHECK = 0.25


class Running(NamedTuple):
    """A submitted attempt: what it reserved, when it was sent, and whether it is a speculative copy."""

    cpus: int
    memory: int
    since: float = 0.0
    speculative: bool = False


@dataclass(frozen=True)
class Speculation:
    """Spark-style speculative execution: a straggler gets a second copy on another worker.

    A running task is a straggler when at least ``quantile`` of its node's tasks have finished and
    it has run longer than ``multiplier`` times their median runtime and at least ``min_runtime``
    seconds. The copy runs only on a worker that is otherwise idle; the first attempt to commit
    wins (the commit record decides) and the other is cancelled, its files removed.
    """

    enabled: bool = False
    quantile: float = 0.75
    multiplier: float = 1.5
    min_runtime: float = 60.0

    MODES = ("disable", "enable", "aggressive")

    @staticmethod
    def of(mode=None, *, quantile=None, multiplier=None, min_runtime=None) -> "Speculation":
        """From upstream's ``--speculative_exec`` modes (or a bool), with optional knobs."""
        if isinstance(mode, Speculation):
            base = mode
        elif mode in (None, False, "disable", "disabled", "off"):
            base = Speculation(False)
        elif mode in (True, "enable", "enabled", "on"):
            base = Speculation(True)
        elif mode == "aggressive":
            base = Speculation(True, quantile=0.5, multiplier=1.25, min_runtime=5.0)
        else:
            from smallpond.errors import ParameterError

            raise ParameterError(f"speculative execution must be one of {list(Speculation.MODES)} or a bool, got {mode!r}")
        knobs = {"quantile": quantile, "multiplier": multiplier, "min_runtime": min_runtime}
        spec = Speculation(base.enabled, **{k: (v if v is not None else getattr(base, k)) for k, v in knobs.items()})
        if not 0 < spec.quantile <= 1 or spec.multiplier < 1 or spec.min_runtime < 0:
            from smallpond.errors import ParameterError

            raise ParameterError(f"speculation knobs out of range: {spec} (0 < quantile <= 1, multiplier >= 1, min_runtime >= 0)")
        return spec


@dataclass
class SchedState:
    tasks: Dict[str, Task] = field(default_factory=dict)
    waiting: Dict[str, Set[str]] = field(default_factory=dict)
    ready: List[tuple] = field(default_factory=list)
    ready_inline: Deque[str] = field(default_factory=deque)  # metadata-only tasks: they never wait for workers
    fresh: List[str] = field(default_factory=list)  # tasks made ready since the task cache last looked
    running: Dict[str, Dict[int, Running]] = field(default_factory=dict)
    done: Dict[str, object] = field(default_factory=dict)
    failed: Dict[str, TaskError] = field(default_factory=dict)
    attempts: Dict[str, int] = field(default_factory=dict)
    fail_counts: Dict[str, int] = field(default_factory=dict)
    consumers: Dict[str, List[str]] = field(default_factory=dict)
    priority: Dict[str, float] = field(default_factory=dict)
    resumed: Set[str] = field(default_factory=set)
    executed: Set[str] = field(default_factory=set)
    reused: Set[str] = field(default_factory=set)
    cache_wait: Dict[str, float] = field(default_factory=dict)
    memory: Dict[str, int] = field(default_factory=dict)
    recomputed: Set[str] = field(default_factory=set)
    runtimes: Dict[int, List[float]] = field(default_factory=dict)  # node id -> seconds of its finished attempts
    free_cpus: int = 0
    free_memory: int = 0


class SchedulerListener:
    """Sees what the scheduler does; every method is optional. Listeners never change the state."""

    def on_start(self, state: SchedState) -> None:
        pass

    def on_resumed(self, task: Task, record: dict) -> None:
        pass

    def on_reused(self, task: Task, entry) -> None:
        """The task's output was taken from the task cache (``entry``: a
        :class:`~smallpond.execution.cache.Entry`; ``entry.job`` / ``entry.task`` wrote it)."""

    def on_submit(self, task: Task, attempt: int, memory: int) -> None:
        pass

    def on_inline(self, task: Task, ok: bool, elapsed: float) -> None:
        pass

    def on_completion(self, task: Task, completion: Completion, decision: Optional[Decision]) -> None:
        """An attempt ended; ``decision`` is None on success, else what was decided about it."""

    def on_cancelled(self, task: Task, attempt: int, reason: str) -> None:
        """An attempt still running was stopped (a speculative copy that lost to another attempt)."""

    def on_tick(self, state: SchedState, elapsed: float) -> None:
        pass

    def on_end(self, state: SchedState, ok: bool) -> None:
        pass


# -- state transitions (the only code that changes a SchedState) ---------------------------------


def new_state(capacity: Capacity) -> SchedState:
    return SchedState(free_cpus=capacity.num_cpus, free_memory=capacity.memory)


def add_tasks(
    state: SchedState, rt: RuntimeContext, targets: Sequence[Task], all_tasks: Dict[str, Task]
) -> Tuple[List[str], Dict[str, dict]]:
    """Add ``targets`` and what they need; tasks with a matching commit record are done at once.

    Returns (the new keys, the commit records of the resumed ones).
    """
    order = topological_order([t.key for t in targets], lambda k: all_tasks[k].input_keys)
    new = [k for k in order if k not in state.tasks]
    for k in new:
        state.tasks[k] = all_tasks[k]
    lengths = critical_path_lengths(order, lambda k: all_tasks[k].input_keys, lambda k: all_tasks[k].estimated_cost())
    state.priority.update(lengths)
    for k in new:
        for d in all_tasks[k].input_keys:
            state.consumers.setdefault(d, []).append(k)
    resumed: Dict[str, dict] = {}
    for k in new:
        t = state.tasks[k]
        if not t.exec_on_scheduler:
            # the fingerprint covers the inputs' identity, so a matching record is reusable
            # even when its (metadata-only) inputs are recomputed
            record = read_commit(rt, t)
            if record is not None:
                state.done[k] = record["dataset"]
                state.resumed.add(k)
                resumed[k] = record
                continue
        pending = {d for d in t.input_keys if d not in state.done}
        state.waiting[k] = pending
        if not pending:
            make_ready(state, k)
    return new, resumed


def make_ready(state: SchedState, key: str) -> None:
    state.waiting.pop(key, None)
    task = state.tasks[key]
    if task.exec_on_scheduler:
        state.ready_inline.append(key)
    else:
        heapq.heappush(state.ready, (-state.priority.get(key, 0.0), int(task.id), key))
        state.fresh.append(key)


def reserve(
    state: SchedState, key: str, attempt: int, cpus: int, memory: int, since: float = 0.0, speculative: bool = False
) -> None:
    state.running.setdefault(key, {})[attempt] = Running(cpus, memory, since, speculative)
    state.free_cpus -= cpus
    state.free_memory -= memory


def release(state: SchedState, key: str, attempt: int) -> bool:
    """Give back what an attempt reserved. False if it was not running (cancelled, superseded)."""
    attempts = state.running.get(key)
    if not attempts or attempt not in attempts:
        return False
    cpus, memory = attempts.pop(attempt)[:2]
    if not attempts:
        del state.running[key]
    state.free_cpus += cpus
    state.free_memory += memory
    return True


#: the least memory an elastic thread brings along: DuckDB's sorts and hash tables hold buffers per
#: thread, and a sort of twice a 64 MiB limit that spills fine on one thread runs out of memory on
#: two (tests/e2e/test_sort_spill.py)
ELASTIC_MEMORY_PER_THREAD = 256 << 20


def elastic_threads(cpu_limit: int, free_cpus: int, runnable: int, most: int, memory: int) -> int:
    """CPUs (DuckDB threads) for a task that may use more than its ``cpu_limit``: an equal share
    of the free CPUs among the ``runnable`` tasks (this one included), at most ``most`` (one
    machine's CPUs) and at most one per :data:`ELASTIC_MEMORY_PER_THREAD` of the attempt's
    ``memory``, never less than ``cpu_limit``. A stage with fewer runnable tasks than free CPUs
    gives each more threads; one with many tasks gives each its own ``cpu_limit``, so the CPUs
    reserved never exceed the CPUs there are."""
    share = free_cpus // max(1, runnable)
    return max(cpu_limit, min(share, most, memory // ELASTIC_MEMORY_PER_THREAD))


def record_runtime(state: SchedState, key: str, seconds: float) -> None:
    state.runtimes.setdefault(state.tasks[key].node_id, []).append(seconds)


def stragglers(state: SchedState, spec: Speculation, now: float) -> List[str]:
    """Running tasks with a single attempt that has run too long for its node (see Speculation)."""
    if not spec.enabled or not state.running:
        return []
    totals: Dict[int, int] = {}
    for t in state.tasks.values():
        if not t.exec_on_scheduler:
            totals[t.node_id] = totals.get(t.node_id, 0) + 1
    out = []
    medians: Dict[int, Optional[float]] = {}
    for key, attempts in state.running.items():
        if len(attempts) != 1 or getattr(state.tasks[key], "commits_on_publication", False):
            continue  # (a sink stages its result in one place per task: never two copies at once)
        node_id = state.tasks[key].node_id
        if node_id not in medians:
            times = state.runtimes.get(node_id) or []
            enough = times and len(times) >= spec.quantile * totals.get(node_id, 1)
            medians[node_id] = statistics.median(times) if enough else None
        median = medians[node_id]
        (running,) = attempts.values()
        if median is not None and now - running.since > max(spec.min_runtime, spec.multiplier * median):
            out.append(key)
    return sorted(out, key=lambda k: next(iter(state.running[k].values())).since)


def finish_task(state: SchedState, key: str, dataset, *, reused: bool = False) -> None:
    """The task's output is known: run here, or (``reused``) taken from the task cache."""
    state.done[key] = dataset
    (state.reused if reused else state.executed).add(key)
    state.cache_wait.pop(key, None)
    for c in state.consumers.get(key, []):
        pending = state.waiting.get(c)
        if pending is None:
            continue
        pending.discard(key)
        if not pending:
            make_ready(state, c)


def wait_for_cache(state: SchedState, key: str, until: float) -> None:
    """Another job is computing the task: look for its cache entry again at ``until``."""
    state.cache_wait[key] = until


def wake_waiting(state: SchedState, now: float) -> List[str]:
    """Tasks whose wait for another job's cache entry is over: ready again (to look and claim)."""
    woken = [k for k, t in state.cache_wait.items() if t <= now]
    for k in woken:
        del state.cache_wait[k]
        make_ready(state, k)
    return woken


def replace_result(state: SchedState, key: str, dataset) -> None:
    """Give a done task its final output description (a sink's files once they are published)."""
    if key not in state.done:
        raise KeyError(f"{key} is not done")
    state.done[key] = dataset


def fail_attempt(
    state: SchedState, key: str, error: TaskError, *, max_fail_count: int, max_retry_count: int, memory_cap: int
) -> Decision:
    """Record a failed attempt and decide. The task is made ready again unless the decision is FAIL."""
    state.fail_counts[key] = state.fail_counts.get(key, 0) + 1
    decision = classify(error)
    if decision is not Decision.FAIL and (
        state.fail_counts[key] >= max_fail_count or state.attempts.get(key, 0) >= max_retry_count
    ):
        decision = Decision.FAIL
    if decision is Decision.FAIL:
        state.failed[key] = error
        return decision
    if decision is Decision.RETRY_WITH_MORE_MEMORY:
        state.memory[key] = int(min(memory_cap, state.memory[key] * 2))
    state.attempts[key] = state.attempts.get(key, 0) + 1
    make_ready(state, key)
    return decision


def resize(state: SchedState, old: Capacity, new: Capacity) -> None:
    """The executor's capacity changed (workers or nodes joined or left): what is free changes by as much."""
    state.free_cpus += new.num_cpus - old.num_cpus
    state.free_memory += new.memory - old.memory


def recompute_producers(state: SchedState, consumer: str, producers: Iterable[str]) -> Set[str]:
    """Run ``producers`` again (done tasks whose committed output a consumer could not read).

    Their results and those of every task downstream of them that is not running are forgotten;
    those tasks wait for their inputs again, ``consumer`` (whose attempt failed) among them, with a
    new attempt number that is not counted as a failure. A producer is recomputed at most once
    (``state.recomputed``). Returns the keys whose results were forgotten (the caller removes
    their commit records).
    """
    stack = [k for k in producers if k in state.done and k not in state.recomputed]
    state.recomputed.update(stack)
    for key in stack:  # a fresh attempt number: new file names and a log of its own
        state.attempts[key] = state.attempts.get(key, 0) + 1
    redo: Set[str] = set()
    while stack:
        key = stack.pop()
        if key in redo or key not in state.tasks or key in state.running:
            continue
        redo.add(key)
        stack.extend(state.consumers.get(key, []))
    redo.add(consumer)
    for key in redo:
        state.done.pop(key, None)
        state.resumed.discard(key)
        state.executed.discard(key)
        state.reused.discard(key)
    state.attempts[consumer] = state.attempts.get(consumer, 0) + 1
    for key in topological_order(sorted(redo), lambda k: [d for d in state.tasks[k].input_keys if d in redo]):
        pending = {d for d in state.tasks[key].input_keys if d not in state.done}
        state.waiting[key] = pending
        if not pending:
            make_ready(state, key)
    return redo


def abandon_running(state: SchedState) -> List[Tuple[str, int]]:
    """Forget every running attempt (the caller cancels them); their tasks become ready again."""
    out = []
    for key in list(state.running):
        for attempt in list(state.running[key]):
            release(state, key, attempt)
            out.append((key, attempt))
        make_ready(state, key)
    return out


def keep_only_finished(state: SchedState) -> SchedState:
    """A state holding only finished results, for a session after a failed computation.

    The failed tasks and the work queued for that computation are dropped, so a later computation
    neither re-raises the old error nor runs the failed work again unless it needs it. The
    consumer graph is kept so ``recompute()`` still reaches what consumed a result.
    """
    return SchedState(
        done=state.done,
        resumed=state.resumed,
        executed=state.executed,
        reused=state.reused,
        consumers=state.consumers,
        runtimes=state.runtimes,
        free_cpus=state.free_cpus + sum(r.cpus for a in state.running.values() for r in a.values()),
        free_memory=state.free_memory + sum(r.memory for a in state.running.values() for r in a.values()),
    )


def invalidate(state: SchedState, keys: Iterable[str]) -> Set[str]:
    """Forget the results of ``keys`` and of every known task downstream of them. Returns them all."""
    stack = list(keys)
    seen: Set[str] = set()
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        state.done.pop(key, None)
        state.resumed.discard(key)
        state.reused.discard(key)
        stack.extend(state.consumers.get(key, []))
    for key in seen:
        if key in state.tasks:
            del state.tasks[key]
            state.waiting.pop(key, None)
    return seen


# -- the loop --------------------------------------------------------------------------------------


class Scheduler:
    """Runs tasks to completion on an executor, with retries, checkpoints and resume.

    Args:
        runtime_ctx: the job's runtime context.
        executor: the backend; ``None`` runs every task in this process (debugging).
        max_retry_count: retries per task before giving up.
        max_fail_count: failed attempts per task before the job fails.
        listeners: observers of the run (progress, event log, summary).
        speculation: when to give stragglers a second copy (off by default).
        cache: the job's side of the task cache (None: no cache).
        elastic: give a task that may use more DuckDB threads than its ``cpu_limit``
            (:meth:`Task.may_use_more_threads`) a share of the idle CPUs when fewer tasks are
            runnable than CPUs are free (:func:`elastic_threads`). None: the runtime context's
            ``elastic_threads`` (off unless the user turns it on: rows with equal sort keys may
            then come out in another order, so outputs are not byte-reproducible).
    """

    def __init__(
        self,
        runtime_ctx: RuntimeContext,
        executor: Optional[Executor],
        *,
        max_retry_count: int = DEFAULT_MAX_RETRY_COUNT,
        max_fail_count: int = DEFAULT_MAX_FAIL_COUNT,
        listeners: Sequence[SchedulerListener] = (),
        speculation: Speculation = Speculation(),
        cache: Optional["JobCache"] = None,
        elastic: Optional[bool] = None,
    ) -> None:
        self.rt = runtime_ctx
        self.cache = cache
        self.speculation = speculation
        self.executor = executor
        self.max_retry_count = max_retry_count
        self.max_fail_count = max(1, max_fail_count)
        self.listeners: List[SchedulerListener] = list(listeners)
        self.capacity = executor.capacity if executor else Capacity(1, 1, runtime_ctx.usable_memory_size)
        self.elastic = runtime_ctx.elastic_threads if elastic is None else elastic
        self._elastic_nodes: Dict[int, bool] = {}  # node id -> may its tasks use more threads
        self.state = new_state(self.capacity)

    def _emit(self, event: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, event)(*args)

    def effective_memory(self, task: Task) -> int:
        """The memory limit of ``task``'s next attempt: its own, or its CPUs' share of the backend."""
        mem = self.state.memory.get(task.key)
        if mem is None:
            mem = task.memory_limit or default_memory_limit(self.capacity, task.cpu_limit)
            self.state.memory[task.key] = mem
        return mem

    def run(self, targets: List[Task], all_tasks: Dict[str, Task]) -> Dict[str, object]:
        """Run ``targets`` (and whatever they need) to completion. Returns outputs by task key.

        Raises :class:`JobFailed` (with the TaskErrors) if a task cannot be completed.
        """
        st = self.state
        start = time.time()
        _, resumed = add_tasks(st, self.rt, targets, all_tasks)
        for key, record in resumed.items():
            if self.cache is not None:
                self.cache.on_done(st.tasks[key], record["dataset"], record, ran=False)
            self._emit("on_resumed", st.tasks[key], record)
        if resumed:
            logger.info("resume: {} task(s) already committed are skipped", len(resumed))
        self._emit("on_start", st)
        target_keys = [t.key for t in targets]
        ok = False
        try:
            while not st.failed and not all(k in st.done for k in target_keys):
                if st.cache_wait:
                    wake_waiting(st, time.time())
                self._follow_capacity()
                progressed = self._dispatch()
                if self.speculation.enabled and self.executor is not None:
                    progressed = self._speculate() or progressed
                if st.failed or all(k in st.done for k in target_keys):
                    break
                # a task waiting for another job's cache entry is looked at again soon
                idle_wait = min(0.5, max(0.0, min(st.cache_wait.values()) - time.time())) if st.cache_wait else 0.5
                if st.running:
                    for c in self._poll(0.0 if progressed else idle_wait):
                        self._on_completion(c)
                elif not progressed and self.executor is not None and self.capacity.num_workers == 0:
                    # no worker yet (they are joining): wait; a backend whose workers cannot
                    # come raises from poll
                    for c in self._poll(0.5):
                        self._on_completion(c)
                elif not progressed:
                    if not st.cache_wait:
                        raise RuntimeError(self._stall_message(target_keys))
                    time.sleep(idle_wait)
                if self.cache is not None:
                    self.cache.tick()
                self._emit("on_tick", st, time.time() - start)
            ok = not st.failed
        finally:
            if not ok:
                self._abort_running()
            if self.cache is not None:
                self.cache.close()
            self._emit("on_tick", st, time.time() - start)
            self._emit("on_end", st, ok)
        if st.failed:
            errors = list(st.failed.values())
            raise JobFailed(f"{len(errors)} task(s) failed; first: {errors[0]}", errors) from errors[0]
        return {k: st.done[k] for k in target_keys}

    def _stall_message(self, target_keys: List[str]) -> str:
        """Nothing running and nothing could start: say why instead of spinning silently."""
        st = self.state
        missing = [k for k in target_keys if k not in st.done]
        blocked = [st.tasks[item[2]] for item in st.ready][:3]  # (metadata-only tasks never block)
        detail = "; ".join(f"{t.key} needs {t.cpu_limit} CPU(s) and {self.effective_memory(t)} bytes" for t in blocked)
        return (
            f"scheduler stalled: {missing[:5]} not done and nothing can start "
            f"(free CPUs {st.free_cpus}, free memory {st.free_memory}; {detail or 'no task is ready'})"
        )

    def _follow_capacity(self) -> None:
        """Take in a change of the executor's capacity (executors or Ray nodes joined or left)."""
        if self.executor is None:
            return
        cap = self.executor.capacity
        if cap is not self.capacity and cap != self.capacity:
            resize(self.state, self.capacity, cap)
            self.capacity = cap

    def _may_use_more_threads(self, task: Task) -> bool:
        """``task.may_use_more_threads()``, asked once per node (it may parse the node's SQL)."""
        ok = self._elastic_nodes.get(task.node_id)
        if ok is None:
            ok = self._elastic_nodes[task.node_id] = bool(task.may_use_more_threads())
        return ok

    def _most_cpus(self) -> int:
        """The most CPUs one attempt can be given (one machine's)."""
        return int(self.executor.attempt_limits()[0]) if self.executor is not None else 1

    def _poll(self, timeout: float) -> List[Completion]:
        if self.executor is None:
            return []
        return self.executor.poll(timeout)

    def _run_here(self, task: Task, inputs: list, attempt: int) -> None:
        """Metadata-only tasks (and everything, without an executor) run in this process."""
        st = self.state
        start = time.time()
        try:
            if task.exec_on_scheduler:
                ds = run_inline(self.rt, task, inputs)
            else:
                ds = execute_attempt(self.rt, task, inputs, attempt, memory=self.effective_memory(task))
        except TaskError as e:
            self._emit("on_inline", task, False, time.time() - start)
            if self._record_failure(task.key, e) is Decision.FAIL and self.cache is not None:
                self.cache.release(task.key)
            return
        finish_task(st, task.key, ds)
        if self.cache is not None and not task.exec_on_scheduler:
            self.cache.on_done(task, ds)
            self.cache.release(task.key)
        self._emit("on_inline", task, True, time.time() - start)

    def _from_cache(self, task: Task, attempt: int) -> bool:
        """Take the task's output from the task cache if a verified entry has its key."""
        entry = self.cache.lookup(task)
        if entry is None:
            return False
        try:
            ds = self.cache.reuse(task, entry, attempt)
        except OSError as e:  # removed by a cleaner meanwhile, a full disk: run the task instead
            logger.warning("task cache: could not reuse {} for {}: {}", entry.path, task.key, e)
            return False
        self.cache.release(task.key)
        finish_task(self.state, task.key, ds, reused=True)
        self.cache.on_done(task, ds)
        logger.debug("{} reused from the task cache (written by {} of job {})", task.key, entry.task, entry.job)
        self._emit("on_reused", task, entry)
        return True

    def _reuse_ready(self) -> bool:
        """Look up the tasks that became ready since the last round (``fresh``) and reuse the
        hits, whether or not a worker is free (reusing needs none). A task is looked up once when
        it becomes ready, and again only right before it runs (after claiming it: another job may
        have finished it meanwhile). Returns True if a task was reused."""
        st = self.state
        fresh, st.fresh = st.fresh, []
        hits = set()
        for key in fresh:
            task = st.tasks.get(key)
            if task is None or key in st.done or key in self.cache.looked_up:
                continue
            self.cache.looked_up[key] = time.time()
            self.cache.prepare(task, [st.done[d] for d in task.input_keys])
            if self._from_cache(task, st.attempts.get(key, 0)):
                hits.add(key)
        if hits:
            st.ready = [i for i in st.ready if i[2] not in hits]
            heapq.heapify(st.ready)
        return bool(hits)

    def _claim(self, task: Task, attempt: int) -> str:
        """Claim the task's cache key before running it: ``"run"``; ``"reused"`` if its entry
        appeared meanwhile; ``"wait"`` if another job is computing it (the task waits for that
        job's entry in ``cache_wait``)."""
        if self.cache.claim(task) is not None:
            self.cache.looked_up.pop(task.key, None)  # look again when the wait is over
            wait_for_cache(self.state, task.key, time.time() + CACHE_WAIT_RECHECK)
            return "wait"
        # a job that finished the task released its claim after adding the entry: look again
        # (one stat), or a task another job finished since it was first looked up runs twice
        if self._from_cache(task, attempt):
            return "reused"
        return "run"

    def _dispatch(self) -> bool:
        """Run ready metadata-only tasks here, then send ready tasks to the executor while it has room."""
        st = self.state
        progressed = False
        while True:
            while st.ready_inline and not st.failed:
                key = st.ready_inline.popleft()
                if key in st.done or st.waiting.get(key):
                    continue  # made ready twice, or waiting again for an input being recomputed
                task = st.tasks[key]
                self._run_here(task, [st.done[d] for d in task.input_keys], st.attempts.get(key, 0))
                progressed = True
            if self.cache is None:
                st.fresh.clear()
                break
            # reusing needs no worker: look up what became ready, and run what the hits made ready
            if st.failed or not self._reuse_ready():
                break
            progressed = True
        deferred = []
        while st.ready and not st.failed:
            item = heapq.heappop(st.ready)
            key = item[2]
            if key in st.done or key in st.running or st.waiting.get(key):
                continue  # made ready twice, or waiting again for an input being recomputed
            task = st.tasks[key]
            attempt = st.attempts.get(key, 0)
            if self.executor is None:
                if self.cache is not None:
                    self.cache.prepare(task, [st.done[d] for d in task.input_keys])
                    verdict = self._claim(task, attempt)
                    if verdict != "run":
                        progressed = progressed or verdict == "reused"
                        continue
                self._run_here(task, [st.done[d] for d in task.input_keys], attempt)
                progressed = True
                while st.ready_inline and not st.failed:  # what it made ready, in order
                    k = st.ready_inline.popleft()
                    if k in st.done or st.waiting.get(k):
                        continue
                    self._run_here(st.tasks[k], [st.done[d] for d in st.tasks[k].input_keys], st.attempts.get(k, 0))
                continue
            if self.capacity.num_workers == 0:  # no worker has joined yet: nothing can start
                deferred.append(item)
                break
            if self.cache is not None:
                # claimed before the executor is asked for room: the claim touches the cache's
                # folder, and a worker's queue slot may be gone after that long; a claim held
                # while the task waits for room says that this job is about to compute it
                self.cache.prepare(task, [st.done[d] for d in task.input_keys])
                verdict = self._claim(task, attempt)
                if verdict != "run":
                    progressed = progressed or verdict == "reused"
                    continue
            mem = self.effective_memory(task)
            fits = task.cpu_limit <= st.free_cpus and (mem <= st.free_memory or not st.running)
            idle = self.executor.free_slots()
            queue = False
            if not fits or idle == 0:
                # a one-CPU task needing no more than a worker's share of memory may wait on a
                # worker behind a short task and run with what that task leaves: it reserves
                # nothing of its own, and a worker still runs one task at a time
                slots = self.executor.queue_slots()
                queue = task.cpu_limit <= 1 and mem <= self.capacity.memory_per_cpu and slots > 0
                if not queue:
                    deferred.append(item)
                    if (idle == 0 or st.free_cpus <= 0) and not slots:
                        break  # nothing else can start either: stop scanning the ready tasks
                    continue
            cpus = task.cpu_limit
            sent = task
            if not queue and self.elastic and st.free_cpus > task.cpu_limit:
                runnable = len(st.ready) + len(deferred) + 1
                cpus = elastic_threads(task.cpu_limit, st.free_cpus, runnable, self._most_cpus(), mem)
                if cpus > task.cpu_limit and self._may_use_more_threads(task):
                    sent = copy.copy(task)  # the attempt's copy carries its threads; ours stays as planned
                    sent.threads = cpus
                else:
                    cpus = task.cpu_limit
            try:
                self.executor.submit(sent, [st.done[d] for d in task.input_keys], attempt, memory=mem, queue=queue)
            except TaskError as e:  # cannot be sent (unpicklable): retrying cannot help
                st.attempts[key] = attempt
                st.failed[key] = e
                logger.debug("task failed: {}", e)  # the job's summary shows it, once
                if self.cache is not None:
                    self.cache.release(key)
                break
            reserve(st, key, attempt, 0 if queue else cpus, 0 if queue else mem, time.time())
            self._emit("on_submit", task, attempt, mem)
            progressed = True
        for item in deferred:
            heapq.heappush(st.ready, item)
        return progressed

    def _speculate(self) -> bool:
        """Give stragglers a second attempt on idle workers (see :class:`Speculation`)."""
        st = self.state
        started = False
        for key in stragglers(st, self.speculation, time.time()):
            if st.ready or self.executor.free_slots() == 0:
                break  # waiting work and idle workers come first
            task = st.tasks[key]
            mem = self.effective_memory(task)
            if task.cpu_limit > st.free_cpus or mem > st.free_memory:
                continue
            attempt = st.attempts.get(key, 0) + 1
            try:
                self.executor.submit(task, [st.done[d] for d in task.input_keys], attempt, memory=mem)
            except TaskError:
                continue  # the first attempt was sent, so this cannot happen; never fail the job for a copy
            st.attempts[key] = attempt
            reserve(st, key, attempt, task.cpu_limit, mem, time.time(), speculative=True)
            logger.info("{} is a straggler: speculative attempt {} started", key, attempt)
            self._emit("on_submit", task, attempt, mem)
            started = True
        return started

    def _on_completion(self, c: Completion) -> None:
        st = self.state
        if not release(st, c.key, c.attempt):
            return  # a cancelled or superseded attempt
        task = st.tasks[c.key]
        if c.ok:
            record_runtime(st, c.key, c.elapsed)
            finish_task(st, c.key, c.dataset)
            if self.cache is not None:
                self.cache.on_done(task, c.dataset)
                self.cache.release(c.key)
            # the other attempts of this task (speculative copies) lost: stop them; a copy that
            # commits anyway finds the winner's record and removes its own files
            for other in list(st.running.get(c.key, {})):
                release(st, c.key, other)
                if self.executor is not None:
                    self.executor.cancel(c.key, other)
                self._emit("on_cancelled", task, other, f"attempt {c.attempt} finished first")
            self._emit("on_completion", task, c, None)
            return
        if c.key in st.running and classify(c.error) is not Decision.FAIL:
            # another attempt of this task is still running: it may yet succeed
            st.fail_counts[c.key] = st.fail_counts.get(c.key, 0) + 1
            logger.warning("{} attempt {} failed while another attempt runs: {}", c.key, c.attempt, c.error)
            self._emit("on_completion", task, c, Decision.RETRY)
            return
        decision = self._record_failure(c.key, c.error)
        if decision is Decision.FAIL and self.cache is not None:
            self.cache.release(c.key)
        self._emit("on_completion", task, c, decision)

    def _record_failure(self, key: str, error: BaseException) -> Decision:
        st = self.state
        task = st.tasks[key]
        terr = error if isinstance(error, TaskError) else to_task_error(task, st.attempts.get(key, 0), error, [])
        if terr.corrupt_inputs and self._recompute_producers(key, terr):
            return Decision.RETRY
        self.effective_memory(task)
        decision = fail_attempt(
            st,
            key,
            terr,
            max_fail_count=self.max_fail_count,
            max_retry_count=self.max_retry_count,
            memory_cap=self.executor.attempt_limits()[1] if self.executor else self.capacity.memory,
        )
        if decision is Decision.FAIL:
            # in the job log only: the job's summary shows the error to the user, once
            logger.debug("task failed: {}", terr)
        else:
            if decision is Decision.RETRY_WITH_MORE_MEMORY:
                logger.info("{}: memory limit raised to {} bytes after running out of memory", key, st.memory[key])
            logger.warning("retrying {} (attempt {}) after: {}", key, st.attempts[key], terr.message)
        return decision

    def _recompute_producers(self, key: str, terr: TaskError) -> bool:
        """An input written by an earlier task is unreadable: run that task again (once)."""
        from smallpond.execution.attempt import commit_path, producer_key_of
        from smallpond.io.filesystem import remove_path

        st = self.state
        producers = {producer_key_of(self.rt, p) for p in terr.corrupt_inputs} - {None}
        fresh = sorted(p for p in producers if p in st.done and p not in st.recomputed)
        if not fresh:
            return False
        logger.warning(
            "{}: input file(s) {} cannot be read; recomputing {} that wrote them, then {} runs again",
            key,
            terr.corrupt_inputs[:3],
            fresh,
            key,
        )
        if self.cache is not None:  # a reused output is a link to the cache entry's file: bypass it
            self.cache.forget(fresh)
        for k in recompute_producers(st, key, fresh):
            remove_path(commit_path(self.rt, k))
        return True

    def _abort_running(self) -> None:
        for key, attempt in abandon_running(self.state):
            if self.executor is not None:
                self.executor.cancel(key, attempt)
