"""The examples in the DataFrame API's docstrings run and show real output."""

from __future__ import annotations

import doctest

import smallpond
import smallpond.dataframe


def test_dataframe_docstring_examples(tmp_path):
    with smallpond.init(data_root=str(tmp_path)) as sp:
        result = doctest.testmod(smallpond.dataframe, extraglobs={"sp": sp}, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15
    assert result.failed == 0
