"""HashPartitionNode's two engines put every row in the same partition, in the same order.

The ``arrow`` engine asks DuckDB for each row's partition (over Arrow batches) and moves the rows
with Arrow; the ``duckdb`` engine runs one partitioned COPY. Both must agree row for row.
"""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import JobFailed
from smallpond.execution.job import run_job
from smallpond.execution.ops.structural import PartitionConsumerTask
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    RootNode,
    ShuffleNode,
)

#: whether this pyarrow writes a file without its Arrow schema and keeps the key-value metadata
#: (17+): the duckdb engine's arrow route is taken only then (partition_arrow._arrow_keeps_types)
ARROW_ROUTE = hasattr(pq.ParquetWriter, "add_key_value_metadata")
_NEEDS_ROUTE = pytest.mark.skipif(
    not ARROW_ROUTE, reason="pyarrow 16 keeps the duckdb engine's COPY (test_pyarrow_16_keeps_the_copy)"
)


def _partitions(exec_plan, node):
    """Rows of each partition, in file order, as lists of dicts."""
    out = {}
    for t in exec_plan.tasks.values():
        if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask):
            rows = []
            for path in exec_plan.results[t.key].resolved_paths:
                rows.extend(pq.read_table(path, partitioning=None).to_pylist())
            out[t.index] = rows
    return [out[k] for k in sorted(out)]


def _run(make_rt, build):
    ctx = Context()
    node = build(ctx)
    return _partitions(run_job(LogicalPlan(ctx, node), make_rt(), num_workers=2), node), node


def _run_on_file(make_rt, path: str, build):
    """:func:`_run` of ``build(ctx, inputs)``, ``inputs`` a source of the one Parquet file ``path``."""
    return _run(make_rt, lambda ctx: build(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),)))


@pytest.mark.parametrize("by_rows", [False, True])
def test_engines_agree_on_hash_partitions(parquet_files, make_rt, by_rows):
    def build(engine):
        def make(ctx):
            src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
            if by_rows:  # row ranges that cut through files
                src = DataSetPartitionNode(ctx, (src,), 4, partition_by_rows=True)
            return HashPartitionNode(ctx, (src,), 5, hash_columns=["key", "name"], engine_type=engine, parquet_row_group_size=4)

        return make

    duck, _ = _run(make_rt, build("duckdb"))
    arrow, _ = _run(make_rt, build("arrow"))
    assert [len(p) for p in arrow] == [len(p) for p in duck]
    assert sum(len(p) for p in arrow) == 30
    # same rows per partition; within a partition the arrow engine keeps input order
    assert [sorted(r["id"] for r in p) for p in arrow] == [sorted(r["id"] for r in p) for p in duck]
    for p in arrow:
        assert [r["id"] for r in p] == sorted(r["id"] for r in p)
        assert len({r["__data_partition__"] for r in p}) <= 1
    # every row is in partition hash(key, name) % 5, as DuckDB computes it on its own
    import duckdb

    expected = dict(
        duckdb.sql(f"select id, hash(key, name) % 5 from read_parquet({[str(f) for f in parquet_files]!r})").fetchall()
    )
    assert {r["id"]: i for i, p in enumerate(duck) for r in p} == expected
    assert len({v for v in expected.values()}) == 5  # the data reaches every partition


def _writers(exec_plan, node):
    """Who wrote the partitions' files that hold rows: {"DuckDB"} (the COPY), {"parquet-cpp-arrow"}
    (pyarrow: the arrow way), by the files' ``created_by``."""
    return {
        pq.read_metadata(p).created_by.split()[0]
        for t in exec_plan.tasks.values()
        if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask)
        for p in exec_plan.results[t.key].resolved_paths
        if "empty" not in p
    }


def _row_groups(exec_plan, node):
    """{file base name: rows of each of its row groups} of the partitions' files."""
    out = {}
    for t in exec_plan.tasks.values():
        if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask):
            for p in exec_plan.results[t.key].resolved_paths:
                md = pq.read_metadata(p)
                out[os.path.basename(p)] = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    return out


def _partition_files(exec_plan, node):
    """The base names of each partition's files."""
    out = {}
    for t in exec_plan.tasks.values():
        if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask):
            out[t.index] = sorted(os.path.basename(p) for p in exec_plan.results[t.key].resolved_paths)
    return [out[k] for k in sorted(out)]


