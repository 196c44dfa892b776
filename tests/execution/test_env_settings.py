"""smallpond.execution.env_settings: the SP_* variables, read alike by smallpond.init() and the Driver."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smallpond.errors import ParameterError
from smallpond.execution.driver import Driver
from smallpond.execution.env_settings import DRIVER_ENV_SETTINGS, ENV_SETTINGS, setting
from smallpond.session import Config

#: a value other than the default for every setting the Driver takes from the environment
ENV = {
    "SP_NUM_EXECUTORS": "3",
    "SP_PLATFORM": "base",
    "SP_CONSOLE_LOG_LEVEL": "ERROR",
    "SP_FAULT_INJECT_PROB": "0.25",
    "SP_MAX_RETRY_COUNT": "7",
    "SP_MAX_FAIL_COUNT": "1",
    "SP_SPECULATIVE_EXEC": "aggressive",
    "SP_RANDOM_SEED": "99",
    "SP_TASK_CACHE_MAX_BYTES": "1000",
    "SP_ELASTIC_THREADS": "1",
}


@pytest.fixture
def sp_env(monkeypatch, tmp_path):
    for var, _ in ENV_SETTINGS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SP_DATA_ROOT", str(tmp_path))
    return monkeypatch


def test_every_driver_setting_has_a_variable_in_the_test():
    assert sorted(ENV_SETTINGS[s][0] for s in DRIVER_ENV_SETTINGS) == sorted(ENV)


def test_the_driver_takes_its_settings_from_sp_variables_like_init(sp_env):
    for var, value in ENV.items():
        sp_env.setenv(var, value)
    _, args = Driver().parse_arguments(["scheduler"])
    config = Config.from_args_and_env()
    for name in DRIVER_ENV_SETTINGS:
        assert getattr(args, name) == getattr(config, name), name
    assert (args.num_executors, args.platform, args.max_fail_count, args.elastic_threads) == (3, "base", 1, True)
    assert (args.speculative_exec, args.random_seed, args.fault_inject_prob) == ("aggressive", 99, 0.25)


def test_a_flag_beats_its_variable_and_an_unset_or_empty_variable_gives_the_default(sp_env):
    sp_env.setenv("SP_NUM_EXECUTORS", "3")
    sp_env.setenv("SP_PLATFORM", "base")
    sp_env.setenv("SP_MAX_FAIL_COUNT", "1")
    sp_env.setenv("SP_SPECULATIVE_EXEC", "")
    _, args = Driver().parse_arguments(["scheduler", "--num_executors", "2", "--platform", "mpi", "--max_fail", "4"])
    assert (args.num_executors, args.platform, args.max_fail_count) == (2, "mpi", 4)
    assert args.speculative_exec == "enable" and args.max_retry_count == 5  # the Driver's defaults
    assert setting(5, "num_executors", 0) == 5 and setting(None, "num_executors", 0) == 3


def test_a_script_option_named_like_a_driver_option_leaves_the_driver_its_variable(sp_env):
    sp_env.setenv("SP_PLATFORM", "base")
    d = Driver()
    d.add_argument("--platform", default="laptop")
    user, args = d.parse_arguments(["scheduler", "--platform", "mine"])
    assert user.platform == "mine" and args.platform == "base"


@pytest.mark.parametrize(
    "var, value, message",
    [
        ("SP_NUM_EXECUTORS", "many", "SP_NUM_EXECUTORS='many' is not valid"),
        ("SP_NUM_EXECUTORS", "-1", "SP_NUM_EXECUTORS='-1' is not valid: must be >= 0"),
        ("SP_SPECULATIVE_EXEC", "always", "SP_SPECULATIVE_EXEC='always' is not valid: choose from disable, enable, aggressive"),
        ("SP_MAX_FAIL_COUNT", "1.5", "SP_MAX_FAIL_COUNT='1.5' is not valid"),
        ("SP_CONSOLE_LOG_LEVEL", "loud", "SP_CONSOLE_LOG_LEVEL='loud' is not valid: not a log level (one of TRACE, DEBUG"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(sp_env, capsys, var, value, message):
    sp_env.setenv(var, value)
    with pytest.raises(SystemExit) as info:
        Driver().parse_arguments(["scheduler"])
    assert info.value.code == 2 and message in capsys.readouterr().err
    if var != "SP_SPECULATIVE_EXEC":  # (init() hands it to Speculation.of, which checks it)
        with pytest.raises(ParameterError, match=message.replace("(", r"\(")):
            Config.from_args_and_env()


def test_a_log_level_is_checked_where_it_is_given(tmp_path):
    # it was first looked up by loguru when the job added its console log, after the job folder
    # was made: "ValueError: Level 'loud' does not exist", naming neither the setting nor where
    import smallpond

    with pytest.raises(ParameterError, match="console_log_level: not a log level .* got 'loud'"):
        smallpond.init(data_root=str(tmp_path / "root"), console_log_level="loud")
    assert not os.path.exists(tmp_path / "root")
    _, args = Driver().parse_arguments(["scheduler", "--console_log_level", "debug"])  # any case
    from smallpond.execution.env_settings import log_level

    assert log_level(args.console_log_level) == "DEBUG" and log_level(5) == 5


def test_sp_job_time_takes_epoch_seconds_and_a_bad_one_names_the_variable(sp_env, tmp_path):
    # init() documents job_time as "a datetime, ISO string or epoch seconds", but from the
    # environment (a string) only ISO parsed, and the error named job_time, not SP_JOB_TIME
    from datetime import datetime

    from smallpond.execution.runtime import resolve_job

    sp_env.setenv("SP_JOB_TIME", "1796440487.5")
    assert resolve_job(None, None, str(tmp_path))[1] == datetime.fromtimestamp(1796440487.5)
    sp_env.setenv("SP_JOB_TIME", "2026-12-01T10:00:00")
    assert resolve_job(None, None, str(tmp_path))[1] == datetime(2026, 12, 1, 10, 0, 0)
    sp_env.setenv("SP_JOB_TIME", "yesterday")
    with pytest.raises(ParameterError, match="SP_JOB_TIME='yesterday' is not valid: .*ISO date-time or epoch seconds"):
        resolve_job(None, None, str(tmp_path))


JOB = """
from smallpond.execution.driver import Driver
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode
ctx = Context()
Driver().run(LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1 as x")))
"""


def test_a_driver_job_runs_with_the_workers_sp_num_executors_asks_for(tmp_path):
    from tests.conftest import REPO_ROOT

    env = dict(os.environ, PYTHONPATH=REPO_ROOT, SP_NUM_EXECUTORS="1", SP_TASK_CACHE="off", SP_BIND_NUMA_NODE="1")
    argv = [sys.executable, "-c", JOB, "scheduler", "--data_root", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on local: 1 worker(s)" in proc.stderr, proc.stderr[-3000:]
    # a variable of a setting without effect is warned about, as its flag would be
    assert "have no effect in this build and are ignored: SP_BIND_NUMA_NODE" in proc.stderr


def test_variables_of_settings_without_effect_are_named(sp_env):
    from smallpond.execution.driver import unused_env_settings

    sp_env.setenv("SP_MEMORY_ALLOCATOR", "system")
    sp_env.setenv("SP_BIND_NUMA_NODE", "0")
    assert unused_env_settings() == []
    sp_env.setenv("SP_MEMORY_ALLOCATOR", "jemalloc")
    assert unused_env_settings() == ["SP_MEMORY_ALLOCATOR"]


@pytest.mark.parametrize(
    "var,value",
    [("SP_PROGRESS", "flase"), ("SP_SUMMARY", "maybe"), ("SP_FORK_WORKERS", "nah"), ("SP_KEEP_WORKERS", "nah")],
)
def test_an_on_off_variable_that_does_not_parse_is_an_error_naming_it(tmp_path, monkeypatch, var, value):
    """They were taken silently (a typo of "false" meant "on"); a session refuses them when it starts."""
    import smallpond

    monkeypatch.setenv(var, value)
    with pytest.raises(ParameterError, match=rf"{var} must be one of .* got '{value}'"):
        sp = smallpond.init(data_root=str(tmp_path / "root"))
        try:  # SP_FORK_WORKERS and SP_KEEP_WORKERS are read when the first worker starts
            sp.from_items([1, 2]).count()
        finally:
            sp.shutdown()


def test_the_valid_spellings_of_an_on_off_variable(monkeypatch):
    from smallpond.common import env_switch

    for value, got in (("", ""), (" YES ", "yes"), ("0", "0"), ("Off", "off"), ("always", "always")):
        monkeypatch.setenv("SP_X", value)
        assert env_switch("SP_X", "always") == got


def test_a_bad_sp_executor_cpus_is_refused_by_the_driver_naming_it(tmp_path, monkeypatch):
    """Each executor refused it and exited: the job said only that every executor exited."""
    import smallpond

    monkeypatch.setenv("SP_EXECUTOR_CPUS", "two")
    with pytest.raises(ParameterError, match="SP_EXECUTOR_CPUS must be a positive integer, got 'two'"):
        sp = smallpond.init(data_root=str(tmp_path / "root"), platform="base", num_executors=1)
        try:
            sp.from_items([1, 2]).count()
        finally:
            sp.shutdown()


def test_the_driver_gives_elastic_threads_safe_by_default_and_takes_a_flag_or_its_variable(sp_env):
    sp_env.delenv("SP_ELASTIC_THREADS", raising=False)
    assert Driver().parse_arguments(["scheduler"])[1].elastic_threads == "safe"
    assert Driver().parse_arguments(["scheduler", "--elastic_threads"])[1].elastic_threads is True
    assert Driver().parse_arguments(["scheduler", "--no_elastic_threads"])[1].elastic_threads is False
    sp_env.setenv("SP_ELASTIC_THREADS", "safe")
    assert Driver().parse_arguments(["scheduler"])[1].elastic_threads == "safe"
    sp_env.setenv("SP_ELASTIC_THREADS", "off")
    assert Driver().parse_arguments(["scheduler"])[1].elastic_threads is False
    assert Driver().parse_arguments(["scheduler", "--elastic_threads"])[1].elastic_threads is True
