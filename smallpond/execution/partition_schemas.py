"""The partition types check: a Python node whose partitions typed a column in ways no type holds
unchanged fails the job as soon as its second such partition is done.

A Python ``map`` / ``flat_map`` / ``map_batches`` without ``schema=`` (an Arrow or pandas node
without ``output_schema=``) types each partition's output from its values. When one partition
returns integers and another strings for the same column, nothing downstream can read them as one
column without changing values: a consumer reading its own partition would go on with its own type,
and a ``write_parquet`` would publish files of both types. When a task of such a node is done (run
here, resumed from its commit, or taken from the task cache), the schema of each of its output
files (their Parquet footers) is unified with its node's partitions done before, by
:func:`~smallpond.io.partition_types.unify_partition_schemas`: null with anything, integers with
wider integers or floats, small with large strings are fine; anything else raises
:class:`~smallpond.io.partition_types.PartitionTypesDiffer` from the scheduler's loop, naming the
node, where it was created, the two tasks and their types. Tasks already finished stay committed.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from smallpond.common import logger
from smallpond.execution.sched_state import SchedulerListener
from smallpond.logical.base import node_at
from smallpond.logical.compute import ArrowComputeNode, PythonScriptNode


def free_schema(node) -> bool:
    """Does each task of ``node`` type its output from its own values (Python code whose output
    schema was not given)?"""
    if not isinstance(node, ArrowComputeNode) or getattr(node, "output_schema", None) is not None:
        return False
    return getattr(node, "df_op", None) != "filter"  # a row filter keeps its input's columns


def output_read_by_name(node, inputs) -> bool:
    """Is the output of ``node``'s task over ``inputs`` read by column name (see
    :meth:`~smallpond.logical.dataset_base.DataSet.mark_read_by_name`)? Its columns may then differ
    from another task's of the node: Python code that typed its own output (or wrote its own files),
    or a node over inputs read by name (a partition or ``select *`` keeps each file's columns),
    unless Python code declared its output schema. A SQL node or a partition over files of one
    schema is not: the files its tasks write share their columns, read as the first file's."""
    if isinstance(node, ArrowComputeNode) and node.output_schema is not None:
        return False
    if free_schema(node) or isinstance(node, PythonScriptNode):
        return True
    return any(getattr(ds, "reads_by_name", False) for ds in inputs)


#: at most this many Parquet footers are read at once (on a shared filesystem each read waits on
#: the network; reading one after another made ``schema`` of a frame of many files slow)
FOOTER_READERS = 16


def read_footers(paths: List[str]) -> list:
    """The Arrow schema in each Parquet footer of ``paths``, in their order, read in up to
    :data:`FOOTER_READERS` threads; where a footer cannot be read, the exception reading it raised."""
    import pyarrow.parquet as pq

    def one(path: str):
        try:
            return pq.read_schema(path)
        except Exception as e:
            return e

    if len(paths) <= 1:
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(FOOTER_READERS, len(paths)), thread_name_prefix="smallpond-footers") as pool:
        return list(pool.map(one, paths))


def file_schemas(
    paths: List[str], name: Optional[str] = None, default: str = "", skip_unreadable: bool = False, footers: Optional[list] = None
):
    """``(name, schema)`` of each Parquet file of one partition (``paths``), without metadata;
    ``name`` names the partition (else the task key in the file's metadata, else ``default``), and
    the file too when there are several. Each file's types are its own: a task may write several
    (a stream task one a checkpoint, user code more), and files of one partition typed apart are
    no more one column than two partitions' are. Only the footers are read (:func:`read_footers`,
    unless ``footers`` holds what it returned for ``paths``); the first that cannot be read raises,
    or is left out with ``skip_unreadable`` (the reader will say what is wrong with it)."""
    import os

    from smallpond.io.partition_types import task_of

    out: List[Tuple[str, object]] = []
    for path, schema in zip(paths, read_footers(paths) if footers is None else footers):
        if isinstance(schema, Exception):
            if not skip_unreadable:
                raise schema
            logger.debug("partition types check: cannot read the schema of {}: {}", path, schema)
            continue
        what = name or task_of(schema, default)
        out.append((f"{what} ({os.path.basename(path)})" if len(paths) > 1 else what, schema.remove_metadata()))
    return out


