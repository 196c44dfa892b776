"""Elastic threads: a stage with fewer runnable tasks than free CPUs gives a task whose output
cannot change more DuckDB threads; many tasks do not oversubscribe; output bytes stay the same."""

from __future__ import annotations

import glob
import hashlib
import os
import re

import duckdb
import pytest

from smallpond.execution.executors.local import LocalExecutor
from smallpond.execution.job import run_job
from smallpond.execution.ops.duckdb import has_final_order_by
from smallpond.execution.scheduler import elastic_threads
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("select * from {0} order by id", True),
        ("SELECT a FROM t ORDER\n BY a DESC LIMIT 3", True),
        ("select * from (select * from {0} order by id)", False),
        ("select row_number() over (order by id) from {0}", False),
        ("select 'order by' from {0}", False),
        ('select a as "order by" from t -- order by a', False),
        ("select key, count(*) from {0} group by key", False),
    ],
)
def test_only_an_outermost_order_by_counts(sql, expected):
    assert has_final_order_by(sql) is expected


def test_a_share_of_the_free_cpus_never_less_than_asked_nor_more_than_a_machine_or_its_memory():
    gb = 1 << 30
    assert elastic_threads(1, free_cpus=8, runnable=1, most=8, memory=8 * gb) == 8
    assert elastic_threads(1, free_cpus=8, runnable=3, most=8, memory=8 * gb) == 2
    assert elastic_threads(1, free_cpus=2, runnable=16, most=2, memory=8 * gb) == 1  # many tasks: one each
    assert elastic_threads(2, free_cpus=2, runnable=16, most=2, memory=8 * gb) == 2
    assert elastic_threads(1, free_cpus=64, runnable=1, most=4, memory=8 * gb) == 4  # one machine's CPUs at most
    assert elastic_threads(1, free_cpus=8, runnable=1, most=8, memory=64 << 20) == 1  # a small limit: one thread
    assert elastic_threads(1, free_cpus=8, runnable=1, most=8, memory=512 << 20) == 2


def _input(tmp_path, rows=400_000, files=1):
    paths = []
    for i in range(files):
        path = str(tmp_path / f"in-{i}.parquet")
        duckdb.sql(
            f"COPY (SELECT range AS id, md5(range::VARCHAR) AS s FROM range({i * rows}, {(i + 1) * rows})) "
            f"TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE 50000)"
        )
        paths.append(path)
    return paths


def _run(make_rt, paths, sql, npartitions, cpus, elastic=True, **node_kwargs):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(paths))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=npartitions)
    node = SqlEngineNode(ctx, (parts,), sql, **node_kwargs)
    rt = make_rt(elastic_threads=elastic, task_cache=False)  # each run computes
    ex = LocalExecutor(rt, 2, cpus=cpus)
    ep = run_job(LogicalPlan(ctx, node), rt, executor=ex)
    return sorted(ep.final_output.resolved_paths)


def _threads(files):
    rows = duckdb.sql(f"SELECT DISTINCT filename, t FROM read_parquet({files!r}, filename=true)").fetchall()
    return {os.path.basename(f).split("-")[1].split(".")[0]: int(t) for f, t in rows}


def test_a_lone_ordered_task_gets_the_free_cpus_and_writes_the_same_bytes(make_rt, tmp_path):
    paths = _input(tmp_path)
    sql = "select current_setting('threads') as t, id, s from {0} order by id"
    wide = _run(make_rt, paths, sql, 1, cpus=4)
    assert set(_threads(wide).values()) == {4}
    narrow = _run(make_rt, paths, sql, 1, cpus=1)  # one CPU: one thread
    assert set(_threads(narrow).values()) == {1}

    def digest(files):  # the threads column differs by design; the rest must be byte for byte
        out = str(tmp_path / f"strip-{len(glob.glob(str(tmp_path / 'strip-*')))}.parquet")
        duckdb.sql(f"COPY (SELECT id, s FROM read_parquet({files!r})) TO '{out}' (FORMAT PARQUET)")
        return hashlib.sha256(open(out, "rb").read()).hexdigest()

    assert digest(wide) == digest(narrow)


