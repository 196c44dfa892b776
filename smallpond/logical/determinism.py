"""Which nodes may write different bytes in two runs of the same plan on the same inputs.

smallpond makes a plan's outputs reproducible: file names and Parquet metadata name neither the
job nor the attempt, the random seed is a constant unless the user sets one, the number of
partition producers is decided by the plan (not the worker count), and a task running DuckDB
with one thread (the default ``cpu_limit=1``) writes its rows in a defined order (for the memory
it gets: see spilling below). What remains is listed here, and :meth:`LogicalPlan.explain_str`
marks each node it applies to (spilling aside):

* DuckDB with more than one thread (``cpu_limit > 1``, or elastic threads for ``ORDER BY`` tasks
  when the job turns them on, ``elastic_threads=True``; the default elastic threads go only to
  tasks whose plan and row groups show the bytes cannot change, see
  :mod:`smallpond.execution.ops.elastic`): without a final ``ORDER BY`` row order depends on thread timing, and with one, the order of
  rows with equal sort keys does (and, with ``per_thread_output``, which rows land in which
  file); either way, an aggregate's floating-point sum or average (its last bits) and the order
  inside a ``list()`` do, as partial aggregates are combined in an order that follows the
  threads; each thread draws ``random()`` from a stream of its own, so which row gets which number
  depends on which thread read it (Python UDFs it calls, likewise); the thread count itself is
  clamped to the machine's CPUs;
* multi-threaded hash partitioning: row order within each partition, and with ``random_shuffle``
  (or a ``random()`` key) which partition each row goes to;
* SQL reading the clock (``now()``, ``current_timestamp``, ``uuidv7()``, ...);
* SQL sampling a percentage by ``system`` or ``bernoulli`` (``USING SAMPLE 10%``, ``TABLESAMPLE
  10%``) without a seed: DuckDB draws such a sample from the OS, not from the seed smallpond sets
  (``setseed``), so every run samples other rows. Give it the task's seed:
  ``USING SAMPLE 10% (bernoulli, {rand_seed})`` or ``USING SAMPLE bernoulli(10%) REPEATABLE
  ({rand_seed})``. A reservoir sample without a seed follows the task's seed on one thread;
* ``batched_processing`` without ``memory_limit``: the batches follow the memory the task gets;
* a DuckDB query that spills, even on one thread: the order of rows with equal sort keys, and of
  an aggregate's groups, follows the memory limit the task gets (another machine or worker count,
  a retry with more memory). Measured with DuckDB 2.0.1, one thread: 2M rows with 1000 sort keys
  wrote one file with 512 MiB to 8 GiB and two others with 256 and 128 MiB; a ``group by`` of
  500,000 groups, one file with 128 MiB to 8 GiB and another with 64 MiB. Not marked (any query
  may spill): a node's ``memory_limit`` gives it the same memory everywhere, and ``columns(*)``
  as a sort's last key (ties broken by every column) wrote one file at all five limits;
* user Python (Arrow/pandas/script nodes, user-defined partitioning): deterministic exactly when
  the function is. Each attempt seeds Python's ``random`` and NumPy's global generator
  (``np.random.rand()`` and the like) with the task's seed, and the workers smallpond starts get a
  ``PYTHONHASHSEED`` from the job's seed (so the order of a set of strings is the same in every
  run), unless the user's environment sets one. A function that reads the clock, draws from a
  generator it creates without a seed (``np.random.default_rng()``, ``random.Random()``, torch's;
  use ``runtime_ctx.task.python_random_gen`` / ``numpy_random_gen`` instead, seeded per task),
  or reads anything that is not one of its inputs cannot be made deterministic by the engine. A
  task run in the driver process itself (a job without an executor) iterates sets in that
  process's hash order;
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
#: what more than one DuckDB thread changes besides row order, measured with DuckDB 2.0.1 (a final
#: ORDER BY on unique group keys: ``sum(x)``, ``avg(x)`` of doubles and ``list(id)`` gave 3 results
#: in 3 runs with 2 threads, 1 with one thread; ``count(*)``, ``min(x)`` always 1): partial
#: aggregates are combined in an order that follows the threads
AGGREGATES_VARY = "aggregates (a floating-point sum or avg, list()) may differ"
_CLOCK = re.compile(
    r"\b(now|current_timestamp|current_date|current_time|get_current_time|get_current_timestamp|today|"
    r"localtimestamp|localtime|current_localtimestamp|current_localtime|transaction_timestamp|uuidv7|"
    # (DuckDB's Postgres-compatibility macros: the time the connection, the task's, started)
    r"pg_postmaster_start_time|pg_conf_load_time)\b",
    re.IGNORECASE,
)


def sql_reads_clock(texts) -> bool:
    """True if SQL text might read the clock (``now()``, ``current_date``, ``uuidv7()``, ...): its
    result is then the job's, not a function of its inputs alone."""
    return any(_CLOCK.search(str(t)) for t in texts if t)


