"""Fingerprints of user code a function reaches other than through the values of its globals:
the user modules it imports in its body (``import helpers`` inside a UDF, a lazy import that keeps
workers light), digested by the file the import loads whether this process imported the module
or not (without importing it), and a helper wrapped by ``functools.lru_cache``, which pickles by
name."""

from __future__ import annotations

import os
import sys
import textwrap

from smallpond.execution.fingerprint import stable_digest
from tests.execution import test_fingerprint
from tests.execution.test_fingerprint import REPO, _job_across_an_edit, _last_number

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

    assert run(1) == 45
    assert run(20) == 900, "the first run's output was reused though helpers.py changed"
    made = calls.read_text()
    assert run(20) == 900
    assert calls.read_text() == made, "an unchanged module should be reused from the cache"
    assert os.path.getsize(calls) == 20  # 10 rows, computed twice
