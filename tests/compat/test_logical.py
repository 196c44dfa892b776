"""Upstream's tests/test_logical.py cases and the logical-layer contract (reference §2)."""

from __future__ import annotations

import inspect
import os
import warnings

import pytest

from smallpond.execution.job import make_runtime_ctx
from smallpond.execution.planner import ExecutionPlan, Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import (
    ArrowComputeNode,
    ConsolidateNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LimitNode,
    LogicalPlan,
    Node,
    PythonScriptNode,
    SqlEngineNode,
    UnionNode,
)


@pytest.fixture
def planner(tmp_path):
    rt = make_runtime_ctx(None, None, str(tmp_path / "root"))
    rt.initialize()
    return Planner(rt)


def test_join_chunkmeta_inodes(planner):
    """A plan over files that do not exist can be planned: paths are not resolved at plan time."""
    ctx = Context()
    chunkmeta = DataSourceNode(ctx, ParquetDataSet(["/no/such/dir/chunkmeta*.parquet"]))
    inodes = DataSourceNode(ctx, ParquetDataSet(["/no/such/dir/inodes*.parquet"]))
    chunkmeta_parts = DataSetPartitionNode(ctx, (chunkmeta,), npartitions=4, data_partition_column="__data_partition__")
    inodes_parts = DataSetPartitionNode(ctx, (inodes,), npartitions=4, data_partition_column="__data_partition__")
    joined = SqlEngineNode(ctx, (chunkmeta_parts, inodes_parts), "select * from {0} join {1} using (inode_id)")
    exec_plan = planner.create_exec_plan(LogicalPlan(ctx, joined))
    assert isinstance(exec_plan, ExecutionPlan)
    assert exec_plan.final_output is None  # nothing ran
    assert exec_plan.final_output_path.endswith("FinalResults")
    assert len(exec_plan.tasks) > 4


def test_partition_dims_not_compatible(planner):
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
    a = HashPartitionNode(ctx, (source,), npartitions=2, hash_columns=["x"], dimension="A")
    b = HashPartitionNode(ctx, (source,), npartitions=2, hash_columns=["x"], dimension="B")
    joined = SqlEngineNode(ctx, (a, b), "select * from {0} join {1} using (x)")
    with pytest.raises(AssertionError):
        planner.create_exec_plan(LogicalPlan(ctx, joined))


def test_npartitions_not_compatible(planner):
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
    a = HashPartitionNode(ctx, (source,), npartitions=3, hash_columns=["x"], dimension="A")
    b = HashPartitionNode(ctx, (source,), npartitions=6, hash_columns=["x"], dimension="A")
    joined = SqlEngineNode(ctx, (a, b), "select * from {0} join {1} using (x)")
    with pytest.raises(AssertionError):
        planner.create_exec_plan(LogicalPlan(ctx, joined))


def test_planning_is_deterministic(tmp_path):
    def build():
        ctx = Context()
        source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
        parts = DataSetPartitionNode(ctx, (source,), npartitions=3)
        return LogicalPlan(ctx, SqlEngineNode(ctx, (parts,), "select * from {0}"))

    keys = []
    for _ in range(2):
        rt = make_runtime_ctx("0b2a2c4e-8e3b-4c1e-9d0a-3f6f9c1d2e10", None, str(tmp_path / "root"))
        rt.initialize()
        keys.append(sorted(Planner(rt).create_exec_plan(build()).tasks))
    assert keys[0] == keys[1]


def test_node_ids_and_repr():
    ctx = Context()
    assert ctx.next_node_id == 0
    a = DataSourceNode(ctx, None)
    b = SqlEngineNode(ctx, (a,), "select * from {0}")
    assert int(a.id) == 1 and int(b.id) == 2 and ctx.next_node_id == 2
    assert repr(b) == "SqlEngineNode-000002" and str(b.id) == "000002"
    assert b.input_deps == (a,) and b.ctx is ctx
    assert b.location.startswith(__file__) and b.location.rsplit(":", 1)[1].isdigit()
    assert a.num_partitions == 1 and a.dataset.empty  # None means an empty dataset


def test_node_parameter_checks():
    ctx = Context()
    source = DataSourceNode(ctx, None)
    for bad in ("-starts-with-dash", "a/b", "quo'te"):
        with pytest.raises(AssertionError):
            SqlEngineNode(ctx, (source,), "select 1", output_name=bad)
    # upstream only checked the first character: names like these worked there
    for ok in ("url-counts", "v1.2", "name_1"):
        assert SqlEngineNode(ctx, (source,), "select 1", output_name=ok).output_name == ok
    with pytest.raises(AssertionError):
        SqlEngineNode(ctx, (source,), "select 1", output_path="relative/path")
    with pytest.raises(AssertionError):
        Node(ctx, ("not a node",))
    with pytest.raises(AssertionError):
        DataSinkNode(ctx, (source,), output_path="/tmp/x", type="no_such_type")
    node = PythonScriptNode(ctx, (source,), cpu_limit=1, gpu_limit=0.5)
    assert node.cpu_limit == 4  # cpu_limit = max(cpu_limit, gpu_limit * 8)
    # deprecated upstream (§2.4): accepted as type="manifest", with a warning naming this line
    with pytest.warns(DeprecationWarning) as caught:
        sink = DataSinkNode(ctx, (source,), output_path="/tmp/x", manifest_only=True)
    line = inspect.currentframe().f_lineno - 1
    assert sink.type == "manifest"
    (w,) = [w for w in caught if "manifest_only" in str(w.message)]
    assert f"DataSinkNode created at {__file__}:{line}" in str(w.message) and 'type="manifest"' in str(w.message)
    assert w.filename == __file__  # attributed to the caller, so Python's default filters show it in scripts
    with pytest.warns(DeprecationWarning, match=r"type='copy' is ignored"):
        assert DataSinkNode(ctx, (source,), output_path="/tmp/x", type="copy", manifest_only=True).type == "manifest"


