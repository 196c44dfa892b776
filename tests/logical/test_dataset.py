"""smallpond.logical.dataset: partitioning by files and rows, SQL fragments (also when empty)."""

from __future__ import annotations

import os
import warnings

import duckdb
import pyarrow as pa
import pytest

from smallpond.common import quote_identifier
from smallpond.errors import ListedFileMissing
from smallpond.logical.dataset import CsvDataSet, DataSet, JsonDataSet, ParquetDataSet
from tests.datagen import generate_parquet_files


def ids_of(ds: DataSet):
    conn = duckdb.connect()
    return [r[0] for r in conn.execute(f"select id from {ds.sql_query_fragment(conn=conn)}").fetchall()]


def test_resolved_paths_are_sorted_and_globs_expanded(tmp_path):
    files = generate_parquet_files(str(tmp_path), nfiles=3)
    ds = ParquetDataSet(["*.parquet"], root_dir=str(tmp_path))
    assert ds.resolved_paths == sorted(files)
    assert ds.num_files == 3 and ds.num_rows == 30


def test_a_glob_matching_folders_reads_their_files(tmp_path):
    # ``out/part*`` over output folders reads their files, as the folders given one by one do (it
    # read nothing, silently); a folder whose name holds glob characters is read by that name
    for i, name in enumerate(["part1", "part2", "odd*name", "x[1]"]):
        generate_parquet_files(str(tmp_path / "out" / name), nfiles=2, prefix=f"p{i}-")
    (tmp_path / "out" / "partial.txt").write_text("not a folder of Parquet files")
    part = ParquetDataSet([str(tmp_path / "out" / "part?")])
    assert [os.path.relpath(p, tmp_path) for p in part.resolved_paths] == [
        "out/part1/p0-0.parquet",
        "out/part1/p0-1.parquet",
        "out/part2/p1-0.parquet",
        "out/part2/p1-1.parquet",
    ]
    assert part.num_rows == 40 and part.missing_paths() == []
    assert ParquetDataSet([str(tmp_path / "out" / "odd*name")]).num_files == 2
    literal = ParquetDataSet([str(tmp_path / "out" / "x[1]")])  # as a pattern it matches only "x1"
    assert literal.missing_paths() == [] and literal.num_files == 2
    assert ParquetDataSet([str(tmp_path / "out" / "nothing*")]).missing_paths() == [str(tmp_path / "out" / "nothing*")]


