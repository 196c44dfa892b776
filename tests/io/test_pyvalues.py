"""smallpond.io.pyvalues: plain Python columns as Arrow arrays, exactly as ``pa.array`` builds them,
without importing pandas."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pyarrow as pa

from smallpond.io.pyvalues import bool_array, plain_array

_POOLS = {
    "int": [0, -1, 1, 2**63 - 1, -(2**63), 123456789012],
    "float": [0.0, -0.0, 1.5, math.nan, math.inf, 1e300],
    "str": ["", "a", "é", "日本語", "x" * 50, "\x00", "😀"],
    "bool": [True, False],
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
    for values in ([1, 1.5], [1, True], [2**63], [-(2**63) - 1], ["\ud800"], [b"x"], [[1]], [{"a": 1}], [1, "a"]):
        assert plain_array(values) is None, values


def test_building_does_not_import_pandas():
    code = (
        "import sys\n"
        "from smallpond.io.pyvalues import plain_array, bool_array\n"
        "from smallpond.io.arrow import infer_array\n"
        "for v in ([1, None], [1.5, None], ['a', None], [True, None], [None], []):\n"
        "    plain_array(v); infer_array(v)\n"
        "bool_array([True, False])\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout + out.stderr
