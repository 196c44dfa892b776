"""What pyproject.toml and the README promise matches what is tested: Python 3.11+, DuckDB 2.x."""

from __future__ import annotations

import os
import re
import sys
import tomllib

import duckdb

from tests.conftest import REPO_ROOT


def _pyproject() -> dict:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_python_and_duckdb_floors_match_what_runs_here():
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)
    duckdb_req = next(d for d in project["dependencies"] if d.startswith("duckdb"))
    assert duckdb_req == "duckdb>=2.0"
    assert int(duckdb.__version__.split(".")[0]) >= 2
    assert _pyproject()["tool"]["ruff"]["target-version"] == "py311"


def test_readme_states_the_same_python_versions():
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    assert "3.10" not in readme
    assert re.search(r"Python 3\.11.{1,5}3\.13", readme)
