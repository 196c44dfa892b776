"""smallpond.import_path: workers get the driver's import path without a script folder shadowing
the standard library modules an interpreter imports while it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from smallpond.import_path import worker_import_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(pythonpath: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    code = "import json, mymod_sp; print(mymod_sp.X)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_folder_holding_types_py_goes_after_the_standard_library(tmp_path):
    # a script named types.py: the driver had imported the standard library's types before its
    # folder joined sys.path, a worker given that folder first imported the script instead and died
    (tmp_path / "types.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "mymod_sp.py").write_text("X = 42\n")
    path = [str(tmp_path), *sys.path]
    assert _start(os.pathsep.join(p for p in path if p)).returncode != 0  # what workers were given
    got = worker_import_path(path)
    started = _start(got)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "42"  # the folder's own modules still resolve
    entries = got.split(os.pathsep)
    assert entries.index(str(tmp_path)) > entries.index(os.path.dirname(os.__file__))
    # the other entries are as the driver's own path gives them (this process's sys.path may hold
    # entries that shadow something already, as Ray's thirdparty_files once a test imported ray)
    assert [p for p in entries if p != str(tmp_path)] == worker_import_path(sys.path).split(os.pathsep)


def test_a_folder_shadowing_nothing_keeps_its_place(tmp_path):
    (tmp_path / "mymod_sp.py").write_text("X = 7\n")
    path = [str(tmp_path), *sys.path]
    # in front of what this process's own path gives (see above: that alone may move an entry)
    assert worker_import_path(path) == os.pathsep.join([str(tmp_path), worker_import_path(sys.path)])


def test_a_script_named_types_py_runs_its_python_tasks(tmp_path):
    # end to end: the embedded workers that run user Python are fresh interpreters
    script = tmp_path / "types.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import smallpond
            sp = smallpond.init(data_root={str(tmp_path / "root")!r}, num_executors=2, task_cache="off")
            print("RESULT", sp.from_items([1, 2]).map(lambda r: {{"x": r["item"] * 2}}).to_pandas().x.tolist())
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=ROOT, SP_PROGRESS="0", SP_SUMMARY="0")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "RESULT [2, 4]" in done.stdout, done.stderr[-3000:]


def _fake_install(tmp_path, monkeypatch):
    """An interpreter whose site-packages is inside its standard library's folder (pyenv,
    python.org and Docker builds), as sysconfig tells it, and a script folder holding types.py."""
    import sysconfig

    std = tmp_path / "lib" / "python3"
    site = std / "site-packages"
    script = tmp_path / "script"
    for d in (std, site, script):
        d.mkdir(parents=True, exist_ok=True)
    (script / "types.py").write_text("")
    paths = {"stdlib": str(std), "platstdlib": str(std), "purelib": str(site), "platlib": str(site)}
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: dict(paths))
    return std, site, script


def test_a_moved_folder_stays_before_site_packages_in_the_standard_librarys_folder(tmp_path, monkeypatch):
    # pyenv, python.org and Docker builds keep site-packages inside lib/python3.X: it was taken for
    # the standard library, and the folder went after it, where an installed module of a name the
    # folder holds (the driver's own, from the folder) won in the workers

    std, site, script = _fake_install(tmp_path, monkeypatch)
    got = worker_import_path([str(script), str(std), str(site)], {"types": sys.modules["types"]})
    assert got.split(os.pathsep) == [str(std), str(script), str(site)]


def test_a_folder_shadowing_a_module_site_packages_gave_the_driver_goes_after_site_packages(tmp_path, monkeypatch):
    # a .pth file imports modules from site-packages as the interpreter starts (an editable
    # install's finder, _distutils_hack): a folder holding one of their names goes after it too
    import types

    std, site, script = _fake_install(tmp_path, monkeypatch)
    (script / "_startup_hook.py").write_text("")
    hook = types.ModuleType("_startup_hook")
    hook.__file__ = str(site / "_startup_hook.py")
    loaded = {"types": sys.modules["types"], "_startup_hook": hook}
    got = worker_import_path([str(script), str(std), str(site), "/elsewhere"], loaded)
    assert got.split(os.pathsep) == [str(std), str(site), str(script), "/elsewhere"]


def test_a_zip_archive_holding_types_py_goes_after_the_standard_library(tmp_path):
    # a PYTHONPATH entry may be a zip archive (zipimport): holding types.py it killed workers too
    import zipfile

    archive = tmp_path / "app.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("types.py", "raise SystemExit(3)\n")
        z.writestr("mymod_sp.py", "X = 5\n")
    path = [str(archive), *sys.path]
    assert _start(os.pathsep.join(p for p in path if p)).returncode != 0
    started = _start(worker_import_path(path))
    assert started.returncode == 0 and started.stdout.strip() == "5", started.stderr


def test_in_a_venv_that_sees_the_base_site_packages_a_moved_folder_stays_before_both(tmp_path, monkeypatch):
    # python -m venv --system-site-packages: sysconfig names the venv's site-packages; the base
    # interpreter's, inside its lib/python3.X, was taken for the standard library
    import sysconfig

    std = tmp_path / "base" / "lib" / "python3"
    base_site = std / "site-packages"
    venv_site = tmp_path / "venv" / "site-packages"
    script = tmp_path / "script"
    for d in (std, base_site, venv_site, script):
        d.mkdir(parents=True, exist_ok=True)
    (script / "types.py").write_text("")

    def get_paths(*a, vars=None, **k):
        site = base_site if vars else venv_site
        return {"stdlib": str(std), "platstdlib": str(std), "purelib": str(site), "platlib": str(site)}

    monkeypatch.setattr(sysconfig, "get_paths", get_paths)
    got = worker_import_path([str(script), str(std), str(venv_site), str(base_site)], {"types": sys.modules["types"]})
    assert got.split(os.pathsep) == [str(std), str(script), str(venv_site), str(base_site)]
