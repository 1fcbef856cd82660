"""Regressions of the ownership holes an independent review found (issue 8), each on the
embedded stack in this process: a real SQLite state file, the paper ledger on it, an
``ExecutionManager`` with its takeover loop.

Faults are injected by :class:`FaultyStore`, a hand-written ``SQLiteStateStore``
subclass that fails a chosen write, cancels an execution between ``orphans()`` and the
claim that follows, and records every claim; and by a ``LeaseKeeper`` whose clock only
moves when the test says so. Nothing sleeps to synchronise: waits poll a stored state
(``kit.eventually``), bounded by ``DEADLINE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from gate import GateServer
from kit import DEADLINE_SECONDS, ManualClock, eventually, execution
from workflows import block

from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.app.cli import main
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.manager import ExecutionManager, Submission
from tradeflow.app.settings import Settings
from tradeflow.domain.clock import Clock, SystemClock, new_id
from tradeflow.domain.errors import (
    ExecutionNotFound,
    InvalidRequest,
    LeaseLost,
    TradeflowError,
    UnavailableError,
)
from tradeflow.domain.ownership import Claim, Lease, OwnerInfo
from tradeflow.domain.records import (
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.engine.ownership import LeaseKeeper
from tradeflow.observability.logging import get_logger
from tradeflow.ports import StateStore

LEASE = 30.0
"""Every lease here: its heartbeat (every ttl/3) never comes during a test, so a lease
ends only when a test releases it or moves a keeper's clock."""
TAKEOVER_INTERVAL = 0.01
MAX_TAKEOVERS = 2
QUANTITY = 0.001
ORPHAN_CANCELLED = "cancelled while no executor ran it"
"""The error the store gives an execution it cancelled while no owner ran it."""

BUY: dict[str, Any] = {
    "blocks": [
        block(
            "buy",
            "actions",
            "place_order",
            {"symbol": "BTC/USDT", "side": "buy", "quantity": QUANTITY},
        ),
    ]
}
"""One market buy (client order id ``<execution_id>:buy``): it trades as soon as it runs."""

UNKNOWN_TYPE: dict[str, Any] = {
    "blocks": [block("x", "providers", "gone_plugin")],
}
"""A workflow whose node type no process here knows (its plugin was removed)."""


def buy_after(gate: GateServer) -> dict[str, Any]:
    """Wait for ``gate`` to answer, then the buy of :data:`BUY`."""
    wait = block(
        "wait", "providers", "api_call", {"url": gate.url}, config={"timeout": DEADLINE_SECONDS}
    )
    buy = dict(BUY["blocks"][0], inputs={"when": "wait.status_code"})
    return {"blocks": [wait, buy]}


