"""smallpond.io.parquet_footer: the footer reader agrees with pyarrow, and gives up quietly where it cannot."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.io import parquet_footer
from smallpond.io.parquet_footer import read_row_summary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pyarrow_summary(path: str) -> Tuple[int, int]:
    md = pq.read_metadata(path)
    return md.num_rows, sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))


def pyarrow_summary_or_none(path: str) -> Optional[Tuple[int, int]]:
    try:
        return pyarrow_summary(path)
    except Exception:
        return None


def split_footer(path: str) -> Tuple[bytes, bytes]:
    """(the bytes before the footer, the footer) of a Parquet file."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[-8:-4], "little")
    return data[: -8 - n], data[-8 - n : -8]


def write_parquet_bytes(path: str, body: bytes, footer: bytes, claimed_len: Optional[int] = None, magic: bytes = b"PAR1") -> str:
    length = len(footer) if claimed_len is None else claimed_len
    with open(path, "wb") as f:
        f.write(body + footer + struct.pack("<I", length) + magic)
    return path


def assert_agrees(path: str) -> Tuple[int, int]:
    expected = pyarrow_summary(path)
    assert read_row_summary(path) == expected
    return expected


def assert_quiet(path: str) -> None:
    """A damaged footer: None, or what pyarrow reads from it (or some ints where pyarrow rejects it)."""
    result = read_row_summary(path)
    if result is None:
        return
    expected = pyarrow_summary_or_none(path)
    if expected is not None:
        assert result == expected
    else:  # pyarrow rejects it for a reason outside the fields read here
        assert isinstance(result, tuple) and all(isinstance(x, int) for x in result)


# --- a tiny compact-protocol writer, for footers no Parquet writer produces --------------------
# A struct is a list of (field id, type id, payload); bool fields are types 1/2 with no payload.
# A list or set payload is (element type, [payloads]); a map payload is (key type, value type,
# [(key, value)]).


def uvarint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def zigzag(v: int) -> int:
    return ((v << 1) ^ (v >> 63)) & ((1 << 64) - 1)


def enc_fields(fields: Sequence[Tuple[int, int, Any]], last: int = 0, long_ids: bool = False) -> bytes:
    out = bytearray()
    for fid, t, payload in fields:
        if not long_ids and 0 < fid - last <= 15:
            out.append((fid - last) << 4 | t)
        else:
            out.append(t)
            out += uvarint(zigzag(fid))
        if t not in (1, 2):
            out += enc_value(t, payload, long_ids)
        last = fid
    return bytes(out)


def enc_value(t: int, v: Any, long_ids: bool = False) -> bytes:
    if t in (1, 2):  # a bool as a container element
        return bytes([1 if v else 2])
    if t == 3:
        return bytes([v & 0xFF])
    if t in (4, 5, 6):
        return uvarint(zigzag(v))
    if t == 7:
        return struct.pack("<d", v)
    if t == 8:
        return uvarint(len(v)) + v
    if t in (9, 10):
        et, items = v
        head = bytes([len(items) << 4 | et]) if len(items) < 15 else bytes([0xF0 | et]) + uvarint(len(items))
        return head + b"".join(enc_value(et, x, long_ids) for x in items)
    if t == 11:
        kt, vt, items = v
        if not items:
            return b"\x00"
        return uvarint(len(items)) + bytes([kt << 4 | vt]) + b"".join(enc_value(kt, k) + enc_value(vt, x) for k, x in items)
    if t == 12:
        return enc_fields(v, long_ids=long_ids) + b"\x00"
    raise ValueError(t)


def column_chunk(offset: int) -> List[Tuple[int, int, Any]]:
    meta = [(1, 5, 2), (2, 9, (5, [0])), (3, 9, (8, [b"x"])), (4, 5, 0), (5, 6, 1), (6, 6, 8), (7, 6, 8), (9, 6, offset)]
    return [(2, 6, offset), (3, 12, meta)]


SCHEMA = (2, 9, (12, [[(4, 8, b"schema"), (5, 5, 1)], [(1, 5, 2), (3, 5, 0), (4, 8, b"x")]]))


