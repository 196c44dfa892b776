"""Upstream's ``smallpond.execution.manager.JobManager`` (reference §4.5), run for real."""

from __future__ import annotations

import os
import uuid

import pytest

from smallpond.errors import JobFailed, ParameterError, TaskError
from smallpond.execution.manager import JobManager
from smallpond.logical.dataset import ParquetDataSet, SqlQueryDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    LogicalPlan,
    SqlEngineNode,
)


def count_plan(compat_data) -> LogicalPlan:
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["mock_urls"], "*.parquet")]))
    parts = DataSetPartitionNode(ctx, (source,), npartitions=3)
    counts = SqlEngineNode(ctx, (parts,), "select count(*) as n from {0}", output_name="counts")
    return LogicalPlan(ctx, counts)


def job_folder(data_root: str, job_id: str) -> str:
    (name,) = [n for n in os.listdir(data_root) if n.endswith(job_id)]
    return os.path.join(data_root, name)


def test_run_returns_the_execution_plan(compat_data, tmp_path, log_messages):
    job_id = str(uuid.uuid4())
    exec_plan = JobManager(data_root=str(tmp_path / "root")).run(count_plan(compat_data), job_id=job_id)
    assert exec_plan.successful
    assert sum(exec_plan.get_output("counts").to_arrow_table().column("n").to_pylist()) == 1000
    assert sum(exec_plan.final_output.to_arrow_table().column("n").to_pylist()) == 1000
    log = os.path.join(job_folder(str(tmp_path / "root"), job_id), "log")
    # no picture is drawn (upstream rendered graph.png with Graphviz for every job, §8.17)
    assert "plan.dot" in os.listdir(log) and not [n for n in os.listdir(log) if n.startswith("graph")]
    assert not [m for m in log_messages if "no effect" in m]  # defaults warn about nothing


def test_arguments_map_onto_the_job(compat_data, tmp_path, monkeypatch, log_messages):
    def env_value(rt, tables):
        import pyarrow as pa

        return pa.table({"x": [os.environ.get("MY_SETTING")]})

    ctx = Context()
    parts = DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet([os.path.join(compat_data["mock_urls"], "*.parquet")])),), npartitions=2
    )
    node = ArrowComputeNode(ctx, (parts,), process_func=env_value, output_name="env")
    monkeypatch.chdir(tmp_path)  # a data root of one relative path component (upstream crashed, §8.17)
    out = tmp_path / "published"
    exec_plan = JobManager(data_root="jobs").run(
        LogicalPlan(ctx, node),
        job_id=str(uuid.uuid4()),
        job_time=1700000000.0,
        env_variables=["MY_SETTING=42"],
        output_path=str(out),
        manifest_only_final_results=False,
        remove_output_root=True,
        task_cache="off",
        num_executors=2,
    )
    (said,) = [m for m in log_messages if "without a platform" in m]
    assert "num_executors=2) without a platform runs embedded" in said and "JobManager(platform='mpi')" in said
    assert exec_plan.get_output("env").to_arrow_table().column("x").to_pylist() == ["42", "42"]
    assert sorted(os.listdir(out)) == ["FinalResults", "env"]
    assert [n for n in os.listdir(tmp_path / "jobs") if n.startswith("2023-11-14-")]  # job_time, epoch seconds


def test_a_failed_job_raises_its_error(tmp_path):
    def fail(rt, tables):
        raise ValueError("boom in the user's function")

    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, SqlQueryDataSet("select 1 as a")),), process_func=fail)
    with pytest.raises(JobFailed, match="boom in the user's function") as e:
        JobManager(data_root=str(tmp_path / "root")).run(LogicalPlan(ctx, node), fail_fast_on_failure=True)
    # the failed task's error: the node, where the script created it, the user's exception
    (error,) = e.value.errors
    assert isinstance(error, TaskError) and f"{node!r} failed: ValueError: boom in the user's function" in str(error)
    assert f"node created at: {__file__}:" in str(error)


