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
