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


def _log_lines(data_root, pattern):
    """The matches of ``pattern`` in the logs under ``data_root``, once per job and match (a line of an
    attempt may be in its own log and in its worker's)."""
    found = {}
    for path in glob.glob(os.path.join(data_root, "**", "*.log"), recursive=True):
        job = os.path.relpath(path, data_root).split(os.sep)[0]
        with open(path, errors="replace") as f:
            for m in re.finditer(pattern, f.read()):
                found[(job, m.group(1))] = m.group(2)
    return [found[k] for k in sorted(found)]


def _elastic_starts(data_root):
    """The ``threads=N (elastic)`` of every attempt started under ``data_root`` (from the logs)."""
    return sorted(int(t) for t in _log_lines(data_root, r"start (\S+ attempt \d+) .* threads=(\d+) \(elastic\)"))


def _declined(data_root):
    """Why each attempt under ``data_root`` declined the threads offered (from the logs)."""
    return _log_lines(data_root, r"(\S+): runs with threads=\d+ \(the elastic threads=\d+ declined: ([^\n]*?), so")


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


# --- the default ("safe"): more threads only where the output bytes cannot depend on them ---


def _odd(tmp_path, sizes=((60_000, 7_001), (45_007, 20_003), (80_000, 122_880), (30_001, 1_009))):
    """Several files of odd row-group sizes (and rows not a multiple of DuckDB's 2048-row chunks),
    with NULLs, a negative zero, strings, lists and structs."""
    paths, start = [], 0
    for i, (rows, group) in enumerate(sizes):
        path = str(tmp_path / f"odd-{i}.parquet")
        duckdb.sql(
            "COPY (SELECT range AS id, (hash(range) % 1000)::INT AS k, CASE WHEN range % 101 = 0 THEN NULL "
            "WHEN range % 103 = 0 THEN -0.0 ELSE hash(range)::DOUBLE / 1e19 - 0.9 END AS x, "
            "CASE WHEN range % 7 = 0 THEN NULL ELSE 'v' || (range % 977) END AS s, "
            "[range % 5, range % 3][1:(range % 3)::INT] AS l, {'a': range % 11, 'b': 'w' || (range % 13)} AS st "
            f"FROM range({start}, {start + rows})) TO '{path}' (FORMAT PARQUET, ROW_GROUP_SIZE {group})"
        )
        paths.append(path)
        start += rows
    return paths


ROW_WISE = {
    "scan": "select * from {0}",
    "projection": "select id, x * 1.7 + sqrt(abs(x)) as y, ln(abs(x) + 1) / 3 as z, upper(s) as u, "
    "s || '-' || id::varchar as t, x::decimal(18, 4) as d, coalesce(s, 'none') as c, "
    "case when k < 10 then 'a' else 'b' end as w, st.b as sb, list_transform(l, lambda v: v * 2) as l2, "
    "regexp_replace(s, '1', 'one') as r, hash(s) as h from {0}",
    # (DuckDB 2.0.1 plans a LIMIT of more than 50 rows (late_materialization_max_rows) of fewer than
    # its input's with a sort and a join, "late materialization": refused; at most 50 it streams)
    "limit": "select id, x * 2 as x2, upper(s) as u from {0} limit 50",
}
#: shapes whose bytes were measured to follow the thread count (rows, their order or row groups)
NOT_ROW_WISE = {
    "filter": "select * from {0} where x > 0.1 and s like '%3%'",
    "group_by": "select k, sum(x) as sx, list(id) as ids from {0} group by k",
    "ungrouped_sum": "select sum(x) as sx, avg(x) as ax from {0}",
    "order_by_ties": "select * from {0} order by k",
    "unnest": "select id, unnest(l) as v from {0}",
}


