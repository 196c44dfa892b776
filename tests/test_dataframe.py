"""DataFrame API: every method checked against plain DuckDB / pyarrow on the same input,
over every source kind (Parquet, CSV, JSON, pandas, Arrow, items)."""

from __future__ import annotations

import json
import os
import sys

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import ParameterError, TaskError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same 1000 rows (a, b, s) as 10 Parquet files, 4 CSV files and 2 JSON files."""
    d = tmp_path_factory.mktemp("df_data")
    table = pa.table({"a": list(range(1000)), "b": [i % 7 for i in range(1000)], "s": [f"k{i % 13}" for i in range(1000)]})
    pq_paths, csv_paths, json_paths = [], [], []
    for i in range(10):
        p = str(d / f"part{i}.parquet")
        pq.write_table(table.slice(i * 100, 100), p)
        pq_paths.append(p)
    for i in range(4):
        p = str(d / f"part{i}.csv")
        table.slice(i * 250, 250).to_pandas().to_csv(p, index=False, header=False)
        csv_paths.append(p)
    for i in range(2):
        p = str(d / f"part{i}.json")
        with open(p, "w") as f:
            for row in table.slice(i * 500, 500).to_pylist():
                f.write(json.dumps(row) + "\n")
        json_paths.append(p)
    return {"table": table, "dir": str(d), "parquet": pq_paths, "csv": csv_paths, "json": json_paths}


SCHEMA = {"a": "bigint", "b": "bigint", "s": "varchar"}
KINDS = ["parquet", "csv", "json", "pandas", "arrow", "items"]


def source(sp, files, kind):
    t = files["table"]
    if kind == "parquet":
        return sp.read_parquet(os.path.join(files["dir"], "*.parquet"))
    if kind == "csv":
        return sp.read_csv(os.path.join(files["dir"], "*.csv"), schema=SCHEMA)
    if kind == "json":
        return sp.read_json(os.path.join(files["dir"], "*.json"), schema=SCHEMA)
    if kind == "pandas":
        return sp.from_pandas(t.to_pandas())
    if kind == "arrow":
        return sp.from_arrow(t)
    return sp.from_items(t.to_pylist())


def duck(sql, table):
    con = duckdb.connect()
    con.register("t", table)
    return con.sql(sql).to_arrow_table()


def rows(table, *cols):
    d = table.to_pydict()
    cols = cols or tuple(d)
    return sorted(zip(*(d[c] for c in cols)))


@pytest.mark.parametrize("kind", KINDS)
def test_count_and_to_arrow_every_source(sp, files, kind):
    df = source(sp, files, kind)
    assert df.count() == 1000
    assert rows(df.to_arrow(), "a", "b", "s") == rows(files["table"], "a", "b", "s")


@pytest.mark.parametrize("how", [{"hash_by": "a"}, {"hash_by": ["a", "b"]}, {"by_rows": True}, {}])
def test_count_after_a_repartition_of_several_files(sp, files, how):
    # a hash or value repartition's partitions travel in a compact form; each counts its rows
    df = source(sp, files, "parquet").repartition(4, **how)
    assert df.count() == 1000


@pytest.mark.parametrize("kind", KINDS)
def test_python_map_filter_on_every_source(sp, files, kind):
    df = source(sp, files, kind)
    mapped = df.map(lambda r: {"c": r["a"] + r["b"]}).to_arrow()
    assert sorted(mapped.column("c").to_pylist()) == sorted(
        x[0] for x in rows(duck("select a + b as c from t", files["table"]), "c")
    )
    kept = df.filter(lambda r: r["b"] == 3).to_arrow()
    assert rows(kept, "a") == rows(duck("select a from t where b = 3", files["table"]), "a")


def test_sql_map_filter_flat_map(sp, files):
    df = source(sp, files, "parquet")
    assert rows(df.map("a + b as c").to_arrow()) == rows(duck("select a + b as c from t", files["table"]))
    assert rows(df.filter("a > 990").to_arrow()) == rows(duck("select * from t where a > 990", files["table"]))
    fm = df.filter("a < 3").flat_map("unnest(array[a, b]) as c").to_arrow()
    assert rows(fm) == rows(duck("select unnest(array[a, b]) as c from t where a < 3", files["table"]))


def test_fused_filter_then_map(sp, files):
    df = source(sp, files, "parquet").filter("b = 1").map("a * 2 as d")
    text = df.explain()
    assert "== Logical plan ==" in text and "== Optimized plan ==" in text
    optimized = text.split("== Optimized plan ==")[1]
    assert optimized.count("SqlEngineNode") == 1  # filter and map run as one query
    assert rows(df.to_arrow()) == rows(duck("select a * 2 as d from t where b = 1", files["table"]))


def test_python_flat_map_and_schema(sp):
    df = sp.from_items([{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}])
    out = df.flat_map(lambda r: [{"c": r["a"]}, {"c": r["b"]}]).take_all()
    assert [r["c"] for r in out] == [1, 4, 2, 5, 3, 6]
    schema = pa.schema([("c", pa.int64())])
    out = df.map(lambda r: {"c": None if r["a"] == 2 else r["a"]}, schema=schema).to_arrow()
    assert out.schema.field("c").type == pa.int64()
    assert out.column("c").to_pylist() == [1, None, 3]


def test_map_schema_inference_stable_across_batches(sp):
    # the first batch only has None: the type is taken from a later batch
    items = [{"x": i} for i in range(30)]
    df = sp.from_items(items).map_batches(lambda t: t, batch_size=10)
    out = df.map(lambda r: {"y": None if r["x"] < 10 else r["x"]}).to_arrow()
    assert out.column("y").type == pa.int64()
    assert sorted(v for v in out.column("y").to_pylist() if v is not None) == list(range(10, 30))
    assert out.column("y").null_count == 10


ROWS30 = [{"i": i} for i in range(30)]  # with streaming_batch_size=10 / batch_size=10: three batches


def _task_fails(df, *fragments):
    with pytest.raises(TaskError) as e:
        df.to_arrow()
    assert not e.value.retryable
    text = str(e.value)
    for f in fragments:
        assert f in text, text
    return text


def test_map_value_a_later_batch_cannot_hold_fails_instead_of_truncating(sp):
    df = sp.from_items(ROWS30)

    def later_float(r):
        return {"i": r["i"], "x": 1 if r["i"] < 20 else 1.5}

    # the first batch fixed x as int64 and its file is written: 1.5 is not truncated to 1
    _task_fails(df.map(later_float, streaming_batch_size=10), "'x'", "int64", "double", "1.5", "schema=")
    _task_fails(df.map(lambda r: {"x": [1] if r["i"] < 20 else [2.7]}, streaming_batch_size=10), "'x'", "2.7", "schema=")
    _task_fails(df.map(lambda r: {"x": 1 if r["i"] < 20 else "a"}, streaming_batch_size=10), "'x'", "string", "'a'")
    # with schema= the values are kept
    schema = pa.schema([("i", pa.int64()), ("x", pa.float64())])
    out = df.map(later_float, schema=schema, streaming_batch_size=10).to_arrow()
    assert out.column("x").to_pylist() == [1.0] * 20 + [1.5] * 10
    # schema= never truncates either
    _task_fails(df.map(lambda r: {"x": 1.5}, schema=pa.schema([("x", pa.int64())])), "'x'", "1.5", "schema=")


def test_map_schema_holds_values_inside_maps_lists_and_structs(sp, tmp_path):
    """pyarrow's conversion to a declared nested type truncates 1.5 to 1 in a map<string, int64> (and
    drops a struct key it lacks): a value inside one is held to its type as a top-level value is."""
    path = str(tmp_path / "rows.parquet")
    pq.write_table(pa.table({"i": list(range(30))}), path)
    df = sp.read_parquet(path)
    ints = pa.map_(pa.string(), pa.int64())
    for op, wrap in (("map", lambda row: row), ("flat_map", lambda row: [row])):
        for value in ({"x": 1.5}, [("x", 1.5)]):  # a map as a dict or as (key, item) pairs
            bad = getattr(df, op)(lambda r, v=value, w=wrap: w({"m": v}), schema=pa.schema([("m", ints)]))
            _task_fails(bad, "'m'", "map<string, int64>", "map<string, double>", "1.5", f"schema= of {op}()")
    # a later batch, after whole values, is held to the type too
    later = df.map(lambda r: {"m": {"x": 1 if r["i"] < 20 else 1.5}}, schema=pa.schema([("m", ints)]), streaming_batch_size=10)
    _task_fails(later, "'m'", "1.5", "schema=")
    nested = [
        (pa.list_(pa.int64()), [1, 1.5]),
        (pa.struct([("v", pa.int64())]), {"v": 1.5}),
        (pa.map_(pa.string(), pa.list_(pa.int64())), {"x": [1.5]}),
        (pa.list_(ints), [{"x": 1.5}]),
        (pa.struct([("m", ints)]), {"m": {"x": 1.5}}),
    ]
    for type_, value in nested:
        _task_fails(df.map(lambda r, v=value: {"c": v}, schema=pa.schema([("c", type_)])), "'c'", str(type_), "1.5")
    # a struct key the schema lacks is not dropped
    struct = pa.schema([("s", pa.struct([("v", pa.int64())]))])
    _task_fails(df.map(lambda r: {"s": {"v": 1, "w": 2.5}}, schema=struct), "'s'", "'w': 2.5", "schema=")
    # whole values (2.0) convert, as in a top-level int64 column; nulls stay nulls
    out = df.map(lambda r: {"m": {"x": 2.0, "y": None} if r["i"] else None}, schema=pa.schema([("m", ints)])).to_arrow()
    assert out.schema.field("m").type == ints
    assert out.column("m").to_pylist() == [None] + [[("x", 2), ("y", None)]] * 29
    out = df.map(lambda r: {"s": {"v": 3.0} if r["i"] else {}}, schema=struct).to_arrow()
    assert out.column("s").to_pylist() == [{"v": None}] + [{"v": 3}] * 29
    # map_batches: a table of map<string, double> is held to a declared map<string, int64>
    doubles = pa.array([[("x", 1.5)]], pa.map_(pa.string(), pa.float64()))
    halves = df.map_batches(lambda t: pa.table({"m": pa.repeat(doubles[0], t.num_rows)}), schema=pa.schema([("m", ints)]))
    _task_fails(halves, "'m'", "map<string, int64>", "1.5", "schema=")


def test_python_map_passes_values_through_with_their_types(sp, tmp_path):
    """A value a Python map or flat_map passes through keeps its type: inference from Python values
    cut a nanosecond timestamp to microseconds (a 5 ns duration became 0), typed a decimal(12, 2)
    by each batch's widest value (a later batch then failed), and could not hold a uint64 above
    2**63 or a map. A key whose values change kind is still typed from its values."""
    import decimal

    n = 10
    table = pa.table(
        {
            "ts": pa.array([1_700_000_000_123_456_789 + i for i in range(n)], pa.timestamp("ns")),
            "dur": pa.array([5 + i for i in range(n)], pa.duration("ns")),
            "dec": pa.array([decimal.Decimal(10 ** (i % 6)) / 100 for i in range(n)], pa.decimal128(12, 2)),
            "u64": pa.array([2**63 + i for i in range(n)], pa.uint64()),
            "m": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            "i8": pa.array(range(n), pa.int8()),
        }
    )
    path = str(tmp_path / "typed.parquet")
    pq.write_table(table, path)
    df = sp.read_parquet(path)
    for out in (df.map(lambda r: r, streaming_batch_size=3), df.flat_map(lambda r: [r], streaming_batch_size=3)):
        got = out.to_arrow()
        for name in ("ts", "dur", "dec", "u64"):
            assert got.schema.field(name).type == table.schema.field(name).type, name
            assert got.column(name).equals(table.column(name)), name
        assert pa.types.is_map(got.schema.field("m").type)
        assert got.column("m").to_pylist() == table.column("m").to_pylist()
        assert got.schema.field("i8").type == pa.int64()  # as inference types it: a later batch may grow
    # schema= of nanoseconds keeps them
    got = df.map(lambda r: {"ts": r["ts"], "dur": r["dur"]}, schema=table.select(["ts", "dur"]).schema).to_arrow()
    assert got.column("ts").equals(table.column("ts")) and got.column("dur").equals(table.column("dur"))
    # values of another kind under an input column's name are typed from the values
    got = df.map(lambda r: {"i8": r["i8"] / 2, "dec": str(r["dec"]), "u64": r["i8"] * 1000}, streaming_batch_size=3).to_arrow()
    assert [got.schema.field(c).type for c in ("i8", "dec", "u64")] == [pa.float64(), pa.string(), pa.int64()]
    assert got.column("i8").to_pylist() == [i / 2 for i in range(n)]


def test_python_functions_returning_rows_without_columns_fail(sp, tmp_path):
    """Rows without columns cannot be written to Parquet: count() was 0 for 30 rows."""
    path = str(tmp_path / "ids.parquet")
    pq.write_table(pa.table({"id": list(range(30))}), path)
    df = sp.read_parquet(path)
    _task_fails(df.map(lambda r: {}), "30 row(s) with no columns", "map function")
    _task_fails(df.flat_map(lambda r: [{}]), "30 row(s) with no columns", "flat_map function")
    _task_fails(df.map_batches(lambda t: t.select([])), "30 row(s) with no columns", "map_batches()")
    assert df.flat_map(lambda r: []).count() == 0  # no rows at all is fine


def test_map_integers_after_floats_are_kept_as_floats(sp):
    out = sp.from_items(ROWS30).map(lambda r: {"x": 0.5 if r["i"] < 10 else r["i"]}, streaming_batch_size=10).to_arrow()
    assert out.column("x").type == pa.float64()
    assert out.column("x").to_pylist() == [0.5] * 10 + [float(i) for i in range(10, 30)]


def test_map_keys_not_in_the_first_row(sp):
    df = sp.from_items(ROWS30)
    # a key first returned by a later row of the first batch is a column, null in the rows before
    out = df.map(lambda r: {"x": r["i"]} if r["i"] < 5 else {"x": r["i"], "y": -r["i"]}, streaming_batch_size=10)
    out = out.to_arrow()
    assert out.column_names == ["x", "y"]
    assert out.column("y").to_pylist() == [None] * 5 + [-i for i in range(5, 30)]

    # a key first returned in a later batch (the first batch's file has no such column) fails, naming it
    def later_key(r):
        return {"x": 1} if r["i"] < 20 else {"x": 1, "y": 2}

    _task_fails(df.map(later_key, streaming_batch_size=10), "'y'", "schema=")
    _task_fails(df.flat_map(lambda r: [later_key(r)], streaming_batch_size=10), "'y'", "flat_map()")
    out = df.map(later_key, schema=pa.schema([("x", pa.int64()), ("y", pa.int64())]), streaming_batch_size=10).to_arrow()
    assert out.column("y").to_pylist() == [None] * 20 + [2] * 10
    # a key schema= lacks is not dropped
    _task_fails(df.map(later_key, schema=pa.schema([("x", pa.int64())])), "'y'", "schema=")
    # a key missing from a later batch's rows is null there, as in any row
    out = df.map(lambda r: {"x": 1, "y": 2} if r["i"] < 20 else {"x": 1}, streaming_batch_size=10).to_arrow()
    assert out.column("y").to_pylist() == [2] * 20 + [None] * 10


def test_map_batches_output_that_changes_between_batches(sp):
    df = sp.from_items(ROWS30)

    def first(t):
        return t.column("i")[0].as_py()

    def add_y_later(t):
        return t if first(t) < 20 else t.append_column("y", pa.array([7] * t.num_rows))

    def drop_i_later(t):
        return t.append_column("y", pa.array([7] * t.num_rows)).select(["y"] if first(t) >= 20 else ["i", "y"])

    def halves_later(t):
        return t if first(t) < 20 else pa.table({"i": pa.compute.add(t.column("i").cast(pa.float64()), 0.5)})

    # a column added or dropped by a later batch fails, naming it
    _task_fails(df.map_batches(add_y_later, batch_size=10), "'y'", "same columns")
    _task_fails(df.map_batches(drop_i_later, batch_size=10), "'i'", "missing", "same columns")
    # values that do not fit the first batch's type fail; with schema= they are kept
    _task_fails(df.map_batches(halves_later, batch_size=10), "'i'", "int64", "20.5", "schema=")
    out = df.map_batches(halves_later, batch_size=10, schema=pa.schema([("i", pa.float64())])).to_arrow()
    assert out.column("i").to_pylist() == list(range(20)) + [i + 0.5 for i in range(20, 30)]
    assert df.map_batches(halves_later, batch_size=10, schema=pa.schema([("i", pa.float64())])).schema.names == ["i"]
    # a cast that keeps every value is done: int32 into the first batch's int64
    out = df.map_batches(lambda t: t if first(t) < 10 else t.cast(pa.schema([("i", pa.int32())])), batch_size=10)
    assert out.to_arrow().column("i").type == pa.int64()
    assert out.to_arrow().column("i").to_pylist() == list(range(30))


def test_map_batches_exact_sizes_across_files(sp, files):
    df = source(sp, files, "parquet")
    out = df.map_batches(lambda t: pa.table({"num_rows": [t.num_rows]}), batch_size=350).take_all()
    assert [r["num_rows"] for r in out] == [350, 350, 300]


@pytest.mark.parametrize("kind", ["csv", "json", "pandas"])
def test_map_batches_non_parquet(sp, files, kind):
    out = source(sp, files, kind).map_batches(lambda t: pa.table({"n": [t.num_rows]}), batch_size=400).take_all()
    assert sum(r["n"] for r in out) == 1000


def test_repartition_by_files_and_rows(sp, files):
    df = source(sp, files, "parquet")
    by_files = df.repartition(4)
    assert by_files.num_partitions == 4
    assert by_files.count() == 1000
    sizes = [ds.num_rows for ds in by_files._compute()]
    assert sizes == [300, 300, 200, 200]
    by_rows = df.repartition(3, by_rows=True)
    assert [ds.num_rows for ds in by_rows._compute()] == [334, 333, 333]
    assert rows(by_rows.to_arrow()) == rows(files["table"])


def test_repartition_hash_by(sp, files):
    df = source(sp, files, "csv").repartition(5, hash_by="s")
    parts = df._compute()
    assert len(parts) == 5
    seen = {}
    for i, ds in enumerate(parts):
        t = ds.to_arrow_table()
        assert "__data_partition__" not in t.column_names  # no extra column in the DataFrame API
        for k in set(t.column("s").to_pylist()):
            assert seen.setdefault(k, i) == i  # one key, one partition
    assert rows(df.to_arrow()) == rows(files["table"])


def test_repartition_by_expression(sp):
    df = sp.from_items(list(range(100))).repartition(10, by="item % 10")
    out = sp.partial_sql("select min(item % 10) as min, max(item % 10) as max from {0}", df).take_all()
    assert out == [{"min": i, "max": i} for i in range(10)]


def test_reading_a_column_the_files_lack_is_an_error(sp, tmp_path):
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), path)
    # the source's task finds it, whoever reads the frame after (pyarrow would leave the column out)
    with pytest.raises(TaskError, match=r"columns=\['nope'\]: column 'nope' not found in '.*x\.parquet'"):
        sp.read_parquet(path, columns=["nope"]).to_arrow()
    with pytest.raises(TaskError, match="nope"):
        sp.partial_sql("select * from {0}", sp.read_parquet(path, columns=["nope"])).to_arrow()


def test_repartition_key_out_of_range(tmp_path):
    with smallpond.init(data_root=str(tmp_path)) as s:
        df = s.from_items(list(range(100))).repartition(10, by="item % 11")
        with pytest.raises(TaskError, match="partition key 10 is out of range 0-9"):
            df.to_arrow()


def test_repartition_by_a_key_that_is_not_whole_fails_at_the_repartition_line(sp):
    """``by="item / 10"`` is a DOUBLE in DuckDB: 0.5 names no partition (it went to partition 0,
    rounded); the error names the value and the line of the repartition call. Whole values of a
    float key name their partitions."""
    items = sp.from_items([0, 10, 5])
    df = items.repartition(2, by="item / 10")  # the line the error names
    line = sys._getframe().f_lineno - 1
    with pytest.raises(TaskError) as info:
        df.to_arrow()
    assert "the shuffle key 'item / 10' is 0.5 in the data, which names no partition" in str(info.value)
    assert f"{__file__}:{line}" in str(info.value)
    whole = items.filter("item % 10 = 0").repartition(2, by="item / 10")
    assert sp.partial_sql("select list(item) as items from {0}", whole).take_all() == [{"items": [0]}, {"items": [10]}]


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("by", ["k", "k + 0"])
def test_repartition_by_a_null_key_names_null(sp, engine, by):
    """A row whose key is NULL has no partition: the error says NULL (DuckDB's engine saw a folder
    named __HIVE_DEFAULT_PARTITION__, the Arrow engine NaN or a masked value)."""
    df = sp.from_items([{"k": 1}, {"k": None}]).repartition(3, by=by, engine_type=engine)
    with pytest.raises(TaskError, match="partition key NULL is out of range 0-2"):
        df.to_arrow()


def test_a_source_that_does_not_parse_names_its_file(sp, tmp_path):
    import duckdb

    path = tmp_path / "h.csv"
    path.write_text("a,b\n1,x\n")  # a header row: read_csv reads no header (as upstream)
    frame = sp.read_csv(str(path), schema={"a": "bigint", "b": "varchar"})
    line = sys._getframe().f_lineno - 1
    for read in (frame.take_all, lambda: frame.take(1)):
        # the file, and the frame with the line of the user's code that made it
        with pytest.raises(duckdb.ConversionException, match=f"reading {path}\n  for .*{__file__}:{line}"):
            read()


def test_from_items_of_mixed_types_is_a_parameter_error(sp):
    with pytest.raises(ParameterError, match="from_items: the items do not make a table"):
        sp.from_items([1, "a"])


def test_from_items_dicts_with_different_keys_keep_every_key(sp):
    # the keys the first dict lacked were dropped: [{'a': 1}, {'a': None}, {'a': 3}]
    got = sp.from_items([{"a": 1}, {"b": 2}, {"a": 3, "c": "x"}]).to_arrow()
    assert got.column_names == ["a", "b", "c"]
    assert got.to_pylist() == [
        {"a": 1, "b": None, "c": None},
        {"a": None, "b": 2, "c": None},
        {"a": 3, "b": None, "c": "x"},
    ]
    with pytest.raises(ParameterError, match="item 0 is a dict but item 1 is int 2"):
        sp.from_items([{"a": 1}, 2])


def test_from_items_types_columns_as_pyarrow_without_importing_pandas(tmp_path):
    """from_items of plain values (int, float, str, bool, bytes, dates, datetimes, None) gives the
    types pyarrow's from_pydict gives, and neither it nor the job computing it imports pandas in the
    user's process (~0.27 s of a small script's start; pyarrow's conversion imports it)."""
    import subprocess
    import sys

    code = f"""
import datetime, sys, smallpond
d = datetime.datetime(2024, 5, 6, 7, 8, 9)
items = [{{"i": 1, "f": 1.5, "s": "x", "b": True, "y": b"a", "d": d.date(), "t": d}}, {{"i": None, "s": None}}]
sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1)
table = sp.from_items(items).to_arrow()
scalars = sp.from_items([3, None, 4]).to_arrow()
print("pandas" in sys.modules)
import pyarrow as pa
want = pa.Table.from_pydict({{k: [it.get(k) for it in items] for k in items[0]}})
print(table.schema.equals(want.schema), table.to_pylist() == want.to_pylist(), scalars.column("item").to_pylist())
sp.shutdown()
"""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, SP_PROGRESS="0", PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["False", "True True [3, None, 4]"], out.stdout + out.stderr[-2000:]


