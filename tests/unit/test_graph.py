"""Topological order, cycle finding and chain depth of dependency graphs."""

from __future__ import annotations

import pytest

from tradeflow.engine.graph import find_cycle, longest_chain, topological_order

DIAMOND_IDS = ["top", "left", "right", "bottom"]
DIAMOND_UPSTREAM = {"left": ["top"], "right": ["top"], "bottom": ["right", "left"]}


def test_diamond_orders_dependencies_first_and_ties_by_definition_order() -> None:
    """In a diamond, the two middle nodes keep their definition order."""
    assert topological_order(DIAMOND_IDS, DIAMOND_UPSTREAM) == ["top", "left", "right", "bottom"]


def test_ties_follow_definition_order_not_upstream_order() -> None:
    """Independent nodes come out in definition order whatever the mapping's order."""
    ids = ["c", "a", "b", "d"]
    upstream = {"d": ["b", "a", "c"], "b": [], "a": []}
    assert topological_order(ids, upstream) == ["c", "a", "b", "d"]


def test_ready_node_earlier_in_definition_jumps_ahead() -> None:
    """A node unblocked late but defined early goes before later-defined ready nodes."""
    ids = ["a", "b", "c", "d"]
    upstream = {"b": ["a"]}
    assert topological_order(ids, upstream) == ["a", "b", "c", "d"]


def test_duplicate_upstream_entries_count_once() -> None:
    """A node reading twice from the same upstream still gets ordered."""
    assert topological_order(["a", "b"], {"b": ["a", "a"]}) == ["a", "b"]


def test_topological_order_raises_naming_the_cycle() -> None:
    """A cyclic graph cannot be ordered; the error names the cycle."""
    with pytest.raises(ValueError, match="a -> b -> a"):
        topological_order(["a", "b"], {"a": ["b"], "b": ["a"]})


def test_unknown_ids_are_rejected() -> None:
    """Upstream references to ids that are not nodes raise ValueError."""
    with pytest.raises(ValueError, match="unknown id 'ghost'"):
        topological_order(["a"], {"a": ["ghost"]})
    with pytest.raises(ValueError, match="unknown id 'ghost'"):
        topological_order(["a"], {"ghost": ["a"]})


def test_duplicate_ids_are_rejected() -> None:
    """The same id twice in ids raises ValueError."""
    with pytest.raises(ValueError, match="appears twice"):
        topological_order(["a", "a"], {})


def test_find_cycle_returns_none_for_a_dag() -> None:
    """An acyclic graph has no cycle."""
    assert find_cycle(DIAMOND_IDS, DIAMOND_UPSTREAM) is None


def test_find_cycle_names_the_path_in_data_flow_order() -> None:
    """b reads a, c reads b, a reads c: the cycle reads a -> b -> c -> a."""
    upstream = {"a": ["c"], "b": ["a"], "c": ["b"], "d": ["c"]}
    assert find_cycle(["d", "a", "b", "c"], upstream) == ["a", "b", "c", "a"]


def test_find_cycle_starts_at_the_earliest_defined_member() -> None:
    """The reported path is rotated to begin at its earliest node in definition order."""
    upstream = {"a": ["c"], "b": ["a"], "c": ["b"]}
    assert find_cycle(["c", "b", "a"], upstream) == ["c", "a", "b", "c"]


def test_find_cycle_reports_a_self_loop() -> None:
    """A node reading from itself is a cycle of one."""
    assert find_cycle(["a", "b"], {"b": ["b"]}) == ["b", "b"]


def test_longest_chain_counts_blocks() -> None:
    """The diamond's longest chain has three blocks; a lone node has one; none has zero."""
    assert longest_chain(DIAMOND_IDS, DIAMOND_UPSTREAM) == 3
    assert longest_chain(["a"], {}) == 1
    assert longest_chain([], {}) == 0


def test_longest_chain_raises_on_a_cycle() -> None:
    """Depth is undefined for a cyclic graph."""
    with pytest.raises(ValueError, match="cycle"):
        longest_chain(["a"], {"a": ["a"]})


def test_very_deep_graphs_need_no_recursion() -> None:
    """A 100 000-long chain (and the same chain closed into a loop) is handled iteratively."""
    count = 100_000
    ids = [f"n{i}" for i in range(count)]
    chain = {ids[i]: [ids[i - 1]] for i in range(1, count)}
    assert topological_order(list(reversed(ids)), chain) == ids
    assert longest_chain(ids, chain) == count
    assert find_cycle(ids, chain) is None
    loop = {**chain, ids[0]: [ids[-1]]}
    cycle = find_cycle(ids, loop)
    assert cycle is not None
    assert cycle[0] == cycle[-1] == "n0"
    assert len(cycle) == count + 1
