"""Upstream (smallpond 0.15) import paths that have no module of their own here, in one place.

Scripts written for upstream import, for example, ``from smallpond.logical.planner import
Planner``; the planner lives in :mod:`smallpond.execution.planner`, and the logical layer must
not import the execution layer. Instead of a forwarding module inside the logical package, each
such path is listed in :data:`FORWARDED` and served by an import hook (installed by
``import smallpond``) that creates the module on first import, resolving each name lazily.
No module of a lower layer refers to a higher one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Dict, Tuple

#: upstream module path -> ((where the names live, the names), ...)
FORWARDED: Dict[str, Tuple[Tuple[str, Tuple[str, ...]], ...]] = {
    "smallpond.logical.planner": (
        ("smallpond.execution.planner", ("Planner", "ExecutionPlan")),
        ("smallpond.logical.visitor", ("LogicalPlanVisitor",)),
    ),
}


class _ForwardingModule(types.ModuleType):
    def __init__(self, name: str, targets: Tuple[Tuple[str, Tuple[str, ...]], ...]) -> None:
        where = "; ".join(f"{', '.join(names)} to {target}" for target, names in targets)
        super().__init__(name, f"Upstream import path; forwards {where}.")
        self.__forward_targets__ = {n: target for target, names in targets for n in names}
        self.__all__ = list(self.__forward_targets__)

    def __getattr__(self, attr: str):
        if attr in self.__all__:
            value = getattr(importlib.import_module(self.__forward_targets__[attr]), attr)
            setattr(self, attr, value)
            return value
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _ForwardingModule(spec.name, FORWARDED[spec.name])

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in FORWARDED:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def install() -> None:
    """Serve the forwarded paths (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