def test_a_double_star_without_recursive_warns_at_the_users_line(tmp_path):
    # ``**`` is one folder level without recursive=True (Python's glob, as upstream), where DuckDB's
    # reaches any depth: ``d/**/*.parquet`` silently read one file of three, without a word
    for sub in ("", "a", "a/b"):
        generate_parquet_files(str(tmp_path / "d" / sub), nfiles=1, prefix=f"f{len(sub)}-")
    with pytest.warns(UserWarning, match=r"'\*\*' in 'd/\*\*/\*.parquet' matches exactly one folder level") as got:
        ds = ParquetDataSet(["d/**/*.parquet"], root_dir=str(tmp_path))
    assert got[0].filename == __file__ and f"created at {__file__}:" in str(got[0].message)
    assert [os.path.relpath(p, tmp_path) for p in ds.resolved_paths] == ["d/a/f1-0.parquet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deep = ParquetDataSet(["d/**/*.parquet"], root_dir=str(tmp_path), recursive=True)
        assert len(deep.resolved_paths) == 3
        ParquetDataSet(["d/*/*.parquet", "d/x**.parquet"], root_dir=str(tmp_path))  # no ``**`` component


def _published(out):
    """A result folder as a sink publishes it: part-0 (v=0) and part-1 (v=1), and a manifest
    listing them by absolute path."""
    out.mkdir()
    for i in range(2):
        duckdb.sql(f"COPY (SELECT {i} AS v) TO '{out}/part-{i}.parquet'")
    (out / ".MANIFEST.txt").write_text("".join(f"{out}/part-{i}.parquet\n" for i in range(2)))
    return out


def test_a_result_folder_copied_or_moved_reads_its_own_files(tmp_path):
    # its manifest lists absolute paths in the folder it was published in: a copy (cp -r) read the
    # original's files, and changed with them; a moved folder (mv) failed, naming files that are gone
    import shutil

    out = _published(tmp_path / "out")
    shutil.copytree(out, tmp_path / "copy")
    duckdb.sql(f"COPY (SELECT 7 AS v) TO '{tmp_path}/copy/part-1.parquet'")  # the copy is edited
    copy = ParquetDataSet([str(tmp_path / "copy")])
    assert copy.resolved_paths == [str(tmp_path / "copy" / f"part-{i}.parquet") for i in range(2)]
    assert sorted(copy.to_arrow_table().column("v").to_pylist()) == [0, 7]
    shutil.move(str(out), str(tmp_path / "moved"))
    moved = ParquetDataSet([str(tmp_path / "moved")])
    assert sorted(moved.to_arrow_table().column("v").to_pylist()) == [0, 1]
    # a manifest-only result (its files elsewhere by design) still reads the files it lists
    (tmp_path / "listing").mkdir()
    (tmp_path / "listing" / ".MANIFEST.txt").write_text(f"{tmp_path}/copy/part-0.parquet\n")
    assert ParquetDataSet([str(tmp_path / "listing")]).resolved_paths == [f"{tmp_path}/copy/part-0.parquet"]


def test_a_manifest_only_result_reads_what_it_lists_even_beside_files_of_those_names(tmp_path):
    # a type='manifest' result lists a task's files (a folder without a manifest); files of the
    # same names beside it (copied there by hand from an earlier run: task file names repeat) are
    # not its result: they were read instead, silently
    task = tmp_path / "job" / "output" / "SqlEngineNode-3"
    task.mkdir(parents=True)
    res = tmp_path / "res"
    res.mkdir()
    for i in range(2):
        duckdb.sql(f"COPY (SELECT {i} AS v) TO '{task}/part-{i}.parquet'")
        duckdb.sql(f"COPY (SELECT {i + 10} AS v) TO '{res}/part-{i}.parquet'")  # the earlier run's
    (res / ".MANIFEST.txt").write_text("".join(f"{task}/part-{i}.parquet\n" for i in range(2)))
    ds = ParquetDataSet([str(res)])
    assert ds.resolved_paths == [str(task / f"part-{i}.parquet") for i in range(2)]
    assert sorted(ds.to_arrow_table().column("v").to_pylist()) == [0, 1]


def test_a_copied_result_folder_missing_a_file_is_refused_naming_it(tmp_path):
    # it read the original's files, all of them, without a word
    import shutil

    out = _published(tmp_path / "out")
    shutil.copytree(out, tmp_path / "copy")
    (tmp_path / "copy" / "part-1.parquet").unlink()
    with pytest.raises(ListedFileMissing, match=f"{tmp_path}/copy/part-1.parquet, which no longer exists"):
        _ = ParquetDataSet([str(tmp_path / "copy")]).resolved_paths


def test_partition_by_files_stays_by_files_after_num_rows(parquet_files):
    ds = ParquetDataSet(parquet_files)
    before = [p.resolved_paths for p in ds.partition_by_files(2)]
    assert ds.num_rows == 30  # resolves row ranges
    after = ds.partition_by_files(2)
    assert [p.resolved_paths for p in after] == before == [parquet_files[:2], parquet_files[2:]]
    assert [p.num_rows for p in after] == [20, 10]
    assert [sorted(ids_of(p)) for p in after] == [list(range(20)), list(range(20, 30))]


def test_partition_by_files_more_partitions_than_files(parquet_files):
    parts = ParquetDataSet(parquet_files).partition_by_files(5)
    assert [p.num_files for p in parts] == [1, 1, 1, 0, 0]
    assert [ids_of(p) for p in parts[3:]] == [[], []]


def test_partition_by_rows(parquet_files):
    parts = ParquetDataSet(parquet_files).partition_by_rows(4)
    assert [p.num_rows for p in parts] == [8, 8, 7, 7]
    assert [ids_of(p) for p in parts] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 23)), list(range(23, 30))]
    assert [p.to_arrow_table().column("id").to_pylist() for p in parts] == [ids_of(p) for p in parts]


def test_row_ranges_of_files_with_columns_in_another_order_read_by_name(tmp_path):
    # files whose writers ordered the columns differently: DuckDB reads them whole by name, and so
    # must a partition that splits them into row ranges; its pieces were joined by position (UNION
    # ALL), which put the second file's b under a and its a under b without an error
    duckdb.sql(f"COPY (SELECT range AS a, range * 10 AS b FROM range(0, 1000)) TO '{tmp_path}/1.parquet'")
    duckdb.sql(f"COPY (SELECT range * 10 AS b, range AS a FROM range(1000, 2000)) TO '{tmp_path}/2.parquet'")
    ds = ParquetDataSet(["*.parquet"], root_dir=str(tmp_path))
    whole = duckdb.sql(f"SELECT sum(a), sum(b), count(*) FROM {ds.sql_query_fragment()}").fetchall()
    assert whole == [(1999000, 19990000, 2000)]
    for n in (2, 3, 4):
        conn = duckdb.connect()
        sums = [
            conn.sql(f"SELECT sum(a), sum(b), count(*) FROM {p.sql_query_fragment()}").fetchall()[0]
            for p in ds.partition_by_rows(n)
        ]
        assert tuple(map(sum, zip(*sums))) == whole[0], n
        for p in ds.partition_by_rows(n):  # each row's a and b stay together, in every piece
            assert conn.sql(f"SELECT count(*) FROM {p.sql_query_fragment()} WHERE b <> a * 10").fetchall() == [(0,)]