def result_schema(datasets: list, what: str):
    """The one schema of a computed node's output partitions (``datasets``) read as one table, by
    :func:`~smallpond.io.partition_types.unify_partition_schemas` over every file's schema
    (``what`` names the node in the error); None if no partition is plain Parquet to read it from.
    Every partition's footers are read at once (:func:`read_footers`), then taken in order."""
    from smallpond.io.arrow import read_columns_schema
    from smallpond.io.partition_types import task_of, unify_partition_schemas
    from smallpond.logical.dataset import ParquetDataSet

    plain = [
        (i, ds, list(ds.resolved_paths))
        for i, ds in enumerate(datasets)
        if isinstance(ds, ParquetDataSet) and ds.resolved_paths and not ds._has_expressions()
    ]
    whole = [paths for _, ds, paths in plain if not (ds.columns and "*" not in ds.columns)]
    footers = iter(read_footers([p for paths in whole for p in paths]))
    schemas: List[Tuple[str, object]] = []
    for i, ds, paths in plain:
        if ds.columns and "*" not in ds.columns:  # a column the first file lacks: the next file's type
            schema = read_columns_schema(paths, ds.columns)
            schemas.append((task_of(schema, f"partition {i}"), schema.remove_metadata()))
        else:
            mine = [next(footers) for _ in paths]
            schemas.extend(file_schemas(paths, default=f"partition {i}", footers=mine))
    # each partition of a Python map without schema= typed its output on its own (a partition of
    # only None values: a null column): types that widen unchanged unify, others raise (naming the
    # column, the partitions and their types), as in to_arrow()
    return unify_partition_schemas(schemas, what) if schemas else None


def _output_schemas(task, dataset) -> List[Tuple[str, object]]:
    """``(name, schema)`` of every Parquet file of ``task``'s output ([] if it is not Parquet)."""
    from smallpond.logical.dataset import ParquetDataSet

    if not isinstance(dataset, ParquetDataSet):
        return []
    paths = [p for p in getattr(dataset, "paths", None) or [] if isinstance(p, str)]
    return file_schemas(paths, name=task.key, skip_unreadable=True)


class PartitionSchemaCheck(SchedulerListener):
    """Sees every task that is done; :meth:`raise_found` (called by the scheduler's loop) raises
    a difference found in a node the run's targets depend on, :meth:`check_targets` (called when
    a run starts) one found in an earlier run of the job."""

    def __init__(self) -> None:
        self._state = None
        self._partitions: Dict[int, List[Tuple[str, object]]] = {}  # node id -> (task, schema)
        self._keys: Dict[int, Dict[str, list]] = {}  # node id -> its tasks seen, with their files' schemas
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

        schemas = _output_schemas(task, dataset)
        if not schemas:
            return
        keys = self._keys.setdefault(task.node_id, {})
        if task.key in keys:
            if keys[task.key] == [s for _, s in schemas]:
                return  # seen before (resumed in a later run of the session)
            keys.clear()  # run again (the node was invalidated): its partitions are new
            self._partitions.pop(task.node_id, None)
            self._bad.pop(task.node_id, None)
        keys[task.key] = [s for _, s in schemas]
        done = self._partitions.setdefault(task.node_id, [])  # one file of each schema seen
        added = False
        for name, schema in schemas:
            if not any(schema.equals(d) for _, d in done):
                done.append((name, schema))
                added = True
        if not added or len(done) < 2:
            return
        node = task.node
        try:
            unify_partition_schemas(done, node_at(node))
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
