"""Limits per scope, trigger progress and the trigger evaluator on the Redis emergency
store (what the emergency service runs), against a real redis-server: the same contract
as the embedded store's, and replicas sharing one Redis counting each evaluation once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from kit import ManualClock, eventually
from servers import ServerProcess

from tradeflow.adapters.redis.emergency import RedisEmergencyController, RedisEmergencyStore
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.errors import EmergencyHalted, InvalidRequest, UnavailableError
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import LimitOptions, TriggerProgress
from tradeflow.domain.trading import TradingState
from tradeflow.engine.triggers import TriggerEvaluator
from tradeflow.observability.metrics import Metrics

pytestmark = pytest.mark.integration

IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
DAILY = LimitOptions(
    state=TradingState.HALTED,
    consecutive=2,
    timezone="Europe/London",
    reset_time="08:30",
    lift_on_reset=True,
    cancel_orders=True,
)

Factory = Callable[[], Awaitable[RedisEmergencyController]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def make_controller(
    redis_server: ServerProcess, prefix: str, clock: ManualClock
) -> AsyncIterator[Factory]:
    """Builds started controllers (replicas) on their own clients, sharing this test's key
    prefix and clock (a view that never goes stale: the clock moves by hand)."""
    opened: list[tuple[RedisEmergencyController, aioredis.Redis]] = []

    async def make() -> RedisEmergencyController:
        client = aioredis.from_url(redis_server.url)
        controller = RedisEmergencyController(
            client,
            prefix=prefix,
            clock=clock,
            id_factory=lambda: "id",
            metrics=Metrics(),
            max_staleness=None,
        )
        opened.append((controller, client))
        await controller.start()
        return controller

    yield make
    for controller, client in opened:
        await controller.close()
        await client.aclose()


def store_of(controller: RedisEmergencyController) -> RedisEmergencyStore:
    store = controller._store
    assert isinstance(store, RedisEmergencyStore)
    return store


@pytest.mark.asyncio
async def test_limits_per_scope_are_stored_listed_and_deleted_with_their_options(
    make_controller: Factory,
) -> None:
    """Every option survives Redis; another replica lists the limits by key; a delete is
    audited and seen; each change bumps the version."""
    controller = await make_controller()
    other = await make_controller()
    version = controller.version

    daily = await controller.set_risk_limit(
        "daily_loss", -250.0, scope=Scope.BOT, target="bot-1", options=DAILY, actor="desk"
    )
    rate = await controller.set_risk_limit(
        "order_rate", 5, scope=Scope.WORKFLOW, target="wf-1", options=LimitOptions(window=60.0)
    )
    glob = await controller.set_risk_limit("max_position", 3.0)
    await other.refresh()
    listed = await other.list_risk_limits()
    assert await controller.delete_risk_limit("order_rate", Scope.WORKFLOW, "wf-1", actor="ops")
    assert not await controller.delete_risk_limit("order_rate", Scope.WORKFLOW, "wf-1")
    await other.refresh()

    assert listed == [daily, glob, rate]
    assert LimitOptions.of(listed[0]) == DAILY
    assert [x.key for x in await other.list_risk_limits()] == [
        "daily_loss@bot:bot-1",
        "max_position",
    ]
    assert controller.version == version + 4
    audit = await other.audit_entries()
    assert [(a.action, a.scope, a.target) for a in audit] == [
        ("delete_risk_limit", Scope.WORKFLOW, "wf-1"),
        ("set_risk_limit", None, None),
        ("set_risk_limit", Scope.WORKFLOW, "wf-1"),
        ("set_risk_limit", Scope.BOT, "bot-1"),
    ]
    assert audit[-1].details["timezone"] == "Europe/London"


@pytest.mark.asyncio
async def test_a_limit_stored_by_version_5_still_loads(
    make_controller: Factory, client: aioredis.Redis, prefix: str
) -> None:
    """A ``{p}:limits`` value of five fields, keyed by type, reads as a global limit with
    the default options, and judges checks as before."""
    await client.hset(
        f"{{{prefix}:emergency}}:limits", "open_orders", b'[5.0,"above",false,100.0,"ops"]'
    )
    controller = await make_controller()

    assert await controller.list_risk_limits() == [
        RiskLimit("open_orders", 5.0, LimitDirection.ABOVE, False, 100.0, "ops")
    ]


@pytest.mark.asyncio
async def test_an_unreadable_limit_fails_closed(
    make_controller: Factory, client: aioredis.Redis, prefix: str
) -> None:
    """A limit whose field is not its key (no tradeflow wrote it) makes the state
    unconfirmed: trading is refused."""
    controller = await make_controller()
    await client.hset(
        f"{{{prefix}:emergency}}:limits",
        "max_position@bot:b1",
        b'[1.0,"abs_above",true,0.0,"","bot","b2",null,null,1,"UTC","00:00",false,false]',
    )

    with pytest.raises(UnavailableError, match="unreadable"):
        await controller.refresh()
    with pytest.raises(EmergencyHalted):
        controller.ensure_trading_allowed(IDS)


@pytest.mark.asyncio
async def test_trigger_progress_is_compared_and_set_and_goes_with_its_limit(
    make_controller: Factory,
) -> None:
    """The script writes only over the expected version of an existing limit (another
    evaluator's equal progress included), leaves the state's version alone, survives a
    replacement of the limit and goes with its deletion."""
    controller = await make_controller()
    store = store_of(controller)
    key = "max_drawdown@strategy:strat-1"
    progress = TriggerProgress(version=1, breaches=1, peak=1250.5, evaluated_at=7.0)
    assert not await store.save_trigger_progress(key, progress, 0)
    await controller.set_risk_limit(
        "max_drawdown",
        -10.0,
        scope=Scope.STRATEGY,
        target="strat-1",
        options=LimitOptions(state=TradingState.REDUCE_ONLY),
    )
    version = controller.version

    assert await store.save_trigger_progress(key, progress, 0)
    assert not await store.save_trigger_progress(key, progress, 0)  # an equal rival write
    assert not await store.save_trigger_progress(key, replace(progress, breaches=9), 0)
    assert await store.save_trigger_progress(key, replace(progress, breaches=2), 1)
    await controller.set_risk_limit(
        "max_drawdown",
        -20.0,
        scope=Scope.STRATEGY,
        target="strat-1",
        options=LimitOptions(state=TradingState.REDUCE_ONLY),
    )
    kept = await store.trigger_progress([key, "absent"])
    await controller.refresh()
    assert controller.version == version + 1
    assert await controller.delete_risk_limit("max_drawdown", Scope.STRATEGY, "strat-1")

    assert kept == {key: replace(progress, version=2, breaches=2)}
    assert await store.trigger_progress([key]) == {}


@pytest.mark.asyncio
async def test_a_heartbeat_needs_its_limit_and_re_arms_the_switch(
    make_controller: Factory, clock: ManualClock
) -> None:
    """heartbeat() of a scope without a heartbeat limit names ``scope``; with one it
    stores the beat and returns when it lapses."""
    controller = await make_controller()
    with pytest.raises(InvalidRequest) as caught:
        await controller.heartbeat(Scope.BOT, "bot-1")
    await controller.set_risk_limit("heartbeat", 15.0, scope=Scope.BOT, target="bot-1")
    clock.advance(4.0)

    lapses = await controller.heartbeat(Scope.BOT, "bot-1")

    assert caught.value.field == "scope"
    assert lapses == clock.now + 15.0
    explained = await controller.explain_limits(IDS)
    ((_, progress),) = explained.triggers
    assert (progress.last_beat, progress.version) == (clock.now, 1)


class Pnl:
    """Equity the test sets, read behind a gate the test opens."""

    def __init__(self, equity: float) -> None:
        self.value = equity
        self.gate = asyncio.Event()
        self.reads = 0

    async def equity(self, scope: Scope, target: str | None) -> float:
        self.reads += 1
        await self.gate.wait()
        return self.value


@pytest.mark.asyncio
async def test_replicas_on_one_redis_count_each_evaluation_once_and_halt_once(
    make_controller: Factory, clock: ManualClock
) -> None:
    """Two emergency replicas' evaluators that both read the progress before either
    stores it: one stores and acts, so a consecutive=2 daily loss halts its bot (with
    cancel_orders) after two rounds of both, once."""
    replicas = [await make_controller(), await make_controller()]
    await replicas[0].set_risk_limit(
        "daily_loss", -100.0, scope=Scope.BOT, target="bot-1", options=DAILY
    )
    for replica in replicas:
        await replica.refresh()
    pnl = Pnl(1000.0)
    evaluators = [TriggerEvaluator(r, pnl, clock=clock, interval=1.0) for r in replicas]
    pnl.gate.set()
    assert len(await evaluators[0].evaluate()) == 1  # the day's anchor
    pnl.value = 850.0
    counted = []
    for _ in range(2):
        clock.advance(1.0)
        pnl.gate.clear()
        wanted = pnl.reads + 2
        both = asyncio.gather(*(e.evaluate() for e in evaluators))
        await eventually(lambda: pnl.reads == wanted, "both replicas read the equity")  # noqa: B023
        pnl.gate.set()
        counted.append([len(r) for r in await asyncio.wait_for(both, 30)])
    for evaluator in evaluators:
        await evaluator.close()
    await replicas[1].refresh()

    assert [sorted(c) for c in counted] == [[0, 1], [0, 1]]
    halt = replicas[1].state().halts.get((Scope.BOT, "bot-1"))
    assert halt is not None
    assert (halt.state, halt.cancel_orders, halt.actor) == (
        TradingState.HALTED,
        True,
        "trigger:daily_loss@bot:bot-1",
    )
    audit = await replicas[1].audit_entries()
    assert [a.action for a in audit].count("halt") == 1


@pytest.mark.asyncio
async def test_a_lapsed_heartbeat_moves_its_scope_to_cancel_only_on_redis(
    make_controller: Factory, clock: ManualClock
) -> None:
    """The dead-man's switch on the service's store: not before the ttl, CANCEL_ONLY of
    its workflow after it, seen by another replica."""
    controller = await make_controller()
    other = await make_controller()
    evaluator = TriggerEvaluator(controller, None, clock=clock, interval=0.001)
    await controller.set_risk_limit("heartbeat", 2.0, scope=Scope.WORKFLOW, target="wf-1")
    clock.advance(1.999)
    assert not any(o.fire for _, o in await evaluator.evaluate())
    clock.advance(0.002)

    ((_, outcome),) = await evaluator.evaluate()
    await other.refresh()

    assert outcome.fire
    assert other.trading_state(IDS) is TradingState.CANCEL_ONLY
    await evaluator.close()


@pytest.mark.asyncio
async def test_the_progress_script_is_safe_to_repeat_after_a_lost_reply(
    make_controller: Factory, prefix: str
) -> None:
    """The very same write (same nonce) run twice, as a retry after a dropped connection
    does, is done once and reported done both times; any other write over the same
    version is refused."""
    controller = await make_controller()
    store = store_of(controller)
    await controller.set_risk_limit("heartbeat", 5.0)
    keys = (f"{{{prefix}:emergency}}:limits", f"{{{prefix}:emergency}}:trigger_progress")
    write = b'{"version":1,"breaches":0,"fired":false,"last_beat":3.0,"nonce":"a"}'
    rival = write.replace(b'"a"', b'"b"')

    runs = [
        await store._save_progress(keys=keys, args=("heartbeat", "0", w))
        for w in (write, write, rival)
    ]

    assert runs == [1, 1, 0]
    stored = await store.trigger_progress(["heartbeat"])
    assert stored == {"heartbeat": TriggerProgress(version=1, last_beat=3.0)}
