"""Fingerprints of user code and parameters: they never crash, see what changes a result, ignore
what does not, and are the same in two processes running the same script (so a rerun resumes)."""

from __future__ import annotations

import abc
import copy
import dataclasses
import enum
import importlib
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import uuid
import warnings
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import smallpond
from smallpond.execution import fingerprint_sources
from smallpond.execution.fingerprint import Unfingerprintable, stable_digest
from smallpond.execution.fingerprint_sources import home_module
from smallpond.execution.job import make_runtime_ctx, run_job
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan, SqlEngineNode
from tests import half_imported
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


def test_a_compiled_regular_expression_is_described_by_its_pattern_and_flags():
    """``re.Pattern`` pickles through ``copyreg``, not ``__reduce_ex__``: a UDF using a module-level
    ``re.compile`` must be fingerprintable (else its node is never reused) and see a new pattern."""
    import re

    one = stable_digest(re.compile("a+"))
    assert one == stable_digest(re.compile("a+")) != stable_digest(re.compile("b+"))
    assert one != stable_digest(re.compile("a+", re.IGNORECASE))


def test_attributes_set_on_a_function_are_part_of_it():
    def f(x):
        return x * f.scale

    f.scale = 2
    first = stable_digest(f)
    assert stable_digest(f) == first
    f.scale = 3
    assert stable_digest(f) != first


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


def test_the_folder_a_node_was_built_in_does_not_change_fingerprints(make_rt, ids_file, tmp_path, monkeypatch):
    """``Node.created_cwd`` says where its tasks run (relative paths), not what they compute: a
    rerun of the script from another folder resumes."""

    def fingerprints(folder):
        monkeypatch.chdir(folder)
        ctx = Context()
        node = SqlEngineNode(ctx, (DataSourceNode(ctx, ParquetDataSet([ids_file])),), "select * from {0}")
        assert node.created_cwd == str(folder)
        exec_plan = Planner(make_rt("same-job")).create_exec_plan(LogicalPlan(ctx, node))
        return {k: t.fingerprint for k, t in exec_plan.tasks.items() if k.startswith("SqlEngineTask")}

    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    assert fingerprints(tmp_path / "A") == fingerprints(tmp_path / "B")


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
    assert third["rows"]["udf"][4] == {"id": 4, "p": 5}


# -- the user's own modules, used through attribute access ------------------------------------------

usermod = None  # set by the tests below to a module of theirs (as a script's ``import mymod`` would)


def calls_usermod(x):
    return usermod.g(x)


def calls_usermod_sub(x):
    return usermod.sub.g(x)


def calls_math(x):
    return math.sqrt(x)


class UserModules:
    """Writes modules into a folder on sys.path (under names unique to the test) and imports them."""

    def __init__(self, folder):
        self.folder = folder
        self.prefix = f"fp_user_{uuid.uuid4().hex[:8]}_"

    def write(self, relpath: str, text: str) -> str:
        """Write (or rewrite) a file, its modification time 2 s later than the last version's:
        Python's bytecode cache tells versions apart by time (in seconds) and size."""
        path = os.path.join(self.folder, relpath.replace("{p}", self.prefix))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = os.stat(path).st_mtime_ns if os.path.exists(path) else None
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).replace("{p}", self.prefix))
        if old is not None:
            os.utime(path, ns=(old + 2_000_000_000, old + 2_000_000_000))
        return path

    def load(self, name: str):
        return importlib.import_module(name.replace("{p}", self.prefix))

    def reload(self, name: str):
        return importlib.reload(self.load(name))


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    mods = UserModules(str(folder))
    yield mods
    for name in [n for n in sys.modules if n.startswith(mods.prefix)]:
        del sys.modules[name]


def test_an_edit_of_a_user_module_used_through_attribute_access_changes_the_fingerprint(user_modules, monkeypatch):
    """``mymod.g(x)``: the function names only the module; its file is what identifies the code."""
    user_modules.write("{p}mymod.py", "K = 1\ndef g(x):\n    return x * K\n")
    monkeypatch.setattr(sys.modules[__name__], "usermod", user_modules.load("{p}mymod"))
    first = stable_digest(calls_usermod)
    assert stable_digest(calls_usermod) == first  # an unchanged module: the same fingerprint

    user_modules.write("{p}mymod.py", "K = 20\ndef g(x):\n    return x * K\n")
    user_modules.reload("{p}mymod")
    assert usermod.g(1) == 20
    assert stable_digest(calls_usermod) != first

    user_modules.write("{p}mymod.py", "K = 1\ndef g(x):\n    return x * K\n")  # back: by content, not time
    user_modules.reload("{p}mymod")
    assert stable_digest(calls_usermod) == first