class FaultyStore(SQLiteStateStore):
    """The SQLite store with faults a test arms: ``fail_write`` (a predicate) makes the
    first write it matches raise ``UnavailableError`` (once); ``cancel_when_listed``
    ids are cancelled right after ``orphans()`` listed them (the listing returned is
    the stale one). Every claim's answer is kept in ``claims``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.fail_write: Callable[[StateBatch], bool] | None = None
        self.failed: list[str] = []
        """Execution ids of the writes failed on purpose."""
        self.cancel_when_listed: set[str] = set()
        self.claims: defaultdict[str, list[Claim | TradeflowError]] = defaultdict(list)

    async def write(self, batch: StateBatch) -> None:
        if self.fail_write is not None and self.fail_write(batch):
            self.fail_write = None
            assert batch.execution is not None
            self.failed.append(batch.execution.execution_id)
            raise UnavailableError("state store unavailable (injected by the test)")
        await super().write(batch)

    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        listed = await super().orphans(limit)
        for record in listed:
            if record.execution_id in self.cancel_when_listed:
                self.cancel_when_listed.discard(record.execution_id)
                await self.request_cancel(record.execution_id)
        return listed

    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        try:
            claim = await super().claim(execution_id, lease, takeover=takeover)
        except TradeflowError as exc:
            self.claims[execution_id].append(exc)
            raise
        self.claims[execution_id].append(claim)
        return claim


@pytest_asyncio.fixture
async def infra(db_path: Path) -> AsyncIterator[Infrastructure]:
    """The embedded infrastructure on the test's state file (leases of :data:`LEASE`),
    allowed to reach the local gates (loopback) explicitly."""
    settings = replace(
        Settings.from_env("test"),
        lease_seconds=LEASE,
        max_takeovers=MAX_TAKEOVERS,
        egress_allow=("127.0.0.1",),
    )
    assert settings.sqlite_path == str(db_path)
    infrastructure = await Infrastructure.create("test", settings=settings)
    yield infrastructure
    await infrastructure.close()


@pytest.fixture
def store(infra: Infrastructure, conn: sqlite3.Connection) -> FaultyStore:
    """A :class:`FaultyStore` on the state file, installed as ``infra``'s state store and
    as the store of its lease (a keeper on the system clock)."""
    faulty = FaultyStore(conn)
    install(infra, faulty, SystemClock())
    return faulty


@pytest_asyncio.fixture
async def manager(infra: Infrastructure) -> AsyncIterator[ExecutionManager]:
    running = ExecutionManager(infra)
    yield running
    await running.drain(0)


@pytest.fixture
def gates() -> Iterator[list[GateServer]]:
    opened: list[GateServer] = []
    yield opened
    for gate in opened:
        gate.close()


def install(infra: Infrastructure, state: StateStore, clock: Clock) -> LeaseKeeper:
    """Make ``state`` ``infra``'s store and give ``infra`` a lease keeper on it whose
    clock is ``clock`` (before any execution: the lease is taken by the first)."""
    assert not infra.owner.started
    infra.state = state
    infra.owner = LeaseKeeper(
        state,
        OwnerInfo.of_this_process("library", new_id()),
        ttl=LEASE,
        clock=clock,
        log=get_logger("test.lease"),
    )
    return infra.owner


async def orphan_of_a_dead_owner(
    state: SQLiteStateStore, definitions: dict[str, dict[str, Any]], *, cancel: bool = False
) -> None:
    """Executions (id -> definition, started a second apart in this order) left
    ``running`` by an owner that then died (its lease released). With ``cancel``, each
    cancel is requested while that owner still lived, before it could heartbeat."""
    dead = await state.acquire_lease(OwnerInfo("dead-owner", "executor", "elsewhere", 1), LEASE)
    for started, (execution_id, definition) in enumerate(definitions.items()):
        record = execution(execution_id, definition=definition, started_at=1_000.0 + started)
        await state.write(StateBatch(record, fence=dead.fence))
        if cancel:
            assert (await state.request_cancel(execution_id)).status is ExecutionStatus.RUNNING
    await state.release_lease(dead)


async def final(state: SQLiteStateStore, execution_id: str) -> ExecutionRecord:
    """The execution's record once it is final (bounded wait)."""

    async def ended() -> bool:
        return (await state.get_execution(execution_id)).status.final

    await eventually(ended, f"{execution_id} is final")
    return await state.get_execution(execution_id)


def fills(conn: sqlite3.Connection, execution_id: str) -> int:
    """How many fills the shared paper ledger holds for the execution's buy."""
    ((count,),) = conn.execute(
        "SELECT count(*) FROM paper_fills WHERE client_order_id = ?", (f"{execution_id}:buy",)
    )
    return int(count)


async def event_types(state: SQLiteStateStore, execution_id: str) -> list[str]:
    return [event.type for _, event in await state.read_events(execution_id=execution_id)]


async def resumed_starts(state: SQLiteStateStore, execution_id: str) -> int:
    """How many times the execution was started again from its checkpoints."""
    return sum(
        event.type == EventType.EXECUTION_STARTED.value and bool(event.data.get("resumed"))
        for _, event in await state.read_events(execution_id=execution_id)
    )


async def running(state: SQLiteStateStore) -> list[ExecutionRecord]:
    query = ExecutionQuery(status=ExecutionStatus.RUNNING, limit=500)
    return list((await state.list_executions(query)).executions)


