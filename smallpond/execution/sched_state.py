"""The scheduler's state and the only functions that change it (see :mod:`smallpond.execution.scheduler`).

:class:`SchedState` is the whole state of a run; ``add_tasks``, ``make_ready``, ``reserve``,
``release``, ``finish_task``, ``fail_attempt``, ``invalidate``, ``recompute_producers``, ... are its
transitions, functions of the state and their arguments that never touch the executor, so each
policy (retries, speculation, elastic threads) can be tested on a state built by hand. The one
that reads files is ``add_tasks``: resume, which lists the job's commit records once and loads
those of the tasks it adds (a state built by hand over a job folder without records reads none).
"""

from __future__ import annotations

import heapq
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from smallpond.errors import Decision, TaskError, classify
from smallpond.execution.commit import has_record, read_commit, set_aside
from smallpond.execution.executors.base import Capacity, Completion
from smallpond.execution.runtime import RuntimeContext
from smallpond.execution.task import Task
from smallpond.logical.graph import critical_path_lengths, topological_order

#: how often a task waiting for another job's cache entry looks again (seconds)
CACHE_WAIT_RECHECK = 0.25


class Running(NamedTuple):
    """A submitted attempt: what it reserves, since when, and whether it is a speculative copy.

    ``held``: its CPUs and memory are counted out of what is free. An attempt queued on a worker
    behind another one (``submit(..., queue=True)``) is not held until its backend says it started
    (:func:`hold`: the one before it ended, or it moved to a worker of its own), and then wherever
    it runs; ``since`` is when it was sent, then when it started. What is held is freed once, by
    :func:`release`."""

    cpus: int
    memory: int
    since: float = 0.0
    speculative: bool = False
    held: bool = True


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
    #: metadata-only tasks nothing needed (all after them committed), in order: rebuilt after the run
    unneeded_inline: List[Task] = field(default_factory=list)
    #: a published sink's key -> the key of a sink of a later computation that overwrote its destination
    overwritten: Dict[str, str] = field(default_factory=dict)
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


def handlers(listeners: Sequence[SchedulerListener], event: str) -> tuple:
    """The bound ``event`` methods of ``listeners`` that do something: those a listener defines
    itself (in its class or on the instance); :class:`SchedulerListener`'s own empty ones are left
    out. The scheduler calls an event's handlers several times per task: each empty method it
    skips is a Python call fewer per event (a job's listeners define few of them)."""
    empty = getattr(SchedulerListener, event, None)
    return tuple(
        getattr(lst, event)
        for lst in listeners
        if event in getattr(lst, "__dict__", ()) or getattr(type(lst), event, None) is not empty
    )


# -- state transitions (the only code that changes a SchedState) ---------------------------------


def new_state(capacity: Capacity) -> SchedState:
    return SchedState(free_cpus=capacity.num_cpus, free_memory=capacity.memory)


def unpublished_sinks(
    order: Sequence[str], needed: set, all_tasks: Dict[str, Task], complete: Callable[[str], object]
) -> List[str]:
    """The sinks among ``order`` (what the targets need, committed or not) that the walk from the
    targets did not reach and that are not ``complete``: a sink commits only once published, so the
    tasks downstream of it in its computation may be committed while it is not (a run killed
    before its publication, or whose publication journal was abandoned). Behind those, it would
    never run again and its destination never get its result; so each is needed itself.
    ``complete``: whether a sink is done, or has a commit record at all (a damaged one too: only
    its publication writes one, so it was published; running it again would append twice)."""
    return [k for k in order if k not in needed and getattr(all_tasks[k], "commits_on_publication", False) and not complete(k)]


def add_tasks(
    state: SchedState, rt: RuntimeContext, targets: Sequence[Task], all_tasks: Dict[str, Task]
) -> Tuple[List[str], Dict[str, dict]]:
    """Add ``targets`` and what they need; tasks with a matching commit record are done at once.

    What the targets need stops at a task done or committed: the tasks behind a committed one are
    added only if committed too (resumed, as counted before), never to run. So a task whose
    record is gone or damaged but whose consumers are all complete (a sink published from its
    output) is not run, and its damaged record is set aside quietly (:func:`~smallpond.execution.commit.set_aside`)
    rather than warned about on every run. A sink that is not published is needed wherever it is
    (:func:`unpublished_sinks`). Metadata-only tasks not needed are listed in
    ``state.unneeded_inline``, for the scheduler to rebuild their outputs once the targets are done.
    Returns (the new keys, the commit records of the resumed ones).
    """
    order = topological_order([t.key for t in targets], lambda k: all_tasks[k].input_keys)
    # one listing instead of a failed open per task (a new job has no record at all); a record
    # written after it (an executor of an earlier scheduler) is found when the attempt commits
    try:
        records = set(os.listdir(rt.completed_task_dir))
    except OSError:
        records = set()

    def committed(k: str, damaged: Optional[List[str]] = None) -> Optional[dict]:
        t = all_tasks[k]
        if t.exec_on_scheduler or f"{k}.commit" not in records:
            return None
        # the fingerprint covers the inputs' identity, so a matching record is reusable even
        # when its (metadata-only) inputs are recomputed
        return read_commit(rt, t, damaged)

    resumed: Dict[str, dict] = {}
    if not records and state.done.keys().isdisjoint(order):
        # nothing stops the walk below (no record, no task done): it would reach every task the
        # targets reach, which ``order`` holds already. A new job skips it: it pops and looks up
        # every dependency edge once more (~3% of the scheduler's time per task on a shuffle)
        needed, stack = set(order), []
    else:
        needed, stack = set(), [t.key for t in targets]
    while stack:  # as the dry run walks it (dryrun.py)
        k = stack.pop()
        if k not in needed:
            needed.add(k)
            record = committed(k) if k not in state.done and k not in state.tasks else None
            if record is not None:
                resumed[k] = record
            elif k not in state.done:
                stack.extend(all_tasks[k].input_keys)
        if not stack:  # then the sinks behind committed tasks that are not published
            stack = unpublished_sinks(
                order, needed, all_tasks, lambda s: s in state.done or s in state.tasks or has_record(rt, s, records)
            )
    for k in order:
        if k in needed or k in state.tasks:
            continue
        if all_tasks[k].exec_on_scheduler:
            state.unneeded_inline.append(all_tasks[k])
            continue
        damaged: List[str] = []
        record = committed(k, damaged)
        if record is not None:
            resumed[k] = record
        elif damaged:
            set_aside(rt, k, damaged[0])
    new = [k for k in order if k not in state.tasks and (k in needed or k in resumed)]
    for k in new:
        state.tasks[k] = all_tasks[k]
    lengths = critical_path_lengths(order, lambda k: all_tasks[k].input_keys, lambda k: all_tasks[k].estimated_cost())
    state.priority.update(lengths)
    for k in new:
        for d in all_tasks[k].input_keys:
            state.consumers.setdefault(d, []).append(k)
    for k in new:
        if k in resumed:
            state.done[k] = resumed[k]["dataset"]
            state.resumed.add(k)
            continue
        t = state.tasks[k]
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
    state: SchedState,
    key: str,
    attempt: int,
    cpus: int,
    memory: int,
    since: float = 0.0,
    speculative: bool = False,
    held: bool = True,
) -> None:
    """An attempt was sent; it holds ``cpus`` and ``memory`` now, or (not ``held``: queued behind
    another attempt) from when :func:`hold` says it started."""
    state.running.setdefault(key, {})[attempt] = Running(cpus, memory, since, speculative, held)
    if held:
        state.free_cpus -= cpus
        state.free_memory -= memory


