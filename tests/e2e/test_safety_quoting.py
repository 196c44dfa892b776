"""Nothing from the data or the filesystem is run as SQL (issue 8, part 2).

Reproductions: a Parquet column whose name closes the quote and appends a ``COPY ... TO`` must
not write a file; a data root or output path holding ``'`` must work; a file named
``a*.parquet`` must be read once (DuckDB globs every path it is given).
"""

from __future__ import annotations

import glob

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.errors import ParameterError
from smallpond.io.paths import duckdb_file_literal
from smallpond.logical.dataset import CsvDataSet, JsonDataSet, ParquetDataSet
from tests.e2e.safety_helpers import published_rows, tree

HOSTILE = """x" FROM range(1)) TO 'PWNED.csv'; COPY (SELECT 1 AS "a"""


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path written by injected SQL lands here
    return tmp_path


def test_hostile_column_name_is_data_not_sql(in_tmp):
    src = in_tmp / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(20)), HOSTILE: [f"v{i}" for i in range(20)]}), src / "data.parquet")
    sp = smallpond.init(data_root=str(in_tmp / "root"), num_executors=2)
    try:
        df = sp.read_parquet(str(src / "*.parquet")).repartition(2, hash_by="id")
        out = df.to_arrow()
        assert sorted(out.column("id").to_pylist()) == list(range(20))
        assert sorted(out.column(HOSTILE).to_pylist()) == sorted(f"v{i}" for i in range(20))
        # hashing by the hostile column itself: its name is matched to the data and quoted
        out = sp.read_parquet(str(src / "*.parquet")).repartition(3, hash_by=HOSTILE).to_arrow()
        assert sorted(out.column("id").to_pylist()) == list(range(20))
    finally:
        sp.shutdown()
    assert not glob.glob(str(in_tmp / "**" / "PWNED*"), recursive=True)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_a_partition_key_that_is_no_expression_is_a_name_never_statements(in_tmp, engine):
    """A hash or shuffle key the data has no column for is SQL only if it is one select item: else
    it is a name, quoted, and a column the input lacks (ColumnNotFoundError). Pasted as it was, this key
    ran its COPY in each task (DESCRIBE SELECT <key> FROM ... took three statements)."""
    marker = in_tmp / "PWNED.csv"
    keys = [
        f"1 FROM (SELECT 1); COPY (SELECT 'x') TO '{marker}'; SELECT 1",  # hash keys' DESCRIBE
        f"1)) FROM (SELECT 1); COPY (SELECT 'x') TO '{marker}'; SELECT ((1",  # a shuffle's CAST((key) AS BIGINT)
    ]
    sp = smallpond.init(data_root=str(in_tmp / "root"), num_executors=2)
    try:
        df = sp.from_items([{"a": i} for i in range(6)])
        for key in keys:
            for kind in ("hash_by", "by"):
                with pytest.raises(Exception, match="not found"):
                    df.repartition(2, engine_type=engine, **{kind: key}).take_all()
        # named in the error as a column the input lacks, not DuckDB's parser error about the SQL built
        # (by the task, a ColumnNotFoundError; by the plan check, when the job ran for its delay first)
        with pytest.raises(Exception, match=r"hash_columns=\[\"it's\"\]: column \"it's\" not found in the input") as info:
            df.repartition(2, engine_type=engine, hash_by="it's").take_all()
        assert "Parser Error" not in str(info.value) and "syntax error" not in str(info.value), info.value
        # a key that is one expression is still one
        assert sorted(r["a"] for r in df.repartition(3, by="a % 3", engine_type=engine).take_all()) == list(range(6))
    finally:
        sp.shutdown()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["it's", "a'b\"c", "sp ace", "x*y", "q?[1]", "{0}"])
def test_quote_and_glob_characters_in_data_root_and_output_path(tmp_path, name):
    data_root = tmp_path / f"root-{name}"
    out = tmp_path / f"out-{name}"
    sp = smallpond.init(data_root=str(data_root), num_executors=1)
    try:
        df = sp.from_items([{"id": i} for i in range(10)]).repartition(2, hash_by="id")
        df = sp.partial_sql("select id * 2 as d from {0}", df)
        df.write_parquet(str(out))
        assert published_rows(str(out), "d") == [2 * i for i in range(10)]
    finally:
        sp.shutdown()


