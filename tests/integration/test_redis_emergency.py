"""The Redis emergency store and controller, against a real redis-server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS, ManualClock
from servers import ServerProcess, free_port

from tradeflow.adapters.redis.emergency import RedisEmergencyController
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.errors import (
    CapacityExceeded,
    ConfigurationError,
    EmergencyHalted,
    RiskLimitExceeded,
)
from tradeflow.domain.records import Event, LimitDirection, Scope
from tradeflow.observability.metrics import Metrics

pytestmark = pytest.mark.integration

IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")

Factory = Callable[..., Awaitable[RedisEmergencyController]]


@pytest_asyncio.fixture
async def make_controller(
    redis_server: ServerProcess, request: pytest.FixtureRequest
) -> AsyncIterator[Factory]:
    """Builds started controllers on their own clients, sharing this test's key prefix."""
    # Only word characters: SCAN MATCH would read [] in parametrized names as a pattern.
    prefix = "test:" + re.sub(r"\W", "_", request.node.name)
    opened: list[tuple[RedisEmergencyController, aioredis.Redis]] = []

    async def make(**kwargs: object) -> RedisEmergencyController:
        client = aioredis.from_url(redis_server.url)
        options = {"clock": SystemClock(), "id_factory": new_id, **kwargs}
        controller = RedisEmergencyController(client, prefix=prefix, **options)  # type: ignore[arg-type]
        opened.append((controller, client))
        await controller.start()
        return controller

    cleanup = aioredis.from_url(redis_server.url)
    yield make
    for controller, client in opened:
        await controller.close()
        await client.aclose()
    keys = [key async for key in cleanup.scan_iter(match=f"{{{prefix}:*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()


def covered(controller: RedisEmergencyController, **ids: str | None) -> bool:
    return controller.active_halt(replace(IDS, **ids)) is not None


@pytest.mark.parametrize(
    ("scope", "target", "free"),
    [
        (Scope.GLOBAL, None, []),
        (Scope.STRATEGY, "strat-1", [{"strategy_id": "strat-2"}, {"strategy_id": None}]),
        (Scope.BOT, "bot-1", [{"bot_id": "bot-2"}, {"bot_id": None}]),
        (Scope.WORKFLOW, "wf-1", [{"workflow_id": "wf-2"}]),
    ],
)
@pytest.mark.asyncio
async def test_each_scope_halts_only_what_it_covers(
    make_controller: Factory, scope: Scope, target: str | None, free: list[dict[str, str | None]]
) -> None:
    """A halt stored in Redis blocks the ids it names, here and in another controller."""
    controller = await make_controller()
    other = await make_controller()

    await controller.halt(scope, target, reason="test", actor="ops")
    await other.refresh()

    for view in (controller, other):
        assert covered(view)
        assert not any(covered(view, **ids) for ids in free)
        with pytest.raises(EmergencyHalted) as caught:
            view.ensure_trading_allowed(IDS)
        assert (caught.value.scope, caught.value.target) == (scope.value, target)


@pytest.mark.asyncio
async def test_most_restrictive_halt_wins(make_controller: Factory) -> None:
    """With several halts covering a bot the broadest is reported; resumes peel them off."""
    controller = await make_controller()
    halts = [
        (Scope.GLOBAL, None),
        (Scope.STRATEGY, "strat-1"),
        (Scope.BOT, "bot-1"),
        (Scope.WORKFLOW, "wf-1"),
    ]
    for scope, target in reversed(halts):
        await controller.halt(scope, target, reason=f"{scope.value} halt")

    reported = []
    for scope, target in halts:
        halt = controller.active_halt(IDS)
        reported.append(halt.scope if halt else None)
        assert await controller.resume(scope, target, reason="clear")

    assert reported == [Scope.GLOBAL, Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW]
    controller.ensure_trading_allowed(IDS)


@pytest.mark.asyncio
async def test_rehalt_keeps_since_and_resume_of_nothing_is_false(make_controller: Factory) -> None:
    """A second halt of a scope keeps its start time; resuming a scope not halted changes nothing."""
    clock = ManualClock()
    # The clock moves by hand: the view must not expire when it jumps.
    controller = await make_controller(clock=clock, max_staleness=None)
    first = await controller.halt(Scope.BOT, "bot-1", reason="first")
    clock.advance(1.0)
    again = await controller.halt(Scope.BOT, "bot-1", reason="second", actor="carol")
    version = controller.version

    assert not await controller.resume(Scope.BOT, "bot-2", reason="nothing there")
    assert again.since == first.since
    assert [(h.reason, h.actor, h.since) for h in await controller.halts()] == [
        ("second", "carol", first.since)
    ]
    assert controller.version == version
    assert [a.action for a in await controller.audit_entries()] == ["halt", "halt"]


@pytest.mark.asyncio
async def test_version_increments_on_each_change(make_controller: Factory) -> None:
    """Halt, limit change and resume each bump the version by one; a breach alone does not."""
    controller = await make_controller()
    versions = [controller.version]

    await controller.halt(Scope.GLOBAL, reason="r")
    versions.append(controller.version)
    await controller.set_risk_limit("max_exposure", 2.0)
    versions.append(controller.version)
    await controller.resume(Scope.GLOBAL, reason="r")
    versions.append(controller.version)
    with pytest.raises(RiskLimitExceeded):
        await controller.check_risk_limit("max_exposure", 3.0, auto_halt=False)
    versions.append(controller.version)

    start = versions[0]
    assert versions == [start, start + 1, start + 2, start + 3, start + 3]


@pytest.mark.asyncio
async def test_waiting_for_a_change_wakes_on_a_halt_elsewhere(make_controller: Factory) -> None:
    """A watcher blocked in wait_for_change gets the new state when another controller halts."""
    watcher = await make_controller()
    writer = await make_controller()
    seen = watcher.version
    waiting = asyncio.create_task(watcher.wait_for_change(seen))
    await asyncio.sleep(0)  # let the waiter block: it must be woken, not find the change

    await writer.halt(Scope.STRATEGY, "strat-1", reason="desk call", actor="desk")
    async with asyncio.timeout(DEADLINE_SECONDS):
        snapshot = await waiting

    assert snapshot.version == seen + 1
    assert [(h.scope, h.target, h.reason) for h in snapshot.halt_list()] == [
        (Scope.STRATEGY, "strat-1", "desk call")
    ]
    with pytest.raises(EmergencyHalted, match="desk call"):
        watcher.ensure_trading_allowed(IDS)


@pytest.mark.asyncio
async def test_risk_breach_is_audited_published_and_halts(make_controller: Factory) -> None:
    """A breach with auto_halt writes the audit entry, publishes, counts and halts globally."""
    published: list[Event] = []
    metrics = Metrics()
    controller = await make_controller(publish=published.append, metrics=metrics)
    other = await make_controller()
    await controller.set_risk_limit("daily_loss", -500.0, actor="risk-desk")

    with pytest.raises(RiskLimitExceeded) as caught:
        await controller.check_risk_limit("daily_loss", -600.0, ids=IDS)
    await other.refresh()

    assert caught.value.halted
    with pytest.raises(EmergencyHalted) as halted:
        other.ensure_trading_allowed(ScopeIds(workflow_id="any"))
    assert (halted.value.scope, halted.value.reason) == (
        "global",
        "risk limit 'daily_loss' breached: value -600.0 < threshold -500.0",
    )
    assert [e.type for e in published] == ["risk_limit_exceeded", "emergency_halted"]
    assert (
        metrics.registry.get_sample_value(
            "tradeflow_risk_breaches_total", {"limit_type": "daily_loss"}
        )
        == 1
    )
    audit = await other.audit_entries()
    assert [(a.action, a.actor) for a in audit] == [
        ("halt", "risk:daily_loss"),
        ("risk_breach", "risk:daily_loss"),
        ("set_risk_limit", "risk-desk"),
    ]
    assert [a.entry_id for a in audit] == sorted((a.entry_id for a in audit), reverse=True)
    assert (audit[1].details["value"], audit[1].details["bot_id"]) == (-600.0, "bot-1")


@pytest.mark.asyncio
async def test_state_survives_a_redis_restart(
    make_controller: Factory, redis_server: ServerProcess
) -> None:
    """Halts, limits, audit and version outlive a redis-server restart; writes go on after it."""
    # No polling: the halt after the restart is then the first to meet a dead connection.
    controller = await make_controller(poll_interval=3600, max_staleness=None)
    halt = await controller.halt(Scope.BOT, "bot-1", reason="before restart", actor="ops")
    limit = await controller.set_risk_limit("open_orders", 5, LimitDirection.ABOVE, actor="ops")
    version = controller.version

    # Blocking the loop on purpose: the open connections die unnoticed, as in a crash.
    redis_server.restart()
    again = await controller.halt(Scope.BOT, "bot-1", reason="after restart", actor="ops")
    fresh = await make_controller()

    assert (again.since, again.reason) == (halt.since, "after restart")
    assert await fresh.halts() == [again]
    assert await fresh.list_risk_limits() == [limit]
    assert fresh.version == version + 1
    assert (await controller.refresh()).version == version + 1
    assert [a.action for a in await fresh.audit_entries()] == ["halt", "set_risk_limit", "halt"]


@pytest.mark.asyncio
async def test_fails_closed_without_redis() -> None:
    """With nothing listening, start raises and every check refuses trading."""
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}")
    controller = RedisEmergencyController(client, clock=SystemClock(), id_factory=new_id)
    try:
        with pytest.raises(Exception, match="redis emergency store"):
            await controller.start()
        with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
            controller.ensure_trading_allowed(IDS)
    finally:
        await controller.close()
        await client.aclose()


def test_refuses_a_client_that_decodes_responses() -> None:
    """The store parses bytes; a decoding client is a configuration error named up front."""
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisEmergencyController(
            aioredis.Redis(decode_responses=True), clock=SystemClock(), id_factory=new_id
        )


@pytest.mark.asyncio
async def test_concurrent_halts_never_pass_the_bound_of_their_scope_kind(
    make_controller: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty bot halts at once against a bound of five: five are stored, fifteen are
    CapacityExceeded (the count and the write happen under one lock)."""
    monkeypatch.setattr("tradeflow.domain.emergency.HALTS_PER_SCOPE_KIND_MAX", 5)
    controller = await make_controller()

    async with asyncio.timeout(DEADLINE_SECONDS):
        results = await asyncio.gather(
            *(controller.halt(Scope.BOT, f"bot-{n}", reason="r") for n in range(20)),
            return_exceptions=True,
        )

    refused = [r for r in results if isinstance(r, CapacityExceeded)]
    assert (len(refused), len(results)) == (15, 20)
    assert len(await (await make_controller()).halts()) == 5