# -- 1.1 the local deadline passed while the store still holds the lease ------------------


@pytest.mark.asyncio
async def test_runs_refused_by_the_local_deadline_are_taken_over_under_a_new_lease(
    infra: Infrastructure,
    manager: ExecutionManager,
    conn: sqlite3.Connection,
    gates: list[GateServer],
) -> None:
    """Actions refused by the keeper's local deadline while the store still holds the lease
    give the lease up: the runs are taken over under a new epoch and complete, each
    order once, none left running under a live owner."""
    clock = ManualClock()
    state = infra.state
    assert isinstance(state, SQLiteStateStore)
    keeper = install(infra, state, clock)
    manager.start_takeover(TAKEOVER_INTERVAL)
    gates += [GateServer() for _ in range(3)]
    ids = [await manager.submit(Submission(buy_after(gate), "deadline")) for gate in gates]
    for gate in gates:
        await eventually(gate.arrived.is_set, "an execution waits at its gate")
    old = keeper.lease
    # The heartbeat's answer is late (or the process was paused): the local deadline
    # passes while the store, on its own clock, still holds the lease.
    clock.advance(LEASE + 1)
    for execution_id in ids:
        record = await state.get_execution(execution_id)
        assert (record.epoch, record.owner_live) == (old.epoch, True), record
    for gate in gates:
        gate.open.set()
    for execution_id in ids:
        record = await final(state, execution_id)
        assert record.status is ExecutionStatus.COMPLETED, record
        assert record.owner == old.info.owner and record.epoch > old.epoch, record
        assert record.takeovers == 0, record  # the same process reclaimed it: nobody died
        assert await resumed_starts(state, execution_id) == 1
        assert fills(conn, execution_id) == 1
    assert keeper.lease.epoch > old.epoch
    assert await running(state) == []
    assert await state.orphans(10) == []


def test_stop_right_after_a_refused_check_ends_the_heartbeat(conn: sqlite3.Connection) -> None:
    """stop() right after check() refused an action (the heartbeat just woken to give the
    lease up) ends the heartbeat and returns: an owner closing after a refusal never hangs."""
    clock = ManualClock()
    keeper = LeaseKeeper(
        SQLiteStateStore(conn, clock=clock),
        OwnerInfo.of_this_process("library", new_id()),
        ttl=LEASE,
        clock=clock,
        log=get_logger("test.lease"),
    )

    async def refuse() -> None:
        clock.advance(LEASE + 1)
        with pytest.raises(LeaseLost, match="not renewed within its ttl"):
            keeper.check(keeper.lease.epoch)

    async def stop() -> bool:
        """Whether stop() returned within the bound."""
        async with asyncio.timeout(DEADLINE_SECONDS) as bound:
            await keeper.stop()
        return not bound.expired()

    # One loop, run a step at a time as the owner's code runs: the heartbeat waits, an
    # action is refused, the owner closes.
    with asyncio.Runner() as runner:
        runner.run(keeper.start())
        runner.run(refuse())
        assert runner.run(stop()), "stop() did not return: the heartbeat outlived it"
    assert not keeper.started


# -- 1.2 the final write fails --------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_run_whose_final_write_failed_is_retried_here_and_ends_final(
    store: FaultyStore, manager: ExecutionManager, conn: sqlite3.Connection
) -> None:
    """A run whose final write fails (store unavailable) is retried by the takeover loop
    of the same manager and ends completed, its order placed once."""
    store.fail_write = lambda batch: batch.execution is not None and batch.execution.status.final
    manager.start_takeover(TAKEOVER_INTERVAL)
    execution_id = await manager.submit(Submission(BUY, "final-fails"))
    record = await final(store, execution_id)
    assert store.failed == [execution_id]
    assert record.status is ExecutionStatus.COMPLETED, record
    assert record.owner_live and record.takeovers == 0, record
    assert (await event_types(store, execution_id)).count(EventType.EXECUTION_COMPLETED.value) == 1
    assert fills(conn, execution_id) == 1
    assert await running(store) == []


