"""Logical nodes and the LogicalPlan.

This module is the public home of every node type (``from smallpond.logical.node import *``).
The families live in :mod:`.base`, :mod:`.partition` and :mod:`.compute`; the structural nodes
(sources, sinks, projections, unions, limits) live here.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Dict, List, Optional, Sequence

from smallpond.errors import ParameterError, PlanError
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
]


class _Digraph:
    """A DOT description of a plan; renders to an image only if Graphviz ``dot`` exists."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __str__(self) -> str:
        return self.source

    def render(self, path: str, format: str = "png") -> Optional[str]:
        """Write ``path`` (DOT text) and, if ``dot`` is installed, ``path.format``. Returns the image path or None."""
        with open(path, "w") as f:
            f.write(self.source)
        if shutil.which("dot") is None:
            from smallpond.common import logger

            logger.warning("Graphviz 'dot' not found: wrote {} as DOT text only", path)
            return None
        out = f"{path}.{format}"
        subprocess.run(["dot", f"-T{format}", path, "-o", out], check=True, timeout=60)
        return out


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
        lines: List[str] = []
        seen = set()

        def visit(node: Node, depth: int) -> None:
            again = node.id in seen
            seen.add(node.id)
            detail = _node_detail(node)
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

    def graph(self) -> _Digraph:
        """The plan as DOT text; ``.render(path)`` also draws it when Graphviz is installed."""
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


def dot_graph(roots: Sequence[Node]) -> _Digraph:
    """A DOT description of every node reachable from ``roots``."""
    lines = ["digraph smallpond {", "  rankdir=BT;", "  node [shape=box];"]
    for node in topological_order(list(roots), lambda n: n.input_deps):
        label = f"{node!r}\\n{_count(node)} partition(s)"
        if getattr(node, "df_op", None):
            label += f"\\nDataFrame.{node.df_op}"
        if node.output_name:
            label += f"\\n{node.output_name}"
        lines.append(f'  n{int(node.id)} [label="{label}"];')
        for dep in node.input_deps:
            lines.append(f"  n{int(dep.id)} -> n{int(node.id)};")
    lines.append("}")
    return _Digraph("\n".join(lines))


def _count(node: Node) -> str:
    try:
        return str(node.num_partitions)
    except PlanError:
        return "?"


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
        return f" {node.dataset!r}"
    if isinstance(node, DataSinkNode):
        return f" {node.type} -> {node.output_path}"
    return ""
