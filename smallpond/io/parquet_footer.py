"""A Parquet file's row count and data size, read from its footer without pyarrow.

The scheduler plans row ranges before any task runs: for each input file it needs the number of
rows and the data size (the sum of the row groups' ``total_byte_size``), nothing else. Importing
pyarrow only to read those two numbers costs about 0.1 s at job start, so :func:`read_row_summary`
reads them itself. A Parquet file ends with ``footer | 4-byte little-endian footer length | PAR1``,
and the footer is a ``FileMetaData`` struct in Thrift's compact protocol: ``num_rows`` is its field
3, and each ``RowGroup`` of its field 4 holds ``total_byte_size`` as field 2. Everything else (the
schema, the column chunks, their statistics, key-value metadata) is walked over by a generic
compact-protocol skipper, which needs no knowledge of the Parquet format.

Limits: the answer is None, and the caller falls back to pyarrow, for a file that is not Parquet
(too short, no ``PAR1`` at the end), an encrypted footer (``PARE``), a footer longer than
:data:`MAX_FOOTER_BYTES`, and any footer this parser does not understand: unknown type ids,
truncated data, a required field missing or of the wrong type, containers nested deeper than
:data:`MAX_DEPTH`, bytes after the ``FileMetaData`` (the signature of a plaintext-footer encrypted
file). It validates only the structure and the fields it reads: where pyarrow rejects a footer
for a reason elsewhere (a broken schema, a damaged column chunk), this reader may still answer.
Files are read with ``os.pread``, so only paths the operating system can open are supported.

Cost (CPython 3.11): about 0.2 ms for the quick start's file (2 columns, 9 row groups, a 2 KB
footer); about 45 ms for 100 columns x 50 row groups with statistics (a 560 KB footer), where
pyarrow, once imported, takes about 5 ms.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

from smallpond.io.filesystem import READ_FLAGS, pread_full
from smallpond.io.rowrange import RowRange

#: Footers longer than this are left to pyarrow (the caller's fallback). Python parses about
#: 12 MB/s of footer, pyarrow several times that once loaded: up to this size, parsing costs at
#: most about what importing pyarrow would.
MAX_FOOTER_BYTES = 1 << 20
#: The longest footer the file digests take a Parquet file's footer to be (the input fingerprints'
#: :func:`~smallpond.io.paths.file_identity` and the task cache's file check): a longer one is
#: not treated as a footer
DIGEST_MAX_FOOTER_BYTES = 64 * 1024 * 1024
#: :func:`read_row_ranges` reads at most this many files; more go to pyarrow's threaded reader
MAX_FILES = 8
#: Containers (structs, lists, sets, maps) nested deeper than this are not parsed. Parquet's own
#: metadata nests about five deep.
MAX_DEPTH = 64

_MAGIC = b"PAR1"
_MASK64 = (1 << 64) - 1

# Compact-protocol type ids: 1/2 bool true/false, 3 byte, 4 i16, 5 i32, 6 i64, 7 double,
# 8 binary, 9 list, 10 set, 11 map, 12 struct. A field header of type 0 ends a struct: writers
# write a 0 byte, and Thrift's own reader (the one pyarrow uses) ignores the high nibble there.
_I64 = 6
_LIST = 9
_STRUCT = 12


class _Unsupported(Exception):
    """The footer holds something this parser does not understand (read_row_summary answers None)."""


def read_row_summary(path: str) -> Optional[Tuple[int, int]]:
    """(num_rows, data_size) of a Parquet file from its footer, or None where this reader does not apply.

    ``num_rows`` is what ``pyarrow.parquet.read_metadata(path).num_rows`` returns and ``data_size``
    the sum of the row groups' ``total_byte_size``. None means "ask pyarrow": the file is not
    Parquet, its footer is encrypted, longer than :data:`MAX_FOOTER_BYTES` or not understood here
    (see the module's docstring). Malformed footers never raise; filesystem errors do (``OSError``,
    e.g. ``FileNotFoundError`` for a missing file).
    """
    footer = read_footer(path, MAX_FOOTER_BYTES)
    if footer is None:
        return None
    try:
        return _parse_file_metadata(footer)
    except (_Unsupported, IndexError):  # IndexError: the data ended inside a value
        return None


def read_row_ranges(paths: Sequence[str]) -> Optional[List[RowRange]]:
    """One whole-file :class:`~smallpond.io.rowrange.RowRange` per path, or None: ask pyarrow
    (:func:`smallpond.io.arrow.read_row_ranges`, which also gives the errors their context).

    Only while pyarrow is not loaded in this process and for at most :data:`MAX_FILES` files: this
    saves a scheduler that plans a split of a few files the ~0.1 s of importing pyarrow; once
    pyarrow is loaded, or for many files, pyarrow's reader is the faster one.
    """
    if len(paths) > MAX_FILES or "pyarrow.parquet" in sys.modules:
        return None
    ranges = []
    for path in paths:
        try:
            summary = read_row_summary(path)
        except OSError:
            return None
        if summary is None:
            return None
        num_rows, data_size = summary
        ranges.append(RowRange(path, data_size, num_rows, 0, num_rows))
    return ranges


def read_column_names(path: str) -> Optional[List[str]]:
    """The top-level column names of a Parquet file, from its footer's schema (``FileMetaData``
    field 2: a list of ``SchemaElement``, the root first, each with its ``name`` (field 4) and
    ``num_children`` (field 5), depth first), or None where this reader does not apply (as
    :func:`read_row_summary`; filesystem errors raise ``OSError``)."""
    footer = read_footer(path, MAX_FOOTER_BYTES)
    if footer is None:
        return None
    try:
        return _top_level_names(footer)
    except (_Unsupported, IndexError, UnicodeDecodeError):
        return None


def read_schema_bytes(path: str) -> Optional[bytes]:
    """The bytes of a Parquet file's schema as its footer holds them (``FileMetaData`` field 2:
    every column's name, type, logical type, repetition and nesting, nothing of its rows), followed
    by its key-value metadata (field 5), by which readers type columns too (DuckDB reads a WKB
    column of a GeoParquet ``geo`` entry as GEOMETRY, pyarrow its types from ``ARROW:schema``); or
    None where this reader does not apply (as :func:`read_row_summary`, but for a footer of up to
    :data:`DIGEST_MAX_FOOTER_BYTES`; filesystem errors raise ``OSError``)."""
    footer = read_footer(path, DIGEST_MAX_FOOTER_BYTES)
    if footer is None:
        return None
    try:
        spans = _field_spans(footer, (2, 5))
    except (_Unsupported, IndexError):
        return None
    schema, kv = spans.get(2), spans.get(5, b"")
    return None if schema is None else len(schema).to_bytes(8, "little") + schema + kv


def _field_spans(buf: bytes, wanted: Tuple[int, ...]) -> dict:
    """{field id: its value's bytes} of the lists among ``wanted`` in the ``FileMetaData`` in ``buf``."""
    spans, fid, pos = {}, 0, 0
    while True:
        fid, t, pos = _field_header(buf, pos, fid)
        if t == 0:
            return spans
        end = pos if t in (1, 2) else _skip_value(buf, pos, t, 1)
        if end > len(buf):
            raise _Unsupported
        if fid in wanted:
            if t != _LIST:
                raise _Unsupported
            spans[fid] = buf[pos:end]
        pos = end


def _schema_start(buf: bytes) -> int:
    """The position of the schema list's header (field 2 of the ``FileMetaData`` in ``buf``)."""
    fid = pos = 0
    while True:
        fid, t, pos = _field_header(buf, pos, fid)
        if t == 0:
            raise _Unsupported  # no schema
        if fid == 2:
            break
        pos = pos if t in (1, 2) else _skip_value(buf, pos, t, 1)
    if t != _LIST:
        raise _Unsupported
    return pos


def _top_level_names(buf: bytes) -> List[str]:
    pos = _schema_start(buf)
    b = buf[pos]
    pos += 1
    n = b >> 4
    if n == 15:
        n, pos = _varint(buf, pos)
    if n == 0 or b & 0x0F != _STRUCT or n > len(buf) - pos:
        raise _Unsupported
    elements = []  # (name, num_children)
    for _ in range(n):
        fid, name, children = 0, None, 0
        while True:
            fid, t, pos = _field_header(buf, pos, fid)
            if t == 0:
                break
            if fid == 4 and t == 8:
                length, pos = _varint(buf, pos)
                name = buf[pos : pos + length].decode("utf-8")
                pos += length
            elif fid == 5 and t == 5:
                children, pos = _zigzag(buf, pos)
            elif t not in (1, 2):
                pos = _skip_value(buf, pos, t, 2)
        if name is None or children < 0:
            raise _Unsupported
        elements.append((name, children))
    names, i = [], 1
    for _ in range(elements[0][1]):  # the root's children, each followed by its subtree
        if i >= len(elements):
            raise _Unsupported
        names.append(elements[i][0])
        pending = elements[i][1]
        i += 1
        while pending:
            if i >= len(elements):
                raise _Unsupported
            pending += elements[i][1] - 1
            i += 1
    return names


def footer_length(tail: bytes, size: int, max_bytes: int) -> Optional[int]:
    """The length of the footer of a Parquet file of ``size`` bytes whose last 8 bytes are
    ``tail``, or None: not Parquet (or an encrypted footer, ``PARE``), or a length that is 0, that
    does not fit in the file or is over ``max_bytes``."""
    if size < 12 or len(tail) != 8 or tail[4:] != _MAGIC:  # 12: leading magic, length, trailing magic
        return None
    length = int.from_bytes(tail[:4], "little")
    return length if 0 < length <= min(max_bytes, size - 12) else None


def read_footer(path: str, max_bytes: int, size: Optional[int] = None) -> Optional[bytes]:
    """The footer bytes of the Parquet file ``path`` (``size`` bytes if known), or None where
    :func:`footer_length` finds none or the file ends early (it shrank meanwhile). Filesystem
    errors raise ``OSError``."""
    fd = os.open(path, READ_FLAGS)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        length = footer_length(pread_full(fd, 8, size - 8) if size >= 12 else b"", size, max_bytes)
        if length is None:
            return None
        footer = pread_full(fd, length, size - 8 - length)
    finally:
        os.close(fd)
    return footer if len(footer) == length else None


def _parse_file_metadata(buf: bytes) -> Tuple[int, int]:
    """(FileMetaData.num_rows, sum of RowGroup.total_byte_size); raises _Unsupported/IndexError."""
    num_rows = data_size = None
    fid = 0
    pos = 0
    while True:
        fid, t, pos = _field_header(buf, pos, fid)
        if t == 0:  # stop
            break
        if fid == 3:
            if t != _I64:
                raise _Unsupported
            num_rows, pos = _zigzag(buf, pos)
        elif fid == 4:
            if t != _LIST:
                raise _Unsupported
            data_size, pos = _sum_row_group_sizes(buf, pos)
        elif t == 1 or t == 2:  # a bool field has no payload
            continue
        else:
            pos = _skip_value(buf, pos, t, 1)
    if num_rows is None or data_size is None:
        raise _Unsupported
    if pos != len(buf):  # writers end the footer with FileMetaData's stop byte; see the module's docstring
        raise _Unsupported
    return num_rows, data_size


def _sum_row_group_sizes(buf: bytes, pos: int) -> Tuple[int, int]:
    """Sum of total_byte_size (field 2) over the list<RowGroup> at ``pos``, and the position after it."""
    b = buf[pos]
    pos += 1
    n = b >> 4
    if n == 15:
        n, pos = _varint(buf, pos)
    if n == 0:
        return 0, pos
    if b & 0x0F != _STRUCT or n > len(buf) - pos:
        raise _Unsupported
    total = 0
    for _ in range(n):
        fid = 0
        size = None
        while True:
            fid, t, pos = _field_header(buf, pos, fid)
            if t == 0:
                break
            if fid == 2:
                if t != _I64:
                    raise _Unsupported
                size, pos = _zigzag(buf, pos)
            elif t == 1 or t == 2:
                continue
            else:  # the row group's column chunks (a list) and its other fields
                pos = _skip_value(buf, pos, t, 3)
        if size is None:
            raise _Unsupported
        total += size
    return total, pos


def _field_header(buf: bytes, pos: int, fid: int) -> Tuple[int, int, int]:
    """(field id, type, position after it) of the struct field header at ``pos``; ``fid`` is the
    previous field's id (the short form gives a delta to it). Type 0 is the struct's end."""
    b = buf[pos]
    t = b & 0x0F
    if t == 0 or b >= 0x10:
        return fid + (b >> 4), t, pos + 1
    fid, pos = _zigzag(buf, pos + 1)  # the long form: the id itself, as a zigzag varint
    return fid, t, pos


def _zigzag(buf: bytes, pos: int) -> Tuple[int, int]:
    """The zigzag-encoded signed varint at ``pos`` (i16, i32, i64) and the position after it."""
    v, pos = _varint(buf, pos)
    return (v >> 1) ^ -(v & 1), pos


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """The unsigned varint at ``pos`` (at most 10 bytes, kept to 64 bits) and the position after it."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift > 63:
            raise _Unsupported


def _skip_binary(buf: bytes, pos: int) -> int:
    """The position after the binary value (a varint length, then the bytes) at ``pos``."""
    n = buf[pos]
    if n < 0x80:  # (most are shorter than 128 bytes: a one-byte length)
        return pos + 1 + n
    n, pos = _varint(buf, pos)
    return pos + n


def _header_kinds() -> bytes:
    """For each field header byte, what :func:`_skip_struct` does with the field.

    0 stop, 1 varint (i16, i32, i64), 2 binary, 3 struct, 4 list or set, 5 bool (no payload),
    6 anything else (double, byte, map, unknown ids); plus 8 where the header's delta is 0, so
    that the field id follows as a varint. One table lookup replaces a chain of tests per field.
    """
    kind_of_type = {4: 1, 5: 1, 6: 1, 8: 2, 12: 3, 9: 4, 10: 4, 1: 5, 2: 5}
    kinds = bytearray(256)
    for b in range(256):
        if b & 0x0F:  # (type 0 is the stop, whatever the high nibble: kind 0)
            kinds[b] = kind_of_type.get(b & 0x0F, 6) + (8 if b < 0x10 else 0)
    return bytes(kinds)


_HEADER_KINDS = _header_kinds()


def _skip_struct(buf: bytes, pos: int, depth: int) -> int:
    """The position after the struct whose first field header is at ``pos``."""
    if depth > MAX_DEPTH:
        raise _Unsupported
    kinds = _HEADER_KINDS
    while True:
        h = buf[pos]
        k = kinds[h]
        pos += 1
        if k == 1:  # the most common field: a varint
            while buf[pos] > 0x7F:
                pos += 1
            pos += 1
            continue
        if k == 0:
            return pos
        if k > 8:  # long-form field id: skip its varint, then the value as usual
            while buf[pos] > 0x7F:
                pos += 1
            pos += 1
            k -= 8
            if k == 1:
                while buf[pos] > 0x7F:
                    pos += 1
                pos += 1
                continue
        if k == 2:
            pos = _skip_binary(buf, pos)
        elif k == 3:
            pos = _skip_struct(buf, pos, depth + 1)
        elif k == 4:
            pos = _skip_list(buf, pos, depth + 1)
        elif k == 6:
            pos = _skip_value(buf, pos, h & 0x0F, depth + 1)
        # k == 5: a bool field, whose value is its type id


def _skip_list(buf: bytes, pos: int, depth: int) -> int:
    """The position after the list or set whose header is at ``pos``."""
    if depth > MAX_DEPTH:
        raise _Unsupported
    b = buf[pos]
    pos += 1
    n = b >> 4
    et = b & 0x0F
    if n == 15:
        n, pos = _varint(buf, pos)
    if et > 12:
        raise _Unsupported
    if n == 0:
        return pos
    if n > len(buf) - pos:  # every element takes at least one byte
        raise _Unsupported
    if et == 12:
        for _ in range(n):
            pos = _skip_struct(buf, pos, depth + 1)
    elif 4 <= et <= 6:
        for _ in range(n):
            while buf[pos] > 0x7F:
                pos += 1
            pos += 1
    elif et == 8:
        for _ in range(n):
            pos = _skip_binary(buf, pos)
    elif 1 <= et <= 3:  # bools and bytes: one byte each
        pos += n
    elif et == 7:
        pos += 8 * n
    elif et:
        for _ in range(n):
            pos = _skip_value(buf, pos, et, depth + 1)
    else:
        raise _Unsupported
    return pos


def _skip_value(buf: bytes, pos: int, t: int, depth: int) -> int:
    """The position after the value of type ``t`` at ``pos``, as an element of a container.

    (Bools take one byte here; a bool struct field has no payload and is handled by the caller.)
    Positions only grow, and every read is an index into ``buf``, so data that ends early raises
    IndexError rather than reading past it.
    """
    if 4 <= t <= 6:
        while buf[pos] > 0x7F:
            pos += 1
        return pos + 1
    if t == 8:
        return _skip_binary(buf, pos)
    if t == 12:
        return _skip_struct(buf, pos, depth)
    if t == 9 or t == 10:
        return _skip_list(buf, pos, depth)
    if t == 11:
        if depth > MAX_DEPTH:
            raise _Unsupported
        n, pos = _varint(buf, pos)
        if n == 0:
            return pos
        kv = buf[pos]
        pos += 1
        if 2 * n > len(buf) - pos:  # every key and value takes at least one byte
            raise _Unsupported
        kt = kv >> 4
        vt = kv & 0x0F
        for _ in range(n):
            pos = _skip_value(buf, pos, kt, depth + 1)
            pos = _skip_value(buf, pos, vt, depth + 1)
        return pos
    if 1 <= t <= 3:
        return pos + 1
    if t == 7:
        return pos + 8
    raise _Unsupported
