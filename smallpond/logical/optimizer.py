"""Optimizer rules over logical nodes. Each rule is ``apply(node, frozen, memo) -> node`` and
returns new nodes instead of changing existing ones, so the user's graph (and what it already
computed) is never disturbed. ``frozen`` holds the ids of nodes already planned (their results
are reused, never fused away); ``memo`` maps a node's id to what the rule made of it, and lives
as long as the session, so a node shared by several DataFrames is optimized into the same copy.

Rules, in order (:data:`RULES`), used by the DataFrame API and the Driver alike:

* :func:`materialize_projections` — a sink whose input's files are read through a projection
  (a ``ProjectionNode``, a source's ``columns=`` or generated columns) publishes the projection's
  result, not those files: a ``select * from {0}`` node is put between them, so its files hold
  exactly the projected columns (a sink lists, links or copies files as they are, and reading
  them back gave every column of the source; ``DataFrame.write_parquet`` does the same).
* :func:`fuse_sql` — a single-input SQL node over another SQL node becomes one SQL node, so a
  ``filter`` followed by a ``map`` runs as one DuckDB query per partition instead of two tasks
  with a Parquet round trip between them. A global ``limit`` is never fused (it must stay
  global), and a node that is already computed is never fused into its consumer (its result is
  reused instead).
* :func:`fuse_sql_into_partition` — a hash partition or shuffle whose input is a single-input SQL
  node read by nothing else runs that SQL itself: one producer per input partition runs the
  query and routes its result, so the data is read and written once instead of twice.

:class:`Optimizer` is upstream's face of the same rules: ``Optimizer(exclude_nodes).visit(node)``.
"""

from __future__ import annotations

import copy
import string
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from smallpond.common import as_subquery
from smallpond.logical.base import Node
from smallpond.logical.compute import SqlEngineNode
from smallpond.logical.node import LimitNode
from smallpond.logical.partition import HashPartitionNode, ShuffleNode
from smallpond.logical.visitor import LogicalPlanVisitor


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def substitute_input(query: str, replacement: str) -> str:
    """Replace the ``{0}`` placeholder of a format-string query by ``replacement`` (itself a
    format string), keeping every other placeholder and escaped brace intact.

    ``replacement`` goes between parentheses as :func:`~smallpond.common.as_subquery` leaves it: a
    trailing semicolon or ``--`` comment of the user's query (which runs as it is alone) would
    otherwise end the statement or swallow the parenthesis and the consumer's SQL after it.

    >>> substitute_input("select * from {0} where a > 1", "select * from {0}; -- all rows")
    'select * from (select * from {0}) where a > 1'
    """
    replacement = as_subquery(replacement)
    out: List[str] = []
    for literal, field, spec, conv in string.Formatter().parse(query):
        out.append(_escape(literal))
        if field is None:
            continue
        if field == "0" and not spec and not conv:
            out.append(f"({replacement})")
        else:
            out.append("{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}")
    return "".join(out)


def same_folder(a: Node, b: Node) -> bool:
    """Whether two nodes were built in one current folder: a relative path in a query means the same
    file in both (a fused node runs in its outer node's, see ``Node.created_cwd``)."""
    return getattr(a, "created_cwd", None) == getattr(b, "created_cwd", None)


def _fusable(parent: Node, child: Node, frozen: Set[int]) -> bool:
    return (
        type(parent) is SqlEngineNode
        and type(child) is SqlEngineNode
        and len(parent.input_deps) == 1
        and len(child.sql_queries) == 1
        and id(child) not in frozen
        and child.output_name is None
        and child.output_path is None
        and child.materialize_output
        and not child.materialize_in_memory
        and not child.batched_processing
        and not parent.batched_processing
        and same_folder(parent, child)
    )


