"""smallpond.execution.plan_splits: a partition of a split by files is fingerprinted by its files.

A job over a split by files (``DataSetPartitionNode(n)``, ``repartition(n)``) rerun after an input
file changed, was added or rewritten reruns exactly the partitions whose files changed, the task
cache on or off, and each partition's output is then that of a clean build. Splits the plan does
not fix (by rows, hash partitions, inputs that are tasks' outputs) keep the general rule: every
partition's fingerprint covers every file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from functools import partial
from typing import Dict, List, Set

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    RangePartitionNode,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files, read_parquet
from tests.e2e.test_incremental import Events, rewrite


def split_plan(input_glob: str, sink: str, npartitions: int, **options) -> LogicalPlan:
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([input_glob]))
    parts = DataSetPartitionNode(ctx, (src,), npartitions, **options)
    q = SqlEngineNode(ctx, (parts,), "select * from {0}")
    return LogicalPlan(ctx, DataSinkNode(ctx, (q,), sink))


def sql_tasks(plan) -> Dict[int, str]:
    """Partition index -> key of the SQL task of that partition."""
    return {t.partition_infos[-1].index: k for k, t in plan.tasks.items() if type(t).__name__ == "SqlEngineTask"}


def partition_outputs(plan) -> Dict[int, pa.Table]:
    return {i: read_parquet(sorted(plan.results[k].resolved_paths)) for i, k in sql_tasks(plan).items()}


class Rerun:
    """Run a split plan as job ``job`` (cache ``cache``) under ``tmp_path``, again after a change, and
    check which partitions ran, and that each partition's output is a clean build's."""

    def __init__(self, tmp_path, npartitions: int, cache: str = "off", **options) -> None:
        self.tmp, self.n, self.options = tmp_path, npartitions, options
        self.glob = str(tmp_path / "in" / "*.parquet")
        self.cache = "off" if cache == "off" else str(tmp_path / "cache")
        self.runs = 0
        self.plan = split_plan

    def run(self, job: str = "job", root: str = "root", cache=None):
        events = Events()
        rt = make_runtime_ctx(job, None, str(self.tmp / root), task_cache=cache or self.cache)
        self.runs += 1
        plan = self.plan(self.glob, str(self.tmp / f"sink{self.runs}"), self.n, **self.options)
        return run_job(plan, rt, num_workers=2, listeners=[events]), events

    def rerun_after(self, change) -> Set[int]:
        """The partitions whose SQL task ran again after ``change()``; checks the others were resumed
        (not taken from the cache) and every partition's output equals a clean build's."""
        first, _ = self.run()
        change(first)
        again, events = self.run()
        tasks = sql_tasks(again)
        ran = {i for i, k in tasks.items() if k in events.submitted}
        assert {i for i, k in tasks.items() if k in events.resumed} == set(tasks) - ran
        assert not events.reused, "resumed from the job's own records, not the task cache"
        clean, _ = self.run(job="clean", root=f"clean{self.runs}", cache="off")  # a new job, nothing to resume
        got, want = partition_outputs(again), partition_outputs(clean)
        assert got.keys() == want.keys()
        for i in got:
            assert got[i].equals(want[i]), f"partition {i} differs from a clean build's"
        return ran


def files_of(plan, partition: int) -> List[str]:
    consumer = plan.tasks[sql_tasks(plan)[partition]].input_keys[0]
    return sorted(plan.results[consumer].resolved_paths)


@pytest.mark.parametrize("cache", ["off", "on"])
def test_a_changed_file_reruns_only_its_partition(tmp_path, cache):
    generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)
    job = Rerun(tmp_path, 4, cache)
    # the second file of partition 1: a fingerprint of fewer files than a partition reads misses it
    assert job.rerun_after(lambda plan: rewrite(files_of(plan, 1)[1], seed=1)) == {1}


def test_files_added_or_removed_rerun_the_partitions_whose_files_they_change(tmp_path):
    generate_parquet_files(str(tmp_path / "in"), nfiles=7, rows_per_file=10)  # part0..part6: 2+2+2+1
    job = Rerun(tmp_path, 4)

    def add(name):
        return lambda plan: pq.write_table(pq.read_table(files_of(plan, 0)[0]), str(tmp_path / "in" / name))

    def remove(*names):
        return lambda plan: [os.remove(tmp_path / "in" / n) for n in names]

    assert job.rerun_after(add("part7.parquet")) == {3}, "sorted last: 2+2+2+2, only the last group changes"
    # sorted first: 3+2+2+2, and the new first file's columns and types are every partition's
    assert job.rerun_after(add("a.parquet")) == {0, 1, 2, 3}, "a new first file reruns every partition"
    assert job.rerun_after(remove("a.parquet", "part0.parquet")) == {0, 1, 2, 3}, "2+2+2+1: every group shifts"
    assert job.rerun_after(lambda plan: None) == set(), "nothing changed: everything is resumed"


def test_an_empty_partition_reruns_when_the_file_it_takes_its_columns_from_changes(tmp_path):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=10)  # 3 files, 5 partitions

    def retype_column(plan):
        assert files_of(plan, 3) == files_of(plan, 4) == []
        t = pq.read_table(files[0])
        pq.write_table(t.set_column(0, "id", t.column("id").cast(pa.int32())), files[0])

    job = Rerun(tmp_path, 5)
    # every piece is read by the first file's columns and types: partitions 1 and 2 change too
    assert job.rerun_after(retype_column) == {0, 1, 2, 3, 4}
    again, _ = job.run()
    assert partition_outputs(again)[3].schema.field("id").type == pa.int32()
    assert partition_outputs(again)[2].schema.field("id").type == pa.int32()


@pytest.mark.parametrize("nfiles, npartitions, reran", [(8, 4, {0}), (3, 5, {0, 3, 4})])
def test_rows_of_the_first_file_rewritten_with_its_schema_rerun_only_the_partitions_reading_it(
    tmp_path, nfiles, npartitions, reran
):
    # the other pieces take only its columns and types from the first file: its schema is in their
    # fingerprints, not its identity; an empty partition takes its columns from it (its identity)
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=nfiles, rows_per_file=10)
    job = Rerun(tmp_path, npartitions)
    assert job.rerun_after(lambda plan: rewrite(files[0], seed=1)) == reran


def test_every_partition_reruns_when_the_first_files_metadata_retypes_a_column(tmp_path):
    # DuckDB types a column by the first file's key-value metadata too, not only by its schema: a
    # GeoParquet 'geo' entry makes a WKB column GEOMETRY in every piece read led by that file (and
    # DuckDB writes each partition's output with its own 'geo' entry); the schema bytes are unchanged
    wkb = struct.pack("<BIdd", 1, 1, 1.0, 2.0)
    os.makedirs(tmp_path / "in")
    files = [str(tmp_path / "in" / f"part{i}.parquet") for i in range(3)]
    for i, path in enumerate(files):
        pq.write_table(pa.table({"id": [i], "g": pa.array([wkb], pa.binary())}), path)
    geo = {"version": "1.0.0", "primary_column": "g", "columns": {"g": {"encoding": "WKB", "geometry_types": []}}}

    def add_geo(plan):
        pq.write_table(pq.read_table(files[0]).replace_schema_metadata({"geo": json.dumps(geo)}), files[0])

    job = Rerun(tmp_path, 3)
    assert job.rerun_after(add_geo) == {0, 1, 2}
    again, _ = job.run()
    outputs = [again.results[k].resolved_paths[0] for _, k in sorted(sql_tasks(again).items())]
    assert all(b"geo" in (pq.read_metadata(p).metadata or {}) for p in outputs), "every partition's g is GEOMETRY"


def test_every_partition_reruns_when_the_first_file_loses_a_column(tmp_path):
    # files read without union_by_name are read by the first file's columns (as DuckDB reads a list):
    # a column the first file loses leaves every partition's output, not only the first's
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=10)

    def drop_column(plan):
        pq.write_table(pq.read_table(files[0]).drop_columns(["name"]), files[0])

    job = Rerun(tmp_path, 3)
    assert job.rerun_after(drop_column) == {0, 1, 2}
    again, _ = job.run()
    assert partition_outputs(again)[2].column_names == ["id", "key"]


def test_a_hash_partition_of_a_source_reruns_the_producer_reading_a_changed_file(tmp_path):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)

    def run(job: str, sink: str, events=None):
        ctx = Context()
        hashed = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 3, ["key"])  # 8 producers, a file each
        plan = LogicalPlan(ctx, DataSinkNode(ctx, (SqlEngineNode(ctx, (hashed,), "select * from {0}"),), str(tmp_path / sink)))
        rt = make_runtime_ctx(job, None, str(tmp_path / job), task_cache="off")
        return run_job(plan, rt, num_workers=2, listeners=[events] if events else [])

    first = run("hash", "sink")
    producers = sorted(
        (k for k, t in first.tasks.items() if type(t).__name__ == "HashPartitionTask"), key=lambda k: first.tasks[k].id
    )
    rewrite(files[5], seed=1)
    events = Events()
    again = run("hash", "sink", events)
    assert [p for p in producers if p in events.submitted] == [producers[5]]
    assert set(producers) - {producers[5]} <= set(events.resumed)
    # the changed producer, the three partitions (each reads every producer) and the sink
    assert sorted(type(again.tasks[k]).__name__ for k in events.submitted) == [
        "DataSinkTask",
        "HashPartitionTask",
        *["SqlEngineTask"] * 3,
    ]
    clean = run("clean", "clean_sink")
    for a, b in zip(partition_outputs(again).values(), partition_outputs(clean).values()):
        assert a.sort_by("id").equals(b.sort_by("id"))


def test_a_shuffled_split_by_files_reruns_the_partition_the_file_went_to(tmp_path):
    generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)
    job = Rerun(tmp_path, 4, random_shuffle=True)
    # the planner must split with the producer's own seed: the partition is found from the run
    assert job.rerun_after(lambda plan: rewrite(files_of(plan, 2)[1], seed=1)) == {2}


def fingerprints(make_rt, plan_of, kind: str) -> List[str]:
    plan = Planner(make_rt("same-job")).create_exec_plan(plan_of())
    tasks = [t for t in plan.tasks.values() if type(t).__name__ == kind]
    return [t.fingerprint for t in sorted(tasks, key=lambda t: t.id)]


def changed_tasks(make_rt, tmp_path, build, nfiles: int = 8, kind: str = "PartitionConsumerTask") -> Set[int]:
    """Which tasks of class ``kind`` in the plan ``build(ctx, source)`` (by their order) change
    fingerprint when the fifth of ``nfiles`` input files is rewritten."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=nfiles, rows_per_file=10)

    def plan_of():
        ctx = Context()
        return LogicalPlan(ctx, build(ctx, DataSourceNode(ctx, ParquetDataSet(files))))

    before = fingerprints(make_rt, plan_of, kind)
    rewrite(files[4], seed=1)
    after = fingerprints(make_rt, plan_of, kind)
    assert len(before) == len(after) > 1
    return {i for i, (a, b) in enumerate(zip(before, after)) if a != b}


