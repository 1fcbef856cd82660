"""Loss triggers and the dead-man's switch: the trigger evaluator on the embedded (SQLite)
controller with an injected clock and a hand-written P&L source, the embedded
infrastructure's own evaluator on the paper exchange, and properties of the rule."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from kit import START, ManualClock, eventually
from workflows import block

from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
from tradeflow.app.settings import Settings
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.errors import RiskLimitExceeded, UnavailableError
from tradeflow.domain.records import Event, HaltState, LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import (
    LimitOptions,
    TriggerProgress,
    evaluate_trigger,
    trading_day,
)
from tradeflow.domain.trading import TradingState
from tradeflow.engine.triggers import TriggerEvaluator
from tradeflow.infrastructure.factory import Infrastructure
from tradeflow.observability.metrics import Metrics
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

BOT = (Scope.BOT, "bot-1")
IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
INTERVAL = 1.0
STEP = INTERVAL
"""How far the clock moves between rounds: past the half interval an evaluation waits."""


class Pnl:
    """A :class:`~tradeflow.ports.PnlSource` whose equities the test sets; an equity that
    is an exception is raised, and a set ``gate`` holds every read until it opens."""

    def __init__(self) -> None:
        self.equities: dict[tuple[Scope, str | None], float | Exception] = {}
        self.gate: asyncio.Event | None = None
        self.reads = 0

    def set(
        self, value: float | Exception, scope: Scope = Scope.BOT, target: str | None = "bot-1"
    ) -> None:
        self.equities[(scope, target)] = value

    async def equity(self, scope: Scope, target: str | None) -> float:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        value = self.equities.get((scope, target), 0.0)
        if isinstance(value, Exception):
            raise value
        return value


@pytest.fixture
def pnl() -> Pnl:
    return Pnl()


@pytest_asyncio.fixture
async def evaluator(
    controller: LocalEmergencyController, pnl: Pnl, clock: ManualClock
) -> AsyncIterator[TriggerEvaluator]:
    triggers = TriggerEvaluator(controller, pnl, clock=clock, interval=INTERVAL)
    yield triggers
    await triggers.close()


async def rounds(
    evaluator: TriggerEvaluator, clock: ManualClock, count: int = 1
) -> list[list[tuple[RiskLimit, Any]]]:
    """``count`` rounds, the clock moved a step before each."""
    done = []
    for _ in range(count):
        clock.advance(STEP)
        done.append(await evaluator.evaluate())
    return done


def trigger(**options: Any) -> LimitOptions:
    return LimitOptions(**{"state": TradingState.REDUCE_ONLY, **options})


async def halting_daily_loss(controller: LocalEmergencyController) -> None:
    """The bot's daily_loss trigger at -100: HALTED, lifted at the next trading day."""
    await controller.set_risk_limit(
        "daily_loss",
        -100.0,
        scope=BOT[0],
        target=BOT[1],
        options=trigger(state=TradingState.HALTED, lift_on_reset=True),
    )


def halt_of(
    controller: LocalEmergencyController, scope: tuple[Scope, str | None]
) -> HaltState | None:
    return controller.state().halts.get(scope)


def fired(metrics: Metrics, limit_type: str) -> float:
    return (
        metrics.registry.get_sample_value(
            "tradeflow_trigger_fired_total", {"limit_type": limit_type}
        )
        or 0.0
    )


# --- daily_loss -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_daily_loss_acts_on_the_nth_consecutive_breach_not_before_and_once(
    controller: LocalEmergencyController,
    evaluator: TriggerEvaluator,
    pnl: Pnl,
    clock: ManualClock,
    published: list[Event],
    metrics: Metrics,
) -> None:
    """With consecutive=3, two breaching rounds leave the bot trading, the third moves it
    to the trigger's state (event, audit, metric); later breaching rounds still ask for
    that state (level-triggered) but find it standing and write nothing more."""
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=BOT[0], target=BOT[1], options=trigger(consecutive=3)
    )
    pnl.set(1000.0)
    await rounds(evaluator, clock)  # the day's anchor
    pnl.set(850.0)

    before = await rounds(evaluator, clock, 2)
    assert halt_of(controller, BOT) is None
    ((_, outcome),) = (await rounds(evaluator, clock))[0]
    after = await rounds(evaluator, clock, 3)

    assert [o.progress.breaches for r in before for _, o in r] == [1, 2]
    assert (outcome.fire, outcome.value, outcome.progress.breaches) == (True, -150.0, 3)
    assert all(o.fire for r in after for _, o in r)
    halt = halt_of(controller, BOT)
    assert halt is not None
    assert (halt.state, halt.actor) == (TradingState.REDUCE_ONLY, "trigger:daily_loss@bot:bot-1")
    assert "3 evaluation(s) in a row" in halt.reason
    assert controller.trading_state(IDS) is TradingState.REDUCE_ONLY
    assert [e.type for e in published] == ["emergency_halted"]
    assert published[0].data["actor"] == "trigger:daily_loss@bot:bot-1"
    audit = await controller.audit_entries()
    assert [(a.action, a.actor) for a in audit[:1]] == [("halt", "trigger:daily_loss@bot:bot-1")]
    assert fired(metrics, "daily_loss") == 1


