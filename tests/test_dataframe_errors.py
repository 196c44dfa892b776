"""DataFrame API: bad arguments and failing steps are reported where the user wrote them (the
method, the call site, the SQL or function), and parameters given without effect warn."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import ParameterError, TaskError


def test_parameters_without_effect_warn_at_the_call_site(sp, tmp_path):
    """schema= of a SQL map/flat_map, streaming_batch_size= of map_batches (batch_size= wins),
    output_schema= of a Python map and by_rows= of a repartition by hash_by=/by= were accepted and
    silently ignored."""
    path = str(tmp_path / "ten.parquet")
    pq.write_table(pa.table({"a": list(range(10))}), path)
    df = sp.read_parquet(path)
    here = os.path.basename(__file__)
    with pytest.warns(UserWarning, match=f"DataFrame.map created at .*{here}.*schema= has no effect") as w:
        out = df.map("a::DOUBLE AS b", schema=pa.schema([("b", pa.int64())]))
    assert len(w) == 1 and out.to_arrow().schema.field("b").type == pa.float64()
    with pytest.warns(UserWarning, match="DataFrame.flat_map created at .*schema= has no effect"):
        df.flat_map("a AS b", schema=pa.schema([("b", pa.string())]))
    with pytest.warns(UserWarning, match="streaming_batch_size= has no effect: batch_size= \\(4\\)"):
        sizes = df.map_batches(lambda t: pa.table({"n": [t.num_rows]}), batch_size=4, streaming_batch_size=3)
    assert sizes.to_arrow().column("n").to_pylist() == [4, 4, 2]
    with pytest.warns(UserWarning, match="output_schema= has no effect: .* schema="):
        df.map(lambda r: r, output_schema=pa.schema([("a", pa.string())]))
    # by_rows=True beside hash_by=/by= was ignored without a word
    with pytest.warns(UserWarning, match=f"DataFrame.repartition created at .*{here}.*by_rows=True has no effect.*hash_by="):
        df.repartition(2, hash_by="a", by_rows=True)
    with pytest.warns(UserWarning, match="by_rows=True has no effect: each row goes where by= sends it"):
        df.repartition(2, by="a % 2", by_row=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df.repartition(2, hash_by="a")
        df.repartition(2, by_rows=True)
        df.map("a AS b")
        df.map(lambda r: r, schema=pa.schema([("a", pa.int64())]))
        df.map_batches(lambda t: t, batch_size=4)


def test_wait_refuses_a_frame_of_another_session(sp, tmp_path):
    # it ran in this session's job, and its own session computed it again for its consumers
    other = smallpond.init(data_root=str(tmp_path / "other"))
    try:
        theirs = other.from_items([7, 8])
        with pytest.raises(ParameterError) as info:
            sp.wait(sp.from_items([1]), theirs)
        assert "argument 1" in str(info.value) and "another session" in str(info.value)
        assert f"{__file__}:" in str(info.value)
        assert not sp._is_done(theirs.plan)
        other.wait(theirs)
        assert theirs.is_computed() and theirs.count() == 2
    finally:
        other.shutdown()


def test_from_arrow_takes_a_record_batch(sp):
    # TypeError in the source task: expected pyarrow.lib.Table, got pyarrow.lib.RecordBatch
    assert sp.from_arrow(pa.record_batch({"a": [1, 2]})).take_all() == [{"a": 1}, {"a": 2}]


def test_schema_given_as_pairs_or_a_dict_of_types_is_a_schema(sp):
    df = sp.from_items([{"a": 1}, {"a": 2}])
    mapped = df.map(lambda r: {"a": r["a"]}, schema=[("a", pa.int32())]).to_arrow()
    assert mapped.schema.field("a").type == pa.int32() and mapped.column("a").to_pylist() == [1, 2]
    flat = df.flat_map(lambda r: [r, r], schema={"a": "int16"}).to_arrow()
    assert flat.schema.field("a").type == pa.int16() and flat.num_rows == 4
    batches = df.map_batches(lambda t: t, schema={"a": pa.float64()}).to_arrow()
    assert batches.schema.field("a").type == pa.float64()


def test_write_parquet_refuses_a_line_break_its_manifest_would_hold(sp, tmp_path):
    # .MANIFEST.txt lists one path per line: a folder "out\nx" was written and could not be read back
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"k": [1, 2, 3]}), src)
    with pytest.raises(ParameterError) as info:
        sp.read_parquet(str(src)).write_parquet(str(tmp_path / "out\nx"))
    assert "line break" in str(info.value) and f"{__file__}:" in str(info.value)
    assert not os.path.exists(tmp_path / "out\nx")
    # a step that writes files of its own publishes them under its names
    odd = tmp_path / "a\nb.parquet"
    pq.write_table(pa.table({"k": [4]}), odd)
    sp.partial_sql("select * from {0}", sp.read_parquet(str(odd))).write_parquet(str(tmp_path / "out"))
    assert sp.read_parquet(str(tmp_path / "out")).to_arrow().column("k").to_pylist() == [4]


@pytest.mark.parametrize("given", ["glob", "file"])
def test_an_input_file_named_with_a_control_character_is_published_under_a_name_its_manifest_can_list(sp, tmp_path, given):
    """write_parquet straight after read_parquet publishes the input files under their own names: a
    name holding a line break (or another control character) is published with ``_`` in its place,
    so the manifest's line is one path and the result reads back (it split the line in two)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, k in (("plain.parquet", 1), ("new\nline.parquet", 2), ("car\rriage.parquet", 3), ("tab\tx.parquet", 4)):
        pq.write_table(pa.table({"k": [k]}), folder / name)
    pq.write_table(pa.table({"k": [5]}), folder / "new_line.parquet")  # the name the first one is given
    out = str(tmp_path / "out")
    source = str(folder / "*.parquet") if given == "glob" else [str(p) for p in sorted(folder.iterdir())]
    sp.read_parquet(source).write_parquet(out)
    names = sorted(n for n in os.listdir(out) if n != ".MANIFEST.txt")
    assert len(names) == 5 and not any(c in n for n in names for c in "\n\r\t"), names
    lines = open(os.path.join(out, ".MANIFEST.txt"), newline="").read().split("\n")[:-1]
    assert sorted(os.path.basename(p) for p in lines) == names and all(os.path.isfile(p) for p in lines)
    assert sorted(sp.read_parquet(out).to_arrow().column("k").to_pylist()) == [1, 2, 3, 4, 5]


