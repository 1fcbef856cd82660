"""Condition nodes: boolean ``result`` gates (``compare``, ``all``, ``any``).

A false ``result`` skips every dependent except ``all``/``any``, which receive
false gate values so they can combine branches.

This module also holds the small checks every built-in node shares: property
checks for validation (``require_*``, :func:`all_checks`) and :func:`number`
for numeric inputs at run time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from tradeflow.errors import InvalidRequest
from tradeflow.trading.prices import split_symbol
from tradeflow.workflow.model import Block
from tradeflow.workflow.nodes.registry import ExecutionContext, NodeFn, Prop, PropsCheck, node

__all__ = [
    "Problems",
    "all_",
    "all_checks",
    "any_",
    "compare",
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


def is_positive(value: Any) -> bool:
    """``value`` is a finite number > 0 (booleans are not numbers)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def number(block: Block, field: str, value: Any) -> float:
    """``value`` as a float; raises ``InvalidRequest`` naming the block and field if it is
    not a number (booleans and NaN are not)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    raise InvalidRequest(f"{block.id}.{field}", "a number (not NaN)", value)


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_ORDERING = frozenset({">", ">=", "<", "<="})


def _check_compare(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    if "right" in wired or props["value"] is not None:
        return []
    return [("properties.value", "a value to compare with, or a wired 'right' input", "neither")]


@node(
    "conditions",
    "compare",
    properties={
        "op": Prop("string", required=True, choices=tuple(_OPERATORS), doc="Comparison."),
        "value": Prop("any", doc="Right-hand side when no 'right' input is wired."),
    },
    inputs={"left": True, "right": False},
    outputs=("result",),
    gate="result",
    pure=True,
    check=_check_compare,
)
async def compare(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """``left <op> right``; ``right`` is the wired input or else the ``value`` property."""
    op = block.properties["op"]
    left = inputs["left"]
    right = inputs["right"] if "right" in inputs else block.properties["value"]
    if op in _ORDERING and not (_is_number(left) and _is_number(right)):
        raise InvalidRequest(
            f"{block.id}.inputs", f"numbers on both sides of {op!r}", (left, right)
        )
    return {"result": bool(_OPERATORS[op](left, right))}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_wired(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    return [] if wired else [("inputs", "at least one wired input", "none")]


def _combinator(type_: str, combine: Callable[[Any], bool]) -> NodeFn:
    """Register a node whose ``result`` folds the truth of every input with ``combine``."""

    async def run(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"result": combine(inputs.values())}

    run.__doc__ = f"True when {type_} of the inputs are truthy (false gates included)."
    return node(
        "conditions",
        type_,
        variadic_inputs=True,
        accepts_gates=True,
        outputs=("result",),
        gate="result",
        check=_check_wired,
        pure=True,
    )(run)


all_ = _combinator("all", all)
any_ = _combinator("any", any)
