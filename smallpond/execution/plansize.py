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

From the same counts, :func:`most_tasks_at_once` bounds the tasks a plan can have runnable at once
in workers: a job that knows its plan when it starts forks no more local workers ahead than that.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from smallpond.common import SWITCH_OFF, env_setting, logger
from smallpond.errors import PlanError
from smallpond.logical.base import Node, node_at, shape_size
from smallpond.logical.node import ConsolidateNode, DataSinkNode, DataSourceNode, LimitNode, PartitionNode, RootNode, UnionNode
from smallpond.logical.partition import SINGLE_INPUT_PRODUCERS, HashPartitionNode, RangePartitionNode

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


def _partitions_and_tasks(n: Node, ins: List[int]) -> Tuple[int, int]:
    """(partitions of ``n``'s output, tasks the planner builds for it at most), from the
    partition counts ``ins`` of its inputs; raises PlanError for incompatible partitionings."""
    shape = n.partition_shape()
    if isinstance(n, UnionNode):
        return sum(ins), 0
    if isinstance(n, PartitionNode):
        out = shape_size(shape)
        return out, out + 2 * sum(ins)
    if isinstance(n, LimitNode):
        return 1, 2 * sum(ins) + 1
    if isinstance(n, (DataSourceNode, DataSinkNode, RootNode)):
        return 1, 1
    if isinstance(n, ConsolidateNode):
        return shape_size(shape), shape_size(shape)
    tasks = max([1, *ins])  # one task per partition of the main input (the one with most partitions)
    return tasks, tasks


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
        ins: List[int] = [parts[id(d)] for d in n.input_deps]
        parts[id(n)], counts[id(n)] = _partitions_and_tasks(n, ins)
        if isinstance(n, PartitionNode) and n.nested:
            producers = sum(ins)
            if producers * n.npartitions > n.max_card_of_producers_x_consumers:
                raise PlanError(
                    f"{node_at(n)}: nested partitioning of {producers:,} input partitions "
                    f"x {n.npartitions:,} is {producers * n.npartitions:,} partitions, more than "
                    f"{n.max_card_of_producers_x_consumers:,}; use fewer partitions"
                )
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


def most_tasks_at_once(root: Node) -> int:
    """An upper bound of the attempts a plan of ``root`` can have runnable at once in workers
    (not counting retries and speculative copies), from partition counts alone, or 0 when it
    has no task that runs in a worker: a hint for backends that start workers ahead of the
    plan (:meth:`~smallpond.execution.executors.base.Executor.expect_tasks_at_once`).

    A node's tasks wait for their own input partitions only, so along a chain of nodes a
    partition has one task runnable at a time: a node and its inputs have at most ``max(its
    tasks, the sum of its inputs' bounds)`` runnable at once (an input shared by two nodes is
    counted twice: still a bound). Sources of files, unions and the root rearrange dataset
    descriptions in the scheduler (no worker); a partitioning counts its producers and its
    consumers. Raises PlanError as :func:`check_plan_size` does (incompatible partitionings).
    """
    from smallpond.execution.ops.structural import is_literal_dataset
    from smallpond.logical.graph import topological_order

    parts: Dict[int, int] = {}
    bound: Dict[int, int] = {}
    for n in topological_order([root], lambda x: x.input_deps):
        ins = [parts[id(d)] for d in n.input_deps]
        parts[id(n)], tasks = _partitions_and_tasks(n, ins)
        if isinstance(n, (UnionNode, RootNode)) or (isinstance(n, DataSourceNode) and not is_literal_dataset(n.dataset)):
            tasks = 0
        elif isinstance(n, PartitionNode):
            tasks = max(sum(ins), _producers(n, sum(ins)), parts[id(n)])
        bound[id(n)] = max(tasks, sum(bound[id(d)] for d in n.input_deps))
    return bound[id(root)]


def _producers(n: PartitionNode, num_inputs: int) -> int:
    """The producer tasks the planner builds for partitioning ``n`` of ``num_inputs`` input
    partitions (:meth:`~smallpond.execution.planner.Planner._plan_partition`): a hash or range
    partitioning, neither nested nor fused with the SQL before it, splits its inputs among
    :func:`num_producers` producers (8 for one input partition), which run at once however few
    partitions it makes; the others have one producer per input partition, or one in all."""
    if isinstance(n, (HashPartitionNode, RangePartitionNode)) and not n.nested and getattr(n, "pre_sql", None) is None:
        return num_producers(n, num_inputs)
    return num_inputs


def num_producers(node: PartitionNode, num_inputs: int) -> int:
    """How many producer tasks a (non-nested) data-moving partition node gets: decided by the plan.

    ``num_producers=`` on the node if given; else one per input partition (at most
    ``max_num_producer_tasks``), so a change to one input partition reruns one producer; for a
    single input partition a fixed split of ``default_num_producers`` (8), so the work still
    spreads over workers. Never the number of workers: the producers' files are the partitions'
    files, and the same plan must write the same files whatever the machine.
    """
    explicit = getattr(node, "num_producers", None)
    if explicit:
        return max(1, min(node.max_num_producer_tasks, explicit))
    if num_inputs > 1:
        return max(1, min(node.max_num_producer_tasks, num_inputs))
    return max(1, min(node.max_num_producer_tasks, getattr(node, "default_num_producers", SINGLE_INPUT_PRODUCERS)))
