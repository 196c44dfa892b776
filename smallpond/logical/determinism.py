"""Which nodes may write different bytes in two runs of the same plan on the same inputs.

smallpond makes a plan's outputs reproducible: file names and Parquet metadata name neither the
job nor the attempt, the random seed is a constant unless the user sets one, the number of
partition producers is decided by the plan (not the worker count), and a task running DuckDB
with one thread (the default ``cpu_limit=1``) writes its rows in a defined order. What remains is
listed here, and :meth:`LogicalPlan.explain_str` marks each node it applies to:

* DuckDB with more than one thread (``cpu_limit > 1``, or elastic threads when the job turns them
  on): without a final ``ORDER BY`` row order depends on thread timing, and with one, the order of
  rows with equal sort keys does (and, with ``per_thread_output``, which rows land in which
  file); the thread count itself is clamped to the machine's CPUs;
* multi-threaded hash partitioning: row order within each partition;
* SQL reading the clock (``now()``, ``current_timestamp``, ...);
* ``batched_processing`` without ``memory_limit``: the batches follow the memory the task gets;
* user Python (Arrow/pandas/script nodes, user-defined partitioning): deterministic exactly when
  the function is. A function that reads the clock, draws from an unseeded generator (use
  ``runtime_ctx.task.python_random_gen`` / ``numpy_random_gen``, seeded per task) or reads
  anything that is not one of its inputs cannot be made deterministic by the engine;
* a streaming Python node (``map``, ``filter``, ``flat_map``, ``map_batches``, ``ArrowStreamNode``)
  starts a new output file at each time-based checkpoint (``secs_checkpoint_interval``; 180 s
  per CPU by default): the rows are the same, but a partition that runs longer than that is
  written as more files;
* in a session, task numbers follow the order in which frames are built and computed, and they
  name the output files and seed each task's random draws (the job's seed and the task's
  number): the same pipeline computed after another frame writes other file names, and draws
  other numbers. A script run on its own gets the same numbers every time.

The task cache (:mod:`smallpond.execution.cache`) reuses such a node's output like any other:
any output it could have written is a valid one. A task that may draw random numbers (SQL
calling ``random()`` and the like, a random shuffle, a range partition's sample, user Python) is
keyed with its task number too, since its seed is: two such tasks alike in all else are not
served one for the other. ``DataFrame.recompute()`` runs a node again.
"""

from __future__ import annotations

import re
from typing import List

from smallpond.logical.base import Node

_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_CLOCK = re.compile(
    r"\b(now|current_timestamp|current_date|current_time|get_current_time|get_current_timestamp|today|"
    r"localtimestamp|localtime|transaction_timestamp)\b",
    re.IGNORECASE,
)


def nondeterminism(node: Node) -> List[str]:
    """Why ``node``'s output may differ between two runs of the same plan (empty: it does not)."""
    from smallpond.logical.compute import (
        ArrowComputeNode,
        ArrowStreamNode,
        PandasComputeNode,
        PythonScriptNode,
        SqlEngineNode,
    )
    from smallpond.logical.partition import HashPartitionNode, UserDefinedPartitionNode, UserPartitionedDataSourceNode

    reasons: List[str] = []
    threads = int(getattr(node, "cpu_limit", 1) or 1)
    if isinstance(node, SqlEngineNode):
        queries = list(node.sql_queries)
        if threads > 1:
            if node.per_thread_output:
                reasons.append(f"DuckDB with {threads} threads writes per-thread files: which rows land in which file varies")
            elif not _ORDER_BY.search(queries[-1] if queries else ""):
                reasons.append(f"DuckDB with {threads} threads and no final ORDER BY: row order varies")
            else:
                reasons.append(f"DuckDB with {threads} threads: rows with equal sort keys may come out in another order")
        if any(_CLOCK.search(q) for q in queries):
            reasons.append("its SQL reads the clock")
        if getattr(node, "batched_processing", False) and node.memory_limit is None:
            reasons.append("batched_processing without memory_limit: batches follow the memory the task gets")
    elif isinstance(node, HashPartitionNode):
        if threads > 1:
            reasons.append(f"partitioned by {threads} DuckDB threads: row order within partitions varies")
    elif isinstance(node, UserDefinedPartitionNode) and not isinstance(node, UserPartitionedDataSourceNode):
        reasons.append("user Python partition(): deterministic only if the function is")
    elif isinstance(node, (ArrowComputeNode, ArrowStreamNode, PandasComputeNode, PythonScriptNode)):
        reasons.append("user Python: deterministic only if the function is")
    return reasons
