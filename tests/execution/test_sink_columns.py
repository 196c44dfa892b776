"""ops/sink_columns.py: a sink publishing files of different columns, read by name in the engine
(a Python map without schema=), says that a reader of the folder would leave columns out."""

from __future__ import annotations

import inspect
import os

import pyarrow as pa
import pyarrow.parquet as pq


def _x_then_xy(r):
    """Partition 0 (i < 2) returns {x}, partition 1 {x, y}."""
    return {"x": r["i"]} if r["i"] < 2 else {"x": r["i"], "y": r["i"] * 10}


def _xy_either_order(r):
    """Both columns in every partition, in another order in partition 1: the same columns."""
    return {"x": r["i"], "y": r["i"] * 10} if r["i"] < 2 else {"y": r["i"] * 10, "x": r["i"]}


def _four(sp):
    return sp.from_items([{"i": i} for i in range(4)]).repartition(2, by_rows=True)


def _differ(messages):
    return [m for m in messages if "differ in their columns" in m]


def test_publishing_files_of_different_columns_warns_once_naming_them(sp, tmp_path, log_messages):
    """write_parquet of a map that returned {x} in one partition and {x, y} in the other: the files
    are published as they are, and read_parquet(folder) leaves y out in silence (the first file's
    columns). The publication now says so once, naming the sink, its line, both column sets and y."""
    out = str(tmp_path / "out")
    line = inspect.currentframe().f_lineno + 1
    _four(sp).map(_x_then_xy).write_parquet(out)
    warned = _differ(log_messages)
    assert len(warned) == 1, log_messages
    text = warned[0]
    assert "DataSinkNode" in text and f"test_sink_columns.py:{line}" in text, text
    assert out in text and "[x] in " in text and "[x, y] in " in text, text
    assert "others' (y)" in text and "union_by_name=True" in text, text
    assert sp.read_parquet(out).to_arrow().column_names == ["x"]  # what the warning is about
    assert sorted(sp.read_parquet(out, union_by_name=True).to_arrow().column_names) == ["x", "y"]  # its advice


def test_no_warning_when_the_published_columns_agree(sp, tmp_path, log_messages):
    """Read by name (a map without schema=), but every file has x and y (in either order: DuckDB
    reads Parquet files by name, so the order loses nothing)."""
    out = str(tmp_path / "out")
    _four(sp).map(_xy_either_order).write_parquet(out)
    files = sorted(f for f in os.listdir(out) if f.endswith(".parquet"))
    assert [pq.read_schema(os.path.join(out, f)).names for f in files] == [["x", "y"], ["y", "x"]]
    assert not _differ(log_messages), log_messages


def test_no_warning_for_files_not_read_by_name(sp, tmp_path, log_messages):
    """A user's files of different columns read without union_by_name are read by the first file's
    columns in the engine as well: published as they are, the folder reads the same, so nothing is
    said (and their footers are not read)."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"x": [1]}), src / "a.parquet")
    pq.write_table(pa.table({"x": [2], "y": [20]}), src / "b.parquet")
    out = str(tmp_path / "out")
    sp.read_parquet(str(src / "*.parquet")).write_parquet(out)
    assert len([f for f in os.listdir(out) if f.endswith(".parquet")]) == 2
    assert not _differ(log_messages), log_messages


def test_a_published_result_stays_read_by_name(tmp_path, make_rt):
    """staged_to_final (the sink's files at their published place, what its commit record holds)
    built a new dataset of the published paths and dropped the mark read by name: a reader of the
    sink's result from its commit record (a resumed consumer) read by the first file's columns."""
    from smallpond.execution.ops.sink import DataSinkTask, staged_to_final, staging_path
    from smallpond.execution.task import PartitionInfo
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSinkNode, DataSourceNode

    rt = make_rt()
    rt.initialize()
    dest = str(tmp_path / "dest")
    ctx = Context()
    task = DataSinkTask(DataSinkNode(ctx, (DataSourceNode(ctx, None),), dest), 7, [PartitionInfo()], [])
    staged = [os.path.join(staging_path(rt, task), n) for n in ("a.parquet", "b.parquet")]
    for marked in (True, False):
        ds = ParquetDataSet.from_files(staged)
        if marked:
            ds.mark_read_by_name()
        final = staged_to_final(rt, task, ds)
        assert final.resolved_paths == [os.path.join(dest, "a.parquet"), os.path.join(dest, "b.parquet")]
        assert final.reads_by_name is marked
