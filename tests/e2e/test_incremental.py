"""Acceptance: incremental builds across jobs through the task cache.

* a plan over 100 input files (partition by files -> SQL per partition -> hash partition -> SQL
  -> sink), built once, then again with a new job id after one input file was rewritten: the
  second build runs only the tasks that depend on that file (counted from the scheduler's events
  and from the task logs), its output is byte-identical to a clean build's, and a dry run names
  the file;
* two jobs of the same plan started at once on one cache compute each task once;
* a job waiting for another job's task computes it itself when that job dies.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.job import dry_run_plan, make_runtime_ctx, run_job
from smallpond.execution.runtime import user_dir
from smallpond.execution.scheduler import SchedulerListener
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files, tree_digest
from tests.e2e.test_resume import counter_lines, expected_rows, job_command, sink_rows

NFILES, NPARTS, NHASH = 100, 20, 4


def incremental_plan(inputs: List[str], sink: str) -> LogicalPlan:
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(inputs))
    parts = DataSetPartitionNode(ctx, (src,), NPARTS)  # by files: 5 files per partition
    cleaned = SqlEngineNode(ctx, (parts,), "select id, key, name, length(name) as len from {0}")
    hashed = HashPartitionNode(ctx, (cleaned,), NHASH, ["key"])
    totals = SqlEngineNode(
        ctx, (hashed,), "select key, count(*) as n, sum(len) as total, min(id) as first from {0} group by key order by key"
    )
    return LogicalPlan(ctx, DataSinkNode(ctx, (totals,), sink))


class Events(SchedulerListener):
    """What the scheduler did: attempts submitted and tasks reused from the cache."""

    def __init__(self) -> None:
        self.submitted: List[str] = []
        self.reused: Dict[str, object] = {}
        self.resumed: List[str] = []

    def on_submit(self, task, attempt, memory):
        self.submitted.append(task.key)

    def on_reused(self, task, entry):
        self.reused[task.key] = entry

    def on_resumed(self, task, record):
        self.resumed.append(task.key)


def started_in_logs(root: str) -> Counter:
    """How often each task started in the job at ``root``, from its attempts' logs."""
    from smallpond.execution.attempt import logged_attempts

    return Counter(key for key, _ in logged_attempts(os.path.join(root, "log")))


def rewrite(path: str, seed: int) -> None:
    t = pq.read_table(path)
    names = pa.array([f"changed{seed}_{i}" for i in range(t.num_rows)], pa.string())
    pq.write_table(t.set_column(t.schema.get_field_index("name"), "name", names), path)


