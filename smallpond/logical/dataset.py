"""Datasets: descriptions of data on the shared filesystem (or small literal tables).

A DataSet is a *description*: file paths (globs allowed), column selection and format options.
Tasks exchange DataSets, never the data itself. Each DataSet can render itself as a DuckDB SQL
fragment ``( SELECT ... )`` and can be split into partitions by files or (Parquet) by rows.

This module is the public home of every dataset class (upstream's import path); they live in
:mod:`~smallpond.logical.dataset_base` (the base class), :mod:`~smallpond.logical.dataset_files`
(files: FileSet, CSV, JSON, Parquet) and :mod:`~smallpond.logical.dataset_composite` (SQL
queries, in-memory tables, partitioned sets).

Invariants:

* ``resolved_paths`` is sorted and cached; globs are expanded once.
* An empty dataset always renders valid SQL (typed when its schema is known).
* ``partition_by_files`` always splits by files (it never silently switches to rows).
"""

from __future__ import annotations

from smallpond.logical.dataset_base import _WILDCARD, DataSet
from smallpond.logical.dataset_composite import (
    ArrowTableDataSet,
    PandasDataSet,
    PartitionedDataSet,
    SqlQueryDataSet,
)
from smallpond.logical.dataset_files import CsvDataSet, FileSet, JsonDataSet, ParquetDataSet

__all__ = [
    "ArrowTableDataSet",
    "CsvDataSet",
    "DataSet",
    "FileSet",
    "JsonDataSet",
    "PandasDataSet",
    "ParquetDataSet",
    "PartitionedDataSet",
    "SqlQueryDataSet",
    "_WILDCARD",
]
