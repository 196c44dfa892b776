"""The quick-start benchmark runs end to end on a tiny file and both sides agree (no timing checks)."""

from __future__ import annotations

from benchmarks import quickstart


def test_quickstart_benchmark_tiny(tmp_path):
    timings = quickstart.run(rows=2000, repeat=1, data_dir=str(tmp_path), check=True)
    assert len(timings.runs["smallpond"]) == 1 and len(timings.runs["duckdb"]) == 1


def _format_of(path: str) -> set:
    """(codec, has a dictionary page) of every column chunk of a Parquet file."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    return {
        (md.row_group(g).column(c).compression, md.row_group(g).column(c).has_dictionary_page)
        for g in range(md.num_row_groups)
        for c in range(md.num_columns)
    }


def test_both_sides_write_the_same_parquet_format(tmp_path):
    """Like for like: DuckDB's script writes what smallpond's write_parquet writes (ZSTD, no
    dictionary pages), not DuckDB's default (Snappy with dictionaries)."""
    import glob
    import os

    quickstart.run(rows=2000, repeat=1, data_dir=str(tmp_path), check=True)
    work = os.path.join(str(tmp_path), "quickstart", "work")
    ours = sorted(glob.glob(os.path.join(work, "sp-out-0", "*.parquet")))
    assert ours
    expected = {("ZSTD", False)}
    assert set().union(*(_format_of(p) for p in ours)) == expected
    assert _format_of(os.path.join(work, "duck-out-0.parquet")) == expected
