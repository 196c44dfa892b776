"""Fixtures of the end-to-end safety tests: a session over a data root of the test's own."""

from __future__ import annotations

import pytest

import smallpond


@pytest.fixture
def root(tmp_path) -> str:
    """The test's data root (not created: the session makes it)."""
    return str(tmp_path / "root")


@pytest.fixture
def sp(root):
    """A session with one executor over ``root`` (this folder's tests that use ``sp`` get this one,
    not the module-wide one of tests/conftest.py, unless they define their own)."""
    session = smallpond.init(data_root=root, num_executors=1)
    yield session
    session.shutdown()
