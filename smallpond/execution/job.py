"""The job engine: the one place a job is set up, run and finished.

Both the DataFrame :class:`~smallpond.session.Session` and the node-API
:class:`~smallpond.execution.driver.Driver` run their work through a :class:`Job`:

1. :meth:`Job.start` creates the job folder (or reopens it: same job id and data root means
   resume, only if the folder is safely the user's, see :mod:`~smallpond.execution.ownership`),
   takes the job lock (a second run of the same job at once is refused), finishes a publication
   an earlier run began (:mod:`~smallpond.execution.publication`), adds smallpond's log
   sinks, writes ``log/.STATUS`` = running, handles SIGTERM like Ctrl-C, starts the executor and
   the event log (``log/events.jsonl``, :mod:`smallpond.execution.events`);
2. :meth:`Job.run_nodes` (incremental, for sessions) or :meth:`Job.run_plan` (a whole plan,
   for the Driver) plans nodes into tasks and has the scheduler run them, taking what it can from
   the task cache shared by jobs (:mod:`smallpond.execution.cache`; :func:`dry_run_plan` and
   :meth:`Job.dry_run_nodes` say beforehand what would run and why); when every task of the
   computation has succeeded, the sinks it prepared are published together (all or none);
3. :meth:`Job.finish` stops the executor, writes the final status (``success``, ``failure`` or
   ``interrupted``) and the run report (``log/report.html``, :mod:`smallpond.execution.report`),
   removes the leftovers of abandoned attempts and of sinks that were prepared but not
   published and, on success, the intermediate folders (keeping the sinks' commit records, so a
   rerun of the job never publishes a sink twice); it releases the lock, restores the
   SIGTERM handler and removes the log sinks it added.

Every job keeps an event log and writes a report, whoever runs it; what is shown on the console
(progress bars, the end-of-job summary) is the caller's choice (:mod:`smallpond.execution.observe`).

Nothing here changes the host process beyond that: no environment variable, no global logging
configuration (worker processes set theirs up in :mod:`smallpond.execution.worker`); the SIGTERM
handler is installed only when the process has none of the user's own (the default, or the one
``ray.init`` sets, which only exits), and only while the job runs: SIGTERM ends a job the same
way on every backend (status ``interrupted``, exit status 143, resumable).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Sequence

from smallpond.common import SWITCH_OFF, env_setting, import_in_background, logger
from smallpond.errors import JobFailed, JobTerminated, ParameterError
from smallpond.execution import publication, retention
from smallpond.execution.cache_keys import JobCache
from smallpond.execution.commit import remove_orphan_outputs
from smallpond.execution.events import EventLog
from smallpond.execution.executors.base import Executor
from smallpond.execution.fingerprint_sources import user_source_stats
from smallpond.execution.ownership import JobLock
from smallpond.execution.planner import ExecutionPlan, Planner
from smallpond.execution.runtime import RuntimeContext, resolve_job
from smallpond.execution.scheduler import (
    Scheduler,
    SchedulerListener,
    Speculation,
    invalidate,
    keep_only_finished,
)
from smallpond.execution.stall import StallLog
from smallpond.io.filesystem import dump, remove_path
from smallpond.logical.base import Node
from smallpond.logical.node import LogicalPlan


def _has_entries(folder: str) -> bool:
    try:
        return bool(os.listdir(folder))
    except FileNotFoundError:
        return False


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


def make_executor(
    rt: RuntimeContext,
    num_workers: Optional[int] = None,
    *,
    backend: str = "local",
    ray_address: Optional[str] = None,
    platform=None,
) -> Executor:
    """The backend for a job; the one place that picks it.

    * ``backend="ray"``: every attempt a Ray task on the cluster at ``ray_address``;
    * a ``platform`` (``"mpi"``, ``"base"``, ``"manual"``, a module name or a
      :class:`~smallpond.platform.Platform`; not ``"local"``): the queue backend, whose executors
      that platform starts (``num_workers`` of them, default one per usable CPU; none for
      ``"manual"``: they are started by hand);
    * else the embedded backend: ``num_workers`` worker processes of this process.

    ``num_workers`` caps the attempts run at once (default: one per CPU, of this machine or of the
    Ray cluster). Ray is imported only here, only when asked for.
    """
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0):
        raise ParameterError(f"num_executors must be a non-negative integer (0: one per usable CPU), got {num_workers!r}")
    if platform not in EMBEDDED_PLATFORMS:
        if backend == "ray":
            raise ParameterError(
                f"platform={platform!r} (the queue backend) and the Ray backend (ray_address={ray_address!r}) "
                "were both asked for; give one"
            )
        from smallpond.execution.executors.queue import QueueExecutor

        return QueueExecutor(rt, platform=platform, num_executors=num_workers or 0)
    if backend == "ray":
        try:
            from smallpond.execution.executors.ray import RayExecutor
        except ModuleNotFoundError as e:
            if e.name != "ray":
                raise
            raise ParameterError(
                f'ray_address={ray_address!r} asks for the Ray backend, but Ray is not installed: pip install "smallpond[ray]"'
            ) from e
        return RayExecutor(rt, ray_address, num_workers)
    if backend != "local":
        raise ParameterError(f"backend must be one of ['local', 'ray'], got {backend!r}")
    from smallpond.execution.executors.local import LocalExecutor

    return LocalExecutor(rt, num_workers)


class Job:
    """One job: runtime context, log sinks, planner, scheduler, executor, status and clean-up.

    Args:
        rt: the job's runtime context.
        executor: the backend (default: worker processes on this machine).
        num_workers: workers of the default backend (default: one per usable CPU).
        max_retry_count, max_fail_count: the scheduler's retry policy.
        listeners: observers of the scheduler besides the job's own event log (progress bars).
        log_name: the job log file is ``log/{log_name}.log``.
        restart: move an existing folder of this job aside and start over (the way out when a
            folder cannot be resumed, e.g. its secret is lost).
        name: a label for the job, shown by ``smallpond jobs`` and in the report.
        speculation: when stragglers get a second copy.
        task_cache_max_bytes: after the job, remove the least recently used entries of the task
            cache (``rt.task_cache``) until it holds at most this many bytes (None: no bound).
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
        restart: bool = False,
        name: Optional[str] = None,
        speculation: Speculation = Speculation(),
        task_cache_max_bytes: Optional[int] = None,
    ) -> None:
        self.rt = rt
        self.name = name
        self.speculation = speculation
        self.task_cache_max_bytes = task_cache_max_bytes
        self.restart = restart
        self.interrupted: Optional[str] = None
        self._lock: Optional[JobLock] = None
        self._prev_sigterm: Any = _NOT_INSTALLED  # the handler to restore at the end, once ours is installed
        #: sink key -> the dataset it was published as (a sink that ran again is published again)
        self._published: Dict[str, Any] = {}
        self._code_stats: Optional[Dict[str, Any]] = None  # the user's code files when the last run ended
        self._executor = executor
        self._num_workers = num_workers
        self.max_retry_count = max_retry_count
        self.max_fail_count = max_fail_count
        self.listeners = list(listeners)
        self.log_name = log_name
        self.executor: Optional[Executor] = None
        self.planner: Optional[Planner] = None
        self.scheduler: Optional[Scheduler] = None
        self.failed = False
        self.finished = False
        #: the first error that failed the job (a TaskError for a failed task)
        self.error: Optional[BaseException] = None
        self.events: Optional[EventLog] = None
        self.report_path: Optional[str] = None
        self._sinks: List[int] = []

    # -- life cycle ------------------------------------------------------------------------------
    def _start_executor(self) -> None:
        try:
            self.executor.start()  # workers boot while the user's script builds its plan
        except BaseException as e:
            # a cluster that cannot run the job: failure status, executor (a Ray connection),
            # log sinks and lock released here, since no caller will finish a job not started
            error = self._as_interruption(e)
            self.record_error(error)
            self.finish(False)
            if error is e:
                raise
            raise error from None
        if self._prev_sigterm is not _NOT_INSTALLED:
            self._install_sigterm_handler()  # again: ray.init takes SIGTERM for itself

    def start(self, plan: Optional[LogicalPlan] = None) -> "Job":
        """Take the job's folder and start its executor; ``plan``: the plan this job will run,
        when known now (:func:`run_job`, the Driver): the executor starts no more workers ahead
        than it can run tasks at once (:func:`~smallpond.execution.plansize.most_tasks_at_once`)."""
        rt = self.rt
        rt.initialize(restart=self.restart)
        self._lock = JobLock(rt.layout)
        self._lock.acquire()
        started = False
        try:
            # a publication an earlier run of this job began and did not finish (or had to give up)
            abandoned = publication.finish_earlier(rt)
            # the cache first: a folder that is not safe to use stops the job before any worker starts
            cache = JobCache(rt) if rt.task_cache else None
            self.executor = self._executor or make_executor(rt, self._num_workers)
            if self.executor.name != "queue" and _has_entries(rt.layout.queue_root):
                # executors of an earlier queue-backend run (the only writer of queue/) go on for a
                # while after their scheduler died: their attempts stop before this run reads a
                # commit record (a queue executor sees to it itself when it starts)
                from smallpond.execution.executors.queue import end_earlier_queue_runs

                end_earlier_queue_runs(rt)
            at_once = _most_tasks_at_once(plan)
            if at_once is not None and hasattr(self.executor, "expect_tasks_at_once"):  # (a backend of the user's may lack it)
                self.executor.expect_tasks_at_once(at_once)
            if self.executor.starts_quietly:  # local workers boot while loguru's sinks are set up
                self._start_executor()
                started = True
            self._sinks = _add_log_sinks(rt, self.log_name or rt.exec_id or "scheduler")
            write_status(rt, "running")
            self._install_sigterm_handler()
            if not started:
                self._start_executor()
                started = True
            self.events = EventLog(rt.log_root)
            self.events.job_start(rt, name=self.name, executor=self.executor.describe())
            if abandoned is not None:
                publication.tell_abandoned(abandoned, self.events)
        except BaseException:
            if not self.finished:  # workers started before a later step failed
                if started:
                    self.executor.shutdown()
                _remove_log_sinks(self._sinks)
                self._sinks = []
                if self._lock.held:
                    write_status(rt, "failure")
            self._restore_sigterm_handler()
            self._lock.release()
            raise
        self.planner = Planner(rt, parallelism=self.executor.capacity.num_workers, attempt_limits=self.executor.attempt_limits())
        self.scheduler = Scheduler(
            rt,
            self.executor,
            max_retry_count=self.max_retry_count,
            max_fail_count=self.max_fail_count,
            listeners=[self.events, StallLog(executor=self.executor), *self.listeners],
            speculation=self.speculation,
            cache=cache,
            plan_nodes=self._planned_nodes,
        )
        logger.info(
            "smallpond job {} at {} on {}; task cache {}",
            rt.job_id,
            rt.job_root,
            self.executor.describe(),
            rt.task_cache or "off",
        )
        if rt.enforce_memory_limit:  # attempts using more than their memory are stopped (or a warning says why not)
            from smallpond.execution.memory_watch import announce

            announce(self.executor.name)
        return self

    def finish(self, ok: Optional[bool] = None, *, remove_intermediates: bool = False, remove_output_root: bool = False) -> None:
        """Stop the executor and write the final status.

        On success, ``remove_intermediates`` removes queue/, temp/ and staging/ (a session, whose
        results were read already), and ``remove_output_root`` output/ as well, except the files a
        published result lists; the commit records of the sinks and of the tasks whose files are
        kept move to config/ (:mod:`~smallpond.execution.retention`).
        """

        if self.finished:
            return
        self.finished = True
        if self._lock is None or not self._lock.held:
            # start() never took the job, or gave it up when it failed: another run may hold it
            # (a second run refused while the first runs), so nothing in the job's folder is this
            # run's to clean up, discard or mark
            self._restore_sigterm_handler()
            _remove_log_sinks(self._sinks)
            self._sinks = []
            return
        ok = (not self.failed and not self.interrupted) if ok is None else (ok and not self.interrupted)
        rt = self.rt
        try:
            if self.executor is not None:
                self.executor.record_outcome(self._status(ok))
                self.executor.shutdown()
            cleanup_temp_dirs(rt)
            remove_orphan_outputs(rt)
            self._discard_unpublished()
            status = self._status(ok)  # asked again: a SIGTERM during the shutdown makes it interrupted
            write_status(rt, status)
            if self.events is not None:
                interrupted = self.interrupted or isinstance(self.error, (KeyboardInterrupt, SystemExit))
                self.events.job_end("success" if ok else "interrupted" if interrupted else "failure", self.error)
                self.report_path = _write_report(rt, self.events.whole_history(), status)
            if ok and (remove_intermediates or remove_output_root):
                retention.remove_intermediates(rt, remove_output_root=remove_output_root)  # keeps what published results list
            if rt.task_cache and self.task_cache_max_bytes is not None:
                self._bound_cache()
            if self.interrupted:
                print(
                    f"smallpond: job {rt.job_id} was interrupted ({self.interrupted}); run the same command again "
                    f"(job id {rt.job_id}, data root {rt.data_root}) to resume it",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            self._restore_sigterm_handler()
            if self._lock is not None:
                self._lock.release()
            _remove_log_sinks(self._sinks)
            self._sinks = []

    def _bound_cache(self) -> None:
        from smallpond.execution.cache import clean

        try:
            report = clean(self.rt.task_cache, max_bytes=self.task_cache_max_bytes, dry_run=False)
            if report.removed:
                logger.info("task cache {}: {}", self.rt.task_cache, report)
        except Exception as e:  # bounding the cache never fails a job
            logger.warning("task cache {}: could not bound it to {} bytes: {}", self.rt.task_cache, self.task_cache_max_bytes, e)

    def _status(self, ok: bool) -> str:
        """The job's status word as ``.STATUS`` records it: success, interrupted or failure."""
        return "success" if ok else ("interrupted" if self.interrupted else "failure")

    # -- signals ---------------------------------------------------------------------------------
    def _install_sigterm_handler(self) -> None:
        """Handle SIGTERM like Ctrl-C, unless the process has a handler of the user's own.

        Called again once the executor has started: ``ray.init`` replaces the process's SIGTERM
        handler with its own (``sys.exit``: the job would end as a failure with exit status 1 or
        15, not as interrupted). Ray's handlers, found before the job or set while it starts, are
        not the user's, so ours takes their place for the job's life and the handler found first
        is restored at the end. Ray still cleans up: ours ends the process too, through
        ``Job.finish`` (which disconnects from a Ray it connected to, stopping a local instance)
        and Ray's ``atexit`` hooks.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if current == self._on_sigterm or _users_own_handler(current):
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._prev_sigterm is _NOT_INSTALLED:
            self._prev_sigterm = signal.SIG_DFL if previous is None else previous

    def _restore_sigterm_handler(self) -> None:
        if self._prev_sigterm is _NOT_INSTALLED or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._prev_sigterm)
        self._prev_sigterm = _NOT_INSTALLED

    def _on_sigterm(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name
        raise JobTerminated(signum)

    def _as_interruption(self, e: BaseException) -> BaseException:
        """``e``, or the JobTerminated it stands for.

        Ray turns what a signal handler raises during ``ray.wait``/``ray.get`` into a
        ``SystemExit(1)`` of its own (its core worker checks signals and re-raises them), so ours
        records the signal before it raises and any SystemExit or KeyboardInterrupt after that is
        the SIGTERM. While the executor starts, ``ray.init`` has its own handler installed for
        seconds (``sys.exit``, after stopping the Ray processes it started): a SystemExit raised
        while a Ray handler is in place of ours is a SIGTERM too.
        """
        if isinstance(e, JobTerminated) or not isinstance(e, (SystemExit, KeyboardInterrupt)):
            return e
        if self.interrupted == signal.SIGTERM.name:
            return JobTerminated(signal.SIGTERM)
        if (
            isinstance(e, SystemExit)
            and self._prev_sigterm is not _NOT_INSTALLED
            and _is_ray_handler(signal.getsignal(signal.SIGTERM))
        ):
            self.interrupted = signal.SIGTERM.name
            return JobTerminated(signal.SIGTERM)
        return e

    # -- running ---------------------------------------------------------------------------------
    def _planned_nodes(self) -> List[Node]:
        """Every node planned so far (what the plan check reads; see plancheck.py)."""
        return list(self.planner._planned_nodes)

    def _check_open(self) -> None:
        if self.finished:
            raise ParameterError("this job has finished; start a new one (smallpond.init() for a session)")

    def _refresh_workers(self) -> None:
        """Before a run after the first (a session's next computation): replace the workers if a
        file of the user's code changed since the last run ended. A worker imports the user's
        modules once and keeps them; a task keyed by the new file's contents must not run the old
        code (its result would be cached under the new code's key)."""
        before, now = self._code_stats, user_source_stats()
        if before is None:
            return
        changed = sorted(p for p, st in before.items() if now.get(p) != st)
        if changed:
            more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
            self.executor.restart_workers(f"{changed[0]}{more} changed since the last run")
            self._install_sigterm_handler()  # again: a Ray executor that reconnected ran ray.init

    def _run(self, targets) -> Dict[str, Any]:
        self._refresh_workers()
        try:
            results = self.scheduler.run(targets, self.planner.tasks)
            self._publish()
        except BaseException as e:
            error = self._as_interruption(e)
            self.record_error(error)
            if isinstance(error, KeyboardInterrupt) and not self.interrupted:
                self.interrupted = "SIGINT"
            self._discard_unpublished()
            self.scheduler.state = keep_only_finished(self.scheduler.state)
            if error is e:
                raise
            raise error from None
        finally:
            self._code_stats = user_source_stats()  # what the workers may have loaded
        st = self.scheduler.state
        return {k: st.done[k] for k in results}

    # -- publication (execution/publication.py) ------------------------------------------------
    def _publish(self) -> None:
        publication.publish_prepared(self.rt, self.scheduler.state, self._published, self.events)

    def _discard_unpublished(self) -> None:
        publication.discard_unpublished(self.rt, self.scheduler.state if self.scheduler else None, self._published)

    def record_error(self, e: BaseException) -> None:
        """Mark the job failed by ``e`` (the first error is the one reported)."""
        self.failed = True
        if self.error is None:
            self.error = e.errors[0] if isinstance(e, JobFailed) and e.errors else e

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
        except BaseException as e:
            self.record_error(e)
            raise
        logger.info("job {} planned: {} tasks; job root {}", rt.job_id, len(exec_plan.tasks), rt.job_root)
        results = self._run([exec_plan.root_task])
        st = self.scheduler.state
        exec_plan.results = dict(st.done)
        exec_plan.results.update(results)
        exec_plan.successful = True
        exec_plan.num_executed = len(st.executed)
        exec_plan.num_resumed = len(st.resumed)
        exec_plan.num_reused = len(st.reused)
        from smallpond.execution.ops.sink import warn_results_without_columns

        warn_results_without_columns(exec_plan.tasks, exec_plan.results)
        logger.info(
            "job {} succeeded: {} task(s) run, {} resumed from checkpoints, {} reused from the task cache",
            rt.job_id,
            exec_plan.num_executed,
            exec_plan.num_resumed,
            exec_plan.num_reused,
        )
        return exec_plan

    def dry_run_nodes(self, nodes: Sequence[Node]):
        """What computing ``nodes`` would run and reuse, and why; nothing runs and nothing of
        this job changes (see :mod:`smallpond.execution.dryrun`)."""
        from smallpond.execution.dryrun import dry_run

        self._check_open()
        planner = self.planner.fork()
        targets = [t for n in nodes for t in planner.plan(n)]
        cache = self.scheduler.cache.fork() if self.scheduler.cache is not None else None
        return dry_run(
            self.rt,
            targets,
            planner.tasks,
            done=dict(self.scheduler.state.done),
            cache=cache,
            planned_nodes=planner._planned_nodes,
        )

    def summary(self, show_error: bool = True):
        """The end-of-job summary block (:mod:`smallpond.execution.summary`) of this run so far."""
        from smallpond.execution.events import JobHistory
        from smallpond.execution.summary import format_summary

        history = self.events.history if self.events is not None else JobHistory()
        return format_summary(history, self.rt.job_root, report_path=self.report_path, show_error=show_error)

    # -- results of a session ---------------------------------------------------------------------
    def tasks_of(self, node: Node):
        return self.planner.node_to_tasks.get(id(node)) if self.planner else None

    def is_done(self, node: Node) -> bool:
        tasks = self.tasks_of(node)
        return bool(tasks) and all(t.key in self.scheduler.state.done for t in tasks)

    def invalidate(self, node: Node) -> None:
        """Forget the results of ``node`` and of every planned task downstream of it, on disk too."""
        from smallpond.execution.commit import commit_path

        tasks = self.tasks_of(node) or []
        state = self.scheduler.state
        known = dict(state.tasks)
        keys = invalidate(state, [t.key for t in tasks])
        # the nodes travel again, pickled as they are now (a value their functions read may have changed)
        self.executor.forget_nodes({id(t.node): t.node for k in keys if (t := known.get(k)) is not None}.values())
        if self.scheduler.cache is not None:
            # recomputed means recomputed: not taken from the task cache either, even when the
            # node is planned only later (a new session over an earlier job's results)
            self.scheduler.cache.forget(keys, node_id=int(node.id))
        for key in keys:
            remove_path(commit_path(self.rt, key))


#: a job of at most this many tasks counts as small: its reader waits for the result imports
SMALL_JOB_TASKS = 64
#: what reading a result in this process needs: ``final_output.to_arrow_table()`` (and a frame's
#: ``to_arrow``/``to_pandas``/``take``) reads the Parquet files with pyarrow in
#: :mod:`smallpond.io.arrow`. Not DuckDB: only the workers query with it (importing it here cost
#: a one-task job ~40 ms of CPU on the core its worker needs, and delayed the worker's result
#: while the import held the GIL); not pandas (~0.2 s of CPU, for ``to_pandas`` alone).
RESULT_IMPORTS = ("pyarrow", "pyarrow.parquet", "smallpond.io.arrow")


class WarmResultImports(SchedulerListener):
    """Import what reading the result needs while the job's first attempts run.

    A script that runs a small plan with :func:`run_job` reads its result next, in this process,
    and importing pyarrow and its Parquet reader takes ~60 ms of one core that would come after the job.
    This process mostly waits on its workers once the first attempt is sent, so the imports run
    then, in a background thread (:func:`~smallpond.common.import_in_background`); started any
    earlier they compete with the job's start and delay its first task. A job of more than
    :data:`SMALL_JOB_TASKS` tasks is left alone (the imports are small beside it, and its
    scheduler is busier). ``SP_WARM_IMPORTS=0`` turns it off.
    """

    def __init__(self, modules=RESULT_IMPORTS, start: Optional[Callable[[], Any]] = None) -> None:
        self.modules = modules
        #: starts the imports and returns the thread (a session's: once per process)
        self.start = start or (lambda: import_in_background(self.modules))
        self.small = False
        self.thread = None

    def on_start(self, state) -> None:
        self.small = len(state.tasks) <= SMALL_JOB_TASKS and env_setting("SP_WARM_IMPORTS") not in SWITCH_OFF

    def on_tick(self, state, elapsed: float) -> None:
        if self.small and state.running:
            self.small = False  # once
            self.thread = self.start()


def _most_tasks_at_once(plan: Optional[LogicalPlan]) -> Optional[int]:
    """:func:`~smallpond.execution.plansize.most_tasks_at_once` of ``plan``; None without a plan,
    or for one that cannot be planned (planning it says why, as the job's error)."""
    if plan is None:
        return None
    from smallpond.execution.plansize import most_tasks_at_once

    try:
        return most_tasks_at_once(plan.root_node)
    except Exception:
        return None


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
    restart: bool = False,
    speculation: Speculation = Speculation(),
    task_cache_max_bytes: Optional[int] = None,
) -> ExecutionPlan:
    """Run a whole plan as a job. Returns the ExecutionPlan with results; raises JobFailed on failure."""
    job = Job(
        rt,
        executor=executor,
        num_workers=num_workers,
        max_retry_count=max_retry_count,
        max_fail_count=max_fail_count,
        listeners=(*listeners, WarmResultImports()),
        restart=restart,
        speculation=speculation,
        task_cache_max_bytes=task_cache_max_bytes,
    )
    ok = False
    try:
        job.start(plan)
        exec_plan = job.run_plan(plan, manifest_only_final_results=manifest_only_final_results)
        ok = True
        return exec_plan
    finally:
        # intermediates stay unless asked; what a published result lists (FinalResults may be a
        # manifest of files in staging/) stays even then (retention.py)
        job.finish(ok, remove_intermediates=remove_output_root)


def dry_run_plan(plan: LogicalPlan, rt: RuntimeContext, *, manifest_only_final_results: bool = True):
    """Plan a whole job and say which tasks would run, which would be reused (from this job's
    commit records or the task cache) and why, without running anything or starting workers.

    Returns a :class:`~smallpond.execution.dryrun.DryRun` (``str()`` of it is the listing).
    """
    from smallpond.execution.dryrun import dry_run

    planner = Planner(rt)
    exec_plan = planner.create_exec_plan(plan, manifest_only_final_results)
    cache = JobCache(rt) if rt.task_cache else None
    return dry_run(rt, [exec_plan.root_task], exec_plan.tasks, cache=cache, planned_nodes=planner._planned_nodes)


def _write_report(rt: RuntimeContext, history=None, state: Optional[str] = None) -> Optional[str]:
    """Write ``log/report.html`` from the job folder; a report that cannot be written never fails the job."""
    from smallpond.execution.report import write_report

    try:
        return write_report(rt.job_root, history=history, state=state)
    except Exception as e:
        logger.warning("could not write the run report of job {}: {}", rt.job_id, e)
        return None


def _add_log_sinks(rt: RuntimeContext, name: str) -> List[int]:
    """smallpond's console sink at the job's console level, and ``log/{name}.log``.

    Console lines go through :func:`~smallpond.execution.progress.write_console`, which moves
    progress bars out of their way.
    """
    from smallpond.execution.joblog import PlainSink
    from smallpond.execution.progress import write_console

    logger.remove_default_sink()
    # written without loguru until something needs it (see smallpond.execution.joblog)
    return [
        logger.add_plain(PlainSink(rt.console_log_level, write=write_console, colorize=_stderr_is_tty())),
        logger.add_plain(
            PlainSink(
                rt.file_log_level,
                path=os.path.join(rt.log_root, f"{name}.log"),
                rotation=None if rt.disable_log_rotation else "100 MB",
                retention=5,
            )
        ),
    ]


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _remove_log_sinks(ids: List[int]) -> None:
    for sink_id in ids:
        try:
            logger.remove(sink_id)
        except ValueError:
            pass
    logger.restore_default_sink()


#: ``Job._prev_sigterm`` before the job installs its SIGTERM handler
_NOT_INSTALLED = object()


def _is_ray_handler(handler) -> bool:
    """Whether a SIGTERM handler is one Ray sets: ``ray.init`` sets ``sys.exit(signum)`` on every
    driver, and a local instance it starts sets one that stops its processes, then
    ``sys.exit(1)`` (``Job.finish`` and Ray's ``atexit`` hook stop them too)."""
    return getattr(handler, "__module__", "").startswith("ray.") and getattr(handler, "__qualname__", "").endswith(
        "sigterm_handler"
    )


def _users_own_handler(handler) -> bool:
    """Whether a SIGTERM handler is one the user set (left alone: the job does not install its
    own). The default, one set outside Python and Ray's are not."""
    return handler not in (signal.SIG_DFL, None) and not _is_ray_handler(handler)


__all__ = [
    "Job",
    "JobFailed",
    "make_runtime_ctx",
    "run_job",
    "dry_run_plan",
    "write_status",
    "cleanup_temp_dirs",
    "make_executor",
]