@pytest.mark.asyncio
async def test_a_recovery_between_breaches_restarts_the_count(
    controller: LocalEmergencyController, evaluator: TriggerEvaluator, pnl: Pnl, clock: ManualClock
) -> None:
    """breach, breach, recover, breach, breach: no action with consecutive=3; one more
    breach in a row acts."""
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=BOT[0], target=BOT[1], options=trigger(consecutive=3)
    )
    pnl.set(1000.0)
    await rounds(evaluator, clock)
    for equity in (850.0, 850.0, 950.0, 850.0, 850.0):
        pnl.set(equity)
        await rounds(evaluator, clock)
        assert halt_of(controller, BOT) is None

    await rounds(evaluator, clock)

    assert halt_of(controller, BOT) is not None


def local(zone: str, text: str) -> float:
    """Epoch seconds of a local wall time in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.asyncio
async def test_daily_loss_day_starts_at_its_local_reset_time_and_lifts_only_if_told(
    controller: LocalEmergencyController, evaluator: TriggerEvaluator, pnl: Pnl, clock: ManualClock
) -> None:
    """A New York 17:00 day: crossing UTC midnight keeps the day's anchor; crossing 17:00
    local re-anchors at the current equity, and lift_on_reset lifts the halt the trigger
    set (the strategy trades again), while the bot's trigger without it stays halted."""
    zone = "America/New_York"
    options = trigger(
        state=TradingState.HALTED, timezone=zone, reset_time="17:00", lift_on_reset=True
    )
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=Scope.STRATEGY, target="strat-1", options=options
    )
    await controller.set_risk_limit(
        "daily_loss",
        -100.0,
        scope=BOT[0],
        target=BOT[1],
        options=replace(options, lift_on_reset=False),
    )
    pnl.set(1000.0, Scope.STRATEGY, "strat-1")
    pnl.set(1000.0)
    clock.now = local(zone, "2023-11-14T18:55:00")  # 23:55 UTC
    await evaluator.evaluate()
    clock.now = local(zone, "2023-11-14T19:05:00")  # 00:05 UTC the next day: same trading day
    pnl.set(880.0, Scope.STRATEGY, "strat-1")
    pnl.set(880.0)
    (results,) = [await evaluator.evaluate()]
    assert {limit.scope: o.progress.day for limit, o in results} == {
        Scope.STRATEGY: "2023-11-14",
        Scope.BOT: "2023-11-14",
    }
    assert controller.trading_state(IDS) is TradingState.HALTED

    clock.now = local(zone, "2023-11-15T16:59:00")
    assert not any(o.lift for _, o in await evaluator.evaluate())
    clock.now = local(zone, "2023-11-15T17:01:00")
    lifted = {limit.scope: o for limit, o in await evaluator.evaluate()}

    assert (lifted[Scope.STRATEGY].lift, lifted[Scope.BOT].lift) == (True, False)
    assert lifted[Scope.STRATEGY].progress.day == "2023-11-15"
    assert lifted[Scope.STRATEGY].progress.anchor == 880.0
    assert lifted[Scope.STRATEGY].value == 0.0
    assert halt_of(controller, (Scope.STRATEGY, "strat-1")) is None
    assert halt_of(controller, BOT) is not None
    assert controller.trading_state(ScopeIds(strategy_id="strat-1")) is TradingState.ACTIVE
    assert controller.trading_state(IDS) is TradingState.HALTED
    resumes = [a for a in await controller.audit_entries() if a.action == "resume"]
    assert [(a.actor, a.scope) for a in resumes] == [
        ("trigger:daily_loss@strategy:strat-1", Scope.STRATEGY)
    ]


