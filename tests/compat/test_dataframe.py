"""Upstream's tests/test_dataframe.py cases (reference §6) and the DataFrame semantics of §1.6,
run against our DataFrame API. Where upstream had a defect (§8), the fixed behaviour is tested.
"""

from __future__ import annotations

import glob
import logging
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.dataframe import DataFrame
from tests.compat.conftest import sorted_rows


def test_pandas(sp):
    pandas_df = pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})
    df = sp.from_pandas(pandas_df)
    assert df.to_pandas().equals(pandas_df)


def test_pandas_keeps_index_and_dtypes(sp):
    # §1.6: PandasDataSet yields the original df, so to_pandas() gives it back, index included
    pandas_df = pd.DataFrame({"a": [1, 2, 3], "c": pd.Categorical(["x", "y", "x"])}, index=pd.Index([10, 20, 30], name="k"))
    out = sp.from_pandas(pandas_df).to_pandas()
    assert out.equals(pandas_df) and out.index.name == "k" and out["c"].dtype == "category"
    assert out is not pandas_df  # a copy, as upstream's concat gave
    # anything computed from it goes through SQL, which sees the columns only (upstream: to_sql(index=False))
    assert list(sp.from_pandas(pandas_df).map("a * 2 as a2").to_pandas()["a2"]) == [2, 4, 6]


def test_to_pandas_numbers_each_partition_from_zero(sp):
    # §1.6: to_pandas() is pd.concat of the partitions' frames, the index not reset
    df = sp.from_arrow(pa.table({"a": list(range(5))})).repartition(2, by_rows=True)
    out = df.to_pandas()
    sizes = [len(p) for p in _partition_rows(df)]
    assert sizes and sum(sizes) == 5 and len(sizes) == 2
    assert out.index.tolist() == [i for n in sizes for i in range(n)]
    assert sorted(out["a"]) == list(range(5))
    single = sp.from_arrow(pa.table({"a": [1, 2]})).to_pandas()
    assert isinstance(single.index, pd.RangeIndex) and single.index.tolist() == [0, 1]


def _partition_rows(df):
    return [ds.to_arrow_table()["a"].to_pylist() for ds in df._datasets()]


def test_arrow(sp):
    arrow_table = pa.table({"a": [1, 2, 3], "b": [4, 5, 6]})
    df = sp.from_arrow(arrow_table)
    assert df.to_arrow() == arrow_table


def test_items(sp):
    df = sp.from_items([1, 2, 3])
    assert df.take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]
    df = sp.from_items([{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}])
    assert df.take_all() == [{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}]


def test_from_items_needs_a_non_empty_list(sp):
    with pytest.raises(AssertionError):  # upstream asserted; ours raises ParameterError (an AssertionError too)
        sp.from_items([])


def test_csv(sp, compat_data):
    df = sp.read_csv(
        os.path.join(compat_data["mock_urls"], "*.tsv"),
        schema={"urlstr": "varchar", "valstr": "varchar"},
        delim=r"\t",
    )
    assert df.count() == 1000


def test_parquet(sp, compat_data):
    df = sp.read_parquet(os.path.join(compat_data["mock_urls"], "*.parquet"))
    assert df.count() == 1000


def test_read_parquet_columns_and_recursive(sp, compat_data):
    df = sp.read_parquet(os.path.join(compat_data["root"], "**", "urls*.parquet"), recursive=True, columns=["url"])
    table = df.to_arrow()
    assert table.column_names == ["url"] and table.num_rows == 1000


def test_read_json(sp, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"a": 1, "s": "x"}\n{"a": 2, "s": "y"}\n')
    df = sp.read_json(str(path), schema={"a": "bigint", "s": "varchar"})
    assert df.take_all() == [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}]


def test_relative_paths_resolve_against_cwd_at_construction(sp, compat_data, monkeypatch):
    monkeypatch.chdir(compat_data["mock_urls"])
    df = sp.read_parquet("urls0.parquet")
    monkeypatch.chdir("/")
    assert df.count() == 100


