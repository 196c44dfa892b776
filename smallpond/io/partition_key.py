"""The partition a Parquet file is loaded into by its partition column's values: one whole number,
the same in every row (``ParquetDataSet.load_partitioned_datasets`` of a file with neither the key
in its metadata nor a ``col=k`` folder).

The number is read as a shuffle reads its key (``execution/ops/shuffle_keys.py``): an integer, a
boolean (0 or 1), a float or decimal holding a whole number; and, as upstream 0.15 read it with
``int()``, text of a whole number ('01' is 1). Only the first row was read, with ``int()``: a
file holding rows of several partitions was loaded whole into its first row's, and a key of 1.5
went to partition 1.
"""

from __future__ import annotations

import math
from decimal import Decimal

from smallpond.errors import ParameterError


def partition_key_of_column(path: str, column: str) -> int:
    """The partition number all rows of the Parquet file ``path`` hold in ``column`` (it has rows);
    a :class:`~smallpond.errors.ParameterError` naming the file if they hold several, or one that
    is no partition number."""
    import pyarrow.parquet as pq

    distinct = pq.ParquetFile(path).read(columns=[column], use_threads=False).column(0).unique()
    where = f"the partition column {column!r} of {path!r}"
    # (values that differ may name one partition: the texts '1' and '01')
    if len(distinct) > 1 and len({partition_number(v, where) for v in distinct.to_pylist()}) > 1:
        shown = ", ".join(str(v) for v in distinct.to_pylist()[:3]) + (", ..." if len(distinct) > 3 else "")
        raise ParameterError(
            f"{path!r} holds rows of several partitions in its column {column!r} ({shown}): a file is loaded whole "
            "into one partition (to send each row to the partition it names, shuffle it: ShuffleNode, repartition(by=...))"
        )
    return partition_number(distinct[0].as_py(), where)


def partition_number(value, where: str) -> int:
    """``value`` as the partition number it names (not checked against a partition count), else a
    :class:`~smallpond.errors.ParameterError` saying it is ``where``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, (str, bytes)):
        # text that int() reads ('01', ' 2'): upstream 0.15 read the key so (int() of the value),
        # and a file whose every row holds '1' went to partition 1, as its metadata's text would
        try:
            return int(value)
        except ValueError:
            pass
    shown = "NULL" if value is None else repr(value) if isinstance(value, (str, bytes)) else str(value)
    raise ParameterError(f"{where} is {shown}, which names no partition: a partition is named by a whole number")
