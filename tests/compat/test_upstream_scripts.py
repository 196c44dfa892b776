"""Scripts written as upstream 0.15's reference describes them, run as they are.

* Hash partition outputs (reference §2.8 HashPartitionNode, LoadPartitionedDataSetNode,
  ``ParquetDataSet.load_partitioned_datasets``): without ``hive_partitioning`` the files of
  partition k are flat, ``{out}-{k}.{i}.parquet``; with it, ``{col}={k}/…``; with either engine
  every file carries ``SMALLPOND:{column}`` and ``SMALLPOND:{dimension}`` in its key-value
  metadata, so a folder of them, even copied flat by a sink, loads back into its partitions.
* Task attributes a script touches from ``UserDefinedPartitionNode.partition`` or
  ``PythonScriptNode.process`` (``runtime_ctx.task.ctx``, ``input_deps``, ``runtime_id``,
  ``input_datasets``), and ``PythonScriptNode.spawn`` returning a ``PythonScriptTask`` subclass
  (reference §2.6).
"""

from __future__ import annotations

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.task import PythonScriptTask
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LoadPartitionedDataSetNode,
    LogicalPlan,
    PythonScriptNode,
    ShuffleNode,
    SqlEngineNode,
    UserDefinedPartitionNode,
)

NPARTS = 3


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Three Parquet files of (item, name); item 0..299."""
    root = tmp_path_factory.mktemp("items")
    for f in range(3):
        ids = list(range(f * 100, f * 100 + 100))
        pq.write_table(pa.table({"item": ids, "name": [f"n{i % 37}" for i in ids]}), str(root / f"items{f}.parquet"))
    return ParquetDataSet([str(root / "*.parquet")])


def _kv(path: str) -> dict:
    md = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if k.startswith(b"SMALLPOND:")}


def _hash_of(rows: list, column: str) -> dict:
    """partition of each item, as DuckDB's hash of ``column`` gives it (both engines agree)."""
    import duckdb

    conn = duckdb.connect()
    try:
        conn.register("keys", pa.table({column: rows}))
        return dict(conn.execute(f"SELECT {column}, hash({column}) % {NPARTS} FROM keys").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("hive", [False, True], ids=["flat", "hive"])
@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_hash_partition_layout_and_metadata(run_plan, items, tmp_path, engine, hive):
    """Each partition file is where upstream put it and names its partition in its metadata."""
    out = str(tmp_path / "out")
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, items),), npartitions=2)
    hashed = HashPartitionNode(
        ctx, (parts,), NPARTS, hash_columns=["item"], data_partition_column="bucket", dimension="dim",
        engine_type=engine, hive_partitioning=hive, output_path=out,
    )  # fmt: skip
    run_plan(LogicalPlan(ctx, hashed))
    files = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    assert files
    want = _hash_of(list(range(300)), "item")
    seen = 0
    for path in files:
        kv = _kv(path)
        k = int(kv["SMALLPOND:bucket"])
        assert kv["SMALLPOND:dim"] == str(k), (path, kv)
        if hive:
            assert os.path.basename(os.path.dirname(path)) == f"bucket={k}", path
        else:  # flat: "{out}-{k}.{i}.parquet" (duckdb) or "{out}-{k}.parquet" (arrow), or "{out}-{k}-empty.parquet"
            assert "=" not in os.path.relpath(path, out), path
            assert f"-{k}." in os.path.basename(path) or os.path.basename(path).endswith(f"-{k}-empty.parquet"), path
        t = pq.read_table(path)
        assert all(want[i] == k for i in t.column("item").to_pylist()), path
        assert set(t.column("bucket").to_pylist()) <= {k}
        seen += t.num_rows
    assert seen == 300