def test_row_ranges_read_a_select_list_that_repeats_a_name(tmp_path):
    # columns=["*", "a * 2 AS a"] names a twice: a whole read calls the second a_1, and so must a
    # partition of several row-range pieces, which BY NAME refused ('duplicate names')
    duckdb.sql(f"COPY (SELECT range AS a, range * 10 AS b FROM range(0, 1000)) TO '{tmp_path}/1.parquet'")
    duckdb.sql(f"COPY (SELECT range * 10 AS b, range AS a FROM range(1000, 2000)) TO '{tmp_path}/2.parquet'")
    ds = ParquetDataSet(["*.parquet"], root_dir=str(tmp_path), columns=["*", "a * 2 AS a"])
    whole = duckdb.sql(f"SELECT * FROM {ds.sql_query_fragment()}")
    assert whole.columns == ["a", "b", "a_1"]
    conn = duckdb.connect()
    total = 0
    for p in ds.partition_by_rows(3):
        part = conn.sql(f"SELECT * FROM {p.sql_query_fragment()}")
        assert sorted(part.columns) == ["a", "a_1", "b"]
        rows = conn.sql(f"SELECT count(*), count(*) FILTER (b <> a * 10 OR a_1 <> a * 2) FROM {p.sql_query_fragment()}")
        n, wrong = rows.fetchall()[0]
        assert wrong == 0
        total += n
    assert total == 2000


def test_a_datasets_query_body_reads_what_its_fragment_reads(parquet_files, tmp_path):
    """The text an input's view or common table expression is defined as: the same rows in the
    same order as ``SELECT * FROM`` the fragment, for whole files, row ranges, a union of both,
    selected columns and an empty set; a subclass that writes its own fragment is read through it."""
    conn = duckdb.connect()
    whole = ParquetDataSet(parquet_files)
    parts = whole.partition_by_rows(4)
    cases = [
        whole,
        parts[1],
        DataSet.merge([parts[1], parts[3]]),
        ParquetDataSet(parquet_files, columns=["id"]),
        ParquetDataSet([]),
    ]
    cases[-1].schema = pa.schema([("id", pa.int64())])
    for ds in cases:
        body = ds.sql_query_body(conn=conn)
        assert not body.startswith("SELECT * FROM (") or ds.empty
        assert conn.execute(body).fetchall() == conn.execute(f"SELECT * FROM {ds.sql_query_fragment(conn=conn)}").fetchall()

    class Shifted(ParquetDataSet):
        def sql_query_fragment(self, filesystem=None, conn=None) -> str:
            return f"( SELECT id + 100 AS id FROM {super().sql_query_fragment(filesystem, conn)} )"

    assert conn.execute(Shifted(parquet_files).sql_query_body(conn=conn)).fetchall()[:2] == [(100,), (101,)]


def test_a_sql_query_dataset_may_end_with_a_comment_or_a_semicolon():
    from smallpond.common import as_subquery
    from smallpond.logical.dataset import SqlQueryDataSet

    conn = duckdb.connect()
    for sql in (
        "select range as x from range(3) -- three rows",
        "select range as x from range(3);",
        "select range as x from range(3); -- three rows",
        "select range as x from range(3) /* three */ ;",
    ):
        assert conn.execute(f"select * from {SqlQueryDataSet(sql).sql_query_fragment()}").fetchall() == [(0,), (1,), (2,)]
    assert as_subquery("select '--' as s") == "select '--' as s"  # in a literal: not a comment
    assert as_subquery("select 1 as s -- one; two") == "select 1 as s"


def test_column_expressions_may_end_with_a_comment(parquet_files, tmp_path):
    from smallpond.logical.dataset import CsvDataSet

    conn = duckdb.connect()
    ds = ParquetDataSet(parquet_files, columns=["id + 1 as next -- one more", "id"])
    assert conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)} order by id").fetchall()[:2] == [(1, 0), (2, 1)]
    csv = tmp_path / "a.csv"
    csv.write_text("1\n2\n")
    ds = CsvDataSet([str(csv)], schema={"a": "BIGINT"}, columns=["a * 10 as b -- tenfold", "a"])
    assert conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)}").fetchall() == [(10, 1), (20, 2)]