def test_use_parquet_writer_writes_one_file_per_partition_with_the_duckdb_engine(parquet_files, make_rt):
    """Upstream's ``use_parquet_writer`` (duckdb engine, reference §2.8): DuckDB gives each row its
    partition and a ParquetWriter writes ``{output_filename}-{k}.parquet``, one file per partition
    and producer, where DuckDB's COPY writes ``{output_filename}-{k}.{i}.parquet``. Same rows."""

    def build(use_parquet_writer):
        def make(ctx):
            src = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 2)
            return HashPartitionNode(ctx, (src,), 4, ["key"], use_parquet_writer=use_parquet_writer, num_producers=2)

        return make

    ctx = Context()
    plain_node = build(False)(ctx)
    _plain_run = (run_job(LogicalPlan(ctx, plain_node), make_rt(), num_workers=2), plain_node)
    plain = _partitions(*_plain_run)
    ctx = Context()
    node = build(True)(ctx)
    ep = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=2)
    written = _partitions(ep, node)
    assert [sorted(r["id"] for r in p) for p in written] == [sorted(r["id"] for r in p) for p in plain]
    assert sum(len(p) for p in written) == 30
    for k, names in enumerate(_partition_files(ep, node)):
        assert len(names) == 2, names  # one per producer
        assert all(re.fullmatch(rf"HashPartitionNode\.\d+-\d+-{k}(-empty)?\.parquet", n) for n in names), names
    assert any(re.fullmatch(r".*-\d+\.\d+\.parquet", n) for names in _partition_files(*_plain_run) for n in names)


def test_arrow_engine_shuffles_by_column_or_expression(parquet_files, make_rt):
    by_column, _ = _run(
        make_rt,
        lambda ctx: ShuffleNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 10, "key", engine_type="arrow"),
    )
    assert [{r["key"] for r in p} for p in by_column] == [{k} if by_column[k] else set() for k in range(10)]
    assert all("key" in r for p in by_column for r in p)

    by_expr, _ = _run(
        make_rt,
        lambda ctx: ShuffleNode(
            ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 3, "id % 3", dimension="m", engine_type="arrow"
        ),
    )
    assert [sorted(r["id"] for r in p) for p in by_expr] == [list(range(k, 30, 3)) for k in range(3)]
    assert all(set(r) == {"id", "key", "name"} for p in by_expr for r in p)  # the computed key is not written


def test_arrow_engine_writes_placeholders_for_empty_partitions(tmp_path, make_rt):
    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"k": [1, 1, 1], "v": ["a", "b", "c"]}), path)
    parts, _ = _run_on_file(make_rt, path, lambda ctx, src: ShuffleNode(ctx, src, 3, "k", engine_type="arrow"))
    assert [len(p) for p in parts] == [0, 3, 0]


def test_arrow_engine_rejects_keys_out_of_range(parquet_files, make_rt):
    with pytest.raises(JobFailed, match="out of range"):
        _run(
            make_rt,
            lambda ctx: ShuffleNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), 3, "id", engine_type="arrow"),
        )


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_shuffle_by_a_column_writes_the_column_as_it_was(tmp_path, make_rt, engine):
    """Rows go to the partition their key names, and the key stays the user's data: a uint16 stays
    a uint16, a float 1.0 stays 1.0, a boolean stays a boolean (both engines wrote the key back as
    an int64 p)."""
    path = str(tmp_path / "in.parquet")
    table = pa.table(
        {"id": [1, 2, 3, 4], "p": pa.array([0, 1, 1, 0], pa.uint16()), "f": [0.0, 1.0, 1.0, 0.0], "b": [False, True, True, False]}
    )
    pq.write_table(table, path)
    for col, typ in [("p", pa.uint16()), ("f", pa.float64()), ("b", pa.bool_())]:
        files = _files_of(make_rt, path, col, engine)
        rows = [r for f in files for r in pq.read_table(f, partitioning=None).to_pylist()]
        assert sorted(rows, key=lambda r: r["id"]) == table.to_pylist()
        assert {r["id"] for f in files if "-1." in os.path.basename(f) for r in pq.read_table(f).to_pylist()} == {2, 3}
        assert {pq.read_schema(f).field(col).type for f in files} == {typ}


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("typ", [pa.int64(), pa.int32()])
def test_a_shuffle_by_a_column_keeps_the_column_order(tmp_path, make_rt, engine, typ):
    """The key column stays where it was: the DuckDB engine wrote a BIGINT key last ([a, c, b]),
    so `select * from {0} union all select * from {1}` of the result and its input added c to b."""
    path = str(tmp_path / "in.parquet")
    pq.write_table(
        pa.table({"a": list(range(9)), "b": pa.array([i % 2 for i in range(9)], typ), "c": [10 * i for i in range(9)]}), path
    )
    files = _files_of(make_rt, path, "b", engine)
    assert {tuple(pq.read_schema(f).names) for f in files} == {("a", "b", "c")}
    rows = sorted(r for f in files for r in map(tuple, (d.values() for d in pq.read_table(f, partitioning=None).to_pylist())))
    assert rows == [(i, i % 2, 10 * i) for i in range(9)]


