"""The code a fingerprint reads from files: the user's own modules (digested by their files, with
the user modules they import, found without importing them), installed libraries (by name and
version) and the files a node loads besides its inputs. See :mod:`smallpond.execution.fingerprint`,
whose walker uses them."""

from __future__ import annotations

import ast
import dis
import hashlib
import importlib.util
import os
import sys
import sysconfig
import types
import weakref
from importlib.machinery import EXTENSION_SUFFIXES, BuiltinImporter, FrozenImporter, PathFinder
from typing import Any, Dict, NamedTuple, Optional, Tuple

from smallpond.io.paths import file_version


class Unfingerprintable(Exception):
    """A value whose changes cannot be detected (it can be neither described nor pickled)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


_library_cache: Dict[str, bool] = {}


def _library_roots() -> tuple:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _is_library(module: str) -> bool:
    """True for modules of installed libraries, the standard library and smallpond: identified by
    name and version (their code does not change between two runs of a script), not walked."""
    hit = _library_cache.get(module)
    if hit is None:
        top = module.partition(".")[0]
        if top in ("smallpond", "builtins") or top in sys.builtin_module_names:
            hit = True
        elif module == "__main__":
            hit = False
        else:
            mod = sys.modules.get(module) or sys.modules.get(top)
            path = getattr(mod, "__file__", None)
            hit = path is None or os.path.realpath(path).startswith(_library_roots())
        _library_cache[module] = hit
    return hit


def _library_version(module: str) -> str:
    """``@version`` of the library a module belongs to (a new release may compute differently)."""
    if not module or not _is_library(module):
        return ""
    top = sys.modules.get(module.partition(".")[0])
    version = getattr(top, "__version__", None)
    return f"@{version}" if isinstance(version, str) else ""


# -- files a node loads besides its inputs (Node.fingerprint_files) ----------------------------------

_contents: Dict[str, Tuple[tuple, str]] = {}  # path -> (its stat, the digest of its contents)


def file_digest(path: str) -> str:
    """The digest of a file's contents (a UDF module, a DuckDB extension a node loads), read once
    per version of it in a process (its size, modification and change times and inode).

    Raises :class:`Unfingerprintable` when the file cannot be read."""
    try:
        st = os.stat(path)
        seen = file_version(st)
        hit = _contents.get(path)
        if hit is not None and hit[0] == seen:
            return hit[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise Unfingerprintable(f"the file {path} ({type(e).__name__}: {e})") from None
    _contents[path] = (seen, h.hexdigest())
    return _contents[path][1]


# -- the user's own modules: digested by their files -------------------------------------------------

_sources: Dict[Tuple[str, str], Optional[str]] = {}
_files: Dict[Tuple[str, str], Tuple[tuple, Tuple[str, Tuple[str, ...]]]] = {}  # (path, package) -> (stat, info)
#: per module object, what it was first digested as: (its __spec__, the file's digest); a module
#: keeps its spec until it is reloaded (importlib.reload, IPython's autoreload), which replaces it
_loaded: "weakref.WeakKeyDictionary[types.ModuleType, Tuple[Any, str]]" = weakref.WeakKeyDictionary()


def _user_source(mod: types.ModuleType) -> Optional[str]:
    """The real path of the source file of a module of the user's own code, or None: for a module
    of smallpond (the engine's code digest is part of every cache key), of the standard library or
    an installed package (identified by name and version), or without a file that can be read (no
    ``__file__``: builtin, frozen, namespace package; an extension module; a file in a zip)."""
    return _user_source_at(getattr(mod, "__name__", None), getattr(mod, "__file__", None))


def _user_source_at(name: Any, path: Any) -> Optional[str]:
    """:func:`_user_source` of the module ``name`` loaded (or to be loaded) from ``path``."""
    if not isinstance(name, str) or not isinstance(path, str):
        return None
    key = (name, path)
    if key in _sources:
        return _sources[key]
    top = name.partition(".")[0]
    real: Optional[str] = os.path.realpath(path)
    if (
        top in ("smallpond", "builtins")
        or top in sys.builtin_module_names
        or real.endswith(tuple(EXTENSION_SUFFIXES))
        or real.startswith(_library_roots())
        or not os.path.isfile(real)
    ):
        real = None
    _sources[key] = real
    return real


def home_module(obj: Any) -> Optional[types.ModuleType]:
    """The user module (:func:`_user_source`) a worker imports the function or class ``obj``
    from, or None. Pickle (cloudpickle too) saves a function or class that its module's
    attribute path (``__qualname__``) reaches by reference: a worker gets it by importing that
    module, so the module's file, not the object this process holds, is the code that runs. One
    of the script (``__main__``), a lambda, a nested or a replaced one is saved by value instead."""
    name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(name, str) or not isinstance(qualname, str) or name == "__main__":
        return None
    mod = sys.modules.get(name)
    if mod is None or _user_source(mod) is None:
        return None
    found: Any = mod
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return mod if found is obj else None


def _user_source_info(mod: types.ModuleType) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """``(digest of the file, names of the modules it imports)`` of a user module (see
    :func:`_user_source`), None for any other module.

    Raises :class:`Unfingerprintable` when the file cannot be read, or when it changed since this
    module object first got a fingerprint and the module was not reloaded since: the code that
    would run is then not the code in the file (a job keyed by the file would store the old code's
    result under the new code's key). A reload (a new ``__spec__``) takes the file as it is then.
    """
    path = _user_source(mod)
    if path is None:
        return None
    info = _file_info(path, getattr(mod, "__package__", None) or "", mod.__name__)
    spec = getattr(mod, "__spec__", None)
    pinned = _loaded.get(mod)
    if pinned is None or pinned[0] is not spec:
        _loaded[mod] = (spec, info[0])
    elif pinned[1] != info[0]:
        raise Unfingerprintable(
            f"module {mod.__name__} (its file {path} changed after it was imported, and the module was not "
            "reloaded: the code that runs is not the code in the file; reload it or restart)"
        )
    return info


def user_source_stats() -> Dict[str, tuple]:
    """The files of the user's modules this process has digested (the code its jobs were keyed
    by), each with its size, modification and change times and inode now (None: gone).

    A job compares them before it runs with what they were when its previous run ended: a file
    that changed meanwhile may be loaded, as it was, in a worker that lives on between the runs of
    a session (:meth:`~smallpond.execution.executors.base.Executor.restart_workers`)."""
    out: Dict[str, tuple] = {}
    for path, _ in list(_files):
        try:
            out[path] = file_version(os.stat(path))
        except OSError:
            out[path] = None
    return out


def _file_info(path: str, package: str, name: str) -> Tuple[str, Tuple[str, ...]]:
    """Digest and imported module names of the file of the user module ``name`` (in ``package``,
    where its relative imports resolve), read once per version of it (its size, modification and
    change times and inode: a rewrite that sets the time back is seen)."""
    try:
        st = os.stat(path)
        seen = file_version(st)
        key = (path, package)
        hit = _files.get(key)
        if hit is not None and hit[0] == seen:
            return hit[1]
        info = _read_source(*key)
    except OSError as e:
        raise Unfingerprintable(f"module {name} (its file {path}: {type(e).__name__}: {e})") from None
    _files[key] = (seen, info)
    return info


def _read_source(path: str, package: str) -> Tuple[str, Tuple[str, ...]]:
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha256(data).hexdigest(), _imported_names(data, package) if path.endswith(".py") else ()


def _imported_names(source: bytes, package: str) -> Tuple[str, ...]:
    """Absolute names of the modules a module's source imports, anywhere in it (``import a.b``:
    ``a`` and ``a.b``; ``from .c import d``: ``pkg.c`` and ``pkg.c.d``, which may be a submodule)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):  # a relative import beyond the top-level package
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return tuple(sorted(names))