@pytest.mark.parametrize(
    "build,changed",
    [
        (lambda ctx, src: DataSetPartitionNode(ctx, (src,), 4), {2}),
        (lambda ctx, src: DataSetPartitionNode(ctx, (src,), 4, partition_by_rows=True), {0, 1, 2, 3}),
        (lambda ctx, src: HashPartitionNode(ctx, (src,), 4, ["key"]), {0, 1, 2, 3}),
        (
            lambda ctx, src: DataSetPartitionNode(ctx, (SqlEngineNode(ctx, (src,), "select * from {0}"),), 4),
            {0, 1, 2, 3},
        ),
    ],
    ids=["by files", "by rows", "hash", "over a task's output"],
)
def test_only_a_split_by_files_of_a_source_is_fingerprinted_by_its_own_files(make_rt, tmp_path, build, changed):
    assert changed_tasks(make_rt, tmp_path, build) == changed


def hashed(ctx, src):
    return HashPartitionNode(ctx, (src,), 4, ["key"])


def ranged(ctx, src, **how):
    return RangePartitionNode(ctx, (src,), key_column="id", **how)


@pytest.mark.parametrize(
    "build,kind,nfiles,changed",
    [
        (hashed, "HashPartitionTask", 16, {5}),
        (hashed, "HashPartitionTask", 5, set(range(8))),
        (partial(ranged, split_points=[50, 100]), "RangePartitionTask", 16, {5}),
        (partial(ranged, npartitions=3), "RangePartitionTask", 16, set(range(8))),
    ],
    ids=["hash", "hash, fewer files: by rows", "range", "range, sampled split points"],
)
def test_the_producers_of_one_source_are_fingerprinted_by_their_share(make_rt, tmp_path, build, kind, nfiles, changed):
    # 8 producers (one input partition): 16 files are 2 each, part4 the 11th (part0, part1, part10..part15,
    # part2, part3, part4), in the sixth share; 5 files are split by rows; sampled split points read every share
    assert changed_tasks(make_rt, tmp_path, build, nfiles, kind=kind) == changed


