"""Output schemas known before anything runs (smallpond.execution.schema): the DuckDB connection
they are bound on."""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa
import pytest

from smallpond.execution import plancheck, schema
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode


def test_binding_opens_one_database_per_process_and_each_use_sees_only_its_own(parquet_files, monkeypatch):
    """A new DuckDB database costs ~20 ms of CPU: the plan check and every schema inference of the
    process bind on cursors of one; what one registers is not seen by another."""
    opened = []
    connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(1) or connect(*a, **k))
    monkeypatch.setattr(schema, "_scratch", {"pid": None, "db": None})
    ctx = Context()
    node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet(parquet_files)),), "select id * 2 as d from {0}")
    assert schema.infer_schema(node, {}).names == ["d"]
    assert schema.infer_schema(node, {}).names == ["d"]  # (a fresh cache: bound again)
    assert plancheck.find_errors([node], threading.Event()) == []
    assert len(opened) == 1
    a, b = schema.scratch_connection(), schema.scratch_connection()
    try:
        a.register("only_a", pa.table({"x": [1]}))
        assert a.execute("select x from only_a").fetchall() == [(1,)]
        with pytest.raises(duckdb.CatalogException):
            b.execute("select x from only_a").fetchall()
    finally:
        a.close()
        b.close()
    assert schema.scratch_connection().execute("select 1").fetchall() == [(1,)]  # closing a cursor keeps the database