def test_a_function_imported_from_a_user_module_is_fingerprinted_by_its_code(user_modules):
    """``from mymod import g``: the function object itself, its code and the globals it reads."""
    job, first = _job_across_an_edit(
        user_modules,
        "from {p}mymod import g\ndef f(x):\n    return g(x)\n",
        "f",
        "K = 1\ndef g(x):\n    return x * K\n",
        "K = 20\ndef g(x):\n    return x * K\n",
    )
    assert job.f(1) == 20
    assert stable_digest(job.f) != first


def test_user_modules_behind_a_module_are_part_of_it(user_modules, monkeypatch):
    """``pkg.sub.g(x)`` where only ``pkg`` is a global (its ``__init__`` does not import ``sub``), and
    a constant ``pkg/sub.py`` imports from another user module by value."""
    user_modules.write("{p}pkg/__init__.py", "")
    user_modules.write("{p}pkg/sub.py", "from {p}config import K\ndef g(x):\n    return x * K\n")
    user_modules.write("{p}config.py", "K = 1\n")
    user_modules.load("{p}pkg.sub")
    monkeypatch.setattr(sys.modules[__name__], "usermod", user_modules.load("{p}pkg"))
    first = stable_digest(calls_usermod_sub)
    assert stable_digest(calls_usermod_sub) == first

    user_modules.write("{p}config.py", "K = 20\n")  # sub.py is unchanged
    user_modules.reload("{p}config")
    user_modules.reload("{p}pkg.sub")
    assert usermod.sub.g(1) == 20
    second = stable_digest(calls_usermod_sub)
    assert second != first

    user_modules.write("{p}pkg/sub.py", "from {p}config import K\ndef g(x):\n    return x * K + 1\n")
    user_modules.reload("{p}pkg.sub")
    assert stable_digest(calls_usermod_sub) not in (first, second)


def test_a_user_module_edited_but_not_reloaded_is_unfingerprintable(user_modules, monkeypatch):
    """The code that runs is the one imported: keyed by the file as it is now, a job would store
    the old code's result under the new code's key."""
    user_modules.write("{p}mymod.py", "K = 1\ndef g(x):\n    return x * K\n")
    monkeypatch.setattr(sys.modules[__name__], "usermod", user_modules.load("{p}mymod"))
    first = stable_digest(calls_usermod)
    user_modules.write("{p}mymod.py", "K = 20\ndef g(x):\n    return x * K\n")
    with pytest.raises(Unfingerprintable, match="changed after it was imported"):
        stable_digest(calls_usermod)
    user_modules.reload("{p}mymod")
    assert stable_digest(calls_usermod) != first


def test_module_files_are_read_once_per_version_and_library_modules_never(user_modules, monkeypatch):
    reads = []
    real = fingerprint_sources._read_source
    monkeypatch.setattr(fingerprint_sources, "_read_source", lambda path, package: reads.append(path) or real(path, package))

    first = stable_digest(calls_math)
    assert [stable_digest(calls_math) for _ in range(3)] == [first] * 3
    assert reads == []  # the standard library is identified by name and version

    path = user_modules.write("{p}mymod.py", "K = 1\ndef g(x):\n    return x * K\n")
    monkeypatch.setattr(sys.modules[__name__], "usermod", user_modules.load("{p}mymod"))
    digests = {stable_digest(calls_usermod) for _ in range(3)}
    assert len(digests) == 1 and reads == [os.path.realpath(path)]


