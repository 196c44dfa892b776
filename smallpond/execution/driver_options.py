"""The Driver's options: what they are, their defaults, and which of them change nothing in this build.

One table for the command line (:class:`~smallpond.execution.driver.Driver`) and for upstream's
Python entry point (:class:`~smallpond.execution.manager.JobManager`), whose keyword arguments are
the same settings: :data:`NO_EFFECT` lists the options that are accepted but have no effect, and
:func:`warn_no_effect` is the one warning either gives when some are used.
"""

from __future__ import annotations

import argparse
import socket
from typing import Dict, List

from smallpond.common import DEFAULT_MAX_FAIL_COUNT, DEFAULT_MAX_RETRY_COUNT
from smallpond.execution.env_settings import ELASTIC_DEFAULT, ENV_SETTINGS, env_value, non_negative_int

MODES = ("scheduler", "executor", "ray")

#: driver options (by dest) that upstream scripts pass but that change nothing in this build; using
#: one gives one warning listing them all, and ``--help`` marks them "(no effect)"
NO_EFFECT = (
    "job_priority",
    "resource_group",
    "sidecars",
    "tags",
    "task_image",
    "python_venv",
    "runtime_ctx_path",
    "num_executors_per_task",
    "prioritize_retry",
    "stop_executor_on_failure",
    "nonzero_exitcode_as_oom",
    "enable_profiling",
    "enable_diagnostic_metrics",
    "enable_sched_state_dump",
    "memory_allocator",
    "memory_purge_delay",
    "bind_numa_node",
    "share_log_analytics",
)

#: settings whose ``SP_*`` variable changes nothing in this build, with the value that asks for nothing
NO_EFFECT_ENV = {"bind_numa_node": False, "memory_allocator": "system"}


def driver_defaults() -> Dict[str, object]:
    """The Driver's own value of each of its options (by dest) when a command line gives none."""
    p = argparse.ArgumentParser(add_help=False)
    add_driver_arguments(p)
    return vars(p.parse_args(["scheduler"]))


def warn_no_effect(what: str, names: List[str]) -> None:
    """One warning listing the settings (``what``: "driver options", ...) that change nothing here."""
    if names:
        from smallpond.common import logger

        logger.warning("these {} have no effect in this build and are ignored: {}", what, ", ".join(names))


def unused_env_settings() -> List[str]:
    """The ``SP_*`` variables set to a value that has no effect in this build (as their flags)."""
    return [ENV_SETTINGS[name][0] for name, default in NO_EFFECT_ENV.items() if env_value(name) not in (None, default)]


def _executor_count(text: str) -> int:
    """``--num_executors``: a count, 0 for one per usable CPU (argparse names the flag)."""
    try:
        return non_negative_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0: one per usable CPU), got {text!r}") from None


