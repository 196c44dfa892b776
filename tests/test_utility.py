"""smallpond.utility, and stdlib logging from user code landing in the task's log file."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

from smallpond.utility import ConcurrentIter, ConcurrentIterError, Wrapper, execute_command


def test_concurrent_iter():
    with ConcurrentIter(range(100), max_buffer_size=4) as it:
        assert list(it) == list(range(100))

    def broken():
        yield 1
        raise ValueError("bad")

    with pytest.raises(ConcurrentIterError):
        with ConcurrentIter(broken()) as it:
            list(it)


def test_execute_command():
    assert list(execute_command(["echo", "hi"])) == ["hi"]
    with pytest.raises(subprocess.CalledProcessError):
        list(execute_command("exit 3", shell=True))


def test_execute_command_closes_its_pipe_and_stops_a_command_left_early():
    """(Reference §5.3.) Reading every line, failing, or stopping early leaves no open pipe
    (ResourceWarning) and no command running."""
    import gc
    import time
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(execute_command(["echo", "hi"])) == ["hi"]
        with pytest.raises(subprocess.CalledProcessError):
            list(execute_command("echo out; exit 3", shell=True))
        start = time.monotonic()
        lines = execute_command(["sh", "-c", "echo first; exec sleep 60"])
        assert next(lines) == "first"
        lines.close()  # the command is killed, not waited for
        assert time.monotonic() - start < 30
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


class _Counted(Wrapper):
    """A subclass as a script would write one: one method of its own, the rest the table's."""

    def num_rows(self):
        return self._wrapped.num_rows * 10


def test_wrapper_stands_for_the_object_it_wraps():
    """(Reference §5.3 names ``Wrapper``; what it does is the plain proxy, see its docstring.)"""
    import pickle

    import pyarrow as pa

    table = pa.table({"a": [1, 2, 3]})
    w = Wrapper(table)
    assert w.num_rows == 3 and w.column_names == ["a"] and w.column("a").to_pylist() == [1, 2, 3]
    assert str(w) == str(table) and repr(w) == repr(table)
    w.note = "mine"  # set on the wrapper, not on the table
    assert w.note == "mine" and not hasattr(table, "note")
    with pytest.raises(AttributeError, match="no_such"):
        _ = w.no_such
    counted = _Counted(table)
    assert counted.num_rows() == 30 and counted.schema == table.schema
    back = pickle.loads(pickle.dumps(counted))
    assert type(back) is _Counted and back.num_rows() == 30 and back._wrapped.equals(table)
    with pytest.raises(AttributeError):
        _ = Wrapper.__new__(Wrapper).anything  # half-built (as while unpickling): no endless recursion
    import copy

    import numpy as np

    for wrapped in (table, np.arange(30), {"a": 1}):  # (numpy's own __deepcopy__ was found through the wrapper)
        counted = _Counted(wrapped)
        counted.note = ["mine"]
        for twin in (copy.copy(counted), copy.deepcopy(counted)):
            assert type(twin) is _Counted and type(twin._wrapped) is type(wrapped) and twin.note == ["mine"], type(twin)
        deep = copy.deepcopy(counted)
        assert deep.note is not counted.note and deep._wrapped is not counted._wrapped
    import doctest

    import smallpond.utility

    result = doctest.testmod(smallpond.utility, verbose=False)  # (Wrapper's example)
    assert result.attempted >= 3 and result.failed == 0


def log_with_stdlib(runtime_ctx, input_datasets, output_path):
    import logging

    logging.getLogger("user.module").warning("hello from stdlib logging in a task")
    return True


def test_stdlib_logging_is_captured_in_task_log(tmp_path):
    from smallpond.execution.job import make_runtime_ctx, run_job
    from smallpond.logical.node import Context, DataSourceNode, LogicalPlan, PythonScriptNode

    ctx = Context()
    node = PythonScriptNode(ctx, (DataSourceNode(ctx, None),), process_func=log_with_stdlib)
    rt = make_runtime_ctx(None, None, str(tmp_path))
    run_job(LogicalPlan(ctx, node), rt)
    logs = glob.glob(os.path.join(rt.log_root, "tasks", "PythonScriptTask-*.log"))
    assert logs
    assert any("hello from stdlib logging in a task" in open(p).read() for p in logs)
