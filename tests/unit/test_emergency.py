"""The local emergency controller (scoped halts, cross-process visibility, risk limits),
the risk checker without one, and the watched view remote controls share."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import stamina
from kit import DEADLINE_SECONDS, ManualClock

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.server import MAX_MESSAGE_BYTES
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
from tradeflow.domain import errors
from tradeflow.domain.clock import new_id
from tradeflow.domain.emergency import MAX_AUDIT_PAGE, EmergencySnapshot, ScopeIds
from tradeflow.domain.limits import (
    ACTOR_MAX_LENGTH,
    FOUND_MAX_CHARS,
    HALTS_PER_SCOPE_KIND_MAX,
    ID_MAX_LENGTH,
    RISK_LIMITS_MAX,
    TEXT_MAX_LENGTH,
    TIMESTAMP_MAX,
)
from tradeflow.domain.records import (
    AuditEntry,
    Event,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
)
from tradeflow.domain.trading import TradingState
from tradeflow.engine.emergency import (
    EmergencyHalted,
    LocalRiskChecker,
    RiskLimitExceeded,
    WatchedView,
)
from tradeflow.observability.metrics import Metrics
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb

IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")


@pytest.fixture
def second(db_path: Path) -> Iterator[LocalEmergencyController]:
    """A controller on its own connection: what another process sees."""
    connection = open_database(db_path)
    yield LocalEmergencyController(connection, clock=ManualClock(), id_factory=new_id)
    connection.close()


def covered(controller: LocalEmergencyController, **ids: str | None) -> bool:
    return controller.active_halt(replace(IDS, **ids)) is not None


def test_contract_error_names_are_the_error_tree() -> None:
    """The seed's import path gives the classes of tradeflow.domain.errors."""
    assert EmergencyHalted is errors.EmergencyHalted
    assert RiskLimitExceeded is errors.RiskLimitExceeded


@pytest.mark.parametrize(
    ("scope", "target", "blocked", "free"),
    [
        (Scope.GLOBAL, None, [{}, {"bot_id": None, "strategy_id": None}], []),
        (Scope.STRATEGY, "strat-1", [{}], [{"strategy_id": "strat-2"}, {"strategy_id": None}]),
        (Scope.BOT, "bot-1", [{}], [{"bot_id": "bot-2"}, {"bot_id": None}]),
        (Scope.WORKFLOW, "wf-1", [{}], [{"workflow_id": "wf-2"}]),
    ],
)
@pytest.mark.asyncio
async def test_each_scope_halts_only_what_it_covers(
    controller: LocalEmergencyController,
    scope: Scope,
    target: str | None,
    blocked: list[dict[str, str | None]],
    free: list[dict[str, str | None]],
) -> None:
    """A halt blocks the ids it names and leaves every other id trading."""
    await controller.halt(scope, target, reason="test", actor="ops")

    assert all(covered(controller, **ids) for ids in blocked)
    assert not any(covered(controller, **ids) for ids in free)
    with pytest.raises(EmergencyHalted) as caught:
        controller.ensure_trading_allowed(IDS)
    assert (caught.value.scope, caught.value.target, caught.value.reason) == (
        scope.value,
        target,
        "test",
    )


@pytest.mark.asyncio
async def test_most_restrictive_halt_wins(controller: LocalEmergencyController) -> None:
    """With several halts covering a bot, the broadest one is reported; resume peels them."""
    for scope, target in [
        (Scope.WORKFLOW, "wf-1"),
        (Scope.BOT, "bot-1"),
        (Scope.STRATEGY, "strat-1"),
        (Scope.GLOBAL, None),
    ]:
        await controller.halt(scope, target, reason=f"{scope.value} halt")

    reported = []
    for scope, target in [
        (Scope.GLOBAL, None),
        (Scope.STRATEGY, "strat-1"),
        (Scope.BOT, "bot-1"),
        (Scope.WORKFLOW, "wf-1"),
    ]:
        halt = controller.active_halt(IDS)
        reported.append(halt.scope if halt else None)
        assert await controller.resume(scope, target, reason="clear")

    assert reported == [Scope.GLOBAL, Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW]
    controller.ensure_trading_allowed(IDS)
    assert controller.active_halt(IDS) is None