def test_rebuild_after_one_file_changed_runs_only_what_depends_on_it(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=NFILES, rows_per_file=20)
    data_root, sink = str(tmp_path / "root"), str(tmp_path / "sink")
    first = Events()
    plan1 = run_job(
        incremental_plan(inputs, sink), make_runtime_ctx("build-1", None, data_root), num_workers=2, listeners=[first]
    )
    worker_tasks = {k for k, t in plan1.tasks.items() if not t.exec_on_scheduler}
    assert set(first.submitted) == worker_tasks and not first.reused

    changed = inputs[37]
    rewrite(changed, seed=1)
    listing = str(dry_run_plan(incremental_plan(inputs, sink), make_runtime_ctx("build-2", None, data_root)))
    assert f"input file {changed} changed" in listing, listing

    second = Events()
    plan2 = run_job(
        incremental_plan(inputs, sink), make_runtime_ctx("build-2", None, data_root), num_workers=2, listeners=[second]
    )
    expected = depends_on(plan2, changed)
    # the partition of the changed file reaches one producer of the hash partitioning (one per input
    # partition), every task after it (each reads every producer), and the sink
    kinds = sorted(type(plan2.tasks[k]).__name__ for k in expected)
    assert kinds.count("HashPartitionTask") == 1 and kinds.count("DataSinkTask") == 1
    assert kinds.count("SqlEngineTask") in (NHASH, NHASH + 1)  # (+1: the SQL per file partition, unless fused)
    assert set(second.submitted) == expected
    assert set(started_in_logs(plan2.ctx.job_root)) == expected, "the task logs agree with the events"
    assert len(second.reused) == len(worker_tasks) - len(expected) >= NPARTS - 1
    assert plan2.num_reused == len(second.reused)
    # the job's event log (behind the summary and the report) counts them too
    from smallpond.execution.events import JobHistory
    from smallpond.execution.summary import summary_of

    assert JobHistory.load(plan2.ctx.log_root).last.total("reused") == len(second.reused)
    assert f"{len(second.reused)} reused from the task cache" in summary_of(plan2.ctx.job_root)
    sink_task = {k for k in expected if type(plan2.tasks[k]).__name__ == "DataSinkTask"}
    # the dry run said the same before the build
    for key in expected - sink_task:
        assert re.search(rf"{key}( \[[^\]]*\])?  will run", listing), key
    assert listing.count("  reused (written by") == len(second.reused)

    # the output is byte-identical to a clean build of the changed inputs
    rebuilt = tree_digest(sink)
    clean_sink = str(tmp_path / "clean_sink")
    clean_rt = make_runtime_ctx("clean", None, str(tmp_path / "clean_root"), task_cache="off")
    run_job(incremental_plan(inputs, clean_sink), clean_rt, num_workers=1)
    clean = tree_digest(clean_sink)
    manifest = ".MANIFEST.txt"  # lists absolute paths of the files, which differ with the folder
    assert {k: v for k, v in rebuilt.items() if k != manifest} == {k: v for k, v in clean.items() if k != manifest}
    assert len(rebuilt) == NHASH + 1


def depends_on(plan, path: str) -> set:
    """The worker tasks that read ``path`` or the output of a task that does (transitively)."""
    from smallpond.logical.graph import topological_order

    tasks = plan.tasks
    affected: set = set()
    for key in topological_order([plan.root_task.key], lambda k: tasks[k].input_keys):
        t = tasks[key]
        upstream = any(d in affected for d in t.input_keys)
        reads = not t.exec_on_scheduler and any(path in plan.results[d].resolved_paths for d in t.input_keys)
        if upstream or reads:
            affected.add(key)
    return {k for k in affected if not tasks[k].exec_on_scheduler}


def counting_command(job_id: str, data_root: str, cache: str, inputs: List[str], counter: str, sink: str):
    return job_command(job_id, data_root, inputs, counter, sink, "--task_cache", cache, "--sleep", "0", npartitions=6)


def slowed_env(extra_sleep: str) -> Dict[str, str]:
    """The environment of a job whose tasks sleep ``extra_sleep`` seconds more: inherited by its
    workers, and so not part of its tasks' keys (its ``--env_variables`` would be)."""
    return {**os.environ, "COUNTING_JOB_EXTRA_SLEEP": extra_sleep}


