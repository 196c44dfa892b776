"""The Driver command line (reference §4.5) and upstream's tests/test_driver.py."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from smallpond.execution.driver import Driver
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    LogicalPlan,
    PythonScriptNode,
    SqlEngineNode,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALL_DRIVER_FLAGS = [
    "--exec_id", "host1", "--job_id", str(uuid.uuid4()), "--job_time", "1700000000.5", "--job_name", "compat",
    "--job_priority", "3", "--resource_group", "rg", "--env_variables", "A=1", "B=2", "--sidecars", "s1",
    "--tags", "t1", "t2", "--task_image", "img", "--python_venv", "/venv", "--data_root", "/tmp/sp_data_root",
    "--runtime_ctx_path", "/tmp/rt.pickle", "--num_executors", "2", "--num_executors_per_task", "4",
    "--random_seed", "7", "--max_retry", "6", "--max_fail", "4", "--prioritize_retry",
    "--speculative_exec", "aggressive", "--stop_executor_on_failure", "--fail_fast", "--nonzero_exitcode_as_oom",
    "--fault_inject", "0.1", "--enable_profiling", "--enable_diagnostic_metrics", "--enable_sched_state_dump",
    "--remove_empty_parquet", "--remove_output_root", "--skip_task_with_empty_input", "--self_contained_final_results",
    "--malloc", "jemalloc", "--memory_purge_delay", "5000", "--bind_numa_node", "--enforce_memory_limit",
    "--enable_log_analytics", "--console_log_level", "WARNING", "--file_log_level", "INFO", "--disable_log_rotation",
    "--output_path", "/tmp/sp_out", "--platform", "mpi",
]  # fmt: skip


def test_every_driver_flag_parses():
    driver = Driver()
    _, args = driver.parse_arguments(["scheduler", *ALL_DRIVER_FLAGS])
    assert args.mode == "scheduler" and driver.mode == "scheduler"
    assert args.exec_id == "host1" and args.job_time == 1700000000.5 and args.job_name == "compat"
    assert args.env_variables == ["A=1", "B=2"] and args.tags == ["t1", "t2"]
    assert args.num_executors == 2 and driver.num_executors == 2 and driver.data_root == "/tmp/sp_data_root"
    assert args.max_retry_count == 6 and args.max_fail_count == 4 and args.prioritize_retry
    assert args.speculative_exec == "aggressive"
    assert args.fail_fast_on_failure and args.nonzero_exitcode_as_oom and args.fault_inject_prob == 0.1
    assert args.enable_sched_state_dump and args.self_contained_final_results
    assert args.memory_allocator == "jemalloc" and args.memory_purge_delay == 5000
    assert args.share_log_analytics is True and args.console_log_level == "WARNING" and args.file_log_level == "INFO"
    assert args.output_path == "/tmp/sp_out" and args.platform == "mpi"


def test_driver_flag_defaults():
    _, args = Driver().parse_arguments(["scheduler"])
    assert args.num_executors == 0 and args.num_executors_per_task == 5
    assert args.max_retry_count == 5 and args.max_fail_count == 3
    assert args.speculative_exec == "enable" and args.fault_inject_prob == 0.0
    assert args.enable_sched_state_dump is False and args.memory_allocator == "mimalloc"
    assert args.memory_purge_delay == 10000 and args.console_log_level == "INFO" and args.file_log_level == "DEBUG"
    assert args.job_name == "smallpond" and args.task_image == "default" and args.output_path is None
    _, args = Driver().parse_arguments(
        ["scheduler", "--disable_speculative_exec", "--max_retry_count", "2", "--max_fail_count", "1"]
    )
    assert args.speculative_exec == "disable" and args.max_retry_count == 2 and args.max_fail_count == 1
    _, args = Driver().parse_arguments(
        ["scheduler", "--fault_inject_prob", "0.2", "--memory_allocator", "system", "--fail_fast_on_failure"]
    )
    assert args.fault_inject_prob == 0.2 and args.memory_allocator == "system" and args.fail_fast_on_failure


def test_modes():
    for mode in ("scheduler", "executor", "ray"):
        assert Driver().parse_arguments([mode])[1].mode == mode
    with pytest.raises(SystemExit):
        Driver().parse_arguments(["no_such_mode"])


def test_user_arguments():
    driver = Driver()
    driver.add_argument("-i", "--input_paths", nargs="+")
    driver.add_argument("-n", "--npartitions", type=int, default=10)
    user_args, driver_args = driver.parse_arguments(["scheduler", "--job_id", "abc", "-i", "a.parquet", "b.parquet", "-n", "3"])
    assert user_args.input_paths == ["a.parquet", "b.parquet"] and user_args.npartitions == 3
    assert driver_args.job_id == "abc" and driver.job_id == "abc"
    assert not hasattr(driver_args, "input_paths") and not hasattr(user_args, "job_id")
    assert driver.get_arguments() == {"input_paths": ["a.parquet", "b.parquet"], "npartitions": 3}
    assert driver.get_user_arguments(to_dict=False).npartitions == 3
    assert driver.get_driver_arguments()["job_id"] == "abc"


def _url_counts_plan(input_dir: str, output_name: str = "url_counts") -> LogicalPlan:
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(input_dir, "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    counts = SqlEngineNode(ctx, (parts,), "select domain, count(*) as cnt from {0} group by domain", output_name=output_name)
    return LogicalPlan(ctx, counts)


def test_standalone_mode(compat_data, tmp_path):
    driver = Driver()
    driver.parse_arguments(
        [
            "scheduler",
            "--job_id",
            str(uuid.uuid4()),
            "--data_root",
            str(tmp_path),
            "--num_executors",
            "0",
            "--fault_inject_prob",
            "0.05",
        ]
    )
    exec_plan = driver.run(_url_counts_plan(compat_data["arrow"]), stop_process_on_done=False)
    assert exec_plan is not None and exec_plan.successful
    assert sum(exec_plan.final_output.to_arrow_table().column("cnt").to_pylist()) == 1000
    files = exec_plan.get_output("url_counts").resolved_paths
    assert files and all(os.path.exists(f) for f in files)


def test_output_path_and_self_contained_final_results(compat_data, tmp_path):
    out = str(tmp_path / "published")
    driver = Driver()
    driver.parse_arguments(["scheduler", "--data_root", str(tmp_path / "root"), "--output_path", out, "--num_executors", "2"])
    exec_plan = driver.run(_url_counts_plan(compat_data["arrow"]), stop_process_on_done=False)
    assert os.path.isdir(os.path.join(out, "url_counts")) and os.path.isdir(os.path.join(out, "FinalResults"))
    copied = ParquetDataSet([os.path.join(out, "FinalResults", "*.parquet")])
    assert sum(copied.to_arrow_table().column("cnt").to_pylist()) == 1000
    assert exec_plan.final_output_path.startswith(out)

    driver = Driver()
    driver.parse_arguments(["scheduler", "--data_root", str(tmp_path / "root2"), "--self_contained_final_results"])
    ctx = Context()
    parts = DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])),), 2
    )
    exec_plan = driver.run(LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select url from {0}")), stop_process_on_done=False)
    final_dir = os.path.dirname(exec_plan.final_output.resolved_paths[0])
    assert final_dir.endswith("FinalResults")  # the files themselves, not only a manifest
    assert exec_plan.final_output.num_rows == 1000


def test_env_variables_reach_tasks(compat_data, tmp_path):
    def read_env(runtime_ctx, input_tables):
        import os

        import pyarrow as pa

        return pa.table({"v": [os.environ.get("SP_COMPAT_VAR", "")]})

    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")]))
    node = ArrowComputeNode(ctx, (source,), process_func=read_env, output_name="env")
    driver = Driver()
    driver.parse_arguments(["scheduler", "--data_root", str(tmp_path), "--env_variables", "SP_COMPAT_VAR=hello"])
    exec_plan = driver.run(LogicalPlan(ctx, node), stop_process_on_done=False)
    assert exec_plan.get_output("env").to_arrow_table().column("v").to_pylist() == ["hello"]


def test_rerun_with_same_job_id_resumes(compat_data, tmp_path):
    marker_dir = str(tmp_path / "runs")
    os.makedirs(marker_dir)

    def tag(runtime_ctx, input_datasets, output_path):
        import os
        import uuid

        open(os.path.join(marker_dir, uuid.uuid4().hex), "w").close()
        return True

    def plan(fail: bool):
        ctx = Context()
        dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
        parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
        tagged = PythonScriptNode(ctx, (parts,), process_func=tag)
        last = SqlEngineNode(
            ctx, (parts, tagged), "select count(*) as n from {0}" + (" where error('fail') is null" if fail else "")
        )
        return LogicalPlan(ctx, last)

    job_id = str(uuid.uuid4())
    args = ["scheduler", "--job_id", job_id, "--job_time", "1700000000", "--data_root", str(tmp_path / "root"), "--fail_fast"]
    driver = Driver()
    driver.parse_arguments(args)
    assert driver.run(plan(fail=True), stop_process_on_done=False) is None  # failed
    runs_before = len(os.listdir(marker_dir))
    # fail-fast may stop tagging tasks still running when the first query fails: count what committed
    (root,) = glob.glob(os.path.join(str(tmp_path / "root"), f"*.{job_id}"))
    committed = len(glob.glob(os.path.join(root, "staging", "completed_tasks", "PythonScriptTask-*.commit")))
    assert committed >= 1
    driver = Driver()
    driver.parse_arguments(args)
    exec_plan = driver.run(plan(fail=False), stop_process_on_done=False)
    assert exec_plan is not None and exec_plan.successful
    # the committed PythonScript tasks were not run again; the others ran once more
    assert len(os.listdir(marker_dir)) == runs_before + (3 - committed)


def test_ray_mode_runs_the_plan(compat_data, tmp_path, monkeypatch):
    """``ray`` mode without an address: a private local Ray instance, as upstream's (so it never
    joins another checkout's test cluster running on this machine, whose workers import that
    checkout's smallpond: tests/e2e/test_ray_session.py checks that with a cluster running)."""
    pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra (CI installs it)")
    monkeypatch.setenv("SP_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SP_RAY_ADDRESS", raising=False)
    from smallpond.logical.node import DataSinkNode

    ctx = Context()
    parts = DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])),), 2
    )
    sink = DataSinkNode(ctx, (SqlEngineNode(ctx, (parts,), "select url from {0}"),), output_path=str(tmp_path / "out"))
    driver = Driver()
    driver.parse_arguments(["ray", "--data_root", str(tmp_path / "root")])
    driver.run(LogicalPlan(ctx, sink), stop_process_on_done=False)
    assert ParquetDataSet([str(tmp_path / "out" / "*.parquet")]).num_rows == 1000


SCRIPT = textwrap.dedent(
    """
    import os
    from smallpond.execution.driver import Driver
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode

    def main():
        driver = Driver()
        driver.add_argument("-i", "--input_paths", nargs="+", required=True)
        driver.add_argument("-n", "--npartitions", type=int, default=2)
        driver.add_argument("--bad", action="store_true")
        args = driver.get_arguments()
        ctx = Context()
        parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(args["input_paths"])),), args["npartitions"])
        sql = "select count(*) as n from {0}" + (" where error('boom') is null" if args["bad"] else "")
        driver.run(LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), sql)))

    if __name__ == "__main__":
        main()
    """
)


def test_exit_codes(compat_data, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    inputs = [os.path.join(compat_data["arrow"], f"data{i}.parquet") for i in range(3)]
    env = dict(os.environ, SP_PROGRESS="0", PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, str(script), "scheduler", "--data_root", str(tmp_path / "root"), "-i", *inputs]
    ok = subprocess.run(base + ["-n", "3"], capture_output=True, text=True, timeout=180, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(base + ["--bad", "--fail_fast"], capture_output=True, text=True, timeout=180, env=env)
    assert bad.returncode == 70, bad.stderr[-2000:]
    assert "boom" in bad.stderr
