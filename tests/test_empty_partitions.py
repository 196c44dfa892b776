"""A Python map/flat_map/filter/map_batches over a partition with no rows writes the same columns
as over the others, so SQL after it binds them (issue 12, item 2)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.dataframe import _read
from smallpond.errors import TaskError

QUERY = "select ticker, count(*) as n, sum(price) as total from {0} group by ticker"


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("empty_data") / "prices.parquet")
    pq.write_table(pa.table({"ticker": ["a", "b", "a", "c", "b"], "price": [1.0, 2.0, 3.0, 4.0, 5.0]}), path)
    return path


def _expected(path):
    q = QUERY.replace("{0}", f"read_parquet('{path}')")
    return sorted(duckdb.sql(q).fetchall())


def _grouped(sp, df):
    out = sp.partial_sql(QUERY, df).to_arrow().to_pylist()
    totals = {}
    for r in out:  # partial_sql runs per partition: combine the partial groups
        n, t = totals.get(r["ticker"], (0, 0.0))
        totals[r["ticker"]] = (n + r["n"], t + r["total"])
    return sorted((k, n, t) for k, (n, t) in totals.items())


def test_the_issues_reproduction(sp, prices):
    df = sp.read_parquet(prices).repartition(4).map(lambda r: r)
    assert _grouped(sp, df) == _expected(prices)


PARTITIONINGS = {
    "files": lambda df: df.repartition(4),
    "rows": lambda df: df.repartition(8, by_rows=True),
    "hash": lambda df: df.repartition(8, hash_by="ticker"),
}
OPS = {
    "map": lambda df: df.map(lambda r: {"ticker": r["ticker"], "price": r["price"]}),
    "flat_map": lambda df: df.flat_map(lambda r: [{"ticker": r["ticker"], "price": r["price"]}]),
    "filter": lambda df: df.filter(lambda r: r["price"] > 0),
    "map_batches": lambda df: df.map_batches(lambda t: t.select(["ticker", "price"])),
}


@pytest.mark.parametrize("partitioning", sorted(PARTITIONINGS))
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_partition_has_the_same_columns(sp, prices, partitioning, op):
    df = OPS[op](PARTITIONINGS[partitioning](sp.read_parquet(prices)))
    datasets = df._datasets()
    tables = [_read(ds) for ds in datasets]
    assert any(t.num_rows == 0 for t in tables), "the partitioning should leave some partition empty"
    names = {tuple(t.column_names) for t in tables}
    assert names == {("ticker", "price")}, names
    assert _grouped(sp, df) == _expected(prices)


def test_map_batches_after_a_sql_filter_infers_from_the_empty_input(sp, prices):
    """A partition emptied by SQL has no sibling rows at hand: the function runs on an empty table."""
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5")
    out = df.map_batches(lambda t: t.append_column("double", pa.compute.multiply(t["price"], 2)))
    tables = [_read(ds) for ds in out._datasets()]
    assert [t.num_rows for t in tables] == [0, 2]
    assert {tuple(t.column_names) for t in tables} == {("ticker", "price", "double")}
    assert sorted(sp.partial_sql("select ticker, double from {0}", out).take_all(), key=str) == [
        {"ticker": "b", "double": 10.0},
        {"ticker": "c", "double": 8.0},
    ]


def test_row_map_with_nothing_to_infer_from_says_to_pass_schema(sp, prices):
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r)
    with pytest.raises(TaskError, match="Pass schema="):
        sp.partial_sql("select ticker from {0}", df).take_all()
    schema = pa.schema([("ticker", pa.string()), ("price", pa.float64())])
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r, schema=schema)
    assert sorted(r["ticker"] for r in sp.partial_sql("select ticker from {0}", df).take_all()) == ["b", "c"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_python_op_after_a_map_with_nothing_to_infer_from(sp, prices, op):
    """Partition 0 of the map has no rows and unknown columns (no file): the next Python op reads
    it as no rows of no columns, and its own output there is empty too (it failed every attempt
    with an IndexError: an empty schema was taken for no schema)."""
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r)
    assert [ds.num_files for ds in df._datasets()] == [0, 1]
    out = OPS[op](df)
    assert sorted((r["ticker"], r["price"]) for r in out.take_all()) == [("b", 5.0), ("c", 4.0)]


def test_select_star_over_a_map_with_nothing_to_infer_from_adds_no_placeholder_column(sp, prices):
    """The empty partition's columns are unknown: SQL over it writes no file (no column ``__empty__``),
    and the result has the other partitions' columns only."""
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r)
    out = sp.partial_sql("select * from {0}", df)
    assert [ds.num_files for ds in out._datasets()] == [0, 1]
    got = out.to_arrow()
    assert got.column_names == ["ticker", "price"]
    assert sorted(got.column("ticker").to_pylist()) == ["b", "c"]


