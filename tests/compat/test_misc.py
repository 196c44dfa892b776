"""smallpond.common, smallpond.contrib and smallpond.utility as upstream exposed them (§0, §5.3, §5.4)."""

from __future__ import annotations

import os
import subprocess

import pytest

import smallpond.common as common
from smallpond.contrib import CopyArrowTable, LogDataSet, StreamCopy
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, UnionNode
from smallpond.utility import ConcurrentIter, cprofile_to_string, execute_command, overall_stats
from tests.compat.conftest import assert_same_rows


def test_constants():
    assert (common.KB, common.MB, common.GB, common.TB) == (1 << 10, 1 << 20, 1 << 30, 1 << 40)
    assert common.DEFAULT_MAX_RETRY_COUNT == 5 and common.DEFAULT_MAX_FAIL_COUNT == 3
    assert common.MAX_ROW_GROUP_SIZE == 10 * 1024 * 1024 and common.MAX_ROW_GROUP_BYTES == 2 * common.GB
    assert common.MAX_NUM_ROW_GROUPS == 256 and common.MAX_PARQUET_FILE_BYTES == 8 * common.GB
    assert common.DEFAULT_ROW_GROUP_SIZE == 122880 and common.DEFAULT_ROW_GROUP_BYTES == 122880 * 4 * common.KB
    assert common.DEFAULT_BATCH_SIZE == 122880 and common.RAND_SEED_BYTE_LEN == 128
    assert common.DATA_PARTITION_COLUMN_NAME == "__data_partition__"
    assert common.PARQUET_METADATA_KEY_PREFIX == "SMALLPOND:" and common.INPUT_VIEW_PREFIX == "__input"
    assert common.GENERATED_COLUMNS == ("filename", "file_row_number")


