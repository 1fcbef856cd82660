"""Pre-trade checks, as ``place_order`` runs them on every order before it reaches a venue.

The engine checks every order, whether or not its workflow has risk nodes, against the
limits configured for its scopes (``ctx.risk.pre_trade_limits(ctx.ids)``: the emergency
control's local view, no round trip; with none configured that is one call and one truth
test). :mod:`tradeflow.domain.risk` holds the rules:

- the **local checks** (``max_order_notional``, ``price_collar_bps``) are judged here, by
  :func:`local_check`, against the last quote of the order's venue and symbol (the price
  the paper exchange fills at): an order is valued at the highest price it can trade at
  (:func:`~tradeflow.domain.risk.notional_price`: a market order at the touch, a buy
  limit at its limit price, a sell limit at its limit price or the bid, whichever is
  higher), and the collar measures a limit price's distance from the mid. No price to be had (the feed fails) denies (fail closed);
- the **shared checks** (``max_position``, ``max_open_orders``, ``order_rate``) go with
  the order to the exchange (``OrderRequest.rules``), whose ledger judges them in the step
  that would store it and raises ``OrderDenied``; N replicas cannot overshoot a limit.

A denial is an outcome, not a failure: the node ends normally with
:func:`denied_outputs` (``status: "denied"``, the ``reason`` and the ``denial``), so no
retry or breaker ever sees it, and its dependents decide what follows. :func:`deny` logs
it and audits it (``ctx.risk.record_order_denied``, in the background); the durable journal adds the
``order_denied`` event and counts it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tradeflow.domain.errors import describe
from tradeflow.domain.records import RiskLimit
from tradeflow.domain.risk import Denial, local_denial
from tradeflow.domain.trading import Quote

if TYPE_CHECKING:
    from tradeflow.engine.nodes.registry import ExecutionContext

__all__ = ["DENIED", "denial_data", "denied_outputs", "deny", "local_check"]

DENIED = "denied"
"""The ``status`` output of a denied order."""

_AUDITING: set[asyncio.Task[None]] = set()
"""Denial audits in flight, in this process."""


async def local_check(
    ctx: ExecutionContext,
    local: Sequence[RiskLimit],
    *,
    venue: str,
    symbol: str,
    side: str,
    quantity: float,
    limit_price: float | None,
) -> Denial | None:
    """The first of the ``local`` limits (``max_order_notional``, ``price_collar_bps``)
    the order fails, or ``None``. The last quote is asked for only when a check needs it."""
    touch = mid = None
    sell = side == "sell"
    if _needs_price(local, limit_price, sell=sell):
        quote = await _reference_quote(ctx, venue, symbol)
        if quote is not None:
            touch = quote.bid if sell else quote.ask
            mid = quote.mid
    return local_denial(
        local, quantity=quantity, limit_price=limit_price, touch=touch, mid=mid, sell=sell
    )


def _needs_price(local: Sequence[RiskLimit], limit_price: float | None, *, sell: bool) -> bool:
    """A market order's notional needs the touch, and so does a sell limit's (it fills at
    the bid when that is higher); a limit order's collar needs the mid."""
    if limit_price is not None and any(limit.limit_type == "price_collar_bps" for limit in local):
        return True
    return (limit_price is None or sell) and any(
        limit.limit_type == "max_order_notional" for limit in local
    )


async def _reference_quote(ctx: ExecutionContext, venue: str, symbol: str) -> Quote | None:
    """The last quote of ``venue``/``symbol``, else a new one; ``None`` if none can be had
    (the check that needed it then denies)."""
    quote = ctx.prices.last_quote(venue, symbol)
    if quote is not None:
        return quote
    try:
        return await ctx.prices.quote(venue, symbol)
    except Exception as exc:  # any failure: no price, and the check fails closed
        ctx.log.warning("pretrade.no_price", venue=venue, symbol=symbol, error=describe(exc))
        return None


def denial_data(denial: Denial) -> dict[str, Any]:
    """The ``denial`` output: ``check``, ``scope``, ``target``, ``value`` (``None`` when
    no price could value the order) and ``threshold``."""
    value = denial.value
    return {
        "check": denial.check,
        "scope": denial.scope.value,
        "target": denial.target,
        "value": value if math.isfinite(value) else None,
        "threshold": denial.threshold,
    }


def denied_outputs(client_order_id: str, denial: Denial) -> dict[str, Any]:
    """``place_order``'s outputs for an order that never reached the venue."""
    return {
        "order_id": None,
        "client_order_id": client_order_id,
        "status": DENIED,
        "filled_quantity": 0.0,
        "avg_price": None,
        "reason": denial.reason,
        "denial": denial_data(denial),
    }


def deny(
    ctx: ExecutionContext, block_id: str, client_order_id: str, denial: Denial
) -> dict[str, Any]:
    """Log ``denial`` and start its audit in the background (``ctx.audits``: outside the
    node's timeout, so a slow emergency service never turns a denial into a retried
    failure); the node's outputs. A failed audit is logged and changes nothing: the
    denial stands, and it is in the execution's own record and events."""
    ctx.log.warning(
        "order.denied",
        block_id=block_id,
        client_order_id=client_order_id,
        check=denial.check,
        scope=denial.scope.value,
        target=denial.target,
        reason=denial.reason,
    )
    task = asyncio.create_task(
        _audit(ctx, block_id, client_order_id, denial), name=f"audit-{client_order_id}"
    )
    # Held until done (the loop keeps only weak references): one still running when its
    # execution stops waiting for it goes on by itself.
    _AUDITING.add(task)
    task.add_done_callback(_AUDITING.discard)
    ctx.audits.append(task)
    return denied_outputs(client_order_id, denial)


async def _audit(
    ctx: ExecutionContext, block_id: str, client_order_id: str, denial: Denial
) -> None:
    try:
        await ctx.risk.record_order_denied(
            denial,
            ids=ctx.ids,
            execution_id=ctx.execution_id,
            node_id=block_id,
            client_order_id=client_order_id,
        )
    except Exception as exc:  # an audit's failure must not turn the denial into a crash
        ctx.log.error(
            "order.denied.audit_failed",
            block_id=block_id,
            client_order_id=client_order_id,
            error=describe(exc),
        )
