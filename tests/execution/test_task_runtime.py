"""What user code sees of its task at run time: seeded random numbers and GPU/NUMA answers."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pyarrow as pa
import pytest

from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner
from smallpond.execution.task import seeded_random
from smallpond.logical.dataset import ArrowTableDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSetPartitionNode, DataSourceNode, LogicalPlan
from tests import half_imported


def draw(runtime_ctx, tables):
    import random as global_random

    import numpy

    task = runtime_ctx.task
    n = tables[0].num_rows
    return pa.table(
        {
            "part": [task.partition_infos_as_dict["__data_partition__"]] * n,
            "py": [global_random.random() for _ in range(n)],
            "npg": [float(numpy.random.random()) for _ in range(n)],
            "np": task.numpy_random_gen.random(n).tolist(),
            "u32": [task.random_uint32() for _ in range(n)],
            "gpu": [repr((task.local_rank, task.local_gpu, task.local_gpu_ranks))] * n,
        }
    )


def _plan():
    ctx = Context()
    src = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"x": list(range(12))})))
    parts = DataSetPartitionNode(ctx, (src,), 3, partition_by_rows=True)
    return LogicalPlan(ctx, ArrowComputeNode(ctx, (parts,), process_func=draw))


def _compute_tasks(rt):
    tasks = {}
    for t in Planner(rt).create_exec_plan(_plan()).tasks.values():
        if t.key.startswith("ArrowCompute"):
            t.runtime_ctx = rt  # as in a worker: the seed is the job's
            tasks[t.partition_infos_as_dict["__data_partition__"]] = t
    return tasks


def test_global_random_is_seeded_per_task_so_the_same_job_draws_the_same_numbers(tmp_path, make_rt):
    ep = run_job(_plan(), make_runtime_ctx("seeded-job", None, str(tmp_path)), num_workers=2)
    got = ep.final_output.to_arrow_table().to_pylist()
    # what any run of this job draws: each task's stream, from the job's seed and the task id
    tasks = _compute_tasks(make_rt("seeded-job"))
    for part, task in tasks.items():
        rows = [r for r in got if r["part"] == part]
        expected = random.Random(task.random_seed_bytes)
        assert rows and [r["py"] for r in rows] == [expected.random() for _ in rows]
        # NumPy's global generator too, from the seed's 32 bytes as eight 32-bit words
        expected_np = np.random.RandomState(np.frombuffer(task.random_seed_bytes, dtype=">u4"))
        assert [r["npg"] for r in rows] == expected_np.random_sample(len(rows)).tolist()
    assert len({r["py"] for r in got}) == 12 and len({r["npg"] for r in got}) == 12, "each task has its own stream"
    # the job seed is a constant unless set: another job of the same plan draws the same numbers
    # (reproducible outputs), another seed draws others
    same = _compute_tasks(make_rt("another-job")).values()
    assert {t.random_seed_bytes for t in same} == {t.random_seed_bytes for t in tasks.values()}
    other = _compute_tasks(make_rt("another-job", random_seed=12345)).values()
    assert {t.random_seed_bytes for t in other}.isdisjoint({t.random_seed_bytes for t in tasks.values()})
    assert all(r["gpu"] == repr((0, None, [])) for r in got)  # a task without GPUs


def test_seeded_random_restores_the_callers_state(make_rt):
    plan = _plan()
    task = next(t for t in Planner(make_rt("x")).create_exec_plan(plan).tasks.values() if t.key.startswith("ArrowCompute"))
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    first = random.random()
    with seeded_random(task):
        inside = random.random()
    with seeded_random(task):
        assert random.random() == inside  # the same numbers on every attempt
    assert [first, random.random(), random.random()] == expected


def test_seeded_random_waits_for_another_threads_import_of_numpy_then_seeds_it(make_rt):
    """A task run in the driver while ``smallpond.init``'s background thread imports pandas (so
    numpy): it waits for that import to finish, as its own ``import numpy`` would, and NumPy's
    generator is seeded as in any other process (the half-initialized numpy has no ``random``)."""
    import numpy as np

    task = next(t for t in Planner(make_rt("x")).create_exec_plan(_plan()).tasks.values() if t.key.startswith("ArrowCompute"))
    with seeded_random(task):
        expected = (random.random(), np.random.random())
    got = []

    def run_task():
        with seeded_random(task):
            import numpy

            got.append((random.random(), numpy.random.random()))

    with half_imported.being_imported("numpy", completes=True):
        thread = threading.Thread(target=run_task)
        thread.start()
        assert half_imported.waiting_for_import(thread, "numpy"), "the task did not wait for the import"
    thread.join(60)
    assert got == [expected]


def test_gpu_placement_questions_raise_a_clear_error_for_a_task_that_asked_for_gpus(make_rt):
    ctx = Context()
    src = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"x": [1]})))
    node = ArrowComputeNode(ctx, (src,), process_func=draw, gpu_limit=1)
    with pytest.warns(UserWarning, match="gpu_limit 1 has no effect"):
        ep = Planner(make_rt("gpu")).create_exec_plan(LogicalPlan(ctx, node))
    task = next(t for t in ep.tasks.values() if t.key.startswith("ArrowCompute"))
    assert task.cpu_limit >= 1
    for attr in ("local_gpu", "local_rank", "local_gpu_ranks"):
        with pytest.raises(NotImplementedError, match="does not assign GPUs"):
            getattr(task, attr)


def test_bind_numa_node_warns_that_it_has_no_effect(tmp_path):
    with pytest.warns(
        UserWarning, match=r"bind_numa_node \(this build does not bind workers to NUMA nodes\) is accepted but has no effect"
    ):
        rt = make_runtime_ctx("numa", None, str(tmp_path), bind_numa_node=True)
    assert rt.numa_node_id is None and rt.numa_node_count == 1 and rt.get_local_gpus() == []


def test_runtime_context_parameters_without_effect_warn_once_naming_them(tmp_path):
    """Upstream's RuntimeContext parameters that change nothing here (reference §4.1: queue polling
    and probes, GPUs, profiling, a shared log root) warn when given a value of their own, in one
    warning naming each and why; their defaults, and the parameters that are honoured, do not."""
    import warnings

    from smallpond.execution.runtime import NO_EFFECT_PARAMS

    given = dict(
        secs_wq_poll_interval=0.1,
        secs_executor_probe_interval=1,
        max_num_missed_probes=10,
        max_usable_gpu_count=0,
        enable_profiling=True,
        enable_diagnostic_metrics=True,
        shared_log_root=str(tmp_path / "shared"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_runtime_ctx("quiet", None, str(tmp_path), max_usable_cpu_count=2, fault_inject_prob=0.1)
        make_runtime_ctx("defaults", None, str(tmp_path), **{k: d for k, (d, _) in NO_EFFECT_PARAMS.items()})
        assert not [str(w.message) for w in caught]
        rt = make_runtime_ctx("loud", None, str(tmp_path), **given)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("RuntimeContext: ") and "are accepted but have no effect in this build" in message
    for name in given:
        assert f"{name} (" in message, name
    assert "SP_QUEUE_TIMEOUT" in message and "bind_numa_node" not in message
    assert rt.usable_cpu_count >= 1  # (honoured parameters are untouched)


_BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_settings(runtime_ctx, tables):
    """The BLAS thread variables in the worker, and (``child``) in a subprocess the task starts."""
    import os
    import subprocess
    import sys

    import numpy  # noqa: F401  (loaded after the worker set its environment)

    n = tables[0].num_rows
    script = f"import os; print('|'.join(os.environ.get(k, '') for k in {_BLAS_VARIABLES!r}))"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    return pa.table({**{k: [os.environ.get(k, "")] * n for k in _BLAS_VARIABLES}, "child": [child] * n})


def _blas_plan():
    ctx = Context()
    src = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"x": list(range(4))})))
    parts = DataSetPartitionNode(ctx, (src,), 2, partition_by_rows=True)
    return LogicalPlan(ctx, ArrowComputeNode(ctx, (parts,), process_func=blas_settings))


def test_workers_give_blas_one_thread_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    """OpenBLAS would start a thread per core in each worker that imports numpy, and those spin
    for a while once started: a worker runs one task per CPU it reserved (as Dask's and Ray's do).
    The variables stay in the worker's environment, so a subprocess the task starts inherits them
    (``child``), as Ray's ``OMP_NUM_THREADS`` and upstream's do (see ``limit_blas_threads``)."""
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    ep = run_job(_blas_plan(), make_runtime_ctx("blas-default", None, str(tmp_path), task_cache=False), num_workers=2)
    rows = ep.final_output.to_arrow_table().to_pylist()
    assert rows and all(r == {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "child": "1|1"} for r in rows)
    # the user's choice (the job's environment, or the one the workers inherit) is left as it is
    rt = make_runtime_ctx("blas-user", None, str(tmp_path), env_overrides={"OPENBLAS_NUM_THREADS": "3"}, task_cache=False)
    rows = run_job(_blas_plan(), rt, num_workers=2).final_output.to_arrow_table().to_pylist()
    assert rows and all(r == {"OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "", "child": "3|"} for r in rows)
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    rows = run_job(_blas_plan(), make_runtime_ctx("blas-inherited", None, str(tmp_path), task_cache=False), num_workers=2)
    rows = rows.final_output.to_arrow_table().to_pylist()
    assert rows and all(r == {"OPENBLAS_NUM_THREADS": "", "MKL_NUM_THREADS": "2", "child": "|2"} for r in rows)


def _thp_enabled() -> str:
    """This process's ``THP_enabled`` (/proc/self/status): "0" once ``PR_SET_THP_DISABLE`` is set."""
    return next((line.split()[1] for line in open("/proc/self/status") if line.startswith("THP_enabled:")), "?")


