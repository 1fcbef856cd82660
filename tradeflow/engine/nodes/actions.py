"""Action nodes: they change the world (orders) or report on it (``log``).

Orders are idempotent per execution and block: ``place_order`` sends
``ctx.client_order_id(block.id)``. When a previous run recorded the block's intent,
the order may exist already: ``place_order`` first asks the exchange for it by that
client order id (what real venues allow) and adopts it, so a resumed or taken-over
execution never trades twice, even on a venue that does not deduplicate.

Every order the engine places passes the pre-trade checks of its scopes first (see
:mod:`tradeflow.engine.pretrade`): a denied one never reaches the venue, and the node
ends normally with ``status: "denied"``, its ``reason`` and ``denial`` (never an error,
so never retried); an adopted order is not checked again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tradeflow.domain.emergency import checked_scope
from tradeflow.domain.errors import (
    InvalidRequest,
    OrderDenied,
    OrderRejected,
    TradeflowError,
    describe,
)
from tradeflow.domain.limits import shown
from tradeflow.domain.records import Scope
from tradeflow.domain.risk import Denial
from tradeflow.domain.trading import (
    ActionEffect,
    Order,
    OrderEffect,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    order_effect,
)
from tradeflow.engine.model import Block
from tradeflow.engine.nodes._checks import (
    Problems,
    all_checks,
    is_positive,
    require_given,
    require_positive,
    require_symbol,
)
from tradeflow.engine.nodes.registry import ExecutionContext, Prop, node
from tradeflow.engine.pretrade import deny, local_check

__all__ = ["cancel_open_orders", "cancel_order", "log", "place_order"]

_SIDES = ("buy", "sell")
_SWEEPS = 4
"""Sweeps ``cancel_open_orders`` makes while some cancel fails (each finds only what
still rests)."""
_SWEEP_PAUSE = 0.1
"""Seconds before the second sweep, doubling before each further one."""
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _check_limit_price(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    if props["order_type"] != "limit" or props["limit_price"] is not None or "price" in wired:
        return []
    return [
        (
            "properties.limit_price",
            "a limit_price or a wired 'price' input for a limit order",
            "neither",
        )
    ]


async def _place_order_effect(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> OrderEffect:
    """What the order would do to the venue's position (an order the node will reject
    anyway counts as opening)."""
    props = block.properties
    side, quantity = _side_and_quantity(props, inputs)
    if side not in _SIDES or not is_positive(quantity):
        return OrderEffect.OPENS
    position = await ctx.exchange.position(props["venue"], props["symbol"])
    return order_effect(side, float(quantity), position)


def _side_and_quantity(props: Mapping[str, Any], inputs: dict[str, Any]) -> tuple[Any, Any]:
    """The order's side and quantity: the wired inputs, else the properties (unchecked)."""
    return inputs.get("side", props["side"]), inputs.get("quantity", props["quantity"])


@node(
    "actions",
    "place_order",
    properties={
        "symbol": Prop("string", required=True, doc="BASE/QUOTE, e.g. BTC/USDT."),
        "side": Prop("string", choices=_SIDES, doc="Unless a 'side' input is wired."),
        "quantity": Prop("number", doc="Base-asset amount (> 0), unless 'quantity' is wired."),
        "order_type": Prop("string", default="market", choices=("market", "limit")),
        "limit_price": Prop("number", doc="For limit orders, unless 'price' is wired."),
        "venue": Prop("string", default="paper"),
    },
    inputs={"side": False, "quantity": False, "price": False},
    outputs=(
        "order_id",
        "client_order_id",
        "status",
        "filled_quantity",
        "avg_price",
        "reason",
        "denial",
    ),
    check=all_checks(
        require_symbol,
        require_given("side", "quantity"),
        require_positive("quantity", "limit_price"),
        _check_limit_price,
    ),
    order_effect=_place_order_effect,
)
async def place_order(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Place an order; wired ``side``, ``quantity`` and ``price`` override the properties.

    The configured pre-trade limits of the execution's scopes apply first: an order they
    deny never reaches the venue and ends the node with ``status`` ``denied``, the
    ``reason`` and the ``denial`` (check, scope, target, value, threshold), both ``None``
    otherwise. Branch on ``status`` downstream."""
    props = block.properties
    client_order_id = ctx.client_order_id(block.id)
    side, quantity = _side_and_quantity(props, inputs)
    order_type = props["order_type"]
    limit_price = inputs.get("price", props["limit_price"]) if order_type == "limit" else None
    problem = _order_problem(side, quantity, order_type, limit_price)
    if problem is not None:
        raise OrderRejected(client_order_id, f"block {block.id!r}: {problem}")
    venue, symbol = props["venue"], props["symbol"]
    quantity = float(quantity)
    limit_price = None if limit_price is None else float(limit_price)
    order = None
    if block.id in ctx.intents:
        # Adopted before any check: the order a previous run placed stands as it is.
        order = await ctx.exchange.get_order(venue, client_order_id)
        if order is not None:
            ctx.log.info("order.adopted", block_id=block.id, client_order_id=client_order_id)
    if order is None:
        placed = await _checked_place(
            ctx,
            OrderRequest(
                client_order_id=client_order_id,
                venue=venue,
                symbol=symbol,
                side=Side(side),
                quantity=quantity,
                order_type=OrderType(order_type),
                limit_price=limit_price,
                # What a halt's cancel-on-halt finds the order by (the base executor's
                # executions have no workflow id: "").
                workflow_id=ctx.workflow_id or None,
                bot_id=ctx.bot_id,
                strategy_id=ctx.strategy_id,
            ),
        )
        if isinstance(placed, Denial):
            return deny(ctx, block.id, client_order_id, placed)
        order = placed
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "status": str(order.status),
        "filled_quantity": order.filled_quantity,
        "avg_price": order.avg_price,
        "reason": None,
        "denial": None,
    }


async def _checked_place(ctx: ExecutionContext, request: OrderRequest) -> Order | Denial:
    """``request`` placed if the pre-trade limits of the execution's scopes allow it: the
    local checks here, the shared ones by the exchange's ledger (``request`` carries their
    rules) in the step that would store it. The order, or why it was denied."""
    limits = ctx.risk.pre_trade_limits(ctx.ids)
    if limits.local:
        denial = await local_check(
            ctx,
            limits.local,
            venue=request.venue,
            symbol=request.symbol,
            side=request.side.value,
            quantity=request.quantity,
            limit_price=request.limit_price,
        )
        if denial is not None:
            # A retry of this block after an ambiguous failure (a timeout, a lost reply)
            # may find its order placed: the order stands, never a denial beside it.
            try:
                placed = await ctx.exchange.get_order(request.venue, request.client_order_id)
            except Exception as exc:  # no answer: the denial stands (nothing was sent now)
                ctx.log.warning(
                    "order.lookup_failed",
                    client_order_id=request.client_order_id,
                    error=describe(exc),
                )
                return denial
            return denial if placed is None else placed
    if limits.rules:
        request = replace(request, rules=limits.rules)
    try:
        return await ctx.exchange.place_order(request)
    except OrderDenied as denied:
        return Denial.of(denied)


def _order_problem(side: Any, quantity: Any, order_type: str, limit_price: Any) -> str | None:
    """Why the resolved order values cannot make an order, or ``None`` if they can."""
    if side not in _SIDES:
        return f"side must be 'buy' or 'sell', found {side!r}"
    if not is_positive(quantity):
        return f"quantity must be a finite number > 0, found {quantity!r}"
    if order_type == "limit" and not is_positive(limit_price):
        return f"a limit order needs a price > 0, found {limit_price!r}"
    return None


@node(
    "actions",
    "cancel_order",
    properties={
        "venue": Prop("string", default="paper"),
        "client_order_id": Prop("string", doc="Unless a 'client_order_id' input is wired."),
    },
    inputs={"client_order_id": False},
    outputs=("status", "client_order_id"),
    check=require_given("client_order_id"),
    effect=ActionEffect.CANCEL,
)
async def cancel_order(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Cancel an order by client order id (wire it from a ``place_order`` block)."""
    client_order_id = inputs.get("client_order_id", block.properties["client_order_id"])
    if not isinstance(client_order_id, str) or not client_order_id:
        raise InvalidRequest(f"{block.id}.client_order_id", "a client order id", client_order_id)
    order = await ctx.exchange.cancel_order(block.properties["venue"], client_order_id)
    return {"status": str(order.status), "client_order_id": order.client_order_id}


