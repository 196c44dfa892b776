"""The Python functions of ``DataFrame.map``, ``flat_map``, ``filter`` and ``map_batches``, as the
process functions of the stream nodes those methods build: each runs in a worker over the input's
Arrow batches and yields :class:`~smallpond.execution.task.StreamOutput` (so a stream checkpoint
after an output is exact)."""

from __future__ import annotations

from typing import Callable

from smallpond.errors import UserCodeError
from smallpond.execution.task import StreamOutput


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


class MapRows:
    """Row-wise map / flat_map.

    Each batch's rows become a table with every key any row has, typed from the values (or by
    ``schema``); the task's output writer then holds every later batch to the first one's schema
    (see :func:`smallpond.io.arrow.conform_table`): values are never truncated or dropped.
    """

    #: a key a batch's rows all lack is a column of nulls there, as a key one row lacks is a null
    fills_missing_columns = True

    def __init__(self, func: Callable, schema, flat: bool) -> None:
        self.func = func
        self.schema = schema
        self.flat = flat
        self.__name__ = getattr(func, "__name__", "map")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)

    @property
    def _op(self) -> str:
        return "flat_map" if self.flat else "map"

    def _apply(self, row) -> list:
        """The function's output rows for ``row`` (checked: a dict, or a list of dicts for flat_map)."""
        out = self.func(row)
        if self.flat:  # any iterable of dicts (a list, a generator)
            rows = None if isinstance(out, (dict, str, bytes)) or not hasattr(out, "__iter__") else list(out)
            if rows is None or any(not isinstance(x, dict) for x in rows):
                raise UserCodeError(
                    f"the flat_map function {self.__qualname__} must return a list of dicts, got {_describe(out)}"
                )
            return rows
        if not isinstance(out, dict):
            raise UserCodeError(f"the map function {self.__qualname__} must return a dict, got {_describe(out)}")
        return [out]

    def _rows(self, batch) -> list:
        if self.flat:
            return [out for r in batch.to_pylist() for out in self._apply(r)]
        rows = list(map(self.func, batch.to_pylist()))
        if any(t is not dict for t in set(map(type, rows))):
            for out in rows:
                if not isinstance(out, dict):
                    raise UserCodeError(f"the map function {self.__qualname__} must return a dict, got {_describe(out)}")
        return rows

    def _table(self, rows, schema=None, inputs=None):
        """``rows`` as a table: a column for every key any row has, typed from the values, or by
        ``schema`` where it names the key (cast only when no value changes; see the module's
        :func:`~smallpond.io.arrow.conform_table`).

        Without ``schema``, a key that is a column of the input (schema ``inputs``) is typed like
        it (:func:`~smallpond.io.arrow.natural_type`) when every value fits: a value passed through
        keeps its nanoseconds, decimal precision, uint64 range or map form, which inference from
        the Python values loses or cannot hold."""
        import pyarrow as pa

        from smallpond.io.arrow import array_from_values, conform_table, empty_table, infer_array, natural_type

        if not rows:
            return empty_table(schema) if schema is not None else pa.table({})
        keys, values = _row_columns(rows)
        if not keys:  # dicts without keys: a table of no columns has no rows either, they would be lost
            from smallpond.execution.ops.arrow import _no_columns

            what = f"the {self._op} function {self.__qualname__}"
            raise UserCodeError(_no_columns(len(rows), what) + " (a dict with at least one key)")
        arrays = []
        for key, column in zip(keys, values):
            target = None
            if schema is not None and schema.get_field_index(key) >= 0:
                target = schema.field(key).type
            elif inputs is not None and inputs.get_field_index(key) >= 0:
                hint = inputs.field(key).type
                array = _typed_like(column, natural_type(hint))
                if array is None and hint == pa.uint64():  # values above int64's range
                    array = _typed_like(column, hint)
                if array is not None:
                    arrays.append(array)
                    continue
            try:
                # with a type, values are held to it as the writer holds a batch: lossless only,
                # inside maps, lists and structs too (a value that does not fit is named below)
                array = infer_array(column) if target is None else array_from_values(column, target)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
                if target is None:
                    raise UserCodeError(
                        f"the {self._op} function {self.__qualname__} returned values for {key!r} that Arrow cannot "
                        f"store in one column: {e}. Return one type per key, or pass schema= to {self._op}()."
                    ) from None
                raise UserCodeError(
                    f"the {self._op} function {self.__qualname__} returned values for {key!r} that do not fit "
                    f"its type {target} in the schema given (schema=): {e}"
                ) from None
            arrays.append(array)
        table = pa.Table.from_arrays(arrays, names=keys)
        if schema is not None and not table.schema.equals(schema, check_metadata=False):
            table = conform_table(
                table,
                schema,
                fill_missing=True,
                origin="the schema given (schema=)",
                hint=f"Give the column a type that holds every value in the schema= of {self._op}().",
                columns_hint=f"Add the key to the schema= of {self._op}() (a row without it gets a null there).",
            )
        return table

    def output_schema_for(self, sample):
        """The output schema, from ``schema=`` or the function applied to sample rows (a
        partition with no rows writes an empty file of this schema)."""
        import pyarrow as pa

        if self.schema is not None:
            return self.schema
        found = None
        for row in sample.to_pylist():  # row by row: the first row with typed values settles it
            rows = self._apply(row)
            if not rows:
                continue
            found = self._table(rows, inputs=sample.schema).schema
            if not any(pa.types.is_null(f.type) for f in found):
                break
        return found

    def __call__(self, runtime_ctx, readers):
        import pyarrow as pa

        # each output names the input batches it completes, so a stream checkpoint after it is exact;
        # later batches are held to the first output's schema by the task's writer
        pending: list = []
        started = self.schema is not None
        inputs = readers[0].schema
        i = -1
        for i, batch in enumerate(readers[0]):
            rows = self._rows(batch)
            if started:
                yield StreamOutput(self._table(rows, self.schema, inputs), batch_indices=[i])
                continue
            rows = pending + rows if pending else rows
            table = self._table(rows, inputs=inputs)
            if not rows or any(pa.types.is_null(f.type) for f in table.schema):
                pending = rows  # types not known yet: wait for a batch that shows them
                continue
            pending, started = [], True
            yield StreamOutput(table, batch_indices=[i])
        if pending:
            yield StreamOutput(self._table(pending, inputs=inputs), batch_indices=[i])


