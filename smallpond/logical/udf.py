"""User-defined functions for DuckDB: type descriptions, the ``@udf`` decorator and UDF contexts.

Types are described by name and turned into DuckDB types only inside a worker, when a connection
binds them, so this module imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

__all__ = [
    "UDFType",
    "UDFStructType",
    "UDFListType",
    "UDFMapType",
    "UDFAnyParameters",
    "UDFContext",
    "PythonUDFContext",
    "ExternalModuleContext",
    "DuckDbExtensionContext",
    "UserDefinedFunction",
    "udf",
]


class UDFType(Enum):
    """DuckDB scalar types usable as UDF parameter and return types."""

    SQLNULL = "SQLNULL"
    BOOLEAN = "BOOLEAN"
    TINYINT = "TINYINT"
    UTINYINT = "UTINYINT"
    SMALLINT = "SMALLINT"
    USMALLINT = "USMALLINT"
    INTEGER = "INTEGER"
    INT = "INTEGER"  # alias: upstream's documentation writes UDFType.INT
    UINTEGER = "UINTEGER"
    BIGINT = "BIGINT"
    UBIGINT = "UBIGINT"
    HUGEINT = "HUGEINT"
    UUID = "UUID"
    FLOAT = "FLOAT"
    DOUBLE = "DOUBLE"
    DATE = "DATE"
    TIMESTAMP = "TIMESTAMP"
    TIMESTAMP_MS = "TIMESTAMP_MS"
    TIMESTAMP_NS = "TIMESTAMP_NS"
    TIMESTAMP_S = "TIMESTAMP_S"
    TIME = "TIME"
    TIME_TZ = "TIME_TZ"
    TIMESTAMP_TZ = "TIMESTAMP_TZ"
    VARCHAR = "VARCHAR"
    BLOB = "BLOB"
    BIT = "BIT"
    INTERVAL = "INTERVAL"

    def to_duckdb_type(self):
        import duckdb.sqltypes as t

        return getattr(t, self.value)


class UDFStructType:
    def __init__(self, fields: Union[Dict[str, Any], List[Any]]):
        self.fields = fields

    def to_duckdb_type(self):
        import duckdb

        if isinstance(self.fields, dict):
            return duckdb.struct_type({k: _to_duckdb(v) for k, v in self.fields.items()})
        return duckdb.struct_type([_to_duckdb(v) for v in self.fields])


class UDFListType:
    def __init__(self, child):
        self.child = child

    def to_duckdb_type(self):
        import duckdb

        return duckdb.list_type(_to_duckdb(self.child))


class UDFMapType:
    def __init__(self, key, value):
        self.key = key
        self.value = value

    def to_duckdb_type(self):
        import duckdb

        return duckdb.map_type(_to_duckdb(self.key), _to_duckdb(self.value))


class UDFAnyParameters:
    """Marks a UDF that accepts any parameters."""

    def to_duckdb_type(self):
        return None


def _to_duckdb(t):
    if hasattr(t, "to_duckdb_type"):
        return t.to_duckdb_type()
    if isinstance(t, str):
        import duckdb

        return duckdb.sqltype(t)
    return t


class UDFContext:
    """Something that can register functions on a DuckDB connection."""

    def bind(self, conn) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self) -> Tuple[str, ...]:
        """The files whose contents define the functions (a module, an extension): their digests
        enter the fingerprint of a node using this context (see ``Node.fingerprint_files``)."""
        return ()


class PythonUDFContext(UDFContext):
    def __init__(self, name: str, func: Callable, params, return_type, use_arrow_type: bool = False):
        self.name = name
        self.func = func
        self.params = params
        self.return_type = return_type
        self.use_arrow_type = use_arrow_type

    def bind(self, conn) -> None:
        if isinstance(self.params, UDFAnyParameters) or self.params is None:
            params = None
        else:
            params = [_to_duckdb(p) for p in self.params]
        conn.create_function(
            self.name,
            self.func,
            params,
            _to_duckdb(self.return_type),
            type="arrow" if self.use_arrow_type else "native",
        )


class ExternalModuleContext(UDFContext):
    """A Python file defining ``create_duckdb_udfs(conn)``."""

    def __init__(self, name: str, module_path: str):
        self.name = name
        self.module_path = module_path

    def bind(self, conn) -> None:
        spec = importlib.util.spec_from_file_location(self.name, self.module_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import UDF module {self.module_path!r}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.create_duckdb_udfs(conn)

    def files(self) -> Tuple[str, ...]:
        return (self.module_path,)


class DuckDbExtensionContext(UDFContext):
    def __init__(self, name: str, extension_path: str):
        self.name = name
        self.extension_path = extension_path

    def bind(self, conn) -> None:
        conn.load_extension(self.extension_path)

    def files(self) -> Tuple[str, ...]:
        return (self.extension_path,)


@dataclass
class UserDefinedFunction:
    """A Python function described for DuckDB; made with :func:`udf`."""

    name: str
    func: Callable
    params: Any
    return_type: Any
    use_arrow_type: bool = False

    def __call__(self, *args, **kwargs):
        return self.func(*args, **kwargs)

    def context(self) -> PythonUDFContext:
        return PythonUDFContext(self.name, self.func, self.params, self.return_type, self.use_arrow_type)


def udf(params, return_type, use_arrow_type: bool = False, name: Optional[str] = None):
    """Describe a Python function as a DuckDB scalar UDF.

    Example::

        @udf(params=[UDFType.BIGINT, UDFType.BIGINT], return_type=UDFType.BIGINT)
        def my_gcd(a, b): ...  # BIGINT: a Python int column's type (INTEGER would not take it)

        df.map("my_gcd(a, b) as g", udfs=[my_gcd])

    A function named like one of DuckDB's (``gcd``) is added beside it, and SQL calls whose
    argument types DuckDB's takes run DuckDB's: the node warns of such a name.
    """

    def wrap(func: Callable) -> UserDefinedFunction:
        return UserDefinedFunction(name or func.__name__, func, params, return_type, use_arrow_type)

    return wrap


def udf_context_from_spec(spec: Any, registry: Dict[str, UDFContext]) -> UDFContext:
    """Resolve one item of a node's ``udfs`` list."""
    if isinstance(spec, UserDefinedFunction):
        return spec.context()
    if isinstance(spec, UDFContext):
        return spec
    if isinstance(spec, str):
        if spec in registry:
            return registry[spec]
        if spec.endswith(".duckdb_extension"):
            return DuckDbExtensionContext(os.path.basename(spec), spec)
        if spec.endswith(".so") or spec.endswith(".py"):
            return ExternalModuleContext(os.path.splitext(os.path.basename(spec))[0], spec)
    from smallpond.errors import ParameterError

    raise ParameterError(
        f"invalid udf {spec!r}: expected a @udf function, a name registered with ctx.create_function, "
        "a '.duckdb_extension' path or a module path"
    )
