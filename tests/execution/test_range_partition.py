"""RangePartitionNode: exact boundaries, the first column as default key, NULL/NaN placement, both
engines alike, sampled split points balanced on skewed keys, and clear errors."""

from __future__ import annotations

import doctest
import math
import types

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond.execution.ops.range as range_ops
from smallpond.errors import ColumnNotFoundError, JobFailed, ParameterError
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.ops.range import balanced_split_indices
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, RangePartitionNode, RootNode, SqlEngineNode


def run_partitionings(paths, data_root, job_id=None, **configs):
    """Run several range partitionings of ``paths`` in one job: {name: each partition's rows
    (sorted by the key), in partition order} for each ``name=dict(RangePartitionNode kwargs)``."""
    ctx = Context()
    paths = [paths] if isinstance(paths, str) else paths
    src = DataSourceNode(ctx, ParquetDataSet(paths))
    nodes = {}
    for name, kwargs in configs.items():
        rp = RangePartitionNode(ctx, (src,), **kwargs)
        key = kwargs.get("key_column") or pq.read_schema(paths[0]).names[0]
        query = f"select *, {{__data_partition__}} as part from {{0}} order by {key} nulls last, id"
        nodes[name] = SqlEngineNode(ctx, (rp,), query)
    ep = run_job(LogicalPlan(ctx, RootNode(ctx, list(nodes.values()))), make_runtime_ctx(job_id, None, data_root), num_workers=2)
    out = {}
    for name, node in nodes.items():
        tasks = sorted((t for t in ep.tasks.values() if t.node_id == node.id), key=lambda t: t.partition_infos[-1].index)
        parts = [ep.results[t.key].to_arrow_table().to_pylist() for t in tasks]
        assert all(r["part"] == i for i, rows in enumerate(parts) for r in rows)
        out[name] = [[{k: v for k, v in r.items() if k != "part"} for r in rows] for rows in parts]
    return out


def partitions(paths, data_root, job_id=None, **kwargs):
    return run_partitionings(paths, data_root, job_id, only=kwargs)["only"]


@pytest.fixture
def keyed(tmp_path):
    """id and key columns, key first: 0..20 twice, NULLs, and NaN in a float copy of the key."""
    keys = [i % 21 for i in range(42)] + [None, None]
    path = str(tmp_path / "keyed.parquet")
    fkeys = [float(k) if k is not None else None for k in keys[:-1]] + [float("nan")]
    pq.write_table(pa.table({"key": pa.array(keys, pa.int64()), "id": list(range(44)), "f": fkeys}), path)
    return path


def test_boundaries_are_exact_and_both_engines_agree(keyed, tmp_path):
    got = run_partitionings(
        keyed,
        str(tmp_path),
        duckdb=dict(split_points=[5, 10, 10, 15]),  # the first column is the key
        arrow=dict(split_points=[5, 10, 10, 15], engine_type="arrow"),
        f_duckdb=dict(split_points=[2.5, 7.0, 19.5], key_column="f"),
        f_arrow=dict(split_points=[2.5, 7.0, 19.5], key_column="f", engine_type="arrow"),
        one=dict(split_points=[]),
    )
    parts = got["duckdb"]
    assert len(parts) == 5
    keys = [[r["key"] for r in p] for p in parts]
    assert keys[0] == sorted(k for k in range(5) for _ in range(2))
    assert keys[1] == sorted(k for k in range(5, 10) for _ in range(2))  # 5 == split[0] goes up
    assert keys[2] == []  # between the two equal split points
    assert keys[3] == sorted(k for k in range(10, 15) for _ in range(2))  # 10 goes above both 10s
    assert keys[4] == sorted(k for k in range(15, 21) for _ in range(2)) + [None, None]  # NULLs last
    assert sorted(r["id"] for p in parts for r in p) == list(range(44))
    assert repr(got["arrow"]) == repr(parts)
    assert repr(got["f_duckdb"]) == repr(got["f_arrow"])  # repr: NaN != NaN
    floats = [[r["f"] for r in p] for p in got["f_duckdb"]]
    assert floats[1][:2] == [3.0, 3.0] and 2.0 in floats[0] and 7.0 in floats[2] and 19.0 in floats[2]
    assert any(isinstance(x, float) and math.isnan(x) for x in floats[3]) and None in floats[3]  # NaN and NULL last
    assert len(got["one"]) == 1 and len(got["one"][0]) == 44