def _files_of(make_rt, path, col, engine):
    ctx = Context()
    node = ShuffleNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 2, col, engine_type=engine)
    plan = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    consumers = [t for t in plan.tasks.values() if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask)]
    return [f for t in consumers for f in plan.results[t.key].resolved_paths]


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_user_column_named_like_the_internal_partition_column_is_kept(tmp_path, make_rt, engine):
    """The DuckDB engine carries the partition in an internal column when the user's
    __data_partition__ is data to keep; a user column with that internal name lost every row."""
    path = str(tmp_path / "in.parquet")
    table = pa.table(
        {"k": list(range(20)), "__data_partition__": [i % 3 for i in range(20)], "__sp_partition__": [100 + i for i in range(20)]}
    )
    pq.write_table(table, path)
    parts, _ = _run_on_file(
        make_rt,
        path,
        lambda ctx, src: HashPartitionNode(ctx, src, 4, hash_columns=["k"], drop_partition_column=True, engine_type=engine),
    )
    rows = sorted((r["k"], r["__data_partition__"], r["__sp_partition__"]) for p in parts for r in p)
    assert rows == sorted(zip(*[table.column(c).to_pylist() for c in table.column_names]))


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("drop", [True, False])
def test_a_user_column_named_like_a_partition_column_in_another_case_loses_no_row(tmp_path, make_rt, engine, drop):
    """DuckDB takes __DATA_PARTITION__ and __data_partition__ (or __SP_PARTITION__ and the internal
    __sp_partition__) for one name: selected beside each other, its COPY renamed the partition
    column and named folders no partition reads, and every row was lost in silence. Such a column
    is the partition column, as one of the same case is: kept (drop_partition_column) or replaced."""
    path = str(tmp_path / "in.parquet")
    table = pa.table({"k": list(range(20)), "__DATA_PARTITION__": [7] * 20, "__SP_PARTITION__": [100 + i for i in range(20)]})
    pq.write_table(table, path)
    parts, _ = _run_on_file(
        make_rt,
        path,
        lambda ctx, src: HashPartitionNode(ctx, src, 4, hash_columns=["k"], drop_partition_column=drop, engine_type=engine),
    )
    rows = [r for p in parts for r in p]
    assert sorted(r["k"] for r in rows) == list(range(20))
    assert sorted(r["__SP_PARTITION__"] for r in rows) == list(range(100, 120))
    if drop:  # the user's column, as it was
        assert {tuple(r) for r in rows} == {("k", "__DATA_PARTITION__", "__SP_PARTITION__")}
        assert {r["__DATA_PARTITION__"] for r in rows} == {7}
    else:  # the partition column in its place, holding each row's partition
        assert {tuple(r) for r in rows} == {("k", "__SP_PARTITION__", "__data_partition__")}
        assert all(r["__data_partition__"] == i for i, p in enumerate(parts) for r in p)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_shuffle_over_a_column_named_like_the_internal_one_in_another_case_loses_no_row(tmp_path, make_rt, engine):
    path = str(tmp_path / "in.parquet")
    table = pa.table({"p": pa.array([i % 3 for i in range(20)], pa.int32()), "__SP_PARTITION__": [0] * 20, "v": list(range(20))})
    pq.write_table(table, path)
    parts, _ = _run_on_file(
        make_rt, path, lambda ctx, src: ShuffleNode(ctx, src, 3, data_partition_column="p", engine_type=engine)
    )
    assert [sorted(r["v"] for r in p) for p in parts] == [[v for v in range(20) if v % 3 == i] for i in range(3)]
    assert all(set(r) == {"p", "__SP_PARTITION__", "v"} and r["__SP_PARTITION__"] == 0 for p in parts for r in p)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_key_naming_a_column_in_another_case_is_that_column(tmp_path, make_rt, engine):
    """A hash or shuffle key that names a column of the data in another case is that column, as
    DuckDB binds names: pasted as an expression, "X-1" for a column "x-1" hashed x - 1 (rows of
    one key in several partitions, silently), and "unit-price" failed as the column "unit"."""
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"x-1": [5] * 12, "x": list(range(12)), "Unit-Price": [i % 3 for i in range(12)]}), path)
    hashed, _ = _run_on_file(
        make_rt, path, lambda ctx, src: HashPartitionNode(ctx, src, 4, hash_columns=["X-1"], engine_type=engine)
    )
    assert sorted(len(p) for p in hashed) == [0, 0, 0, 12]  # one key: one partition
    shuffled, _ = _run_on_file(
        make_rt, path, lambda ctx, src: ShuffleNode(ctx, src, 3, data_partition_column="unit-price", engine_type=engine)
    )
    assert [sorted(r["x"] for r in p) for p in shuffled] == [[x for x in range(12) if x % 3 == k] for k in range(3)]
    assert all(r["Unit-Price"] == k for k, p in enumerate(shuffled) for r in p)


