"""Splits by files fixed at plan time: a partition's tasks fingerprinted by the files it reads.

A partitioning by files (``DataSetPartitionNode(ctx, deps, n)``, ``DataFrame.repartition(n)``)
of sources of files hands each partition a group of the sources' files that follows from the
file list alone (and from the producer's seed when ``random_shuffle`` is set). The planner works
the groups out when it plans the job, with the producer's own function
(:func:`~smallpond.execution.ops.structural.split_evenly`), and each partition's consumer task is
fingerprinted by its group (:func:`split_fingerprint`: the dataset's kind and options, each of
its files by path and identity, in order, and what an empty group takes its columns from) instead
of by its producer, whose fingerprint covers every file of the sources. So after one input file
changes, a resumed job reruns only the tasks of the partition holding it and what follows them.
A file added or removed reruns the partitions whose groups it changes: groups are contiguous runs
of the sorted file list, so those after it shift (7 files in 4 partitions are 2+2+2+1; an eighth
file sorted last changes only the last group, one sorted first changes all four). A piece of
files read without ``union_by_name`` is read by the whole set's first file's columns and types
(``ParquetDataSet._split``), so that file's schema (:func:`~smallpond.io.paths.schema_identity`:
its columns' names, types and nesting, in order, from its footer, and its key-value metadata, by
which DuckDB types a column too: a GeoParquet ``geo`` entry makes a WKB column GEOMETRY) is in
every group's fingerprint: a column it loses or retypes, or a new first file, reruns every
partition; a change of its rows only reruns the partition holding it (by its identity), and an
empty partition taking its columns from it. Where its schema cannot be read from the footer, its identity stands in.

The same holds for the shares of one source of files that the producers of a hash or range
partition read (``SplitDataSetTask``, :func:`share_fingerprints`), when they are split by files:
a changed file reruns the producer reading it (and every partition after it, as each reads every
producer), and the other producers are resumed.

Left to the general rule (a task fingerprinted by its inputs' fingerprints, so by every file of
the sources): splits by rows (a file's row count moves every boundary; a hash partition's
producers split rows when a Parquet source has fewer files than producers), a range partition's
sampled split points (a sample of every file), splits by a partition column or by user code,
nested partitionings, and inputs that are not sources of files (a task's output, a literal
table, a query, a source never reused), whose groups are known only once the job runs.
"""

from __future__ import annotations

import copy
import hashlib
from typing import List, Optional, Sequence

from smallpond.execution.ops.structural import (
    DataSourceTask,
    EvenlyDistributedPartitionProducerTask,
    merge_datasets,
    producer_shares,
    split_evenly,
)
from smallpond.execution.task import Task
from smallpond.io.paths import file_identity, schema_identity
from smallpond.logical.dataset import CsvDataSet, DataSet, FileSet, JsonDataSet, ParquetDataSet
from smallpond.logical.partition import EvenlyDistributedPartitionNode

_FILE_KINDS = (ParquetDataSet, CsvDataSet, JsonDataSet, FileSet)


def split_fingerprints(node, inputs: Sequence[Task], producers: Sequence[Task], rt) -> List[Optional[str]]:
    """For each partition of the partition node ``node``, the fingerprint of the files it reads
    when the plan fixes them (see the module docstring), else None: that partition is then
    fingerprinted by its producers, so by all their inputs. ``inputs``: the tasks the producers
    read, in order; ``rt``: the job's runtime context (its random seed)."""
    splits = None
    if len(producers) == 1 and type(producers[0]) is EvenlyDistributedPartitionProducerTask:
        producer = producers[0]
        producer.runtime_ctx = rt  # its seed: the job's and its number, as when it runs
        try:
            splits = planned_file_splits(node, inputs, producer.rand_seed_uint32)
        finally:
            producer.runtime_ctx = None
    if splits is None or len(splits) != node.npartitions:
        return [None] * node.npartitions
    return [split_fingerprint(ds) for ds in splits]


def planned_file_splits(node, inputs: Sequence[Task], seed: int) -> Optional[List[DataSet]]:
    """The datasets the partitions of ``node`` will get, when they are fixed by the plan: ``node``
    splits by files, not nested, and every one of ``inputs`` (the tasks its producer reads, in
    order) is a source of files. None otherwise, or when the split cannot be worked out here (it
    then fails, or not, when the job runs, as it would have). ``seed``: the producer's
    (:attr:`Task.rand_seed_uint32`), which a ``random_shuffle`` draws from."""
    if type(node) is not EvenlyDistributedPartitionNode or node.partition_by_rows or node.nested:
        return None
    ds = _sources(inputs)
    try:
        return None if ds is None else split_evenly(node, ds, seed)
    except Exception:  # noqa: BLE001 - the producer will raise it, naming the node, when it runs
        return None


def share_fingerprints(inputs: Sequence[Task], count: int) -> List[Optional[str]]:
    """For each of the ``count`` shares of ``inputs`` (the tasks of one input partition) that the
    producers of a hash or range partition get (:func:`~smallpond.execution.ops.structural.producer_shares`),
    the fingerprint of its files when the plan fixes them: a split by files of sources of files.
    None for each when it does not (a split by rows: fewer Parquet files than producers)."""
    ds = _sources(inputs)
    if ds is None or (isinstance(ds, ParquetDataSet) and ds.num_files < count):
        return [None] * count
    try:
        shares = producer_shares(ds, count)
    except Exception:  # noqa: BLE001 - the split will raise it when it runs
        return [None] * count
    return [split_fingerprint(d) for d in shares]


def _sources(inputs: Sequence[Task]) -> Optional[DataSet]:
    """The dataset that the tasks ``inputs``, all sources of files, pass on together (as their
    files are listed when planned), or None if any is another task, or one never reused (its
    node could not be fingerprinted: nor can what it passes on be)."""
    datasets = []
    for t in inputs:
        ds = getattr(t.node, "dataset", None) if type(t) is DataSourceTask else None
        if not isinstance(ds, _FILE_KINDS) or ds.fingerprint_code():
            return None
        if str(t.plan_components.get("params", "unreusable:")).startswith("unreusable:"):
            return None
        datasets.append(copy.copy(ds))  # as the source task passes it on
    try:
        return merge_datasets(datasets)
    except Exception:  # noqa: BLE001 - sources of different kinds: the merge raises it when it runs
        return None


def split_fingerprint(ds: DataSet) -> str:
    """What a partition of a split by files reads: the dataset's :meth:`~smallpond.logical.dataset.DataSet.fingerprint`
    (its kind, options and each file's identity, in order), its schema if one is set, and the
    identity of the file an empty group takes its columns from (a file of another partition), and
    the schema of the whole set's first file, by whose columns and types a piece of files read
    without ``union_by_name`` is read (:meth:`~smallpond.logical.dataset_files.ParquetDataSet._split`:
    a column that file loses, or a type it changes, changes every partition's output; its rows
    change none but its own partition's, whose files' identities are in its fingerprint)."""
    h = hashlib.sha256(b"split\x00")
    h.update(ds.fingerprint().encode())
    h.update(b"\x00" + repr(None if ds.schema is None else str(ds.schema)).encode())
    h.update(b"\x00" + repr(getattr(ds, "_first_columns", None)).encode("utf-8", "surrogateescape"))
    first_path = getattr(ds, "_first_path", None)
    if first_path:
        h.update(b"\x00" + schema_identity(first_path).encode("utf-8", "surrogateescape"))
    schema_path = getattr(ds, "_schema_path", None)
    if schema_path:
        h.update(b"\x00" + file_identity(schema_path).encode("utf-8", "surrogateescape"))
    return h.hexdigest()
