"""Where upstream smallpond 0.15 kept the planner: ``from smallpond.logical.planner import Planner``.

The planner lives in :mod:`smallpond.execution.planner` (the logical layer imports nothing from
the execution layer); this module forwards its public names on first use, so importing
``smallpond.logical`` stays light.
"""

from __future__ import annotations

_FORWARDED = ("Planner", "ExecutionPlan")


def __getattr__(name: str):
    if name in _FORWARDED:
        from smallpond.execution import planner

        return getattr(planner, name)
    raise AttributeError(f"module 'smallpond.logical.planner' has no attribute {name!r}")
