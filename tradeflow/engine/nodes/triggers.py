"""Trigger nodes: they fire (``triggered``) when a market value crosses a line.

``triggered`` is their gate: when it is false every dependent is skipped.
"""

from __future__ import annotations

from typing import Any

from tradeflow.domain.errors import InvalidRequest
from tradeflow.engine.model import Block
from tradeflow.engine.nodes._checks import number, require_one_of
from tradeflow.engine.nodes.registry import ExecutionContext, Prop, node

__all__ = ["spread", "threshold"]


@node(
    "triggers",
    "threshold",
    properties={
        "above": Prop("number", doc="Fire when the value is strictly above this."),
        "below": Prop("number", doc="Fire when the value is strictly below this."),
    },
    inputs={"value": True},
    outputs=("triggered", "value"),
    gate="triggered",
    pure=True,
    check=require_one_of("above", "below"),
)
async def threshold(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Fire when ``value`` is above ``above`` or below ``below``."""
    value = number(block, "inputs.value", inputs["value"])
    above = block.properties["above"]
    below = block.properties["below"]
    triggered = (above is not None and value > above) or (below is not None and value < below)
    return {"triggered": triggered, "value": value}


@node(
    "triggers",
    "spread",
    properties={
        "min_spread": Prop("number", doc="Fire when abs(a - b) reaches this (price units)."),
        "min_spread_bps": Prop("number", doc="Fire when abs(a - b) / min(a, b) reaches this (bp)."),
    },
    inputs={"a": True, "b": True},
    outputs=("triggered", "spread", "spread_bps", "direction"),
    gate="triggered",
    pure=True,
    check=require_one_of("min_spread", "min_spread_bps"),
)
async def spread(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Fire when prices ``a`` and ``b`` are at least ``min_spread`` or ``min_spread_bps`` apart."""
    a = number(block, "inputs.a", inputs["a"])
    b = number(block, "inputs.b", inputs["b"])
    lower = min(a, b)
    if lower <= 0:
        raise InvalidRequest(f"{block.id}.inputs", "prices a and b both > 0", (a, b))
    diff = a - b
    gap = abs(diff)
    bps = gap / lower * 1e4
    min_spread = block.properties["min_spread"]
    min_bps = block.properties["min_spread_bps"]
    return {
        "triggered": (min_spread is not None and gap >= min_spread)
        or (min_bps is not None and bps >= min_bps),
        "spread": diff,
        "spread_bps": bps,
        "direction": "a_over_b" if diff > 0 else "b_over_a" if diff < 0 else "flat",
    }