def test_partition_by_rows_random_shuffle_is_seeded(parquet_files):
    ds = ParquetDataSet(parquet_files)
    a = [sorted(ids_of(p)) for p in ds.partition_by_rows(3, random_shuffle=True, seed=7)]
    b = [sorted(ids_of(p)) for p in ds.partition_by_rows(3, random_shuffle=True, seed=7)]
    assert a == b
    assert sorted(x for p in a for x in p) == list(range(30))


def test_merge_keeps_row_ranges(parquet_files):
    parts = ParquetDataSet(parquet_files).partition_by_rows(4)
    merged = DataSet.merge([parts[1], parts[3]])
    assert merged.num_rows == 15
    assert sorted(ids_of(merged)) == list(range(8, 16)) + list(range(23, 30))


@pytest.mark.parametrize(
    "make",
    [
        lambda d: ParquetDataSet([]),
        lambda d: ParquetDataSet([f"{d}/*.parquet"]),
        lambda d: ParquetDataSet([f"{d}/*.parquet"], columns=["a", "b"]),
        lambda d: CsvDataSet([f"{d}/*.csv"], {"a": "bigint", "b": "varchar"}),
        lambda d: JsonDataSet([f"{d}/*.json"], {"a": "bigint", "b": "varchar"}),
    ],
)
def test_empty_datasets_render_valid_sql(tmp_path, make):
    ds = make(str(tmp_path))
    assert ds.empty
    conn = duckdb.connect()
    fragment = ds.sql_query_fragment(conn=conn)
    assert conn.execute(f"select count(*) from {fragment}").fetchone() == (0,)
    assert conn.execute(f"select * from {fragment}").fetchall() == []


def test_empty_csv_keeps_its_typed_columns(tmp_path):
    ds = CsvDataSet([f"{tmp_path}/*.csv"], {"a": "bigint", "b": "varchar"})
    conn = duckdb.connect()
    columns = conn.execute(f"describe select * from {ds.sql_query_fragment(conn=conn)}").fetchall()
    assert [(c[0], c[1]) for c in columns] == [("a", "BIGINT"), ("b", "VARCHAR")]


def test_empty_parquet_with_a_known_schema_keeps_its_columns():
    ds = ParquetDataSet([])
    ds.schema = pa.schema([("x", pa.int32()), ("y", pa.string())])
    conn = duckdb.connect()
    assert conn.sql(f"select * from {ds.sql_query_fragment(conn=conn)}").to_arrow_table().column_names == ["x", "y"]
    assert ds.to_arrow_table().schema.names == ["x", "y"]


@pytest.mark.parametrize("delim", ["\t", r"\t"], ids=["tab", "backslash-t"])
def test_csv_fragment_reads_tabs(tmp_path, delim):
    path = tmp_path / "a.tsv"
    path.write_text("x/y\t1\nz/w\t2\n")
    ds = CsvDataSet([str(path)], {"url": "varchar", "n": "bigint"}, delim=delim)
    conn = duckdb.connect()
    assert conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)} order by n").fetchall() == [("x/y", 1), ("z/w", 2)]


