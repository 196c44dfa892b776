"""One schema for a node's partitions that typed their columns on their own (Python code without
``schema=``): types that widen without changing a value unify, any other difference is an error.

Each task of a Python ``map`` / ``flat_map`` / ``map_batches`` (or an Arrow or pandas node)
without a declared schema types its output from its own values: a partition of only ``None`` has
a null column, one of small integers may come from an ``int32`` column, one may return strings
where another returned integers. Read as one table, the partitions need one type per column.
As Ray Data and Daft do, a type unifies with another when one holds every value of both:
null with anything, integers with wider integers, integers with floats (every value is checked
when cast: 2**60 does not fit a float64 and fails, naming it), floats with wider floats, small
with large strings, binaries and lists, and nested types field by field (pyarrow's ``permissive``
promotion, kept only where :func:`~smallpond.io.arrow.lossless_cast_kind` allows both casts).
Anything else (an integer in one partition and a string in another, a bool and an integer, two
time zones) raises :class:`PartitionTypesDiffer`, naming the column, both partitions and both
types: a value is never cast to a type that would change it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import pyarrow as pa

from smallpond.errors import UserCodeError
from smallpond.io.columns import cast_holding  # (its home: the readers' casts raise with it too)

#: the schema metadata key of the task that wrote a file (every task output carries it)
TASK_KEY_METADATA = b"SMALLPOND:__task_key__"


class PartitionTypesDiffer(UserCodeError):
    """Two partitions of one node's output typed a column in ways no type holds unchanged."""

    def __init__(self, message: str, column: str, first: Tuple[str, pa.DataType], other: Tuple[str, pa.DataType]) -> None:
        super().__init__(message)
        self.column = column
        self.first = first
        self.other = other


def task_of(schema: pa.Schema, default: str) -> str:
    """The key of the task that wrote a file of this schema (its metadata), else ``default``."""
    key = (schema.metadata or {}).get(TASK_KEY_METADATA)
    return key.decode(errors="replace") if key else default


def common_type(a: pa.DataType, b: pa.DataType) -> Optional[pa.DataType]:
    """The type holding every value of ``a`` and of ``b`` unchanged (``a`` if they are equal),
    or None if there is none."""
    from smallpond.io.arrow import lossless_cast_kind

    if a == b:
        return a
    try:
        unified = pa.unify_schemas([pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        return None
    wide = unified.field(0).type
    return wide if lossless_cast_kind(a, wide) and lossless_cast_kind(b, wide) else None


def unify_partition_schemas(schemas: Sequence[Tuple[str, pa.Schema]], what: str) -> pa.Schema:
    """One schema for partitions' ``(name, schema)`` pairs (``name``: the task, or the partition):
    columns in the order first seen (a column one partition lacks is null there), each of the
    :func:`common_type` of its types. ``what`` names the node in the error (its label and where
    it was created). Metadata is dropped."""
    fields: List[pa.Field] = []
    index = {}
    seen = {}  # column -> (partition, type) that set its current type
    for name, schema in schemas:
        for field in schema:
            i = index.get(field.name)
            if i is None:
                index[field.name] = len(fields)
                fields.append(field.with_nullable(True))
                seen[field.name] = (name, field.type)
                continue
            current = fields[i].type
            wide = common_type(current, field.type)
            if wide is None:
                first = seen[field.name]
                raise PartitionTypesDiffer(
                    differ_message(what, field.name, first, (name, field.type)), field.name, first, (name, field.type)
                )
            if wide != current:
                fields[i] = fields[i].with_type(wide)
                if wide == field.type:  # the partition whose type the column now has
                    seen[field.name] = (name, field.type)
    return pa.schema(fields)


def concat_partitions(tables: list, what: str) -> pa.Table:
    """Partitions' tables as one, typed by :func:`unify_partition_schemas`
    (a column a partition lacks is null there); a value that does not fit the unified type (2**60
    in a float64 column) raises, naming the column and the task."""
    names = [task_of(t.schema, f"partition {i}") for i, t in enumerate(tables)]
    target = unify_partition_schemas(list(zip(names, (t.schema for t in tables))), what)
    out = []
    for name, table in zip(names, tables):
        columns = []
        for field in target:
            if field.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, field.type))
                continue
            column = table.column(field.name)
            if column.type != field.type:
                column = cast_holding(
                    column,
                    field.type,
                    f"{what}: column {field.name!r} is {column.type} in {name} and {field.type} in other partitions",
                    "Give the output schema (schema= of map, flat_map and map_batches; output_schema= of an Arrow "
                    "or pandas node).",
                )
            columns.append(column)
        out.append(pa.Table.from_arrays(columns, schema=target))
    return pa.concat_tables(out)


def differ_message(what: str, column: str, first: Tuple[str, pa.DataType], other: Tuple[str, pa.DataType]) -> str:
    return (
        f"{what}: its partitions typed column {column!r} differently: {first[1]} in {first[0]}, {other[1]} in "
        f"{other[0]}, and no type holds both unchanged (so they are not read as one column). Return one type "
        "for the column in every partition, or give the output schema (schema= of map, flat_map and "
        "map_batches; output_schema= of an Arrow or pandas node)."
    )