def test_a_manifest_sink_refuses_a_globbed_file_named_with_a_line_break_when_planned(tmp_path, make_rt):
    """type="manifest" lists its input files' own paths: one that a manifest line cannot hold, found
    by a glob, is refused when the job is planned, naming the sink, its call site and the file."""
    from smallpond.errors import PlanError
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("plain.parquet", "new\nline.parquet"):
        pq.write_table(pa.table({"k": [1]}), folder / name)
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(folder / "*.parquet")]))
    dest = tmp_path / "out"
    sink = DataSinkNode(ctx, (src,), str(dest), type="manifest")
    line = sink.location
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, sink), make_rt())
    message = str(info.value)
    assert "DataSinkNode" in message and line in message and repr(str(folder / "new\nline.parquet")) in message
    assert not dest.exists()


def test_an_input_file_whose_name_is_not_utf8_is_published_renamed_or_refused_when_planned(sp, tmp_path, make_rt):
    """A file name that is not UTF-8 (b"caf\\xe9.parquet", Latin-1), found by a glob: its name as
    Python has it holds a lone surrogate that a manifest (UTF-8 text) cannot hold. write_parquet
    publishes it with ``_`` in its place; type="manifest" refuses it when planned, naming it. Both
    failed in the sink task, after everything before it ran: UnicodeEncodeError writing the
    manifest, naming neither the file nor the sink."""
    from smallpond.errors import PlanError
    from smallpond.execution.job import run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan

    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"k": [1]}), folder / "plain.parquet")
    pq.write_table(pa.table({"k": [2]}), folder / "tmp")
    os.rename(os.fsencode(folder / "tmp"), os.fsencode(folder) + b"/caf\xe9.parquet")
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.parquet")
    out = str(tmp_path / "out")
    sp.read_parquet(str(folder / "*.parquet")).write_parquet(out)
    assert sorted(os.listdir(out)) == [".MANIFEST.txt", "caf_.parquet", "plain.parquet"]
    assert sorted(sp.read_parquet(out).to_arrow().column("k").to_pylist()) == [1, 2]
    ctx = Context()
    sink = DataSinkNode(
        ctx, (DataSourceNode(ctx, ParquetDataSet([str(folder / "*.parquet")])),), str(tmp_path / "m"), type="manifest"
    )
    with pytest.raises(PlanError) as info:
        run_job(LogicalPlan(ctx, sink), make_rt())
    assert sink.location in str(info.value) and repr(odd) in str(info.value) and "not UTF-8" in str(info.value)
    assert not (tmp_path / "m").exists()


