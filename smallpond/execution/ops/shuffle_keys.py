"""Shuffle keys: the partition a row's key names, read alike by both engines, and the errors of
keys that name none.

A shuffle (``ShuffleNode``, ``repartition(n, by=...)``) sends a row to the partition its key
names, as upstream 0.15 did (``WHERE key = i``): an integer, a boolean (0 or 1), or a float or
decimal holding a whole number. DuckDB computes the index (:func:`shuffle_index_sql`) in the
duckdb engine and for an arrow-engine key that is an expression; pyarrow and numpy
(:func:`direct_keys`) for an arrow-engine key that is a column. Both refuse the same keys with
the same errors: one that is not whole (1.5, NaN, an infinity), NULL, out of range, or no number.
"""

from __future__ import annotations

import re
from typing import Optional

from smallpond.common import quote_literal
from smallpond.errors import UserCodeError

#: DuckDB types of a shuffle key that name a partition as they are: integers, and booleans (0 or 1,
#: as upstream's ``WHERE key = i`` read them); the type of a NULL literal
_INTEGER_KEY = re.compile(r"(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|BOOLEAN|\"?NULL\"?)$", re.IGNORECASE)
#: DuckDB types of a shuffle key whose whole values name a partition, and whose other values none
_FRACTIONAL_KEY = re.compile(r"(FLOAT|REAL|DOUBLE|DECIMAL|NUMERIC)\b", re.IGNORECASE)
#: integer types wider than BIGINT: a value past BIGINT's range is out of range, not a cast error
_WIDE_INTEGER = re.compile(r"(UBIGINT|HUGEINT|UHUGEINT)$", re.IGNORECASE)
#: the start of the text of DuckDB's ``error()`` raised for a key that names no partition
_NOT_WHOLE = "smallpond: the shuffle key is no partition number: "
#: ... and for a whole key past BIGINT's range (a partition number out of range)
_PAST_BIGINT = "smallpond: the shuffle key is out of range: "


def shuffle_index_sql(node, value: str, type_name: Optional[str]) -> str:
    """The partition index, in SQL, of a shuffle whose key is ``value`` (SQL) of DuckDB type
    ``type_name`` (None: not known, the plan check's binding). A partition is named by a whole
    number: upstream 0.15 took a row to partition ``i`` where ``key = i``, so a float or decimal
    key of 1.0 goes to 1 and one of 1.5 to no partition (its row count check then failed). A
    ``CAST`` rounded 1.5 to 2 (and a decimal 2.5 to 3, a double 2.5 to 2): a row went to a
    partition no one asked for. Such a key (and NaN, an infinity) fails the task, through
    DuckDB's ``error()`` with the value (:func:`key_error_from_duckdb`); a key that is no number
    (a string, even of digits, a date) is refused by its type (:func:`key_not_a_number`), as the
    arrow engine refuses it (:func:`direct_keys`)."""
    type_name = (type_name or "").strip()
    if _WIDE_INTEGER.match(type_name):  # (the arrow engine: "partition key 18446744073709551615 is out of range")
        v = f"({value})"
        return (
            f"CASE WHEN {v} BETWEEN -9223372036854775808 AND 9223372036854775807 THEN CAST({v} AS BIGINT) "
            f"WHEN {v} IS NOT NULL THEN error({quote_literal(_PAST_BIGINT)} || CAST({v} AS VARCHAR)) END"
        )
    if not type_name or _INTEGER_KEY.match(type_name):
        return f"CAST({value} AS BIGINT)"
    if not _FRACTIONAL_KEY.match(type_name):
        raise key_not_a_number(node, type_name)
    v = f"({value})"
    finite = "" if type_name.upper().startswith(("DECIMAL", "NUMERIC")) else f"isfinite({v}) AND "
    return (
        f"CASE WHEN {finite}{v} = trunc({v}) AND abs({v}) < 9223372036854775807 THEN CAST({v} AS BIGINT) "
        f"WHEN {v} IS NOT NULL THEN error({quote_literal(_NOT_WHOLE)} || CAST({v} AS VARCHAR)) END"
    )


