"""The lone-task benchmark runs end to end on tiny input: its default task gets the idle CPU as a
DuckDB thread, writes the same bytes as one thread, and the same rows as DuckDB (no timing checks)."""

from __future__ import annotations

import glob
import os

import pytest

from benchmarks import lone_task
from benchmarks.common import usable_cpus
from tests.datagen import column_chunk_formats


def test_lone_task_benchmark_tiny(tmp_path, capsys):
    lone_task.main(["--rows", "20k", "--repeat", "1", "--data-dir", str(tmp_path), "--executors", "2"])
    out = capsys.readouterr().out
    assert "default vs one thread" in out and "(same output bytes)" in out
    assert "declined the threads (and wrote its file again with one): " in out and " of 1" in out


def test_a_declined_task_is_counted_from_its_log(tmp_path):
    log = tmp_path / "job" / "log" / "tasks"
    log.mkdir(parents=True)
    (log / "SqlEngineTask-000002.0.log").write_text("... SqlEngineTask-000002: runs with threads=1\n")
    assert not lone_task.declined(str(tmp_path))
    (log / "SqlEngineTask-000002.0.log").write_text(
        "... SqlEngineTask-000002: runs with threads=1 (the elastic threads=2 declined: its row group 26 "
        "was closed at 120064 rows, before 122880, so its output could depend on them)\n"
    )
    assert lone_task.declined(str(tmp_path))


@pytest.mark.skipif(usable_cpus() < 2, reason="an idle second CPU is what the default gives a lone task")
def test_both_sides_write_the_same_parquet_format_and_the_default_takes_threads(tmp_path):
    import smallpond

    files = lone_task.make_input(str(tmp_path / "in"), 20_000)
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=2)
    sp.read_parquet(files).map(lone_task.PROJECTION).write_parquet(str(tmp_path / "sp"))
    sp.shutdown()
    logs = "".join(open(f).read() for f in glob.glob(str(tmp_path / "root" / "**" / "*.log"), recursive=True))
    assert "threads=2 (elastic)" in logs and "declined" not in logs
    from smallpond.io.parquet import ParquetWriterOptions

    duck = str(tmp_path / "duck.parquet")
    code = lone_task.DUCKDB_SCRIPT.format(
        threads=2, projection=lone_task.PROJECTION, files=files, output=duck, writer_options=ParquetWriterOptions().duckdb()
    )
    lone_task.run_script(code, str(tmp_path))
    ours = sorted(glob.glob(os.path.join(str(tmp_path / "sp"), "*.parquet")))
    assert ours and column_chunk_formats(ours) == column_chunk_formats([duck]) == {("ZSTD", False)}
    assert lone_task.same_rows(str(tmp_path / "sp"), duck)
