"""Cancel on halt, embedded: the ledgers list resting orders by the scope ids their
request carried (memory and SQLite, an older SQLite file migrated); a halt asking for it
cancels exactly the halted scope's resting orders, as one durable execution per halt,
however often it is triggered and however many replicas see the halt."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kit import DEADLINE_SECONDS, START, eventually
from workflows import block, resting_bid

from tradeflow.adapters.memory.paper import MemoryPaperLedger, PaperLedger
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.app.cancel_on_halt import (
    JOB_WORKFLOW_ID,
    cancel_job,
    cancel_resting_orders,
    job_request_id,
)
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.manager import ExecutionManager
from tradeflow.app.settings import Settings
from tradeflow.domain.errors import WorkflowValidationError
from tradeflow.domain.limits import ID_PATTERN
from tradeflow.domain.records import (
    ExecutionQuery,
    ExecutionStatus,
    HaltState,
    Scope,
)
from tradeflow.domain.trading import Order, OrderStatus, OrderType, Side
from tradeflow.engine.validation import parse_workflow
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

OPENING = {"USDT": 1_000.0, "BTC": 1.0}
_order_ids = itertools.count(1)


def placed(
    client_order_id: str,
    *,
    bot: str | None = None,
    strategy: str | None = None,
    workflow: str | None = None,
    venue: str = "paper",
    rests: bool = True,
) -> Order:
    """A 0.1 BTC buy as the paper exchange stores it: resting at 50, or filled at 100;
    each placed a second after the one before."""
    number = next(_order_ids)
    return Order(
        order_id=f"o{number}",
        client_order_id=client_order_id,
        venue=venue,
        symbol="BTC/USDT",
        side=Side.BUY,
        quantity=0.1,
        order_type=OrderType.LIMIT if rests else OrderType.MARKET,
        limit_price=50.0 if rests else None,
        status=OrderStatus.OPEN if rests else OrderStatus.FILLED,
        filled_quantity=0.0 if rests else 0.1,
        avg_price=None if rests else 100.0,
        created_at=START + number,
        workflow_id=workflow,
        bot_id=bot,
        strategy_id=strategy,
    )


async def check_resting_orders_by_scope(ledger: PaperLedger) -> None:
    """The ledger contract of ``open_orders``, on a fresh ``ledger``: resting orders only,
    oldest first, matched by the scope id of the scope asked (all for global), per venue;
    the scope ids come back with the order."""
    orders = [
        placed("a1", bot="a", strategy="s", workflow="w1"),
        placed("b1", bot="b", strategy="s", workflow="w2"),
        placed("a2", bot="a", strategy="t", workflow="w1"),
        placed("a-filled", bot="a", strategy="s", workflow="w1", rests=False),
        placed("a-cancelled", bot="a", strategy="s", workflow="w1"),
        placed("none"),
        placed("a-elsewhere", bot="a", venue="other"),
    ]
    for order in orders:
        await ledger.accept(order, None, opening=OPENING, require=None)
    await ledger.cancel("paper", "a-cancelled")

    async def ids(scope: Scope, target: str | None, venue: str = "paper") -> list[str]:
        return [o.client_order_id for o in await ledger.open_orders(venue, scope, target)]

    assert await ids(Scope.GLOBAL, None) == ["a1", "b1", "a2", "none"]
    assert await ids(Scope.BOT, "a") == ["a1", "a2"]
    assert await ids(Scope.BOT, "b") == ["b1"]
    assert await ids(Scope.STRATEGY, "s") == ["a1", "b1"]
    assert await ids(Scope.WORKFLOW, "w1") == ["a1", "a2"]
    assert await ids(Scope.BOT, "nobody") == []
    assert await ids(Scope.BOT, "a", venue="other") == ["a-elsewhere"]
    assert await ids(Scope.GLOBAL, None, venue="nowhere") == []
    assert await ledger.open_orders("paper", Scope.BOT, "b") == [orders[1]]
    await ledger.cancel("paper", "a1")
    assert await ids(Scope.BOT, "a") == ["a2"]


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_ledgers_list_resting_orders_by_scope(backend: str, db_path: Path) -> None:
    """Memory and SQLite ledgers list the resting orders of a scope, and only those."""
    if backend == "memory":
        await check_resting_orders_by_scope(MemoryPaperLedger())
        return
    db_path.parent.mkdir(parents=True)
    conn = open_database(db_path)
    try:
        await check_resting_orders_by_scope(SQLitePaperLedger(conn))
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_sqlite_ledger_adds_the_scope_columns_to_an_older_file(tmp_path: Path) -> None:
    """A file whose orders table predates the scope ids gains them when opened: its
    resting order is listed globally (no scope id to match otherwise) and new orders keep
    theirs; opening it again changes nothing."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            """CREATE TABLE paper_orders (
            venue TEXT NOT NULL, client_order_id TEXT NOT NULL, order_id TEXT NOT NULL,
            symbol TEXT NOT NULL, side TEXT NOT NULL, quantity REAL NOT NULL,
            order_type TEXT NOT NULL, limit_price REAL, status TEXT NOT NULL,
            filled_quantity REAL NOT NULL, avg_price REAL, created_at REAL NOT NULL,
            PRIMARY KEY (venue, client_order_id))"""
        )
        old.execute(
            "INSERT INTO paper_orders VALUES "
            "('paper', 'old', 'o0', 'BTC/USDT', 'buy', 0.1, 'limit', 50.0, 'open', 0.0, NULL, ?)",
            (START,),
        )
    conn = open_database(path)
    try:
        ledger = SQLitePaperLedger(conn)
        new = placed("new", bot="a")
        await ledger.accept(new, None, opening=OPENING, require=None)
        again = SQLitePaperLedger(conn)
        resting = await again.open_orders("paper", Scope.GLOBAL, None)
        assert [(o.client_order_id, o.bot_id) for o in resting] == [("old", None), ("new", "a")]
        assert await again.open_orders("paper", Scope.BOT, "a") == [new]
    finally:
        conn.close()


def test_the_job_is_one_cancel_block_per_venue_with_an_id_made_of_the_halt() -> None:
    """The job validates; its request id is the same for the same halt, another for a
    later halt of the scope, and a well-formed id even for the longest target."""
    halt = HaltState(Scope.BOT, "b1", "stop", "ops", START)
    job = cancel_job(halt, ("paper", "other"))
    assert (
        job.request_id
        == job_request_id(replace(halt, reason="again"))
        == (f"cancel-on-halt:bot:{round(START * 1_000_000)}:b1")
    )
    workflow = parse_workflow(job.definition)
    assert [(b.type, b.properties["venue"]) for b in workflow.blocks] == [
        ("cancel_open_orders", "paper"),
        ("cancel_open_orders", "other"),
    ]
    later = job_request_id(replace(halt, since=START + 0.001))
    longest = job_request_id(replace(halt, target="x" * 128))
    assert later != job.request_id and longest != job_request_id(replace(halt, target="y" * 128))
    for request_id in (later, longest, job_request_id(HaltState(Scope.GLOBAL, None, "", "", 0))):
        assert ID_PATTERN.fullmatch(request_id), request_id


@pytest.mark.parametrize(
    ("scope", "target", "field"),
    [("bot", None, "target"), ("global", "b1", "target"), ("desk", "b1", "scope")],
)
def test_cancel_open_orders_needs_a_target_that_fits_its_scope(
    scope: str, target: str | None, field: str
) -> None:
    """A scoped block without a target, a global one with a target, an unknown scope:
    each is a validation problem naming the property."""
    definition = {
        "blocks": [
            block("cancel", "actions", "cancel_open_orders", {"scope": scope, "target": target})
        ]
    }
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(definition)
    assert [issue.field for issue in caught.value.issues] == [f"properties.{field}"]


# --- the job, embedded -----------------------------------------------------------------


async def bid(infra: Infrastructure, bot: str) -> str:
    """Run :func:`resting_bid` for ``bot``; the client order id of its resting order."""
    result = await EnhancedWorkflowExecutor(resting_bid(), infra, "bidder", bot).execute()
    outputs = result["results"]["bid"]
    assert outputs["status"] == "open"
    return str(outputs["client_order_id"])


async def statuses(infra: Infrastructure, client_order_ids: list[str]) -> list[OrderStatus]:
    found = [await infra.exchange.get_order("paper", c) for c in client_order_ids]
    return [order.status for order in found if order is not None]


async def jobs(infra: Infrastructure) -> list[ExecutionStatus]:
    """The status of every cancel-on-halt execution."""
    page = await infra.state.list_executions(ExecutionQuery(workflow_id=JOB_WORKFLOW_ID))
    return [record.status for record in page.executions]


@pytest_asyncio.fixture
async def infra() -> AsyncIterator[Infrastructure]:
    """The embedded infrastructure on the test's state file."""
    async with await Infrastructure.create("test") as infra:
        yield infra