BAD_ARGS = {
    "repartition by=''": (lambda df: df.repartition(2, by=""), ["data_partition_column", "''"]),
    "repartition hash_by=1": (lambda df: df.repartition(2, hash_by=1), ["hash_columns", "got 1"]),
    "filter('')": (lambda df: df.filter(""), ["DataFrame.filter", "sql_or_func", "''"]),
    "map(' ')": (lambda df: df.map(" "), ["DataFrame.map", "sql_or_func", "' '"]),
    "flat_map('')": (lambda df: df.flat_map(""), ["DataFrame.flat_map", "sql_or_func", "''"]),
    "partial_sort by=''": (lambda df: df.partial_sort(by=""), ["DataFrame.partial_sort", "by", "''"]),
    "partial_sort by=['a', '']": (lambda df: df.partial_sort(by=["a", ""]), ["DataFrame.partial_sort", "by", "''"]),
    "partial_sort by=[]": (lambda df: df.partial_sort(by=[]), ["DataFrame.partial_sort", "by", "[]"]),
    # schema= that is no pyarrow schema failed in the task: AttributeError 'dict' object has no
    # attribute 'get_field_index' (map, flat_map) or 'metadata' (map_batches)
    "map schema={'x': 'int'}": (
        lambda df: df.map(lambda r: r, schema={"x": "int"}),
        ["DataFrame.map", "schema must be a pyarrow.Schema", "{'x': 'int'}", "No type alias for int"],
    ),
    "flat_map schema=3": (lambda df: df.flat_map(lambda r: [r], schema=3), ["DataFrame.flat_map", "schema", "int 3"]),
    "map_batches schema='a'": (lambda df: df.map_batches(lambda t: t, schema="a"), ["DataFrame.map_batches", "str 'a'"]),
    # the source task failed: AttributeError: 'DataFrame' object has no attribute 'num_rows', ...
    "from_arrow(pandas)": (
        lambda df: df.session.from_arrow(df.to_pandas()),
        ["Session.from_arrow", "needs a pyarrow.Table, got DataFrame", "from_pandas()"],
    ),
    "from_arrow(dict)": (lambda df: df.session.from_arrow({"a": [1]}), ["Session.from_arrow", "got dict"]),
    "from_pandas(table)": (
        lambda df: df.session.from_pandas(pa.table({"a": [1]})),
        ["Session.from_pandas", "needs a pandas.DataFrame, got Table", "from_arrow()"],
    ),
    # ValueError: dictionary update sequence element #0 has length 1; 2 is required; the
    # datasets' own errors did not name the call site
    "read_csv schema=['a']": (lambda df: df.session.read_csv("x.csv", schema=["a"]), ["CsvDataSet", "schema dict", "['a']"]),
    "read_json schema='a'": (lambda df: df.session.read_json("x.json", schema="a"), ["JsonDataSet", "schema dict", "'a'"]),
    "read_parquet(3)": (lambda df: df.session.read_parquet(3), ["Session.read_parquet", "paths must be a str", "got 3"]),
    # an AttributeError ('str' object has no attribute 'need_recompute')
    "Session.wait('x')": (lambda df: df.session.wait(df, "x"), ["Session.wait", "argument 1", "str 'x'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments_fail_where_they_are_given(sp, case):
    # they failed when the job ran (a binder or parser error, TypeError for hash_by=1)
    build, expected = BAD_ARGS[case]
    df = sp.from_items([{"a": 1}])
    with pytest.raises(ParameterError) as info:
        build(df)
    for text in expected:
        assert text in str(info.value)
    assert f"{__file__}:" in str(info.value)


def test_bad_sql_names_the_sql(tmp_path):
    with smallpond.init(data_root=str(tmp_path)) as s:
        df = s.from_arrow(pa.table({"a": [1]}))
        with pytest.raises(Exception) as info:
            s.partial_sql("select a,, from {0}", df).compute()
        text = str(info.value)
        assert "select a,, from" in text
        assert os.path.basename(__file__) in text  # the user's line that created the failing step
        assert "partial_sql" in text


def test_unpicklable_function_message(tmp_path):
    import threading

    lock = threading.Lock()

    def uses_lock(row):
        with lock:
            return row

    with smallpond.init(data_root=str(tmp_path)) as s:
        with pytest.raises(TaskError) as info:
            s.from_items([1, 2]).map(uses_lock).compute()
        text = str(info.value)
        assert "Can't pickle" in text and "uses_lock" in text and "lock" in text.lower()


def test_python_error_names_operation_and_line(tmp_path):
    with smallpond.init(data_root=str(tmp_path)) as s:
        df = s.from_items([1, 2, 3]).map(lambda r: {"x": 1 / 0})
        with pytest.raises(TaskError) as info:
            df.compute()
        text = str(info.value)
        assert "ZeroDivisionError" in text and "map" in text and os.path.basename(__file__) in text


def test_an_option_the_built_node_does_not_take_is_refused_at_the_call_site(sp, tmp_path):
    # was: TypeError from the node's constructor (SqlEngineNode.__init__() got an unexpected ...)
    path = str(tmp_path / "three.parquet")
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    df = sp.read_parquet(path)
    here = os.path.basename(__file__)
    calls = {
        "filter": lambda: df.filter("a > 2", streaming_batch_size=3),
        "map": lambda: df.map(lambda r: r, per_thread_output=False),
        "repartition": lambda: df.repartition(2, hash_by="a", no_such_option=1),
        "partial_sort": lambda: df.partial_sort("a", no_such_option=1),
    }
    for op, call in calls.items():
        with pytest.raises(ParameterError, match=rf"DataFrame.{op} created at .*{here}:\d+: takes no option '\w+'"):
            call()
    assert df.filter("a > 1", cpu_limit=1).count() == 2  # options the node takes still pass


def test_a_data_root_or_an_input_path_holding_a_tab_is_listed_as_it_is(tmp_path):
    """A tab (or another control character that ends no line) is a character a manifest line holds:
    a data root named so ran every job before (its final results are a manifest of the job's
    files) and an input path named so is listed by type="manifest" as it is. Refusing every
    control character refused both: ParameterError 'output_path must not contain a line break or
    another control character' for the job's own FinalResults, whatever the user's plan."""
    from smallpond.execution.job import make_runtime_ctx, run_job
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode

    folder = tmp_path / "in\tputs"
    folder.mkdir()
    pq.write_table(pa.table({"k": [1, 2]}), folder / "a\x01b.parquet")
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet([str(folder / "*.parquet")]))
    plus = SqlEngineNode(ctx, (src,), "select k + 1 as k from {0}")
    rt = make_runtime_ctx("tab-root", None, str(tmp_path / "data\troot"), task_cache=False)
    result = run_job(LogicalPlan(ctx, plus), rt, num_workers=1, manifest_only_final_results=True)
    assert sorted(result.final_output.to_arrow_table().column("k").to_pylist()) == [2, 3]
    ctx2 = Context()
    source = DataSourceNode(ctx2, ParquetDataSet([str(folder / "*.parquet")]))
    listed = DataSinkNode(ctx2, (source,), str(tmp_path / "m"), type="manifest")
    rt = make_runtime_ctx("tab-manifest", None, str(tmp_path / "data"), task_cache=False)
    run_job(LogicalPlan(ctx2, listed), rt, num_workers=1)
    assert open(tmp_path / "m" / ".MANIFEST.txt").read() == str(folder / "a\x01b.parquet") + "\n"
    assert ParquetDataSet([str(tmp_path / "m")]).to_arrow_table().column("k").to_pylist() == [1, 2]


@pytest.mark.parametrize(
    "condition, why",
    [
        ("a > 1) or (1=1", "closes a parenthesis it did not open"),
        ("a > 1) union all select 9 as a from (select 1", "closes a parenthesis it did not open"),
        ("a > 1; select 9", "holds a ';'"),
        ("(a > 1", "leaves a parenthesis open"),
        # a clause of its own outside parentheses: where (a > 1 group by a) cannot parse
        ("a > 1 group by a", "holds GROUP outside parentheses"),
        ("a > 1 union all select 9", "holds UNION outside parentheses"),
        ("a > 1 limit 1", "holds LIMIT outside parentheses"),
        ("a in (select 1) order by a", "holds ORDER outside parentheses"),
        ("exists (select 1) where a > 1", "holds WHERE outside parentheses"),
        ("st.from > 1 offset 1", "holds OFFSET outside parentheses"),
    ],
)
def test_a_filter_condition_is_one_expression(sp, condition, why):
    """``filter("a > 1) or (1=1")`` closed the ``where (...)`` around it: the query kept every row
    (``where (a > 1) or (1=1)``), and a condition could add rows of its own (``union all ...``).
    It is refused where it is given; parentheses, ``;`` and quotes inside strings, quoted names,
    dollar quotes and comments are the condition's own."""
    df = sp.from_items([{"a": 1, "s": "x"}, {"a": 2, "s": ")"}])
    with pytest.raises(ParameterError) as info:
        df.filter(condition)
    text = str(info.value)
    assert "DataFrame.filter" in text and repr(condition) in text and why in text and f"{__file__}:" in text
    kept = df.filter("s = ')' or s = $$;($$ or \"s\" = ')' -- (\n or a > (1 + 1) /* ) */").take_all()
    assert kept == [{"a": 2, "s": ")"}]


def test_legitimate_filter_conditions_are_accepted(sp):
    """What DuckDB reads as one condition is accepted, clause words and all where they are the
    condition's own: subqueries (``in (select ...)``, ``exists (...)``, a condition that is a
    query: ``select ...``, FROM first, ``(select ...) union ...``), ``case ... end``, lambdas,
    ``is [not] distinct from``, ``between``, struct fields spelt as reserved words. Each is checked
    against DuckDB's own result for the same query."""
    import duckdb

    rows = [
        {"a": 1, "l": [1, 5], "st": {"from": 3, "group": 1, "limit": 0}},
        {"a": 2, "l": [2], "st": {"from": 4, "group": 0, "limit": 2}},
    ]
    df = sp.from_items(rows)
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist(rows))
    conditions = [
        "a in (select 2 union all select 3 order by 1 limit 5)",
        "exists (select 1 where a > 1) and not exists (select 1 from range(3) group by range having false)",
        "case when a > 1 then true else false end",
        "len(list_filter(l, lambda x: x > 1)) = 1 and len([x for x in l if x > 4]) = 0",
        "a is distinct from 1 and a is not distinct from 2",
        "a between 2 and 3",
        "st.from = 4 and st.group = 0 and st.limit > 1",
        "select a > 1",
        "select count(*) > 0 from range(3) where range = a * 10 - 18 group by range having true order by 1 limit 1 offset 0",
        "from range(3) select bool_or(range = a) where range > 1",
        "(select a > 1) union all (select false) order by 1 desc limit 1",
        "with q as (select 2 as v) select a = v from q",
    ]
    for condition in conditions:
        want = con.sql(f"select * from t where ({condition})").to_arrow_table().to_pylist()
        assert want == [rows[1]], condition
        assert df.filter(condition).take_all() == want, condition


def test_a_name_with_a_dollar_spelt_with_a_clause_word_is_a_name(sp):
    """``a$from``, ``order$n`` are names to DuckDB, not FROM and ORDER: a filter, map and
    partial_sort on them were refused (FROM/ORDER outside parentheses). A number followed by a
    clause word is the number and the clause: ``partial_sort("1limit 0")`` is refused where it is
    given, where it ran ``order by 1limit 0`` and gave no rows."""
    df = sp.from_items([{"a$from": 1, "order$n": 5}, {"a$from": 2, "order$n": 4}])
    assert df.filter("a$from > 1 and order$n = 4").take_all() == [{"a$from": 2, "order$n": 4}]
    assert df.map("a$from + order$n as s").take_all() == [{"s": 6}, {"s": 6}]
    assert df.partial_sort("order$n").take_all() == [{"a$from": 2, "order$n": 4}, {"a$from": 1, "order$n": 5}]
    with pytest.raises(ParameterError, match="LIMIT outside parentheses"):
        df.partial_sort("1limit 0")


def test_a_filter_condition_is_lexed_as_duckdb_lexes_it(sp):
    """What DuckDB reads as one condition is one: a block comment nests in another (``/* /* */ )
    */`` is one comment), and ``$`` inside a name (``a$b$``) starts no dollar quote, so the
    parenthesis after it is code. Both were refused as closing a parenthesis they did not open.
    A string, quoted name or comment left open is refused where it is given, not by DuckDB's
    parser in the task (which shows the engine's query, not the user's line)."""
    df = sp.from_items([{"a": 1, "a$b$": 3}, {"a": 2, "a$b$": -4}])
    assert df.filter("a > 1 /* nested /* */ ) */").take_all() == [{"a": 2, "a$b$": -4}]
    assert df.filter("abs(a$b$) = 4 or a$b$ > 9").take_all() == [{"a": 2, "a$b$": -4}]
    for condition in ("a = 'x", "a = E'x\\'", 'a = "x', "a = $$x", "a > 1 /* note"):
        with pytest.raises(ParameterError) as info:
            df.filter(condition)
        text = str(info.value)
        assert "DataFrame.filter" in text and repr(condition) in text and "open" in text and f"{__file__}:" in text


@pytest.mark.parametrize(
    "op, text, why",
    [
        ("map", "a from (select 9 as a) union all select a", "holds FROM outside parentheses"),
        ("map", "a, 9 as b from {0} union all select 9, 9 --", "holds FROM outside parentheses"),
        ("map", "1 as a except select 2", "holds EXCEPT outside parentheses"),
        ("map", "a limit 1", "holds LIMIT outside parentheses"),
        ("map", "distinct from (select 9 as a) union all select a", "holds FROM outside parentheses"),
        ("map", "a) , (select 1", "closes a parenthesis it did not open"),
        ("map", "a; select 1", "holds a ';'"),
        ("map", "1.from (select 9 as a) union all select a", "holds FROM outside parentheses"),  # (1. is a number)
        ("map", "a.as from (select 9 as a) union all select a", "holds FROM outside parentheses"),
        ("map", "a as b from (select 9 as a) union all select a", "holds FROM outside parentheses"),
        ("map", "a::int from (select 9 as a) union all select a", "holds FROM outside parentheses"),
        ("map", "a within group limit 1", "holds GROUP outside parentheses"),
        # text ending where the query's own FROM would be taken into it (select <text> from {0})
        ("map", "a, st.", "ends in '.', AS"),
        ("map", "a, 1 .", "ends in '.', AS"),
        ("map", "a as", "ends in '.', AS"),
        ("map", "a, 1 is not distinct", "IS [NOT] DISTINCT"),
        ("flat_map", "* except", "holds EXCEPT outside parentheses"),
        ("map", "'a", "open"),
        ("flat_map", "unnest([a, a]) as u where a > 1", "holds WHERE outside parentheses"),
        ("flat_map", "unnest([a, a]) as u, (a", "leaves a parenthesis open"),
        ("partial_sort", "a limit 1", "holds LIMIT outside parentheses"),
        ("partial_sort", "a union all select 9 as a", "holds UNION outside parentheses"),
        ("partial_sort", "a) desc, (a", "closes a parenthesis it did not open"),
        ("partial_sort", "a; select 1", "holds a ';'"),
    ],
)
def test_a_select_list_or_order_by_is_checked_where_it_is_given(sp, op, text, why):
    """A SQL select list (``map``, ``flat_map``: ``select <text> from {0}``) or ORDER BY list
    (``partial_sort``: ``... order by <text>``) is pasted into the query with nothing around it:
    a clause of its own (``a from ... union all select ...``, ``a limit 1``) changed the query
    (rows added, kept or dropped), and parentheses, ``;`` or quotes it did not close failed in
    the task, showing the engine's query. Both are refused where given, naming the method, the
    text, why and the call site, as a filter condition is."""
    df = sp.from_items([{"a": 1}, {"a": 2}])
    with pytest.raises(ParameterError) as info:
        if op == "partial_sort":
            df.partial_sort(by=["a", text])
        else:
            getattr(df, op)(text)
    message = str(info.value)
    assert f"DataFrame.{op}" in message and repr(text) in message and why in message and f"{__file__}:" in message


def test_legitimate_select_and_order_by_lists_are_accepted(sp):
    """What a select list or ORDER BY list may hold at its top level stays accepted: commas,
    ``is [not] distinct from``, ``* except (...)`` / ``exclude``, ``distinct on``, clause words in
    parentheses, strings, quoted names and comments, casts (the reference's examples included)."""
    df = sp.from_items([{"a": 1, "b": 4, "from": "x"}, {"a": 2, "b": 2, "from": "y"}])
    assert df.map("a, b * 2 as c").take_all() == [{"a": 1, "c": 8}, {"a": 2, "c": 4}]
    assert df.map("cast(a as varchar) as y").take_all() == [{"y": "1"}, {"y": "2"}]
    assert df.map("a is distinct from b as d, a is not distinct from b as e").take_all() == [
        {"d": True, "e": False},
        {"d": False, "e": True},
    ]
    assert df.map('* except (b, "from")').take_all() == [{"a": 1}, {"a": 2}]
    assert df.map('* exclude (b, "from")').take_all() == [{"a": 1}, {"a": 2}]
    assert df.map("distinct on (b) b").partial_sort("b").take_all() == [{"b": 2}, {"b": 4}]
    texts = "\"from\" || ' from x; (' as f, (select max(a) from (select 1 as a)) as m, extract(year from date '2024-01-02') as y -- from"
    assert df.map(texts).take_all() == [{"f": "x from x; (", "m": 1, "y": 2024}, {"f": "y from x; (", "m": 1, "y": 2024}]
    assert df.map("sum(a) filter (where a > 1) over (order by a) as s").take_all() == [{"s": None}, {"s": 2}]
    assert df.flat_map("unnest([a, b]) as c").take_all() == [{"c": 1}, {"c": 4}, {"c": 2}, {"c": 2}]
    assert df.partial_sort(by=["b desc nulls last", '"from" collate nocase']).map("a").take_all() == [{"a": 1}, {"a": 2}]
    assert df.partial_sort(by="a is distinct from 2, a desc").map("a").take_all() == [{"a": 2}, {"a": 1}]


def test_reserved_words_read_as_names_and_within_group_are_accepted(sp):
    """A reserved word DuckDB reads as a name is no clause: a struct field or qualified column
    after a '.' (``st.from``, ``st.x.select``), a column's name after AS (``a as offset``), a type
    after '::' (``::union(...)``); nor is the GROUP of ``within group (order by ...)``. Each was
    refused as a clause at the select list's top level (fdaebab); each is checked against
    DuckDB's own answer for the same query."""
    import duckdb

    rows = [
        {"a": 1, "st": {"from": 3, "order": 1, "x": {"select": 5}}},
        {"a": 2, "st": {"from": 4, "order": 0, "x": {"select": 6}}},
    ]
    df = sp.from_items(rows)
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist(rows))

    def same(text, sort=None):
        got = (df.partial_sort(by=sort) if sort else df).map(text).to_arrow().to_pylist()
        want = con.sql(f"select {text} from t" + (f" order by {sort}" if sort else "")).to_arrow_table()
        assert got == want.to_pylist(), text
        return got

    assert same("st.from, st.order as o, st.x.select") == [{"from": 3, "o": 1, "select": 5}, {"from": 4, "o": 0, "select": 6}]
    assert same("a as offset, a + 1 as limit, a as window") == [
        {"offset": 1, "limit": 2, "window": 1},
        {"offset": 2, "limit": 3, "window": 2},
    ]
    # (a union is written to Parquet as a struct of its tag and members)
    assert [r["u"]["n"] for r in df.map("a::union(n bigint, s varchar) as u").take_all()] == [1, 2]
    assert same("percentile_cont(0.5) within group (order by a) as m, mode() within group (order by a) as o") == [
        {"m": 1.5, "o": 1}
    ]
    assert same("a", sort="st.order nulls last") == [{"a": 2}, {"a": 1}]


