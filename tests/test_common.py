"""smallpond.common: the partition helpers every layer relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smallpond.common import get_nth_partition, next_power_of_two, split_into_cols, split_into_rows


def test_split_into_rows_example():
    assert split_into_rows(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_into_rows([1, 2], 4) == [[1], [2], [], []]


@given(st.lists(st.integers(), max_size=200), st.integers(min_value=1, max_value=50))
def test_split_into_rows_is_array_split(items, n):
    chunks = split_into_rows(items, n)
    assert len(chunks) == n
    assert [x for c in chunks for x in c] == items
    assert [list(c) for c in np.array_split(np.array(items, dtype=object), n)] == chunks


@given(st.lists(st.integers(), max_size=200), st.integers(min_value=1, max_value=50))
def test_get_nth_partition_equals_split_into_rows(items, n):
    chunks = split_into_rows(items, n)
    assert [get_nth_partition(items, i, n) for i in range(n)] == chunks


@given(st.lists(st.integers(), max_size=200), st.integers(min_value=1, max_value=50))
def test_split_into_cols_is_balanced_round_robin(items, n):
    cols = split_into_cols(items, n)
    assert len(cols) == n
    assert sorted(x for c in cols for x in c) == sorted(items)
    assert max(map(len, cols)) - min(map(len, cols)) <= 1
    assert all(items.index(c[0]) == i for i, c in enumerate(cols) if c) or len(set(items)) < len(items)


@pytest.mark.parametrize("n", [0, -1])
def test_split_rejects_non_positive_counts(n):
    with pytest.raises(ValueError):
        split_into_rows([1, 2, 3], n)
    with pytest.raises(ValueError):
        split_into_cols([1, 2, 3], n)


def test_next_power_of_two():
    assert [next_power_of_two(x) for x in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]


def test_common_docstring_examples():
    import doctest

    import smallpond.common

    result = doctest.testmod(smallpond.common, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize(
    "dist", ["smallpond", "duckdb", "pyarrow", "pandas", "typing_extensions", "typing-extensions", "no-such-dist-x"]
)
def test_installed_version_is_importlib_metadatas(dist):
    """The engine's versions (recorded in each job's events and in cache keys) are read without
    importlib.metadata, with the same answer."""
    from importlib.metadata import PackageNotFoundError, version

    from smallpond.common import installed_version

    try:
        expected = version(dist)
    except PackageNotFoundError:
        expected = None
    assert installed_version(dist) == expected


_LIB_DIRS_COUNT = r"""
import json, sys, sysconfig
computed = []
real = sysconfig.get_scheme_names  # loguru's helper asks it once per computation
sysconfig.get_scheme_names = lambda: computed.append(1) or real()
from smallpond.common import logger
logger.add(lambda message: None)  # a sink of smallpond's logger, as every job adds two
from loguru._better_exceptions import ExceptionFormatter
shared = ExceptionFormatter._get_lib_dirs
print(json.dumps([len(computed), sorted(shared()), sorted(shared.__wrapped__())]))
"""


def test_loguru_library_folders_of_its_import_are_reused():
    """When smallpond's logger is the first to import loguru, the library folders loguru listed
    for its default sink then (for the same ``sys.path``) are reused: the ~3.5 ms list is made
    once in the process, not twice (a job's start: import to first result). Fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's smallpond
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _LIB_DIRS_COUNT], capture_output=True, text=True, timeout=120, check=True, env=env
    )
    computed, reused, fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert computed == 1  # loguru's own default sink; smallpond's sinks reuse it
    assert reused == fresh  # the same folders loguru computes now


def test_loguru_library_folders_are_computed_once_per_sys_path(monkeypatch, tmp_path):
    # loguru asks sysconfig for every scheme's paths for each sink added (~11-25 ms each); the
    # answer depends on sys.path only, so smallpond keeps it per sys.path: same answer, once
    import sys
    import sysconfig

    from loguru._better_exceptions import ExceptionFormatter

    from smallpond.common import _share_loguru_lib_dirs, logger

    logger._get()  # smallpond's logger wraps the helper when it is first used
    _share_loguru_lib_dirs()  # and wrapping twice changes nothing
    shared = ExceptionFormatter._get_lib_dirs
    if not getattr(shared, "_smallpond_shared", False):
        pytest.skip("this loguru has no _get_lib_dirs helper to share")
    original = shared.__wrapped__
    assert getattr(original, "_smallpond_shared", False) is False
    assert shared() == original()
    calls = []
    real_get_path = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path", lambda *a, **k: calls.append(a) or real_get_path(*a, **k))
    first = shared()
    assert calls == [], "asked sysconfig again for the same sys.path"
    first.append("changed by a caller")  # each caller gets a copy
    assert shared() == original()
    asked = len(calls)  # by original() alone
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])  # another sys.path: asked again
    assert shared() == original() and len(calls) == 3 * asked
    # loguru's exception formatting still works through the shared helper
    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="ERROR")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.remove(sink)
    assert "ValueError: boom" in messages[0] and "failed" in messages[0]