@pytest.mark.asyncio
async def test_lift_on_reset_never_lifts_an_operators_halt(
    controller: LocalEmergencyController, evaluator: TriggerEvaluator, pnl: Pnl, clock: ManualClock
) -> None:
    """An operator's stricter halt stands when the trigger fires (never loosened) and when
    the new day lifts what the trigger would have set."""
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=BOT[0], target=BOT[1], options=trigger(lift_on_reset=True)
    )
    pnl.set(1000.0)
    await rounds(evaluator, clock)
    await controller.halt(*BOT, reason="desk stop", actor="ops")
    pnl.set(800.0)
    ((_, outcome),) = (await rounds(evaluator, clock))[0]
    assert outcome.fire
    clock.advance(86_400)
    ((_, outcome),) = await evaluator.evaluate()

    assert outcome.lift
    halt = halt_of(controller, BOT)
    assert halt is not None
    assert (halt.actor, halt.state, halt.reason) == ("ops", TradingState.HALTED, "desk stop")


# --- max_drawdown -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_max_drawdown_peak_is_durable_across_evaluators_and_connections(
    controller: LocalEmergencyController, pnl: Pnl, clock: ManualClock, db_path: Path
) -> None:
    """The peak one evaluator saw (1100) is what a new evaluator, on another connection,
    measures the drawdown from: 1040 is -60, beyond -50."""
    await controller.set_risk_limit(
        "max_drawdown", -50.0, scope=Scope.GLOBAL, options=trigger(state=TradingState.CANCEL_ONLY)
    )
    first = TriggerEvaluator(controller, pnl, clock=clock, interval=INTERVAL)
    for equity in (1000.0, 1100.0, 1060.0):
        pnl.set(equity, Scope.GLOBAL, None)
        await rounds(first, clock)
    await first.close()
    assert halt_of(controller, (Scope.GLOBAL, None)) is None

    other = open_database(db_path)
    try:
        restarted = LocalEmergencyController(other, clock=clock, id_factory=lambda: "x")
        second = TriggerEvaluator(restarted, pnl, clock=clock, interval=INTERVAL)
        pnl.set(1040.0, Scope.GLOBAL, None)
        ((_, outcome),) = (await rounds(second, clock))[0]
        await second.close()
    finally:
        other.close()

    assert (outcome.progress.peak, outcome.value, outcome.fire) == (1100.0, -60.0, True)
    halt = halt_of(controller, (Scope.GLOBAL, None))
    assert halt is not None and halt.state is TradingState.CANCEL_ONLY


@pytest.mark.asyncio
async def test_a_trigger_tightens_a_looser_halt_forwards_cancel_orders_and_never_loosens(
    controller: LocalEmergencyController,
    evaluator: TriggerEvaluator,
    pnl: Pnl,
    clock: ManualClock,
    metrics: Metrics,
) -> None:
    """Over an operator's REDUCE_ONLY the trigger's CANCEL_ONLY (cancel_orders) takes its
    place; over an operator's HALTED a REDUCE_ONLY trigger leaves it as it was."""
    await controller.set_risk_limit(
        "max_drawdown",
        -10.0,
        scope=Scope.STRATEGY,
        target="strat-1",
        options=trigger(state=TradingState.CANCEL_ONLY, cancel_orders=True),
    )
    await controller.set_risk_limit(
        "max_drawdown", -10.0, scope=BOT[0], target=BOT[1], options=trigger()
    )
    await controller.halt(Scope.STRATEGY, "strat-1", reason="r", state=TradingState.REDUCE_ONLY)
    await controller.halt(*BOT, reason="stop", actor="ops")
    for equity in (100.0, 50.0):
        pnl.set(equity, Scope.STRATEGY, "strat-1")
        pnl.set(equity)
        await rounds(evaluator, clock)

    tightened = halt_of(controller, (Scope.STRATEGY, "strat-1"))
    kept = halt_of(controller, BOT)
    assert tightened is not None and kept is not None
    assert (tightened.state, tightened.cancel_orders, tightened.actor) == (
        TradingState.CANCEL_ONLY,
        True,
        "trigger:max_drawdown@strategy:strat-1",
    )
    assert (kept.state, kept.actor, kept.reason) == (TradingState.HALTED, "ops", "stop")
    assert fired(metrics, "max_drawdown") == 1  # halts written: the bot's stood