@pytest.mark.parametrize("read_hive", [False, True], ids=["read-flat", "read-hive"])
@pytest.mark.parametrize("write_hive", [False, True], ids=["write-flat", "write-hive"])
@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_sunk_folder_loads_back_into_its_partitions(run_plan, items, tmp_path, engine, write_hive, read_hive):
    """The reference's round trip: hash partition (dropping the key column), sink the files into
    one folder (basenames kept, renamed on collision), then read the folder back with
    ``LoadPartitionedDataSetNode`` and with ``ParquetDataSet.load_partitioned_datasets``.

    The key is in no column and, once sunk, in no folder name: only the files' metadata tells."""
    sink = str(tmp_path / "sunk")
    ctx = Context()
    hashed = HashPartitionNode(
        ctx, (DataSourceNode(ctx, items),), NPARTS, hash_columns=["name"], data_partition_column="bucket",
        engine_type=engine, hive_partitioning=write_hive, drop_partition_column=True,
    )  # fmt: skip
    run_plan(LogicalPlan(ctx, DataSinkNode(ctx, (hashed,), sink)))
    want = _hash_of([f"n{i}" for i in range(37)], "name")
    folder = ParquetDataSet([os.path.join(sink, "*.parquet")])
    loaded = folder.load_partitioned_datasets(NPARTS, "bucket", read_hive)
    assert len(loaded) == NPARTS
    for k, part in enumerate(loaded):
        names = part.to_arrow_table().column("name").to_pylist()
        assert {want[n] for n in names} <= {k}
    assert sum(p.num_rows for p in loaded) == 300

    ctx = Context()
    reloaded = LoadPartitionedDataSetNode(
        ctx, (DataSourceNode(ctx, folder),), NPARTS, data_partition_column="bucket", hive_partitioning=read_hive
    )
    per_part = SqlEngineNode(ctx, (reloaded,), "select {bucket} as k, name from {0}")
    rows = run_plan(LogicalPlan(ctx, per_part)).final_output.to_arrow_table().to_pylist()
    assert len(rows) == 300
    assert all(want[r["name"]] == r["k"] for r in rows)


def test_shuffle_node_writes_flat_files_with_their_key(run_plan, items, tmp_path):
    """ShuffleNode: rows go to the partition their column names; the files are flat, keyed in metadata."""
    out = str(tmp_path / "out")
    ctx = Context()
    keyed = SqlEngineNode(ctx, (DataSourceNode(ctx, items),), "select *, item % 3 as part from {0}")
    shuffled = ShuffleNode(ctx, (keyed,), NPARTS, data_partition_column="part", output_path=out)
    run_plan(LogicalPlan(ctx, shuffled))
    files = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    assert files and all("=" not in os.path.relpath(f, out) for f in files)
    for path in files:
        k = int(_kv(path)["SMALLPOND:part"])
        assert set(pq.read_table(path).column("part").to_pylist()) <= {k}


# -- task attributes -------------------------------------------------------------------------------


def _attributes(runtime_ctx, inputs) -> dict:
    task = runtime_ctx.task
    with pytest.raises(AttributeError, match=r"output_deps \(an attribute of upstream smallpond's tasks\) is not available"):
        _ = task.output_deps
    with pytest.raises(AttributeError, match=r"RuntimeContext.new_task_id \(upstream smallpond's task id counter\)"):
        runtime_ctx.new_task_id()
    return {
        "ctx_is_runtime_ctx": task.ctx is runtime_ctx and task.runtime_ctx is runtime_ctx,
        "input_deps": list(task.input_deps.items()),
        "runtime_id": [task.runtime_id.id, task.runtime_id.epoch, task.runtime_id.retry, int(task.id), task.retry_count],
        "input_datasets_are_inputs": task.input_datasets == list(inputs) and len(inputs) > 0,
        "job_root": runtime_ctx.job_root,
    }


class RecordingPartitionNode(UserDefinedPartitionNode):
    def __init__(self, ctx, input_deps, npartitions, record_dir):
        super().__init__(ctx, input_deps, npartitions)
        self.record_dir = record_dir

    def partition(self, runtime_ctx, dataset):
        with open(os.path.join(self.record_dir, f"partition-{runtime_ctx.task.id}.json"), "w") as f:
            json.dump(_attributes(runtime_ctx, [dataset]), f)
        return dataset.partition_by_files(self.npartitions)