def test_a_reserved_word_read_as_a_name_is_sql_in_columns_and_partition_keys(sp, tmp_path):
    """A source's ``columns=`` item and a partition key are SQL when they are one select item /
    one expression: ``st.from as f`` and ``st.from`` are (a struct field spelt as a reserved
    word), where since 7c3e8a3 they were quoted as names the data lacks (column not found)."""
    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.Table.from_pylist([{"a": i, "st": {"from": i * 10, "order": -i}} for i in range(4)]), path)
    df = sp.read_parquet(path, columns=["a", "st.from as f", "st.order"])
    assert df.take_all() == [{"a": i, "f": i * 10, "order": -i} for i in range(4)]
    hashed = sp.read_parquet(path).repartition(2, hash_by="st.from")
    assert sorted(r["a"] for r in hashed.take_all()) == [0, 1, 2, 3]


def test_a_bad_row_count_names_the_call_it_was_given_to(sp):
    # show("x") said "take(limit) needs a non-negative integer": a call the user did not make
    df = sp.from_items([1, 2])
    with pytest.raises(ParameterError, match=r"^show\(n\) needs a non-negative integer, got 'x'"):
        df.show("x")
    with pytest.raises(ParameterError, match=r"^take\(limit\) needs a non-negative integer, got -1"):
        df.take(-1)