# --- two evaluators ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_evaluators_on_one_file_count_each_evaluation_once(
    controller: LocalEmergencyController, pnl: Pnl, clock: ManualClock, db_path: Path
) -> None:
    """Two evaluators (two connections, as two processes) that both read the progress
    before either stores it: one stores and acts, the other's compare-and-set fails, so a
    consecutive=2 trigger needs two rounds of both, and halts once."""
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=BOT[0], target=BOT[1], options=trigger(consecutive=2)
    )
    other = open_database(db_path)
    try:
        rival = LocalEmergencyController(other, clock=clock, id_factory=lambda: "y")
        evaluators = [
            TriggerEvaluator(c, pnl, clock=clock, interval=INTERVAL) for c in (controller, rival)
        ]
        pnl.set(1000.0)
        await rounds(evaluators[0], clock)
        pnl.set(800.0)
        outcomes = []
        for _ in range(2):
            clock.advance(STEP)
            pnl.gate = asyncio.Event()
            both = asyncio.gather(*(e.evaluate() for e in evaluators))
            await eventually(lambda: pnl.reads >= 3 + 2 * len(outcomes), "both read the equity")
            pnl.gate.set()
            outcomes.append(await asyncio.wait_for(both, 30))
        for e in evaluators:
            await e.close()
    finally:
        other.close()

    assert [[len(r) for r in pair] for pair in outcomes] == [[1, 0], [1, 0]]
    assert [pair[0][0][1].progress.breaches for pair in outcomes] == [1, 2]
    halts = [a for a in await controller.audit_entries() if a.action == "halt"]
    assert len(halts) == 1


# --- dead-man's switch ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_dead_mans_switch_fires_only_once_the_heartbeat_lapses_and_a_beat_re_arms_it(
    controller: LocalEmergencyController,
    clock: ManualClock,
    published: list[Event],
    metrics: Metrics,
) -> None:
    """ttl 10 s: at 10 s minus a millisecond nothing happens; at 10 s plus one the bot is
    CANCEL_ONLY (event, audit). A beat re-arms the switch without lifting the halt; once
    resumed, a second lapse fires again, and beats in time keep it quiet."""
    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=0.001)
    await controller.set_risk_limit("heartbeat", 10.0, scope=BOT[0], target=BOT[1])
    eps = 0.001
    clock.advance(10.0 - eps)
    ((_, early),) = await evaluator.evaluate()
    assert (early.fire, halt_of(controller, BOT)) == (False, None)

    clock.advance(2 * eps)
    ((_, late),) = await evaluator.evaluate()
    halt = halt_of(controller, BOT)
    assert late.fire and halt is not None
    assert (halt.state, halt.actor) == (TradingState.CANCEL_ONLY, "trigger:heartbeat@bot:bot-1")
    assert "dead-man's switch" in halt.reason
    assert controller.trading_state(IDS) is TradingState.CANCEL_ONLY
    assert [e.type for e in published] == ["emergency_halted"]
    assert [(a.action, a.actor) for a in (await controller.audit_entries())[:1]] == [
        ("halt", "trigger:heartbeat@bot:bot-1")
    ]

    lapses = await controller.heartbeat(*BOT)
    assert lapses == clock.now + 10.0
    clock.advance(5.0)
    ((_, quiet),) = await evaluator.evaluate()
    assert (quiet.fire, quiet.breached) == (False, False)
    assert halt_of(controller, BOT) is not None  # a beat is no resume

    await controller.resume(*BOT, reason="bot is back", actor="ops")
    for _ in range(3):
        clock.advance(9.0)
        await controller.heartbeat(*BOT)
        assert not any(o.fire for _, o in await evaluator.evaluate())
    clock.advance(10.0 + eps)
    ((_, again),) = await evaluator.evaluate()
    assert again.fire
    assert halt_of(controller, BOT) is not None
    assert fired(metrics, "heartbeat") == 2


@pytest.mark.asyncio
async def test_the_background_loop_fires_a_lapsed_switch_and_stops_on_close(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """start() evaluates every interval on its own; close() stops it (idempotent both)."""
    await controller.set_risk_limit(
        "heartbeat", 1.0, options=LimitOptions(state=TradingState.HALTED)
    )
    clock.advance(2.0)
    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=0.01)
    evaluator.start()
    evaluator.start()

    await eventually(lambda: halt_of(controller, (Scope.GLOBAL, None)) is not None, "halted")
    await evaluator.close()
    await evaluator.close()

    halt = halt_of(controller, (Scope.GLOBAL, None))
    assert halt is not None and halt.state is TradingState.HALTED


