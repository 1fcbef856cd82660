"""Risk limits per scope in the embedded emergency controller: set, replace, list, delete,
explain, the heartbeat call, the audit of a denied order, the SQLite layout (version 5
files migrate) and the trigger progress compare-and-set."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kit import ManualClock

from tradeflow.adapters.sqlite.database import DB_SCHEMA_VERSION, open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController, SQLiteEmergencyStore
from tradeflow.domain import errors
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.limits import FOUND_MAX_CHARS
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import (
    NO_LIMITS,
    Denial,
    LimitOptions,
    ScopeRule,
    TriggerProgress,
)
from tradeflow.domain.trading import TradingState
from tradeflow.engine.emergency import RiskLimitExceeded

IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
TRIGGER = LimitOptions(state=TradingState.REDUCE_ONLY, consecutive=3)


@pytest.fixture
def second(db_path: Path) -> Iterator[LocalEmergencyController]:
    """A controller on its own connection: what another process sees."""
    connection = open_database(db_path)
    yield LocalEmergencyController(connection, clock=ManualClock(), id_factory=lambda: "x")
    connection.close()


@pytest.mark.asyncio
async def test_limits_of_each_scope_are_set_listed_and_keyed_apart(
    controller: LocalEmergencyController, second: LocalEmergencyController
) -> None:
    """One limit type on four scopes is four limits, keyed type / type@scope:target, listed
    by type then broadest scope, and seen by another connection."""
    await controller.set_risk_limit("max_position", 10.0, actor="desk")
    await controller.set_risk_limit("max_position", 2.0, scope=Scope.BOT, target="bot-1")
    await controller.set_risk_limit("max_position", 5.0, scope=Scope.STRATEGY, target="strat-1")
    await controller.set_risk_limit("max_position", 1.0, scope=Scope.WORKFLOW, target="wf-1")
    await controller.set_risk_limit("max_order_notional", 500.0, scope=Scope.BOT, target="bot-1")

    limits = await second.list_risk_limits()

    assert [(x.key, x.threshold) for x in limits] == [
        ("max_order_notional@bot:bot-1", 500.0),
        ("max_position", 10.0),
        ("max_position@strategy:strat-1", 5.0),
        ("max_position@bot:bot-1", 2.0),
        ("max_position@workflow:wf-1", 1.0),
    ]
    assert set(second.state().limits) == {x.key for x in limits}
    assert limits[1].direction is LimitDirection.ABS_ABOVE


@pytest.mark.asyncio
async def test_setting_replacing_and_deleting_a_scoped_limit_is_audited_with_its_options(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """The audit entries name the scope, the target and every option; a replacement takes
    the new options; a delete of a limit that is not there is False and not audited."""
    first = await controller.set_risk_limit(
        "order_rate",
        5,
        scope=Scope.STRATEGY,
        target="strat-1",
        options=LimitOptions(window=60.0),
        actor="alice",
    )
    clock.advance(10)
    replaced = await controller.set_risk_limit(
        "order_rate",
        3,
        scope=Scope.STRATEGY,
        target="strat-1",
        options=LimitOptions(window=30.0),
        actor="bob",
    )
    deleted = await controller.delete_risk_limit(
        "order_rate", Scope.STRATEGY, "strat-1", actor="carol"
    )
    again = await controller.delete_risk_limit(
        "order_rate", Scope.STRATEGY, "strat-1", actor="carol"
    )

    assert (first.window, replaced.window, replaced.updated_by) == (60.0, 30.0, "bob")
    assert (deleted, again) == (True, False)
    assert await controller.list_risk_limits() == []
    audit = await controller.audit_entries()
    assert [(a.action, a.actor, a.scope, a.target) for a in audit] == [
        ("delete_risk_limit", "carol", Scope.STRATEGY, "strat-1"),
        ("set_risk_limit", "bob", Scope.STRATEGY, "strat-1"),
        ("set_risk_limit", "alice", Scope.STRATEGY, "strat-1"),
    ]
    assert audit[1].details == {
        "limit_type": "order_rate",
        "threshold": 3.0,
        "direction": "above",
        "auto_halt": True,
        "scope": "strategy",
        "target": "strat-1",
        "window": 30.0,
        "state": None,
        "consecutive": 1,
        "timezone": "UTC",
        "reset_time": "00:00",
        "lift_on_reset": False,
        "cancel_orders": False,
        # Embedded, the process itself is the caller.
        "principal": "system/tradeflow",
        "role": "system",
        "peer": "",
    }


@pytest.mark.asyncio
async def test_a_trigger_keeps_every_option_and_a_heartbeat_defaults_to_cancel_only(
    controller: LocalEmergencyController, second: LocalEmergencyController
) -> None:
    """Every option survives the store; a heartbeat limit without a state is a
    cancel_only trigger."""
    options = LimitOptions(
        state=TradingState.HALTED,
        consecutive=4,
        timezone="America/New_York",
        reset_time="17:00",
        lift_on_reset=True,
        cancel_orders=True,
    )
    daily = await controller.set_risk_limit(
        "daily_loss", -250.0, scope=Scope.BOT, target="bot-1", options=options
    )
    beat = await controller.set_risk_limit("heartbeat", 30.0, scope=Scope.BOT, target="bot-1")

    stored = {x.key: x for x in await second.list_risk_limits()}
    assert stored["daily_loss@bot:bot-1"] == daily
    assert LimitOptions.of(daily) == options
    assert stored["heartbeat@bot:bot-1"] == beat
    assert (beat.state, beat.direction) == (TradingState.CANCEL_ONLY, LimitDirection.ABOVE)


Call = Callable[[LocalEmergencyController], Awaitable[object]]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.set_risk_limit("max_position", 1.0, scope="galaxy", target="x"), "scope"),
        (lambda c: c.set_risk_limit("max_position", 1.0, scope=Scope.BOT), "target"),
        (lambda c: c.set_risk_limit("max_position", 1.0, target="bot-1"), "target"),
        (lambda c: c.set_risk_limit("max_position", 1.0, LimitDirection.BELOW), "direction"),
        (lambda c: c.set_risk_limit("heartbeat", 5.0, LimitDirection.BELOW), "direction"),
        (lambda c: c.set_risk_limit("max_position", -1.0), "threshold"),
        (lambda c: c.set_risk_limit("max_open_orders", 1.5), "threshold"),
        (lambda c: c.set_risk_limit("order_rate", 5), "window"),
        (
            lambda c: c.set_risk_limit("max_position", 1.0, options=LimitOptions(window=1.0)),
            "window",
        ),
        (
            lambda c: c.set_risk_limit("order_rate", 5, options=LimitOptions(window=math.inf)),
            "window",
        ),
        (lambda c: c.set_risk_limit("heartbeat", 0.0), "threshold"),
        (lambda c: c.set_risk_limit("heartbeat", 100_000.0), "threshold"),
        (
            lambda c: c.set_risk_limit(
                "max_position", 1.0, options=LimitOptions(state=TradingState.HALTED)
            ),
            "state",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", -1.0, options=LimitOptions(state=TradingState.ACTIVE)
            ),
            "state",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss",
                -1.0,
                options=LimitOptions(state="sideways"),  # type: ignore[arg-type]
            ),
            "state",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", 5.0, options=LimitOptions(state=TradingState.HALTED)
            ),
            "threshold",
        ),
        (
            lambda c: c.set_risk_limit("daily_loss", -1.0, options=LimitOptions(consecutive=3)),
            "consecutive",
        ),
        (
            lambda c: c.set_risk_limit("daily_loss", -1.0, options=replace(TRIGGER, consecutive=0)),
            "consecutive",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss",
                -1.0,
                options=replace(TRIGGER, consecutive=2.5),  # type: ignore[arg-type]
            ),
            "consecutive",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", -1.0, options=replace(TRIGGER, timezone="Mars/Base")
            ),
            "timezone",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", -1.0, options=replace(TRIGGER, timezone="../etc")
            ),
            "timezone",
        ),
        (
            lambda c: c.set_risk_limit(
                "max_drawdown", -1.0, options=replace(TRIGGER, timezone="Europe/London")
            ),
            "timezone",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", -1.0, options=replace(TRIGGER, reset_time="24:00")
            ),
            "reset_time",
        ),
        (
            lambda c: c.set_risk_limit("daily_loss", -1.0, options=replace(TRIGGER, reset_time=7)),  # type: ignore[arg-type]
            "reset_time",
        ),
        (
            lambda c: c.set_risk_limit(
                "max_drawdown", -1.0, options=replace(TRIGGER, lift_on_reset=True)
            ),
            "lift_on_reset",
        ),
        (
            lambda c: c.set_risk_limit(
                "daily_loss", -1.0, options=LimitOptions(cancel_orders=True)
            ),
            "cancel_orders",
        ),
        (lambda c: c.set_risk_limit("max_position", 1.0, options={"window": 1}), "options"),  # type: ignore[arg-type]
        (lambda c: c.set_risk_limit("x@bot:y", 1.0, LimitDirection.ABOVE), "limit_type"),
        (lambda c: c.delete_risk_limit("max_position", Scope.BOT, None), "target"),
        (lambda c: c.delete_risk_limit("max position"), "limit_type"),
        (lambda c: c.delete_risk_limit("max_position", actor="a\nb"), "actor"),
        (lambda c: c.heartbeat(Scope.BOT, "bot-1"), "scope"),
        (lambda c: c.heartbeat(Scope.GLOBAL, "bot-1"), "target"),
        (lambda c: c.explain_limits(ScopeIds(bot_id="a b")), "bot_id"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_limit_requests_name_the_field(
    controller: LocalEmergencyController, call: Call, field: str
) -> None:
    """Malformed set, delete, heartbeat and explain calls raise InvalidRequest naming the
    field, and store nothing."""
    with pytest.raises(errors.InvalidRequest) as caught:
        await call(controller)

    assert caught.value.field == field
    assert len(caught.value.message) < 2 * FOUND_MAX_CHARS + len(caught.value.expected) + 100
    assert await controller.audit_entries() == []
    assert await controller.list_risk_limits() == []


@pytest.mark.asyncio
async def test_limits_are_bounded_across_scopes_and_replacing_one_is_never_refused(
    controller: LocalEmergencyController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RISK_LIMITS_MAX counts limits of every scope; a replacement and a limit made room
    for by a delete go through."""
    monkeypatch.setattr("tradeflow.domain.emergency.RISK_LIMITS_MAX", 2)
    await controller.set_risk_limit("max_position", 10.0)
    await controller.set_risk_limit("max_position", 1.0, scope=Scope.BOT, target="bot-1")

    with pytest.raises(errors.CapacityExceeded):
        await controller.set_risk_limit("max_position", 1.0, scope=Scope.BOT, target="bot-2")
    await controller.set_risk_limit("max_position", 2.0, scope=Scope.BOT, target="bot-1")
    assert await controller.delete_risk_limit("max_position")
    await controller.set_risk_limit("max_position", 1.0, scope=Scope.BOT, target="bot-2")

    assert [x.key for x in await controller.list_risk_limits()] == [
        "max_position@bot:bot-1",
        "max_position@bot:bot-2",
    ]


