"""Upstream's tests/test_plan.py: the examples (reference §7.2) run as plans and DataFrame scripts.

``sort_mock_urls`` and ``sort_mock_urls_v2`` are our examples/ files with upstream's signatures;
``shuffle_mock_urls``, ``shuffle_data`` and ``fstest`` are written here from their description
(the same public API calls upstream's examples made).
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import List

import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.contrib.copy_table import StreamCopy
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    HashPartitionNode,
    LogicalPlan,
    SqlEngineNode,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"compat_example_{name}", os.path.join(REPO_ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tsv(compat_data) -> List[str]:
    return sorted(glob.glob(os.path.join(compat_data["mock_urls"], "*.tsv")))


def _check_sorted_urls(table: pa.Table) -> None:
    assert table.num_rows == 1000
    assert {"host", "url", "payload"} <= set(table.column_names)


def test_sort_mock_urls(run_plan, compat_data):
    sort_mock_urls = _example("sort_mock_urls").sort_mock_urls
    for engine_type in ("duckdb", "arrow"):
        plan = sort_mock_urls(_tsv(compat_data), npartitions=3, engine_type=engine_type)
        exec_plan = run_plan(plan)
        assert exec_plan.successful
        _check_sorted_urls(exec_plan.final_output.to_arrow_table())
        assert exec_plan.get_output("imported_urls").num_rows == 1000
        for path in exec_plan.final_output.resolved_paths:  # each output file is sorted
            t = pq.read_table(path)
            keys = list(zip(t.column("host").to_pylist(), t.column("url").to_pylist()))
            assert keys == sorted(keys)


def test_sort_mock_urls_external_output_path(run_plan, compat_data, tmp_path):
    sort_mock_urls = _example("sort_mock_urls").sort_mock_urls
    plan = sort_mock_urls(_tsv(compat_data), npartitions=3, external_output_path=str(tmp_path / "ext"))
    run_plan(plan)
    sink = str(tmp_path / "ext" / "data_sink")
    assert os.path.exists(os.path.join(sink, ".MANIFEST.txt"))
    _check_sorted_urls(ParquetDataSet([os.path.join(sink, "*.parquet")]).to_arrow_table())


def test_sort_mock_urls_v2(sp, compat_data, tmp_path):
    sort_mock_urls_v2 = _example("sort_mock_urls_v2").sort_mock_urls_v2
    out = str(tmp_path / "sorted")
    sort_mock_urls_v2(sp, _tsv(compat_data), out, npartitions=3)
    table = sp.read_parquet(os.path.join(out, "*.parquet")).to_arrow()
    _check_sorted_urls(table)
    for path in glob.glob(os.path.join(out, "*.parquet")):
        hosts = pq.read_table(path).column("host").to_pylist()
        assert hosts == sorted(hosts)


def shuffle_mock_urls(
    input_paths, npartitions: int = 10, sort_rand_keys: bool = True, engine_type: str = "duckdb"
) -> LogicalPlan:
    ctx = Context()
    dataset = ParquetDataSet(input_paths)
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=npartitions)
    shuffled = HashPartitionNode(ctx, (parts,), npartitions=npartitions, random_shuffle=True, engine_type=engine_type)
    if sort_rand_keys:
        query = "select * from {0} order by random()"
    else:
        query = "select * from {0} using sample 100% (reservoir, {rand_seed})"
    return LogicalPlan(ctx, SqlEngineNode(ctx, (shuffled,), query, output_name="shuffled"))


def test_shuffle_mock_urls(run_plan, compat_data):
    inputs = sorted(glob.glob(os.path.join(compat_data["mock_urls"], "*.parquet")))
    expected = ParquetDataSet(inputs).to_arrow_table()
    for sort_rand_keys in (True, False):
        exec_plan = run_plan(shuffle_mock_urls(inputs, npartitions=3, sort_rand_keys=sort_rand_keys))
        out = exec_plan.final_output.to_arrow_table()
        assert sorted(out.column("url").to_pylist()) == sorted(expected.column("url").to_pylist())
        assert out.column("url").to_pylist() != expected.column("url").to_pylist()


def shuffle_data(input_paths, num_out_data_partitions=0, num_data_partitions=10, num_hash_partitions=10, engine_type="duckdb"):
    ctx = Context()
    dataset = ParquetDataSet(input_paths, union_by_name=True)
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=num_data_partitions, partition_by_rows=True)
    shuffled = HashPartitionNode(ctx, (parts,), npartitions=num_hash_partitions, random_shuffle=True, engine_type=engine_type)
    ordered = SqlEngineNode(
        ctx, (shuffled,), "select *, cast(random() * 2147483647 as integer) as sort_key from {0} order by sort_key"
    )
    repartitioned = DataSetPartitionNode(
        ctx, (ordered,), npartitions=num_out_data_partitions or num_hash_partitions, partition_by_rows=True
    )
    return LogicalPlan(ctx, StreamCopy(ctx, (repartitioned,), output_name="data_copy"))


def test_shuffle_data(run_plan, compat_data):
    inputs = [os.path.join(compat_data["arrow"], "*.parquet")]
    exec_plan = run_plan(shuffle_data(inputs, num_out_data_partitions=4, num_data_partitions=3, num_hash_partitions=3))
    out = exec_plan.get_output("data_copy").to_arrow_table()
    assert out.num_rows == 1000 and "sort_key" in out.column_names
    assert sorted(out.column("url").to_pylist()) == sorted(ParquetDataSet(inputs).to_arrow_table().column("url").to_pylist())


def fstest(sp, input_path, output_path, size, npartitions, blocksize="4k"):
    """A filesystem write-then-read check in the shape of upstream's examples/fstest.py."""

    def parse(s: str) -> int:
        units = {"k": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)

    total, block = parse(size), parse(blocksize)
    if output_path is not None:
        os.makedirs(output_path, exist_ok=True)

        def write_file(row):
            import os

            import numpy as np

            path = os.path.join(output_path, f"fstest-{row['item']}.bin")
            data = np.arange(total // npartitions // 4, dtype=np.uint32)
            with open(path, "wb") as f:
                for off in range(0, data.nbytes, block):
                    f.write(data.tobytes()[off : off + block])
            return {"path": path, "bytes": data.nbytes}

        df = sp.from_items(list(range(npartitions))).repartition(npartitions, by_rows=True).map(write_file)
        written = df.to_pandas()
        assert written["bytes"].sum() == total // npartitions // 4 * 4 * npartitions
    if input_path is not None:
        paths = sorted(glob.glob(input_path))

        def read_file(row):
            import numpy as np

            data = np.fromfile(row["item"], dtype=np.uint32)
            return {"path": row["item"], "ok": bool((data == np.arange(len(data), dtype=np.uint32)).all())}

        df = sp.from_items(paths).repartition(len(paths), by_rows=True).map(read_file)
        return df.to_pandas()
    return None


def test_fstest(sp, tmp_path):
    out = str(tmp_path / "fstest")
    fstest(sp, input_path=None, output_path=out, size="1M", npartitions=3)
    result = fstest(sp, input_path=os.path.join(out, "*"), output_path=None, size="1M", npartitions=3)
    assert len(result) == 3 and result["ok"].all()