_SAMPLE = re.compile(r"\b(?:using\s+sample|tablesample)\b", re.IGNORECASE)
#: where a sample clause ends, at the latest
_AFTER_SAMPLE = re.compile(
    r"\b(?:where|group|order|limit|offset|join|union|except|intersect|having|qualify|window|select|from|on)\b|;",
    re.IGNORECASE,
)
_SEEDED_SAMPLE = re.compile(r"\brepeatable\s*\(|,\s*[-+]?(?:\d+|\{rand_seed\})\s*\)", re.IGNORECASE)
_RESERVOIR = re.compile(r"\breservoir\b|\brows\b", re.IGNORECASE)


def unseeded_percentage_sample(text: str) -> bool:
    """True if SQL ``text`` samples by ``system`` or ``bernoulli`` (a percentage's default) without
    a seed: DuckDB draws that sample from the OS whatever ``setseed`` says (measured, DuckDB 2.0:
    three runs of ``USING SAMPLE 10%`` after the same ``setseed`` gave three samples)."""
    for m in _SAMPLE.finditer(text):
        spec = text[m.end() : m.end() + 120]
        end = _AFTER_SAMPLE.search(spec)
        spec = spec[: end.start()] if end else spec
        if not _SEEDED_SAMPLE.search(spec) and (not _RESERVOIR.search(spec) or re.search(r"system|bernoulli", spec, re.I)):
            return True
    return False


_MAY_DRAW_RANDOM = re.compile(r"rand|sample|uuid|shuffle", re.IGNORECASE)


def sql_may_draw_random(texts) -> bool:
    """True if SQL text might use random numbers (random(), USING SAMPLE, uuid(), ...): such SQL
    runs with the task's seed, and several DuckDB threads draw them in an order of their own."""
    return any(_MAY_DRAW_RANDOM.search(str(t)) for t in texts if t)


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
                reasons.append(f"DuckDB with {threads} threads and no final ORDER BY: row order varies, and {AGGREGATES_VARY}")
            else:
                reasons.append(
                    f"DuckDB with {threads} threads: rows with equal sort keys may come out in another order, and {AGGREGATES_VARY}"
                )
            if sql_may_draw_random(queries) or node.udf_contexts:
                reasons.append(f"DuckDB with {threads} threads: which row gets which random number (or UDF call) varies")
        if any(_CLOCK.search(q) for q in queries):
            reasons.append("its SQL reads the clock")
        if any(unseeded_percentage_sample(q) for q in queries):
            reasons.append(
                "its SQL samples a percentage without a seed: add (bernoulli, {rand_seed}) or REPEATABLE ({rand_seed})"
            )
        if getattr(node, "batched_processing", False) and node.memory_limit is None:
            reasons.append("batched_processing without memory_limit: batches follow the memory the task gets")
    elif isinstance(node, HashPartitionNode):
        if threads > 1:
            reasons.append(f"partitioned by {threads} DuckDB threads: row order within partitions varies")
            if node.random_shuffle or sql_may_draw_random([node.data_partition_column, *node.hash_columns]):
                reasons.append(f"partitioned by {threads} DuckDB threads at random: which partition a row goes to varies")
    elif isinstance(node, UserDefinedPartitionNode) and not isinstance(node, UserPartitionedDataSourceNode):
        reasons.append("user Python partition(): deterministic only if the function is")
    elif isinstance(node, (ArrowComputeNode, ArrowStreamNode, PandasComputeNode, PythonScriptNode)):
        reasons.append("user Python: deterministic only if the function is")
    return reasons