@pytest.mark.asyncio
async def test_a_bot_halt_cancels_that_bots_resting_orders_once(infra: Infrastructure) -> None:
    """Resting orders of two bots; a halt of one bot with cancel_orders cancels that bot's
    (the report lists them) and leaves the other's; triggered again, the same execution
    answers and nothing runs again; a later halt of the scope is a new job."""
    mine = [await bid(infra, "b1"), await bid(infra, "b1")]
    theirs = [await bid(infra, "b2")]
    orders = await infra.exchange.open_orders("paper", Scope.BOT, "b1")
    assert [(o.client_order_id, o.workflow_id, o.bot_id) for o in orders] == [
        (client_order_id, "bidder", "b1") for client_order_id in mine
    ]
    halt = await infra.emergency.halt(
        Scope.BOT, "b1", reason="fat finger", actor="ops", cancel_orders=True
    )
    assert halt.cancel_orders
    report = await cancel_resting_orders(infra, halt)
    assert (report.status, report.cancelled, report.error) == (
        ExecutionStatus.COMPLETED,
        tuple(mine),
        None,
    )
    assert await statuses(infra, mine) == [OrderStatus.CANCELLED] * 2
    assert await statuses(infra, theirs) == [OrderStatus.OPEN]
    assert await cancel_resting_orders(infra, halt) == report
    assert await jobs(infra) == [ExecutionStatus.COMPLETED]
    [audited] = [a for a in await infra.emergency.audit_entries() if a.action == "cancel_on_halt"]
    assert (audited.scope, audited.target) == (Scope.BOT, "b1")
    assert audited.details["execution_id"] == report.execution_id
    assert audited.details["cancelled"] == mine and audited.details["status"] == "completed"

    await infra.emergency.resume(Scope.BOT, "b1", reason="fixed", actor="ops")
    late = await bid(infra, "b1")
    again = await infra.emergency.halt(
        Scope.BOT, "b1", reason="again", actor="ops", cancel_orders=True
    )
    assert (await cancel_resting_orders(infra, again)).cancelled == (late,)
    assert await jobs(infra) == [ExecutionStatus.COMPLETED] * 2
    assert await statuses(infra, theirs) == [OrderStatus.OPEN]