def test_string_and_bytes_keys(tmp_path):
    words = ["apple", "b", "banana", "c", "cherry", "d", "O'Neil", "z", ""]
    path = str(tmp_path / "words.parquet")
    pq.write_table(pa.table({"w": words, "raw": [w.encode() for w in words], "id": list(range(len(words)))}), path)
    got = run_partitionings(
        path, str(tmp_path), s=dict(split_points=["b", "c", "d"]), b=dict(split_points=[b"b", b"c\xff"], key_column="raw")
    )
    assert [[r["w"] for r in p] for p in got["s"]] == [["", "O'Neil", "apple"], ["b", "banana"], ["c", "cherry"], ["d", "z"]]
    assert [[r["w"] for r in p] for p in got["b"]] == [["", "O'Neil", "apple"], ["b", "banana", "c", "cherry"], ["d", "z"]]


class ReprIsNotSql(float):
    """A float whose repr is text that, pasted into the query, would put every row in partition 0."""

    def __repr__(self) -> str:
        return "1e308 THEN 0 ELSE 0 END --"


def test_numpy_and_subclassed_number_split_points_are_their_values(keyed, tmp_path):
    # np.quantile's np.float64 was written as "np.float64(7.5)" (the task failed: no function
    # float64), and a float subclass's repr went into the SQL as code
    points = [float(p) for p in np.quantile(np.arange(21), [0.25, 0.75])]  # 5.0, 15.0
    got = run_partitionings(
        keyed,
        str(tmp_path),
        numpy=dict(split_points=[np.float64(p) for p in points], key_column="f"),
        subclass=dict(split_points=[ReprIsNotSql(p) for p in points], key_column="f", engine_type="arrow"),
        plain=dict(split_points=points, key_column="f"),
    )
    assert repr(got["numpy"]) == repr(got["plain"]) == repr(got["subclass"])
    assert [len(p) for p in got["plain"]] == [10, 20, 14]  # 0-4 twice; 5-14 twice; 15-20 twice, NaN, NULL


def zipf_files(directory, nfiles=4, rows=40_000, a=1.2, seed=7):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(nfiles):
        keys = rng.zipf(a, rows).astype(np.int64)
        path = f"{directory}/zipf{i}.parquet"
        pq.write_table(pa.table({"key": keys, "id": np.arange(i * rows, (i + 1) * rows)}), path)
        paths.append(path)
    return paths


def test_sampled_split_points_balance_skewed_keys_and_sort_globally(tmp_path):
    paths = zipf_files(str(tmp_path))
    n = 8
    parts = partitions(paths, str(tmp_path / "a"), job_id="zipf-job", npartitions=n)
    sizes = [len(p) for p in parts]
    total = sum(sizes)
    assert total == 160_000
    top = duckdb.sql(f"select max(c) from (select count(*) c from read_parquet({paths!r}) group by key)").fetchall()[0][0]
    assert top < 2 * total / n, "the data allows balance within 2x"
    assert max(sizes) <= 2 * total / n, sizes
    assert min(sizes) > 0
    got = [(r["key"], r["id"]) for p in parts for r in p]
    want = duckdb.sql(f"select key, id from read_parquet({paths!r}) order by key, id").fetchall()
    assert got == want
    # the same job elsewhere (other processes, the other engine) samples the same split points
    again = partitions(paths, str(tmp_path / "b"), job_id="zipf-job", npartitions=n, engine_type="arrow")
    assert again == parts


def test_sampling_with_fewer_distinct_keys_than_partitions(tmp_path):
    path = str(tmp_path / "few.parquet")
    pq.write_table(pa.table({"key": [1, 2, 1, 2, 3, None], "id": list(range(6))}), path)
    parts = partitions(path, str(tmp_path / "r"), npartitions=6)
    assert [r["key"] for p in parts for r in p] == [1, 1, 2, 2, 3, None]
    assert sum(1 for p in parts if p) <= 4


def test_balanced_split_indices():
    assert doctest.testmod(range_ops).failed == 0
    assert balanced_split_indices([], 4) == []
    assert balanced_split_indices([5], 4) == [0, 0, 0]
    assert balanced_split_indices([1] * 10, 3) == [3, 6]
    counts = [50, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # one key is 70% of the rows
    cuts = balanced_split_indices(counts, 4)
    assert cuts[0] == 1 and len(set(cuts)) == 3  # the heavy key alone; the rest split three ways
    rng = np.random.default_rng(1)
    for _ in range(50):
        counts = rng.integers(1, 100, size=int(rng.integers(1, 60))).tolist()
        n = int(rng.integers(2, 10))
        cuts = balanced_split_indices(counts, n)
        assert len(cuts) == n - 1 and cuts == sorted(cuts)
        bounds = [0, *cuts, len(counts)]
        largest = max(sum(counts[a:b]) for a, b in zip(bounds, bounds[1:]))
        assert largest <= max(max(counts), math.ceil(sum(counts) / n) + max(counts))


def test_bad_parameters_fail_when_the_node_is_built(keyed):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([keyed]))
    for bad, match in [
        ([3, 1], "sorted in ascending order"),
        ([1, None], "must not contain None"),
        ([1, "a"], "one comparable type"),
        ("abc", "list of values"),
    ]:
        with pytest.raises(ParameterError, match=match) as e:
            RangePartitionNode(ctx, (src,), bad)
        assert "test_range_partition.py" in str(e.value)
    with pytest.raises(ParameterError, match="give split_points, or npartitions"):
        RangePartitionNode(ctx, (src,))
    with pytest.raises(ParameterError, match="does not match"):
        RangePartitionNode(ctx, (src,), [1, 2], npartitions=5)


