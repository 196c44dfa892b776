"""Node(output_name=...): names that cannot become the folder and file names of the output are
refused when the node is built, naming the node and where it was built."""

from __future__ import annotations

import pytest

from smallpond.errors import ParameterError
from smallpond.logical.base import MAX_OUTPUT_NAME_BYTES
from smallpond.logical.node import Context, DataSourceNode, SqlEngineNode


def build(name: str) -> SqlEngineNode:
    ctx = Context()
    return SqlEngineNode(ctx, (DataSourceNode(ctx, None),), "select 1 as x", output_name=name)


def test_the_longest_output_name_is_accepted_one_byte_more_is_refused():
    assert build("n" * MAX_OUTPUT_NAME_BYTES).output_name == "n" * MAX_OUTPUT_NAME_BYTES
    with pytest.raises(ParameterError) as info:
        build("n" * 300)
    message = str(info.value)
    assert message.startswith("SqlEngineNode created at ") and "test_output_name.py" in message
    assert f"output_name is 300 bytes long, at most {MAX_OUTPUT_NAME_BYTES} fit" in message
    with pytest.raises(ParameterError, match=f"is {MAX_OUTPUT_NAME_BYTES + 1} bytes long"):
        build("n" * (MAX_OUTPUT_NAME_BYTES + 1))


def test_the_bound_counts_bytes_not_characters():
    half = (MAX_OUTPUT_NAME_BYTES - 1) // 2  # "é" is 2 bytes in UTF-8
    assert build("n" + "é" * half).output_name
    with pytest.raises(ParameterError, match=f"is {1 + 2 * (half + 1)} bytes long"):
        build("n" + "é" * (half + 1))