# -- 1.3 a cancelled orphan is not revived ---------------------------------------------------


@pytest.mark.asyncio
async def test_an_orphan_cancelled_between_listing_and_claim_is_not_revived(
    store: FaultyStore, manager: ExecutionManager, conn: sqlite3.Connection
) -> None:
    """An orphan cancelled after the takeover loop listed it and before its claim stays
    cancelled: the claim is refused, nothing of it runs, no order is placed."""
    await orphan_of_a_dead_owner(store, {"cancelled-orphan": BUY})
    store.cancel_when_listed.add("cancelled-orphan")
    manager.start_takeover(TAKEOVER_INTERVAL)
    await eventually(lambda: bool(store.claims["cancelled-orphan"]), "the orphan was claimed")
    await manager.drain(DEADLINE_SECONDS)  # the adoption's run, if any, ends
    (refused,) = store.claims["cancelled-orphan"]
    assert isinstance(refused, InvalidRequest), refused
    record = await store.get_execution("cancelled-orphan")
    assert record.status is ExecutionStatus.CANCELLED, record
    assert record.error == ORPHAN_CANCELLED, record
    assert record.owner == "dead-owner", record
    assert await event_types(store, "cancelled-orphan") == []
    assert fills(conn, "cancelled-orphan") == 0


# -- 1.4 orphans this replica cannot run do not starve the others ------------------------


@pytest.mark.asyncio
async def test_a_runnable_orphan_behind_many_unknown_ones_is_taken_over(
    store: FaultyStore, manager: ExecutionManager, conn: sqlite3.Connection
) -> None:
    """40 older orphans of an unknown node type do not hide a runnable orphan: it is taken
    over and completes; the unknown ones are never claimed."""
    unknown = {f"unknown-{i:02}": UNKNOWN_TYPE for i in range(40)}
    await orphan_of_a_dead_owner(store, {**unknown, "runnable": BUY})
    manager.start_takeover(TAKEOVER_INTERVAL)
    record = await final(store, "runnable")
    assert record.status is ExecutionStatus.COMPLETED, record
    assert record.takeovers == 1, record
    assert fills(conn, "runnable") == 1
    assert not any(store.claims[execution_id] for execution_id in unknown)
    for execution_id in unknown:
        left = await store.get_execution(execution_id)
        assert (left.status, left.owner) == (ExecutionStatus.RUNNING, "dead-owner"), left


# -- 1.5 a cancel asked of an owner that died before its heartbeat -------------------------


@pytest.mark.asyncio
async def test_a_cancel_asked_of_an_owner_that_then_died_is_honoured_by_the_next_claimer(
    infra: Infrastructure,
    store: FaultyStore,
    manager: ExecutionManager,
    conn: sqlite3.Connection,
) -> None:
    """A cancel requested of a live owner that dies before its next heartbeat is kept on
    the execution: the replica taking it over ends it cancelled, placing no order."""
    await orphan_of_a_dead_owner(store, {"cancel-then-die": BUY}, cancel=True)
    manager.start_takeover(TAKEOVER_INTERVAL)
    record = await final(store, "cancel-then-die")
    assert record.status is ExecutionStatus.CANCELLED, record
    assert record.owner == infra.owner.info.owner, record
    (claim,) = store.claims["cancel-then-die"]
    assert isinstance(claim, Claim) and claim.cancel_requested and claim.takeover, claim
    assert fills(conn, "cancel-then-die") == 0


# -- 1.6 quarantine is not reset by an interrupt -----------------------------------------


