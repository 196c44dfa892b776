"""Fingerprints of user code and parameters: they never crash, see what changes a result, ignore
what does not, and are the same in two processes running the same script (so a rerun resumes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.execution.fingerprint import Unfingerprintable, stable_digest
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, SqlEngineNode
from tests.execution import fp_helpers

FP_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fp_job.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def ids_file(tmp_path):
    path = str(tmp_path / "ids.parquet")
    pq.write_table(pa.table({"id": list(range(10))}), path)
    return path


def test_closure_capturing_a_module_imported_in_the_enclosing_function(tmp_path, ids_file, log_messages):
    """The issue's reproduction: this ended in RecursionError inside stable_digest."""
    sp = smallpond.init(data_root=str(tmp_path / "root"))
    try:

        def build():
            import pyarrow.compute as pc

            df = sp.read_parquet(ids_file)
            return df.map_batches(lambda t: t.set_column(0, "id", pc.multiply(t["id"], 3)))

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "cannot fingerprint" warning either
            got = build().to_arrow()
    finally:
        sp.shutdown()
    assert got.column("id").to_pylist() == [i * 3 for i in range(10)]
    assert not [m for m in log_messages if "fingerprint" in m]


class Node_:
    def __init__(self, value):
        self.value = value
        self.me = self
        self.peers = []


def _ring(values):
    nodes = [Node_(v) for v in values]
    for i, n in enumerate(nodes):
        n.peers = [nodes[(i + 1) % len(nodes)], nodes[i - 1]]
    return nodes[0]


def test_cycles_are_cut_and_their_contents_still_count():
    a, b = _ring([1, 2, 3]), _ring([1, 2, 3])
    assert stable_digest(a) == stable_digest(b)
    assert stable_digest(a) != stable_digest(_ring([1, 2, 4]))

    def nested(depth, leaf):
        x = [leaf]
        for _ in range(depth):
            x = [x, {"k": x}]
        return x

    # past depth 64 a value is digested by its pickled bytes: still stable, still sensitive
    assert stable_digest(nested(300, 1)) == stable_digest(nested(300, 1))
    assert stable_digest(nested(300, 1)) != stable_digest(nested(300, 2))


def test_large_numpy_array_is_digested_by_its_data():
    a = np.arange(5_000_000, dtype=np.int64)
    b = a.copy()
    assert stable_digest(a) == stable_digest(b)
    b[4_999_999] = -1
    assert stable_digest(a) != stable_digest(b)
    assert stable_digest(a) != stable_digest(a.astype(np.int32))
    assert stable_digest(a[::2]) == stable_digest(np.ascontiguousarray(a[::2]))


def test_the_names_a_function_calls_are_part_of_its_code():
    import pyarrow.compute as pc

    f, g = (lambda t: pc.multiply(t, 2)), (lambda t: pc.add(t, 2))
    assert f.__qualname__ == g.__qualname__ and f.__code__.co_code == g.__code__.co_code  # only the name differs
    assert stable_digest(f) != stable_digest(g)


SCALE = 2


def scaled(t):
    return t * SCALE


def test_a_module_level_constant_the_function_reads_is_part_of_it():
    global SCALE
    before = stable_digest(scaled)
    SCALE = 3
    try:
        assert stable_digest(scaled) != before
    finally:
        SCALE = 2
    assert stable_digest(scaled) == before


class Client:
    def __init__(self, offset):
        self.offset = offset
        self.lock = threading.Lock()
        self.cache = {"pid": os.getpid()}

    def __getstate__(self):  # what a worker receives: no lock, no cache
        return {"offset": self.offset}


def test_objects_are_described_by_what_pickle_sends():
    assert stable_digest(Client(1)) == stable_digest(Client(1))
    assert stable_digest(Client(1)) != stable_digest(Client(2))
    frame = pd.DataFrame({"k": ["a", "b"], "v": [1, 2]})
    assert stable_digest(frame) == stable_digest(frame.copy())
    assert stable_digest(frame) != stable_digest(frame.assign(v=[1, 3]))
    assert stable_digest(threading.Lock()) == stable_digest(threading.Lock())  # a lock holds no data


def test_unfingerprintable_values_raise_a_typed_error_naming_them():
    def gen():
        yield 1

    with pytest.raises(Unfingerprintable, match="generator"):
        stable_digest({"x": [gen()]})


