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


_FORK_AFTER_BINDING = r"""
import os, sys, time
from smallpond.execution import schema
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode

ctx = Context()
node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([sys.argv[1]])),), "select id * 2 as d from {0}")
schema.infer_schema(node, {})  # the process's database is open from now on
for use in (False, True):
    pid = os.fork()
    if pid == 0:
        if use:
            print("child", schema.infer_schema(node, {}).names, flush=True)
        sys.exit(0)  # the interpreter's own exit, as a user's forked child may end
    for _ in range(300):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("status", use, status, flush=True)
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        print("hung", use, flush=True)
"""


def test_a_forked_child_of_a_process_that_bound_a_query_ends_and_binds(parquet_files):
    """The process's database, once open, stays open with DuckDB's threads: a child forked then (a
    user's ``os.fork``, multiprocessing) must neither free it (that crashed the child at its exit,
    SIGSEGV) nor hang binding a query on a database of its own."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_BINDING, parquet_files[0]], capture_output=True, text=True, timeout=120
    ).stdout
    assert out.splitlines() == ["status False 0", "child ['d']", "status True 0"], out


def test_a_projection_item_is_read_in_the_schema_as_the_readers_read_it():
    """The schema of a ProjectionNode pasted an item that is no column as it was written, while
    the readers quote an item that is no single select item (``it's``, a clause of its own): the
    schema (and the plan check, which asks it) took ``a from (select 9 as a) union all select a``
    for a column ``a`` that the tasks then did not find. Both now take it for a name."""
    import duckdb

    from smallpond.execution.schema import SchemaUnknown, _projection_schema
    from smallpond.logical.dataset import ParquetDataSet
    from smallpond.logical.node import Context, DataSourceNode, ProjectionNode

    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(["/nowhere/x.parquet"]))
    schema = pa.schema([("a", pa.int64())])
    for item in ("a from (select 9 as a) union all select a", "it's"):
        with pytest.raises(SchemaUnknown, match="not found"):
            _projection_schema(ProjectionNode(ctx, src, [item]), schema, duckdb.connect())
    kept = _projection_schema(ProjectionNode(ctx, src, ["a", "a + 1 as b"]), schema, duckdb.connect())
    assert kept.names == ["a", "b"]
