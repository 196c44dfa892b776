"""The folder a node was built in (``Node.created_cwd``, where its tasks run and a relative path
in them resolves) and the task cache: a task that may resolve a relative path itself is reused
only by a job whose node was built in the same folder."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, ProjectionNode, SqlEngineNode


def read_relative(runtime_ctx, tables):
    """User Python reading a file by a relative path: the one in the folder its node was built in."""
    return pq.read_table("x.parquet")


RELATIVE_SUBQUERY = "(select max(v) from (select 1) as one, 'x.parquet') as v"

NODES = {
    # a replacement scan in a FROM list (seen as reading files since it is searched for: never reused)
    "sql": lambda ctx, inp: SqlEngineNode(ctx, (inp,), "select v from {0}, 'x.parquet'"),
    "python": lambda ctx, inp: ArrowComputeNode(ctx, (inp,), process_func=read_relative),
    # a projection's expression, run by the task that reads it: SQL as much as a query is
    "projection": lambda ctx, inp: SqlEngineNode(
        ctx, (ProjectionNode(ctx, inp, ["id", RELATIVE_SUBQUERY]),), "select v from {0}"
    ),
    "source columns=": lambda ctx, inp: SqlEngineNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet(inp.dataset.paths, columns=["id", RELATIVE_SUBQUERY])),), "select v from {0}"
    ),
}


@pytest.mark.parametrize("shape", sorted(NODES))
def test_a_task_reading_a_relative_path_is_not_reused_from_another_folder(make_rt, tmp_path, monkeypatch, shape):
    """Folders A and B each hold an ``x.parquet`` (v=1, v=2). The same plan built in B was served
    what it computed in A (v=1) from the task cache; a job built in A again still reuses A's
    (user Python, keyed by its folder), or nothing (SQL that is seen to read a file itself, the
    projections' included: a file after a comma of a FROM list is looked for)."""
    for name, v in (("A", 1), ("B", 2)):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"v": [v]}), str(tmp_path / name / "x.parquet"))
    ids = str(tmp_path / "ids.parquet")
    pq.write_table(pa.table({"id": [0]}), ids)

    def run(folder):
        monkeypatch.chdir(tmp_path / folder)
        ctx = Context()
        node = NODES[shape](ctx, DataSourceNode(ctx, ParquetDataSet([ids])))
        result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
        return result.final_output.to_arrow_table().column("v").to_pylist(), result.num_reused

    assert run("A") == ([1], 0)
    assert run("B") == ([2], 0)
    values, reused = run("A")  # the same folder: served from the cache, unless it reads files itself
    assert values == [1] and (reused > 0) == (shape == "python")


def test_sql_without_quoted_text_is_reused_from_another_folder(make_rt, tmp_path, monkeypatch):
    """SQL with no quoted text names no file by itself: its tasks are reused whatever the folder."""
    ids = str(tmp_path / "ids.parquet")
    pq.write_table(pa.table({"id": [0, 1]}), ids)
    reused = []
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([ids])),), "select id * 2 as v from {0}")
        result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
        assert sorted(result.final_output.to_arrow_table().column("v").to_pylist()) == [0, 2]
        reused.append(result.num_reused)
    assert reused[0] == 0 and reused[1] > 0


@pytest.mark.parametrize("where", ["projection", "source columns="])
def test_a_projection_reading_the_clock_is_not_reused_by_another_job(make_rt, tmp_path, where):
    """``now()`` in a projection's expression (a ``ProjectionNode`` or a source's ``columns=``) is
    the clock read by the job that runs it, as in a query: another job was served the first
    job's time from the task cache."""
    import time

    ids = str(tmp_path / "ids.parquet")
    pq.write_table(pa.table({"id": [0]}), ids)
    stamps = []
    for _ in range(2):
        ctx = Context()
        columns = ["id", "epoch_ns(now()) as t"]
        if where == "projection":
            node = ProjectionNode(ctx, DataSourceNode(ctx, ParquetDataSet([ids])), columns)
        else:
            node = DataSourceNode(ctx, ParquetDataSet([ids], columns=columns))
        result = run_job(LogicalPlan(ctx, SqlEngineNode(ctx, (node,), "select t from {0}")), make_rt(), num_workers=1)
        stamps.append(result.final_output.to_arrow_table().column("t")[0].as_py())
        time.sleep(0.01)
    assert stamps[1] > stamps[0], "the second job was served the first job's clock"