def _compute_plan(path, process_func, **kwargs):
    ctx = Context()
    node = ArrowComputeNode(ctx, (DataSourceNode(ctx, ParquetDataSet([path])),), process_func=process_func, **kwargs)
    return LogicalPlan(ctx, node), node


def test_module_level_lock_read_by_user_code_runs_and_is_reused(tmp_path, ids_file, log_messages):
    plan, node = _compute_plan(ids_file, fp_helpers.locked_copy)
    first = run_job(plan, make_runtime_ctx("lock-job", None, str(tmp_path)))
    plan, node = _compute_plan(ids_file, fp_helpers.locked_copy)
    second = run_job(plan, make_runtime_ctx("lock-job", None, str(tmp_path)))
    compute = [k for k in second.tasks if k.startswith("ArrowComputeTask")]
    assert second.tasks[compute[0]].fingerprint == first.tasks[compute[0]].fingerprint
    assert second.num_resumed >= 1
    assert not [m for m in log_messages if "cannot fingerprint" in m]


def test_unfingerprintable_value_warns_naming_node_and_value_and_is_never_reused(tmp_path, ids_file, log_messages):
    def run_once():
        plan, node = _compute_plan(ids_file, fp_helpers.copy_with_generator_around)
        with pytest.warns(UserWarning, match="cannot fingerprint builtins.generator") as rec:
            ep = run_job(plan, make_runtime_ctx("gen-job", None, str(tmp_path)))
        assert any(node.label in str(w.message) and node.location in str(w.message) for w in rec)
        return ep

    first = run_once()
    assert first.get_output is not None and first.final_output.to_arrow_table().num_rows == 10  # it still runs
    second = run_once()
    compute = next(k for k in second.tasks if k.startswith("ArrowComputeTask"))
    assert second.tasks[compute].fingerprint != first.tasks[compute].fingerprint
    assert second.final_output.to_arrow_table().num_rows == 10
    assert any("will not be reused" in m for m in log_messages)


def test_resource_hints_and_labels_do_not_change_fingerprints(make_rt, ids_file):
    def fingerprints(**kwargs):
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([ids_file])),), "select * from {0}", **kwargs)
        node.df_op = kwargs.pop("df_op", None)
        exec_plan = Planner(make_rt("same-job")).create_exec_plan(LogicalPlan(ctx, node))
        return {k: t.fingerprint for k, t in exec_plan.tasks.items() if k.startswith("SqlEngineTask")}

    base = fingerprints()
    assert fingerprints(cpu_limit=2, memory_limit=1 << 30) == base
    assert fingerprints(cpu_overcommit_ratio=0.5, memory_overcommit_ratio=0.5, enable_temp_directory=True) == base
    assert fingerprints(parquet_compression="SNAPPY") != base  # a writer option changes the files


def _run_fp_job(data_root, ids_file, hash_seed, **env):
    proc = subprocess.run(
        [sys.executable, FP_JOB, data_root, "fp-job", ids_file],
        env=dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED=str(hash_seed), SP_PROGRESS="0", **env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_script_in_two_processes_gives_the_same_fingerprints_and_resumes(tmp_path, ids_file):
    root = str(tmp_path / "root")
    first = _run_fp_job(root, ids_file, 1)
    second = _run_fp_job(root, ids_file, 2)  # another hash seed: set order must not matter
    assert second["fingerprints"] == first["fingerprints"]
    assert second["resumed"] == second["on_workers"], "every task should be reused from the first run"
    assert second["rows"] == first["rows"]
    assert first["rows"]["scaled"][3] == {"id": 3, "scaled": 31}

    # a changed module-level constant read by one function: that node runs again, the other does not
    third = _run_fp_job(root, ids_file, 3, FP_FACTOR="3")
    changed = {k for k, fp in third["fingerprints"].items() if first["fingerprints"][k] != fp}
    assert any(k.startswith("ArrowComputeTask") for k in changed)
    assert sum(k.startswith("ArrowComputeTask") for k in changed) == 1
    assert third["rows"]["factor"][5] == {"id": 5, "f": 15}
    assert third["rows"]["scaled"] == first["rows"]["scaled"]