def hold(state: SchedState, key: str, attempt: int, now: float) -> bool:
    """A queued attempt started (on the worker it waited on, or on another one it moved to): from
    now on it holds what it reserved. False if it is not running (cancelled, finished) or held."""
    r = state.running.get(key, {}).get(attempt)
    if r is None or r.held:
        return False
    state.running[key][attempt] = r._replace(since=now, held=True)
    state.free_cpus -= r.cpus
    state.free_memory -= r.memory
    return True


def release(state: SchedState, key: str, attempt: int) -> bool:
    """Give back what an attempt held. False if it was not running (cancelled, superseded)."""
    attempts = state.running.get(key)
    if not attempts or attempt not in attempts:
        return False
    r = attempts.pop(attempt)
    if not attempts:
        del state.running[key]
    if r.held:
        state.free_cpus += r.cpus
        state.free_memory += r.memory
    return True


def waiting_to_start(state: SchedState) -> bool:
    """Whether an attempt waits queued behind another one (sent, not started)."""
    return any(not r.held for attempts in state.running.values() for r in attempts.values())


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
    """Running tasks with a single attempt that has run too long for its node (see Speculation).

    An attempt queued behind another one and not started is no straggler, however long it has
    waited: it has not run (its backend moves it to an idle worker instead, work stealing)."""
    if not spec.enabled or not state.running:
        return []
    totals: Dict[int, int] = {}
    for t in state.tasks.values():
        if not t.exec_on_scheduler:
            totals[t.node_id] = totals.get(t.node_id, 0) + 1
    import statistics  # here: it imports fractions and decimal (~1.5 ms of every job's start)

    out = []
    medians: Dict[int, Optional[float]] = {}
    for key, attempts in state.running.items():
        if len(attempts) != 1 or getattr(state.tasks[key], "commits_on_publication", False):
            continue  # (a sink stages its result in one place per task: never two copies at once)
        (running,) = attempts.values()
        if not running.held:
            continue
        node_id = state.tasks[key].node_id
        if node_id not in medians:
            times = state.runtimes.get(node_id) or []
            enough = times and len(times) >= spec.quantile * totals.get(node_id, 1)
            medians[node_id] = statistics.median(times) if enough else None
        median = medians[node_id]
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


def add_missing_inputs(state: SchedState, rt: RuntimeContext, keys: Iterable[str], all_tasks: Dict[str, Task]) -> Dict[str, dict]:
    """``keys`` wait for their inputs again (:func:`recompute_producers`): add the inputs that were
    never added (:func:`add_tasks` leaves out what only a committed task needed), and make ready
    the keys whose inputs are all done then. Returns the commit records of those it resumed."""
    keys = [k for k in keys if k in state.tasks]
    missing = sorted({d for k in keys for d in state.tasks[k].input_keys if d not in state.tasks})
    if not missing:
        return {}
    _, resumed = add_tasks(state, rt, [all_tasks[d] for d in missing], all_tasks)
    for k in keys:
        pending = state.waiting.get(k)
        if pending:
            pending.difference_update(state.done.keys())
            if not pending:
                make_ready(state, k)
    return resumed


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
        free_cpus=state.free_cpus + sum(r.cpus for a in state.running.values() for r in a.values() if r.held),
        free_memory=state.free_memory + sum(r.memory for a in state.running.values() for r in a.values() if r.held),
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
        state.overwritten.pop(key, None)  # to be published again
        stack.extend(state.consumers.get(key, []))
    for key in seen:
        if key in state.tasks:
            del state.tasks[key]
            state.waiting.pop(key, None)
    return seen


# -- the loop --------------------------------------------------------------------------------------