def _partition_two_files(tmp_path, make_rt, engine, keys_by_file, comparable):
    """Write one file per ``(type, keys)`` of ``keys_by_file`` (columns ``k`` and ``file``, its
    index), read each by its own producer and hash them by ``k`` into 16 partitions. Returns the
    partitions' rows and the partitions each key went to, keyed by ``comparable(key)`` (a value
    equal across the files' types) or None."""
    return _partition_two_files_each(tmp_path, make_rt, engine, {"": (keys_by_file, comparable)})[""]


def _partition_two_files_each(tmp_path, make_rt, engine, cases):
    """:func:`_partition_two_files` of several cases in one job (one job per case repeated the
    job's start for each): ``cases`` maps a name to ``(keys_by_file, comparable)``; returns
    ``{name: (parts, where)}``."""
    ctx = Context()
    nodes = {}
    for c, (name, (keys_by_file, _)) in enumerate(cases.items()):
        paths = []
        for n, (typ, keys) in enumerate(keys_by_file):
            path = str(tmp_path / f"case{c}-part{n}.parquet")
            pq.write_table(pa.table({"k": pa.array(keys, typ), "file": [n] * len(keys)}), path)
            paths.append(path)
        src = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(paths)),), 2)  # one file per producer
        nodes[name] = HashPartitionNode(ctx, (src,), 16, hash_columns=["k"], engine_type=engine)
    root = nodes[""] if list(nodes) == [""] else RootNode(ctx, list(nodes.values()))
    exec_plan = run_job(LogicalPlan(ctx, root), make_rt(), num_workers=2)
    out = {}
    for name, node in nodes.items():
        parts = _partitions(exec_plan, node)
        where = {}
        for i, p in enumerate(parts):
            for r in p:
                key = None if r["k"] is None else cases[name][1](r["k"])
                where.setdefault(key, set()).add(i)
        out[name] = (parts, where)
    return out


_EQUAL_KEYS_TYPED_APART = {
    "int64 and double": (pa.int64(), pa.float64()),
    "float and double": (pa.float32(), pa.float64()),
    "decimal(5,1) and decimal(6,2)": (pa.decimal128(5, 1), pa.decimal128(6, 2)),
    "int32 and decimal(6,2)": (pa.int32(), pa.decimal128(6, 2)),
    "int32 and int64": (pa.int32(), pa.int64()),
    "int16 and double": (pa.int16(), pa.float64()),
    "uint32 and int64": (pa.uint32(), pa.int64()),
}


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_equal_keys_typed_apart_in_two_files_meet_in_one_partition(tmp_path, make_rt, engine):
    # each file is read by its own producer, with its own type for the key: 1 (int64) and 1.0
    # (double), or 1.5 (float) and 1.5 (double), must still hash alike, or a GROUP BY per
    # partition returns the key twice; negative keys too (DuckDB hashes a negative INTEGER, BIGINT
    # and HUGEINT apart: int32 and int64 keys, or a double key, which was hashed as a HUGEINT,
    # missed each other below zero; found by the differential fuzzer). Every pair of types is a
    # node of one job.
    from decimal import Decimal

    cases, values_of = {}, {}
    for case, (first, second) in sorted(_EQUAL_KEYS_TYPED_APART.items()):
        integral = pa.types.is_integer(first)
        low = 0 if pa.types.is_unsigned_integer(first) else -20
        values = [i if integral else i + 0.5 * (i % 2) for i in range(low, low + 40)] + [None]
        keys_by_file = [
            (typ, [None if v is None else Decimal(str(v)) if pa.types.is_decimal(typ) else v for v in values])
            for typ in (first, second)
        ]
        cases[case], values_of[case] = (keys_by_file, float), values
    for case, (parts, where) in _partition_two_files_each(tmp_path, make_rt, engine, cases).items():
        values = values_of[case]
        assert len(where) == len(values), case
        assert {k: sorted(w) for k, w in where.items() if len(w) > 1} == {}, case
        # every row of both files is there
        assert sorted(r["file"] for p in parts for r in p) == [0] * len(values) + [1] * len(values), case


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_nan_keys_are_hashed_and_meet_in_one_partition(tmp_path, make_rt, engine):
    # a double key column holding NaN among integral values failed the DuckDB engine's task
    # (ConversionException: NaN cast to INT128): the file's statistics leave NaN out
    import math

    nan = float("nan")
    keys_by_file = [(pa.float64(), [1.0, 2.0, 0.0, -0.0, nan, 7.0, None]), (pa.float32(), [nan, 1.5, 3.0, nan])]
    parts, where = _partition_two_files(tmp_path, make_rt, engine, keys_by_file, lambda k: "nan" if math.isnan(k) else k)
    assert len(where["nan"]) == 1, where
    assert len(where[0.0]) == 1
    assert sorted(r["file"] for p in parts for r in p) == [0] * 7 + [1] * 4


