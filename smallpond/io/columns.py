"""Column names as DuckDB binds them, for every reader: the exact name, else the one name that
differs from it only in case.

Pure Python (no pyarrow, no DuckDB), so the scheduler binds a dataset's ``columns`` against a
file's footer as cheaply as the pyarrow readers and the DuckDB SQL fragments do, and all of them
agree on which column a name reads: a file with columns ``a`` and ``A`` asked for ``A`` reads
``A`` everywhere.
"""

from __future__ import annotations

import string
from typing import Dict, List, Sequence

from smallpond.errors import ColumnNotFoundError, UserCodeError

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold_case(name: str) -> str:
    """``name`` as DuckDB compares column names: ASCII letters in lower case, every other character
    as it is (``'A'`` and ``'a'`` are one name to it, ``'É'`` and ``'é'`` two, which ``str.lower``
    would make one)."""
    return name.translate(_ASCII_LOWER)


def bind_columns(columns: Sequence[str], names: Sequence[str], where: str) -> Dict[str, str]:
    """Each of ``columns`` that ``names`` (a file's columns) has, to the name it reads there, as
    DuckDB binds a name: the same name, else the one name that differs from it only in case
    (``X`` reads ``x``); a name none has is left out.

    A :class:`~smallpond.errors.ColumnNotFoundError` naming ``where``: a name that two or more
    differ from only in case, none exactly; and two names that read one column (``columns=['x',
    'X']`` of a file with ``x`` only), which would make two columns of one name.
    """
    have = set(names)
    by_lower: Dict[str, List[str]] = {}
    for n in names:
        by_lower.setdefault(fold_case(n), []).append(n)
    bound: Dict[str, str] = {}
    read_by: Dict[str, str] = {}  # a column of the file -> the asked name that reads it
    for c in columns:
        if c in bound:
            continue
        if c in have:
            n = c
        else:
            candidates = by_lower.get(fold_case(c), [])
            if len(candidates) > 1:
                raise ColumnNotFoundError(
                    f"column {c!r} is ambiguous in {where}: {', '.join(map(repr, candidates))} differ from it only in case; "
                    "name one of them exactly"
                )
            if not candidates:
                continue
            n = candidates[0]
        other = read_by.setdefault(n, c)
        if other != c:
            raise ColumnNotFoundError(
                f"columns {other!r} and {c!r} both read column {n!r} of {where} (it has no column named "
                f"{(c if n == other else other)!r} exactly); name it once"
            )
        bound[c] = n
    return bound


def case_siblings(names: Sequence[str]) -> Dict[str, List[str]]:
    """Of ``names`` (a file's columns), each that another differs from only in case, to all of
    them in order (``a``, ``A``: both, to ``['a', 'A']``); the others are left out."""
    by_lower: Dict[str, List[str]] = {}
    for n in names:
        by_lower.setdefault(fold_case(n), []).append(n)
    return {n: group for group in by_lower.values() if len(group) > 1 for n in group}


def lacks_first_files_columns(path: str, names: Sequence[str], first: str, first_names: Sequence[str]) -> ColumnNotFoundError:
    """The error for a file (``path``, of columns ``names``) read by the columns of the first file
    of its set (``first``: a list of files read without ``union_by_name``, as DuckDB reads it)
    that lacks some of them: DuckDB's read of the set fails too, and every reader here says so."""
    have = {fold_case(n) for n in names}
    lacking = [c for c in first_names if fold_case(c) not in have]
    err = ColumnNotFoundError(
        f"Parquet file {path!r} lacks the column(s) {', '.join(map(repr, lacking))} of {first!r}, the first "
        f"file of the files read with it (columns: {', '.join(map(str, first_names))}); files read together "
        "without union_by_name all have the first file's columns (a column only later files have is left "
        "out, as DuckDB reads them): read them with read_parquet(..., union_by_name=True) to combine them by name"
    )
    err.lacking = lacking  # (the columns: whether a failed read was for want of one, see execution.attempt)
    return err


def cast_read_column(column, to, name: str, path: str):
    """``column`` (column ``name`` of a batch of Parquet file ``path``) cast to ``to``, the type the
    files read together give it (:func:`~smallpond.io.partition_types.unify_partition_schemas`):
    a value that type cannot hold unchanged raises, naming the column, the file and both types."""
    return cast_holding(
        column,
        to,
        f"column {name!r} of Parquet file {path!r} is {column.type}, which the files read with it give the type {to}",
        "Give the step that wrote them one type for the column (schema= of a Python map, or a cast in its SQL).",
    )


def cast_holding(column, to, what: str, remedy: str):
    """``column`` cast ``safe`` to ``to`` (a type that holds its type:
    :func:`~smallpond.io.partition_types.common_type`); a value that does not fit (uint64's 2**64-1
    in an int64, 2**60 in a float64) raises a :class:`~smallpond.errors.UserCodeError` of ``what``
    (which column, where, which types), the value and ``remedy``, not pyarrow's bare 'not in range'."""
    import pyarrow as pa

    try:
        return column.cast(to, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UserCodeError(f"{what}, and a value does not fit {to}: {e}. {remedy}") from None