class _Unloaded(NamedTuple):
    """A user module that is not imported in this process: what an import of it would load."""

    name: str
    path: str  # the real path of its source file
    package: str  # where its relative imports resolve


def _module_name(m: Any) -> str:
    return m.name if isinstance(m, _Unloaded) else m.__name__


def _user_modules_of(mod: Optional[types.ModuleType], imported: Tuple[str, ...], specs: Dict[str, Any]) -> list:
    """The user modules (:func:`_user_source`) a user module (or a function's body, ``mod`` None)
    refers to, sorted by name: the modules its code imports (``imported``; one that is not
    imported in this process, by an import in a function that has not run, as an
    :class:`_Unloaded` found where an import would find it) and, in a module's namespace, modules
    (the submodules of a package: ``pkg.sub`` after ``import pkg.sub``) and the modules of
    functions and classes (set on it at run time)."""
    found: Dict[str, Any] = {}

    def add(m: Any) -> None:
        if isinstance(m, types.ModuleType) and m is not mod and _user_source(m) is not None:
            found.setdefault(m.__name__, m)

    for name in imported:
        loaded = sys.modules.get(name)
        if loaded is not None:
            add(loaded)
        elif name not in found:
            unloaded = _unloaded_module(name, specs)
            if unloaded is not None:
                found[name] = unloaded
    for v in list(vars(mod).values()) if mod is not None else ():
        if isinstance(v, types.ModuleType):
            add(v)
        elif isinstance(v, (types.FunctionType, type)):
            owner = getattr(v, "__module__", None)
            if isinstance(owner, str):
                add(sys.modules.get(owner))
    return [found[k] for k in sorted(found)]


