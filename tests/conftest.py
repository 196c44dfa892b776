"""Shared fixtures: a fresh data root per test, runtime contexts, small generated inputs."""

from __future__ import annotations

import os
import uuid
from typing import Callable, List

import pytest

from tests.datagen import generate_mock_urls, generate_parquet_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def data_root(tmp_path) -> str:
    path = tmp_path / "data_root"
    path.mkdir()
    return str(path)


@pytest.fixture
def make_rt(data_root) -> Callable:
    """``make_rt(job_id=None, **RuntimeContext kwargs)``: a runtime context under ``data_root``."""
    from smallpond.execution.job import make_runtime_ctx

    def make(job_id=None, **kwargs):
        return make_runtime_ctx(job_id or str(uuid.uuid4()), None, data_root, **kwargs)

    return make


@pytest.fixture
def url_files(tmp_path) -> List[str]:
    return generate_mock_urls(str(tmp_path / "mock_urls"), nfiles=6, nlines=60)


@pytest.fixture
def parquet_files(tmp_path) -> List[str]:
    """3 files of 10 rows (ids 0..29)."""
    return generate_parquet_files(str(tmp_path / "parquet"), nfiles=3, rows_per_file=10)


@pytest.fixture
def no_plan_check(monkeypatch):
    """For tests of how a task's own failure is handled: queries that cannot bind fail in their
    tasks, not earlier in the plan check (tests/execution/test_plancheck.py)."""
    monkeypatch.setenv("SP_PLAN_CHECK", "off")


@pytest.fixture
def log_messages():
    """Messages smallpond logged during the test (WARNING and above)."""
    from smallpond.common import logger

    messages: List[str] = []
    sink_id = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    yield messages
    logger.remove(sink_id)


def pytest_sessionfinish(session, exitstatus):
    """Stop the Ray test cluster if a test started one (tests/ray_cluster.py)."""
    import sys

    module = sys.modules.get("tests.ray_cluster")
    if module is not None:
        module.stop_cluster()


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    """A DataFrame session shared by a test module (modules that need other settings define their own)."""
    import smallpond

    session = smallpond.init(data_root=str(tmp_path_factory.mktemp("df_root")))
    yield session
    session.shutdown()
