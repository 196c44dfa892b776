"""Fingerprints: digests of what produced a task's output, stable across runs of the same script.

A task's fingerprint covers its node's parameters (as the node declares them, see
:meth:`smallpond.logical.base.Node.fingerprint_params`), the user code it runs, its position in
the partition grid and its inputs' fingerprints (for a partition of a split by files that the
plan fixes, the files it reads: :mod:`smallpond.execution.plan_splits`). Resume reuses a commit
record only when the fingerprint matches, so everything that can change a task's output must reach it, and nothing
that differs between two runs of the same script (memory addresses, ``id()``, hash seeds, the
ids cloudpickle gives classes) may.

:func:`stable_digest` never fails on ordinary user values and never recurses without bound:

* modules of installed libraries (site-packages, the standard library, smallpond) by name and
  the library's version, as their functions and classes are (by module, qualified name and
  version); a module without a source file that can be read (builtin, frozen, an extension
  module, imported from a zip) by its name alone;
* a module of the user's own code (any other module with a source file: one next to the script, a
  package of the user's project, an editable install) by its name and the digest of its file, and
  those of the user modules it refers to, transitively (:func:`_user_modules_of`: its loaded
  submodules and the modules it imports, also in a function that has not run yet: a module not
  imported in this process is found where the import would find it, without importing it: see
  :mod:`smallpond.execution.fingerprint_sources`). So ``mymod.g(x)`` in a lambda sees an edit of ``g``,
  of a constant ``g`` reads, of ``pkg/sub.py`` behind ``pkg.sub.fn``, or of ``config.py`` behind
  ``from config import K`` in ``mymod``. This over-invalidates on purpose: any edit of such a file
  (a comment, a function the task never calls) changes the fingerprint; a stale reuse would be
  worse. Each file is read once per version of it (path, size, times, inode) in a process. A
  module whose file changed after it was imported (and was not reloaded) runs code the file no
  longer holds: it is :class:`Unfingerprintable` (see below) rather than keyed by what the file
  says now;
* the user's own functions by their code (bytecode, the names it uses, constants, nested code),
  defaults, closure, attributes set on them (``f.scale = 2``), the globals their code names (a
  module-level constant the function reads is part of it) and the user modules their body imports (``import helpers`` inside a UDF, as
  above; a worker imports the file as it is when the task runs); a function or class of a user
  module that pickle saves by reference (its module's attribute path reaches it: ``mymod.f``, not
  a lambda, a nested one or the script's) also by that module's file, which is what a worker
  imports and runs (:func:`~smallpond.execution.fingerprint_sources.home_module`);
* the user's own classes (defined in the script or in a user module, however they are reached) by
  their qualified name, their metaclass, their bases (a user base class by the same description, a
  library class by its name) and everything their ``__dict__`` holds: methods, static and class
  methods and properties by their functions, and class-level data (constants, containers, nested
  objects) like any other value. So ``F = 2`` changed to ``F = 3`` in ``class Scaler`` is seen by
  ``Scaler()``, by a method of it and by a function that reads ``Scaler.F``, as is an attribute
  inherited from a user base class. Entries that are not the user's data, or that differ between
  two processes, are left out (:data:`_CLASS_NOISE`: ``__dict__``, ``__weakref__``,
  ``__module__``, ``__doc__``, and what Python or a library stores on a class as it is used: the
  ABC registry cache, copyreg's ``__slotnames__``, an Enum's value lookup table...). What
  ``@dataclass``, ``Enum``, ``NamedTuple`` and ``Protocol`` generate is data or functions of this
  kind and walks the same way in every process. An instance by its own state (below) and its class;
* a node by the parameters it declares (``Node.fingerprint_params``: a SQL node's UDFs by their
  functions and types, also those registered by name with ``ctx.create_function``), its class,
  and the contents of the files it loads besides its inputs (``Node.fingerprint_files``: a UDF
  module, a DuckDB extension; :func:`file_digest`);
* a dataset by its :meth:`~smallpond.logical.dataset.DataSet.fingerprint` (description and files)
  and the code it runs to produce its rows (``fingerprint_code``: a ``SqlQueryDataSet``'s query
  builder), wherever it is reached (a source's dataset, a closure, a node's parameter);
* each object is walked once: a second sighting (a cycle, or an object shared by two places)
  is written as a reference to the first, so cycles are cut and shared objects cost nothing;
  past a depth of 64 a value is digested by its pickled bytes;
* containers are walked in a stable order (sets and dict keys sorted by value, never by address);
* objects are described the way pickle would rebuild them (their ``__dict__``/slots, or what
  ``__getstate__`` / ``__reduce_ex__`` or the reducer ``copyreg`` holds for their type return: a
  compiled regular expression by its pattern and flags), so an object that drops a lock or a cache when
  pickled is fingerprinted by what a worker actually receives; NumPy arrays by dtype, shape and
  data; locks by their type (a lock holds no data). An object pickle saves by name (its
  ``__reduce__`` returns a name: a worker looks the name up in its module) by that name, the file
  of its module when that is a user module (``scale = Scaler(1)`` edited to ``Scaler(20)``), and
  the function a wrapper holds (``functools.lru_cache``);
* a value that still cannot be described (a generator, an open connection) is reported through
  :class:`Unfingerprintable`: the planner then warns, naming the node and the value, and the task
  is never reused from an earlier run.
"""