def _unloaded_module(name: str, specs: Dict[str, Any]) -> Optional[_Unloaded]:
    """The user module an ``import name`` would load, found without importing it or any other
    module (see :func:`_find_spec`), or None: not found, not the user's code (see
    :func:`_user_source`), or its parent package could not be searched."""
    spec = _find_spec(name, specs)
    if spec is None or not getattr(spec, "has_location", False):
        return None
    path = _user_source_at(name, spec.origin)
    if path is None:
        return None
    package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
    return _Unloaded(name, path, package)


def _find_spec(name: str, specs: Dict[str, Any], depth: int = 0) -> Any:
    """The spec an ``import name`` would load, once per name in ``specs`` (one planning). A parent
    package that is not imported is looked up the same way, not imported."""
    if name in specs:
        return specs[name]
    parent = name.rpartition(".")[0]
    search = None
    spec = None
    if parent:
        loaded = sys.modules.get(parent)
        if loaded is not None:
            search = getattr(loaded, "__path__", None)
        elif depth < 32:
            search = getattr(_find_spec(parent, specs, depth + 1), "submodule_search_locations", None)
    if search is not None or not parent:  # (else the parent is not a package, or was not found)
        spec = _search_spec(name, search)
    specs[name] = spec
    return spec


def _search_spec(name: str, search: Optional[list]) -> Any:
    """Ask the finders of ``sys.meta_path`` that only look files up (:func:`_looks_up_files`):
    the builtin and frozen importers, the path finder (with the path hooks of ``sys.path_hooks``,
    as an import uses them) and setuptools' editable-install finders. Others are not asked: a
    finder may run code when asked (setuptools' distutils shim imports setuptools when asked for
    ``distutils``, and deletes modules from ``sys.modules`` when asked for ``pip``), and a
    planning runs no import. A module only such a finder would find is not digested (an import
    hook's modules, which are not files of the user's code in the usual cases)."""
    for finder in list(sys.meta_path):
        if not _looks_up_files(finder):
            continue
        try:
            spec = finder.find_spec(name, search)
        except Exception:  # a finder that cannot search this name: another may
            continue
        if spec is not None:
            return spec
    return None


def _looks_up_files(finder: Any) -> bool:
    """A finder of ``sys.meta_path`` whose ``find_spec`` only looks files up (see :func:`_search_spec`)."""
    if finder in (PathFinder, BuiltinImporter, FrozenImporter):
        return True
    cls = finder if isinstance(finder, type) else type(finder)  # setuptools' finder is a class
    return cls.__qualname__ == "_EditableFinder" and (cls.__module__ or "").startswith("__editable__")


_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_LOAD_CONSTANT = ("LOAD_CONST", "LOAD_SMALL_INT")  # (an import's level is a small int in Python 3.14)


def _code_imports(code: types.CodeType, package: str) -> Tuple[str, ...]:
    """Absolute names of the modules a function's code (nested functions included) imports when it
    runs, as :func:`_imported_names` gives them for a file's source."""
    names: set = set()
    todo = [code]
    while todo:
        c = todo.pop()
        todo.extend(x for x in c.co_consts if isinstance(x, types.CodeType))
        if _IMPORT_NAME not in c.co_code[::2]:
            continue
        consts: list = []  # the constants loaded before IMPORT_NAME: its level and its fromlist
        for ins in dis.get_instructions(c):
            if ins.opname == "IMPORT_NAME":
                level = consts[-2] if len(consts) >= 2 and isinstance(consts[-2], int) else 0
                fromlist = consts[-1] if consts and isinstance(consts[-1], tuple) else ()
                try:
                    base = importlib.util.resolve_name("." * level + ins.argval, package) if level else ins.argval
                except (ImportError, ValueError):  # a relative import beyond the top-level package
                    continue
                if not base:
                    continue
                parts = base.split(".")
                names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
                names.update(f"{base}.{n}" for n in fromlist if isinstance(n, str) and n != "*")
            consts = consts + [ins.argval] if ins.opname in _LOAD_CONSTANT else []
    return tuple(sorted(names))
