"""explain() marks the nodes whose output may differ between two runs of the same plan."""

from __future__ import annotations

from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.determinism import nondeterminism
from smallpond.logical.node import (
    ArrowComputeNode,
    Context,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)


def ident(runtime_ctx, tables):
    return tables[0]


def test_marks():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    one_thread = SqlEngineNode(ctx, (src,), "select key, count(*) from {0} group by key")
    many_ordered = SqlEngineNode(ctx, (src,), "select * from {0} order by key", cpu_limit=4, per_thread_output=False)
    many_unordered = SqlEngineNode(
        ctx, (src,), "select key, count(*) from {0} group by key", cpu_limit=4, per_thread_output=False
    )
    per_thread = SqlEngineNode(ctx, (src,), "select * from {0} order by key", cpu_limit=4)
    clock = SqlEngineNode(ctx, (src,), "select *, now() as t from {0}")
    seeded = SqlEngineNode(ctx, (src,), "select *, random() as r from {0}")
    batched = SqlEngineNode(ctx, (src,), "select * from {0}", batched_processing=True)
    hashed1 = HashPartitionNode(ctx, (src,), 4, ["key"])
    hashed4 = HashPartitionNode(ctx, (src,), 4, ["key"], cpu_limit=4)
    python = ArrowComputeNode(ctx, (src,), process_func=ident)

    assert nondeterminism(one_thread) == [] and nondeterminism(seeded) == [] and nondeterminism(hashed1) == []
    assert "equal sort keys" in nondeterminism(many_ordered)[0]  # ties: DuckDB measured to reorder them
    assert "no final ORDER BY" in nondeterminism(many_unordered)[0]
    # a float sum or a list() combined from several threads' partial aggregates: measured to vary
    assert all("aggregates" in nondeterminism(n)[0] for n in (many_ordered, many_unordered))
    assert "per-thread files" in nondeterminism(per_thread)[0]
    assert nondeterminism(clock) == ["its SQL reads the clock"]
    assert "batched_processing" in nondeterminism(batched)[0]
    assert "row order within partitions" in nondeterminism(hashed4)[0]
    assert "user Python" in nondeterminism(python)[0]

    text = LogicalPlan(ctx, python).explain_str()
    assert "ArrowComputeNode-" in text and "[may differ between runs: user Python" in text
    assert "DataSourceNode" in text and text.count("may differ") == 1


def test_random_numbers_drawn_by_several_threads_are_marked():
    # each DuckDB thread draws from a stream of its own (measured: the same seed, 2 threads, 5
    # runs over a 20-row-group file gave 5 different sums of i * random()), so with several
    # threads a row's number depends on the thread that read it; one thread draws in row order
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    drawn = SqlEngineNode(ctx, (src,), "select *, random() as r from {0} order by r", cpu_limit=2, per_thread_output=False)
    shuffled = HashPartitionNode(ctx, (src,), 4, random_shuffle=True, cpu_limit=2)
    assert any("which row gets which random number" in r for r in nondeterminism(drawn))
    assert any("which partition a row goes to" in r for r in nondeterminism(shuffled))
    one_thread = HashPartitionNode(ctx, (src,), 4, random_shuffle=True)
    assert nondeterminism(one_thread) == []


def test_a_percentage_sample_without_a_seed_is_marked():
    # DuckDB draws a system/bernoulli sample from the OS whatever setseed says; a reservoir
    # sample and a sample given a seed follow the task's seed
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    marked = [
        "select * from {0} using sample 10%",
        "select * from {0} tablesample 10% where key > 1",
        "select * from {0} using sample 10 percent (bernoulli) order by key",
        "select * from (select * from {0} using sample 5%) t join {0} using (key)",
    ]
    unmarked = [
        "select * from {0} using sample 10% (bernoulli, {rand_seed})",
        "select * from {0} using sample bernoulli(10%) repeatable ({rand_seed})",
        "select * from {0} using sample 10% (system, 5)",
        "select * from {0} using sample 50 rows",
        "select * from {0} using sample reservoir(10%)",
    ]
    for sql in marked:
        assert any("samples a percentage without a seed" in r for r in nondeterminism(SqlEngineNode(ctx, (src,), sql))), sql
    for sql in unmarked:
        assert nondeterminism(SqlEngineNode(ctx, (src,), sql)) == [], sql


def test_sql_reading_the_clock_is_marked_whichever_function_reads_it():
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
    clocks = ("now()", "current_localtimestamp()", "current_localtime()", "uuidv7()", "today()", "get_current_time()")
    # DuckDB's pg_postmaster_start_time() and pg_conf_load_time() are the time its connection was made
    for fn in (*clocks, "pg_postmaster_start_time()", "pg_conf_load_time()"):
        assert nondeterminism(SqlEngineNode(ctx, (src,), f"select *, {fn} as t from {{0}}")) == ["its SQL reads the clock"], fn
    assert nondeterminism(SqlEngineNode(ctx, (src,), "select *, uuid() as u from {0}")) == []  # follows the task's seed