def fuse_sql(node: Node, frozen: Set[int], memo: Dict[int, Node]) -> Node:
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in frozen:
        memo[id(node)] = node
        return node
    deps = tuple(fuse_sql(d, frozen, memo) for d in node.input_deps)
    new = node
    if any(a is not b for a, b in zip(deps, node.input_deps)):
        new = copy.copy(node)
        new.input_deps = deps
    if isinstance(new, SqlEngineNode) and not isinstance(new, LimitNode) and len(new.input_deps) == 1:
        child = new.input_deps[0]
        if _fusable(new, child, frozen):
            fused = copy.copy(new)
            fused.input_deps = child.input_deps
            fused.sql_queries = [substitute_input(q, child.sql_queries[0]) for q in new.sql_queries]
            fused.udfs = list(child.udfs) + list(new.udfs)
            fused.udf_contexts = {**child.udf_contexts, **new.udf_contexts}
            fused.cpu_limit = max(child.cpu_limit, new.cpu_limit)
            fused.gpu_limit = max(child.gpu_limit, new.gpu_limit)
            mems = [m for m in (child.memory_limit, new.memory_limit) if m is not None]
            fused.memory_limit = max(mems) if mems else None
            fused.fused_from = getattr(child, "fused_from", [child]) + [node]
            new = fused
    memo[id(node)] = new
    return new


def _consumer_counts(root: Node) -> Dict[int, int]:
    counts: Dict[int, int] = {}
    seen: Set[int] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for d in n.input_deps:
            counts[id(d)] = counts.get(id(d), 0) + 1
            stack.append(d)
    return counts


def _fusable_into_partition(part: Node, child: Node, frozen: Set[int], consumers: Dict[int, int]) -> bool:
    return (
        type(part) in (HashPartitionNode, ShuffleNode)
        and not part.nested
        and getattr(part, "pre_sql", None) is None
        and not part.use_parquet_writer  # (its producers read Parquet files: the layout it asks for)
        and len(part.input_deps) == 1
        and type(child) is SqlEngineNode
        and consumers.get(id(child), 0) == 1
        and id(child) not in frozen
        and len(child.input_deps) == 1
        and len(child.sql_queries) == 1
        and child.output_name is None
        and child.output_path is None
        and child.materialize_output
        and not child.materialize_in_memory
        and not child.batched_processing
        and not child.udf_contexts
        and child.input_deps[0].num_partitions > 1
        and same_folder(part, child)
    )


def _rewritten(node: Node, frozen: Set[int], memo: Dict, step: Callable[[Node, Tuple[Node, ...]], Node]) -> Node:
    """``node``'s graph rewritten bottom-up: ``step(n, deps)`` gives what ``n`` becomes once its
    inputs became ``deps``; nodes in ``frozen`` are kept, and each node is rewritten once (``memo``)."""

    def visit(n: Node) -> Node:
        if id(n) in memo:
            return memo[id(n)]
        if id(n) in frozen:
            memo[id(n)] = n
            return n
        new = step(n, tuple(visit(d) for d in n.input_deps))
        memo[id(n)] = new
        return new

    return visit(node)


def _with_deps(n: Node, deps: Tuple[Node, ...]) -> Node:
    """``n``, or a copy of it reading ``deps`` where they differ from its inputs."""
    if all(a is b for a, b in zip(deps, n.input_deps)):
        return n
    new = copy.copy(n)
    new.input_deps = deps
    return new


def fuse_sql_into_partition(node: Node, frozen: Set[int], memo: Dict[int, Node]) -> Node:
    consumers = _consumer_counts(node)

    def step(n: Node, deps: Tuple[Node, ...]) -> Node:
        new = _with_deps(n, deps)
        if new.input_deps and _fusable_into_partition(new, new.input_deps[0], frozen, consumers):
            child = new.input_deps[0]
            fused = copy.copy(new)
            fused.input_deps = child.input_deps
            # the producer runs the child's query over each input partition, then partitions it
            fused.pre_sql = child.sql_queries[0]
            fused.cpu_limit = max(child.cpu_limit, new.cpu_limit)
            mems = [m for m in (child.memory_limit, new.memory_limit) if m is not None]
            fused.memory_limit = max(mems) if mems else None
            fused.fused_from = getattr(child, "fused_from", [child]) + [n]
            new = fused
        return new

    return _rewritten(node, frozen, memo, step)