@pytest.mark.parametrize("shape", [*ROW_WISE, *NOT_ROW_WISE])
def test_the_default_writes_the_same_bytes_at_one_and_two_threads(make_rt, data_root, tmp_path, shape):
    """By default a lone task is given the idle CPUs only if its output cannot depend on them: the
    row-wise shapes run with 2 threads and write, run after run, the file one thread writes (odd
    row groups, several input files); the others (a filter, aggregates, a sort with ties, an
    unnest: measured to write other bytes with 2 threads) are not offered them or decline them."""
    paths = _odd(tmp_path)
    sql = {**ROW_WISE, **NOT_ROW_WISE}[shape]

    def digest(files):
        assert len(files) == 1
        return hashlib.sha256(open(files[0], "rb").read()).hexdigest()

    one = digest(_run(make_rt, paths, sql, 1, cpus=1, elastic="safe"))
    runs = 3
    digests = [digest(_run(make_rt, paths, sql, 1, cpus=2, elastic="safe")) for _ in range(runs)]
    assert digests == [one] * runs
    offered = _elastic_starts(data_root)
    if shape in ROW_WISE:
        assert offered == [2] * runs and _declined(data_root) == []  # they did run with 2 threads
    else:
        assert len(_declined(data_root)) == len(offered)  # not offered, or declined each time


def test_a_task_that_declines_the_offered_threads_says_why_and_runs_with_its_cpu_limit(make_rt, data_root, tmp_path):
    """An aggregate without GROUP BY passes the look at its text but not its plan: the attempt logs
    that it declined, and runs with one thread."""
    paths = _input(tmp_path, rows=20_000)
    files = _run(make_rt, paths, "select count(*) as n, sum(id) as s from {0}", 1, cpus=4, elastic="safe")
    assert duckdb.sql(f"select n from read_parquet({files!r})").fetchall() == [(20_000,)]
    assert _elastic_starts(data_root) == [4]
    assert _declined(data_root) == ["its COPY is not an ordered batch copy (COPY_TO_FILE)"]
    assert _log_lines(data_root, r"(\S+): runs with threads=(\d+) \(the elastic") == ["1"]


def test_the_default_gives_a_lone_row_wise_task_the_free_cpus_and_elastic_false_does_not(make_rt, data_root, tmp_path):
    assert make_rt().elastic_threads == "safe"  # (the runtime context's default)
    paths = _input(tmp_path, rows=20_000)
    _run(make_rt, paths, "select id, s from {0}", 1, cpus=4, elastic="safe")
    assert _elastic_starts(data_root) == [4] and _declined(data_root) == []
    _run(make_rt, paths, "select id, s from {0}", 1, cpus=4, elastic=False)
    assert _elastic_starts(data_root) == [4]  # (no more)
    # a query that reads the thread count is not offered more: its bytes would follow them
    sql = "select current_setting('threads') as t, id, s from {0}"
    assert set(_threads(_run(make_rt, paths, sql, 1, cpus=4, elastic="safe")).values()) == {1}
    # an ORDER BY task only with the opt-in
    ordered = sql + " order by id"
    assert set(_threads(_run(make_rt, paths, ordered, 1, cpus=4, elastic="safe")).values()) == {1}
    assert set(_threads(_run(make_rt, paths, ordered, 1, cpus=4, elastic=True)).values()) == {4}


def test_many_row_wise_tasks_get_one_thread_each_by_default(make_rt, data_root, tmp_path):
    paths = _input(tmp_path, rows=5_000, files=8)
    files = _run(make_rt, paths, "select id, s from {0}", 8, cpus=2, elastic="safe")
    assert len(files) == 8
    # two workers, two CPUs: while others wait, each runs with one thread; only the stage's last
    # task may find both CPUs free
    offered = _elastic_starts(data_root)
    assert len(offered) <= 1 and max(offered, default=2) <= 2, offered