def synthetic_footer(
    num_rows: Optional[int] = 7,
    sizes: Sequence[Optional[int]] = (100, 23),
    long_ids: bool = False,
    extra: Sequence[Tuple[int, int, Any]] = (),
    size_type: int = 6,
    num_rows_type: int = 6,
    row_groups_type: Tuple[int, int] = (9, 12),
) -> bytes:
    """A FileMetaData for one INT64 column ``x``, with a row group per entry of ``sizes``."""
    row_groups = []
    for size in sizes:
        rg = [(2, size_type, size)] if size is not None else []
        row_groups.append([(1, 9, (12, [column_chunk(4)]))] + rg + [(3, 6, 1)])
    fields = [(1, 5, 1), SCHEMA]
    if num_rows is not None:
        fields.append((3, num_rows_type, num_rows))
    list_type, element_type = row_groups_type
    fields.append((4, list_type, (element_type, row_groups if element_type == 12 else [1] * len(row_groups))))
    return enc_fields(fields + list(extra), long_ids=long_ids) + b"\x00"


# --- files written by pyarrow and DuckDB ------------------------------------------------------


def base_table(n: int) -> pa.Table:
    return pa.table(
        {
            "i": pa.array(range(n), pa.int64()),
            "s": pa.array([f"value-{i % 17}" for i in range(n)], pa.string()),
            "f": pa.array([i / 3 for i in range(n)], pa.float64()),
        }
    )


