"""Datasets of files: any files (FileSet), CSV, JSON and Parquet (the engine's own format).

Parquet datasets can be split by files, by rows (row ranges that cut through files) and by size;
an empty one renders typed SQL from a schema source when it has one.
"""

from __future__ import annotations

import glob
import os
import random
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from smallpond.common import DEFAULT_BATCH_SIZE, GB, GENERATED_COLUMNS, as_flag, quote_identifier, sql_bool
from smallpond.errors import ColumnNotFoundError, ParameterError, columns_not_found
from smallpond.io.columns import bind_columns, case_siblings, fold_case, lacks_first_files_columns
from smallpond.io.manifest import check_listed, relocated
from smallpond.io.paths import check_local_filesystem, duckdb_file_literal, file_version, manifest_paths
from smallpond.logical.base import call_site_msg
from smallpond.logical.dataset_base import _PLAIN_NAME, DataSet, _absent, _empty_table, _path_list_sql, _quote


def duckdb_type_sql(kind: str, column: str, type_text: str) -> str:
    """A declared column type (``schema={"a": "INT"}`` of CSV and JSON files) as SQL that is a type
    and nothing else: DuckDB's own rendering of the type it parses (``INT`` → ``INTEGER``).

    The text is data, a type name that DuckDB's readers parse; pasted into SQL it could be more
    (``INT) AS a, (SELECT ...) AS b, CAST(NULL AS INT``), so a text that is no type is refused,
    naming the column.

    >>> duckdb_type_sql("CsvDataSet", "a", "decimal(5, 2)")
    'DECIMAL(5,2)'
    """
    import duckdb

    if not isinstance(type_text, str):
        raise ParameterError(f"{kind}: the type of column {column!r} must be a str naming a DuckDB type, got {type_text!r}")
    try:
        return str(duckdb.sqltype(type_text))
    except duckdb.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ParameterError(f"{kind}: the type of column {column!r} is not a DuckDB type: {type_text!r} ({first})") from None


def _checked_types(kind: str, schema: Dict[str, str]) -> Dict[str, str]:
    """Each column's type of a declared ``schema`` as SQL (:func:`duckdb_type_sql`)."""
    for k in schema:
        if not isinstance(k, str):
            raise ParameterError(f"{kind}: column names must be str, got {k!r}")
    return {k: duckdb_type_sql(kind, k, v) for k, v in schema.items()}


def _check_declared_columns(ds) -> None:
    """A ``columns`` item of a CSV or JSON dataset naming a column its declared schema lacks fails
    where the dataset is built (the schema is all the columns it can have)."""
    missing = ds.missing_columns()
    if missing:
        raise ParameterError(call_site_msg(type(ds).__name__, str(ds.columns_error(missing))))


def declared_columns_sql(ds) -> str:
    """``CAST(NULL AS <type>) AS "<column>", ...`` of a CSV or JSON dataset's declared schema: the
    names quoted, the types as DuckDB renders them (never the user's text)."""
    kind = type(ds).__name__
    schema = ds.csv_schema if isinstance(ds, CsvDataSet) else ds.json_schema
    types = _checked_types(kind, schema)
    return ", ".join(f"CAST(NULL AS {types[k]}) AS {quote_identifier(k)}" for k in schema)


def _typed_empty_sql(ds) -> str:
    """A query with no rows and the declared columns of a CSV or JSON dataset."""
    return f"( SELECT {ds._column_str} FROM (SELECT {declared_columns_sql(ds)}) WHERE false )"


class FileSet(DataSet):
    """A set of files of any kind; read as a table with a single column ``resolved_paths``."""

    def to_arrow_table(self, max_workers: int = 16, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_arrow_table")
        import pyarrow as pa

        return pa.table({"resolved_paths": pa.array(self.resolved_paths, pa.string())})

    def to_batch_reader(self, batch_size: int = DEFAULT_BATCH_SIZE, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_batch_reader")
        import pyarrow as pa

        t = self.to_arrow_table()
        return pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=batch_size))

    @property
    def num_rows(self) -> int:
        return self.num_files