@pytest.mark.asyncio
async def test_halt_and_resume_are_published_counted_and_audited(
    controller: LocalEmergencyController, published: list[Event], metrics: Metrics
) -> None:
    """Halt and resume each emit an event, count, and write an audit entry."""
    await controller.halt(Scope.BOT, "bot-1", reason="maintenance", actor="alice")
    assert await controller.resume(Scope.BOT, "bot-1", reason="done", actor="bob")
    assert not await controller.resume(Scope.BOT, "bot-1", reason="again", actor="bob")

    assert [(e.type, e.sequence, e.event_id) for e in published] == [
        ("emergency_halted", 1, "id-1"),
        ("emergency_resumed", 2, "id-2"),
    ]
    assert published[0].data == {
        "scope": "bot",
        "target": "bot-1",
        "reason": "maintenance",
        "actor": "alice",
        "state": "halted",
        "cancel_orders": False,
    }
    assert metrics.registry.get_sample_value("tradeflow_halts_total", {"scope": "bot"}) == 1
    audit = await controller.audit_entries()
    assert [(a.action, a.actor, a.scope, a.target, a.reason) for a in audit] == [
        ("resume", "bob", Scope.BOT, "bot-1", "done"),
        ("halt", "alice", Scope.BOT, "bot-1", "maintenance"),
    ]