def test_task_attributes_scripts_read(run_plan, items, tmp_path):
    """``runtime_ctx.task.ctx`` / ``input_deps`` / ``runtime_id`` / ``input_datasets`` as upstream's
    tasks had them, in a user-defined partition and a Python script; an upstream attribute that
    cannot be given (the task's ``output_deps``, the context's ``new_task_id``) fails naming itself
    and why."""
    record = tmp_path / "record"
    record.mkdir()

    def process(runtime_ctx, input_datasets, output_path):
        with open(os.path.join(str(record), f"process-{runtime_ctx.task.id}.json"), "w") as f:
            json.dump(_attributes(runtime_ctx, input_datasets), f)
        return True

    ctx = Context()
    parts = RecordingPartitionNode(ctx, (DataSourceNode(ctx, items),), 2, str(record))
    script = PythonScriptNode(ctx, (parts,), process_func=process)
    run_plan(LogicalPlan(ctx, script))
    recorded = {p.name: json.loads(p.read_text()) for p in record.iterdir()}
    assert sorted(n.split("-")[0] for n in recorded) == ["partition", "process", "process"]
    for name, r in recorded.items():
        assert r["ctx_is_runtime_ctx"] and r["input_datasets_are_inputs"], (name, r)
        tid, epoch, retry, task_id, retry_count = r["runtime_id"]
        assert (tid, epoch, retry) == (task_id, 0, retry_count) and int(name.split("-")[1][:-5]) == task_id
        assert r["input_deps"] and all(v is None for _, v in r["input_deps"])
        assert r["job_root"] == run_plan.runtime_ctx.job_root
    process_deps = [k for n, r in recorded.items() if n.startswith("process") for k, _ in r["input_deps"]]
    assert all(k.startswith("PartitionConsumerTask-") for k in process_deps), process_deps


# -- PythonScriptNode.spawn ------------------------------------------------------------------------


class CountingTask(PythonScriptTask):
    """Upstream's pattern: a task subclass with a parameter of its own and a ``process``."""

    def __init__(self, *args, suffix: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.suffix = suffix

    def process(self, runtime_ctx, input_datasets, output_path) -> bool:
        assert runtime_ctx.task is self
        rows = sum(ds.num_rows for ds in input_datasets)
        part = self.partition_infos_as_dict.get("__data_partition__", 0)
        table = pa.table({"part": [part], "rows": [rows], "suffix": [self.suffix], "key": [self.key]})
        pq.write_table(table, os.path.join(output_path, f"{self.output_filename}-{self.suffix}.parquet"))
        return True


class CountingNode(PythonScriptNode):
    def __init__(self, ctx, input_deps, suffix: str):
        super().__init__(ctx, input_deps)
        self.suffix = suffix

    def spawn(self, *args, **kwargs) -> CountingTask:
        return CountingTask(*args, **kwargs, suffix=self.suffix)


def test_spawn_returns_the_task_that_runs(run_plan, items):
    """``spawn(*args, **kwargs)`` returning a PythonScriptTask subclass: its ``process`` runs, with
    its own parameters, as the task (key, partition, output location)."""
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, items),), npartitions=3)
    node = CountingNode(ctx, (parts,), suffix="spawned")
    out = run_plan(LogicalPlan(ctx, node)).final_output.to_arrow_table().to_pylist()
    assert sorted(r["part"] for r in out) == [0, 1, 2]
    assert sum(r["rows"] for r in out) == 300
    assert {r["suffix"] for r in out} == {"spawned"}
    assert all(r["key"].startswith("PythonScriptTask-") for r in out)  # the planner's task key, not the class's


class SuperSpawningNode(PythonScriptNode):
    def spawn(self, *args, **kwargs):
        return super().spawn(*args, **kwargs)


class WrongSpawningNode(PythonScriptNode):
    def spawn(self, *args, **kwargs):
        return "not a task"


@pytest.mark.parametrize(
    "cls,message",
    [
        (SuperSpawningNode, r"PythonScriptNode.spawn builds no task here.*MyTask\(\*args, \*\*kwargs\)"),
        (WrongSpawningNode, r"WrongSpawningNode.spawn\(\) must return an instance of a PythonScriptTask subclass.*got str"),
    ],
)
def test_spawn_that_cannot_be_honoured_fails_naming_it(run_plan, items, cls, message):
    from smallpond.errors import JobFailed

    ctx = Context()
    node = cls(ctx, (DataSourceNode(ctx, items),))
    with pytest.raises(JobFailed, match=message):
        run_plan(LogicalPlan(ctx, node), max_fail_count=1)