def test_file_named_with_a_star_is_read_once(tmp_path):
    """``dir/*.parquet`` finds ``a*.parquet`` and ``ab.parquet``: each must be read exactly once."""
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), src / "a*.parquet")
    pq.write_table(pa.table({"id": [3]}), src / "ab.parquet")
    pq.write_table(pa.table({"id": [4]}), src / "q?.parquet")
    pq.write_table(pa.table({"id": [5]}), src / "qx.parquet")
    pq.write_table(pa.table({"id": [6]}), src / "b[1].parquet")
    pq.write_table(pa.table({"id": [7]}), src / "b1.parquet")
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=1)
    try:
        df = sp.read_parquet(str(src / "*.parquet"))
        assert df.count() == 7
        assert sorted(r["id"] for r in sp.partial_sql("select id from {0}", df).take_all()) == [1, 2, 3, 4, 5, 6, 7]
    finally:
        sp.shutdown()


def test_file_literals_escape_only_glob_characters():
    assert duckdb_file_literal("/data/part-0.parquet") == "'/data/part-0.parquet'"
    assert duckdb_file_literal("/d/a*b?c[d].parquet") == "'/d/a[*]b[?]c[[]d].parquet'"
    assert duckdb_file_literal("/d/it's") == "'/d/it''s'"


def test_csv_and_json_with_hostile_names(tmp_path):
    import duckdb

    src = tmp_path / "x=1 [it's]"
    src.mkdir()
    (src / "a*.csv").write_text("1,2\n")
    (src / "ab.csv").write_text("3,4\n")
    (src / "j?.json").write_text('{"k": 1}\n')
    conn = duckdb.connect()
    csv = CsvDataSet([glob.escape(str(src)) + "/*.csv"], {'a"b': "int", "c d": "int"})
    rows = conn.execute(f"select * from {csv.sql_query_fragment(conn=conn)}").fetchall()
    assert sorted(rows) == [(1, 2), (3, 4)]  # no hive column "x" from the folder name, no row twice
    empty = CsvDataSet([], {'a"b': "int"})
    assert conn.execute(f"select * from {empty.sql_query_fragment(conn=conn)}").fetchall() == []
    js = JsonDataSet([glob.escape(str(src)) + "/*.json"], {"k": "int"})
    assert conn.execute(f"select * from {js.sql_query_fragment(conn=conn)}").fetchall() == [(1,)]


def test_root_dir_is_never_read_as_a_pattern(tmp_path):
    weird = tmp_path / "d[1]"
    weird.mkdir()
    pq.write_table(pa.table({"id": [1]}), weird / "f.parquet")
    ds = ParquetDataSet(["*.parquet"], root_dir=str(weird))
    assert ds.resolved_paths == [str(weird / "f.parquet")]
    assert ParquetDataSet.from_files([str(weird / "f.parquet")]).resolved_paths == [str(weird / "f.parquet")]
    assert tree(str(weird)) == ["f.parquet"]


def test_read_columns_needing_quotes_on_empty_partitions(tmp_path):
    # one file in three partitions: two are empty, and their SQL had ``it's`` pasted raw
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"it's": [1, 2, 3], "id": [4, 5, 6]}), src)
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=1, task_cache="off")
    try:
        df = sp.read_parquet(str(src), columns=["it's", "id"]).repartition(3)
        out = sp.partial_sql("select * from {0}", df).to_arrow()
        assert out.column_names == ["it's", "id"]
        assert sorted(out.column("it's").to_pylist()) == [1, 2, 3]
    finally:
        sp.shutdown()


#: a CSV/JSON column type that, pasted into ``CAST(NULL AS <type>)``, adds a column of its own
TYPE_INJECTION = "INT) AS a, (SELECT 'pwned') AS injected, CAST(NULL AS INT"


