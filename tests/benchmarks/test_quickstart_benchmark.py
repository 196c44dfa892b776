"""The quick-start benchmark runs end to end on a tiny file and both sides agree (no timing checks)."""

from __future__ import annotations

from benchmarks import quickstart
from tests.datagen import column_chunk_formats


def test_quickstart_benchmark_tiny(tmp_path):
    timings = quickstart.run(rows=2000, repeat=1, data_dir=str(tmp_path), check=True)
    assert len(timings.runs["smallpond"]) == 1 and len(timings.runs["duckdb"]) == 1


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
    assert column_chunk_formats(ours) == expected
    assert column_chunk_formats([os.path.join(work, "duck-out-0.parquet")]) == expected
