"""The scheduler: one event loop around an explicit state.

State (:class:`SchedState`), per task key:

* ``waiting``  — some input is not done yet;
* ``ready``    — inputs done; a heap ordered by critical-path length (longest chain first), then id;
* ``running``  — submitted to the executor, with its attempt number;
* ``done``     — output DataSet known (from this run, an earlier run of this session, or a
  matching commit record on disk: that is resume);
* ``failed``   — gave up, with its TaskError.

Policies: an attempt that fails with a retryable error is retried (attempt + 1) until the task has
failed ``max_fail_count`` times or used ``max_retry_count`` retries; an :class:`OutOfMemory`
failure doubles the task's memory for the next attempt (up to the machine's); a non-retryable
error (bad SQL, missing file, user exception types) fails the job at once. Metadata-only tasks
run inline here; everything else goes to the executor.
"""

from __future__ import annotations

import heapq
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Dict, List, Optional, Set

from loguru import logger

from smallpond.common import DEFAULT_MAX_FAIL_COUNT, DEFAULT_MAX_RETRY_COUNT
from smallpond.errors import JobFailed, OutOfMemory, TaskError
from smallpond.execution.attempt import execute_attempt, is_retryable, read_commit, run_inline, to_task_error
from smallpond.execution.executors.base import Completion, Executor
from smallpond.execution.task import RuntimeContext, Task, default_memory_limit
from smallpond.io.filesystem import atomic_write_text, remove_path
from smallpond.logical.graph import critical_path_lengths, topological_order


@dataclass
class SchedState:
    tasks: Dict[str, Task] = field(default_factory=dict)
    waiting: Dict[str, Set[str]] = field(default_factory=dict)
    ready: List[tuple] = field(default_factory=list)
    running: Dict[str, int] = field(default_factory=dict)
    done: Dict[str, object] = field(default_factory=dict)
    failed: Dict[str, TaskError] = field(default_factory=dict)
    attempts: Dict[str, int] = field(default_factory=dict)
    fail_counts: Dict[str, int] = field(default_factory=dict)
    consumers: Dict[str, List[str]] = field(default_factory=dict)
    priority: Dict[str, float] = field(default_factory=dict)
    resumed: Set[str] = field(default_factory=set)
    executed: Set[str] = field(default_factory=set)


def write_status(rt: RuntimeContext, status: str) -> None:
    os.makedirs(rt.log_root, exist_ok=True)
    with open(rt.job_status_path, "a") as f:
        f.write(f"{status}@{datetime.now():%Y-%m-%d-%H-%M-%S}\n")