# --- failures ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failing_trigger_never_stops_the_round(
    controller: LocalEmergencyController,
    evaluator: TriggerEvaluator,
    pnl: Pnl,
    clock: ManualClock,
    metrics: Metrics,
) -> None:
    """An equity read that fails skips its trigger (counted) while the others of the
    round are evaluated; without a P&L source loss triggers are skipped, heartbeats not."""
    await controller.set_risk_limit(
        "daily_loss", -1.0, scope=BOT[0], target=BOT[1], options=trigger()
    )
    await controller.set_risk_limit(
        "daily_loss", -1.0, scope=Scope.STRATEGY, target="strat-1", options=trigger()
    )
    await controller.set_risk_limit("heartbeat", 60.0, scope=BOT[0], target=BOT[1])
    pnl.set(UnavailableError("ledger down"))

    (evaluated,) = await rounds(evaluator, clock)
    blind = TriggerEvaluator(controller, None, clock=clock, interval=INTERVAL)
    (seen,) = await rounds(blind, clock)

    assert [limit.key for limit, _ in evaluated] == [  # switches first
        "heartbeat@bot:bot-1",
        "daily_loss@strategy:strat-1",
    ]
    assert evaluator.failures == 1
    assert (
        metrics.registry.get_sample_value(
            "tradeflow_trigger_errors_total", {"limit_type": "daily_loss"}
        )
        == 1
    )
    assert [limit.key for limit, _ in seen] == ["heartbeat@bot:bot-1"]


@pytest.mark.asyncio
async def test_a_halt_that_fails_is_tried_again_next_round(
    controller: LocalEmergencyController,
    evaluator: TriggerEvaluator,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trigger whose halt is refused (no room for another bot halt) is left unfired, so
    the next round, with room made, acts."""
    monkeypatch.setattr("tradeflow.domain.emergency.HALTS_PER_SCOPE_KIND_MAX", 1)
    await controller.set_risk_limit("heartbeat", 5.0, scope=BOT[0], target=BOT[1])
    await controller.halt(Scope.BOT, "bot-2", reason="full")
    clock.advance(6.0)

    ((_, refused),) = await evaluator.evaluate()
    assert refused.fire  # asked for, refused: asked for again next round
    assert halt_of(controller, BOT) is None
    await controller.resume(Scope.BOT, "bot-2", reason="room")
    ((_, outcome),) = (await rounds(evaluator, clock))[0]

    assert outcome.fire
    assert halt_of(controller, BOT) is not None
    assert evaluator.failures == 1


@pytest.mark.asyncio
async def test_confirm_is_awaited_with_each_halt_a_trigger_sets(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """The service's halt barrier (``confirm``) gets the trigger's halt; its failure is
    counted and the halt stands."""
    confirmed: list[HaltState] = []

    async def confirm(halt: HaltState) -> None:
        confirmed.append(halt)
        raise UnavailableError("barrier down")

    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=INTERVAL, confirm=confirm)
    await controller.set_risk_limit("heartbeat", 5.0, scope=BOT[0], target=BOT[1])
    clock.advance(6.0)

    await evaluator.evaluate()

    assert confirmed == [halt_of(controller, BOT)]
    assert evaluator.failures == 1


def test_an_interval_that_is_not_positive_is_refused(controller: LocalEmergencyController) -> None:
    """A trigger interval of 0 (or NaN) would spin: refused at construction."""
    for interval in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="interval"):
            TriggerEvaluator(controller, None, clock=ManualClock(), interval=interval)


# --- the embedded infrastructure --------------------------------------------------------


@pytest_asyncio.fixture
async def infra(clock: ManualClock) -> AsyncIterator[Infrastructure]:
    """An embedded infrastructure whose own evaluator waits an hour between rounds (the
    test runs them), on the test's clock."""
    settings = replace(Settings.from_env("test"), trigger_interval=3600.0)
    async with await Infrastructure.create("test", settings=settings, clock=clock) as infra:
        yield infra


def round_trip(quantity: float) -> dict[str, Any]:
    """A market buy, then a market sell of the same quantity (a loss: the spread, fees)."""
    return {
        "blocks": [
            block(
                "buy",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy", "quantity": quantity},
            ),
            block(
                "sell",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "sell"},
                {"quantity": "buy.filled_quantity"},
            ),
        ]
    }


