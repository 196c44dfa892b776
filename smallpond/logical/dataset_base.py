"""The DataSet base class: a description of data on the shared filesystem (see :mod:`smallpond.logical.dataset`).

A DataSet is a *description*: file paths (globs allowed), column selection and format options.
Tasks exchange DataSets, never the data itself.

Invariants:

* ``resolved_paths`` is sorted and cached; globs are expanded once.
* An empty dataset always renders valid SQL (typed when its schema is known).
* ``partition_by_files`` always splits by files (it never silently switches to rows).
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import os
import random
import re
import warnings
from typing import Callable, List, Optional, Sequence, Union

from smallpond.common import (
    DEFAULT_BATCH_SIZE,
    EMPTY_PLACEHOLDER_COLUMN,
    as_flag,
    quote_identifier,
    quote_literal,
    split_into_rows,
    sql_fragment,
)
from smallpond.errors import ColumnNotFoundError, ParameterError, columns_not_found
from smallpond.io.columns import fold_case
from smallpond.io.paths import check_local_filesystem, duckdb_file_literal, file_identity, user_path
from smallpond.io.sqltext import fragment_problem

_WILDCARD = re.compile(r"[*?]|\[.*\]")
# a ``**`` path component: any depth only with ``recursive=True`` (Python's glob); else one level
_DOUBLE_STAR = re.compile(r"(^|/)\*\*(/|$)")
#: a ``columns`` item that is a column name as it stands in SQL (else it is quoted when it names a
#: column of the data, or taken as an expression)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: DuckDB's reserved keywords: a column named so must be quoted (``select``, ``order``)
_RESERVED = frozenset(
    "all analyse analyze and any array as asc asymmetric both case cast check collate column constraint "
    "create default deferrable desc describe distinct do else end except false fetch for foreign from "
    "grant group having in initially intersect into lateral leading limit not null offset on only or "
    "order pivot pivot_longer pivot_wider placing primary qualify references returning select show some "
    "summarize symmetric table then to trailing true union unique unpivot using variadic when where "
    "window with".split()
)
_quote = quote_literal


def _path_list_sql(paths: Sequence[str]) -> str:
    return "[" + ", ".join(duckdb_file_literal(p) for p in paths) + "]"


def _absent(names: Sequence[str], have) -> List[str]:
    """The ``names`` not among ``have``, ignoring case (DuckDB binds ``Key`` to a column ``key``)."""
    lower = {fold_case(h) for h in have}
    return [n for n in names if fold_case(n) not in lower]


@functools.lru_cache(maxsize=1024)
def parses_as_select_item(item: str) -> bool:
    """Whether ``SELECT <item> FROM t`` is one statement DuckDB can parse whose select list is
    ``item`` (a ``columns`` item that is not, like ``it's``, ``a; drop table t`` or ``a from (select
    9 as a) union all select a``, which would read rows of its own, can only be meant as a column
    name)."""
    if fragment_problem(item, "select list") is not None:
        return False
    import duckdb

    try:
        return len(duckdb.connect().extract_statements(f"SELECT {sql_fragment(item)} FROM t")) == 1
    except duckdb.Error:
        return False


def _default_conn(conn):
    if conn is not None:
        return conn
    import duckdb

    return duckdb.connect()


def _warn_double_star(kind: str, paths: List[str]) -> None:
    """Warn, at the user's line, of patterns whose ``**`` matches one folder level only: without
    ``recursive=True`` it is Python's (and upstream smallpond's) ``*``, where DuckDB's ``**`` (and
    Spark's ``recursiveFileLookup``) reach any depth, so ``data/**/*.parquet`` would silently leave
    out ``data/x.parquet`` and ``data/a/b/y.parquet``."""
    stars = [p for p in paths if _DOUBLE_STAR.search(p)]
    if stars:
        from smallpond.logical.base import call_site_msg, user_stacklevel

        warnings.warn(
            call_site_msg(
                kind,
                f"'**' in {', '.join(map(repr, stars))} matches exactly one folder level (as '*') "
                "without recursive=True; pass recursive=True to match files at any depth, as DuckDB's '**' does",
            ),
            UserWarning,
            stacklevel=user_stacklevel(),
        )


class DataSet:
    """Base class: a list of paths (or glob patterns) relative to ``root_dir``.

    Args:
        paths: a path, a glob pattern, or a list of them.
        root_dir: directory that relative paths are joined to; ``""`` means the current working
            directory at construction time; ``None`` means paths are used verbatim. A leading
            ``~`` in a path or in ``root_dir`` is the home directory.
        recursive: let ``**`` in patterns match across directories.
        columns: columns (or SQL expressions, for DuckDB readers) to select; ``None`` means all.
        union_by_name: combine files by column name rather than position.
    """

    def __init__(
        self,
        paths: Union[str, List[str]],
        root_dir: Optional[str] = "",
        recursive: bool = False,
        columns: Optional[List[str]] = None,
        union_by_name: bool = False,
    ) -> None:
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, (list, tuple)) or not all(isinstance(p, str) for p in paths):
            raise ParameterError(f"paths must be a str or a list of str, got {paths!r}")
        if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
            raise ParameterError(f"columns must be a list of str, got {columns!r}")
        self.paths: List[str] = [user_path(p) for p in paths]
        self.root_dir: Optional[str] = os.path.abspath(user_path(root_dir)) if root_dir is not None else None
        self.recursive = as_flag(type(self).__name__, "recursive", recursive)
        if not self.recursive and root_dir is not None:
            _warn_double_star(type(self).__name__, self.paths)
        self.columns = list(columns) if columns is not None else None
        self._union_by_name = as_flag(type(self).__name__, "union_by_name", union_by_name)
        self._resolved_paths: Optional[List[str]] = None
        self._num_rows: Optional[int] = None
        #: Optional Arrow schema, used to render typed SQL when the dataset has no files.
        self.schema = None

    @classmethod
    def from_files(cls, files: Sequence[str], **kwargs) -> "DataSet":
        """A dataset of exact, absolute file paths (written by a task): used as given, never globbed.

        Cheaper than the constructor for the engine's own outputs, and safe for file names that
        hold glob characters (``*``, ``?``, ``[``).
        """
        ds = cls(list(files), root_dir=None, **kwargs)
        ds._resolved_paths = sorted(ds.paths)
        return ds

    # -- paths ---------------------------------------------------------------------------------
    @property
    def absolute_paths(self) -> List[str]:
        if self.root_dir is None:
            return sorted(self.paths)
        return sorted(os.path.join(self.root_dir, p) for p in self.paths)

    def _patterns(self) -> List[tuple]:
        """(absolute path, glob pattern or None) per path; ``root_dir`` is never read as a pattern."""
        if self.root_dir is None:
            return [(p, p if _WILDCARD.search(p) else None) for p in sorted(self.paths)]
        root = glob.escape(self.root_dir)
        return sorted(
            (os.path.join(self.root_dir, p), os.path.join(root, p) if _WILDCARD.search(p) else None) for p in self.paths
        )

    @property
    def resolved_paths(self) -> List[str]:
        if self._resolved_paths is None:
            out: List[str] = []
            for path, pattern in self._patterns():
                if pattern is not None:
                    matches = glob.glob(pattern, recursive=self.recursive)
                    if matches or not os.path.exists(path):
                        out.extend(self._glob_files(matches))
                        continue
                    # else: a name holding glob characters ("x[1]") that matches only itself, literally
                if os.path.isdir(path):
                    out.extend(self._directory_files(path))
                else:
                    out.append(path)
            self._resolved_paths = sorted(set(out)) if len(out) != len(set(out)) else sorted(out)
        return self._resolved_paths

    def _directory_files(self, directory: str) -> List[str]:
        """The files a directory given as a path stands for (subclasses decide; default: itself)."""
        return [directory]

    def _glob_files(self, matches: List[str]) -> List[str]:
        """The files a glob's matches stand for: its files, and the files of each folder it
        matches when this kind reads folders (Parquet: ``out/part*`` over output folders reads
        their files, as the folders given one by one would); other folders are left out."""
        reads_folders = type(self)._directory_files is not DataSet._directory_files
        out: List[str] = []
        for x in matches:
            if not os.path.isdir(x):
                out.append(x)
            elif reads_folders:
                out.extend(self._directory_files(x))
        return out

    @property
    def num_files(self) -> int:
        return len(self.resolved_paths)

    @property
    def empty(self) -> bool:
        return self.num_files == 0

    @property
    def union_by_name(self) -> bool:
        return self._union_by_name or self.columns is not None

    #: files the engine wrote whose columns may differ from file to file, read by name (see
    #: :meth:`mark_read_by_name`); a class default, so datasets pickled before it read as False
    _read_by_name = False

    @property
    def reads_by_name(self) -> bool:
        """Are the files read by column name, each with its own columns (``union_by_name``, or
        the engine's files marked by :meth:`mark_read_by_name`), rather than by the first file's?"""
        return self._union_by_name or self._read_by_name

    def mark_read_by_name(self) -> None:
        """Read these files by name from now on: they are the output of a task whose columns may
        differ from another task's (Python code that typed its own output, or a task reading files
        read by name), and a read of several such tasks' files by the first file's columns would
        drop the others' in silence. Unlike ``union_by_name``, SQL reads them by name and Python
        code through pyarrow still (with every file's columns)."""
        self._read_by_name = True

    @property
    def udfs(self) -> list:
        return []

    @property
    def _column_str(self) -> str:
        return ", ".join(map(self._select_item, self.columns)) if self.columns else "*"

    def _select_item(self, item: str) -> str:
        """A ``columns`` item in SQL: a name of the data's columns quoted when it must be (``my
        col``, ``select``), anything else as written (upstream's ``columns`` may hold expressions:
        ``"string_split(url, '/')[1] as host"``). An item that is no valid select item (``it's``)
        is a name whatever the data's columns: it is quoted, never pasted raw (the names are not
        known on an empty partition without a schema)."""
        if _PLAIN_NAME.fullmatch(item) and fold_case(item) not in _RESERVED:
            return item
        if self._is_expression(item):
            return sql_fragment(item)
        return quote_identifier(item)

    def _is_expression(self, item: str) -> bool:
        """Whether a ``columns`` item is an expression rather than a name of the data's columns (in
        any case of ASCII letters, as DuckDB binds a name: ``X-1`` for a column ``x-1`` is that
        column, never ``x - 1``; ``a-É`` for a column ``a-é`` is ``a - É``, as DuckDB, which folds
        no other letter, binds it)."""
        if _PLAIN_NAME.fullmatch(item) or fold_case(item) in {fold_case(c) for c in self._data_column_names()}:
            return False
        return parses_as_select_item(item)

    def _data_column_names(self) -> frozenset:
        """The names of the data's columns, when this kind knows them (asked only for a
        ``columns`` item that is no plain name): those of :attr:`schema` if set."""
        return frozenset(self.schema.names) if self.schema is not None else frozenset()

    def _named_columns(self) -> List[str]:
        """The items of ``columns`` that are plain names (``a``, ``url_2``), so name a column of the
        data; others (expressions, ``*``, names that must be quoted) are left to the readers,
        which need not parse them (or import DuckDB) in the scheduler's process."""
        return [c for c in self.columns or () if _PLAIN_NAME.fullmatch(c)]

    def missing_columns(self) -> List[str]:
        """The plain names among ``columns`` (:meth:`_named_columns`) that are no column of the data,
        when this kind knows its columns (compared ignoring case, as DuckDB binds names)."""
        known = self._data_column_names()
        return _absent(self._named_columns(), known) if self.columns and known else []

    def columns_error(self, missing: List[str]) -> ColumnNotFoundError:
        """The error for ``missing`` (from :meth:`missing_columns`): the columns, where they were
        looked for, and what is there."""
        return columns_not_found(missing, "the data", sorted(self._data_column_names()), f"columns={self.columns!r}")

    def missing_paths(self) -> List[str]:
        """Plain (non-glob) paths that do not exist, and globs that match nothing."""
        missing = []
        for path, pattern in self._patterns():
            if pattern is not None:
                if not glob.glob(pattern, recursive=self.recursive) and not os.path.exists(path):
                    missing.append(path)
            elif not os.path.exists(path):
                missing.append(path)
        return missing

    def reset(self, paths=None, root_dir: Optional[str] = "", recursive=None) -> None:
        if paths is not None:
            self.paths = [user_path(p) for p in ([paths] if isinstance(paths, str) else paths)]
            self.root_dir = os.path.abspath(user_path(root_dir)) if root_dir is not None else None
        if recursive is not None:
            self.recursive = as_flag(type(self).__name__, "recursive", recursive)
        self._resolved_paths = None
        self._num_rows = None

    def _with_paths(self, paths: List[str]) -> "DataSet":
        ds = copy.copy(self)
        ds.paths = list(paths)
        ds.root_dir = None
        ds._resolved_paths = sorted(paths)
        ds._num_rows = None
        return ds

    def _rebase(self, old: str, new: str) -> None:
        """Rewrite paths under directory ``old`` to lie under ``new`` (after a rename)."""

        def mv(p: str) -> str:
            return new + p[len(old) :] if p == old or p.startswith(old + os.sep) else p

        self._repath(mv)

    def _repath(self, mv: Callable[[str], str]) -> None:
        """Rewrite each path ``p`` (and the root folder) to ``mv(p)``: files that moved one by one."""
        if self.root_dir is not None:
            self.root_dir = mv(self.root_dir)
        else:
            self.paths = [mv(p) for p in self.paths]
        if self._resolved_paths is not None:
            self._resolved_paths = [mv(p) for p in self._resolved_paths]
        if getattr(self, "_schema_path", None):
            self._schema_path = mv(self._schema_path)
        ranges = getattr(self, "_resolved_row_ranges", None)
        if ranges is not None:
            for r in ranges:
                r.path = mv(r.path)

    # -- identity ------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A digest of the description and of each file's identity (see :func:`file_identity`)."""
        h = hashlib.sha256()
        h.update(type(self).__name__.encode())
        h.update(repr(self._describe()).encode())
        for p in self.resolved_paths:  # ~50 us a file here (1000 files: ~55 ms, against ~5 ms for stat alone)
            h.update(file_identity(p).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def _describe(self) -> tuple:
        return (self.columns, self._union_by_name, self.recursive)

    def fingerprint_code(self) -> tuple:
        """The user's Python the dataset runs to produce its rows (a query builder), which a task's
        fingerprint digests as code beside :meth:`fingerprint` (a logical dataset cannot digest
        code itself); none for datasets of files."""
        return ()

    # -- SQL -----------------------------------------------------------------------------------
    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        raise NotImplementedError(f"{type(self).__name__} cannot be read with SQL")

    def sql_query_body(self, filesystem=None, conn=None) -> str:
        """A query returning this dataset's rows, as a view or a common table expression is
        defined: :meth:`sql_query_fragment` without its parentheses where a dataset can say so
        (Parquet), else ``SELECT * FROM`` the fragment. The same rows, in the same order; one
        level of ``SELECT *`` less saves DuckDB ~0.1 ms binding each statement."""
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_body")
        return f"SELECT * FROM {self.sql_query_fragment(filesystem, conn)}"

    def _empty_fragment(self, conn) -> str:
        if self.schema is not None and conn is not None:
            from smallpond.io.arrow import empty_table

            name = f"__empty_{id(self):x}"
            conn.register(name, empty_table(self.schema))
            return f"( SELECT {self._column_str} FROM {name} )"
        return f"( SELECT * FROM (SELECT NULL AS {EMPTY_PLACEHOLDER_COLUMN}) WHERE false )"

    # -- reading -------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            conn = _default_conn(None)
            self._num_rows = conn.execute(f"SELECT count(*) FROM {self.sql_query_fragment(conn=conn)}").fetchone()[0]
        return self._num_rows

    def to_arrow_table(self, max_workers: int = 16, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_arrow_table")
        conn = _default_conn(conn)
        return conn.sql(f"SELECT * FROM {self.sql_query_fragment(conn=conn)}").to_arrow_table()

    def to_batch_reader(self, batch_size: int = DEFAULT_BATCH_SIZE, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_batch_reader")
        from smallpond.io.arrow import rebatch

        conn = _default_conn(conn)
        rel = conn.sql(f"SELECT * FROM {self.sql_query_fragment(conn=conn)}")
        # DuckDB 2 deprecates fetch_record_batch in favour of to_arrow_reader (absent in older releases)
        reader = rel.to_arrow_reader(batch_size) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(batch_size)
        return rebatch(reader, batch_size)

    def to_pandas(self):
        return self.to_arrow_table().to_pandas()

    def log(self, num_rows: int = 200) -> None:
        from smallpond.common import logger

        logger.info(f"{self}:\n{self.to_pandas().head(num_rows)}")

    # -- partitioning --------------------------------------------------------------------------
    def partition_by_files(self, npartition: int, random_shuffle: bool = False, seed: Optional[int] = None) -> List["DataSet"]:
        """Split into ``npartition`` datasets by whole files (some may be empty)."""
        if npartition <= 0:
            raise ParameterError(f"npartition must be positive, got {npartition}")
        paths = list(self.resolved_paths)
        if random_shuffle:
            random.Random(seed).shuffle(paths)
        groups = split_into_rows(paths, npartition)
        return [self._with_paths(g) for g in groups]

    @staticmethod
    def merge(datasets: Sequence["DataSet"]) -> "DataSet":
        if not datasets:
            raise ParameterError("cannot merge an empty list of datasets")
        first = datasets[0]
        if any(type(d) is not type(first) for d in datasets):
            kinds = sorted({type(d).__name__ for d in datasets})
            raise ParameterError(f"cannot merge datasets of different kinds: {kinds}")
        return first._merge(datasets)

    def _merge(self, datasets: Sequence["DataSet"]) -> "DataSet":
        ds = self._with_paths([p for d in datasets for p in d.resolved_paths])
        ds.recursive = any(d.recursive for d in datasets)
        ds._union_by_name = any(d._union_by_name for d in datasets)
        if any(d._read_by_name for d in datasets):
            ds._read_by_name = True
        ds.schema = next((d.schema for d in datasets if d.schema is not None), None)
        ds._schema_path = next((d._schema_path for d in datasets if getattr(d, "_schema_path", None)), None)
        return ds

    def __repr__(self) -> str:
        shown = self.paths[:3]
        more = f" (+{len(self.paths) - 3} more)" if len(self.paths) > 3 else ""
        return f"{type(self).__name__}({shown}{more})"

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)


def _empty_table(schema=None):
    import pyarrow as pa

    from smallpond.io.arrow import empty_table

    return empty_table(schema or pa.schema([]))
