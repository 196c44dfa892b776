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


#: the versions the whole suite passed with (session 33, `python -m pytest -q tests`: 3.11, 1455
#: passed; 3.13, see the closing note; session 34: 3.12.1, 1509 passed, 5 skipped), installed
#: into a fresh venv with
#: ``pip install --only-binary :all: duckdb==2.0.0 pyarrow==16.0.0 ...`` and ``pip install --no-deps -e .``
TESTED_FLOORS = {
    "3.11": {
        "duckdb": "2.0.0",
        "pyarrow": "16.0.0",
        "pandas": "2.0.0",
        "numpy": "1.26.0",
        "loguru": "0.7.0",
        "psutil": "5.9.4",
        "networkx": "3.0",
        "cloudpickle": "3.0.0",
        "tqdm": "4.66.0",
    },
    "3.12": {
        "duckdb": "2.0.0",
        "pyarrow": "16.0.0",
        "pandas": "2.1.1",
        "numpy": "1.26.0",
        "loguru": "0.7.0",
        "psutil": "5.9.4",
        "networkx": "3.0",
        "cloudpickle": "3.0.0",
        "tqdm": "4.66.0",
    },
    "3.13": {
        "duckdb": "2.0.0",
        "pyarrow": "18.0.0",
        "pandas": "2.2.3",
        "numpy": "2.1.0",
        "loguru": "0.7.0",
        "psutil": "5.9.4",
        "networkx": "3.0",
        "cloudpickle": "3.0.0",
        "tqdm": "4.66.0",
    },
}


def test_dependency_floors_are_the_tested_versions():
    """Each dependency's floor in pyproject.toml, for Python 3.11, 3.12 and 3.13, is a version the whole
    suite passed with (TESTED_FLOORS): a floor raised or lowered without testing fails here."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    for python, tested in TESTED_FLOORS.items():
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        floors = {}
        for text in _pyproject()["project"]["dependencies"]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            (spec,) = [s for s in req.specifier if s.operator == ">="]
            floors[req.name] = Version(spec.version)
        assert set(floors) == set(tested), python
        for name, version in tested.items():
            assert floors[name] == Version(version), f"{name} on {python}: pyproject says >={floors[name]}, tested {version}"


#: the warc extra's floors: tests/contrib/test_warc.py passed with exactly these on Python 3.11 and
#: 3.13 (session 36, ``pip install --only-binary :all:`` into a fresh venv), and on 3.12.1 (session
#: 37, the same way, beside the 3.12 floors pyarrow 16.1.0, pandas 2.1.1, numpy 1.26.4, duckdb 2.0.1)
TESTED_WARC_FLOORS = {"warcio": "1.7.4", "beautifulsoup4": "4.12", "lxml": "5.3", "zstandard": "0.23"}


def test_warc_extra_floors_are_the_tested_versions_and_dev_installs_them():
    """``smallpond[warc]`` (smallpond.contrib.warc) declares the tested floors, and the dev extra (the
    README's set-up, what CI installs) has the same requirements, so the warc tests run in CI."""
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]
    warc = {Requirement(r).name: str(Requirement(r).specifier) for r in extras["warc"]}
    assert warc == {name: f">={v}" for name, v in TESTED_WARC_FLOORS.items()}
    dev = {Requirement(r).name: str(Requirement(r).specifier) for r in extras["dev"]}
    assert all(dev.get(name) == spec for name, spec in warc.items()), dev
