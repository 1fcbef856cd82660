"""Pre-trade checks in embedded runs (issue 10): the engine checks every ``place_order``
against the limits configured for the execution's scopes, whether or not the workflow has
risk nodes. Each check allows what it should and denies what it should, on every scope
(global, strategy, bot, workflow), and a limit of another scope never applies. A denial
is an outcome: the node ends normally with ``status: "denied"`` and its reason, its
dependents run and branch on it, an ``order_denied`` event and an audit entry record it,
it is never retried, and the order never reaches the exchange. A resumed execution gets
the order it placed before the crash back, never a denial. Risk nodes meet the configured
limits: the stricter threshold wins.

Prices are one fixed quote (bid 100, ask 102: mid 101) and the clock is a
:class:`~kit.ManualClock`, so every figure below is exact.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from kit import ManualClock
from workflows import block

from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.errors import RiskLimitExceeded, UnavailableError
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionStatus,
    Scope,
    StateBatch,
)
from tradeflow.domain.risk import LimitOptions
from tradeflow.infrastructure.factory import Infrastructure
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

VENUE, BTC = "paper", "BTC/USDT"
BID, ASK = 100.0, 102.0
MID = (BID + ASK) / 2
WORKFLOW, BOT, STRATEGY = "wf", "bot-1", "strat-1"
OTHER = "other"
TARGETS: dict[Scope, str | None] = {
    Scope.GLOBAL: None,
    Scope.STRATEGY: STRATEGY,
    Scope.BOT: BOT,
    Scope.WORKFLOW: WORKFLOW,
}
"""The target of each scope the test executions belong to."""
PLACE = "place"
"""The block of :func:`order` that places the order."""


# -- fixtures and helpers -------------------------------------------------------------------


def fixed_prices(clock: ManualClock) -> ReplayPriceFeed:
    """One quote, every time; no other symbol (``strict``: quoting one fails)."""
    return ReplayPriceFeed({(VENUE, BTC): [(BID, ASK)]}, clock=clock, strict=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def infra(clock: ManualClock) -> AsyncIterator[Infrastructure]:
    """An embedded infrastructure on an in-memory database, fixed prices, a manual clock."""
    async with await Infrastructure.create(
        "test", clock=clock, prices=fixed_prices(clock)
    ) as infra:
        yield infra


def order(
    side: str,
    quantity: float,
    *,
    limit_price: float | None = None,
    symbol: str = BTC,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A :data:`PLACE` order (market, or limit at ``limit_price``), then two branches on
    its ``status``: ``on_denied`` logs the reason when it was denied, ``on_placed`` logs
    when it was not."""
    properties: dict[str, Any] = {"symbol": symbol, "side": side, "quantity": quantity}
    if limit_price is not None:
        properties |= {"order_type": "limit", "limit_price": limit_price}
    return {
        "blocks": [
            block(PLACE, "actions", "place_order", properties, config=config),
            block(
                "denied",
                "conditions",
                "compare",
                {"op": "==", "value": "denied"},
                {"left": f"{PLACE}.status"},
            ),
            block(
                "placed",
                "conditions",
                "compare",
                {"op": "!=", "value": "denied"},
                {"left": f"{PLACE}.status"},
            ),
            block(
                "on_denied",
                "actions",
                "log",
                {"message": "denied: {reason}"},
                {"reason": f"{PLACE}.reason", "when": "denied.result"},
            ),
            block("on_placed", "actions", "log", {"message": "placed"}, {"when": "placed.result"}),
        ]
    }


def cancel(client_order_id: str) -> dict[str, Any]:
    return {
        "blocks": [block("pull", "actions", "cancel_order", {"client_order_id": client_order_id})]
    }


async def run(
    infra: Infrastructure, definition: dict[str, Any], *, bot: str = BOT
) -> dict[str, Any]:
    """One execution of ``definition`` for workflow :data:`WORKFLOW`, ``bot`` and strategy
    :data:`STRATEGY`: the result dict."""
    return await EnhancedWorkflowExecutor(definition, infra, WORKFLOW, bot, STRATEGY).execute()


