"""Output schemas of nodes, known before anything runs.

:func:`infer_schema` walks a node's inputs down to its sources and computes the Arrow schema its
output will have, without reading any data:

* sources: a Parquet dataset's schema comes from its first file's footer; CSV and JSON from their
  declared columns; in-memory tables from the table; other SQL sources from DuckDB binding the
  query over nothing (``LIMIT 0``);
* SQL nodes: DuckDB binds the node's query over empty tables typed like its inputs, and the
  ``LIMIT 0`` result is written to a temporary Parquet file, so the schema is what a task writes
  (and what ``to_arrow()`` returns);
* partition, sink, limit and projection nodes: their input's schema, plus the partition column a
  hash partition keeps;
* Python nodes: the ``schema=`` given to ``map`` / ``flat_map`` / ``map_batches``, or the
  ``output_schema=`` of an Arrow or pandas node (compute or stream: every output is written with
  it), the input's schema for a row ``filter``; anything else raises :class:`SchemaUnknown` (the
  caller may run the node instead).

Every field is nullable, as results read back are (see ``smallpond.dataframe._nullable``).
"""

from __future__ import annotations

import os
import string
import tempfile
import threading
from typing import Dict, List, Optional

from smallpond.common import DATA_PARTITION_COLUMN_NAME, as_subquery, quote_literal
from smallpond.errors import ColumnNotFoundError, UserCodeError
from smallpond.logical.base import node_at
from smallpond.logical.compute import ArrowComputeNode, SqlEngineNode
from smallpond.logical.dataset import ArrowTableDataSet, CsvDataSet, JsonDataSet, PandasDataSet, ParquetDataSet
from smallpond.logical.node import (
    ConsolidateNode,
    DataSinkNode,
    DataSourceNode,
    HashPartitionNode,
    Node,
    PartitionNode,
    ProjectionNode,
    RangePartitionNode,
)


class SchemaUnknown(Exception):
    """The schema of a node cannot be known without running it; the message says why."""


def _nullable(schema):
    import pyarrow as pa

    return pa.schema([f.with_nullable(True) for f in schema])


_scratch = {"pid": None, "db": None}
_scratch_lock = threading.Lock()


def scratch_connection():
    """A DuckDB connection for binding queries over empty inputs in this process (output schemas
    here, the plan check): a cursor of one in-memory database of the process, opened on first use.

    A new database costs ~20 ms of CPU (``duckdb.connect()``), which a quick start's driver paid
    twice (its plan check, then ``to_pandas``'s schema). A cursor is a connection of its own: the
    empty tables registered on it, and any temporary object, are its own and go with it (close
    it); nothing that outlives it is run on it (a SQL node's query is bound only when it is one
    SELECT, see :mod:`~smallpond.execution.plancheck`), so no use sees another's.
    """
    import duckdb

    with _scratch_lock:
        if _scratch["pid"] != os.getpid():  # a fork's parent's is not its own (a C-level fork)
            _leave_parents_database()
        if _scratch["db"] is None:
            _scratch["db"], _scratch["pid"] = duckdb.connect(), os.getpid()
        return _scratch["db"].cursor()


def _leave_parents_database() -> None:
    """In a forked child: forget the parent's database without ever freeing it. Freeing it joins
    DuckDB's threads, which the child does not have: the child crashed (SIGSEGV) at its exit, or
    hung opening its own, once the parent had bound any query (the database stays open)."""
    db = _scratch["db"]
    if db is not None:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(db))  # (a reference no one drops: never freed)
    _scratch["db"] = _scratch["pid"] = None


def _after_fork_in_child() -> None:
    global _scratch_lock
    _scratch_lock = threading.Lock()  # (a thread of the parent may have held it)
    _leave_parents_database()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def infer_schema(node: Node, cache: Dict[int, object]):
    """The ``pyarrow.Schema`` of ``node``'s output. ``cache`` maps ``id(node)`` to known schemas
    (it is filled in). Raises :class:`SchemaUnknown` when running it is the only way to know."""
    hit = cache.get(id(node))
    if hit is not None:
        return hit
    conn = scratch_connection()
    try:
        return _infer(node, cache, conn)
    finally:
        conn.close()


