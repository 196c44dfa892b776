"""smallpond.execution.driver: splitting the command line into driver and user arguments.

(Running jobs through the Driver is covered end to end in tests/e2e/.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from smallpond.execution.driver import Driver


def make_driver() -> Driver:
    d = Driver()
    d.add_argument("-i", "--input_paths", nargs="+")
    d.add_argument("-n", "--npartitions", type=int, default=10)
    return d


def test_driver_and_user_arguments_are_split():
    d = make_driver()
    user, driver = d.parse_arguments(
        ["scheduler", "--job_id", "j1", "--data_root", "/tmp/x", "--fault_inject_prob", "0.2", "-i", "a", "b", "-n", "3"]
    )
    assert vars(user) == {"input_paths": ["a", "b"], "npartitions": 3}
    assert d.get_arguments() == {"input_paths": ["a", "b"], "npartitions": 3}
    assert driver.mode == "scheduler" and driver.job_id == "j1" and driver.data_root == "/tmp/x"
    assert driver.fault_inject_prob == 0.2
    assert "input_paths" not in vars(driver)


def test_mode_defaults_to_scheduler_and_upstream_aliases_work():
    d = make_driver()
    _, driver = d.parse_arguments(["--max_retry", "2", "--fault_inject", "0.1", "--fail_fast"])
    assert driver.mode == "scheduler"
    assert driver.max_retry_count == 2 and driver.fault_inject_prob == 0.1 and driver.fail_fast_on_failure


def test_user_argument_may_reuse_a_driver_option_name(log_messages):
    d = Driver()
    d.add_argument("-o", "--output_path", default="/default/out")
    # as upstream's Driver has it, but not silently
    assert any("-o/--output_path replaces the Driver's option --output_path" in m for m in log_messages)
    user, driver = d.parse_arguments(["scheduler", "--data_root", "/tmp/x", "-o", "/mine"])
    assert vars(user) == {"output_path": "/mine"}
    # the driver keeps working with its own default for the shadowed option
    assert driver.output_path is None and driver.data_root == "/tmp/x"
    assert d._runtime_ctx().final_output_path is None


def test_a_user_argument_stored_as_mode_is_refused():
    # the Driver's positional mode would overwrite its value (-m append gave "scheduler")
    from smallpond.errors import ParameterError

    d = Driver()
    with pytest.raises(ParameterError, match="-m/--mode is stored as 'mode'"):
        d.add_argument("-m", "--mode", default="overwrite", choices=["overwrite", "append"])
    d.add_argument("-m", "--mode", dest="write_mode", default="overwrite", choices=["overwrite", "append"])
    user, driver = d.parse_arguments(["-m", "append"])
    assert vars(user) == {"write_mode": "append"} and driver.mode == "scheduler"


def test_user_positionals_follow_the_mode_and_driver_flags_in_upstream_order():
    # upstream's mode is a required positional: `job.py scheduler --job_id X in1 in2` gives the
    # script's positional in1 in2 (an optional mode left them "unrecognized")
    def positional_driver() -> Driver:
        d = Driver()
        d.add_argument("input_paths", nargs="+")
        d.add_argument("--name", default="n")
        return d

    for argv, mode in (
        (["scheduler", "--job_id", "X", "in1", "in2"], "scheduler"),
        (["scheduler", "--task_cache", "off", "in1", "in2"], "scheduler"),
        (["ray", "--job_id", "X", "in1", "in2"], "ray"),
        (["--job_id", "X", "scheduler", "in1", "in2"], "scheduler"),
        (["scheduler", "in1", "in2"], "scheduler"),
        (["in1", "in2"], "scheduler"),  # no mode: scheduler, as before
        (["--job_id", "X", "in1", "in2"], "scheduler"),
    ):
        user, driver = positional_driver().parse_arguments(argv)
        assert (driver.mode, user.input_paths) == (mode, ["in1", "in2"]), argv
    # a user option whose value is a mode's name, with no mode given
    user, driver = positional_driver().parse_arguments(["--name", "ray", "in1"])
    assert (driver.mode, user.name, user.input_paths) == ("scheduler", "ray", ["in1"])
    # an executor is given no user arguments
    user, driver = positional_driver().parse_arguments(["executor", "--job_id", "j", "--data_root", "/tmp/x"])
    assert driver.mode == "executor" and driver.job_id == "j"


def test_mode_is_optional_for_scripts_without_positionals():
    _, driver = make_driver().parse_arguments(["--job_id", "X", "-i", "a", "b"])
    assert driver.mode == "scheduler" and driver.job_id == "X"
    user, driver = make_driver().parse_arguments(["-i", "scheduler", "-n", "2"])
    assert driver.mode == "scheduler" and user.input_paths == ["scheduler"]
    user, driver = make_driver().parse_arguments(["-n", "2", "executor"])
    assert driver.mode == "executor" and user.npartitions == 2


def test_unknown_mode_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        make_driver().parse_arguments(["bogus_mode"])
    assert info.value.code == 2
    assert "invalid choice: 'bogus_mode'" in capsys.readouterr().err


EMBEDDED_DRIVER_JOB = """
import sys
from smallpond.execution.driver import Driver
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