def _typed_like(values: list, target):
    """``values`` as an array of ``target`` if they are of its kind (pyarrow's inference cannot type
    them, or types them as the same kind: integers for an integer type, not floats or booleans)
    and every value fits it as it is, else None."""
    import pyarrow as pa

    from smallpond.io.arrow import array_from_values, infer_array, same_kind

    try:
        inferred = infer_array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        inferred = None
    if inferred is not None and not pa.types.is_null(inferred) and not same_kind(inferred, target):
        return None
    try:
        array = array_from_values(values, target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError):
        return None
    return array if array.type == target else None


def _row_columns(rows):
    """The keys of ``rows`` (dicts; every key any row has, in the order first seen) and the
    values of each, None where a row lacks the key."""
    from itertools import chain
    from operator import itemgetter

    keys = list(rows[0])
    # the usual case, checked in C: every row has the first row's keys and no other
    if sum(map(len, rows)) == len(keys) * len(rows):
        try:
            return keys, [list(map(itemgetter(k), rows)) for k in keys]
        except KeyError:
            pass
    keys = list(dict.fromkeys(chain.from_iterable(rows)))
    return keys, [[r.get(k) for r in rows] for k in keys]


class FilterRows:
    def __init__(self, func: Callable) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", "filter")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)

    def output_schema_for(self, sample):
        return sample.schema  # a filter keeps the input's columns

    def __call__(self, runtime_ctx, readers):
        import pyarrow as pa

        from smallpond.io.pyvalues import bool_array

        reader = readers[0]
        wrote = False
        for i, batch in enumerate(reader):
            mask = bool_array([bool(self.func(r)) for r in batch.to_pylist()])
            wrote = True
            yield StreamOutput(pa.Table.from_batches([batch]).filter(mask), batch_indices=[i])
        if not wrote:
            from smallpond.io.arrow import empty_table

            yield empty_table(reader.schema)


class MapBatches:
    def __init__(self, func: Callable, schema=None) -> None:
        self.func = func
        self.schema = schema
        self.__name__ = getattr(func, "__name__", "map_batches")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)

    def output_schema_for(self, sample):
        """The schema of the function's output on a sample batch (rows of another partition, or
        an empty table of the input's schema)."""
        import pyarrow as pa

        if self.schema is not None:
            return self.schema
        out = self.func(sample)
        return out.schema if isinstance(out, (pa.Table, pa.RecordBatch)) else None

    def __call__(self, runtime_ctx, readers):
        import pyarrow as pa

        for i, batch in enumerate(readers[0]):
            yield StreamOutput(self.func(pa.Table.from_batches([batch])), batch_indices=[i])