@pytest.mark.asyncio
async def test_halting_again_updates_reason_and_keeps_since(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """A second halt of the same scope replaces the reason; the halt still dates from the first."""
    first = await controller.halt(Scope.GLOBAL, reason="first")
    clock.now += 60
    again = await controller.halt(Scope.GLOBAL, reason="second", actor="carol")

    assert again.since == first.since
    assert [(h.reason, h.actor) for h in await controller.halts()] == [("second", "carol")]


@pytest.mark.asyncio
async def test_halts_lists_broadest_first(controller: LocalEmergencyController) -> None:
    """halts() lists every active halt, global first."""
    await controller.halt(Scope.WORKFLOW, "wf-1", reason="r")
    await controller.halt(Scope.GLOBAL, reason="r")

    assert [(h.scope, h.target) for h in await controller.halts()] == [
        (Scope.GLOBAL, None),
        (Scope.WORKFLOW, "wf-1"),
    ]


@pytest.mark.asyncio
async def test_halt_is_visible_to_a_controller_on_another_connection(
    controller: LocalEmergencyController, second: LocalEmergencyController
) -> None:
    """A halt and a resume committed on one connection reach the other's next check."""
    second.ensure_trading_allowed(IDS)

    await controller.halt(Scope.STRATEGY, "strat-1", reason="desk call")
    with pytest.raises(EmergencyHalted, match="desk call"):
        second.ensure_trading_allowed(IDS)

    await controller.resume(Scope.STRATEGY, "strat-1", reason="ok")
    second.ensure_trading_allowed(IDS)
    assert await second.halts() == []


def test_halt_from_another_process_stops_trading(
    controller: LocalEmergencyController, db_path: Path
) -> None:
    """`halt` run in a separate Python process blocks this controller's next action."""
    controller.ensure_trading_allowed(IDS)
    script = textwrap.dedent(
        """
        import asyncio, sys
        from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
        from tradeflow.domain.records import Scope
        from tradeflow.adapters.sqlite.database import open_database
        from tradeflow.domain.clock import SystemClock, new_id

        conn = open_database(sys.argv[1])
        controller = LocalEmergencyController(conn, clock=SystemClock(), id_factory=new_id)
        asyncio.run(controller.halt(Scope.BOT, "bot-1", reason="ops stop", actor="cli"))
        conn.close()
        """
    )

    subprocess.run([sys.executable, "-c", script, str(db_path)], check=True, timeout=60)

    with pytest.raises(EmergencyHalted) as caught:
        controller.ensure_trading_allowed(IDS)
    assert (caught.value.scope, caught.value.target, caught.value.reason) == (
        "bot",
        "bot-1",
        "ops stop",
    )


def test_fails_closed_when_the_database_is_unusable(
    controller: LocalEmergencyController, conn: sqlite3.Connection
) -> None:
    """With the connection gone, every check refuses trading instead of guessing."""
    controller.ensure_trading_allowed(IDS)

    conn.close()

    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        controller.ensure_trading_allowed(IDS)
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        controller.active_halt(IDS)


@pytest.mark.asyncio
async def test_fails_closed_after_close_and_on_unreadable_rows(
    controller: LocalEmergencyController, second: LocalEmergencyController, db_path: Path
) -> None:
    """A closed controller, and a halts row no tradeflow wrote, both refuse trading."""
    await controller.close()
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        controller.ensure_trading_allowed(IDS)

    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute(
        "INSERT INTO halts (scope, target, reason, actor, since) VALUES ('galaxy', 'x', 'r', 'a', 0)"
    )
    writer.close()
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        second.ensure_trading_allowed(IDS)


@pytest.mark.parametrize(
    ("limit_type", "value", "threshold", "breached"),
    [
        ("daily_loss", -600.0, -500.0, True),
        ("daily_loss", -400.0, -500.0, False),
        ("max_drawdown", -0.3, -0.2, True),
        ("max_drawdown", -0.1, -0.2, False),
        ("max_position", -12.0, 10.0, True),
        ("max_position", 12, 10.0, True),
        ("max_position", -9.0, 10.0, False),
        ("max_order_notional", 50_001.0, 50_000.0, True),
        ("max_order_notional", 50_000.0, 50_000.0, False),
        ("max_exposure", 2.5, 2.0, True),
        ("max_exposure", 1.5, 2.0, False),
    ],
)
@pytest.mark.asyncio
async def test_default_direction_per_limit_type(
    controller: LocalEmergencyController,
    limit_type: str,
    value: float,
    threshold: float,
    breached: bool,
) -> None:
    """Losses breach below, position breaches on either side, notional/exposure above."""
    try:
        await controller.check_risk_limit(limit_type, value, threshold, auto_halt=False)
    except RiskLimitExceeded as exc:
        outcome = (True, exc.limit_type, exc.value, exc.threshold, exc.halted)
    else:
        outcome = (False, limit_type, float(value), threshold, False)

    assert outcome == (breached, limit_type, float(value), threshold, False)


@pytest.mark.asyncio
async def test_breach_with_auto_halt_halts_everything(
    controller: LocalEmergencyController, published: list[Event], metrics: Metrics
) -> None:
    """The seed's daily-loss breach raises, halts globally, publishes and audits it."""
    with pytest.raises(RiskLimitExceeded) as caught:
        await controller.check_risk_limit("daily_loss", -600, -500.0, auto_halt=True, ids=IDS)

    assert (caught.value.limit_type, caught.value.value, caught.value.threshold) == (
        "daily_loss",
        -600.0,
        -500.0,
    )
    assert caught.value.halted
    reason = "risk limit 'daily_loss' breached: value -600.0 < threshold -500.0"
    with pytest.raises(EmergencyHalted) as halted:
        controller.ensure_trading_allowed(ScopeIds(workflow_id="any"))
    assert (halted.value.scope, halted.value.reason) == ("global", reason)
    assert [e.type for e in published] == ["risk_limit_exceeded", "emergency_halted"]
    assert published[0].data == {
        "limit_type": "daily_loss",
        "value": -600.0,
        "threshold": -500.0,
        "direction": "below",
        "auto_halt": True,
    }
    assert (published[0].workflow_id, published[0].bot_id) == ("wf-1", "bot-1")
    assert published[1].data["actor"] == "risk:daily_loss"
    assert (
        metrics.registry.get_sample_value(
            "tradeflow_risk_breaches_total", {"limit_type": "daily_loss"}
        )
        == 1
    )
    audit = await controller.audit_entries()
    assert [a.action for a in audit] == ["halt", "risk_breach"]
    assert audit[1].details["value"] == -600.0
    assert audit[1].details["bot_id"] == "bot-1"


@pytest.mark.asyncio
async def test_breach_without_auto_halt_does_not_halt(
    controller: LocalEmergencyController,
) -> None:
    """auto_halt=False reports the breach but leaves trading on."""
    with pytest.raises(RiskLimitExceeded) as caught:
        await controller.check_risk_limit("max_exposure", 3.0, 2.0, auto_halt=False)

    assert not caught.value.halted
    controller.ensure_trading_allowed(IDS)


@pytest.mark.asyncio
async def test_no_breach_writes_nothing(
    controller: LocalEmergencyController, published: list[Event]
) -> None:
    """A value inside its limit leaves no audit entry and no event."""
    await controller.check_risk_limit("daily_loss", -100.0, -500.0)

    assert await controller.audit_entries() == []
    assert published == []


@pytest.mark.asyncio
async def test_configured_limit_supplies_threshold_and_direction(
    controller: LocalEmergencyController, second: LocalEmergencyController
) -> None:
    """A configured limit (even a custom type) is used when the call gives no threshold."""
    limit = await controller.set_risk_limit(
        "open_orders", 5, LimitDirection.ABOVE, auto_halt=False, actor="risk-desk"
    )

    await second.check_risk_limit("open_orders", 5, auto_halt=False)
    with pytest.raises(RiskLimitExceeded) as caught:
        await second.check_risk_limit("open_orders", 6, auto_halt=False)

    assert caught.value.threshold == 5.0
    assert await second.list_risk_limits() == [limit]
    audit = await controller.audit_entries(limit=5)
    assert [(a.action, a.actor, a.details["threshold"]) for a in audit] == [
        ("risk_breach", "risk:open_orders", 5.0),
        ("set_risk_limit", "risk-desk", 5.0),
    ]
    assert len(await controller.audit_entries(limit=1)) == 1


@pytest.mark.asyncio
async def test_known_limit_type_gets_its_default_direction(
    controller: LocalEmergencyController,
) -> None:
    """set_risk_limit without a direction uses the known one for the type."""
    limit = await controller.set_risk_limit("max_position", 10.0)

    assert limit.direction is LimitDirection.ABS_ABOVE
    assert await controller.list_risk_limits() == [limit]


Call = Callable[[LocalEmergencyController], Awaitable[object]]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.halt("galaxy", reason="r"), "scope"),
        (lambda c: c.halt(Scope.GLOBAL, "x", reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, None, reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, "", reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, "b", reason=" "), "reason"),
        (lambda c: c.resume(Scope.WORKFLOW, None, reason="r"), "target"),
        (lambda c: c.check_risk_limit("mystery", 1.0, 2.0), "limit_type"),
        (lambda c: c.check_risk_limit("daily_loss", 1.0), "threshold"),
        (lambda c: c.check_risk_limit("daily_loss", float("nan"), -500.0), "value"),
        (lambda c: c.check_risk_limit("daily_loss", True, -500.0), "value"),
        (lambda c: c.check_risk_limit("daily_loss", "-600", -500.0), "value"),
        (lambda c: c.check_risk_limit("daily_loss", -1.0, float("inf")), "threshold"),
        (lambda c: c.set_risk_limit("mystery", 1.0), "direction"),
        (lambda c: c.set_risk_limit("daily_loss", 1.0, "sideways"), "direction"),
        (lambda c: c.set_risk_limit("daily_loss", None), "threshold"),
        (lambda c: c.set_risk_limit("", 1.0), "limit_type"),
        (lambda c: c.halt(Scope.BOT, "b" * 1_000_000, reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, "bot\x00", reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, "\x1b[2Jbot", reason="r"), "target"),
        (lambda c: c.halt(Scope.BOT, "bot.1", reason="r"), "target"),
        (lambda c: c.halt(Scope.GLOBAL, reason="r" * 1025), "reason"),
        (lambda c: c.halt(Scope.GLOBAL, reason="\x1b[31mred"), "reason"),
        (lambda c: c.halt(Scope.GLOBAL, reason="nul\x00"), "reason"),
        (lambda c: c.halt(Scope.GLOBAL, reason="r", actor="a" * 129), "actor"),
        (lambda c: c.halt(Scope.GLOBAL, reason="r", actor="line\nbreak"), "actor"),
        (lambda c: c.resume(Scope.BOT, "b" * 129, reason="r"), "target"),
        (lambda c: c.resume(Scope.GLOBAL, reason="\x9bcsi"), "reason"),
        (lambda c: c.check_risk_limit("daily loss", -1.0, 2.0), "limit_type"),
        (lambda c: c.check_risk_limit("l" * 129, -1.0, 2.0), "limit_type"),
        (
            lambda c: c.check_risk_limit("daily_loss", -1.0, 2.0, ids=ScopeIds(bot_id="a.b")),
            "bot_id",
        ),
        (
            lambda c: c.check_risk_limit("daily_loss", -1.0, 2.0, ids=ScopeIds(workflow_id="")),
            "workflow_id",
        ),
        (
            lambda c: c.check_risk_limit("daily_loss", 1, 2, ids=ScopeIds(strategy_id="s" * 129)),
            "strategy_id",
        ),
        (lambda c: c.set_risk_limit("max\x00position", 1.0), "limit_type"),
        (lambda c: c.set_risk_limit("daily_loss", -1.0, actor="\x1b]0;title\x07"), "actor"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_requests_name_the_field(
    controller: LocalEmergencyController, call: Call, field: str
) -> None:
    """Malformed halt, resume, check and set calls raise InvalidRequest naming the field."""
    with pytest.raises(errors.InvalidRequest) as caught:
        await call(controller)

    assert caught.value.field == field
    assert len(caught.value.message) < 2 * FOUND_MAX_CHARS + len(caught.value.expected)
    assert await controller.audit_entries() == []
    assert await controller.halts() == []


@pytest.mark.asyncio
async def test_halts_per_scope_kind_are_bounded_and_a_global_halt_never_refused(
    controller: LocalEmergencyController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One more halt of a full scope kind is CapacityExceeded; re-halts, other kinds and a
    global halt still go through, and a resume makes room again."""
    monkeypatch.setattr("tradeflow.domain.emergency.HALTS_PER_SCOPE_KIND_MAX", 2)
    for bot in ("bot-1", "bot-2"):
        await controller.halt(Scope.BOT, bot, reason="r")

    with pytest.raises(errors.CapacityExceeded) as caught:
        await controller.halt(Scope.BOT, "bot-3", reason="r")
    assert (caught.value.grpc_status, caught.value.what, caught.value.capacity) == (
        "FAILED_PRECONDITION",
        "active bot halts",
        2,
    )
    await controller.halt(Scope.BOT, "bot-2", reason="again")
    await controller.halt(Scope.STRATEGY, "strat-1", reason="r")
    await controller.halt(Scope.GLOBAL, reason="r")
    assert await controller.resume(Scope.BOT, "bot-1", reason="r")
    await controller.halt(Scope.BOT, "bot-3", reason="r")

    halts = await controller.halts()
    assert [(h.scope, h.target) for h in halts] == [
        (Scope.GLOBAL, None),
        (Scope.STRATEGY, "strat-1"),
        (Scope.BOT, "bot-2"),
        (Scope.BOT, "bot-3"),
    ]
    assert len(await controller.audit_entries()) == 7


@pytest.mark.asyncio
async def test_risk_limit_types_are_bounded_and_replacing_one_never_refused(
    controller: LocalEmergencyController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit type past RISK_LIMITS_MAX is CapacityExceeded; a configured one is replaced."""
    monkeypatch.setattr("tradeflow.domain.emergency.RISK_LIMITS_MAX", 2)
    await controller.set_risk_limit("daily_loss", -500.0)
    await controller.set_risk_limit("max_position", 10.0)

    with pytest.raises(errors.CapacityExceeded, match="risk limits"):
        await controller.set_risk_limit("max_exposure", 1.0)
    await controller.set_risk_limit("daily_loss", -100.0)

    limits = await controller.list_risk_limits()
    assert [(x.limit_type, x.threshold) for x in limits] == [
        ("daily_loss", -100.0),
        ("max_position", 10.0),
    ]


@pytest.mark.asyncio
async def test_a_breach_of_the_longest_limit_type_still_halts(
    controller: LocalEmergencyController,
) -> None:
    """The breach's own halt (actor ``risk:<limit type>``) is not refused for its length."""
    limit_type = "l" * ID_MAX_LENGTH
    await controller.set_risk_limit(limit_type, -500.0, LimitDirection.BELOW, actor="a" * 128)

    with pytest.raises(RiskLimitExceeded) as caught:
        await controller.check_risk_limit(limit_type, -600.0)

    assert caught.value.halted
    assert [h.actor for h in await controller.halts()] == [f"risk:{limit_type}"]


def test_the_largest_emergency_state_fits_one_grpc_message() -> None:
    """Every halt and every risk limit at its bound, with the longest target, reason,
    actor (4-byte UTF-8), limit type and options, fits gRPC's default 4 MiB message (what
    every watcher can receive), and the largest audit page fits the services' message
    limit."""
    since = float(TIMESTAMP_MAX)
    reason, actor = "\U0001f600" * TEXT_MAX_LENGTH, "\U0001f600" * ACTOR_MAX_LENGTH
    halts = [HaltState(Scope.GLOBAL, None, reason, actor, since)] + [
        HaltState(scope, f"{n:x}".rjust(ID_MAX_LENGTH, "t"), reason, actor, since)
        for scope in (Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW)
        for n in range(HALTS_PER_SCOPE_KIND_MAX)
    ]
    limits = [
        RiskLimit(
            f"{n:x}".rjust(ID_MAX_LENGTH, "l"),
            -1e300,
            LimitDirection.ABS_ABOVE,
            True,
            since,
            actor,
            Scope.WORKFLOW,
            "t" * ID_MAX_LENGTH,
            window=86_400.0,
            state=TradingState.CANCEL_ONLY,
            consecutive=1000,
            timezone="z" * 64,
            reset_time="23:59",
            lift_on_reset=True,
            cancel_orders=True,
        )
        for n in range(RISK_LIMITS_MAX)
    ]
    state = pb.WatchStateResponse(state=wire.emergency_state_to_proto(halts, 2**64 - 1, limits))
    size = state.ByteSize()
    assert size <= 4 * 1024 * 1024

    entry = AuditEntry(2**63 - 1, since, actor, "resume", Scope.BOT, "t" * ID_MAX_LENGTH, reason)
    page = pb.ListAuditEntriesResponse(entries=[wire.audit_entry_to_proto(entry)] * MAX_AUDIT_PAGE)
    size = page.ByteSize()
    assert size <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("limit_type", "value", "threshold", "breached"),
    [("daily_loss", -600.0, -500.0, True), ("max_position", -9.0, 10.0, False)],
)
@pytest.mark.asyncio
async def test_local_risk_checker_applies_the_same_rule_and_never_halts(
    limit_type: str, value: float, threshold: float, breached: bool
) -> None:
    """Without a controller a breach (default direction) raises, with halted False."""
    check = LocalRiskChecker().check_risk_limit(limit_type, value, threshold, ids=IDS)
    if not breached:
        await check
        return
    with pytest.raises(RiskLimitExceeded) as caught:
        await check
    assert (caught.value.limit_type, caught.value.value, caught.value.halted) == (
        limit_type,
        value,
        False,
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [(("mystery", 1.0, 2.0), "limit_type"), (("daily_loss", -1.0), "threshold")],
)
@pytest.mark.asyncio
async def test_local_risk_checker_names_the_bad_field(
    args: tuple[str, float] | tuple[str, float, float], field: str
) -> None:
    """An unknown type, or no threshold (nothing is configured), is InvalidRequest."""
    with pytest.raises(errors.InvalidRequest) as caught:
        await LocalRiskChecker().check_risk_limit(*args)
    assert caught.value.field == field


def snapshot_with(version: int, *halts: HaltState) -> EmergencySnapshot:
    return EmergencySnapshot.of(version, halts, ())


def test_watched_view_fails_closed_until_confirmed_lost_or_stale() -> None:
    """The view answers only between a confirmation and max_staleness later, never when lost."""
    clock = ManualClock()
    view = WatchedView("test feed", clock=clock, max_staleness=5.0, backoff=(0.001, 0.001))
    with pytest.raises(errors.UnavailableError, match="no state from the test feed yet"):
        view.current()

    view.confirm(snapshot_with(1))
    assert view.current().version == 1
    clock.advance(5.5)
    with pytest.raises(errors.UnavailableError, match=r"test feed for over 5\.0s"):
        view.current()

    view.confirm(snapshot_with(1))
    assert view.problem is None
    view.lose("link down")
    with pytest.raises(errors.UnavailableError, match="link down"):
        view.current()


@pytest.mark.asyncio
async def test_watched_view_reopens_its_link_until_closed() -> None:
    """Links that fail (before or after confirming) are re-opened; close() stops them."""
    view = WatchedView("test feed", clock=ManualClock(), max_staleness=None, backoff=(0.001, 0.001))
    calls = itertools.count(1)
    halt = HaltState(Scope.BOT, "bot-1", "desk call", "ops", 0.0)

    async def link() -> None:
        call = next(calls)
        if call == 2:
            view.confirm(snapshot_with(1))
        if call == 3:
            view.confirm(snapshot_with(2, halt))
            await asyncio.Event().wait()  # a link that stays up until close() cancels it
        raise errors.UnavailableError(f"link {call} broke")

    view.start(link, name="test-view")
    async with asyncio.timeout(DEADLINE_SECONDS):
        current = await view.wait_until(lambda snapshot: snapshot.version == 2)
    assert current.active_halt(IDS) == halt

    await view.close("view closed")
    with pytest.raises(errors.UnavailableError, match="view closed"):
        view.current()
    with pytest.raises(errors.UnavailableError, match="view closed"):
        await view.wait_until(lambda _: True)


@pytest.mark.asyncio
async def test_watched_view_keeps_following_when_stamina_gives_up() -> None:
    """A link failing more often than stamina's attempts is still re-opened until it confirms."""
    view = WatchedView("test feed", clock=ManualClock(), max_staleness=None, backoff=(0.001, 0.001))
    calls = itertools.count(1)

    async def link() -> None:
        call = next(calls)
        if call > 3:
            view.confirm(snapshot_with(call))
            await asyncio.Event().wait()
        raise errors.UnavailableError(f"link {call} broke")

    stamina.set_testing(True, attempts=1)
    try:
        view.start(link, name="test-view")
        async with asyncio.timeout(DEADLINE_SECONDS):
            current = await view.wait_until(lambda _: True)
    finally:
        stamina.set_testing(False)
        await view.close("view closed")
    assert current.version == 4


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scope": "galaxy"}, "scope"),
        ({"target": None}, "target"),
        ({"execution_id": "no spaces allowed"}, "execution_id"),
        ({"status": "exploded"}, "status"),
        ({"cancelled": ["ok", "bad\x00id"]}, "cancelled"),
        ({"cancelled": ["c"] * 10_001}, "cancelled"),
    ],
)
async def test_a_cancel_on_halt_report_is_audited_and_a_bad_one_names_its_field(
    controller: LocalEmergencyController, change: dict[str, object], field: str
) -> None:
    """A job's report becomes one cancel_on_halt audit entry listing (at most 100 of) the
    cancelled orders and counting all; a malformed one is InvalidRequest naming the field
    and audits nothing."""
    report: dict[str, object] = {
        "scope": Scope.BOT,
        "target": "bot-1",
        "execution_id": "job-1",
        "status": "completed",
        "cancelled": [f"e:{n}" for n in range(150)],
    }
    with pytest.raises(errors.InvalidRequest) as caught:
        await controller.record_cancel_on_halt(**{**report, **change})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert await controller.audit_entries() == []
    await controller.record_cancel_on_halt(**report)  # type: ignore[arg-type]
    [entry] = await controller.audit_entries()
    assert (entry.action, entry.scope, entry.target) == ("cancel_on_halt", Scope.BOT, "bot-1")
    assert entry.details["cancelled_count"] == 150
    assert entry.details["cancelled"] == [f"e:{n}" for n in range(100)]