class CsvDataSet(DataSet):
    """CSV files with an explicit schema (column name → DuckDB type)."""

    def __init__(
        self,
        paths,
        schema: Dict[str, str],
        delim: str = ",",
        max_line_size: Optional[int] = None,
        parallel: bool = True,
        header: bool = False,
        root_dir: Optional[str] = "",
        recursive: bool = False,
        columns: Optional[List[str]] = None,
        union_by_name: bool = False,
    ) -> None:
        if not isinstance(schema, dict) or not schema:
            raise ParameterError(f"CsvDataSet needs a non-empty schema dict of column -> DuckDB type, got {schema!r}")
        _checked_types("CsvDataSet", schema)  # a bad type fails here, where the user gave it
        super().__init__(paths, root_dir, recursive, columns, union_by_name)
        self.csv_schema = OrderedDict(schema)
        _check_declared_columns(self)
        self.delim = delim
        self.max_line_size = max_line_size
        self.parallel = as_flag("CsvDataSet", "parallel", parallel)
        self.header = as_flag("CsvDataSet", "header", header)

    def _describe(self):
        return super()._describe() + (tuple(self.csv_schema.items()), self.delim, self.header)

    def _data_column_names(self) -> frozenset:
        return frozenset(self.csv_schema)

    def columns_error(self, missing: List[str]) -> ColumnNotFoundError:
        return columns_not_found(missing, "the declared schema", list(self.csv_schema), f"columns={self.columns!r}")

    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        if self.empty:
            return _typed_empty_sql(self)
        cols = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in self.csv_schema.items())
        opts = f"delim={_quote(self.delim)}, columns={{ {cols} }}, header={sql_bool(self.header)}, parallel={sql_bool(self.parallel)}, hive_partitioning=false"
        if self.max_line_size is not None:
            opts += f", max_line_size={int(self.max_line_size)}"
        opts += f", union_by_name={sql_bool(self.union_by_name)}"
        return f"( SELECT {self._column_str} FROM read_csv({_path_list_sql(self.resolved_paths)}, {opts}) )"

    def _merge(self, datasets):
        ds = super()._merge(datasets)
        ds.header = self.header
        return ds


class JsonDataSet(DataSet):
    """Newline-delimited JSON files with an explicit schema."""

    def __init__(
        self,
        paths,
        schema: Dict[str, str],
        format: str = "newline_delimited",
        max_object_size: int = 1 * GB,
        root_dir: Optional[str] = "",
        recursive: bool = False,
        columns: Optional[List[str]] = None,
        union_by_name: bool = False,
    ) -> None:
        if not isinstance(schema, dict) or not schema:
            raise ParameterError(f"JsonDataSet needs a non-empty schema dict of column -> DuckDB type, got {schema!r}")
        _checked_types("JsonDataSet", schema)  # a bad type fails here, where the user gave it
        super().__init__(paths, root_dir, recursive, columns, union_by_name)
        self.json_schema = OrderedDict(schema)
        _check_declared_columns(self)
        self.format = format
        self.max_object_size = max_object_size

    def _describe(self):
        return super()._describe() + (tuple(self.json_schema.items()), self.format)

    def _data_column_names(self) -> frozenset:
        return frozenset(self.json_schema)

    def columns_error(self, missing: List[str]) -> ColumnNotFoundError:
        return columns_not_found(missing, "the declared schema", list(self.json_schema), f"columns={self.columns!r}")

    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        if self.empty:
            return _typed_empty_sql(self)
        cols = ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in self.json_schema.items())
        return (
            f"( SELECT {self._column_str} FROM read_json({_path_list_sql(self.resolved_paths)}, "
            f"format={_quote(self.format)}, columns={{ {cols} }}, maximum_object_size={int(self.max_object_size)}, "
            f"union_by_name={sql_bool(self.union_by_name)}, hive_partitioning=false) )"
        )


