"""What a sink publishes; with ``remove_empty_parquet`` (a Driver flag and run option of upstream's),
no Parquet file without rows, but always at least one file, so the result keeps its columns."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from smallpond.execution.job import run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)
from tests.datagen import generate_parquet_files


def _published(dest):
    names = sorted(n for n in os.listdir(dest) if n.endswith(".parquet"))
    listed = [line.strip() for line in open(os.path.join(dest, ".MANIFEST.txt")) if line.strip()]
    return names, listed, [pq.read_metadata(os.path.join(dest, n)).num_rows for n in names]


@pytest.mark.parametrize("remove", [False, True])
def test_empty_partitions_are_not_published_when_asked(tmp_path, make_rt, remove):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=1)  # 3 rows, 8 partitions
    dest = str(tmp_path / "out")
    ctx = Context()
    parts = HashPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 8, hash_columns=["id"])
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (parts,), dest)), make_rt(remove_empty_parquet=remove), num_workers=2)
    names, listed, rows = _published(dest)
    assert sum(rows) == 3
    assert sorted(os.path.basename(p) for p in listed) == names
    if remove:
        assert all(rows) and len(names) <= 3
    else:  # as upstream: every producer's placeholder of every empty partition is published
        assert rows.count(0) >= 5


@pytest.mark.parametrize("kind", ["link", "manifest"])
def test_a_result_without_rows_keeps_one_file(tmp_path, make_rt, kind):
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=3, rows_per_file=2)
    dest = str(tmp_path / "out")
    ctx = Context()
    src = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 3)
    none = SqlEngineNode(ctx, (src,), "select id, name from {0} where id < 0", output_name="none")
    run_job(LogicalPlan(ctx, DataSinkNode(ctx, (none,), dest, type=kind)), make_rt(remove_empty_parquet=True), num_workers=2)
    listed = [line.strip() for line in open(os.path.join(dest, ".MANIFEST.txt")) if line.strip()]
    assert len(listed) == 1  # of the 3 empty outputs, one: the columns are still there
    assert pq.read_schema(listed[0]).names[:2] == ["id", "name"]


def test_a_session_takes_the_option(tmp_path):
    import smallpond

    sp = smallpond.init(data_root=str(tmp_path / "root"), remove_empty_parquet=True)
    try:
        dest = str(tmp_path / "out")
        sp.from_items([{"a": i} for i in range(3)]).repartition(8, hash_by="a").write_parquet(dest)
        names, listed, rows = _published(dest)
        assert sum(rows) == 3 and all(rows) and len(listed) == len(names)
    finally:
        sp.shutdown()


@pytest.mark.parametrize("kind", ["manifest", "final"])
def test_a_manifest_lists_a_file_split_by_rows_once(tmp_path, make_rt, kind):
    """A file that a partition by rows split into 3 partitions was listed once per partition by a
    manifest (a ``type="manifest"`` sink, and the job's FinalResults): reading the result read
    every row 3 times. Found by the differential fuzzer (tests/e2e/test_differential.py)."""
    files = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=10)
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet(files)),), 3, partition_by_rows=True)
    dest = str(tmp_path / "out")
    root = DataSinkNode(ctx, (parts,), dest, type="manifest") if kind == "manifest" else parts
    exec_plan = run_job(LogicalPlan(ctx, root), make_rt(), num_workers=1)
    assert exec_plan.final_output.to_arrow_table().num_rows == 10
    manifest = dest if kind == "manifest" else os.path.join(exec_plan.ctx.output_root, "FinalResults")
    assert [line.strip() for line in open(os.path.join(manifest, ".MANIFEST.txt"))] == files


def test_a_manifest_of_some_rows_of_a_file_is_refused(tmp_path):
    """Rows that do not cover their file (one partition of a split by rows) cannot be listed by a
    manifest: refused, naming the sink, the rows and the file, and saying what to use instead."""
    from smallpond.errors import ParameterError
    from smallpond.execution.ops.sink_sources import manifest_files

    files = generate_parquet_files(str(tmp_path / "in"), nfiles=1, rows_per_file=10)
    first, second, third = ParquetDataSet(files).partition_by_rows(3)
    assert manifest_files([first, second, third], "the sink") == files
    with pytest.raises(ParameterError, match=r"the sink: .* only rows 0-3 of .*type='link' or 'copy'"):
        manifest_files([first], "the sink")
