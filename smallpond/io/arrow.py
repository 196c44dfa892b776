"""Parquet and Arrow helpers: row ranges, batch readers with exact batch sizes, writers.

Every reader here accepts either plain paths or :class:`RowRange` objects, so a partition that
covers part of a file is read without touching the rest.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from smallpond.common import DEFAULT_BATCH_SIZE, DEFAULT_ROW_GROUP_BYTES, DEFAULT_ROW_GROUP_SIZE, GB
from smallpond.errors import ColumnNotFoundError, UserCodeError, columns_not_found
from smallpond.io.columns import bind_columns, cast_read_column, lacks_first_files_columns  # (readers bind with it)
from smallpond.io.parquet import ParquetWriterOptions
from smallpond.io.paths import check_local_filesystem  # (its home; the helpers here name it)
from smallpond.io.rowrange import RowRange  # its home before: pickles may name it here


@contextmanager
def _reading(path: str) -> Iterator[None]:
    """Name the file when pyarrow finds it invalid (pyarrow's messages do not), and fail fast:
    a corrupt file stays corrupt however often it is read. I/O errors (OSError) pass unchanged
    and are retried.
    """
    try:
        yield
    except pa.ArrowInvalid as e:
        raise UserCodeError(f"cannot read Parquet file {path!r}: {e}") from e


def open_mapped(path: str) -> pq.ParquetFile:
    """``path`` opened for reading its row groups whole, through a memory map of the file.

    Read through the map, a column chunk is decoded where the file lies in the page cache: it is
    not copied into a buffer of its own first, which for an uncompressed chunk is a second copy of
    its data, and for a row group that two producers of a partitioning split (each reads all of
    it, keeps its rows) is paid by both. Measured on the GraySort shuffle (5M 100-byte records in
    uncompressed files, 2 workers, pyarrow 26): the producers' CPU fell from 1.51 s to 1.38 s.

    For readers whose batches do not outlive the task that reads them (the arrow engine copies
    every row it keeps): a table that still pointed into the map when the file was truncated would
    fault on access. A filesystem that cannot map a file (some FUSE mounts) is read as before.
    """
    try:
        return pq.ParquetFile(path, memory_map=True)
    except OSError:
        return pq.ParquetFile(path)


def read_parquet_file(source, columns: Optional[List[str]] = None) -> pa.Table:
    """``pq.ParquetFile(source).read(columns=columns)`` (``source``: a path or a ParquetFile), also
    for a file without row groups (what DuckDB writes for an empty result): pyarrow 18 and 19 raise
    "The file only has 0 row groups" there, 17 and 20+ return an empty table, as this does.

    A column of ``columns`` the file lacks is left out, as ``read`` does."""
    pf = source if isinstance(source, pq.ParquetFile) else pq.ParquetFile(source)
    if pf.metadata.num_row_groups > 0:
        return pf.read(columns=columns)
    schema = pf.schema_arrow
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns if c in schema.names], metadata=schema.metadata)
    return empty_table(schema)


def empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()`` (one empty chunk per column, the schema's metadata kept) without
    importing pandas: pyarrow builds those columns with ``pa.array([])``, whose check for pandas
    objects imports pandas, ~0.3 s of CPU in a worker's first task that never uses it."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def read_row_ranges(paths: Sequence[str], max_workers: int = 16) -> List[RowRange]:
    """Read Parquet footers (in threads) and return one whole-file RowRange per path."""

    def one(path: str) -> RowRange:
        with _reading(path):
            md = pq.read_metadata(path)
        size = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        return RowRange(path, size, md.num_rows, 0, md.num_rows)

    if len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(min(max_workers, len(paths))) as pool:
        return list(pool.map(one, paths))


def convert_type_to_large(t: pa.DataType) -> pa.DataType:
    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_binary(t):
        return pa.large_binary()
    if pa.types.is_list(t):
        return pa.large_list(convert_type_to_large(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(convert_type_to_large(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(convert_type_to_large(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(convert_type_to_large(t.key_type), convert_type_to_large(t.item_type))
    return t


def convert_types_to_large_string(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(convert_type_to_large(f.type)) for f in schema], metadata=schema.metadata)


def cast_columns_to_large_string(table: pa.Table) -> pa.Table:
    schema = convert_types_to_large_string(table.schema)
    return table if schema == table.schema else table.cast(schema)


def filter_schema(schema: pa.Schema, included_cols=None, excluded_cols=None) -> pa.Schema:
    fields = [f for f in schema if (included_cols is None or f.name in included_cols)]
    if excluded_cols:
        fields = [f for f in fields if f.name not in excluded_cols]
    return pa.schema(fields, metadata=schema.metadata)


def lossless_cast_kind(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether a column of type ``src`` may be cast to ``dst`` keeping every value, provided the
    cast is ``safe`` (which raises on overflow, truncation and lost precision).

    Allowed: nulls to anything; integers to integers, floats or decimals; floats to integers
    (whole values only) or to floats at least as wide; decimals to decimals; string, binary and
    list kinds to their large (or small) variants; timestamps of the same time zone, dates,
    times and durations among their own kind; dictionary-encoded to and from its values; structs
    whose every field the target has (by name), maps and lists, field by field. Everything else
    (int to string, string to int, bool to int, a struct field the target lacks...) would change
    or drop values, and is refused.
    """
    t = pa.types
    if src == dst or t.is_null(src):
        return True
    if t.is_dictionary(src):
        return lossless_cast_kind(src.value_type, dst)
    if t.is_dictionary(dst):
        return lossless_cast_kind(src, dst.value_type)
    if t.is_integer(src) or t.is_floating(src):
        if t.is_integer(dst):
            return True
        if t.is_floating(dst):
            return t.is_integer(src) or src.bit_width <= dst.bit_width
        return t.is_decimal(dst) and t.is_integer(src)
    if t.is_decimal(src):
        return t.is_decimal(dst)
    for kind in (_is_string_kind, _is_binary_kind, t.is_date, t.is_time, t.is_duration):
        if kind(src):
            return kind(dst)
    if t.is_timestamp(src):
        return t.is_timestamp(dst) and src.tz == dst.tz
    if _is_list_kind(src):
        return _is_list_kind(dst) and lossless_cast_kind(src.value_type, dst.value_type)
    if t.is_map(src):
        return (
            t.is_map(dst) and lossless_cast_kind(src.key_type, dst.key_type) and lossless_cast_kind(src.item_type, dst.item_type)
        )
    if t.is_struct(src):
        if not t.is_struct(dst):
            return False
        for f in src:
            i = dst.get_field_index(f.name)
            if i < 0 or not lossless_cast_kind(f.type, dst.field(i).type):
                return False
        return True
    return False


def _never(t: pa.DataType) -> bool:
    return False


def _is_string_kind(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", _never)(t)


def _is_binary_kind(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or getattr(pa.types, "is_binary_view", _never)(t)


def _is_list_kind(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def infer_array(values: list) -> pa.Array:
    """``pa.array(values)``, keeping nanoseconds.

    ``to_pylist`` gives a ``pandas.Timestamp`` / ``Timedelta`` for a nanosecond value that a
    ``datetime`` cannot hold, and pyarrow infers those as microseconds, cutting the nanoseconds off
    (a duration of 5 ns becomes 0): where such a value has nanoseconds, the column is nanoseconds.
    A plain column (ints, floats, strs, bools, bytes, dates or datetimes) is built without importing pandas
    (:func:`~smallpond.io.pyvalues.plain_array`).
    """
    from smallpond.io.pyvalues import plain_array

    array = plain_array(values)
    if array is not None:
        return array
    array = pa.array(values)
    t = array.type
    temporal = pa.types.is_timestamp(t) or pa.types.is_duration(t)
    if temporal and t.unit != "ns" and any(_nanos(v) for v in values):
        array = pa.array(values, type=pa.timestamp("ns", t.tz) if pa.types.is_timestamp(t) else pa.duration("ns"))
    return array


def _nanos(value) -> int:
    """The nanoseconds of a pandas Timestamp or Timedelta (0 for anything else)."""
    if value is None:
        return 0
    return getattr(value, "nanosecond", 0) or getattr(value, "nanoseconds", 0)


def _build_nested_kind(t: pa.DataType) -> bool:
    return pa.types.is_map(t) or _is_list_kind(t) or pa.types.is_struct(t)


def _has_nanoseconds(t: pa.DataType) -> bool:
    """Whether ``t`` is, or holds, a nanosecond timestamp or duration."""
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return t.unit == "ns"
    if pa.types.is_map(t):
        return _has_nanoseconds(t.key_type) or _has_nanoseconds(t.item_type)
    if _is_list_kind(t):
        return _has_nanoseconds(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_nanoseconds(f.type) for f in t)
    return False


def same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether ``a`` and ``b`` are types of one kind (integers, floats, decimals, strings, binaries,
    booleans, timestamps, durations, dates, times, lists, structs or maps), whatever their width,
    unit or children."""
    t = pa.types
    kinds = (
        t.is_integer,
        t.is_floating,
        t.is_decimal,
        _is_string_kind,
        _is_binary_kind,
        t.is_boolean,
        t.is_timestamp,
        t.is_duration,
        t.is_date,
        t.is_time,
        _is_list_kind,
        t.is_struct,
        t.is_map,
    )
    return any(kind(a) and kind(b) for kind in kinds)


def natural_type(t: pa.DataType) -> pa.DataType:
    """The type to give Python values that came from a column of type ``t`` (a Python map's
    output key named as an input column): ``t`` itself, where inference would lose its unit,
    precision, scale or form (nanoseconds, decimal(12, 2), map), with integers as int64 and floats
    as float64 (as inference types them) and dictionaries and fixed-size lists as plain values and
    lists, so values a later batch computes for the key fit it as they fit inference's types."""
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_dictionary(t):
        return natural_type(t.value_type)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return pa.list_(natural_type(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(natural_type(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(natural_type(t.key_type), natural_type(t.item_type))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(natural_type(f.type)) for f in t])
    return t


def array_from_values(values: list, target: pa.DataType) -> pa.Array:
    """Python ``values`` as an Arrow array of type ``target`` wherever that keeps every value.

    The values' own type (pyarrow's inference) is cast to ``target`` with ``safe=True`` when
    :func:`lossless_cast_kind` allows it. What inference cannot put in ``target``'s form (dicts or
    pairs for a map, a struct's dicts with a key ``target`` lacks) is built level by level, so a
    value inside a map, list or struct is held to its type as a top-level one is: pyarrow's own
    conversion to a nested type truncates 1.5 to 1 in a ``map<string, int64>``. Only values that
    inference cannot type, or not castably (str for binary), go through pyarrow's conversion to
    the type, which raises where a value does not fit.

    Where a value does not fit, the array keeps the values' types there (``map<string, double>``),
    and :func:`conform_table` names the column, both types and a value.
    """
    # dicts never infer as a map, and a nested value's nanoseconds are cut by inference: build
    # those level by level
    if not pa.types.is_map(target) and not (_build_nested_kind(target) and _has_nanoseconds(target)):
        try:
            array = infer_array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            array = None
        if array is not None:
            if array.type == target:
                return array
            if lossless_cast_kind(array.type, target):
                try:
                    return array.cast(target, safe=True)
                except pa.ArrowInvalid:
                    return array  # a value does not fit: conform_table names it
                except pa.ArrowNotImplementedError:
                    pass
    built = _build_nested(values, target)
    if built is None:
        return pa.array(values, type=target)
    if built.type != target and lossless_cast_kind(built.type, target):
        try:
            return built.cast(target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # conform_table names it
    return built


def _offsets(values: list, lengths: list, large: bool = False) -> pa.Array:
    """The offsets of a list-like column, null where a value is None (a null list or map: offsets
    rather than ``mask=``, which ``MapArray.from_arrays`` takes only from pyarrow 17)."""
    from itertools import accumulate

    offsets = list(accumulate(lengths, initial=0))
    for i, v in enumerate(values):
        if v is None:
            offsets[i] = None
    return pa.array(offsets, pa.int64() if large else pa.int32())


def _null_mask(values: list) -> Optional[pa.Array]:
    """True where a value is None; None if none is."""
    return pa.array([v is None for v in values], pa.bool_()) if any(v is None for v in values) else None


def _build_map(values: list, target: pa.MapType) -> Optional[pa.Array]:
    """A map array of ``values`` (dicts, or sequences of (key, item) pairs), keys and items typed by
    :func:`array_from_values`; None for a value of another kind (pyarrow's conversion decides)."""
    keys, items, lengths = [], [], []
    for v in values:
        if v is None:
            lengths.append(0)
            continue
        if isinstance(v, dict):
            keys.extend(v)
            items.extend(v.values())
            lengths.append(len(v))
            continue
        if not isinstance(v, (list, tuple)):
            return None
        for pair in v:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                return None
            keys.append(pair[0])
            items.append(pair[1])
        lengths.append(len(v))
    key_array = array_from_values(keys, target.key_type)
    if key_array.null_count:
        raise pa.ArrowInvalid("a map key is None")
    item_array = array_from_values(items, target.item_type)
    return pa.MapArray.from_arrays(_offsets(values, lengths), key_array, item_array)


def _build_list(values: list, target) -> Optional[pa.Array]:
    """A list (or large list) array of ``values`` (lists, tuples), elements typed by
    :func:`array_from_values`; None for a value of another kind."""
    if any(v is not None and not isinstance(v, (list, tuple)) for v in values):
        return None
    lengths = [0 if v is None else len(v) for v in values]
    flat = [x for v in values if v is not None for x in v]
    large = pa.types.is_large_list(target)
    elements = array_from_values(flat, target.value_type)
    return (pa.LargeListArray if large else pa.ListArray).from_arrays(_offsets(values, lengths, large), elements)


def _build_struct(values: list, target: pa.StructType) -> Optional[pa.Array]:
    """A struct array of ``values`` (dicts): ``target``'s fields typed by :func:`array_from_values`
    (null where a dict lacks the key), then any key ``target`` lacks, typed from its values (so
    :func:`conform_table` refuses to drop it); None for a value of another kind."""
    if not target.num_fields or any(v is not None and not isinstance(v, dict) for v in values):
        return None
    present = [v for v in values if v is not None]
    extra = [k for k in dict.fromkeys(k for v in present for k in v) if target.get_field_index(k) < 0]
    names, children = [], []
    for field in target:
        names.append(field.name)
        children.append(array_from_values([None if v is None else v.get(field.name) for v in values], field.type))
    for key in extra:
        names.append(key)
        children.append(pa.array([None if v is None else v.get(key) for v in values]))
    return pa.StructArray.from_arrays(children, names=names, mask=_null_mask(values))


def _build_nested(values: list, target: pa.DataType) -> Optional[pa.Array]:
    if pa.types.is_map(target):
        return _build_map(values, target)
    if _is_list_kind(target):
        return _build_list(values, target)
    if pa.types.is_struct(target):
        return _build_struct(values, target)
    return None


def _example(column) -> str:
    values = column.drop_null().slice(0, 1).to_pylist()
    if not values:
        return ""
    text = repr(values[0])
    return f" (e.g. {text[:60] + '...' if len(text) > 60 else text})"


def _widened(field: pa.Field, new_type: pa.DataType) -> Optional[pa.DataType]:
    """A type holding values of both ``field.type`` and ``new_type``, if Arrow knows one."""
    try:
        unified = pa.unify_schemas(
            [pa.schema([field]), pa.schema([pa.field(field.name, new_type)])], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        return None
    return unified.field(0).type


def conform_table(
    table: pa.Table,
    schema: pa.Schema,
    *,
    fill_missing: bool = False,
    origin: str = "",
    hint: str = "",
    columns_hint: Optional[str] = None,
) -> pa.Table:
    """``table`` with exactly ``schema`` (its columns, order, types and metadata), values unchanged.

    Columns are matched by name; a column whose type differs is cast when
    :func:`lossless_cast_kind` allows it, with ``safe=True``. A column ``schema`` lacks, a value
    that does not fit (1.5 in an int64 column, 2**60 in a float64 one, a string in an int64 one)
    or a column of ``schema`` missing from ``table`` (unless ``fill_missing``: then it is all
    nulls) raises :class:`UserCodeError` naming the column, both types and an example value.
    ``origin`` names ``schema`` in messages (e.g. "the schema of the first output batch"), ``hint``
    says what to do about a type (``columns_hint`` about a column too many or missing, if it differs).
    """
    where = origin or "the schema"
    tail = f" {hint}" if hint else ""
    columns_tail = tail if columns_hint is None else f" {columns_hint}"
    index = {}
    for i, name in enumerate(table.column_names):
        if name in index:
            raise UserCodeError(f"the output has column {name!r} twice.{columns_tail}")
        index[name] = i
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    if extra:
        names = ", ".join(repr(n) for n in extra)
        raise UserCodeError(
            f"output column(s) {names} are not in {where} (columns {schema.names}); they would be dropped.{columns_tail}"
        )
    columns = []
    for field in schema:
        i = index.get(field.name)
        if i is None:
            if not fill_missing:
                raise UserCodeError(
                    f"output column {field.name!r} ({field.type}) of {where} is missing from this batch.{columns_tail}"
                )
            column = pa.nulls(table.num_rows, field.type)
        else:
            column = table.column(i)
            if column.type != field.type:
                column = _cast_column(column, field, where, tail)
        if not field.nullable and column.null_count:
            raise UserCodeError(f"output column {field.name!r} has nulls, but {where} says it has none.{tail}")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _cast_column(column, field: pa.Field, where: str, tail: str):
    new = column.type
    wider = _widened(field, new)
    widen = f" (a type holding both would be {wider})" if wider is not None and wider != field.type else ""
    head = f"output column {field.name!r} is {field.type} in {where}, but this batch has {new} values"
    if not lossless_cast_kind(new, field.type):
        raise UserCodeError(f"{head}{_example(column)}, which cannot be stored as {field.type} unchanged{widen}.{tail}")
    try:
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise UserCodeError(f"{head} that do not fit: {e}{widen}.{tail}") from None


PathOrRange = Union[str, RowRange]


def _as_range(p: PathOrRange) -> RowRange:
    if isinstance(p, RowRange):
        return p
    with _reading(p):
        md = pq.read_metadata(p)
    return RowRange(p, 0, md.num_rows, 0, md.num_rows)


def _read_bound(table, bound: Dict[str, str]):
    """``table`` (a file's columns ``bound.values()``, read) with its columns named as asked."""
    back = {n: c for c, n in bound.items()}
    names = [back.get(n, n) for n in table.column_names]
    return table if names == table.column_names else table.rename_columns(names)


def _iter_range_batches(r: RowRange, columns: Optional[List[str]], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The batches of ``r``'s rows; of ``columns`` (as :func:`bind_columns` binds them), the ones
    the file has, named as asked."""
    with _reading(r.path):
        yield from _iter_range_batches_unchecked(r, columns, batch_size)


def _iter_range_batches_unchecked(r: RowRange, columns: Optional[List[str]], batch_size: int) -> Iterator[pa.RecordBatch]:
    f = pq.ParquetFile(r.path)
    if f.metadata.num_row_groups == 0:
        return  # (pyarrow 18 and 19 raise on iter_batches of such a file)
    bound = None if columns is None else bind_columns(columns, f.schema_arrow.names, repr(r.path))
    read = None if bound is None else list(bound.values())
    pos = 0
    for batch in f.iter_batches(batch_size=batch_size, columns=read, use_threads=True):
        if bound is not None:
            batch = _read_bound(batch, bound)
        bstart, bend = pos, pos + batch.num_rows
        pos = bend
        if bend <= r.begin:
            continue
        if bstart >= r.end:
            break
        lo = max(r.begin, bstart) - bstart
        hi = min(r.end, bend) - bstart
        yield batch.slice(lo, hi - lo)


def read_columns_schema(paths: Sequence[str], columns: Optional[List[str]]) -> pa.Schema:
    """The schema of reading ``columns`` of ``paths`` (all columns: the first file's). A column the
    first file lacks is typed by the next file that has it (its rows are nulls where a file lacks
    it, as :func:`load_from_parquet_files` reads them); one that no file has is a :class:`~smallpond.errors.ColumnNotFoundError`.
    A column is named as the file that types it names it (``columns=['X']`` of a file with ``x``:
    ``x``), as DuckDB names it (see :func:`bind_columns`)."""
    with _reading(paths[0]):
        first = pq.read_schema(paths[0])
    if columns is None:
        return first
    fields = {c: first.field(n) for c, n in bind_columns(columns, first.names, repr(paths[0])).items()}
    for path in paths[1:]:
        if len(fields) == len(set(columns)):
            break
        with _reading(path):
            other = pq.read_schema(path)
        rest = [c for c in columns if c not in fields]
        fields.update((c, other.field(n)) for c, n in bind_columns(rest, other.names, repr(path)).items())
    missing = [c for c in columns if c not in fields]
    if missing:
        raise _no_such_columns(missing, paths, first.names)
    return pa.schema([fields[c] for c in columns], metadata=first.metadata)


def _no_such_columns(missing: List[str], paths: Sequence[str], first_names: List[str]) -> ColumnNotFoundError:
    """The error for requested columns that none of ``paths`` has (``first_names``: the first's)."""
    where = repr(paths[0]) if len(paths) == 1 else f"any of {len(paths)} files ({paths[0]!r}, ...); the first"
    return columns_not_found(missing, where, first_names)


def build_batch_reader_from_files(
    paths_or_ranges: Sequence[PathOrRange],
    *,
    columns: Optional[List[str]] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_byte_size: Optional[int] = None,
    filesystem=None,
    schema: Optional[pa.Schema] = None,
    first_columns: Optional[tuple] = None,
) -> pa.RecordBatchReader:
    """A reader that yields batches of exactly ``batch_size`` rows across file boundaries.

    Only the last batch may be smaller. Batches have the types of the first file (or of
    ``schema``): a column another file stores otherwise (``large_string`` for ``string``, say) is
    cast, so such files mix freely. An empty input list needs ``schema``. ``filesystem``: see
    :func:`check_local_filesystem`. ``first_columns``: see :func:`load_from_parquet_files`.
    """
    check_local_filesystem(filesystem, "build_batch_reader_from_files")
    ranges = [_as_range(p) for p in paths_or_ranges]
    if not ranges and schema is None:
        raise ValueError("cannot build a batch reader over zero files without a schema")
    strict = first_columns is not None and columns is None and schema is None
    first = ranges[0].path if ranges else ""
    if strict and first_columns:  # (the first file of the set split, and its columns)
        first, columns = first_columns[0], list(first_columns[1])
    out_schema = schema if schema is not None else read_columns_schema([r.path for r in ranges], columns)
    if strict:  # each file's columns bound to the first's names (no other is read), as DuckDB names them
        columns = columns or out_schema.names
        out_schema = pa.schema([f.with_name(c) for f, c in zip(out_schema, columns)], metadata=out_schema.metadata)
    if max_batch_byte_size and ranges:
        total_rows = sum(r.num_rows for r in ranges) or 1
        total_bytes = sum(r.estimated_data_size for r in ranges)
        if total_bytes:
            batch_size = max(1, min(batch_size, max_batch_byte_size * total_rows // total_bytes))

    # a batch's columns are named as asked, the reader's as the files name them (``X``: ``x``)
    asked = list(columns) if columns is not None and len(columns) == len(out_schema) else out_schema.names

    def gen() -> Iterator[pa.RecordBatch]:
        pending: List[pa.RecordBatch] = []
        npending = 0
        for r in ranges:
            for b in _iter_range_batches(r, columns, batch_size):
                if strict and not set(asked) <= set(b.schema.names):
                    raise lacks_first_files_columns(r.path, b.schema.names, first, asked)
                if b.schema != out_schema:
                    b = pa.RecordBatch.from_arrays(
                        [
                            cast_read_column(b.column(a), f.type, a, r.path)
                            if a in b.schema.names
                            else pa.nulls(b.num_rows, f.type)
                            for a, f in zip(asked, out_schema)
                        ],
                        schema=out_schema,
                    )
                pending.append(b)
                npending += b.num_rows
                while npending >= batch_size:
                    t = pa.Table.from_batches(pending, schema=out_schema)
                    head, rest = t.slice(0, batch_size), t.slice(batch_size)
                    yield from head.combine_chunks().to_batches(max_chunksize=batch_size)
                    pending = rest.to_batches()
                    npending = rest.num_rows
        if npending:
            yield from pa.Table.from_batches(pending, schema=out_schema).combine_chunks().to_batches()

    return pa.RecordBatchReader.from_batches(out_schema, gen())


def read_parquet_files_into_table(
    paths_or_ranges: Sequence[PathOrRange], columns: Optional[List[str]] = None, filesystem=None
) -> pa.Table:
    """Read files (or row ranges) into one table, in order, in the calling thread.

    Upstream's helper of this name; the signature is :func:`load_from_parquet_files`' without the
    thread pool, and so are columns and types. Zero files is an error (there is no schema).
    """
    check_local_filesystem(filesystem, "read_parquet_files_into_table")
    return load_from_parquet_files(paths_or_ranges, columns, max_workers=1)


def load_from_parquet_files(
    paths_or_ranges: Sequence[PathOrRange],
    columns: Optional[List[str]] = None,
    max_workers: int = 16,
    filesystem=None,
    *,
    schema: Optional[pa.Schema] = None,
    first_columns: Optional[tuple] = None,
) -> pa.Table:
    """Load files (or row ranges) into one table, in order, with large string types, reading up
    to ``max_workers`` files at once (``filesystem``: see :func:`check_local_filesystem`). With
    ``first_columns`` (and no ``columns``), every file has the first file's columns and only those
    are read, as DuckDB reads a list of files: ``(path, names)`` of the first file of the set these
    were split from, or ``()`` for these files' first (a file lacking one is an error); without,
    every file's columns are kept."""
    check_local_filesystem(filesystem, "load_from_parquet_files")

    def one(p: PathOrRange):
        # the columns of ``columns`` this file has (as bind_columns binds them), named as asked
        # (one that no file has is an error below; others are filled with nulls)
        path = p.path if isinstance(p, RowRange) else p
        with _reading(path):
            # ParquetFile.read, not read_table: the latter goes through pyarrow.dataset, whose
            # import pulls in pandas (~0.5 s before a first result)
            pf = pq.ParquetFile(path)
            has = pf.schema_arrow
            bound = None if columns is None else bind_columns(columns, has.names, repr(path))
            if not isinstance(p, RowRange) or p.whole_file:
                table = read_parquet_file(pf, None if bound is None else list(bound.values()))
                return (table if bound is None else _read_bound(table, bound)), bound
        fields = has if bound is None else [has.field(n).with_name(c) for c, n in bound.items()]
        schema = pa.schema(fields, metadata=has.metadata)
        return pa.Table.from_batches(list(_iter_range_batches(p, columns, DEFAULT_BATCH_SIZE)), schema=schema), bound

    items = list(paths_or_ranges)
    if not items:
        if schema is None:
            raise ValueError("cannot load zero files without a schema")
        return empty_table(schema)
    if len(items) == 1 or max_workers <= 1:
        read = [one(p) for p in items]
    else:
        with ThreadPoolExecutor(min(max_workers, len(items))) as pool:
            read = list(pool.map(one, items))
    tables = [t for t, _ in read]
    if first_columns is not None and columns is None:
        tables = _as_first_files(tables, items, first_columns)
    named: Dict[str, str] = {}  # a column asked for -> its name in the first file that has it
    for _, bound in read:
        for c, n in (bound or {}).items():
            named.setdefault(c, n)
    if columns is not None:  # pyarrow leaves out a column a file lacks; one that no file has is an error
        present = {name for t in tables for name in t.schema.names}
        missing = [c for c in columns if c not in present]
        if missing:
            paths = [p.path if isinstance(p, RowRange) else p for p in items]
            raise _no_such_columns(missing, paths, pq.read_schema(paths[0]).names)
    if any(not t.schema.equals(tables[0].schema) for t in tables):
        tables = [cast_columns_to_large_string(t) for t in tables]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table.rename_columns([named.get(n, n) for n in table.column_names]) if named else table


def _as_first_files(tables: List[pa.Table], items: Sequence[PathOrRange], first_columns: tuple) -> List[pa.Table]:
    """``tables`` (one a file of ``items``) with the first file's columns only (``first_columns``:
    its path and names, or ``()`` for ``items[0]``); a file lacking one of them is an error naming it."""
    paths = [p.path if isinstance(p, RowRange) else p for p in items]
    first, want = (first_columns[0], list(first_columns[1])) if first_columns else (paths[0], tables[0].column_names)
    if all(t.column_names == want for t in tables):
        return tables
    bound = [bind_columns(want, t.column_names, repr(path)) for path, t in zip(paths, tables)]  # (``A`` reads ``a``)
    for path, t, names in zip(paths, tables, bound):
        if len(names) < len(want):
            raise lacks_first_files_columns(path, t.column_names, first, want)
    return [t.select([names[c] for c in want]).rename_columns(want) for t, names in zip(tables, bound)]


def parquet_write_table(table: pa.Table, where: str, filesystem=None, **kwargs) -> None:
    check_local_filesystem(filesystem, "parquet_write_table")
    pq.write_table(table, where, **kwargs)


def dump_to_parquet_files(
    table: pa.Table,
    output_dir: str,
    filename: str = "data",
    compression: Optional[str] = "ZSTD",
    compression_level: Optional[int] = 3,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    use_dictionary: Union[bool, List[str]] = False,
    max_workers: int = 16,
    filesystem=None,
    *,
    metadata: Optional[Dict[str, str]] = None,
) -> List[str]:
    """Write ``table`` as ``{filename}-{i:05d}.parquet`` files (zero-padded so names sort).

    ``filesystem``: see :func:`check_local_filesystem`."""
    check_local_filesystem(filesystem, "dump_to_parquet_files")
    os.makedirs(output_dir, exist_ok=True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    avg_row = table.nbytes / table.num_rows if table.num_rows else 1
    rg_size = max(1, min(row_group_size, int(row_group_bytes // max(avg_row, 1))))
    nfiles = max(1, math.ceil(table.nbytes / (8 * GB)))
    if table.num_rows > rg_size * 4:
        nfiles = max(nfiles, min(max_workers, table.num_rows // rg_size))
    nfiles = min(nfiles, max(1, table.num_rows))
    kw = ParquetWriterOptions(compression, compression_level, rg_size, use_dictionary).pyarrow()
    kw["row_group_size"] = rg_size
    paths = []
    bounds = [(i * table.num_rows // nfiles, (i + 1) * table.num_rows // nfiles) for i in range(nfiles)]

    def write(i: int) -> str:
        lo, hi = bounds[i]
        path = os.path.join(output_dir, f"{filename}-{i:05d}.parquet")
        pq.write_table(table.slice(lo, hi - lo), path, **kw)
        return path

    if nfiles == 1:
        paths = [write(0)]
    else:
        with ThreadPoolExecutor(min(max_workers, nfiles)) as pool:
            paths = list(pool.map(write, range(nfiles)))
    return paths


def rebatch(reader: pa.RecordBatchReader, batch_size: int) -> pa.RecordBatchReader:
    """Re-chunk a reader so every batch has exactly ``batch_size`` rows except the last."""
    schema = reader.schema

    def gen():
        pending, n = [], 0
        for b in reader:
            if b.num_rows == 0:
                continue
            pending.append(b)
            n += b.num_rows
            while n >= batch_size:
                t = pa.Table.from_batches(pending, schema=schema)
                yield from t.slice(0, batch_size).combine_chunks().to_batches(max_chunksize=batch_size)
                rest = t.slice(batch_size)
                pending, n = rest.to_batches(), rest.num_rows
        if n:
            yield from pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches()

    return pa.RecordBatchReader.from_batches(schema, gen())