def test_two_jobs_started_at_once_compute_each_task_once(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=30)
    counter, cache = str(tmp_path / "counter"), str(tmp_path / "cache")
    procs = [
        subprocess.Popen(
            counting_command(f"twin-{i}", str(tmp_path / f"root{i}"), cache, inputs, counter, str(tmp_path / f"sink{i}")),
            env=slowed_env("0.3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    executions = Counter(counter_lines(counter))
    assert len(executions) == 6 and set(executions.values()) == {1}, executions  # six partitions, each computed once
    for i in range(2):
        assert sink_rows(str(tmp_path / f"sink{i}")) == expected_rows(inputs)
    started = [started_in_logs(glob.glob(str(tmp_path / f"root{i}" / "*.*"))[0]) for i in range(2)]
    computes = [k for s in started for k in s if k.startswith("ArrowComputeTask")]
    assert sorted(computes) == sorted(executions), "each partition's task started in exactly one of the jobs"


def test_a_job_waiting_for_a_dead_job_computes_the_task_itself(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    counter, cache = str(tmp_path / "counter"), str(tmp_path / "cache")
    first = subprocess.Popen(
        counting_command("slow", str(tmp_path / "root0"), cache, inputs, counter, str(tmp_path / "sink0")),
        env=slowed_env("60"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # alone on the cache, the first job claims nothing; it says it uses the cache at its
        # first task, and claims what it runs once the second job appears
        while not glob.glob(os.path.join(cache, "jobs", "*")):
            assert first.poll() is None and time.monotonic() < deadline, "the first job never started a task"
            time.sleep(0.05)
        second = subprocess.Popen(
            counting_command("patient", str(tmp_path / "root1"), cache, inputs, counter, str(tmp_path / "sink1")),
            env=slowed_env("0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        log = None
        while log is None or "waits for" not in open(log).read():
            assert second.poll() is None and time.monotonic() < deadline, "the second job did not wait"
            found = glob.glob(os.path.join(str(tmp_path / "root1"), "*.*", "log", "scheduler.log"))
            log = found[0] if found else None
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert sink_rows(str(tmp_path / "sink1")) == expected_rows(inputs)
    assert "breaking the stale claim" in open(log).read()


@pytest.mark.parametrize("how", ["off", "other_seed"])
def test_no_reuse_with_the_cache_off_or_another_seed(tmp_path, how):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=10)
    root = str(tmp_path / "root")
    run_job(incremental_plan(inputs, str(tmp_path / "s1")), make_runtime_ctx("a", None, root), num_workers=1)
    kw = {"task_cache": "off"} if how == "off" else {"random_seed": 12345}
    events = Events()
    run_job(
        incremental_plan(inputs, str(tmp_path / "s2")), make_runtime_ctx("b", None, root, **kw), num_workers=1, listeners=[events]
    )
    assert not events.reused and events.submitted


def test_a_resumed_job_keeps_what_it_took_from_the_cache(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=10)
    root = str(tmp_path / "root")
    run_job(incremental_plan(inputs, str(tmp_path / "s1")), make_runtime_ctx("a", None, root), num_workers=1)
    second = Events()
    run_job(incremental_plan(inputs, str(tmp_path / "s2")), make_runtime_ctx("b", None, root), num_workers=1, listeners=[second])
    assert second.reused
    # the same job again (resume): what was reused is committed in the job, nothing is looked up
    third = Events()
    again = run_job(
        incremental_plan(inputs, str(tmp_path / "s2")), make_runtime_ctx("b", None, root), num_workers=1, listeners=[third]
    )
    assert set(third.resumed) >= set(second.reused) and again.num_reused == 0 and not third.submitted


def test_a_failed_insertion_is_a_warning_not_a_failure(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    root, cache = str(tmp_path / "root"), str(tmp_path / "cache")
    from smallpond.execution.cache import open_cache

    open_cache(cache)
    for shard in range(256):  # a file where each folder of entries would be: no entry can be stored
        open(os.path.join(cache, "entries", f"{shard:02x}"), "w").close()
    sink = str(tmp_path / "sink")
    result = run_job(incremental_plan(inputs, sink), make_runtime_ctx("a", None, root, task_cache=cache), num_workers=1)
    assert result.successful and sink_rows_of(sink)
    assert not glob.glob(os.path.join(cache, "entries", "*", "*"))
    (job,) = glob.glob(os.path.join(root, "*.*"))
    logs = "".join(open(p).read() for p in glob.glob(os.path.join(job, "log", "tasks", "*.log")))
    assert "task cache: could not add the output" in logs


def sink_rows_of(sink: str) -> int:
    return sum(pq.read_metadata(os.path.join(sink, n)).num_rows for n in os.listdir(sink) if n.endswith(".parquet"))


def count_rows(table: pa.Table, counter: str) -> pa.Table:
    with open(counter, "a") as f:
        f.write("x\n")
    return table


def test_recompute_is_not_served_from_the_cache(tmp_path):
    import functools

    import smallpond

    counter = str(tmp_path / "counter")
    fn = functools.partial(count_rows, counter=counter)

    def session_rows(job_id: str, recompute: bool):
        sp = smallpond.init(job_id=job_id, data_root=str(tmp_path / "root"))
        try:
            df = sp.from_items([{"a": i} for i in range(10)]).map_batches(fn)
            if recompute:
                df.recompute()
            return [r["a"] for r in df.take_all()]
        finally:
            sp.shutdown()

    assert session_rows("first", False) == list(range(10))
    assert session_rows("second", False) == list(range(10))
    assert len(counter_lines(counter)) == 1, "the second session reused the first one's result"
    assert session_rows("third", True) == list(range(10))
    assert len(counter_lines(counter)) == 2, "recompute() runs the node again"


def test_the_cache_is_bounded_after_a_job(tmp_path):
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=10)
    root = str(tmp_path / "root")
    run_job(incremental_plan(inputs, str(tmp_path / "s1")), make_runtime_ctx("a", None, root), num_workers=1)
    entries = glob.glob(os.path.join(user_dir(root), "task_cache", "entries", "*", "*"))
    assert entries, "what the job computed is cached"
    run_job(
        incremental_plan(inputs, str(tmp_path / "s2")), make_runtime_ctx("b", None, root), num_workers=1, task_cache_max_bytes=0
    )
    assert not glob.glob(os.path.join(user_dir(root), "task_cache", "entries", "*", "*"))
    events = Events()
    run_job(incremental_plan(inputs, str(tmp_path / "s3")), make_runtime_ctx("c", None, root), num_workers=1, listeners=[events])
    assert not events.reused


def test_an_unreadable_reused_output_is_recomputed_not_reused_again(tmp_path, log_messages):
    """An entry damaged where verification does not look (the middle of a big file) is served, the
    consumer cannot read it: its producer runs again, bypassing the cache (whose file is the same
    inode), and the entry is replaced by the new output."""
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=20_000)
    root, sink = str(tmp_path / "root"), str(tmp_path / "sink")

    def plan(offset):
        ctx = Context()
        sql = "select id, key, md5(name || id::varchar) || md5(id::varchar) as pad from {0}"  # ~1.5 MB, incompressible
        a = SqlEngineNode(
            ctx, (DataSourceNode(ctx, ParquetDataSet(inputs)),), sql, output_name="padded", parquet_compression="uncompressed"
        )
        b = SqlEngineNode(ctx, (a,), f"select id + {offset} as id, pad from {{0}}")  # DuckDB names the file it cannot read
        return LogicalPlan(ctx, DataSinkNode(ctx, (b,), sink))

    run_job(plan(0), make_runtime_ctx("one", None, root), num_workers=1)
    (big,) = [
        p
        for p in glob.glob(os.path.join(user_dir(root), "task_cache", "entries", "*", "*.parquet"))
        if os.path.getsize(p) > 1 << 20
    ]
    st = os.stat(big)
    with open(big, "r+b") as f:  # zero the middle: the head, the tail and the footer stay intact
        f.seek(256 << 10)
        f.write(b"\0" * (st.st_size - (512 << 10)))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its time (bit rot, a copy keeping times)
    events = Events()
    result = run_job(plan(100), make_runtime_ctx("two", None, root), num_workers=1, listeners=[events])
    assert result.successful
    assert sorted(r[0] for r in rows_of(sink)) == [i + 100 for i in range(20_000)]
    assert any("cannot be read; recomputing" in m for m in log_messages)
    producer = "SqlEngineTask-000002"
    assert producer in events.reused and events.submitted.count(producer) == 1, "reused, then run"
    (big,) = [
        p
        for p in glob.glob(os.path.join(user_dir(root), "task_cache", "entries", "*", "*.parquet"))
        if os.path.getsize(p) > 1 << 20
    ]
    assert pq.read_table(big).num_rows == 20_000, "the damaged entry was replaced"


def rows_of(folder: str) -> List[tuple]:
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))
    return [tuple(r.values()) for p in paths for r in pq.read_table(p, columns=["id"]).to_pylist()]


def test_an_input_rewritten_with_its_size_and_time_kept_is_not_served_stale(tmp_path):
    """A rewrite that keeps the file's size and sets its modification time back (``cp -p``,
    ``rsync -t``) still changes the cache key: the Parquet footer is part of the file's identity."""
    path = str(tmp_path / "in" / "values.parquet")
    os.makedirs(os.path.dirname(path))

    def write(offset: int) -> None:
        table = pa.table({"id": pa.array(range(offset, offset + 50), pa.int64())})
        pq.write_table(table, path, compression="NONE", use_dictionary=False)

    write(0)
    root = str(tmp_path / "root")

    def total(job_id: str, sink: str) -> int:
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), "select sum(id) as s from {0}")
        run_job(LogicalPlan(ctx, DataSinkNode(ctx, (node,), sink)), make_runtime_ctx(job_id, None, root), num_workers=1)
        return sum(pq.read_table(os.path.join(sink, n))["s"][0].as_py() for n in os.listdir(sink) if n.endswith(".parquet"))

    assert total("first", str(tmp_path / "s1")) == sum(range(50))
    st = os.stat(path)
    write(1000)
    assert os.path.getsize(path) == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert total("second", str(tmp_path / "s2")) == sum(range(1000, 1050))


# read by passthrough(): a generator cannot be fingerprinted, so that node is never reused
_UNFINGERPRINTABLE = (i for i in range(3))


def passthrough(runtime_ctx, tables):
    assert _UNFINGERPRINTABLE is not None
    return tables[0]


def test_consumers_of_a_node_that_is_never_reused_are_not_reused_either(tmp_path):
    """The key of a task whose output is never cached is computed only when a consumer asks for
    it; it still differs between builds, so what consumes it is recomputed too."""
    from smallpond.logical.node import ArrowComputeNode

    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=20)
    root, cache = str(tmp_path / "root"), str(tmp_path / "cache")

    def build(job_id: str) -> Events:
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(inputs))
        mid = ArrowComputeNode(ctx, (src,), process_func=passthrough)
        total = SqlEngineNode(ctx, (mid,), "select count(*) as n from {0}")
        events = Events()
        with pytest.warns(UserWarning, match="cannot fingerprint"):
            run_job(
                LogicalPlan(ctx, total), make_runtime_ctx(job_id, None, root, task_cache=cache), num_workers=1, listeners=[events]
            )
        return events

    build("first")
    second = build("second")
    assert not second.reused, "a consumer of a node that is never reused was served from the cache"
    assert any(k.startswith("SqlEngineTask") for k in second.submitted)


