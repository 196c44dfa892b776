"""smallpond.execution.cache_keys: what the scheduler keeps per task for the task cache, at the
scale of a shuffle (P producers x C partitions)."""

from __future__ import annotations

import hashlib

from smallpond.execution import cache_keys
from smallpond.execution.cache_keys import INDEX_FILES_LIMIT, JobCache, index_input, input_components, why_changed
from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet


def _producer_output(root: str, producer: int, partitions: int) -> PartitionedDataSet:
    """What a shuffle producer hands the scheduler: one file per partition, in its output directory,
    pickled and read back (so it is in its compact form, as a worker's answer is)."""
    import pickle

    out_dir = f"{root}/HashPartitionTask-{producer:06d}.0.abc"
    ds = PartitionedDataSet([ParquetDataSet.from_files([f"{out_dir}/bucket={i}/0.parquet"]) for i in range(partitions)])
    return pickle.loads(pickle.dumps(ds))


class _Task:
    def __init__(self, key: str, base: str) -> None:
        self.key, self.base = key, base
        self.exec_on_scheduler, self.writes_output = False, True
        self.plan_components = {"params": "p", "partition": key}
        self.location, self.node_label, self.node_id, self.fingerprint = "", "HashPartitionNode-000004", 4, key

    def output_base(self, rt) -> str:
        return self.base


def test_a_producer_output_stays_compact_and_its_files_are_labelled_by_task(make_rt, tmp_path):
    """Noting a producer's output registers its one output directory and keeps the output in its
    compact form (``datasets`` would build P x C partition objects and keep them)."""
    root = str(tmp_path / "staging")
    jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
    out = _producer_output(root, 7, 500)
    jc.keys["HashPartitionTask-000007"] = "k" * 64
    jc.on_done(_Task("HashPartitionTask-000007", f"{root}/HashPartitionTask-000007"), out)
    assert out._compact is not None, "the producer's output was expanded partition by partition"
    assert list(jc.produced) == [f"{root}/HashPartitionTask-000007.0.abc"]
    label, identity = jc.identify(f"{root}/HashPartitionTask-000007.0.abc/bucket=3/0.parquet")
    assert (label, identity) == ("task:HashPartitionTask-000007/bucket=3/0.parquet", "k" * 64)
    # a partitioned input is keyed partition by partition, still without expanding it for good
    comps = input_components(out, jc.identify)
    assert len(comps["files"]) == 500 and out._compact is not None


def test_a_tasks_components_are_dropped_once_it_is_done(make_rt, tmp_path):
    jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
    task = _Task("SqlEngineTask-000009", str(tmp_path / "out" / "SqlEngineTask-000009"))
    jc.keys[task.key] = "s" * 64
    jc.components[task.key] = {"plan": {}, "engine": "e", "inputs": []}
    jc.on_done(task, ParquetDataSet.from_files([f"{task.base}.0.abc/0.parquet"]))
    assert task.key not in jc.components
    assert list(jc._index.values())[0]["SqlEngineTask-000009"]["key"] == "s" * 64


def _input(files):
    return {"desc": "d", "files": dict(files), "files_digest": cache_keys._files_digest(dict(files))}


def test_the_index_keeps_an_input_of_many_files_as_digests():
    """A sort after a shuffle reads a file of every producer: the index keeps that input as a
    digest and counts (and its user's files by name), a small input file by file."""
    produced = {f"task:HashPartitionTask-{i:06d}/bucket=1/0.parquet": hashlib.sha256(bytes([i])).hexdigest() for i in range(64)}
    small = _input(list(produced.items())[:INDEX_FILES_LIMIT])
    assert index_input(small) == {"desc": "d", "files": small["files"]}
    big = index_input(_input(produced.items()))
    assert "files" not in big and big["count"] == 64 and big["produced"] == 64 and big["external"] == {}
    assert len(repr(big)) < 400


def test_why_changed_explains_an_input_kept_as_digests():
    produced = {f"task:HashPartitionTask-{i:06d}/bucket=1/0.parquet": f"id{i}" for i in range(64)}
    user = {"/data/users.parquet": "100:1:aa"}
    prev = {"key": "a", "plan": {}, "engine": "e", "inputs": [index_input(_input({**produced, **user}))]}
    # an upstream task was recomputed: its identity changed
    changed = dict(produced, **{"task:HashPartitionTask-000005/bucket=1/0.parquet": "new"})
    cur = {"key": "b", "plan": {}, "engine": "e", "inputs": [_input({**changed, **user})]}
    assert why_changed(prev, cur) == ["its input from upstream tasks (64 files) was recomputed"]
    # a user's file changed: named, as for a small input
    cur = {"key": "b", "plan": {}, "engine": "e", "inputs": [_input({**produced, "/data/users.parquet": "200:2:bb"})]}
    assert why_changed(prev, cur) == ["input file /data/users.parquet changed (100 -> 200 bytes)"]
    # the same files: nothing about the files
    cur = {"key": "b", "plan": {}, "engine": "e", "inputs": [dict(_input({**produced, **user}), desc="other")]}
    assert why_changed(prev, cur) == ["input 0's description changed (columns, options or row ranges)"]
