"""The job engine: the one place a job is set up, run and finished.

Both the DataFrame :class:`~smallpond.session.Session` and the node-API
:class:`~smallpond.execution.driver.Driver` run their work through a :class:`Job`:

1. :meth:`Job.start` creates the job folder (or reopens it: same job id and data root means
   resume), adds smallpond's log sinks, writes ``log/.STATUS`` = running and starts the executor;
2. :meth:`Job.run_nodes` (incremental, for sessions) or :meth:`Job.run_plan` (a whole plan,
   for the Driver) plans nodes into tasks and has the scheduler run them;
3. :meth:`Job.finish` stops the executor, writes the final status, removes the leftovers of
   abandoned attempts and, on success, the intermediate folders, and removes the log sinks it added.

Nothing here changes the host process beyond that: no environment variable, no global logging
configuration (worker processes set theirs up in :mod:`smallpond.execution.worker`).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence

from smallpond.common import logger
from smallpond.errors import JobFailed, ParameterError
from smallpond.execution.attempt import remove_orphan_outputs
from smallpond.execution.executors.base import Executor
from smallpond.execution.planner import ExecutionPlan, Planner
from smallpond.execution.runtime import RuntimeContext, resolve_job
from smallpond.execution.scheduler import Scheduler, SchedulerListener, Speculation, invalidate, keep_only_finished
from smallpond.io.filesystem import dump, remove_path
from smallpond.logical.base import Node
from smallpond.logical.node import LogicalPlan


def make_runtime_ctx(job_id=None, job_time=None, data_root=None, **kwargs) -> RuntimeContext:
    """A runtime context for a job identified by :func:`~smallpond.execution.runtime.resolve_job`."""
    jid, jt, root = resolve_job(job_id, job_time, data_root)
    return RuntimeContext(jid, jt, root, **kwargs)


def write_status(rt: RuntimeContext, status: str) -> None:
    """Append ``{status}@{time}`` to ``log/.STATUS`` (the last line is the job's state)."""
    os.makedirs(rt.log_root, exist_ok=True)
    with open(rt.job_status_path, "a") as f:
        f.write(f"{status}@{datetime.now():%Y-%m-%d-%H-%M-%S}\n")


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


#: platform names that mean the embedded backend (worker processes of this process)
EMBEDDED_PLATFORMS = (None, "", "local")


def make_executor(rt: RuntimeContext, num_workers: Optional[int] = None, *, platform=None) -> Executor:
    """The backend a job runs on; the one place that picks it.

    * no ``platform`` (or ``"local"``): the embedded backend, ``num_workers`` worker processes
      of this process (default: one per usable CPU);
    * a platform (``"mpi"``, ``"base"``, ``"manual"``, a module name or a
      :class:`~smallpond.platform.Platform`): the queue backend, whose executors that platform
      starts (``num_workers`` of them, default one per usable CPU; none for ``"manual"``:
      they are started by hand).
    """
    if platform in EMBEDDED_PLATFORMS:
        from smallpond.execution.executors.local import LocalExecutor

        return LocalExecutor(rt, num_workers)
    from smallpond.execution.executors.queue import QueueExecutor

    return QueueExecutor(rt, platform=platform, num_executors=num_workers or 0)


class Job:
    """One job: runtime context, log sinks, planner, scheduler, executor, status and clean-up.

    Args:
        rt: the job's runtime context.
        executor: the backend (default: worker processes on this machine).
        num_workers: workers of the default backend (default: one per usable CPU), or executors
            the platform starts.
        platform: run on the queue backend, with executors this platform starts (see
            :func:`make_executor`); default: the embedded backend.
        max_retry_count, max_fail_count: the scheduler's retry policy.
        listeners: observers of the scheduler (progress, event log, summary).
        log_name: the job log file is ``log/{log_name}.log``.
    """

    def __init__(
        self,
        rt: RuntimeContext,
        *,
        executor: Optional[Executor] = None,
        num_workers: Optional[int] = None,
        max_retry_count: int = 5,
        max_fail_count: int = 3,
        listeners: Sequence[SchedulerListener] = (),
        log_name: Optional[str] = None,
        speculation: Speculation = Speculation(),
        platform=None,
    ) -> None:
        self.rt = rt
        self.speculation = speculation
        self._executor = executor
        self._num_workers = num_workers
        self._platform = platform
        self.max_retry_count = max_retry_count
        self.max_fail_count = max_fail_count
        self.listeners = list(listeners)
        self.log_name = log_name
        self.executor: Optional[Executor] = None
        self.planner: Optional[Planner] = None
        self.scheduler: Optional[Scheduler] = None
        self.failed = False
        self.finished = False
        self._sinks: List[int] = []

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "Job":
        rt = self.rt
        rt.initialize()
        self._sinks = _add_log_sinks(rt, self.log_name or rt.exec_id or "scheduler")
        self.executor = self._executor or make_executor(rt, self._num_workers, platform=self._platform)
        try:
            self.executor.start()  # workers boot while the user's script builds its plan
        except BaseException:
            # nothing of this job ran: leave its status as it was (another scheduler may own it)
            self.finished = True
            self.executor.shutdown()
            _remove_log_sinks(self._sinks)
            self._sinks = []
            raise
        write_status(rt, "running")
        self.planner = Planner(rt, parallelism=self.executor.capacity.num_workers)
        self.scheduler = Scheduler(
            rt,
            self.executor,
            max_retry_count=self.max_retry_count,
            max_fail_count=self.max_fail_count,
            listeners=self.listeners,
            speculation=self.speculation,
        )
        logger.info("smallpond job {} at {} on {}", rt.job_id, rt.job_root, self.executor.describe())
        return self

    def finish(self, ok: Optional[bool] = None, *, remove_intermediates: bool = False, remove_output_root: bool = False) -> None:
        """Stop the executor and write the final status.

        On success, ``remove_intermediates`` removes queue/, temp/ and staging/ (a session, whose
        results were read already), and ``remove_output_root`` output/ as well.
        """
        if self.finished:
            return
        self.finished = True
        ok = (not self.failed) if ok is None else ok
        rt = self.rt
        try:
            if self.executor is not None:
                self.executor.shutdown()
            cleanup_temp_dirs(rt)
            remove_orphan_outputs(rt)
            write_status(rt, "success" if ok else "failure")
            if ok and (remove_intermediates or remove_output_root):
                rt.cleanup(remove_output_root=remove_output_root)
        finally:
            _remove_log_sinks(self._sinks)
            self._sinks = []

    # -- running ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.finished:
            raise ParameterError("this job has finished; start a new one (smallpond.init() for a session)")

    def _run(self, targets) -> Dict[str, Any]:
        try:
            return self.scheduler.run(targets, self.planner.tasks)
        except BaseException:
            self.failed = True
            self.scheduler.state = keep_only_finished(self.scheduler.state)
            raise

    def run_nodes(self, nodes: Sequence[Node]) -> List[List[Any]]:
        """Plan ``nodes`` (reusing what was planned and computed before) and run them.

        Returns each node's output datasets in partition order; raises JobFailed.
        """
        self._check_open()
        task_lists = [self.planner.plan(n) for n in nodes]
        results = self._run([t for ts in task_lists for t in ts])
        return [[results[t.key] for t in ts] for ts in task_lists]

    def run_plan(self, plan: LogicalPlan, *, manifest_only_final_results: bool = True) -> ExecutionPlan:
        """Plan and run a whole logical plan; named outputs and ``FinalResults`` are published."""
        self._check_open()
        rt = self.rt
        try:
            dump(plan, rt.logical_plan_path, secret=rt.secret)
        except Exception as e:  # a plan with unpicklable parts still runs; it just is not saved
            logger.debug("could not save the logical plan: {}", e)
        with open(os.path.join(rt.log_root, "plan.dot"), "w") as f:
            f.write(plan.graph().source)
        try:
            exec_plan = self.planner.create_exec_plan(plan, manifest_only_final_results)
        except BaseException:
            self.failed = True
            raise
        logger.info("job {} planned: {} tasks; job root {}", rt.job_id, len(exec_plan.tasks), rt.job_root)
        results = self._run([exec_plan.root_task])
        st = self.scheduler.state
        exec_plan.results = dict(st.done)
        exec_plan.results.update(results)
        exec_plan.successful = True
        exec_plan.num_executed = len(st.executed)
        exec_plan.num_resumed = len(st.resumed)
        logger.info(
            "job {} succeeded: {} task(s) run, {} resumed from checkpoints",
            rt.job_id,
            exec_plan.num_executed,
            exec_plan.num_resumed,
        )
        return exec_plan

    # -- results of a session ---------------------------------------------------------------------
    def tasks_of(self, node: Node):
        return self.planner.node_to_tasks.get(id(node)) if self.planner else None

    def is_done(self, node: Node) -> bool:
        tasks = self.tasks_of(node)
        return bool(tasks) and all(t.key in self.scheduler.state.done for t in tasks)

    def invalidate(self, node: Node) -> None:
        """Forget the results of ``node`` and of every planned task downstream of it, on disk too."""
        from smallpond.execution.attempt import commit_path

        tasks = self.tasks_of(node) or []
        for key in invalidate(self.scheduler.state, [t.key for t in tasks]):
            remove_path(commit_path(self.rt, key))


def run_job(
    plan: LogicalPlan,
    rt: RuntimeContext,
    *,
    max_retry_count: int = 5,
    max_fail_count: int = 3,
    manifest_only_final_results: bool = True,
    remove_output_root: bool = False,
    num_workers: Optional[int] = None,
    executor: Optional[Executor] = None,
    listeners: Sequence[SchedulerListener] = (),
    speculation: Speculation = Speculation(),
) -> ExecutionPlan:
    """Run a whole plan as a job. Returns the ExecutionPlan with results; raises JobFailed on failure."""
    job = Job(
        rt,
        executor=executor,
        num_workers=num_workers,
        max_retry_count=max_retry_count,
        max_fail_count=max_fail_count,
        listeners=listeners,
        speculation=speculation,
    )
    ok = False
    try:
        job.start()
        exec_plan = job.run_plan(plan, manifest_only_final_results=manifest_only_final_results)
        ok = True
        return exec_plan
    finally:
        # FinalResults may be a manifest of files in staging/: intermediates stay unless asked
        # (upstream's --remove_output_root removes them, and keeps output/)
        job.finish(ok, remove_intermediates=remove_output_root)


def _add_log_sinks(rt: RuntimeContext, name: str) -> List[int]:
    """smallpond's console sink at the job's console level, and ``log/{name}.log``."""
    logger.remove_default_sink()
    return [
        logger.add(sys.stderr, level=rt.console_log_level),
        logger.add(
            os.path.join(rt.log_root, f"{name}.log"),
            level=rt.file_log_level,
            rotation=None if rt.disable_log_rotation else "100 MB",
            retention=5,
        ),
    ]


def _remove_log_sinks(ids: List[int]) -> None:
    for sink_id in ids:
        try:
            logger.remove(sink_id)
        except ValueError:
            pass
    logger.restore_default_sink()


__all__ = ["Job", "JobFailed", "make_runtime_ctx", "run_job", "write_status", "cleanup_temp_dirs", "make_executor"]
