"""Walking a logical plan by node type: upstream's ``LogicalPlanVisitor``.

Scripts written for upstream subclass :class:`LogicalPlanVisitor` to inspect or rewrite a plan
(upstream's ``Optimizer`` is one: :class:`smallpond.logical.optimizer.Optimizer`).
:meth:`LogicalPlanVisitor.visit` calls one ``visit_*`` method per node family, chosen by
``isinstance`` in upstream's order (so a :class:`LimitNode` is a limit, not a SQL node; our
``ArrowStreamNode`` subclasses ``ArrowComputeNode``, so it is tried first, which dispatches every
node as upstream's order did); each method defaults to :meth:`~LogicalPlanVisitor.generic_visit`.
"""

from __future__ import annotations

from typing import Generic, Optional, TypeVar

from smallpond.errors import PlanError
from smallpond.logical.base import Node
from smallpond.logical.compute import ArrowComputeNode, ArrowStreamNode, PythonScriptNode, SqlEngineNode
from smallpond.logical.partition import PartitionNode
from smallpond.logical.structural import (
    ConsolidateNode,
    DataSinkNode,
    DataSourceNode,
    LimitNode,
    ProjectionNode,
    RootNode,
    UnionNode,
)

T = TypeVar("T")

#: (node family, method name), in the order :meth:`LogicalPlanVisitor.visit` tries them
DISPATCH = (
    (DataSourceNode, "visit_data_source_node"),
    (DataSinkNode, "visit_data_sink_node"),
    (RootNode, "visit_root_node"),
    (UnionNode, "visit_union_node"),
    (ConsolidateNode, "visit_consolidate_node"),
    (PartitionNode, "visit_partition_node"),
    (PythonScriptNode, "visit_python_script_node"),
    (ArrowStreamNode, "visit_arrow_stream_node"),
    (ArrowComputeNode, "visit_arrow_compute_node"),
    (LimitNode, "visit_limit_node"),
    (SqlEngineNode, "visit_sql_engine_node"),
    (ProjectionNode, "visit_projection_node"),
)


class LogicalPlanVisitor(Generic[T]):
    """Visit a plan node by node; override the ``visit_*`` methods of the families you handle."""

    def visit(self, node: Node, depth: int = 0) -> T:
        for family, method in DISPATCH:
            if isinstance(node, family):
                return getattr(self, method)(node, depth)
        raise PlanError(
            f"{type(self).__name__}.visit: unknown node type {type(node).__name__} ({node!r} created at "
            f"{getattr(node, 'location', '?')}); a visitor knows {', '.join(f.__name__ for f, _ in DISPATCH)} and their subclasses"
        )

    def generic_visit(self, node: Node, depth: int) -> Optional[T]:
        """Visit ``node``'s inputs (one level deeper); returns None."""
        for dep in node.input_deps:
            self.visit(dep, depth + 1)
        return None

    def visit_data_source_node(self, node: DataSourceNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_data_sink_node(self, node: DataSinkNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_root_node(self, node: RootNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_union_node(self, node: UnionNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_consolidate_node(self, node: ConsolidateNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_partition_node(self, node: PartitionNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_python_script_node(self, node: PythonScriptNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_arrow_compute_node(self, node: ArrowComputeNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_arrow_stream_node(self, node: ArrowStreamNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_limit_node(self, node: LimitNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_sql_engine_node(self, node: SqlEngineNode, depth: int) -> T:
        return self.generic_visit(node, depth)

    def visit_projection_node(self, node: ProjectionNode, depth: int) -> T:
        return self.generic_visit(node, depth)