def test_fingerprint_follows_file_content(parquet_files):
    import os

    a = ParquetDataSet(parquet_files).fingerprint()
    assert ParquetDataSet(parquet_files).fingerprint() == a
    st = os.stat(parquet_files[0])
    os.utime(parquet_files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ParquetDataSet(parquet_files).fingerprint() != a


def test_partitioned_outputs_pickle_compactly_and_read_the_same():
    """A producer's P partitions of plain file lists travel as path lists plus one template."""
    import pickle

    from smallpond.logical.dataset import FileSet, ParquetDataSet, PartitionedDataSet

    parts = PartitionedDataSet([ParquetDataSet.from_files([f"/o/k={i}/b.parquet", f"/o/k={i}/a.parquet"]) for i in range(500)])
    blob = pickle.dumps(parts)
    again = pickle.loads(blob)
    assert again._compact is not None
    assert len(again) == 500 and again.paths == parts.paths
    assert again[7].resolved_paths == ["/o/k=7/a.parquet", "/o/k=7/b.parquet"]
    assert [d.resolved_paths for d in again.datasets] == [d.resolved_paths for d in parts.datasets]
    assert len(blob) < 100 * 500  # ~ the paths, not 500 pickled objects
    # partitions of different kinds or options are kept whole
    mixed = PartitionedDataSet([ParquetDataSet.from_files(["/a"]), FileSet.from_files(["/b"])])
    back = pickle.loads(pickle.dumps(mixed))
    assert back._compact is None and [type(d) for d in back.datasets] == [ParquetDataSet, FileSet]
    cols = PartitionedDataSet([ParquetDataSet.from_files(["/a"]), ParquetDataSet.from_files(["/b"], columns=["x"])])
    assert [d.columns for d in pickle.loads(pickle.dumps(cols)).datasets] == [None, ["x"]]


def test_a_partition_rebuilt_from_the_compact_form_is_a_whole_dataset(tmp_path):
    """Each partition of a compact form (``ds[i]``, a shuffle's ``gather``) has every attribute a
    dataset built from its files has, and counts its rows (``count()`` after a hash repartition
    of several files failed on a missing ``_num_rows``)."""
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.logical.dataset import ParquetDataSet, PartitionedDataSet

    files = []
    for i in range(3):
        files.append(str(tmp_path / f"f{i}.parquet"))
        pq.write_table(pa.table({"a": list(range(10 * (i + 1)))}), files[-1])
    made = PartitionedDataSet([ParquetDataSet.from_files([f]) for f in files])
    compact = pickle.loads(pickle.dumps(made))
    assert compact._compact is not None
    fresh = ParquetDataSet.from_files([files[1]])
    assert set(compact[1].__dict__) == set(fresh.__dict__)
    assert [compact[i].num_rows for i in range(3)] == [10, 20, 30]
    gathered = PartitionedDataSet.gather([compact, compact], 2)
    assert set(gathered.__dict__) == set(fresh.__dict__) and gathered.num_rows == 60


def test_rebase_moves_every_path_once_even_into_a_subfolder_of_the_old_one(tmp_path):
    """``_rebase(old, new)`` rewrites each path under ``old`` once: with ``new`` inside ``old``,
    a path rewritten twice would land a folder too deep."""
    old = str(tmp_path / "out")
    new = str(tmp_path / "out" / "moved")
    import pyarrow.parquet as pq

    (tmp_path / "out").mkdir()
    for name in ("a", "b"):
        pq.write_table(pa.table({"x": [1, 2]}), f"{old}/{name}.parquet")
    ds = ParquetDataSet([f"{old}/a.parquet", f"{old}/b.parquet"], root_dir=None)
    ds.resolved_row_ranges  # noqa: B018 (resolved before the move, as a task's output is)
    ds._schema_path = f"{old}/a.parquet"
    ds._rebase(old, new)
    assert ds.resolved_paths == [f"{new}/a.parquet", f"{new}/b.parquet"]
    assert [r.path for r in ds.resolved_row_ranges] == [f"{new}/a.parquet", f"{new}/b.parquet"]
    assert ds._schema_path == f"{new}/a.parquet"


def test_all_paths_of_a_partitioned_dataset_without_building_its_partitions():
    """``all_paths``: every partition's files, read from the compact form a producer's output
    travels in, which stays compact (``datasets`` would build one object per partition)."""
    import pickle

    from smallpond.logical.dataset import PartitionedDataSet

    parts = [ParquetDataSet.from_files([f"/out/p={i}/b.parquet", f"/out/p={i}/a.parquet"]) for i in range(50)]
    compact = pickle.loads(pickle.dumps(PartitionedDataSet(parts)))
    expected = sorted(p for d in parts for p in d.resolved_paths)
    assert sorted(compact.all_paths()) == expected and compact._compact is not None
    nested = PartitionedDataSet([PartitionedDataSet(parts[:10]), *parts[10:]])
    assert sorted(nested.all_paths()) == expected


def test_columns_that_are_names_of_the_data_reach_sql_quoted(tmp_path):
    # ``columns`` items naming a column (a space, a reserved word) are quoted; expressions stay SQL
    import pyarrow.parquet as pq

    path = str(tmp_path / "odd.parquet")
    pq.write_table(pa.table({"my col": [1, 2], "select": [3, 4], "x": ["a", "b"]}), path)
    conn = duckdb.connect()

    def rows(ds):
        return conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)}").fetchall()

    ds = ParquetDataSet([path], columns=["my col", "select", "x"])
    assert rows(ds) == [(1, 3, "a"), (2, 4, "b")]
    assert not ds._has_expressions()  # names only: the pyarrow reader serves them too
    assert ds.to_arrow_table().column_names == ["my col", "select", "x"]
    expr = ParquetDataSet([path], columns=["x || '!' as y", "my col"])
    assert expr._has_expressions() and rows(expr) == [("a!", 1), ("b!", 2)]
    csv = tmp_path / "odd.csv"
    csv.write_text("1,2\n3,4\n")
    cds = CsvDataSet([str(csv)], schema={"my col": "BIGINT", "order": "BIGINT"}, columns=["order", "my col"])
    assert rows(cds) == [(2, 1), (4, 3)]


