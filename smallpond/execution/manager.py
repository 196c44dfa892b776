"""Running a whole LogicalPlan as a job from settings: the Driver's scheduler mode and upstream's
``JobManager``, one code path.

The :class:`~smallpond.execution.driver.Driver` parses its command line into settings (one per
driver option, by its ``dest``) and hands them to :func:`run_plan_as_job`; upstream scripts that
call ``JobManager(data_root, ...).run(plan, ...)`` directly get the same settings from the
keyword arguments (:meth:`JobManager.run`): same runtime context, same executor choice, same
:class:`~smallpond.execution.job.Job`. Arguments that change nothing in this build are the
Driver's no-effect options (:data:`~smallpond.execution.driver_options.NO_EFFECT`); passing one gives one
warning listing them all, as the Driver does. No picture of the plan is drawn (upstream rendered
``graph.png`` and needed Graphviz for every job): ``log/plan.dot`` holds its DOT text.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from smallpond.common import as_flag
from smallpond.errors import ParameterError
from smallpond.execution.driver_options import NO_EFFECT, driver_defaults, unused_env_settings, warn_no_effect
from smallpond.execution.planner import ExecutionPlan

#: JobManager.run arguments named otherwise among the Driver's options (argument -> option dest)
RENAMED = {"user_tags": "tags"}


def env_overrides(entries, where: str) -> Dict[str, str]:
    """``NAME=VALUE`` entries (or a dict) as a dict; a malformed entry is a ParameterError."""
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    bad = [kv for kv in entries if not isinstance(kv, str) or "=" not in kv or kv.startswith("=")]
    if bad:
        raise ParameterError(f"{where}: expected NAME=VALUE entries, got {', '.join(map(repr, bad))}")
    return dict(kv.split("=", 1) for kv in entries)


def runtime_ctx_from(a: argparse.Namespace):
    """The job's runtime context from Driver settings ``a`` (less the options that have no effect,
    which the Driver and JobManager warn about themselves: see ``driver_options.NO_EFFECT``)."""
    from smallpond.execution.job import make_runtime_ctx

    rt = make_runtime_ctx(
        a.job_id,
        a.job_time,
        a.data_root,
        num_executors=a.num_executors,
        random_seed=a.random_seed,
        env_overrides=env_overrides(a.env_variables, "env_variables"),
        enforce_memory_limit=a.enforce_memory_limit,
        fault_inject_prob=a.fault_inject_prob,
        remove_empty_parquet=a.remove_empty_parquet,
        skip_task_with_empty_input=a.skip_task_with_empty_input,
        console_log_level=a.console_log_level,
        file_log_level=a.file_log_level,
        disable_log_rotation=a.disable_log_rotation,
        output_path=a.output_path,
        task_cache=a.task_cache,
        elastic_threads=a.elastic_threads,
    )
    rt.exec_id = a.exec_id
    return rt


def speculation_from(a: argparse.Namespace):
    from smallpond.execution.scheduler import Speculation

    return Speculation.of(
        a.speculative_exec,
        quantile=a.speculation_quantile,
        multiplier=a.speculation_multiplier,
        min_runtime=a.speculation_min_runtime,
    )


def run_plan_as_job(
    plan,
    a: argparse.Namespace,
    *,
    backend: str = "local",
    ray_address: Optional[str] = None,
    num_workers: Optional[int] = None,
    raise_error: bool = False,
) -> Optional[ExecutionPlan]:
    """Run ``plan`` as a job with Driver settings ``a``; the ExecutionPlan, or None if it failed
    (``raise_error``: the job's error is raised instead). The end-of-job summary goes to stderr.

    ``num_workers`` (default ``a.num_executors or None``) is what the backend is given.
    """
    from smallpond.execution.job import Job, make_executor
    from smallpond.execution.progress import console_listeners

    if plan is None:
        raise ValueError(f"Driver.run(plan) needs a LogicalPlan in {a.mode} mode")
    if a.task_cache_max_bytes is not None and a.task_cache_max_bytes < 0:
        raise ParameterError(f"--task_cache_max_bytes must be >= 0, got {a.task_cache_max_bytes}")
    rt = runtime_ctx_from(a)
    workers = num_workers if num_workers is not None else (a.num_executors or None)
    job = Job(
        rt,
        executor=make_executor(rt, workers, backend=backend, ray_address=ray_address, platform=a.platform),
        max_retry_count=a.max_retry_count,
        max_fail_count=1 if a.fail_fast_on_failure else a.max_fail_count,
        log_name="scheduler",
        restart=a.restart,
        listeners=console_listeners(),
        name=None if a.job_name == "smallpond" else a.job_name,  # the default names nothing
        speculation=speculation_from(a),
        task_cache_max_bytes=a.task_cache_max_bytes,
    )
    ok = False
    try:
        job.start(plan)
        exec_plan = job.run_plan(plan, manifest_only_final_results=not a.self_contained_final_results)
        ok = True
        return exec_plan
    except Exception as e:
        if job.events is None:  # the job never started: nothing will summarize the error
            raise
        job.record_error(e)
        if raise_error:
            raise
        return None  # the summary below says what failed, once
    finally:
        # intermediates stay unless asked; what a published result lists stays even then (retention.py)
        job.finish(ok, remove_intermediates=a.remove_output_root)
        if job.events is not None:
            sys.stdout.flush()
            sys.stderr.write(job.summary())
            sys.stderr.flush()


class JobManager:
    """Upstream's entry point for running a LogicalPlan as a job from Python.

    ``JobManager(data_root, python_venv, task_image, platform).run(plan, job_id=..., ...)`` runs the
    plan as the Driver's scheduler mode does and returns its ExecutionPlan; a job that fails raises
    its error (a :class:`~smallpond.errors.TaskError` naming the failed task, or a
    :class:`~smallpond.errors.JobFailed`) after the end-of-job summary. Without a ``platform`` the
    job runs embedded, with one worker process per usable CPU of this machine (what upstream's
    executors on one machine could run); ``platform="mpi"`` (``"base"``, ``"manual"``, a module
    name or a Platform) runs ``num_executors`` queue executors, as ``--platform`` does.
    """

    def __init__(
        self, data_root: Optional[str] = None, python_venv: Optional[str] = None, task_image: str = "default", platform=None
    ) -> None:
        self.data_root = data_root
        self.python_venv = python_venv
        self.task_image = task_image
        self.platform = platform

    def run(
        self,
        plan,
        job_id: Optional[str] = None,
        job_time: Optional[float] = None,
        job_name: str = "smallpond",
        job_priority: Optional[int] = None,
        num_executors: int = 1,
        num_executors_per_task: int = 5,
        resource_group: str = "localhost",
        env_variables: Optional[List[str]] = None,
        sidecars: Optional[List[str]] = None,
        user_tags: Optional[List[str]] = None,
        random_seed: Optional[int] = None,
        max_retry_count: int = 5,
        max_fail_count: int = 3,
        prioritize_retry: bool = False,
        speculative_exec: str = "enable",
        stop_executor_on_failure: bool = False,
        fail_fast_on_failure: bool = False,
        nonzero_exitcode_as_oom: bool = False,
        fault_inject_prob: float = 0.0,
        enable_profiling: bool = False,
        enable_diagnostic_metrics: bool = False,
        enable_sched_state_dump: bool = False,
        remove_empty_parquet: bool = False,
        remove_output_root: bool = False,
        skip_task_with_empty_input: bool = False,
        manifest_only_final_results: bool = True,
        memory_allocator: str = "mimalloc",
        memory_purge_delay: int = 10000,
        bind_numa_node: bool = False,
        enforce_memory_limit: bool = False,
        share_log_analytics: Optional[bool] = None,
        console_log_level: str = "INFO",
        file_log_level: str = "DEBUG",
        disable_log_rotation: bool = False,
        sched_state_observers: Optional[List[Any]] = None,
        output_path: Optional[str] = None,
        **kwargs,
    ) -> ExecutionPlan:
        """Run ``plan``; the ExecutionPlan (``successful``, ``final_output``, ``get_output(name)``).

        Every argument means what the Driver option of its name means (``user_tags``: ``--tags``;
        ``manifest_only_final_results=False``: ``--self_contained_final_results``). ``kwargs`` may
        name the Driver's other options (``task_cache``, ``restart``, ``elastic_threads``,
        ``speculation_quantile``, ...). Arguments with no effect in this build (the Driver's
        no-effect options, ``sched_state_observers``, any other keyword) are warned about, once,
        when given a value other than their default. ``data_root``, ``python_venv``, ``task_image``
        and ``platform`` given here are used only where the constructor left them unset (upstream
        used the JobManager's): a value that differs from the constructor's is warned about.
        """
        given = {k: v for k, v in locals().items() if k not in ("self", "plan", "kwargs", "given")}
        from smallpond.logical.node import LogicalPlan

        if not isinstance(plan, LogicalPlan):
            raise ParameterError(f"JobManager.run: plan must be a LogicalPlan, got {type(plan).__name__}")
        defaults = driver_defaults()
        settings = dict(defaults)
        for name, value in given.items():
            if RENAMED.get(name, name) in defaults:
                settings[RENAMED.get(name, name)] = value
        own = self._own_settings(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in own}
        settings.update(
            own,
            self_contained_final_results=not manifest_only_final_results,
            env_variables=env_variables or [],
        )
        ignored = [name for name in kwargs if name not in defaults or name == "mode"]
        settings.update({name: value for name, value in kwargs.items() if name not in ignored})
        # the no-effect options given a value of their own, by this method's names
        unused = [
            name
            for name, value in {**given, "python_venv": own["python_venv"], "task_image": own["task_image"]}.items()
            if RENAMED.get(name, name) in NO_EFFECT and not _is_default(value, defaults[RENAMED.get(name, name)])
        ]
        if sched_state_observers:
            unused.append("sched_state_observers")
        warn_no_effect("JobManager arguments", unused + ignored + unused_env_settings())
        # the Driver's yes/no options as bools: restart="false" (a command line's value passed on)
        # restarted the job, moving its folder aside
        for name, default in defaults.items():
            if isinstance(default, bool) and settings.get(name) is not None:
                settings[name] = as_flag("JobManager.run", name, settings[name])
        a = argparse.Namespace(**settings)
        # upstream's executors each ran as many tasks at once as the machine had CPUs: embedded,
        # that is one worker per usable CPU; on a platform, num_executors executors are started
        embedded = a.platform in (None, "", "local")  # (a platform= keyword names it too)
        if embedded and num_executors > 1:
            from smallpond.common import logger

            logger.warning(
                "JobManager.run(num_executors={}) without a platform runs embedded, on this machine only, with one "
                "worker per usable CPU; give JobManager(platform='mpi') (or 'base') to start {} executors",
                num_executors,
                num_executors,
            )
        # (0: one per usable CPU; the settings' num_executors, JobManager's default 1, is not the
        # embedded worker count)
        workers = 0 if embedded else num_executors
        return run_plan_as_job(plan, a, num_workers=workers, raise_error=True)

    def _own_settings(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The constructor's settings (``data_root``, ``python_venv``, ``task_image``, ``platform``)
        as this run uses them. Upstream's ``run()`` has no parameter of these names (reference §4.5):
        given to it they fell into its ``**kwargs`` and the JobManager's own were used. So the
        constructor's value wins; ``run()``'s fills one the constructor left at its default, and
        one that differs from the constructor's is warned about (it is not used)."""
        from smallpond.common import logger

        own = {name: getattr(self, name) for name in _CONSTRUCTOR_DEFAULTS}
        for name, default in _CONSTRUCTOR_DEFAULTS.items():
            if name not in kwargs:
                continue
            given = kwargs[name]
            if _is_default(own[name], default):
                own[name] = given
            elif given != own[name]:
                logger.warning(
                    "JobManager.run({}={!r}) is not used: the JobManager was made with {}={!r}, which this job "
                    "uses (as upstream's JobManager does); give the value to JobManager({}=...) instead",
                    name,
                    given,
                    name,
                    own[name],
                    name,
                )
        return own


#: the constructor's settings and their defaults (JobManager.run may name them too: see _own_settings)
_CONSTRUCTOR_DEFAULTS = {"data_root": None, "python_venv": None, "task_image": "default", "platform": None}


def _is_default(value, default) -> bool:
    return value == default or (value in (None, [], ()) and default in (None, [], (), False))
