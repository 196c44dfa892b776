"""Removing a finished job's intermediates (retention.py) never leaves a published result dangling."""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.retention import remove_intermediates
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)


def _inputs(tmp_path):
    paths = []
    for i in range(3):
        path = str(tmp_path / f"in{i}.parquet")
        pq.write_table(pa.table({"host": [f"h{(i + j) % 5}" for j in range(4)], "v": list(range(4))}), path)
        paths.append(path)
    return paths


def _same(runtime_ctx, tables):
    return tables[0]


def _plan(inputs, final_sql="select * from {0}"):
    """The tester's job: a named output (``counted``) between unnamed SQL, FinalResults a manifest."""
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(inputs))
    parts = HashPartitionNode(ctx, (src,), npartitions=4, hash_columns=["host"])
    counts = SqlEngineNode(ctx, (parts,), "select host, count(*) as c from {0} group by host")
    named = ArrowComputeNode(ctx, (counts,), process_func=_same, output_name="counted")
    return LogicalPlan(ctx, SqlEngineNode(ctx, (named,), final_sql))


def _rt(tmp_path):
    return make_runtime_ctx("ror", None, str(tmp_path / "root"), task_cache="off", console_log_level="WARNING")


def _published(job_root):
    """{output name: rows} of every manifest under output/, asserting each lists files that exist."""
    out = {}
    for manifest in sorted(glob.glob(os.path.join(job_root, "output", "*", ".MANIFEST.txt"))):
        listed = [ln.strip() for ln in open(manifest) if ln.strip()]
        missing = [p for p in listed if not os.path.exists(p)]
        assert listed and not missing, (manifest, missing)
        out[os.path.basename(os.path.dirname(manifest))] = sum(pq.read_metadata(p).num_rows for p in listed)
    return out


def test_remove_output_root_keeps_what_published_results_list_and_a_rerun_keeps_them_valid(tmp_path):
    inputs = _inputs(tmp_path)
    run_job(_plan(inputs), _rt(tmp_path), num_workers=1, remove_output_root=True)
    job_root = _rt(tmp_path).job_root
    assert _published(job_root) == {"FinalResults": 5, "counted": 5}
    # the intermediates nothing published lists are gone: of staging/ only FinalResults' files stay
    kept = {p.split(os.sep)[-3] for p in glob.glob(os.path.join(job_root, "staging", "*", "*", "*"))}
    assert kept == {"SqlEngineNode.000005"}, kept
    assert not os.path.exists(os.path.join(job_root, "staging", "completed_tasks"))
    # a dry run, which does not start the job, finds what a rerun resumes: with the last query
    # changed, the named output's tasks (records kept aside by the clean-up) are resumed, not run
    from smallpond.execution.job import dry_run_plan

    changed = _plan(inputs, "select host from {0}")
    dry = dry_run_plan(changed, _rt(tmp_path))
    assert {v.task.key.split("-")[0] for v in dry.of("run")} == {"SqlEngineTask", "DataSinkTask"}, dry.verdicts
    assert len([v for v in dry.of("resumed") if v.task.key.startswith("ArrowComputeTask")]) == 4, dry.verdicts

    # the same command again (resume), with the flag and without: still valid, nothing recomputed
    before = {p: os.stat(p).st_ino for p in glob.glob(os.path.join(job_root, "*", "*", "*", "*.parquet"))}
    for flag in (True, False):
        run_job(_plan(inputs), _rt(tmp_path), num_workers=1, remove_output_root=flag)
        assert _published(job_root) == {"FinalResults": 5, "counted": 5}
    after = {p: os.stat(p).st_ino for p in glob.glob(os.path.join(job_root, "*", "*", "*", "*.parquet"))}
    assert after == before
    # ... as the real run of the changed plan does: the named output's files stay as they were
    run_job(changed, _rt(tmp_path), num_workers=1)
    arrow = {p: i for p, i in before.items() if "ArrowComputeTask" in p}
    assert arrow and {p: os.stat(p).st_ino for p in arrow} == arrow


def test_a_manifest_sink_outside_the_job_survives_a_clean_up_of_staging_and_output(tmp_path):
    inputs = _inputs(tmp_path)
    dest = str(tmp_path / "listed")

    def plan():
        ctx = Context()
        sql = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), "select v * 2 as w from {0}")
        return LogicalPlan(ctx, DataSinkNode(ctx, (sql,), dest, type="manifest"))

    run_job(plan(), _rt(tmp_path), num_workers=1)
    rt = _rt(tmp_path)
    remove_intermediates(rt, remove_output_root=True)  # as a session's shutdown does
    listed = [ln.strip() for ln in open(os.path.join(dest, ".MANIFEST.txt")) if ln.strip()]
    assert listed and sum(pq.read_metadata(p).num_rows for p in listed) == 12
    assert not os.path.exists(rt.output_root) and not os.path.exists(rt.queue_root)


def test_queue_folder_goes_even_while_an_executor_writes_into_it(tmp_path):
    """Executors started by hand (any host) may still write their heartbeat into queue/ while the
    job's clean-up removes it (they never make a folder again: queue_process.register, write_json).
    A file written into a folder the removal had just emptied made that folder's removal fail,
    leaving queue/ behind (1 of 30 real sessions ending with such an executor beating every 5 ms;
    1 to 4 of the 10 clean-ups below with their writer beating every 1 ms). It is removed again
    until it is gone (a few passes: a writer beating every 0.5 ms, in this process, outran them on
    a loaded machine, 1 test in 8, no executor beats that fast)."""
    import threading
    import time

    from smallpond.execution.executors.queue_protocol import QueuePaths
    from smallpond.io.filesystem import atomic_write_bytes

    left = []
    for i in range(10):
        rt = make_runtime_ctx(f"job{i}", None, str(tmp_path / "root"))
        rt.initialize()
        paths = QueuePaths(rt.layout)
        paths.create()
        for d in (paths.todo, paths.done, paths.nodes):
            for k in range(20):
                open(os.path.join(d, f"item{k}"), "w").close()
        member = paths.member("host-1-abc")
        os.makedirs(os.path.join(member, "claimed"))
        stop = threading.Event()

        def beat(member=member, stop=stop):
            while not stop.is_set():
                try:  # as an executor's heartbeat: a temp file renamed, into its folder only if it is there
                    atomic_write_bytes(os.path.join(member, "heartbeat"), b"{}")
                except FileNotFoundError:
                    return
                time.sleep(0.001)

        writer = threading.Thread(target=beat)
        writer.start()
        time.sleep(0.01)
        try:
            remove_intermediates(rt)
        finally:
            stop.set()
            writer.join(10)
        if os.path.exists(paths.root):
            left.append([os.path.relpath(os.path.join(d, f), paths.root) for d, _, fs in os.walk(paths.root) for f in fs])
    assert not left, f"queue/ left behind in {len(left)} of 10 clean-ups: {left[:3]}"