def test_a_planning_reads_each_input_files_identity_once(make_rt, tmp_path, monkeypatch):
    import smallpond.io.paths as paths

    files = generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)
    reads: List[str] = []
    real = paths._read_identity
    monkeypatch.setattr(paths, "_read_identity", lambda p: reads.append(p) or real(p))
    schemas: List[str] = []
    real_schema = paths.read_schema_bytes
    monkeypatch.setattr(paths, "read_schema_bytes", lambda p: schemas.append(p) or real_schema(p))
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 4)
    Planner(make_rt()).create_exec_plan(LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select * from {0}")))
    assert sorted(reads) == sorted(files), "the source's fingerprint and its partitions' read each file once"
    assert schemas == [files[0]], "the first file's schema, which every partition's fingerprint holds, is read once"
    assert paths.file_identity(files[0]) and len(reads) == 9, "outside a planning, a file is looked at each time"


DATAFRAME_JOB = """
import os, sys
import smallpond
root, out, pattern = sys.argv[1:]
sp = smallpond.init(job_id="df-split", data_root=root, task_cache="off", num_executors=2)
sp.read_parquet(pattern).repartition(4).map("id, key, length(name) as len").write_parquet(out)
sys.stdout.flush()
os._exit(0)  # no shutdown: the session keeps its intermediates, as after a crash, and the same job_id resumes
"""


def test_a_dataframe_job_resumed_after_a_file_changed_reruns_its_partition(tmp_path):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)
    script = tmp_path / "job.py"
    script.write_text(DATAFRAME_JOB)

    def run() -> Dict[str, int]:
        cmd = [sys.executable, str(script), str(tmp_path / "root"), str(tmp_path / "out"), str(tmp_path / "in" / "*.parquet")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (log,) = (tmp_path / "root").glob("*/log/events.jsonl")
        counts: Dict[str, int] = {}
        with open(log) as f:
            for line in f:
                ev = json.loads(line)
                if ev["ev"] == "run_start":
                    counts = {}
                elif ev["ev"] in ("done", "resumed"):
                    counts[ev["ev"]] = counts.get(ev["ev"], 0) + 1
        return counts  # the last run's

    assert run() == {"done": 5}  # 4 partitions and the sink
    rewrite(files[5], seed=1)  # partition 2's second file
    assert run() == {"done": 2, "resumed": 3}


def test_the_partitions_of_a_source_that_is_never_reused_are_never_reused(make_rt, tmp_path, monkeypatch):
    import smallpond.execution.planner as planner
    from smallpond.execution.fingerprint_sources import Unfingerprintable

    real = planner.stable_digest

    def digest(obj, specs=None):
        if isinstance(obj, DataSourceNode):
            raise Unfingerprintable("a value no fingerprint describes")
        return real(obj, specs)

    monkeypatch.setattr(planner, "stable_digest", digest)
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)

    def plan_of():
        ctx = Context()
        return LogicalPlan(ctx, DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 4))

    with pytest.warns(UserWarning, match="cannot fingerprint"):
        first, second = (fingerprints(make_rt, plan_of, "PartitionConsumerTask") for _ in range(2))
    assert not set(first) & set(second), "nothing is resumed, with nothing changed"


