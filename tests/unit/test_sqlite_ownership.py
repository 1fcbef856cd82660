"""Ownership in the embedded SQLite store: the version 3 -> 5 migration, lease expiry on a
store clock, refused writes leaving nothing behind, and claims raced by real processes.

The rules every adapter shares are proved by tests/integration/test_ownership_contract.py;
these are what only the SQLite file shows (its tables, its transactions, its processes).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import sys
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pytest
from kit import DEADLINE_SECONDS, ManualClock, checkpoint, event, execution

from tradeflow.adapters.sqlite.database import DB_SCHEMA_VERSION, open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.errors import ConfigurationError, InvalidRequest, LeaseLost, OwnerAlive
from tradeflow.domain.ownership import Claim, Heartbeat, OwnerInfo
from tradeflow.domain.records import CheckpointState, ExecutionStatus, StateBatch

REPO: Final = Path(__file__).resolve().parents[2]

V3_SCHEMA: Final = """
CREATE TABLE definitions (
    digest     BLOB PRIMARY KEY,
    definition TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE executions (
    execution_id   TEXT NOT NULL UNIQUE,
    workflow_id    TEXT NOT NULL,
    bot_id         TEXT,
    strategy_id    TEXT,
    status         TEXT NOT NULL,
    started_at     REAL NOT NULL,
    finished_at    REAL,
    correlation_id TEXT NOT NULL,
    request_id     TEXT,
    error          TEXT,
    definition     BLOB NOT NULL REFERENCES definitions (digest),
    first_batch    INTEGER,
    last_batch     INTEGER,
    result         TEXT
);
CREATE INDEX executions_by_start
    ON executions (started_at, execution_id);
CREATE UNIQUE INDEX executions_by_request
    ON executions (request_id) WHERE request_id IS NOT NULL;

CREATE TABLE batches (
    batch_id     INTEGER PRIMARY KEY,
    execution_id TEXT,
    orphan       INTEGER,
    body         BLOB NOT NULL
);
CREATE INDEX batches_orphaned
    ON batches (execution_id) WHERE orphan IS NOT NULL;

CREATE TABLE halts (
    scope  TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor  TEXT NOT NULL,
    since  REAL NOT NULL,
    PRIMARY KEY (scope, target)
) WITHOUT ROWID;

CREATE TABLE risk_limits (
    limit_type TEXT PRIMARY KEY,
    threshold  REAL NOT NULL,
    direction  TEXT NOT NULL,
    auto_halt  INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit (
    entry_id INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    scope    TEXT,
    target   TEXT,
    reason   TEXT NOT NULL,
    details  TEXT
);

PRAGMA user_version = 3;
"""
"""The layout of a released version 3 file, as tradeflow 3 created it."""

TTL: Final = 3.0
ALICE: Final = OwnerInfo("cli-alice", "cli", "alice-host", 101)
BOB: Final = OwnerInfo("executor-bob", "executor", "bob-host", 202)

CLAIMER: Final = """
import asyncio, json, os, sys
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.errors import OwnerAlive
from tradeflow.domain.ownership import OwnerInfo

async def main(path, name):
    conn = open_database(path)
    store = SQLiteStateStore(conn)
    lease = await store.acquire_lease(OwnerInfo(name, "cli", "crowd", os.getpid()), 600.0)
    print(json.dumps({"owner": lease.info.describe()}), flush=True)
    for line in sys.stdin:
        try:
            claim = await store.claim(line.strip(), lease, takeover=True)
            answer = {"won": claim.takeovers}
        except OwnerAlive as exc:
            answer = {"refused": exc.owner}
        print(json.dumps(answer), flush=True)
    conn.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""
"""A process with a lease of its own that claims (takes over) each execution id read from
stdin and answers one JSON line per claim: the takeovers it counted, or who refused it."""

OPENER: Final = """
import sys
from tradeflow.adapters.sqlite import database

connected = database.Database.__init__

def traced(self, *args, **kwargs):
    connected(self, *args, **kwargs)
    self.set_trace_callback(lambda sql: sql.startswith("BEGIN") and print(sql, flush=True))

database.Database.__init__ = traced
database.open_database(sys.argv[1]).close()
"""
"""A process that opens the file, printing each BEGIN as it starts (before any wait for
the write lock)."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(conn: sqlite3.Connection, clock: ManualClock) -> SQLiteStateStore:
    return SQLiteStateStore(conn, clock=clock)


def v3_file(path: Path, *, also: str = "") -> None:
    """Create ``path`` as tradeflow 3 left it: one finished execution with a journal row of
    two events and a checkpoint; ``also``: more SQL run before it is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [
        ["corr-old", "wf", None, None],
        [
            ["node_completed", "old-1", 1, 2000.5, "quote", {"price": 101.5}],
            ["execution_completed", "old-2", 2, 2001.5, None, None],
        ],
        [["quote", "completed", 2000.5, {"price": 101.5}, None, 1]],
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V3_SCHEMA + also)
        conn.execute("INSERT INTO definitions VALUES (x'01', ?)", (json.dumps({"blocks": []}),))
        conn.execute("INSERT INTO batches VALUES (1, 'old', NULL, ?)", (json.dumps(body),))
        conn.execute(
            "INSERT INTO executions (execution_id, workflow_id, status, started_at,"
            " finished_at, correlation_id, request_id, definition, first_batch, last_batch,"
            " result) VALUES ('old', 'wf', 'completed', 1000.0, 1001.0, 'corr-old', 'req-old',"
            " x'01', 1, 1, ?)",
            (json.dumps({"status": "completed"}),),
        )
    finally:
        conn.close()


def layout(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every table's columns and every index, as SQLite reports them."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
    ]
    return {
        "columns": {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
        "indexes": sorted(
            conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' ORDER BY name"
            ).fetchall()
        ),
        "version": conn.execute("PRAGMA user_version").fetchone()[0],
    }


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows in each table a state write or a lease touches."""
    return {
        table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("executions", "batches", "definitions", "leases")
    }


async def spawn(stack: AsyncExitStack, script: str, *args: str) -> asyncio.subprocess.Process:
    """Start ``python -c script args`` (killed on exit if still running)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    stack.push_async_callback(stop, process)
    return process


async def stop(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` unless it ended, and reap it."""
    if process.returncode is None:
        process.kill()
    async with asyncio.timeout(DEADLINE_SECONDS):
        await process.wait()


async def answer(process: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON line ``process`` writes."""
    assert process.stdout is not None
    line = await process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"claimer exited: {(await process.stderr.read()).decode()}")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


# -- migration --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_version_3_file_is_migrated_in_place_keeping_its_history(db_path: Path) -> None:
    """Opening a version 3 file migrates it to 5: its executions, checkpoints and events read
    back as before, unowned, and a lease can take its interrupted work over."""
    v3_file(db_path)

    conn = open_database(db_path)
    try:
        store = SQLiteStateStore(conn)
        record = await store.get_execution("old")
        checkpoints = await store.get_checkpoints("old")
        events = await store.read_events(execution_id="old")
        lease = await store.acquire_lease(ALICE, TTL)
        await store.write(StateBatch(execution=execution("new"), fence=lease.fence))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()

    assert version == DB_SCHEMA_VERSION == 7
    assert (record.status, record.request_id, record.result) == (
        ExecutionStatus.COMPLETED,
        "req-old",
        {"status": "completed"},
    )
    assert (record.owner, record.epoch, record.takeovers, record.owner_live) == (
        None,
        0,
        0,
        False,
    )
    assert checkpoints["quote"].outputs == {"price": 101.5}
    assert [(e.event_id, e.sequence) for _, e in events] == [("old-1", 1), ("old-2", 2)]
    assert lease.epoch == 1


def test_failed_migration_leaves_the_version_3_file_as_it_was(db_path: Path) -> None:
    """A migration that fails part way is rolled back whole: the error names both versions,
    and the file is still a version 3 file without any of the new columns or tables."""
    v3_file(db_path, also="ALTER TABLE executions ADD COLUMN epoch INTEGER;")
    with sqlite3.connect(db_path) as before:
        expected = layout(before)

    with pytest.raises(
        ConfigurationError, match=f"expected schema version {DB_SCHEMA_VERSION}, found 3"
    ):
        open_database(db_path)

    after = sqlite3.connect(db_path)
    try:
        assert layout(after) == expected
        assert expected["version"] == 3
    finally:
        after.close()


@pytest.mark.asyncio
async def test_processes_opening_a_version_3_file_together_migrate_it_once(
    tmp_path: Path,
) -> None:
    """Two processes that both read version 3 before either could migrate (the test holds
    the write lock until both wait for it) both open the file: the second to get the lock
    finds it migrated already. The interleaving is forced, so one trial proves it."""
    path = tmp_path / "shared.db"
    v3_file(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        async with AsyncExitStack() as stack:
            openers = [await spawn(stack, OPENER, str(path)) for _ in range(2)]
            async with asyncio.timeout(DEADLINE_SECONDS):
                for opener in openers:
                    assert opener.stdout is not None
                    assert await opener.stdout.readline() == b"BEGIN IMMEDIATE\n"
                holder.execute("ROLLBACK")
                outcomes = [await opener.communicate() for opener in openers]
        assert [p.returncode for p in openers] == [0, 0], outcomes
        assert holder.execute("PRAGMA user_version").fetchone() == (DB_SCHEMA_VERSION,)
    finally:
        holder.close()


# -- leases on the store clock ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_lease_lives_for_its_ttl_from_each_renewal(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """A lease is live until ttl after its grant or last renewal, and not at that instant:
    then its execution is an orphan and renewing it is LeaseLost ('lapsed')."""
    lease = await store.acquire_lease(ALICE, TTL)
    await store.write(StateBatch(execution=execution("e"), fence=lease.fence))

    clock.advance(TTL - 0.01)
    assert await store.renew_lease(lease) == Heartbeat()
    clock.advance(TTL - 0.01)
    assert (await store.get_execution("e")).owner_live
    assert await store.orphans(10) == []

    clock.advance(0.01)
    assert not (await store.get_execution("e")).owner_live
    assert [r.execution_id for r in await store.orphans(10)] == ["e"]
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.renew_lease(lease)


@pytest.mark.asyncio
async def test_a_lapsed_lease_can_neither_write_nor_claim_and_its_work_is_taken_over(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """Once its lease lapsed an owner cannot write or claim; another owner takes its running
    execution over, and the lapsed owner's new lease cannot write it either."""
    alice = await store.acquire_lease(ALICE, TTL)
    await store.write(StateBatch(execution=execution("e"), fence=alice.fence))
    await store.write(StateBatch(execution=execution("other", status=ExecutionStatus.FAILED)))
    clock.advance(TTL)
    bob = await store.acquire_lease(BOB, TTL)

    with pytest.raises(LeaseLost, match="lapsed"):
        await store.write(StateBatch(checkpoints=(checkpoint("e", "quote"),), fence=alice.fence))
    with pytest.raises(LeaseLost):
        await store.claim("other", alice)
    assert await store.claim("e", bob) == Claim(ALICE.owner, takeover=True, takeovers=1)
    alice_again = await store.acquire_lease(ALICE, TTL)
    with pytest.raises(LeaseLost, match=f"owned by {BOB.owner}"):
        await store.write(StateBatch(execution=execution("e"), fence=alice_again.fence))
    with pytest.raises(OwnerAlive, match="executor-bob \\(executor, pid 202 on bob-host\\)"):
        await store.claim("e", alice_again)


@pytest.mark.asyncio
async def test_cancels_pending_when_a_lease_lapsed_reach_the_owners_next_lease(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """A cancel asked of a live owner whose lease then lapses (a stall) waits in its lease
    row: the same owner acquiring again gets it with the new lease's first renewal, and
    its reclaim says the cancel was requested."""
    stalled = await store.acquire_lease(ALICE, TTL)
    await store.write(StateBatch(execution=execution("e"), fence=stalled.fence))
    await store.request_cancel("e")
    clock.advance(TTL)

    again = await store.acquire_lease(ALICE, TTL)

    assert await store.renew_lease(again) == Heartbeat(cancel=("e",))
    assert await store.claim("e", again) == Claim(ALICE.owner, False, 0, cancel_requested=True)


@pytest.mark.asyncio
async def test_epochs_are_never_reused_after_leases_are_gone(db_path: Path) -> None:
    """The epoch counter lives in the file: released leases and a reopened file never give
    an epoch out twice."""
    epochs = []
    for _ in range(3):
        conn = open_database(db_path)
        try:
            store = SQLiteStateStore(conn)
            for info in (ALICE, BOB):
                lease = await store.acquire_lease(info, TTL)
                await store.release_lease(lease)
                epochs.append(lease.epoch)
            assert conn.execute("SELECT count(*) FROM leases").fetchone() == (0,)
        finally:
            conn.close()

    assert epochs == list(range(1, 7))


@pytest.mark.asyncio
@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan, math.inf])
async def test_a_lease_needs_a_positive_finite_ttl(store: SQLiteStateStore, ttl: float) -> None:
    """acquire_lease refuses a ttl that is not a positive finite number, naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        await store.acquire_lease(ALICE, ttl)
    assert caught.value.field == "ttl"


# -- refused writes ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_refused_fenced_writes_leave_no_row_behind(
    store: SQLiteStateStore, conn: sqlite3.Connection, clock: ManualClock
) -> None:
    """A fence refused before anything is written (lapsed lease), or only by the execution
    statement after the journal rows went in (another epoch owns it), or by a later row of
    a mixed batch: the transaction rolls back whole, and the new execution's part of the
    batch (its definition object included) is written in full once a valid fence carries it."""
    bob = await store.acquire_lease(BOB, 100 * TTL)
    await store.write(StateBatch(execution=execution("bobs"), fence=bob.fence))
    alice = await store.acquire_lease(ALICE, TTL)
    definition: dict[str, Any] = {"blocks": [{"id": "fresh", "type": "price"}]}
    new = execution("new", definition=definition)
    batch = StateBatch(
        execution=new,
        checkpoints=(checkpoint("new", "quote"), checkpoint("bobs", "quote")),
        events=(event("new", 1), event("bobs", 1)),
    )
    before = row_counts(conn)

    with pytest.raises(LeaseLost) as mixed:
        await store.write(replace(batch, fence=alice.fence))
    assert mixed.value.execution_id == "bobs"
    with pytest.raises(LeaseLost) as owned:
        await store.write(
            StateBatch(
                execution=execution("bobs"),
                checkpoints=(checkpoint("bobs", "quote"),),
                events=(event("bobs", 2),),
                fence=alice.fence,
            )
        )
    assert owned.value.execution_id == "bobs"
    clock.advance(TTL)
    with pytest.raises(LeaseLost) as lapsed:
        await store.write(replace(batch, fence=alice.fence))
    assert lapsed.value.execution_id == "new"
    assert row_counts(conn) == before

    alice = await store.acquire_lease(ALICE, TTL)
    await store.write(
        replace(
            batch,
            checkpoints=batch.checkpoints[:1],
            events=batch.events[:1],
            fence=alice.fence,
        )
    )
    assert (await store.get_execution("new")).definition == definition
    assert (await store.get_checkpoints("new"))["quote"].state is CheckpointState.COMPLETED
    grown = {"executions": 1, "batches": 1, "definitions": 1, "leases": 0}
    assert row_counts(conn) == {table: count + grown[table] for table, count in before.items()}


@pytest.mark.asyncio
async def test_a_store_that_did_not_start_the_run_is_fenced_too(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """A store that never wrote the execution (another process's) writes its record with
    the insert-or-update statement: that one refuses another epoch's execution as well."""
    bob = await store.acquire_lease(BOB, TTL)
    await store.write(StateBatch(execution=execution("e"), fence=bob.fence))
    other = SQLiteStateStore(conn, clock=ManualClock())
    alice = await other.acquire_lease(ALICE, TTL)
    before = row_counts(conn)

    with pytest.raises(LeaseLost, match=f"owned by {BOB.owner}"):
        await other.write(StateBatch(execution=execution("e"), fence=alice.fence))
    with pytest.raises(LeaseLost, match="carries no fence"):
        await other.write(StateBatch(execution=execution("e")))

    assert row_counts(conn) == before
    assert (await other.get_execution("e")).owner == BOB.owner


# -- claims across processes ------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_processes_claiming_the_same_orphan_at_once_one_wins(
    db_path: Path, conn: sqlite3.Connection
) -> None:
    """Two processes, each with its own lease, are told to claim the same orphan at the
    same moment, 300 times (a running execution whose owner died, or an interrupted one of
    an owner still alive): every time exactly one takes it over and the other is refused
    with OwnerAlive naming the winner, which the record names too, running."""
    trials = 300
    store = SQLiteStateStore(conn)
    dead = await store.acquire_lease(ALICE, 600.0)
    alive = await store.acquire_lease(BOB, 600.0)
    for n in range(trials):
        status = ExecutionStatus.INTERRUPTED if n % 4 >= 2 else ExecutionStatus.RUNNING
        fence = (alive if status is ExecutionStatus.INTERRUPTED else dead).fence
        await store.write(StateBatch(execution=execution(f"e{n}", status=status), fence=fence))
    await store.release_lease(dead)

    async with AsyncExitStack() as stack:
        claimers = [await spawn(stack, CLAIMER, str(db_path), f"crowd-{i}") for i in range(2)]
        async with asyncio.timeout(DEADLINE_SECONDS):
            owners = [(await answer(c))["owner"] for c in claimers]
            for n in range(trials):
                # Alternate who is told first, so neither always starts ahead.
                order = claimers if n % 2 else claimers[::-1]
                for claimer in order:
                    assert claimer.stdin is not None
                    claimer.stdin.write(f"e{n}\n".encode())
                for claimer in order:
                    assert claimer.stdin is not None
                    await claimer.stdin.drain()
                answers = [await answer(c) for c in claimers]

                # A running one's owner died (a takeover); an interrupted one's did not.
                takeovers = 0 if n % 4 >= 2 else 1
                winners = [i for i, a in enumerate(answers) if a == {"won": takeovers}]
                assert len(winners) == 1, answers
                (winner,) = winners
                assert answers[1 - winner] == {"refused": owners[winner]}
                record = await store.get_execution(f"e{n}")
                assert (record.owner, record.takeovers, record.status) == (
                    f"crowd-{winner}",
                    takeovers,
                    ExecutionStatus.RUNNING,
                )
            for claimer in claimers:
                assert claimer.stdin is not None
                claimer.stdin.close()
                assert await claimer.wait() == 0
