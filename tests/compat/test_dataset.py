"""Upstream's tests/test_dataset.py cases and the DataSet contract (reference §3)."""

from __future__ import annotations

import glob
import os

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import ParameterError
from smallpond.logical.dataset import (
    ArrowTableDataSet,
    CsvDataSet,
    DataSet,
    FileSet,
    JsonDataSet,
    PandasDataSet,
    ParquetDataSet,
    PartitionedDataSet,
    SqlQueryDataSet,
)
from tests.compat.conftest import assert_same_rows


@pytest.fixture
def arrow_ds(compat_data) -> ParquetDataSet:
    return ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])


def _sql_rows(ds: DataSet) -> int:
    conn = duckdb.connect()
    return conn.execute(f"select count(*) from {ds.sql_query_fragment(conn=conn)}").fetchone()[0]


def test_parquet_file_created_by_pandas(tmp_path):
    path = str(tmp_path / "pandas.parquet")
    pd.DataFrame({"a": range(17), "b": ["x"] * 17}).to_parquet(path)
    assert ParquetDataSet([path]).num_rows == 17


def test_num_rows(arrow_ds):
    assert arrow_ds.num_rows == 1000
    assert arrow_ds.num_files == 10 and not arrow_ds.empty


@pytest.mark.parametrize("random_shuffle", [False, True])
def test_partition_by_files(arrow_ds, random_shuffle):
    full = arrow_ds.to_arrow_table()
    for npartition in (1, 2, 3, 7, 10):
        parts = arrow_ds.partition_by_files(npartition, random_shuffle=random_shuffle)
        assert len(parts) == npartition
        assert sum(p.num_rows for p in parts) == arrow_ds.num_rows
        assert sorted(f for p in parts for f in p.resolved_paths) == arrow_ds.resolved_paths
        assert_same_rows(pa.concat_tables([p.to_arrow_table() for p in parts]), full)
        assert sum(_sql_rows(p) for p in parts) == arrow_ds.num_rows
        arrow_ds.reset()


def test_partition_by_files_stays_by_files_after_num_rows(arrow_ds):
    """§8.14: upstream silently switched to row ranges once num_rows had been read."""
    assert arrow_ds.num_rows == 1000
    parts = arrow_ds.partition_by_files(3)
    assert [len(p.resolved_paths) for p in parts] == [4, 3, 3]
    assert [p.num_rows for p in parts] == [400, 300, 300]


@pytest.mark.parametrize("random_shuffle", [False, True])
def test_partition_by_rows(arrow_ds, random_shuffle):
    full = arrow_ds.to_arrow_table()
    for npartition in (1, 3, 7, 10, 20):
        parts = arrow_ds.partition_by_rows(npartition, random_shuffle=random_shuffle)
        assert len(parts) == npartition
        sizes = [p.num_rows for p in parts]
        assert sum(sizes) == 1000 and max(sizes) - min(sizes) <= 1
        assert_same_rows(pa.concat_tables([p.to_arrow_table() for p in parts]), full)
        assert sum(_sql_rows(p) for p in parts) == 1000
        arrow_ds.reset()


def test_partition_by_rows_ceil_first(tmp_path):
    from tests.datagen import generate_parquet_files

    paths = generate_parquet_files(str(tmp_path), nfiles=3, rows_per_file=10)
    parts = ParquetDataSet(paths).partition_by_rows(4)
    assert [p.num_rows for p in parts] == [8, 8, 7, 7]
    ids = [r for p in parts for r in p.to_arrow_table().column("id").to_pylist()]
    assert ids == list(range(30))  # ranges stay in file order


def test_partition_by_files_more_partitions_than_files(arrow_ds):
    parts = arrow_ds.partition_by_files(15)
    assert len(parts) == 15 and sum(p.empty for p in parts) == 5
    assert sum(p.num_rows for p in parts) == 1000