@pytest.mark.asyncio
async def test_replicas_run_one_job_per_halt(db_path: Path) -> None:
    """Two execution managers on one state file (two leases, as two replicas) both watch
    the halts: the halted bot's resting orders are cancelled by one completed job, the
    other bot's stay; a halt without cancel_orders starts no job."""
    settings = replace(Settings.from_env("test"), takeover_interval=0.02)
    assert settings.sqlite_path == str(db_path)
    async with (
        await Infrastructure.create("test", settings=settings) as first,
        await Infrastructure.create("test", settings=settings) as second,
    ):
        mine, theirs = await bid(first, "b1"), await bid(second, "b2")
        await first.emergency.halt(Scope.BOT, "b2", reason="quiet", actor="ops")
        managers = [ExecutionManager(first), ExecutionManager(second)]
        for manager in managers:
            manager.start_takeover(settings.takeover_interval)
        try:
            halt = await second.emergency.halt(
                Scope.BOT, "b1", reason="stop", actor="ops", cancel_orders=True
            )
            request_id = job_request_id(halt)

            async def done() -> bool:
                record = await first.state.find_by_request_id(request_id)
                return record is not None and record.status.final

            await eventually(done, "the cancel-on-halt job ended")
            record = await first.state.find_by_request_id(request_id)
            assert record is not None and record.status is ExecutionStatus.COMPLETED
            completed = await first.state.list_executions(
                ExecutionQuery(workflow_id=JOB_WORKFLOW_ID, status=ExecutionStatus.COMPLETED)
            )
            assert [r.execution_id for r in completed.executions] == [record.execution_id]
            assert await statuses(first, [mine, theirs]) == [
                OrderStatus.CANCELLED,
                OrderStatus.OPEN,
            ]
        finally:
            await asyncio.gather(*(manager.drain(DEADLINE_SECONDS) for manager in managers))


