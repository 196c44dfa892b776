"""The plan size check: a plan with more tasks than the scheduler can hold is refused before any
task is built.

The planner and the scheduler keep every task of a job in memory, about :data:`BYTES_PER_TASK`
each (the 100,000-task scale benchmark peaks at 1.6 GB), so ``repartition(10**9)`` would otherwise
build tasks until the machine runs out of memory. :func:`check_plan_size` counts the tasks each
node will get from the partition counts alone (no task is built: it costs a few operations per
node, not per task) and raises a :class:`~smallpond.errors.PlanError` naming the node with most
tasks, where it was created, the count and the limit when the whole job's count is over the limit:
the scheduler's usable memory divided by :data:`BYTES_PER_TASK` (about 1.5 million tasks on a
24 GB machine). ``SP_MAX_TASKS`` sets another limit (a number of tasks), or removes it (``off``).

A nested partitioning's producers x consumers is also held to the node's
``max_card_of_producers_x_consumers`` (upstream 0.15's 4,096,000) here, before its tasks are built.

The counts are upper bounds of what the planner builds (a partitioning may merge or split its
inputs, which is counted as two tasks per input partition).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from smallpond.common import SWITCH_OFF, env_setting, logger
from smallpond.errors import PlanError
from smallpond.logical.base import Node, node_at, shape_size
from smallpond.logical.node import ConsolidateNode, DataSinkNode, DataSourceNode, LimitNode, PartitionNode, RootNode, UnionNode

#: bytes of the scheduler's memory one task takes, planned and scheduled (measured: 1.6 GB for the
#: 100,000 tasks of ``python -m benchmarks.scale --tasks 100k``)
BYTES_PER_TASK = 16 * 1024
#: the environment variable setting the limit (a number of tasks, or ``off``)
ENV = "SP_MAX_TASKS"


def task_limit(usable_memory: int) -> Optional[int]:
    """The most tasks a job may have (None: no limit): ``SP_MAX_TASKS``, else what
    ``usable_memory`` bytes hold at :data:`BYTES_PER_TASK` each."""
    text = env_setting(ENV)
    if text:
        if text in SWITCH_OFF and text != "0":
            return None
        try:
            value = int(float(text))
            if value > 0:
                return value
        except ValueError:
            pass
        logger.warning("{}={!r} is neither a positive number of tasks nor 'off'; using the memory-based limit", ENV, text)
    return max(1, usable_memory // BYTES_PER_TASK)


def _what(node: Node) -> str:
    n = getattr(node, "npartitions", None)
    return f", for npartitions={n:,}" if isinstance(n, int) else ""


def check_plan_size(nodes: Sequence[Node], planned: Dict[int, list], already: int, usable_memory: int) -> Dict[int, int]:
    """Count the tasks of ``nodes`` (inputs first; those whose ``id()`` is in ``planned`` are
    planned already, with those tasks) and raise :class:`PlanError` if they and the ``already``
    planned tasks of the job are more than :func:`task_limit` allows. Each node's
    ``partition_shape()`` is computed once here (it raises PlanError for incompatible inputs).
    Returns the estimated task count of each new node, by ``id()``."""
    parts: Dict[int, int] = {}  # partitions of each node's output
    counts: Dict[int, int] = {}
    for n in nodes:
        if id(n) in planned:
            parts[id(n)] = len(planned[id(n)])
            continue
        shape = n.partition_shape()
        ins: List[int] = [parts[id(d)] for d in n.input_deps]
        if isinstance(n, UnionNode):
            parts[id(n)], tasks = sum(ins), 0
        elif isinstance(n, PartitionNode):
            parts[id(n)] = out = shape_size(shape)
            if n.nested:
                producers = sum(ins)
                if producers * n.npartitions > n.max_card_of_producers_x_consumers:
                    raise PlanError(
                        f"{node_at(n)}: nested partitioning of {producers:,} input partitions "
                        f"x {n.npartitions:,} is {producers * n.npartitions:,} partitions, more than "
                        f"{n.max_card_of_producers_x_consumers:,}; use fewer partitions"
                    )
            tasks = out + 2 * sum(ins)
        elif isinstance(n, LimitNode):
            parts[id(n)], tasks = 1, 2 * sum(ins) + 1
        elif isinstance(n, (DataSourceNode, DataSinkNode, RootNode)):
            parts[id(n)], tasks = 1, 1
        elif isinstance(n, ConsolidateNode):
            parts[id(n)] = tasks = shape_size(shape)
        else:  # one task per partition of the main input (the one with most partitions)
            parts[id(n)] = tasks = max([1, *ins])
        counts[id(n)] = tasks
    total = already + sum(counts.values())
    limit = task_limit(usable_memory)
    if limit is not None and total > limit:
        worst = max((n for n in nodes if id(n) in counts), key=lambda n: counts[id(n)])
        raise PlanError(
            f"{node_at(worst)}: the job would have about {total:,} tasks "
            f"({counts[id(worst)]:,} of them this node's{_what(worst)}), more than the {limit:,} its scheduler can "
            f"hold in {usable_memory / 2**30:.1f} GB of memory at about {BYTES_PER_TASK // 1024} KB per task; "
            f"use fewer partitions, or set {ENV} to another number of tasks ({ENV}=off removes the limit)"
        )
    return counts