@pytest.mark.parametrize("reader", ["read_csv", "read_json"])
def test_a_declared_type_is_a_type_never_sql(tmp_path, reader):
    # the type text was pasted raw where the dataset has no files (and in the plan check's schema
    # inference): the result gained a column "injected"; now it is refused where it is given
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=1, task_cache="off")
    try:
        with pytest.raises(ParameterError, match=r"type of column 'a' is not a DuckDB type: \"INT\) AS a"):
            getattr(sp, reader)([], schema={"a": TYPE_INJECTION})
        with pytest.raises(ParameterError, match=r"type of column 'b' must be a str"):
            getattr(sp, reader)([], schema={"b": 3})
        # a type DuckDB knows is rendered as DuckDB writes it, on the empty path too
        df = getattr(sp, reader)([], schema={"it's": "decimal(5, 2)", "s": "varchar[]"})
        out = df.to_arrow()
        assert out.column_names == ["it's", "s"] and out.num_rows == 0
        assert str(out.schema.field("it's").type) == "decimal128(5, 2)"
    finally:
        sp.shutdown()


@pytest.mark.parametrize("kind", [CsvDataSet, JsonDataSet])
def test_a_type_changed_after_construction_is_never_run(tmp_path, kind):
    import duckdb

    from smallpond.execution.schema import infer_schema
    from smallpond.logical.node import Context, DataSourceNode

    ds = kind([], {"a": "int"})
    (ds.csv_schema if kind is CsvDataSet else ds.json_schema)["a"] = TYPE_INJECTION
    with pytest.raises(ParameterError, match="not a DuckDB type"):
        duckdb.connect().execute(f"select * from {ds.sql_query_fragment()}")
    # the plan check and DataFrame.schema describe a source from its declared types
    file_ds = kind([str(tmp_path / "x")], {"a": "int"})
    (file_ds.csv_schema if kind is CsvDataSet else file_ds.json_schema)["a"] = TYPE_INJECTION
    with pytest.raises(ParameterError, match="not a DuckDB type"):
        infer_schema(DataSourceNode(Context(), file_ds), {})


#: a reader flag that, pasted as its own text, ends the reader's call and appends a row
FLAG_INJECTION = "true) UNION ALL SELECT 42 AS a FROM (SELECT 1"


def test_reader_flags_are_booleans_never_their_text(tmp_path):
    # union_by_name (read_parquet's, upstream's signature), header and parallel were pasted as
    # Python wrote them: a string flag ran as SQL. A flag is now a bool, or the text "true" or
    # "false" (which upstream's SQL read as such); any other value is refused where it is given
    import duckdb

    pq.write_table(pa.table({"a": [1]}), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text("a\n1\n")
    (tmp_path / "a.json").write_text('{"a": 1}\n')
    parquet, csv, json = (str(tmp_path / f"a.{x}") for x in ("parquet", "csv", "json"))
    for build in (
        lambda: ParquetDataSet([parquet], union_by_name=FLAG_INJECTION),
        lambda: CsvDataSet([csv], {"a": "int"}, parallel=FLAG_INJECTION),
        lambda: CsvDataSet([csv], {"a": "int"}, header="yes please"),
        lambda: JsonDataSet([json], {"a": "int"}, union_by_name=2),
    ):
        with pytest.raises(ParameterError, match="must be True or False"):
            build()
    conn = duckdb.connect()
    datasets = [
        ParquetDataSet([parquet], union_by_name="false"),
        CsvDataSet([csv], {"a": "int"}, header="True", parallel=0, union_by_name="FALSE"),  # the header row skipped
        JsonDataSet([json], {"a": "int"}, union_by_name=1),
    ]
    for ds in datasets:
        assert conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)}").fetchall() == [(1,)], ds
    assert (datasets[0]._union_by_name, datasets[1].header, datasets[1].parallel) == (False, True, False)
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=1, task_cache="off")
    try:
        with pytest.raises(ParameterError, match="union_by_name"):
            sp.read_parquet(parquet, union_by_name=FLAG_INJECTION)
        assert sp.read_parquet(parquet, union_by_name="false").take_all() == [{"a": 1}]
    finally:
        sp.shutdown()
