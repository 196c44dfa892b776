"""DataFrame API: the user's SQL text where the engine puts it between its own SQL (trailing
comments and semicolons, braces, fusion of one query into the next, queries kept in memory) and
DuckDB UDFs in SQL maps."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import TaskError


def test_partition_expressions_may_end_with_a_comment(sp):
    items = sp.from_items(list(range(100)))
    df = items.repartition(10, by="item % 10 -- the last digit")
    out = sp.partial_sql("select min(item % 10) as min, max(item % 10) as max from {0}", df).take_all()
    assert out == [{"min": i, "max": i} for i in range(10)]
    hashed = items.repartition(4, hash_by=["item % 7 -- a bucket", "item % 3"])
    assert sorted(r["item"] for r in hashed.take_all()) == list(range(100))


def test_sql_may_end_with_a_comment_or_a_semicolon(sp):
    """The engine puts a query between parentheses (COPY (...) TO ...): a trailing ``--`` comment
    must not swallow the closing one, and a trailing semicolon is the end of the query."""
    df = sp.from_items([{"a": 1}, {"a": 2}])
    for query in (
        "select a from {0} -- both rows",
        "select a from {0};",
        "select a -- the column\nfrom {0} ;  \n",
        "select a from {0}; -- both rows",
    ):
        assert sp.partial_sql(query, df).take_all() == [{"a": 1}, {"a": 2}], query
    assert sp.partial_sql("select '--;' as s;").take_all() == [{"s": "--;"}]  # in a literal: kept


def test_expressions_may_end_with_a_comment(sp):
    """filter/map/flat_map/partial_sort put the caller's SQL between other SQL: a trailing ``--``
    comment must not swallow what follows (a parenthesis, ``from {0}``, or the next sort key, which
    would silently drop it)."""
    df = sp.from_items([{"a": 2, "b": 4}, {"a": 1, "b": 5}])
    assert df.filter("a > 1 -- the big ones").take_all() == [{"a": 2, "b": 4}]
    assert df.map("a + b as c -- the sum").take_all() == [{"c": 6}, {"c": 6}]
    assert sorted(r["c"] for r in df.flat_map("unnest([a, b]) as c -- both").take_all()) == [1, 2, 4, 5]
    ties = sp.from_items([{"a": a, "b": 0} for a in (5, 3, 4, 1, 2)])
    assert [r["a"] for r in ties.partial_sort(["b desc -- the newest first", "a"]).take_all()] == [1, 2, 3, 4, 5]
    # an expression without a comment is passed as it is (its task keeps its cache key)
    assert df.filter("a > 1").plan.sql_queries == ["select * from {0} where (a > 1)"]


def test_partial_sort_items_are_their_own_text_braces_included(sp, tmp_path):
    # partial_sort(by=quote_identifier("x{y}")), as its docstring advises, was an unknown placeholder
    from smallpond.common import escape_braces, quote_identifier, quote_literal

    src = tmp_path / "braces.parquet"
    pq.write_table(pa.table({"x{y}": [9, 8, 7], "{0}": [1, 3, 2], "s": ["a{0}b", "zz", "q"]}), src)
    df = sp.read_parquet(str(src))
    assert df.partial_sort(by=quote_identifier("x{y}")).to_arrow().column("x{y}").to_pylist() == [7, 8, 9]
    got = df.partial_sort(by=[quote_identifier("{0}") + " desc"]).to_arrow().column("{0}").to_pylist()
    assert got == [3, 2, 1]
    # filter/map SQL stays a format string (upstream's): escape_braces makes a value its own text
    assert df.filter("s = " + escape_braces(quote_literal("a{0}b"))).to_arrow().column("x{y}").to_pylist() == [9]


def test_udf_in_sql_map(sp):
    from smallpond.logical.udf import UDFType, udf

    @udf(params=[UDFType.BIGINT, UDFType.BIGINT], return_type=UDFType.BIGINT)
    def my_gcd(a, b):
        while b:
            a, b = b, a % b
        return a

    df = sp.from_arrow(pa.table({"a": [12, 9, 7], "b": [8, 6, 5]}))
    assert [r["g"] for r in df.map("my_gcd(a, b) as g", udfs=[my_gcd]).take_all()] == [4, 3, 1]


def test_a_udf_named_like_a_duckdb_function_warns_where_the_node_is_built():
    # DuckDB adds such a UDF beside its own function and runs its own whenever the argument types
    # fit it: an INTEGER ``gcd`` over BIGINT columns silently gave DuckDB's gcd, never the user's
    import warnings

    from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode
    from smallpond.logical.udf import UDFType, udf

    @udf(params=[UDFType.INTEGER, UDFType.INTEGER], return_type=UDFType.INTEGER)
    def gcd(a, b):
        return -1

    ctx = Context()
    src = DataSourceNode(ctx, None)
    with pytest.warns(UserWarning, match=r"the Python UDF 'gcd' has the name of a DuckDB built-in function") as got:
        SqlEngineNode(ctx, (src,), "select gcd(a, b) from {0}", udfs=[gcd])
    assert got[0].filename == __file__ and "name='my_gcd'" in str(got[0].message)
    ctx.create_function("Sum", lambda x: x, [UDFType.BIGINT], UDFType.BIGINT)  # aggregates, any case
    with pytest.warns(UserWarning, match="'Sum' has the name of a DuckDB built-in"):
        SqlEngineNode(ctx, (src,), "select Sum(a) from {0}", udfs=["Sum"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SqlEngineNode(
            ctx, (src,), "select my_gcd(a, b) from {0}", udfs=[udf([UDFType.BIGINT] * 2, UDFType.BIGINT, name="my_gcd")(gcd.func)]
        )


def test_fusion_keeps_placeholders_and_escaped_braces(sp):
    df = sp.from_items(list(range(40))).repartition(4, by_row=True)  # upstream's documented spelling
    step1 = df.filter("item % 2 = 0")
    step2 = step1.map("item, {__data_partition__} as p, {rand_seed} > 0 as seeded, '{{x}}' as braces")
    assert "Optimized plan" in step2.explain()
    out = step2.take_all()
    assert sorted(r["item"] for r in out) == list(range(0, 40, 2))
    assert sorted({r["p"] for r in out}) == [0, 1, 2, 3]
    assert all(r["braces"] == "{x}" and r["seeded"] for r in out)


@pytest.mark.parametrize(
    "child",
    ["select * from {0};", "select * from {0} -- all rows", "select * from {0}; -- all rows", "select * from {0} /* c */"],
)
def test_a_query_ending_in_a_semicolon_or_comment_fuses_with_the_next(sp, child):
    # alone it runs (its COPY cuts them); fused, the consumer's query went after it: ';)' was a
    # syntax error, and a '--' comment swallowed the parenthesis and the filter
    df = sp.from_items([{"a": 1}, {"a": 2}, {"a": 3}])
    step = sp.partial_sql(child, df).filter("a > 1")
    assert "Optimized plan" in step.explain()
    assert sorted(r["a"] for r in step.take_all()) == [2, 3]


def test_a_query_materialized_in_memory_runs_as_one_statement(sp):
    # its table was made of the text as it was: 'select 42; select ...' kept the first statement's
    # row in silence (the same query written to Parquet directly is a parser error)
    df = sp.from_items([{"a": i} for i in range(10)])
    for query in ("select * from {0};", "select * from {0} -- all rows"):
        assert sorted(r["a"] for r in sp.partial_sql(query, df, materialize_in_memory=True).take_all()) == list(range(10))
    with pytest.raises(TaskError, match="syntax error"):
        sp.partial_sql("select 42 as a; select * from {0}", df, materialize_in_memory=True).take_all()


def test_udf_type_int_alias():
    from smallpond.logical.udf import UDFType

    assert UDFType.INT is UDFType.INTEGER


def _split_frames(df):
    """``df`` split by files and by rows, some pieces empty, some led by a file other than the first."""
    return {
        "by files": df.repartition(3),
        "by files, empty pieces": df.repartition(5),
        "by rows": df.repartition(3, by_rows=True),
        "by rows, small pieces": df.repartition(5, by_rows=True),
    }


def test_a_split_of_files_lacking_a_column_fails_only_queries_that_read_it(sp, tmp_path):
    """Files read without union_by_name take the first file's columns (b, a: int32); 2.parquet lacks
    b. DuckDB's read of the whole list gives a query of a alone, and count(*), and fails one of b:
    so does SQL over every piece of a split of them (a piece led by 2.parquet was refused whatever
    its query read, and a count over a piece of rows read the union's first column, b), with the
    first file's types; a failure of another kind is not blamed on the lacking column."""
    import duckdb

    pq.write_table(pa.table({"b": [7, 8], "a": pa.array([10, 11], pa.int32())}), str(tmp_path / "1.parquet"))
    pq.write_table(pa.table({"a": list(range(10))}), str(tmp_path / "2.parquet"))  # int64, no b
    pq.write_table(pa.table({"a": [100], "b": [101]}), str(tmp_path / "3.parquet"))
    files = str(tmp_path / "*.parquet")
    whole = duckdb.sql(f"select a from read_parquet('{files}')")
    expected, typed = sorted(a for (a,) in whole.fetchall()), whole.types
    first, lacking = str(tmp_path / "1.parquet"), str(tmp_path / "2.parquet")
    for name, f in _split_frames(sp.read_parquet(files)).items():
        table = f.map("a").to_arrow()
        assert sorted(table.column("a").to_pylist()) == expected and table.schema.field("a").type == pa.int32(), name
        assert sorted(r["a"] for r in f.filter("a > 5").map("a").take_all()) == [a for a in expected if a > 5], name
        counts = sp.partial_sql("select count(*) as n from {0}", f).to_arrow()
        assert sum(counts.column("n").to_pylist()) == len(expected), name
        for query in ("b", "*", "a + b as c"):  # (a filter keeps every column: as "*")
            with pytest.raises(TaskError) as e:
                f.map(query).to_arrow()
            assert "lacks the column(s) 'b'" in str(e.value) and first in str(e.value) and lacking in str(e.value), (name, query)
        with pytest.raises(TaskError) as e:  # not for want of b: its own error
            f.map("cast('x' || a as int) as y").to_arrow()
        assert "Could not convert string" in str(e.value) and "lacks the column" not in str(e.value), name
    assert str(typed[0]) == "INTEGER"
