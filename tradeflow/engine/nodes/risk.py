"""Risk nodes: each checks one limit through ``ctx.risk.check_risk_limit``.

The node's threshold meets the limits configured on the same type for the execution's
scopes (global, its strategy, bot and workflow; ``SetRiskLimit``): the strictest of them
all applies, so a node can tighten a configured limit, never loosen it (a node allowing
a position of 5 under a bot limit of 2 checks against 2; a node allowing 1 under it
checks against 1). A breach's ``RiskLimitExceeded`` names the threshold that applied;
the ``threshold`` output of a pass is the node's own.

A breach raises ``RiskLimitExceeded`` (after halting trading when ``auto_halt`` is set
and the deciding configured limit does not say otherwise); the node lets it propagate so
the execution stops. A passing check outputs ``ok`` (always true), the ``value`` checked
and the ``threshold``. Each limit type has its direction: ``max_position`` breaches when
the absolute value is above the threshold, ``max_order_notional`` when above,
``daily_loss`` when below.

The engine checks every order against the configured pre-trade limits anyway (see
:mod:`tradeflow.engine.pretrade`), whether or not the workflow has risk nodes: these
nodes are for workflows that want to stop, or branch, before they get to an order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradeflow.domain.errors import InvalidRequest
from tradeflow.engine.model import Block
from tradeflow.engine.nodes._checks import (
    Problems,
    all_checks,
    number,
    require_given,
    require_positive,
    require_symbol,
)
from tradeflow.engine.nodes.registry import ExecutionContext, Prop, node

__all__ = ["daily_loss_limit", "max_order_notional", "max_position"]

_AUTO_HALT = Prop("boolean", default=True, doc="Halt all trading when the limit is breached.")


async def _check_limit(
    ctx: ExecutionContext, block: Block, limit_type: str, value: float, threshold: float
) -> dict[str, Any]:
    await ctx.risk.check_risk_limit(
        limit_type, value, threshold, block.properties["auto_halt"], ids=ctx.ids
    )
    return {"ok": True, "value": value, "threshold": threshold}


def _check_side_with_quantity(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    if "quantity" not in wired or "side" in wired or props["side"] is not None:
        return []
    return [("properties.side", "a side (property or input) for the wired quantity", "neither")]


@node(
    "risk",
    "max_position",
    properties={
        "symbol": Prop("string", required=True, doc="BASE/QUOTE, e.g. BTC/USDT."),
        "venue": Prop("string", default="paper"),
        "limit": Prop("number", required=True, doc="Largest allowed abs(net position), > 0."),
        "side": Prop("string", choices=("buy", "sell"), doc="Side of the proposed quantity."),
        "auto_halt": _AUTO_HALT,
    },
    inputs={"quantity": False, "side": False},
    outputs=("ok", "value", "threshold"),
    check=all_checks(require_symbol, require_positive("limit"), _check_side_with_quantity),
)
async def max_position(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Net position after the proposed ``quantity`` (if wired) stays within ``limit``."""
    props = block.properties
    value = await ctx.exchange.position(props["venue"], props["symbol"])
    quantity = inputs.get("quantity")
    if quantity is not None:
        proposed = number(block, "inputs.quantity", quantity)
        side = inputs.get("side", props["side"])
        if side == "buy":
            value += proposed
        elif side == "sell":
            value -= proposed
        else:
            raise InvalidRequest(f"{block.id}.side", "'buy' or 'sell'", side)
    return await _check_limit(ctx, block, "max_position", value, float(props["limit"]))


@node(
    "risk",
    "max_order_notional",
    properties={
        "limit": Prop("number", required=True, doc="Largest allowed quantity * price, > 0."),
        "quantity": Prop("number", doc="Unless a 'quantity' input is wired."),
        "price": Prop("number", doc="Unless a 'price' input is wired."),
        "auto_halt": _AUTO_HALT,
    },
    inputs={"quantity": False, "price": False},
    outputs=("ok", "value", "threshold"),
    check=all_checks(require_positive("limit"), require_given("quantity", "price")),
)
async def max_order_notional(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """``quantity * price`` of the proposed order stays within ``limit``."""
    props = block.properties
    quantity = number(block, "quantity", inputs.get("quantity", props["quantity"]))
    price = number(block, "price", inputs.get("price", props["price"]))
    return await _check_limit(
        ctx, block, "max_order_notional", quantity * price, float(props["limit"])
    )


@node(
    "risk",
    "daily_loss_limit",
    properties={
        "max_loss": Prop("number", required=True, doc="Largest allowed loss today, > 0."),
        "auto_halt": _AUTO_HALT,
    },
    inputs={"pnl": False},
    outputs=("ok", "value", "threshold"),
    check=require_positive("max_loss"),
)
async def daily_loss_limit(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Today's P&L (the ``pnl`` input, or the exchange's realized P&L) stays above
    ``-max_loss``."""
    pnl = inputs.get("pnl")
    value = (
        await ctx.exchange.realized_pnl_today() if pnl is None else number(block, "inputs.pnl", pnl)
    )
    return await _check_limit(ctx, block, "daily_loss", value, -float(block.properties["max_loss"]))
