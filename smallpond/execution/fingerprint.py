"""Fingerprints: digests of what produced a task's output, stable across runs of the same script.

A task's fingerprint covers its node's parameters (as the node declares them, see
:meth:`smallpond.logical.base.Node.fingerprint_params`), the user code it runs, its position in
the partition grid and its inputs' fingerprints. Resume reuses a commit record only when the
fingerprint matches, so everything that can change a task's output must reach it, and nothing
that differs between two runs of the same script (memory addresses, ``id()``) may.

:func:`stable_digest` never fails on ordinary user values and never recurses without bound:

* modules are identified by name; classes by module and qualified name;
* functions by their code (bytecode, constants, nested code), their closure, and the globals
  their code names (a module-level constant the function reads is part of it);
* containers and objects are walked with cycles cut; ``DataSet``\\ s and nodes describe themselves;
* values that cannot be described (a NumPy array, an object of a C extension) fall back to a
  digest of their pickled bytes;
* a value that can be neither described nor pickled (a lock, an open file) is reported through
  :class:`Unfingerprintable`: the planner then warns, naming the node and the value, and the task
  is never reused from an earlier run.
"""

from __future__ import annotations

import hashlib
import types
from functools import partial
from typing import Any, List, Optional

_PRIMITIVES = (str, int, float, bool, type(None), bytes, complex)
_MAX_DEPTH = 64


class Unfingerprintable(Exception):
    """A value whose changes cannot be detected (neither describable nor picklable)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def stable_digest(obj: Any) -> str:
    """A hex digest of ``obj`` that is the same in every run of the same script.

    Raises :class:`Unfingerprintable` for a value it cannot describe (see the module docstring).
    """
    h = hashlib.sha256()
    _Walker(h).walk(obj, 0)
    return h.hexdigest()


class _Walker:
    def __init__(self, h) -> None:
        self.h = h
        self.active: set = set()  # ids of containers on the current path (cycle cut)
        self.seen_code: set = set()

    def put(self, text: str) -> None:
        self.h.update(text.encode("utf-8", "surrogatepass"))
        self.h.update(b"\x00")

    def walk(self, obj: Any, depth: int) -> None:
        if isinstance(obj, _PRIMITIVES):
            self.put(f"{type(obj).__name__}:{obj!r}")
            return
        if depth > _MAX_DEPTH:
            self.pickled(obj)
            return
        key = id(obj)
        if key in self.active:
            self.put("<cycle>")
            return
        self.active.add(key)
        try:
            self._walk(obj, depth + 1)
        finally:
            self.active.discard(key)

    def _walk(self, obj: Any, depth: int) -> None:  # noqa: C901 - one dispatch table
        from smallpond.logical.base import Node

        if isinstance(obj, types.ModuleType):
            self.put(f"module:{obj.__name__}")
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
            self.put(f"{type(obj).__name__}[{len(obj)}")
            for x in items:
                self.walk(x, depth)
            self.put("]")
        elif isinstance(obj, dict):
            self.put(f"dict[{len(obj)}")
            for k in sorted(obj, key=repr):
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
        elif isinstance(obj, (types.BuiltinFunctionType, type)):
            self.put(f"name:{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', repr(obj))}")
        elif isinstance(obj, Node):
            self.put(f"node:{type(obj).__module__}.{type(obj).__qualname__}")
            self.walk(obj.fingerprint_params(), depth)
            self.walk(_own_functions(type(obj)), depth)  # a user's subclass: its process() etc.
        elif callable(getattr(obj, "fingerprint", None)) and not isinstance(obj, type):
            self.put(f"fp:{type(obj).__qualname__}:{obj.fingerprint()}")
        elif _is_plain_object(obj):
            cls = type(obj)
            self.put(f"obj:{cls.__module__}.{cls.__qualname__}")
            state = obj.__dict__ if hasattr(obj, "__dict__") else {s: getattr(obj, s, None) for s in _slots(cls)}
            self.walk({k: v for k, v in state.items() if not k.startswith("__")}, depth)
            # a subclass's own code is part of what it computes
            self.walk(_own_functions(cls), depth)
        else:
            self.pickled(obj)

    def function(self, fn: types.FunctionType, depth: int) -> None:
        code = fn.__code__
        self.put(f"fn:{fn.__module__}.{fn.__qualname__}")
        self.code(code, depth)
        self.walk(fn.__defaults__ or (), depth)
        self.walk(fn.__kwdefaults__ or {}, depth)
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

    def code(self, code: types.CodeType, depth: int) -> None:
        self.h.update(code.co_code)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self.code(c, depth)
            else:
                self.walk(c, depth)

    def pickled(self, obj: Any) -> None:
        import cloudpickle

        try:
            data = cloudpickle.dumps(obj)
        except Exception as e:
            raise Unfingerprintable(f"{type(obj).__module__}.{type(obj).__qualname__} ({type(e).__name__}: {e})") from None
        self.put(f"pickle:{hashlib.sha256(data).hexdigest()}")


def _slots(cls) -> List[str]:
    out: List[str] = []
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        out.extend([s] if isinstance(s, str) else s)
    return [s for s in out if s not in ("__dict__", "__weakref__")]


def _is_plain_object(obj: Any) -> bool:
    """An instance of a Python class whose state is in ``__dict__`` / ``__slots__`` (not a C type)."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return False
    return hasattr(obj, "__dict__") or bool(_slots(cls))


def _own_functions(cls) -> dict:
    """Methods defined by a user class (not by smallpond or the standard library)."""
    module = cls.__module__ or ""
    if module.startswith(("smallpond.", "builtins")) or module in ("abc", "enum", "typing"):
        return {}
    return {k: v for k, v in sorted(vars(cls).items()) if isinstance(v, types.FunctionType)}


def _global_names(code: types.CodeType, out: Optional[set] = None) -> set:
    out = set() if out is None else out
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _global_names(c, out)
    return out