_EQUAL_TIMES_TYPED_APART = {
    "timestamp[ns] and timestamp[us]": (pa.timestamp("ns"), pa.timestamp("us")),
    "timestamp[ms] and timestamp[us]": (pa.timestamp("ms"), pa.timestamp("us")),  # Parquet has no seconds
    "date32 and timestamp[us]": (pa.date32(), pa.timestamp("us")),
    "date32 and timestamp[ns]": (pa.date32(), pa.timestamp("ns")),
}


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_equal_times_typed_apart_in_two_files_meet_in_one_partition(tmp_path, make_rt, engine):
    # a file pandas wrote (nanoseconds) and one DuckDB wrote (microseconds), or a DATE key and a
    # TIMESTAMP key: equal instants must hash alike, or a GROUP BY per partition returns them
    # twice. Every pair of types is a node of one job.
    import datetime

    days = [datetime.datetime(2024, 1, 1) + datetime.timedelta(days=i) for i in range(40)]
    cases = {
        case: (
            [(typ, [d.date() if pa.types.is_date(typ) else d for d in days] + [None]) for typ in types],
            lambda k: datetime.datetime(k.year, k.month, k.day),
        )
        for case, types in sorted(_EQUAL_TIMES_TYPED_APART.items())
    }
    for case, (parts, where) in _partition_two_files_each(tmp_path, make_rt, engine, cases).items():
        assert len(where) == len(days) + 1, case
        assert {k: sorted(w) for k, w in where.items() if len(w) > 1} == {}, case
        assert sorted(r["file"] for p in parts for r in p) == [0] * (len(days) + 1) + [1] * (len(days) + 1), case


def _pandas_loaded(flag_path, runtime_ctx, tables):
    """An ArrowComputeNode's function: notes whether its worker has imported pandas so far."""
    import sys

    with open(flag_path, "a") as f:
        f.write(f"{'pandas' in sys.modules}\n")
    return tables[0]


def test_arrow_engine_leaves_pandas_unimported(tmp_path, make_rt):
    """The arrow engine's producer (and its empty partitions' placeholders) never imports pandas:
    pyarrow's ``Schema.empty_table()`` did (through ``pa.array``'s check for pandas objects), ~0.3 s
    of CPU in each worker's first producer task. One worker runs every task, so the consumers see
    what the producers imported."""
    import functools

    from smallpond.logical.node import ArrowComputeNode

    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.table({"k": [1, 1, 4], "v": ["a", "b", "c"]}), path)
    flag = str(tmp_path / "pandas.txt")
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([path]))
    shuffled = ShuffleNode(ctx, (src,), 3, "k % 3", dimension="m", engine_type="arrow")  # 0 and 2 get placeholders
    node = ArrowComputeNode(ctx, (shuffled,), process_func=functools.partial(_pandas_loaded, flag))
    run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    seen = open(flag).read().split()
    assert len(seen) == 3 and set(seen) == {"False"}, f"pandas imported in the worker: {seen}"


def _bytes_read() -> int:
    """Bytes this process has read with read calls so far (``rchar`` of /proc/self/io)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_arrow_engine_reads_its_input_through_a_memory_map(tmp_path):
    """The arrow engine's reader maps its input files: a column chunk is decoded where the file
    lies in the page cache, not first copied into a buffer by read calls (for an uncompressed
    chunk, a second copy of its data; for a row group two producers split, paid by both)."""
    from smallpond.execution.ops.partition_arrow import _arrow_row_group_reader

    path = str(tmp_path / "records.parquet")
    n = 200_000
    payload = pa.FixedSizeBinaryArray.from_buffers(pa.binary(40), n, [None, pa.py_buffer(os.urandom(40 * n))])
    table = pa.table({"id": pa.array(range(n), pa.int64()), "payload": payload})
    pq.write_table(table, path, compression="none", use_dictionary=False, row_group_size=50_000)
    size = os.path.getsize(path)
    assert size > 9_000_000
    ds = ParquetDataSet([path])
    before = _bytes_read()
    reader = _arrow_row_group_reader(ds)
    batches = list(reader.batches(64 << 20))
    read = _bytes_read() - before
    assert pa.Table.from_batches([b for t in batches for b in t.to_batches()]).equals(table)
    assert read < size // 10, f"read {read} of the file's {size} bytes with read calls"


@_NEEDS_ROUTE
def test_the_duckdb_engine_writes_a_large_input_the_arrow_way(parquet_files, make_rt, tmp_path, monkeypatch):
    """From ARROW_WRITER_MIN_BYTES of input (here lowered to 1 byte) a default-engine hash partition
    is written the arrow way (pyarrow writes the files), under the names DuckDB's COPY gives them
    (``{output_filename}-{k}.0.parquet``, one per partition and producer): the same rows in the
    same partitions and files. A column pyarrow would not give DuckDB's type (nanosecond
    timestamps), or a row group size asked for, keeps DuckDB's COPY. (Without the task cache,
    which would give the second job the first one's files.)"""

    def build(paths, **kw):
        def make(ctx):
            return HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(paths)),), 4, ["key"], **kw)

        return make

    ctx = Context()
    node = build(parquet_files)(ctx)
    plain_ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=2)
    plain = _partitions(plain_ep, node)
    assert _writers(plain_ep, node) == {"DuckDB"}
    plain_names = _partition_files(plain_ep, node)
    assert all(re.fullmatch(r"HashPartitionNode\.\d+-\d+-\d+(\.0|-empty)\.parquet", n) for ns in plain_names for n in ns)

    monkeypatch.setenv("SP_TEST_ARROW_WRITER_MIN_BYTES", "1")
    ctx = Context()
    node = build(parquet_files)(ctx)
    ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=2)
    assert [sorted(r["id"] for r in p) for p in _partitions(ep, node)] == [sorted(r["id"] for r in p) for p in plain]
    assert _writers(ep, node) == {"parquet-cpp-arrow"}  # the arrow way
    assert _partition_files(ep, node) == plain_names  # under the COPY's names
    assert _row_groups(ep, node) == _row_groups(plain_ep, node)  # (an empty partition's placeholder: none)

    ns_file = str(tmp_path / "ns.parquet")
    table = pq.read_table(parquet_files[0])
    pq.write_table(table.append_column("at", pa.array([1_000_000_007] * table.num_rows, pa.timestamp("ns"))), ns_file)
    ctx = Context()
    node = build([ns_file])(ctx)
    ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=2)
    assert _writers(ep, node) == {"DuckDB"}

    # a row group size asked for is kept by DuckDB's COPY
    ctx = Context()
    node = build(parquet_files, parquet_row_group_size=4)(ctx)
    ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=2)
    assert _writers(ep, node) == {"DuckDB"}