def test_run_time_errors_name_the_key(keyed, tmp_path, monkeypatch):
    # the errors of the tasks themselves: a slow machine must not let the plan check find them first
    monkeypatch.setenv("SP_PLAN_CHECK", "off")
    with pytest.raises(JobFailed) as e:
        partitions(keyed, str(tmp_path / "a"), split_points=[1], key_column="nope")
    assert "key_column='nope': column 'nope' not found in the range partition's input" in str(e.value.errors[0])
    with pytest.raises(JobFailed) as e:
        partitions(keyed, str(tmp_path / "b"), split_points=["x"])
    assert "cannot be compared with the key column 'key'" in str(e.value.errors[0])


def test_key_column_binds_as_every_other_key(tmp_path):
    """``key_column`` in another case than the column binds to it, as a hash key and DuckDB bind a
    name (it was refused: "column 'key' not found", the input having ``Key``); the exact name wins,
    and two names differing from it only in case are an error naming both."""
    path = str(tmp_path / "cased.parquet")
    pq.write_table(pa.table({"id": list(range(20)), "Key": [i % 7 for i in range(20)]}), path)
    got = run_partitionings(
        path,
        str(tmp_path / "root"),
        exact=dict(split_points=[3], key_column="Key"),
        duckdb=dict(split_points=[3], key_column="key"),
        arrow=dict(split_points=[3], key_column="KEY", engine_type="arrow"),
        sampled=dict(npartitions=2, key_column="kEY"),
    )
    assert [[r["Key"] for r in p] for p in got["exact"]] == [
        sorted(k for k in range(3) for _ in range(3)),
        sorted(i % 7 for i in range(20) if i % 7 >= 3),
    ]
    assert got["duckdb"] == got["exact"] and got["arrow"] == got["exact"]
    assert len(got["sampled"]) == 2 and sorted(r["id"] for p in got["sampled"] for r in p) == list(range(20))
    node = types.SimpleNamespace(key_column="KEY")
    assert range_ops.key_column_of(node, ["key", "KEY"]) == "KEY"
    with pytest.raises(ColumnNotFoundError, match=r"key_column='KEY': column 'KEY' is ambiguous .*'kEy', 'Key'"):
        range_ops.key_column_of(node, ["id", "kEy", "Key"])


def test_upstream_default_resources_are_clamped_quietly(make_rt, keyed, recwarn):
    ctx = Context()
    node = RangePartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([keyed])),), [1])
    assert node.cpu_limit == 16
    Planner(make_rt("x")).create_exec_plan(LogicalPlan(ctx, node))
    assert not [w for w in recwarn if "exceeds" in str(w.message)]


def _fixed_binary_keys(width: int = 10):
    """Keys that sit on, around and between 2-byte and 8-byte split points (zero bytes, 0xff
    bytes, a key equal to a point's prefix), a random spread, and NULLs."""
    rng = np.random.default_rng(7)
    edges = [b"\x00" * width, b"\xff" * width, b"\x40\x00" + b"\x00" * (width - 2), b"\x3f\xff" + b"\xff" * (width - 2)]
    edges += [
        b"\x40\x00\x00\x00\x00\x00\x00\x00" + b"\x01" * (width - 8),
        b"\x7f\xff\xff\xff\xff\xff\xff\xff" + b"\x00" * (width - 8),
    ]
    keys = edges + [bytes(r) for r in rng.integers(0, 256, size=(400, width), dtype=np.uint8)] + [None, None]
    return pa.array(keys, pa.binary(width))


