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


def test_user_argument_may_reuse_a_driver_option_name():
    d = Driver()
    d.add_argument("-o", "--output_path", default="/default/out")
    user, driver = d.parse_arguments(["scheduler", "--data_root", "/tmp/x", "-o", "/mine"])
    assert vars(user) == {"output_path": "/mine"}
    # the driver keeps working with its own default for the shadowed option
    assert driver.output_path is None and driver.data_root == "/tmp/x"
    assert d._runtime_ctx().final_output_path is None


def test_unknown_mode_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        make_driver().parse_arguments(["bogus_mode"])
    assert info.value.code == 2
    assert "bogus_mode" in capsys.readouterr().err


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