def test_map_functions_must_return_rows(sp):
    df = sp.from_items([1, 2])
    with pytest.raises(TaskError, match="the map function .* must return a dict, got int 5"):
        df.map(lambda r: 5).take_all()
    with pytest.raises(TaskError, match=r"the flat_map function .* must return a list of dicts, got dict \{'a': 1\}"):
        df.flat_map(lambda r: {"a": 1}).take_all()
    # any iterable of dicts will do (upstream extends a list with the result)
    assert df.flat_map(lambda r: ({"x": r["item"]} for _ in range(2))).take_all() == [{"x": 1}, {"x": 1}, {"x": 2}, {"x": 2}]


@pytest.mark.parametrize("hash_by", ["k", "k * 2"])
def test_repartition_hash_by_a_key_typed_apart_in_two_files(sp, tmp_path, hash_by):
    # 1 in an int64 file and 1.0 in a double file are one key once the files are unioned, so
    # they must land in one partition: a GROUP BY per partition returns each key once
    a, b = str(tmp_path / "a_int.parquet"), str(tmp_path / "b_double.parquet")
    pq.write_table(pa.table({"k": pa.array(range(30), pa.int64()), "v": [1] * 30}), a)
    pq.write_table(pa.table({"k": pa.array([float(i) for i in range(30)], pa.float64()), "v": [1] * 30}), b)
    df = sp.read_parquet([a, b]).repartition(2, by_rows=True).repartition(8, hash_by=hash_by)
    got = sp.partial_sql("select k, sum(v) as s from {0} group by k", df).to_arrow()
    assert sorted(zip(got.column("k").to_pylist(), got.column("s").to_pylist())) == [(float(i), 2) for i in range(30)]


