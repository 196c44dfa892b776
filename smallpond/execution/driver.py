"""The Driver: the command line for node-API scripts.

A script builds a LogicalPlan and hands it to ``Driver().run(plan)``::

    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+")
    user_args, driver_args = driver.parse_arguments()
    plan = build_plan(**driver.get_arguments())
    driver.run(plan)          # python script.py scheduler --job_id ... --data_root ...

Modes:

* ``scheduler`` (default): plan and run the job. Without ``--platform`` or ``--ray_address`` it
  runs embedded: worker processes of this process (``--num_executors`` of them, default one per
  usable CPU). With ``--platform`` it runs on the queue backend
  (:mod:`smallpond.execution.executors.queue`): ``--platform mpi`` starts ``--num_executors``
  executor processes through ``mpirun``, ``--platform base`` as plain subprocesses,
  ``--platform manual`` starts none (they are started by hand); ``--platform local`` is the
  embedded backend. ``--ray_address`` selects Ray (as the ``ray`` mode does).
* ``executor``: serve the job given by ``--job_id`` and ``--data_root`` (and ``--job_time``, if
  several runs share the id) as one executor of the queue backend, on any host that sees the
  data root, until the job ends; exit 0. User arguments are not required in this mode, and the
  executor starts as soon as the script asks for its arguments (``get_arguments``) or calls
  ``run``: the script's plan is not built (the scheduler sends the tasks).
* ``ray``: the same scheduler, every task a Ray task on the cluster at ``--ray_address``, else
  ``SP_RAY_ADDRESS``, else Ray's default.

Settings: a flag wins, then its ``SP_*`` environment variable, as for ``smallpond.init()``
(:mod:`smallpond.execution.env_settings`: ``SP_NUM_EXECUTORS``, ``SP_PLATFORM``,
``SP_MAX_RETRY_COUNT``, ``SP_MAX_FAIL_COUNT``, ``SP_FAULT_INJECT_PROB``, ``SP_SPECULATIVE_EXEC``,
``SP_RANDOM_SEED``, ``SP_CONSOLE_LOG_LEVEL``, ``SP_ELASTIC_THREADS``, ``SP_TASK_CACHE_MAX_BYTES``;
``SP_JOBID``, ``SP_JOB_TIME``, ``SP_DATA_ROOT``, ``SP_TASK_CACHE``; ``SP_RAY_ADDRESS`` in ``ray``
mode), then the default.

The process exits 0 on success and non-zero (70, EX_SOFTWARE) on failure. Rerunning with the
same ``--job_id`` and ``--data_root`` resumes the job: committed tasks are not run again.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Dict, List, Optional, Tuple

from smallpond.common import DEFAULT_MAX_FAIL_COUNT, DEFAULT_MAX_RETRY_COUNT
from smallpond.execution.env_settings import DRIVER_ENV_SETTINGS, ENV_SETTINGS, env_value, non_negative_int

EX_OK = 0
EX_SOFTWARE = 70
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


def unused_env_settings() -> List[str]:
    """The ``SP_*`` variables set to a value that has no effect in this build (as their flags)."""
    return [ENV_SETTINGS[name][0] for name, default in NO_EFFECT_ENV.items() if env_value(name) not in (None, default)]


def _executor_count(text: str) -> int:
    """``--num_executors``: a count, 0 for one per usable CPU (argparse names the flag)."""
    try:
        return non_negative_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0: one per usable CPU), got {text!r}") from None


class Driver:
    """Parses driver and user arguments and runs a LogicalPlan."""

    def __init__(self) -> None:
        self.user_parser = argparse.ArgumentParser(add_help=False)
        self.driver_parser = argparse.ArgumentParser(
            prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "smallpond",
            description="Run a smallpond plan. User arguments go after the driver's.",
            conflict_handler="resolve",
        )
        self._add_driver_arguments(self.driver_parser)
        self.user_args: Optional[argparse.Namespace] = None
        self.driver_args: Optional[argparse.Namespace] = None
        self._argv: List[str] = []

    @staticmethod
    def _add_driver_arguments(p: argparse.ArgumentParser) -> None:
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
            action="store_true",
            help="give a lone task whose SQL ends in ORDER BY the idle CPUs as DuckDB threads "
            "(faster stage tails; rows with equal sort keys may then come out in another order)",
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

    # -- arguments -------------------------------------------------------------------------------
    def add_argument(self, *args, **kwargs) -> None:
        """Declare a user argument (same signature as ``argparse.ArgumentParser.add_argument``).

        An option of the Driver's own name (``-o/--output_path``, ``--data_root``) is the script's
        from then on, as upstream's Driver has it: the Driver runs with its default for it, and
        says so. A user argument stored as ``mode`` is refused: the Driver's positional mode
        (scheduler, executor, ray) would overwrite its value.
        """
        from smallpond.common import logger
        from smallpond.errors import ParameterError

        action = self.user_parser.add_argument(*args, **kwargs)
        if action.dest == "mode":
            self.user_parser._remove_action(action)
            for opt in action.option_strings:
                self.user_parser._option_string_actions.pop(opt, None)
            names = "/".join(action.option_strings) or action.dest
            raise ParameterError(
                f"the script's argument {names} is stored as 'mode', which the Driver's positional mode "
                "(scheduler, executor, ray) also sets: give it another name or dest= (e.g. dest='write_mode')"
            )
        shadowed = sorted(
            {a for o in action.option_strings if (a := self.driver_parser._option_string_actions.get(o)) is not None}
            | {a for a in self.driver_parser._actions if a.dest == action.dest and a.option_strings},
            key=lambda a: a.dest,
        )
        # (named now: argparse takes the clashing option strings from the Driver's action)
        replaced = [("/".join(a.option_strings), "" if a.default in (None, False) else f" ({a.default!r})") for a in shadowed]
        self.driver_parser.add_argument(*args, **kwargs)
        for names, default in replaced:
            logger.warning(
                "the script's argument {} replaces the Driver's option {}: the Driver runs with its default{} for it",
                "/".join(action.option_strings),
                names,
                default,
            )

    def parse_arguments(self, args: Optional[List[str]] = None) -> Tuple[argparse.Namespace, argparse.Namespace]:
        self._from_command_line = args is None
        args = sys.argv[1:] if args is None else list(args)
        self._argv = args
        user_dests = {a.dest for a in self.user_parser._actions}
        # an executor needs no user argument (it gets its tasks from the scheduler): required
        # user arguments are checked only in the other modes
        required = [a for a in self.driver_parser._actions if a.required and a.dest in user_dests]
        for a in required:
            a.required = False
        env = self._env_settings()
        defaults = self._driver_defaults()
        # an SP_* variable stands in for its flag: the flag wins, then the variable, then the default
        self.driver_parser.set_defaults(**{k: env.get(k, defaults[k]) for k in DRIVER_ENV_SETTINGS if k not in user_dests})
        try:
            ns = self._parse_with_mode(args)
        finally:
            for a in required:
                a.required = True
        if "env_variables" not in user_dests:
            bad = [kv for kv in ns.env_variables if "=" not in kv or kv.startswith("=")]
            if bad:
                self.driver_parser.error(
                    f"argument --env_variables: expected NAME=VALUE entries, got {', '.join(map(repr, bad))}"
                )
        missing = [a for a in required if getattr(ns, a.dest, None) is None]
        if missing and ns.mode != "executor":
            names = ", ".join("/".join(a.option_strings) or a.dest for a in missing)
            self.driver_parser.error(f"the following arguments are required: {names}")
        self.user_args = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k in user_dests})
        # a user argument that reuses a driver option's name replaces it (conflict_handler
        # "resolve"); the driver then runs with that option's default
        driver = {**defaults, **env}
        driver.update({k: v for k, v in vars(ns).items() if k not in user_dests})
        self.driver_args = argparse.Namespace(**driver)
        return self.user_args, self.driver_args

    def _parse_with_mode(self, args: List[str]) -> argparse.Namespace:
        """Parse ``args``; a command line that names no mode runs ``scheduler``.

        The mode is a required positional, as upstream's: so in ``scheduler --job_id X in1 in2``
        the mode takes ``scheduler`` and a user positional ``in1 in2`` (an optional mode would
        take ``scheduler`` with the user positional and leave ``in1 in2`` unrecognized). A
        command line without a mode (``-i a.parquet``, ``in1 in2``, ``--name ray``) fails that
        parse and is parsed again as ``scheduler`` followed by it.
        """
        parser = self.driver_parser
        if args and args[0] in MODES:
            return parser.parse_args(args)

        class _Failed(Exception):
            pass

        def fail(message):
            raise _Failed(message)

        parser.error = fail  # (an instance attribute: argparse calls self.error on a bad command line)
        try:
            return parser.parse_args(args)
        except _Failed as first:
            error = str(first)
        finally:
            del parser.error
        user_positionals = [a for a in self.user_parser._actions if not a.option_strings]
        if args and not args[0].startswith("-") and not user_positionals:
            parser.error(error)  # a misspelt mode ("bogus_mode"): say so, not "unrecognized arguments"
        return parser.parse_args(["scheduler", *args])

    def _env_settings(self) -> Dict[str, object]:
        """The Driver settings the ``SP_*`` environment gives (:data:`DRIVER_ENV_SETTINGS`), by dest."""
        from smallpond.errors import ParameterError

        found = {}
        choices = {a.dest: a.choices for a in self._driver_actions() if a.choices}
        for dest in DRIVER_ENV_SETTINGS:
            try:
                value = env_value(dest)
            except ParameterError as e:
                self.driver_parser.error(str(e))
            if value is None:
                continue
            if dest in choices and value not in choices[dest]:
                var = ENV_SETTINGS[dest][0]
                self.driver_parser.error(
                    f"environment variable {var}={value!r} is not valid: choose from {', '.join(choices[dest])}"
                )
            found[dest] = value
        return found

    def _driver_actions(self) -> List[argparse.Action]:
        defaults = argparse.ArgumentParser(add_help=False)
        self._add_driver_arguments(defaults)
        return defaults._actions

    def _driver_defaults(self) -> Dict[str, object]:
        """The Driver's own value of each of its options when the command line gives none."""
        defaults = argparse.ArgumentParser(add_help=False)
        self._add_driver_arguments(defaults)
        return vars(defaults.parse_args(["scheduler"]))

    def _ensure_parsed(self) -> None:
        if self.driver_args is None:
            self.parse_arguments()

    def get_user_arguments(self, to_dict: bool = True):
        self._ensure_parsed()
        if self.driver_args.mode == "executor" and getattr(self, "_from_command_line", False):
            # the script's own command line made this process an executor: serve now, before
            # the script builds a plan from arguments an executor is not given
            self._exit(self._run_executor())
        return dict(vars(self.user_args)) if to_dict else self.user_args

    get_arguments = get_user_arguments

    def get_driver_arguments(self, to_dict: bool = True):
        self._ensure_parsed()
        return dict(vars(self.driver_args)) if to_dict else self.driver_args

    @property
    def mode(self) -> str:
        self._ensure_parsed()
        return self.driver_args.mode

    @property
    def job_id(self):
        self._ensure_parsed()
        return self.driver_args.job_id

    @property
    def data_root(self):
        self._ensure_parsed()
        return self.driver_args.data_root

    @property
    def num_executors(self) -> int:
        self._ensure_parsed()
        return self.driver_args.num_executors

    def unused_flags(self) -> List[str]:
        """The no-effect options (:data:`NO_EFFECT`) this command line used."""
        self._ensure_parsed()
        default_values = self._driver_defaults()
        user_dests = {a.dest for a in self.user_parser._actions}
        actions = [
            a for a in self.driver_parser._actions if a.dest in NO_EFFECT and a.dest not in user_dests and a.option_strings
        ]

        def given(action) -> bool:
            return any(arg == o or arg.startswith(o + "=") for o in action.option_strings for arg in self._argv)

        given_dests = {a.dest for a in actions if given(a)}
        used = []
        for action in actions:
            value = getattr(self.driver_args, action.dest, None)
            if not given(action):
                # a value changed without the option spelt out (an abbreviation, --mall): named by
                # the option of its dest that sets that value, never by its opposite
                # (--disable_log_analytics is not --enable_log_analytics)
                if action.dest in given_dests or value == default_values.get(action.dest):
                    continue
                if action.nargs == 0 and action.const != value:
                    continue
            name = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
            if name not in used:
                used.append(name)
        return used

    # -- running ---------------------------------------------------------------------------------
    def run(self, plan=None, stop_process_on_done: bool = True, tags: Optional[Dict[str, str]] = None):
        """Run ``plan`` in the chosen mode. Returns the ExecutionPlan on success, else None.

        With ``stop_process_on_done`` the process exits with 0 on success and 70 on failure. The
        end-of-job summary (and a failed job's error, once, with the path of the failed task's
        log) is printed on stderr.
        """
        from smallpond.common import logger

        self._ensure_parsed()
        a = self.driver_args
        unused = self.unused_flags() + unused_env_settings()
        if unused:
            logger.warning("these driver options have no effect in this build and are ignored: {}", ", ".join(unused))
        if tags:
            logger.warning("Driver.run(tags=...) has no effect in this build and is ignored")
        if a.dry_run and a.mode != "executor":
            self._dry_run(plan)  # exits: nothing ran, so nothing the script does next could work
        try:
            if a.mode == "executor":
                result = None
                code = self._run_executor()
                ok = code == EX_OK
                if stop_process_on_done:
                    self._exit(code)
            elif a.mode == "ray" or a.ray_address:
                result = self._run_ray(plan)
                ok = result is not None
            else:
                result = self._run_scheduler(plan)
                ok = result is not None
        except Exception as e:  # failed before the job started (its summary would say it otherwise)
            logger.error("job failed: {}", e)
            result, ok = None, False
        if stop_process_on_done:
            self._exit(EX_OK if ok else EX_SOFTWARE)
        return result

    def _dry_run(self, plan) -> None:
        """Print what would run and what would be reused (and why), then exit: 0; 70 if the plan
        cannot even be planned, or if a task would fail (the plan check found a query that cannot
        run: a dry run can gate a scheduled build). Nothing runs, whatever ``stop_process_on_done``
        says."""
        from smallpond.common import logger
        from smallpond.execution.job import dry_run_plan

        if plan is None:
            raise ValueError("Driver.run(plan) needs a LogicalPlan for --dry_run")
        a = self.driver_args
        try:
            listing = dry_run_plan(plan, self._runtime_ctx(), manifest_only_final_results=not a.self_contained_final_results)
        except Exception as e:
            logger.error("dry run failed: {}", e)
            self._exit(EX_SOFTWARE)
        print(listing)
        from smallpond.execution.dryrun import FAILS

        if listing.of(FAILS):
            logger.error("dry run: {} task(s) would fail (listed above)", len(listing.of(FAILS)))
            self._exit(EX_SOFTWARE)
        self._exit(EX_OK)

    @staticmethod
    def _exit(code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(code)

    def _run_executor(self) -> int:
        """Serve the job as one executor of the queue backend; the exit status (0: the job ended)."""
        from smallpond.execution.executors.queue_process import run_executor

        a = self.driver_args
        return run_executor(
            a.job_id,
            a.data_root,
            a.job_time,
            exec_id=a.exec_id,
            console_log_level=a.console_log_level,
        )

    def _runtime_ctx(self):
        from smallpond.execution.job import make_runtime_ctx

        a = self.driver_args
        env = dict(kv.split("=", 1) for kv in a.env_variables if "=" in kv)
        rt = make_runtime_ctx(
            a.job_id,
            a.job_time,
            a.data_root,
            num_executors=a.num_executors,
            random_seed=a.random_seed,
            env_overrides=env,
            bind_numa_node=a.bind_numa_node,
            enforce_memory_limit=a.enforce_memory_limit,
            fault_inject_prob=a.fault_inject_prob,
            enable_profiling=a.enable_profiling,
            enable_diagnostic_metrics=a.enable_diagnostic_metrics,
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

    def _run_scheduler(self, plan, backend: str = "local", ray_address: Optional[str] = None):
        from smallpond.execution.job import Job, make_executor
        from smallpond.execution.progress import console_listeners

        if plan is None:
            raise ValueError(f"Driver.run(plan) needs a LogicalPlan in {self.driver_args.mode} mode")
        a = self.driver_args
        if a.task_cache_max_bytes is not None and a.task_cache_max_bytes < 0:
            from smallpond.errors import ParameterError

            raise ParameterError(f"--task_cache_max_bytes must be >= 0, got {a.task_cache_max_bytes}")
        rt = self._runtime_ctx()
        job = Job(
            rt,
            executor=make_executor(rt, a.num_executors or None, backend=backend, ray_address=ray_address, platform=a.platform),
            max_retry_count=a.max_retry_count,
            max_fail_count=1 if a.fail_fast_on_failure else a.max_fail_count,
            log_name="scheduler",
            restart=a.restart,
            listeners=console_listeners(),
            name=None if a.job_name == "smallpond" else a.job_name,  # the default names nothing
            speculation=self._speculation(),
            task_cache_max_bytes=a.task_cache_max_bytes,
        )
        ok = False
        try:
            job.start()
            exec_plan = job.run_plan(plan, manifest_only_final_results=not a.self_contained_final_results)
            ok = True
            return exec_plan
        except Exception as e:
            if job.events is None:  # the job never started: nothing will summarize the error
                raise
            job.record_error(e)
            return None  # the summary below says what failed, once
        finally:
            # intermediates stay unless asked; what a published result lists stays even then (retention.py)
            job.finish(ok, remove_intermediates=a.remove_output_root)
            if job.events is not None:
                sys.stdout.flush()
                sys.stderr.write(job.summary())
                sys.stderr.flush()

    def _speculation(self):
        from smallpond.execution.scheduler import Speculation

        a = self.driver_args
        return Speculation.of(
            a.speculative_exec,
            quantile=a.speculation_quantile,
            multiplier=a.speculation_multiplier,
            min_runtime=a.speculation_min_runtime,
        )

    def _run_ray(self, plan):
        """The scheduler of this process, every task a Ray task (Ray's retries off: ours decide)."""
        address = self.driver_args.ray_address or os.environ.get("SP_RAY_ADDRESS") or None
        return self._run_scheduler(plan, backend="ray", ray_address=address)


def main() -> None:
    """``python -m smallpond.execution.driver``: the executor entry point upstream scripts used."""
    Driver().run(None)


if __name__ == "__main__":
    main()
