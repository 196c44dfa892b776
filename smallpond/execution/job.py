"""Running a whole logical plan as a job: the path behind the Driver's ``scheduler`` mode.

``run_job`` initializes the job root (or reuses it: same job id, same data root means resume),
plans, runs the scheduler on the local executor, writes ``log/.STATUS`` and cleans up.
"""

from __future__ import annotations

import glob
import os
import sys
import uuid
from datetime import datetime
from typing import Optional

from loguru import logger

from smallpond.errors import JobFailed
from smallpond.execution.planner import ExecutionPlan, Planner
from smallpond.execution.scheduler import Scheduler, cleanup_temp_dirs, write_status
from smallpond.execution.task import JobId, RuntimeContext
from smallpond.io.filesystem import dump
from smallpond.logical.node import LogicalPlan


def find_job_time(data_root: str, job_id: str) -> Optional[datetime]:
    """The job time of an existing job root for ``job_id`` under ``data_root`` (newest first)."""
    roots = sorted(glob.glob(os.path.join(os.path.abspath(data_root), f"*.{job_id}")))
    for r in reversed(roots):
        stamp = os.path.basename(r)[: -len(job_id) - 1]
        try:
            return datetime.strptime(stamp, "%Y-%m-%d-%H-%M-%S")
        except ValueError:
            continue
    return None


def make_runtime_ctx(job_id=None, job_time=None, data_root=None, **kwargs) -> RuntimeContext:
    job_id = str(job_id) if job_id else str(uuid.uuid4())
    try:
        jid = JobId(hex=job_id)
    except ValueError:
        # any string works as a job id: map it to a stable UUID
        jid = JobId(bytes=uuid.uuid5(uuid.NAMESPACE_URL, job_id).bytes)
    data_root = data_root or os.path.join(os.path.expanduser("~"), ".smallpond", "data")
    if job_time is None:
        job_time = find_job_time(data_root, str(jid)) or datetime.now()
    elif isinstance(job_time, (int, float)):
        job_time = datetime.fromtimestamp(job_time)
    elif isinstance(job_time, str):
        job_time = datetime.fromisoformat(job_time)
    return RuntimeContext(jid, job_time, data_root, **kwargs)


def setup_logging(rt: RuntimeContext, name: str = "scheduler") -> list:
    """Console at ``console_log_level``, ``log/{name}.log`` at ``file_log_level``; stdlib logging captured."""
    from smallpond.utility import capture_stdlib_logging

    logger.remove()
    ids = [
        logger.add(sys.stderr, level=rt.console_log_level),
        logger.add(
            os.path.join(rt.log_root, f"{name}.log"),
            level=rt.file_log_level,
            rotation=None if rt.disable_log_rotation else "100 MB",
            retention=5,
        ),
    ]
    capture_stdlib_logging()
    return ids


def run_job(
    plan: LogicalPlan,
    rt: RuntimeContext,
    *,
    max_retry_count: int = 5,
    max_fail_count: int = 3,
    manifest_only_final_results: bool = True,
    remove_output_root: bool = False,
    num_workers: Optional[int] = None,
) -> ExecutionPlan:
    """Plan and run ``plan``. Returns the ExecutionPlan with results; raises JobFailed on failure."""
    from smallpond.execution.executors.local import LocalExecutor

    rt.initialize()
    write_status(rt, "running")
    try:
        dump(plan, rt.logical_plan_path, secret=rt.secret)
    except Exception as e:  # a plan with unpicklable parts still runs; it just is not saved
        logger.debug("could not save the logical plan: {}", e)
    try:
        with open(os.path.join(rt.log_root, "plan.dot"), "w") as f:
            f.write(plan.graph().source)
        exec_plan = Planner(rt, parallelism=num_workers).create_exec_plan(plan, manifest_only_final_results)
    except BaseException:
        write_status(rt, "failure")
        raise
    logger.info("job {} planned: {} tasks; job root {}", rt.job_id, len(exec_plan.tasks), rt.job_root)
    executor = LocalExecutor(rt, num_workers)
    executor.start()
    scheduler = Scheduler(rt, executor, max_retry_count=max_retry_count, max_fail_count=max_fail_count)
    try:
        results = scheduler.run([exec_plan.root_task], exec_plan.tasks)
        exec_plan.results = dict(scheduler.state.done)
        exec_plan.results.update(results)
        exec_plan.successful = True
        exec_plan.num_executed = len(scheduler.state.executed)
        exec_plan.num_resumed = len(scheduler.state.resumed)
    except JobFailed:
        write_status(rt, "failure")
        raise
    except BaseException:
        write_status(rt, "failure")
        raise
    finally:
        executor.shutdown()
    cleanup_temp_dirs(rt)
    write_status(rt, "success")
    logger.info(
        "job {} succeeded: {} task(s) run, {} resumed from checkpoints", rt.job_id, exec_plan.num_executed, exec_plan.num_resumed
    )
    if remove_output_root:
        rt.cleanup(remove_output_root=False)
    return exec_plan