def test_an_edited_user_module_is_not_served_from_the_task_cache(tmp_path, ids_file):
    """Two runs of a script whose map calls ``mymod.g`` (the user's module next to it) through
    attribute access; only ``mymod.py`` changes between them, then nothing does."""
    mods, calls = tmp_path / "mods", tmp_path / "calls.txt"
    mods.mkdir()
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
            import smallpond
            import mymod

            sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1, task_cache={str(tmp_path / "cache")!r})
            try:
                df = sp.read_parquet({ids_file!r})
                print(df.map(lambda r: {{"y": mymod.g(r["id"])}}).to_pandas().y.sum())
            finally:
                sp.shutdown()
        """)
    )

    def run(k: int) -> int:
        (mods / "mymod.py").write_text(f"K = {k}\ndef g(x):\n    open({str(calls)!r}, 'a').write('.')\n    return x * K\n")
        return _last_number(script, REPO, str(mods))

    _recomputed_after_the_edit_then_reused(run, "mymod.py", calls)


def test_numpy_half_imported_by_another_thread_changes_no_fingerprint():
    """``smallpond.init`` imports pandas (so numpy) in a background thread while the script plans:
    a plain object met meanwhile made the walk read ``numpy.ndarray`` of the half-initialized
    module (AttributeError), so its node was not reused and its output never entered the cache."""
    values = {"instance": Scaler(), "reader": reads_scaler_f, "namedtuple": Point(1, 2)}
    expected = {k: stable_digest(v) for k, v in values.items()}
    with half_imported.being_imported("numpy") as numpy:
        assert not hasattr(numpy, "ndarray")
        assert {k: stable_digest(v) for k, v in values.items()} == expected


# -- the user's own classes: their class-level attributes, bases and instances -----------------------


class ScalerBase:
    OFFSET = 0
    TABLE = {"a": [1, 2]}

    def shift(self, v):
        return v + self.OFFSET


class Scaler(ScalerBase):
    F = 2

    def __init__(self, factor=1):
        self.factor = factor

    def __call__(self, row):
        return {"y": self.shift(row["x"] * self.F * self.factor)}


class Sibling(ScalerBase):  # inherits everything, overrides nothing
    pass


def reads_scaler_f(x):
    return x * Scaler.F


def test_a_class_attribute_is_part_of_the_class_its_instances_methods_and_readers(monkeypatch):
    """``F = 2`` edited to ``F = 3`` in the script: every way the class reaches a task sees it."""
    users = {"class": Scaler, "instance": Scaler(), "method": Scaler().__call__, "reader": reads_scaler_f}
    before = {k: stable_digest(v) for k, v in users.items()}
    assert {k: stable_digest(v) for k, v in users.items()} == before  # unchanged: the same

    monkeypatch.setattr(Scaler, "F", 3)
    after = {k: stable_digest(v) for k, v in users.items()}
    assert all(after[k] != before[k] for k in users), after
    monkeypatch.undo()
    assert {k: stable_digest(v) for k, v in users.items()} == before

    monkeypatch.setitem(ScalerBase.TABLE, "a", [1, 3])  # a value nested in a class-level container
    assert stable_digest(Scaler()) != before["instance"]


def test_what_a_class_inherits_from_a_user_base_class_is_part_of_it(monkeypatch):
    before, sibling = stable_digest(Scaler()), stable_digest(Sibling)
    monkeypatch.setattr(ScalerBase, "OFFSET", 1)  # an inherited attribute
    assert stable_digest(Scaler()) != before and stable_digest(Sibling) != sibling
    monkeypatch.undo()

    monkeypatch.setattr(ScalerBase, "shift", lambda self, v: v - self.OFFSET)  # an inherited method
    assert stable_digest(Scaler()) != before
    monkeypatch.undo()

    monkeypatch.setattr(Scaler, "OFFSET", 0, raising=False)  # the same value, now overridden by the subclass
    assert stable_digest(Scaler()) != before
    monkeypatch.setattr(Scaler, "shift", lambda self, v: v, raising=False)  # a method overridden
    overridden = stable_digest(Scaler())
    monkeypatch.undo()
    assert overridden != before and stable_digest(Scaler()) == before


def test_the_state_of_an_instance_passed_as_a_callable_is_part_of_it():
    assert stable_digest(Scaler(factor=3)) == stable_digest(Scaler(factor=3))
    assert stable_digest(Scaler(factor=3)) != stable_digest(Scaler(factor=2))
    assert stable_digest(Scaler(factor=3).__call__) != stable_digest(Scaler(factor=2).__call__)


def test_a_class_imported_from_a_user_module_by_name_is_fingerprinted_with_its_attributes(user_modules):
    """``from mymod import Scaler``: the class itself reaches the task, not the module."""
    job, first = _job_across_an_edit(
        user_modules,
        "from {p}mymod import Scaler\nscale = Scaler()\n",
        "scale",
        "class Scaler:\n    F = 2\n    def __call__(self, x):\n        return x * self.F\n",
        "class Scaler:\n    F = 3\n    def __call__(self, x):\n        return x * self.F\n",
    )
    assert job.scale(1) == 3
    assert stable_digest(job.scale) != first


class Point(NamedTuple):
    x: int
    y: int = 0


class Perm(enum.IntFlag):
    R = 1
    W = 2


class Shape(enum.Enum):
    SQUARE = "square"
    ROUND = "round"


class Sized(Protocol):
    def size(self) -> int: ...


@runtime_checkable
class Named(Protocol):
    name: str


class AbstractJob(abc.ABC):
    @abc.abstractmethod
    def run(self): ...


class Job(AbstractJob):
    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def run(self):
        return self.n


@dataclasses.dataclass
class Cfg:
    k: int = 2
    tags: list = dataclasses.field(default_factory=list, metadata={"doc": "tags"})


def test_what_python_caches_on_a_class_as_it_is_used_does_not_change_its_fingerprint():
    """The ABC registry cache, copyreg's ``__slotnames__``, an empty ``__annotations__`` read, a Flag's
    combinations: stored on the class as it is used, not by the user; and these kinds never crash."""
    kinds = [Point, Point(1), Perm, Perm.R, Shape, Shape.ROUND, Sized, Named, AbstractJob, Job, Job(1), Cfg, Cfg()]
    before = [stable_digest(k) for k in kinds]
    assert isinstance(Job(1), AbstractJob) and not isinstance(1, AbstractJob) and not isinstance(1, Named)
    pickle.dumps([Job(1), Cfg(), Point(1), Scaler()])
    copy.copy(Job(2)), copy.deepcopy(Cfg())
    _ = Sized.__annotations__, Job.__annotations__, (Perm.R | Perm.W), Perm(3), ~Perm.R
    assert [stable_digest(k) for k in kinds] == before


CLASSES_SCRIPT = """
    import dataclasses, enum, json, os, pickle, typing
    from smallpond.execution.fingerprint import stable_digest

    V = json.loads(os.environ.get("FP_VALUES", "{}"))

    class Base:
        OFFSET = V.get("offset", 0)
        NAMES = {"a", "b", "c"}

    class Scaler(Base):
        F = V.get("f", 2)
        def __call__(self, row):
            return {"y": row["x"] * self.F + self.OFFSET}

    @dataclasses.dataclass
    class Cfg:
        k: int = V.get("k", 2)
        tags: list = dataclasses.field(default_factory=list)
        def __call__(self, row):
            return {"y": row["x"] * self.k}

    @dataclasses.dataclass(frozen=True, slots=True)
    class Frozen:
        k: int = 1

    class Shape(enum.Enum):
        SQUARE = 1
        ROUND = 2

    class Point(typing.NamedTuple):
        x: int
        y: int = 0

    class Sized(typing.Protocol):
        def size(self) -> int: ...

    objs = {
        "class": Scaler, "instance": Scaler(), "dataclass": Cfg(), "dataclass-class": Cfg, "dataclass-k5": Cfg(k=5),
        "frozen": Frozen(), "enum": Shape, "member": Shape.ROUND, "namedtuple": Point(1), "protocol": Sized,
    }
    try:
        import pydantic
    except ImportError:
        pass
    else:
        class Model(pydantic.BaseModel):
            x: int = 1
            F: typing.ClassVar[int] = V.get("f", 2)
        objs.update({"pydantic": Model, "pydantic-instance": Model(x=2)})
    try:
        import attrs
    except ImportError:
        pass
    else:
        @attrs.frozen
        class Frozen2:  # attrs' __hash__ holds a per-process constant
            k: int = 1
        objs.update({"attrs-frozen": Frozen2, "attrs-instance": Frozen2()})
    pickle.dumps(list(objs.values()))  # used before it is planned
    print(json.dumps({k: stable_digest(v) for k, v in objs.items()}))
