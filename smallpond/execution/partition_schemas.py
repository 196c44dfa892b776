"""The partition types check: a Python node whose partitions typed a column in ways no type holds
unchanged fails the job as soon as its second such partition is done.

A Python ``map`` / ``flat_map`` / ``map_batches`` without ``schema=`` (an Arrow or pandas node
without ``output_schema=``) types each partition's output from its values. When one partition
returns integers and another strings for the same column, nothing downstream can read them as one
column without changing values: a consumer reading its own partition would go on with its own type,
and a ``write_parquet`` would publish files of both types. When a task of such a node is done (run
here, resumed from its commit, or taken from the task cache), the schema of its output (one Parquet
footer) is unified with its node's partitions done before, by
:func:`~smallpond.io.partition_types.unify_partition_schemas`: null with anything, integers with
wider integers or floats, small with large strings are fine; anything else raises
:class:`~smallpond.io.partition_types.PartitionTypesDiffer` from the scheduler's loop, naming the
node, where it was created, the two tasks and their types. Tasks already finished stay committed.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from smallpond.common import logger
from smallpond.execution.sched_state import SchedulerListener


def free_schema(node) -> bool:
    """Does each task of ``node`` type its output from its own values (Python code whose output
    schema was not given)?"""
    from smallpond.logical.compute import ArrowComputeNode

    if not isinstance(node, ArrowComputeNode) or getattr(node, "output_schema", None) is not None:
        return False
    return getattr(node, "df_op", None) != "filter"  # a row filter keeps its input's columns


def _output_schema(dataset):
    """The schema of the first Parquet file of a task's output, or None (no file, not Parquet)."""
    import pyarrow.parquet as pq

    from smallpond.logical.dataset import ParquetDataSet

    if not isinstance(dataset, ParquetDataSet):
        return None
    paths = [p for p in getattr(dataset, "paths", None) or [] if isinstance(p, str)]
    if not paths:
        return None
    try:
        return pq.read_schema(paths[0])
    except Exception as e:  # the reader will say what is wrong with the file
        logger.debug("partition types check: cannot read the schema of {}: {}", paths[0], e)
        return None


class PartitionSchemaCheck(SchedulerListener):
    """Sees every task that is done; :meth:`raise_found` (called by the scheduler's loop) raises
    a difference found in a node the run's targets depend on, :meth:`check_targets` (called when
    a run starts) one found in an earlier run of the job."""

    def __init__(self) -> None:
        self._state = None
        self._partitions: Dict[int, List[Tuple[str, object]]] = {}  # node id -> (task, schema)
        self._keys: Dict[int, Dict[str, object]] = {}  # node id -> its tasks seen, with their schemas
        self._bad: Dict[int, BaseException] = {}  # node id -> the difference found in its partitions
        self._fresh = False  # a difference found since the loop last looked

    def on_start(self, state) -> None:
        self._state = state

    def on_resumed(self, task, record: dict) -> None:
        self._saw(task, record.get("dataset"))

    def on_reused(self, task, entry) -> None:
        if self._state is not None:
            self._saw(task, self._state.done.get(task.key))

    def on_completion(self, task, completion, decision) -> None:
        if completion.ok:
            self._saw(task, completion.dataset)

    def _saw(self, task, dataset) -> None:
        if dataset is None or not free_schema(task.node):
            return
        from smallpond.io.partition_types import PartitionTypesDiffer, unify_partition_schemas

        schema = _output_schema(dataset)
        if schema is None:
            return
        schema = schema.remove_metadata()
        keys = self._keys.setdefault(task.node_id, {})
        if task.key in keys:
            if keys[task.key].equals(schema):
                return  # seen before (resumed in a later run of the session)
            keys.clear()  # run again (the node was invalidated): its partitions are new
            self._partitions.pop(task.node_id, None)
            self._bad.pop(task.node_id, None)
        keys[task.key] = schema
        done = self._partitions.setdefault(task.node_id, [])  # one task of each schema seen
        if any(schema.equals(s) for _, s in done):
            return
        done.append((task.key, schema))
        if len(done) < 2:
            return
        node = task.node
        try:
            unify_partition_schemas(done, f"{node.label} created at {node.location}")
        except PartitionTypesDiffer as e:
            self._bad[task.node_id] = e
            self._fresh = True

    def check_targets(self, state, target_keys) -> None:
        """Raise the difference found in an earlier run of this job (a session's) in a node that
        ``target_keys`` depend on: its tasks are done, so this run would not see them again, and
        its consumers would read, or publish, partitions of both types."""
        if not self._bad:
            return
        todo, seen = list(target_keys), set()
        while todo:
            key = todo.pop()
            task = state.tasks.get(key)
            if key in seen or task is None:
                continue
            seen.add(key)
            if task.node_id in self._bad:
                raise self._bad[task.node_id]
            todo.extend(task.input_keys)

    def raise_found(self, state, target_keys) -> None:
        """Raise a difference found since the last call, in a node ``target_keys`` depend on."""
        if self._fresh:
            self._fresh = False
            self.check_targets(state, target_keys)
