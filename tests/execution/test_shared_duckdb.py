"""SQL tasks in one worker share a DuckDB database through fresh cursors, and see nothing of each
other: no temp views, no tables, the same random numbers as with a database of their own."""

from __future__ import annotations

import pyarrow.parquet as pq

from smallpond.execution.job import run_job
from smallpond.execution.ops.duckdb import sql_may_outlive_task
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, SqlEngineNode


def _rows(exec_plan, column):
    out = []
    for path in exec_plan.final_output.resolved_paths:
        out.extend(pq.read_table(path).column(column).to_pylist())
    return out


def _partitioned(ctx, files, n):
    return DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), n, partition_by_rows=True)


def test_each_task_sees_only_its_own_temp_views(parquet_files, make_rt):
    ctx = Context()
    node = SqlEngineNode(
        ctx,
        (_partitioned(ctx, parquet_files, 6),),
        # two statements: the inputs are views (a single SELECT names them in a WITH clause instead)
        [
            "select 1",
            "select (select count(*) from duckdb_views() where starts_with(view_name, '__input')) as views, (select count(*) from duckdb_tables()) as tables, count(*) as n from {0}",
        ],
    )
    exec_plan = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    assert _rows(exec_plan, "views") == [1] * 6  # only the task's own input view
    assert _rows(exec_plan, "tables") == [0] * 6
    assert sum(_rows(exec_plan, "n")) == 30


def test_tasks_creating_tables_get_a_database_of_their_own(parquet_files, make_rt):
    ctx = Context()
    node = SqlEngineNode(
        ctx, (_partitioned(ctx, parquet_files, 4),), ["create table t as select * from {0}", "select count(*) as n from t"]
    )
    exec_plan = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    assert sorted(_rows(exec_plan, "n")) == [7, 7, 8, 8]


def test_random_numbers_follow_the_task_seed_as_in_a_database_of_their_own(parquet_files, tmp_path):
    from smallpond.execution.job import make_runtime_ctx
    from smallpond.execution.planner import Planner
    from smallpond.execution.scheduler import Scheduler

    def plan():
        ctx = Context()
        node = SqlEngineNode(ctx, (_partitioned(ctx, parquet_files, 3),), "select id, random() as r from {0}")
        return LogicalPlan(ctx, node)

    # in worker processes: tasks share the worker's database
    shared = run_job(plan(), make_runtime_ctx("same-job", None, str(tmp_path / "a")), num_workers=1)
    # in this process, without an executor: every task opens a database of its own
    rt = make_runtime_ctx("same-job", None, str(tmp_path / "b"))
    rt.initialize()
    own = Planner(rt, parallelism=1).create_exec_plan(plan())
    own.results = Scheduler(rt, None).run([own.final_task], own.tasks)
    got = sorted(zip(_rows(shared, "id"), _rows(shared, "r")))
    assert len({r for _, r in got}) == 30
    assert got == sorted(zip(_rows(own, "id"), _rows(own, "r")))


def test_statements_that_may_leave_state_are_detected():
    assert sql_may_outlive_task(["create table t as select 1"])
    assert sql_may_outlive_task(["select 1", "SET threads = 4"])
    assert sql_may_outlive_task(["pragma enable_profiling"])
    assert sql_may_outlive_task(["attach 'x.db'"])
    assert not sql_may_outlive_task(["select a, count(*) from {0} group by a order by a"])
    assert not sql_may_outlive_task(["select * from {0} where name like '%x%' limit 10"])


def test_statements_that_may_draw_random_numbers_are_detected():
    from smallpond.execution.ops.duckdb import sql_may_draw_random

    assert sql_may_draw_random(["select random() from {0}"])
    assert sql_may_draw_random(["select * from {0} using sample 10%"])
    assert sql_may_draw_random(["select uuid() as id from {0}"])
    assert sql_may_draw_random(["select {rand_seed} as s"])
    assert not sql_may_draw_random(["select a, count(*) from {0} group by a"])


def test_a_single_select_names_its_inputs_in_a_with_clause():
    from smallpond.execution.ops.duckdb import is_query, with_input_ctes

    ctes = "__input_1_000000 AS NOT MATERIALIZED (SELECT 1 AS k)"
    assert with_input_ctes("select * from __input_1_000000", ctes) == f"WITH {ctes} select * from __input_1_000000"
    # comments before it stay; the query's own WITH (RECURSIVE too) gets ours first
    assert with_input_ctes("-- c\n/* d */ SELECT 1", ctes) == f"-- c\n/* d */ WITH {ctes} SELECT 1"
    assert with_input_ctes("WITH RECURSIVE r(n) AS (SELECT 1) SELECT * FROM r", ctes) == (
        f"WITH RECURSIVE {ctes}, r(n) AS (SELECT 1) SELECT * FROM r"
    )
    assert is_query(" with a as (select 1) select * from a") and is_query("SELECT 1")
    assert not is_query("create table t as select 1") and not is_query("withdraw") and not is_query("(select 1)")


def test_inputs_in_a_with_clause_keep_what_views_allow(parquet_files, make_rt):
    # a query with its own WITH, qualified columns ({0}.col) and a self-join of an input
    ctx = Context()
    node = SqlEngineNode(
        ctx,
        (_partitioned(ctx, parquet_files, 3),),
        "with ids as (select id from {0}) select count(*) as n from {0} join ids on {0}.id = ids.id join {0} as b on b.id = ids.id",
    )
    exec_plan = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    assert sum(_rows(exec_plan, "n")) == 30


def test_enable_temp_directory_false_stops_spilling_and_the_default_spills(parquet_files, make_rt):
    """Upstream 0.15 sets DuckDB's temp_directory to '' with enable_temp_directory=False: an
    explicit False is honoured (no spilling; the shared database, which spills, is not used);
    True and the default spill into the job's temp folder."""
    import warnings

    from smallpond.logical.node import RootNode

    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(parquet_files[:1]))
    sql = "select current_setting('temp_directory') as t, count(*) as n from {0}"
    default = SqlEngineNode(ctx, (source,), sql, output_name="default")
    on = SqlEngineNode(ctx, (source,), sql, enable_temp_directory=True, output_name="on")
    off = SqlEngineNode(ctx, (source,), sql, enable_temp_directory=False, output_name="off")
    assert (default.spill_to_disk, on.spill_to_disk, off.spill_to_disk) == (True, True, False)
    assert off.enable_temp_directory is False and default.enable_temp_directory is False  # upstream's attribute
    rt = make_rt()
    exec_plan = run_job(LogicalPlan(ctx, RootNode(ctx, (default, on, off))), rt, num_workers=1)
    got = {}
    for name in ("default", "on", "off"):
        (path,) = exec_plan.get_output(name).resolved_paths
        got[name] = pq.read_table(path).to_pydict()
    assert got["off"] == {"t": [""], "n": [10]}
    for name in ("default", "on"):
        (spill,) = got[name]["t"]
        assert spill.startswith(rt.temp_root) and got[name]["n"] == [10], (name, spill)
    # the wrapper that notes the keyword leaves warnings pointing at the user's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SqlEngineNode(ctx, (source,), sql, relax_memory_if_oom=True)
    assert [w.filename for w in caught] == [__file__]
