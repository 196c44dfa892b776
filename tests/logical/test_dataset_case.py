"""Columns whose names differ only in case (``a`` and ``A`` in one Parquet file): every reader of a
ParquetDataSet's ``columns`` reads the same column, the exact name first (pyarrow, DuckDB, SQL
nodes, hash partitioning); what DuckDB cannot hold apart is refused alike, naming the file and
both columns."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ColumnNotFoundError, PlanError
from smallpond.execution.job import run_job
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, HashPartitionNode, LogicalPlan, SqlEngineNode


def clash_file(tmp_path, name="clash.parquet") -> str:
    """``a`` (0/1), ``A`` (0..7) and ``x`` (row number times 10), in that order."""
    path = str(tmp_path / name)
    pq.write_table(pa.table({"a": [i % 2 for i in range(8)], "A": list(range(8)), "x": [i * 10 for i in range(8)]}), path)
    return path


def readers():
    """Each way a ParquetDataSet is read: pyarrow (table, batches) and DuckDB (the SQL fragment)."""
    return {
        "pyarrow table": lambda ds: ds.to_arrow_table(),
        "pyarrow batches": lambda ds: ds.to_batch_reader(batch_size=3).read_all(),
        "duckdb": lambda ds: ds.to_arrow_table(conn=duckdb.connect()),
    }


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["A"], {"A": list(range(8))}),
        (["a"], {"a": [i % 2 for i in range(8)]}),
        (["x", "A"], {"x": [i * 10 for i in range(8)], "A": list(range(8))}),
        (["X"], {"x": [i * 10 for i in range(8)]}),  # no exact name: the one in another case
    ],
)
def test_every_reader_reads_the_exact_name(tmp_path, columns, expected):
    """DuckDB named ``A`` ``A_1`` and read ``a`` for it (pyarrow read ``A``): it reads ``A`` by
    position now, whole files, row ranges and with another file beside, as pyarrow does."""
    path = clash_file(tmp_path)
    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"A": [100], "x": [1000], "a": [1]}), other)  # no clash: DuckDB binds by name
    extra = {c: [{"a": 1, "A": 100, "x": 1000}[c]] for c in expected}
    for name, read in readers().items():
        assert read(ParquetDataSet([path], columns=columns)).to_pydict() == expected, name
        both = read(ParquetDataSet([path, other], columns=columns)).to_pydict()
        assert both == {c: v + extra[c] for c, v in expected.items()}, name
        pieces = ParquetDataSet([path, other], columns=columns).partition_by_rows(3)
        assert not all(r.whole_file for p in pieces for r in p.resolved_row_ranges)
        by_rows = {c: [] for c in expected}
        for piece in pieces:
            for c, v in read(piece).to_pydict().items():
                by_rows[c] += v
        assert by_rows == {c: v + extra[c] for c, v in expected.items()}, name


def test_generated_columns_beside_a_column_read_by_position(tmp_path):
    path = clash_file(tmp_path)
    ds = ParquetDataSet([path], columns=["A"], generated_columns=["filename"])
    got = ds.to_arrow_table(conn=duckdb.connect()).to_pydict()
    assert got == {"A": list(range(8)), "filename": [path] * 8}


def test_sql_and_hash_partitioning_read_the_exact_name(tmp_path, make_rt):
    """A SQL node over ``columns=['A']`` sums ``A``, not ``a``; a hash partition by ``A`` puts each
    value of ``A`` in one partition (it hashed ``a``: two keys)."""
    path = clash_file(tmp_path)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([path], columns=["A", "x"]))
    parts = HashPartitionNode(ctx, (src,), 4, ["A"])
    total = SqlEngineNode(ctx, (parts,), "select sum(A) as s, count(distinct A) as n, sum(x) as sx from {0}")
    result = run_job(LogicalPlan(ctx, total), make_rt(), num_workers=1)
    rows = [pq.read_table(p).to_pylist() for p in sorted(result.final_output.resolved_paths)]
    rows = [r for t in rows for r in t if r["n"]]
    assert sum(r["s"] for r in rows) == sum(range(8)) and sum(r["sx"] for r in rows) == 280
    assert sum(r["n"] for r in rows) == 8  # each value of A in one partition only


def plan_error(tmp_path, make_rt, dataset) -> str:
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, dataset),), "select * from {0}")
    with pytest.raises(PlanError) as info:
        Planner(make_rt()).create_exec_plan(LogicalPlan(ctx, DataSinkNode(ctx, (node,), str(tmp_path / "sink"))))
    return str(info.value)


def test_both_columns_asked_for_are_read_by_python_and_refused_by_sql(tmp_path, make_rt):
    """``columns=['a', 'A']``: pyarrow reads both; SQL cannot tell them apart, so a SQL node over
    them is refused at planning, naming the file and both columns."""
    path = clash_file(tmp_path)
    ds = ParquetDataSet([path], columns=["a", "A"])
    assert ds.to_arrow_table().column_names == ["a", "A"]
    message = plan_error(tmp_path, make_rt, ds)
    assert path in message and "'a' and 'A'" in message, message
    # one of them only is no clash; neither is every column (SELECT *): refused as before
    plan_error_all = plan_error(tmp_path, make_rt, ParquetDataSet([path]))
    assert "'a' and 'A'" in plan_error_all


def test_two_names_of_one_column_are_refused_by_every_reader(tmp_path, make_rt):
    """``columns=['x', 'X']`` of a file with ``x`` only: pyarrow failed saying 'x' was not found,
    DuckDB gave two columns named ``x``. Every reader refuses it, naming both and the file."""
    path = clash_file(tmp_path)
    plain = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    for p in (path, plain):
        ds = ParquetDataSet([p], columns=["x", "X"])
        for name, read in readers().items():
            if name == "duckdb" and p == plain:
                continue  # (no clash in the file: the fragment is SQL's; the SQL node is refused below)
            with pytest.raises(ColumnNotFoundError, match=r"columns 'x' and 'X' both read column 'x' of .*"):
                read(ds)
        message = plan_error(tmp_path, make_rt, ds)
        assert "columns 'x' and 'X' both read column 'x'" in message and p in message, message


def test_x_and_X_both_in_the_file(tmp_path, make_rt):
    """A file with ``x`` and ``X``, ``columns=['x', 'X']``: pyarrow reads each as named; SQL is
    refused naming both."""
    path = str(tmp_path / "xX.parquet")
    pq.write_table(pa.table({"x": [1], "X": [2]}), path)
    ds = ParquetDataSet([path], columns=["x", "X"])
    assert ds.to_arrow_table().to_pydict() == {"x": [1], "X": [2]}
    assert ParquetDataSet([path], columns=["X"]).to_arrow_table(conn=duckdb.connect()).to_pydict() == {"X": [2]}
    message = plan_error(tmp_path, make_rt, ds)
    assert path in message and "'x' and 'X'" in message, message


def test_names_differing_in_a_letter_beyond_ascii_are_two_names_as_in_duckdb(tmp_path, make_rt):
    """DuckDB folds the case of ASCII letters only: ``é`` and ``É`` are two names to it (no
    ``É_1``, each read as named). A file with both was refused by SQL as a case clash, and
    ``columns=['é']`` of a file with ``É`` read ``É`` through pyarrow while DuckDB found no such
    column."""
    both = str(tmp_path / "both.parquet")
    pq.write_table(pa.table({"é": [1, 2], "É": [5, 6]}), both)
    ctx = Context()
    total = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([both])),), 'select sum("é") + 10 * sum("É") as s from {0}')
    result = run_job(LogicalPlan(ctx, total), make_rt(), num_workers=1)
    assert [r for p in result.final_output.resolved_paths for r in pq.read_table(p).to_pylist()] == [{"s": 113}]
    upper = str(tmp_path / "upper.parquet")
    pq.write_table(pa.table({"É": [1, 2], "b": [3, 4]}), upper)
    for name, read in readers().items():
        with pytest.raises(Exception, match="é"):
            read(ParquetDataSet([upper], columns=["é"]))
        assert read(ParquetDataSet([upper], columns=["B"])).to_pydict() == {"b": [3, 4]}, name


@pytest.mark.parametrize("column, item, other", [("a-é", "a-É", "É"), ("a-É", "a-é", "é")])
def test_an_item_naming_a_column_only_in_a_case_beyond_ascii_is_an_expression_as_in_duckdb(
    tmp_path, make_rt, column, item, other
):
    """``columns=['a-É']`` of a file with ``a``, ``É`` and ``a-é``: DuckDB folds no letter beyond
    ASCII, so ``a-É`` names no column of it and is ``a - É`` (what ``SELECT a-É`` gives). Compared
    by ``str.lower`` it was taken for the column ``a-é``, quoted, and every reader failed with
    'Referenced column "a-É" not found' (and the reverse, ``a-é`` of a file with ``a-É``)."""
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"a": [10, 20], other: [1, 2], column: [7, 8]}), path)
    expected = duckdb.sql(f"SELECT {item} FROM read_parquet('{path}')").fetchall()
    assert expected == [(9,), (18,)]
    for name, read in readers().items():
        table = read(ParquetDataSet([path], columns=[item]))
        assert [tuple(r.values()) for r in table.to_pylist()] == expected, name
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path], columns=[item])),), "select * from {0}")
    result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    rows = [tuple(r.values()) for p in result.final_output.resolved_paths for r in pq.read_table(p).to_pylist()]
    assert rows == expected