def test_sql_over_an_input_of_unknown_columns_runs_no_statement_of_its_own(sp, prices, tmp_path):
    """The query is described to find the placeholder column as one statement: described as it
    was, its second statement (a COPY writing a file) ran there, though the query then failed."""
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r)
    marker = tmp_path / "ran.csv"
    with pytest.raises(TaskError, match="syntax error"):
        sp.partial_sql(f"select * from {{0}}; COPY (SELECT 'x') TO '{marker}'", df).take_all()
    assert not marker.exists()


def test_sql_union_by_name_over_a_map_with_nothing_to_infer_from_adds_no_placeholder_column(sp, prices, tmp_path):
    """Partition 0 of the map has no rows and unknown columns; partition 1 of the other input has
    rows: ``union all by name`` of the two wrote a column ``__empty__`` of nulls beside them."""
    mapped = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 3.5").map(lambda r: r)
    other = sp.read_parquet(prices).repartition(2, by_rows=True)
    for query in (
        "select * from {0} union all by name select * from {1}",
        "select * from {1} union all by name select * from {0} order by price",
        "with u as (select * from {0} union all by name select * from {1}) select * from u -- last line",
    ):
        out = sp.partial_sql(query, mapped, other)
        got = out.to_arrow()
        assert got.column_names == ["ticker", "price"], query
        assert sorted(got.column("price").to_pylist()) == [1.0, 2.0, 3.0, 4.0, 4.0, 5.0, 5.0]
        assert out.schema.names == ["ticker", "price"]
    assert got.column("price").to_pylist()[:3] == [1.0, 2.0, 3.0]  # partition 0's rows, in the query's order
    # the files as written, read back by name
    out.write_parquet(str(tmp_path / "out"))
    assert sp.read_parquet(str(tmp_path / "out"), union_by_name=True).to_arrow().column_names == ["ticker", "price"]
    # with no rows either side, the output's columns stay unknown (no file), as with select * alone
    none = sp.partial_sql("select * from {0} union all by name select * from {1} where price > 9", mapped, other)
    assert [ds.num_files for ds in none._datasets()] == [0, 1]
    assert none.to_arrow().column_names == ["ticker", "price"]


def test_inference_runs_the_function_on_sample_rows_of_another_partition(sp, prices):
    """The map below changes the columns: only running it can tell the empty partitions what they are."""
    df = sp.read_parquet(prices).repartition(3, hash_by="ticker").repartition(6, by_rows=True)
    df = df.map(lambda r: {"key": r["ticker"].upper(), "cents": int(r["price"] * 100)})
    tables = [_read(ds) for ds in df._datasets()]
    assert any(t.num_rows == 0 for t in tables)
    assert {tuple(t.column_names) for t in tables} == {("key", "cents")}
    got = sorted(sp.partial_sql("select key, sum(cents) as c from {0} group by key", df).take_all(), key=str)
    merged = {}
    for r in got:
        merged[r["key"]] = merged.get(r["key"], 0) + r["c"]
    assert merged == {"A": 400, "B": 700, "C": 400}


def test_skip_task_with_empty_input_skips_hash_partitions_no_key_fell_into(tmp_path):
    """A hash partition no key fell into holds a placeholder file (its columns, no rows): with
    ``skip_task_with_empty_input`` a SQL task over it writes nothing, like over one with no files."""
    from smallpond.execution.job import make_runtime_ctx, run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, HashPartitionNode, LogicalPlan, SqlEngineNode

    path = str(tmp_path / "two_keys.parquet")
    pq.write_table(pa.table({"k": ["a", "b", "a", "b"], "v": [1, 2, 3, 4]}), path)

    def counts(skip: bool):
        ctx = Context()
        parts = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), npartitions=6, hash_columns=["k"])
        sql = SqlEngineNode(ctx, (parts,), "select {__data_partition__} as p, count(*) as n from {0}")
        rt = make_runtime_ctx(f"skip-{skip}", None, str(tmp_path / "root"), task_cache="off", skip_task_with_empty_input=skip)
        out = run_job(LogicalPlan(ctx, sql), rt, num_workers=1).final_output
        return sorted((r["p"], r["n"]) for r in out.to_arrow_table().to_pylist())

    everything = counts(False)
    assert len(everything) == 6 and sum(n for _, n in everything) == 4  # 2 keys in 6 partitions: 4+ empty
    assert counts(True) == [(p, n) for p, n in everything if n > 0]


def test_take_and_show_of_no_rows_of_unknown_columns_give_no_rows(sp, prices, capsys):
    """A Python map that kept no row anywhere has no columns: ``take(n)`` gave ``n`` empty dicts
    (pyarrow slices a table of no columns to any length); found by the differential fuzzer
    (tests/e2e/test_differential.py)."""
    df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 99").map(lambda r: r)
    assert df.count() == 0
    assert df.take(5) == []
    assert df.take_all() == []
    df.show()
    assert capsys.readouterr().out == "(no columns)\n"


