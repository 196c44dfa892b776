"""Attempts as the driver sends them to workers (executors.local.TaskEncoder, executors.base) and as a worker
reads them back (worker.NodeCache, worker.decode_attempt): a task's fields that its node's tasks
share travel once, with the node; each attempt carries the task's own fields only."""

from __future__ import annotations

import pickle

from smallpond.execution.executors.base import encode_attempt
from smallpond.execution.executors.local import TaskEncoder
from smallpond.execution.ops.arrow import PythonScriptTask
from smallpond.execution.planner import Planner
from smallpond.execution.worker import NodeCache, decode_attempt
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import Context, DataSetPartitionNode, DataSourceNode, LogicalPlan, PythonScriptNode


def _noop(runtime_ctx, inputs, output_path):
    return True


class UsersTask(PythonScriptTask):
    """A task class of the user's (not smallpond's): it travels whole, as it pickles itself."""


def _python_tasks(make_rt, parquet_files, n=4):
    ctx = Context()
    src = DataSourceNode(ctx, ParquetDataSet(parquet_files))
    parts = DataSetPartitionNode(ctx, (src,), n, partition_by_rows=True)
    node = PythonScriptNode(ctx, (parts,), process_func=_noop, output_name="tiny")
    plan = Planner(make_rt()).create_exec_plan(LogicalPlan(ctx, node))
    tasks = sorted((t for t in plan.tasks.values() if t.node_id == int(node.id)), key=lambda t: t.key)
    assert len(tasks) == n
    return tasks


def _as_whole(task, inputs):
    """The task as a worker gets it when it travels whole (the state every rebuilt task must have)."""
    return pickle.loads(encode_attempt(task, inputs, 0, 1 << 20))[0]


def test_a_worker_rebuilds_each_task_as_if_it_had_travelled_whole(make_rt, parquet_files):
    tasks = _python_tasks(make_rt, parquet_files)
    inputs = [ParquetDataSet(parquet_files)]
    # fields the node's tasks share in the template, but not this one's: they travel with it
    tasks[2].cache_replace = not tasks[0].cache_replace
    tasks[3].memory_limit = 12345
    tasks[3].note = "a field of its own"
    encoder, workers_nodes = TaskEncoder(), NodeCache()
    for task in tasks:
        key, body = encoder.encode(task, inputs, 0, 1 << 20)
        if key not in workers_nodes:
            workers_nodes.add(key, encoder.blobs[key])
        fields = pickle.loads(body)[0]
        assert type(fields) is dict and "location" not in fields and "node_label" not in fields
        got, got_inputs, attempt, memory = decode_attempt(workers_nodes, key, body)
        assert (attempt, memory, got_inputs[0].paths) == (0, 1 << 20, inputs[0].paths)
        assert type(got) is type(task) and vars(got) == vars(_as_whole(task, inputs)), task.key
        assert type(got.id) is type(task.id) and got.partition_infos == task.partition_infos
        assert got.node is None and task.node is not None and task.plan_components  # the driver's task is unchanged
        assert type(workers_nodes.get(key)) is type(task.node)
    assert (tasks[2].cache_replace, tasks[3].memory_limit, tasks[3].note) == (
        decode_attempt(workers_nodes, key, encoder.encode(tasks[2], inputs, 0, 1)[1])[0].cache_replace,
        decode_attempt(workers_nodes, key, encoder.encode(tasks[3], inputs, 0, 1)[1])[0].memory_limit,
        decode_attempt(workers_nodes, key, encoder.encode(tasks[3], inputs, 0, 1)[1])[0].note,
    )
    # the rebuilt tasks share no mutable field: what one attempt records stays its own
    a = decode_attempt(workers_nodes, key, encoder.encode(tasks[0], inputs, 0, 1)[1])[0]
    b = decode_attempt(workers_nodes, key, encoder.encode(tasks[1], inputs, 0, 1)[1])[0]
    a.perf_metrics["x"] = 1.0
    a.stats["rows"] = 1
    assert b.perf_metrics == {} and b.stats == {} and a.input_keys is not b.input_keys