@pytest.mark.asyncio
async def test_the_stricter_of_a_node_threshold_and_the_configured_scope_limits_applies(
    controller: LocalEmergencyController,
) -> None:
    """A risk check's looser threshold is tightened by a configured limit of a scope its
    ids belong to (the strictest of them); a stricter one stands; another bot's limit
    does not apply."""
    await controller.set_risk_limit("max_position", 10.0, auto_halt=False)
    await controller.set_risk_limit(
        "max_position", 3.0, scope=Scope.BOT, target="bot-1", auto_halt=False
    )
    await controller.set_risk_limit(
        "max_position", 1.0, scope=Scope.BOT, target="bot-2", auto_halt=False
    )

    with pytest.raises(RiskLimitExceeded) as loose:
        await controller.check_risk_limit("max_position", 4.0, 100.0, ids=IDS)
    await controller.check_risk_limit("max_position", 2.0, 100.0, ids=IDS)
    with pytest.raises(RiskLimitExceeded) as strict:
        await controller.check_risk_limit("max_position", 2.0, 1.5, ids=IDS)
    await controller.check_risk_limit("max_position", 9.0, ids=ScopeIds(bot_id="bot-3"))

    assert (loose.value.threshold, strict.value.threshold) == (3.0, 1.5)
    assert await controller.halts() == []


