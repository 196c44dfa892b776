"""LogicalPlan's visitor, optimizer and graph as upstream scripts use them (reference §2.11)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from smallpond.errors import PlanError
from smallpond.logical.dataset import ParquetDataSet, SqlQueryDataSet
from smallpond.logical.node import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    ConsolidateNode,
    Context,
    DataSetPartitionNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    LimitNode,
    LogicalPlan,
    LogicalPlanVisitor,
    Node,
    PandasComputeNode,
    ProjectionNode,
    PythonScriptNode,
    RootNode,
    SqlEngineNode,
    UnionNode,
)
from smallpond.logical.optimizer import Optimizer


class Recorder(LogicalPlanVisitor[None]):
    """Records which visit_* method each node reached, and at what depth."""

    def __init__(self):
        self.seen = []

    def __getattribute__(self, name):
        if name.startswith("visit_"):

            def record(node, depth):
                self.seen.append((name, node, depth))
                return self.generic_visit(node, depth)

            return record
        return super().__getattribute__(name)


def test_visitor_dispatches_in_upstream_order(tmp_path):
    ctx = Context()
    source = DataSourceNode(ctx, ParquetDataSet(["/no/such/*.parquet"]))
    parts = DataSetPartitionNode(ctx, (source,), npartitions=2)
    limit = LimitNode(ctx, parts, 5)
    sql = SqlEngineNode(ctx, (limit,), "select * from {0}")
    compute = ArrowComputeNode(ctx, (parts,), process_func=lambda rt, t: t[0])
    stream = ArrowStreamNode(ctx, (parts,), process_func=lambda rt, r: iter(()))
    batch = ArrowBatchNode(ctx, (parts,), process_func=lambda rt, t: t[0])
    pandas = PandasComputeNode(ctx, (parts,), process_func=lambda rt, d: d[0])
    script = PythonScriptNode(ctx, (parts,), process_func=lambda rt, i, o: True)
    proj = ProjectionNode(ctx, parts, ["url"])
    cons = ConsolidateNode(ctx, proj, [])
    union = UnionNode(ctx, (sql, compute, stream, batch, pandas, script, cons))
    sink = DataSinkNode(ctx, (union,), str(tmp_path / "out"))
    root = RootNode(ctx, (sink,))
    rec = Recorder()
    assert rec.visit(root) is None
    reached = {(name, node.id) for name, node, _ in rec.seen}
    expect = {
        "visit_root_node": root,
        "visit_data_sink_node": sink,
        "visit_union_node": union,
        "visit_limit_node": limit,  # a LimitNode is a SqlEngineNode: limit is tried first
        "visit_sql_engine_node": sql,
        "visit_arrow_compute_node": compute,
        "visit_python_script_node": script,
        "visit_consolidate_node": cons,
        "visit_projection_node": proj,
        "visit_partition_node": parts,
        "visit_data_source_node": source,
    }
    for name, node in expect.items():
        assert (name, node.id) in reached, name
    for node in (stream, batch):
        assert ("visit_arrow_stream_node", node.id) in reached
    assert ("visit_arrow_compute_node", pandas.id) in reached
    assert {n for n, _, _ in rec.seen} == set(expect) | {"visit_arrow_stream_node"}
    depths = {(name, node.id): depth for name, node, depth in rec.seen}
    assert depths[("visit_root_node", root.id)] == 0 and depths[("visit_union_node", union.id)] == 2
    assert depths[("visit_limit_node", limit.id)] == 4 and depths[("visit_data_source_node", source.id)] == 6

    class Mystery(Node):
        pass

    with pytest.raises(
        PlanError, match=r"Recorder\.visit: unknown node type Mystery \(Mystery-\d+ created at .*test_logical_plan.py:\d+\)"
    ):
        Recorder().visit(Mystery(ctx, (source,)))
    from smallpond.logical.planner import LogicalPlanVisitor as from_planner
    from smallpond.logical.visitor import LogicalPlanVisitor as home

    assert from_planner is LogicalPlanVisitor is home


def test_optimizer_fuses_sql_chains(run_plan):
    ctx = Context()
    source = DataSourceNode(ctx, SqlQueryDataSet("select range as a, range * 10 as b from range(8)"))
    parts = DataSetPartitionNode(ctx, (source,), npartitions=2, partition_by_rows=True)
    filtered = SqlEngineNode(ctx, (parts,), "select * from {0} where (a > 1)")
    mapped = SqlEngineNode(ctx, (filtered,), "select a + b as c, {__data_partition__} as p from {0}")
    opt = Optimizer(exclude_nodes=set())
    fused = opt.visit(mapped)
    assert isinstance(fused, SqlEngineNode) and fused.id == mapped.id and fused.input_deps == (parts,)
    assert fused.sql_queries == ["select a + b as c, {__data_partition__} as p from (select * from {0} where (a > 1))"]
    # the nodes given are not changed, and the optimizer memoizes
    assert mapped.input_deps == (filtered,) and mapped.sql_queries == ["select a + b as c, {__data_partition__} as p from {0}"]
    assert opt.visit(mapped) is fused and isinstance(opt, LogicalPlanVisitor)
    # an excluded node (upstream: already computed) is kept, never fused away
    kept = Optimizer(exclude_nodes={filtered}).visit(mapped)
    assert kept.input_deps == (filtered,) and kept.sql_queries == mapped.sql_queries
    # a global limit is never fused into per-partition SQL (upstream's defect §8.1)
    over_limit = SqlEngineNode(ctx, (LimitNode(ctx, filtered, 3),), "select a from {0}")
    assert isinstance(Optimizer().visit(over_limit).input_deps[0], LimitNode)
    # the optimized plan computes what the plan does
    rows = sorted(run_plan(LogicalPlan(ctx, fused)).final_output.to_arrow_table().to_pylist(), key=lambda r: r["c"])
    assert rows == [{"c": 11 * a, "p": 0 if a < 4 else 1} for a in range(2, 8)]
    assert Optimizer().visit(over_limit).input_deps[0].input_deps[0].id == filtered.id


def test_an_optimizer_subclass_overriding_a_visit_method_is_warned_about():
    """Optimizer applies its rules in one pass, not through the visitor's visit_* methods: a
    subclass overriding one would be silently ignored, so defining it warns, naming the method."""
    with pytest.warns(UserWarning, match=r"overrides visit_sql_engine_node of Optimizer, never called: "):

        class Mine(Optimizer):
            def visit_sql_engine_node(self, node, depth):
                return super().visit_sql_engine_node(node, depth)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Fine(Optimizer):  # overriding visit() itself works, and is not warned about
            def visit(self, node, depth=0):
                return super().visit(node, depth)


def test_optimizer_keeps_partition_nodes_working():
    ctx = Context()
    source = DataSourceNode(ctx, SqlQueryDataSet("select range as a from range(4)"))
    hashed = HashPartitionNode(ctx, (source,), npartitions=2, hash_columns=["a"])
    out = Optimizer().visit(SqlEngineNode(ctx, (hashed,), "select a from {0}"))
    assert out.input_deps[0].id == hashed.id and out.sql_queries == ["select a from {0}"]


def _plan():
    ctx = Context()
    source = DataSourceNode(ctx, SqlQueryDataSet("select 1 as a"))
    return LogicalPlan(ctx, SqlEngineNode(ctx, (source,), "select a from {0}", output_name="named"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_graph_render_takes_graphviz_arguments(tmp_path):
    graph = _plan().graph()
    out = graph.render(filename="plan", directory=str(tmp_path), format="svg", cleanup=True, view=False)
    assert out == str(tmp_path / "plan.svg") and os.listdir(tmp_path) == ["plan.svg"]  # cleanup: DOT text removed
    assert "<svg" in open(out).read() and "named" in open(out).read()
    png = graph.render(str(tmp_path / "again"), format="png")
    assert png == str(tmp_path / "again.png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(tmp_path / "again").read() == graph.source
    assert b"<svg" in graph.pipe(format="svg")
    assert graph.render(outfile=str(tmp_path / "x.svg")) == str(tmp_path / "x.svg")
    assert "<svg" in open(tmp_path / "x.svg").read() and open(tmp_path / "x.gv").read() == graph.source
    # an outfile that is also the DOT source would be read and written by dot at once: refused
    from smallpond.errors import ParameterError

    with pytest.raises(ParameterError, match="is also the DOT source file"):
        graph.render(outfile=str(tmp_path / "same.gv"))
    assert not (tmp_path / "same.gv").exists()


def test_graph_render_without_graphviz(tmp_path):
    """Without ``dot`` on PATH, render keeps the DOT text (cleanup or not), warns and returns None."""
    script = f"""
import sys
sys.path.insert(0, {os.getcwd()!r})
from tests.compat.test_logical_plan import _plan
from smallpond.logical.dot import GraphvizNotFound
graph = _plan().graph()
print(graph.render(filename="plan", directory={str(tmp_path)!r}, format="png", cleanup=True, view=False))
try:
    graph.pipe(format="svg")
except GraphvizNotFound as e:
    print("pipe:", e)
"""
    env = {**os.environ, "PATH": str(tmp_path / "no_bin"), "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "None" and lines[1].startswith("pipe: Digraph.pipe: Graphviz 'dot' not found")
    assert "Graphviz 'dot' not found: wrote" in done.stderr
    assert os.listdir(tmp_path) == ["plan"] and open(tmp_path / "plan").read() == _plan().graph().source