from __future__ import annotations

import copyreg
import enum
import hashlib
import sys
import threading
import types
from functools import partial
from typing import Any, Dict, List, Optional

from smallpond.common import imported_module
from smallpond.execution.fingerprint_sources import (
    Unfingerprintable,
    _code_imports,
    _file_info,
    _is_library,
    _library_version,
    _module_name,
    _Unloaded,
    _user_modules_of,
    _user_source_info,
    file_digest,
    home_module,
)

_MAX_DEPTH = 64
_SCALARS = (int, float, bool, type(None), complex)
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_OBJECT_GETSTATE = getattr(object, "__getstate__", None)  # Python >= 3.11


def stable_digest(obj: Any, specs: Optional[Dict[str, Any]] = None) -> str:
    """A hex digest of ``obj`` that is the same in every run of the same script.

    ``specs`` keeps where the modules imported in function bodies but not loaded here were found
    (:func:`_find_spec`), for the digests of one planning: a plan of many nodes looks each name up
    once. A new dict per planning: a module file created since is found by the next one.

    Raises :class:`Unfingerprintable` for a value it cannot describe (see the module docstring).

    >>> stable_digest({"b": 1, "a": [1.5, None]}) == stable_digest({"a": [1.5, None], "b": 1})
    True
    """
    h = hashlib.sha256()
    try:
        _Walker(h, {} if specs is None else specs).walk(obj, 0)
    except Unfingerprintable:
        raise
    except Exception as e:  # a user's __reduce_ex__ / property that fails: never crash planning
        raise Unfingerprintable(f"{_name(type(obj))} ({type(e).__name__}: {e})") from None
    return h.hexdigest()