"""


def test_user_classes_have_the_same_fingerprint_in_two_processes_and_see_edits(tmp_path):
    script = tmp_path / "classes.py"
    script.write_text(textwrap.dedent(CLASSES_SCRIPT))

    def digests(hash_seed, **values):
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED=str(hash_seed), FP_VALUES=json.dumps(values)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = digests(1)
    assert digests(2) == first  # another process, another hash seed: the same
    assert first["dataclass"] != first["dataclass-k5"]  # a field's value

    def changed(**values):
        return {k for k, v in digests(3, **values).items() if first[k] != v}

    pydantic_too = {"pydantic", "pydantic-instance"} & set(first)
    assert changed(f=3) == {"class", "instance"} | pydantic_too  # a class attribute
    assert changed(offset=1) == {"class", "instance"}  # inherited from a user base class
    assert changed(k=3) == {"dataclass", "dataclass-class", "dataclass-k5"}  # a field's default


def test_an_edited_class_attribute_is_not_served_from_the_task_cache(tmp_path, ids_file):
    """Two runs of a script whose map calls an instance of a class defined in it; only a class
    attribute changes between them, then nothing does."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "job.py"

    def run(factor: int) -> int:
        script.write_text(
            textwrap.dedent(f"""
                import smallpond

                class Scaler:
                    F = {factor}

                    def __call__(self, row):
                        open({str(calls)!r}, "a").write(".")
                        return {{"y": row["id"] * self.F}}

                sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1, task_cache={str(tmp_path / "cache")!r})
                try:
                    df = sp.read_parquet({ids_file!r})
                    print(df.map(Scaler()).to_pandas().y.sum())
                finally:
                    sp.shutdown()
            """)
        )
        return _last_number(script, REPO)

    assert run(2) == 90
    assert run(3) == 135, "the first run's output was reused though Scaler.F changed"
    made = calls.read_text()
    assert run(3) == 135
    assert calls.read_text() == made, "an unchanged class should be reused from the cache"


