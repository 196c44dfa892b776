"""Parquet writer options: the DuckDB and pyarrow writers are given the same settings."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.io.parquet import ParquetWriterOptions


def _table() -> pa.Table:
    # compressible but not trivially: the levels give files of different sizes
    return duckdb.sql("SELECT md5(i::VARCHAR) || md5((i * 7)::VARCHAR) AS s, i FROM range(200000) t(i)").to_arrow_table()


def _pyarrow_bytes(tmp_path, name: str, options: ParquetWriterOptions) -> bytes:
    path = tmp_path / name
    pq.write_table(_table(), path, row_group_size=options.row_group_size, **options.pyarrow())
    return path.read_bytes()


def test_zstd_without_a_level_is_level_3_on_both_writers(tmp_path):
    """pyarrow's own default ZSTD level is 1 and DuckDB's is 3: a node that gives no level must not
    write other files depending on which engine runs it."""
    none = ParquetWriterOptions(compression="zstd", compression_level=None)
    assert none == ParquetWriterOptions(compression="zstd", compression_level=3)
    assert none.pyarrow()["compression_level"] == 3
    assert "COMPRESSION_LEVEL 3" in none.duckdb()
    level1 = _pyarrow_bytes(tmp_path, "l1.parquet", ParquetWriterOptions(compression="zstd", compression_level=1))
    level3 = _pyarrow_bytes(tmp_path, "l3.parquet", ParquetWriterOptions(compression="zstd", compression_level=3))
    assert level1 != level3
    assert _pyarrow_bytes(tmp_path, "none.parquet", none) == level3
    # DuckDB's writer, given no level at all, compresses as much as both are now told to
    t = _table()  # noqa: F841 (read by DuckDB's replacement scan)
    sizes = {}
    for name, opts in (("default", "COMPRESSION 'zstd'"), ("given", none.duckdb())):
        out = tmp_path / f"duck-{name}.parquet"
        duckdb.sql(f"COPY t TO '{out}' ({opts} {'' if name == 'given' else ', DICTIONARY_SIZE_LIMIT 0'})")
        sizes[name] = out.stat().st_size
    assert sizes["default"] == sizes["given"]


def test_other_codecs_keep_no_level():
    assert ParquetWriterOptions(compression="snappy", compression_level=None).compression_level is None
    assert "COMPRESSION_LEVEL" not in ParquetWriterOptions(compression="snappy", compression_level=None).duckdb()
    assert "compression_level" not in ParquetWriterOptions(compression=None, compression_level=None).pyarrow()