class ParquetDataSet(DataSet):
    """Parquet files, optionally restricted to row ranges, with optional generated columns.

    A directory among ``paths`` stands for the files its ``.MANIFEST.txt`` lists (one path per
    line; relative ones are relative to the directory), as ``write_parquet`` and a Driver job's
    named outputs and ``FinalResults`` write it; without a manifest, for the ``*.parquet`` files in
    it (and below it with ``recursive=True``).

    Args:
        generated_columns: any of ``"filename"`` and ``"file_row_number"``, added by the reader.
    """

    def __init__(
        self,
        paths,
        root_dir: Optional[str] = "",
        recursive: bool = False,
        columns: Optional[List[str]] = None,
        generated_columns: Optional[List[str]] = None,
        union_by_name: bool = False,
    ) -> None:
        super().__init__(paths, root_dir, recursive, columns, union_by_name)
        generated_columns = list(generated_columns or [])
        bad = [c for c in generated_columns if c not in GENERATED_COLUMNS]
        if bad:
            raise ParameterError(f"generated_columns must be among {list(GENERATED_COLUMNS)}, got {bad}")
        self.generated_columns = generated_columns
        self._resolved_row_ranges = None

    #: the first file of the files this set was split from, and its columns (:meth:`_split`)
    _first_path: Optional[str] = None
    _first_columns: Optional[tuple] = None

    def _by_first_file(self) -> bool:
        """Are these files read by the first file's columns, as DuckDB reads a list of files without
        ``union_by_name`` (a column only later files have is left out, one they lack fails)?"""
        return not self.reads_by_name and self.columns is None and not self.generated_columns

    def _split(self, parts: List["ParquetDataSet"]) -> List["ParquetDataSet"]:
        """``parts`` of this set, each read by this set's first file's columns, as a read of the whole
        set reads them (its footer is read here, once, not by each task that reads a piece)."""
        if len(parts) > 1 and self._by_first_file() and len(self.resolved_paths) > 1:
            path = self._first_path or self.resolved_paths[0]
            first = self._first_columns or _cached_column_names(path) or None
            for p in parts:
                p._first_path, p._first_columns = path, first
        return parts

    def lacks_first_columns(self) -> Optional[ColumnNotFoundError]:
        """The error for a file of this piece of a split set (:meth:`_split`) that lacks a column of
        the set's first file, or None. Its files' footers are read (on a failure only)."""
        if self._first_columns is None or not self._by_first_file():
            return None
        want = {fold_case(c) for c in self._first_columns}
        for path in self.resolved_paths:
            names = _cached_column_names(path)
            if names and not want <= {fold_case(n) for n in names}:
                return lacks_first_files_columns(path, names, self._first_path, self._first_columns)
        return None

    def partition_by_files(
        self, npartition: int, random_shuffle: bool = False, seed: Optional[int] = None
    ) -> List["ParquetDataSet"]:
        return self._split(super().partition_by_files(npartition, random_shuffle, seed))

    def _directory_files(self, directory: str) -> List[str]:
        listed = manifest_paths(directory)
        if listed is not None:
            listed = relocated(directory, listed)
            check_listed(directory, listed)
            return listed
        pattern = (
            os.path.join(glob.escape(directory), "**", "*.parquet")
            if self.recursive
            else os.path.join(glob.escape(directory), "*.parquet")
        )
        return sorted(glob.glob(pattern, recursive=self.recursive))

    def _describe(self):
        ranges = None
        if self._resolved_row_ranges is not None and not all(r.whole_file for r in self._resolved_row_ranges):
            ranges = tuple((r.path, r.begin, r.end) for r in self._resolved_row_ranges)
        return super()._describe() + (tuple(self.generated_columns), ranges)

    def reset(self, paths=None, root_dir: Optional[str] = "", recursive=None) -> None:
        super().reset(paths, root_dir, recursive)
        self._resolved_row_ranges = None

    @property
    def _column_str(self) -> str:
        if not self.columns:
            return "*"
        if "*" in self.columns:
            return ", ".join(map(self._select_item, self.columns))
        return ", ".join(map(self._select_item, self.columns + [c for c in self.generated_columns if c not in self.columns]))

    def _data_column_names(self) -> frozenset:
        paths = self.resolved_paths
        if self._first_columns is not None and self._by_first_file():
            return frozenset(self._first_columns)
        if paths:
            return _parquet_column_names(paths[0])
        # an empty piece: the columns of its schema, or of its sibling's file (``_schema_path``)
        path = getattr(self, "_schema_path", None)
        if self.schema is None and path:
            return _parquet_column_names(path)
        return super()._data_column_names()

    def missing_columns(self) -> List[str]:
        """The items of ``columns`` naming a column that no file has (one that some files lack is
        read as nulls there, by DuckDB and pyarrow alike). Footers are read until every name is
        found: the first file's, and further ones only for names it lacks."""
        named = self._named_columns() if self.columns else []
        paths = self.resolved_paths if named else []
        missing = named
        for path in paths:
            names = _cached_column_names(path)
            if not names:  # unreadable: the reader's own error will say
                return []
            missing = _absent(missing, names)
            if not missing:
                break
        return missing if paths else []

    def columns_error(self, missing: List[str]) -> ColumnNotFoundError:
        paths = self.resolved_paths
        where = repr(paths[0]) if len(paths) == 1 else f"any of {len(paths)} files ({paths[0]!r}, ...); the first"
        return columns_not_found(missing, where, list(_cached_column_names(paths[0])), f"columns={self.columns!r}")

    @property
    def resolved_row_ranges(self):
        if self._resolved_row_ranges is None:
            from smallpond.io import parquet_footer

            # a few files, pyarrow not loaded: their footers read without importing it (~0.1 s)
            ranges = parquet_footer.read_row_ranges(self.resolved_paths)
            if ranges is None:
                from smallpond.io.arrow import read_row_ranges

                ranges = read_row_ranges(self.resolved_paths, max_workers=32)
            self._resolved_row_ranges = ranges
        return self._resolved_row_ranges

    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            self._num_rows = sum(r.num_rows for r in self.resolved_row_ranges)
        return self._num_rows

    @property
    def empty(self) -> bool:
        if self._resolved_row_ranges is not None:
            return not self._resolved_row_ranges
        return self.num_files == 0

    @property
    def estimated_data_size(self) -> int:
        return sum(r.estimated_data_size for r in self.resolved_row_ranges)

    def _read_parquet(self, paths: Sequence[str], extra_row_number: bool) -> str:
        opts = [f"union_by_name={sql_bool(self.union_by_name or self._read_by_name)}", "hive_partitioning=false"]
        if "filename" in self.generated_columns:
            opts.append("filename=true")
        if extra_row_number or "file_row_number" in self.generated_columns:
            opts.append("file_row_number=true")
        src = _path_list_sql(paths) if len(paths) > 1 else duckdb_file_literal(paths[0])
        return f"read_parquet({src}, {', '.join(opts)})"

    def _lead(self) -> Optional[str]:
        """The first file of the set this piece was split from, leading its reads (:meth:`_scan`),
        or None (read otherwise, or that file has a column ``file_index``, which would hide DuckDB's)."""
        ok = self._first_columns and self._by_first_file() and "file_index" not in map(fold_case, self._first_columns)
        return self._first_path if ok else None

    def _scan(self, paths: Sequence[str], extra_row_number: bool, where: Optional[str] = None) -> str:
        """``read_parquet`` of ``paths`` (``WHERE where``); a piece of a split set as DuckDB reads the whole
        set: led by its first file (:meth:`_lead`), its rows left out, so the columns and types are
        that file's and a file lacking one fails a query that reads it only, not every query."""
        lead, conditions = self._lead(), [where] if where else []  # (the filter prunes the file)
        if lead is not None and paths[0] != lead:
            paths, conditions = [lead, *paths], ["file_index <> 0", *conditions]
        read = self._read_parquet(paths, extra_row_number)
        return f"{read} WHERE {' AND '.join(conditions)}" if conditions else read

    def sql_query_fragment(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_fragment")
        if self.empty:
            return self._empty_fragment(conn)
        return f"( {self._select_rows()} )"

    def sql_query_body(self, filesystem=None, conn=None) -> str:
        check_local_filesystem(filesystem, f"{type(self).__name__}.sql_query_body")
        if self.empty or type(self).sql_query_fragment is not ParquetDataSet.sql_query_fragment:
            # a subclass that writes its own fragment is read through it
            return super().sql_query_body(filesystem, conn)
        return self._select_rows()

    def _select_rows(self) -> str:
        """The SELECT (or UNION ALL of SELECTs) of this (non-empty) set's rows."""
        ranges = self._resolved_row_ranges
        paths = [r.path for r in ranges] if ranges is not None else self.resolved_paths
        by_position = {p: cols for p in dict.fromkeys(paths) if (cols := self._columns_by_position(p)) is not None}
        column_str = self._first_columns_sql() or self._column_str
        if (ranges is None or all(r.whole_file for r in ranges)) and not by_position:
            return f"SELECT {column_str} FROM {self._scan(paths, False)}"
        pieces, whole = [], []

        def flush_whole():
            if whole:
                pieces.append(f"SELECT {column_str} FROM {self._scan(whole, False)}")
                whole.clear()

        keep_rn = "file_row_number" in self.generated_columns
        lead_rn = self._lead() is not None and "file_row_number" in map(fold_case, self._first_columns)
        for path, r in zip(paths, ranges if ranges is not None else [None] * len(paths)):
            columns = by_position.get(path)
            if r is None or r.whole_file:
                if columns is None:
                    whole.append(path)
                else:  # a file of its own: its positions are not another file's
                    flush_whole()
                    pieces.append(f"SELECT {columns} FROM {self._read_parquet([path], False)}")
                continue
            flush_whole()
            columns = columns or column_str
            if not keep_rn and (lead_rn or _has_row_number_column(r.path)):
                # the file has a column of that name (any case), which DuckDB's file_row_number
                # option refuses to add beside: the range is taken by position in the scan, which
                # keeps the file's order (slower: the rows before it are read and skipped)
                by_offset = f"SELECT * FROM {self._scan([r.path], False)} LIMIT {r.num_rows} OFFSET {r.begin}"
                pieces.append(f"SELECT {columns} FROM ({by_offset})")
                continue
            rows = self._scan([r.path], True, f"file_row_number BETWEEN {r.begin} AND {r.end - 1}")
            star = "*" if keep_rn else "* EXCLUDE (file_row_number)"
            if columns == "*":
                # one SELECT, not three nested: DuckDB binds a tiny task's statement ~0.07 ms faster
                # (the WHERE sees file_row_number, the select list drops it)
                pieces.append(f"SELECT {star} FROM {rows}")
            else:
                pieces.append(f"SELECT {columns} FROM (SELECT {star} FROM {rows})")
        flush_whole()
        # by name even without union_by_name: a piece's ``*`` is its own file's columns in that
        # file's order, and by position a file whose writer ordered them otherwise would put one
        # column's values under another's name (DuckDB reads such files whole by name as well).
        # A select list of several columns may repeat a name (columns=["*", "upper(b) AS b"]),
        # which BY NAME refuses: each piece then goes in a subquery of its own, where DuckDB names
        # the repeats apart (b, b_1) as a whole read does
        if len(pieces) > 1 and self.columns and len(self.columns) > 1:
            pieces = [f"SELECT * FROM ({p})" for p in pieces]
        if len(pieces) > 1 and self._lead() is not None:
            # count(*) reads a union's first column, which a file may lack: a constant (a longer name)
            k = quote_identifier("_" + max(self._first_columns, key=len))
            pieces = [f"SELECT 0 AS {k}, * FROM ({p})" for p in pieces]
            return f"SELECT * EXCLUDE ({k}) FROM ({' UNION ALL BY NAME '.join(pieces)})"
        return " UNION ALL BY NAME ".join(pieces)

    def _first_columns_sql(self) -> Optional[str]:
        """The select list of a piece of a split set (:meth:`_split`): the set's first file's
        columns; None when the set is read otherwise."""
        if self._first_columns is None or not self._by_first_file():
            return None
        return ", ".join(map(quote_identifier, self._first_columns))

    def _asked_names(self, names: Sequence[str]) -> Optional[List[str]]:
        """The ``columns`` a read of a file with columns ``names`` selects, when they all are names
        (plain, or a column of the file in any case); None when they are ``*``, none, or hold an
        expression (DuckDB binds its names, which no select list here can change)."""
        if not self.columns or "*" in self.columns:
            return None
        lower = {fold_case(n) for n in names}
        if any(not _PLAIN_NAME.fullmatch(c) and fold_case(c) not in lower for c in self.columns):
            return None
        return list(self.columns)

    def _columns_by_position(self, path: str) -> Optional[str]:
        """The select list of ``columns`` over the file ``path`` by position (``#2 AS "A"``), when
        one of them reads a column that another of the file differs from only in case, else None.

        DuckDB takes such columns for one name: of ``a`` and ``A`` it names the second ``A_1`` and
        binds ``A`` to ``a``. By position, ``A`` reads ``A``, as the pyarrow readers read it
        (:func:`~smallpond.io.columns.bind_columns`: the exact name first). A column the file lacks
        is a NULL, as a read unioned by name gives it. Columns that would still clash (``a`` and
        ``A`` both asked) are refused before (:func:`case_clash_error`)."""
        if not self.columns or "*" in self.columns:
            return None  # (no footer read: SQL reads every column, or DuckDB binds them)
        names = _cached_column_names(path)
        siblings = case_siblings(names)
        asked = self._asked_names(names) if siblings else None
        if asked is None:
            return None
        bound = bind_columns(asked, names, repr(path))
        if not any(n in siblings for n in bound.values()):
            return None
        position = {n: i + 1 for i, n in enumerate(names)}
        items = []
        for c in asked:
            n = bound.get(c)
            if n is None:
                items.append(f"NULL AS {quote_identifier(c)}")
            elif n in siblings:
                items.append(f"#{position[n]} AS {quote_identifier(n)}")
            else:
                items.append(self._select_item(c))
        items += [self._select_item(c) for c in self.generated_columns if c not in asked]
        return ", ".join(items)

    def to_arrow_table(self, max_workers: int = 16, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_arrow_table")
        # files unioned by name are read by DuckDB, which unifies a column's types across files (int64
        # in one, string in another: VARCHAR, as the frame's schema says); pyarrow cannot merge them
        by_duckdb = self._union_by_name and self.columns is None
        if (
            conn is not None
            or self.generated_columns
            or (self.columns and "*" in self.columns)
            or self._has_expressions()
            or by_duckdb
        ):
            if self.empty and self._schema_source() is None:
                return _empty_table()
            return super().to_arrow_table(max_workers, filesystem, conn)
        import pyarrow as pa

        from smallpond.io.arrow import load_from_parquet_files

        if self.empty:
            return _empty_table(self._schema_source())
        if self._schema_by_name() is not None:  # one type that holds every file's, as the batch reader reads
            return self.to_batch_reader().read_all()
        try:
            return load_from_parquet_files(
                self.resolved_row_ranges, self.columns, max_workers, schema=self.schema, first_columns=self._first_files()
            )
        except pa.ArrowTypeError as e:  # a column typed differently in two files
            if not self.union_by_name or "Unable to merge" not in str(e):
                raise
            return super().to_arrow_table(max_workers, filesystem, conn)

    def _has_expressions(self) -> bool:
        return bool(self.columns) and any(self._is_expression(c) for c in self.columns)

    def to_batch_reader(self, batch_size: int = DEFAULT_BATCH_SIZE, filesystem=None, conn=None):
        check_local_filesystem(filesystem, f"{type(self).__name__}.to_batch_reader")
        if conn is not None or self.generated_columns or self._has_expressions() or self.union_by_name and self.columns is None:
            if self.empty and self._schema_source() is None:
                import pyarrow as pa

                return pa.RecordBatchReader.from_batches(pa.schema([]), iter([]))
            return super().to_batch_reader(batch_size, filesystem, conn)
        from smallpond.io.arrow import build_batch_reader_from_files

        if self.empty:
            import pyarrow as pa

            schema = self._schema_source()
            return build_batch_reader_from_files(
                [], columns=self.columns, batch_size=batch_size, schema=schema if schema is not None else pa.schema([])
            )
        by_name = self._schema_by_name()
        return build_batch_reader_from_files(
            self.resolved_row_ranges,
            columns=self.columns,
            batch_size=batch_size,
            schema=by_name,
            first_columns=self._first_files() if by_name is None else None,
        )

    def _first_files(self) -> Optional[tuple]:
        """``first_columns`` of the pyarrow readers (:func:`~smallpond.io.arrow.load_from_parquet_files`):
        the first file's columns of the set split (``()``: these files' first), when read by them."""
        if not self._by_first_file():
            return None
        return (self._first_path, self._first_columns) if self._first_columns is not None else ()

    def _schema_by_name(self):
        """The columns of files read by name (:meth:`mark_read_by_name`) whose columns or types differ
        (tasks of a Python map typed theirs apart: a null column in one, int64 in another): every
        file's, in the order first seen, each of one type that holds every file's values (see
        :func:`~smallpond.io.partition_types.unify_partition_schemas`); None otherwise (the pyarrow
        readers take the first file's, ``columns=`` binds its names in every file). Every footer is read."""
        if not self._read_by_name or self.columns is not None:
            return None
        paths = list(dict.fromkeys(self.resolved_paths))
        if len(paths) < 2:
            return None
        import pyarrow.parquet as pq

        from smallpond.io.partition_types import unify_partition_schemas

        schemas = [(p, pq.read_schema(p).remove_metadata()) for p in paths]
        if all(s.equals(schemas[0][1]) for _, s in schemas[1:]):
            return None
        return unify_partition_schemas(schemas, f"the {len(paths)} files of {type(self).__name__}({paths[0]!r}, ...)")

    def partition_by_rows(
        self, npartition: int, random_shuffle: bool = False, seed: Optional[int] = None
    ) -> List["ParquetDataSet"]:
        """Split into ``npartition`` datasets of near-equal row counts (files may be split)."""
        from smallpond.io.rowrange import RowRange

        if npartition <= 0:
            raise ParameterError(f"npartition must be positive, got {npartition}")
        ranges = list(self.resolved_row_ranges)
        if random_shuffle:
            random.Random(seed).shuffle(ranges)
        out = []
        for group in RowRange.partition_by_rows(ranges, npartition):
            group = sorted(group, key=lambda r: (r.path, r.begin))
            ds = self._with_paths(sorted({r.path for r in group}))
            ds._resolved_row_ranges = group
            out.append(ds)
        return self._split(out)

    def partition_by_size(self, max_partition_size: int) -> List["ParquetDataSet"]:
        if self.empty:
            return []
        n = self.estimated_data_size // max(1, max_partition_size) + 1
        return self.partition_by_rows(int(n))

    def _with_paths(self, paths):
        ds = super()._with_paths(paths)
        ds._resolved_row_ranges = None
        if not paths and ds.schema is None:
            # an empty piece of a non-empty dataset keeps a file to take its columns from (see
            # ``_schema_path`` in :meth:`_schema_source`)
            ranges = self._resolved_row_ranges or []
            source = [r.path for r in ranges if r.num_rows > 0] or self._resolved_paths or [r.path for r in ranges]
            ds._schema_path = source[0] if source else getattr(self, "_schema_path", None)
        return ds

    def _schema_source(self):
        """The schema of an empty dataset: :attr:`schema` if set, else that of ``_schema_path``.

        ``_schema_path`` is a Parquet file with this dataset's columns, set on the empty pieces of a
        partitioned dataset (and on the empty-placeholder partitions of a partition producer): a
        file of a sibling partition. Besides giving an empty dataset its columns, its rows serve as
        a sample from which a Python map infers the output schema of a partition with no rows.
        """

        import pyarrow.parquet as pq

        if self.schema is not None:
            return self.schema
        path = getattr(self, "_schema_path", None)
        return pq.read_schema(path) if path else None

    def _empty_fragment(self, conn) -> str:
        path = self._lead() or getattr(self, "_schema_path", None)  # (the set's first file types it, as a read of all)
        if self.schema is None and path:
            columns = self._first_columns_sql() or self._column_str
            return f"( SELECT {columns} FROM read_parquet({duckdb_file_literal(path)}, hive_partitioning=false) LIMIT 0 )"
        return super()._empty_fragment(conn)

    def _merge(self, datasets):
        ds = super()._merge(datasets)
        ds.columns = self.columns
        ds.generated_columns = self.generated_columns
        if len({(d._first_path, d._first_columns) for d in datasets}) > 1:  # pieces of other sets: a set of its own
            ds._first_path = ds._first_columns = None
        if any(d._resolved_row_ranges is not None for d in datasets):
            ds._resolved_row_ranges = [r for d in datasets for r in d.resolved_row_ranges]
            ds._resolved_paths = sorted({r.path for r in ds._resolved_row_ranges})
        return ds

    def remove_empty_files(self) -> None:
        ranges = [r for r in self.resolved_row_ranges if r.num_rows > 0]
        if not ranges and self._resolved_row_ranges:
            ranges = self._resolved_row_ranges[:1]
        self._resolved_row_ranges = ranges
        self._resolved_paths = sorted({r.path for r in ranges})

    @staticmethod
    def create_from(table, output_dir: str, filename: str = "data") -> "ParquetDataSet":
        from smallpond.io.arrow import dump_to_parquet_files

        paths = dump_to_parquet_files(table, output_dir, filename)
        return ParquetDataSet.from_files(paths)

    def load_partitioned_datasets(
        self, npartition: int, data_partition_column: str, hive_partitioning: bool = False
    ) -> List["ParquetDataSet"]:
        """Group files by their partition key (KV metadata, hive path ``col=k`` or column value)."""
        groups: List[List[str]] = [[] for _ in range(npartition)]
        for path in self.resolved_paths:
            key = self._read_partition_key(path, data_partition_column, hive_partitioning)
            if key is None:
                continue
            if not 0 <= key < npartition:
                raise ParameterError(f"partition key {key} of {path!r} is out of range 0-{npartition - 1}")
            groups[key].append(path)
        return [self._with_paths(g) for g in groups]

    @staticmethod
    def _read_partition_key(path: str, data_partition_column: str, hive_partitioning: bool) -> Optional[int]:
        import pyarrow.parquet as pq

        from smallpond.common import PARQUET_METADATA_KEY_PREFIX

        if hive_partitioning:
            m = re.search(rf"{re.escape(data_partition_column)}=(\d+)", path)
            if m:
                return int(m.group(1))
        md = pq.read_metadata(path)
        kv = md.metadata or {}
        raw = kv.get((PARQUET_METADATA_KEY_PREFIX + data_partition_column).encode())
        if raw is not None:
            return int(raw.decode())
        m = re.search(rf"{re.escape(data_partition_column)}=(\d+)", path)
        if m:
            return int(m.group(1))
        if md.num_rows == 0:
            return None
        if data_partition_column not in md.schema.to_arrow_schema().names:
            # (a HashPartitionNode's files all carry the key in their metadata: this file was
            # written by something else, or by another partition column)
            raise ParameterError(
                f"cannot tell which partition {path!r} belongs to: it has no {PARQUET_METADATA_KEY_PREFIX}"
                f"{data_partition_column} metadata, no '{data_partition_column}=<k>' folder in its path and no "
                f"column {data_partition_column!r} (is {data_partition_column!r} the data_partition_column the files "
                "were partitioned by?)"
            )
        from smallpond.io.partition_key import partition_key_of_column

        return partition_key_of_column(path, data_partition_column)


_names_seen: Dict[tuple, tuple] = {}


def _parquet_column_names(path: str) -> frozenset:
    """The column names of a Parquet file (its footer read once per version of the file)."""
    return frozenset(_cached_column_names(path))


def _cached_column_names(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    key = (path, *file_version(st))  # (a rewrite keeping size and mtime is a new version: its ctime)
    names = _names_seen.get(key)
    if names is None:
        _names_seen[key] = names = tuple(_column_names_in_order(path))
    return names


def _column_names_in_order(path: str) -> List[str]:
    """The top-level column names of a Parquet file, read from its footer (pyarrow only for a
    footer the light reader does not take); [] for a file that cannot be read (the reader's own
    error will say)."""
    from smallpond.io import parquet_footer

    try:
        names = parquet_footer.read_column_names(path)
        if names is not None:
            return names
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception:
        return []


def case_clash_error(ds: "ParquetDataSet") -> Optional[str]:
    """Why DuckDB cannot read ``ds`` as the pyarrow readers do, or None: a file (the first; every
    file, when unioned by name) of which it would read two columns whose names differ only in
    case, or ``columns`` that bind to no one column of it (see
    :func:`~smallpond.io.columns.bind_columns`). DuckDB compares names in any case: of ``a`` and
    ``A`` it renames the second (``A_1``) and takes ``a`` for ``A`` in SQL, so such a read is
    refused before SQL runs. A read of named ``columns`` that takes one of the two only is not:
    it reads that column by position (:meth:`ParquetDataSet._columns_by_position`)."""
    paths = ds.resolved_paths
    for path in paths if ds.union_by_name or ds._read_by_name else paths[:1]:
        names = _cached_column_names(path)
        siblings = case_siblings(names)
        asked = ds._asked_names(names)
        if asked is None:
            if siblings:
                return case_clash_message((path, *siblings[next(iter(siblings))][:2]))
            continue
        if not siblings and len({fold_case(c) for c in asked}) == len(asked):
            continue
        try:
            read = set(bind_columns(asked, names, repr(path)).values())
        except ColumnNotFoundError as e:
            return f"{e} (columns={ds.columns!r})"
        for n in names:
            both = [m for m in siblings.get(n, []) if m in read]
            if len(both) > 1:
                return case_clash_message((path, both[0], both[1]))
    return None


def case_clash_message(clash: tuple) -> str:
    path, a, b = clash
    return (
        f"Parquet file {path} has columns {a!r} and {b!r}, whose names differ only in case: DuckDB, which "
        f"runs SQL and partitioning, takes them for one name (it would read {b!r} as {b + '_1'!r} and use "
        f"{a!r} for {b!r}); rename one of them in the file, or read one of them only (columns=[...]; "
        "Python code over it, through pyarrow, sees both)"
    )


def _has_row_number_column(path: str) -> bool:
    """Has the Parquet file a column ``file_row_number`` (DuckDB compares names in any case)?"""
    return any(fold_case(name) == "file_row_number" for name in _cached_column_names(path))