def test_helpers():
    assert common.pytest_running()
    assert common.split_into_rows(range(10), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert common.split_into_rows([1], 3) == [[1], [], []]
    assert common.split_into_cols(list(range(5)), 2) == [[0, 2, 4], [1, 3]]
    for n in range(1, 5):
        assert [common.get_nth_partition(list(range(10)), i, n) for i in range(n)] == common.split_into_rows(range(10), n)
    assert [common.next_power_of_two(x) for x in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert common.round_up(1) == common.MB and common.round_up(10, 4) == 12
    assert common.first_value_in_dict({"a": 3, "b": 4}) == 3
    assert common.clamp_value(5, 1, 3) == 3 and common.clamp_value(0, 1, 3) == 1
    assert common.clamp_row_group_size(1) == common.DEFAULT_ROW_GROUP_SIZE
    assert common.clamp_row_group_bytes(1 << 40) == common.MAX_ROW_GROUP_BYTES


def test_exceptions():
    for exc in (common.InjectedFault, common.OutOfMemory, common.NonzeroExitCode):
        assert issubclass(exc, common.SmallpondError)
    assert issubclass(common.SmallpondError, Exception)


def test_contrib_nodes(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    copied = CopyArrowTable(ctx, (parts,), output_name="copied")
    streamed = StreamCopy(ctx, (parts,), streaming_batch_size=64, output_name="streamed")
    logged = LogDataSet(ctx, (parts,), num_rows=3)
    exec_plan = run_plan(LogicalPlan(ctx, UnionNode(ctx, (copied, streamed, logged))))
    expected = dataset.to_arrow_table()
    assert_same_rows(exec_plan.get_output("copied").to_arrow_table(), expected)
    assert_same_rows(exec_plan.get_output("streamed").to_arrow_table(), expected)


def test_overall_stats(run_plan, compat_data, tmp_path):
    ctx = Context()
    dataset = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=4)
    out_dir = str(tmp_path / "stats")
    node = overall_stats(
        ctx,
        parts,
        "select count(*) as n from {0}",
        "select sum(n) as n from {0}",
        "row_count",
        output_dir=out_dir,
        memory_limit=256 * common.MB,
    )
    exec_plan = run_plan(LogicalPlan(ctx, node))
    assert exec_plan.get_output("row_count").to_arrow_table().column("n").to_pylist() == [1000]
    assert os.path.exists(os.path.join(out_dir, ".MANIFEST.txt"))


def test_concurrent_iter():
    with ConcurrentIter(range(10)) as items:
        assert list(items) == list(range(10))
    with ConcurrentIter(iter(range(3)), max_buffer_size=2) as outer:
        assert [list(ConcurrentIter(range(x)).__enter__()) for x in outer] == [[], [0], [0, 1]]

    def broken():
        yield 1
        raise KeyError("x")

    with pytest.raises(Exception) as ex:
        with ConcurrentIter(broken()) as items:
            list(items)
    assert isinstance(ex.value.__cause__, KeyError) or "KeyError" in repr(ex.value)


def test_execute_command():
    assert list(execute_command("echo hello; echo world", shell=True)) == ["hello", "world"]
    with pytest.raises(subprocess.CalledProcessError):
        list(execute_command(["false"]))


def test_cprofile_to_string():
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    sum(range(1000))
    prof.disable()
    assert "function calls" in cprofile_to_string(prof)


def test_runtime_context(tmp_path):
    import pickle
    from datetime import datetime

    from smallpond.execution.task import JobId, RuntimeContext

    job_id = JobId.new()
    rt = RuntimeContext(
        job_id, datetime(2024, 3, 4, 5, 6, 7), str(tmp_path), num_executors=0, random_seed=123456, output_path=str(tmp_path / "o")
    )
    assert rt.job_root == os.path.join(str(tmp_path), f"2024-03-04-05-06-07.{job_id}")
    rt.initialize(exec_id="exec-1")
    for d in (rt.config_root, rt.log_root, rt.queue_root, rt.output_root, rt.staging_root, rt.temp_root):
        assert os.path.isdir(d) and d.startswith(rt.job_root)
    assert rt.final_output_path == str(tmp_path / "o")
    assert rt.job_status_path == os.path.join(rt.log_root, ".STATUS")
    assert rt.runtime_ctx_path.startswith(rt.config_root) and rt.exec_plan_path.startswith(rt.config_root)
    assert rt.logcial_plan_path.startswith(rt.config_root) and rt.sched_state_path.startswith(rt.config_root)
    assert rt.completed_task_dir.startswith(rt.staging_root) and rt.started_task_dir.startswith(rt.staging_root)
    assert rt.usable_cpu_count >= 1 and rt.usable_memory_size > 0 and rt.total_memory >= rt.available_memory > 0
    assert rt.numa_node_count == 1 and rt.get_local_gpus() == [] and rt.usable_gpu_count == 0
    assert rt.secs_executor_probe_timeout == 30 * 6
    assert rt.task is None
    copy = pickle.loads(pickle.dumps(rt))
    assert copy.job_root == rt.job_root and copy.random_seed == 123456
    rt.cleanup(remove_output_root=False)
    assert not os.path.exists(rt.staging_root) and os.path.isdir(rt.output_root)
    rt.cleanup_root()
    assert not os.path.exists(rt.job_root)


def test_partition_info_and_ids():
    from smallpond.execution.task import PartitionInfo, StreamOutput, TaskId, TaskRuntimeId

    a, b = PartitionInfo(1, 4, "d"), PartitionInfo(1, 8, "d")
    assert a == b and hash(a) == hash(b)  # (dimension, index) only
    assert PartitionInfo(0, 4, "d") < a and str(a) == "d[1/4]"
    assert PartitionInfo() == PartitionInfo(0, 1, "@toplevel@")
    assert str(TaskId(12)) == "000012" and str(TaskRuntimeId(12, 0, 1)) == "000012.0.1"
    out = StreamOutput(None)
    assert out.batch_indices is None and out.force_checkpoint is False


def test_read_parquet_files_into_table(compat_data, tmp_path):
    """§5.2 names ``read_parquet_files_into_table(...)`` without a signature: ours takes
    ``load_from_parquet_files``' (paths or row ranges, columns, filesystem) and reads in order."""
    import pyarrow.fs as pafs

    from smallpond.errors import ParameterError
    from smallpond.io.arrow import (
        RowRange,
        dump_to_parquet_files,
        load_from_parquet_files,
        parquet_write_table,
        read_parquet_files_into_table,
    )

    paths = sorted(os.path.join(compat_data["arrow"], f) for f in os.listdir(compat_data["arrow"]))[:3]
    table = read_parquet_files_into_table(paths, ["domain", "url"])
    assert table.column_names == ["domain", "url"] and table.num_rows == 300
    assert table.equals(load_from_parquet_files(paths, ["domain", "url"]))
    ranged = read_parquet_files_into_table([RowRange(paths[1], 0, 100, 10, 15), paths[2]], ["url"], pafs.LocalFileSystem())
    full = load_from_parquet_files(paths[1:], ["url"]).column("url").to_pylist()
    assert ranged.column("url").to_pylist() == full[10:15] + full[100:]
    # a filesystem these helpers cannot use is refused, naming the function, never read past
    elsewhere = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    for call in (
        lambda: read_parquet_files_into_table(paths, None, elsewhere),
        lambda: load_from_parquet_files(paths, None, 16, elsewhere),
        lambda: dump_to_parquet_files(table, str(tmp_path / "out"), filesystem=elsewhere),
        lambda: parquet_write_table(table, str(tmp_path / "t.parquet"), filesystem=elsewhere),
    ):
        with pytest.raises(ParameterError, match=r"\w+\(filesystem=pyarrow\._fs\.SubTreeFileSystem\): only the local"):
            call()
    assert not os.listdir(tmp_path)


def test_filesystem_dump_and_load_take_upstreams_arguments(tmp_path):
    """§5.1: ``dump(obj, path, buffering=2MB, atomic_write=False)`` and ``load(path, buffering=2MB)``."""
    from smallpond.io.filesystem import dump, load

    path = str(tmp_path / "obj.pickle")
    obj = {"a": [1, 2, 3], "f": len}
    size = dump(obj, path, 4096, False)
    assert size == os.path.getsize(path) and load(path, 4096) == obj
    assert dump(obj, path, buffering=1 << 20, atomic_write=True) == size and load(path, buffering=1 << 20) == obj
    assert os.listdir(tmp_path) == ["obj.pickle"]


def test_datasets_refuse_a_filesystem_they_cannot_use(compat_data, tmp_path):
    """§3.1: ``to_arrow_table``/``to_batch_reader``/``sql_query_fragment`` take ``filesystem=``.
    A local filesystem object is accepted; any other is a ParameterError naming the dataset's
    method, never silently read past (reading the local path instead)."""
    import pyarrow.fs as pafs

    from smallpond.errors import ParameterError

    ds = ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])
    local = pafs.LocalFileSystem()
    assert ds.to_arrow_table(filesystem=local).num_rows == ds.to_arrow_table().num_rows
    assert ds.to_batch_reader(filesystem=local).read_all().num_rows == ds.num_rows
    assert ds.sql_query_fragment(filesystem=local) == ds.sql_query_fragment()
    elsewhere = pafs.SubTreeFileSystem(str(tmp_path), local)
    for method, call in (
        ("to_arrow_table", lambda: ds.to_arrow_table(filesystem=elsewhere)),
        ("to_batch_reader", lambda: ds.to_batch_reader(filesystem=elsewhere)),
        ("sql_query_fragment", lambda: ds.sql_query_fragment(filesystem=elsewhere)),
    ):
        with pytest.raises(
            ParameterError, match=rf"ParquetDataSet\.{method}\(filesystem=pyarrow\._fs\.SubTreeFileSystem\): only the local"
        ):
            call()