def arrow_pool_pages(runtime_ctx, tables):
    """Whether the memory of a buffer from pyarrow's default pool is marked for huge pages
    (``hg`` among the VmFlags of its mapping in /proc/self/smaps), the variable saying so, and
    what a subprocess of the task sees: the variable and its THP state."""
    import os
    import subprocess
    import sys

    buf = pa.allocate_buffer(8 << 20)
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= buf.address < hi
            elif inside and head[0] == "VmFlags:":
                flags = head[1:]
                break
    n = tables[0].num_rows
    return pa.table(
        {
            "pool": [pa.default_memory_pool().backend_name] * n,
            "huge": ["hg" in (flags or [])] * n,
            "var": [os.environ.get("MIMALLOC_ALLOW_THP", "")] * n,
            "thp": [_thp_enabled()] * n,
            "child": [subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True).stdout.strip()] * n,
        }
    )


_CHILD = (
    "import os; print(os.environ.get('MIMALLOC_ALLOW_THP', ''), "
    "next((l.split()[1] for l in open('/proc/self/status') if l.startswith('THP_enabled:')), '?'), sep='|')"
)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
@pytest.mark.skipif(pa.default_memory_pool().backend_name != "mimalloc", reason="pyarrow's default pool is not mimalloc")
def test_workers_keep_arrow_memory_off_huge_pages_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    """A worker's pyarrow pool asks for no huge pages (``MIMALLOC_ALLOW_THP=0`` while pyarrow
    loads), but the user's code and its subprocesses see the environment and the THP setting the
    job started with; the user's own ``MIMALLOC_ALLOW_THP`` is left as it is."""
    # mimalloc marks its arenas MADV_HUGEPAGE: every fresh 2 MiB a worker touched was a huge page
    # zeroed by the kernel (~30% of the tuned GraySort's CPU samples in clear_page_erms)
    monkeypatch.delenv("MIMALLOC_ALLOW_THP", raising=False)
    ctx = Context()
    src = DataSourceNode(ctx, ArrowTableDataSet(pa.table({"x": list(range(4))})))
    parts = DataSetPartitionNode(ctx, (src,), 2, partition_by_rows=True)
    plan = LogicalPlan(ctx, ArrowComputeNode(ctx, (parts,), process_func=arrow_pool_pages))
    rows = run_job(plan, make_runtime_ctx("thp-default", None, str(tmp_path), task_cache=False), num_workers=2)
    rows = rows.final_output.to_arrow_table().to_pylist()
    mine = _thp_enabled()  # (this process's THP setting: the workers', and their children's, unless always)
    always = "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    want = {"pool": "mimalloc", "huge": False, "var": "", "thp": "0" if always else mine, "child": f"|{'0' if always else mine}"}
    assert rows and all(r == want for r in rows), rows
    # the user's choice (here, in the job's environment) is left as it is
    rt = make_runtime_ctx("thp-user", None, str(tmp_path), env_overrides={"MIMALLOC_ALLOW_THP": "1"}, task_cache=False)
    rows = run_job(plan, rt, num_workers=2).final_output.to_arrow_table().to_pylist()
    assert rows and all(r["var"] == "1" and r["child"] == f"1|{mine}" for r in rows), rows
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(thp) and "[madvise]" in open(thp).read():  # the probe sees the marks it looks for
        assert all(r["huge"] for r in rows)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
