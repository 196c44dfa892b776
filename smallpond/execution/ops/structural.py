"""Tasks that only rearrange dataset descriptions (and sources that materialize literals).

Apart from :class:`MaterializeSourceTask` and :class:`LoadPartitionedDataSetProducerTask`, these
run inline in the scheduler: they read at most Parquet footers, never data.
"""

from __future__ import annotations

import copy
import os
from typing import List

from smallpond.errors import UserCodeError
from smallpond.execution.task import Task
from smallpond.logical.dataset import (
    ArrowTableDataSet,
    DataSet,
    PandasDataSet,
    ParquetDataSet,
    PartitionedDataSet,
    SqlQueryDataSet,
)


class DataSourceTask(Task):
    """Pass a file dataset through, after checking that its paths exist and that the columns it
    names (``columns=``) are in its files: the job's first task, so a typo fails the job before
    any other task runs, naming the column, the file and the line that built the source."""

    exec_on_scheduler = True
    writes_output = False
    #: the files the planner listed (:meth:`~smallpond.execution.planner.Planner._plan_source`),
    #: which the task's fingerprint and the splits of it that the plan fixes digest; None: listed here
    planned_paths = None

    def run(self, runtime_ctx, inputs, output_dir):
        ds = copy.copy(self.node.dataset)
        missing = ds.missing_paths()
        if missing:
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            raise UserCodeError(f"input path not found: {', '.join(missing[:3])}{more}")
        ds._resolved_paths = None
        if self.planned_paths is not None and ds.resolved_paths != self.planned_paths:
            ds._resolved_paths = _planned_files(self, ds.resolved_paths)
        _ = ds.resolved_paths
        _check_columns(ds)
        return ds


def _planned_files(task: DataSourceTask, listed: List[str]) -> List[str]:
    """The files ``task`` reads when its paths list other files now (``listed``) than when the job
    was planned: the planned ones, which its fingerprint covers (a file matched since is left to
    the next run, whose plan covers it: read now, this run's records would hold it under a
    fingerprint of the files without it); a planned file that is gone fails the task, naming it."""
    from smallpond.common import logger

    planned = list(task.planned_paths)  # (the dataset's list, which the planner shares with the task)
    gone = [p for p in planned if not os.path.exists(p)]
    if gone:
        more = f" (+{len(gone) - 1} more)" if len(gone) > 1 else ""
        raise UserCodeError(
            f"input file {gone[0]}{more} of {task.node_label} was listed when the job was planned and is gone: "
            "rerun the job to plan it with the files there are"
        )
    new = sorted(set(listed) - set(planned))
    if new:
        logger.warning(
            "{}: {} input file(s) appeared after the job was planned ({}{}); this run reads the {} planned, the next run reads them",
            task.node_label,
            len(new),
            new[0],
            ", ..." if len(new) > 1 else "",
            len(planned),
        )
    return planned


def _check_columns(ds: DataSet) -> None:
    """Raise :class:`~smallpond.errors.ColumnNotFoundError` if ``ds`` names columns it lacks.

    Only for a whole source: a projection's task sees one partition, whose files may all lack a
    column that others have (read as nulls there); the plan check binds a projection's columns
    over its whole input instead."""
    missing = ds.missing_columns() if ds.columns else []
    if missing:
        raise ds.columns_error(missing)


class MaterializeSourceTask(Task):
    """Write an in-memory table or a SQL query result to Parquet so later tasks read files."""

    def run(self, runtime_ctx, inputs, output_dir):
        ds = self.node.dataset
        if isinstance(ds, SqlQueryDataSet):
            from smallpond.execution.ops.duckdb import copy_to_parquet, open_connection

            conn = open_connection(self, runtime_ctx)
            try:
                query = f"SELECT * FROM {ds.sql_query_fragment(conn=conn)}"
                copy_to_parquet(self, conn, query, output_dir, "data", per_thread_output=False)
            finally:
                conn.close()
        else:
            from smallpond.io.arrow import dump_to_parquet_files

            table = ds.to_arrow_table()
            dump_to_parquet_files(table, output_dir, "data", max_workers=max(1, self.cpu_limit))
        out = ParquetDataSet.from_files(sorted(os.path.join(output_dir, f) for f in os.listdir(output_dir)))
        return out

    def error_context(self):
        ds = self.node.dataset
        return {"sql": ds.sql_query} if isinstance(ds, SqlQueryDataSet) else {}


def is_literal_dataset(ds: DataSet) -> bool:
    return isinstance(ds, (ArrowTableDataSet, PandasDataSet, SqlQueryDataSet))


class MergeDataSetsTask(Task):
    """Concatenate the inputs' datasets into one."""

    exec_on_scheduler = True
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        return merge_datasets(inputs)


def merge_datasets(inputs: List[DataSet]) -> DataSet:
    if not inputs:
        return ParquetDataSet.from_files([])
    if len(inputs) == 1:
        return inputs[0]
    nonempty = [d for d in inputs if not d.empty] or inputs[:1]
    kinds = {type(d) for d in nonempty}
    if len(kinds) > 1:
        # an empty Parquet placeholder merged with another kind: keep the non-parquet kind
        nonempty = [d for d in nonempty if not isinstance(d, ParquetDataSet)] or nonempty
    merged = DataSet.merge(nonempty)
    if merged.schema is None:
        merged.schema = next((d.schema for d in inputs if d.schema is not None), None)
    return merged