def test_take(sp):
    df = sp.from_items(list(range(1000)))
    assert df.take(2) == [{"item": 0}, {"item": 1}]
    assert df.take_all() == [{"item": i} for i in range(1000)]


def test_take_after_transformations(sp):
    df = sp.from_items(list(range(100))).repartition(4, by_rows=True).map("item * 2 as x")
    rows = df.take(5)
    assert len(rows) == 5 and all(r["x"] % 2 == 0 for r in rows)
    assert sorted(r["x"] for r in df.take_all()) == [2 * i for i in range(100)]


def test_map(sp):
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}))

    df1 = df.map("a + b as c")
    assert df1.to_arrow() == pa.table({"c": [5, 7, 9]})

    df2 = df.map(lambda r: {"c": r["a"] + r["b"]})
    assert df2.to_arrow() == pa.table({"c": [5, 7, 9]})

    # user need to specify the schema if can not be inferred from the mapping values
    df3 = df.map(lambda r: {"c": None if r["a"] == 1 else r["a"] + r["b"]}, schema=pa.schema([("c", pa.int64())]))
    assert df3.to_arrow() == pa.table({"c": pa.array([None, 7, 9], type=pa.int64())})


def test_flat_map(sp):
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}))

    df1 = df.flat_map(lambda r: [{"c": r["a"]}, {"c": r["b"]}])
    assert df1.to_arrow() == pa.table({"c": [1, 4, 2, 5, 3, 6]})

    df2 = df.flat_map("unnest(array[a, b]) as c")
    assert df2.to_arrow() == pa.table({"c": [1, 4, 2, 5, 3, 6]})

    # user need to specify the schema if can not be inferred from the mapping values
    df3 = df.flat_map(lambda r: [{"c": None}], schema=pa.schema([("c", pa.int64())]))
    assert df3.to_arrow() == pa.table({"c": pa.array([None, None, None], type=pa.int64())})


def test_map_batches(sp, compat_data):
    df = sp.read_parquet(os.path.join(compat_data["mock_urls"], "*.parquet"))
    df = df.map_batches(lambda batch: pa.table({"num_rows": [batch.num_rows]}), batch_size=350)
    assert df.take_all() == [{"num_rows": 350}, {"num_rows": 350}, {"num_rows": 300}]


def test_filter(sp):
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}))

    df1 = df.filter("a > 1")
    assert df1.to_arrow() == pa.table({"a": [2, 3], "b": [5, 6]})

    df2 = df.filter(lambda r: r["a"] > 1)
    assert df2.to_arrow() == pa.table({"a": [2, 3], "b": [5, 6]})


def test_filter_rejects_other_types(sp):
    df = sp.from_items([1])
    with pytest.raises(ValueError):
        df.filter(42)
    with pytest.raises(ValueError):
        df.map(42)


def test_random_shuffle(sp):
    df = sp.from_items(list(range(1000))).repartition(10, by_rows=True)
    df = df.random_shuffle()
    shuffled = [d["item"] for d in df.take_all()]
    assert sorted(shuffled) == list(range(1000))

    def count_inversions(arr):
        return sum(sum(1 for j in range(i + 1, len(arr)) if arr[i] > arr[j]) for i in range(len(arr)))

    # check the shuffle is random enough
    # the expected number of inversions is n*(n-1)/4 = 249750
    assert 220000 <= count_inversions(shuffled) <= 280000


def test_random_shuffle_keeps_the_schema(sp):
    """§8.6: upstream added a ``__data_partition__`` column; ours keeps the input's columns."""
    df = sp.from_items([{"a": i} for i in range(50)]).repartition(3, by_rows=True).random_shuffle()
    assert df.to_arrow().column_names == ["a"]


def test_random_shuffle_after_a_python_map(sp):
    """§8.5: upstream raised NotImplementedError after a lambda map; ours shuffles."""
    df = sp.from_items(list(range(30))).repartition(3, by_rows=True).map(lambda r: {"x": r["item"]}).random_shuffle()
    assert sorted(r["x"] for r in df.take_all()) == list(range(30))


