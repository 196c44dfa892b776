"""Small graph algorithms over node/task DAGs: topological order, cycles, critical paths.

networkx is a dependency (``LogicalPlan.to_networkx()``), but importing it costs about 0.25 s on
this class of machine, a third of a small job's budget; these few functions keep it off the hot
path.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, List, TypeVar

from smallpond.errors import PlanError

T = TypeVar("T", bound=Hashable)


def topological_order(roots: Iterable[T], deps: Callable[[T], Iterable[T]]) -> List[T]:
    """Every node reachable from ``roots``, dependencies first (post-order, deterministic).

    Raises :class:`PlanError` showing the cycle path if there is one.
    """
    order: List[T] = []
    state: Dict[T, int] = {}  # 1 = on stack, 2 = done
    for root in roots:
        if state.get(root) == 2:
            continue
        stack = [(root, iter(deps(root)))]
        state[root] = 1
        path = [root]
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
                order.append(node)
                continue
            s = state.get(child)
            if s == 1:
                cycle = path[path.index(child) :] + [child]
                raise PlanError("the plan has a cycle: " + " -> ".join(repr(n) for n in cycle))
            if s is None:
                state[child] = 1
                stack.append((child, iter(deps(child))))
                path.append(child)
    return order


def critical_path_lengths(order: List[T], deps: Callable[[T], Iterable[T]], cost: Callable[[T], float]) -> Dict[T, float]:
    """For each node, the longest total cost of a path from it to a sink (itself included).

    ``order`` must be topological (dependencies first). Used as a scheduling priority: tasks
    on the longest remaining chain start first.
    """
    consumers: Dict[T, List[T]] = {n: [] for n in order}
    for n in order:
        for d in deps(n):
            consumers.setdefault(d, []).append(n)
    length: Dict[T, float] = {}
    for n in reversed(order):
        length[n] = cost(n) + max((length[c] for c in consumers.get(n, [])), default=0.0)
    return length
