"""Publishing outputs taken from the task cache: two jobs' results are never one file.

A job that reuses a cache entry has the entry's inodes in its folder (hard links). Its sinks copy
those files, so a result published from a reused task is not the file of the job that computed
it (nor of the entry); the outputs a job computed itself are still published by a hard link.
The other direction (a result published by a link, then edited in place) is caught by the
entry's verification: the next job recomputes rather than serve the edited bytes.
"""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.execution.cache import LINKED_MARKER
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSinkNode, DataSourceNode, LogicalPlan, SqlEngineNode

ROWS = 1000


def _job(tmp_path, out: str, **sink):
    """Run input -> SQL -> sink(out) as a new job on the shared cache; returns the ExecutionPlan."""
    src = str(tmp_path / "in.parquet")
    if not os.path.exists(src):
        pq.write_table(pa.table({"id": pa.array(range(ROWS), pa.int64())}), src)
    ctx = Context()
    named = {"output_name": "res"} if sink else {}
    sql = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([src])),), "select id, id * 2 as y from {0}", **named)
    plan = LogicalPlan(ctx, DataSinkNode(ctx, (sql,), str(tmp_path / out), **sink))
    rt = make_runtime_ctx(data_root=str(tmp_path / "root"), task_cache=str(tmp_path / "cache"))
    return run_job(plan, rt, num_workers=1)


def _published(tmp_path, out: str) -> str:
    (path,) = glob.glob(str(tmp_path / out / "*.parquet"))
    return path


def _ys(path: str):
    return pq.read_table(path).column("y").to_pylist()


def test_a_result_reused_from_the_cache_is_a_copy_not_the_other_jobs_file(tmp_path):
    first = _job(tmp_path, "out_a")
    assert first.num_reused == 0
    file_a = _published(tmp_path, "out_a")
    # computed by this job: published by a link (its job file and the cache entry share it)
    assert os.stat(file_a).st_nlink >= 2

    second = _job(tmp_path, "out_b")
    assert second.num_reused == 1
    assert glob.glob(os.path.join(second.ctx.staging_root, "*", "*", LINKED_MARKER))
    file_b = _published(tmp_path, "out_b")
    assert os.stat(file_b).st_ino != os.stat(file_a).st_ino
    assert os.stat(file_b).st_nlink == 1
    assert _ys(file_b) == [2 * i for i in range(ROWS)]

    # the owner of out_a rewrites their file in place (pyarrow truncates the same inode)
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "y": pa.array([-1], pa.int64())}), file_a)
    assert _ys(file_a) == [-1]
    assert _ys(file_b) == [2 * i for i in range(ROWS)]


def test_a_result_edited_in_place_is_not_served_from_the_cache_again(tmp_path):
    _job(tmp_path, "out_a")
    file_a = _published(tmp_path, "out_a")
    # out_a is the entry's inode: editing it in place edits the entry (size and time change)
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "y": pa.array([-1], pa.int64())}), file_a)

    second = _job(tmp_path, "out_b")
    assert second.num_reused == 0  # the entry failed its verification: the task ran again
    file_b = _published(tmp_path, "out_b")
    assert _ys(file_b) == [2 * i for i in range(ROWS)]
    assert os.stat(file_b).st_ino != os.stat(file_a).st_ino
    assert _ys(file_a) == [-1]  # the user's edit is theirs: nothing of the engine touched it


def test_write_parquet_of_a_users_file_publishes_a_copy_not_the_input(tmp_path):
    """write_parquet straight after read_parquet (a link_or_copy sink over the user's own files):
    the result is a copy, so writing the published file in place leaves the input as it was."""
    import smallpond

    src = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": pa.array(range(10), pa.int64())}), src)
    sp = smallpond.init(data_root=str(tmp_path / "root"))
    try:
        sp.read_parquet(src).write_parquet(str(tmp_path / "out"))
    finally:
        sp.shutdown()
    out = _published(tmp_path, "out")
    assert os.stat(out).st_ino != os.stat(src).st_ino and os.stat(src).st_nlink == 1
    pq.write_table(pa.table({"id": pa.array([-1], pa.int64())}), out)  # in place: truncates its inode
    assert pq.read_table(src).column("id").to_pylist() == list(range(10))


def _listed(manifest: str) -> str:
    with open(manifest) as f:
        (path,) = f.read().split()
    return path


def test_a_manifest_of_a_result_reused_from_the_cache_lists_a_copy_not_the_other_jobs_file(tmp_path):
    """A manifest lists files where they are: a reused task's are the entry's inodes, and so the
    first job's result. Both the user's manifest sink and the job folder's named output (a
    manifest too) list a copy of the job's own instead (found by hunt44: editing the first job's
    result in place changed the second's)."""
    first = _job(tmp_path, "out_a", type="manifest")
    file_a = _listed(str(tmp_path / "out_a" / ".MANIFEST.txt"))
    named_a = _listed(os.path.join(first.ctx.output_root, "res", ".MANIFEST.txt"))
    assert os.stat(file_a).st_nlink >= 2  # computed by this job: its own file, linked into the entry

    second = _job(tmp_path, "out_b", type="manifest")
    assert second.num_reused == 1
    file_b = _listed(str(tmp_path / "out_b" / ".MANIFEST.txt"))
    named_b = _listed(os.path.join(second.ctx.output_root, "res", ".MANIFEST.txt"))
    for listed in (file_b, named_b):
        assert os.stat(listed).st_ino not in (os.stat(file_a).st_ino, os.stat(named_a).st_ino)
        assert os.stat(listed).st_nlink == 1
        assert _ys(listed) == [2 * i for i in range(ROWS)]
    assert not glob.glob(os.path.join(os.path.dirname(file_b), ".*.own-*")), "no temporary copy is left"

    # the first job's result rewritten in place (pyarrow truncates the same inode)
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "y": pa.array([-1], pa.int64())}), file_a)
    assert _ys(file_a) == [-1]
    assert _ys(file_b) == _ys(named_b) == [2 * i for i in range(ROWS)]
