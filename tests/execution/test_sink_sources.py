"""What a sink publishes; with ``remove_empty_parquet`` (a Driver flag and run option of upstream's),
no Parquet file without rows, but always at least one file, so the result keeps its columns."""

from __future__ import annotations

import os

import pyarrow as pa
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
    ProjectionNode,
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


PROJECTIONS = {
    "ProjectionNode last": lambda ctx, src: ProjectionNode(ctx, src, ["key", "id * 2 as id2"], ["filename"]),
    "source columns=": None,
    "projection split by files": lambda ctx, src: DataSetPartitionNode(ctx, (ProjectionNode(ctx, src, ["key"]),), 2),
}


@pytest.mark.parametrize("shape", sorted(PROJECTIONS))
@pytest.mark.parametrize("sink", ["FinalResults", "manifest", "link", "copy"])
def test_a_sink_over_a_projection_publishes_the_projected_columns(tmp_path, make_rt, shape, sink):
    """A sink over a projection (a ProjectionNode, a source's ``columns=``, reached through nodes
    that pass files on) listed, linked or copied the source's files, so reading the result (the
    job's ``final_output``, or its folder through ``read_parquet``) gave every column of the
    source: the projection's result is written first, as ``DataFrame.write_parquet`` does."""
    import smallpond

    path = str(tmp_path / "in" / "k.parquet")
    os.makedirs(os.path.dirname(path))
    pq.write_table(pa.table({"key": [1, 2, 3], "id": [10, 20, 30], "s": ["x", "y", "z"]}), path)
    ctx = Context()
    if PROJECTIONS[shape] is None:
        node = DataSourceNode(ctx, ParquetDataSet([path], columns=["key"]))
    else:
        node = PROJECTIONS[shape](ctx, DataSourceNode(ctx, ParquetDataSet([path])))
    dest = str(tmp_path / "out")
    root = node if sink == "FinalResults" else DataSinkNode(ctx, (node,), dest, type=sink)
    result = run_job(LogicalPlan(ctx, root), make_rt(), num_workers=1)
    expected = {"key": [1, 2, 3]}
    if shape == "ProjectionNode last":
        expected.update(id2=[20, 40, 60], filename=[path] * 3)
    got = result.final_output.to_arrow_table().sort_by("key").to_pydict()
    assert got == expected
    folder = result.final_output_path if sink == "FinalResults" else dest
    sp = smallpond.init(data_root=str(tmp_path / "reader"))
    try:
        assert sp.read_parquet(folder).to_arrow().sort_by("key").to_pydict() == expected
    finally:
        sp.shutdown()
    assert pq.read_table(path).column_names == ["key", "id", "s"]  # (the input is left as it was)


def test_a_sink_over_a_projection_of_every_column_publishes_the_files_as_they_are(tmp_path, make_rt):
    """``ProjectionNode(columns=None)`` (``*``) changes nothing: its files are published as they are."""
    path = str(tmp_path / "k.parquet")
    pq.write_table(pa.table({"key": [1, 2]}), path)
    ctx = Context()
    node = ProjectionNode(ctx, DataSourceNode(ctx, ParquetDataSet([path])))
    result = run_job(LogicalPlan(ctx, node), make_rt(), num_workers=1)
    assert result.final_output.resolved_paths == [path]


def test_own_copies_replaces_only_linked_cache_files_and_only_once(tmp_path):
    """A file of a cache-filled output folder of the job (LINKED_MARKER) that has another link is
    replaced by a copy of the job's own (same bytes, one link); a rerun finds one link and copies
    nothing; a file the job computed itself, or one outside the job, is left as it is."""
    from smallpond.execution.cache import LINKED_MARKER
    from smallpond.execution.ops.sink_sources import own_copies

    job = tmp_path / "job"
    linked, computed = job / "output" / "res" / "T-1.0.abc", job / "output" / "res" / "T-2.0.def"
    linked.mkdir(parents=True)
    computed.mkdir(parents=True)
    (linked / LINKED_MARKER).write_text("entry")
    entry = tmp_path / "cache" / "entry.parquet"
    entry.parent.mkdir()
    entry.write_bytes(b"PAR1 reused bytes PAR1")
    reused = linked / "res-1.parquet"
    os.link(entry, reused)
    own = computed / "res-2.parquet"
    own.write_bytes(b"mine")
    os.link(own, tmp_path / "cache" / "own-entry.parquet")  # computed here, inserted into the cache
    outside = tmp_path / "user.parquet"
    outside.write_bytes(b"theirs")
    os.link(outside, tmp_path / "user-link.parquet")

    files = [str(reused), str(own), str(outside)]
    assert own_copies(files, str(job)) == 1
    assert os.stat(reused).st_ino != os.stat(entry).st_ino and os.stat(reused).st_nlink == 1
    assert reused.read_bytes() == entry.read_bytes() == b"PAR1 reused bytes PAR1"
    assert os.stat(own).st_nlink == 2 and os.stat(outside).st_nlink == 2  # not a cache link: as they were
    assert sorted(os.listdir(linked)) == sorted([LINKED_MARKER, "res-1.parquet"]), "no temporary copy is left"
    ino = os.stat(reused).st_ino
    assert own_copies(files, str(job)) == 0 and os.stat(reused).st_ino == ino