@pytest.mark.asyncio
async def test_a_cancel_that_fails_does_not_leave_the_others_resting(
    infra: Infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resting order's cancel fails once (the venue hiccups): the sweep still cancels
    the others, a second sweep cancels the one left; the job completes and reports every
    order."""
    orders = [await bid(infra, "b1") for _ in range(3)]
    exchange = type(infra.exchange)
    real_cancel = exchange.cancel_order
    failures = {orders[1]: 1}

    async def flaky_cancel(self: Any, venue: str, client_order_id: str) -> Order:
        if failures.get(client_order_id, 0) > 0:
            failures[client_order_id] -= 1
            raise ConnectionError("venue hiccup")
        return await real_cancel(self, venue, client_order_id)

    monkeypatch.setattr(exchange, "cancel_order", flaky_cancel)
    halt = await infra.emergency.halt(Scope.BOT, "b1", reason="unwind", cancel_orders=True)
    report = await cancel_resting_orders(infra, halt)
    assert report.status is ExecutionStatus.COMPLETED
    assert sorted(report.cancelled) == sorted(orders)
    assert await statuses(infra, orders) == [OrderStatus.CANCELLED] * 3


@pytest.mark.asyncio
async def test_a_job_failed_by_a_venue_outage_is_started_again_until_it_completes(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venue refuses every cancel for longer than one job's sweeps: the job ends
    failed, the replica starts it again while the halt holds, and once the venue is back
    the same execution completes with the order cancelled (and is audited so)."""
    settings = replace(Settings.from_env("test"), takeover_interval=0.02)
    assert settings.sqlite_path == str(db_path)
    async with await Infrastructure.create("test", settings=settings) as infra:
        resting = await bid(infra, "b1")
        exchange = type(infra.exchange)
        real_cancel = exchange.cancel_order
        outage = {"calls": 0}

        async def down_then_up(self: Any, venue: str, client_order_id: str) -> Order:
            outage["calls"] += 1
            if outage["calls"] <= 6:  # more than one job's four sweeps
                raise ConnectionError("venue down")
            return await real_cancel(self, venue, client_order_id)

        monkeypatch.setattr(exchange, "cancel_order", down_then_up)
        manager = ExecutionManager(infra)
        manager.start_takeover(settings.takeover_interval)
        try:
            halt = await infra.emergency.halt(
                Scope.BOT, "b1", reason="outage", actor="ops", cancel_orders=True
            )

            async def completed() -> bool:
                record = await infra.state.find_by_request_id(job_request_id(halt))
                return record is not None and record.status is ExecutionStatus.COMPLETED

            await eventually(completed, "the restarted job completed")
            assert await statuses(infra, [resting]) == [OrderStatus.CANCELLED]
            assert await jobs(infra) == [ExecutionStatus.COMPLETED]
            audited = [
                a for a in await infra.emergency.audit_entries() if a.action == "cancel_on_halt"
            ]
            assert [a.details["status"] for a in audited] == ["completed", "failed"]
        finally:
            await manager.drain(DEADLINE_SECONDS)