def test_elastic_threads_are_off_unless_asked_for(make_rt, tmp_path):
    """Off by default: with ties in the sort keys, more threads may reorder equal rows, and the
    thread count would follow timing (outputs must stay byte-reproducible)."""
    paths = _input(tmp_path, rows=20_000)
    sql = "select current_setting('threads') as t, id, s from {0} order by id"
    assert set(_threads(_run(make_rt, paths, sql, 1, cpus=4, elastic=False)).values()) == {1}


def test_sql_without_a_final_order_by_keeps_its_cpu_limit(make_rt, tmp_path):
    paths = _input(tmp_path, rows=20_000)
    files = _run(make_rt, paths, "select current_setting('threads') as t, count(*) from {0} group by 1", 1, cpus=4)
    assert set(_threads(files).values()) == {1}


def test_many_tasks_get_one_thread_each(make_rt, tmp_path):
    paths = _input(tmp_path, rows=5_000, files=8)
    files = _run(make_rt, paths, "select current_setting('threads') as t, id from {0} order by id", 8, cpus=2)
    threads = _threads(files)
    assert len(threads) == 8
    # two workers, two CPUs: while others wait, each runs with one thread; only the stage's last
    # task may find both CPUs free
    assert sum(1 for t in threads.values() if t == 1) >= 7, threads
    assert max(threads.values()) <= 2


def _ties(tmp_path, rows=200_000, files=3):
    """Rows with many equal sort keys (100 values of ``k``, NULLs among them), whole duplicate
    rows, strings and NULL payloads."""
    paths = []
    for i in range(files):
        path = str(tmp_path / f"ties-{i}.parquet")
        duckdb.sql(
            "COPY (SELECT CASE WHEN range % 11 = 0 THEN NULL ELSE hash(range) % 100 END AS k, "
            "(range % 5000)::INT AS v, CASE WHEN range % 7 = 0 THEN NULL ELSE 's' || (hash(range) % 977) END AS s "
            f"FROM range({i * rows}, {(i + 1) * rows})) TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE 50000)"
        )
        paths.append(path)
    return paths


def _elastic_starts(data_root):
    """The ``threads=N (elastic)`` of every attempt started under ``data_root`` (from the logs)."""
    found = []
    for path in glob.glob(os.path.join(data_root, "**", "*.log"), recursive=True):
        with open(path, errors="replace") as f:
            found += re.findall(r"threads=(\d+) \(elastic\)", f.read())
    return sorted(int(t) for t in found)


def test_ties_broken_by_every_column_write_the_same_bytes_at_any_thread_count(make_rt, data_root, tmp_path):
    """``order by k, columns(*)`` (what ``partial_sort``'s docs advise for ties) writes the same file
    with one thread and with four, run after run, and with a memory limit that makes the sort
    spill, though most rows tie on ``k``. Without ``columns(*)`` two threads were measured to write
    3 different files in 3 runs, and one thread another file with 57 MiB than with 4 GiB (DuckDB
    2.0.1)."""
    paths = _ties(tmp_path)
    sql = "select * from {0} order by k, columns(*)"

    def digest(files):
        assert len(files) == 1
        return hashlib.sha256(open(files[0], "rb").read()).hexdigest()

    one = digest(_run(make_rt, paths, sql, 1, cpus=1))
    assert _elastic_starts(data_root) == []
    runs = 4
    digests = [digest(_run(make_rt, paths, sql, 1, cpus=4)) for _ in range(runs)]
    assert _elastic_starts(data_root) == [4] * runs  # each of those ran with four DuckDB threads
    assert digests == [one] * runs
    assert digest(_run(make_rt, paths, sql, 1, cpus=1, memory_limit=64 << 20)) == one  # (DuckDB: 57 MiB)
