"""Upstream's tests/test_partition.py cases (reference §2.8, §6), run as jobs."""

from __future__ import annotations

import os
from typing import List

import duckdb
import pyarrow as pa
import pytest

from smallpond.execution.task import RuntimeContext
from smallpond.logical.dataset import DataSet, ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    ConsolidateNode,
    Context,
    DataSetPartitionNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LoadPartitionedDataSetNode,
    LogicalPlan,
    RepeatPartitionNode,
    ShuffleNode,
    SqlEngineNode,
    UserDefinedPartitionNode,
    UserPartitionedDataSourceNode,
)
from tests.compat.conftest import assert_same_rows


def _arrow(compat_data) -> ParquetDataSet:
    return ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")])


def _duck(sql: str, **tables) -> pa.Table:
    conn = duckdb.connect()
    for name, t in tables.items():
        conn.register(name, t)
    return conn.sql(sql).to_arrow_table()


def test_many_file_partitions(run_plan, compat_data, tmp_path):
    src = os.path.join(compat_data["arrow"], "data0.parquet")
    for i in range(30):
        os.link(src, str(tmp_path / f"f{i:03d}.parquet"))
    ctx = Context()
    dataset = ParquetDataSet([str(tmp_path / "*.parquet")])
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=30)
    counts = SqlEngineNode(ctx, (parts,), "select count(*) as cnt from {0}")
    exec_plan = run_plan(LogicalPlan(ctx, counts))
    assert exec_plan.final_output.to_arrow_table().column("cnt").to_pylist() == [100] * 30


def test_many_row_partitions(run_plan, compat_data):
    ctx = Context()
    dataset = ParquetDataSet(
        [os.path.join(compat_data["arrow"], "data0.parquet"), os.path.join(compat_data["arrow"], "data1.parquet")]
    )
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=200, partition_by_rows=True)
    rows = SqlEngineNode(ctx, (parts,), "select url, {__data_partition__} as p from {0}")
    exec_plan = run_plan(LogicalPlan(ctx, rows), num_workers=2)
    out = exec_plan.final_output.to_arrow_table()
    assert out.num_rows == 200
    assert sorted(out.column("p").to_pylist()) == list(range(200))  # one row per partition


def test_empty_dataset_partition(run_plan, compat_data):
    ctx = Context()
    dataset = _arrow(compat_data)
    # 20 partitions over 10 files: half of them are empty
    parts = EvenlyDistributedPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=20)
    nested = EvenlyDistributedPartitionNode(ctx, (parts,), npartitions=3, dimension="nested", nested=True)
    copied = ArrowComputeNode(ctx, (nested,), process_func=lambda rt, tables: tables[0], output_name="copied")
    counted = SqlEngineNode(ctx, (parts,), "select count(*) as n from {0}", output_name="counted")
    exec_plan = run_plan(LogicalPlan(ctx, copied), remove_empty_parquet=True, skip_task_with_empty_input=True)
    assert exec_plan.get_output("copied").num_rows == dataset.num_rows
    exec_plan = run_plan(LogicalPlan(ctx, counted))
    assert sum(exec_plan.get_output("counted").to_arrow_table().column("n").to_pylist()) == dataset.num_rows


@pytest.mark.parametrize(
    "engine_type,partition_by_rows,hive_partitioning",
    [("duckdb", False, False), ("duckdb", True, True), ("arrow", False, False), ("arrow", True, False)],
)
def test_hash_partition(run_plan, compat_data, engine_type, partition_by_rows, hive_partitioning):
    npartitions = 3
    ctx = Context()
    dataset = _arrow(compat_data)
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=4, partition_by_rows=partition_by_rows)
    hash_partitions = HashPartitionNode(
        ctx,
        (parts,),
        npartitions=npartitions,
        hash_columns=["url"],
        engine_type=engine_type,
        hive_partitioning=hive_partitioning,
        output_name="hash_partitions",
    )
    exec_plan = run_plan(LogicalPlan(ctx, hash_partitions))
    assert exec_plan.successful
    assert exec_plan.final_output.num_rows == dataset.num_rows
    loaded = exec_plan.final_output.load_partitioned_datasets(npartitions, "__data_partition__", hive_partitioning)
    assert len(loaded) == npartitions
    assert sum(d.num_rows for d in loaded) == dataset.num_rows
    named = exec_plan.get_output("hash_partitions")
    assert named.num_rows == dataset.num_rows
    assert len(named.load_partitioned_datasets(npartitions, "__data_partition__", hive_partitioning)) == npartitions
    table = exec_plan.final_output.to_arrow_table()
    assert "__data_partition__" in table.column_names
    # every url lands in one partition only
    per_url = _duck("select url, count(distinct __data_partition__) as n from t group by url", t=table)
    assert set(per_url.column("n").to_pylist()) == {1}


