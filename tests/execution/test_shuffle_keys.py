"""Shuffle keys (smallpond.execution.ops.shuffle_keys): both engines send a row to the partition its
key names, a whole number, and refuse the same keys with the same errors, naming the key and the node's line."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smallpond.errors import JobFailed
from smallpond.logical.node import ShuffleNode
from tests.execution.test_hash_partition_engines import _run_on_file

_D = __import__("decimal").Decimal


def _values(values, typ=None):
    # (an Arrow array at import would import pandas in the worker loading this module)
    return values, typ


_NOT_WHOLE = "names no partition: a shuffle sends a row to the partition its key names, a whole number 0-2"


@pytest.mark.parametrize(
    "key,values,expected",
    [
        ("p", _values([0, 1, 2, 1]), [[0], [1, 3], [2]]),
        ("p", _values([0, 1, 2, 1], pa.uint16()), [[0], [1, 3], [2]]),
        ("p", _values([True, False, True, False]), [[1, 3], [0, 2], []]),  # a boolean is 0 or 1
        ("p", _values([0.0, 1.0, 2.0, -0.0]), [[0, 3], [1], [2]]),
        ("p * 1", _values([0.0, 1.0, 2.0, 1.0], pa.float32()), [[0], [1, 3], [2]]),
        ("p", _values([_D("0.00"), _D("1.00"), _D("2.00"), _D("1.00")], pa.decimal128(5, 2)), [[0], [1, 3], [2]]),
        # a key that is no whole number is no partition: CAST(key AS BIGINT) had put 1.5 into 2
        ("p", _values([0.0, 1.5, 2.0, 1.0]), f"the shuffle key 'p' is 1.5 in the data, which {_NOT_WHOLE}"),
        ("p / 2", _values([0, 3, 2, 4]), f"the shuffle key 'p / 2' is 1.5 in the data, which {_NOT_WHOLE}"),
        ("p", _values([0.0, 0.4, 2.0, 1.0]), "is 0.4 in the data, which names no partition"),
        ("p", _values([_D("0.00"), _D("2.50"), _D("2.00"), _D("1.00")], pa.decimal128(5, 2)), "is 2.50 in the data, which"),
        ("p", _values([0.0, float("nan"), 2.0, 1.0]), "is nan in the data, which names no partition"),
        ("p", _values([0.0, float("-inf"), 2.0, 1.0]), "is -inf in the data, which names no partition"),
        ("p", _values([0, None, 2, 1]), "partition key NULL is out of range 0-2"),
        ("p", _values([0.0, None, 2.0, 1.0]), "partition key NULL is out of range 0-2"),
        ("p", _values([0, -1, 2, 1]), "partition key -1 is out of range 0-2"),
        # past BIGINT: a cast error from the duckdb engine before
        ("p", _values([0, 2**64 - 1, 2, 1], pa.uint64()), "partition key 18446744073709551615 is out of range 0-2"),
        ("p", _values([0.0, 3.0, 2.0, 1.0]), "partition key 3 is out of range 0-2: the key 'p' is 3.0 in the data"),
        # a string is no number, digits or not ('01' was partition 1 to the duckdb engine only)
        ("p", _values(["0", "01", "2", "1"]), "the shuffle key 'p' is of type"),
    ],
)
def test_engines_agree_on_shuffle_keys(tmp_path, make_rt, key, values, expected, no_plan_check):
    """Both engines send each row to the partition its key names, whatever the key's type, and
    refuse the same keys with the same error: a float or decimal key that is not whole (0.4, 1.5,
    NaN) names no partition (upstream 0.15's `WHERE key = i` put it in none; CAST rounded it
    into one, 2.5 to 2 as a double and 3 as a decimal), a boolean is 0 or 1 (the arrow engine
    refused it), a string is no number (the duckdb engine took '01' for 1, the arrow engine
    refused it), a NULL or negative key is out of range. The key is written as it was. (The plan
    check, which refuses a string key before the task runs, is off: the tasks' errors are tested.)"""
    path = str(tmp_path / "in.parquet")
    values = pa.array(*values)
    pq.write_table(pa.table({"id": [0, 1, 2, 3], "p": values}), path)
    for engine in ("duckdb", "arrow"):
        build = lambda ctx, src, e=engine: ShuffleNode(ctx, src, 3, key, engine_type=e)  # noqa: E731
        if isinstance(expected, str):
            with pytest.raises(JobFailed) as ex:
                _run_on_file(make_rt, path, build)
            msg = str(ex.value)
            assert expected in msg and "test_shuffle_keys.py" in msg, (engine, msg)
            assert "Invalid Input Error" not in msg  # (DuckDB's error() raised, told as the error it is)
            continue
        parts, _ = _run_on_file(make_rt, path, build)
        assert [sorted(r["id"] for r in p) for p in parts] == expected, engine
        if key == "p":
            assert sorted((r["id"], r["p"]) for p in parts for r in p) == list(enumerate(values.to_pylist()))


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("key", ["p", "p * 1.0"])
def test_an_out_of_range_float_shuffle_key_is_named_as_the_data_holds_it(tmp_path, make_rt, engine, key):
    """A float key 6.0 names partition 6: the error names 6.0, the value in the data, besides the
    partition, and the node's line."""
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": [0, 1, 2], "p": [0.0, 6.0, 1.0]}), path)
    with pytest.raises(JobFailed) as ex:
        _run_on_file(make_rt, path, lambda ctx, src: ShuffleNode(ctx, src, 6, key, engine_type=engine))
    msg = str(ex.value)
    assert f"partition key 6 is out of range 0-5: the key {key!r} is 6.0 in the data" in msg, msg
    assert "test_shuffle_keys.py" in msg  # the node's line


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize("values,kind", [(["a", "b", "c"], ("string", "VARCHAR")), ([1, 2, 3], ("date32[day]", "DATE"))])
def test_a_shuffle_key_column_that_is_not_a_number_is_named_by_its_type(tmp_path, make_rt, engine, values, kind, no_plan_check):
    """The arrow engine said 'partition key a is out of range 0-1' for a string key column; the
    duckdb engine failed on CAST('a' AS BIGINT), and took '01' for 1: a key that is not a number
    is named by its type, in both engines (the type as each engine reads it)."""
    path = str(tmp_path / "in.parquet")
    arr = pa.array(values) if kind[0] == "string" else pa.array(values, pa.date32())
    pq.write_table(pa.table({"id": [0, 1, 2], "p": arr}), path)
    with pytest.raises(JobFailed) as ex:
        _run_on_file(make_rt, path, lambda ctx, src: ShuffleNode(ctx, src, 2, "p", engine_type=engine))
    msg = str(ex.value)
    typ = kind[0] if engine == "arrow" else kind[1]
    assert f"the shuffle key 'p' is of type {typ} in the data, not a number" in msg, msg
    assert "out of range" not in msg and "test_shuffle_keys.py" in msg
