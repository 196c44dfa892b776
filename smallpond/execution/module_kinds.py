"""Loaded modules by where they come from: the standard library, smallpond's own, installed
libraries (site-packages), those every interpreter here loads at start-up, or the user's.

Two decisions rest on it: whether this process may fork a worker (:mod:`~smallpond.execution.worker_fork`:
nothing but the standard library, smallpond and start-up modules loaded) and whether an idle
worker may be kept for its process's next job (:func:`user_modules` empty, see
:mod:`~smallpond.execution.executors.local_spares`). It imports only the standard library.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Dict, Iterable, Optional, Tuple

#: packages outside the standard library the scheduler's process has loaded before its first
#: worker starts, and a worker loads too; psutil's extension module keeps no state between calls
OWN_PACKAGES = frozenset({"smallpond", "cloudpickle", "psutil"})
MAINS = ("__main__", "__mp_main__")  # the script, and multiprocessing's alias of it


@functools.lru_cache(maxsize=1)
def library_roots() -> Tuple[Tuple[str, ...], Tuple[str, ...], frozenset]:
    """(the standard library's folders and the site-packages folders, as path prefixes; the
    top-level names of the modules the interpreter loads at start-up)."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    std = {paths.get("stdlib"), paths.get("platstdlib")}
    try:
        sites = set(site.getsitepackages())
    except AttributeError:  # a virtualenv's old site.py
        sites = set()
    sites.update({paths.get("purelib"), paths.get("platlib")})
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        sites.add(user)
    sites.discard(None)

    def prefixes(ps: Iterable[Optional[str]]) -> Tuple[str, ...]:  # as given, and resolved
        ps = [p for p in ps if p]
        return tuple({os.path.join(q, "") for p in ps for q in (os.path.abspath(p), os.path.realpath(p))})

    return prefixes(std), prefixes(sites), frozenset(_startup_modules(sites))


_PTH_IMPORT = re.compile(r"\bimport\s+([A-Za-z_]\w*)|__import__\(\s*[\'\"]([A-Za-z_]\w*)")


def _startup_modules(sites: Iterable[str]) -> set:
    """The top-level modules that ``site`` imports at start-up: those named in the ``import``
    lines of the ``.pth`` files (a line that starts with ``import`` is run), and the
    ``sitecustomize``/``usercustomize`` hooks."""
    names = {"sitecustomize", "usercustomize"}
    for folder in sites:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith(".pth"):
                continue
            try:
                with open(os.path.join(folder, entry), encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith(("import ", "import\t")):
                    names.update(a or b for a, b in _PTH_IMPORT.findall(line))
    return names


def kind_of(name: str, module: object, roots) -> Optional[str]:
    """How a loaded module fares in a forked worker: ``main`` (replaced), ``stdlib``, ``own``,
    ``startup`` (loaded at every interpreter's start), or None (it may not be forked)."""
    top = name.partition(".")[0]
    if name in MAINS:
        return "main"
    if top in OWN_PACKAGES:
        return "own"
    std, sites, startup = roots
    path = getattr(module, "__file__", None)
    if path is None:  # built in, frozen, or a namespace package (its modules are checked apiece)
        return "stdlib" if top in sys.stdlib_module_names or not _has_path(module) else None
    in_site = path.startswith(sites)
    if not in_site and top in sys.stdlib_module_names:
        return "stdlib"
    if not in_site:  # a path through a symbolic link, or the user's
        real = os.path.realpath(path)
        in_site = real.startswith(sites)
        if not in_site:
            return "stdlib" if real.startswith(std) else None
    return "startup" if top in startup else None


def user_modules(modules: Optional[Dict[str, object]] = None) -> list:
    """The names of the loaded modules (``sys.modules``, or ``modules``) that are neither of the
    standard library, nor smallpond's, cloudpickle's or psutil's, nor installed in a site-packages
    folder: the user's own (a module a worker imported to load a node's class, say)."""
    roots = library_roots()
    std, sites = roots[0], roots[1]
    out = []
    for name, module in list((sys.modules if modules is None else modules).items()):
        kind = kind_of(name, module, roots)
        if kind is not None or name.partition(".")[0] in OWN_PACKAGES:
            continue
        path = getattr(module, "__file__", None)
        if path is not None and (path.startswith(sites) or os.path.realpath(path).startswith(sites + std)):
            continue  # an installed library
        out.append(name)
    return out


def _has_path(module: object) -> bool:
    """A namespace package (no file, a search path): folders of the user's, to be safe."""
    return bool(list(getattr(module, "__path__", []) or []))
