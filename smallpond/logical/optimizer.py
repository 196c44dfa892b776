"""Optimizer rules over logical nodes. Each rule is ``apply(node, ctx) -> node`` and returns new
nodes instead of changing existing ones, so the user's graph (and what it already computed) is
never disturbed.

Rules, in order (:data:`RULES`):

* :func:`fuse_sql` — a single-input SQL node over another SQL node becomes one SQL node, so a
  ``filter`` followed by a ``map`` runs as one DuckDB query per partition instead of two tasks
  with a Parquet round trip between them. A global ``limit`` is never fused (it must stay
  global), and a node that is already computed is never fused into its consumer (its result is
  reused instead).
"""

from __future__ import annotations

import copy
import string
from typing import Callable, Dict, List, Set

from smallpond.logical.base import Node
from smallpond.logical.compute import SqlEngineNode
from smallpond.logical.node import LimitNode


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def substitute_input(query: str, replacement: str) -> str:
    """Replace the ``{0}`` placeholder of a format-string query by ``replacement`` (itself a
    format string), keeping every other placeholder and escaped brace intact."""
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


RULES: List[Callable] = [fuse_sql]


def optimize(node: Node, frozen: Set[int], memo: Dict[int, Node]) -> Node:
    """Apply every rule; nodes whose ids are in ``frozen`` (already planned) are kept as they are."""
    for rule in RULES:
        node = rule(node, frozen, memo)
    return node
