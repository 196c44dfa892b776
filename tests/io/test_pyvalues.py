"""smallpond.io.pyvalues: plain Python columns as Arrow arrays, exactly as ``pa.array`` builds them,
without importing pandas."""

from __future__ import annotations

import datetime
import math
import random
import subprocess
import sys
import zoneinfo

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from smallpond.io.pyvalues import bool_array, plain_array

_POOLS = {
    "int": [0, -1, 1, 2**63 - 1, -(2**63), 123456789012],
    "float": [0.0, -0.0, 1.5, math.nan, math.inf, 1e300],
    "str": ["", "a", "é", "日本語", "x" * 50, "\x00", "😀"],
    "bool": [True, False],
    "bytes": [b"", b"a", b"\x00\xff", b"x" * 50],
    "date": [datetime.date(1, 1, 1), datetime.date(1970, 1, 1), datetime.date(1969, 12, 31), datetime.date(9999, 12, 31)],
    "datetime": [datetime.datetime(1, 1, 1), datetime.datetime(1969, 12, 31, 23, 59, 59, 999999), datetime.datetime.max],
}


def _same(got: pa.Array, want: pa.Array) -> None:
    got.validate(full=True)
    assert got.type == want.type and got.null_count == want.null_count
    assert repr(got.to_pylist()) == repr(want.to_pylist())  # (repr: NaN equals NaN)
    if len(got) > 3:
        assert repr(got.slice(1, len(got) - 2).to_pylist()) == repr(want.slice(1, len(want) - 2).to_pylist())


def test_plain_columns_are_built_as_pyarrow_builds_them():
    rng = random.Random(7)
    for _ in range(600):
        kind = rng.choice(list(_POOLS))
        n = rng.choice([0, 1, 7, 8, 9, 65])
        null_share = rng.choice([0.0, 0.2, 1.0])
        values = [None if rng.random() < null_share else rng.choice(_POOLS[kind]) for _ in range(n)]
        got = plain_array(values)
        assert got is not None, values
        _same(got, pa.array(values))
    _same(bool_array([True, False, True]), pa.array([True, False, True], pa.bool_()))


def test_other_values_are_left_to_pyarrow():
    day, utc = datetime.datetime(2020, 1, 1), datetime.timezone.utc
    others = (
        [bytearray(b"x")],
        [b"x", "x"],
        [day.date(), day],  # a datetime is a date: pa.array makes the column a timestamp
        [day, day.replace(tzinfo=utc)],  # naive and aware
    )
    for values in ([1, 1.5], [1, True], [2**63], [-(2**63) - 1], ["\ud800"], [[1]], [{"a": 1}], [1, "a"], *others):
        assert plain_array(values) is None, values


def test_building_does_not_import_pandas():
    code = (
        "import sys\n"
        "from smallpond.io.pyvalues import plain_array, bool_array\n"
        "from smallpond.io.arrow import infer_array\n"
        "import datetime, zoneinfo\n"
        "d = datetime.datetime(2020, 1, 1)\n"
        "for v in ([1, None], [1.5, None], ['a', None], [True, None], [None], [], [b'a', None], [d.date(), None],\n"
        "          [d, None], [d.replace(tzinfo=datetime.timezone.utc)], [d.replace(tzinfo=zoneinfo.ZoneInfo('Asia/Tokyo'))]):\n"
        "    assert plain_array(v) is not None, v\n"
        "    plain_array(v); infer_array(v)\n"
        "bool_array([True, False])\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


_ZONES = st.one_of(
    st.timezones(),
    st.builds(datetime.timezone, st.timedeltas(min_value=-datetime.timedelta(hours=23), max_value=datetime.timedelta(hours=23))),
    st.builds(
        datetime.timezone,
        st.timedeltas(min_value=-datetime.timedelta(hours=23), max_value=datetime.timedelta(hours=23)),
        st.text(min_size=1, max_size=5),
    ),
    st.just(datetime.timezone.utc),
)
#: naive and aware datetimes (folds, zones of both standard kinds, some of one fixed zone), dates, bytes
_TEMPORAL = st.one_of(
    st.lists(st.none() | st.datetimes(allow_imaginary=True), max_size=12),
    st.lists(st.none() | st.datetimes(timezones=_ZONES), max_size=12),
    st.lists(st.none() | st.datetimes(timezones=st.just(zoneinfo.ZoneInfo("Europe/Paris"))), max_size=12),
    st.lists(st.none() | st.datetimes(timezones=st.none() | _ZONES), max_size=12),
    st.lists(st.none() | st.dates(), max_size=12),
    st.lists(st.none() | st.binary(max_size=20), max_size=12),
)


@settings(max_examples=800, deadline=None)
@given(_TEMPORAL)
def test_dates_datetimes_and_bytes_are_built_as_pyarrow_builds_them(values):
    """Lists of bytes, dates and datetimes went to pa.array, which imports pandas (~0.2 s of CPU a
    worker). Built here, they must be what pa.array gives, type (time zone) and values exactly."""
    got = plain_array(values)
    kinds = {type(v) for v in values} - {type(None)}
    aware = {v.tzinfo is not None for v in values if isinstance(v, datetime.datetime)}
    offsets = [v.utcoffset() for v in values if isinstance(v, datetime.datetime) and v.tzinfo is not None]
    odd = any(o.seconds % 60 or o.microseconds for o in offsets)  # (a zone's local mean time, 1950 in Aden)
    if aware != {True, False} and not odd:  # built here (naive and aware mixed, odd offsets: left to pyarrow)
        assert got is not None, values
    if got is None:
        return
    want = pa.array(values)
    got.validate(full=True)
    assert got.type == want.type, (got.type, want.type, values)
    assert got.equals(want), (got, want, values)
    if kinds == {datetime.datetime}:  # the instants, not only what to_pylist shows
        assert got.cast(pa.int64()).equals(want.cast(pa.int64()))