def test_a_columns_item_naming_a_column_in_another_case_is_that_column(tmp_path):
    # DuckDB binds a name in any case: "X-1" names the column "x-1", as "X" names "x". Taken for an
    # expression, it silently read x - 1 (a column "(X - 1)" of other values)
    import pyarrow.parquet as pq

    path = str(tmp_path / "odd.parquet")
    pq.write_table(pa.table({"x-1": [5, 5], "x": [1, 2], "my col": [3, 4]}), path)
    csv = tmp_path / "odd.csv"
    csv.write_text("5,1\n5,2\n")
    conn = duckdb.connect()
    for ds in (
        ParquetDataSet([path], columns=["X-1", "My Col"]),
        CsvDataSet([str(csv)], schema={"x-1": "BIGINT", "x": "BIGINT"}, columns=["X-1"]),
    ):
        got = conn.execute(f"select * from {ds.sql_query_fragment(conn=conn)}").fetchall()
        assert [r[0] for r in got] == [5, 5]
        assert not ds._is_expression("X-1")


def test_columns_of_an_empty_piece_reach_sql_quoted(tmp_path):
    # an empty piece of a partitioned dataset has no file of its own: its column names come from
    # its schema or its sibling's file; a name that is no SQL expression (``it's``) is quoted even
    # when no column names are known (it was pasted raw: a parser error)
    import pyarrow.parquet as pq

    path = str(tmp_path / "odd.parquet")
    pq.write_table(pa.table({"it's": [1, 2], "my col": [3, 4], "id": [5, 6]}), path)
    conn = duckdb.connect()
    cols = ["it's", "my col", "id"]
    full, empty = ParquetDataSet([path], columns=cols).partition_by_files(2)
    assert empty.empty and not empty._has_expressions()
    rel = conn.sql(f"select * from {empty.sql_query_fragment(conn=conn)}")
    assert rel.columns == cols and rel.fetchall() == []
    typed = ParquetDataSet([], columns=cols)
    typed.schema = pa.schema([("it's", pa.int64()), ("my col", pa.int64()), ("id", pa.int64())])
    rel = conn.sql(f"select * from {typed.sql_query_fragment(conn=conn)}")
    assert rel.columns == cols and rel.fetchall() == []
    unknown = ParquetDataSet([], columns=["it's", "a; select 1", "x || '!' as y"])
    assert [unknown._select_item(c) for c in unknown.columns] == ['"it\'s"', '"a; select 1"', "x || '!' as y"]


def test_tilde_in_paths_and_root_dir_is_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    files = generate_parquet_files(str(tmp_path / "d"), nfiles=2)
    assert ParquetDataSet(["~/d/*.parquet"]).resolved_paths == sorted(files)
    assert ParquetDataSet(["d"], root_dir="~").resolved_paths == sorted(files)
    ds = ParquetDataSet([])
    ds.reset(["~/d"])
    assert ds.resolved_paths == sorted(files)
    assert ParquetDataSet(["d/~x"], root_dir="/r").absolute_paths == ["/r/d/~x"]  # only a leading ~


def test_row_ranges_of_a_file_with_a_column_named_file_row_number(tmp_path):
    """DuckDB's ``file_row_number`` option, which selects a row range, refuses a file that has a
    column of that name (in any case): such a file's ranges are read by position instead, the
    same rows in the same order, with the file's own column kept."""
    import pyarrow.parquet as pq

    clash = str(tmp_path / "clash.parquet")
    table = pa.table({"id": list(range(20)), "File_Row_Number": [1000 + i for i in range(20)]})
    pq.write_table(table, clash, row_group_size=5)
    other = str(tmp_path / "other.parquet")
    pq.write_table(table.slice(3, 10), other)
    conn = duckdb.connect()
    for files, columns in [([clash], None), ([clash], ["id"]), ([other, clash], None)]:
        whole = ParquetDataSet(files, columns=columns)
        expected = conn.execute(f"SELECT * FROM {whole.sql_query_fragment(conn=conn)}").fetchall()
        parts = whole.partition_by_rows(3)
        assert not all(r.whole_file for p in parts for r in p.resolved_row_ranges)
        got = [conn.execute(f"SELECT * FROM {p.sql_query_fragment(conn=conn)}").fetchall() for p in parts]
        assert [len(g) for g in got] == [p.num_rows for p in parts]
        assert [row for g in got for row in g] == expected, (files, columns)
        names = [d[0] for d in conn.execute(f"SELECT * FROM {parts[1].sql_query_fragment(conn=conn)}").description]
        assert names == (columns or list(pq.read_schema(files[0]).names))