@pytest.mark.asyncio
async def test_the_embedded_infrastructure_evaluates_triggers_on_the_paper_ledger(
    infra: Infrastructure, clock: ManualClock
) -> None:
    """infra.triggers reads the bot's equity from the paper exchange: a losing round trip
    of the bot breaches its daily loss and the bot's next order is refused; a lapsed
    heartbeat of another bot moves that bot to CANCEL_ONLY."""
    assert infra.triggers is not None
    await infra.emergency.set_risk_limit(
        "daily_loss",
        -1e-9,
        scope=Scope.BOT,
        target="bot-1",
        options=trigger(state=TradingState.HALTED),
    )
    await infra.emergency.set_risk_limit("heartbeat", 30.0, scope=Scope.BOT, target="bot-2")
    anchored = await infra.triggers.evaluate()
    run = await EnhancedWorkflowExecutor(
        round_trip(0.01), infra, "wf-1", "bot-1", "strat-1"
    ).execute()
    assert run["status"] == "completed"
    clock.advance(3600.0)

    evaluated = {limit.key: outcome for limit, outcome in await infra.triggers.evaluate()}

    assert [limit.key for limit, _ in anchored] == ["heartbeat@bot:bot-2", "daily_loss@bot:bot-1"]
    loss = evaluated["daily_loss@bot:bot-1"]
    assert loss.fire and loss.value < 0
    assert infra.emergency.trading_state(IDS) is TradingState.HALTED
    assert evaluated["heartbeat@bot:bot-2"].fire
    assert infra.emergency.trading_state(ScopeIds(bot_id="bot-2")) is TradingState.CANCEL_ONLY


# --- properties of the rule -------------------------------------------------------------


def loss_limit(kind: str, threshold: float, consecutive: int) -> RiskLimit:
    return RiskLimit(
        kind,
        threshold,
        LimitDirection.BELOW,
        state=TradingState.HALTED,
        consecutive=consecutive,
    )


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["daily_loss", "max_drawdown"]),
    threshold=st.floats(-500, -1),
    consecutive=st.integers(1, 5),
    equities=st.lists(st.floats(-2000, 2000), min_size=1, max_size=40),
)
def test_a_trigger_fires_exactly_while_a_run_of_n_breaches_lasts(
    kind: str, threshold: float, consecutive: int, equities: list[float]
) -> None:
    """Over any equity series within one trading day: an evaluation fires (asks for the
    trigger's state) exactly when it ends a run of at least ``consecutive`` breaches, so
    never before the debounce and at every evaluation after it while the breach lasts;
    ``fired`` says a fire happened in the current run."""
    limit = loss_limit(kind, threshold, consecutive)
    progress = TriggerProgress()
    run = 0
    for step, equity in enumerate(equities):
        outcome = evaluate_trigger(limit, progress, equity, START + step)
        progress = outcome.progress
        run = run + 1 if outcome.breached else 0
        assert outcome.fire == (run >= consecutive)
        assert progress.fired == (run >= consecutive)
        assert progress.breaches == run


@settings(max_examples=200, deadline=None)
@given(
    ttl=st.floats(0.001, 86_400),
    age=st.floats(0, 200_000),
    beaten=st.booleans(),
)
def test_a_heartbeat_fires_exactly_when_its_age_is_beyond_its_ttl(
    ttl: float, age: float, beaten: bool
) -> None:
    """Since the last beat (or since the limit was set, before any beat), the switch fires
    iff more than ``ttl`` seconds went by."""
    limit = RiskLimit(
        "heartbeat", ttl, LimitDirection.ABOVE, updated_at=START, state=TradingState.CANCEL_ONLY
    )
    since = START + 50.0 if beaten else START
    progress = TriggerProgress(last_beat=since if beaten else None)

    outcome = evaluate_trigger(limit, progress, None, since + age)

    assert outcome.fire == outcome.breached == (outcome.value > ttl)
    assert outcome.value == pytest.approx(age, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    offset=st.floats(0, 86_399),
    zone=st.sampled_from(["UTC", "America/New_York", "Asia/Tokyo", "Europe/London"]),
)
def test_a_trading_day_is_one_calendar_day_long_from_its_reset_time(
    hour: int, minute: int, offset: float, zone: str
) -> None:
    """Two instants less than a day apart share a trading day iff no local reset time lies
    between them; in particular the day changes exactly at the reset time."""
    reset = f"{hour:02d}:{minute:02d}"
    start = datetime(2024, 3, 4, hour, minute, tzinfo=ZoneInfo(zone)).timestamp()
    assert trading_day(start - 1, zone, reset) != trading_day(start, zone, reset)
    assert trading_day(start, zone, reset) == trading_day(
        start + min(offset, 3600 * 23), zone, reset
    )


