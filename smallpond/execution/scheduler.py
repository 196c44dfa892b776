"""The scheduler: one event loop around an explicit state.

:class:`SchedState` is the scheduler's whole state, and it changes only through the functions of
:mod:`~smallpond.execution.sched_state` (``add_tasks``, ``finish_task``, ``fail_attempt``, ...;
re-exported here), as in dask's local scheduler. This module holds the event loop. Per task key:

* ``waiting``  — some input is not done yet (the keys still missing);
* ``ready``    — inputs done; a heap ordered by critical-path length (longest chain first), then id;
* ``running``  — submitted attempts and what each reserves: ``{key: {attempt: Running}}``; one
  queued on a worker behind another attempt holds its CPUs and memory only from when the backend
  says it started (``Executor.started``), wherever it runs (it may have moved to another worker);
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
``free_cpus`` / ``free_memory`` (what the executor offers minus what running attempts hold;
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
(``write_commit`` publishes records exclusively) and the others are cancelled. An attempt waiting
queued behind another one is no straggler: it has not started, and while one waits an idle worker
is for it (the backend moves it there: work stealing), not for a copy.

Policies, in :func:`fail_attempt`: the error is classified once by
:func:`smallpond.errors.classify` into retry / fail / retry with more memory. A retried task gets
the next attempt number until it has failed ``max_fail_count`` times or used ``max_retry_count``
retries; more memory means twice the last limit, capped by the executor's memory. Metadata-only
tasks run inline here; everything else goes to the executor.

Elastic threads (:func:`elastic_threads`): when fewer tasks are runnable than CPUs are free, a task
may be sent with a share of the free CPUs as its DuckDB threads, and reserves them; the attempt's
copy of the task carries ``threads``, the planned task does not. By default (``elastic_threads=
"safe"``) only a task that may be row-wise (``Task.may_be_row_wise``: one query, no clause that
filters, joins, groups, sorts or unnests) is offered them, and its attempt takes them only if
DuckDB's plan and the row groups it wrote show its output bytes cannot depend on them
(:mod:`smallpond.execution.ops.elastic`); otherwise it runs with ``cpu_limit`` threads, its log says
so, and the node's later tasks are offered no more (the CPUs it declined stay reserved until that
attempt ends). ``elastic_threads=True`` (opt-in) also gives them, unchecked, to a task whose
outermost query ends in ORDER BY (``Task.may_use_more_threads``): rows with equal sort keys may then
come out in another order (and aggregates computed under the ``ORDER BY``, a floating-point sum or a
``list()``, may differ), and the number of threads follows timing, so such outputs are no longer
byte-reproducible. Breaking ties in the engine's own sorts (``partial_sort``) by every column
(``columns(*)``) makes them byte-identical at any thread count (rows that differ only in a zero's
sign, a NaN's bits or an interval's spelling aside), but was measured to cost 1.3x to 1.85x the
sort's CPU, more than a second thread gives back on two cores, in every sort task, many-task stages
included: it stays opt-in. ``elastic_threads=False`` gives no task more than its ``cpu_limit``.

Observers (progress bars, the event log behind the run report, the end-of-job summary) are
:class:`SchedulerListener` objects: they see every event and never change the state.
"""

from __future__ import annotations

import copy
import heapq
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

from smallpond.common import DEFAULT_MAX_FAIL_COUNT, DEFAULT_MAX_RETRY_COUNT, logger, rare_full_collections
from smallpond.errors import Decision, JobFailed, TaskError, classify
from smallpond.execution.attempt import execute_attempt, run_inline, to_task_error
from smallpond.execution.env_settings import elastic_mode
from smallpond.execution.executors.base import Capacity, Completion, Executor
from smallpond.execution.partition_schemas import PartitionSchemaCheck
from smallpond.execution.plancheck import PlanCheck
from smallpond.execution.runtime import RuntimeContext, default_memory_limit

# the state and its transitions live in sched_state; they are part of this module's API
from smallpond.execution.sched_state import (  # noqa: F401
    CACHE_WAIT_RECHECK,
    ELASTIC_MEMORY_PER_THREAD,
    Running,
    SchedState,
    SchedulerListener,
    Speculation,
    abandon_running,
    add_missing_inputs,
    add_tasks,
    elastic_threads,
    fail_attempt,
    finish_task,
    handlers,
    hold,
    invalidate,
    keep_only_finished,
    make_ready,
    new_state,
    recompute_producers,
    record_runtime,
    release,
    replace_result,
    reserve,
    resize,
    stragglers,
    wait_for_cache,
    waiting_to_start,
    wake_waiting,
)
from smallpond.execution.task import Task