def nested_table(n: int) -> pa.Table:
    return pa.table(
        {
            "l": pa.array([[i, i + 1] if i % 3 else None for i in range(n)], pa.list_(pa.int32())),
            "st": pa.array([{"a": i, "b": str(i)} for i in range(n)], pa.struct([("a", pa.int64()), ("b", pa.string())])),
            "m": pa.array([[("k", i), ("j", -i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
            "ll": pa.array([[[i], []] for i in range(n)], pa.list_(pa.list_(pa.int64()))),
        }
    )


PYARROW_CASES = {
    "one_row_group": (lambda: base_table(1000), {}),
    "row_groups_of_7": (lambda: base_table(1000), {"row_group_size": 7}),
    "row_groups_of_128": (lambda: base_table(1000), {"row_group_size": 128}),
    "no_statistics": (lambda: base_table(1000), {"row_group_size": 100, "write_statistics": False}),
    "statistics_of_one_column": (lambda: base_table(1000), {"row_group_size": 100, "write_statistics": ["s"]}),
    "dictionary": (lambda: base_table(1000), {"row_group_size": 300, "use_dictionary": True}),
    "no_dictionary": (lambda: base_table(1000), {"row_group_size": 300, "use_dictionary": False}),
    "snappy": (lambda: base_table(500), {"compression": "snappy"}),
    "zstd": (lambda: base_table(500), {"compression": "zstd", "row_group_size": 64}),
    "uncompressed": (lambda: base_table(500), {"compression": "none", "row_group_size": 64}),
    "format_1_0": (lambda: base_table(500), {"version": "1.0", "row_group_size": 200}),
    "data_page_v2": (lambda: base_table(500), {"data_page_version": "2.0", "row_group_size": 200}),
    "page_index": (lambda: base_table(500), {"write_page_index": True, "row_group_size": 200}),
    "nested": (lambda: nested_table(300), {"row_group_size": 50}),
    "bool": (lambda: pa.table({"b": pa.array([i % 3 == 0 for i in range(400)]), "n": pa.array([None, True] * 200)}), {}),
    "all_null": (
        lambda: pa.table({"z": pa.nulls(300), "zi": pa.nulls(300, pa.int64()), "zs": pa.nulls(300, pa.string())}),
        {"row_group_size": 100},
    ),
    "zero_rows": (lambda: base_table(0), {}),
    "long_values": (lambda: pa.table({"s": [("x" * 300) + str(i) for i in range(50)]}), {"row_group_size": 20}),
    "many_columns_and_row_groups": (
        lambda: pa.table({f"c{i}": pa.array(range(40), pa.int64() if i % 2 else pa.int32()) for i in range(120)}),
        {"row_group_size": 1},
    ),
    "key_value_metadata": (
        lambda: base_table(100).replace_schema_metadata({"smallpond.partition": "3", "big": "x" * 5000}),
        {"row_group_size": 30},
    ),
}


@pytest.mark.parametrize("case", sorted(PYARROW_CASES))
def test_pyarrow_files_agree_with_pyarrow(tmp_path, case):
    make, options = PYARROW_CASES[case]
    table = make()
    path = str(tmp_path / f"{case}.parquet")
    pq.write_table(table, path, **options)
    num_rows, _ = assert_agrees(path)
    assert num_rows == table.num_rows


DUCKDB_CASES = {
    "row_groups_of_1000": ("SELECT range AS i, range::VARCHAR AS s FROM range(10000)", "ROW_GROUP_SIZE 1000"),
    "zstd": ("SELECT range AS i, range % 7 AS k FROM range(5000)", "COMPRESSION zstd, ROW_GROUP_SIZE 2048"),
    "uncompressed": ("SELECT range AS i FROM range(3000)", "COMPRESSION uncompressed, ROW_GROUP_SIZE 1024"),
    "nested": (
        "SELECT [range, range + 1] AS l, {'x': range, 'y': range::VARCHAR} AS st, MAP {'a': range} AS m,"
        " range % 2 = 0 AS b, NULL::INTEGER AS z FROM range(4000)",
        "ROW_GROUP_SIZE 1000",
    ),
    "key_value_metadata": ("SELECT range AS i FROM range(100)", "KV_METADATA {k: 'v', other: 'w'}"),
    "zero_rows": ("SELECT range AS i, range::VARCHAR AS s FROM range(0)", "ROW_GROUP_SIZE 1000"),
}


@pytest.mark.parametrize("case", sorted(DUCKDB_CASES))
def test_duckdb_files_agree_with_pyarrow(tmp_path, case):
    query, options = DUCKDB_CASES[case]
    path = str(tmp_path / f"{case}.parquet")
    duckdb.sql(f"COPY ({query}) TO '{path}' (FORMAT PARQUET, {options})")
    assert_agrees(path)


def test_many_row_groups_sum_their_sizes(tmp_path):
    path = str(tmp_path / "groups.parquet")
    pq.write_table(base_table(1000), path, row_group_size=10)
    md = pq.read_metadata(path)
    assert md.num_row_groups == 100
    assert read_row_summary(path) == (1000, sum(md.row_group(i).total_byte_size for i in range(100)))


# --- synthetic footers: every compact-protocol type, long field ids, missing fields -----------

EVERY_TYPE = [
    (100, 1, None),  # bool true (long-form id: the delta is over 15)
    (101, 2, None),  # bool false
    (102, 3, -1),  # byte
    (103, 4, -300),  # i16
    (104, 5, 1 << 30),  # i32
    (105, 6, -(1 << 62)),  # i64
    (106, 7, 2.5),  # double
    (107, 8, b"b" * 200),  # binary with a two-byte length
    (108, 9, (1, [True, False, True])),  # list<bool>: one byte each
    (109, 10, (5, list(range(-10, 10)))),  # set<i32> of 20: the size follows as a varint
    (110, 11, (8, 9, [(b"k1", (6, [1, 2])), (b"k2", (6, []))])),  # map<binary, list<i64>>
    (111, 11, (8, 5, [])),  # an empty map
    (112, 12, [(1, 12, [(1, 9, (12, [[(1, 1, None)], [(1, 7, 1.0)]]))]), (300, 2, None)]),  # nested structs
    (113, 9, (7, [1.0, 2.0])),  # list<double>
    (114, 9, (3, [1, 2, 3])),  # list<byte>
    (115, 9, (11, [(5, 5, [(1, 2)]), (5, 5, [])])),  # list<map>
    (116, 9, (9, [(4, [1, -1]), (4, [])])),  # list<list<i16>>
    (117, 10, (2, [False] * 16)),  # set<bool> of 16
    (118, 9, (12, [])),  # an empty list
]


def test_synthetic_footer_agrees_with_pyarrow(tmp_path):
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", synthetic_footer())
    assert assert_agrees(path) == (7, 123)


def test_unknown_fields_of_every_type_are_skipped(tmp_path):
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", synthetic_footer(extra=EVERY_TYPE))
    assert assert_agrees(path) == (7, 123)
    # the same fields appended to a real footer, after its last field
    real = str(tmp_path / "real.parquet")
    pq.write_table(base_table(100), real, row_group_size=40)
    body, footer = split_footer(real)
    assert footer[-1] == 0
    path = write_parquet_bytes(str(tmp_path / "r.parquet"), body, footer[:-1] + enc_fields(EVERY_TYPE) + b"\x00")
    assert assert_agrees(path) == pyarrow_summary(real)


def test_long_form_field_ids(tmp_path):
    footer = synthetic_footer(num_rows=-5 + 10**12, sizes=(1 << 40, 3, 0), long_ids=True, extra=EVERY_TYPE)
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", footer)
    assert assert_agrees(path) == (10**12 - 5, (1 << 40) + 3)


def test_a_stop_is_any_header_of_type_0(tmp_path):
    # Thrift's reader (pyarrow's) ends a struct at type 0 whatever the high nibble holds
    footer = synthetic_footer()[:-1] + b"\x50"
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", footer)
    assert assert_agrees(path) == (7, 123)


def test_bytes_after_the_file_metadata(tmp_path):
    # e.g. the nonce and tag that sign a plaintext footer: left to pyarrow
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", synthetic_footer() + b"\x00" * 28)
    assert read_row_summary(path) is None


def test_many_row_groups_use_a_varint_list_size(tmp_path):
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", synthetic_footer(sizes=list(range(40))))
    assert assert_agrees(path) == (7, sum(range(40)))


NOT_UNDERSTOOD = {
    "num_rows_missing": synthetic_footer(num_rows=None),
    "total_byte_size_missing": synthetic_footer(sizes=(5, None)),
    "total_byte_size_an_i32": synthetic_footer(size_type=5),
    "num_rows_an_i32": synthetic_footer(num_rows_type=5),
    "row_groups_a_set": synthetic_footer(row_groups_type=(10, 12)),
    "row_groups_not_structs": synthetic_footer(row_groups_type=(9, 5)),
    "type_13": synthetic_footer()[:-1] + bytes([0x0D]) + uvarint(zigzag(100)) + b"\x00",
    "empty_list_of_type_14": synthetic_footer()[:-1] + bytes([0x19, 0x0E]) + b"\x00",
    "map_key_of_type_15": synthetic_footer()[:-1] + bytes([0x1B, 0x01, 0xF5, 0x01, 0x02]) + b"\x00",
    "no_stop_byte": synthetic_footer()[:-1],
    "empty_struct": b"\x00",
    "nothing": b"",
}


@pytest.mark.parametrize("case", sorted(NOT_UNDERSTOOD))
def test_synthetic_footers_it_does_not_understand(tmp_path, case):
    path = write_parquet_bytes(str(tmp_path / "s.parquet"), b"PAR1", NOT_UNDERSTOOD[case])
    assert read_row_summary(path) is None
    assert pyarrow_summary_or_none(path) is None  # pyarrow rejects these too


def test_nesting_deeper_than_the_limit(tmp_path):
    def nested(depth: int) -> list:
        value: list = [(1, 6, 1)]
        for _ in range(depth):
            value = [(1, 12, value)]
        return value

    shallow = write_parquet_bytes(str(tmp_path / "shallow.parquet"), b"PAR1", synthetic_footer(extra=[(100, 12, nested(30))]))
    assert assert_agrees(shallow) == (7, 123)
    deep = write_parquet_bytes(str(tmp_path / "deep.parquet"), b"PAR1", synthetic_footer(extra=[(100, 12, nested(200))]))
    assert read_row_summary(deep) is None
    lists: tuple = (5, [])  # an empty list<i32>, in a list in a list ...
    for _ in range(100):
        lists = (9, [lists])
    deep_lists = write_parquet_bytes(str(tmp_path / "lists.parquet"), b"PAR1", synthetic_footer(extra=[(100, 9, lists)]))
    assert read_row_summary(deep_lists) is None


def test_huge_sizes_and_long_varints_give_up_at_once(tmp_path):
    prefix = synthetic_footer()[:-1]
    cases = {
        "list": prefix + bytes([0x19, 0xF5]) + uvarint(1 << 60),  # a list<i32> of 2^60
        "map": prefix + bytes([0x1B]) + uvarint(1 << 62) + b"\x55",  # map<i32, i32> of 2^62
        "binary": prefix + bytes([0x18]) + uvarint(1 << 40),  # binary of 2^40 bytes
        "varint": enc_fields([(1, 5, 1)]) + bytes([0x26]) + b"\xff" * 5000 + b"\x01",  # an 5000-byte i64
    }
    for name, footer in cases.items():
        path = write_parquet_bytes(str(tmp_path / f"{name}.parquet"), b"PAR1", footer)
        start = time.thread_time()  # CPU time: a loaded machine does not stretch it
        assert read_row_summary(path) is None, name
        assert time.thread_time() - start < 0.5, name


# --- files that are not Parquet, damaged footers -----------------------------------------------


def test_not_parquet(tmp_path):
    text = tmp_path / "text.parquet"
    text.write_bytes(b"a,b\n1,2\n" * 100)
    assert read_row_summary(str(text)) is None
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert read_row_summary(str(empty)) is None
    short = tmp_path / "short.parquet"
    short.write_bytes(b"PAR1\x00PAR1")  # 9 bytes: too short for a footer
    assert read_row_summary(str(short)) is None
    zero_footer = write_parquet_bytes(str(tmp_path / "zero.parquet"), b"PAR1", b"")
    assert read_row_summary(zero_footer) is None


def test_filesystem_errors_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_row_summary(str(tmp_path / "missing.parquet"))
    with pytest.raises(OSError):
        read_row_summary(str(tmp_path))


def test_encrypted_footer(tmp_path):
    real = str(tmp_path / "real.parquet")
    pq.write_table(base_table(100), real)
    body, footer = split_footer(real)
    path = write_parquet_bytes(str(tmp_path / "enc.parquet"), body, footer, magic=b"PARE")
    assert read_row_summary(path) is None


def test_footer_longer_than_the_cap(tmp_path, monkeypatch):
    path = str(tmp_path / "f.parquet")
    pq.write_table(base_table(300), path, row_group_size=50)
    footer_len = len(split_footer(path)[1])
    monkeypatch.setattr(parquet_footer, "MAX_FOOTER_BYTES", footer_len)
    assert read_row_summary(path) == pyarrow_summary(path)
    monkeypatch.setattr(parquet_footer, "MAX_FOOTER_BYTES", footer_len - 1)
    assert read_row_summary(path) is None


def test_footer_longer_than_the_file(tmp_path):
    real = str(tmp_path / "real.parquet")
    pq.write_table(base_table(50), real)
    body, footer = split_footer(real)
    path = write_parquet_bytes(str(tmp_path / "long.parquet"), b"", footer, claimed_len=len(footer) + 5)
    assert read_row_summary(path) is None


@pytest.fixture
def small_file(tmp_path) -> Tuple[bytes, bytes, Tuple[int, int]]:
    path = str(tmp_path / "small.parquet")
    pq.write_table(base_table(60), path, row_group_size=20, store_schema=False)  # a footer of ~1 KB
    body, footer = split_footer(path)
    return body, footer, pyarrow_summary(path)


def test_every_prefix_of_a_footer_is_refused(tmp_path, small_file):
    body, footer, expected = small_file
    path = str(tmp_path / "cut.parquet")
    for k in range(len(footer)):
        write_parquet_bytes(path, body, footer[:k])
        assert read_row_summary(path) is None, k
    write_parquet_bytes(path, body, footer)
    assert read_row_summary(path) == expected


def test_cut_footer_claiming_its_full_length(tmp_path, small_file):
    body, footer, _ = small_file
    path = str(tmp_path / "cut.parquet")
    for k in range(0, len(footer), 7):
        write_parquet_bytes(path, body, footer[:k], claimed_len=len(footer))
        assert_quiet(path)


def test_damaged_bytes_in_a_footer(tmp_path, small_file):
    body, footer, _ = small_file
    rnd = random.Random(0)
    path = str(tmp_path / "damaged.parquet")
    for i in range(len(footer)):
        damaged = bytearray(footer)
        damaged[i] = rnd.choice([0x00, 0x0F, 0x19, 0x80, 0xF9, 0xFF, rnd.randrange(256)])
        write_parquet_bytes(path, body, bytes(damaged))
        assert_quiet(path)


def test_random_bytes_in_place_of_a_footer(tmp_path):
    rnd = random.Random(1)
    path = str(tmp_path / "random.parquet")
    start = time.thread_time()  # CPU time (writes and reads of 300 files), as above
    for _ in range(300):
        footer = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400)))
        write_parquet_bytes(path, b"PAR1", footer)
        result = read_row_summary(path)
        assert result is None or (isinstance(result, tuple) and len(result) == 2)
    assert time.thread_time() - start < 3


def test_reading_a_footer_does_not_import_pyarrow(tmp_path):
    path = str(tmp_path / "f.parquet")
    pq.write_table(base_table(10), path)
    code = (
        "import sys; import smallpond.io; before = 'pyarrow' in sys.modules\n"
        "from smallpond.io.parquet_footer import read_row_summary\n"
        "assert read_row_summary(sys.argv[1]) == (10, int(sys.argv[2]))\n"
        "assert ('pyarrow' in sys.modules) == before, 'pyarrow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, path, str(pyarrow_summary(path)[1])], check=True, cwd=REPO_ROOT)


def test_row_ranges_agree_with_pyarrows_reader_and_fall_back_to_it(tmp_path, monkeypatch):
    from smallpond.io.arrow import read_row_ranges as arrow_row_ranges

    paths = []
    for i, rows in enumerate([0, 7, 1000]):
        paths.append(str(tmp_path / f"f{i}.parquet"))
        pq.write_table(base_table(rows), paths[-1], row_group_size=300)
    # pyarrow is loaded in this test process: the footer reader steps aside
    assert parquet_footer.read_row_ranges(paths) is None
    monkeypatch.delitem(sys.modules, "pyarrow.parquet")
    assert parquet_footer.read_row_ranges(paths) == arrow_row_ranges(paths)
    # more files than it reads, a file it cannot read, a missing file: pyarrow's reader decides
    assert parquet_footer.read_row_ranges(paths * 3) is None
    (tmp_path / "not.parquet").write_bytes(b"not parquet at all")
    assert parquet_footer.read_row_ranges([paths[0], str(tmp_path / "not.parquet")]) is None
    assert parquet_footer.read_row_ranges([str(tmp_path / "missing.parquet")]) is None


def test_a_split_by_rows_is_planned_without_pyarrow(tmp_path):
    # what the scheduler does for repartition(n, by_rows=True) or a single file's producers
    path = str(tmp_path / "f.parquet")
    pq.write_table(base_table(1000), path, row_group_size=100)
    code = (
        "import sys\n"
        "from smallpond.logical.dataset import ParquetDataSet\n"
        "ranges = ParquetDataSet([sys.argv[1]]).resolved_row_ranges\n"
        "assert [(r.file_num_rows, r.data_size) for r in ranges] == [(1000, int(sys.argv[2]))], ranges\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, path, str(pyarrow_summary(path)[1])], check=True, cwd=REPO_ROOT)


def test_column_names_agree_with_pyarrow(tmp_path):
    """The top-level names, nested types' children skipped (a struct, a list of structs, a map),
    in order, with the names' own case and non-ASCII characters."""
    from smallpond.io.parquet_footer import read_column_names

    table = pa.table(
        {
            "A": [1],
            "s": pa.array([{"x": 1, "y": {"z": [1, 2]}}]),
            "l": pa.array([[{"q": 1}]]),
            "m": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
            "a": [2],
            "é": [3],
        }
    )
    path = str(tmp_path / "nested.parquet")
    pq.write_table(table, path)
    assert read_column_names(path) == pq.read_schema(path).names == ["A", "s", "l", "m", "a", "é"]
    (tmp_path / "not.parquet").write_bytes(b"not parquet at all")
    assert read_column_names(str(tmp_path / "not.parquet")) is None


def test_schema_bytes_tell_schemas_apart_not_rows(tmp_path):
    """Rows and row groups rewritten: the same schema bytes; a column retyped (at the top or in a
    nested child), renamed or made required, or other key-value metadata: other bytes; not Parquet: None, and the schema
    identity is then the file's identity."""
    from smallpond.io.parquet_footer import read_schema_bytes
    from smallpond.io.paths import file_identity, schema_identity

    def schema_of(table: pa.Table, name: str, **options) -> Optional[bytes]:
        pq.write_table(table, str(tmp_path / name), **options)
        return read_schema_bytes(str(tmp_path / name))

    def table(ids, s_type=pa.int64(), id_type=pa.int64(), nullable=True, id_name="id") -> pa.Table:
        s = pa.array([{"x": i} for i in ids], pa.struct([("x", s_type)]))
        schema = pa.schema([pa.field(id_name, id_type, nullable), pa.field("s", s.type)])
        return pa.table([pa.array(ids, id_type), s], schema=schema)

    base = schema_of(table([1, 2, 3]), "base.parquet")
    assert base and schema_of(table(list(range(1000))), "rows.parquet", row_group_size=100) == base
    others = [
        table([1], id_type=pa.int32()),
        table([1], s_type=pa.int32()),
        table([1], nullable=False),
        table([1], id_name="ID"),
        table([1]).replace_schema_metadata({"geo": "{}"}),  # (key-value metadata types columns too)
    ]
    assert len({base, *(schema_of(t, f"other{i}.parquet") for i, t in enumerate(others))}) == 6
    (tmp_path / "not.parquet").write_bytes(b"not parquet at all")
    assert read_schema_bytes(str(tmp_path / "not.parquet")) is None
    for name in ("not.parquet", "missing.parquet"):
        path = str(tmp_path / name)
        assert schema_identity(path) == file_identity(path)
    digests = [schema_identity(str(tmp_path / n)).split(":schema=")[1] for n in ("base.parquet", "rows.parquet")]
    assert digests[0] == digests[1], "two files of one schema: one schema digest (after the path)"
