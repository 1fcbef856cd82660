"""The SQLite database setup and the embedded state store, on real files."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from kit import DEFINITION, checkpoint, event, eventually, execution

from tradeflow.adapters.sqlite import database as sqlite_module
from tradeflow.adapters.sqlite import state
from tradeflow.adapters.sqlite.database import DB_SCHEMA_VERSION, WriteTransaction, open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.codec import to_json_bytes
from tradeflow.domain.errors import ConfigurationError, ExecutionNotFound, InvalidRequest
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionQuery,
    ExecutionStatus,
    StateBatch,
)


@pytest.fixture
def store(conn: sqlite3.Connection) -> SQLiteStateStore:
    return SQLiteStateStore(conn)


def checkpointer_threads(location: str | Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint {location}"]


def wal_frames(db_path: Path, page_size: int) -> int:
    """Frames the WAL file of ``db_path`` has room for (its header is 32 bytes)."""
    return (Path(f"{db_path}-wal").stat().st_size - 32) // (page_size + 24)


def test_open_database_creates_directory_wal_and_schema(db_path: Path) -> None:
    """open_database creates the parent directory, WAL journaling, the tables and the version."""
    conn = open_database(db_path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (DB_SCHEMA_VERSION,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert conn.isolation_level is None
    finally:
        conn.close()
    assert {"executions", "definitions", "batches", "halts", "risk_limits", "audit"} <= tables
    reopened = open_database(db_path, synchronous="FULL")
    try:
        assert reopened.execute("PRAGMA synchronous").fetchone() == (2,)
    finally:
        reopened.close()


def test_open_database_in_memory() -> None:
    """':memory:' gets a private database with the schema and no WAL file."""
    conn = open_database(":memory:")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("memory",)
        assert conn.execute("SELECT count(*) FROM executions").fetchone() == (0,)
        assert checkpointer_threads(":memory:") == []
    finally:
        conn.close()


def test_open_database_refuses_newer_schema(db_path: Path) -> None:
    """A file written by a newer tradeflow is refused with the versions named."""
    conn = open_database(db_path)
    conn.execute(f"PRAGMA user_version = {DB_SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigurationError, match="schema version"):
        open_database(db_path)


@pytest.mark.parametrize("version", range(1, DB_SCHEMA_VERSION))
def test_open_database_refuses_development_layout(db_path: Path, version: int) -> None:
    """A file of an unmigrated development layout is refused, naming both versions."""
    conn = open_database(db_path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    with pytest.raises(
        ConfigurationError, match=f"expected schema version {DB_SCHEMA_VERSION}, found {version}"
    ):
        open_database(db_path)


def test_wal_is_checkpointed_off_the_writer(db_path: Path) -> None:
    """The writer's connection never checkpoints on commit; its background thread copies
    the WAL into the database file, and closing the connection stops that thread."""
    conn = open_database(db_path)
    try:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        assert len(checkpointer_threads(db_path)) == 1
        with WriteTransaction(conn):
            conn.execute(
                "INSERT INTO audit (at, actor, action, reason, details) VALUES (0, 'a', 'b', 'c', ?)",
                ("x" * 200_000,),
            )
        asyncio.run(
            eventually(lambda: db_path.stat().st_size > 200_000, "the WAL reached the database")
        )
    finally:
        conn.close()
    assert checkpointer_threads(db_path) == []


@pytest.mark.asyncio
async def test_writer_restarts_an_overgrown_wal(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the hard bound the writer restarts the WAL itself, so the file stays bounded
    even while the background thread does nothing."""
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_INTERVAL_S", 3600.0)
    monkeypatch.setattr(sqlite_module, "_WAL_WAKE_FRAMES", 1 << 30)
    monkeypatch.setattr(sqlite_module, "_WAL_CHECK_COMMITS", 1)
    monkeypatch.setattr(sqlite_module, "_WAL_HARD_LIMIT", 32 * 4096)
    conn = open_database(db_path)
    store = SQLiteStateStore(conn)
    try:
        ((page_size,),) = conn.execute("PRAGMA page_size").fetchall()
        for sequence in range(1, 201):
            await store.write(StateBatch(events=(event("e1", sequence),)))
        frames = wal_frames(db_path, page_size)
        assert len(await store.read_events()) == 200
    finally:
        conn.close()
    assert frames < 32 * 4096 // page_size + 8


