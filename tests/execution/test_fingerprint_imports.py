"""Fingerprints of user code a function reaches other than through the values of its globals:
the user modules it imports in its body (``import helpers`` inside a UDF, a lazy import that keeps
workers light), digested by the file the import loads whether this process imported the module
or not (without importing it), and a helper wrapped by ``functools.lru_cache``, which pickles by
name."""

from __future__ import annotations

import os
import sys
import textwrap

from smallpond.execution import fingerprint_sources
from smallpond.execution.fingerprint import stable_digest
from smallpond.execution.planner import Planner
from smallpond.logical.dataset import ParquetDataSet
from smallpond.logical.node import ArrowComputeNode, Context, DataSourceNode, LogicalPlan
from tests.execution import test_fingerprint
from tests.execution.test_fingerprint import REPO, _job_across_an_edit, _last_number, _recomputed_after_the_edit_then_reused

# the fixtures of test_fingerprint: Parquet ids 0-9, and user modules written on sys.path
ids_file, user_modules = test_fingerprint.ids_file, test_fingerprint.user_modules


def test_a_user_module_imported_in_a_function_body_is_part_of_it(user_modules):
    user_modules.write("{p}lazy.py", "K = 1\n")
    job = _job(user_modules, "def f(x):\n    import {p}lazy\n    return x * {p}lazy.K\n")
    first = stable_digest(job.f)
    assert stable_digest(job.f) == first
    assert user_modules.prefix + "lazy" not in sys.modules, "fingerprinting must not import the module"

    user_modules.write("{p}lazy.py", "K = 20\n")
    assert stable_digest(job.f) != first, "an edit of the module the function imports was not seen"
    user_modules.write("{p}lazy.py", "K = 1\n")  # back: by content, not time
    assert stable_digest(job.f) == first
    assert job.f(3) == 3  # (now imported, as a worker would: the same fingerprint)
    assert stable_digest(job.f) == first


def test_modules_a_user_module_imports_lazily_are_part_of_it(user_modules):
    """``pkg/sub.py``'s function imports ``pkg/config.py`` (relatively) and ``{p}other`` when it
    runs, which has not happened in this process: both files still count."""
    user_modules.write("{p}pkg/__init__.py", "")
    user_modules.write(
        "{p}pkg/sub.py",
        "def g(x):\n    from .config import K\n    from {p}other import J\n    return x * K + J\n",
    )
    user_modules.write("{p}pkg/config.py", "K = 1\n")
    user_modules.write("{p}other.py", "J = 0\n")
    job = _job(user_modules, "import {p}pkg.sub\ndef f(x):\n    return {p}pkg.sub.g(x)\n")
    first = stable_digest(job.f)
    user_modules.write("{p}pkg/config.py", "K = 20\n")
    second = stable_digest(job.f)
    assert second != first, "an edit of a module imported inside a user module's function was not seen"
    user_modules.write("{p}other.py", "J = 5\n")
    assert stable_digest(job.f) not in (first, second)
    assert job.f(1) == 25


def test_library_and_missing_modules_imported_in_a_body_change_nothing(user_modules):
    job = _job(
        user_modules,
        "def f(x):\n    import json, email.mime.text\n    try:\n        import {p}absent\n"
        "    except ImportError:\n        pass\n    return x\n",
    )
    first = stable_digest(job.f)
    user_modules.write("{p}unrelated.py", "K = 1\n")
    assert stable_digest(job.f) == first


def test_a_helper_wrapped_by_lru_cache_is_fingerprinted_by_its_code(user_modules):
    """``functools.lru_cache`` (and ``functools.cache``) wrappers pickle by name, so a worker runs
    what the user module's file defines now."""
    job, first = _job_across_an_edit(
        user_modules,
        "from {p}mymod import g\ndef f(x):\n    return g(x)\n",
        "f",
        "import functools\n@functools.lru_cache(maxsize=None)\ndef g(x):\n    return x * 1\n",
        "import functools\n@functools.lru_cache(maxsize=None)\ndef g(x):\n    return x * 20\n",
    )
    assert job.f(1) == 20
    assert stable_digest(job.f) != first, "an edit of the wrapped helper was not seen"
    assert stable_digest(job.f) == stable_digest(job.f)


def _job(user_modules, source: str):
    user_modules.write("{p}job.py", source)
    return user_modules.load("{p}job")


