"""Parquet writer options: one object, read from a node's parameters, used by every writer.

DuckDB's ``COPY ... (FORMAT PARQUET, ...)`` and pyarrow's ``ParquetWriter`` take the same
settings under different names; :class:`ParquetWriterOptions` holds them once and renders both,
so the SQL engine, the hash partitioner, the Arrow tasks and the source materializer write the
same files for the same node parameters. Tasks ask :meth:`ParquetWriterOptions.for_task`, the one
place that decides the format of staging files only the engine reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Union

from smallpond.common import DEFAULT_ROW_GROUP_SIZE, quote_literal

_NO_COMPRESSION = ("", "none", "uncompressed")
#: The codec of staging files that only smallpond's own tasks read (a task's ``staging`` flag,
#: decided by the planner). Chosen by measurement (DuckDB 2.0.1, one thread, 1M 100-byte sort
#: records / 1M hash-partition rows, write then read once): uncompressed 0.62-0.76 s + 0.10-0.25 s,
#: snappy 0.73-0.96 s + 0.23-0.51 s, lz4_raw 0.92-1.56 s + 0.15-0.34 s, zstd 1.75-2.24 s +
#: 0.34-0.59 s; files 1.0x / 0.6-0.75x / 0.6-0.77x / 0.37-0.40x of uncompressed. Resume and
#: spilling do not depend on the codec; a disk-bound shared filesystem might prefer lz4_raw.
STAGING_COMPRESSION = "uncompressed"
#: the zstd level when none is given (DuckDB's default, and ZSTD's)
ZSTD_DEFAULT_LEVEL = 3
# codecs both writers know, by DuckDB's name
_CODECS = ("uncompressed", "snappy", "gzip", "zstd", "lz4", "lz4_raw", "brotli")


@dataclass(frozen=True)
class ParquetWriterOptions:
    """How to write Parquet files.

    Args:
        compression: a codec name (``"zstd"``, ``"snappy"``, ``"lz4"``, ...) or None/"none".
        compression_level: the codec level (used with zstd). None means ZSTD's default, 3, on
            both writers: pyarrow's own default would be 1 and DuckDB's 3, so one node would
            write other files depending on its engine.
        row_group_size: rows per row group.
        dictionary_encoding: False (no dictionary pages), True, or the columns to encode.
    """

    compression: str = "zstd"
    compression_level: Optional[int] = 3
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    dictionary_encoding: Union[bool, List[str]] = False

    def __post_init__(self) -> None:
        comp = str(self.compression or "none").lower()
        comp = "uncompressed" if comp in _NO_COMPRESSION else comp
        if comp not in _CODECS:
            raise ValueError(f"parquet compression must be one of {list(_CODECS)} or None, got {self.compression!r}")
        object.__setattr__(self, "compression", comp)
        if comp == "zstd" and self.compression_level is None:
            object.__setattr__(self, "compression_level", ZSTD_DEFAULT_LEVEL)
        object.__setattr__(self, "row_group_size", int(self.row_group_size or DEFAULT_ROW_GROUP_SIZE))

    @staticmethod
    def of(node) -> "ParquetWriterOptions":
        """The options a node asked for (``parquet_compression``, ``parquet_row_group_size``, ...)."""
        return ParquetWriterOptions(
            compression=getattr(node, "parquet_compression", None),
            compression_level=getattr(node, "parquet_compression_level", None),
            row_group_size=getattr(node, "parquet_row_group_size", None) or DEFAULT_ROW_GROUP_SIZE,
            dictionary_encoding=getattr(node, "parquet_dictionary_encoding", False) or False,
        )

    @staticmethod
    def for_task(task) -> "ParquetWriterOptions":
        """The options ``task`` writes with: its node's, or for staging files that only the engine
        reads (``task.staging``) the same without compression (:data:`STAGING_COMPRESSION`)."""
        options = ParquetWriterOptions.of(task.node)
        if getattr(task, "staging", False):
            return replace(options, compression=STAGING_COMPRESSION, compression_level=None, dictionary_encoding=False)
        return options

    def with_compression(self, compression: Optional[str], level: Optional[int] = None) -> "ParquetWriterOptions":
        return replace(self, compression=compression, compression_level=level)

    def _level(self, codecs=("zstd",)) -> Optional[int]:
        return int(self.compression_level) if self.compression in codecs and self.compression_level is not None else None

    def duckdb(self, kv_metadata: Optional[Dict[str, str]] = None, row_group_bytes: Optional[int] = None) -> str:
        """The option list of a DuckDB ``COPY ... TO`` (without the parentheses)."""
        opts = ["FORMAT PARQUET", f"COMPRESSION {quote_literal(self.compression)}"]
        if self._level() is not None:
            opts.append(f"COMPRESSION_LEVEL {self._level()}")
        opts.append(f"ROW_GROUP_SIZE {self.row_group_size}")
        if row_group_bytes:
            opts.append(f"ROW_GROUP_SIZE_BYTES {int(row_group_bytes)}")
        if self.dictionary_encoding is False:
            # as in the Arrow writer (use_dictionary=False): no dictionary pages, and so no bloom
            # filters (DuckDB builds them from dictionaries). Trying a dictionary on every value of
            # a high-cardinality column and then dropping it is a third of the writer's time there.
            opts.append("DICTIONARY_SIZE_LIMIT 0, WRITE_BLOOM_FILTER false")
        if kv_metadata:
            items = ", ".join(f"{quote_literal(k)}: {quote_literal(v)}" for k, v in kv_metadata.items())
            opts.append(f"KV_METADATA {{{items}}}")
        return ", ".join(opts)

    def levels(self, writer: str) -> Dict[str, int]:
        """The compression level ``writer`` (``"duckdb"`` or ``"pyarrow"``) writes this codec at, by
        the codec's name (``{"zstd": 3}``; empty where the writer's own default applies): what a
        file's footer does not record, for rewriting it alike (``io.parquet_kv``)."""
        level = self._level(("zstd",) if writer == "duckdb" else ("zstd", "gzip", "brotli"))
        return {} if level is None else {self.compression: level}

    def pyarrow(self) -> dict:
        """Keyword arguments of ``pyarrow.parquet.ParquetWriter`` / ``write_table`` (not the row group size)."""
        kw: dict = {
            "compression": "none" if self.compression == "uncompressed" else self.compression.replace("lz4_raw", "lz4"),
            "use_dictionary": self.dictionary_encoding,
        }
        level = self._level(("zstd", "gzip", "brotli"))
        if level is not None:
            kw["compression_level"] = level
        return kw