def test_sql_engine_node_options():
    ctx = Context()
    source = DataSourceNode(ctx, None)
    node = SqlEngineNode(ctx, (source,), ["create temp table t as select * from {0}", "select *\n  from t"])
    assert node.sql_queries == ["create temp table t as select * from {0}", "select *\n  from t"]
    assert "select * from t" in node.oneline_query
    assert node.cpu_limit == 1 and node.memory_limit is None and node.parquet_row_group_size == 122880
    with pytest.warns(Warning):
        SqlEngineNode(ctx, (source,), "select 1", relax_memory_if_oom=True)
    from smallpond.logical.udf import UDFType, udf

    @udf(params=[UDFType.INTEGER], return_type=UDFType.INTEGER)
    def inc(x):
        return x + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        node = SqlEngineNode(ctx, (source,), "select inc(1)", udfs=[inc], cpu_limit=8)
    assert node.cpu_limit == SqlEngineNode.max_udf_cpu_limit and caught
    with pytest.raises(ValueError):
        SqlEngineNode(ctx, (source,), "select 1", udfs=[42])


def test_default_limits_can_be_changed_globally(monkeypatch):
    """Upstream's tests mutate SqlEngineNode.default_cpu_limit / default_memory_limit."""
    monkeypatch.setattr(SqlEngineNode, "default_cpu_limit", 2)
    monkeypatch.setattr(SqlEngineNode, "default_memory_limit", 1 << 30)
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1")
    assert node.cpu_limit == 2 and node.memory_limit == 1 << 30


def test_num_partitions():
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
    parts = EvenlyDistributedPartitionNode(ctx, (source,), npartitions=5)
    nested = HashPartitionNode(ctx, (parts,), npartitions=3, hash_columns=["x"], dimension="inner", nested=True)
    assert parts.num_partitions == 5 and nested.num_partitions == 15
    assert ConsolidateNode(ctx, nested, ["__data_partition__"]).num_partitions == 5
    assert ConsolidateNode(ctx, nested, []).num_partitions == 1
    assert UnionNode(ctx, (parts, parts)).num_partitions == 10
    # §8.5: upstream reported the input's count for a LimitNode; a limit has one partition
    assert LimitNode(ctx, parts, 10).num_partitions == 1
    assert SqlEngineNode(ctx, (nested,), "select * from {0}").num_partitions == 15
    assert DataSetPartitionNode(ctx, (source,), npartitions=1).num_partitions == 1
    with pytest.raises(AssertionError):
        EvenlyDistributedPartitionNode(ctx, (source,), npartitions=3, nested=True)  # nested needs a dimension
    # HashPartitionNode's dimension defaults to its data_partition_column, so nested works without one
    assert HashPartitionNode(ctx, (source,), npartitions=3, hash_columns=["x"], nested=True).num_partitions == 3


def test_logical_plan_explain_and_graph():
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
    parts = DataSetPartitionNode(ctx, (source,), npartitions=2)
    sql = SqlEngineNode(ctx, (parts,), "select * from {0}", output_name="named")
    plan = LogicalPlan(ctx, sql)
    assert plan.root_node is sql and plan.ctx is ctx
    text = plan.explain_str()
    assert str(plan) == text
    for node in (source, parts, sql):
        assert repr(node) in text
    assert set(plan.nodes) == {source.id, parts.id, sql.id}
    assert all(isinstance(k, int) for k in plan.nodes)
    assert repr(sql) in plan.graph().source or str(int(sql.id)) in plan.graph().source


def test_slim_copy_drops_inputs():
    ctx = Context()
    source = DataSourceNode(ctx, None)
    node = ArrowComputeNode(ctx, (source,), process_func=lambda rt, t: t[0])
    slim = node.slim_copy()
    assert slim.input_deps == () and slim.id == node.id and slim.process_func is node.process_func


def test_context_registers_udfs(tmp_path):
    from smallpond.logical.udf import UDFType

    ctx = Context()
    assert ctx.create_function("f", lambda x: x, [UDFType.INTEGER], UDFType.INTEGER) == "f"
    module = tmp_path / "my_udfs.py"
    module.write_text("def create_duckdb_udfs(conn):\n    conn.create_function('twice', lambda x: 2 * x, ['BIGINT'], 'BIGINT')\n")
    name = ctx.create_external_module(str(module))
    assert name in ctx.udfs and "f" in ctx.udfs
    ext = ctx.create_duckdb_extension("/some/dir/x.duckdb_extension")
    assert ext == "x.duckdb_extension" and ext in ctx.udfs


def test_external_udf_module_in_sql(tmp_path, run_plan):
    module = tmp_path / "my_udfs.py"
    module.write_text("def create_duckdb_udfs(conn):\n    conn.create_function('twice', lambda x: 2 * x, ['BIGINT'], 'BIGINT')\n")
    ctx = Context()
    from smallpond.logical.dataset import SqlQueryDataSet

    source = DataSourceNode(ctx, SqlQueryDataSet("select range as x from range(5)"))
    name = ctx.create_external_module(str(module))
    node = SqlEngineNode(ctx, (source,), "select twice(x) as y from {0}", udfs=[name])
    out = run_plan(LogicalPlan(ctx, node)).final_output.to_arrow_table()
    assert sorted(out.column("y").to_pylist()) == [0, 2, 4, 6, 8]
    _ = os
