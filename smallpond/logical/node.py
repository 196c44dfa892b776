"""Logical nodes and the LogicalPlan.

This module is the public home of every node type (``from smallpond.logical.node import *``).
The families live in :mod:`.base`, :mod:`.partition` and :mod:`.compute`; the structural nodes
(sources, sinks, projections, unions, limits) live here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Sequence

from smallpond.errors import ParameterError, PlanError
from smallpond.logical.base import Context, Node, NodeId, Shape, call_site_msg, shape_size
from smallpond.logical.compute import (
    ArrowBatchNode,
    ArrowComputeNode,
    ArrowStreamNode,
    PandasBatchNode,
    PandasComputeNode,
    PythonScriptNode,
    SqlEngineNode,
)
from smallpond.logical.dataset import DataSet, ParquetDataSet
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


class DataSourceNode(Node):
    """A dataset as the start of a plan (one partition). ``None`` means an empty input."""

    def __init__(self, ctx: Context, dataset: Optional[DataSet]) -> None:
        super().__init__(ctx, ())
        if dataset is None:
            dataset = ParquetDataSet([])
        if not isinstance(dataset, DataSet):
            raise ParameterError(self._msg(f"dataset must be a DataSet, got {type(dataset).__name__}"))
        self.dataset = dataset

    def partition_shape(self) -> Shape:
        return ()

    def fingerprint_params(self):
        return {"dataset": self.dataset.fingerprint()}


SINK_TYPES = ("link", "copy", "link_or_copy", "manifest")


class DataSinkNode(Node):
    """Publish the inputs' files into ``output_path``.

    ``type``: ``"link"`` (hard link, else symlink across filesystems), ``"copy"``,
    ``"link_or_copy"`` (hard link, else copy) or ``"manifest"`` (only ``.MANIFEST.txt``).
    The directory is published whole: it is built aside and renamed into place, so a reader
    never sees part of a result. ``.MANIFEST.txt`` lists the published files.
    """

    def __init__(
        self,
        ctx: Context,
        input_deps: Sequence[Node],
        output_path: str,
        type: str = "link",
        manifest_only: bool = False,
        is_final_node: bool = False,
    ) -> None:
        if not isinstance(output_path, str) or not os.path.isabs(output_path):
            raise ParameterError(call_site_msg("DataSinkNode", f"output_path must be an absolute path, got {output_path!r}"))
        super().__init__(ctx, input_deps, None, output_path, 1, 0, None)
        if manifest_only:
            type = "manifest"
        if type not in SINK_TYPES:
            raise ParameterError(self._msg(f"type must be one of {list(SINK_TYPES)}, got {type!r}"))
        if not self.input_deps:
            raise ParameterError(self._msg("a data sink needs at least one input"))
        self.type = type
        self.is_final_node = is_final_node

    def partition_shape(self) -> Shape:
        for d in self.input_deps:
            d.partition_shape()
        return ()


class RootNode(Node):
    """A virtual node that depends on every node that must run."""

    def __init__(self, ctx: Context, input_deps: Sequence[Node]) -> None:
        super().__init__(ctx, input_deps)

    def partition_shape(self) -> Shape:
        for d in self.input_deps:
            d.partition_shape()
        return ()


class ConsolidateNode(Node):
    """Merge partitions, keeping only the given dimensions (no data is moved)."""

    def __init__(self, ctx: Context, input_dep: Node, dimensions: List[str]) -> None:
        super().__init__(ctx, (input_dep,))
        self.dimensions = list(dimensions)

    def partition_shape(self) -> Shape:
        shape = self.input_deps[0].partition_shape()
        dims = [d for d, _ in shape]
        missing = [d for d in self.dimensions if d not in dims]
        if missing:
            raise PlanError(self._msg(f"dimensions {missing} are not among the input's dimensions {dims}"))
        return tuple((d, n) for d, n in shape if d in self.dimensions)


class UnionNode(Node):
    """Concatenate the partitions of several inputs with the same partition dimensions."""

    def __init__(self, ctx: Context, input_deps: Sequence[Node]) -> None:
        super().__init__(ctx, input_deps)
        if not self.input_deps:
            raise ParameterError(self._msg("UnionNode needs at least one input"))

    def partition_shape(self) -> Shape:
        shapes = [d.partition_shape() for d in self.input_deps]
        dims = {tuple(d for d, _ in s) for s in shapes}
        if len(dims) != 1:
            raise PlanError(self._msg(f"all inputs of a union must have the same partition dimensions, got {shapes}"))
        return shapes[0]

    @property
    def num_partitions(self) -> int:
        return sum(d.num_partitions for d in self.input_deps)


class ProjectionNode(Node):
    """Select columns (or DuckDB expressions) and add generated columns, without moving data."""

    def __init__(
        self,
        ctx: Context,
        input_dep: Node,
        columns: Optional[List[str]] = None,
        generated_columns: Optional[List[str]] = None,
        union_by_name: Optional[bool] = None,
    ) -> None:
        super().__init__(ctx, (input_dep,))
        columns = list(columns) if columns is not None else ["*"]
        generated_columns = list(generated_columns or [])
        overlap = set(columns) & set(generated_columns)
        if overlap:
            raise ParameterError(self._msg(f"columns and generated_columns overlap: {sorted(overlap)}"))
        from smallpond.common import GENERATED_COLUMNS

        bad = [c for c in generated_columns if c not in GENERATED_COLUMNS]
        if bad:
            raise ParameterError(self._msg(f"generated_columns must be among {list(GENERATED_COLUMNS)}, got {bad}"))
        self.columns = columns
        self.generated_columns = generated_columns
        self.union_by_name = union_by_name


class LimitNode(SqlEngineNode):
    """Keep the first ``limit`` rows of the whole input (a global limit: one output partition)."""

    def __init__(self, ctx: Context, input_dep: Node, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ParameterError(call_site_msg("LimitNode", f"limit must be a non-negative integer, got {limit!r}"))
        super().__init__(ctx, (input_dep,), f"select * from {{0}} limit {limit}")
        self.limit = limit

    def partition_shape(self) -> Shape:
        self.input_deps[0].partition_shape()
        return ()


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
            from loguru import logger

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
        return f" {how}"
    if isinstance(node, DataSourceNode):
        return f" {node.dataset!r}"
    if isinstance(node, DataSinkNode):
        return f" {node.type} -> {node.output_path}"
    return ""


_ = shape_size