def _infer(node: Node, cache: Dict[int, object], conn):
    hit = cache.get(id(node))
    if hit is not None:
        return hit
    schema = _nullable(_schema_of(node, cache, conn))
    cache[id(node)] = schema
    return schema


def _input(node: Node, cache, conn, i: int = 0):
    if len(node.input_deps) <= i:
        raise SchemaUnknown(f"{node!r} has no input {i}")
    return _infer(node.input_deps[i], cache, conn)


def _schema_of(node: Node, cache, conn):
    if isinstance(node, DataSourceNode):
        return _source_schema(node, conn)
    if isinstance(node, SqlEngineNode):  # LimitNode too
        return _sql_schema(node, [_infer(d, cache, conn) for d in node.input_deps], conn)
    if isinstance(node, HashPartitionNode):
        schema = _input(node, cache, conn)
        pre_sql = getattr(node, "pre_sql", None)
        if pre_sql is not None:  # fused with the SQL node before it: it partitions that query's result
            schema = _nullable(_describe(conn, render_sql(node, [schema], conn, pre_sql)))
        return _hash_partition_schema(node, schema)
    if isinstance(node, (PartitionNode, DataSinkNode, ConsolidateNode)) and not isinstance(node, RangePartitionNode):
        return _input(node, cache, conn)
    if isinstance(node, ProjectionNode):
        return _projection_schema(node, _input(node, cache, conn), conn)
    if isinstance(node, ArrowComputeNode):  # Arrow/pandas, compute and stream nodes alike
        given = getattr(node, "output_schema", None)
        if given is not None:
            return given
        if getattr(node, "df_op", None) == "filter":
            return _input(node, cache, conn)
        raise SchemaUnknown(f"{node.label} runs a Python function whose output schema was not given (pass schema=)")
    raise SchemaUnknown(f"the output schema of {type(node).__name__} is only known once it runs")


