"""smallpond.io.arrow: row ranges, exact-size batch readers, Parquet dump/load."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ColumnNotFoundError, UserCodeError
from smallpond.io.arrow import (
    RowRange,
    array_from_values,
    build_batch_reader_from_files,
    conform_table,
    dump_to_parquet_files,
    empty_table,
    load_from_parquet_files,
    read_row_ranges,
)
from tests.datagen import generate_parquet_files, write_corrupt_parquet


def test_partition_by_rows_30_rows_in_3_files_into_4(parquet_files):
    ranges = read_row_ranges(parquet_files)
    assert [r.num_rows for r in ranges] == [10, 10, 10]
    groups = RowRange.partition_by_rows(ranges, 4)
    assert [sum(r.num_rows for r in g) for g in groups] == [8, 8, 7, 7]
    # contiguous and complete: each file's rows appear once, in order
    covered = [(r.path, row) for g in groups for r in g for row in range(r.begin, r.end)]
    assert covered == [(p, row) for p in parquet_files for row in range(10)]
    # the input ranges are not modified
    assert [(r.begin, r.end) for r in ranges] == [(0, 10)] * 3


def test_partition_by_rows_more_partitions_than_rows(parquet_files):
    groups = RowRange.partition_by_rows(read_row_ranges(parquet_files[:1]), 12)
    assert [sum(r.num_rows for r in g) for g in groups] == [1] * 10 + [0, 0]


def test_row_range_load_reads_only_its_rows(parquet_files):
    groups = RowRange.partition_by_rows(read_row_ranges(parquet_files), 4)
    ids = [load_from_parquet_files(g).column("id").to_pylist() for g in groups]
    assert ids == [list(range(0, 8)), list(range(8, 16)), list(range(16, 23)), list(range(23, 30))]


def test_loading_a_column_no_file_has_is_an_error(parquet_files, tmp_path):
    """pyarrow leaves out a requested column a file lacks: one that no file has must not become a
    table without that column. A column only some files have is filled with nulls (union by name)."""
    with pytest.raises(ColumnNotFoundError, match=r"column 'nope' not found in any of 3 files \(.*part0\.parquet', \.\.\.\)"):
        load_from_parquet_files(parquet_files, columns=["id", "nope"])
    with pytest.raises(KeyError, match="not found in"):  # a KeyError too, as before
        load_from_parquet_files(parquet_files[:1], columns=["nope"])
    extra = str(tmp_path / "extra.parquet")
    pq.write_table(pa.table({"id": [100], "more": ["x"]}), extra)
    t = load_from_parquet_files([parquet_files[0], extra], columns=["id", "more"])
    assert t.column("more").to_pylist() == [None] * 10 + ["x"]
    # the same when the file lacking the column is read as a row range
    part = read_row_ranges(parquet_files[:1])[0].take(4)
    assert not part.whole_file
    t = load_from_parquet_files([part, extra], columns=["id", "more"])
    assert t.column("id").to_pylist() == [0, 1, 2, 3, 100] and t.column("more").to_pylist() == [None] * 4 + ["x"]
    with pytest.raises(ColumnNotFoundError, match=r"column 'nope' not found"):
        load_from_parquet_files([part], columns=["id", "nope"])


def test_a_column_asked_for_in_another_case_is_read_as_duckdb_binds_it(tmp_path):
    """DuckDB binds ``X`` to a column ``x`` and names it ``x``: the pyarrow readers do the same
    (exact name first, then the one name differing only in case), whole files, row ranges and
    a later file spelling it otherwise alike; two candidates and no exact one is an error."""
    import duckdb

    from smallpond.logical.dataset import ParquetDataSet

    first, second = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"x": [1, 2, 3], "Yy": ["a", "b", "c"], "z": [0, 0, 0]}), first)
    pq.write_table(pa.table({"X": [4], "yy": ["d"]}), second)
    by_duckdb = ParquetDataSet([first], columns=["X", "yy"]).to_arrow_table(conn=duckdb.connect())
    assert by_duckdb.column_names == ["x", "Yy"]
    expected = {"x": [1, 2, 3, 4], "Yy": ["a", "b", "c", "d"]}
    for read in (
        lambda cols, files: load_from_parquet_files(files, columns=cols),
        lambda cols, files: build_batch_reader_from_files(files, columns=cols, batch_size=2).read_all(),
        lambda cols, files: ParquetDataSet(files, columns=cols).to_arrow_table(),
    ):
        assert read(["X", "yy"], [first]).to_pydict() == by_duckdb.to_pydict()
        assert read(["X", "yy"], [first, second]).to_pydict() == expected
        assert read(["x", "Yy"], [first, second]).to_pydict() == expected
    part = read_row_ranges([first])[0].take(2)
    assert not part.whole_file
    for t in (
        load_from_parquet_files([part, second], columns=["X", "yy"]),
        build_batch_reader_from_files([part, second], columns=["X", "yy"]).read_all(),
    ):
        assert t.to_pydict() == {"x": [1, 2, 4], "Yy": ["a", "b", "d"]}
    both = str(tmp_path / "both.parquet")
    pq.write_table(pa.table({"Ab": [1], "aB": [2], "ab": [3]}), both)
    assert load_from_parquet_files([both], columns=["aB"]).to_pydict() == {"aB": [2]}  # the exact name
    pq.write_table(pa.table({"Ab": [1], "aB": [2]}), both)
    for read in (
        lambda: load_from_parquet_files([both], columns=["AB"]),
        lambda: build_batch_reader_from_files([both], columns=["AB"]).read_all(),
    ):
        with pytest.raises(ColumnNotFoundError, match=r"column 'AB' is ambiguous in .*both\.parquet'.*'Ab', 'aB'"):
            read()


@pytest.mark.parametrize("batch_size", [1, 4, 7, 10, 30, 100])
def test_batch_reader_yields_exact_batch_sizes_across_files(parquet_files, batch_size):
    reader = build_batch_reader_from_files(parquet_files, batch_size=batch_size)
    sizes = [b.num_rows for b in reader]
    full, rest = divmod(30, batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])


def test_batch_reader_over_row_ranges_and_columns(parquet_files):
    groups = RowRange.partition_by_rows(read_row_ranges(parquet_files), 4)
    reader = build_batch_reader_from_files(groups[1] + groups[2], columns=["id"], batch_size=4)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [4, 4, 4, 3]
    assert reader.schema.names == ["id"]
    assert [x for b in batches for x in b.column(0).to_pylist()] == list(range(8, 23))


def test_batch_reader_mixes_string_and_large_string_files(tmp_path):
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"s": pa.array(["x", "y"], pa.string())}), a)
    pq.write_table(pa.table({"s": pa.array(["z"], pa.large_string())}), b)
    reader = build_batch_reader_from_files([a, b], batch_size=2)
    assert [x for batch in reader for x in batch.column(0).to_pylist()] == ["x", "y", "z"]
    assert load_from_parquet_files([a, b]).column("s").to_pylist() == ["x", "y", "z"]


def test_batch_reader_missing_column_names_the_file(parquet_files):
    with pytest.raises(KeyError, match=r"nope.*part0\.parquet"):
        build_batch_reader_from_files(parquet_files, columns=["nope"])


def test_batch_reader_fills_a_column_some_files_lack_with_nulls(parquet_files, tmp_path):
    # as load_from_parquet_files does (union by name), whichever file has the column first
    extra = str(tmp_path / "extra.parquet")
    pq.write_table(pa.table({"id": [100], "more": ["x"]}), extra)
    for order in ([parquet_files[0], extra], [extra, parquet_files[0]]):
        batches = list(build_batch_reader_from_files(order, columns=["id", "more"], batch_size=100))
        rows = {i: m for b in batches for i, m in zip(b.column(0).to_pylist(), b.column(1).to_pylist())}
        assert rows == {**{i: None for i in range(10)}, 100: "x"}
        assert load_from_parquet_files(order, columns=["id", "more"]).num_rows == 11


def test_empty_inputs_need_a_schema():
    schema = pa.schema([("a", pa.int64())])
    assert load_from_parquet_files([], schema=schema).schema == schema
    assert list(build_batch_reader_from_files([], schema=schema)) == []
    with pytest.raises(ValueError):
        load_from_parquet_files([])


def test_corrupt_file_is_named(tmp_path):
    good = generate_parquet_files(str(tmp_path), nfiles=1)[0]
    bad = write_corrupt_parquet(str(tmp_path / "bad.parquet"))
    for read in (
        lambda: read_row_ranges([good, bad]),
        lambda: load_from_parquet_files([good, bad]),
        lambda: list(build_batch_reader_from_files([RowRange(good, 0, 10, 0, 10), RowRange(bad, 0, 10, 0, 5)])),
    ):
        with pytest.raises(UserCodeError, match="bad.parquet"):
            read()


def test_dump_and_load_roundtrip(tmp_path):
    table = pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    paths = dump_to_parquet_files(table, str(tmp_path / "out"), "data", row_group_size=10, max_workers=4, metadata={"k": "v"})
    assert len(paths) > 1
    assert paths == sorted(paths), "file names must sort in row order"
    assert all(os.path.basename(p).startswith("data-") for p in paths)
    loaded = load_from_parquet_files(paths)
    assert loaded.column("a").to_pylist() == list(range(1000))
    assert pq.read_schema(paths[0]).metadata[b"k"] == b"v"


def test_dump_empty_table(tmp_path):
    table = pa.table({"a": pa.array([], pa.int64())})
    paths = dump_to_parquet_files(table, str(tmp_path), "empty")
    assert len(paths) == 1
    assert load_from_parquet_files(paths).num_rows == 0


SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("s", pa.string())])


def test_conform_table_casts_only_what_keeps_every_value():
    t = pa.table({"s": ["x"], "b": pa.array([3], pa.int32()), "a": pa.array([None], pa.null())})
    out = conform_table(t, SCHEMA)
    assert out.schema == SCHEMA and out.to_pylist() == [{"a": None, "b": 3.0, "s": "x"}]
    assert conform_table(pa.table({"a": [2.0], "b": [1.0], "s": pa.array(["x"], pa.large_string())}), SCHEMA).column(
        "a"
    ).to_pylist() == [2]


@pytest.mark.parametrize(
    "column, fragment",
    [
        (pa.array([1.5]), "1.5"),  # truncated
        (pa.array([2**60]), "1152921504606846976"),  # not exact as a float64
        (pa.array(["12"]), "'12'"),  # a string is not parsed
        (pa.array([True]), "bool"),
    ],
    ids=["float-to-int", "int-to-float", "string-to-int", "bool-to-int"],
)
def test_conform_table_refuses_values_it_would_change(column, fragment):
    name = "b" if column.type == pa.int64() else "a"
    t = pa.table({"a": [1], "b": [1.0], "s": ["x"]}).set_column(0 if name == "a" else 1, name, column)
    with pytest.raises(UserCodeError, match=f"'{name}'") as e:
        conform_table(t, SCHEMA, origin="the first batch's schema", hint="pass schema=")
    assert fragment in str(e.value) and "pass schema=" in str(e.value) and "the first batch's schema" in str(e.value)


def test_conform_table_refuses_columns_it_would_drop_or_invent():
    t = pa.table({"a": [1], "b": [1.0], "s": ["x"], "new": [1]})
    with pytest.raises(UserCodeError, match="'new'.*would be dropped"):
        conform_table(t, SCHEMA)
    nested = pa.schema([("m", pa.struct([("k", pa.int64())]))])
    with pytest.raises(UserCodeError, match="'m'"):  # a struct field the schema lacks is not dropped either
        conform_table(pa.table({"m": [{"k": 1, "extra": 2}]}), nested)
    with pytest.raises(UserCodeError, match="'s'.*missing"):
        conform_table(pa.table({"a": [1], "b": [1.0]}), SCHEMA)
    assert conform_table(pa.table({"a": [1], "b": [1.0]}), SCHEMA, fill_missing=True).column("s").to_pylist() == [None]
    strict = pa.schema([pa.field("a", pa.int64(), nullable=False)])
    with pytest.raises(UserCodeError, match="'a' has nulls"):
        conform_table(pa.table({"a": [1, None]}), strict)


@pytest.mark.parametrize(
    "values, type_, kept",
    [
        ([{"x": 1.5}], pa.map_(pa.string(), pa.int64()), pa.map_(pa.string(), pa.float64())),
        ([[("x", 1.5)]], pa.map_(pa.string(), pa.int64()), pa.map_(pa.string(), pa.float64())),
        ([{"x": 300}], pa.map_(pa.string(), pa.int8()), pa.map_(pa.string(), pa.int64())),
        ([[1, 1.5]], pa.list_(pa.int64()), pa.list_(pa.float64())),
        ([{"v": 1.5}], pa.struct([("v", pa.int64())]), pa.struct([("v", pa.float64())])),
        ([{"v": 1, "w": 2.5}], pa.struct([("v", pa.int64())]), pa.struct([("v", pa.int64()), ("w", pa.float64())])),
        ([[{"x": 1.5}]], pa.list_(pa.map_(pa.string(), pa.int64())), pa.list_(pa.map_(pa.string(), pa.float64()))),
    ],
    ids=["map", "map-pairs", "map-overflow", "list", "struct", "struct-extra-key", "list-of-maps"],
)
def test_array_from_values_keeps_values_a_nested_type_cannot_hold(values, type_, kept):
    """pyarrow.array(values, type=...) truncates these to the type (1.5 becomes 1) or drops the key:
    they keep their own type, so conform_table refuses them, naming the column and a value."""
    array = array_from_values(values, type_)
    assert array.type == kept and array.to_pylist() == pa.array(values, kept).to_pylist()
    with pytest.raises(UserCodeError, match=f"'c' is {re.escape(str(type_))}.*but this batch has"):
        conform_table(pa.table({"c": array}), pa.schema([("c", type_)]), hint="pass schema=")


def test_array_from_values_converts_what_keeps_every_value():
    ints = pa.map_(pa.string(), pa.int64())
    assert array_from_values([{"x": 2.0, "y": None}, None, {}], ints).to_pylist() == [[("x", 2), ("y", None)], None, []]
    assert array_from_values([{"x": 2.0}], ints).type == ints
    deep = pa.struct([("m", pa.map_(pa.string(), pa.list_(pa.binary()))), ("t", pa.string())])
    out = array_from_values([{"m": {"k": ["a", None]}}, None], deep)  # str into binary: pyarrow's conversion
    assert out.type == deep and out.to_pylist() == [{"m": [("k", [b"a", None])], "t": None}, None]
    assert array_from_values([1, 2.0], pa.int64()).to_pylist() == [1, 2]
    with pytest.raises(pa.ArrowInvalid, match="map key"):
        array_from_values([[(None, 1)]], ints)


def test_array_from_values_keeps_nanoseconds(tmp_path):
    """to_pylist gives pandas Timestamps/Timedeltas for nanosecond values, which pyarrow infers as
    microseconds: the nanoseconds were cut, also when the target type was nanoseconds."""
    from smallpond.io.arrow import array_from_values, infer_array

    path = str(tmp_path / "ns.parquet")
    ts = pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns", "UTC"))
    dur = pa.array([5, 123_456_789], pa.duration("ns"))
    pq.write_table(pa.table({"ts": ts, "dur": dur, "l": pa.array([[5], None], pa.list_(pa.duration("ns")))}), path)
    back = pq.read_table(path)
    for name, expected in (("ts", ts), ("dur", dur)):
        values = back.column(name).to_pylist()
        assert infer_array(values).equals(expected)
        assert array_from_values(values, expected.type).equals(expected)
    assert (
        array_from_values(back.column("l").to_pylist(), pa.list_(pa.duration("ns"))).to_pylist() == back.column("l").to_pylist()
    )


def test_empty_table_is_pyarrows_empty_table():
    """empty_table(schema) is schema.empty_table() (built without pa.array, which imports pandas)."""
    schema = pa.schema(
        [
            pa.field("key", pa.binary(10), nullable=False),
            ("m", pa.map_(pa.string(), pa.int64())),
            ("s", pa.struct([("a", pa.int8())])),
            ("ts", pa.timestamp("ns", "UTC")),
            ("d", pa.dictionary(pa.int32(), pa.string())),
            ("dec", pa.decimal128(5, 1)),
        ],
        metadata={b"k": b"v"},
    )
    for s in (schema, pa.schema([])):
        got = empty_table(s)
        assert got.equals(s.empty_table()) and got.schema.equals(s, check_metadata=True)
        assert got.num_rows == 0 and [c.num_chunks for c in got.columns] == [1] * len(s)


def test_a_parquet_file_without_row_groups_reads_as_an_empty_table(tmp_path):
    """What DuckDB writes for an empty result has no row group at all; pyarrow 18 and 19 raise
    on ParquetFile.read of it ("The file only has 0 row groups"), which failed 33 tests of the
    suite with pyarrow 18 installed (the Python 3.13 floor)."""
    import duckdb

    from smallpond.io.arrow import load_from_parquet_files, read_parquet_file

    path = str(tmp_path / "empty.parquet")
    duckdb.sql(f"COPY (SELECT 1::BIGINT AS a, 'x' AS b WHERE false) TO '{path}'")
    assert pq.ParquetFile(path).metadata.num_row_groups == 0
    t = read_parquet_file(path)
    assert t.num_rows == 0 and t.schema.names == ["a", "b"] and t.schema.field("a").type == pa.int64()
    assert read_parquet_file(path, ["b", "missing"]).schema.names == ["b"]
    assert load_from_parquet_files([path, path]).num_rows == 0


def test_readers_by_the_first_files_columns(tmp_path):
    """``first_columns``: the files read as DuckDB reads a list without union_by_name, by the first
    file's columns (bound as DuckDB binds a name: ``A`` reads ``a``), a later file's extra column
    left out; a file lacking one of them is an error naming it and the first file."""
    from smallpond.errors import ColumnNotFoundError
    from smallpond.io.arrow import build_batch_reader_from_files, load_from_parquet_files

    one, two, three = (str(tmp_path / f"{k}.parquet") for k in (1, 2, 3))
    pq.write_table(pa.table({"a": [1]}), one)
    pq.write_table(pa.table({"A": [2], "b": [3]}), two)
    pq.write_table(pa.table({"b": [4]}), three)
    want = [{"a": 1}, {"a": 2}]
    assert load_from_parquet_files([one, two], first_columns=()).to_pylist() == want
    assert build_batch_reader_from_files([one, two], first_columns=()).read_all().to_pylist() == want
    # a piece of a split set: the set's first file (not one of the piece) gives the columns
    assert load_from_parquet_files([two], first_columns=(one, ("a",))).to_pylist() == [{"a": 2}]
    assert build_batch_reader_from_files([two], first_columns=(one, ("a",))).read_all().to_pylist() == [{"a": 2}]
    for read in (
        lambda: load_from_parquet_files([one, three], first_columns=()),
        lambda: build_batch_reader_from_files([one, three], first_columns=()).read_all(),
        lambda: load_from_parquet_files([three], first_columns=(one, ("a",))),
    ):
        with pytest.raises(ColumnNotFoundError, match="lacks the column") as e:
            read()
        assert three in str(e.value) and one in str(e.value)
    assert load_from_parquet_files([one, two]).column_names == ["a", "A", "b"]  # (without: every file's)