async def set_limit(
    infra: Infrastructure,
    limit_type: str,
    threshold: float,
    scope: Scope = Scope.BOT,
    target: str | None = BOT,
    **options: Any,
) -> None:
    await infra.emergency.set_risk_limit(
        limit_type,
        threshold,
        auto_halt=False,
        actor="tests",
        scope=scope,
        target=target,
        options=LimitOptions(**options),
    )


def placed(result: dict[str, Any]) -> dict[str, Any]:
    """The outputs of an order that reached the venue (asserted), its branches taken."""
    assert result["status"] == "completed", result
    outputs = result["results"][PLACE]
    assert outputs["status"] in ("filled", "open"), outputs
    assert (outputs["reason"], outputs["denial"]) == (None, None)
    assert "on_placed" in result["results"] and "on_denied" in result["skipped"], result
    return dict(outputs)


async def denied(
    infra: Infrastructure,
    result: dict[str, Any],
    check: str,
    scope: Scope,
    target: str | None,
) -> dict[str, Any]:
    """The ``denial`` of an order that a ``check`` of ``scope``/``target`` denied
    (asserted, with the denied outcome's other outputs, its branch and its absence from
    the exchange)."""
    assert result["status"] == "completed", result
    outputs = result["results"][PLACE]
    client_order_id = f"{result['execution_id']}:{PLACE}"
    assert outputs == {
        "order_id": None,
        "client_order_id": client_order_id,
        "status": "denied",
        "filled_quantity": 0.0,
        "avg_price": None,
        "reason": outputs["reason"],
        "denial": outputs["denial"],
    }
    denial = outputs["denial"]
    assert (denial["check"], denial["scope"], denial["target"]) == (check, scope.value, target)
    assert isinstance(outputs["reason"], str) and outputs["reason"]
    assert result["results"]["on_denied"]["message"] == f"denied: {outputs['reason']}"
    assert "on_placed" in result["skipped"]
    assert await infra.exchange.get_order(VENUE, client_order_id) is None
    return dict(denial)


async def events_of(infra: Infrastructure, execution_id: str) -> list[Event]:
    return [event for _, event in await infra.state.read_events(execution_id=execution_id)]


SCOPES = pytest.mark.parametrize("scope", list(TARGETS), ids=[s.value for s in TARGETS])


# -- each check, on each scope ----------------------------------------------------------------


@pytest.mark.asyncio
@SCOPES
async def test_max_order_notional_values_market_orders_at_the_touch_and_limits_at_their_price(
    infra: Infrastructure, scope: Scope
) -> None:
    """max_order_notional 150: a market buy of 1 (102 at the ask) and a limit buy of 1.4 at
    100 (140) pass; a market buy of 2 (204) and a market sell of 2 (200 at the bid) are
    denied, naming the notional and the limit."""
    await set_limit(infra, "max_order_notional", 150.0, scope, TARGETS[scope])
    placed(await run(infra, order("buy", 1.0)))
    placed(await run(infra, order("buy", 1.4, limit_price=100.0)))
    for side, notional in (("buy", 2.0 * ASK), ("sell", 2.0 * BID)):
        denial = await denied(
            infra,
            await run(infra, order(side, 2.0)),
            "max_order_notional",
            scope,
            TARGETS[scope],
        )
        assert (denial["value"], denial["threshold"]) == (pytest.approx(notional), 150.0)


@pytest.mark.asyncio
@SCOPES
async def test_price_collar_bounds_a_limit_price_around_the_mid_and_leaves_market_orders(
    infra: Infrastructure, scope: Scope
) -> None:
    """price_collar_bps 100 around the mid (101): limit prices 100.5 and 101.9 pass, 90 and
    112 (about 1089 bps away) are denied; a market order has no limit price to collar."""
    await set_limit(infra, "price_collar_bps", 100.0, scope, TARGETS[scope])
    placed(await run(infra, order("buy", 0.01, limit_price=100.5)))
    placed(await run(infra, order("sell", 0.01, limit_price=101.9)))
    placed(await run(infra, order("buy", 0.01)))
    for side, price in (("buy", 90.0), ("sell", 112.0)):
        denial = await denied(
            infra,
            await run(infra, order(side, 0.01, limit_price=price)),
            "price_collar_bps",
            scope,
            TARGETS[scope],
        )
        bps = abs(price - MID) / MID * 10_000
        assert (denial["value"], denial["threshold"]) == (pytest.approx(bps), 100.0)