@pytest.mark.skipif(pa.default_memory_pool().backend_name != "mimalloc", reason="pyarrow's default pool is not mimalloc")
def test_the_arrow_pages_setting_is_in_the_environment_only_while_pyarrow_is_imported(tmp_path):
    """In a fresh interpreter (a worker's): nothing in the environment before or after pyarrow's
    import, the pool's memory not marked for huge pages, and a spec looked up beforehand
    (``importlib.util.find_spec``, as libraries probing for pyarrow do) changes nothing."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    code = (
        "import importlib.util, os, subprocess, sys\n"
        "from smallpond.execution.worker import keep_arrow_pages_small\n"
        "def thp():\n"
        "    return next(l.split()[1] for l in open('/proc/self/status') if l.startswith('THP_enabled:'))\n"
        "before = thp()\n"
        "assert keep_arrow_pages_small(os.environ) and 'MIMALLOC_ALLOW_THP' not in os.environ\n"
        "assert importlib.util.find_spec('pyarrow') is not None and 'pyarrow' not in sys.modules\n"
        "import pyarrow as pa\n"
        "buf = pa.allocate_buffer(8 << 20)\n"
        "flags, inside = [], False\n"
        "for line in open('/proc/self/smaps'):\n"
        "    head = line.split()\n"
        "    if '-' in head[0] and not head[0].endswith(':'):\n"
        "        lo, hi = (int(x, 16) for x in head[0].split('-'))\n"
        "        inside = lo <= buf.address < hi\n"
        "    elif inside and head[0] == 'VmFlags:':\n"
        "        flags = head[1:]\n"
        "        break\n"
        f"child = subprocess.run([sys.executable, '-c', {_CHILD!r}], capture_output=True, text=True).stdout.strip()\n"
        "print('hg' in flags, repr(os.environ.get('MIMALLOC_ALLOW_THP', '')), thp() == before, child == '|' + before,"
        " keep_arrow_pages_small(os.environ))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_ALLOW_THP"}
    env["PYTHONPATH"] = REPO_ROOT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    always = "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "''", str(not always), str(not always), "False"], out.stdout


def test_workers_hash_seed_follows_the_job_seed_unless_the_user_sets_one(tmp_path):
    from smallpond.execution.worker import worker_hash_seed

    rt = make_runtime_ctx("hash-a", None, str(tmp_path), task_cache=False)
    same = make_runtime_ctx("hash-b", None, str(tmp_path), task_cache=False)
    other = make_runtime_ctx("hash-c", None, str(tmp_path), task_cache=False, random_seed=7)
    seed = worker_hash_seed(rt, {})
    assert seed.isdigit() and int(seed) < 2**32  # what Python accepts
    assert worker_hash_seed(same, {}) == seed and worker_hash_seed(other, {}) != seed
    assert worker_hash_seed(rt, {"PYTHONHASHSEED": "random"}) == "random"  # the user's environment
    overridden = make_runtime_ctx("hash-d", None, str(tmp_path), task_cache=False, env_overrides={"PYTHONHASHSEED": "0"})
    assert worker_hash_seed(overridden, {"PYTHONHASHSEED": "5"}) == "0"  # the job's own setting first


ONLY_SQL_OR_PYTHON = """
import json, sys, tempfile
from smallpond.execution.job import make_runtime_ctx
from smallpond.execution.planner import Planner
from smallpond.execution.task import seeded_random
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, SqlEngineNode

