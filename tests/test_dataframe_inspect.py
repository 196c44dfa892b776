"""A DataFrame you can look at: ``schema`` before running, ``show()``, the repr, ``_repr_html_``,
``explain()``; and ``read_parquet`` of a folder with a ``.MANIFEST.txt``."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.execution.events import read_events


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    session = smallpond.init(data_root=str(tmp_path_factory.mktemp("inspect_root")), num_executors=2)
    yield session
    session.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect_data")
    t = pa.table({"a": list(range(60)), "s": [f"k{i % 5}" for i in range(60)], "f": [i / 3 for i in range(60)]})
    paths = []
    for i in range(3):
        p = str(d / f"p{i}.parquet")
        pq.write_table(t.slice(i * 20, 20), p)
        paths.append(p)
    csv = str(d / "x.csv")
    t.to_pandas().to_csv(csv, index=False, header=False)
    return paths, csv


def _attempts(sp) -> int:
    sp._job.events.flush()
    return sum(e.get("n", 1) for e in read_events(sp.runtime_ctx.log_root) if e["ev"] in ("done", "failed", "inline"))


def test_schema_is_known_without_running_and_matches_the_result(sp, files):
    paths, csv = files
    src = sp.read_parquet(paths)
    frames = {
        "source": src,
        "hash": src.repartition(3, hash_by="s"),
        "hash kept column": src.repartition(2, hash_by="s", drop_partition_column=False),
        "by expression": src.repartition(2, by="a % 2"),
        "sql": sp.partial_sql(
            "select s, count(*) as n, avg(f) as m, list(a) as l, {__data_partition__} as p from {0} group by s",
            src.repartition(2, hash_by="s"),
        ),
        "filter+map": src.filter("a > 3").map("a * 2 as b, upper(s) as u"),
        "limit": src.limit(7),
        "csv": sp.read_csv(csv, schema={"a": "bigint", "s": "varchar", "f": "double"}),
        "items": sp.from_items([{"x": 1, "y": "z"}]),
        "row filter": src.filter(lambda r: r["a"] % 2 == 0),
        "map with schema": src.map(lambda r: {"k": r["a"]}, schema=pa.schema([("k", pa.int64())])),
        # a query ending with a comment or a semicolon is put between parentheses as tasks do
        "trailing comment": sp.partial_sql("select a, s from {0} -- two columns;", src),
    }
    before = _attempts(sp)
    schemas = {name: df.schema for name, df in frames.items()}
    assert _attempts(sp) == before, "asking for a schema ran tasks"
    for name, df in frames.items():
        if name != "hash kept column":  # (to_arrow reads those files back with large_string: left alone)
            assert schemas[name] == df.to_arrow().schema, name
    kept = frames["hash kept column"]
    # DuckDB writes a column it knows holds no NULLs (one input file's statistics) as required;
    # the engine's schemas are nullable, as upstream's were
    written = pq.read_schema(kept._datasets()[0].resolved_paths[0]).remove_metadata()
    assert schemas["hash kept column"] == pa.schema([f.with_nullable(True) for f in written])
    assert schemas["sql"].names == ["s", "n", "m", "l", "p"]


def test_a_python_map_without_schema_is_computed_for_its_schema(sp, files):
    df = sp.read_parquet(files[0]).map(lambda r: {"k": r["a"], "t": str(r["a"])})
    assert "known once computed" in repr(df) and not df.is_computed()
    assert df.schema == pa.schema([("k", pa.int64()), ("t", pa.string())])
    assert df.is_computed()
    assert "k: int64" in repr(df)


def test_a_python_map_typed_apart_in_two_partitions_has_the_schema_of_its_result(sp):
    # .schema was the first partition's: x: null (its values were all None) and x: int64 (its
    # values were integers, the other partition's floats) where to_arrow() gave int64 and double
    items = sp.from_items(list(range(6))).repartition(2, by_rows=True)
    nulls_first = items.map(lambda r: {"x": None if r["item"] < 3 else r["item"]})
    floats_later = items.map(lambda r: {"x": r["item"] if r["item"] < 3 else r["item"] + 0.5})
    for df, expected in ((nulls_first, pa.int64()), (floats_later, pa.float64())):
        assert df.schema == pa.schema([("x", expected)])
        assert df.schema == df.to_arrow().schema.remove_metadata()


def test_the_schema_of_a_computed_map_reads_its_footers_at_once(sp, monkeypatch):
    # each footer was read after the one before: on a shared filesystem, one wait per file. Here
    # each read waits (up to 20 s) until 4 reads are under way: read one after another, the first
    # one's wait breaks the barrier and the schema raises
    import threading

    df = sp.from_items(list(range(16))).repartition(8, by_rows=True).map(lambda r: {"x": r["item"], "s": "v"})
    expected = df.to_arrow().schema.remove_metadata()  # computed first: its tasks' checks read footers too
    real, barrier, threads = pq.read_schema, threading.Barrier(4, timeout=20), set()

    def read_schema(path, *args, **kwargs):
        threads.add(threading.get_ident())
        barrier.wait()
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_schema", read_schema)
    assert df.schema == expected
    assert len(threads) >= 4


def test_a_bad_query_is_named_in_the_repr_not_raised(sp, files):
    df = sp.partial_sql("select no_such_column from {0}", sp.read_parquet(files[0]))
    text = repr(df)
    assert "no_such_column" in text and "schema:" in text


def test_repr_show_html_and_explain(sp, files, capsys):
    df = sp.read_parquet(files[0]).repartition(3, hash_by="s").map("a, s")
    text = repr(df)
    assert text.splitlines()[0].startswith("DataFrame[SqlEngineNode-") and "3 partition(s), not computed" in text
    assert "  a: int64" in text and "  s: string" in text
    html = df._repr_html_()
    assert "<table>" in html and "int64" in html
    df.show(4)
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].split() == ["a", "|", "s"] and shown[1].split() == ["int64", "|", "string"]
    assert len(shown) == 3 + 4 + 1 and shown[-1] == "(4 rows, limit 4)"
    plan = df.explain()
    assert isinstance(plan, str) and "== Optimized plan ==" in plan
    assert repr(plan) == plan  # a notebook shows the lines, not a literal with \n escapes
    assert "computed" in repr(df) and "first rows" in df._repr_html_()


def test_read_parquet_of_a_written_folder_and_of_a_driver_final_results(sp, files, tmp_path):
    out = str(tmp_path / "out")
    sp.read_parquet(files[0]).repartition(2, by_rows=True).map("a, s, f").write_parquet(out)
    assert os.path.exists(os.path.join(out, ".MANIFEST.txt"))
    assert sp.read_parquet(out).count() == 60

    # a manifest listing files elsewhere (what a Driver job's FinalResults holds)
    final = tmp_path / "FinalResults"
    final.mkdir()
    (final / ".MANIFEST.txt").write_text("".join(p + "\n" for p in files[0]))
    back = sp.read_parquet(str(final))
    assert back.count() == 60 and back.schema.names == ["a", "s", "f"]

    # a folder without a manifest: its *.parquet files
    plain = tmp_path / "plain"
    plain.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), str(plain / "one.parquet"))
    (plain / "notes.txt").write_text("not data")
    assert sp.read_parquet(str(plain)).take_all() == [{"a": 1}, {"a": 2}]


def test_the_schema_of_from_pandas_types_object_columns_by_their_values(sp):
    # it was read from the frame's first 0 rows, where pyarrow types an object column null, while
    # the result holds binary / struct values
    import pandas as pd

    pdf = pd.DataFrame({"b": [b"x", None, b"z"], "st": [{"k": 1}, None, {"k": 2}], "i": [1, 2, 3]})
    df = sp.from_pandas(pdf)
    assert [str(f.type) for f in df.schema] == ["binary", "struct<k: int64>", "int64"]
    assert df.map("*").schema == df.map("*").to_arrow().schema.remove_metadata()


def test_the_schema_of_a_pandas_column_arrow_cannot_convert_names_the_column_and_the_call(sp):
    # since the schema is typed from the frame's values, a column of mixed values made df.schema
    # raise pyarrow's ArrowInvalid, naming neither the column nor the from_pandas call
    import pandas as pd

    from smallpond.errors import UserCodeError

    pdf = pd.DataFrame({"i": [1, 2], "mixed": pd.Series([1, "x"], dtype=object)})
    df = sp.from_pandas(pdf)
    with pytest.raises(UserCodeError) as e:
        _ = df.schema
    msg = str(e.value)
    assert f"created at {__file__}:" in msg and "the pandas column 'mixed' (object) cannot be converted to Arrow" in msg, msg