def test_binary_range_keys_match_duckdb_exactly():
    """The arrow engine's range partition of fixed-size binary keys, computed without DuckDB, puts
    every key where DuckDB's SQL (range_index_sql) puts it; other split points are left to DuckDB."""
    keys = _fixed_binary_keys()
    conn = duckdb.connect()
    conn.register("keys_table", pa.table({"key": keys}))
    for points in (
        [bytes([v >> 8, v & 0xFF]) for v in (0x1000, 0x3FFF, 0x4000, 0x4000, 0x8000, 0xFFFF)],  # GraySort's, repeated one
        [b"\x40\x00\x00\x00\x00\x00\x00\x00", b"\x7f\xff\xff\xff\xff\xff\xff\xff", b"\xc0" + b"\x00" * 7],
        [b"\x00", b"\x40", b"\xff"],
    ):
        n = len(points) + 1
        expected = conn.execute(
            f"SELECT {range_ops.range_index_sql('key', [range_ops.sql_literal(p) for p in points], n)} AS k FROM keys_table"
        ).fetchnumpy()["k"]
        prepared = range_ops.binary_split_prefixes(points, 10)
        assert prepared is not None
        whole, chunked, offset = keys, pa.chunked_array([keys.slice(0, 5), keys.slice(5)]), keys.slice(3)
        assert range_ops.binary_range_keys(whole, prepared, n - 1).tolist() == expected.tolist()
        assert range_ops.binary_range_keys(chunked, prepared, n - 1).tolist() == expected.tolist()
        assert range_ops.binary_range_keys(offset, prepared, n - 1).tolist() == expected[3:].tolist()
    # an empty chunk may come without a values buffer
    empty = pa.Array.from_buffers(pa.binary(10), 0, [None, None])
    assert range_ops.binary_range_keys(pa.chunked_array([empty, keys]), prepared, n - 1).tolist() == expected.tolist()
    # longer than 8 bytes, of several lengths, or not ascending: DuckDB decides
    assert range_ops.binary_split_prefixes([b"\x00" * 9], 10) is None
    assert range_ops.binary_split_prefixes([b"\x01", b"\x02\x00"], 10) is None
    assert range_ops.binary_split_prefixes([b"\x02", b"\x01"], 10) is None
    assert range_ops.binary_split_prefixes([b"\x01\x02\x03"], 2) is None
    assert range_ops.binary_split_prefixes(["a"], 10) is None


def test_fixed_size_binary_keys_both_engines_agree(tmp_path):
    """End to end: the arrow engine (which computes these binary ranges without DuckDB) and the
    DuckDB engine give the same partitions of fixed-size binary keys, NULLs last."""
    keys = _fixed_binary_keys()
    path = str(tmp_path / "fixed.parquet")
    pq.write_table(pa.table({"key": keys, "id": list(range(len(keys)))}), path)
    points = [b"\x00\x01", b"\x40\x00", b"\x7f\xff", b"\xff\xff"]
    ctx = Context()
    node = RangePartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), split_points=points, engine_type="arrow")
    task = types.SimpleNamespace(node=node, _key="key")
    assert range_ops.RangePartitionTask._local_partition_keys(task, pq.read_schema(path)) is not None
    task._key = "id"  # an integer key: DuckDB computes the partitions
    assert range_ops.RangePartitionTask._local_partition_keys(task, pq.read_schema(path)) is None
    got = run_partitionings(
        path, str(tmp_path), duckdb=dict(split_points=points), arrow=dict(split_points=points, engine_type="arrow")
    )
    assert repr(got["arrow"]) == repr(got["duckdb"])
    assert [r["key"] for r in got["duckdb"][-1]][-2:] == [None, None]
    assert sum(len(p) for p in got["duckdb"]) == len(keys)


def test_a_binary_range_shuffle_and_arrow_sort_never_load_duckdb_in_the_worker(tmp_path, monkeypatch):
    """The tuned GraySort's shape (a range partition of fixed-size binary keys on the arrow engine,
    then Arrow code over Parquet) runs in a worker that never imports DuckDB (~65 ms of CPU and
    a database to open, before each worker's first task could start)."""
    from smallpond.logical.node import ArrowComputeNode

    def modules_loaded(runtime_ctx, tables):
        # (defined here, it is pickled by value: by name, the worker would import this test
        # module, which imports DuckDB)
        import sys

        import pyarrow

        table = tables[0]
        return table.append_column("duckdb_loaded", pyarrow.array(["duckdb" in sys.modules] * table.num_rows, pyarrow.bool_()))

    monkeypatch.setenv("SP_FORK_WORKERS", "0")  # a fresh interpreter: only what its tasks import
    keys = _fixed_binary_keys()
    path = str(tmp_path / "fixed.parquet")
    pq.write_table(pa.table({"key": keys, "id": list(range(len(keys)))}), path)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([path]))
    shuffled = RangePartitionNode(ctx, (src,), split_points=[b"\x40\x00", b"\x80\x00"], engine_type="arrow")
    node = ArrowComputeNode(ctx, (shuffled,), process_func=modules_loaded)
    ep = run_job(LogicalPlan(ctx, node), make_runtime_ctx(None, None, str(tmp_path / "root")), num_workers=1)
    rows = [r for t in ep.tasks.values() if t.node_id == node.id for r in ep.results[t.key].to_arrow_table().to_pylist()]
    assert len(rows) == len(keys)
    assert not any(r["duckdb_loaded"] for r in rows)