@pytest.mark.parametrize(
    "sql, refused",
    [
        ("select * from {0}", None),
        ("select id * 2 as a, upper(s) as b from {0} limit 10", None),
        ("select * from {0} where id > 3", "its plan has a filter in READ_PARQUET"),
        ("select * from {0} union all select * from {0}", "its plan has UNION"),
        ("select id from {0} limit 10 offset 5", "its plan has"),
        ("select unnest([id, id]) from {0}", "its plan has UNNEST"),
        ("select s, count(*) from {0} group by s", "its COPY is not an ordered batch copy (COPY_TO_FILE)"),
        ("select * from {0} order by s", "its plan has ORDER_BY"),
        ("select * from {0} using sample 5 rows", "its plan has"),
    ],
)
def test_only_plans_of_whole_chunks_in_order_are_accepted(tmp_path, sql, refused):
    from smallpond.execution.ops.elastic import plan_refusal

    path = _input(tmp_path, rows=3_000)[0]
    query = sql.format(f"read_parquet('{path}')")
    got = plan_refusal(duckdb.connect(), f"COPY ({query}) TO '{tmp_path}/out.parquet' (FORMAT PARQUET)")
    assert got == refused if refused is None else got.startswith(refused), got
    assert not os.path.exists(tmp_path / "out.parquet")  # (EXPLAIN writes nothing)


def test_a_row_group_closed_before_its_row_count_refuses(tmp_path):
    """A group closed by ROW_GROUP_SIZE_BYTES (or memory) may close elsewhere with other threads."""
    from smallpond.execution.ops.elastic import row_groups_refusal

    path = str(tmp_path / "g[1]'s*.parquet")  # (a name DuckDB would glob, and a quote)
    other = str(tmp_path / "g1's.parquet")
    for p, size in ((path, 4096), (other, 10000)):
        duckdb.sql(
            f"COPY (SELECT range AS id FROM range(10000)) TO '{p.replace(chr(39), 2 * chr(39))}' (FORMAT PARQUET, ROW_GROUP_SIZE {size})"
        )
    conn = duckdb.connect()
    assert row_groups_refusal(conn, path, 4096) is None  # 4096, 4096, 1808: the last may be short
    assert row_groups_refusal(conn, path, 5000) == "its row group 0 was closed at 4096 rows, before 5000"
    assert row_groups_refusal(conn, path, 1_000_000) == "its row group 0 was closed at 4096 rows, before 1000000"


def test_a_node_whose_task_declined_is_offered_no_more_threads(make_rt, data_root, tmp_path):
    """After one task of a node declined the threads (its plan does not allow them), the node's
    other tasks are not offered any: the CPUs would be reserved for nothing."""
    paths = _input(tmp_path, rows=5_000, files=3)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(paths))
    parts = DataSetPartitionNode(ctx, (src,), npartitions=3)
    node = SqlEngineNode(ctx, (parts,), "select count(*) as n from {0}")
    rt = make_rt(task_cache=False)
    run_job(LogicalPlan(ctx, node), rt, executor=LocalExecutor(rt, 1, cpus=4))  # one worker: one task at a time
    assert len(_elastic_starts(data_root)) == len(_declined(data_root)) == 1


@pytest.mark.parametrize("explained", [[], [("physical_plan", "not json")], [("physical_plan", '{"name": "x"}')]])
def test_a_plan_that_cannot_be_read_refuses(monkeypatch, explained):
    """Another DuckDB may explain its plans otherwise: no proof then, and the task keeps cpu_limit."""
    from smallpond.execution.ops import elastic

    monkeypatch.setattr(elastic, "run_sql", lambda conn, sql: explained)
    assert elastic.plan_refusal(None, "COPY (SELECT 1) TO 'x.parquet'").startswith("its plan could not be read")


def _small_task_of_many_rows(tmp_path, monkeypatch, make_rt, sql):
    """A runner of ``sql`` as one task with a small memory limit over 955k rows of odd row groups
    (an elastic thread per 16 MiB), giving the digest of its one output file."""
    from smallpond.execution import sched_state

    monkeypatch.setattr(sched_state, "ELASTIC_MEMORY_PER_THREAD", 16 << 20)
    paths = _odd(tmp_path, sizes=((300_000, 7_001), (245_007, 20_003), (280_000, 122_880), (130_001, 1_009)))

    def run(cpus: int, memory_limit: int) -> str:
        files = _run(make_rt, paths, sql, 1, cpus=cpus, elastic="safe", memory_limit=memory_limit)
        assert len(files) == 1
        return hashlib.sha256(open(files[0], "rb").read()).hexdigest()

    return run


