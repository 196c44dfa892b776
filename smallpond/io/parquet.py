"""Parquet writer options: one object, read from a node's parameters, used by every writer.

DuckDB's ``COPY ... (FORMAT PARQUET, ...)`` and pyarrow's ``ParquetWriter`` take the same
settings under different names; :class:`ParquetWriterOptions` holds them once and renders both,
so the SQL engine, the hash partitioner, the Arrow tasks and the source materializer write the
same files for the same node parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Union

from smallpond.common import DEFAULT_ROW_GROUP_SIZE, quote_literal

_NO_COMPRESSION = ("", "none", "uncompressed")
# codecs both writers know, by DuckDB's name
_CODECS = ("uncompressed", "snappy", "gzip", "zstd", "lz4", "lz4_raw", "brotli")


@dataclass(frozen=True)
class ParquetWriterOptions:
    """How to write Parquet files.

    Args:
        compression: a codec name (``"zstd"``, ``"snappy"``, ``"lz4"``, ...) or None/"none".
        compression_level: the codec level (used with zstd).
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
