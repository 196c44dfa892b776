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
  ``SP_RAY_ADDRESS``, else on a private Ray instance started for the job on this machine and
  stopped at its end (as upstream's ray mode: ``smallpond.init()`` without an address started one
  with ``ray.init(address="local")``); ``--ray_address auto`` joins the cluster ``ray start``
  started on this machine.

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
import sys
from typing import Dict, List, Optional, Tuple

from smallpond.execution.driver_options import (  # noqa: F401 (NO_EFFECT: importable from here too)
    MODES,
    NO_EFFECT,
    add_driver_arguments,
    driver_defaults,
    unused_env_settings,
    warn_no_effect,
)
from smallpond.execution.env_settings import DRIVER_ENV_SETTINGS, ENV_SETTINGS, env_value

EX_OK = 0
EX_SOFTWARE = 70


class Driver:
    """Parses driver and user arguments and runs a LogicalPlan."""

    def __init__(self) -> None:
        self.user_parser = argparse.ArgumentParser(add_help=False)
        self.driver_parser = argparse.ArgumentParser(
            prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "smallpond",
            description="Run a smallpond plan. User arguments go after the driver's.",
            epilog="exit status: 0 success; 70 failure (an executor: no job to serve); 75 an executor the "
            "scheduler declared lost; 143 stopped by SIGTERM",
            conflict_handler="resolve",
        )
        self._add_driver_arguments(self.driver_parser)
        self.user_args: Optional[argparse.Namespace] = None
        self.driver_args: Optional[argparse.Namespace] = None
        self._argv: List[str] = []

    _add_driver_arguments = staticmethod(add_driver_arguments)

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
        return driver_defaults()

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
        warn_no_effect("driver options", self.unused_flags() + unused_env_settings())
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
        from smallpond.execution.manager import runtime_ctx_from

        return runtime_ctx_from(self.driver_args)

    def _run_scheduler(self, plan, backend: str = "local", ray_address: Optional[str] = None):
        from smallpond.execution.manager import run_plan_as_job

        return run_plan_as_job(plan, self.driver_args, backend=backend, ray_address=ray_address)

    def _run_ray(self, plan):
        """The scheduler of this process, every task a Ray task (Ray's retries off: ours decide).

        Without an address, a private Ray instance, as upstream's: Ray's own default would join
        whatever cluster runs on this machine (the latest of several, or RAY_ADDRESS's), whose
        workers may import another checkout's code."""
        address = self.driver_args.ray_address or os.environ.get("SP_RAY_ADDRESS") or "local"
        return self._run_scheduler(plan, backend="ray", ray_address=address)


def main() -> None:
    """``python -m smallpond.execution.driver``: the executor entry point upstream scripts used."""
    Driver().run(None)


if __name__ == "__main__":
    main()