def test_repartition_both_by_and_hash_by(sp):
    with pytest.raises(ValueError):
        sp.from_items([1]).repartition(2, by="item", hash_by="item")


def test_random_shuffle(sp):
    df = sp.from_items(list(range(1000))).repartition(10, by_rows=True).random_shuffle()
    items = [r["item"] for r in df.take_all()]
    assert sorted(items) == list(range(1000))
    inversions = sum(1 for i in range(len(items)) for j in range(i + 1, len(items)) if items[i] > items[j])
    assert 200_000 < inversions < 300_000
    # works after a Python map too (upstream needed num_partitions there)
    shuffled = sp.from_items(list(range(50))).map(lambda r: {"x": r["item"]}).random_shuffle()
    assert sorted(r["x"] for r in shuffled.take_all()) == list(range(50))
    assert "__data_partition__" not in shuffled.to_arrow().column_names


def test_random_shuffle_output_name_holds_the_result_once(sp):
    # output_name went to both steps: output/<name> also held the partition step's files, so
    # every row was there twice; engine_type (the partition step's option) failed in the SQL step
    import glob

    df = sp.from_items(list(range(20))).repartition(2, by_rows=True)
    shuffled = df.random_shuffle(output_name="shuffled_once", engine_type="arrow")
    assert shuffled.count() == 20
    named = glob.glob(os.path.join(sp.runtime_ctx.output_root, "shuffled_once", "**", "*.parquet"), recursive=True)
    assert sorted(pq.read_table(named).column("item").to_pylist()) == list(range(20))
    assert shuffled.plan.input_deps[0].output_name is None and shuffled.plan.input_deps[0].engine_type == "arrow"