@pytest.mark.asyncio
@SCOPES
async def test_max_position_denies_what_would_exceed_it_and_always_lets_a_reduction_through(
    infra: Infrastructure, scope: Scope
) -> None:
    """A position of 2 bought before the limit, then max_position 1.5: buying 0.1 more is
    denied (2.1 after); selling 0.25 (1.75 after, still beyond the limit) reduces and
    passes; down to 1, buying 0.5 reaches exactly 1.5 and passes, 0.1 more is denied; the
    exchange's position is what the accepted orders made it."""
    placed(await run(infra, order("buy", 2.0)))
    await set_limit(infra, "max_position", 1.5, scope, TARGETS[scope])
    denial = await denied(
        infra, await run(infra, order("buy", 0.1)), "max_position", scope, TARGETS[scope]
    )
    assert (denial["value"], denial["threshold"]) == (pytest.approx(2.1), 1.5)
    placed(await run(infra, order("sell", 0.25)))
    placed(await run(infra, order("sell", 0.75)))
    placed(await run(infra, order("buy", 0.5)))
    await denied(infra, await run(infra, order("buy", 0.1)), "max_position", scope, TARGETS[scope])
    assert await infra.exchange.position(VENUE, BTC) == pytest.approx(1.5)


@pytest.mark.asyncio
@SCOPES
async def test_max_open_orders_counts_resting_orders_only_and_frees_a_slot_on_cancel(
    infra: Infrastructure, scope: Scope
) -> None:
    """max_open_orders 2: two resting bids pass, a third is denied (3 with it); a market
    order, which does not rest, passes; cancelling a bid lets a new one rest."""
    await set_limit(infra, "max_open_orders", 2, scope, TARGETS[scope])
    first = placed(await run(infra, order("buy", 0.01, limit_price=1.0)))
    assert first["status"] == "open"
    placed(await run(infra, order("buy", 0.01, limit_price=1.0)))
    denial = await denied(
        infra,
        await run(infra, order("buy", 0.01, limit_price=1.0)),
        "max_open_orders",
        scope,
        TARGETS[scope],
    )
    assert (denial["value"], denial["threshold"]) == (3.0, 2.0)
    placed(await run(infra, order("buy", 0.01)))
    assert (await run(infra, cancel(first["client_order_id"])))["status"] == "completed"
    placed(await run(infra, order("buy", 0.01, limit_price=1.0)))
    assert len(await infra.exchange.open_orders(VENUE, Scope.GLOBAL, None)) == 2


@pytest.mark.asyncio
@SCOPES
async def test_order_rate_is_a_token_bucket_per_scope_and_a_denial_takes_no_token(
    infra: Infrastructure, clock: ManualClock, scope: Scope
) -> None:
    """order_rate 2 per 60 s: two orders pass, the third is denied; 30 s later one token
    is back (the denial took none): one passes, the next is denied."""
    await set_limit(infra, "order_rate", 2, scope, TARGETS[scope], window=60.0)
    placed(await run(infra, order("buy", 0.01)))
    placed(await run(infra, order("buy", 0.01)))
    denial = await denied(
        infra, await run(infra, order("buy", 0.01)), "order_rate", scope, TARGETS[scope]
    )
    assert denial["threshold"] == 2.0 and denial["value"] < 1.0
    clock.advance(30.0)
    placed(await run(infra, order("buy", 0.01)))
    await denied(infra, await run(infra, order("buy", 0.01)), "order_rate", scope, TARGETS[scope])


@pytest.mark.asyncio
@pytest.mark.parametrize("scope", [Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW])
async def test_a_limit_of_another_scope_does_not_apply(infra: Infrastructure, scope: Scope) -> None:
    """Every check, configured so that it would deny anything, on another strategy, bot
    or workflow: the test's orders (market and resting) pass; the same orders of an
    execution in that other scope (here: of the other bot) are denied."""
    for limit_type, threshold, options in (
        ("max_order_notional", 0.01, {}),
        ("price_collar_bps", 0.01, {}),
        ("max_position", 0.0001, {}),
        ("max_open_orders", 0, {}),
        ("order_rate", 1, {"window": 3600.0}),
    ):
        await set_limit(infra, limit_type, threshold, scope, OTHER, **options)
    placed(await run(infra, order("buy", 0.01)))
    placed(await run(infra, order("buy", 0.01, limit_price=1.0)))
    if scope is Scope.BOT:
        result = await run(infra, order("buy", 0.01), bot=OTHER)
        await denied(infra, result, "max_order_notional", Scope.BOT, OTHER)