def test_row_groups_closed_by_their_bytes_are_written_again_with_one_thread(make_rt, data_root, tmp_path, monkeypatch):
    """Row groups that reach ROW_GROUP_SIZE_BYTES before their row count may be written otherwise
    with other threads (measured with DuckDB alone, 2M rows, a 4 MB bound: the same rows and row
    counts, but 3 different files in 5 runs at 1, 2 and 4 threads). The task takes the threads (its
    plan is a projection), sees a group closed before its row count, and writes the file again
    with one thread: the bytes are one thread's. (A 32 MiB task: its groups are bounded by 4 MiB;
    the scheduler lets such a task have 2 threads here, 16 MiB each.)"""
    # rows the projection makes ~8x wider than its input's: the estimate from the inputs' footers
    # (~22 bytes a row, under half of a 64 MiB task's 8 MiB groups) lets the task try, and the file shows
    run = _small_task_of_many_rows(
        tmp_path, monkeypatch, make_rt, "select id, x, repeat(coalesce(s, 'x'), 40) as u, l, st from {0}"
    )
    one = run(cpus=1, memory_limit=64 << 20)
    runs = 3
    twos = [run(cpus=2, memory_limit=64 << 20) for _ in range(runs)]
    assert twos == [one] * runs
    assert _elastic_starts(data_root) == [2] * runs
    assert [why.split(" was closed")[0] for why in _declined(data_root)] == ["its row group 0"] * runs


@pytest.mark.parametrize(
    "columns, sql",
    [
        # the name quoted: a look at the text without its quoted parts does not see it
        (None, "select \"current_setting\"('threads') as t, id, s from {0}"),
        (None, "select main.\"CURRENT_SETTING\"('threads') as t, id, s from {0}"),
        # in the input's columns (upstream's columns= may hold expressions), not the node's SQL
        (["id", "s", "current_setting('threads') as t"], "select * from {0}"),
        (["id", "s", "random() as t"], "select * from {0}"),
        (["id", "s", "uuid()::varchar as t"], "select id, s, t from {0}"),
    ],
)
def test_sql_reading_the_thread_count_or_drawing_random_numbers_keeps_its_cpu_limit(make_rt, data_root, tmp_path, columns, sql):
    """``current_setting('threads')`` is folded into a constant of a plain projection, and random
    numbers are drawn by each thread from a state of its own: DuckDB's plan shows nothing, so the
    text must keep such a task at ``cpu_limit``'s threads, wherever the call is written (a quoted
    name, an input's ``columns=``). With two threads their files differed from one thread's
    (DuckDB 2.0.1)."""
    paths = _odd(tmp_path, sizes=((60_000, 7_001), (45_007, 20_003)))

    def run(cpus):
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(paths, columns=columns))
        node = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (src,), npartitions=1),), sql)
        rt = make_rt(task_cache=False)  # the default, elastic_threads="safe"
        (out,) = run_job(LogicalPlan(ctx, node), rt, executor=LocalExecutor(rt, 1, cpus=cpus)).final_output.resolved_paths
        return hashlib.sha256(open(out, "rb").read()).hexdigest(), duckdb.sql(
            f"select distinct t::varchar from '{out}'"
        ).fetchall()

    one, values = run(1)
    assert [run(2)[0] for _ in range(2)] == [one, one]
    if "current_setting" in sql.lower() + str(columns):
        assert values == [("1",)]
    if columns is None:
        assert _elastic_starts(data_root) == []  # the node's SQL: not offered (the scheduler's look)
    else:  # offered (the node's SQL is a plain select), declined by the worker's look at the whole SQL
        assert _elastic_starts(data_root) == [2, 2]
        assert [why.split(" names ")[1].split()[0] for why in _declined(data_root)] == [columns[2].split("(")[0]] * 2