class _Walker:
    def __init__(self, h, specs: Dict[str, Any]) -> None:
        self.h = h
        self.specs = specs  # name -> the spec an import would load (see stable_digest)
        self.seen: Dict[int, int] = {}  # id -> order of first sighting
        # everything walked stays alive until the walk ends, so no id is reused by a temporary
        # (the values __reduce_ex__ builds) while it is a key of ``seen``
        self.keep: List[Any] = []
        self.sourced: set = set()  # ids and names of the user modules whose files are digested already

    def put(self, text: str) -> None:
        self.h.update(text.encode("utf-8", "surrogatepass"))
        self.h.update(b"\x00")

    def raw(self, tag: str, data) -> None:
        self.put(f"{tag}:{len(data)}")
        self.h.update(data)

    def walk(self, obj: Any, depth: int) -> None:
        if isinstance(obj, str):
            self.raw(type(obj).__name__, obj.encode("utf-8", "surrogatepass"))
            return
        if isinstance(obj, (bytes, bytearray)):
            self.raw(type(obj).__name__, bytes(obj) if isinstance(obj, bytearray) else obj)
            return
        if isinstance(obj, _SCALARS):  # subclasses too (IntEnum, NodeId): their type and value
            base = next(t for t in (bool, int, float, complex, type(None)) if isinstance(obj, t))
            self.put(f"{type(obj).__qualname__}:{base.__repr__(obj)}")
            return
        key = id(obj)
        ref = self.seen.get(key)
        if ref is not None:
            self.put(f"<ref {ref}>")
            return
        self.seen[key] = len(self.seen)
        self.keep.append(obj)
        if depth > _MAX_DEPTH:
            self.pickled(obj)
            return
        self._walk(obj, depth + 1)

    def _walk(self, obj: Any, depth: int) -> None:  # noqa: C901 - one dispatch table
        from smallpond.logical.base import Node
        from smallpond.logical.dataset import DataSet

        if isinstance(obj, types.ModuleType):
            self.module(obj)
        elif isinstance(obj, (list, tuple)):
            self.put(f"{type(obj).__qualname__}[{len(obj)}")
            for x in obj:
                self.walk(x, depth)
            self.put("]")
        elif isinstance(obj, (set, frozenset)):
            self.put(f"{type(obj).__qualname__}[{len(obj)}")
            for x in _stable_order(obj):
                self.walk(x, depth)
            self.put("]")
        elif isinstance(obj, (dict, types.MappingProxyType)):  # a mappingproxy: a dataclass field's metadata
            self.put(f"{type(obj).__qualname__}[{len(obj)}")
            for k in _stable_order(obj):
                self.walk(k, depth)
                self.walk(obj[k], depth)
            self.put("]")
        elif isinstance(obj, partial):
            self.put("partial")
            self.walk((obj.func, obj.args, obj.keywords), depth)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.put("method")
            self.walk(obj.__func__, depth)
            self.walk(obj.__self__, depth)
        elif isinstance(obj, type):
            self.cls(obj, depth)
        elif isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)):
            module = getattr(obj, "__module__", None) or type(getattr(obj, "__self__", None)).__module__
            self.put(f"builtin:{module}.{getattr(obj, '__qualname__', repr(obj))}")
        elif isinstance(obj, types.CodeType):
            self.code(obj, depth)
        elif isinstance(obj, Node):
            self.put(f"node:{type(obj).__module__}.{type(obj).__qualname__}")
            self.walk(obj.fingerprint_params(), depth)
            for path in obj.fingerprint_files():  # a UDF module, a DuckDB extension
                self.put(f"file:{path}:{file_digest(path)}")
            self.walk(type(obj), depth)  # a user's subclass: its process() etc. and class attributes
        elif isinstance(obj, DataSet):
            self.put(f"fp:{type(obj).__qualname__}:{obj.fingerprint()}")
            code = obj.fingerprint_code()
            if code:  # a query builder: the query that runs (absent otherwise: fingerprints stay)
                self.put("dataset code")
                self.walk(code, depth)
        elif isinstance(obj, (types.MemberDescriptorType, types.GetSetDescriptorType)):  # a slot of a class
            self.put(f"descriptor:{type(obj).__qualname__}:{getattr(obj, '__qualname__', '?')}")
        elif isinstance(obj, _LOCK_TYPES):
            self.put(f"lock:{type(obj).__qualname__}")
        elif _is_ndarray(obj):
            self.ndarray(obj, depth)
        elif _is_plain_object(obj):
            cls = type(obj)
            self.put(f"obj:{cls.__module__}.{cls.__qualname__}")
            state = obj.__dict__ if hasattr(obj, "__dict__") else {s: getattr(obj, s, None) for s in _slots(cls)}
            self.walk({k: v for k, v in state.items() if not k.startswith("__")}, depth)
            self.walk(cls, depth)  # a user class's code and class attributes are part of what it computes
        else:
            self.reduced(obj, depth)

    def module(self, mod: types.ModuleType) -> None:
        name = getattr(mod, "__name__", None) or "?"
        self.put(f"module:{name}{_library_version(name)}")
        self.sources([mod])

    def sources(self, todo: list) -> None:
        """The files of user modules and of the user modules they refer to (in a stable order,
        each once per walk; iteratively, so a long chain of imports does not deepen the walk).
        ``todo`` holds module objects and :class:`_Unloaded` modules (not imported in this
        process), which are digested by the file an import would load."""
        while todo:
            m = todo.pop()
            if isinstance(m, _Unloaded):
                if m.name in self.sourced:
                    continue
                self.sourced.add(m.name)
                digest, imported = _file_info(m.path, m.package, m.name)
                self.put(f"source:{m.name}:{digest}")
                todo.extend(reversed(_user_modules_of(None, imported, self.specs)))
                continue
            if id(m) in self.sourced or m.__name__ in self.sourced:
                continue
            self.sourced.update((id(m), m.__name__))
            self.keep.append(m)
            info = _user_source_info(m)
            if info is None:
                continue
            self.put(f"source:{m.__name__}:{info[0]}")
            todo.extend(reversed(_user_modules_of(m, info[1], self.specs)))

    def function(self, fn: types.FunctionType, depth: int) -> None:
        module = getattr(fn, "__module__", None) or ""
        if _is_library(module):
            self.put(f"libfn:{module}.{fn.__qualname__}{_library_version(module)}")
            return
        self.put(f"fn:{module}.{fn.__qualname__}")
        self.home(fn)
        code = fn.__code__
        self.code(code, depth)
        self.walk(fn.__defaults__ or (), depth)
        self.walk(fn.__kwdefaults__ or {}, depth)
        # attributes set on the function (``f.scale = 2``), which travel with it to a worker
        attrs = {k: v for k, v in getattr(fn, "__dict__", {}).items() if not k.startswith("__")}
        if attrs:  # (absent otherwise: functions without any keep their fingerprints)
            self.put("attrs")
            self.walk(attrs, depth)
        for cell in fn.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                self.put("<empty cell>")
                continue
            self.walk(value, depth)
        g = fn.__globals__
        for name in sorted(_global_names(code)):
            if name in g:
                self.put(f"global:{name}")
                self.walk(g[name], depth)
        # the user modules its body imports (``import helpers`` inside the function), imported in
        # this process or not: a worker imports them as their files are when the task runs
        imported = _code_imports(code, g.get("__package__") or "")
        if imported:
            modules = _user_modules_of(None, imported, self.specs)
            if modules:
                self.put(f"imports:{','.join(_module_name(m) for m in modules)}")
                self.sources(list(reversed(modules)))

    def home(self, obj: Any) -> None:
        """A function or class a worker imports from its user module (:func:`home_module`): that
        module's file is what runs there, so it is part of the code (and, once digested, an edit
        of it makes a session's next run replace its workers, which loaded the file as it was)."""
        mod = home_module(obj)
        if mod is not None:
            self.put(f"home:{mod.__name__}")
            self.sources([mod])

    def code(self, code: types.CodeType, depth: int) -> None:
        self.put("code")
        self.h.update(code.co_code)
        # the names it loads and calls: ``pc.add`` and ``pc.multiply`` differ only here
        self.walk(code.co_names, depth)
        salted = _is_attrs_hash(code)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self.code(c, depth)
            elif salted and type(c) is int:
                self.put("<attrs type hash>")
            else:
                self.walk(c, depth)

    def cls(self, cls: type, depth: int) -> None:
        module = getattr(cls, "__module__", None) or ""
        self.put(f"class:{module}.{getattr(cls, '__qualname__', repr(cls))}{_library_version(module)}")
        if _is_library(module):
            return
        self.home(cls)
        # a user class: its metaclass and bases (user bases walked the same way: an attribute
        # inherited from one, a method overridden), then what its own __dict__ holds
        self.walk(type(cls), depth)
        self.walk(cls.__bases__, depth)
        self.walk(_class_state(cls), depth)

    def ndarray(self, a, depth: int) -> None:
        self.put(f"ndarray:{a.dtype.str}:{a.shape}")
        if a.dtype.hasobject:
            self.walk(a.tolist(), depth)
            return
        import numpy as np

        self.h.update(memoryview(np.ascontiguousarray(a)).cast("B"))

    def reduced(self, obj: Any, depth: int) -> None:
        """An object described by what pickle would rebuild it from: the reducer ``copyreg``
        registers for its type (``re.Pattern``: its pattern and flags), else ``__reduce_ex__``."""
        cls = type(obj)
        try:
            reducer = copyreg.dispatch_table.get(cls)
            rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as e:
            raise Unfingerprintable(f"{_name(cls)} ({type(e).__name__}: {e})") from None
        if isinstance(rv, str):  # pickled as a global by name
            module = getattr(obj, "__module__", None) or cls.__module__
            self.put(f"global:{module}.{rv}")
            # a worker runs what the name is bound to in that module as its file is then: a user
            # module's file is part of it (``scale = Scaler(1)`` edited to ``Scaler(20)``), and
            # a wrapper's function (``functools.lru_cache``, ``functools.cache``) is the code
            # that runs
            owner = sys.modules.get(module) if isinstance(module, str) else None
            if owner is not None:
                self.sources([owner])  # (nothing for a library's module)
            wrapped = getattr(obj, "__wrapped__", None)
            if wrapped is not None:
                self.walk(wrapped, depth)
            return
        self.put(f"reduce:{_name(cls)}")
        if not _is_library(cls.__module__ or ""):
            self.walk(cls, depth)
        parts = list(rv)
        for i, part in enumerate(parts[:5]):
            if i >= 3 and part is not None:  # list and dict items come as iterators
                part = list(part)
            self.walk(part, depth)

    def pickled(self, obj: Any) -> None:
        import cloudpickle

        try:
            data = cloudpickle.dumps(obj)
        except Exception as e:
            raise Unfingerprintable(f"{_name(type(obj))} ({type(e).__name__}: {e})") from None
        self.put(f"pickle:{hashlib.sha256(data).hexdigest()}")


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _stable_order(items) -> list:
    """The items of a set (or a dict's keys) in an order that does not depend on addresses."""
    items = list(items)
    if all(isinstance(x, (str, bytes, int, float, bool, type(None))) for x in items):
        return sorted(items, key=lambda x: (type(x).__name__, x if not isinstance(x, float) or x == x else 0.0, repr(x)))
    return [x for _, x in sorted(((stable_digest(x), i), x) for i, x in enumerate(items))]


