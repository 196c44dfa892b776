"""smallpond.execution.cache_keys: what the scheduler keeps per task for the task cache, at the
scale of a shuffle (P producers x C partitions)."""

from __future__ import annotations

import glob
import hashlib
import os

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


def test_whether_a_task_is_cacheable_is_worked_out_once_per_task(make_rt, tmp_path, monkeypatch):
    """The scheduler asks the task cache about a task about ten times (a preparation, a lookup and a
    claim each round it waits for room, its output's identity when done): the verdict of
    :meth:`JobCache.cacheable` is worked out once per task, and is each task's own (two tasks of one
    class, one of a node that could not be fingerprinted)."""
    asked = []
    plain = JobCache.cacheable
    monkeypatch.setattr(JobCache, "cacheable", staticmethod(lambda task: asked.append(task.key) or plain(task)))
    jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
    jc.solo = True  # alone on the cache: a claim takes no file
    kept = _Task("SqlEngineTask-000001", str(tmp_path / "out" / "SqlEngineTask-000001"))
    odd = _Task("SqlEngineTask-000002", str(tmp_path / "out" / "SqlEngineTask-000002"))
    odd.plan_components["params"] = "unreusable: a lambda"
    kept.input_keys = odd.input_keys = []
    for task in (kept, odd, kept, odd):
        jc.prepare(task, [])
        jc.lookup(task)
        jc.prepare(task, [])
        jc.claim(task)
    assert (kept.cache_key is not None, odd.cache_key) == (True, None)
    assert (kept.key in jc.unclaimed, odd.key in jc.unclaimed) == (True, False)
    jc.on_done(kept, ParquetDataSet.from_files([f"{kept.base}.0.abc/0.parquet"]))
    jc.on_done(odd, ParquetDataSet.from_files([f"{odd.base}.0.abc/0.parquet"]))
    assert (jc.whole[kept.key], jc.whole[odd.key]) == (kept.cache_key, "")
    assert sorted(asked) == [kept.key, odd.key], asked


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


class _PassThrough(_Task):
    """A shuffle's consumer (or a split, a projection): run by the scheduler, it writes nothing."""

    def __init__(self, key: str, input_keys, params: str = "p") -> None:
        super().__init__(key, "/unused")
        self.exec_on_scheduler, self.writes_output = True, False
        self.input_keys = list(input_keys)
        self.plan_components = {"params": params, "partition": key}


def _shuffle_consumer(jc: JobCache, root: str, producer_keys, index: int = 3):
    """Producers done with the given keys, then the consumer of partition ``index``: its task and
    its output (partition ``index`` of every producer)."""
    outputs = []
    for i, key in enumerate(producer_keys):
        task = _Task(f"HashPartitionTask-{i:06d}", f"{root}/HashPartitionTask-{i:06d}")
        task.input_keys = []
        jc.keys[task.key] = key
        out = _producer_output(root, i, 8)
        jc.on_done(task, out)
        outputs.append(out)
    consumer = _PassThrough(
        f"PartitionConsumerTask-{index:06d}", [f"HashPartitionTask-{i:06d}" for i in range(len(producer_keys))]
    )
    gathered = PartitionedDataSet.gather(outputs, index)
    jc.on_done(consumer, gathered)
    return consumer, gathered


def test_a_sort_after_a_shuffle_keys_its_input_by_the_producers_keys_not_file_by_file(make_rt, tmp_path):
    """A consumer's input that a task of the job produced as a whole is keyed by that task's
    identity (Merkle style): one label, no file looked at; it changes with any producer's key."""
    root = str(tmp_path / "staging")

    def sort_key(producer_keys):
        jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
        consumer, gathered = _shuffle_consumer(jc, root, producer_keys)
        looked_at = []
        jc.identify = lambda path: looked_at.append(path) or ("?", "?")
        sort = _Task("SqlEngineTask-000100", f"{root}/SqlEngineTask-000100")
        sort.input_keys = [consumer.key]
        comps = jc.components_of(sort, [gathered])
        assert looked_at == [], "the input's files were identified one by one"
        (label,) = comps["inputs"][0]["files"]
        assert label == f"task:{consumer.key}" and jc.whole[consumer.key].startswith("via:")
        return cache_keys.cache_key(comps)

    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(16)]
    assert sort_key(keys) == sort_key(list(keys)), "the same producers give the same key"
    changed = list(keys)
    changed[5] = "f" * 64  # one producer was recomputed from another input
    assert sort_key(changed) != sort_key(keys)