def test_partial_sort(sp, files):
    df = source(sp, files, "parquet").repartition(3, hash_by="b").partial_sort(["b", "a desc"])
    for ds in df._compute():
        t = ds.to_arrow_table().to_pylist()
        assert t == sorted(t, key=lambda r: (r["b"], -r["a"]))


def test_partial_sort_ties_broken_by_every_column(sp):
    """``"columns(*)"`` as the last item (what partial_sort's docs advise for a total order) orders
    rows with equal keys by every column, left to right, NULLs last as DuckDB puts them."""
    rows = [{"k": 1, "a": 2, "s": "y"}, {"k": 0, "a": None, "s": "x"}, {"k": 1, "a": 2, "s": "x"}, {"k": 1, "a": 1, "s": "z"}]
    got = sp.from_items(rows).partial_sort(["k", "columns(*)"]).take_all()
    assert got == [
        {"k": 0, "a": None, "s": "x"},
        {"k": 1, "a": 1, "s": "z"},
        {"k": 1, "a": 2, "s": "x"},
        {"k": 1, "a": 2, "s": "y"},
    ]


def test_limit_is_global(sp, files):
    df = source(sp, files, "parquet").repartition(10)
    assert df.limit(7).count() == 7
    # a limit stays global when more operations follow it
    assert df.limit(7).map("a + 1 as a1").count() == 7
    assert df.limit(7).filter("a >= 0").count() == 7
    assert sp.from_items(list(range(100))).repartition(10, by_rows=True).limit(2).count() == 2


