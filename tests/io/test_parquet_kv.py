"""set_kv_metadata: a Parquet file's key-value metadata rewritten in place, its data untouched."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.io.parquet_kv import set_kv_metadata


def _kv(path) -> dict:
    return {k.decode(): v.decode() for k, v in (pq.read_metadata(str(path)).metadata or {}).items() if not k.startswith(b"ARROW")}


def _duckdb_file(path, kv: str = "") -> None:
    opts = f", KV_METADATA {{{kv}}}" if kv else ""
    duckdb.sql(
        f"COPY (SELECT range AS a, range::VARCHAR AS b FROM range(50000)) TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE 10000{opts})"
    )


def test_replaces_and_adds_keys_keeping_the_others(tmp_path):
    path = tmp_path / "kv.parquet"
    _duckdb_file(path, "'SMALLPOND:x': '1', 'keep': 'me'")
    set_kv_metadata(str(path), {"SMALLPOND:x": "7", "SMALLPOND:dim": "7"})
    assert _kv(path) == {"SMALLPOND:x": "7", "keep": "me", "SMALLPOND:dim": "7"}
    with duckdb.connect() as conn:
        assert conn.execute(f"SELECT count(*), sum(a) FROM '{path}'").fetchall() == [(50000, sum(range(50000)))]
    assert pq.read_metadata(str(path)).num_row_groups == 5


def test_a_footer_without_key_value_metadata_gets_the_field(tmp_path):
    """DuckDB writes no field 5 without KV_METADATA: it is inserted between fields 4 and 6."""
    path = tmp_path / "plain.parquet"
    _duckdb_file(path)
    set_kv_metadata(str(path), {f"k{i}": str(i) for i in range(20)})  # more than 14: the long list header
    assert _kv(path) == {f"k{i}": str(i) for i in range(20)}
    assert pq.read_table(str(path)).num_rows == 50000
    md = pq.read_metadata(str(path))
    assert md.created_by and md.num_columns == 2  # the fields after it read as before


def test_a_pyarrow_file_keeps_its_arrow_schema(tmp_path):
    path = tmp_path / "arrow.parquet"
    table = pa.table({"s": pa.array(["x", None], pa.large_string())})
    pq.write_table(table, str(path))
    set_kv_metadata(str(path), {"SMALLPOND:k": "3"})
    assert _kv(path) == {"SMALLPOND:k": "3"}
    assert pq.read_table(str(path)).schema.field("s").type == pa.large_string()


def test_not_parquet_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(ValueError, match=r"x\.parquet.*not a Parquet file"):
        set_kv_metadata(str(path), {"k": "v"})
    assert path.read_bytes() == b"not a parquet file at all"


def _pyarrow_keeps_json(tmp_path) -> bool:
    """Whether this pyarrow writes back a column DuckDB wrote as JSON as JSON (pyarrow 26 does;
    16 reads it as plain strings, and the fallback refuses such a file: see the next test)."""
    (tmp_path / "probe").mkdir()
    path, back = tmp_path / "probe" / "json.parquet", tmp_path / "probe" / "json-back.parquet"
    duckdb.sql(f"COPY (SELECT '{{}}'::JSON AS j) TO '{path}' (FORMAT PARQUET)")
    pq.write_table(pq.read_table(str(path)), str(back))
    return str(pq.read_metadata(str(back)).schema.column(0).logical_type) == "JSON"


def _typed_duckdb_file(path, json: bool = True) -> None:
    """A file of many types in 5 row groups, ZSTD, with key-value metadata of its own (a JSON
    column too, with ``json``)."""
    j = ", '{}'::JSON AS j" if json else ""
    duckdb.sql(
        "COPY (SELECT range AS a, range::VARCHAR AS b, range / 3.0 AS c, (range * 1.5)::DECIMAL(18, 3) AS d,"
        " TIMESTAMP '2020-01-01' + INTERVAL (range) SECOND AS t, [range, range + 1] AS l, {'x': range, 'y': 'z'} AS s,"
        " CASE WHEN range % 7 = 0 THEN NULL ELSE range END AS n, (range % 30000)::SMALLINT AS i16, (range % 256)::UTINYINT AS u8,"
        f" TIMESTAMPTZ '2020-01-01 00:00:00+00' + INTERVAL (range) SECOND AS tz{j},"
        " CAST(CASE WHEN range % 2 = 0 THEN 'a' ELSE 'b' END AS ENUM('a', 'b')) AS e FROM range(50000))"
        f" TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE 10000, COMPRESSION ZSTD, KV_METADATA {{'SMALLPOND:x': '1', 'keep': 'me'}})"
    )


def _shape(path):
    md = pq.read_metadata(str(path))
    codecs = {md.row_group(0).column(i).path_in_schema: md.row_group(0).column(i).compression for i in range(md.num_columns)}
    return pq.read_schema(str(path)).remove_metadata(), [md.row_group(i).num_rows for i in range(md.num_row_groups)], codecs


def _same_rows(a, b) -> bool:
    with duckdb.connect() as conn:
        q = f"SELECT count(*) FROM (SELECT * FROM '{a}' EXCEPT ALL SELECT * FROM '{b}')"
        return conn.execute(q).fetchone() == (0,) and conn.execute(
            q.replace(str(a), "@").replace(str(b), str(a)).replace("@", str(b))
        ).fetchone() == (0,)


def test_a_footer_over_the_in_place_limit_is_rewritten_with_pyarrow(tmp_path, monkeypatch):
    """A real DuckDB file whose footer the in-place path refuses (longer than its limit, here
    lowered under the footer's length): the file is written again with the same rows, schema, row
    groups and codecs, and the keys merged as in place (pyarrow may write them in another order)."""
    from smallpond.io import parquet_kv

    path, original = tmp_path / "big.parquet", tmp_path / "original.parquet"
    json = _pyarrow_keeps_json(tmp_path)
    _typed_duckdb_file(path, json)
    _typed_duckdb_file(original, json)
    assert pq.read_metadata(str(path)).serialized_size > 200
    monkeypatch.setattr(parquet_kv, "MAX_FOOTER_BYTES", 200)
    set_kv_metadata(str(path), {"SMALLPOND:x": "7", "SMALLPOND:dim": "7"})
    assert _kv(path) == {"SMALLPOND:x": "7", "keep": "me", "SMALLPOND:dim": "7"}
    assert _shape(path) == _shape(original)
    assert set(_shape(path)[2].values()) == {"ZSTD"}
    assert _same_rows(path, original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet", "original.parquet", "probe"]  # no temporary left


def test_a_footer_the_parser_refuses_is_rewritten_with_pyarrow(tmp_path, monkeypatch):
    from smallpond.io import parquet_footer, parquet_kv

    def refuse(footer, entries):
        raise parquet_footer._Unsupported

    path = tmp_path / "arrow.parquet"
    table = pa.table({"s": pa.array(["x", None, "y"], pa.large_string()), "i": pa.array([1, 2, 3], pa.uint32())})
    pq.write_table(table, str(path), compression={"s": "gzip", "i": "none"})
    monkeypatch.setattr(parquet_kv, "with_kv_metadata", refuse)
    set_kv_metadata(str(path), {"SMALLPOND:k": "3"})
    assert _kv(path) == {"SMALLPOND:k": "3"}
    assert pq.read_table(str(path)).equals(table)  # the Arrow schema (large_string, uint32) kept
    assert _shape(path)[2] == {"s": "GZIP", "i": "UNCOMPRESSED"}


def _compressed_sizes(path) -> list:
    md = pq.read_metadata(str(path))
    return [md.row_group(r).column(c).total_compressed_size for r in range(md.num_row_groups) for c in range(md.num_columns)]


def test_the_pyarrow_rewrite_keeps_the_compression_level_it_is_told(tmp_path, monkeypatch):
    """A footer does not record levels: the fallback writes each column at the level ``levels``
    gives its codec (the writer's options, as the hash partitioner passes them), else at pyarrow's
    default (zstd 1). Compared with pyarrow writing the same row groups at each level."""
    from smallpond.io import parquet_kv
    from smallpond.io.parquet import ParquetWriterOptions

    rows = pa.table(
        {"a": pa.array([(i * 7919) % 100003 for i in range(60000)], pa.int64()), "b": [f"row {i % 977}" for i in range(60000)]}
    )

    def at_level(name, level):
        path = tmp_path / name
        with pq.ParquetWriter(str(path), rows.schema, compression="zstd", compression_level=level, store_schema=False) as w:
            for i in range(0, 60000, 20000):
                w.write_table(rows.slice(i, 20000), row_group_size=20000)
        return path

    strong, weak = _compressed_sizes(at_level("l19.parquet", 19)), _compressed_sizes(at_level("l1.parquet", 1))
    assert strong != weak
    monkeypatch.setattr(parquet_kv, "MAX_FOOTER_BYTES", 10)
    told, untold = at_level("told.parquet", 19), at_level("untold.parquet", 19)
    levels = ParquetWriterOptions(compression="zstd", compression_level=19).levels("duckdb")
    assert levels == {"zstd": 19}
    set_kv_metadata(str(told), {"SMALLPOND:k": "1"}, levels)
    set_kv_metadata(str(untold), {"SMALLPOND:k": "1"})
    assert _kv(told) == _kv(untold) == {"SMALLPOND:k": "1"}
    assert _compressed_sizes(told) == strong  # the level it was written with
    assert _compressed_sizes(untold) == weak  # pyarrow's default, as the module says
    assert pq.read_table(str(told)).equals(rows) and pq.read_table(str(untold)).equals(rows)
    # a level for another codec changes nothing; levels of codecs without one are not passed
    snappy = tmp_path / "snappy.parquet"
    pq.write_table(rows, str(snappy), compression="snappy")
    set_kv_metadata(str(snappy), {"SMALLPOND:k": "2"}, {"zstd": 19})
    assert _shape(snappy)[2] == {"a": "SNAPPY", "b": "SNAPPY"}
    assert ParquetWriterOptions(compression="snappy").levels("duckdb") == {}
    assert ParquetWriterOptions(compression="gzip", compression_level=5).levels("duckdb") == {}
    assert ParquetWriterOptions(compression="gzip", compression_level=5).levels("pyarrow") == {"gzip": 5}


def test_the_hash_partitioner_tells_the_rewrite_its_node_s_level(tmp_path, monkeypatch):
    """The partitioner's COPY wrote the file at the node's zstd level: a footer it cannot set in
    place is rewritten at that level, not pyarrow's default."""
    import types

    from smallpond.execution.ops.partition import HashPartitionTask
    from smallpond.io import parquet_kv

    told = []
    monkeypatch.setattr(parquet_kv, "set_kv_metadata", lambda path, kv, levels=None: told.append(levels))
    node = types.SimpleNamespace(
        parquet_compression="zstd", parquet_compression_level=19, parquet_row_group_size=None, parquet_dictionary_encoding=False
    )
    node.hive_partitioning, node.data_partition_column, node.dimension = False, "p", "p"
    task = types.SimpleNamespace(node=node, staging=False, parquet_kv_metadata=lambda extra: {}, _partition_kv=lambda k: {})
    sub = tmp_path / "sub"
    sub.mkdir()
    pq.write_table(pa.table({"a": [1]}), str(sub / "out-0.parquet"))
    HashPartitionTask._place_partition(task, str(tmp_path), str(sub), 3, "out")
    assert told == [{"zstd": 19}]


def test_a_file_pyarrow_would_change_is_refused_and_left_as_it_is(tmp_path, monkeypatch):
    """DuckDB's INTERVAL reads in pyarrow as 12 bytes without their meaning: written back, the
    column would be a BLOB. The fallback refuses, naming the column, and keeps the file."""
    from smallpond.io import parquet_kv

    path = tmp_path / "interval.parquet"
    duckdb.sql(f"COPY (SELECT INTERVAL 1 DAY * range AS span, range AS a FROM range(100)) TO '{path}' (FORMAT PARQUET)")
    data = path.read_bytes()
    monkeypatch.setattr(parquet_kv, "MAX_FOOTER_BYTES", 10)
    with pytest.raises(ValueError, match=r"interval\.parquet.*other column types \(span: Interval -> None\)"):
        set_kv_metadata(str(path), {"k": "v"})
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["interval.parquet"]


def test_an_unreadable_footer_is_refused_naming_the_file_and_why(tmp_path):
    path = tmp_path / "bad.parquet"
    garbage = b"PAR1" + b"\x07" * 100 + (50).to_bytes(4, "little") + b"PAR1"
    path.write_bytes(garbage)
    with pytest.raises(ValueError, match=r"bad\.parquet.*could not be parsed, and pyarrow could not rewrite it"):
        set_kv_metadata(str(path), {"k": "v"})
    assert path.read_bytes() == garbage
    assert [p.name for p in tmp_path.iterdir()] == ["bad.parquet"]
    big = tmp_path / "bad.parquet"
    big.write_bytes(b"PAR1" + b"\x07" * 100 + (1 << 30).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(ValueError, match=r"footer length 1,073,741,824 is over"):
        set_kv_metadata(str(big), {"k": "v"})


def test_an_encrypted_footer_is_refused_as_such(tmp_path):
    path = tmp_path / "enc.parquet"
    path.write_bytes(b"PARE" + b"\x00" * 100 + (50).to_bytes(4, "little") + b"PARE")
    with pytest.raises(ValueError, match=r"enc\.parquet.*encrypted"):
        set_kv_metadata(str(path), {"k": "v"})
