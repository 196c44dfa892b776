"""DataFrame over files of different columns or types: read with ``union_by_name`` or, without it,
by the first file's columns in every method and partition, as DuckDB reads a list of files."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_union_by_name_unifies_a_column_typed_differently_in_two_files(sp, tmp_path):
    # DuckDB reads k as VARCHAR over both files, as the frame's schema says; reading the frame, and
    # partitions of it over one file each, must give the same (pyarrow cannot merge int64 and string)

    pq.write_table(pa.table({"k": [1, 2], "x": ["a", "b"]}), str(tmp_path / "1.parquet"))
    pq.write_table(pa.table({"k": ["3"], "y": [1.5]}), str(tmp_path / "2.parquet"))
    expected = duckdb.sql(f"select * from read_parquet('{tmp_path}/*.parquet', union_by_name=true) order by k").fetchall()
    df = sp.read_parquet(str(tmp_path / "*.parquet"), union_by_name=True)
    assert str(df.schema.field("k").type) == "string"
    for frame in (df, df.repartition(2, by_rows=True), df.repartition(2)):
        got = sorted((r["k"], r["x"], r["y"]) for r in frame.take_all())
        assert got == expected


def _files_of_other_columns(tmp_path, first: dict, second: dict) -> str:

    pq.write_table(pa.table(first), str(tmp_path / "1.parquet"))
    pq.write_table(pa.table(second), str(tmp_path / "2.parquet"))
    return str(tmp_path / "*.parquet")


def test_files_of_other_columns_read_without_union_by_name_agree_on_the_first_files(sp, tmp_path):
    # without union_by_name DuckDB reads a list of files by the first one's columns (a later file's
    # extra column is left out): the schema and SQL said so, but to_arrow/to_pandas/take (pyarrow,
    # concatenated with promotion), a split by rows (UNION ALL BY NAME of its pieces) and a split by
    # files (a piece read by its own first file) gave the extra column too
    files = _files_of_other_columns(tmp_path, {"a": list(range(10))}, {"b": [7, 8], "a": [10, 11]})
    expected = sorted(a for (a,) in duckdb.sql(f"select * from read_parquet('{files}')").fetchall())
    df = sp.read_parquet(files)
    frames = {
        "source": df,
        "by files": df.repartition(2),
        "by rows": df.repartition(3, by_rows=True),
        "by files, sql": df.repartition(2).map("*"),
        "by rows, sql": df.repartition(3, by_rows=True).map("*"),
        "python map": df.repartition(2).map(lambda r: r),
        "hash": df.repartition(2, hash_by="a"),
        "hash (arrow)": df.repartition(2).repartition(2, hash_by="a", engine_type="arrow"),
    }
    for name, f in frames.items():
        assert f.schema.names == ["a"], name
        table = f.to_arrow()
        assert table.column_names == ["a"], name
        assert sorted(table.column("a").to_pylist()) == expected, name
        assert list(f.to_pandas().columns) == ["a"], name
        assert sorted(r["a"] for r in f.take(20)) == expected and all(list(r) == ["a"] for r in f.take(20)), name
        assert f.count() == 12, name


def test_a_file_lacking_a_column_of_the_first_file_fails_every_read_naming_both(sp, tmp_path):
    # DuckDB's read of the list fails (a column of the first file not found in the second); the
    # pyarrow readers gave it nulls there, and a piece of a split read the second file alone
    files = _files_of_other_columns(tmp_path, {"b": [7, 8], "a": [10, 11]}, {"a": list(range(10))})
    with pytest.raises(duckdb.Error):
        duckdb.sql(f"select * from read_parquet('{files}')").fetchall()
    df = sp.read_parquet(files)
    runs = {
        "to_arrow": lambda: df.to_arrow(),
        "take": lambda: df.take(20),
        "sql": lambda: df.map("*").to_arrow(),
        "python map": lambda: df.map(lambda r: r).to_arrow(),
        "by files": lambda: df.repartition(2).to_arrow(),
        "by files, sql": lambda: df.repartition(2).map("*").to_arrow(),
        "by rows, sql": lambda: df.repartition(3, by_rows=True).map("*").to_arrow(),
        "by files, python map": lambda: df.repartition(2).map(lambda r: r).to_arrow(),
        "hash (arrow)": lambda: df.repartition(2).repartition(2, hash_by="a", engine_type="arrow").to_arrow(),
    }
    for name, run in runs.items():
        with pytest.raises(Exception) as e:
            run()
        text = str(e.value)
        assert str(tmp_path / "2.parquet") in text and str(tmp_path / "1.parquet") in text, (name, text)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_union_by_name_reaches_the_readers_of_a_hash_partition(sp, tmp_path, engine):
    # two files of other columns read with union_by_name, one a partition: each producer of the
    # hash partition wrote its own file's columns, and SQL over a consumer's files read the first
    # file's: b was lost in silence (its rows and the schema's column too)

    pq.write_table(pa.table({"a": list(range(10))}), str(tmp_path / "1.parquet"))
    pq.write_table(pa.table({"b": [7, 8], "a": [10, 11]}), str(tmp_path / "2.parquet"))
    expected = duckdb.sql(f"select a, b from read_parquet('{tmp_path}/*.parquet', union_by_name=true) order by a").fetchall()
    df = sp.read_parquet(str(tmp_path / "*.parquet"), union_by_name=True).repartition(2)
    hashed = df.repartition(3, hash_by="a", engine_type=engine)
    for frame in (hashed, hashed.map("*"), hashed.repartition(1).map("a, b")):
        assert sorted(frame.schema.names) == ["a", "b"], frame
        assert sorted((r["a"], r["b"]) for r in frame.to_arrow().to_pylist()) == expected, frame