def test_a_manifest_line_ends_at_a_newline_only(tmp_path):
    """An older smallpond published a file named with ``\\r`` under that name: its manifest line
    reads back whole (universal newlines split it); a manifest written with CRLF reads too."""
    odd, plain = tmp_path / "car\rriage.parquet", tmp_path / "plain.parquet"
    for path in (odd, plain):
        path.write_bytes(b"")
    result = tmp_path / "result"
    result.mkdir()
    (result / ".MANIFEST.txt").write_bytes(f"{odd}\n".encode())
    assert ParquetDataSet([str(result)]).resolved_paths == [str(odd)]
    (result / ".MANIFEST.txt").write_bytes(f"{plain}\r\n{odd}\r\n".encode())
    assert ParquetDataSet([str(result)]).resolved_paths == sorted([str(plain), str(odd)])


def test_a_result_whose_manifest_lists_a_missing_file_names_the_manifest_and_the_file(tmp_path):
    """A ``type="manifest"`` result lists files it does not hold (a job folder's): once one is gone,
    reading the result fails naming its manifest and the file, not with the reader's bare error."""
    from smallpond.errors import ListedFileMissing

    kept, gone = generate_parquet_files(str(tmp_path / "job"), nfiles=2, rows_per_file=5)
    os.remove(gone)
    result = tmp_path / "result"
    result.mkdir()
    (result / ".MANIFEST.txt").write_text(f"{kept}\n{gone}\n")
    with pytest.raises(ListedFileMissing) as info:
        _ = ParquetDataSet([str(result)]).resolved_paths
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(result / ".MANIFEST.txt") in message and gone in message and kept not in message


def test_a_manifest_of_many_files_is_checked_by_listing_their_folders(tmp_path, monkeypatch):
    """Files of a folder a manifest lists many of are found gone by one listing of the folder, not
    one stat each; still exactly: a removed file, a link whose target is gone and a file of a
    folder that is gone are named, a link to a file that is there is not."""
    import smallpond.io.manifest as manifest
    import smallpond.logical.dataset_files as dataset_files
    from smallpond.errors import ListedFileMissing

    job = tmp_path / "job"
    job.mkdir()
    files = [str(job / f"part-{i:03d}.parquet") for i in range(100)]
    for path in files:
        open(path, "wb").close()
    os.symlink(files[1], job / "link-ok.parquet")
    os.symlink(str(job / "nowhere.parquet"), job / "link-dangling.parquet")
    lone = str(tmp_path / "gone-folder" / "x.parquet")
    listed = files + [str(job / "link-ok.parquet"), str(job / "link-dangling.parquet"), lone]
    result = tmp_path / "result"
    result.mkdir()
    (result / ".MANIFEST.txt").write_text("".join(f"{p}\n" for p in listed))
    looked_up = []
    exists = os.path.exists
    monkeypatch.setattr(dataset_files.os.path, "exists", lambda p: looked_up.append(p) or exists(p))
    with pytest.raises(ListedFileMissing) as info:  # the link to nowhere and the file of a folder that is gone
        _ = ParquetDataSet([str(result)]).resolved_paths
    assert f"2 of its {len(listed)} files are gone" in str(info.value)
    assert sorted(looked_up) == sorted(listed[-3:])  # the links and the lone file: the 100 files by one listing

    os.remove(files[50])
    os.remove(files[99])
    os.remove(tmp_path / "job" / "link-ok.parquet")
    os.symlink(str(job / "nowhere.parquet"), job / "link-ok.parquet")
    with pytest.raises(ListedFileMissing) as info:
        _ = ParquetDataSet([str(result)]).resolved_paths
    assert files[50] in str(info.value) and f"5 of its {len(listed)} files are gone" in str(info.value)
    assert manifest.gone(listed) == [files[50], files[99]] + listed[-3:]


def test_a_columns_item_with_a_clause_of_its_own_is_a_name(tmp_path):
    """A ``columns`` item goes into ``( SELECT <items> FROM read_parquet(...) )`` with nothing around
    it: ``a from (select 9 as a) union all select a`` parsed as one statement, so it was pasted and
    the source read a row of its own (9). An item holding a clause at its top level is no select
    item: it is quoted as a name, which the data lacks. A clause word inside parentheses, a string
    or a quoted name, and ``is distinct from``, stay an expression."""
    import pyarrow.parquet as pq

    from smallpond.logical.dataset_base import parses_as_select_item

    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), path)
    item = "a from (select 9 as a) union all select a"
    assert not parses_as_select_item(item) and not parses_as_select_item("a limit 1")
    ds = ParquetDataSet([path], columns=[item])
    assert ds._select_item(item) == quote_identifier(item)
    with pytest.raises(duckdb.BinderException):
        duckdb.connect().sql(f"select * from {ds.sql_query_fragment()}").fetchall()
    kept = ["(select max(a) from (select 1 as a)) as m", "a is distinct from 2 as d", "'from x' as s", 'a as "limit"']
    assert all(map(parses_as_select_item, kept))
    rows = duckdb.connect().sql(f"select * from {ParquetDataSet([path], columns=kept).sql_query_fragment()}").fetchall()
    assert rows == [(1, True, "from x", 1), (1, False, "from x", 2)]