# -- a denial is an outcome ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("check", "threshold", "where"),
    [("max_order_notional", 50.0, "executor"), ("max_position", 0.2, "ledger")],
)
async def test_a_denied_order_never_reaches_the_exchange_and_leaves_an_event_and_an_audit(
    infra: Infrastructure, check: str, threshold: float, where: str
) -> None:
    """A denial by a local check (in the executor) or a shared one (in the ledger): the
    order is not in the ledger, balances and resting orders are unchanged; the node's
    outputs carry the denial; an ``order_denied`` event (before the node's completion,
    with the execution's correlation ids) carries the denial, the client order id and the
    reason; the audit trail has it (actor ``risk:<check>``); the metric counts it; the
    dependents ran, the execution completed."""
    await set_limit(infra, check, threshold)
    balances = await infra.exchange.balances(VENUE)
    result = await run(infra, order("buy", 1.0))
    denial = await denied(infra, result, check, Scope.BOT, BOT)
    outputs = result["results"][PLACE]
    client_order_id = outputs["client_order_id"]
    assert await infra.exchange.balances(VENUE) == balances
    assert await infra.exchange.open_orders(VENUE, Scope.GLOBAL, None) == []
    assert await infra.exchange.position(VENUE, BTC) == 0.0
    expected_value = 1.0 * ASK if check == "max_order_notional" else 1.0
    assert denial == {
        "check": check,
        "scope": "bot",
        "target": BOT,
        "value": pytest.approx(expected_value),
        "threshold": threshold,
    }

    execution_id = result["execution_id"]
    events = await events_of(infra, execution_id)
    [event] = [e for e in events if e.type == "order_denied"]
    assert event.data == {**denial, "client_order_id": client_order_id, "reason": outputs["reason"]}
    assert (event.node_id, event.execution_id, event.workflow_id) == (PLACE, execution_id, WORKFLOW)
    assert (event.bot_id, event.strategy_id) == (BOT, STRATEGY)
    assert event.correlation_id == result["correlation_id"]
    of_place = [e.type for e in events if e.node_id == PLACE]
    assert of_place == ["node_started", "order_denied", "node_completed"]

    [entry] = [e for e in await infra.emergency.audit_entries() if e.action == "order_denied"]
    assert (entry.actor, entry.scope, entry.target) == (f"risk:{check}", Scope.BOT, BOT)
    assert entry.details["client_order_id"] == client_order_id
    assert infra.metrics.orders_denied.labels(check)._value.get() == 1

    record = await infra.state.get_execution(execution_id)
    assert record is not None and record.status is ExecutionStatus.COMPLETED
    checkpoints = await infra.state.get_checkpoints(execution_id)
    assert checkpoints[PLACE].state is CheckpointState.COMPLETED
    assert checkpoints[PLACE].outputs == outputs


@pytest.mark.asyncio
@pytest.mark.parametrize(("check", "threshold"), [("max_order_notional", 50.0), ("order_rate", 1)])
async def test_a_denial_is_never_retried_even_with_a_retry_config(
    infra: Infrastructure, check: str, threshold: float
) -> None:
    """With ``config.retry`` asking for five attempts, a denied order (by the executor or
    by the ledger) runs once: no ``node_retrying`` event, one start, one denial counted."""
    options = {"window": 3600.0} if check == "order_rate" else {}
    await set_limit(infra, check, threshold, **options)
    if check == "order_rate":
        placed(await run(infra, order("buy", 0.01)))  # the one token
    retry = {"retry": {"max_attempts": 5, "initial_interval": 0.01, "jitter": 0}}
    result = await run(infra, order("buy", 1.0, config=retry))
    await denied(infra, result, check, Scope.BOT, BOT)
    types = [e.type for e in await events_of(infra, result["execution_id"]) if e.node_id == PLACE]
    assert types == ["node_started", "order_denied", "node_completed"]
    assert infra.metrics.orders_denied.labels(check)._value.get() == 1


