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


def _stdlib_dirs() -> set:
    paths = sysconfig.get_paths()
    return {os.path.normcase(os.path.abspath(paths[k])) for k in ("stdlib", "platstdlib") if paths.get(k)}


def _is_stdlib(entry: str, stdlib: set) -> bool:
    e = os.path.normcase(os.path.abspath(entry))
    return (
        e in stdlib
        or any(e.startswith(s + os.sep) for s in stdlib)
        or e.endswith(".zip")
        and os.path.dirname(e) in {os.path.dirname(s) for s in stdlib}
    )


def _shadows(entry: str, modules: Dict[str, object]) -> bool:
    """Whether ``entry`` holds a top-level module the driver has loaded from another place."""
    try:
        names = os.listdir(entry)
    except OSError:
        return False
    for name in names:
        if name.endswith(".py"):
            mod = name[:-3]
        elif "." not in name and os.path.isfile(os.path.join(entry, name, "__init__.py")):
            mod = name
        else:
            continue
        loaded = modules.get(mod)
        where = getattr(loaded, "__file__", None)
        if where and not os.path.abspath(where).startswith(os.path.abspath(entry) + os.sep):
            return True
    return False


def worker_import_path(path: Optional[Iterable[str]] = None, modules: Optional[Dict[str, object]] = None) -> str:
    """``PYTHONPATH`` for a worker: ``path`` (default ``sys.path``) in order, but for the entries
    before the standard library that would shadow a module of ``modules`` (default
    ``sys.modules``) loaded from elsewhere: those follow the standard library's folders."""
    entries: List[str] = [p for p in (sys.path if path is None else path) if p]
    modules = sys.modules if modules is None else modules
    stdlib = _stdlib_dirs()
    last_std = max((i for i, p in enumerate(entries) if _is_stdlib(p, stdlib)), default=None)
    if last_std is None:
        return os.pathsep.join(entries)
    moved = [p for p in entries[:last_std] if not _is_stdlib(p, stdlib) and _shadows(p, modules)]
    if not moved:
        return os.pathsep.join(entries)
    kept = [p for p in entries if p not in moved]
    at = kept.index(entries[last_std]) + 1
    return os.pathsep.join(kept[:at] + moved + kept[at:])