def test_partition_by_size(arrow_ds):
    parts = arrow_ds.partition_by_size(arrow_ds.estimated_data_size // 3)
    assert len(parts) >= 3 and sum(p.num_rows for p in parts) == 1000
    assert ParquetDataSet([]).partition_by_size(1000) == []


def test_resolved_many_paths(tmp_path):
    names = [f"file{i:07d}.parquet" for i in range(200_000)]
    ds = ParquetDataSet(names, root_dir=str(tmp_path))
    assert len(ds.resolved_paths) == 200_000
    assert ds.resolved_paths[0] == os.path.join(str(tmp_path), names[0])


def test_paths_with_char_ranges(compat_data):
    with_ranges = ParquetDataSet([os.path.join(compat_data["arrow"], "data[0-9].parquet")])
    with_star = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    assert with_ranges.resolved_paths == with_star.resolved_paths and with_ranges.num_files == 10


@pytest.mark.parametrize("use_conn", [False, True])
def test_to_arrow_table_batch_reader(arrow_ds, use_conn):
    conn = duckdb.connect() if use_conn else None
    table = arrow_ds.to_arrow_table(conn=conn)
    assert table.num_rows == 1000
    for batch_size in (1, 64, 333, 5000):
        reader = arrow_ds.to_batch_reader(batch_size=batch_size, conn=conn)
        sizes = [b.num_rows for b in reader]
        assert sum(sizes) == 1000 and all(s <= batch_size for s in sizes)


def test_batch_reader_crosses_file_boundaries(arrow_ds):
    sizes = [b.num_rows for b in arrow_ds.to_batch_reader(batch_size=350)]
    assert sizes == [350, 350, 300]


def test_paths_and_root_dir(compat_data, monkeypatch):
    monkeypatch.chdir(compat_data["arrow"])
    ds = ParquetDataSet(["data1.parquet", "data0.parquet"])
    assert ds.paths == ["data1.parquet", "data0.parquet"]
    assert ds.root_dir == compat_data["arrow"]
    assert ds.absolute_paths == [os.path.join(compat_data["arrow"], f"data{i}.parquet") for i in (0, 1)]
    verbatim = ParquetDataSet([os.path.join(compat_data["arrow"], "data0.parquet")], root_dir=None)
    assert verbatim.resolved_paths == [os.path.join(compat_data["arrow"], "data0.parquet")]
    ds.reset(paths=["data2.parquet"], root_dir=compat_data["arrow"])
    assert ds.resolved_paths == [os.path.join(compat_data["arrow"], "data2.parquet")]


def test_recursive_glob(compat_data):
    ds = ParquetDataSet([os.path.join(compat_data["root"], "**", "*.parquet")], recursive=True)
    assert ds.num_files == 20


def test_columns_and_generated_columns(arrow_ds):
    ds = ParquetDataSet(arrow_ds.paths, columns=["url", "domain"])
    assert ds.to_arrow_table().column_names == ["url", "domain"]
    assert ds.union_by_name  # columns given implies union_by_name
    gen = ParquetDataSet(arrow_ds.paths, columns=["url"], generated_columns=["filename", "file_row_number"])
    conn = duckdb.connect()
    table = gen.to_arrow_table(conn=conn)
    assert table.column_names == ["url", "filename", "file_row_number"]
    assert sorted(set(table.column("file_row_number").to_pylist())) == list(range(100))
    star = ParquetDataSet(arrow_ds.paths, columns=["*", "length(url) as n"])
    assert star.to_arrow_table(conn=conn).column_names == ["url", "domain", "date", "content", "n"]


def test_union_by_name(compat_data):
    files = [os.path.join(compat_data["mock_urls"], "urls0.parquet"), os.path.join(compat_data["arrow"], "data0.parquet")]
    table = ParquetDataSet(files, union_by_name=True).to_arrow_table(conn=duckdb.connect())
    assert set(table.column_names) == {"host", "url", "domain", "date", "content"} and table.num_rows == 200


def test_merge(arrow_ds):
    parts = arrow_ds.partition_by_files(3)
    merged = DataSet.merge(parts)
    assert isinstance(merged, ParquetDataSet) and merged.num_rows == 1000
    assert parts[0].merge(parts).resolved_paths == arrow_ds.resolved_paths
    rows = arrow_ds.partition_by_rows(4)
    assert ParquetDataSet.merge(rows).num_rows == 1000


def test_csv_dataset(compat_data):
    ds = CsvDataSet(
        [os.path.join(compat_data["mock_urls"], "*.tsv")], schema={"urlstr": "varchar", "valstr": "varchar"}, delim=r"\t"
    )
    assert ds.num_rows == 1000
    table = ds.to_arrow_table(conn=duckdb.connect())
    assert table.column_names == ["urlstr", "valstr"] and table.num_rows == 1000
    assert ds.merge(ds.partition_by_files(2)).num_rows == 1000


def test_csv_dataset_with_header_and_merge_keeps_it(tmp_path):
    """§8.15: upstream's CsvDataSet.merge dropped ``header``."""
    for i in range(2):
        (tmp_path / f"h{i}.csv").write_text("a,b\n1,x\n2,y\n")
    ds = CsvDataSet([str(tmp_path / "*.csv")], schema={"a": "bigint", "b": "varchar"}, header=True)
    assert ds.num_rows == 4
    merged = ds.merge(ds.partition_by_files(2))
    assert merged.header and merged.num_rows == 4


def test_json_dataset(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    ds = JsonDataSet([str(tmp_path / "*.json")], schema={"a": "bigint", "b": "varchar"})
    assert ds.num_rows == 2
    assert ds.to_arrow_table(conn=duckdb.connect()).to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


def test_fileset(compat_data):
    fs = FileSet([os.path.join(compat_data["mock_urls"], "*.tsv")])
    table = fs.to_arrow_table()
    assert table.column_names == ["resolved_paths"] and table.num_rows == 10
    assert sum(b.num_rows for b in fs.to_batch_reader(batch_size=3)) == 10


def test_literal_datasets():
    sql = SqlQueryDataSet("select range as x from range(10)")
    assert sql.num_rows == 10
    table = pa.table({"a": [1, 2, 3]})
    arrow = ArrowTableDataSet(table)
    assert arrow.num_rows == 3 and arrow.to_arrow_table() == table  # §3.2: upstream's num_rows failed without conn
    df = pd.DataFrame({"a": [1, 2]})
    pandas = PandasDataSet(df)
    assert pandas.to_pandas() is df
    assert pandas.num_rows == 2  # §8.8: failed upstream
    assert pandas.to_arrow_table().num_rows == 2
    conn = duckdb.connect()
    assert conn.execute(f"select sum(a) from {pandas.sql_query_fragment(conn=conn)}").fetchone()[0] == 3


def test_partitioned_dataset(arrow_ds):
    parts = arrow_ds.partition_by_files(3)
    pds = PartitionedDataSet(parts)
    assert pds[1] is parts[1]
    assert sorted(pds.paths) == arrow_ds.resolved_paths
    merged = PartitionedDataSet.merge([PartitionedDataSet(arrow_ds.partition_by_files(3)), pds])
    assert isinstance(merged, PartitionedDataSet) and merged[0].num_rows == 2 * parts[0].num_rows


def test_create_from_and_empty_files(tmp_path):
    table = pa.table({"a": list(range(10))})
    ds = ParquetDataSet.create_from(table, str(tmp_path / "out"))
    assert ds.num_rows == 10 and all(os.path.basename(p).startswith("data") for p in ds.resolved_paths)
    pq.write_table(table.slice(0, 0), str(tmp_path / "out" / "zzz-empty.parquet"))
    both = ParquetDataSet([str(tmp_path / "out" / "*.parquet")])
    both.remove_empty_files()
    assert not any(p.endswith("zzz-empty.parquet") for p in both.resolved_paths) and both.num_rows == 10


def test_load_partitioned_datasets(tmp_path):
    from smallpond.common import PARQUET_METADATA_KEY_PREFIX

    for key in range(3):
        table = pa.table({"v": [key] * 5}).replace_schema_metadata({f"{PARQUET_METADATA_KEY_PREFIX}__data_partition__": str(key)})
        pq.write_table(table, str(tmp_path / f"kv-{key}.parquet"))
    os.makedirs(tmp_path / "hive" / "__data_partition__=1")
    pq.write_table(pa.table({"v": [1]}), str(tmp_path / "hive" / "__data_partition__=1" / "x.parquet"))
    ds = ParquetDataSet([str(tmp_path / "kv-*.parquet")])
    loaded = ds.load_partitioned_datasets(4, "__data_partition__")
    assert [d.num_rows for d in loaded] == [5, 5, 5, 0]
    hive = ParquetDataSet([str(tmp_path / "hive" / "*" / "*.parquet")]).load_partitioned_datasets(2, "__data_partition__", True)
    assert [d.num_rows for d in hive] == [0, 1]
    # §8.15: upstream allowed key == npartition (off by one)
    with pytest.raises(AssertionError):
        ds.load_partitioned_datasets(2, "__data_partition__")
    assert ParquetDataSet._read_partition_key(str(tmp_path / "kv-2.parquet"), "__data_partition__", False) == 2


def test_load_partitioned_datasets_without_a_key_names_the_file(tmp_path):
    """A file with no key anywhere (no metadata, no ``col=k`` folder, no column): not written by a
    HashPartitionNode (its files carry the key in their metadata), or partitioned by another
    column. The error names the file and the column it looked for."""
    pq.write_table(pa.table({"v": [1, 2]}), str(tmp_path / "flat.parquet"))
    with pytest.raises(
        ParameterError, match=r"cannot tell which partition .*flat\.parquet.*'__data_partition__' the data_partition_column"
    ):
        ParquetDataSet([str(tmp_path / "*.parquet")]).load_partitioned_datasets(2, "__data_partition__")


def test_empty_dataset_renders_valid_sql():
    """§8.9: upstream rendered ``(  )`` for an empty dataset."""
    conn = duckdb.connect()
    assert conn.execute(f"select count(*) from {ParquetDataSet([]).sql_query_fragment(conn=conn)}").fetchone()[0] == 0
    empty_csv = CsvDataSet([], schema={"a": "bigint"})
    assert conn.execute(f"select count(*) from {empty_csv.sql_query_fragment(conn=conn)}").fetchone()[0] == 0


def test_sql_fragment_is_parenthesized(arrow_ds):
    frag = arrow_ds.sql_query_fragment()
    assert frag.strip().startswith("(") and frag.strip().endswith(")")
    assert glob.glob(os.path.join(os.path.dirname(arrow_ds.resolved_paths[0]), "*.parquet"))
