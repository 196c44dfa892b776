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
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def being_imported(name: str, completes: bool = False) -> Iterator[object]:
    """Import a stand-in for ``name`` in another thread and hold it half way (its body waits)
    until the block ends; yields that half-imported module. The real module (if any) is put back
    after. Nothing in the block may import ``name`` itself (it would wait for the block's end).

    ``completes``: when the block ends, the stand-in's body finishes as the real module's did (it
    gets the real module's attributes), so another thread that waited for the import (``import
    name`` in it) goes on with a module that works, as it would once a real import is done."""
    started, release = threading.Event(), threading.Event()
    real = sys.modules.get(name)

    class Held(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            started.set()
            release.wait(60)
            if completes and real is not None:
                keep = ("__name__", "__spec__", "__loader__")
                module.__dict__.update({k: v for k, v in vars(real).items() if k not in keep})

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            return importlib.machinery.ModuleSpec(fullname, Held()) if fullname == name else None

    sys.modules.pop(name, None)
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


def waiting_for_import(thread: threading.Thread, name: str, timeout: float = 60.0) -> bool:
    """Wait until ``thread`` waits for another thread's import of ``name`` to finish (it is in
    importlib's ``_lock_unlock_module``); False if it did not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        frame = sys._current_frames().get(thread.ident)
        while frame is not None:
            if frame.f_code.co_name == "_lock_unlock_module" and frame.f_locals.get("name") == name:
                return True
            frame = frame.f_back
        time.sleep(0.01)
    return False
