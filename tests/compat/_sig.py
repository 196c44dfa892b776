"""Compare a callable's signature with the one recorded for upstream smallpond 0.15.

An expected signature is written as Python parameter text, e.g.
``"ctx, input_deps, npartitions, dimension=None, *, cpu_limit=1"``. Our signature matches when:

* every upstream parameter exists with the same name, kind (positional-or-keyword, keyword-only,
  ``*args``, ``**kwargs``) and default;
* upstream's positional parameters come first, in the same order (so positional calls bind the
  same way);
* any extra parameter of ours is optional (has a default, or is ``*args``/``**kwargs``) and is not
  placed before one of upstream's positional parameters.
"""

from __future__ import annotations

import inspect
from typing import Callable, List

from smallpond.common import GB, KB, MB, TB

_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def expected_signature(text: str) -> inspect.Signature:
    ns = {"KB": KB, "MB": MB, "GB": GB, "TB": TB}
    exec(f"def _f({text}): pass", ns)  # noqa: S102 - test-only, literal text from the test file
    return inspect.signature(ns["_f"])


def signature_problems(func: Callable, text: str, *, skip_self: bool = True) -> List[str]:
    """A list of human-readable mismatches (empty when compatible)."""
    ours = inspect.signature(func)
    params = list(ours.parameters.values())
    if skip_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    exp = list(expected_signature(text).parameters.values())
    problems = []
    by_name = {p.name: p for p in params}
    for e in exp:
        o = by_name.get(e.name)
        if o is None:
            if e.kind is inspect.Parameter.VAR_KEYWORD and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                continue
            if e.kind is inspect.Parameter.VAR_POSITIONAL and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
                continue
            problems.append(f"missing parameter {e.name!r}")
            continue
        if o.kind != e.kind:
            problems.append(f"{e.name!r}: kind {o.kind.description}, upstream {e.kind.description}")
        if e.default is not _EMPTY or o.default is not _EMPTY:
            if o.default is _EMPTY:
                problems.append(f"{e.name!r}: required, upstream defaults to {e.default!r}")
            elif e.default is _EMPTY:
                pass  # we made an upstream-required parameter optional: still compatible
            elif o.default != e.default or type(o.default) is not type(e.default):
                problems.append(f"{e.name!r}: default {o.default!r}, upstream {e.default!r}")
    exp_pos = [p.name for p in exp if p.kind in _POSITIONAL]
    our_pos = [p.name for p in params if p.kind in _POSITIONAL]
    if our_pos[: len(exp_pos)] != exp_pos:
        problems.append(f"positional order {our_pos}, upstream {exp_pos}")
    exp_names = {p.name for p in exp}
    for p in params:
        if p.name in exp_names or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.default is _EMPTY:
            problems.append(f"extra required parameter {p.name!r}")
    return problems