class SplitDataSetTask(Task):
    """Take the i-th of n file groups of the input."""

    exec_on_scheduler = True
    writes_output = False

    def __init__(self, node, task_id, partition_infos, input_keys, index: int, count: int):
        super().__init__(node, task_id, partition_infos, input_keys)
        self.index = index
        self.count = count

    def run(self, runtime_ctx, inputs, output_dir):
        return producer_shares(merge_datasets(inputs), self.count)[self.index]


def producer_shares(ds: DataSet, count: int) -> List[DataSet]:
    """The ``count`` shares of ``ds`` that :class:`SplitDataSetTask` hands the producers of a
    partitioning reading one input partition: by whole files, or by rows when a Parquet dataset
    has fewer files than producers. The planner calls it too (as :func:`split_evenly`)."""
    if isinstance(ds, ParquetDataSet) and ds.num_files < count:
        parts = ds.partition_by_rows(count)  # too few files: split rows instead
    else:
        parts = ds.partition_by_files(count)
    for p in parts:
        p.schema = ds.schema
    return parts


class ProjectionTask(Task):
    exec_on_scheduler = True
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        ds = copy.copy(inputs[0])
        if node.columns != ["*"] or ds.columns is not None:
            ds.columns = list(node.columns)
        if node.generated_columns:
            if not isinstance(ds, ParquetDataSet):
                raise UserCodeError(f"generated_columns {node.generated_columns} need Parquet input, got {type(ds).__name__}")
            ds.generated_columns = list(node.generated_columns)
        if node.union_by_name is not None:
            ds._union_by_name = node.union_by_name
        return ds


class RootTask(Task):
    exec_on_scheduler = True
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        return ParquetDataSet.from_files([])


class EvenlyDistributedPartitionProducerTask(Task):
    exec_on_scheduler = True
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        seed = self.rand_seed_uint32 if runtime_ctx is not None else 0
        return PartitionedDataSet(split_evenly(self.node, merge_datasets(inputs), seed))


def split_evenly(node, ds: DataSet, seed: int) -> List[DataSet]:
    """The datasets an ``EvenlyDistributedPartitionNode``'s producer hands its partitions: ``ds``
    split by rows or by whole files (``seed``: the producer's, for ``random_shuffle``). The planner
    calls it too, for a split by files of sources of files, to fingerprint each partition by the
    files it gets (:mod:`~smallpond.execution.plan_splits`): one function, so the split that is
    fingerprinted is the split that is read."""
    if node.partition_by_rows:
        if not isinstance(ds, ParquetDataSet):
            raise UserCodeError(f"partition_by_rows needs Parquet input, got {type(ds).__name__}")
        parts = ds.partition_by_rows(node.npartitions, node.random_shuffle, seed=seed)
    else:
        parts = ds.partition_by_files(node.npartitions, node.random_shuffle, seed=seed)
    for p in parts:
        p.schema = ds.schema
    return parts


class RepeatPartitionProducerTask(Task):
    exec_on_scheduler = True
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        ds = merge_datasets(inputs)
        return PartitionedDataSet([copy.copy(ds) for _ in range(self.node.npartitions)])


class UserDefinedPartitionProducerTask(Task):
    writes_output = False
    runs_user_python = True

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        parts = node.partition(runtime_ctx, merge_datasets(inputs))
        if not isinstance(parts, (list, tuple)) or len(parts) != node.npartitions:
            got = len(parts) if isinstance(parts, (list, tuple)) else type(parts).__name__
            raise UserCodeError(f"{type(node).__name__}.partition() must return {node.npartitions} datasets, got {got}")
        return PartitionedDataSet(list(parts))


class LoadPartitionedDataSetProducerTask(Task):
    writes_output = False

    def run(self, runtime_ctx, inputs, output_dir):
        node = self.node
        ds = merge_datasets(inputs)
        if not isinstance(ds, ParquetDataSet):
            raise UserCodeError(f"LoadPartitionedDataSetNode needs Parquet input, got {type(ds).__name__}")
        return PartitionedDataSet(
            ds.load_partitioned_datasets(node.npartitions, node.data_partition_column, node.hive_partitioning)
        )


class PartitionConsumerTask(Task):
    """Partition ``index`` of every producer, merged."""

    exec_on_scheduler = True
    writes_output = False

    def __init__(self, node, task_id, partition_infos, input_keys, index: int):
        super().__init__(node, task_id, partition_infos, input_keys)
        self.index = index

    def run(self, runtime_ctx, inputs, output_dir):
        for ds in inputs:
            if not isinstance(ds, PartitionedDataSet):
                raise TypeError(f"{self.key}: expected partitioned input, got {type(ds).__name__}")
        gathered = PartitionedDataSet.gather(inputs, self.index)
        if gathered is not None:
            return gathered
        return merge_datasets([ds[self.index] for ds in inputs])