# --- found by review: level-triggered firing, days that only move forward, restore ------


@pytest.mark.asyncio
async def test_a_lapsed_switch_whose_halt_was_lost_or_lifted_restricts_again_next_round(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """Firing is level-triggered: progress stored as fired with no halt written (the
    process died between the two) halts at the next round; an operator who resumes a
    scope whose switch is still lapsed sees it restricted again; a beat ends that."""
    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=INTERVAL)
    await controller.set_risk_limit("heartbeat", 5.0, scope=BOT[0], target=BOT[1])
    key = "heartbeat@bot:bot-1"
    clock.advance(6.0)
    died = TriggerProgress(version=1, breaches=1, fired=True, evaluated_at=clock.now)
    assert await controller.save_trigger_progress(key, died, 0)
    assert halt_of(controller, BOT) is None

    await rounds(evaluator, clock)
    assert halt_of(controller, BOT) is not None

    await controller.resume(*BOT, reason="I know better", actor="ops")
    await rounds(evaluator, clock)
    again = halt_of(controller, BOT)
    assert again is not None and again.state is TradingState.CANCEL_ONLY

    await controller.heartbeat(*BOT)
    await controller.resume(*BOT, reason="the bot is back", actor="ops")
    await rounds(evaluator, clock)
    assert halt_of(controller, BOT) is None


@pytest.mark.asyncio
async def test_a_clock_set_back_does_not_silence_a_trigger(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """Evaluations are per interval slot: after the clock goes back an hour, the next
    round still evaluates, and a lapsed switch fires."""
    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=INTERVAL)
    await controller.set_risk_limit("heartbeat", 5.0, scope=BOT[0], target=BOT[1])
    await rounds(evaluator, clock)
    clock.advance(-3600.0)
    await controller.heartbeat(*BOT)  # beaten "an hour ago" by the new clock
    clock.advance(6.0)
    ((_, outcome),) = await evaluator.evaluate()
    assert outcome.fire
    assert halt_of(controller, BOT) is not None


def test_a_repeated_local_hour_never_reopens_a_trading_day() -> None:
    """New York, reset 01:30: fired at 01:40 EDT on the day clocks go back; at 01:10 EST
    (an hour and a half later) the local date-and-time is earlier, but the day stays, so
    nothing is forgiven or lifted."""
    limit = RiskLimit(
        "daily_loss",
        -100.0,
        LimitDirection.BELOW,
        scope=Scope.BOT,
        target="bot-1",
        state=TradingState.HALTED,
        timezone="America/New_York",
        reset_time="01:30",
        lift_on_reset=True,
    )
    zone = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 35, tzinfo=zone).timestamp()  # 01:35 EDT
    progress = evaluate_trigger(limit, TriggerProgress(), 1000.0, first).progress
    fired_at = datetime(2026, 11, 1, 1, 40, tzinfo=zone).timestamp()  # 01:40 EDT
    outcome = evaluate_trigger(limit, progress, 800.0, fired_at)
    assert outcome.fire and outcome.progress.day is not None
    repeated = datetime(2026, 11, 1, 1, 10, tzinfo=zone, fold=1).timestamp()  # 01:10 EST
    assert repeated > fired_at
    later = evaluate_trigger(limit, outcome.progress, 800.0, repeated)
    assert (later.lift, later.progress.day, later.progress.anchor) == (
        False,
        outcome.progress.day,
        outcome.progress.anchor,
    )
    assert later.fire


@pytest.mark.asyncio
async def test_lift_on_reset_puts_back_the_operators_weaker_halt_it_replaced(
    controller: LocalEmergencyController, evaluator: TriggerEvaluator, pnl: Pnl, clock: ManualClock
) -> None:
    """An operator's REDUCE_ONLY, replaced by the trigger's HALTED, comes back (not
    ACTIVE) when the next trading day lifts the trigger's halt."""
    await halting_daily_loss(controller)
    await controller.halt(*BOT, reason="careful", actor="ops", state=TradingState.REDUCE_ONLY)
    pnl.set(1000.0)
    await rounds(evaluator, clock)
    pnl.set(800.0)
    await rounds(evaluator, clock)
    halted = halt_of(controller, BOT)
    assert halted is not None and halted.state is TradingState.HALTED

    clock.advance(86_400.0)
    await rounds(evaluator, clock)
    restored = halt_of(controller, BOT)
    assert restored is not None
    assert (restored.state, restored.actor, restored.reason) == (
        TradingState.REDUCE_ONLY,
        "ops",
        "careful",
    )


