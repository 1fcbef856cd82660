"""Condition nodes: boolean ``result`` gates (``compare``, ``all``, ``any``).

A false ``result`` skips every dependent except ``all``/``any``, which receive
false gate values so they can combine branches.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from tradeflow.domain.errors import InvalidRequest
from tradeflow.engine.model import Block
from tradeflow.engine.nodes._checks import Problems
from tradeflow.engine.nodes.registry import ExecutionContext, NodeFn, Prop, node

__all__ = ["all_", "any_", "compare"]

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