@pytest.mark.asyncio
async def test_an_interrupted_execution_whose_claimers_die_is_quarantined(
    store: FaultyStore, manager: ExecutionManager, conn: sqlite3.Connection
) -> None:
    """After an interrupt, claimers dying before their first write each count as a death
    (a claim makes it running): past MAX_TAKEOVERS the next takeover quarantines it."""
    first = await store.acquire_lease(OwnerInfo("first", "executor", "h", 1), LEASE)
    record = execution("interrupted", definition=BUY)
    await store.write(StateBatch(record, fence=first.fence))
    interrupted = replace(record, status=ExecutionStatus.INTERRUPTED)
    await store.write(StateBatch(interrupted, fence=first.fence))
    # ``first`` lives on: an interrupted execution is claimable all the same.
    counted = []
    for i in range(MAX_TAKEOVERS + 1):
        lease = await store.acquire_lease(OwnerInfo(f"doomed-{i}", "executor", "h", 10 + i), LEASE)
        claim = await store.claim("interrupted", lease, takeover=True)
        counted.append((claim.takeover, claim.takeovers))
        assert (await store.get_execution("interrupted")).status is ExecutionStatus.RUNNING
        await store.release_lease(lease)  # it dies before writing anything
    assert counted == [(False, 0)] + [(True, n) for n in range(1, MAX_TAKEOVERS + 1)]
    manager.start_takeover(TAKEOVER_INTERVAL)
    ended = await final(store, "interrupted")
    assert ended.status is ExecutionStatus.FAILED, ended
    assert "quarantined" in (ended.error or ""), ended
    assert ended.takeovers == MAX_TAKEOVERS + 1, ended
    assert fills(conn, "interrupted") == 0


# -- 2.1 commands that run nothing take no lease -------------------------------------------


def test_halt_status_and_listing_take_no_lease(
    tmp_path: Path, conn: sqlite3.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tradeflow halt`, `status` and `executions list` never take a lease (no epoch is
    ever granted), while a `run` does: the probe sees leases."""
    assert main(["halt", "--reason", "no lease needed"]) == 0
    assert main(["status"]) == 0
    assert main(["executions", "list"]) == 0
    assert main(["resume", "--reason", "done"]) == 0
    assert conn.execute("SELECT * FROM leases").fetchall() == []
    assert conn.execute("SELECT * FROM counters WHERE name = 'epoch'").fetchall() == []
    path = tmp_path / "buy.json"
    path.write_text(json.dumps(BUY))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    ((granted,),) = conn.execute("SELECT value FROM counters WHERE name = 'epoch'")
    assert granted >= 1
    assert conn.execute("SELECT * FROM leases").fetchall() == []  # released at its end


# -- 3. a durable submission whose start cannot be written ---------------------------------


@pytest.mark.asyncio
async def test_a_submission_whose_start_write_fails_is_refused_and_leaves_nothing(
    store: FaultyStore, manager: ExecutionManager, conn: sqlite3.Connection
) -> None:
    """submit() raises when the execution's start cannot be written, and nothing of it runs:
    no "interrupted" record that would run it after all, at most a failed one saying it was
    not accepted (without the request id, which stays free)."""
    store.fail_write = lambda batch: batch.execution is not None
    with pytest.raises(UnavailableError):
        await manager.submit(Submission(BUY, "refused", request_id="refused-1"))
    (execution_id,) = store.failed
    await assert_not_accepted(store, conn, execution_id)
    assert await store.find_by_request_id("refused-1") is None
    async with asyncio.timeout(DEADLINE_SECONDS):
        retried = await manager.execute(Submission(BUY, "refused", request_id="refused-1"))
    assert retried.record.execution_id != execution_id
    assert retried.record.status is ExecutionStatus.COMPLETED, retried.record
    await manager.drain(DEADLINE_SECONDS)  # whatever the refused run still did, it did
    await assert_not_accepted(store, conn, execution_id)
    listed = (await store.list_executions(ExecutionQuery(limit=500))).executions
    assert retried.record.execution_id in [record.execution_id for record in listed]


async def assert_not_accepted(
    store: FaultyStore, conn: sqlite3.Connection, execution_id: str
) -> None:
    """The execution ran nothing: no order, and no record, or a failed one saying why."""
    assert fills(conn, execution_id) == 0
    try:
        record = await store.get_execution(execution_id)
    except ExecutionNotFound:
        assert await event_types(store, execution_id) == []
        return
    assert record.status is ExecutionStatus.FAILED and record.request_id is None
    assert record.error is not None and record.error.startswith("submission not accepted")
    assert "node_started" not in await event_types(store, execution_id)