@pytest.mark.asyncio
async def test_pre_trade_limits_and_the_explanation_cover_only_the_scopes_of_the_ids(
    controller: LocalEmergencyController, clock: ManualClock
) -> None:
    """pre_trade_limits gives the local limits and the shared rules of the order's scopes;
    explain_limits lists every applicable limit, the strictest of each type and each
    trigger's progress."""
    assert controller.pre_trade_limits(IDS) is NO_LIMITS
    await controller.set_risk_limit("max_order_notional", 1000.0)
    await controller.set_risk_limit("max_order_notional", 100.0, scope=Scope.BOT, target="bot-1")
    await controller.set_risk_limit("max_position", 2.0, scope=Scope.STRATEGY, target="strat-1")
    await controller.set_risk_limit("max_position", 9.0, scope=Scope.BOT, target="bot-2")
    await controller.set_risk_limit(
        "order_rate", 5, scope=Scope.BOT, target="bot-1", options=LimitOptions(window=60.0)
    )
    beat = await controller.set_risk_limit("heartbeat", 30.0, scope=Scope.BOT, target="bot-1")
    await controller.halt(Scope.BOT, "bot-1", reason="slow down", state=TradingState.REDUCE_ONLY)
    clock.advance(5)
    await controller.heartbeat(Scope.BOT, "bot-1")

    limits = controller.pre_trade_limits(IDS)
    explained = await controller.explain_limits(IDS)

    assert [x.key for x in limits.local] == [
        "max_order_notional",
        "max_order_notional@bot:bot-1",
    ]
    assert limits.rules == (
        ScopeRule(Scope.STRATEGY, "strat-1", max_position=2.0),
        ScopeRule(Scope.BOT, "bot-1", rate=5.0, window=60.0),
    )
    assert [x.key for x in explained.applicable] == [
        "heartbeat@bot:bot-1",
        "max_order_notional",
        "max_order_notional@bot:bot-1",
        "max_position@strategy:strat-1",
        "order_rate@bot:bot-1",
    ]
    assert [x.key for x in explained.deciding] == [
        "heartbeat@bot:bot-1",
        "max_order_notional@bot:bot-1",
        "max_position@strategy:strat-1",
        "order_rate@bot:bot-1",
    ]
    assert explained.state is TradingState.REDUCE_ONLY
    assert explained.halt is not None and explained.halt.reason == "slow down"
    ((limit, progress),) = explained.triggers
    assert limit == beat
    assert (progress.last_beat, progress.version) == (clock.now, 1)


