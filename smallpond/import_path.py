"""The import path a worker interpreter is started with (``PYTHONPATH``): the driver's ``sys.path``,
so the user's modules resolve in workers as in the driver, without shadowing what the driver did
not.

``PYTHONPATH`` entries come before the standard library in a new interpreter, while a script's own
folder enters the driver's ``sys.path`` only once the interpreter has started. A script folder
holding ``types.py``, ``enum.py`` or ``functools.py`` (a script named so) is harmless to the driver,
which had imported those modules from the standard library already, but a worker given that folder
first imports the script in their place while it starts, and dies (exit code 1) before it runs a
task: every task failed with ``WorkerLost`` on every retry. So a folder that holds a module the
driver has loaded from elsewhere goes after the standard library's folders, where the worker finds
what the driver found; every other entry keeps its place.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Dict, Iterable, List, Optional


def _dirs(*kinds: str, base: bool = False) -> set:
    v = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix} if base else None
    paths = sysconfig.get_paths(vars=v)
    return {os.path.normcase(os.path.abspath(paths[k])) for k in kinds if paths.get(k)}


def _stdlib_dirs() -> tuple:
    """The standard library's folders, and site-packages' (which may lie inside them): this
    environment's and, for a venv that sees them, the base interpreter's."""
    return _dirs("stdlib", "platstdlib"), _dirs("purelib", "platlib") | _dirs("purelib", "platlib", base=True)


def _within(e: str, dirs: set) -> bool:
    return e in dirs or any(e.startswith(d + os.sep) for d in dirs)


def _is_stdlib(entry: str, dirs: tuple) -> bool:
    # site-packages often lies in the standard library's folder (pyenv, python.org and Docker
    # builds: lib/python3.11/site-packages): it is not the standard library, and a folder moved
    # after it would lose to an installed module of a name it holds
    stdlib, sites = dirs
    e = os.path.normcase(os.path.abspath(entry))
    return (
        _within(e, stdlib)
        and not _within(e, sites)
        or e.endswith(".zip")
        and os.path.dirname(e) in {os.path.dirname(s) for s in stdlib}
    )


def _top_level(entry: str) -> List[str]:
    """The top-level module names ``entry`` holds: a folder's ``x.py`` and ``x/__init__.py``, or
    a zip archive's (a ``PYTHONPATH`` entry may be one: zipimport reads it before the standard
    library too)."""
    if os.path.isfile(entry):
        import zipfile

        try:
            with zipfile.ZipFile(entry) as z:
                files = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return []
        return [f[:-3] for f in files if "/" not in f and f.endswith(".py")] + [
            f[: -len("/__init__.py")] for f in files if f.count("/") == 1 and f.endswith("/__init__.py")
        ]
    try:
        names = os.listdir(entry)
    except OSError:
        return []
    return [n[:-3] for n in names if n.endswith(".py")] + [
        n for n in names if "." not in n and os.path.isfile(os.path.join(entry, n, "__init__.py"))
    ]


def _shadowed(entry: str, modules: Dict[str, object]) -> List[str]:
    """The files of the top-level modules ``entry`` holds that the driver has loaded from elsewhere."""
    here = os.path.abspath(entry) + os.sep
    found = []
    for mod in _top_level(entry):
        where = getattr(modules.get(mod), "__file__", None)
        if where and not os.path.abspath(where).startswith(here):
            found.append(where)
    return found


def _found_in(where: str, entries: List[str]) -> Optional[int]:
    """The index of the entry (absolute) ``where`` was found in: the longest that holds it."""
    w = os.path.normcase(os.path.abspath(where))
    held = [j for j, e in enumerate(entries) if w.startswith(e + os.sep)]
    return max(held, key=lambda j: len(entries[j]), default=None)


def worker_import_path(path: Optional[Iterable[str]] = None, modules: Optional[Dict[str, object]] = None) -> str:
    """``PYTHONPATH`` for a worker: ``path`` (default ``sys.path``) in order, but for the entries
    before the standard library that would shadow a module of ``modules`` (default
    ``sys.modules``) loaded from elsewhere: each follows the standard library's folders, or the
    later entry the driver found such a module in (site-packages, for a module a ``.pth`` file
    imports as the interpreter starts)."""
    entries: List[str] = [p for p in (sys.path if path is None else path) if p]
    modules = sys.modules if modules is None else modules
    stdlib = _stdlib_dirs()
    last_std = max((i for i, p in enumerate(entries) if _is_stdlib(p, stdlib)), default=None)
    if last_std is None:
        return os.pathsep.join(entries)
    absolute = [os.path.normcase(os.path.abspath(p)) for p in entries]
    after: Dict[int, int] = {}  # a moved entry's index -> the index it goes after
    for i, p in enumerate(entries[:last_std]):
        found = [] if _is_stdlib(p, stdlib) else _shadowed(p, modules)
        if found:
            after[i] = max([last_std] + [j for j in (_found_in(w, absolute) for w in found) if j is not None and j > i])
    out: List[str] = []
    for i, p in enumerate(entries):
        if i not in after:
            out.append(p)
        out.extend(entries[k] for k in sorted(after) if after[k] == i)
    return os.pathsep.join(out)