def _check_scope_target(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    """``target`` fits ``scope`` as in a halt (none for global, an id otherwise)."""
    try:
        checked_scope(props["scope"], props["target"])
    except InvalidRequest as exc:
        return [(f"properties.{exc.field}", exc.expected, shown(exc.found))]
    return []


@node(
    "actions",
    "cancel_open_orders",
    properties={
        "venue": Prop("string", default="paper"),
        "scope": Prop("string", required=True, choices=tuple(s.value for s in Scope)),
        "target": Prop("string", doc="The strategy, bot or workflow id; none for global."),
    },
    outputs=("cancelled", "count"),
    check=_check_scope_target,
    effect=ActionEffect.CANCEL,
)
async def cancel_open_orders(
    ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Cancel every resting order on ``venue`` placed for ``scope``/``target`` (every one
    for global): what a halt with ``cancel_orders`` runs. ``cancelled`` lists the client
    order ids it cancelled (one that filled meanwhile is left as it is). Run again, it
    finds only what still rests."""
    props = block.properties
    venue, scope, target = props["venue"], Scope(props["scope"]), props["target"]
    cancelled: list[str] = []
    for sweep in range(_SWEEPS):
        failed = []
        for order in await ctx.exchange.open_orders(venue, scope, target):
            try:
                done = await ctx.exchange.cancel_order(venue, order.client_order_id)
            except Exception as exc:  # one order's failure must not leave the others resting
                failed.append(f"{order.client_order_id}: {describe(exc)}")
                continue
            if done.status is OrderStatus.CANCELLED:
                cancelled.append(done.client_order_id)
        if not failed:
            return {"cancelled": cancelled, "count": len(cancelled)}
        if sweep + 1 < _SWEEPS:
            ctx.log.warning("cancel_open_orders.retrying", block_id=block.id, failed=len(failed))
            await asyncio.sleep(_SWEEP_PAUSE * 2**sweep)  # a pause between sweeps, not a sync
    raise TradeflowError(
        f"block {block.id!r}: {len(failed)} resting orders not cancelled after {_SWEEPS}"
        f" sweeps ({len(cancelled)} were): {'; '.join(failed[:5])}"
    )


@node(
    "actions",
    "log",
    properties={
        "message": Prop("string", required=True, doc="Text; {name} is replaced by input 'name'."),
        "level": Prop("string", default="info", choices=("debug", "info", "warning", "error")),
    },
    variadic_inputs=True,
    outputs=("message",),
    effect=ActionEffect.NONE,
)
async def log(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Log ``message`` with each ``{name}`` replaced by input ``name`` (unknown ones kept)."""
    template: str = block.properties["message"]
    message = (
        _PLACEHOLDER.sub(lambda m: str(inputs[m[1]]) if m[1] in inputs else m[0], template)
        if "{" in template
        else template
    )
    getattr(ctx.log, block.properties["level"])("workflow.log", block_id=block.id, message=message)
    return {"message": message}