def test_an_edited_module_a_udf_imports_in_its_body_is_not_served_from_the_task_cache(tmp_path, ids_file):
    """Two runs of a script whose map imports ``helpers`` (next to it) in the function's body;
    only ``helpers.py`` changes between them, then nothing does."""
    mods, calls = tmp_path / "mods", tmp_path / "calls.txt"
    mods.mkdir()
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
            import smallpond

            def scaled(r):
                import helpers
                open({str(calls)!r}, "a").write(".")
                return {{"y": r["id"] * helpers.K}}

            sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1, task_cache={str(tmp_path / "cache")!r})
            try:
                print(sp.read_parquet({ids_file!r}).map(scaled).to_pandas().y.sum())
            finally:
                sp.shutdown()
        """)
    )

    def run(k: int) -> int:
        (mods / "helpers.py").write_text(f"K = {k}\n")
        return _last_number(script, REPO, str(mods))

    _recomputed_after_the_edit_then_reused(run, "helpers.py", calls)
    assert os.path.getsize(calls) == 20  # 10 rows, computed twice


# -- objects pickled by name, datasets reached as values, where body imports are looked up ---------

_BY_NAME = """
class Scaler:
    def __init__(self, k):
        self.k = k
    def __call__(self, x):
        {calls}return x * self.k
    def __reduce__(self):  # pickled by name: a worker looks ``scale`` up in this module
        return "scale"
scale = Scaler({k})
"""


def test_an_object_pickled_by_name_is_keyed_by_its_user_modules_file(user_modules):
    """``scale = Scaler(1)`` edited to ``Scaler(20)`` in ``mymod``: pickle sends the name
    ``mymod.scale``, so the file that binds it is what a worker runs."""
    job, first = _job_across_an_edit(
        user_modules,
        "from {p}mymod import scale\ndef f(x):\n    return scale(x)\n",
        "f",
        _BY_NAME.format(calls="", k=1),
        _BY_NAME.format(calls="", k=20),
    )
    assert job.f(1) == 20
    assert stable_digest(job.f) != first, "an edit of the module binding the name was not seen"
    assert stable_digest(job.f) == stable_digest(job.f)


def test_an_object_pickled_by_name_is_not_served_from_the_task_cache(tmp_path, ids_file):
    """Two runs of a script whose map calls ``scale`` from ``mymod`` (next to it), an object that
    pickles by name; only ``mymod.py`` changes between them, then nothing does."""
    mods, calls = tmp_path / "mods", tmp_path / "calls.txt"
    mods.mkdir()
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
            import smallpond
            from mymod import scale

            sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1, task_cache={str(tmp_path / "cache")!r})
            try:
                print(sp.read_parquet({ids_file!r}).map(lambda r: {{"y": scale(r["id"])}}).to_pandas().y.sum())
            finally:
                sp.shutdown()
        """)
    )

    def run(k: int) -> int:
        (mods / "mymod.py").write_text(_BY_NAME.format(calls=f"open({str(calls)!r}, 'a').write('.')\n        ", k=k))
        return _last_number(script, REPO, str(mods))

    _recomputed_after_the_edit_then_reused(run, "mymod.py", calls)


def _builder_of(k: int):
    def build(conn, fs) -> str:
        return f"select {k} as k"

    return build


def test_a_query_builder_reached_as_a_value_is_part_of_the_fingerprint():
    """A ``SqlQueryDataSet`` in a closure or a node's parameter (not a source's dataset): the
    query that runs is its builder's, whatever the ``sql_query`` text says."""
    from smallpond.logical.dataset import SqlQueryDataSet
    from smallpond.logical.node import Context, PythonScriptNode

    def reader(lookup):
        return lambda: lookup.to_arrow_table()

    one, twenty = (SqlQueryDataSet("the factor", query_builder=_builder_of(k)) for k in (1, 20))
    assert stable_digest(reader(one)) == stable_digest(reader(SqlQueryDataSet("the factor", query_builder=_builder_of(1))))
    assert stable_digest(reader(one)) != stable_digest(reader(twenty)), "a closure's query builder was not seen"

    def node(lookup):
        n = PythonScriptNode(Context(), ())
        n.lookup = lookup  # a parameter of a user's node (every attribute is one)
        return n

    assert stable_digest(node(one)) != stable_digest(node(twenty)), "a node parameter's query builder was not seen"
    plain = SqlQueryDataSet("select 1 as k")
    assert stable_digest(plain) != stable_digest(one)  # a dataset without a builder: by its query alone


