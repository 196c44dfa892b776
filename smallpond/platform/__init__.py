"""Launchers of executor processes: :class:`Platform` (plain subprocesses), :class:`MPI` (mpirun).

:func:`get_platform` picks one by name, as upstream smallpond did:

* ``None``: the first available registered platform (``MPI`` when ``mpirun`` is on the PATH),
  else the base :class:`Platform`. smallpond itself never calls it with ``None``: the embedded
  backend stays the default, and a platform is used only when one is named (``--platform`` or
  ``init(platform=...)``), so installing OpenMPI changes nothing silently.
* ``"mpi"``, ``"base"``, ``"manual"``: the registered platforms (``manual`` starts nothing:
  executors are started by hand);
* any other name: a module to import; the platform is its ``Platform`` subclass (exactly one
  must be defined there, else the choice would depend on attribute order).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Dict, Optional, Type

from smallpond.platform.base import Manual, Platform
from smallpond.platform.mpi import MPI

#: platforms known by name; ``None`` picks the first available of those marked ``auto``
PLATFORMS: Dict[str, Type[Platform]] = {"mpi": MPI, "base": Platform, "manual": Manual}
_AUTO = ("mpi",)


def get_platform(name: Optional[str] = None) -> Platform:
    """The platform called ``name`` (see the module docstring for how names resolve).

    >>> type(get_platform("base")).__name__
    'Platform'
    """
    if name is None:
        for key in _AUTO:
            if PLATFORMS[key].is_available():
                return PLATFORMS[key]()
        return Platform()
    if name in PLATFORMS:
        return PLATFORMS[name]()
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise RuntimeError(f"unknown platform {name!r}: not one of {sorted(PLATFORMS)} and not an importable module ({e})") from e
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Platform) and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise RuntimeError(
            f"platform module {name!r} must define exactly one Platform subclass, found {[c.__name__ for c in found]}"
        )
    return found[0]()


__all__ = ["Platform", "MPI", "Manual", "get_platform", "PLATFORMS"]