def test_an_input_rewritten_during_a_session_is_read_again(tmp_path):
    """Within one session the cache knows each input file's identity once per version of it: a
    rewrite (same size, time set back) between two computations is seen."""
    import smallpond

    path = str(tmp_path / "in" / "values.parquet")
    os.makedirs(os.path.dirname(path))

    def write(offset: int) -> None:
        pq.write_table(pa.table({"id": pa.array(range(offset, offset + 50), pa.int64())}), path, compression="NONE")

    write(0)
    sp = smallpond.init(job_id="rewrite", data_root=str(tmp_path / "root"))
    try:

        def total() -> int:
            return sp.partial_sql("select sum(id) as s from {0}", sp.read_parquet(path)).to_arrow()["s"][0].as_py()

        assert total() == sum(range(50))
        st = os.stat(path)
        write(1000)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.path.getsize(path) == st.st_size
        assert total() == sum(range(1000, 1050))
    finally:
        sp.shutdown()


def test_a_stage_larger_than_a_round_of_lookups_is_reused_whole(tmp_path):
    """The scheduler looks up ``LOOKUPS_PER_ROUND`` newly ready tasks a round, and a task sent
    before its turn when it is sent: a rebuild of a stage of more tasks than that reuses every
    one of them and runs none (the tiny Python tasks of ``benchmarks.overhead``)."""
    from benchmarks.overhead import make_input, overhead_plan
    from smallpond.execution.scheduler import LOOKUPS_PER_ROUND

    n = 3 * LOOKUPS_PER_ROUND + 5
    path = make_input(str(tmp_path), n)
    root = str(tmp_path / "root")

    def build(job_id: str) -> Events:
        events = Events()
        run_job(overhead_plan(path, n, "python"), make_runtime_ctx(job_id, None, root), num_workers=2, listeners=[events])
        return events

    def tiny_tasks(keys) -> List[str]:
        return [k for k in keys if k.startswith("PythonScriptTask")]

    first = build("first")
    assert len(tiny_tasks(first.submitted)) == n and not first.reused
    second = build("second")
    assert len(tiny_tasks(second.reused)) == n and not tiny_tasks(second.submitted)