@pytest.mark.parametrize("engine_type", ["duckdb", "arrow"])
def test_hash_columns_given_as_one_comma_separated_string_hash_each_name(run_plan, engine_type):
    """Upstream pasted hash_columns into concat_ws('##', ...): "a, b" hashed the two columns a and b;
    it partitions as ["a", "b"] does (not as a column named "a, b")."""
    from smallpond.logical.dataset import ArrowTableDataSet

    table = pa.table({"a": [i % 5 for i in range(200)], "b": [i % 7 for i in range(200)], "v": list(range(200))})
    parts = {}
    for keys in ("a, b", ["a", "b"], "a,b"):
        ctx = Context()
        node = HashPartitionNode(ctx, (DataSourceNode(ctx, ArrowTableDataSet(table)),), 4, keys, engine_type=engine_type)
        assert node.hash_columns == ["a", "b"]
        out = run_plan(LogicalPlan(ctx, node)).final_output.to_arrow_table()
        parts[str(keys)] = sorted(zip(out.column("v").to_pylist(), out.column("__data_partition__").to_pylist()))
    assert parts["a, b"] == parts["['a', 'b']"] == parts["a,b"]
    assert len({p for _, p in parts["a, b"]}) > 1


def test_empty_hash_partition(run_plan):
    ctx = Context()
    from smallpond.logical.dataset import ArrowTableDataSet

    source = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"a": [1], "b": ["x"]})))
    outer = HashPartitionNode(ctx, (source,), npartitions=3, hash_columns=["a"], data_partition_column="outer_partition")
    inner = HashPartitionNode(
        ctx, (outer,), npartitions=4, hash_columns=["b"], data_partition_column="inner_partition", nested=True, dimension="inner"
    )
    copied = ArrowComputeNode(ctx, (inner,), process_func=lambda rt, tables: tables[0], output_name="copied")
    exec_plan = run_plan(LogicalPlan(ctx, copied))
    out = exec_plan.get_output("copied")
    assert out.num_rows == 1
    assert len(out.load_partitioned_datasets(3, "outer_partition")) == 3
    assert len(out.load_partitioned_datasets(4, "inner_partition")) == 4


@pytest.mark.parametrize("hive_partitioning", [False, True])
def test_load_partitioned_datasets(run_plan, compat_data, hive_partitioning):
    npartitions = 3
    ctx = Context()
    dataset = _arrow(compat_data)
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=2)
    hashed = HashPartitionNode(
        ctx, (parts,), npartitions=npartitions, hash_columns=["url"], hive_partitioning=hive_partitioning, output_name="hashed"
    )
    exec_plan = run_plan(LogicalPlan(ctx, hashed))
    hashed_files = exec_plan.get_output("hashed")

    ctx = Context()
    reloaded = LoadPartitionedDataSetNode(
        ctx,
        (DataSourceNode(ctx, hashed_files),),
        npartitions,
        data_partition_column="__data_partition__",
        hive_partitioning=hive_partitioning,
    )
    again = HashPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=npartitions, hash_columns=["url"])
    joined = SqlEngineNode(
        ctx,
        (reloaded, again),
        "select {__data_partition__} as p, (select count(*) from {0}) as n0, (select count(*) from {1}) as n1, "
        "(select count(*) from {0} a join {1} b on a.url = b.url and a.content = b.content) as nj",
    )
    exec_plan = run_plan(LogicalPlan(ctx, joined))
    rows = sorted(exec_plan.final_output.to_arrow_table().to_pylist(), key=lambda r: r["p"])
    assert [r["p"] for r in rows] == [0, 1, 2]
    assert all(r["n0"] == r["n1"] == r["nj"] for r in rows)  # the same rows in the same partitions
    assert sum(r["n0"] for r in rows) == dataset.num_rows


