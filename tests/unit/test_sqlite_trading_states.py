"""Trading states in the embedded SQLite file: halts keep their state, the state store
refuses an intent its scopes' state does not admit in the write's own transaction (after
the fence, with nothing of the batch written), version 3 and 4 files keep their halts as
``halted``, leases can be listed and revoked, and no intent of a halted scope commits after
the halt, with a real writer process racing real halts.

The domain's rule is proved by test_trading_states.py; here the store's decision is
compared with it (``EmergencySnapshot.ensure_allowed`` on what the file holds).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit import (
    DEADLINE_SECONDS,
    ManualClock,
    checkpoint,
    event,
    execution,
    refusal_fields,
    refusal_of,
)
from test_sqlite_ownership import ALICE, BOB, TTL, layout, row_counts, spawn, v3_file

from tradeflow.adapters.sqlite.database import DB_SCHEMA_VERSION, open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController, SQLiteEmergencyStore
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import HaltCondition, HaltKey, ScopeIds
from tradeflow.domain.errors import EmergencyHalted, LeaseLost
from tradeflow.domain.ownership import Claim, Fence, Heartbeat
from tradeflow.domain.records import (
    ActionGuard,
    AuditEntry,
    ExecutionStatus,
    HaltState,
    Scope,
    StateBatch,
)
from tradeflow.domain.trading import OrderEffect, TradingState

IDS: Final = ScopeIds(workflow_id="wf", bot_id="b1", strategy_id="s1")
"""The scope ids of the intents written here (``wf`` is the kit's workflow id)."""
TARGETS: Final = ("a", "b")
SCOPED: Final = (Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW)

V4_UPGRADE: Final = """
ALTER TABLE executions ADD COLUMN owner TEXT;
ALTER TABLE executions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

CREATE TABLE leases (
    owner      TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    cancels    TEXT
) WITHOUT ROWID;

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

PRAGMA user_version = 4;
"""
"""What version 4 added to a version 3 file (ownership), as tradeflow 4 laid it out."""
OLD_HALTS: Final = """
INSERT INTO halts VALUES ('global', '', 'old global halt', 'ops', 100.0);
INSERT INTO halts VALUES ('bot', 'b1', 'old bot halt', 'ops', 200.0);
"""
"""Two halts as versions 3 and 4 stored them (no state: every halt stopped trading)."""

WRITER: Final = """
import asyncio, json, os, sys
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.errors import EmergencyHalted
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import ActionGuard, Event, StateBatch
from tradeflow.domain.trading import OrderEffect

PLAN = (
    ("halted-opens", "halted-bot", OrderEffect.OPENS),
    ("halted-cancels", "halted-bot", OrderEffect.CANCELS),
    ("other-opens", "other-bot", OrderEffect.OPENS),
)
MAX_ROUNDS = 100_000

async def main(path):
    conn = open_database(path)
    store = SQLiteStateStore(conn)
    info = OwnerInfo("crowd-writer", "executor", "crowd", os.getpid())
    lease = await store.acquire_lease(info, 600.0)
    sequence = 0
    for _ in sys.stdin:
        refused = dict.fromkeys((name for name, _, _ in PLAN), 0)
        rounds = 0
        while not refused["halted-opens"] and rounds < MAX_ROUNDS:
            rounds += 1
            for name, bot, effect in PLAN:
                sequence += 1
                intent = Event(
                    "node_started", f"{name}-{sequence}", sequence, 0.0, "corr", name, "wf",
                    bot, node_id="order",
                )
                guard = ActionGuard("wf", bot, None, effect)
                try:
                    await store.write(StateBatch(events=(intent,), fence=lease.fence, guard=guard))
                except EmergencyHalted:
                    refused[name] += 1
            if rounds == 1:
                print("writing", flush=True)
        print(json.dumps({"rounds": rounds, "refused": refused}), flush=True)
    conn.close()

asyncio.run(main(*sys.argv[1:]))
"""
"""A process with a lease that, for each line read, writes rounds of guarded intents (one
per entry of its plan, each a journal row of the execution named after the entry) until
an opening intent of ``halted-bot`` is refused (or a bound is hit): it prints ``writing``
once its first round committed, and at the end the rounds and the refusals of each entry."""

CROWD_TRIALS: Final = 1000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(conn: sqlite3.Connection, clock: ManualClock) -> SQLiteStateStore:
    return SQLiteStateStore(conn, clock=clock)


@pytest.fixture
def emergency(conn: sqlite3.Connection) -> SQLiteEmergencyStore:
    return SQLiteEmergencyStore(conn)


def audit(action: str = "halt") -> AuditEntry:
    """An audit entry to store with a halt or resume."""
    return AuditEntry(0, 1.0, "test", action, None, None, "test")


def halt_of(
    scope: Scope,
    target: str | None,
    state: TradingState = TradingState.HALTED,
    *,
    since: float = 1.0,
    reason: str | None = None,
    actor: str = "test",
    cancel_orders: bool = False,
) -> HaltState:
    """A halt whose reason names its scope and target unless told otherwise."""
    return HaltState(
        scope,
        target,
        f"{scope.value}:{target}" if reason is None else reason,
        actor,
        since,
        state,
        cancel_orders,
    )


def guard_of(ids: ScopeIds, effect: OrderEffect) -> ActionGuard:
    """The guard of an intent with ``effect`` for ``ids``."""
    return ActionGuard(ids.workflow_id, ids.bot_id, ids.strategy_id, effect)


async def store_refusal(store: SQLiteStateStore, batch: StateBatch) -> EmergencyHalted | None:
    """Write ``batch``; the refusal it met, or None once it is written."""
    try:
        await store.write(batch)
    except EmergencyHalted as exc:
        return exc
    return None


async def check_intent(
    store: SQLiteStateStore,
    emergency: SQLiteEmergencyStore,
    conn: sqlite3.Connection,
    ids: ScopeIds,
    effect: OrderEffect,
    sequence: int,
) -> None:
    """An intent for ``ids`` with ``effect`` is refused by the store exactly as the domain
    refuses it on the halts in the file, and adds a journal row exactly when it is not."""
    expected = refusal_of(emergency.snapshot(), ids, effect)
    before = row_counts(conn)

    got = await store_refusal(
        store, StateBatch(events=(event("e", sequence),), guard=guard_of(ids, effect))
    )

    assert refusal_fields(got) == refusal_fields(expected)
    grown = 0 if expected is not None else 1
    assert row_counts(conn) == {**before, "batches": before["batches"] + grown}


# -- halts keep their state -------------------------------------------------------------


@pytest.mark.asyncio
async def test_halts_keep_their_state_and_a_re_halt_replaces_it_but_not_since(
    db_path: Path, emergency: SQLiteEmergencyStore
) -> None:
    """A halt's state and cancel_orders are stored and read back (by this connection and
    another one); halting the scope again replaces reason, actor, state and cancel_orders
    and keeps since."""
    first = halt_of(
        Scope.BOT, "b1", TradingState.REDUCE_ONLY, since=10.0, actor="alice", cancel_orders=True
    )
    everywhere = halt_of(Scope.GLOBAL, None, TradingState.CANCEL_ONLY, since=5.0)
    assert await emergency.save_halt(first, audit()) == first
    assert await emergency.save_halt(everywhere, audit()) == everywhere
    assert emergency.snapshot().halt_list() == [everywhere, first]

    again = halt_of(Scope.BOT, "b1", TradingState.HALTED, since=20.0, reason="worse", actor="bob")
    stored = await emergency.save_halt(again, audit())

    assert stored == replace(again, since=10.0)
    assert emergency.snapshot().halt_list() == [everywhere, stored]
    other = open_database(db_path)
    try:
        assert SQLiteEmergencyStore(other).snapshot().halt_list() == [everywhere, stored]
    finally:
        other.close()


# -- the store guard --------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("state", list(TradingState))
@pytest.mark.parametrize("effect", list(OrderEffect))
async def test_each_state_admits_in_the_store_what_the_domain_admits(
    store: SQLiteStateStore,
    emergency: SQLiteEmergencyStore,
    conn: sqlite3.Connection,
    scope: Scope,
    state: TradingState,
    effect: OrderEffect,
) -> None:
    """With one halt of each state on each scope covering the intent, the store commits or
    refuses (naming the halt) exactly as the domain says; a halt on another target of the
    scope does not cover it."""
    target = None if scope is Scope.GLOBAL else getattr(IDS, f"{scope.value}_id")
    await emergency.save_halt(halt_of(scope, target, state), audit())

    await check_intent(store, emergency, conn, IDS, effect, 1)
    if scope is not Scope.GLOBAL:
        elsewhere = replace(IDS, **{f"{scope.value}_id": "elsewhere"})
        await check_intent(store, emergency, conn, elsewhere, effect, 2)
        assert refusal_of(emergency.snapshot(), elsewhere, effect) is None


halts_strategy = st.dictionaries(
    st.just((Scope.GLOBAL, None)) | st.tuples(st.sampled_from(SCOPED), st.sampled_from(TARGETS)),
    st.sampled_from(TradingState),
    max_size=7,
)
ids_strategy = st.builds(
    ScopeIds,
    workflow_id=st.none() | st.sampled_from(TARGETS),
    bot_id=st.none() | st.sampled_from(TARGETS),
    strategy_id=st.none() | st.sampled_from(TARGETS),
)


# The file is shared by the examples on purpose (opening one per example would dominate the
# run): each example first replaces every halt in it, and reads them with a new emergency
# store (this connection's own DELETE does not tell an existing one to reload).
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(halts=halts_strategy, ids=ids_strategy, effect=st.sampled_from(OrderEffect))
def test_the_store_decides_any_halts_as_the_domain_does(
    store: SQLiteStateStore,
    conn: sqlite3.Connection,
    halts: dict[HaltKey, TradingState],
    ids: ScopeIds,
    effect: OrderEffect,
) -> None:
    """For any halts over the four scopes and states in a real file, any scope ids and any
    effect, the store's guarded write commits or refuses exactly as ensure_allowed on the
    file's halts does, naming the same halt, and writes nothing when it refuses."""

    async def example() -> None:
        conn.execute("DELETE FROM halts")
        emergency = SQLiteEmergencyStore(conn)
        for (scope, target), state in halts.items():
            await emergency.save_halt(halt_of(scope, target, state), audit())
        await check_intent(store, emergency, conn, ids, effect, 1)

    asyncio.run(example())


@pytest.mark.asyncio
async def test_a_refused_batch_writes_nothing(
    store: SQLiteStateStore,
    emergency: SQLiteEmergencyStore,
    conn: sqlite3.Connection,
) -> None:
    """Guarded batches the halts refuse (a new execution with a definition not stored yet
    with a checkpoint and an event of a running one; the running one's record update with
    its checkpoint and event) leave every table, and the running execution's record,
    checkpoints and events, as they were; once the halt is lifted both are written in full."""
    lease = await store.acquire_lease(ALICE, TTL)
    await store.write(
        StateBatch(
            execution=execution("e", bot_id="b1"),
            checkpoints=(checkpoint("e", "quote"),),
            events=(event("e", 1),),
            fence=lease.fence,
        )
    )
    await emergency.save_halt(halt_of(Scope.BOT, "b1", TradingState.CANCEL_ONLY), audit())
    definition: dict[str, Any] = {"blocks": [{"id": "fresh", "type": "price"}]}
    guard = guard_of(IDS, OrderEffect.REDUCES)
    batches = (
        StateBatch(
            execution=execution("new", bot_id="b1", definition=definition),
            checkpoints=(checkpoint("new", "quote"), checkpoint("e", "order", outputs={})),
            events=(event("new", 1), event("e", 2)),
            fence=lease.fence,
            guard=guard,
        ),
        StateBatch(
            execution=execution("e", bot_id="b1", status=ExecutionStatus.COMPLETED),
            checkpoints=(checkpoint("e", "log", outputs={}),),
            events=(event("e", 3),),
            fence=lease.fence,
            guard=guard,
        ),
    )
    before = (
        row_counts(conn),
        await store.get_execution("e"),
        await store.get_checkpoints("e"),
        await store.read_events(),
    )

    refusals = [await store_refusal(store, batch) for batch in batches]

    assert [refusal_fields(r) for r in refusals] == [("bot:b1", "bot", "b1", "cancel_only")] * 2
    assert before == (
        row_counts(conn),
        await store.get_execution("e"),
        await store.get_checkpoints("e"),
        await store.read_events(),
    )
    await emergency.delete_halt(Scope.BOT, "b1", audit("resume"))
    for batch in batches:
        await store.write(batch)
    assert (await store.get_execution("new")).definition == definition
    assert (await store.get_execution("e")).status is ExecutionStatus.COMPLETED
    assert set(await store.get_checkpoints("e")) == {"quote", "order", "log"}
    assert len(await store.read_events()) == 4


@pytest.mark.asyncio
async def test_a_lost_lease_is_reported_before_the_guard(
    store: SQLiteStateStore, emergency: SQLiteEmergencyStore, clock: ManualClock
) -> None:
    """A guarded batch whose lease lapsed, or was replaced by a newer epoch, raises
    LeaseLost even when the halts refuse it too; under a live lease it meets the halt."""
    lease = await store.acquire_lease(ALICE, TTL)
    await store.write(StateBatch(execution=execution("e"), fence=lease.fence))
    await emergency.save_halt(halt_of(Scope.GLOBAL, None), audit())
    batch = StateBatch(
        events=(event("e", 1),), fence=lease.fence, guard=guard_of(IDS, OrderEffect.OPENS)
    )

    clock.advance(TTL)
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.write(batch)
    newer = await store.acquire_lease(ALICE, TTL)
    with pytest.raises(LeaseLost, match=f"replaced by epoch {newer.epoch}"):
        await store.write(batch)
    with pytest.raises(EmergencyHalted):
        await store.write(replace(batch, fence=newer.fence))


# -- migration --------------------------------------------------------------------------


def v4_file(path: Path, *, also: str = "") -> None:
    """Create ``path`` as tradeflow 4 left it (a version 3 file grown by ownership)."""
    v3_file(path, also=V4_UPGRADE + also)


@pytest.mark.asyncio
@pytest.mark.parametrize("make", [v3_file, v4_file], ids=["v3", "v4"])
async def test_old_files_migrate_keeping_their_halts_halted(
    db_path: Path, make: Callable[..., None]
) -> None:
    """Opening a version 3 or 4 file with halts migrates it to 5: each halt reads back as
    it was, HALTED and not cancelling orders, and refuses an opening intent in the store
    while a cancel passes."""
    make(db_path, also=OLD_HALTS)

    conn = open_database(db_path)
    try:
        halts = SQLiteEmergencyStore(conn).snapshot().halt_list()
        store = SQLiteStateStore(conn)
        refused = await store_refusal(
            store, StateBatch(events=(event("e", 1),), guard=guard_of(IDS, OrderEffect.OPENS))
        )
        cancel = StateBatch(events=(event("e", 2),), guard=guard_of(IDS, OrderEffect.CANCELS))
        await store.write(cancel)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()

    assert version == DB_SCHEMA_VERSION == 7
    assert halts == [
        HaltState(Scope.GLOBAL, None, "old global halt", "ops", 100.0, TradingState.HALTED),
        HaltState(Scope.BOT, "b1", "old bot halt", "ops", 200.0, TradingState.HALTED),
    ]
    assert refusal_fields(refused) == ("old global halt", "global", None, "halted")


@pytest.mark.parametrize("make_file", [v3_file, v4_file], ids=["v3", "v4"])
def test_a_migrated_file_has_the_layout_of_a_new_one(
    db_path: Path, tmp_path: Path, make_file: Callable[[Path], None]
) -> None:
    """A migrated version 3 or 4 file has the same tables, columns (types, defaults) and
    indexes as a file created by this version."""
    make_file(db_path)
    migrated = open_database(db_path)
    fresh = open_database(tmp_path / "fresh.db")
    try:
        assert layout(migrated) == layout(fresh)
    finally:
        migrated.close()
        fresh.close()


# -- the lease registry -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_live_leases_are_the_unexpired_ones(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """live_leases lists every lease unexpired on the store clock as (owner, epoch), by
    owner; a lapsed or released lease is not listed."""
    assert await store.live_leases() == []
    alice = await store.acquire_lease(ALICE, TTL)
    bob = await store.acquire_lease(BOB, 2 * TTL)
    assert await store.live_leases() == [alice.fence, bob.fence]

    clock.advance(TTL)
    assert await store.live_leases() == [bob.fence]
    await store.release_lease(bob)
    assert await store.live_leases() == []


@pytest.mark.asyncio
async def test_a_revoked_lease_ends_as_a_lapse_would(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """Revoking a live lease ends it now: it is no longer listed, its next write and renewal
    raise LeaseLost, its running execution is an orphan another owner takes over, and a
    cancel asked of it reaches its owner's next lease. Revoking it again, another epoch of
    the owner or a lapsed lease returns False."""
    alice = await store.acquire_lease(ALICE, 10 * TTL)
    bob = await store.acquire_lease(BOB, 10 * TTL)
    await store.write(StateBatch(execution=execution("e"), fence=alice.fence))
    await store.request_cancel("e")

    assert not await store.revoke_lease(Fence(ALICE.owner, alice.epoch + 10))
    assert await store.revoke_lease(alice.fence)
    assert not await store.revoke_lease(alice.fence)

    assert await store.live_leases() == [bob.fence]
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.write(StateBatch(checkpoints=(checkpoint("e", "quote"),), fence=alice.fence))
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.renew_lease(alice)
    assert not (await store.get_execution("e")).owner_live
    assert [r.execution_id for r in await store.orphans(10)] == ["e"]
    again = await store.acquire_lease(ALICE, TTL)
    assert await store.renew_lease(again) == Heartbeat(cancel=("e",))
    assert await store.claim("e", bob) == Claim(ALICE.owner, True, 1, cancel_requested=True)
    clock.advance(TTL)
    assert not await store.revoke_lease(again.fence)


# -- the halt barrier across processes --------------------------------------------------


@pytest.mark.asyncio
async def test_no_intent_of_a_halted_scope_commits_after_the_halt(
    db_path: Path, conn: sqlite3.Connection
) -> None:
    """A writer process commits guarded intents in rounds (opening and cancelling in a bot,
    opening in another one); 1000 times, once it is writing, this process halts the bot,
    then resumes it once the writer reports an opening intent refused. A temporary trigger
    of this connection records the last journal row committed before each halt and resume,
    inside their transactions: no opening intent of the bot lies between a halt and its
    resume, while the bot's cancels and the other bot's intents do, and every halt stopped
    the writer's opening (its rounds end only at a refusal). No halt or resume failed for
    the lock the writer keeps taking, and the connection's busy timeout is as it was."""
    conn.execute(
        "CREATE TEMP TABLE marks (entry_id INTEGER PRIMARY KEY, last_batch INTEGER NOT NULL)"
    )
    conn.execute(
        "CREATE TEMP TRIGGER mark_halts AFTER INSERT ON main.audit BEGIN"
        " INSERT INTO marks VALUES (new.entry_id, (SELECT coalesce(max(batch_id), 0)"
        " FROM batches)); END"
    )
    controller = LocalEmergencyController(conn, clock=SystemClock(), id_factory=new_id)
    busy_timeout = conn.execute("PRAGMA busy_timeout").fetchall()

    def mark() -> int:
        """The last journal row committed before the latest halt or resume."""
        sql = "SELECT last_batch FROM marks ORDER BY entry_id DESC LIMIT 1"
        ((last,),) = conn.execute(sql).fetchall()
        return int(last)

    def committed(name: str, after: int, upto: int) -> int:
        """Journal rows of the writer's ``name`` intents committed after row ``after``, up
        to row ``upto``."""
        sql = (
            "SELECT count(*) FROM batches WHERE batch_id > ? AND batch_id <= ? AND execution_id = ?"
        )
        ((count,),) = conn.execute(sql, (after, upto, name)).fetchall()
        return int(count)

    spans: list[tuple[int, int]] = []
    bursts: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        writer = await spawn(stack, WRITER, str(db_path))
        assert writer.stdin is not None and writer.stdout is not None
        async with asyncio.timeout(4 * DEADLINE_SECONDS):
            for trial in range(CROWD_TRIALS):
                writer.stdin.write(b"go\n")
                await writer.stdin.drain()
                assert await writer.stdout.readline() == b"writing\n"
                await controller.halt(Scope.BOT, "halted-bot", reason=f"trial {trial}")
                halted_at = mark()
                bursts.append(json.loads(await writer.stdout.readline()))
                await controller.resume(Scope.BOT, "halted-bot", reason=f"trial {trial}")
                spans.append((halted_at, mark()))
            writer.stdin.close()
            assert await writer.wait() == 0

    assert conn.execute("PRAGMA busy_timeout").fetchall() == busy_timeout
    assert [span for span in spans if committed("halted-opens", *span)] == []
    assert all(committed("halted-cancels", *span) for span in spans)
    assert all(committed("other-opens", *span) for span in spans)
    assert [b["refused"] for b in bursts] == [
        {"halted-opens": 1, "halted-cancels": 0, "other-opens": 0}
    ] * CROWD_TRIALS


# -- conditional halt writes (a trigger's halt and lift) ----------------------------------

OPS, TRIGGER = "ops", "trigger:daily_loss@bot:b1"
CONDITIONAL_CASES: Final = [
    # (standing state and actor or None, condition, written state or None for a delete,
    # whether the write is admitted)
    (None, HaltCondition(stricter=True), TradingState.REDUCE_ONLY, True),
    ((TradingState.REDUCE_ONLY, OPS), HaltCondition(stricter=True), TradingState.HALTED, True),
    ((TradingState.HALTED, OPS), HaltCondition(stricter=True), TradingState.REDUCE_ONLY, False),
    (
        (TradingState.CANCEL_ONLY, OPS),
        HaltCondition(stricter=True),
        TradingState.CANCEL_ONLY,
        False,
    ),
    ((TradingState.HALTED, TRIGGER), HaltCondition(over=TRIGGER), TradingState.REDUCE_ONLY, True),
    ((TradingState.HALTED, OPS), HaltCondition(over=TRIGGER), TradingState.REDUCE_ONLY, False),
    (None, HaltCondition(over=TRIGGER), TradingState.REDUCE_ONLY, False),
    ((TradingState.HALTED, TRIGGER), HaltCondition(over=TRIGGER), None, True),
    ((TradingState.HALTED, OPS), HaltCondition(over=TRIGGER), None, False),
    # A two-step resume lifts only the halt it was about (halt_of's since is 1.0)...
    ((TradingState.HALTED, OPS), HaltCondition(since=1.0, over=OPS), None, True),
    # ...not one made after it was lifted, nor another actor's, nor none.
    ((TradingState.HALTED, OPS), HaltCondition(since=1.5, over=OPS), None, False),
    ((TradingState.HALTED, TRIGGER), HaltCondition(since=1.0, over=OPS), None, False),
    (None, HaltCondition(since=1.0), None, False),
    # A bot's own halt, a two-step scope's: never looser than the standing one.
    ((TradingState.HALTED, OPS), HaltCondition(no_looser=True), TradingState.REDUCE_ONLY, False),
    ((TradingState.REDUCE_ONLY, OPS), HaltCondition(no_looser=True), TradingState.HALTED, True),
    ((TradingState.HALTED, OPS), HaltCondition(no_looser=True), TradingState.HALTED, True),
    (None, HaltCondition(no_looser=True), TradingState.REDUCE_ONLY, True),
]
"""Shared with the Redis store's test: each store decides as ``HaltCondition.admits``."""


@pytest.mark.parametrize(("standing", "condition", "state", "expected"), CONDITIONAL_CASES)
@pytest.mark.asyncio
async def test_a_conditional_halt_write_decides_in_the_store_as_the_domain_rule(
    emergency: SQLiteEmergencyStore,
    standing: tuple[TradingState, str] | None,
    condition: HaltCondition,
    state: TradingState | None,
    expected: bool,
) -> None:
    """A trigger's halt (only stricter) and lift or restore (only over its own halt) are
    checked against the halt stored now, in the write's transaction: refused, nothing is
    written and nothing audited."""
    before = None
    if standing is not None:
        before = await emergency.save_halt(
            halt_of(Scope.BOT, "b1", standing[0], actor=standing[1]), audit()
        )
    entries = len(await emergency.audit_entries(100))
    admitted = condition.admits(before, state)
    assert admitted is expected
    if state is None:
        done = await emergency.delete_halt(Scope.BOT, "b1", audit("resume"), condition)
        assert done is admitted
        expected = None if admitted else before
    else:
        written = await emergency.save_halt(
            halt_of(Scope.BOT, "b1", state, actor="writer"), audit(), condition
        )
        assert (written is not None) is admitted
        expected = written if admitted else before
    assert emergency.snapshot().halts.get((Scope.BOT, "b1")) == expected
    assert len(await emergency.audit_entries(100)) == entries + (1 if admitted else 0)