sys.argv = ["job.py", "scheduler", "--data_root", sys.argv[1], "--num_executors", "1"]
ctx = Context()
plan = LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 42 as x"))
result = Driver().run(plan, stop_process_on_done=False)
print(result.final_output.to_arrow_table().column("x").to_pylist())
assert "ray" not in sys.modules, "the embedded Driver imported ray"
"""


def test_the_embedded_driver_never_imports_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-c", EMBEDDED_DRIVER_JOB, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[42]"


def test_ray_address_flag_is_parsed():
    _, driver = make_driver().parse_arguments(["ray", "--ray_address", "10.0.0.5:6379"])
    assert driver.mode == "ray" and driver.ray_address == "10.0.0.5:6379"
    _, driver = make_driver().parse_arguments(["scheduler"])
    assert driver.ray_address is None


def test_help_says_the_exit_statuses():
    """--help names the statuses the README documents (an executor with no job to serve exited 1)."""
    text = " ".join(make_driver().driver_parser.format_help().split())
    assert "exit status: 0 success; 70 failure (an executor: no job to serve); 75 an executor" in text, text


def test_options_without_effect_are_marked_in_help_and_warned_about_once(tmp_path, parquet_files):
    import os
    import subprocess
    import sys

    from smallpond.execution.driver import NO_EFFECT
    from tests.conftest import REPO_ROOT

    d = make_driver()
    by_option = {o: a for a in d.driver_parser._actions for o in a.option_strings}
    for option in ("--tags", "--malloc", "--task_image", "--job_priority", "--sidecars", "--python_venv", "--bind_numa_node"):
        assert by_option[option].help.endswith("(no effect)"), option
    for option in ("--job_id", "--data_root", "--num_executors", "--output_path", "--speculative_exec", "--platform"):
        assert "(no effect)" not in (by_option[option].help or ""), option
    assert d.driver_parser.format_help().count("(no effect)") >= len(NO_EFFECT)
    # being built by other engineers right now: not marked
    for dest in ("speculative_exec", "platform", "ray_address"):
        assert dest not in NO_EFFECT

    d = make_driver()
    d.parse_arguments(["--tags", "a", "--malloc", "jemalloc", "--memory_purge_delay=5", "--disable_sched_state_dump"])
    assert sorted(d.unused_flags()) == sorted(["--tags", "--malloc", "--memory_purge_delay", "--disable_sched_state_dump"])
    d = make_driver()
    d.parse_arguments(["--job_id", "x", "-n", "3"])
    assert d.unused_flags() == []

    script = tmp_path / "job.py"
    script.write_text(
        "from smallpond.execution.driver import Driver\n"
        "from smallpond.logical.dataset import ParquetDataSet\n"
        "from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode\n"
        "d = Driver()\n"
        "d.add_argument('-i', nargs='+')\n"
        "a = d.get_arguments()\n"
        "ctx = Context()\n"
        "src = DataSourceNode(ctx, ParquetDataSet(a['i']))\n"
        "d.run(LogicalPlan(ctx, SqlEngineNode(ctx, (src,), 'select no_such_column from {0}')))\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, SP_PLAN_CHECK="off")  # the task's own failure is shown
    argv = [sys.executable, str(script), "--data_root", str(tmp_path / "root"), "--tags", "t", "--malloc", "jemalloc"]
    proc = subprocess.run([*argv, "-i", *parquet_files], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 70
    err = proc.stderr
    assert err.count("have no effect") == 1 and "--tags, --malloc" in err
    # the failed task's error is printed once, with the path of its log, in the job's summary
    assert err.count('Referenced column "no_such_column" not found') == 1, err
    log_line = next(ln for ln in err.splitlines() if ln.strip().startswith("task log:"))
    assert os.path.exists(log_line.split("task log:", 1)[1].strip())
    assert "failed in" in err and "report.html" in err


def test_an_env_variables_entry_without_a_value_is_an_error_naming_it(capsys):
    with pytest.raises(SystemExit) as info:
        make_driver().parse_arguments(["scheduler", "--env_variables", "MYVAR=1", "OTHERVAR", "=x"])
    assert info.value.code == 2
    assert "argument --env_variables: expected NAME=VALUE entries, got 'OTHERVAR', '=x'" in capsys.readouterr().err
    _, driver = make_driver().parse_arguments(["scheduler", "--env_variables", "A=1", "B=x=y", "C="])
    assert driver.env_variables == ["A=1", "B=x=y", "C="]


def test_the_no_effect_warning_names_only_the_options_given():
    for argv, named in (
        (["--disable_log_analytics"], ["--disable_log_analytics"]),
        (["--enable_log_analytics"], ["--enable_log_analytics"]),
        (["--disable_sched_state_dump"], ["--disable_sched_state_dump"]),
        (["--enable_sched_state_dump"], ["--enable_sched_state_dump"]),
        (["--disable_log_an"], ["--disable_log_analytics"]),  # an abbreviation names the option it stands for
        (["--mall", "jemalloc"], ["--malloc"]),
    ):
        d = make_driver()
        d.parse_arguments(["scheduler", *argv])
        assert d.unused_flags() == named, argv


def test_a_negative_num_executors_is_refused_by_every_backend(capsys, tmp_path):
    from smallpond.errors import ParameterError
    from smallpond.execution.job import make_executor, make_runtime_ctx

    with pytest.raises(SystemExit) as info:
        make_driver().parse_arguments(["scheduler", "--num_executors", "-1"])
    assert info.value.code == 2
    assert "argument --num_executors: expected a number >= 0 (0: one per usable CPU), got '-1'" in capsys.readouterr().err
    rt = make_runtime_ctx("neg", None, str(tmp_path))
    for platform in (None, "local", "base"):
        with pytest.raises(ParameterError, match="num_executors must be a non-negative integer .* got -1"):
            make_executor(rt, -1, platform=platform)