def test_partition_by(sp):
    df = sp.from_items(list(range(1000)))
    df = df.repartition(10, by="item % 10")
    df = df.map("min(item % 10) as min, max(item % 10) as max")
    assert df.take_all() == [{"min": i, "max": i} for i in range(10)]


def test_partition_by_key_out_of_range(sp):
    df = sp.from_items(list(range(1000)))
    df = df.repartition(10, by="item % 11")
    with pytest.raises(Exception) as ex:
        df.to_arrow()
    assert "partition key 10 is out of range 0-9" in str(ex.value)


def test_partition_by_hash(sp):
    df = sp.from_items(list(range(1000)))
    df = df.repartition(10, hash_by="item")
    items = [d["item"] for d in df.take_all()]
    assert sorted(items) == list(range(1000))


def test_partition_by_hash_groups_equal_keys(sp):
    df = sp.from_items([{"k": i % 7, "v": i} for i in range(200)]).repartition(4, hash_by=["k"])
    per_partition = sp.partial_sql("select list(distinct k) as ks from {0}", df).take_all()
    seen = [k for row in per_partition for k in (row["ks"] or [])]
    assert sorted(seen) == list(range(7))  # each key lives in exactly one partition
    # §8.6: upstream added a UINT64 __data_partition__ column to hash_by output; ours does not
    assert df.to_arrow().column_names == ["k", "v"]


def test_repartition_by_files_and_rows(sp, compat_data):
    df = sp.read_parquet(os.path.join(compat_data["mock_urls"], "*.parquet"))
    by_files = sp.partial_sql("select count(*) as n from {0}", df.repartition(5))
    assert [r["n"] for r in by_files.take_all()] == [200] * 5
    by_rows = sp.partial_sql("select count(*) as n from {0}", df.repartition(3, by_rows=True))
    assert [r["n"] for r in by_rows.take_all()] == [334, 333, 333]
    # upstream's documentation spells it by_row=True
    by_row = sp.partial_sql("select count(*) as n from {0}", df.repartition(3, by_row=True))
    assert [r["n"] for r in by_row.take_all()] == [334, 333, 333]


def test_repartition_by_and_hash_by_together_is_an_error(sp):
    with pytest.raises(AssertionError):
        sp.from_items([1]).repartition(2, hash_by="item", by="item")


def test_count(sp):
    df = sp.from_items([1, 2, 3])
    assert df.count() == 3


def test_count_from_pandas(sp):
    """§8.8: upstream's count() failed on from_pandas input."""
    assert sp.from_pandas(pd.DataFrame({"a": range(7)})).count() == 7


def test_limit(sp):
    df = sp.from_items(list(range(1000))).repartition(10, by_rows=True)
    assert df.limit(2).count() == 2


def test_limit_is_global_after_more_operations(sp):
    """§8.1: upstream's optimizer fused limit into a following SQL step, per partition."""
    df = sp.from_items(list(range(1000))).repartition(10, by_rows=True)
    assert df.limit(5).map("item + 1 as x").count() == 5
    assert len(sp.partial_sql("select * from {0}", df.limit(7)).take_all()) == 7


def test_partial_sql(sp):
    # no input deps
    df = sp.partial_sql("select * from range(3)")
    assert df.to_arrow() == pa.table({"range": [0, 1, 2]})

    # join
    df1 = sp.from_arrow(pa.table({"id1": [1, 2, 3], "val1": ["a", "b", "c"]}))
    df2 = sp.from_arrow(pa.table({"id2": [1, 2, 3], "val2": ["d", "e", "f"]}))
    joined = sp.partial_sql("select id1, val1, val2 from {0} join {1} on id1 = id2 order by id1", df1, df2)
    table = joined.to_arrow()
    assert table.column_names == ["id1", "val1", "val2"]
    # upstream returned large_string here (§8.16); ours keeps the input's string types
    assert pa.types.is_string(table.schema.field("val1").type) or pa.types.is_large_string(table.schema.field("val1").type)
    assert table.to_pylist() == [
        {"id1": 1, "val1": "a", "val2": "d"},
        {"id1": 2, "val1": "b", "val2": "e"},
        {"id1": 3, "val1": "c", "val2": "f"},
    ]