def test_nested_partition(run_plan, compat_data):
    ctx = Context()
    dataset = _arrow(compat_data)
    source = DataSourceNode(ctx, dataset)
    by_domain = HashPartitionNode(ctx, (source,), npartitions=3, hash_columns=["domain"], dimension="domain_part")
    by_date = HashPartitionNode(ctx, (by_domain,), npartitions=2, hash_columns=["date"], dimension="date_part", nested=True)
    counts = SqlEngineNode(
        ctx,
        (by_date,),
        "select {domain_part} as dp, {date_part} as tp, domain, date, count(*) as n from {0} group by domain, date",
    )
    consolidated = ConsolidateNode(ctx, counts, ["domain_part"])
    per_domain = SqlEngineNode(
        ctx, (consolidated,), "select {domain_part} as dp, domain, sum(n) as n from {0} group by domain", output_name="per_domain"
    )
    by_rows = EvenlyDistributedPartitionNode(
        ctx, (by_domain,), npartitions=2, dimension="rows_part", nested=True, partition_by_rows=True
    )
    rows_counts = SqlEngineNode(
        ctx, (by_rows,), "select domain, count(*) as n from {0} group by domain", output_name="rows_counts"
    )
    exec_plan = run_plan(LogicalPlan(ctx, per_domain))
    expected = _duck("select domain, count(*) as n from t group by domain", t=dataset.to_arrow_table())
    got = exec_plan.get_output("per_domain").to_arrow_table()
    assert by_date.num_partitions == 6 and consolidated.num_partitions == 3
    assert_same_rows(
        got.select(["domain", "n"]).cast(pa.schema([("domain", pa.string()), ("n", pa.int64())])),
        expected.cast(pa.schema([("domain", pa.string()), ("n", pa.int64())])),
    )
    assert sorted(set(got.column("dp").to_pylist())) <= [0, 1, 2]
    exec_plan = run_plan(LogicalPlan(ctx, rows_counts))
    got = _duck(
        "select domain, sum(n)::bigint as n from t group by domain", t=exec_plan.get_output("rows_counts").to_arrow_table()
    )
    assert sorted(got.to_pylist(), key=repr) == sorted(
        expected.cast(pa.schema([("domain", pa.string()), ("n", pa.int64())])).to_pylist(), key=repr
    )


class PartitionByPathHash(UserDefinedPartitionNode):
    def partition(self, runtime_ctx: RuntimeContext, dataset: DataSet) -> List[DataSet]:
        groups = [[] for _ in range(self.npartitions)]
        for path in dataset.resolved_paths:
            groups[sum(path.encode()) % self.npartitions].append(path)
        return [ParquetDataSet(g, root_dir=None) for g in groups]


def test_user_defined_partition(run_plan, compat_data):
    ctx = Context()
    dataset = _arrow(compat_data)
    parts = PartitionByPathHash(ctx, (DataSourceNode(ctx, dataset),), npartitions=3)
    counts = SqlEngineNode(ctx, (parts,), "select {__data_partition__} as p, count(*) as n from {0}")
    exec_plan = run_plan(LogicalPlan(ctx, counts))
    rows = sorted(exec_plan.final_output.to_arrow_table().to_pylist(), key=lambda r: r["p"])
    expected = [0, 0, 0]
    for path in dataset.resolved_paths:
        expected[sum(path.encode()) % 3] += 100
    assert [r["n"] for r in rows] == expected


def test_user_partitioned_data_source(run_plan, compat_data):
    ctx = Context()
    files = sorted(ParquetDataSet([os.path.join(compat_data["arrow"], "*.parquet")]).resolved_paths)
    partitioned = [ParquetDataSet(files[i::3], root_dir=None) for i in range(3)]
    source = UserPartitionedDataSourceNode(ctx, partitioned, dimension="part")
    other = EvenlyDistributedPartitionNode(ctx, (DataSourceNode(ctx, _arrow(compat_data)),), npartitions=3, dimension="part")
    joined = SqlEngineNode(
        ctx, (source, other), "select {part} as p, (select count(*) from {0}) as n0, (select count(*) from {1}) as n1"
    )
    exec_plan = run_plan(LogicalPlan(ctx, joined))
    rows = sorted(exec_plan.final_output.to_arrow_table().to_pylist(), key=lambda r: r["p"])
    assert [r["n0"] for r in rows] == [400, 300, 300]
    assert [r["n1"] for r in rows] == [400, 300, 300]