@pytest.mark.asyncio
async def test_a_heartbeat_returns_when_it_lapses_and_re_arms_the_switch(
    controller: LocalEmergencyController, conn: sqlite3.Connection, clock: ManualClock
) -> None:
    """Each beat stores its time, clears breaches and ``fired``, keeps the rest of the
    progress, and returns now plus the time to live."""
    await controller.set_risk_limit("heartbeat", 30.0, scope=Scope.WORKFLOW, target="wf-1")
    key = "heartbeat@workflow:wf-1"
    store = SQLiteEmergencyStore(conn)
    fired = TriggerProgress(version=1, breaches=2, fired=True, evaluated_at=clock.now, value=40.0)
    assert await store.save_trigger_progress(key, fired, 0)

    clock.advance(3)
    lapses = await controller.heartbeat(Scope.WORKFLOW, "wf-1")

    (progress,) = (await store.trigger_progress([key])).values()
    assert lapses == clock.now + 30.0
    assert progress == replace(fired, version=2, breaches=0, fired=False, last_beat=clock.now)


@pytest.mark.asyncio
async def test_trigger_progress_is_compared_and_set_and_goes_with_its_limit(
    controller: LocalEmergencyController, conn: sqlite3.Connection, db_path: Path
) -> None:
    """A save with a stale version, or for a limit that does not exist, writes nothing;
    replacing the limit keeps the progress, deleting it removes it; another connection
    sees what was stored; progress writes do not move the snapshot's version."""
    store = SQLiteEmergencyStore(conn)
    other = open_database(db_path)
    try:
        other_store = SQLiteEmergencyStore(other)
        key = "max_drawdown@strategy:strat-1"
        progress = TriggerProgress(version=1, breaches=1, peak=1250.5, evaluated_at=7.0)
        assert not await store.save_trigger_progress(key, progress, 0)
        await controller.set_risk_limit(
            "max_drawdown", -100.0, scope=Scope.STRATEGY, target="strat-1", options=TRIGGER
        )
        version = store.snapshot().version

        assert await store.save_trigger_progress(key, progress, 0)
        assert not await other_store.save_trigger_progress(key, replace(progress, version=1), 0)
        assert await other_store.save_trigger_progress(key, replace(progress, version=2), 1)
        assert store.snapshot().version == version
        await controller.set_risk_limit(
            "max_drawdown", -50.0, scope=Scope.STRATEGY, target="strat-1", options=TRIGGER
        )
        kept = await other_store.trigger_progress([key, "absent"])
        assert await controller.delete_risk_limit("max_drawdown", Scope.STRATEGY, "strat-1")
        gone = await other_store.trigger_progress([key])
    finally:
        other.close()

    assert kept == {key: replace(progress, version=2)}
    assert gone == {}
    assert await store.trigger_progress([]) == {}


