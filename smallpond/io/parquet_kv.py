"""Key-value metadata of a Parquet file set in place: the footer is rewritten, the data is not.

DuckDB's ``COPY ... (PARTITION_BY ...)`` writes every partition in one pass but gives all its files
the same ``KV_METADATA``; a hash partition's files must each carry their own partition key
(upstream 0.15 readers, ``ParquetDataSet.load_partitioned_datasets``, look for it there). Writing
each partition with a COPY of its own would read the data once per partition, so the key is added
afterwards: a Parquet file ends with ``footer | 4-byte little-endian footer length | PAR1``, and the
footer is a ``FileMetaData`` struct in Thrift's compact protocol whose field 5 is
``list<KeyValue>`` (``KeyValue``: field 1 ``key``, field 2 ``value``, both binary). Only that
field is re-encoded; every other byte of the footer is kept as it was, and the column chunks,
page indexes and bloom filters (all before the footer, addressed by absolute offsets) are not
touched. Cost: a few system calls and a footer parse (about 0.2 ms for a narrow file).

A footer this cannot rewrite so (one longer than :data:`MAX_FOOTER_BYTES`, or one the parser does
not understand) is not an error: the file is written again with pyarrow, row group by row group
(the same rows, row groups, Arrow schema and compression codec per column, the key-value metadata
merged as above, though pyarrow may write the keys in another order) into a sibling temporary
file renamed over it. A Parquet footer records each column's codec but not its level, so the level
is the caller's word (``levels``: what the file's writer was told, by codec, as
:meth:`~smallpond.io.parquet.ParquetWriterOptions.levels` says it; the hash partitioner passes its
node's); a column whose codec ``levels`` does not name is written with pyarrow's default level for
that codec (in pyarrow 26: zstd 1, gzip 9, brotli 8), which may differ from the one it
had: the rows are the same, the file's size may not be. Refused, with a ValueError naming the file and the reason, the file left as
it was: a file that is not Parquet, an encrypted footer, one pyarrow cannot read either, and one
pyarrow would write back with other column types (a column whose Parquet type it reads without
its meaning, such as DuckDB's ``INTERVAL``, which would come back as bytes).

The file is rewritten in place, not atomically: call this only on files no one reads yet (a
task's own output in its private temp dir, renamed into place afterwards).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from smallpond.io.parquet_footer import (
    DIGEST_MAX_FOOTER_BYTES,
    _field_header,
    _skip_value,
    _Unsupported,
    _varint,
    footer_length,
)

_MAGIC = b"PAR1"
_ENCRYPTED_MAGIC = b"PARE"
#: Footers longer than this are not read into memory to be rewritten in place: the file is
#: rewritten with pyarrow instead (a length beyond it is more likely damage than a real footer)
MAX_FOOTER_BYTES = DIGEST_MAX_FOOTER_BYTES
#: pyarrow's name of each codec a footer may name, where the two differ
_PYARROW_CODECS = {"UNCOMPRESSED": "NONE", "LZ4_RAW": "LZ4"}
#: codecs (a footer's names, lower case) that pyarrow writes at a level of the caller's
_LEVELLED_CODECS = ("zstd", "gzip", "brotli")
_LIST = 9
_STRUCT = 12
_BINARY = 8
_KV_FIELD = 5


def set_kv_metadata(path: str, entries: Dict[str, str], levels: Optional[Dict[str, int]] = None) -> None:
    """Set ``entries`` in the key-value metadata of the Parquet file ``path`` (an existing key
    gets the new value, other keys are kept in their order, new keys come last).

    The footer is rewritten in place; where it cannot be (see the module's docstring), the file is
    rewritten with pyarrow, each column compressed with the codec it had and the level ``levels``
    gives that codec (``{"zstd": 3}``: the level the file was written with; the footer does not
    say it), else pyarrow's default level. Raises ValueError naming the file for a file that is
    not Parquet, an encrypted footer, or a file pyarrow cannot read either."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 8, size - 8) if size >= 12 else b""
        if tail[4:] == _ENCRYPTED_MAGIC:
            raise ValueError(f"cannot set key-value metadata in {path!r}: its footer is encrypted")
        if tail[4:] != _MAGIC:
            raise ValueError(f"cannot set key-value metadata in {path!r}: not a Parquet file (it does not end with PAR1)")
        length = footer_length(tail, size, MAX_FOOTER_BYTES)
        if length is None:
            declared = int.from_bytes(tail[:4], "little")
            why = f"its footer length {declared:,} is over {MAX_FOOTER_BYTES:,} bytes or does not fit in the file"
        else:
            start = size - 8 - length
            footer = os.pread(fd, length, start)
            try:
                new = with_kv_metadata(footer, entries)
            except (_Unsupported, IndexError):
                why = "its footer could not be parsed"
            else:
                data = new + len(new).to_bytes(4, "little") + _MAGIC
                if os.pwrite(fd, data, start) != len(data):
                    raise OSError(f"short write setting key-value metadata in {path!r}")
                os.ftruncate(fd, start + len(data))
                return
    finally:
        os.close(fd)
    _rewrite_with_pyarrow(path, entries, why, levels or {})


def writer_adds_key_value_metadata() -> bool:
    """Whether this pyarrow's ``ParquetWriter`` adds key-value metadata of its own
    (``add_key_value_metadata``, pyarrow 17+), so a file can be written without the Arrow schema
    (``store_schema=False``) and still carry its metadata; pyarrow 16 stores it with the schema."""
    import pyarrow.parquet as pq

    return hasattr(pq.ParquetWriter, "add_key_value_metadata")


def _rewrite_with_pyarrow(path: str, entries: Dict[str, str], why: str, levels: Dict[str, int]) -> None:
    """Write the Parquet file ``path`` again with pyarrow, ``entries`` set in its key-value
    metadata: each row group as one row group, each column with the codec it had and the level
    ``levels`` gives that codec (by DuckDB's name, ``zstd``; else pyarrow's default: a footer does
    not record levels), through a temporary sibling renamed over ``path``. ``why`` says why the
    footer was not rewritten in place (for the error)."""
    import pyarrow.parquet as pq

    tmp = f"{path}.kv-{os.getpid()}.tmp"
    try:
        pf = pq.ParquetFile(path)
        try:
            md = pf.metadata
            pairs = _merge(list((md.metadata or {}).items()), entries)
            kv = {k: b"" if v is None else v for k, v in pairs}
            codecs, levels_of = {}, {}
            if md.num_row_groups:
                rg = md.row_group(0)
                for i in range(rg.num_columns):
                    col = rg.column(i)
                    codecs[col.path_in_schema] = _PYARROW_CODECS.get(col.compression, col.compression)
                    if col.compression.lower() in levels and col.compression.lower() in _LEVELLED_CODECS:
                        levels_of[col.path_in_schema] = int(levels[col.compression.lower()])
            more = {"compression_level": levels_of} if levels_of else {}
            schema = pf.schema_arrow.remove_metadata()
            add_kv = writer_adds_key_value_metadata()
            if not add_kv:  # (older pyarrow: the metadata goes in with the Arrow schema's)
                schema = schema.with_metadata(kv)
            with pq.ParquetWriter(tmp, schema, compression=codecs or "snappy", store_schema=not add_kv, **more) as writer:
                for i in range(md.num_row_groups):
                    table = pf.read_row_group(i)
                    writer.write_table(table, row_group_size=max(1, table.num_rows))
                if add_kv:
                    writer.add_key_value_metadata(kv)
            changed = _changed_types(pf.schema, pq.read_metadata(tmp).schema)
        finally:
            pf.close()
        if changed:
            raise ValueError(f"pyarrow would write it back with other column types ({changed})")
        os.replace(tmp, path)
    except Exception as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise ValueError(f"cannot set key-value metadata in {path!r}: {why}, and pyarrow could not rewrite it: {e}") from e


#: Parquet annotations of columns that pyarrow writes as the plain physical type (the same values)
_PLAIN_ANNOTATIONS = ("Int(bitWidth=32, isSigned=true)", "Int(bitWidth=64, isSigned=true)")


def _changed_types(before, after) -> str:
    """The leaf columns of two ``ParquetSchema`` whose logical types differ (a column pyarrow reads
    without its meaning, such as DuckDB's ``INTERVAL``, comes back as bytes), as text; '' if none."""
    if len(before) != len(after):
        return f"{len(before)} columns, then {len(after)}"
    out = []
    for i in range(len(before)):
        old, new = str(before.column(i).logical_type), str(after.column(i).logical_type)
        if old != new and not (old in _PLAIN_ANNOTATIONS and new == "None"):
            out.append(f"{before.column(i).path}: {old} -> {new}")
    return "; ".join(out)


def with_kv_metadata(footer: bytes, entries: Dict[str, str]) -> bytes:
    """The ``FileMetaData`` bytes ``footer`` with ``entries`` set in its key-value metadata."""
    fid = 0
    pos = 0
    while True:
        header = pos
        new_fid, t, pos = _field_header(footer, pos, fid)
        if t == 0 or new_fid > _KV_FIELD:
            # no field 5: insert one before this field (or the struct's end), whose header is
            # re-encoded since its short form is a delta to the field before it
            pairs = _merge([], entries)
            head = _header(_KV_FIELD, _LIST, fid)
            rest = _header(new_fid, t, _KV_FIELD) if t != 0 else b"\x00"
            return footer[:header] + head + _encode_list(pairs) + rest + footer[pos:]
        if new_fid == _KV_FIELD:
            if t != _LIST:
                raise _Unsupported
            pairs, end = _decode_list(footer, pos)
            return footer[:pos] + _encode_list(_merge(pairs, entries)) + footer[end:]
        fid = new_fid
        if t not in (1, 2):  # a bool field has no payload
            pos = _skip_value(footer, pos, t, 1)


def _merge(pairs: List[Tuple[bytes, bytes]], entries: Dict[str, str]) -> List[Tuple[bytes, bytes]]:
    new = {k.encode(): str(v).encode() for k, v in entries.items()}
    out = [(k, new.pop(k) if k in new else v) for k, v in pairs]
    return out + list(new.items())


def _decode_list(buf: bytes, pos: int) -> Tuple[List[Tuple[bytes, bytes]], int]:
    b = buf[pos]
    pos += 1
    n = b >> 4
    if n == 15:
        n, pos = _varint(buf, pos)
    if n and (b & 0x0F) != _STRUCT:
        raise _Unsupported
    pairs = []
    for _ in range(n):
        fid = 0
        key = value = None
        while True:
            fid, t, pos = _field_header(buf, pos, fid)
            if t == 0:
                break
            if fid in (1, 2) and t == _BINARY:
                size, pos = _varint(buf, pos)
                raw = bytes(buf[pos : pos + size])
                if len(raw) != size:
                    raise _Unsupported
                pos += size
                if fid == 1:
                    key = raw
                else:
                    value = raw
            elif t in (1, 2):
                continue
            else:
                pos = _skip_value(buf, pos, t, 2)
        if key is None:
            raise _Unsupported
        pairs.append((key, value))
    return pairs, pos


def _encode_list(pairs: List[Tuple[bytes, bytes]]) -> bytes:
    n = len(pairs)
    out = bytearray([(n << 4) | _STRUCT] if n < 15 else [0xF0 | _STRUCT])
    if n >= 15:
        out += _uvarint(n)
    for key, value in pairs:
        out += b"\x18" + _uvarint(len(key)) + key  # field 1, binary
        if value is not None:
            out += b"\x18" + _uvarint(len(value)) + value  # field 2 (delta 1), binary
        out += b"\x00"
    return bytes(out)


def _header(fid: int, t: int, prev: int) -> bytes:
    delta = fid - prev
    if 0 < delta <= 15:
        return bytes([(delta << 4) | t])
    return bytes([t]) + _uvarint((fid << 1) ^ (fid >> 63))  # long form: the id as a zigzag varint


def _uvarint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