def test_take_and_take_all(sp, files):
    df = source(sp, files, "parquet")
    assert df.take(2) == files["table"].slice(0, 2).to_pylist()
    assert df.take_all() == files["table"].to_pylist()
    assert sp.from_items([1, 2, 3]).take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]


def test_to_pandas_roundtrip(sp):
    pdf = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    out = sp.from_pandas(pdf).to_pandas()
    assert out.equals(pdf)
    assert sp.from_pandas(pdf).count() == 3


def test_from_pandas_is_a_snapshot_of_the_frame(sp):
    """The frame is lazy: a change to the pandas frame after from_pandas() reaches neither
    to_pandas() nor a computed result, before or after the first compute (they agreed neither)."""
    pdf = pd.DataFrame({"x": [1, 2, 3]})
    df = sp.from_pandas(pdf)
    pdf.loc[0, "x"] = 7  # before any compute
    assert df.count() == 3
    pdf.loc[1, "x"] = 999  # after one
    assert df.to_pandas()["x"].tolist() == [1, 2, 3]
    assert df.to_arrow().column("x").to_pylist() == [1, 2, 3]
    assert sorted(r["x"] for r in df.map("x * 2 as x").take_all()) == [2, 4, 6]


def test_from_arrow_roundtrip_keeps_types(sp):
    t = pa.table({"a": [1, 2, 3], "s": ["x", "y", "z"], "bin": [b"1", b"2", b"3"]})
    assert sp.from_arrow(t).to_arrow().equals(t)


