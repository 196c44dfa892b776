"""Logical nodes and the LogicalPlan.

This module is the public home of every node type (``from smallpond.logical.node import *``).
The families live in :mod:`.base`, :mod:`.partition` and :mod:`.compute`; the structural nodes
(sources, sinks, projections, unions, limits) live here.
"""

from __future__ import annotations

from typing import Dict, List

from smallpond.errors import ParameterError
from smallpond.logical.base import Context, Node, NodeId
from smallpond.logical.compute import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    PandasBatchNode,
    PandasComputeNode,
    PythonScriptNode,
    SqlEngineNode,
)
from smallpond.logical.dot import Digraph, dot_graph
from smallpond.logical.dot import partition_count as _count
from smallpond.logical.graph import topological_order
from smallpond.logical.partition import (
    DataSetPartitionNode,
    EvenlyDistributedPartitionNode,
    HashPartitionNode,
    LoadPartitionedDataSetNode,
    PartitionNode,
    RangePartitionNode,
    RepeatPartitionNode,
    ShuffleNode,
    UserDefinedPartitionNode,
    UserPartitionedDataSourceNode,
)
from smallpond.logical.structural import (
    ConsolidateNode,
    DataSinkNode,
    DataSourceNode,
    LimitNode,
    ProjectionNode,
    RootNode,
    UnionNode,
)
from smallpond.logical.visitor import LogicalPlanVisitor

__all__ = [
    "Context",
    "NodeId",
    "Node",
    "DataSourceNode",
    "DataSinkNode",
    "RootNode",
    "ConsolidateNode",
    "UnionNode",
    "ProjectionNode",
    "LimitNode",
    "SqlEngineNode",
    "PythonScriptNode",
    "ArrowComputeNode",
    "ArrowStreamNode",
    "ArrowBatchNode",
    "PandasComputeNode",
    "PandasBatchNode",
    "PartitionNode",
    "EvenlyDistributedPartitionNode",
    "DataSetPartitionNode",
    "HashPartitionNode",
    "ShuffleNode",
    "LoadPartitionedDataSetNode",
    "RepeatPartitionNode",
    "UserDefinedPartitionNode",
    "UserPartitionedDataSourceNode",
    "RangePartitionNode",
    "LogicalPlan",
    "LogicalPlanVisitor",
]


class LogicalPlan:
    """A DAG of nodes ending in ``root_node``."""

    def __init__(self, ctx: Context, root_node: Node) -> None:
        if not isinstance(root_node, Node):
            raise ParameterError(f"LogicalPlan: root_node must be a Node, got {type(root_node).__name__}")
        self.ctx = ctx
        self.root_node = root_node

    @property
    def nodes(self) -> Dict[NodeId, Node]:
        return {n.id: n for n in topological_order([self.root_node], lambda n: n.input_deps)}

    def explain_str(self) -> str:
        """The plan as an indented tree: each node with its partition count, its parameters and
        where it was created; a node whose output may differ between two runs of the plan is
        marked ``[may differ between runs: why]`` (see :mod:`smallpond.logical.determinism`)."""
        from smallpond.logical.determinism import nondeterminism

        lines: List[str] = []
        seen = set()

        def visit(node: Node, depth: int) -> None:
            again = node.id in seen
            seen.add(node.id)
            detail = _node_detail(node)
            if not again:
                why = nondeterminism(node)
                if why:
                    detail += f" [may differ between runs: {'; '.join(why)}]"
            lines.append(
                f"{'  ' * depth}{node.label} [{_count(node)} partition(s)]{detail}"
                + (" (see above)" if again else f"  @ {node.location}")
            )
            if not again:
                for dep in node.input_deps:
                    visit(dep, depth + 1)

        visit(self.root_node, 0)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain_str()

    def graph(self) -> Digraph:
        """The plan as a DOT graph (``.source``); ``.render(filename, directory, format=...)`` also
        draws it when Graphviz is installed (see :mod:`smallpond.logical.dot`)."""
        return dot_graph([self.root_node])

    def to_networkx(self):
        """The plan as a ``networkx.DiGraph`` (edges point from input to consumer)."""
        import networkx as nx

        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.id, node=node)
            for dep in node.input_deps:
                g.add_edge(dep.id, node.id)
        return g


def _node_detail(node: Node) -> str:
    if isinstance(node, LimitNode):
        return f" limit={node.limit}"
    if isinstance(node, SqlEngineNode):
        q = node.oneline_query
        return f" sql={q[:80] + '...' if len(q) > 80 else q!r}"
    if isinstance(node, HashPartitionNode):
        how = (
            "random"
            if node.random_shuffle
            else f"by {node.data_partition_column}"
            if node.shuffle_only
            else f"hash {node.hash_columns}"
        )
        pre = getattr(node, "pre_sql", None)
        if pre is not None:
            q = " ".join(pre.split())
            fused = ", ".join(repr(n) for n in getattr(node, "fused_from", [])[:-1])
            how += f" of sql={q[:80] + '...' if len(q) > 80 else q!r} (fused: {fused}, one pass per input partition)"
        return f" {how}"
    if isinstance(node, DataSourceNode):
        ds = node.dataset
        return f" {ds!r}" + _projected(getattr(ds, "columns", None), getattr(ds, "generated_columns", None))
    if isinstance(node, ProjectionNode):
        return _projected(node.columns, node.generated_columns)
    if isinstance(node, DataSinkNode):
        return f" {node.type} -> {node.output_path}"
    return ""


def _projected(columns, generated_columns) -> str:
    """``columns=`` and ``generated_columns=`` of a projection (a source's or a ProjectionNode's),
    as explain shows them: what the node's readers select, expressions included."""
    text = f" columns={list(columns)!r}" if columns and list(columns) != ["*"] else ""
    return text + (f" generated_columns={list(generated_columns)!r}" if generated_columns else "")