def test_arguments_without_effect_are_warned_about_once(compat_data, tmp_path, log_messages):
    manager = JobManager(data_root=str(tmp_path / "root"), task_image="my-image")
    exec_plan = manager.run(
        count_plan(compat_data),
        user_tags=["team=x"],
        memory_allocator="jemalloc",
        prioritize_retry=True,
        sched_state_observers=[object()],
        some_platform_option=1,
        restart=True,  # a Driver option: honoured, not warned about
    )
    assert exec_plan.successful
    with pytest.raises(ParameterError, match="JobManager.run: plan must be a LogicalPlan, got SqlEngineNode"):
        manager.run(count_plan(compat_data).root_node)
    warned = [m for m in log_messages if "no effect" in m]
    assert len(warned) == 1
    assert (
        "these JobManager arguments have no effect in this build and are ignored: user_tags, prioritize_retry, "
        "memory_allocator, task_image, sched_state_observers, some_platform_option" in warned[0]
    )


def test_embedded_jobs_get_one_worker_per_usable_cpu(tmp_path):
    # the default num_executors=1 (upstream's one executor) and any other without a platform run
    # as many tasks at once as the machine has usable CPUs, as the Driver's embedded mode does
    import time

    import pyarrow as pa

    meeting = tmp_path / "meeting"
    meeting.mkdir()

    def meet(rt, tables):
        # each partition waits (up to 30 s) for the other one to start: together only if two
        # workers run them at once; what it saw when it stopped waiting is its result
        open(meeting / f"{os.getpid()}-{uuid.uuid4().hex}", "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(meeting)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return pa.table({"met": [len(os.listdir(meeting))]})

    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, SqlQueryDataSet("select 1 as a")),), npartitions=2)
    node = ArrowComputeNode(ctx, (parts,), process_func=meet, cpu_limit=1)
    for num_executors in ({}, {"num_executors": 2}):
        for name in os.listdir(meeting):
            os.remove(meeting / name)
        exec_plan = JobManager(data_root=str(tmp_path / "root")).run(
            LogicalPlan(ctx, node), job_id=str(uuid.uuid4()), **num_executors
        )
        if exec_plan.ctx.usable_cpu_count < 2:
            pytest.skip("one usable CPU: one worker either way")
        met = exec_plan.final_output.to_arrow_table().column("met").to_pylist()
        assert min(met) == 2, (num_executors, met)


def test_a_platform_keyword_starts_num_executors(compat_data, tmp_path, log_messages):
    # run(platform=...) (a Driver option passed through kwargs) names the platform as
    # JobManager(platform=...) does: num_executors executors are started, and no warning says
    # the job runs embedded
    n = (os.cpu_count() or 1) + 1  # not what a default of one per usable CPU would start
    root = str(tmp_path / "root")
    job_id = str(uuid.uuid4())
    exec_plan = JobManager(data_root=root).run(count_plan(compat_data), job_id=job_id, platform="base", num_executors=n)
    assert sum(exec_plan.final_output.to_arrow_table().column("n").to_pylist()) == 1000
    assert not [m for m in log_messages if "without a platform" in m]
    with open(os.path.join(job_folder(root, job_id), "log", "scheduler.log")) as f:
        assert f"queue backend: base started {n} executor(s)" in f.read()


def test_the_constructors_data_root_wins_over_runs(compat_data, tmp_path, log_messages):
    # upstream's run() has no data_root: given there it fell into **kwargs and the JobManager's
    # data_root was used (reference §4.5); here too, and the value not used is warned about
    mine, theirs = str(tmp_path / "mine"), str(tmp_path / "theirs")
    job_id = str(uuid.uuid4())
    exec_plan = JobManager(data_root=mine).run(count_plan(compat_data), job_id=job_id, data_root=theirs)
    assert sum(exec_plan.final_output.to_arrow_table().column("n").to_pylist()) == 1000
    assert job_folder(mine, job_id) and not os.path.exists(theirs)
    (said,) = [m for m in log_messages if "is not used" in m]
    assert f"JobManager.run(data_root={theirs!r}) is not used: the JobManager was made with data_root={mine!r}" in said
    # the constructor left it unset: run()'s value is the one, and nothing is warned about
    job_id = str(uuid.uuid4())
    JobManager().run(count_plan(compat_data), job_id=job_id, data_root=theirs)
    assert job_folder(theirs, job_id)
    assert len([m for m in log_messages if "is not used" in m]) == 1