@pytest.mark.parametrize("partitioning", ["split", "hash"])
def test_a_file_matched_after_planning_is_left_to_the_next_run(tmp_path, monkeypatch, partitioning):
    # a glob matched a file that appeared between planning and the source's run: read then, the
    # run's records held its rows under fingerprints of the files without it, and a rerun after it
    # went resumed them (partition 0 of the split, every partition of the hash: rows twice)
    from smallpond.execution.ops import structural

    files = generate_parquet_files(str(tmp_path / "in"), nfiles=8, rows_per_file=10)
    extra = str(tmp_path / "in" / "part0a.parquet")
    run = structural.DataSourceTask.run

    def appears_then_runs(self, *args):
        if not os.path.exists(extra):
            pq.write_table(pq.read_table(files[0]), extra)
        return run(self, *args)

    monkeypatch.setattr(structural.DataSourceTask, "run", appears_then_runs)

    def goes(plan):
        monkeypatch.undo()
        os.remove(extra)

    job = Rerun(tmp_path, 4)
    if partitioning == "hash":
        job.plan = lambda glob, sink, n: LogicalPlan(
            (ctx := Context()),
            SqlEngineNode(
                ctx, (HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([glob])),), n, ["key"]),), "select * from {0}"
            ),
        )
    assert job.rerun_after(goes) == set(), "the planned files did not change: everything is resumed, as a clean build's"