def test_a_session_that_computes_something_else_first_still_reuses_after_a_shuffle(tmp_path):
    """Task numbers shift when a session computes another frame first; the tasks after a shuffle
    are keyed by what their input is (the consumers' identities), not by those numbers."""
    import smallpond

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"f{i}.parquet"))
        pq.write_table(pa.table({"id": pa.array(range(i * 100, i * 100 + 100), pa.int64())}), paths[-1])

    def build(other_first: bool):
        sp = smallpond.init(data_root=str(tmp_path / "root"), task_cache=str(tmp_path / "cache"))
        try:
            if other_first:
                assert sp.read_parquet(paths[0]).count() == 100
            df = sp.partial_sql("select count(*) as c from {0}", sp.read_parquet(paths).repartition(3, hash_by="id"))
            assert sum(r["c"] for r in df.take_all()) == 300
            return sp.summary()
        finally:
            sp.shutdown()

    def counts(summary) -> tuple:
        m = re.search(r"([\d,]+) run, [\d,]+ resumed, ([\d,]+) reused", str(summary))
        return tuple(int(g.replace(",", "")) for g in m.groups())

    ran, reused = counts(build(False))
    assert ran > 0 and reused == 0
    assert counts(build(True)) == (0, ran)  # (count() of a file reads its footer: no task)