def _slots(cls) -> List[str]:
    out: List[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        out.extend([s] if isinstance(s, str) else s)
    return [s for s in out if s not in ("__dict__", "__weakref__")]


def _is_ndarray(obj: Any) -> bool:
    # numpy may be half imported by another thread (the session's warm-up imports pandas while a
    # job is planned): in sys.modules without ``ndarray`` yet; no array exists before it is done
    np = imported_module("numpy")
    return np is not None and type(obj) is getattr(np, "ndarray", None)


def _is_plain_object(obj: Any) -> bool:
    """An instance of a Python class whose state is in ``__dict__`` / ``__slots__`` (not a C type)
    and that pickles by that state (no ``__reduce__`` / ``__getstate__`` of its own)."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return False
    if cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__:
        return False
    if getattr(cls, "__getstate__", None) is not _OBJECT_GETSTATE:
        return False
    return hasattr(obj, "__dict__") or bool(_slots(cls))


#: entries of a class's ``__dict__`` that are not the user's data or differ between processes: the
#: instance dict/weakref descriptors, the module (the class's qualified name is written already),
#: the docstring (it computes nothing), the ABC registry cache (``_abc_impl``, which grows as
#: isinstance checks run), what Python 3.13 derives from the source (line number, attribute names
#: assigned in methods: irrelevant to the result, or implied by the methods' code) and the cache
#: Python 3.14 keeps of the annotations it computes (``__annotate__``, their code, is walked), and
#: ``__slotnames__``, which copyreg stores on a class the first time an instance of it is pickled
#: or copied (its ``__slots__`` are walked). Then what libraries derive and store on a user class:
#: a lazily computed ``__signature__``; pydantic's compiled schema, validator and serializer and its
#: decorator index (derived from the fields, config and validator methods, which are walked; they
#: name the class by its ``id()``) and its cache of attribute setters, filled as instances are set
_CLASS_NOISE = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__module__",
        "__qualname__",
        "__doc__",
        "_abc_impl",
        "__firstlineno__",
        "__static_attributes__",
        "__annotations_cache__",
        "__slotnames__",
        "__signature__",
        "__pydantic_core_schema__",
        "__pydantic_validator__",
        "__pydantic_serializer__",
        "__pydantic_decorators__",
        "__pydantic_setattr_handlers__",
    }
)


def _class_state(cls: type) -> dict:
    """What a user class's own ``__dict__`` holds, by name (its bases are walked on their own):
    functions as they are, static and class methods by their function (and which kind they are),
    properties by their functions, everything else (class-level data) as it is."""
    out = {}
    is_enum = isinstance(cls, enum.EnumMeta)
    for name, v in list(vars(cls).items()):
        if name in _CLASS_NOISE or (name == "__annotations__" and not v):
            continue  # (reading ``cls.__annotations__`` of a class without any stores an empty dict)
        if is_enum and name == "_value2member_map_":
            continue  # a cache: a Flag adds each combination used (the members are in _member_map_)
        if isinstance(v, (staticmethod, classmethod)):
            v = (type(v).__name__, v.__func__)
        elif isinstance(v, property):
            v = ("property", v.fget, v.fset, v.fdel)
        out[name] = v
    return out


def _is_attrs_hash(code: types.CodeType) -> bool:
    """The ``__hash__`` attrs generates for a class (``frozen``, ``hash=True``): it holds the
    ``hash()`` of a string naming the class as a constant, which differs in every process (string
    hashes are salted), like the hashes it computes; the class's fields, which decide them, are
    walked with the class."""
    return code.co_name == "__hash__" and code.co_filename.startswith("<attrs generated")


def _global_names(code: types.CodeType, out: Optional[set] = None) -> set:
    out = set() if out is None else out
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _global_names(c, out)
    return out
