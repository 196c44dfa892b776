"""Fixtures for the compatibility tests: small data shaped like upstream's ``tests/data`` and
helpers that run a LogicalPlan the way upstream's TestFabric did (its internals are not public).
"""

from __future__ import annotations

import os
import random
import string
import uuid
from typing import Callable, Dict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from tests.datagen import generate_mock_urls


@pytest.fixture(scope="session")
def compat_data(tmp_path_factory) -> Dict[str, str]:
    """Upstream's datasets, scaled down:

    * ``mock_urls/urls{0..9}.tsv``: 10 files x 100 lines ``{url}\\t{base64}``;
    * ``mock_urls/urls{0..9}.parquet``: 10 files x 100 rows (host, url);
    * ``arrow/data{0..9}.parquet``: 10 files x 100 rows (url, domain, date, content: binary).
    """
    root = tmp_path_factory.mktemp("compat_data")
    urls = str(root / "mock_urls")
    tsv = generate_mock_urls(urls, nfiles=10, nlines=100, seed=1)
    for i, path in enumerate(tsv):
        with open(path) as f:
            lines = [line.rstrip("\n").split("\t")[0] for line in f]
        table = pa.table({"host": [u.split("/")[0] for u in lines], "url": lines})
        pq.write_table(table, os.path.join(urls, f"urls{i}.parquet"))
    arrow_dir = root / "arrow"
    arrow_dir.mkdir()
    rnd = random.Random(7)
    for i in range(10):
        rows = []
        for j in range(100):
            domain = f"www.site{rnd.randint(0, 40)}.com"
            path = "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(5, 15)))
            size = rnd.randint(16, 256)
            rows.append(
                {
                    "url": f"https://{domain}/{path}.html",
                    "domain": domain,
                    "date": f"2023-{1 + (i + j) % 12:02d}-{1 + j % 28:02d}",
                    "content": bytes(rnd.getrandbits(8) for _ in range(size)),
                }
            )
        schema = pa.schema([("url", pa.string()), ("domain", pa.string()), ("date", pa.string()), ("content", pa.binary())])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(arrow_dir / f"data{i}.parquet"), row_group_size=50)
    return {"root": str(root), "mock_urls": urls, "arrow": str(arrow_dir)}


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """A DataFrame session shared by the tests of one module (upstream made one per test)."""
    session = smallpond.init(data_root=str(tmp_path_factory.mktemp("sp_root")))
    yield session
    session.shutdown()


@pytest.fixture
def run_plan(tmp_path) -> Callable:
    """``run_plan(plan, num_workers=1, **runtime_ctx_kwargs)``: run a LogicalPlan as a job (what
    upstream's ``TestFabric.execute_plan`` did), return the ExecutionPlan. The runtime context of
    the last run is kept as ``run_plan.runtime_ctx``. One worker by default keeps the suite fast;
    a few tests ask for two."""
    from smallpond.execution.job import make_runtime_ctx, run_job

    data_root = str(tmp_path / "job_data")

    def run(plan, *, job_id=None, num_workers=1, max_fail_count=3, manifest_only_final_results=True, **kwargs):
        kwargs.setdefault("random_seed", 123456)
        rt = make_runtime_ctx(job_id or str(uuid.uuid4()), None, data_root, **kwargs)
        run.runtime_ctx = rt
        return run_job(
            plan,
            rt,
            num_workers=num_workers,
            max_fail_count=max_fail_count,
            manifest_only_final_results=manifest_only_final_results,
        )

    return run


def sorted_rows(table: pa.Table, columns=None):
    """Rows as tuples sorted by every column (upstream's ``_compare_arrow_tables`` order-free check)."""
    columns = columns or table.column_names
    cols = [table.column(c).to_pylist() for c in columns]
    return sorted(zip(*cols), key=repr)


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    """Same shape, same column names, same rows (any order, string/large_string alike)."""
    assert actual.num_rows == expected.num_rows
    assert sorted(actual.column_names) == sorted(expected.column_names)
    cols = sorted(expected.column_names)
    assert sorted_rows(actual, cols) == sorted_rows(expected, cols)