def test_partial_sql_no_input_and_join(sp):
    assert sp.partial_sql("select * from range(3)").to_pandas()["range"].tolist() == [0, 1, 2]
    left = sp.from_arrow(pa.table({"k": [1, 2, 3], "l": ["a", "b", "c"]}))
    right = sp.from_arrow(pa.table({"k": [2, 3, 4], "r": ["x", "y", "z"]}))
    joined = sp.partial_sql("select l, r from {0} join {1} using (k) order by k", left, right)
    assert joined.take_all() == [{"l": "b", "r": "x"}, {"l": "c", "r": "y"}]


def test_empty_results_keep_schema(sp, files):
    df = source(sp, files, "parquet").filter("a < 0")
    t = df.to_arrow()
    assert t.num_rows == 0
    assert t.column_names == ["a", "b", "s"]
    assert df.count() == 0
    assert df.take(3) == []
    assert df.to_pandas().shape == (0, 3)
    mapped = df.map(lambda r: {"z": r["a"]}, schema=pa.schema([("z", pa.int64())])).to_arrow()
    assert mapped.num_rows == 0 and mapped.column_names == ["z"]
    # SQL on top of an empty hash partition output still sees the columns
    counted = sp.partial_sql("select count(*) as n, max(a) as m from {0}", df.repartition(3, hash_by="a")).take_all()
    assert sum(r["n"] for r in counted) == 0