def _done_rows(rt, prefix="HashPartitionTask"):
    import json

    with open(os.path.join(rt.log_root, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return [e.get("rows") for e in events if e.get("ev") == "done" and str(e.get("key", "")).startswith(prefix)]


@_NEEDS_ROUTE
def test_the_duckdb_engine_written_the_arrow_way_writes_the_files_its_copy_would(tmp_path, make_rt, monkeypatch):
    """A large input written the arrow way by the default engine gives files that read back as its
    COPY's do, by pyarrow too: only the task's key-value metadata (a pandas file's ``pandas`` entry
    made ``to_pandas`` take ``rk`` for the index, and lose it; an earlier partition's keys named
    other partitions), no Arrow schema (``string``, not ``large_string``; time zones as UTC), and
    the rows it wrote counted (progress bars, report). Into more than ARROW_WRITER_MAX_PARTITIONS
    partitions the COPY stays (a file held open per partition: 1,000 failed under 1,024 fds)."""
    import pandas as pd

    path = str(tmp_path / "in.parquet")
    frame = pd.DataFrame(
        {"id": range(60), "v": [f"x{i}" for i in range(60)]}, index=pd.Index([f"r{i}" for i in range(60)], name="rk")
    )
    table = pa.Table.from_pandas(frame)
    table = table.append_column("ls", pa.array([f"l{i % 7}" for i in range(60)], pa.large_string()))
    table = table.append_column(
        "at", pa.array([1_600_000_000_000_000 + i for i in range(60)], pa.timestamp("us", tz="Europe/Paris"))
    )
    table = table.replace_schema_metadata({**table.schema.metadata, b"SMALLPOND:old": b"7"})
    pq.write_table(table, path)
    monkeypatch.setenv("SP_TEST_ARROW_WRITER_MIN_BYTES", "1")

    def run(n):
        ctx = Context()
        node = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), n, ["id"], num_producers=1)
        rt = make_rt(task_cache="off")
        ep = run_job(LogicalPlan(ctx, node), rt, num_workers=1)
        return ep, node, rt

    ep, node, rt = run(4)
    assert _writers(ep, node) == {"parquet-cpp-arrow"}  # the arrow way
    files = [
        f
        for t in ep.tasks.values()
        if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask)
        for f in ep.results[t.key].resolved_paths
    ]
    for f in files:
        schema = pq.read_schema(f)
        keys = set(schema.metadata)
        assert b"pandas" not in keys and b"SMALLPOND:old" not in keys and b"ARROW:schema" not in keys, keys
        assert b"SMALLPOND:__data_partition__" in keys
        assert schema.field("ls").type == pa.string() and schema.field("rk").type == pa.string()
        assert schema.field("at").type == pa.timestamp("us", tz="UTC")
        assert "rk" in pq.read_table(f).to_pandas().columns
    assert sorted(r["id"] for f in files for r in pq.read_table(f).to_pylist()) == list(range(60))
    assert _done_rows(rt) == [60]

    ep, node, _ = run(65)
    assert _writers(ep, node) == {"DuckDB"}