def _recomputed_after_the_edit_then_reused(run, edited: str, calls) -> None:
    """``run(k)`` writes the user's code with the factor ``k`` and runs a script summing ``id * k``
    over ids 0..9: 45 with 1; 900 once ``edited`` says 20 (computed again, not served the first
    output); 900 again unchanged, from the task cache (``calls``, which the function appends to
    each time it runs, does not grow)."""
    assert run(1) == 45
    assert run(20) == 900, f"the first run's output was reused though {edited} changed"
    made = calls.read_text()
    assert run(20) == 900
    assert calls.read_text() == made, "an unchanged module should be reused from the cache"


def _last_number(script, *pythonpath: str) -> int:
    """Run ``script`` in a fresh interpreter; the number on its last line of output."""
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), SP_PROGRESS="0"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def _job_across_an_edit(user_modules, job_source: str, name: str, before: str, after: str):
    """A job module importing from ``mymod``: the digest of its ``name`` with ``mymod.py`` as
    ``before`` (checked stable when the job is imported again), then the job as a new run imports
    it after ``mymod.py`` became ``after``. Returns (that job, the first digest)."""
    user_modules.write("{p}mymod.py", before)
    user_modules.write("{p}job.py", job_source)
    first = stable_digest(getattr(user_modules.load("{p}job"), name))
    assert stable_digest(getattr(user_modules.load("{p}job"), name)) == first
    user_modules.write("{p}mymod.py", after)
    user_modules.reload("{p}mymod")
    return user_modules.reload("{p}job"), first  # a new run imports both again


def test_a_function_a_worker_imports_from_its_module_is_keyed_by_the_modules_file(user_modules):
    """``df.map(mymod.f)``: pickle saves ``f`` by reference, so a worker runs ``mymod``'s file as
    it is: its file is part of ``f``'s code (an edit of ``h`` beside it too, reloaded); a function
    saved by value (a lambda, a nested function, the script's own) is keyed by itself alone."""
    user_modules.write("{p}mymod.py", "def f(x):\n    return x + 1\nclass C:\n    pass\ndef h():\n    return 1\n")
    mod = user_modules.load("{p}mymod")
    assert home_module(mod.f) is mod and home_module(mod.C) is mod
    first, first_class = stable_digest(mod.f), stable_digest(mod.C)
    user_modules.write("{p}mymod.py", "def f(x):\n    return x + 1\nclass C:\n    pass\ndef h():\n    return 2\n")
    mod = user_modules.reload("{p}mymod")
    assert stable_digest(mod.f) != first
    assert stable_digest(mod.C) != first_class
    assert home_module(lambda x: x) is None
    assert home_module(math.sqrt) is None  # a library's
    nested = mod.f
    assert home_module(type("C", (), {"__module__": "__main__", "__qualname__": "C"})) is None
    mod.f = lambda x: x  # the name now reaches another object: the old one is saved by value
    assert home_module(nested) is None
