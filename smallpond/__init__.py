"""smallpond: partitioned data processing with DuckDB over Parquet on a shared filesystem."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("smallpond")
    except PackageNotFoundError:  # pragma: no cover
        __version__ = "unknown"
except ImportError:  # pragma: no cover
    __version__ = "unknown"