@_NEEDS_ROUTE
def test_the_duckdb_engine_written_the_arrow_way_stores_decimals_as_its_copy_does(tmp_path, make_rt, monkeypatch):
    """Decimals of up to 18 digits are stored as the COPY stores them, INT32 (to 9 digits) or INT64,
    where pyarrow can (``store_decimal_as_integer``); it wrote fixed-length bytes. Where it cannot
    (pyarrow 17 and 18), such an input keeps the COPY. A wider decimal is fixed-length bytes either
    way (16 bytes from DuckDB, as few as the precision needs from pyarrow). Same values."""
    from decimal import Decimal

    from smallpond.execution.ops.partition_arrow import writer_stores_decimals_as_integers

    path = str(tmp_path / "in.parquet")
    n = 60
    decimals = {"d4": (4, 2), "d12": (12, 2), "d18": (18, 3), "d30": (30, 2)}
    table = pa.table(
        {
            "id": list(range(n)),
            **{c: pa.array([Decimal(i) / 4 for i in range(n)], pa.decimal128(*ps)) for c, ps in decimals.items()},
        }
    )
    pq.write_table(table, path)

    def run(route: bool):
        monkeypatch.setenv("SP_TEST_ARROW_WRITER_MIN_BYTES", "1" if route else str(1 << 50))
        ctx = Context()
        node = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 3, ["id"], num_producers=1)
        ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=1)
        files = [
            p
            for t in ep.tasks.values()
            if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask)
            for p in ep.results[t.key].resolved_paths
        ]
        physical = {
            (c, pq.ParquetFile(f).schema.column(pq.ParquetFile(f).schema.names.index(c)).physical_type)
            for f in files
            for c in decimals
        }
        rows = sorted(
            (r["id"], *(r[c] for c in decimals)) for f in files for r in pq.read_table(f, partitioning=None).to_pylist()
        )
        return _writers(ep, node), dict(physical), rows

    copy_writers, copy_physical, copy_rows = run(False)
    writers, physical, rows = run(True)
    assert copy_writers == {"DuckDB"}
    assert writers == ({"parquet-cpp-arrow"} if writer_stores_decimals_as_integers() else {"DuckDB"})
    assert copy_physical == {"d4": "INT32", "d12": "INT64", "d18": "INT64", "d30": "FIXED_LEN_BYTE_ARRAY"}
    assert physical == copy_physical
    assert rows == copy_rows == sorted((r["id"], *(r[c] for c in decimals)) for r in table.to_pylist())