def test_consumers_of_the_same_producers_share_their_digest_and_follow_a_recomputed_one(make_rt, tmp_path):
    """The consumers of one shuffle read the same producers: their identities' digest is computed
    once for all (kept by those identities), each consumer's identity still differs by its own
    plan, and a producer recomputed with another key changes the identity of a consumer made after,
    in the same job (the kept digest is that of the old identities, never reused for the new)."""
    root = str(tmp_path / "staging")
    jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(16)]
    first, _ = _shuffle_consumer(jc, root, keys, index=3)
    second = _PassThrough("PartitionConsumerTask-000004", first.input_keys)
    jc.on_done(second, None)
    assert len(jc._inputs_digests) == 1, "the shared inputs were digested more than once"
    assert jc.whole[first.key].startswith("via:") and jc.whole[second.key] != jc.whole[first.key]
    again = _PassThrough("PartitionConsumerTask-000004", first.input_keys)
    jc.on_done(again, None)
    assert jc.whole[again.key] == jc.whole[second.key]
    before = jc.whole[second.key]
    jc.forget([first.input_keys[5]])  # one producer runs again, from another input
    producer = _Task(first.input_keys[5], f"{root}/{first.input_keys[5]}")
    producer.input_keys = []
    jc.keys[producer.key] = "f" * 64
    jc.on_done(producer, _producer_output(root, 5, 8))
    after = _PassThrough("PartitionConsumerTask-000004", first.input_keys)
    jc.on_done(after, None)
    assert jc.whole[after.key].startswith("via:") and jc.whole[after.key] != before


def test_a_split_of_a_users_files_keeps_identifying_them_file_by_file(make_rt, tmp_path):
    """A pass-through over a source (whose files are the user's) has no identity as a whole: its
    consumers identify each file, so a partition over files that did not change keeps its key
    when another file of the source changes. So has one whose node cannot be fingerprinted."""
    jc = JobCache(make_rt(task_cache=str(tmp_path / "cache")))
    files = []
    for i in range(3):
        path = tmp_path / f"in{i}.parquet"
        path.write_bytes(b"PAR1" + bytes(20) + b"PAR1")
        files.append(str(path))
    source = _PassThrough("DataSourceTask-000001", [])
    jc.on_done(source, ParquetDataSet.from_files(files))
    split = _PassThrough("SplitDataSetTask-000002", [source.key])
    part = ParquetDataSet.from_files(files[:2])
    jc.on_done(split, part)
    assert jc.whole[source.key] == "" and jc.whole[split.key] == ""
    sql = _Task("SqlEngineTask-000003", str(tmp_path / "out" / "SqlEngineTask-000003"))
    sql.input_keys = [split.key]
    assert sorted(jc.components_of(sql, [part])["inputs"][0]["files"]) == files[:2]

    consumer, _ = _shuffle_consumer(jc, str(tmp_path / "staging"), ["k" * 64, "l" * 64])
    assert jc.whole[consumer.key].startswith("via:")
    unreusable = _PassThrough("PartitionConsumerTask-000009", consumer.input_keys, params="unreusable:x")
    jc.on_done(unreusable, None)
    assert jc.whole[unreusable.key] == ""