def key_error_from_duckdb(node, err: BaseException) -> Optional[UserCodeError]:
    """The error of a key that names no partition (:func:`key_not_whole`) or one past BIGINT's range
    (:func:`key_out_of_range`), from DuckDB's error ``err`` of :func:`shuffle_index_sql`'s
    ``error()``; None for any other error."""
    # (raised by error(), not quoted from the SQL: a binder error's excerpt of it holds the text too)
    text = str(err)
    for mark, told in ((_NOT_WHOLE, key_not_whole), (_PAST_BIGINT, key_out_of_range)):
        said = f"Invalid Input Error: {mark}"
        at = text.find(said)
        if at >= 0 and node.shuffle_only:
            return told(node, text[at + len(said) :].splitlines()[0], node.npartitions)
    return None


def direct_keys(node, values, n: int):
    """The partition index of each row (numpy) of a shuffle whose key is a column of the data,
    ``values`` (Arrow), read without DuckDB as :func:`shuffle_index_sql` reads it: integers as
    they are, booleans as 0 and 1, floats and decimals holding whole numbers as those numbers.
    A NULL key is out of range, a key that is not whole is no partition number, a key that is
    no number is refused by its type."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.types as pat

    kind = values.type
    if values.null_count:
        raise key_out_of_range(node, "NULL", n)
    if pat.is_integer(kind) or pat.is_boolean(kind):
        keys = values.to_numpy(zero_copy_only=False)
        return keys.astype(np.int64) if keys.dtype.kind == "b" else keys
    if pat.is_floating(kind):
        keys = values.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(keys) & (np.trunc(keys) == keys) & (np.abs(keys) < 2.0**63)
        if not whole.all():
            raise key_not_whole(node, keys[~whole][0], n)
        return keys.astype(np.int64)
    if pat.is_decimal(kind):
        try:
            return values.cast(pa.int64()).to_numpy(zero_copy_only=False)  # (a safe cast: no fraction lost)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = next((v for v in values.to_pylist() if v != v.to_integral_value() or abs(v) >= 2**63), None)
            if bad is None:
                raise
            raise key_not_whole(node, bad, n) from None
    raise key_not_a_number(node, kind)


def key_not_a_number(node, dtype) -> UserCodeError:
    """The error of a shuffle key of a type that is not a number (a string, even of digits, a
    date), in both engines: the arrow engine said ``partition key a is out of range``, and the
    duckdb engine's ``CAST(key AS BIGINT)`` took '01' for 1 where the arrow engine refused it
    (upstream 0.15 compared such a key with partition numbers, which Python refuses)."""
    return UserCodeError(
        f"the shuffle key {node.data_partition_column!r} is of type {dtype} in the data, not a number: "
        "a shuffle sends a row to the partition its key names, a whole number (compute an integer key, "
        "e.g. with a SQL expression as the key, or use a hash partition)"
    )


def key_not_whole(node, value, n: int) -> UserCodeError:
    """The error of a shuffle key that is a number but names no partition: not whole (1.5), NaN
    or an infinity (:func:`shuffle_index_sql`). Both engines give it, naming the value."""
    return UserCodeError(
        f"the shuffle key {node.data_partition_column!r} is {value} in the data, which names no partition: "
        f"a shuffle sends a row to the partition its key names, a whole number 0-{n - 1} (it is not rounded: "
        "round the key in SQL, e.g. by='CAST(round(x) AS BIGINT)', or use a hash partition)"
    )


def key_out_of_range(node, key, n: int, value=None) -> UserCodeError:
    """The error of a row whose partition index ``key`` is not in 0..n-1; where the key the data
    holds, ``value``, is written otherwise (6.0 for partition 6), the error names it too."""
    msg = f"partition key {key} is out of range 0-{n - 1}"
    if value is not None and str(value) != str(key):
        msg += f": the key {node.data_partition_column!r} is {value} in the data"
    return UserCodeError(msg)
