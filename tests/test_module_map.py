"""MODULES.md, the module map, names every module of the package and no module that is gone."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_module_is_in_the_module_map():
    pkg = os.path.join(ROOT, "smallpond")
    modules = {
        os.path.relpath(os.path.join(d, f), pkg).replace(os.sep, "/")
        for d, _, files in os.walk(pkg)
        for f in files
        if f.endswith(".py")
    }
    with open(os.path.join(ROOT, "MODULES.md"), encoding="utf-8") as f:
        listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", f.read(), re.M))
    assert not modules - listed, f"modules missing from MODULES.md: {sorted(modules - listed)}"
    assert not listed - modules, f"MODULES.md lists modules that do not exist: {sorted(listed - modules)}"