class Scheduler:
    """Runs tasks to completion on an executor, with retries, checkpoints and resume.

    Args:
        runtime_ctx: the job's runtime context.
        executor: the backend; ``None`` runs every task in this process (debugging).
        max_retry_count: retries per task before giving up.
        max_fail_count: failed attempts per task before the job fails.
        progress: called as ``progress(state, elapsed_seconds)`` after each change.
    """

    def __init__(
        self,
        runtime_ctx: RuntimeContext,
        executor: Optional[Executor],
        *,
        max_retry_count: int = DEFAULT_MAX_RETRY_COUNT,
        max_fail_count: int = DEFAULT_MAX_FAIL_COUNT,
        progress: Optional[Callable[["SchedState", float], None]] = None,
    ) -> None:
        self.rt = runtime_ctx
        self.executor = executor
        self.max_retry_count = max_retry_count
        self.max_fail_count = max(1, max_fail_count)
        self.progress = progress
        self.state = SchedState()
        self._free_cpus = executor.num_cpus if executor else 1
        self._free_memory = executor.memory if executor else 0
        self._default_memory: Dict[int, int] = {}  # by cpu_limit; psutil per task costs ~0.2 ms

    def _memory_of(self, task: Task) -> int:
        if task.memory_limit:
            return task.memory_limit
        mem = self._default_memory.get(task.cpu_limit)
        if mem is None:
            mem = self._default_memory[task.cpu_limit] = default_memory_limit(self.rt, task.cpu_limit)
        return mem

    # -- state transitions ----------------------------------------------------------------------
    def _add(self, targets: List[Task], all_tasks: Dict[str, Task]) -> List[str]:
        st = self.state
        order = topological_order([t.key for t in targets], lambda k: all_tasks[k].input_keys)
        new = [k for k in order if k not in st.tasks]
        for k in new:
            st.tasks[k] = all_tasks[k]
        lengths = critical_path_lengths(order, lambda k: all_tasks[k].input_keys, lambda k: all_tasks[k].estimated_cost())
        st.priority.update(lengths)
        for k in new:
            for d in all_tasks[k].input_keys:
                st.consumers.setdefault(d, []).append(k)
        for k in new:
            t = st.tasks[k]
            if not t.exec_on_scheduler:
                # the fingerprint covers the inputs' identity, so a matching record is reusable
                # even when its (metadata-only) inputs are recomputed
                record = read_commit(self.rt, t)
                if record is not None:
                    st.done[k] = record["dataset"]
                    st.resumed.add(k)
                    continue
            pending = {d for d in t.input_keys if d not in st.done}
            st.waiting[k] = pending
            if not pending:
                self._make_ready(k)
        return new

    def _make_ready(self, key: str) -> None:
        st = self.state
        st.waiting.pop(key, None)
        heapq.heappush(st.ready, (-st.priority.get(key, 0.0), int(st.tasks[key].id), key))

    def _finish(self, key: str, dataset) -> None:
        st = self.state
        st.running.pop(key, None)
        st.done[key] = dataset
        st.executed.add(key)
        for c in st.consumers.get(key, []):
            pending = st.waiting.get(c)
            if pending is None:
                continue
            pending.discard(key)
            if not pending:
                self._make_ready(c)

    def _fail(self, key: str, err: BaseException) -> bool:
        """Record a failed attempt. Returns True if the task will be retried."""
        st = self.state
        task = st.tasks[key]
        st.running.pop(key, None)
        st.fail_counts[key] = st.fail_counts.get(key, 0) + 1
        retryable = is_retryable(err)
        if isinstance(err, TaskError):
            terr = err
        else:
            terr = to_task_error(task, st.attempts.get(key, 0), err, [])
        if retryable and st.fail_counts[key] < self.max_fail_count and st.attempts.get(key, 0) < self.max_retry_count:
            if terr.cause_type in ("OutOfMemory", "OutOfMemoryException") or isinstance(err, OutOfMemory):
                self._boost_memory(task)
            st.attempts[key] = st.attempts.get(key, 0) + 1
            logger.warning("retrying {} (attempt {}) after: {}", key, st.attempts[key], terr.message)
            self._make_ready(key)
            return True
        st.failed[key] = terr
        logger.info("task failed: {}", terr)
        return False

    def _boost_memory(self, task: Task) -> None:
        current = self._memory_of(task)
        cap = self.executor.memory if self.executor else self.rt.usable_memory_size
        task.memory_limit = int(min(cap, current * 2))
        logger.info("{}: memory limit raised to {} bytes after running out of memory", task.key, task.memory_limit)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, targets: List[Task], all_tasks: Dict[str, Task]) -> Dict[str, object]:
        """Run ``targets`` (and whatever they need) to completion. Returns outputs by task key.

        Raises :class:`JobFailed` (with the TaskErrors) if a task cannot be completed.
        """
        st = self.state
        start = time.time()
        self._add(targets, all_tasks)
        target_keys = [t.key for t in targets]
        if st.resumed:
            logger.info("resume: {} task(s) already committed are skipped", len(st.resumed))
        try:
            while not all(k in st.done for k in target_keys):
                if st.failed:
                    break
                progressed = self._dispatch()
                if st.failed or all(k in st.done for k in target_keys):
                    continue
                if st.running:
                    timeout = 0.0 if progressed else 0.5
                    for c in self._poll(timeout):
                        self._on_completion(c)
                elif not progressed:
                    # nothing running and nothing could start: never spin silently
                    missing = [k for k in target_keys if k not in st.done]
                    blocked = [st.tasks[item[2]] for item in st.ready][:3]
                    detail = "; ".join(
                        f"{t.key} needs {t.cpu_limit} CPU(s) and {t.memory_limit or 'default'} bytes" for t in blocked
                    )
                    raise RuntimeError(
                        f"scheduler stalled: {missing[:5]} not done and nothing can start "
                        f"(free CPUs {self._free_cpus}, free memory {self._free_memory}; {detail or 'no task is ready'})"
                    )
                if self.progress:
                    self.progress(st, time.time() - start)
        except BaseException:
            self._abort_running()
            raise
        if st.failed:
            self._abort_running()
            errors = list(st.failed.values())
            raise JobFailed(f"{len(errors)} task(s) failed; first: {errors[0]}", errors) from errors[0]
        return {k: st.done[k] for k in target_keys}

    def _queue_slots(self) -> int:
        """Workers that take a task queued behind their current short one (pipelining)."""
        slots = getattr(self.executor, "queue_slots", None)
        return slots() if slots is not None else 0

    def _poll(self, timeout: float) -> List[Completion]:
        if self.executor is None:
            return []
        return self.executor.poll(timeout)

    def _dispatch(self) -> bool:
        st = self.state
        progressed = False
        deferred = []
        while st.ready and not st.failed:
            item = heapq.heappop(st.ready)
            key = item[2]
            task = st.tasks[key]
            inputs = [st.done[d] for d in task.input_keys]
            attempt = st.attempts.get(key, 0)
            if task.exec_on_scheduler or self.executor is None:
                # metadata-only tasks (and everything, without an executor) run right here
                try:
                    if task.exec_on_scheduler:
                        ds = run_inline(self.rt, task, inputs)
                    else:
                        ds = execute_attempt(self.rt, task, inputs, attempt)
                except TaskError as e:
                    self._fail(key, e)
                    continue
                self._finish(key, ds)
                progressed = True
                continue
            mem = self._memory_of(task)
            fits = task.cpu_limit <= self._free_cpus and (mem <= self._free_memory or not st.running)
            idle = self.executor.free_slots()
            queue = False
            if not fits or idle == 0:
                # a one-CPU task needing no more than a worker's share of memory may wait on a
                # worker behind a short task and run with what that task leaves: it reserves
                # nothing of its own, and a worker still runs one task at a time
                share = self.executor.memory // max(1, self.executor.num_cpus)
                queue = task.cpu_limit <= 1 and mem <= share and self._queue_slots() > 0
                if not queue:
                    deferred.append(item)
                    if idle == 0 and not self._queue_slots():
                        break
                    continue
            try:
                if queue:
                    self.executor.submit(task, inputs, attempt, queue=True)
                else:
                    self.executor.submit(task, inputs, attempt)
            except TaskError as e:
                st.attempts[key] = attempt
                st.fail_counts[key] = self.max_fail_count
                st.failed[key] = e
                logger.error("task failed: {}", e)
                break
            st.running[key] = attempt
            task._reserved = (0, 0) if queue else (task.cpu_limit, mem)
            self._free_cpus -= task._reserved[0]
            self._free_memory -= task._reserved[1]
            progressed = True
        for item in deferred:
            heapq.heappush(st.ready, item)
        return progressed

    def _on_completion(self, c: Completion) -> None:
        st = self.state
        if st.running.get(c.key) != c.attempt:
            return  # a cancelled or superseded attempt
        task = st.tasks[c.key]
        cpu, mem = getattr(task, "_reserved", (task.cpu_limit, 0))
        self._free_cpus += cpu
        self._free_memory += mem
        if c.ok:
            self._finish(c.key, c.dataset)
        else:
            self._fail(c.key, c.error)

    def _abort_running(self) -> None:
        st = self.state
        for key in list(st.running):
            if self.executor is not None:
                self.executor.cancel(key)
            task = st.tasks[key]
            cpu, mem = getattr(task, "_reserved", (task.cpu_limit, 0))
            self._free_cpus += cpu
            self._free_memory += mem
            st.running.pop(key, None)
            st.ready.append((0, int(task.id), key))
        heapq.heapify(st.ready)


def cleanup_temp_dirs(rt: RuntimeContext) -> None:
    """Remove leftovers of abandoned attempts (``*.tmp-*`` dirs) under staging/ and output/."""
    for root in (rt.staging_root, rt.output_root):
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            sub = os.path.join(root, name)
            if not os.path.isdir(sub):
                continue
            for entry in os.listdir(sub):
                if ".tmp-" in entry:
                    remove_path(os.path.join(sub, entry))


_ = atomic_write_text