def test_names_in_strings_and_comments_do_not_refuse_the_threads():
    """A file path or a comment naming ``random`` calls nothing (DuckDB's tokenizer tells them apart)."""
    from smallpond.execution.ops.elastic import text_refusal

    assert text_refusal("select * from read_parquet(['/data/random/uuid.parquet']) -- random()\n/* uuid() */") is None
    assert text_refusal("select $$current_setting$$ as a, e'\\'rand' as b") is None
    assert text_refusal('select "Random"() as a') == 'its SQL names "Random" (its values may follow the threads)'


def _sleep(runtime_ctx, inputs, output_path, seconds=0.0):
    import time

    time.sleep(seconds)
    return True


def test_tiny_tasks_are_not_queued_onto_the_cpus_of_elastic_threads(make_rt, data_root, tmp_path, monkeypatch):
    """A lone SQL task takes 2 or 3 of 4 CPUs as elastic threads; then 20 tiny tasks become ready
    (their gate, a 0.3 s task, ends). Those that fit the free CPUs run; the others must wait for
    CPUs, not be queued behind them: an idle worker takes a queued attempt back at once and runs it on the CPUs the
    elastic threads hold (the scheduler then held one CPU more than there are: free_cpus -1)."""
    import functools

    import smallpond.execution.executors.local as local
    import smallpond.execution.scheduler as scheduler
    from smallpond.logical.node import PythonScriptNode, RootNode

    big = str(tmp_path / "big.parquet")
    duckdb.sql(f"COPY (SELECT range AS id, md5(range::varchar) s FROM range(3000000)) TO '{big}' (FORMAT PARQUET)")
    small = [str(tmp_path / f"s{i}.parquet") for i in range(20)]
    for p in small:
        duckdb.sql(f"COPY (SELECT range AS id FROM range(10)) TO '{p}' (FORMAT PARQUET)")
    ctx = Context()
    lone = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([big])),), 1),), "select * from {0}")
    gate_input = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(small[:1])),), 1)
    gate = PythonScriptNode(ctx, (gate_input,), process_func=functools.partial(_sleep, seconds=0.3))
    tiny = PythonScriptNode(
        ctx, (DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(small)),), 20), gate), process_func=_sleep
    )
    free = []
    for name in ("hold", "reserve"):
        original = getattr(scheduler, name)

        def noted(state, *args, _original=original, **kwargs):
            out = _original(state, *args, **kwargs)
            free.append(state.free_cpus)
            return out

        monkeypatch.setattr(scheduler, name, noted)
    monkeypatch.setattr(local, "QUEUE_BEHIND_SECONDS", 1e9)  # every task counts as short: queued when it may be
    rt = make_rt(task_cache=False)
    run_job(LogicalPlan(ctx, RootNode(ctx, (lone, tiny))), rt, executor=LocalExecutor(rt, 4, cpus=4))
    (threads,) = _elastic_starts(data_root)
    assert threads >= 2 and _declined(data_root) == []
    assert min(free) >= 0, free


def test_wide_input_rows_decline_the_threads_before_writing(make_rt, data_root, tmp_path, monkeypatch):
    """Rows so wide that a row group of 122,880 would fill more than half the writer's
    ROW_GROUP_SIZE_BYTES (estimated from the inputs' footers) decline the threads before writing:
    the file is written once, with one thread (rev42c measured a 300k-row map of 1.3 KB strings
    writing twice: 1.41-1.44 s against 0.74-0.82 s). Same bytes as one thread's."""
    run = _small_task_of_many_rows(tmp_path, monkeypatch, make_rt, "select id, x, upper(s) as u, l, st from {0}")
    one = run(cpus=1, memory_limit=32 << 20)
    two = run(cpus=2, memory_limit=32 << 20)
    assert two == one
    assert _elastic_starts(data_root) == [2]
    (why,) = _declined(data_root)
    assert why.startswith("its input rows of ~") and "would close row groups by their bytes" in why


