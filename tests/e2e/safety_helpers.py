"""Helpers of the data-safety scenarios (tests/e2e/test_safety_*.py)."""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq


def snapshot(root: str) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) by relative path, with its bytes."""
    out: Dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def tree(root: str) -> List[str]:
    """Every path under ``root`` (files and folders), relative, sorted."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def manifest(folder: str) -> List[str]:
    with open(os.path.join(folder, ".MANIFEST.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def published_rows(folder: str, column: str) -> List:
    """Values of ``column`` in the Parquet files the folder's manifest lists (sorted)."""
    values = []
    for p in manifest(folder):
        values.extend(pq.read_table(p).column(column).to_pylist())
    return sorted(values)


def fault_count(log_root: str, pattern: str = "InjectedFault") -> int:
    """How many failed attempts the task logs show whose error matches ``pattern``."""
    n = 0
    for path in glob.glob(os.path.join(log_root, "tasks", "*.log")):
        with open(path, errors="replace") as f:
            n += len(re.findall(rf"failed \S+ attempt \d+: {pattern}", f.read()))
    return n


def ids(n: int, start: int = 0) -> pa.Table:
    """A table of one column ``id``: ``start`` .. ``start + n - 1``."""
    return pa.table({"id": list(range(start, start + n))})
