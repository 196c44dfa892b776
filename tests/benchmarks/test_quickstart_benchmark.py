"""The quick-start benchmark runs end to end on a tiny file and both sides agree (no timing checks)."""

from __future__ import annotations

from benchmarks import quickstart


def test_quickstart_benchmark_tiny(tmp_path):
    timings = quickstart.run(rows=2000, repeat=1, data_dir=str(tmp_path), check=True)
    assert len(timings.runs["smallpond"]) == 1 and len(timings.runs["duckdb"]) == 1