def test_derived_frame_reuses_computed_result(sp, files, tmp_path):
    marker = tmp_path / "calls"
    marker.mkdir()

    def tag(t):
        (marker / f"{os.getpid()}-{os.urandom(4).hex()}").touch()
        return t

    base = source(sp, files, "parquet").map_batches(tag, batch_size=1000)
    assert not base.is_computed()
    base.compute()
    assert base.is_computed()
    calls = len(os.listdir(marker))
    assert calls == 1
    derived = base.filter("a < 10")
    assert derived.count() == 10
    assert base.map("a").count() == 1000
    assert len(os.listdir(marker)) == calls  # the upstream work was not repeated
    base.recompute()
    base.compute()
    assert len(os.listdir(marker)) == calls + 1
    # recompute() reruns the frame's own step, not its inputs' (as upstream)
    child = base.map_batches(tag, batch_size=1000)
    child.compute()
    child.recompute().compute()
    assert len(os.listdir(marker)) == calls + 3


def test_write_parquet(sp, files, tmp_path):
    out = tmp_path / "out"
    df = sp.partial_sql("select s, count(*) as n from {0} group by s", source(sp, files, "parquet").repartition(3, hash_by="s"))
    assert df.write_parquet(str(out)) is None
    written = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    assert written and os.path.exists(out / ".MANIFEST.txt")
    got = pq.read_table([str(out / p) for p in written]) if len(written) > 1 else pq.read_table(str(out / written[0]))
    assert rows(got) == rows(duck("select s, count(*) as n from t group by s", files["table"]))
    lazy = df.write_parquet_lazy(str(tmp_path / "out2"))
    assert not os.path.exists(tmp_path / "out2")
    lazy.compute()
    assert os.path.exists(tmp_path / "out2" / ".MANIFEST.txt")


