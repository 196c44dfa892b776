"""The benchmarks' plans and validators on tiny sizes (correctness only: no timing assertions)."""

from __future__ import annotations

import glob
import os
import time

import pyarrow.parquet as pq
import pytest

from benchmarks import common, gray_sort, hash_partition, overhead
from tests.datagen import column_chunk_formats, node_output_files


# -- gray sort -----------------------------------------------------------------------------------
def test_generated_records_are_deterministic_and_graysort_shaped():
    a = gray_sort.generate_records(7, 1000, 50)
    b = gray_sort.generate_records(7, 1000, 50)
    c = gray_sort.generate_records(8, 1000, 50)
    assert a.equals(b) and not a.equals(c)
    assert a.schema.field("key").type.byte_width == 10 and a.schema.field("payload").type.byte_width == 90
    payload = a.column("payload")[3].as_py()
    assert payload[:2] == b"\x00\x11" and payload[-4:] == b"\xcc\xdd\xee\xff"
    assert int(payload[2:34], 16) == 1003  # the record number, in ASCII hex


def test_bucket_expression_is_a_monotone_range_partition():
    import duckdb

    expr = gray_sort.bucket_expression(5)
    got = duckdb.sql(
        f"select {expr.replace('key', 'k')} from (select unhex(h)::BLOB as k from (values ('0000'), ('3334'), ('8000'), ('FFFF')) t(h))"
    ).fetchall()
    assert [r[0] for r in got] == [0, 1, 2, 4]


@pytest.mark.parametrize("npartitions", [1, 3, 16, 1000])
def test_split_points_give_the_bucket_expressions_buckets(npartitions):
    # the tuned plan's RangePartitionNode and the expression plan's ShuffleNode put every key in
    # the same bucket: checked in DuckDB, over every 2-byte prefix
    import duckdb

    from smallpond.execution.ops.range import range_index_sql, sql_literal

    points = [sql_literal(p) for p in gray_sort.split_points(npartitions)]
    by_range = range_index_sql("k", points, npartitions) if points else "0"
    by_expr = gray_sort.bucket_expression(npartitions).replace("key", "k")
    keys = "select (unhex(printf('%04X', v)) || unhex('00FF00FF00FF00FF'))::BLOB as k from range(65536) t(v)"
    differ = duckdb.sql(f"select count(*) from ({keys}) where ({by_range}) <> ({by_expr})").fetchall()[0][0]
    assert differ == 0
    assert len(gray_sort.split_points(npartitions)) == npartitions - 1


@pytest.mark.parametrize("sort_engine", ["arrow", "duckdb"])
def test_gray_sort_plan_sorts_and_validates(tmp_path, sort_engine):
    inputs = gray_sort.generate_input(str(tmp_path / "data"), 30_000, 3, seed=1, executors=2)
    assert len(inputs) == 1  # 30k records fit one generated chunk
    summary = gray_sort.summarize(inputs)
    assert summary["records"] == 30_000
    # an unsorted input fails the order check
    with pytest.raises(gray_sort.ValidationError):
        gray_sort.validate_sorted(summary, inputs)

    plan = gray_sort.gray_sort_plan(inputs, 5, compression="zstd", sort_engine=sort_engine)
    exec_plan = common.run_plan(plan, str(tmp_path / "jobs"), 2)
    files = gray_sort.sorted_output_files(exec_plan)
    assert len(files) == 5
    # the same Parquet as DuckDB's sort writes: compression and physical types (BLOBs are BYTE_ARRAY)
    columns = [pq.ParquetFile(f).metadata.row_group(0).column(i) for f in files for i in (0, 1)]
    assert {(c.compression, c.physical_type) for c in columns} == {("ZSTD", "BYTE_ARRAY")}
    result = gray_sort.validate_sorted(summary, files)
    assert result["records"] == 30_000
    # partitions out of order are caught
    with pytest.raises(gray_sort.ValidationError):
        gray_sort.validate_sorted(summary, files[::-1])

    out = str(tmp_path / "duckdb.parquet")
    gray_sort.duckdb_sort(inputs, out, threads=2, memory_limit=None, compression="snappy", temp_dir=str(tmp_path / "tmp"))
    assert gray_sort.validate_sorted(summary, [out])["checksum"] == summary["checksum"]