def materialize_projections(node: Node, frozen: Set[int], memo: Dict[int, Node]) -> Node:
    from smallpond.logical.structural import DataSinkNode, projection_of

    def materialized(dep: Node, sink: Node) -> Node:
        key = ("materialized", id(dep))  # (one node for every sink of one input)
        if key not in memo:
            new = SqlEngineNode(dep.ctx, (dep,), "select * from {0}")
            # (errors name the sink's line: the projection's result is what it publishes)
            new.location, new.created_cwd = sink.location, dep.created_cwd
            new.role = f"copy of what {projection_of(dep)!r} projects, for the sink"  # (dep may pass its files on)
            memo[key] = new
        return memo[key]

    def step(n: Node, deps: Tuple[Node, ...]) -> Node:
        if isinstance(n, DataSinkNode):
            deps = tuple(materialized(d, n) if projection_of(d) is not None else d for d in deps)
        return _with_deps(n, deps)

    return _rewritten(node, frozen, memo, step)


RULES: List[Callable] = [materialize_projections, fuse_sql, fuse_sql_into_partition]


def optimize(node: Node, frozen: Set[int], memo: Dict) -> Node:
    """Apply every rule; nodes whose ids are in ``frozen`` (already planned) are kept as they are.

    ``memo`` (kept by the caller across calls) maps the id of each node optimized so far to its
    optimized form; each rule keeps its own memo inside it.
    """
    original = node
    for rule in RULES:
        node = rule(node, frozen, memo.setdefault(rule.__name__, {}))
    memo[id(original)] = node
    return node


def optimized_of(memo: Dict, node: Node) -> Node:
    """What :func:`optimize` (with this ``memo``) made of ``node``, itself if nothing."""
    for rule in RULES:
        node = memo.get(rule.__name__, {}).get(id(node), node)
    return node


class Optimizer(LogicalPlanVisitor[Node]):
    """``Optimizer(exclude_nodes).visit(node)``: ``node`` with the rules (:data:`RULES`) applied, as
    upstream's DataFrame API optimized a plan before running it.

    Nodes in ``exclude_nodes`` (upstream: those already computed) are kept as they are and never
    fused into their consumers. The nodes given are never changed: what a rule rewrites is a new
    node (with the id of the node it replaces); a node no rule touches is returned as it is
    (upstream copied every node). Results are memoized per Optimizer, so visiting a node again,
    or another plan that shares it, gives the same optimized node.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # the rules run as one pass over the plan (optimize()), not node by node through the
        # visitor's methods: an override of one would never be called
        overridden = sorted(
            name for name in vars(cls) if name.startswith("visit_") and getattr(LogicalPlanVisitor, name, None) is not None
        )
        if overridden:
            warnings.warn(
                f"{cls.__module__}.{cls.__qualname__} overrides {', '.join(overridden)} of Optimizer, never "
                "called: Optimizer.visit applies its rules in one pass over the plan. Override "
                "visit() (and call super().visit()), or subclass LogicalPlanVisitor to walk the plan node by node",
                UserWarning,
                stacklevel=2,
            )

    def __init__(self, exclude_nodes: Optional[Iterable[Node]] = None) -> None:
        self.exclude_nodes = set(exclude_nodes or ())
        self._frozen = {id(n) for n in self.exclude_nodes}
        self._memo: Dict = {}
        self._roots: Dict[int, Node] = {}  # the memo is keyed by id(): its nodes must stay alive

    def visit(self, node: Node, depth: int = 0) -> Node:
        self._roots[id(node)] = node
        return optimize(node, self._frozen, self._memo)