def test_write_parquet_straight_after_a_reader_writes_the_frames_columns_as_parquet(sp, tmp_path):
    """The sink published the source's files as they were: read_parquet(columns=["a"]) wrote the
    files' every column, read_csv(...).write_parquet() published the .csv files themselves."""
    ab, csv = str(tmp_path / "ab.parquet"), str(tmp_path / "ab.csv")
    pq.write_table(pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]}), ab)
    with open(csv, "w") as f:
        f.write("1,x\n2,y\n")

    def written(out: str):
        names = sorted(n for n in os.listdir(out) if not n.startswith("."))
        assert names and all(n.endswith(".parquet") for n in names), names
        return [r for n in names for r in pq.read_table(os.path.join(out, n)).to_pylist()]

    sp.read_parquet(ab, columns=["a"]).write_parquet(str(tmp_path / "cols"))
    assert written(str(tmp_path / "cols")) == [{"a": 1}, {"a": 2}, {"a": 3}]
    sp.read_parquet(ab, columns=["b"]).repartition(2, by_rows=True).write_parquet(str(tmp_path / "rows"))
    assert written(str(tmp_path / "rows")) == [{"b": "x"}, {"b": "y"}, {"b": "z"}]
    sp.read_csv(csv, schema={"a": "BIGINT", "b": "VARCHAR"}).write_parquet(str(tmp_path / "csv"))
    assert written(str(tmp_path / "csv")) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    # files read whole are still published as they are (a copy of the user's file, by its name)
    sp.read_parquet(ab).write_parquet(str(tmp_path / "whole"))
    assert sorted(os.listdir(tmp_path / "whole")) == [".MANIFEST.txt", "ab.parquet"]


def test_tilde_is_the_home_directory_for_inputs_and_outputs(sp, tmp_path, monkeypatch):
    # as for data_root: read_parquet("~/...") failed at task time (<cwd>/~/in.parquet not found)
    # and write_parquet("~/out") wrote into a folder named "~" in the current directory
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / "d").mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    pq.write_table(pa.table({"k": [1, 2, 3]}), home / "d" / "in.parquet")
    pq.write_table(pa.table({"k": [4]}), home / "d" / "x[1].parquet")
    assert sp.read_parquet("~/d/in.parquet").count() == 3
    assert sp.read_parquet("~/d/*.parquet").count() == 4
    assert sp.read_parquet("~/d/x[1].parquet").count() == 1  # a literal name with glob characters
    sp.read_parquet("~/d/in.parquet").write_parquet("~/out")
    assert sorted(sp.read_parquet(str(home / "out")).to_arrow().column("k").to_pylist()) == [1, 2, 3]
    assert not os.path.exists(cwd / "~")


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_column_named_like_the_partition_column_is_kept(sp, engine):
    # the frame's partition column is dropped after a repartition; a user column of that name is
    # data and stays (it was dropped with it while the schema still listed it)
    df = sp.from_items([{"a": i, "__data_partition__": 100 + i} for i in range(6)])
    frames = [
        df.repartition(3, hash_by="a", engine_type=engine),
        df.repartition(3, by="a % 3", engine_type=engine),
        df.random_shuffle() if engine == "duckdb" else df.repartition(2, hash_by=["a"], engine_type=engine),
    ]
    for frame in frames:
        rows = sorted((r["a"], r["__data_partition__"]) for r in frame.take_all())
        assert rows == [(i, 100 + i) for i in range(6)]
        assert frame.schema.names == ["a", "__data_partition__"]


@pytest.mark.parametrize("op", ["hash", "shuffle", "random_shuffle", "by_rows"])
def test_a_data_column_named_file_row_number_is_kept_through_row_splits(sp, tmp_path, op):
    """A single file is split by rows to feed a partitioning's producers, and DuckDB's
    ``file_row_number`` option clashes with a data column of that name: every row must still
    arrive once, with the column's own values."""
    path = str(tmp_path / "frn.parquet")
    table = pa.table({"k": list(range(20)), "file_row_number": [1000 + i for i in range(20)]})
    pq.write_table(table, path, row_group_size=5)
    df = sp.read_parquet(path)
    out = {
        "hash": lambda: df.repartition(3, hash_by="k"),
        "shuffle": lambda: df.repartition(3, by="k % 3"),
        "random_shuffle": lambda: df.random_shuffle(),
        "by_rows": lambda: df.repartition(3, by_rows=True).filter("k >= 0"),  # SQL reads the row ranges
    }[op]().to_arrow()
    assert out.column_names[:2] == ["k", "file_row_number"]
    assert sorted(zip(out.column("k").to_pylist(), out.column("file_row_number").to_pylist())) == [
        (i, 1000 + i) for i in range(20)
    ]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_by_rows_of_a_csv_or_json_source_is_refused_when_written(sp, tmp_path, kind):
    """Splitting by rows reads Parquet row groups: the producer task failed at run time, after
    everything before it ran; now the repartition call itself is refused, naming the source."""
    path = tmp_path / f"in.{kind}"
    path.write_text("1,x\n" if kind == "csv" else '{"a": 1, "b": "x"}\n')
    read = sp.read_csv if kind == "csv" else sp.read_json
    frame = read(str(path), schema={"a": "bigint", "b": "varchar"})
    with pytest.raises(
        ParameterError, match=f"partition_by_rows needs Parquet input, but DataSourceNode.* reads {kind.capitalize()}DataSet"
    ):
        frame.repartition(2, by_rows=True)
    assert frame.repartition(2).count() == 1  # by files, as before
