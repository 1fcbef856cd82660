"""Ordering of a workflow's dependency graph: topological order, cycles, chain depth.

A graph is given as ``ids`` (every node, in definition order) and ``upstream``
(node id -> ids it reads from; a node absent from it reads from nothing).
Every function here is iterative, so a graph of any depth costs no recursion.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["find_cycle", "longest_chain", "topological_order"]


def topological_order(ids: Sequence[str], upstream: Mapping[str, Iterable[str]]) -> list[str]:
    """Ids ordered so that each comes after everything it reads from.

    Kahn's algorithm; among the nodes ready at once, the one earliest in ``ids``
    goes first, so the order is deterministic. Raises ``ValueError`` naming the
    cycle when there is one, or when ``upstream`` names an id not in ``ids``.
    """
    return [ids[n] for n in _ordered(ids, _positions(ids, upstream))]


def find_cycle(ids: Sequence[str], upstream: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as a path in data-flow order, or ``None`` when the graph is acyclic.

    ``["a", "b", "c", "a"]`` means ``b`` reads from ``a``, ``c`` from ``b`` and
    ``a`` from ``c``; a block wired to itself gives ``["a", "a"]``. The path
    starts at its block earliest in ``ids``, so the answer is deterministic.
    """
    cycle = _cycle(_positions(ids, upstream))
    return None if cycle is None else [ids[n] for n in cycle]


def longest_chain(ids: Sequence[str], upstream: Mapping[str, Iterable[str]]) -> int:
    """Blocks in the longest dependency chain (1 for a lone block, 0 for no blocks).

    Raises ``ValueError`` like :func:`topological_order` when the graph has a cycle.
    """
    ups = _positions(ids, upstream)
    depth = [0] * len(ids)
    for n in _ordered(ids, ups):
        depth[n] = 1 + max((depth[u] for u in ups[n]), default=0)
    return max(depth, default=0)


def _positions(ids: Sequence[str], upstream: Mapping[str, Iterable[str]]) -> list[list[int]]:
    """Each node's distinct upstream nodes as positions in ``ids``, in ``ids`` order."""
    position: dict[str, int] = {}
    for n, node_id in enumerate(ids):
        if node_id in position:
            raise ValueError(f"id {node_id!r} appears twice")
        position[node_id] = n
    ups: list[list[int]] = [[] for _ in ids]
    for node_id, deps in upstream.items():
        if node_id not in position:
            raise ValueError(f"unknown id {node_id!r} in upstream")
        found: set[int] = set()
        for dep in deps:
            if dep not in position:
                raise ValueError(f"{node_id!r} reads from unknown id {dep!r}")
            found.add(position[dep])
        ups[position[node_id]] = sorted(found)
    return ups


def _downstream(ups: list[list[int]]) -> list[list[int]]:
    downs: list[list[int]] = [[] for _ in ups]
    for n, deps in enumerate(ups):
        for u in deps:
            downs[u].append(n)
    return downs


def _ordered(ids: Sequence[str], ups: list[list[int]]) -> list[int]:
    """Kahn's algorithm over positions; a heap picks the earliest ready node."""
    downs = _downstream(ups)
    pending = [len(deps) for deps in ups]
    # Ascending positions already form a valid heap.
    ready = [n for n, count in enumerate(pending) if count == 0]
    order: list[int] = []
    while ready:
        n = heapq.heappop(ready)
        order.append(n)
        for d in downs[n]:
            pending[d] -= 1
            if pending[d] == 0:
                heapq.heappush(ready, d)
    if len(order) < len(ups):
        cycle = _cycle(ups) or []
        raise ValueError("dependency cycle: " + " -> ".join(ids[n] for n in cycle))
    return order


def _cycle(ups: list[list[int]]) -> list[int] | None:
    """Iterative depth-first search along data-flow edges for a back edge."""
    downs = _downstream(ups)
    unseen, on_path, done = 0, 1, 2
    state = [unseen] * len(ups)
    for root in range(len(ups)):
        if state[root] != unseen:
            continue
        state[root] = on_path
        path = [root]
        pending = [iter(downs[root])]
        while pending:
            for child in pending[-1]:
                if state[child] == on_path:
                    loop = path[path.index(child) :]
                    start = loop.index(min(loop))
                    loop = loop[start:] + loop[:start]
                    return [*loop, loop[0]]
                if state[child] == unseen:
                    state[child] = on_path
                    path.append(child)
                    pending.append(iter(downs[child]))
                    break
            else:
                state[path.pop()] = done
                pending.pop()
    return None