@pytest.mark.parametrize("where", ["sql", "columns"])
@pytest.mark.parametrize("call", ["current_query_id()", "txid_current()", "current_transaction_id()"])
def test_sql_reading_the_worker_s_statement_count_writes_what_cpu_limit_s_threads_write(
    make_rt, data_root, tmp_path, call, where
):
    """``current_query_id()`` and the transaction ids count the statements the worker's connection
    ran: the plan check's ``EXPLAIN`` before the ``COPY`` moved them on, so a lone task offered the
    idle CPUs wrote another file than with ``elastic_threads=False`` (each the same run after run;
    whether threads are offered follows the machine's load). In the node's SQL the scheduler does
    not offer them; in an input's ``columns=`` the worker declines them before its ``EXPLAIN``."""
    paths = _odd(tmp_path, sizes=((60_000, 7_001), (45_007, 20_003)))
    columns = ["id", "s", f"{call} as q", "current_setting('threads') as t"] if where == "columns" else None
    sql = "select * from {0}" if where == "columns" else f"select {call} as q, id, s from {{0}}"

    def run(elastic):
        ctx = Context()
        src = DataSourceNode(ctx, ParquetDataSet(paths, columns=columns))
        node = SqlEngineNode(ctx, (DataSetPartitionNode(ctx, (src,), npartitions=1),), sql)
        rt = make_rt(elastic_threads=elastic, task_cache=False)
        (out,) = run_job(LogicalPlan(ctx, node), rt, executor=LocalExecutor(rt, 2, cpus=2)).final_output.resolved_paths
        if columns:  # (declined before its connection took them: it ran with one thread)
            assert duckdb.sql(f"select distinct t::varchar from '{out}'").fetchall() == [("1",)]
        return hashlib.sha256(open(out, "rb").read()).hexdigest()

    plain = run(False)
    assert [run("safe") for _ in range(2)] == [plain, plain]
    assert _elastic_starts(data_root) == ([] if where == "sql" else [2, 2])
    assert len(_declined(data_root)) == len(_elastic_starts(data_root))


def test_a_copy_out_of_memory_with_the_offered_threads_declines_them(make_rt, data_root, tmp_path, monkeypatch):
    """DuckDB's ordered copy buffers row groups per thread: 600k rows made 1 KB wide (row groups of
    16 MiB, a 128 MiB task's bound) ran out of 115 MiB with two threads and not with one
    (DuckDB 2.0.1). The attempt then failed (logged as an error, retried, a retry spent) where
    ``elastic_threads=False`` succeeded; now the task declines the threads and writes with one."""
    from smallpond.execution import sched_state

    monkeypatch.setattr(sched_state, "ELASTIC_MEMORY_PER_THREAD", 16 << 20)  # two threads for 128 MiB
    paths = []
    for i in range(2):  # (files of DuckDB's own row groups: those of 50,000 rows did not run out)
        paths.append(str(tmp_path / f"in-{i}.parquet"))
        duckdb.sql(
            f"COPY (SELECT range AS id, md5(range::VARCHAR) AS s FROM range({i * 300_000}, {(i + 1) * 300_000})) TO '{paths[-1]}' (FORMAT PARQUET)"
        )
    sql = "select id, rpad(s, 1000, 'x') as w from {0}"

    def digest(elastic):
        (out,) = _run(make_rt, paths, sql, 1, cpus=2, elastic=elastic, memory_limit=128 << 20)
        return hashlib.sha256(open(out, "rb").read()).hexdigest()

    assert digest("safe") == digest(False)
    assert _elastic_starts(data_root) == [2]  # one attempt, not retried
    assert _declined(data_root) == ["it ran out of memory with 2 threads"]
