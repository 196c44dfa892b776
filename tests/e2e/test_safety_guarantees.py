"""Guarantees that had no test that could fail (issue 8, part 7).

Each test here fails when its guarantee is removed (see the report of issue 8 for the breaks that
were tried): a crash between an attempt's output rename and its commit record; the boundaries of
``RangePartitionNode``; ``random_shuffle`` really moving rows within partitions; an input
rewritten with the same size and modification time is not reused. (Atomic publication and
signed records are covered by test_safety_publish_crash.py and test_safety_jobs.py.)
"""

from __future__ import annotations

import glob
import os
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.execution.job import run_job
from smallpond.io.parquet_footer import read_footer
from smallpond.io.paths import file_identity
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, RangePartitionNode, SqlEngineNode
from tests.datagen import generate_parquet_files
from tests.e2e.counting_job import counting_plan
from tests.e2e.safety_helpers import published_rows


@pytest.mark.parametrize("point", ["after_rename", "before_commit"])
def test_crash_between_output_rename_and_commit_record(tmp_path, make_rt, monkeypatch, point):
    """The worker dies after its output is in place but before the commit record: the task is not
    taken as done, its retry replaces the orphaned output, and the result is right."""
    monkeypatch.setenv("SP_TEST_CRASH_AT", f"{point}:SqlEngineTask")
    inputs = generate_parquet_files(str(tmp_path / "in"), nfiles=2, rows_per_file=10)
    sink = str(tmp_path / "sink")
    rt = make_rt()
    run_job(counting_plan(inputs, str(tmp_path / "counter"), sink, npartitions=3, sleep=0), rt, num_workers=2)
    assert published_rows(sink, "id") == list(range(20))
    from smallpond.execution.attempt import logged_attempts

    crashed = [k for k, a in logged_attempts(rt.log_root) if k.startswith("SqlEngineTask-") and a == 1]
    assert len(crashed) == 3, "every SQL task's first attempt crashed in the window and was retried"
    # each task has one output folder, the retry's ({key}.{attempt}.{token}): the crashed
    # attempt's (renamed into place, never committed) was not taken for done and is gone
    task_dirs = sorted(glob.glob(os.path.join(rt.staging_root, "SqlEngineNode.*", "SqlEngineTask-*")))
    assert len(task_dirs) == 3, task_dirs
    assert all(os.path.basename(d).split(".")[1] == "1" for d in task_dirs), task_dirs


def test_range_partition_boundaries(tmp_path, make_rt):
    """Partition k holds ``split_points[k-1] <= key < split_points[k]``: the points themselves open a partition."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"k": list(range(100))}), src)
    ctx = Context()
    parts = RangePartitionNode(ctx, (DataSourceNode(ctx, ParquetDataSet([str(src)])),), split_points=[10, 50], key_column="k")
    tagged = SqlEngineNode(ctx, (parts,), "select k, {__data_partition__} as p from {0}")
    result = run_job(LogicalPlan(ctx, tagged), make_rt(), num_workers=1).final_output.to_arrow_table()
    where = dict(zip(result.column("k").to_pylist(), result.column("p").to_pylist()))
    assert len(where) == 100
    assert (where[0], where[9], where[10], where[49], where[50], where[99]) == (0, 0, 1, 1, 2, 2)
    assert sorted(k for k, p in where.items() if p == 1) == list(range(10, 50))


def test_random_shuffle_moves_rows_within_and_across_partitions(tmp_path):
    sp = smallpond.init(data_root=str(tmp_path / "root"), num_executors=2)
    try:
        df = sp.from_items([{"id": i} for i in range(800)]).repartition(4, by_rows=True)
        shuffled = df.random_shuffle()
        parts = [_read(ds) for ds in shuffled._datasets()]
    finally:
        sp.shutdown()
    assert sorted(i for p in parts for i in p) == list(range(800))
    for p in parts:
        assert len(p) > 50 and p != sorted(p), "rows kept their input order within a partition"
    # rows left their input partition (input partition j held ids 200j..200j+199)
    assert any(len({i // 200 for i in p}) > 1 for p in parts)


def _read(ds):
    return [r["id"] for r in ds.to_arrow_table().to_pylist()]


def test_same_size_rewrite_with_the_mtime_kept_is_not_reused(tmp_path, make_rt):
    path = str(tmp_path / "in.parquet")

    def write(values):
        pq.write_table(pa.table({"id": pa.array(values, pa.int64())}), path, compression="none", use_dictionary=False)

    write(list(range(10)))
    stamp = os.stat(path)
    size, ident = stamp.st_size, file_identity(path)
    sink, job_id = str(tmp_path / "sink"), str(uuid.uuid4())

    def plan():
        ctx = Context()
        return LogicalPlan(
            ctx,
            DataSinkNode(ctx, (SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), "select id from {0}"),), sink),
        )

    run_job(plan(), make_rt(job_id), num_workers=1)
    assert published_rows(sink, "id") == list(range(10))
    write(list(range(100, 110)))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(path).st_size == size and os.stat(path).st_mtime_ns == stamp.st_mtime_ns
    assert file_identity(path) != ident
    run_job(plan(), make_rt(job_id), num_workers=1)
    assert published_rows(sink, "id") == list(range(100, 110)), "the old result was reused"


def test_a_parquet_rewrite_with_the_same_footer_changes_the_identity(tmp_path):
    """Values swapped within a row group keep the size, every offset and statistic, so the footer
    is byte for byte the same; with the modification time set back, only the inode change time
    tells the versions apart (the file has one link, so it is part of the identity)."""
    path = str(tmp_path / "in.parquet")

    def write(values):
        pq.write_table(pa.table({"id": pa.array(values, pa.int64())}), path)

    write(list(range(1000)))
    st = os.stat(path)
    before, footer = file_identity(path), read_footer(path, 1 << 20, st.st_size)
    time.sleep(0.01)
    write([1, 0] + list(range(2, 1000)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and read_footer(path, 1 << 20, st.st_size) == footer
    assert file_identity(path) != before


def test_a_hard_linked_parquet_file_keeps_its_identity_as_links_come_and_go(tmp_path):
    """A published result shares its inode with the job that wrote it and the task cache; their
    links come and go (a new link changes the inode change time) without the content changing."""
    path = str(tmp_path / "out.parquet")
    pq.write_table(pa.table({"id": pa.array(range(10), pa.int64())}), path)
    os.link(path, str(tmp_path / "entry.parquet"))
    before = file_identity(path)
    time.sleep(0.01)
    os.link(path, str(tmp_path / "another.parquet"))
    os.unlink(str(tmp_path / "entry.parquet"))
    assert file_identity(path) == before


def test_file_identity_of_other_files_changes_with_any_rewrite(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("1,2\n")
    st = os.stat(path)
    before = file_identity(str(path))
    time.sleep(0.01)  # past a tick of a filesystem's coarse clock (one without fine-grained timestamps)
    path.write_text("3,4\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_identity(str(path)) != before  # the inode change time cannot be set back