@pytest.mark.asyncio
async def test_a_denied_order_is_audited_on_its_scope_with_its_ids(
    controller: LocalEmergencyController,
) -> None:
    """record_order_denied writes one ``order_denied`` entry by ``risk:<check>`` with the
    check, the judged value (NaN as null) and the order's ids."""
    denial = Denial("max_position", Scope.BOT, "bot-1", 3.5, 2.0, "position 3.5 beyond 2")
    no_price = Denial("max_order_notional", Scope.GLOBAL, None, math.nan, 10.0, "no price")

    await controller.record_order_denied(
        denial, ids=IDS, execution_id="ex-1", node_id="buy", client_order_id="ex-1:buy"
    )
    await controller.record_order_denied(
        no_price, ids=IDS, execution_id="ex-2", node_id="buy", client_order_id="ex-2:buy"
    )

    second, first = await controller.audit_entries()
    assert (first.action, first.actor, first.scope, first.target, first.reason) == (
        "order_denied",
        "risk:max_position",
        Scope.BOT,
        "bot-1",
        "position 3.5 beyond 2",
    )
    assert first.details == {
        "check": "max_position",
        "value": 3.5,
        "threshold": 2.0,
        "workflow_id": "wf-1",
        "bot_id": "bot-1",
        "strategy_id": "strat-1",
        "execution_id": "ex-1",
        "node_id": "buy",
        "client_order_id": "ex-1:buy",
        "principal": "system/tradeflow",
        "role": "system",
        "peer": "",
    }
    assert (second.scope, second.target, second.details["value"]) == (Scope.GLOBAL, None, None)