@_NEEDS_ROUTE
@pytest.mark.parametrize("skewed", [False, True])
def test_the_duckdb_engine_written_the_arrow_way_keeps_to_its_memory_limit(tmp_path, make_rt, skewed):
    """Under ``enforce_memory_limit`` a default-engine hash partition of an input larger than its
    memory passes in its first attempt, as DuckDB's COPY does: read through a memory map, every
    page of the input it touched counted in the worker's resident memory (a 620 MB input at 256 MB
    was stopped twice and passed at 1 GB; such a job reads without a map). Here 240 MB of input at
    128 MB (at the real threshold). The row groups are cut at the COPY's ROW_GROUP_SIZE_BYTES
    (128 MB / (8 x 8 partitions) = 2 MB of 312-byte rows), not at 122,880 rows (300 MB buffered).
    ``skewed``: one partition takes all rows but one in 1,000, so the others keep a few rows of
    every batch (never a row group's worth): the batches they are slices of must not all stay in
    memory (they did, 240 MB, until the buffered rows were copied out of them)."""
    import numpy as np

    from smallpond.execution.ops.duckdb import writer_row_group_bytes

    path = str(tmp_path / "big.parquet")
    n = 800_000
    payload = np.random.default_rng(1).integers(0, 256, size=n * 300, dtype=np.uint8)
    offsets = pa.py_buffer(np.arange(0, (n + 1) * 300, 300, dtype=np.int32))
    column = pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(payload)])
    keys = np.arange(n) % 97
    if skewed:
        keys = np.where(np.arange(n) % 1000 == 0, keys, 0)
    pq.write_table(pa.table({"k": keys, "payload": column}), path, compression="none", row_group_size=122880)
    ctx = Context()
    node = HashPartitionNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 8, ["k"], num_producers=1, memory_limit=128 << 20
    )
    rt = make_rt(task_cache="off", enforce_memory_limit=True)
    ep = run_job(LogicalPlan(ctx, node), rt, num_workers=1)
    assert _writers(ep, node) == {"parquet-cpp-arrow"}  # the arrow way
    assert _done_rows(rt) == [n]
    with open(os.path.join(rt.log_root, "events.jsonl")) as f:
        assert '"OutOfMemory' not in f.read()

    class _Task:  # (what writer_row_group_bytes asks of a task)
        memory_limit = 128 << 20

    most = -(-writer_row_group_bytes(_Task(), 8) // 312) + 1  # rows of 8 + 300 + 4 bytes
    groups = _row_groups(ep, node)
    assert groups and all(r <= most for rows in groups.values() for r in rows), (most, groups)
    assert any(len(rows) > 1 for rows in groups.values())


@_NEEDS_ROUTE
def test_the_duckdb_engine_written_the_arrow_way_cuts_the_row_groups_its_copy_would(tmp_path, make_rt, monkeypatch):
    """The files of the arrow way have the COPY's shape: one ``{output_filename}-{k}.0.parquet`` per
    partition and producer, row groups of 122,880 rows (the last smaller) holding the COPY's rows,
    with input row groups (50,000 rows) that end anywhere in them; the same files with 1 and 2
    workers. (Before, row groups were cut whenever the writers' buffers together reached 32 MB.)"""
    import hashlib

    import numpy as np

    path = str(tmp_path / "in.parquet")
    n = 600_000
    table = pa.table({"id": np.arange(n), "s": pa.array([f"v{i % 1000:04d}" for i in range(n)])})
    pq.write_table(table, path, row_group_size=50_000)

    def run(route: bool, workers: int = 2):
        monkeypatch.setenv("SP_TEST_ARROW_WRITER_MIN_BYTES", "1" if route else str(1 << 50))
        ctx = Context()
        node = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), 2, ["id"], num_producers=2)
        ep = run_job(LogicalPlan(ctx, node), make_rt(task_cache="off"), num_workers=workers)
        return ep, node

    copy_ep, copy_node = run(False)
    ep, node = run(True)
    assert _writers(copy_ep, copy_node) == {"DuckDB"} and _writers(ep, node) == {"parquet-cpp-arrow"}
    groups = _row_groups(ep, node)
    assert groups == _row_groups(copy_ep, copy_node)
    assert all(rows[:-1] == [122880] * (len(rows) - 1) and 0 < rows[-1] <= 122880 for rows in groups.values()), groups
    assert sum(len(rows) for rows in groups.values()) == 8, groups  # 4 files of ~150,000 rows
    assert _partitions(ep, node) == _partitions(copy_ep, copy_node)  # the same rows, in the same order

    def digest(ep, node):
        return {
            os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for t in ep.tasks.values()
            if t.node_id == int(node.id) and isinstance(t, PartitionConsumerTask)
            for p in ep.results[t.key].resolved_paths
        }

    assert digest(*run(True, workers=1)) == digest(ep, node)


@pytest.mark.skipif(ARROW_ROUTE, reason="pyarrow 17+ takes the arrow route (the tests above)")
def test_pyarrow_16_keeps_the_copy():
    # pyarrow 16 cannot leave the Arrow schema out and keep the key-value metadata: written the
    # arrow way, the duckdb engine's files would read back with pyarrow's types (large_string, a
    # time zone), not the COPY's; so the route is not taken however large the input
    from smallpond.execution.ops.partition_arrow import _arrow_keeps_types

    assert not _arrow_keeps_types(pa.schema([("id", pa.int64()), ("s", pa.string())]))


def _x_or_xy(runtime_ctx, tables):
    """An ArrowComputeNode without output_schema: {x} for the partition of i < 5, else {x, y}."""
    x = tables[0].column("i")
    if x[0].as_py() < 5:
        return pa.table({"x": x})
    return pa.table({"x": x, "y": pa.array([f"y{v}" for v in x.to_pylist()])})


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_sql_after_a_partition_of_python_outputs_of_other_columns_reads_them_all(tmp_path, make_rt, engine):
    """Each producer of the hash partition read one partition of a Python node that typed its own
    output ({x} in one, {x, y} in the other); a consumer holds files of both, which SQL read by the
    first file's columns: y was lost in silence. Such files are now read by name."""
    from smallpond.logical.node import ArrowComputeNode, SqlEngineNode

    pq.write_table(pa.table({"i": list(range(10))}), str(tmp_path / "in.parquet"))
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(tmp_path / "in.parquet")]))
    parts = DataSetPartitionNode(ctx, (src,), 2, partition_by_rows=True)
    mapped = ArrowComputeNode(ctx, (parts,), process_func=_x_or_xy)
    hashed = HashPartitionNode(ctx, (mapped,), npartitions=2, hash_columns=["x"], engine_type=engine)
    sql = SqlEngineNode(ctx, (hashed,), "select * from {0}")
    plan = run_job(LogicalPlan(ctx, sql), make_rt(), num_workers=2)
    rows = []
    for t in plan.tasks.values():
        if t.node_id == int(sql.id):
            for path in plan.results[t.key].resolved_paths:
                rows.extend(pq.read_table(path).to_pylist())
    assert sorted((r["x"], r.get("y", "lost")) for r in rows) == [(i, f"y{i}" if i >= 5 else None) for i in range(10)]