def test_partial_sql_runs_per_partition_and_broadcasts(sp):
    main = sp.from_items([{"k": i} for i in range(30)]).repartition(3, by_rows=True)
    small = sp.from_items([{"total": 100}])
    out = sp.partial_sql("select count(*) as n, max(total) as t from {0}, {1}", main, small)
    assert out.take_all() == [{"n": 10, "t": 100}] * 3


def test_partial_sql_placeholders(sp):
    df = sp.from_items(list(range(20))).repartition(4, by_rows=True)
    out = sp.partial_sql("select distinct {__data_partition__} as p from {0}", df)
    assert [r["p"] for r in out.take_all()] == [0, 1, 2, 3]
    seeds = sp.partial_sql("select {rand_seed} as s, count(*) as n from {0}", df).take_all()
    assert len(seeds) == 4 and all(isinstance(r["s"], int) for r in seeds)
    # literal braces are written {{ }}
    lit = sp.partial_sql("select {{'a': 1}} as s", df)
    assert lit.take_all()[0]["s"] == {"a": 1}


def test_placeholders_survive_sql_fusion(sp):
    """§8.2: upstream's fusion pre-formatted the parent query and raised KeyError."""
    df = sp.from_items(list(range(20))).repartition(2, by_rows=True).filter("item % 2 = 0")
    out = sp.partial_sql("select {__data_partition__} as p, {{'x': 1}} as s, count(*) as n from {0}", df)
    assert out.take_all() == [{"p": 0, "s": {"x": 1}, "n": 5}, {"p": 1, "s": {"x": 1}, "n": 5}]


def test_partial_sort(sp):
    df = sp.from_items([{"a": i % 3, "b": i} for i in range(12)]).repartition(2, by_rows=True)
    out = df.partial_sort(by=["a", "b desc"]).take_all()
    first, second = out[:6], out[6:]
    for part in (first, second):
        assert part == sorted(part, key=lambda r: (r["a"], -r["b"]))
    single = sp.from_items([3, 1, 2]).partial_sort(by="item").take_all()
    assert single == [{"item": 1}, {"item": 2}, {"item": 3}]


def test_map_with_udf(sp):
    from smallpond.logical.udf import UDFType, udf

    @udf(params=[UDFType.INTEGER, UDFType.INTEGER], return_type=UDFType.INTEGER)
    def gcd(a: int, b: int) -> int:
        while b:
            a, b = b, a % b
        return a

    df = sp.from_arrow(pa.table({"a": [4, 9, 12], "b": [6, 6, 8]}))
    # DuckDB's own gcd answers for BIGINT columns (the same numbers here): the node warns of the name
    with pytest.warns(UserWarning, match="'gcd' has the name of a DuckDB built-in function"):
        mapped = df.map("gcd(a, b) as g", udfs=[gcd])
    assert mapped.to_arrow().column("g").to_pylist() == [2, 3, 4]


def test_kwargs_are_forwarded_to_nodes(sp):
    df = sp.from_items([1, 2]).map("item as x", cpu_limit=1, memory_limit=256 * 1024 * 1024, output_name="mapped")
    assert df.plan.output_name == "mapped" and df.plan.memory_limit == 256 * 1024 * 1024
    with pytest.raises(TypeError):
        sp.from_items([1]).map("item", no_such_parameter=1)


def test_error_message(sp):
    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}))
    with pytest.raises(Exception) as ex:
        sp.partial_sql("select a,, from {0}", df).to_arrow()
    # sql query should be in the exception message
    assert "select a,, from" in str(ex.value)
    assert isinstance(ex.value, RuntimeError)  # upstream raised RuntimeError("failed to run query: ...")


def test_unpicklable_task_exception(sp):
    from loguru import logger

    df = sp.from_items([1, 2, 3])
    with pytest.raises(Exception) as ex:
        df.map(lambda x: logger.info("use outside logger")).to_arrow()
    assert "Can't pickle task" in str(ex.value)
    assert "HINT: DO NOT use externally imported loguru logger in your task. Please import it within the task." in str(ex.value)


