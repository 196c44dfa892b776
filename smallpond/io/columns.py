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
        "Give the files one type for the column (schema= of the Python map that wrote them, or a cast in its SQL), "
        "or read them with read_parquet(..., union_by_name=True), which gives it one type holding every file's.",
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


def as_first_files(tables: list, paths: Sequence[str], first_columns: tuple) -> list:
    """``tables`` (each read of the file in ``paths``) as DuckDB reads a list of files without
    ``union_by_name``: the first file's columns only, each of the first file's type (``first_columns``:
    the path and column names of the first file of the set these were split from, or ``()`` for
    ``paths[0]``). A file lacking a column is an error naming it; a value another type cannot hold
    (an int64 past int32's range) too (:func:`cast_read_column`). Columns of string, binary or nested
    kinds keep their own types (the readers concatenate those permissively)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if first_columns:
        first, want, typed = first_columns[0], list(first_columns[1]), pq.read_schema(first_columns[0])
    else:
        first, want, typed = paths[0], tables[0].column_names, tables[0].schema
    if any(t.column_names != want for t in tables):
        bound = [bind_columns(want, t.column_names, repr(path)) for path, t in zip(paths, tables)]  # (``A`` reads ``a``)
        for path, t, names in zip(paths, tables, bound):
            if len(names) < len(want):
                raise lacks_first_files_columns(path, t.column_names, first, want)
        tables = [t.select([names[c] for c in want]).rename_columns(want) for t, names in zip(tables, bound)]
    types = {f.name: f.type for f in typed}
    plain = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_temporal, pa.types.is_boolean)
    out = []
    for path, t in zip(paths, tables):
        for i, c in enumerate(want):
            to = types.get(c)
            if to is not None and t.column(i).type != to and any(k(to) for k in plain):
                t = t.set_column(i, t.field(i).with_type(to), cast_read_column(t.column(i), to, c, path))
        out.append(t)
    return out
