"""Checks every built-in node type shares: property checks for validation
(``require_*``, :func:`all_checks`) and :func:`number` for numeric inputs at run time."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tradeflow.domain.errors import InvalidRequest
from tradeflow.domain.numbers import is_positive
from tradeflow.domain.trading import split_symbol
from tradeflow.engine.model import Block
from tradeflow.engine.nodes.registry import PropsCheck

__all__ = [
    "Problems",
    "all_checks",
    "is_positive",
    "number",
    "require_given",
    "require_one_of",
    "require_positive",
    "require_symbol",
]

Problems = list[tuple[str, str, str]]
"""``(field, expected, found)`` problems, as a :data:`PropsCheck` returns them."""


def all_checks(*checks: PropsCheck) -> PropsCheck:
    """One check running each of ``checks`` and reporting every problem found."""

    def check(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
        return [problem for each in checks for problem in each(props, wired)]

    return check


def require_one_of(*names: str) -> PropsCheck:
    """At least one of the ``names`` properties is set."""
    expected = " and/or ".join(repr(n) for n in names)

    def check(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
        if any(props[n] is not None for n in names):
            return []
        return [(f"properties.{names[0]}", expected, "neither")]

    return check


def require_given(*names: str) -> PropsCheck:
    """Each of ``names`` is set as a property or wired as the input of the same name."""

    def check(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
        return [
            (f"properties.{n}", f"a {n!r} property or a wired {n!r} input", "neither")
            for n in names
            if n not in wired and props[n] is None
        ]

    return check


def require_positive(*names: str) -> PropsCheck:
    """Each of the ``names`` properties, when set, is a finite number > 0."""

    def check(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
        return [
            (f"properties.{n}", "a number > 0", repr(props[n]))
            for n in names
            if props[n] is not None and not is_positive(props[n])
        ]

    return check


def require_symbol(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    """The ``symbol`` property is ``BASE/QUOTE``."""
    symbol = props["symbol"]
    if isinstance(symbol, str) and split_symbol(symbol) is not None:
        return []
    return [("properties.symbol", "a BASE/QUOTE symbol such as 'BTC/USDT'", repr(symbol))]


def number(block: Block, field: str, value: Any) -> float:
    """``value`` as a float; raises ``InvalidRequest`` naming the block and field if it is
    not a number (booleans and NaN are not)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    raise InvalidRequest(f"{block.id}.{field}", "a number (not NaN)", value)