@pytest.mark.asyncio
async def test_writer_backs_off_while_a_reader_pins_the_wal(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holding the log makes the writer's restart give up without failing any
    write; once the reader has gone, the next restart bounds the WAL again."""
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_INTERVAL_S", 3600.0)
    monkeypatch.setattr(sqlite_module, "_WAL_WAKE_FRAMES", 1 << 30)
    monkeypatch.setattr(sqlite_module, "_WAL_CHECK_COMMITS", 1)
    monkeypatch.setattr(sqlite_module, "_WAL_HARD_LIMIT", 32 * 4096)
    conn = open_database(db_path)
    store = SQLiteStateStore(conn)
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        ((page_size,),) = conn.execute("PRAGMA page_size").fetchall()
        bound = 32 * 4096 // page_size + 8
        await store.write(StateBatch(events=(event("e1", 1),)))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM batches").fetchall()
        for sequence in range(2, 101):
            await store.write(StateBatch(events=(event("e1", sequence),)))
        pinned = wal_frames(db_path, page_size)
        reader.execute("COMMIT")
        for sequence in range(101, 301):
            await store.write(StateBatch(events=(event("e1", sequence),)))
        released = wal_frames(db_path, page_size)
        assert len(await store.read_events()) == 300
    finally:
        reader.close()
        conn.close()
    assert pinned >= bound
    assert released < bound


def test_open_database_rejects_unknown_synchronous_mode(db_path: Path) -> None:
    """Only NORMAL and FULL reach the PRAGMA."""
    with pytest.raises(ConfigurationError, match="synchronous"):
        open_database(db_path, synchronous="OFF")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_write_then_read_round_trips(store: SQLiteStateStore) -> None:
    """An execution, its checkpoints and its events read back exactly as written."""
    record = execution("e1", bot_id="bot", strategy_id="strat", request_id="req-1")
    batch = StateBatch(
        execution=record,
        checkpoints=(checkpoint("e1", "quote"), checkpoint("e1", "buy", CheckpointState.INTENT)),
        events=(event("e1", 1), event("e1", 2)),
    )

    await store.write(batch)

    assert await store.get_execution("e1") == record
    assert await store.find_by_request_id("req-1") == record
    assert await store.find_by_request_id("req-2") is None
    assert await store.get_checkpoints("e1") == {
        "quote": checkpoint("e1", "quote"),
        "buy": checkpoint("e1", "buy", CheckpointState.INTENT),
    }
    assert [e for _, e in await store.read_events()] == [event("e1", 1), event("e1", 2)]


@pytest.mark.asyncio
async def test_later_writes_update_status_and_keep_definition(store: SQLiteStateStore) -> None:
    """Finishing an execution updates status, result and finish time; the rest stays."""
    await store.write(StateBatch(execution=execution("e1")))
    finished = execution("e1", status=ExecutionStatus.COMPLETED, result={"status": "completed"})

    await store.write(StateBatch(execution=finished))

    assert await store.get_execution("e1") == finished


@pytest.mark.asyncio
async def test_latest_checkpoint_per_node_wins(store: SQLiteStateStore) -> None:
    """A node's later checkpoint replaces its write-ahead intent."""
    await store.write(StateBatch(checkpoints=(checkpoint("e1", "buy", CheckpointState.INTENT),)))
    done = Checkpoint("e1", "buy", CheckpointState.COMPLETED, 3_001.0, {"order": "o-1"}, None, 2)

    await store.write(StateBatch(checkpoints=(done,)))

    assert await store.get_checkpoints("e1") == {"buy": done}


@pytest.mark.asyncio
async def test_empty_dicts_read_back_as_before(store: SQLiteStateStore) -> None:
    """Empty checkpoint outputs read back as None and empty event data as {}."""
    await store.write(
        StateBatch(checkpoints=(checkpoint("e1", "n", outputs={}),), events=(event("e1", 1, {}),))
    )

    assert (await store.get_checkpoints("e1"))["n"].outputs is None
    assert (await store.read_events())[0][1].data == {}


@pytest.mark.asyncio
async def test_checkpoints_fold_across_batches(store: SQLiteStateStore) -> None:
    """Each node keeps its latest checkpoint over many batches; other executions do not leak in."""
    intent = checkpoint("e1", "buy", CheckpointState.INTENT, {"client_order_id": "e1:buy"})
    filled = Checkpoint("e1", "buy", CheckpointState.COMPLETED, 3_002.0, {"order": "o-1"}, None, 2)
    await store.write(
        StateBatch(
            execution=execution("e1"),
            checkpoints=(checkpoint("e1", "quote"), intent),
            events=(event("e1", 1),),
        )
    )
    await store.write(StateBatch(checkpoints=(checkpoint("e2", "buy"),), events=(event("e2", 1),)))
    await store.write(StateBatch(events=(event("e1", 2),)))
    await store.write(StateBatch(checkpoints=(checkpoint("e1", "size"), filled)))

    folded = await store.get_checkpoints("e1")

    assert folded == {
        "buy": filled,
        "quote": checkpoint("e1", "quote"),
        "size": checkpoint("e1", "size"),
    }
    assert list(folded) == ["buy", "quote", "size"]
    assert await store.get_checkpoints("e2") == {"buy": checkpoint("e2", "buy")}


@pytest.mark.asyncio
async def test_later_checkpoint_in_one_batch_wins(store: SQLiteStateStore) -> None:
    """Within one batch too, the last checkpoint written for a node is the one kept."""
    first = checkpoint("e1", "buy", CheckpointState.INTENT)
    second = checkpoint("e1", "buy", CheckpointState.FAILED, outputs={})._replace(error="rejected")

    await store.write(StateBatch(checkpoints=(first, second)))

    assert await store.get_checkpoints("e1") == {"buy": second._replace(outputs=None)}


@pytest.mark.asyncio
async def test_rows_before_with_and_after_the_record_are_found(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """An execution's rows written before its record existed, with it, and after it
    (also by a fresh store, as after a restart) are read in order; the rows of another
    execution written in between are not."""
    await store.write(
        StateBatch(checkpoints=(checkpoint("e1", "quote"),), events=(event("e1", 1),))
    )
    await store.write(StateBatch(execution=execution("e1"), events=(event("e1", 2),)))
    await store.write(
        StateBatch(
            execution=execution("e2"),
            checkpoints=(checkpoint("e2", "quote"),),
            events=(event("e2", 1),),
        )
    )
    intent = checkpoint("e1", "buy", CheckpointState.INTENT)
    await store.write(StateBatch(checkpoints=(intent,), events=(event("e1", 3),)))
    await store.write(StateBatch(events=(event("e2", 2),)))
    finished = execution("e1", status=ExecutionStatus.COMPLETED, result={"status": "completed"})
    fresh = SQLiteStateStore(conn)
    await fresh.write(StateBatch(execution=finished, events=(event("e1", 4),)))

    e1 = await store.read_events(execution_id="e1")

    assert [e.event_id for _, e in e1] == ["e1-1", "e1-2", "e1-3", "e1-4"]
    assert await store.read_events(execution_id="e1", after=e1[1][0]) == e1[2:]
    assert [e.event_id for _, e in await store.read_events(execution_id="e2")] == ["e2-1", "e2-2"]
    assert await store.get_checkpoints("e1") == {"buy": intent, "quote": checkpoint("e1", "quote")}
    assert await store.get_checkpoints("e2") == {"quote": checkpoint("e2", "quote")}
    assert await store.get_execution("e1") == finished


@pytest.mark.asyncio
async def test_json_policy_of_stored_values(store: SQLiteStateStore) -> None:
    """Non-string keys read back as strings and NaN or infinity as None; an int beyond
    64 bits fails the write, which then keeps nothing."""
    outputs: dict[Any, Any] = {1: "one", "nan": float("nan"), "inf": float("-inf")}
    await store.write(StateBatch(checkpoints=(checkpoint("e1", "n", outputs=outputs),)))
    too_big = StateBatch(
        execution=execution("e2"), checkpoints=(checkpoint("e2", "n", outputs={"wei": 2**70}),)
    )

    with pytest.raises(TypeError):
        await store.write(too_big)

    read = (await store.get_checkpoints("e1"))["n"].outputs
    assert read == {"1": "one", "nan": None, "inf": None}
    with pytest.raises(ExecutionNotFound):
        await store.get_execution("e2")
    assert await store.get_checkpoints("e2") == {}


@pytest.mark.asyncio
async def test_event_cursors_grow_across_batches_and_executions(store: SQLiteStateStore) -> None:
    """Cursors are ints growing in write order over every batch and execution, so paging
    with any page size, from any cursor, yields exactly the events after it."""
    written = [
        (event("e1", 1), event("e1", 2)),
        (event("e2", 1),),
        (event("e1", 3), event("e2", 2), event("e2", 3), event("e1", 4)),
        (Event("emergency_halted", "h-1", 1, 2_100.0, data={"reason": "test"}),),
        (event("e2", 4),),
    ]
    for events in written:
        await store.write(StateBatch(events=events))
    expected = [e for events in written for e in events]

    everything = await store.read_events()
    pages: list[tuple[int, Event]] = []
    cursor = 0
    while page := await store.read_events(after=cursor, limit=2):
        pages.extend(page)
        cursor = page[-1][0]

    cursors = [c for c, _ in everything]
    assert all(isinstance(c, int) for c in cursors)
    assert cursors == sorted(set(cursors))
    assert [e for _, e in everything] == expected
    assert pages == everything
    for i, (after, _) in enumerate(everything):
        assert await store.read_events(after=after) == everything[i + 1 :]
    e2 = await store.read_events(execution_id="e2")
    assert [e for _, e in e2] == [e for e in expected if e.execution_id == "e2"]
    assert await store.read_events(execution_id="e2", after=e2[1][0], limit=1) == e2[2:3]


@pytest.mark.asyncio
async def test_batch_larger_than_a_journal_row_is_split_in_order(
    store: SQLiteStateStore, conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events beyond one journal row's capacity (65536, here 3) spill into further rows:
    one transaction, order kept, cursors still distinct and growing."""
    monkeypatch.setattr(state, "_ROW_EVENTS", 3)
    events = tuple(event("e1", i) for i in range(1, 9))

    await store.write(StateBatch(events=events, checkpoints=(checkpoint("e1", "quote"),)))
    read = await store.read_events()

    assert conn.execute("SELECT count(*) FROM batches").fetchone() == (3,)
    assert [e for _, e in read] == list(events)
    cursors = [c for c, _ in read]
    assert cursors == sorted(set(cursors))
    assert await store.read_events(after=cursors[2], limit=2) == read[3:5]
    assert await store.get_checkpoints("e1") == {"quote": checkpoint("e1", "quote")}


@pytest.mark.asyncio
async def test_definition_is_stored_once_per_content(
    store: SQLiteStateStore, conn: sqlite3.Connection, db_path: Path
) -> None:
    """Executions sharing a definition, as object or as equal content, store it once."""
    await store.write(StateBatch(execution=execution("e1")))
    await store.write(StateBatch(execution=execution("e2")))
    equal = dataclasses.replace(execution("e3"), definition=copy.deepcopy(DEFINITION))
    other = open_database(db_path)
    try:
        await SQLiteStateStore(other).write(StateBatch(execution=equal))
    finally:
        other.close()

    assert conn.execute("SELECT count(*) FROM definitions").fetchone() == (1,)
    assert (await store.get_execution("e3")).definition == DEFINITION


@pytest.mark.asyncio
async def test_unknown_execution_raises_not_found(store: SQLiteStateStore) -> None:
    """get_execution names the missing id."""
    with pytest.raises(ExecutionNotFound, match="'nope'"):
        await store.get_execution("nope")


@pytest.mark.asyncio
async def test_batch_failing_midway_leaves_nothing(store: SQLiteStateStore) -> None:
    """A batch whose second checkpoint cannot be stored keeps none of its rows."""
    bad = checkpoint("e1", "broken", outputs={"not json": object()})
    batch = StateBatch(
        execution=execution("e1"),
        checkpoints=(checkpoint("e1", "quote"), bad),
        events=(event("e1", 1),),
    )

    with pytest.raises(TypeError):
        await store.write(batch)

    with pytest.raises(ExecutionNotFound):
        await store.get_execution("e1")
    assert await store.get_checkpoints("e1") == {}
    assert await store.read_events() == []
    await store.write(StateBatch(execution=execution("e1")))
    assert await store.get_execution("e1") == execution("e1")


@pytest.mark.asyncio
async def test_constraint_failure_rolls_back_whole_batch(store: SQLiteStateStore) -> None:
    """Reusing an idempotency key fails the batch and keeps none of its checkpoints or events."""
    await store.write(StateBatch(execution=execution("e1", request_id="req")))
    batch = StateBatch(
        execution=execution("e2", request_id="req"),
        checkpoints=(checkpoint("e2", "quote"),),
        events=(event("e2", 1),),
    )

    with pytest.raises(sqlite3.IntegrityError):
        await store.write(batch)

    assert await store.get_checkpoints("e2") == {}
    assert await store.read_events(execution_id="e2") == []
    assert (await store.find_by_request_id("req")) == execution("e1", request_id="req")


@pytest.mark.asyncio
async def test_failure_in_a_later_row_rolls_back_the_whole_batch(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """A batch failing on its second journal row keeps no definition, execution or row,
    and the store does not take the unwritten definition or execution as stored."""
    conn.execute(
        "CREATE TEMP TRIGGER refuse_e2 BEFORE INSERT ON batches WHEN NEW.execution_id = 'e2'"
        " BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
    )
    batch = StateBatch(
        execution=execution("e1"),
        checkpoints=(checkpoint("e1", "quote"), checkpoint("e2", "quote")),
        events=(event("e1", 1), event("e2", 1)),
    )

    with pytest.raises(sqlite3.IntegrityError, match="refused for the test"):
        await store.write(batch)

    counts = [
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("definitions", "executions", "batches")
    ]
    assert counts == [0, 0, 0]
    conn.execute("DROP TRIGGER refuse_e2")
    await store.write(batch)
    assert await store.get_execution("e1") == execution("e1")
    assert await store.get_checkpoints("e2") == {"quote": checkpoint("e2", "quote")}
    assert [e for _, e in await store.read_events()] == [event("e1", 1), event("e2", 1)]


@pytest.mark.asyncio
async def test_list_executions_pages_newest_first(store: SQLiteStateStore) -> None:
    """Keyset pages walk every execution once, newest first, ties broken by id."""
    started = {"a": 1.0, "b": 2.0, "c": 2.0, "d": 3.0, "e": 4.0, "f": 4.0, "g": 5.0}
    for execution_id, at in started.items():
        await store.write(StateBatch(execution=execution(execution_id, started_at=at)))

    seen: list[list[str]] = []
    token: str | None = None
    while True:
        page = await store.list_executions(ExecutionQuery(limit=3, page_token=token))
        seen.append([r.execution_id for r in page.executions])
        token = page.next_page_token
        if token is None:
            break

    assert seen == [["g", "f", "e"], ["d", "c", "b"], ["a"]]


@pytest.mark.asyncio
async def test_list_executions_filters(store: SQLiteStateStore) -> None:
    """Workflow, bot, strategy, status and the [after, before) time range each filter."""
    await store.write(StateBatch(execution=execution("e1", started_at=10, bot_id="b1")))
    await store.write(StateBatch(execution=execution("e2", started_at=20, strategy_id="s1")))
    failed = execution("e3", started_at=30, workflow_id="other", status=ExecutionStatus.FAILED)
    await store.write(StateBatch(execution=failed))

    async def ids(**filters: Any) -> list[str]:
        page = await store.list_executions(ExecutionQuery(**filters))
        return [r.execution_id for r in page.executions]

    assert await ids() == ["e3", "e2", "e1"]
    assert await ids(workflow_id="wf") == ["e2", "e1"]
    assert await ids(bot_id="b1") == ["e1"]
    assert await ids(strategy_id="s1") == ["e2"]
    assert await ids(status=ExecutionStatus.FAILED) == ["e3"]
    assert await ids(started_after=20, started_before=30) == ["e2"]


@pytest.mark.asyncio
async def test_list_executions_clamps_limit(store: SQLiteStateStore) -> None:
    """A limit below 1 still returns one execution; a huge one returns all without a token."""
    for i in range(3):
        await store.write(StateBatch(execution=execution(f"e{i}", started_at=i)))

    smallest = await store.list_executions(ExecutionQuery(limit=0))
    largest = await store.list_executions(ExecutionQuery(limit=1_000_000))

    assert [r.execution_id for r in smallest.executions] == ["e2"]
    assert smallest.next_page_token is not None
    assert len(largest.executions) == 3
    assert largest.next_page_token is None


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"t": 1}').decode(),
        base64.urlsafe_b64encode(b'["x", "e1"]').decode(),
        "\u00e9t\u00e9",
    ],
)
@pytest.mark.asyncio
async def test_bad_page_token_is_invalid_request(store: SQLiteStateStore, token: str) -> None:
    """A token the store did not issue is rejected naming the page_token field."""
    with pytest.raises(InvalidRequest) as caught:
        await store.list_executions(ExecutionQuery(page_token=token))

    assert caught.value.field == "page_token"


@pytest.mark.asyncio
async def test_read_events_follows_a_cursor(store: SQLiteStateStore, db_path: Path) -> None:
    """Polling with the last cursor yields only newer events, also on another connection."""
    await store.write(StateBatch(events=(event("e1", 1), event("e2", 1), event("e1", 2))))
    other = open_database(db_path)
    tail = SQLiteStateStore(other)
    try:
        first = await tail.read_events(limit=2)
        await store.write(StateBatch(events=(event("e2", 2),)))
        rest = await tail.read_events(after=first[-1][0])
        only_e1 = await tail.read_events(execution_id="e1")
    finally:
        other.close()

    assert [e.event_id for _, e in first] == ["e1-1", "e2-1"]
    assert [e.event_id for _, e in rest] == ["e1-2", "e2-2"]
    assert [e.event_id for _, e in only_e1] == ["e1-1", "e1-2"]
    cursors = [c for c, _ in [*first, *rest]]
    assert cursors == sorted(cursors)


# -- group commit, retention, indexes (issue 12) ----------------------------------------


def statements(conn: sqlite3.Connection) -> list[str]:
    """The SQL ``conn`` runs from now on (appended as it runs)."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def ended(execution_id: str, finished_at: float, **fields: Any) -> Any:
    """A kit execution that completed at ``finished_at``."""
    return dataclasses.replace(
        execution(execution_id, status=ExecutionStatus.COMPLETED, **fields),
        finished_at=finished_at,
    )


@pytest.mark.asyncio
async def test_write_many_is_one_commit_and_refuses_batches_on_their_own(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """write_many commits once; a batch reusing an idempotency key or holding a value JSON
    cannot encode gets InvalidRequest and leaves nothing, the others are written."""
    await store.write(StateBatch(execution=execution("e1", request_id="req")))
    seen = statements(conn)
    outcomes = await store.write_many(
        [
            StateBatch(execution=execution("e2"), events=(event("e2", 1),)),
            StateBatch(
                execution=execution("e3", request_id="req"), checkpoints=(checkpoint("e3", "q"),)
            ),
            StateBatch(execution=execution("e4"), events=(event("e4", 1, {"x": object()}),)),
            StateBatch(execution=execution("e5"), checkpoints=(checkpoint("e5", "q"),)),
        ]
    )
    conn.set_trace_callback(None)

    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "InvalidRequest",
        "InvalidRequest",
        "NoneType",
    ]
    assert [s for s in seen if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert [e.sequence for _, e in await store.read_events(execution_id="e2")] == [1]
    assert set(await store.get_checkpoints("e5")) == {"q"}
    assert await store.get_checkpoints("e3") == {}
    for missing in ("e3", "e4"):
        with pytest.raises(ExecutionNotFound):
            await store.get_execution(missing)


@pytest.mark.asyncio
async def test_prune_never_reuses_an_event_cursor(store: SQLiteStateStore) -> None:
    """Pruning the execution that wrote the journal's newest row leaves that row empty: the
    next event's cursor is still larger than every cursor handed out before."""
    await store.write(StateBatch(execution=ended("old", 5.0), events=(event("old", 1),)))
    ((last_cursor, _),) = await store.read_events()

    report = await store.prune(100.0)
    await store.write(StateBatch(execution=execution("new"), events=(event("new", 1),)))

    assert (report.removed, report.kept, report.more) == (1, 0, False)
    ((cursor, latest),) = await store.read_events()
    assert latest.execution_id == "new" and cursor > last_cursor


@pytest.mark.asyncio
async def test_prune_walks_equal_end_times_by_limit(store: SQLiteStateStore) -> None:
    """Executions ending at the same time are pruned one call of ``limit`` after another,
    each once, and an execution with orphan rows (written before its record) loses them."""
    await store.write(StateBatch(events=(event("e0", 1),)))
    for n in range(3):
        await store.write(StateBatch(execution=ended(f"e{n}", 5.0, started_at=1.0 + n)))

    reports = [await store.prune(10.0, limit=2) for _ in range(3)]

    assert [(r.removed, r.more) for r in reports] == [(2, True), (1, False), (0, False)]
    assert await store.read_events() == []


@pytest.mark.parametrize(
    "filters",
    [
        {"status": ExecutionStatus.HALTED},
        {"workflow_id": "wf"},
        {"bot_id": "b"},
        {"strategy_id": "s"},
        {"workflow_id": "wf", "status": ExecutionStatus.FAILED},
        {"bot_id": "b", "strategy_id": "s", "status": ExecutionStatus.RUNNING},
        {},
    ],
    ids=["status", "workflow", "bot", "strategy", "workflow+status", "bot+strategy+status", "none"],
)
@pytest.mark.asyncio
async def test_list_executions_searches_an_index_for_each_filter(
    store: SQLiteStateStore, conn: sqlite3.Connection, filters: dict[str, Any]
) -> None:
    """The query listing executions reads the executions table through an index whatever
    the filters (a status nobody has included), never by a scan of the table."""
    await store.write(StateBatch(execution=execution("e1", bot_id="b", strategy_id="s")))
    seen = statements(conn)
    await store.list_executions(ExecutionQuery(**filters))
    conn.set_trace_callback(None)
    (sql,) = [s for s in seen if s.lstrip().startswith("SELECT")]

    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]

    (executions,) = [step for step in plan if step.split()[1] == "e"]
    assert " USING INDEX executions_by_" in executions, plan


@pytest.mark.asyncio
async def test_retention_prunes_at_start_and_on_each_round(db_path: Path) -> None:
    """The embedded infrastructure prunes executions that ended more than retention_days
    ago at start, and ``retention.prune()`` runs one more round; 0 days starts none."""
    from tradeflow.app.infrastructure import Infrastructure, Settings

    conn = open_database(db_path)
    await SQLiteStateStore(conn).write(StateBatch(execution=ended("ancient", 5.0)))
    conn.close()
    settings = Settings(sqlite_path=str(db_path), log_level="warning", retention_days=1.0)
    async with await Infrastructure.create("development", settings=settings) as infra:

        async def pruned() -> bool:
            page = await infra.state.list_executions(ExecutionQuery())
            return not page.executions

        await eventually(pruned, "the execution that ended in 1970 was pruned at start")
        await infra.state.write(StateBatch(execution=ended("old", 6.0)))
        assert infra.retention is not None
        assert await infra.retention.prune() == (1, 0)

    off = dataclasses.replace(settings, retention_days=0.0)
    async with await Infrastructure.create("development", settings=off) as infra:
        assert infra.retention is None


@pytest.mark.asyncio
async def test_a_retention_round_that_fails_is_logged_and_the_next_one_runs() -> None:
    """Any error of a round (a store refusing the command, not only an unreachable one) is
    logged as retention.failed and the loop goes on: the next round prunes, and is not a
    failure (the state service runs this same loop)."""
    from tradeflow.app.infrastructure import Retention
    from tradeflow.domain.clock import SystemClock
    from tradeflow.domain.records import PruneReport

    calls: list[float] = []

    class Store:
        async def prune(self, ended_before: float, *, limit: int = 0) -> PruneReport:
            calls.append(ended_before)
            if len(calls) == 1:
                raise RuntimeError("NOPERM this user has no permissions to run 'xdel'")
            return PruneReport(3, 0, False)

    retention = Retention(cast(Any, Store()), days=1.0, interval=0.001, clock=SystemClock())
    with structlog.testing.capture_logs() as logs:
        retention.start()
        try:
            await eventually(lambda: len(calls) >= 2, "a round after the failed one")
        finally:
            await retention.close()
    assert [entry["event"] for entry in logs] == ["retention.failed"]
    assert "NOPERM" in logs[0]["error"]


def _run_batches(execution_id: str) -> tuple[StateBatch, StateBatch, dict[str, Any]]:
    """A run's first and final batch as the journal writes them: each node's outputs one
    object shared by its completion event, its checkpoint and the final result."""
    quote, order = {"price": 101.5}, {"order_id": "o-1", "status": "filled"}
    at = 1_795_689_105.123456
    corr = f"corr-{execution_id}"
    events = (
        Event("execution_started", f"{execution_id}-1", 1, at, corr, execution_id, "wf"),
        Event(
            "node_started",
            f"{execution_id}-2",
            2,
            at + 1e-5,
            corr,
            execution_id,
            "wf",
            node_id="quote",
        ),
        Event(
            "node_completed",
            f"{execution_id}-3",
            3,
            at + 2e-5,
            corr,
            execution_id,
            "wf",
            node_id="quote",
            data={"outputs": quote, "duration_ms": 0.0123456789},
        ),
    )
    intent = Checkpoint(
        execution_id,
        "buy",
        CheckpointState.INTENT,
        at + 3e-5,
        {"client_order_id": f"{execution_id}:buy"},
    )
    first = StateBatch(
        execution(execution_id),
        (Checkpoint(execution_id, "quote", CheckpointState.COMPLETED, at + 2e-5, quote), intent),
        events,
    )
    result: dict[str, Any] = {
        "status": "completed",
        "execution_id": execution_id,
        "workflow_id": "wf",
        "correlation_id": corr,
        "results": {"quote": quote, "buy": order},
        "errors": {},
        "skipped": [],
        "error": None,
        "started_at": "2026-11-26T10:31:45.246338Z",
        "finished_at": "2026-11-26T10:31:45.247652Z",
        "duration_ms": 1.31,
    }
    done = Event(
        "node_completed",
        f"{execution_id}-4",
        4,
        at + 1e-3,
        corr,
        execution_id,
        "wf",
        node_id="buy",
        data={"outputs": order, "duration_ms": 0.9},
    )
    final = StateBatch(
        execution(
            execution_id,
            status=ExecutionStatus.COMPLETED,
            result=result,
        ),
        (Checkpoint(execution_id, "buy", CheckpointState.COMPLETED, at + 1e-3, order),),
        (done,),
    )
    return first, final, result


async def _stored_result(conn: sqlite3.Connection, execution_id: str) -> bytes:
    (stored,) = conn.execute(
        "SELECT result FROM executions WHERE execution_id = ?", (execution_id,)
    ).fetchone()
    return bytes(stored)


@pytest.mark.asyncio
async def test_final_result_refers_to_the_journal_outputs(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """A result whose outputs are the checkpoints' own objects is stored by reference and
    reads back equal, keys in order, by every read; events and checkpoints read back exactly."""
    first, final, result = _run_batches("e1")
    await store.write(first)
    await store.write(final)

    assert (await _stored_result(conn, "e1"))[:1] == state._REFERENCED
    record = await store.get_execution("e1")
    assert record.result == result
    assert list(record.result or {}) == list(result)
    assert list((record.result or {})["results"]) == ["quote", "buy"]
    listed = (await store.list_executions(ExecutionQuery())).executions
    assert listed == (record,)
    events = [e for _, e in await store.read_events(execution_id="e1")]
    assert events == [*first.events, *final.events]
    assert [e.to_dict() for e in events] == [e.to_dict() for e in (*first.events, *final.events)]
    assert await store.get_checkpoints("e1") == {
        "buy": final.checkpoints[0],
        "quote": first.checkpoints[0],
    }


@pytest.mark.asyncio
async def test_result_with_other_outputs_is_stored_whole(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """A result holding outputs no checkpoint holds (here a copy: equal is not enough) is
    stored whole, and reads back equal."""
    first, final, result = _run_batches("e1")
    copied = {**result, "results": copy.deepcopy(result["results"])}
    assert final.execution is not None
    final = dataclasses.replace(
        final, execution=dataclasses.replace(final.execution, result=copied)
    )
    await store.write(first)
    await store.write(final)

    assert (await _stored_result(conn, "e1"))[:1] != state._REFERENCED
    assert (await store.get_execution("e1")).result == copied


@pytest.mark.asyncio
async def test_write_many_refers_only_to_checkpoints_written_before(
    store: SQLiteStateStore,
) -> None:
    """In one write_many, a later checkpoint of a node then a result holding its earlier
    outputs: the result reads back with the outputs it holds, not the later checkpoint's."""
    first, final, result = _run_batches("e1")
    await store.write(first)
    newer = Checkpoint("e1", "quote", CheckpointState.COMPLETED, 5.0, {"price": 99.0})

    assert await store.write_many([StateBatch(checkpoints=(newer,)), final]) == [None, None]

    assert (await store.get_execution("e1")).result == result
    assert (await store.get_checkpoints("e1"))["quote"] == newer


@pytest.mark.asyncio
async def test_unusual_events_and_checkpoints_round_trip(store: SQLiteStateStore) -> None:
    """Ids not derived from the sequence, gaps, unknown types, times off the tick grid,
    any data, failures and attempts: all read back exactly."""
    events = (
        Event("custom_type", "own-id", 7, 0.1, "c", "e1", "wf", "b", "s", None, {"x": [1]}),
        Event(
            "node_completed",
            "e1-9",
            9,
            1e-9,
            "c",
            "e1",
            "wf",
            "b",
            "s",
            "n",
            {"duration_ms": 1.5, "outputs": {"a": 1}},
        ),
        Event(
            "node_failed",
            "e1-10",
            10,
            2.0**40 + 0.5,
            "c",
            "e1",
            "wf",
            "b",
            "s",
            "n",
            {"error": "boom"},
        ),
    )
    checkpoints = (
        Checkpoint("e1", "n", CheckpointState.FAILED, 0.3, {"client_order_id": "e1:n"}, "boom", 3),
        Checkpoint("e1", "m", CheckpointState.SKIPPED, 1_795_689_105.25),
    )
    await store.write(StateBatch(execution("e1"), checkpoints, events))

    assert [e for _, e in await store.read_events()] == list(events)
    assert await store.get_checkpoints("e1") == {"m": checkpoints[1], "n": checkpoints[0]}
    assert await store.last_sequence("e1") == 10


@pytest.mark.asyncio
async def test_rows_in_earlier_encodings_still_read(
    store: SQLiteStateStore, conn: sqlite3.Connection
) -> None:
    """Journal rows and results written by the previous encodings (schema 6 JSON, schema 7
    packed) read back as they did."""
    await store.write(StateBatch(execution("e1")))
    ev, cp = event("e1", 1), checkpoint("e1", "quote")
    body = to_json_bytes(
        (
            (ev.correlation_id, ev.workflow_id, ev.bot_id, ev.strategy_id),
            [(ev.type, ev.event_id, ev.sequence, ev.timestamp, ev.node_id, ev.data)],
            [cp[1:]],
        )
    )
    for stored in (body.decode(), state._pack(body)):
        conn.execute("DELETE FROM batches")
        (batch_id,) = conn.execute(
            "INSERT INTO batches (execution_id, body) VALUES ('e1', ?) RETURNING batch_id",
            (stored,),
        ).fetchone()
        conn.execute(
            "UPDATE executions SET first_batch = ?1, last_batch = ?1, result = ?2",
            (batch_id, state._pack(b'{"status":"completed"}')),
        )

        assert [e for _, e in await store.read_events(execution_id="e1")] == [ev]
        assert await store.get_checkpoints("e1") == {"quote": cp}
        assert (await store.get_execution("e1")).result == {"status": "completed"}