if TYPE_CHECKING:
    from smallpond.execution.cache_keys import JobCache

#: tasks made ready that the task cache looks up in one round of the loop; the others wait for the
#: next rounds, or are looked up when they are sent. Without a bound, a stage of thousands of tasks
#: becoming ready at once had every key computed before the first task was sent (2,000 tiny tasks:
#: 0.11 s of idle workers; the wait grows with the stage and with the inputs of each task)
LOOKUPS_PER_ROUND = 64


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
        elastic: give a task that may use more DuckDB threads than its ``cpu_limit`` a share of
            the idle CPUs when fewer tasks are runnable than CPUs are free (:func:`elastic_threads`):
            ``"safe"`` only tasks whose output bytes cannot depend on them (they check their plan:
            :meth:`Task.may_be_row_wise`), ``True`` those and tasks whose SQL ends in ORDER BY
            (:meth:`Task.may_use_more_threads`: rows with equal sort keys may then come out in
            another order, and floating-point aggregates may differ), ``False`` none. None: the
            runtime context's ``elastic_threads`` (``"safe"`` unless the user says otherwise).
        plan_nodes: the planned nodes (a callable returning them, e.g. the planner's); given, the
            queries of nodes that have not run yet are checked once a run has lasted a moment
            (:mod:`smallpond.execution.plancheck`; ``SP_PLAN_CHECK`` sets when, or turns it off).
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
        plan_nodes: Optional[Callable[[], list]] = None,
    ) -> None:
        self.rt = runtime_ctx
        self.plan_nodes = plan_nodes
        self.cache = cache
        self.speculation = speculation
        self.executor = executor
        self.max_retry_count = max_retry_count
        self.max_fail_count = max(1, max_fail_count)
        #: a Python node's partitions whose types do not unify fail the job (partition_schemas)
        self.partition_check = PartitionSchemaCheck()
        self.listeners: List[SchedulerListener] = [*listeners, self.partition_check]
        self._handlers: Dict[str, tuple] = {}  # event -> the listeners' methods that do something
        self.capacity = executor.capacity if executor else Capacity(1, 1, runtime_ctx.usable_memory_size)
        self.elastic = runtime_ctx.elastic_threads if elastic is None else elastic_mode("Scheduler", elastic)
        self._elastic_nodes: Dict[int, Optional[bool]] = {}  # node id -> how its tasks may use more threads
        self.state = new_state(self.capacity)
        self._all_tasks: Dict[str, Task] = {}  # the planned tasks of the current run

    def _emit(self, event: str, *args) -> None:
        todo = self._handlers.get(event)
        if todo is None:
            todo = self._handlers[event] = handlers(self.listeners, event)
        for handler in todo:
            handler(*args)

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
        with rare_full_collections():  # the run holds every output until it ends
            return self._run(targets, all_tasks)

    def _run(self, targets: List[Task], all_tasks: Dict[str, Task]) -> Dict[str, object]:
        st = self.state
        start = time.time()
        self._all_tasks = all_tasks
        new, resumed = add_tasks(st, self.rt, targets, all_tasks)
        self._on_resumed(resumed)
        if resumed:
            logger.info("resume: {} task(s) already committed are skipped", len(resumed))
        self._emit("on_start", st)
        target_keys = [t.key for t in targets]
        # every sink not published is a goal too, one behind committed tasks included (add_tasks)
        goals = target_keys + [k for k in new if k not in st.done and getattr(st.tasks[k], "commits_on_publication", False)]
        check = PlanCheck.from_environment(self.plan_nodes) if self.plan_nodes is not None else None
        ok = False
        try:
            self.partition_check.check_targets(st, target_keys)  # a node found bad in an earlier run
            while not st.failed and not all(k in st.done for k in goals):
                self.partition_check.raise_found(st, target_keys)
                if st.cache_wait:
                    wake_waiting(st, time.time())
                self._follow_capacity()
                progressed = self._dispatch()
                if self.speculation.enabled and self.executor is not None:
                    progressed = self._speculate() or progressed
                if st.failed or all(k in st.done for k in goals):
                    break
                # a task waiting for another job's cache entry is looked at again soon
                idle_wait = min(0.5, max(0.0, min(st.cache_wait.values()) - time.time())) if st.cache_wait else 0.5
                if st.running:
                    self._collect(0.0 if progressed else idle_wait)
                elif not progressed and self.executor is not None and self.capacity.num_workers == 0:
                    # no worker yet (they are joining): wait; a backend whose workers cannot
                    # come raises from poll
                    self._collect(0.5)
                elif not progressed:
                    if not st.cache_wait:
                        raise RuntimeError(self._stall_message(goals))
                    time.sleep(idle_wait)
                if self.cache is not None:
                    self.cache.tick()
                if check is not None:
                    check.tick(st, time.time() - start)  # raises for a query that cannot bind
                self.partition_check.raise_found(st, target_keys)
                self._emit("on_tick", st, time.time() - start)
            ok = not st.failed
            if ok:
                self._rebuild_unneeded()
        finally:
            if check is not None:
                check.close()
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

    def _on_resumed(self, resumed: Dict[str, dict]) -> None:
        for key, record in resumed.items():
            if self.cache is not None:
                self.cache.on_done(self.state.tasks[key], record["dataset"], record, ran=False)
            self._emit("on_resumed", self.state.tasks[key], record)

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

    def _elastic_offer(self, task: Task) -> Optional[bool]:
        """Whether ``task`` may be given more threads than its ``cpu_limit``, asked once per node (it
        may parse the node's SQL): None (no), False (to use as given: a final ORDER BY when the job
        opted in, ``elastic_threads=True``) or True (if its plan shows they cannot change its output:
        ``Task.may_be_row_wise``, the default)."""
        if task.node_id not in self._elastic_nodes:
            how = None
            if self.elastic is True and task.may_use_more_threads():
                how = False
            elif task.may_be_row_wise():
                how = True
            self._elastic_nodes[task.node_id] = how
        return self._elastic_nodes[task.node_id]

    def _most_cpus(self) -> int:
        """The most CPUs one attempt can be given (one machine's)."""
        return int(self.executor.attempt_limits()[0]) if self.executor is not None else 1

    def _collect(self, timeout: float) -> None:
        """Take in what the executor reports (waiting up to ``timeout`` seconds): finished attempts,
        then queued ones that started (from then on they hold their CPUs and memory)."""
        if self.executor is None:
            return
        for c in self.executor.poll(timeout):
            self._on_completion(c)
        now = time.time()
        for key, attempt in self.executor.started():
            hold(self.state, key, attempt, now)

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
        if self.cache is not None:
            self.cache.on_done(task, ds)  # for a pass-through task, its output's identity only
            if not task.exec_on_scheduler:
                self.cache.release(task.key)
        self._emit("on_inline", task, True, time.time() - start)

    def _rebuild_unneeded(self) -> None:
        """The outputs of metadata-only tasks nothing needed (every task after them was committed:
        a fully resumed rerun), rebuilt from their inputs here, as a run that needs them does (a
        source's file list, a merge, a split: nothing is written). So a rerun's results and report
        still hold every task of the plan. One whose input is not done (not needed either, and not
        committed), or whose rebuilding fails, is left out (logged at debug): nothing needs it."""
        st = self.state
        tasks, st.unneeded_inline = st.unneeded_inline, []
        for task in tasks:
            key = task.key
            if key in st.tasks or any(d not in st.done for d in task.input_keys):
                continue
            start = time.time()
            try:
                ds = run_inline(self.rt, task, [st.done[d] for d in task.input_keys])
            except TaskError as e:
                logger.debug("{} is not needed and its output could not be rebuilt: {}", key, e)
                continue
            st.tasks[key] = task
            for d in task.input_keys:  # (recompute() of an input reaches it)
                st.consumers.setdefault(d, []).append(key)
            finish_task(st, key, ds)
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
        """Look up the tasks that became ready since the last rounds (``fresh``) and reuse the
        hits, whether or not a worker is free (reusing needs none). A task is looked up once when
        it becomes ready, and again only right before it runs (after claiming it: another job may
        have finished it meanwhile). At most :data:`LOOKUPS_PER_ROUND` tasks a round: the rest
        stay in ``fresh`` for the next rounds, and a task sent before its turn is looked up by
        :meth:`_look_up` first. Returns True if a task was reused."""
        st = self.state
        fresh, st.fresh = st.fresh[:LOOKUPS_PER_ROUND], st.fresh[LOOKUPS_PER_ROUND:]
        hits = set()
        for key in fresh:
            task = st.tasks.get(key)
            if task is None or key in st.done or key in self.cache.looked_up:
                continue
            if self._look_up(task):
                hits.add(key)
        if hits:
            st.ready = [i for i in st.ready if i[2] not in hits]
            heapq.heapify(st.ready)
        return bool(hits)

    def _look_up(self, task: Task) -> bool:
        """The first lookup of a ready task: compute its key and reuse its entry if there is one.
        Returns True if the task was reused."""
        st = self.state
        self.cache.looked_up[task.key] = time.time()
        self.cache.prepare(task, [st.done[d] for d in task.input_keys])
        return self._from_cache(task, st.attempts.get(task.key, 0))

    def _claim(self, task: Task, attempt: int) -> str:
        """Claim the task's cache key before running it: ``"run"``; ``"reused"`` if its entry
        appeared meanwhile; ``"wait"`` if another job is computing it (the task waits for that
        job's entry in ``cache_wait``)."""
        if self.cache.claim(task) is not None:
            self.cache.looked_up.pop(task.key, None)  # look again when the wait is over
            wait_for_cache(self.state, task.key, time.time() + CACHE_WAIT_RECHECK)
            return "wait"
        # a job that finished the task released its claim after adding the entry: look again
        # (one stat), or a task another job finished since it was first looked up runs twice.
        # Not while this job is alone on the cache: a job that comes claims nothing for a grace
        # period, and this one sees it within that period (JobCache.tick)
        if not self.cache.solo and self._from_cache(task, attempt):
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
            if self.executor is not None and self.capacity.num_workers == 0:
                deferred.append(item)  # no worker has joined yet: nothing can start
                break
            if self.cache is not None:
                if key not in self.cache.looked_up:
                    if self._look_up(task):  # (which prepared it)
                        progressed = True  # ready before _reuse_ready looked at it, and reused now
                        continue
                else:
                    self.cache.prepare(task, [st.done[d] for d in task.input_keys])
                # claimed before the executor is asked for room: the claim touches the cache's
                # folder, and a worker's queue slot may be gone after that long; a claim held
                # while the task waits for room says that this job is about to compute it
                verdict = self._claim(task, attempt)
                if verdict != "run":
                    progressed = progressed or verdict == "reused"
                    continue
            if self.executor is None:
                self._run_here(task, [st.done[d] for d in task.input_keys], attempt)
                progressed = True
                while st.ready_inline and not st.failed:  # what it made ready, in order
                    k = st.ready_inline.popleft()
                    if k in st.done or st.waiting.get(k):
                        continue
                    self._run_here(st.tasks[k], [st.done[d] for d in st.tasks[k].input_keys], st.attempts.get(k, 0))
                continue
            mem = self.effective_memory(task)
            # a task bigger than what is free runs alone once nothing else runs (as with memory):
            # the planner sized it against the executors of its time, and those that have joined
            # since may be smaller (queue executors, Ray nodes); waiting for room would be forever
            fits = (task.cpu_limit <= st.free_cpus or not st.running) and (mem <= st.free_memory or not st.running)
            idle = self.executor.free_slots()
            queue = False
            if not fits or idle == 0:
                # a one-CPU task needing no more than a worker's share of memory may wait on a
                # worker behind a short task: it holds nothing while it waits (a worker runs one
                # task at a time), and what it reserved from when it starts (Running.held)
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
                checked = self._elastic_offer(task) if cpus > task.cpu_limit else None
                if checked is not None:
                    sent = copy.copy(task)  # the attempt's copy carries its threads; ours stays as planned
                    sent.threads = cpus
                    sent.threads_checked = checked
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
            reserve(st, key, attempt, cpus, mem, time.time(), held=not queue)
            self._emit("on_submit", task, attempt, mem)
            progressed = True
        for item in deferred:
            heapq.heappush(st.ready, item)
        # tasks still to look up (beyond this round's share): the loop turns again without waiting
        return progressed or bool(st.fresh and self.cache is not None)

    def _speculate(self) -> bool:
        """Give stragglers a second attempt on idle workers (see :class:`Speculation`)."""
        st = self.state
        started = False
        if waiting_to_start(st):
            return False  # an attempt queued behind another needs an idle worker more than a copy does
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
        if c.stats.get("threads_declined"):
            self._elastic_nodes[task.node_id] = None  # its plan will not allow them: offer no more
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
        from smallpond.execution.attempt_files import producer_key_of
        from smallpond.execution.commit import commit_path
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
        redo = recompute_producers(st, key, fresh)
        for k in redo:
            remove_path(commit_path(self.rt, k))
        # a resumed producer's own inputs may never have been added: nothing needed them then
        self._on_resumed(add_missing_inputs(st, self.rt, redo, self._all_tasks))
        return True

    def _abort_running(self) -> None:
        for key, attempt in abandon_running(self.state):
            if self.executor is not None:
                self.executor.cancel(key, attempt)