def _sinks(compat_data, tmp_path):
    from smallpond.logical.node import DataSinkNode

    counts = count_plan(compat_data).root_node
    ctx = counts.ctx
    copied = DataSinkNode(ctx, (counts,), str(tmp_path / "copied"), type="copy")
    doubled = SqlEngineNode(ctx, (counts,), "select n * 2 as n from {0}")
    return ctx, copied, doubled


def test_a_manifest_sink_over_a_sink_lists_its_published_files(compat_data, tmp_path):
    # the manifest listed the other sink's staged files, renamed into its destination when the
    # job publishes (after every task ran): reading the result failed, FileNotFoundError
    from smallpond.logical.node import DataSinkNode

    ctx, copied, _ = _sinks(compat_data, tmp_path)
    listed = DataSinkNode(ctx, (copied,), str(tmp_path / "listed"), type="manifest")
    exec_plan = JobManager(data_root=str(tmp_path / "root")).run(LogicalPlan(ctx, listed))
    assert sum(exec_plan.final_output.to_arrow_table().column("n").to_pylist()) == 1000
    with open(tmp_path / "listed" / ".MANIFEST.txt") as f:
        lines = f.read().splitlines()
    assert lines and all(os.path.dirname(p) == str(tmp_path / "copied") and os.path.exists(p) for p in lines)


def test_the_final_output_of_a_user_built_root_node_is_its_inputs_result(compat_data, tmp_path):
    # RootNode(ctx, (sink,)) given as the plan's root: final_output was its RootTask's output, an
    # empty table with no columns. It stands for its inputs: one sink is the final result as a
    # sink root is; several (or nodes that are not sinks) are published as FinalResults together
    from smallpond.logical.node import RootNode

    ctx, copied, doubled = _sinks(compat_data, tmp_path)
    manager = JobManager(data_root=str(tmp_path / "root"))
    one = manager.run(LogicalPlan(ctx, RootNode(ctx, (copied,))), job_id=str(uuid.uuid4()))
    assert one.final_output_path == str(tmp_path / "copied")
    assert sum(one.final_output.to_arrow_table().column("n").to_pylist()) == 1000
    both = manager.run(LogicalPlan(ctx, RootNode(ctx, (copied, doubled))), job_id=str(uuid.uuid4()))
    assert os.path.basename(both.final_output_path) == "FinalResults"
    assert sum(both.final_output.to_arrow_table().column("n").to_pylist()) == 3000


def test_yes_no_arguments_read_the_text_false_as_false(compat_data, tmp_path, log_messages):
    # restart="false" (a command line's value passed on) restarted the job: its folder was moved
    # aside (".restarted-...") and every task ran again
    root = tmp_path / "root"
    job_id = str(uuid.uuid4())
    JobManager(data_root=str(root)).run(count_plan(compat_data), job_id=job_id)
    JobManager(data_root=str(root)).run(count_plan(compat_data), job_id=job_id, restart="false")
    assert not [p for p in os.listdir(root) if ".restarted-" in p]
    with pytest.raises(ParameterError, match="JobManager.run: restart must be True or False, got 'nope'"):
        JobManager(data_root=str(root)).run(count_plan(compat_data), job_id=job_id, restart="nope")
    JobManager(data_root=str(root)).run(count_plan(compat_data), job_id=job_id, restart="TRUE")
    assert len([p for p in os.listdir(root) if ".restarted-" in p]) == 1
