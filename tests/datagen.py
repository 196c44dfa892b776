"""Small, deterministic test data, generated into a directory the caller owns (usually tmp_path).

Every generator takes a ``seed`` so the same call always writes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import string
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq

URL_SCHEMA = {"urlstr": "varchar", "valstr": "varchar"}


def _word(rnd: random.Random, lo: int, hi: int) -> str:
    return "".join(rnd.choices(string.ascii_letters + string.digits, k=rnd.randint(lo, hi)))


def generate_mock_urls(directory: str, nfiles: int = 6, nlines: int = 60, seed: int = 0) -> List[str]:
    """The sort examples' mock URL files (``examples/mock_urls.py``, the one generator of them)."""
    return _examples_mock_urls().generate_mock_urls(directory, nfiles=nfiles, nlines=nlines, seed=seed)


def _examples_mock_urls():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mock_urls.py")
    spec = importlib.util.spec_from_file_location("_smallpond_example_mock_urls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_parquet_files(
    directory: str, nfiles: int = 3, rows_per_file: int = 10, seed: int = 0, prefix: str = "part"
) -> List[str]:
    """Write ``{prefix}{i}.parquet`` files with columns ``id`` (globally unique, increasing),
    ``key`` (0..9) and ``name``; return their paths.
    """
    os.makedirs(directory, exist_ok=True)
    rnd = random.Random(seed)
    paths, next_id = [], 0
    for i in range(nfiles):
        ids = list(range(next_id, next_id + rows_per_file))
        next_id += rows_per_file
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "key": pa.array([rnd.randint(0, 9) for _ in ids], pa.int64()),
                "name": pa.array([_word(rnd, 3, 8) for _ in ids], pa.string()),
            }
        )
        path = os.path.join(directory, f"{prefix}{i}.parquet")
        pq.write_table(table, path)
        paths.append(path)
    return paths


def write_corrupt_parquet(path: str) -> str:
    """A file named ``*.parquet`` whose bytes are not Parquet."""
    with open(path, "wb") as f:
        f.write(b"PAR1 this is not really a parquet file " * 8)
    return path


def parquet_paths_in(directory: str) -> List[str]:
    """The Parquet files directly under ``directory`` (e.g. a DataSinkNode's output_path), sorted."""
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".parquet"))


def read_parquet(paths: List[str]) -> pa.Table:
    """Concatenate Parquet files in the given order (string types normalized)."""
    tables = [pq.read_table(p) for p in paths]
    tables = [t.replace_schema_metadata(None) for t in tables]
    if not tables:
        raise ValueError("no files to read")
    return pa.concat_tables(tables, promote_options="permissive")


def column_chunk_formats(paths: List[str]) -> set:
    """``(codec, has a dictionary page)`` of every column chunk of the given Parquet files."""
    out = set()
    for p in paths:
        md = pq.ParquetFile(p).metadata
        for g in range(md.num_row_groups):
            out |= {
                (md.row_group(g).column(c).compression, md.row_group(g).column(c).has_dictionary_page)
                for c in range(md.num_columns)
            }
    return out


def node_output_files(exec_plan, node) -> List[str]:
    """The files written by ``node``'s tasks in a finished execution plan."""
    return [
        p
        for t in exec_plan.tasks.values()
        if t.node_id == int(node.id) and t.key in exec_plan.results
        for p in exec_plan.results[t.key].resolved_paths
    ]


def rows(table: pa.Table, columns: List[str] = None) -> List[tuple]:
    """The table as a list of tuples (for exact comparisons)."""
    columns = columns or table.column_names
    cols = [table.column(c).to_pylist() for c in columns]
    return list(zip(*cols))


def tree_digest(folder: str) -> Dict[str, str]:
    """Every file under ``folder`` (relative name) with the SHA-256 of its bytes."""
    out = {}
    for root, _dirs, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out