def add_driver_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the Driver's own options (and its positional mode) on ``p``."""
    # required, as upstream's (so `mode --flags in1 in2` gives a user positional in1 in2);
    # parse_arguments supplies "scheduler" when a command line names no mode
    p.add_argument("mode", choices=MODES, help="scheduler (the default when none is given), executor or ray")
    p.add_argument("--exec_id", default=socket.gethostname())
    p.add_argument("--job_id", default=None, help="job id (a UUID or any string); reuse it to resume a job")
    p.add_argument("--job_time", type=float, default=None, help="job time as epoch seconds")
    p.add_argument("--job_name", default="smallpond")
    p.add_argument("--job_priority", type=int, default=None)
    p.add_argument("--resource_group", default="localhost")
    p.add_argument("--env_variables", nargs="*", default=[], help="K=V pairs set in every worker")
    p.add_argument("--sidecars", nargs="*", default=[])
    p.add_argument("--tags", nargs="*", default=[])
    p.add_argument("--task_image", default="default")
    p.add_argument("--python_venv", default=None)
    p.add_argument("--data_root", default=None, help="root directory of job data (default ~/.smallpond/data)")
    p.add_argument("--runtime_ctx_path", default=None)
    p.add_argument(
        "--num_executors",
        type=_executor_count,
        default=0,
        help="worker processes, or executors a --platform starts (0: one per usable CPU)",
    )
    p.add_argument("--num_executors_per_task", type=int, default=5)
    p.add_argument(
        "--random_seed",
        type=int,
        default=None,
        help="seed of every random number the tasks draw (default: a constant, so reruns give the same bytes)",
    )
    p.add_argument(
        "--task_cache",
        default=None,
        help="folder of the task cache shared by jobs (default: {data_root}/.smallpond/users/{uid}/task_cache, or SP_TASK_CACHE); 'off' turns it off",
    )
    p.add_argument(
        "--task_cache_max_bytes",
        type=int,
        default=None,
        help="after the job, remove least recently used task-cache entries beyond this many bytes",
    )
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="plan, list which tasks would run and which would be reused (and why), and exit: run nothing",
    )
    p.add_argument("--max_retry", "--max_retry_count", dest="max_retry_count", type=int, default=DEFAULT_MAX_RETRY_COUNT)
    p.add_argument("--max_fail", "--max_fail_count", dest="max_fail_count", type=int, default=DEFAULT_MAX_FAIL_COUNT)
    p.add_argument("--prioritize_retry", action="store_true")
    p.add_argument(
        "--speculative_exec",
        choices=("disable", "enable", "aggressive"),
        default="enable",
        help="give stragglers a second copy on an idle worker (default: enable)",
    )
    p.add_argument("--speculation_quantile", type=float, default=None, help="fraction of a node's tasks done first (0.75)")
    p.add_argument("--speculation_multiplier", type=float, default=None, help="times the median runtime (1.5)")
    p.add_argument("--speculation_min_runtime", type=float, default=None, help="seconds a task runs at least (60)")
    p.add_argument("--enable_speculative_exec", dest="speculative_exec", action="store_const", const="enable")
    p.add_argument("--disable_speculative_exec", dest="speculative_exec", action="store_const", const="disable")
    p.add_argument("--stop_executor_on_failure", action="store_true")
    p.add_argument("--fail_fast", "--fail_fast_on_failure", dest="fail_fast_on_failure", action="store_true")
    p.add_argument("--nonzero_exitcode_as_oom", action="store_true")
    p.add_argument(
        "--elastic_threads",
        action="store_const",
        const=True,
        default=ELASTIC_DEFAULT,
        help="give a lone task whose SQL ends in ORDER BY the idle CPUs as DuckDB threads too "
        "(faster stage tails; rows with equal sort keys may then come out in another order, "
        "and floating-point aggregates in that SQL may differ). By default only tasks whose "
        "output bytes cannot depend on the thread count get them",
    )
    p.add_argument(
        "--no_elastic_threads",
        dest="elastic_threads",
        action="store_const",
        const=False,
        help="never give a task more DuckDB threads than its cpu_limit",
    )
    p.add_argument("--fault_inject", "--fault_inject_prob", dest="fault_inject_prob", type=float, default=0.0)
    p.add_argument("--enable_profiling", action="store_true")
    p.add_argument("--enable_diagnostic_metrics", action="store_true")
    p.add_argument("--enable_sched_state_dump", dest="enable_sched_state_dump", action="store_true", default=False)
    p.add_argument("--disable_sched_state_dump", dest="enable_sched_state_dump", action="store_false")
    p.add_argument("--remove_empty_parquet", action="store_true")
    p.add_argument("--remove_output_root", action="store_true")
    p.add_argument("--skip_task_with_empty_input", action="store_true")
    p.add_argument("--self_contained_final_results", action="store_true")
    p.add_argument(
        "--malloc",
        "--memory_allocator",
        dest="memory_allocator",
        choices=("system", "jemalloc", "mimalloc"),
        default="mimalloc",
    )
    p.add_argument("--memory_purge_delay", type=int, default=10000)
    p.add_argument("--bind_numa_node", action="store_true")
    p.add_argument(
        "--enforce_memory_limit",
        action="store_true",
        help="stop an attempt whose Python/Arrow/numpy code uses more memory than its limit (OutOfMemory, retried)",
    )
    p.add_argument("--enable_log_analytics", dest="share_log_analytics", action="store_true", default=None)
    p.add_argument("--disable_log_analytics", dest="share_log_analytics", action="store_false")
    p.add_argument("--console_log_level", default="INFO")
    p.add_argument("--file_log_level", default="DEBUG")
    p.add_argument("--disable_log_rotation", action="store_true")
    p.add_argument("--output_path", default=None, help="publish named outputs and FinalResults here (copies)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start the job over: an existing folder of this job is moved aside to {folder}.restarted-{time} "
        "(the way out when it cannot be resumed, e.g. its config/secret was lost)",
    )
    p.add_argument(
        "--platform",
        default=None,
        help="run on the queue backend, executors started by: mpi, base (subprocesses), manual (by hand)",
    )
    p.add_argument(
        "--ray_address",
        default=None,
        help="run tasks on this Ray cluster (host:port, auto, or local for a private one); implies ray mode",
    )
    for action in p._actions:
        if action.dest in NO_EFFECT:
            action.help = f"{action.help} (no effect)" if action.help else "(no effect)"