def test_partition_info_in_sql_query(run_plan, compat_data):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, _arrow(compat_data)),), npartitions=5)
    info = SqlEngineNode(ctx, (parts,), "select {__data_partition__} as partition_index, count(*) as n from {0}")
    exec_plan = run_plan(LogicalPlan(ctx, info))
    rows = sorted(exec_plan.final_output.to_arrow_table().to_pylist(), key=lambda r: r["partition_index"])
    assert rows == [{"partition_index": i, "n": 200} for i in range(5)]


def test_shuffle_node(run_plan, compat_data):
    ctx = Context()
    source = DataSourceNode(ctx, _arrow(compat_data))
    shuffled = ShuffleNode(ctx, (source,), npartitions=4, data_partition_column="length(url) % 4")
    check = SqlEngineNode(
        ctx, (shuffled,), "select {__data_partition__} as p, min(length(url) % 4) as lo, max(length(url) % 4) as hi from {0}"
    )
    exec_plan = run_plan(LogicalPlan(ctx, check))
    rows = exec_plan.final_output.to_arrow_table().to_pylist()
    assert all(r["lo"] == r["hi"] == r["p"] for r in rows if r["lo"] is not None)


def test_shuffle_key_out_of_range_fails(run_plan):
    from smallpond.logical.dataset import ArrowTableDataSet

    ctx = Context()
    source = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"k": list(range(12))})))
    shuffled = ShuffleNode(ctx, (source,), npartitions=10, data_partition_column="k")
    with pytest.raises(Exception, match="out of range 0-9"):
        run_plan(LogicalPlan(ctx, shuffled))


def test_repeat_partition(run_plan, compat_data):
    ctx = Context()
    parts = DataSetPartitionNode(ctx, (DataSourceNode(ctx, _arrow(compat_data)),), npartitions=2)
    repeated = RepeatPartitionNode(ctx, (parts,), npartitions=3, dimension="copy")
    counts = SqlEngineNode(ctx, (repeated,), "select {__data_partition__} as p, {copy} as c, count(*) as n from {0}")
    exec_plan = run_plan(LogicalPlan(ctx, counts))
    rows = sorted((r["p"], r["c"], r["n"]) for r in exec_plan.final_output.to_arrow_table().to_pylist())
    assert rows == [(p, c, 500) for p in range(2) for c in range(3)]
    assert repeated.num_partitions == 6


def test_dataset_partition_node_with_one_partition_is_broadcast(run_plan, compat_data):
    ctx = Context()
    dataset = _arrow(compat_data)
    main = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=4)
    single = DataSetPartitionNode(ctx, (DataSourceNode(ctx, dataset),), npartitions=1)
    assert isinstance(single, ConsolidateNode) and single.num_partitions == 1
    both = SqlEngineNode(ctx, (main, single), "select (select count(*) from {0}) as n0, (select count(*) from {1}) as n1")
    exec_plan = run_plan(LogicalPlan(ctx, both))
    rows = exec_plan.final_output.to_arrow_table().to_pylist()
    assert len(rows) == 4 and all(r["n1"] == 1000 for r in rows) and sum(r["n0"] for r in rows) == 1000


def test_data_set_partition_node_by_column(run_plan, compat_data):
    ctx = Context()
    hashed = HashPartitionNode(
        ctx, (DataSourceNode(ctx, _arrow(compat_data)),), npartitions=3, hash_columns=["url"], output_name="h"
    )
    exec_plan = run_plan(LogicalPlan(ctx, hashed))
    ctx = Context()
    loaded = DataSetPartitionNode(
        ctx, (DataSourceNode(ctx, exec_plan.get_output("h")),), npartitions=3, data_partition_column="__data_partition__"
    )
    assert isinstance(loaded, LoadPartitionedDataSetNode)
    check = SqlEngineNode(
        ctx,
        (loaded,),
        "select {__data_partition__} as p, count(distinct __data_partition__) as k, min(__data_partition__) as v from {0}",
    )
    rows = run_plan(LogicalPlan(ctx, check)).final_output.to_arrow_table().to_pylist()
    assert all(r["k"] == 1 and r["v"] == r["p"] for r in rows)
    with pytest.raises(AssertionError):
        DataSetPartitionNode(
            ctx, (DataSourceNode(ctx, _arrow(compat_data)),), 3, partition_by_rows=True, data_partition_column="x"
        )