@pytest.mark.parametrize("op", ["filter", "map_batches", "map"])
def test_python_op_over_no_rows_of_unknown_columns_writes_no_file_sql_cannot_read(sp, prices, op):
    """A Python filter or map_batches after a map that kept no row (its input has no columns)
    wrote a Parquet file of no columns, which DuckDB cannot read: SQL after it failed ("Need at
    least one non-root column in the file"). Now it writes nothing, as a row map does; found by
    the differential fuzzer (tests/e2e/test_differential.py)."""
    df = sp.read_parquet(prices).filter("price > 99").map(lambda r: r)
    after = {
        "filter": lambda d: d.filter(lambda r: True),
        "map_batches": lambda d: d.map_batches(lambda t: t),
        "map": lambda d: d.map(lambda r: r),
    }[op](df)
    assert [ds.num_files for ds in after._datasets()] == [0]
    assert sp.partial_sql("select * from {0}", after).to_arrow().num_rows == 0


@pytest.mark.parametrize("shape", ["join", "fused"])
def test_sql_naming_columns_of_a_map_with_nothing_to_infer_from_says_to_pass_schema(sp, prices, shape):
    """The hint to pass schema= was missing when a join names the input by an alias (DuckDB then
    speaks of a "Values list") and when the query runs fused into the partition after it; found
    by the differential fuzzer."""
    if shape == "join":
        df = sp.read_parquet(prices).filter("price > 99").map(lambda r: r)
        out = sp.partial_sql("select a.ticker from {0} a join {1} b on a.ticker = b.ticker", df, sp.read_parquet(prices))
    else:
        df = sp.read_parquet(prices).repartition(2, hash_by="ticker").filter("price > 99").map(lambda r: r)
        out = df.map("ticker, price + 1 as p1").repartition(3, by="length(ticker) % 3")
    with pytest.raises(TaskError, match="Pass schema="):
        out.take_all()


def test_map_batches_over_unknown_columns_does_not_take_the_columns_it_adds_for_its_output(sp, prices):
    """map_batches adding a column, after a map that kept no row: its output was taken to be that
    column alone (the function ran on a table of no columns), so SQL naming the data's columns
    failed without the hint to pass schema=; found by the differential fuzzer."""
    df = sp.read_parquet(prices).filter("price > 99").map(lambda r: r)
    out = df.map_batches(lambda t: t.append_column("n", pa.array([t.num_rows] * t.num_rows, pa.int64())))
    assert [ds.num_files for ds in out._datasets()] == [0]
    with pytest.raises(TaskError, match="Pass schema="):
        sp.partial_sql("select ticker, n from {0}", out).take_all()


def _nothing(runtime_ctx, readers):
    """A stream function that keeps no row (and so cannot tell its output's columns)."""
    for _ in readers[0]:
        pass
    yield from ()


@pytest.mark.parametrize("shape", ["sampled range", "given range", "fused hash", "hash"])
def test_partitions_of_no_rows_of_unknown_columns_are_empty_whatever_their_key(prices, make_rt, sp, shape):
    """A partitioning of an input whose columns are unknown (a Python node kept no row anywhere)
    has nothing to split: each partition is empty, whatever key it names. A range partition with
    split points given and a hash partition did so; one with sampled split points failed with
    "key_column='ticker': column 'ticker' not found in the range partition's input (its columns:
    __empty__)", and a hash partition fused with a `select *` before it the same, with no hint why
    (found by the differential fuzzer)."""
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import (
        ArrowStreamNode,
        Context,
        DataSetPartitionNode,
        DataSourceNode,
        LogicalPlan,
        RangePartitionNode,
        SqlEngineNode,
    )

    if shape.endswith("hash"):
        df = sp.read_parquet(prices).repartition(2, by_rows=True).filter("price > 99").map(lambda r: r)
        if shape == "fused hash":
            df = sp.partial_sql("select * from {0}", df)
        assert df.repartition(3, hash_by="ticker").take_all() == []
        return
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([prices])),), npartitions=2, partition_by_rows=True)
    kept = ArrowStreamNode(ctx, (parts,), process_func=_nothing)
    given = {"split_points": ["b"]} if shape == "given range" else {"npartitions": 3}
    ranged = RangePartitionNode(ctx, (kept,), key_column="ticker", **given)
    counted = SqlEngineNode(ctx, (ranged,), "select count(*) as n from {0}")
    result = run_job(LogicalPlan(ctx, counted), make_rt(), num_workers=1)
    assert result.final_output.to_arrow_table().column("n").to_pylist() == [0] * ranged.npartitions