def test_a_task_of_a_users_class_travels_whole(make_rt, parquet_files):
    task = _python_tasks(make_rt, parquet_files, n=1)[0]
    task.__class__ = UsersTask
    encoder, workers_nodes = TaskEncoder(), NodeCache()
    key, body = encoder.encode(task, [], 0, 1)
    assert key not in encoder.templates
    workers_nodes.add(key, encoder.blobs[key])
    got = decode_attempt(workers_nodes, key, body)[0]
    assert type(got) is UsersTask and vars(got) == vars(_as_whole(task, []))


def _row_range_input(path: str) -> ParquetDataSet:
    """A tiny task's input: one row of a file, as a partition by rows hands it over."""
    from smallpond.io.rowrange import RowRange

    ds = ParquetDataSet([path], root_dir=None)
    ds._resolved_paths = [path]
    ds._resolved_row_ranges = [RowRange(path, 44558, 2000, 8, 9)]
    return ds


class UsersDataSet(ParquetDataSet):
    """A dataset class of the user's: it travels as itself."""


def test_an_attempts_datasets_travel_as_plain_values_and_are_rebuilt_whole(make_rt, parquet_files):
    """The inputs of an attempt that travels as its own fields carry no class reference for a plain
    ParquetDataSet and its row ranges (each would cost an import look-up on both sides): the
    worker rebuilds them with every field, the row ranges as RowRange objects; a dataset of
    another class travels as itself, and the driver's datasets are unchanged."""
    from smallpond.io.rowrange import RowRange

    task = _python_tasks(make_rt, parquet_files, n=1)[0]
    plain = _row_range_input(parquet_files[0])
    users = UsersDataSet([parquet_files[0]], root_dir=None)
    before = vars(plain).copy()
    encoder, workers_nodes = TaskEncoder(), NodeCache()
    key, body = encoder.encode(task, [plain, users, plain], 0, 1 << 20)
    workers_nodes.add(key, encoder.blobs[key])
    got = decode_attempt(workers_nodes, key, body)[1]
    assert [type(ds) for ds in got] == [ParquetDataSet, UsersDataSet, ParquetDataSet]
    assert vars(got[0]) == vars(plain) == before and vars(got[2]) == vars(plain) and vars(got[1]) == vars(users)
    assert [type(r) for r in got[0]._resolved_row_ranges] == [RowRange] and got[0].resolved_row_ranges[0].begin == 8
    assert [type(r) for r in plain._resolved_row_ranges] == [RowRange]
    alone = encoder.encode(task, [plain], 0, 1 << 20)[1]
    assert b"ParquetDataSet" not in alone and b"RowRange" not in alone


def test_an_outcome_travels_back_as_a_plain_tuple_and_is_rebuilt_whole():
    """A local worker sends a Completion back as :meth:`Completion.to_wire` (no class reference
    to look up on either side, its dataset's neither); :meth:`Completion.from_wire` is the same
    outcome, every field kept."""
    from dataclasses import fields

    from smallpond.errors import TaskError
    from smallpond.execution.executors.base import Completion

    done = Completion(
        "PythonScriptTask-000007", 2, True, _row_range_input("/a/0.parquet"), None, 0.5, "local-1", 1.7e9, {"rows": 3}
    )
    failed = Completion("PythonScriptTask-000008", 1, False, None, TaskError("boom", task_key="k"), 0.25, "local-0", 2.0)
    for outcome in (done, failed):
        payload = pickle.dumps(outcome.to_wire(), protocol=pickle.HIGHEST_PROTOCOL)
        assert b"Completion" not in payload and b"DataSet" not in payload
        back = Completion.from_wire(pickle.loads(payload))
        for f in fields(Completion):
            mine, theirs = getattr(outcome, f.name), getattr(back, f.name)
            if f.name == "dataset" and mine is not None:
                mine, theirs = (type(mine), vars(mine)), (type(theirs), vars(theirs))
            elif f.name == "error" and mine is not None:
                mine, theirs = (type(mine), str(mine)), (type(theirs), str(theirs))
            assert mine == theirs, f.name