@pytest.mark.asyncio
async def test_a_risk_check_against_a_scoped_trigger_never_halts_everything(
    controller: LocalEmergencyController,
) -> None:
    """A bot's daily_loss trigger tightens that bot's risk node (the check is breached),
    but the breach halts nothing globally: the trigger moves its own scope."""
    await controller.set_risk_limit(
        "daily_loss", -100.0, scope=BOT[0], target=BOT[1], options=trigger()
    )
    with pytest.raises(RiskLimitExceeded) as caught:
        await controller.check_risk_limit("daily_loss", -150.0, -500.0, True, ids=IDS)
    assert (caught.value.threshold, caught.value.halted) == (-100.0, False)
    assert halt_of(controller, (Scope.GLOBAL, None)) is None


@pytest.mark.asyncio
async def test_a_scoped_trigger_never_disables_a_global_limit_that_halts(
    controller: LocalEmergencyController,
) -> None:
    """A global daily_loss of -1000 that halts, and a stricter bot trigger at -500: a
    check at -2000 breaches the global limit too, so it halts everything; at -700 only the
    trigger's threshold is breached, so nothing halts globally."""
    await controller.set_risk_limit("daily_loss", -1000.0)
    await controller.set_risk_limit(
        "daily_loss", -500.0, scope=BOT[0], target=BOT[1], options=trigger()
    )
    with pytest.raises(RiskLimitExceeded) as mild:
        await controller.check_risk_limit("daily_loss", -700.0, ids=IDS)
    assert (mild.value.threshold, mild.value.halted) == (-500.0, False)
    assert halt_of(controller, (Scope.GLOBAL, None)) is None
    with pytest.raises(RiskLimitExceeded) as severe:
        await controller.check_risk_limit("daily_loss", -2000.0, ids=IDS)
    assert severe.value.halted
    assert halt_of(controller, (Scope.GLOBAL, None)) is not None


@pytest.mark.asyncio
async def test_a_lift_that_fails_is_tried_again_and_a_lasting_breach_restricts_at_once(
    controller: LocalEmergencyController,
    evaluator: TriggerEvaluator,
    pnl: Pnl,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the new day the daily_loss trigger's lift fails once (the store blips): the next
    round lifts it. A dead-man's switch on the same bot, lapsed meanwhile under the
    trigger's HALTED, restricts the bot in the very round of the lift (fires come after
    lifts), so the bot is never active while its switch is lapsed."""
    await halting_daily_loss(controller)
    pnl.set(1000.0)
    await rounds(evaluator, clock)
    pnl.set(800.0)
    await rounds(evaluator, clock)
    assert halt_of(controller, BOT) is not None

    real = LocalEmergencyController.lift_for_trigger
    calls = 0

    async def blip(self: LocalEmergencyController, *args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise UnavailableError("store blip")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(LocalEmergencyController, "lift_for_trigger", blip)
    clock.advance(86_400.0)
    await rounds(evaluator, clock)
    assert (halt_of(controller, BOT) or HaltState).state is TradingState.HALTED  # type: ignore[union-attr]
    await rounds(evaluator, clock)
    assert halt_of(controller, BOT) is None
    assert calls == 2

    await controller.set_risk_limit("heartbeat", 0.5, scope=BOT[0], target=BOT[1])
    await controller.halt(*BOT, reason="again", actor="ops")
    await halting_daily_loss(controller)
    await rounds(evaluator, clock)  # the switch lapsed: the ops halt stands over it
    await controller.resume(*BOT, reason="handing over", actor="ops")
    pnl.set(600.0)
    await rounds(evaluator, clock)
    assert halt_of(controller, BOT) is not None  # the daily_loss trigger halted it
    clock.advance(86_400.0)
    ((first, _), (second, lifted)) = (await rounds(evaluator, clock))[0]
    assert (first.limit_type, second.limit_type) == ("heartbeat", "daily_loss")
    assert not lifted.progress.lifting
    standing = halt_of(controller, BOT)
    assert standing is not None
    assert (standing.state, standing.actor) == (
        TradingState.CANCEL_ONLY,
        "trigger:heartbeat@bot:bot-1",
    )