def test_an_input_of_produced_files_is_described_without_the_job_folder(tmp_path):
    # files a task of the job wrote are known by labels (task and path inside its output), in the
    # description too (a row range names its file): the same rows of the same outputs have the
    # same components in any job
    import pyarrow as pa
    import pyarrow.parquet as pq

    def components(job: str) -> dict:
        out_dir = str(tmp_path / job / "staging" / "Node" / "SqlEngineTask-000003.0.abc")
        os.makedirs(out_dir)
        pq.write_table(pa.table({"x": list(range(10))}), f"{out_dir}/part-0.parquet")
        second_half = ParquetDataSet.from_files([f"{out_dir}/part-0.parquet"]).partition_by_rows(2)[1]

        def identify(path: str):
            return f"task:SqlEngineTask-000003/{path[len(out_dir) + 1 :]}", "identity-of-its-output"

        return input_components(second_half, identify)

    a, b = components("jobA"), components("jobB")
    assert a == b
    assert list(a["files"]) == ["task:SqlEngineTask-000003/part-0.parquet"]
    # a user's files are their own labels (their paths), and their description keeps them
    user = ParquetDataSet.from_files(["/data/in/a.parquet"])
    assert input_components(user, lambda p: (p, "id"))["files"] == {"/data/in/a.parquet": "id"}
    assert input_components(user, lambda p: (p, "id")) != input_components(
        ParquetDataSet.from_files(["/data/in/b.parquet"]), lambda p: (p, "id")
    )


def test_how_keys_are_derived_is_pinned():
    # a key is a digest of the task's components; deriving it differently (another serialization,
    # another digest) silently makes every entry of every existing cache unreachable. The digests
    # below are those of the derivation in use since the task cache's Merkle keys (b966e30): change
    # them only together with CACHE_FORMAT, on purpose
    from smallpond.execution.cache_keys import cache_key

    inp = input_components(
        ParquetDataSet.from_files(["/data/in/a.parquet", "/data/in/b.parquet"]), lambda p: (p, f"10:20:footer={p[-9]};")
    )
    comps = {
        "plan": {"task": "SqlEngineTask", "params": "p", "partition": "[('@toplevel@', 0, 1)]", "seed": 7},
        "engine": "python=3.11 duckdb=2.0.1",
        "inputs": [inp],
    }
    assert inp["desc"] == "4dba986cdc4ce87baa2f45e7197a592578f2af72176180eb8ac04ac55dc46e88"
    assert inp["files_digest"] == "ef44b3e82d851658546412eef6093792c2ffa8f36287e349cf2376729b289d4a"
    assert cache_key(comps) == "03df2143ed110925736ffadcb75967e4c6f0e04dd9fe7031df7e3a6fefb258a6"


def _write_mode(runtime_ctx, input_datasets, output_path) -> bool:
    """A task whose output depends on the job's environment."""
    with open(os.path.join(output_path, "mode.txt"), "w") as f:
        f.write(os.environ.get("SP_TEST_MODE", "<unset>"))
    return True


def _mode_plan():
    from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, PythonScriptNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([]))
    return LogicalPlan(ctx, PythonScriptNode(ctx, (src,), process_func=_write_mode))


def _run_mode(tmp_path, job: str, env) -> str:
    """What the job's task wrote."""
    from smallpond.execution.job import make_runtime_ctx, run_job

    rt = make_runtime_ctx(job, None, str(tmp_path / "root"), task_cache=str(tmp_path / "cache"), env_overrides=env)
    ep = run_job(_mode_plan(), rt, num_workers=1)
    (path,) = [p for p in ep.final_output.resolved_paths if p.endswith("mode.txt")]
    with open(path) as f:
        return f.read()


def test_the_jobs_environment_variables_are_part_of_the_key(tmp_path):
    """A task of a job run with other environment variables (the Driver's ``--env_variables``) is not
    served the result computed with the earlier values; the same values are reused; the dry run
    names the variable, and the cache's index keeps no value in clear."""
    from smallpond.execution.job import dry_run_plan, make_runtime_ctx

    def dry(job: str, mode: str) -> str:
        env = {"SP_TEST_MODE": mode}
        rt = make_runtime_ctx(job, None, str(tmp_path / "root"), task_cache=str(tmp_path / "cache"), env_overrides=env)
        return str(dry_run_plan(_mode_plan(), rt))

    assert _run_mode(tmp_path, "env-a", {"SP_TEST_MODE": "alpha"}) == "alpha"
    assert _run_mode(tmp_path, "env-b", {"SP_TEST_MODE": "beta"}) == "beta"
    listing = dry("env-dry-gamma", "gamma")
    assert "PythonScriptTask-000002  will run: the job's environment variable SP_TEST_MODE changed" in listing, listing
    listing = dry("env-dry-beta", "beta")
    assert "PythonScriptTask-000002  reused (written by PythonScriptTask-000002 of job" in listing, listing
    assert _run_mode(tmp_path, "env-a2", {"SP_TEST_MODE": "alpha"}) == "alpha"
    index = "".join(open(p, errors="replace").read() for p in glob.glob(str(tmp_path / "cache" / "index" / "*" / "*")))
    assert "SP_TEST_MODE" in index and "alpha" not in index and "beta" not in index


