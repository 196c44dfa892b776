"""Saying when a sink publishes files of different columns that a reader of the folder would not
all see.

The engine's files whose columns may differ from task to task (a Python ``map`` without
``schema=`` that returned other columns in another partition, and what is partitioned from them)
are marked read by name (:meth:`~smallpond.logical.dataset_base.DataSet.mark_read_by_name`), so
every engine reader sees every column. Published by a sink (``write_parquet``), they are a user's
files: ``read_parquet(folder)`` reads them as DuckDB reads a list of files, by the first file's
columns, and leaves the other columns out in silence unless ``union_by_name=True``. So after a
publication, for a sink whose result is marked read by name (and only then: the footers are read
for those alone), the columns of its published files are compared, and where they differ one
WARNING names the sink, the user's line that created it, the files' column sets and the columns
some files lack, and says to read them with ``read_parquet(..., union_by_name=True)``. The
manifest stays one path per line (its form is how a publication tells its own manifest from a
user's file), so the mark is not recorded in the folder.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from smallpond.common import logger
from smallpond.execution.partition_schemas import read_footers
from smallpond.logical.base import node_at

#: at most this many files are named for each column set
_SHOWN = 2


def differing_columns(paths: List[str]) -> Optional[Tuple[List[str], Dict[Tuple[str, ...], List[str]]]]:
    """``(columns some files lack, {column names: files with them})`` of the Parquet files
    ``paths`` (their footers only), or None when they all have the same columns (in any order) or
    fewer than two footers can be read."""
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for path, schema in zip(paths, read_footers(paths)):
        if isinstance(schema, Exception):
            continue  # not ours to judge: the reader says what is wrong with it
        groups.setdefault(tuple(schema.names), []).append(path)
    if len({frozenset(names) for names in groups}) < 2:
        return None
    every = set.intersection(*(set(names) for names in groups))
    lacking = sorted({c for names in groups for c in names if c not in every})
    return lacking, groups


def warn_if_columns_differ(node, marked: bool, paths: List[str]) -> bool:
    """Log one WARNING when the files ``paths`` that ``node`` (a sink) published, whose result is
    ``marked`` read by name, differ in their columns; True if it did."""
    paths = [p for p in paths if p.endswith(".parquet")]
    if not marked or len(paths) < 2:
        return False
    found = differing_columns(paths)
    if found is None:
        return False
    lacking, groups = found
    sets = "; ".join(
        f"[{', '.join(names)}] in {', '.join(map(os.path.basename, files[:_SHOWN]))}"
        + (f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else "")
        for names, files in groups.items()
    )
    logger.warning(
        "{}: the files published in {} differ in their columns (a step before the sink gave each partition's output "
        "its own columns, e.g. a Python map without schema=): {}. read_parquet of them reads the first file's columns "
        "and leaves out the others' ({}); read them with read_parquet(..., union_by_name=True).",
        node_at(node),
        node.output_path,
        sets,
        ", ".join(lacking),
    )
    return True
