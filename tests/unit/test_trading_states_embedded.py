"""Trading states in embedded runs: what REDUCE_ONLY and CANCEL_ONLY admit, decided from
the order's side, size and the position; the store's own check on the intent (a local
view that has not seen a halt yet cannot let an intent commit); failing closed as
CANCEL_ONLY once the emergency state is stale (injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from kit import ManualClock
from workflows import block, resting_bid

from tradeflow.domain.emergency import EmergencySnapshot, ScopeIds
from tradeflow.domain.errors import EmergencyHalted, UnavailableError
from tradeflow.domain.records import (
    CheckpointState,
    ExecutionQuery,
    ExecutionStatus,
    HaltState,
    Scope,
)
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.engine.emergency import WatchedView, check_allowed, current_state
from tradeflow.infrastructure.factory import Infrastructure
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

BOT = "bot-1"
QUANTITY = 0.002


def order(side: str, quantity: float, *, block_id: str = "order") -> dict[str, Any]:
    """One market order on BTC/USDT, then a log (an effect-free action)."""
    return {
        "blocks": [
            block(
                block_id,
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": side, "quantity": quantity},
            ),
            block("note", "actions", "log", {"message": "done"}, {"after": f"{block_id}.status"}),
        ]
    }


@pytest_asyncio.fixture
async def infra() -> AsyncIterator[Infrastructure]:
    """An embedded infrastructure on an in-memory database."""
    async with await Infrastructure.create("test") as infra:
        yield infra


async def run(infra: Infrastructure, definition: dict[str, Any], bot: str = BOT) -> Any:
    return await EnhancedWorkflowExecutor(definition, infra, "wf", bot, "strat").execute()


@pytest.mark.asyncio
async def test_reduce_only_admits_exactly_the_orders_that_shrink_the_position(
    infra: Infrastructure,
) -> None:
    """Under REDUCE_ONLY a sell within the long position runs; a buy (grows), and a sell
    larger than the position (flips it) are refused, the run ends halted and the seed's
    EmergencyHalted names the state; the log after a refused order never runs."""
    assert (await run(infra, order("buy", QUANTITY)))["status"] == "completed"
    await infra.emergency.halt(
        Scope.BOT, BOT, reason="wind down", actor="risk", state=TradingState.REDUCE_ONLY
    )
    for refused in (order("buy", QUANTITY / 2), order("sell", QUANTITY * 2)):
        with pytest.raises(EmergencyHalted) as caught:
            await run(infra, refused)
        assert (caught.value.state, caught.value.scope, caught.value.target) == (
            "reduce_only",
            "bot",
            BOT,
        )
    reduced = await run(infra, order("sell", QUANTITY / 2))
    assert reduced["status"] == "completed"
    assert await infra.exchange.position("paper", "BTC/USDT") == pytest.approx(QUANTITY / 2)
    assert (await run(infra, order("buy", QUANTITY), bot="bot-2"))["status"] == "completed"


@pytest.mark.asyncio
async def test_cancel_only_refuses_every_order_and_lets_cancels_and_logs_run(
    infra: Infrastructure,
) -> None:
    """Under CANCEL_ONLY even a reducing order is refused, while cancelling a resting order
    and a log run; a stricter scope wins over a looser one (global REDUCE_ONLY + bot
    CANCEL_ONLY: the bot's state decides)."""
    assert (await run(infra, order("buy", QUANTITY)))["status"] == "completed"
    placed = await run(infra, resting_bid())
    client_order_id = placed["results"]["bid"]["client_order_id"]
    await infra.emergency.halt(
        Scope.GLOBAL, reason="venue wobbly", actor="ops", state=TradingState.REDUCE_ONLY
    )
    await infra.emergency.halt(
        Scope.BOT, BOT, reason="unwind", actor="ops", state=TradingState.CANCEL_ONLY
    )
    with pytest.raises(EmergencyHalted) as caught:
        await run(infra, order("sell", QUANTITY / 2))
    assert (caught.value.state, caught.value.scope) == ("cancel_only", "bot")
    unwind = {
        "blocks": [
            block("note", "actions", "log", {"message": "unwinding"}),
            block("pull", "actions", "cancel_order", {"client_order_id": client_order_id}),
        ]
    }
    assert (await run(infra, unwind))["status"] == "completed"
    cancelled = await infra.exchange.get_order("paper", client_order_id)
    assert cancelled is not None and cancelled.status.value == "cancelled"


@pytest.mark.asyncio
async def test_the_store_refuses_an_intent_the_local_view_would_have_let_through(
    infra: Infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intent commit checks the halts itself: with a local view that missed the halt,
    the order's intent is not committed, the run ends halted, and what the batch carried
    besides the intent (the earlier node's completion) is still written."""
    await infra.emergency.halt(Scope.BOT, BOT, reason="halted behind the view's back")
    # A local view that has not seen the halt yet (an executor's, between a halt's commit
    # and its push) admits everything.
    controller = type(infra.emergency)
    monkeypatch.setattr(controller, "ensure_allowed", lambda self, ids, effect: None)
    monkeypatch.setattr(controller, "trading_state", lambda self, ids: TradingState.ACTIVE)
    definition = {
        "blocks": [
            block("size", "providers", "static", {"values": {"qty": QUANTITY}}),
            block(
                "order",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy"},
                {"quantity": "size.qty"},
            ),
        ]
    }
    with pytest.raises(EmergencyHalted) as caught:
        await run(infra, definition)
    assert caught.value.reason == "halted behind the view's back"
    [record] = (await infra.state.list_executions(ExecutionQuery(bot_id=BOT))).executions
    assert record.status is ExecutionStatus.HALTED
    checkpoints = await infra.state.get_checkpoints(record.execution_id)
    assert checkpoints["size"].state is CheckpointState.COMPLETED
    assert checkpoints["order"].state is CheckpointState.FAILED
    assert await infra.exchange.get_order("paper", f"{record.execution_id}:order") is None
    assert infra.metrics.actions_refused._value.get() == 1


def test_a_stale_view_counts_as_cancel_only_once_its_bound_passes() -> None:
    """With an injected clock: up to the staleness bound the view decides; past it every
    scope is CANCEL_ONLY (opening, growing and reducing refused, naming the state), while
    cancels and effect-free actions pass without reading the view; a fresh confirmation
    restores the view."""
    clock = ManualClock()
    bound = 1.0
    view = WatchedView("emergency service", clock=clock, max_staleness=bound, backoff=(0.1, 0.1))
    ids = ScopeIds("wf", BOT, "strat")
    view.confirm(EmergencySnapshot.of(1, (), ()))
    clock.advance(bound)
    check_allowed(view.current, ids, OrderEffect.OPENS)
    assert current_state(view.current, ids) is TradingState.ACTIVE
    clock.advance(0.001)
    for effect in (OrderEffect.OPENS, OrderEffect.GROWS, OrderEffect.REDUCES):
        with pytest.raises(EmergencyHalted, match="emergency state unavailable") as caught:
            check_allowed(view.current, ids, effect)
        assert caught.value.state == "cancel_only"
    for effect in (OrderEffect.CANCELS, OrderEffect.NONE):
        check_allowed(view.current, ids, effect)
    assert current_state(view.current, ids) is TradingState.CANCEL_ONLY
    halt = HaltState(Scope.BOT, BOT, "r", "a", 0.0, TradingState.REDUCE_ONLY)
    view.confirm(EmergencySnapshot.of(2, (halt,), ()))
    check_allowed(view.current, ids, OrderEffect.REDUCES)
    assert current_state(view.current, ids) is TradingState.REDUCE_ONLY
    view.lose("link down")
    with pytest.raises(UnavailableError):
        view.current()