def test_a_planned_file_gone_before_the_source_runs_fails_naming_it(tmp_path, monkeypatch):
    from smallpond.execution.ops import structural

    files = generate_parquet_files(str(tmp_path / "in"), nfiles=4, rows_per_file=10)
    run = structural.DataSourceTask.run

    def goes_then_runs(self, *args):
        os.remove(files[2])
        return run(self, *args)

    monkeypatch.setattr(structural.DataSourceTask, "run", goes_then_runs)
    with pytest.raises(Exception, match=r"part2\.parquet of DataSourceNode-\d+ was listed when the job was planned and is gone"):
        Rerun(tmp_path, 2).run()


def test_a_source_listed_before_planning_reads_the_files_there_are_when_planned(tmp_path):
    # a dataset whose files were listed when it was built (a DataFrame's schema, num_rows): the plan
    # lists them again, so the run reads, and the fingerprints cover, a file written since
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    ds = ParquetDataSet([str(tmp_path / "in" / "*.parquet")])
    assert ds.resolved_paths == files
    pq.write_table(pq.read_table(files[0]), str(tmp_path / "in" / "part2.parquet"))
    ctx = Context()
    plan = LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, ds),), "select count(*) as n from {0}"))
    done = run_job(plan, make_runtime_ctx("job", None, str(tmp_path / "root"), task_cache="off"), num_workers=1)
    (key,) = [k for k, t in done.tasks.items() if type(t).__name__ == "SqlEngineTask"]
    assert read_parquet(done.results[key].resolved_paths).column("n").to_pylist() == [30]


@pytest.mark.parametrize("split", [None, "files", "rows"])
def test_a_source_counted_before_planning_reads_the_rows_there_are_when_planned(tmp_path, split):
    # its row count read when it was built (the files' row ranges kept on the dataset): the plan
    # lists the files again, and the run reads every row of them, a file written since and the rows
    # a file gained (the fingerprints cover them: a resumed run would keep a count without them)
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    ds = ParquetDataSet([str(tmp_path / "in" / "*.parquet")])
    assert ds.num_rows == 20
    pq.write_table(pq.read_table(files[0]), str(tmp_path / "in" / "part2.parquet"))
    pq.write_table(pa.concat_tables([pq.read_table(files[1])] * 2), files[1])
    ctx = Context()
    src = DataSourceNode(ctx, ds)
    if split:
        src = DataSetPartitionNode(ctx, (src,), 2, partition_by_rows=split == "rows")
    plan = LogicalPlan(ctx, SqlEngineNode(ctx, (src,), "select count(*) as n from {0}"))
    done = run_job(plan, make_runtime_ctx("job", None, str(tmp_path / "root"), task_cache="off"), num_workers=1)
    counts = [read_parquet(done.results[k].resolved_paths).column("n")[0].as_py() for k in sql_tasks(done).values()]
    assert sum(counts) == 40