def test_a_query_builder_in_a_closure_is_not_served_from_the_task_cache(tmp_path, ids_file):
    """Two runs of a script whose map reads a ``SqlQueryDataSet`` it closes over; only the
    builder's query changes between them (its ``sql_query`` text stays)."""
    script = tmp_path / "job.py"

    def run(k: int) -> int:
        script.write_text(
            textwrap.dedent(f"""
                import smallpond
                from smallpond.logical.dataset import SqlQueryDataSet

                def build(conn, fs):
                    return "select {k} as k"

                lookup = SqlQueryDataSet("the factor", query_builder=build)
                sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=1, task_cache={str(tmp_path / "cache")!r})
                try:
                    df = sp.read_parquet({ids_file!r})
                    print(df.map(lambda r: {{"y": r["id"] * lookup.to_arrow_table().column("k")[0].as_py()}}).to_pandas().y.sum())
                finally:
                    sp.shutdown()
            """)
        )
        return _last_number(script, REPO)

    assert run(1) == 45
    assert run(20) == 900, "the first run's output was reused though the query builder changed"


def test_a_planning_looks_each_module_imported_in_a_body_up_once_and_the_next_anew(user_modules, ids_file, make_rt, monkeypatch):
    """Twelve nodes whose function imports ``{p}lazy`` (not imported here) in its body: one
    lookup of the name per planning, not one per node. A later planning in the same session looks
    again: ``{p}later``, missing when the first node was planned, is found and digested after it
    is created (a planner-lifetime cache would key it as missing for the rest of the session)."""
    searched = []
    real = fingerprint_sources._search_spec
    monkeypatch.setattr(fingerprint_sources, "_search_spec", lambda name, search: searched.append(name) or real(name, search))
    user_modules.write("{p}lazy.py", "K = 1\n")
    job = _job(
        user_modules,
        "def f(t):\n    import {p}lazy\n    return t\n"
        "def g(t):\n    try:\n        import {p}later\n    except ImportError:\n        pass\n    return t\n",
    )
    ctx = Context()
    node = DataSourceNode(ctx, ParquetDataSet([ids_file]))
    for _ in range(12):
        node = ArrowComputeNode(ctx, (node,), process_func=job.f)
    planner = Planner(make_rt())
    planner.create_exec_plan(LogicalPlan(ctx, node))
    assert searched.count(user_modules.prefix + "lazy") == 1, searched

    def planned_with_later() -> str:
        later = ArrowComputeNode(ctx, (node,), process_func=job.g)
        return planner.plan(later)[0].fingerprint

    missing = planned_with_later()
    user_modules.write("{p}later.py", "K = 1\n")
    one = planned_with_later()
    user_modules.write("{p}later.py", "K = 20\n")
    assert len({missing, one, planned_with_later()}) == 3, "a module created after an earlier planning was not digested"


class _RecordingFinder:
    """A meta-path finder that runs code when asked (as setuptools' distutils shim imports
    setuptools): fingerprinting must not ask it."""

    def __init__(self) -> None:
        self.asked: list = []

    def find_spec(self, name, path=None, target=None):
        self.asked.append(name)
        return None


def test_finding_a_module_imported_in_a_body_asks_only_finders_that_look_files_up(user_modules, tmp_path, monkeypatch):
    """Other meta-path finders are not asked; setuptools' editable-install finder (a module
    ``__editable___*_finder`` mapping a package of the user's project outside ``sys.path``) is, so
    an editable install's package imported in a body is still digested."""
    project = tmp_path / "project"
    pkg = project / (user_modules.prefix + "edpkg")
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("K = 1\n")
    finder_module = f"__editable___{user_modules.prefix}finder"
    user_modules.write(
        finder_module + ".py",
        f"""
        from importlib.util import spec_from_file_location

        MAPPING = {{{pkg.name!r}: {str(pkg)!r}}}

        class _EditableFinder:
            @classmethod
            def find_spec(cls, fullname, path=None, target=None):
                if fullname in MAPPING:
                    return spec_from_file_location(fullname, MAPPING[fullname] + "/__init__.py")
                return None
        """,
    )
    job = _job(user_modules, "def f(x):\n    import {p}edpkg, {p}absent\n    return x\n")
    recording = _RecordingFinder()
    monkeypatch.setattr(sys, "meta_path", [recording, *sys.meta_path, user_modules.load(finder_module)._EditableFinder])
    recording.asked.clear()  # (the import of the finder's own module above)
    first = stable_digest(job.f)
    assert recording.asked == [], f"a finder that may run code was asked for {recording.asked}"
    (pkg / "__init__.py").write_text("K = 20\n")
    os.utime(pkg / "__init__.py", ns=(1, 1))  # (a new version whatever the clock's resolution)
    assert stable_digest(job.f) != first, "an edit of an editable install's package was not seen"