ctx = Context()
src = DataSourceNode(ctx, ParquetDataSet(["/no/such.parquet"]))
sql = SqlEngineNode(ctx, (src,), "select * from {0}")
python = ArrowComputeNode(ctx, (sql,), process_func=lambda runtime_ctx, tables: tables[0])
rt = make_runtime_ctx("imports", None, tempfile.mkdtemp(), task_cache=False)
tasks = {type(t).__name__: t for t in Planner(rt).create_exec_plan(LogicalPlan(ctx, python)).tasks.values()}
seen = {}
for kind in ("SqlEngineTask", "ArrowComputeTask"):
    with seeded_random(tasks[kind]):
        seen[kind] = "numpy.random" in sys.modules
        if seen[kind]:
            import numpy
            seen["draw"] = float(numpy.random.random())
print(json.dumps(seen))
"""


def test_numpy_is_imported_and_seeded_for_tasks_that_run_user_python_only():
    # numpy 2 imports numpy.random lazily (~20 ms, ~100 ms with numpy itself): a worker running
    # only SQL tasks, which no user code runs in, does not pay for it
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    runs = [subprocess.run([sys.executable, "-c", ONLY_SQL_OR_PYTHON], capture_output=True, text=True, env=env) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    seen = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    assert seen[0]["SqlEngineTask"] is False and seen[0]["ArrowComputeTask"] is True
    assert seen[0]["draw"] == seen[1]["draw"]  # seeded: the same number in two processes


IN_A_WORKER = ONLY_SQL_OR_PYTHON.replace(
    "seen = {}",
    """from smallpond.execution.task import process_owns_random_state
