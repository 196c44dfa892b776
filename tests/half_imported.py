"""A module as another thread's import leaves it while its body runs.

``smallpond.init`` imports pyarrow and pandas, and so numpy, in a background thread
(``session.warm_result_imports``) while the script goes on to plan its first job. Until that
import is done, ``sys.modules["numpy"]`` is a module whose body has not run yet: its spec is
marked ``_initializing`` and it has none of its attributes (``numpy.ndarray`` raises
``AttributeError: partially initialized module 'numpy' has no attribute 'ndarray'``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def being_imported(name: str) -> Iterator[object]:
    """Import a stand-in for ``name`` in another thread and hold it half way (its body waits)
    until the block ends; yields that half-imported module. The real module (if any) is put back
    after. Nothing in the block may import ``name`` itself (it would wait for the block's end)."""
    started, release = threading.Event(), threading.Event()

    class Held(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            started.set()
            release.wait(60)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            return importlib.machinery.ModuleSpec(fullname, Held()) if fullname == name else None

    real = sys.modules.pop(name, None)
    finder = Finder()
    sys.meta_path.insert(0, finder)
    thread = threading.Thread(target=importlib.import_module, args=(name,), name=f"importing-{name}", daemon=True)
    try:
        thread.start()
        assert started.wait(60), f"the import of the stand-in for {name} did not start"
        yield sys.modules[name]
    finally:
        release.set()
        thread.join(60)
        sys.meta_path.remove(finder)
        if real is not None:
            sys.modules[name] = real
        else:
            sys.modules.pop(name, None)