@pytest.mark.parametrize("first", ["smallpond", "loguru"])
def test_callbacks_run_once_loguru_is_imported_whoever_imports_it(first):
    # a worker routes loguru into its task logs only once loguru is imported: by smallpond's own
    # logger on its first call (the callback then sees that logger created), or by a task's import
    import subprocess
    import sys

    code = f"""
import sys
from smallpond.common import logger, when_loguru_is_imported
calls = []

def route():
    from loguru import logger as global_logger
    calls.append(logger._get() is not None)
    logger.remove()
    logger.add(lambda m: calls.append(str(m).strip()), level="INFO", format="{{message}}")

when_loguru_is_imported(route)
assert "loguru" not in sys.modules and calls == []
if {first!r} == "smallpond":
    logger.warning("first")
else:
    import loguru
    assert calls == [True], calls
    logger.warning("first")
logger.info("second")
when_loguru_is_imported(lambda: calls.append("at once"))
assert calls == [True, "first", "second", "at once"], calls
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rare_full_collections_raises_the_third_threshold_and_puts_it_back():
    import gc

    from smallpond.common import rare_full_collections

    before = gc.get_threshold()
    with rare_full_collections():
        inside = gc.get_threshold()
        with rare_full_collections():  # nested (a session's job inside a planner call): unchanged
            assert gc.get_threshold() == inside
        assert gc.get_threshold() == inside
    assert inside[:2] == before[:2] and inside[2] >= 1000
    assert gc.get_threshold() == before
    try:
        with rare_full_collections():
            raise ValueError("a failed plan")
    except ValueError:
        pass
    assert gc.get_threshold() == before


def test_some_of_names_the_first_few_and_counts_the_rest():
    from smallpond.common import some_of

    assert some_of([]) == ""
    assert some_of(["a", "b", "c"]) == "a, b, c"
    assert some_of(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"
    assert some_of(list("abcdefg"), 5) == "a, b, c, d, e and 2 more"


def test_process_start_time_is_psutils_create_time():
    """Job locks and task cache claims record it and compare it later (to tell a process from one
    that reuses its PID), also against records written with psutil's value: they must agree."""
    import os
    import subprocess
    import sys

    from smallpond.processes import process_start_time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # both read the boot time (which moves with steps of the wall clock) in a fresh process,
        # at the same moment: this long-lived test process read its own at another time
        code = (
            "import sys, psutil\n"
            "from smallpond.processes import process_start_time\n"
            "for pid in map(int, sys.argv[1:]):\n"
            "    print(process_start_time(pid) - psutil.Process(pid).create_time())\n"
        )
        out = subprocess.run([sys.executable, "-c", code, str(os.getpid()), str(child.pid)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert [float(x) for x in out.stdout.split()] == pytest.approx([0.0, 0.0], abs=0.02)
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) is None  # gone (and reaped)


def test_a_process_start_id_does_not_move_with_the_wall_clock():
    """Job locks, cache claims, job states and queue executors tell a live process from a later
    one with its PID by its start. A start time read after a step of the wall clock (NTP, a virtual
    machine resumed after a pause: seen here as 22 s) differs from the one recorded; the start
    id, where both sides know it, decides instead."""
    import os
    import subprocess
    import sys

    from smallpond.processes import process_start_id, process_start_time, same_process_start

    if not sys.platform.startswith("linux"):
        pytest.skip("the start id is read from /proc")
    me = os.getpid()
    recorded_time, recorded_id = process_start_time(me), process_start_id(me)
    assert recorded_id and recorded_id == process_start_id(me)
    stepped = recorded_time - 22.0  # what the record says, read back after the clock moved
    assert same_process_start(me, stepped, recorded_id) is True
    assert same_process_start(me, stepped, None) is False  # only the time: taken for another process
    assert same_process_start(me, recorded_time, None) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = process_start_id(child.pid)
        assert other and other != recorded_id
        assert same_process_start(child.pid, recorded_time, recorded_id) is False  # a reused pid
    finally:
        child.kill()
        child.wait()
    assert same_process_start(child.pid, recorded_time, recorded_id) is None


def test_total_memory_is_psutils():
    import psutil

    from smallpond.execution.runtime import _total_memory

    assert _total_memory() == psutil.virtual_memory().total


def test_wait_exit_returns_when_a_child_exits_and_not_before():
    import os
    import subprocess
    import sys
    import time

    from smallpond.processes import wait_exit

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = time.monotonic()
        assert wait_exit(child.pid, 0.3) is False  # alive: the whole timeout
        assert time.monotonic() - start >= 0.25
        assert child.poll() is None
        child.kill()
        start = time.monotonic()
        assert wait_exit(child.pid, 10) is True
        assert time.monotonic() - start < 5
        assert os.waitpid(child.pid, os.WNOHANG)[0] == child.pid  # exited, not reaped by wait_exit
        child.returncode = -9
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    assert wait_exit(child.pid, 0.1) is False  # reaped: nothing to tell