process_owns_random_state()  # as a worker process does
seen = {}
task = tasks["ArrowComputeTask"]
with seeded_random(task):
    seen["before"] = "numpy.random" in sys.modules
    import numpy
    seen["lazy"] = float(numpy.random.random())  # imported by the task's code: seeded on import
with seeded_random(task):
    seen["again"] = float(numpy.random.random())  # imported before the task: seeded at its start
print(json.dumps(seen))
raise SystemExit(0)""",
)


def test_a_worker_seeds_numpy_when_the_tasks_code_first_imports_it():
    # a worker imports numpy.random only if a task's code does (~0.1 s of CPU per worker that
    # runs Python tasks without NumPy); imported by the code, it is seeded as if it were before
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    runs = [subprocess.run([sys.executable, "-c", IN_A_WORKER], capture_output=True, text=True, env=env) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    seen = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    assert seen[0]["before"] is False
    assert seen[0]["lazy"] == seen[0]["again"] == seen[1]["lazy"]


def test_partition_infos_and_task_ids_pickle_as_plain_calls_and_older_pickles_still_load():
    """Every attempt sent to a worker carries its task's id and partition infos: they pickle as a
    call of their class (no copyreg, no state methods: fewer instructions both ways), and a pickle
    written before (commit records, saved plans: ``copyreg.__newobj__`` and a state) still loads."""
    import pickle
    import pickletools

    from smallpond.execution.task import PartitionInfo, TaskId

    for value in (PartitionInfo(3, 8, "d"), TaskId(12)):
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        ops = {op.name for op, _, _ in pickletools.genops(data)}
        assert "REDUCE" in ops and not ops & {"NEWOBJ", "BUILD"}, (value, ops)
        back = pickle.loads(data)
        assert type(back) is type(value) and back == value and str(back) == str(value)
    info = pickle.loads(pickle.dumps(PartitionInfo(3, 8, "d")))
    assert (info.index, info.npartitions, info.dimension) == (3, 8, "d")
    # as the release before wrote them (protocol 2, the state as a tuple)
    older = (
        b"\x80\x02csmallpond.execution.task\nPartitionInfo\nq\x00)\x81q\x01K\x03K\x08X\x01\x00\x00\x00dq\x02\x87q\x03b"
        b"csmallpond.execution.task\nTaskId\nq\x04K\x0c\x85q\x05\x81q\x06\x86q\x07."
    )
    info, task_id = pickle.loads(older)
    assert (info.index, info.npartitions, info.dimension) == (3, 8, "d")
    assert type(task_id) is TaskId and task_id == 12 and str(task_id) == "000012"