@pytest.mark.parametrize(
    ("denial", "ids", "field"),
    [
        (Denial("max position", Scope.BOT, "b", 1.0, 1.0, "r"), {}, "check"),
        (Denial("max_position", Scope.BOT, None, 1.0, 1.0, "r"), {}, "target"),
        (Denial("max_position", Scope.GLOBAL, None, "1", 1.0, "r"), {}, "value"),  # type: ignore[arg-type]
        (Denial("max_position", Scope.GLOBAL, None, 1.0, math.nan, "r"), {}, "threshold"),
        (Denial("max_position", Scope.GLOBAL, None, 1.0, 1.0, " "), {}, "reason"),
        (Denial("max_position", Scope.GLOBAL, None, 1.0, 1.0, "r"), {"node_id": "a b"}, "node_id"),
        (
            Denial("max_position", Scope.GLOBAL, None, 1.0, 1.0, "r"),
            {"client_order_id": "a b"},
            "client_order_id",
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_malformed_denial_report_names_the_field(
    controller: LocalEmergencyController, denial: Denial, ids: dict[str, Any], field: str
) -> None:
    """record_order_denied refuses a malformed report, naming the field, and audits nothing."""
    call: dict[str, Any] = {
        "ids": IDS,
        "execution_id": "ex-1",
        "node_id": "buy",
        "client_order_id": "ex-1:buy",
        **ids,
    }
    with pytest.raises(errors.InvalidRequest) as caught:
        await controller.record_order_denied(denial, **call)

    assert caught.value.field == field
    assert await controller.audit_entries() == []


V5_RISK_LIMITS = """
DROP TABLE risk_limits;
DROP INDEX executions_by_status;
DROP TABLE trigger_progress;
CREATE TABLE risk_limits (
    limit_type TEXT PRIMARY KEY,
    threshold  REAL NOT NULL,
    direction  TEXT NOT NULL,
    auto_halt  INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO risk_limits VALUES ('daily_loss', -500.0, 'below', 1, 100.0, 'desk');
INSERT INTO risk_limits VALUES ('open_orders', 5.0, 'above', 0, 200.0, 'ops');
PRAGMA user_version = 5;
"""
"""A version 5 file's risk limits (global, keyed by type, without options)."""


@pytest.mark.asyncio
async def test_a_version_5_file_migrates_keeping_its_limits(db_path: Path) -> None:
    """Opening a version 5 file rebuilds risk_limits keyed by limit key: the old global
    limits read back as before, and limits per scope and trigger progress can be added."""
    open_database(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.executescript(V5_RISK_LIMITS)
    raw.close()

    conn = open_database(db_path)
    try:
        controller = LocalEmergencyController(conn, clock=ManualClock(), id_factory=lambda: "x")
        before = await controller.list_risk_limits()
        await controller.set_risk_limit("daily_loss", -50.0, scope=Scope.BOT, target="b1")
        await controller.set_risk_limit(
            "daily_loss", -500.0, actor="desk", options=LimitOptions(state=TradingState.HALTED)
        )
        saved = await controller.save_trigger_progress("daily_loss", TriggerProgress(1), 0)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        after = await controller.list_risk_limits()
    finally:
        conn.close()

    assert version == DB_SCHEMA_VERSION == 7
    assert before == [
        RiskLimit("daily_loss", -500.0, LimitDirection.BELOW, True, 100.0, "desk"),
        RiskLimit("open_orders", 5.0, LimitDirection.ABOVE, False, 200.0, "ops"),
    ]
    assert saved
    assert [(x.key, x.state) for x in after] == [
        ("daily_loss", TradingState.HALTED),
        ("daily_loss@bot:b1", None),
        ("open_orders", None),
    ]


def test_an_unreadable_limit_row_fails_closed(
    controller: LocalEmergencyController, conn: sqlite3.Connection
) -> None:
    """A limit row no tradeflow wrote (its key is not its limit's) makes the state
    unconfirmed: trading is refused rather than judged against a guess."""
    conn.execute(
        "INSERT INTO risk_limits (limit_key, limit_type, threshold, direction, auto_halt,"
        " updated_at, updated_by, scope, target) VALUES"
        " ('max_position@bot:b1', 'max_position', 1.0, 'abs_above', 1, 0.0, '', 'bot', 'b2')"
    )

    with pytest.raises(errors.EmergencyHalted, match="unavailable"):
        controller.ensure_trading_allowed(IDS)
