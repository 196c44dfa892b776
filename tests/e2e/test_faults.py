"""Acceptance: injected faults and dead workers do not change a job's output.

* ``fault_inject_prob=0.2``: attempts fail at random (before running, after running, while
  publishing); the output is identical to a clean run's.
* A worker that kills itself in the middle of a task, and a worker killed from outside while it
  runs a task: the attempt is reported lost, retried on a fresh worker, and the job succeeds.
"""

from __future__ import annotations

import functools
import glob
import os
import signal
import threading
import time
from typing import List

import pyarrow as pa
import pytest

from smallpond.execution.attempt import logged_attempts
from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSinkNode, DataSourceNode, LogicalPlan
from tests.datagen import generate_parquet_files, parquet_paths_in, read_parquet, rows
from tests.e2e.counting_job import counting_plan
from tests.e2e.safety_helpers import fault_count


def sink_content(sink: str) -> List[tuple]:
    """Rows of the sink's files in file-name order (names sort by task id)."""
    return rows(read_parquet(parquet_paths_in(sink)), ["id", "key", "name", "doubled"])


def expected(inputs: List[str]) -> List[tuple]:
    return sorted((i, k, n, 2 * i) for i, k, n in rows(read_parquet(inputs), ["id", "key", "name"]))


def retried_attempts(rt) -> List[str]:
    """``{key}.{attempt}`` of every attempt after a task's first (from the task logs and the workers' logs)."""
    return [f"{key}.{attempt}" for key, attempt in logged_attempts(rt.log_root) if attempt > 0]


def test_fault_injection_gives_the_clean_output(tmp_path, make_rt):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=30)
    clean_sink, faulty_sink = str(tmp_path / "clean"), str(tmp_path / "faulty")
    run_job(counting_plan(inputs, str(tmp_path / "c1"), clean_sink, sleep=0), make_rt(), num_workers=2)
    rt = make_rt(fault_inject_prob=0.2)
    exec_plan = run_job(counting_plan(inputs, str(tmp_path / "c2"), faulty_sink, sleep=0), rt, num_workers=2)
    assert exec_plan.successful
    # 33 tasks on workers, each attempt failing with probability >= 0.36: some retries happened,
    # and they were retries of injected faults
    assert retried_attempts(rt), "no fault was injected"
    assert fault_count(rt.log_root) >= len(retried_attempts(rt)) > 0
    assert sink_content(faulty_sink) == sink_content(clean_sink)
    assert sorted(sink_content(clean_sink)) == expected(inputs)
    # nothing of the failed attempts is left behind
    assert not glob.glob(os.path.join(rt.staging_root, "*", "*.tmp-*"))
    assert not [p for p in os.listdir(tmp_path) if ".staging-" in p]


def test_fault_injection_url_sort(tmp_path, make_rt, url_files, monkeypatch):
    from tests.e2e.test_sort_mock_urls import EXAMPLE, check_sorted_urls

    monkeypatch.syspath_prepend(os.path.dirname(EXAMPLE))
    from sort_mock_urls import sort_mock_urls

    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    # the task cache off: the faulty job would otherwise reuse every task but its sinks from the
    # clean one (the same tasks, the same keys), and two tasks often draw no fault at all
    run_job(sort_mock_urls(url_files, 3, external_output_path=str(clean)), make_rt(task_cache="off"), num_workers=2)
    rt = make_rt(fault_inject_prob=0.5, task_cache="off")  # 11 tasks: all of them draw no fault 1 time in 2,000
    run_job(sort_mock_urls(url_files, 3, external_output_path=str(faulty)), rt, num_workers=2)
    assert fault_count(rt.log_root) > 0, "no fault was injected"
    clean_files = parquet_paths_in(str(clean / "data_sink"))
    faulty_files = parquet_paths_in(str(faulty / "data_sink"))
    assert len(clean_files) == len(faulty_files)
    for a, b in zip(clean_files, faulty_files):
        assert read_parquet([a]).equals(read_parquet([b]))
    check_sorted_urls(faulty_files, url_files, 3)


@pytest.mark.parametrize("die_how", ["kill", "exit"])
def test_worker_dies_during_a_task(tmp_path, make_rt, die_how):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    markers = tmp_path / "markers"
    markers.mkdir()
    sink = str(tmp_path / "sink")
    counter = str(tmp_path / "counter")
    rt = make_rt()
    plan = counting_plan(
        inputs, counter, sink, npartitions=6, sleep=0, die_once=str(markers), die_partitions=[0, 3], die_how=die_how
    )
    exec_plan = run_job(plan, rt, num_workers=2)
    assert exec_plan.successful
    died = sorted(p.name for p in markers.iterdir())
    assert len(died) == 2
    with open(counter) as f:
        executions = f.read().split()
    assert len(executions) == 6 + 2  # the two killed attempts, then their retries
    for name in died:
        key = name[len("died-") :]
        assert f"{key}.1" in retried_attempts(rt)
    assert sorted(sink_content(sink)) == expected(inputs)


def hang_on_first_attempt(runtime_ctx, tables: List[pa.Table], pid_dir: str) -> pa.Table:
    task = runtime_ctx.task
    pid_file = os.path.join(pid_dir, f"{task.key}.pid")
    if not os.path.exists(pid_file):
        tmp = pid_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.rename(tmp, pid_file)
        time.sleep(120)  # until killed from outside
    return tables[0]


def test_worker_killed_from_outside(tmp_path, make_rt):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(inputs))
    parts = DataSetPartitionNode(ctx, (source,), 3, partition_by_rows=True)
    node = ArrowComputeNode(ctx, (parts,), process_func=functools.partial(hang_on_first_attempt, pid_dir=str(pid_dir)))
    sink = tmp_path / "sink"
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (DataSetPartitionNode(ctx, (node,), 1),), str(sink)))

    killed: List[int] = []
    stop = threading.Event()

    def killer():
        # kill each worker once it reports that it is inside a task
        while not stop.is_set() and len(killed) < 3:
            for p in pid_dir.glob("*.pid"):
                pid = int(p.read_text())
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    rt = make_rt()
    try:
        run_job(plan, rt, num_workers=2)
    finally:
        stop.set()
        thread.join()
    assert len(killed) == 3
    assert sorted(rows(read_parquet(parquet_paths_in(str(sink))), ["id"])) == [(i,) for i in range(40)]
    assert len([a for a in retried_attempts(rt) if a.startswith("ArrowComputeTask-") and a.endswith(".1")]) == 3


def test_idle_workers_killed_from_outside(tmp_path, make_rt, monkeypatch):
    """Workers that died while idle are noticed when a task is sent to them; the tasks still run."""
    from smallpond.execution.executors.local import LocalExecutor

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(inputs))
    node = ArrowComputeNode(ctx, (DataSetPartitionNode(ctx, (source,), 2),), process_func=lambda rt, ts: ts[0])
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (DataSetPartitionNode(ctx, (node,), 1),), str(tmp_path / "sink")))
    original_start = LocalExecutor.start

    def start_then_kill(self):
        original_start(self)
        for w in self.workers:
            w.proc.send_signal(signal.SIGKILL)
            w.proc.wait()

    monkeypatch.setattr(LocalExecutor, "start", start_then_kill)
    exec_plan = run_job(plan, make_rt(), num_workers=2)
    assert exec_plan.successful
    assert sorted(rows(read_parquet(parquet_paths_in(str(tmp_path / "sink"))), ["id"])) == [(i,) for i in range(40)]