def _count_plan(path: str):
    from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode

    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 2, partition_by_rows=True)
    return LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select count(*) as n from {0}"))


def test_skipping_tasks_with_an_empty_input_is_part_of_their_key(tmp_path):
    """``skip_task_with_empty_input`` changes what a SQL task writes for an empty partition (nothing,
    where ``count(*)`` writes a row of 0): a job with it on is not served the other's output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.execution.job import dry_run_plan, make_runtime_ctx, run_job

    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"x": [1]}), path)  # one row: partition 1 of 2 is empty

    def rt(job: str, skip: bool):
        return make_runtime_ctx(
            job, None, str(tmp_path / "root"), task_cache=str(tmp_path / "cache"), skip_task_with_empty_input=skip
        )

    def counts(job: str, skip: bool):
        return sorted(
            r["n"] for r in run_job(_count_plan(path), rt(job, skip), num_workers=1).final_output.to_arrow_table().to_pylist()
        )

    assert counts("keep-empty", False) == [0, 1]
    listing = str(dry_run_plan(_count_plan(path), rt("dry-skip", True)))
    assert listing.count("will run: its skip_empty_input changed (None -> True)") == 2, listing
    assert counts("skip-empty", True) == [1]
    assert counts("keep-empty-again", False) == [0, 1]


def _five_rows(conn, fs) -> str:
    return "select range as x from range(5)"


def _fifty_rows(conn, fs) -> str:
    return "select range as x from range(50)"


def test_a_query_builders_code_is_part_of_its_sources_key(tmp_path):
    """``SqlQueryDataSet(sql_query, query_builder=fn)``: the query that runs is the builder's, so a
    job whose builder differs (the ``sql_query`` text the same) is not served the other's output,
    and one with the same builder is."""
    from smallpond.execution.job import make_runtime_ctx, run_job
    from smallpond.logical.dataset import SqlQueryDataSet
    from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

    def count(job: str, builder):
        ctx = Context()
        src = DataSourceNode(ctx, SqlQueryDataSet("generated rows", query_builder=builder))
        plan = LogicalPlan(ctx, SqlEngineNode(ctx, (src,), "select count(*) as n from {0}"))
        rt = make_runtime_ctx(job, None, str(tmp_path / "root"), task_cache=str(tmp_path / "cache"))
        done = run_job(plan, rt, num_workers=1)
        return done.final_output.to_arrow_table().column("n").to_pylist(), done.num_reused

    assert count("five", _five_rows) == ([5], 0)
    assert count("fifty", _fifty_rows)[0] == [50], "served the output of the other builder's query"
    assert count("five-again", _five_rows)[1] > 0, "the same builder should be reused"


def test_why_changed_says_a_file_left_the_inputs_not_that_it_is_gone():
    """The last build read /data/a.parquet, this one reads /data2/a.parquet: the first is no longer
    an input (it may well still exist), which is what the dry run says."""
    prev = {"key": "a", "plan": {}, "engine": "e", "inputs": [_input({"/data/a.parquet": "100:1:aa"})]}
    cur = {"key": "b", "plan": {}, "engine": "e", "inputs": [_input({"/data2/a.parquet": "100:1:aa"})]}
    assert why_changed(prev, cur) == [
        "input file /data/a.parquet is no longer an input",
        "input file /data2/a.parquet is new",
    ]