def _reads_a_missing_key(row):
    return {"x": row["nosuch"]}  # the line a failure names


def test_a_failure_in_user_python_names_the_line_that_raised_it(sp):
    # the error named the line that built the node only; the line in the user's function that
    # raised was in the task's log and e.details, not in the message (for map_batches, pyarrow's
    # own frames below the user's, such as pyarrow/table.pxi, are not it either)
    import inspect

    df = sp.from_items([1, 2])
    line = inspect.getsourcelines(_reads_a_missing_key)[1] + 1
    with pytest.raises(TaskError) as e:
        df.map(_reads_a_missing_key).count()
    assert f'  raised at: {__file__}:{line}, in _reads_a_missing_key: return {{"x": row["nosuch"]}}' in str(e.value)
    with pytest.raises(TaskError) as e:
        df.map_batches(lambda t: t.select(["nosuch"])).count()
    raised = [x for x in str(e.value).splitlines() if x.startswith("  raised at: ")]
    assert raised and raised[0].startswith(f"  raised at: {__file__}:"), str(e.value)


def test_raised_at_skips_a_library_installed_where_this_interpreter_does_not_look(sp, tmp_path):
    # a library frame is told by the driver's own sysconfig and sys.path only: a package of a Ray
    # worker's runtime_env virtualenv, or another machine's standard library, was named as the line
    # that raised ('raised at: .../site-packages/strictlib/core.py:2, in check') over the user's line
    import inspect

    lib = tmp_path / "runtime_resources" / "pip" / "ab12" / "virtualenv" / "lib" / "python3.10" / "site-packages"
    ns = {"__name__": "strictlib_core"}
    exec(compile("def check(row):\n    raise ValueError(f'bad row {row}')\n", str(lib / "strictlib" / "core.py"), "exec"), ns)
    check = ns["check"]

    def uses_the_library(row):
        return check(row)  # the line a failure names

    df = sp.from_items([1])
    line = inspect.getsourcelines(uses_the_library)[1] + 1
    with pytest.raises(TaskError) as e:
        df.map(uses_the_library).count()
    assert "site-packages" in e.value.details
    raised = [x for x in str(e.value).splitlines() if x.startswith("  raised at: ")]
    assert raised == [f"  raised at: {__file__}:{line}, in uses_the_library: return check(row)  # the line a failure names"]
    # another interpreter's standard library, in the text of a traceback from another machine (and
    # a user's folder named lib/python3 is not one)
    other = TaskError(
        "JSONDecodeError: x",
        node="n",
        task_key="k",
        details=(
            "Traceback (most recent call last):\n"
            '  File "/home/u/lib/python3/job.py", line 5, in f\n    return json.loads(s)\n'
            '  File "/usr/lib/python3.10/json/decoder.py", line 355, in raw_decode\n    raise JSONDecodeError(s)\n'
            "JSONDecodeError: x\n"
        ),
    )
    assert "  raised at: /home/u/lib/python3/job.py:5, in f: return json.loads(s)" in str(other)
