"""Speculative execution: a straggler gets a second copy, the first to commit wins, the loser's files go.

The straggler's first attempt waits for a file that never appears (up to ten minutes): the job can
only finish if the speculative copy wins, so no timing is asserted.
"""

from __future__ import annotations

import functools
import glob
import os
import time

import pyarrow as pa
import pytest

from smallpond.errors import ParameterError
from smallpond.execution.commit import read_commit
from smallpond.execution.job import run_job
from smallpond.execution.scheduler import SchedState, Speculation, reserve, stragglers
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan
from tests.datagen import generate_parquet_files


def stall_first_attempt_of(runtime_ctx, tables, slow_index: int, never: str):
    task = runtime_ctx.task
    if task.partition_infos_as_dict["__data_partition__"] == slow_index and task.retry_count == 0:
        deadline = time.monotonic() + 600
        while not os.path.exists(never) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(0.2)
    return tables[0].append_column("attempt", pa.array([task.retry_count] * tables[0].num_rows, pa.int64()))


def plan(inputs, never):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), 6, partition_by_rows=True)
    fn = functools.partial(stall_first_attempt_of, slow_index=2, never=never)
    node = ArrowComputeNode(ctx, (parts,), process_func=fn)
    return LogicalPlan(ctx, node), node


def test_a_straggler_is_overtaken_by_its_copy(tmp_path, make_rt):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=20)
    logical, node = plan(inputs, str(tmp_path / "never"))
    rt = make_rt()
    spec = Speculation.of("aggressive", min_runtime=1.0, multiplier=2.0, quantile=0.5)
    exec_plan = run_job(logical, rt, num_workers=2, speculation=spec)
    assert exec_plan.final_output.num_rows == 60
    tasks = [t for t in exec_plan.tasks.values() if t.node_id == int(node.id)]
    slow = next(t for t in tasks if t.partition_infos_as_dict["__data_partition__"] == 2)
    record = read_commit(rt, slow)
    assert record["attempt"] >= 1, "the stalled first attempt cannot have committed"
    table = exec_plan.results[slow.key].to_arrow_table()
    assert set(table.column("attempt").to_pylist()) == {record["attempt"]}
    # the stalled attempt was cancelled; nothing of it is left
    node_dir = os.path.dirname(record["output_dir"])
    assert [n for n in os.listdir(node_dir) if n.startswith(slow.key)] == [os.path.basename(record["output_dir"])]
    assert not glob.glob(os.path.join(rt.staging_root, "*", "*.tmp-*"))
    # the event log says so: the report and the summary do not count the loser as running
    from smallpond.execution.events import JobHistory, read_events

    cancelled = [e for e in read_events(rt.log_root) if e["ev"] == "cancelled"]
    assert [(e["key"], e["attempt"]) for e in cancelled] == [(slow.key, 0)]
    stats = JobHistory.load(rt.log_root).last.node(int(node.id))
    assert stats.cancelled == 1 and stats.running == 0


def test_no_copy_when_speculation_is_off(tmp_path, make_rt):
    """The same plan without speculation: the stalled attempt is the only one (released by the file)."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=20)
    never = tmp_path / "never"
    logical, node = plan(inputs, str(never))
    rt = make_rt()
    import threading

    threading.Timer(4.0, never.touch).start()  # let the stalled attempt finish eventually
    exec_plan = run_job(logical, rt, num_workers=2, speculation=Speculation.of("disable"))
    tasks = [t for t in exec_plan.tasks.values() if t.node_id == int(node.id)]
    assert all(read_commit(rt, t)["attempt"] == 0 for t in tasks)


def test_stragglers_follow_the_knobs():
    """The policy as a function of the state: quantile, multiplier and minimum runtime."""
    from types import SimpleNamespace

    st = SchedState()
    for i in range(4):
        st.tasks[f"T-{i}"] = SimpleNamespace(node_id=1, exec_on_scheduler=False)
    st.runtimes[1] = [1.0, 1.0]
    reserve(st, "T-2", 0, 1, 0, since=100.0)
    reserve(st, "T-3", 0, 1, 0, since=109.0)
    spec = Speculation.of("enable", quantile=0.5, multiplier=3.0, min_runtime=2.0)
    assert stragglers(st, spec, now=110.0) == ["T-2"]  # 10 s > max(2, 3 x 1 s); T-3 ran 1 s
    assert stragglers(st, Speculation.of("enable", quantile=0.75, multiplier=3.0, min_runtime=2.0), now=110.0) == []
    assert stragglers(st, Speculation.of("enable", quantile=0.5, multiplier=3.0, min_runtime=20.0), now=110.0) == []
    assert stragglers(st, Speculation.of("disable"), now=110.0) == []
    reserve(st, "T-2", 1, 1, 0, since=110.0, speculative=True)
    assert stragglers(st, spec, now=200.0) == ["T-3"], "a task gets one copy, not more"


def test_bad_speculation_settings_are_refused():
    with pytest.raises(ParameterError, match="speculative"):
        Speculation.of("sometimes")
    with pytest.raises(ParameterError, match="quantile"):
        Speculation.of("enable", quantile=1.5)