def test_the_arrow_sort_orders_keys_by_all_ten_bytes():
    """``_sort_by_key`` sorts by the keys' first 8 bytes as an integer; keys sharing those 8 bytes
    must still come out in the order of their last 2 (and keys of other types by Arrow)."""
    import random

    import pyarrow as pa

    rng = random.Random(5)
    keys = [rng.randbytes(10) for _ in range(300)]
    keys += [b"\x80" * 8 + bytes([b, a]) for a in range(3) for b in (9, 0, 255)]  # shared prefixes
    keys += [b"\xff" * 10, b"\x00" * 10, b"\x00" * 10]
    rng.shuffle(keys)
    table = pa.table(
        {
            "key": pa.array(keys, pa.binary(10)),
            "payload": pa.array([bytes([i % 256]) * 90 for i in range(len(keys))], pa.binary(90)),
        }
    )
    for t in (table, table.slice(7), pa.concat_tables([table.slice(0, 100), table.slice(100)])):
        out = gray_sort._sort_by_key(None, [t])
        assert out.column("key").to_pylist() == sorted(t.column("key").to_pylist())
        assert out.schema.types == [pa.binary(), pa.binary()]  # what DuckDB reads and writes
        assert sorted(zip(*out.to_pydict().values())) == sorted(zip(*t.to_pydict().values()))
    variable = table.cast(pa.schema([("key", pa.binary()), ("payload", pa.binary(90))]))
    assert gray_sort._sort_by_key(None, [variable]).column("key").to_pylist() == sorted(keys)
    assert gray_sort._sort_by_key(None, [table.slice(0, 0)]).num_rows == 0


def test_gray_sort_plan_shuffles_with_one_producer_per_input_file(tmp_path):
    """The tuned plan's shuffle has a producer per input file: over the input as one partition the
    planner makes 8 producers of equal row counts, which cut files in the middle of a row group
    that both producers then read and decode (and 8 x P staging files for the sorts to open)."""
    from smallpond.execution.ops.range import RangePartitionTask

    inputs = []
    for i in range(3):
        inputs.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(gray_sort.generate_records(7, i * 10_000, 10_000), inputs[-1], row_group_size=4_000)
    summary = gray_sort.summarize(inputs)
    exec_plan = common.run_plan(gray_sort.gray_sort_plan(inputs, 4), str(tmp_path / "jobs"), 2)
    producers = [t for t in exec_plan.tasks.values() if isinstance(t, RangePartitionTask)]
    assert sorted(r.path for t in producers for r in exec_plan.results[t.input_keys[0]].resolved_row_ranges) == inputs
    assert len(producers) == 3
    assert gray_sort.validate_sorted(summary, gray_sort.sorted_output_files(exec_plan))["records"] == 30_000


def _drop_bytecode(module: str) -> str:
    """Remove the compiled bytecode of a smallpond module; returns its path."""
    import importlib.util

    pyc = importlib.util.cache_from_source(importlib.util.find_spec(module).origin)
    if os.path.exists(pyc):
        os.unlink(pyc)
    return pyc