@pytest.mark.asyncio
async def test_a_failed_audit_is_logged_and_the_denial_stands(
    infra: Infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit of a denial cannot be written, the error is logged (level error) and
    the outcome is the same denial: the node completed, its dependents ran."""

    async def unavailable(self: object, *args: Any, **kwargs: Any) -> None:
        raise UnavailableError("audit trail down")

    monkeypatch.setattr(type(infra.emergency), "record_order_denied", unavailable)
    await set_limit(infra, "max_order_notional", 50.0)
    with structlog.testing.capture_logs() as logs:
        result = await run(infra, order("buy", 1.0))
    await denied(infra, result, "max_order_notional", Scope.BOT, BOT)
    [failed] = [log for log in logs if log["event"] == "order.denied.audit_failed"]
    assert failed["log_level"] == "error" and "audit trail down" in failed["error"]


@pytest.mark.asyncio
async def test_a_check_without_a_price_fails_closed(infra: Infrastructure) -> None:
    """max_order_notional on a market order of a symbol the price feed cannot quote: no
    price to value it, so it is denied (value unknown), never sent unchecked; audited."""
    await set_limit(infra, "max_order_notional", 1e9)
    result = await run(infra, order("buy", 0.01, symbol="ETH/USDT"))
    denial = await denied(infra, result, "max_order_notional", Scope.BOT, BOT)
    assert denial["value"] is None
    assert "no price" in result["results"][PLACE]["reason"]
    [entry] = [e for e in await infra.emergency.audit_entries() if e.action == "order_denied"]
    assert entry.details["client_order_id"] == result["results"][PLACE]["client_order_id"]


@pytest.mark.asyncio
async def test_resume_adopts_the_order_placed_before_the_crash_instead_of_denying_it(
    infra: Infrastructure,
) -> None:
    """An order placed, then the process dies before its completion is recorded, then
    limits that would deny it appear (local and shared): the resumed execution gets the
    placed order back (same order id), not a denial, and nothing is traded twice."""
    result = await run(infra, order("buy", 1.0))
    first = placed(result)
    execution_id = result["execution_id"]
    for limit_type, threshold, options in (
        ("max_order_notional", 1.0, {}),
        ("max_position", 0.001, {}),
        ("order_rate", 1, {"window": 3600.0}),
    ):
        await set_limit(infra, limit_type, threshold, **options)
    # Rewind to the order's intent, as if the process died right after placing it.
    intent = Checkpoint(
        execution_id,
        PLACE,
        CheckpointState.INTENT,
        0.0,
        {"client_order_id": first["client_order_id"]},
    )
    fence = infra.owner.lease.fence
    await infra.state.write(StateBatch(checkpoints=(intent,), fence=fence))
    record = await infra.state.get_execution(execution_id)
    assert record is not None
    running = replace(record, status=ExecutionStatus.RUNNING)
    await infra.state.write(StateBatch(execution=running, fence=fence))

    executor = EnhancedWorkflowExecutor(order("buy", 1.0), infra, WORKFLOW, BOT, STRATEGY)
    resumed = await executor.resume(execution_id)
    again = placed(resumed)
    assert (again["order_id"], again["status"]) == (first["order_id"], "filled")
    assert await infra.exchange.position(VENUE, BTC) == pytest.approx(1.0)
    assert not [e for e in await events_of(infra, execution_id) if e.type == "order_denied"]


# -- risk nodes: the stricter threshold wins ---------------------------------------------------


def notional_check(limit: float, quantity: float = 1.0, price: float = 150.0) -> dict[str, Any]:
    """A ``max_order_notional`` risk node (no auto-halt) of ``quantity * price``."""
    properties = {"limit": limit, "quantity": quantity, "price": price, "auto_halt": False}
    return {"blocks": [block("risk", "risk", "max_order_notional", properties)]}


@pytest.mark.asyncio
async def test_a_node_threshold_looser_than_a_configured_bot_limit_is_tightened(
    infra: Infrastructure,
) -> None:
    """A node allowing a notional of 1,000,000 under a bot limit of 100: 150 breaches,
    judged against 100 (no halt: neither asks for one); the same node of another bot,
    which the bot limit does not cover, passes."""
    await set_limit(infra, "max_order_notional", 100.0)
    with pytest.raises(RiskLimitExceeded) as caught:
        await run(infra, notional_check(1_000_000.0))
    assert (caught.value.value, caught.value.threshold) == (150.0, 100.0)
    assert not caught.value.halted
    assert await infra.emergency.halts() == []
    other = await run(infra, notional_check(1_000_000.0), bot=OTHER)
    assert other["status"] == "completed"
    assert other["results"]["risk"] == {"ok": True, "value": 150.0, "threshold": 1_000_000.0}


@pytest.mark.asyncio
@pytest.mark.parametrize("scope", list(TARGETS), ids=[s.value for s in TARGETS])
async def test_a_stricter_node_threshold_wins_over_a_looser_configured_limit(
    infra: Infrastructure, scope: Scope
) -> None:
    """A configured limit of 1,000 on any scope of the execution and a node allowing 100:
    150 breaches, judged against the node's 100; a node allowing 200 passes."""
    await set_limit(infra, "max_order_notional", 1_000.0, scope, TARGETS[scope])
    with pytest.raises(RiskLimitExceeded) as caught:
        await run(infra, notional_check(100.0))
    assert caught.value.threshold == 100.0
    assert (await run(infra, notional_check(200.0)))["status"] == "completed"


@pytest.mark.asyncio
async def test_a_max_position_node_is_tightened_by_the_strictest_covering_limit(
    infra: Infrastructure,
) -> None:
    """max_position configured at 3 globally and 1 for the strategy, a node allowing 5: a
    proposed buy of 2 breaches against 1 (the strictest covering limit)."""
    await set_limit(infra, "max_position", 3.0, Scope.GLOBAL, None)
    await set_limit(infra, "max_position", 1.0, Scope.STRATEGY, STRATEGY)
    properties = {"symbol": BTC, "limit": 5.0, "side": "buy", "auto_halt": False}
    definition = {
        "blocks": [
            block("size", "providers", "static", {"values": {"qty": 2.0}}),
            block("risk", "risk", "max_position", properties, {"quantity": "size.qty"}),
        ]
    }
    with pytest.raises(RiskLimitExceeded) as caught:
        await run(infra, definition)
    assert (caught.value.value, caught.value.threshold) == (2.0, 1.0)


# -- the local rules, property-tested through the engine ---------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    threshold=st.floats(1.0, 400.0),
    quantity=st.floats(0.001, 2.0),
    limit_price=st.one_of(st.none(), st.floats(50.0, 150.0)),
    collar=st.floats(1.0, 5_000.0),
)
def test_the_engine_denies_exactly_what_the_local_rules_deny(
    threshold: float, quantity: float, limit_price: float | None, collar: float
) -> None:
    """For any notional limit, collar, quantity and market or limit buy: the order is
    denied iff its notional (at the limit price, else the ask) is above the limit, or its
    limit price is more than the collar from the mid; a denied order is not at the
    exchange, an accepted one is."""

    async def scenario() -> None:
        clock = ManualClock()
        prices = fixed_prices(clock)
        async with await Infrastructure.create("test", clock=clock, prices=prices) as infra:
            await set_limit(infra, "max_order_notional", threshold)
            await set_limit(infra, "price_collar_bps", collar)
            result = await run(infra, order("buy", quantity, limit_price=limit_price))
            price = ASK if limit_price is None else limit_price
            if quantity * price > threshold:
                expected: str | None = "max_order_notional"
            elif limit_price is not None and abs(limit_price - MID) / MID * 10_000 > collar:
                expected = "price_collar_bps"
            else:
                expected = None
            outputs = result["results"][PLACE]
            stored = await infra.exchange.get_order(VENUE, outputs["client_order_id"])
            if expected is None:
                placed(result)
                assert stored is not None
            else:
                assert outputs["status"] == "denied" and stored is None
                assert outputs["denial"]["check"] == expected
                assert math.isfinite(outputs["denial"]["value"])

    asyncio.run(scenario())
