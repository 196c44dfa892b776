"""Datasets that are not plain lists of files: SQL queries, in-memory tables, partitioned sets.

A :class:`PartitionedDataSet` (what a partition producer outputs: one dataset per partition)
pickles compactly when its partitions are plain Parquet/FileSet datasets that differ only in
their paths (one template, one tuple of paths per partition), which keeps shuffles of thousands
of producers x consumers cheap to ship to workers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional, Sequence

from smallpond.common import DEFAULT_BATCH_SIZE, as_subquery
from smallpond.errors import ParameterError
from smallpond.io.paths import check_local_filesystem
from smallpond.logical.dataset_base import DataSet
from smallpond.logical.dataset_files import FileSet, ParquetDataSet


class SqlQueryDataSet(DataSet):
    """The result of a DuckDB query with no file inputs (``SELECT * FROM range(10)``)."""

    def __init__(self, sql_query: str, query_builder: Optional[Callable[[Any, Any], str]] = None) -> None:
        super().__init__([], root_dir=None)
        self.sql_query = sql_query
        self.query_builder = query_builder

    def _describe(self):
        return (self.sql_query,)

    def fingerprint_code(self) -> tuple:
        # the query that runs is the builder's, whatever ``sql_query`` says
        return () if self.query_builder is None else (self.query_builder,)

    @property
    def empty(self) -> bool:
        return False

    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        sql = self.query_builder(conn, filesystem) if self.query_builder is not None else self.sql_query
        return f"( {as_subquery(sql)} )"


class _InMemoryDataSet(DataSet):
    """Common parts of datasets that wrap an in-memory table."""

    def __init__(self) -> None:
        super().__init__([], root_dir=None)

    def _table(self):
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        return False

    @property
    def num_rows(self) -> int:
        return self._table().num_rows

    def fingerprint(self) -> str:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        t = self._table()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()

    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        if conn is None:
            raise ParameterError(f"{type(self).__name__}.sql_query_fragment needs a DuckDB connection")
        name = f"__table_{id(self):x}"
        conn.register(name, self._table())
        return f"( SELECT {self._column_str} FROM {name} )"

    def to_arrow_table(self, max_workers: int = 16, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_arrow_table")
        return self._table()

    def __repr__(self) -> str:
        t = self._table()
        return f"{type(self).__name__}({t.num_rows} rows, columns {t.column_names})"

    def to_batch_reader(self, batch_size: int = DEFAULT_BATCH_SIZE, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_batch_reader")
        import pyarrow as pa

        t = self._table()
        return pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=batch_size))


class ArrowTableDataSet(_InMemoryDataSet):
    """An in-memory Arrow table (written to Parquet by its source task)."""

    def __init__(self, table) -> None:
        super().__init__()
        self.table = table

    def _table(self):
        return self.table


class PandasDataSet(_InMemoryDataSet):
    """An in-memory pandas DataFrame (written to Parquet by its source task)."""

    def __init__(self, df) -> None:
        super().__init__()
        self.df = df

    def _table(self):
        import pyarrow as pa

        return pa.Table.from_pandas(self.df, preserve_index=False)

    def to_pandas(self):
        return self.df


class PartitionedDataSet(DataSet):
    """A list of datasets, one per partition (the output of a partition producer).

    A shuffle of P producers into C partitions hands the scheduler P x C datasets. When every
    partition is a plain list of files of one kind (what producers write), the object pickles
    compactly, as the per-partition file lists plus one template, and a partition's dataset is
    built when it is first used.
    """

    def __init__(self, datasets: List[DataSet]) -> None:
        super().__init__([], root_dir=None)
        self._datasets: List[Optional[DataSet]] = list(datasets)
        self._compact = None  # (dataset class, template state, per-partition path tuples)

    @property
    def datasets(self) -> List[DataSet]:
        if self._compact is not None:
            self._datasets = [self[i] for i in range(len(self._datasets))]
            self._compact = None
        return self._datasets

    @datasets.setter
    def datasets(self, value: List[DataSet]) -> None:
        self._datasets = list(value)
        self._compact = None

    def __reduce__(self):
        compact = self._compact or _compact_partitions(self._datasets)
        if compact is None:
            return (_rebuild_partitioned, (self._datasets, {k: v for k, v in self.__dict__.items() if k != "_datasets"}))
        return (_partitioned_from_compact, compact)

    def mark_read_by_name(self) -> None:
        self._read_by_name = True
        if self._compact is not None:  # (the shared options of its partitions)
            self._compact[1]["_read_by_name"] = True
        for ds in self._datasets:
            if ds is not None:
                ds.mark_read_by_name()

    def __getitem__(self, i: int) -> DataSet:
        ds = self._datasets[i]
        if ds is None:
            cls, template, paths = self._compact
            # built on each use, not kept: a consumer takes its partition from every producer once,
            # and P x C datasets held in the scheduler would cost more than rebuilding one
            ds = _from_template(cls, template, list(paths[i]))
        return ds

    def __len__(self) -> int:
        return len(self._datasets)

    @staticmethod
    def gather(producers: Sequence["PartitionedDataSet"], index: int) -> Optional[DataSet]:
        """Partition ``index`` of every producer as one dataset, when all are compact file lists of
        one kind and options (the common case of a shuffle): the paths are concatenated, no
        per-producer dataset is built. None when they are not; merge the partitions instead."""
        first = producers[0]._compact if producers else None
        if first is None:
            return None
        cls, template, _ = first
        paths: List[str] = []
        for p in producers:
            c = p._compact
            if c is None or c[0] is not cls or (c[1] is not template and c[1] != template):
                return None
            paths.extend(c[2][index])
        return _from_template(cls, template, paths)

    @property
    def paths(self):
        if self._compact is not None:
            return [p for ps in self._compact[2] for p in sorted(ps)]
        return [p for d in self.datasets for p in d.resolved_paths]

    @paths.setter
    def paths(self, value):
        pass

    @property
    def resolved_paths(self):
        return sorted(self.paths)

    def all_paths(self) -> List[str]:
        """:attr:`paths` in any order: from the compact form, without sorting each partition's
        files (a shuffle producer's output has a partition per consumer)."""
        if self._compact is not None:
            return [p for ps in self._compact[2] for p in ps]
        return self.paths

    @property
    def udfs(self):
        return [u for d in self.datasets for u in d.udfs]

    def _rebase(self, old: str, new: str) -> None:
        for d in self.datasets:
            d._rebase(old, new)

    def _repath(self, mv) -> None:
        for d in self.datasets:
            d._repath(mv)

    def _merge(self, datasets):
        n = len(self.datasets)
        if any(len(d.datasets) != n for d in datasets):
            raise ParameterError("cannot merge partitioned datasets with different partition counts")
        return PartitionedDataSet([DataSet.merge([d.datasets[i] for d in datasets]) for i in range(n)])


def _compact_partitions(datasets: Sequence[DataSet]):
    """(class, template state, per-partition path tuples) if every dataset is a plain list of files
    of one kind with the same options, else None."""
    if not datasets or datasets[0] is None:
        return None
    first = datasets[0]
    cls = type(first)
    if cls not in (ParquetDataSet, FileSet):
        return None
    varying = ("paths", "_resolved_paths", "_num_rows")
    template = {k: v for k, v in first.__dict__.items() if k not in varying}
    # a ``_schema_path`` is fine when every partition has the same one (checked below, as every option)
    if template.get("root_dir") is not None or template.get("_resolved_row_ranges") is not None:
        return None
    for d in datasets:
        if type(d) is not cls or d._resolved_paths is None or d._resolved_paths != sorted(d.paths):
            return None
        state = d.__dict__
        if len(state) != len(first.__dict__) or any(state.get(k) is not v and state.get(k) != v for k, v in template.items()):
            return None
    return (cls, template, [tuple(d.paths) for d in datasets])


def _from_template(cls, template: dict, paths: List[str]) -> DataSet:
    """One partition of a compact form: the shared options, its files, and the state that
    varies per partition (see ``_compact_partitions``) as a fresh dataset has it."""
    ds = cls.__new__(cls)
    ds.__dict__.update(template)
    ds.paths = paths
    ds._resolved_paths = sorted(paths)
    ds._num_rows = None  # counted on first use, per partition
    return ds


def _partitioned_from_compact(cls, template, paths) -> PartitionedDataSet:
    part = PartitionedDataSet([None] * len(paths))
    part._compact = (cls, template, paths)
    return part


def _rebuild_partitioned(datasets, state) -> PartitionedDataSet:
    part = PartitionedDataSet(datasets)
    part.__dict__.update(state)
    return part