def test_two_random_columns_alike_in_all_but_their_task_are_not_served_one_for_the_other(tmp_path):
    """random() draws from the task's own seed (the job's seed and the task's number): frame b,
    the same query as a over the same input, draws other numbers, with the task cache on as off;
    it was served a's cached output (every value equal)."""
    import smallpond

    src = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": pa.array(range(1000), pa.int64())}), src)

    def same_values(second: bool) -> int:
        sp = smallpond.init(data_root=str(tmp_path / "root"), task_cache=str(tmp_path / "cache"))
        try:
            df = sp.read_parquet(src)
            a = sp.partial_sql("select id, random() as r from {0}", df)
            if not second:
                a.compute()
                return 0
            b = sp.partial_sql("select id, random() as r from {0}", df)
            both = sp.partial_sql("select count(*) filter (where {0}.r = {1}.r) as same from {0} join {1} using (id)", a, b)
            return both.take_all()[0]["same"]
        finally:
            sp.shutdown()

    same_values(False)
    assert same_values(True) == 0


CLOCK_JOB = """
import sys, uuid
import smallpond
sp = smallpond.init(data_root=sys.argv[1], job_id=str(uuid.UUID(int=int(sys.argv[2]))))
df = sp.read_parquet(sys.argv[3])
print(sp.partial_sql("select epoch_us(now()) as t from {0} limit 1", df).to_pandas().t.tolist()[0])
sp.shutdown()
"""


def test_sql_that_reads_the_clock_is_resumed_by_its_job_but_not_reused_by_another(tmp_path):
    """`select now()` of a second job gave the first job's time, from the task cache (a nightly
    build stamped every night's rows with the first night's stamp); a rerun of the same job still
    resumes it."""
    src = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"a": [1, 2, 3]}), src)
    script = tmp_path / "clock.py"
    script.write_text(CLOCK_JOB)

    def stamp(job: int) -> int:
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "root"), str(job), src], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    first = stamp(1)
    assert stamp(1) == first  # the same job, run again: resumed
    assert stamp(2) > first  # another job: computed again