def test_session_keeps_working_after_a_failed_computation(sp):
    """A failure must not poison later, unrelated computations of the same session."""
    with pytest.raises(Exception, match="ZeroDivisionError|division by zero"):
        sp.from_items([1, 2]).map(lambda r: {"x": 1 // 0}).compute()
    assert sp.from_items([1, 2, 3]).count() == 3


def test_log(sp):
    def log_record(x):
        import logging
        import sys

        from loguru import logger

        print("stdout")
        print("stderr", file=sys.stderr)
        logger.info("loguru")
        logging.info("logging")
        return x

    df = sp.from_arrow(pa.table({"a": [1, 2, 3], "b": [4, 5, 6]}))
    assert df.map(log_record).take_all() == [{"a": 1, "b": 4}, {"a": 2, "b": 5}, {"a": 3, "b": 6}]
    _ = logging


def test_lambda_ops_on_csv_input(sp, compat_data):
    """§8.7: upstream's lambda map/filter/map_batches failed with ZeroDivisionError on CSV/JSON/pandas input."""
    df = sp.read_csv(
        os.path.join(compat_data["mock_urls"], "urls0.tsv"), schema={"urlstr": "varchar", "valstr": "varchar"}, delim=r"\t"
    )
    assert df.map(lambda r: {"n": len(r["urlstr"])}).count() == 100
    assert df.filter(lambda r: True).count() == 100
    assert df.map_batches(lambda t: t, batch_size=30).count() == 100
    assert sp.from_pandas(pd.DataFrame({"a": [1, 2]})).map(lambda r: {"b": r["a"] * 2}).take_all() == [{"b": 2}, {"b": 4}]


def test_empty_results(sp):
    """§8.9: upstream failed to read empty results; ours gives an empty table with the schema."""
    df = sp.from_arrow(pa.table({"a": [1, 2, 3]})).filter("a > 10")
    assert df.count() == 0
    assert df.take_all() == []
    assert df.take(3) == []
    table = df.to_arrow()
    assert table.num_rows == 0 and table.column_names == ["a"]
    assert sp.partial_sql("select count(*) as n from {0}", df).take_all() == [{"n": 0}]


def test_recompute_returns_self(sp):
    df = sp.from_items([1, 2])
    assert df.recompute() is df and df.need_recompute
    assert df.map("item").need_recompute  # derived DataFrames inherit the flag
    assert df.count() == 2


def test_dataframe_attributes(sp):
    df = sp.from_items([1])
    assert isinstance(df, DataFrame) and df.session is sp and df.optimized_plan is None and df.need_recompute is False
    mapped = df.map("item + 1 as x")
    assert str(mapped) == repr(mapped.plan) and str(mapped).startswith("SqlEngineNode-")
    assert mapped.plan in sp._nodes
    mapped.compute()  # compute() returns None
    assert mapped.optimized_plan is not None


def test_is_computed(sp):
    """§8.4: upstream's is_computed() was effectively always False."""
    df = sp.from_items([1, 2, 3]).map("item * 10 as x")
    assert not df.is_computed()
    df.compute()
    assert df.is_computed()


def test_results_are_reused_across_dataframes(sp, tmp_path):
    """§8.3: upstream re-ran every upstream task for each derived DataFrame."""
    marker_dir = str(tmp_path / "runs")
    os.makedirs(marker_dir)

    def tag(row):
        import os
        import uuid

        open(os.path.join(marker_dir, uuid.uuid4().hex), "w").close()
        return row

    base = sp.from_items(list(range(5))).map(tag)
    assert base.count() == 5
    runs = len(os.listdir(marker_dir))
    assert runs == 5
    assert base.map("item * 2 as y").count() == 5
    assert len(os.listdir(marker_dir)) == runs  # the derived DataFrame did not run `tag` again


def test_recompute_runs_again(sp, tmp_path):
    marker_dir = str(tmp_path / "runs")
    os.makedirs(marker_dir)

    def tag(row):
        import os
        import uuid

        open(os.path.join(marker_dir, uuid.uuid4().hex), "w").close()
        return row

    base = sp.from_items(list(range(3))).map(tag)
    assert base.count() == 3 and len(os.listdir(marker_dir)) == 3
    assert base.count() == 3 and len(os.listdir(marker_dir)) == 3  # computed once
    assert base.recompute().count() == 3
    assert len(os.listdir(marker_dir)) == 6  # ran again after recompute()


def test_write_parquet(sp, tmp_path):
    out = str(tmp_path / "out")
    df = sp.from_items(list(range(100))).repartition(4, by_rows=True).map("item * 2 as x")
    assert df.write_parquet(out) is None
    names = sorted(os.listdir(out))
    assert ".MANIFEST.txt" in names
    files = sorted(glob.glob(os.path.join(out, "*.parquet")))
    assert len(files) >= 4
    assert all(os.path.dirname(f) == out for f in files)  # flat: no sub-directories
    with open(os.path.join(out, ".MANIFEST.txt")) as f:
        listed = sorted(line.strip() for line in f if line.strip())
    assert listed == files
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert sorted(table.column("x").to_pylist()) == [2 * i for i in range(100)]


def test_write_parquet_lazy(sp, tmp_path):
    out = str(tmp_path / "lazy")
    written = sp.from_items([1, 2, 3]).write_parquet_lazy(out)
    assert isinstance(written, DataFrame) and not os.path.exists(out)
    written.compute()
    assert os.path.exists(os.path.join(out, ".MANIFEST.txt"))
    assert sorted_rows(sp.read_parquet(os.path.join(out, "*.parquet")).to_arrow()) == [(1,), (2,), (3,)]


def test_to_pandas_in_partition_order(sp):
    df = sp.from_items(list(range(10))).repartition(3, by_rows=True)
    pdf = df.to_pandas()
    assert isinstance(pdf, pd.DataFrame) and pdf["item"].tolist() == list(range(10))


def test_wait(sp):
    a = sp.from_items([1, 2]).map("item + 1 as x")
    b = sp.from_items([3]).map("item + 1 as x")
    assert sp.wait(a, b) is None
    assert a.is_computed() and b.is_computed()


def test_graph_and_dump_graph(sp, tmp_path):
    df = sp.from_items([1]).map("item")
    g = sp.graph()
    assert repr(df.plan) in g.source or str(int(df.plan.id)) in g.source
    sp.dump_graph(str(tmp_path / "graph"))
    assert os.path.exists(str(tmp_path / "graph"))


def test_dump_timeline(sp, tmp_path):
    import json

    sp.from_items(list(range(6))).repartition(2, by_rows=True).map("item").compute()
    path = sp.dump_timeline(str(tmp_path / "timeline.json"))
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert events and all(e["ph"] == "X" and e["dur"] >= 0 for e in events)


def test_session_properties(sp):
    from smallpond.execution.task import RuntimeContext
    from smallpond.logical.node import Context

    assert isinstance(sp.runtime_ctx, RuntimeContext) and sp._runtime_ctx is sp.runtime_ctx
    assert isinstance(sp._ctx, Context)
    assert sp.config.data_root == sp.runtime_ctx.data_root
    ids = [sp.from_items([1]).plan.id for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3  # node ids increase monotonically in a session


def test_recompute_runs_with_the_values_its_function_reads_now(sp):
    """A recomputed node travels to the workers again: a value its function reads (a dict it
    closes over) changed since the first run, and the rerun uses the new one, not the node as it
    was pickled the first time."""
    import pyarrow as pa

    cfg = {"k": 2}
    df = sp.from_items(list(range(10))).map(lambda r: {"y": r["item"] * cfg["k"]}, schema=pa.schema([("y", pa.int64())]))
    assert sum(r["y"] for r in df.take_all()) == 90
    cfg["k"] = 3
    assert sum(r["y"] for r in df.recompute().take_all()) == 135