def test_gray_sort_main_tiny(tmp_path, capsys):
    # the workers load smallpond compiled, as installed, even where PYTHONDONTWRITEBYTECODE is set
    # (each worker compiled ~30 modules, ~50 ms, in an editable checkout without bytecode)
    pyc = _drop_bytecode("smallpond.execution.ops.range")
    assert (
        gray_sort.main(
            ["--records", "20K", "--partitions", "3", "--repeat", "1", "--data-dir", str(tmp_path), "--memory-limit", "256MB"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ratio smallpond/DuckDB" in out and "(validated)" in out
    # the job roots and DuckDB outputs of timed runs are removed; the cached input stays
    assert os.listdir(tmp_path / "jobs") == []
    assert any(n.startswith("graysort-") for n in os.listdir(tmp_path))
    assert os.path.exists(pyc)


def test_gray_sort_user_plan_tiny(tmp_path, capsys):
    """The user plan (DataSetPartitionNode(20) → bucket SQL → ShuffleNode → ORDER BY → sink) sorts,
    validates, reports peak RSS of both sides and removes its sink folders."""
    args = ["--records", "20K", "--partitions", "3", "--repeat", "1", "--data-dir", str(tmp_path), "--plan", "user"]
    assert gray_sort.main(args) == 0
    out = capsys.readouterr().out
    assert "(validated)" in out and out.count("peak RSS") == 2 and out.count(" CPU ") == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith("user-sorted-")]


PEAK_OF_A_CHILD = """
import subprocess, sys
from benchmarks import common
with common.PeakRss(interval=0.01) as alone:
    pass
code = "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(0.5)"
with common.PeakRss(interval=0.01) as tree:
    subprocess.run([sys.executable, "-c", code], check=True)
print(tree.peak - alone.peak)
"""


def test_peak_rss_counts_child_processes():
    # measured in a fresh process: the test process's own descendants (the Ray test cluster's
    # raylets and workers when a Ray test ran before in it, workers of its earlier jobs) come and
    # go between the two blocks; one that ended after the first (seen: the workers of a Ray job,
    # once in 60) took its memory off the second and the difference fell to 12 MiB
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([common.REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PEAK_OF_A_CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 150 * 2**20


def test_cpu_time_counts_children_still_alive_and_peak_rss_leaves_out_workers_kept_idle(parquet_files, make_rt, monkeypatch):
    """A smallpond job keeps its idle workers for the process's next one: the CPU they used in a
    block counts though they are not reaped, and while kept idle (DuckDB's side) they are no one's."""
    import subprocess
    import sys

    from smallpond.execution.executors import local_spares
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, SqlEngineNode

    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nimport sys; sys.stdin.read()"
    with common.CpuTime() as cpu:
        child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
        while common.descendant_cpu().get(child.pid, 0) < 0.4:
            time.sleep(0.02)
    child.communicate(b"")
    assert cpu.seconds - cpu.here >= 0.4 - 1e-9  # both sides are sums of clock ticks: 0.4466 - 0.0466 < 0.4 in floats

    monkeypatch.setenv("SP_FORK_WORKERS", "0")  # fresh interpreters (kept), whatever this process holds
    local_spares.release()
    try:
        ctx = Context()
        run_job(
            LogicalPlan(ctx, SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select * from {0}")),
            make_rt(),
        )
        kept = set(local_spares.kept())
        assert kept
        with common.PeakRss(interval=0.01) as alone:
            time.sleep(0.1)
        assert all(kept <= set(s) for s in alone._samples)  # sampled, as every descendant
        assert alone.peak == max(sum(rss for pid, rss in s.items() if pid not in kept) for s in alone._samples)
    finally:
        local_spares.release()


def test_the_dirty_flag_ignores_the_results_table(tmp_path):
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "smallpond").mkdir()
    (repo / "benchmarks" / "RESULTS.md").write_text("a\n")
    (repo / "smallpond" / "x.py").write_text("a\n")
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([git, "-C", str(repo), *cmd], check=True, env=env)
    old = common.REPO_ROOT
    common.REPO_ROOT = str(repo)
    try:
        (repo / "benchmarks" / "RESULTS.md").write_text("b\n")
        assert not common.git_commit().endswith("+dirty")
        (repo / "smallpond" / "x.py").write_text("b\n")
        assert common.git_commit().endswith("+dirty")
    finally:
        common.REPO_ROOT = old


# -- hash partition ------------------------------------------------------------------------------
def test_hash_partition_matches_duckdb(tmp_path):
    inputs = hash_partition.generate_input(str(tmp_path / "data"), 20_000, 2, seed=3)
    summary = hash_partition.summarize_input(inputs)
    assert summary["rows"] == 20_000
    exec_plan = common.run_plan(hash_partition.hash_partition_plan(inputs, 7), str(tmp_path / "jobs"), 2)
    parts = hash_partition.partition_files(exec_plan)
    assert len(parts) == 7 and all(parts)
    out = str(tmp_path / "duckdb")
    hash_partition.duckdb_partition(
        inputs, out, 7, threads=2, memory_limit=None, compression="snappy", temp_dir=str(tmp_path / "tmp")
    )
    expected = hash_partition.validate_partitions(summary, hash_partition.duckdb_partition_files(out, 7), 7)
    got = hash_partition.validate_partitions(summary, parts, 7, expected)
    assert sum(s["rows"] for s in got) == 20_000
    # rows in the wrong partition are caught
    with pytest.raises(hash_partition.ValidationError):
        hash_partition.validate_partitions(summary, parts[1:] + parts[:1], 7)


def test_hash_partition_main_tiny(tmp_path, capsys):
    pyc = _drop_bytecode("smallpond.execution.ops.partition")
    assert hash_partition.main(["--rows", "10K", "--partitions", "4", "--repeat", "1", "--data-dir", str(tmp_path)]) == 0
    assert "(validated)" in capsys.readouterr().out
    assert os.path.exists(pyc)  # the workers load smallpond compiled, as installed


def test_hash_partition_user_plan_tiny(tmp_path, capsys):
    args = ["--rows", "10K", "--partitions", "4", "--repeat", "1", "--data-dir", str(tmp_path), "--plan", "user"]
    assert hash_partition.main(args) == 0
    out = capsys.readouterr().out
    assert "(validated)" in out and out.count("peak RSS") == 2 and out.count(" CPU ") == 2


# -- overhead ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["python", "sql"])
def test_overhead_plan_runs_one_result_per_task(tmp_path, kind):
    path = overhead.make_input(str(tmp_path), 12)
    exec_plan = common.run_plan(overhead.overhead_plan(path, 12, kind), str(tmp_path / "jobs"), 2)
    overhead.validate_outputs(exec_plan, 12, kind)
    with pytest.raises(overhead.ValidationError):
        overhead.validate_outputs(exec_plan, 13, kind)


def test_tiny_sql_tasks_and_duckdb_write_the_same_parquet_format(tmp_path):
    """Like for like: the DuckDB statements write what the SQL tasks write (the node's writer
    options: ZSTD, no dictionary pages), not DuckDB's default (Snappy with dictionaries)."""
    import glob

    from smallpond.io.parquet import ParquetWriterOptions

    path = overhead.make_input(str(tmp_path), 4)
    plan = overhead.overhead_plan(path, 4, "sql")
    exec_plan = common.run_plan(plan, str(tmp_path / "jobs"), 2)
    ours = node_output_files(exec_plan, plan.root_node)
    out = tmp_path / "duckdb"
    out.mkdir()
    overhead.duckdb_tiny_statements(path, str(out), 4, 1, ParquetWriterOptions.of(plan.root_node).duckdb())
    theirs = glob.glob(str(out / "*.parquet"))
    assert len(ours) == len(theirs) == 4
    assert column_chunk_formats(ours) == column_chunk_formats(theirs) == {("ZSTD", False)}
    default = tmp_path / "default"
    default.mkdir()
    overhead.duckdb_tiny_statements(path, str(default), 1, 1)  # without options: the same default
    assert column_chunk_formats(glob.glob(str(default / "*.parquet"))) == {("ZSTD", False)}


def test_overhead_compiles_smallpond_without_the_startup_run(tmp_path):
    """The throughput runs alone (``--skip-startup``) start fresh worker interpreters too (Python
    tasks run in workers with the job's hash seed): smallpond is compiled to bytecode first, so
    no worker compiles its sources (``PYTHONDONTWRITEBYTECODE`` is set on this machine)."""
    import importlib.util

    source = os.path.join(common.REPO_ROOT, "smallpond", "rowfuncs.py")
    compiled = importlib.util.cache_from_source(source)
    if os.path.exists(compiled):
        os.remove(compiled)
    args = ["--tasks", "4", "--kind", "python", "--skip-startup", "--repeat", "1", "--data-dir", str(tmp_path)]
    assert overhead.main(args) == 0
    assert os.path.exists(compiled)


def test_overhead_main_tiny_with_startup(tmp_path, capsys):
    assert overhead.main(["--tasks", "10", "--repeat", "1", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tasks/s" in out and "import to first result" in out and "(DataFrame)" in out


def test_both_sides_of_the_first_result_hand_back_an_arrow_table(tmp_path):
    """Like for like: DuckDB's side builds the same kind of result as smallpond's (an Arrow
    table, so both import pyarrow), not a Python value from ``fetchone``."""
    path = overhead.make_input(str(tmp_path), 5)
    ours = overhead.first_result_seconds(overhead._FIRST_RESULT_SMALLPOND, path, str(tmp_path / "jobs"), "1", "")
    frames = overhead.first_result_seconds(overhead._FIRST_RESULT_DATAFRAME, path, str(tmp_path / "jobs"), "1", "")
    theirs = overhead.first_result_seconds(overhead._FIRST_RESULT_DUCKDB, path)
    assert ours["rows"] == frames["rows"] == theirs["rows"] == 5
    assert ours["result"] == frames["result"] == theirs["result"] == "pyarrow.lib.Table"
    # the DataFrame side ran with a fresh task cache of its own (repeats never reuse a result)
    assert frames["cache"].startswith(str(tmp_path / "jobs")) and os.path.isdir(frames["cache"])


# -- results table -------------------------------------------------------------------------------
def test_append_results_writes_a_row_under_the_header(tmp_path):
    path = str(tmp_path / "RESULTS.md")
    common.append_results("gray sort", "1 record", "1.00 s", "0.50 s", "2.00", path=path)
    common.append_results("overhead", "2 tasks", "3 tasks/s", "4/s", "0.75", path=path)
    lines = open(path).read().splitlines()
    assert lines[0] == "# Benchmark results"
    rows = [line for line in lines if line.startswith("| 2")]
    assert len(rows) == 2 and "| gray sort |" in rows[0] and "cores" in rows[0]
    assert common.parse_count("5M") == 5_000_000 and common.parse_bytes("64MB") == 64 * 2**20


def test_generated_parquet_has_the_declared_columns(tmp_path):
    inputs = gray_sort.generate_input(str(tmp_path), 1000, 1, seed=0, executors=1)
    schema = pq.read_schema(inputs[0])
    assert schema.names == ["key", "payload"]


# -- scale ---------------------------------------------------------------------------------------
def test_scale_benchmark_plans_and_schedules_every_task(tmp_path):
    from benchmarks import scale

    result = scale.measure(600, 8, str(tmp_path / "root"))
    assert result["producers"] == 8 and result["consumers"] == (600 - 2 - 3 * 8) // 2
    assert result["tasks"] >= 2 * result["consumers"]  # every task was done (measure checks it)
    # with the task cache on, as a job has it: the sorts were keyed and indexed
    assert result["task_cache"] and glob.glob(str(tmp_path / "root" / "*" / "task_cache" / "index" / "*" / "*"))


def test_scale_benchmark_without_the_task_cache(tmp_path):
    from benchmarks import scale

    result = scale.measure(300, 4, str(tmp_path / "root"), task_cache=False)
    assert not result["task_cache"] and result["tasks"] >= 2 * result["consumers"]
    assert not glob.glob(str(tmp_path / "root" / "*" / "task_cache"))


def test_stage_summary_says_where_a_jobs_time_went(tmp_path):
    import json
    from types import SimpleNamespace

    events = [
        {"ev": "job_start", "t": 100.0},
        {"ev": "done", "t": 101.0, "key": "HashPartitionTask-000003", "node": 2, "started": 100.1, "elapsed": 0.9},
        {"ev": "done", "t": 101.2, "key": "HashPartitionTask-000004", "node": 2, "started": 100.2, "elapsed": 1.0},
        {"ev": "failed", "t": 101.3, "key": "SqlEngineTask-000005", "node": 3, "started": 101.2, "elapsed": 0.1},
        {"ev": "done", "t": 102.0, "key": "SqlEngineTask-000005", "node": 3, "started": 101.3, "elapsed": 0.7},
        {"ev": "run_end", "t": 102.1},
    ]
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    plan = SimpleNamespace(ctx=SimpleNamespace(job_root=str(tmp_path)))
    assert common.stage_summary(plan) == (
        "start to first task 0.10s; HashPartitionTask x2 1.10s (1.90 task-s); SqlEngineTask x1 0.70s (0.70 task-s); "
        "last task to end 0.10s"
    )
    assert common.stage_summary(SimpleNamespace(ctx=SimpleNamespace(job_root=str(tmp_path / "none")))) == ""