def _describe(conn, sql: str):
    """The Arrow schema of what ``COPY (sql) TO '...parquet'`` writes, from an empty result."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="smallpond-schema-") as d:
        path = os.path.join(d, "schema.parquet")
        try:
            conn.execute(f"COPY (SELECT * FROM ({as_subquery(sql)}) LIMIT 0) TO {quote_literal(path)} (FORMAT parquet)")
        except Exception as e:  # duckdb.Error: a binder error names the column, keep it
            raise SchemaUnknown(f"DuckDB cannot bind the query: {e}") from e
        return pq.read_schema(path).remove_metadata()


def _pandas_column_error(df, error) -> str:
    """Why pyarrow cannot type a pandas frame: the first column it cannot convert (pyarrow's own
    message names none: "Could not convert 'x' with type str: tried to convert to int64")."""
    import pyarrow as pa

    for name in df.columns:
        try:
            pa.Schema.from_pandas(df[[name]], preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            return f"the pandas column {name!r} ({df[name].dtype}) cannot be converted to Arrow: {e}"
    return f"the pandas DataFrame cannot be converted to Arrow: {error}"


def _source_schema(node: DataSourceNode, conn):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smallpond.io.arrow import read_columns_schema

    ds = node.dataset
    if isinstance(ds, ArrowTableDataSet):
        return ds.table.schema.remove_metadata()
    if isinstance(ds, PandasDataSet):
        # the whole frame's: an object column's type is that of its values (of no rows: null)
        try:
            return pa.Schema.from_pandas(ds.df, preserve_index=False).remove_metadata()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise UserCodeError(f"{node_at(node)}: {_pandas_column_error(ds.df, e)}") from e
    if isinstance(ds, ParquetDataSet):
        if ds.empty:
            schema = ds._schema_source()
            if schema is None:
                raise SchemaUnknown(f"{node.label} has no file to read a schema from")
            return schema
        _check_source_columns(node)
        plain = not ds.generated_columns and not ds._has_expressions() and not ds.union_by_name
        if plain:
            if ds.columns and "*" not in ds.columns:  # a column the first file lacks: the next file's type
                return read_columns_schema(ds.resolved_paths, ds.columns).remove_metadata()
            return pq.read_schema(ds.resolved_paths[0]).remove_metadata()
    if isinstance(ds, (CsvDataSet, JsonDataSet)):  # the declared columns; the files are not opened
        _check_source_columns(node)
        from smallpond.logical.dataset_files import declared_columns_sql

        return _describe(conn, f"SELECT {ds._column_str} FROM (SELECT {declared_columns_sql(ds)})")
    if hasattr(ds, "sql_query_fragment"):
        try:
            fragment = ds.sql_query_fragment(conn=conn)
        except NotImplementedError:
            raise SchemaUnknown(f"{type(ds).__name__} cannot be described with SQL") from None
        return _describe(conn, f"SELECT * FROM {fragment}")
    raise SchemaUnknown(f"cannot describe {type(ds).__name__}")


def _check_source_columns(node: DataSourceNode) -> None:
    """A source naming columns its data lacks fails here, before anything runs: the error names
    the columns, the file and the line that built the source (as its task would at run time)."""
    ds = node.dataset
    missing = ds.missing_columns() if ds.columns else []
    if missing:
        raise ColumnNotFoundError(f"{node_at(node)}: {ds.columns_error(missing)}")


def _sql_schema(node: SqlEngineNode, inputs: List[object], conn):
    return _describe(conn, render_sql(node, inputs, conn))


def render_sql(node, inputs: List[object], conn, query: Optional[str] = None) -> str:
    """``node``'s query (or ``query``, run by ``node``) as a task would run it, over empty tables
    (registered on ``conn``) typed like ``inputs``; placeholders that vary per task are 0."""
    from smallpond.execution.ops.duckdb import render_query
    from smallpond.io.arrow import empty_table

    if query is None:
        if node.udf_contexts:
            raise SchemaUnknown(f"{node.label} uses UDFs, which are bound only when it runs")
        if len(node.sql_queries) != 1:
            raise SchemaUnknown(f"{node.label} runs several SQL statements; only the last one's result is known when it runs")
        query = node.sql_queries[0]
    views = []
    for i, schema in enumerate(inputs):
        name = f"__schema_input_{int(node.id)}_{i}"
        conn.register(name, empty_table(schema))  # (Schema.empty_table imports pandas)
        views.append(name)
    fields = {f for _, f, _, _ in string.Formatter().parse(query) if f and not f.isdigit()}
    named: Dict[str, object] = {f: 0 for f in fields}  # partition dimensions, batch index, ...
    named.update(
        rand_seed=0,
        cpu_limit=getattr(node, "cpu_limit", 1),
        memory_limit=getattr(node, "memory_limit", None) or 0,
        output_filename="schema",
        batch_index=0,
        query_index=0,
    )
    return render_query(query, views, named)


def _hash_partition_schema(node: HashPartitionNode, schema):
    import pyarrow as pa

    col = node.data_partition_column or DATA_PARTITION_COLUMN_NAME
    if node.drop_partition_column or col in schema.names:
        return schema
    if node.shuffle_only:  # a computed key (an expression) is not written
        return schema
    return schema.append(pa.field(col, pa.int64()))  # what both hash engines write


def _projection_schema(node: ProjectionNode, schema, conn):
    from smallpond.common import quote_identifier, sql_fragment
    from smallpond.io.arrow import empty_table
    from smallpond.logical.dataset_base import parses_as_select_item

    name = f"__schema_projection_{int(node.id)}"
    conn.register(name, empty_table(schema))
    cols = node.columns if node.columns else ["*"]
    # an item the readers take for a name (no single select item: parses_as_select_item) is one here too
    select = ", ".join(
        c if c == "*" else quote_identifier(c) if c in schema.names or not parses_as_select_item(c) else sql_fragment(c)
        for c in cols
    )
    extra = {"filename": "'' AS filename", "file_row_number": "CAST(0 AS BIGINT) AS file_row_number"}
    gen = [extra[g] for g in (node.generated_columns or []) if g in extra and g not in cols]
    return _describe(conn, f"SELECT {', '.join([select, *gen])} FROM {name}")
