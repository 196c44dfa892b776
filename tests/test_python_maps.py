"""Python ``map`` / ``flat_map`` / ``filter`` / ``map_batches`` and Arrow/pandas compute nodes, as
a whole node: what their partitions' outputs add up to (types that differ between partitions),
and what their workers import."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond


@pytest.fixture
def sp(tmp_path):
    with smallpond.init(data_root=str(tmp_path / "root"), num_executors=1) as s:
        yield s


@pytest.fixture
def ten(tmp_path):
    """Two Parquet files of five rows (i: 0..9), each a partition of ``read_parquet``."""
    for k in range(2):
        pq.write_table(pa.table({"i": list(range(k * 5, k * 5 + 5))}), str(tmp_path / f"p{k}.parquet"))
    return str(tmp_path / "p*.parquet")


def _row(r):
    """A row of every plain kind (None in some rows), and whether this worker has imported pandas."""
    i = r["i"]
    odd = i % 2 == 1
    return {
        "i": i,
        "f": None if odd else i / 2,
        "s": None if odd else f"s{i}",
        "b": None if i == 3 else odd,
        "pandas": "pandas" in sys.modules,
        "pid": os.getpid(),
    }


def test_a_pure_python_map_worker_does_not_import_pandas(sp, ten):
    """pyarrow's conversion of Python values imports pandas (its check for pandas objects): ~0.2 s of
    CPU in every worker that runs a Python map, whose function never uses pandas. One worker runs
    every task, so a later task's function sees what the earlier tasks imported."""
    df = sp.read_parquet(ten)
    mapped = df.map(_row).flat_map(lambda r: [dict(r, pandas2="pandas" in sys.modules)])
    kept = mapped.filter(lambda r: "pandas" not in sys.modules)
    rows = kept.map(lambda r: dict(r, pandas3="pandas" in sys.modules)).take_all()
    assert len(rows) == 10, rows  # the filter saw no pandas either
    assert len({r["pid"] for r in rows}) == 1
    assert {(r["pandas"], r["pandas2"], r["pandas3"]) for r in rows} == {(False, False, False)}, rows
    assert [r["s"] for r in rows[:3]] == ["s0", None, "s2"]
    # where the user asks for pandas, it is there
    assert len(kept.map_batches(lambda t: pa.Table.from_pandas(t.to_pandas())).to_pandas()) == 10
