"""Python values as Arrow arrays without importing pandas, for the common plain columns.

pyarrow's conversion of Python values (``pa.array``, ``pa.table`` of lists, ``Table.from_pylist``,
``pa.scalar``) first asks its pandas shim whether the values are a pandas object, and the shim
imports pandas to answer (pyarrow 26: ``_is_array_like`` in ``array.pxi``): ~0.2 s of CPU in the
first task of every worker process that runs a Python ``map`` / ``flat_map`` / ``filter``, whose
function never used pandas. :func:`plain_array` builds a column of only ``int``, only ``float``,
only ``str``, only ``bool``, only ``bytes``, only ``datetime.date`` or only ``datetime.datetime``
values (and ``None``) from buffers, as ``pa.array`` would type and fill it; anything else returns
None and the caller uses ``pa.array`` (which imports pandas, as before). pandas stays importable
and is imported where the user's code asks for it.

Datetimes: all naive ones are ``timestamp[us]`` of their wall time; all aware ones are
``timestamp[us, tz=<the first value's zone>]`` of each value's UTC instant (its own ``utcoffset()``,
``fold`` included), the zone spelled by pyarrow's own ``tzinfo_to_string``; as ``pa.array`` does.
Naive and aware mixed, a zone that is neither ``datetime.timezone`` nor ``zoneinfo.ZoneInfo``
(pytz's, dateutil's: pyarrow has rules of its own for some), an offset that is not whole minutes
(a zone's local mean time: pyarrow refuses whole seconds and drops microseconds) and subclasses go
to pyarrow.
"""

from __future__ import annotations

import datetime
import sys
from typing import Optional

import pyarrow as pa

#: the exact Python types built here, and the type ``pa.array`` infers for a list of each
_PLAIN = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    datetime.date: pa.date32(),
    datetime.datetime: pa.timestamp("us"),
}
_NONE = type(None)
_EPOCH = datetime.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=datetime.timezone.utc)
_EPOCH_DAY = _EPOCH.toordinal()
#: string data longer than this goes to pyarrow (which splits it into chunks beyond int32 offsets)
_MAX_STRING_BYTES = (1 << 31) - 1


def plain_array(values: list) -> Optional[pa.Array]:
    """``pa.array(values)`` when ``values`` are all ``int`` (in int64's range), all ``float``, all
    ``str``, all ``bool``, all ``bytes``, all ``datetime.date`` or all ``datetime.datetime`` (see
    the module's docstring; exactly those types, not subclasses), with any ``None``; None when they
    are anything else (the caller converts them with pyarrow)."""
    import numpy as np  # (pyarrow imports it)

    n = len(values)
    kinds = set(map(type, values))
    has_nulls = _NONE in kinds
    kinds.discard(_NONE)
    if not kinds:
        return pa.nulls(n)  # no values, or only None: pa.array types them as null
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    arrow_type = _PLAIN.get(kind)
    if arrow_type is None:
        return None
    validity = None
    null_count = 0
    if has_nulls:
        valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=n)
        null_count = n - int(np.count_nonzero(valid))
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    try:
        if kind is datetime.datetime:
            arrow_type = _timestamp_type(values)
            if arrow_type is None:
                return None
            start = _EPOCH if arrow_type.tz is None else _EPOCH_UTC
            micros = [0 if v is None else _micros(v - start) for v in values]
            buffers = [validity, pa.py_buffer(np.array(micros, dtype=np.int64))]
        elif kind is datetime.date:
            days = [0 if v is None else v.toordinal() - _EPOCH_DAY for v in values]
            buffers = [validity, pa.py_buffer(np.array(days, dtype=np.int32))]
        elif kind is str or kind is bytes:
            encoded = [b"" if v is None else v.encode() if kind is str else v for v in values]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
            if offsets[-1] > _MAX_STRING_BYTES:
                return None
            buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
        elif kind is bool:
            data = np.fromiter((v is True for v in values), dtype=np.bool_, count=n)
            buffers = [validity, pa.py_buffer(np.packbits(data, bitorder="little"))]
        elif kind is float:
            buffers = [validity, pa.py_buffer(np.array(values, dtype=np.float64))]  # None: NaN under a null
        else:
            filled = [0 if v is None else v for v in values] if has_nulls else values
            buffers = [validity, pa.py_buffer(np.array(filled, dtype=np.int64))]
    except (OverflowError, UnicodeEncodeError, ValueError, TypeError):
        return None  # an int beyond int64, a lone surrogate: pyarrow decides (and names the value)
    return pa.Array.from_buffers(arrow_type, n, buffers, null_count=null_count)


def _timestamp_type(values: list) -> Optional[pa.DataType]:
    """The type ``pa.array`` gives datetimes: naive, or the first value's zone if all are aware in
    zones of the two standard kinds at offsets of whole minutes; None for anything else."""
    zones = {v.tzinfo for v in values if v is not None}
    if zones == {None}:
        return pa.timestamp("us")
    zoneinfo = sys.modules.get("zoneinfo")
    kinds = (datetime.timezone, zoneinfo.ZoneInfo) if zoneinfo is not None else (datetime.timezone,)
    if not all(type(z) in kinds for z in zones):
        return None
    for v in values:  # pyarrow refuses an offset of whole seconds, and cuts one of microseconds off
        offset = None if v is None else v.utcoffset()
        if v is not None and (offset is None or offset.microseconds or offset.seconds % 60):
            return None
    first = next(v for v in values if v is not None).tzinfo
    return pa.timestamp("us", pa.lib.tzinfo_to_string(first))


def _micros(delta: datetime.timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def bool_array(values: list) -> pa.Array:
    """``pa.array(values, pa.bool_())`` for Python bools (a filter's mask), without pandas."""
    array = plain_array(values)
    if array is None or array.type != pa.bool_():
        return pa.array(values, pa.bool_())
    return array