def test_missing_columns_follow_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    """The column names read from a footer are kept per version of the file: a rewrite keeping its
    size and modification time (a copy tool restoring times) is a new version by its change time."""
    import time

    import pyarrow.parquet as pq

    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), path)
    before = os.stat(path)
    assert ParquetDataSet([path], columns=["b"]).missing_columns() == ["b"]
    time.sleep(0.01)  # (a filesystem with coarse change times)
    pq.write_table(pa.table({"b": [1, 2]}), path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert ParquetDataSet([path], columns=["b"]).missing_columns() == []


def test_files_marked_read_by_name_keep_every_files_columns(tmp_path):
    """The engine's files of tasks whose columns differ (mark_read_by_name): SQL and the batch
    reader read every file's columns, a merge and a split keep the mark, and so does a shuffle's
    compact form; unmarked, SQL reads the first file's (as DuckDB reads a list of files)."""
    import pickle

    import pyarrow.parquet as pq

    from smallpond.logical.dataset import PartitionedDataSet

    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), a)
    pq.write_table(pa.table({"x": [3], "y": ["s"]}), b)
    plain = ParquetDataSet.from_files([a, b])
    assert duckdb.sql(f"select * from {plain.sql_query_fragment()}").columns == ["x"]
    marked = ParquetDataSet.from_files([a, b])
    marked.mark_read_by_name()
    rows = sorted(duckdb.sql(f"select * from {marked.sql_query_fragment()}").fetchall())
    assert rows == [(1, None), (2, None), (3, "s")]
    assert marked.to_batch_reader(batch_size=2).read_all().to_pylist() == [
        {"x": 1, "y": None},
        {"x": 2, "y": None},
        {"x": 3, "y": "s"},
    ]
    merged = DataSet.merge([ParquetDataSet.from_files([a]), marked._with_paths([b])])
    pieces = marked.partition_by_rows(2)
    for ds in (merged, *pieces):
        assert ds.reads_by_name
    assert duckdb.sql(f"select * from {merged.sql_query_fragment()}").columns == ["x", "y"]
    parts = PartitionedDataSet([ParquetDataSet.from_files([a]), ParquetDataSet.from_files([b])])
    parts = pickle.loads(pickle.dumps(parts))  # the compact form of a shuffle's output
    parts.mark_read_by_name()
    assert all(pickle.loads(pickle.dumps(parts))[i].reads_by_name for i in range(2))
    gathered = PartitionedDataSet.gather([parts, parts], 1)
    assert gathered is not None and gathered.reads_by_name


def test_a_merge_of_pieces_of_two_sets_is_read_by_its_own_first_file(tmp_path):
    """A piece of a split set is read by that set's first file's columns; a merge of pieces of two
    sets (a union of two split sources partitioned again) is a list of its own, read as DuckDB reads
    it, by its first file: it kept the first piece's set's file (B/1.parquet, with y), and every
    other file, lacking y, failed even `select *` of its own first file's columns. A merge of pieces
    of one set keeps that set's first file."""
    import pyarrow.parquet as pq

    for sub, table in (("A/1", {"x": [7]}), ("A/2", {"x": [8]}), ("B/1", {"x": [1], "y": [3]}), ("B/2", {"x": [5], "y": [6]})):
        os.makedirs(tmp_path / sub.split("/")[0], exist_ok=True)
        pq.write_table(pa.table(table), str(tmp_path / f"{sub}.parquet"))
    b = ParquetDataSet([str(tmp_path / "B" / "*.parquet")]).partition_by_files(2)
    a = ParquetDataSet([str(tmp_path / "A" / "*.parquet")]).partition_by_files(2)
    whole = duckdb.sql(f"select * from read_parquet('{tmp_path}/*/*.parquet')")
    union = DataSet.merge([*b, *a])
    for split in ([union], union.partition_by_files(2), union.partition_by_rows(3)):
        rels = [duckdb.sql(f"select * from {ds.sql_query_fragment()}") for ds in split]
        assert all(rel.columns == whole.columns == ["x"] for rel in rels), split
        assert sorted(r for rel in rels for r in rel.fetchall()) == sorted(whole.fetchall()), split
    one_set = DataSet.merge(b[1:])  # B/2 alone, of the set led by B/1: its columns x, y
    assert duckdb.sql(f"select * from {one_set.sql_query_fragment()}").fetchall() == [(5, 6)]
