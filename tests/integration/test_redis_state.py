"""The Redis state store, against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS, checkpoint, event, eventually, execution
from servers import ServerProcess
from state_fixtures import state_service_process

from bench.sqlite_write import typical_batches
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.emergency import RedisEmergencyStore
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.domain.clock import SystemClock
from tradeflow.domain.errors import (
    ConfigurationError,
    EmergencyHalted,
    ExecutionNotFound,
    InvalidRequest,
    LeaseLost,
    OwnerAlive,
    UnavailableError,
)
from tradeflow.domain.ownership import Claim, Heartbeat, OwnerInfo
from tradeflow.domain.records import (
    ActionGuard,
    AuditEntry,
    Checkpoint,
    CheckpointState,
    ExecutionQuery,
    ExecutionStatus,
    HaltState,
    PruneReport,
    Scope,
    StateBatch,
)
from tradeflow.domain.trading import OrderEffect, TradingState

pytestmark = pytest.mark.integration


@pytest.fixture
def store(client: aioredis.Redis, prefix: str) -> RedisStateStore:
    return RedisStateStore(client, prefix=prefix)


async def ids(store: RedisStateStore, **filters: Any) -> list[str]:
    page = await store.list_executions(ExecutionQuery(**filters))
    return [r.execution_id for r in page.executions]


async def script_calls(client: aioredis.Redis) -> int:
    """Scripts redis-server has run (a script is atomic: all of its writes or none)."""
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    )


@pytest.mark.asyncio
async def test_write_then_read_round_trips(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """An execution, its checkpoints and its events read back exactly, also from another store."""
    record = execution("e1", bot_id="bot", strategy_id="strat", request_id="req-1")
    batch = StateBatch(
        execution=record,
        checkpoints=(checkpoint("e1", "quote"), checkpoint("e1", "buy", CheckpointState.INTENT)),
        events=(event("e1", 1), event("e1", 2)),
    )

    await store.write(batch)
    other = RedisStateStore(client, prefix=prefix)

    for view in (store, other):
        assert await view.get_execution("e1") == record
        assert await view.find_by_request_id("req-1") == record
        assert await view.find_by_request_id("req-2") is None
        assert await view.get_checkpoints("e1") == {
            "quote": checkpoint("e1", "quote"),
            "buy": checkpoint("e1", "buy", CheckpointState.INTENT),
        }
        assert [e for _, e in await view.read_events()] == [event("e1", 1), event("e1", 2)]
    with pytest.raises(ExecutionNotFound, match="'nope'"):
        await store.get_execution("nope")


@pytest.mark.asyncio
async def test_later_writes_update_state_and_move_the_status_index(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Finishing a run rewrites its state in one script call and moves it between status indexes."""
    await store.write(StateBatch(execution=execution("e1"), checkpoints=(checkpoint("e1", "a"),)))
    finished = execution("e1", status=ExecutionStatus.COMPLETED, result={"status": "completed"})
    before = await script_calls(client)

    await store.write(StateBatch(execution=finished, checkpoints=(checkpoint("e1", "b"),)))

    assert await script_calls(client) == before + 1
    assert await store.get_execution("e1") == finished
    assert await ids(store, status=ExecutionStatus.RUNNING) == []
    assert await ids(store, status=ExecutionStatus.COMPLETED) == ["e1"]
    resumed = execution("e1")
    await RedisStateStore(client, prefix=prefix).write(StateBatch(execution=resumed))
    assert await ids(store, status=ExecutionStatus.COMPLETED) == []
    assert await ids(store, status=ExecutionStatus.RUNNING) == ["e1"]


@pytest.mark.asyncio
async def test_batch_that_cannot_be_encoded_leaves_nothing(store: RedisStateStore) -> None:
    """A batch whose second checkpoint is not JSON keeps none of its execution, rows or events."""
    bad = Checkpoint("e1", "broken", CheckpointState.COMPLETED, 1.0, {"not json": object()})
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
    assert await ids(store) == []


@pytest.mark.asyncio
async def test_request_id_is_claimed_once(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A second execution with a used request_id is refused whole; the owner may write again."""
    first = execution("e1", request_id="req")
    await store.write(StateBatch(execution=first))
    batch = StateBatch(
        execution=execution("e2", request_id="req"),
        checkpoints=(checkpoint("e2", "quote"),),
        events=(event("e2", 1),),
    )

    for writer in (store, RedisStateStore(client, prefix=prefix)):
        with pytest.raises(InvalidRequest, match="'e1' holds it") as caught:
            await writer.write(batch)
        assert caught.value.field == "request_id"
        retried = execution("e1", request_id="req", status=ExecutionStatus.FAILED)
        await writer.write(StateBatch(execution=retried))

    assert await store.find_by_request_id("req") == retried
    with pytest.raises(ExecutionNotFound):
        await store.get_execution("e2")
    assert await store.get_checkpoints("e2") == {}
    assert await store.read_events(execution_id="e2") == []
    assert await ids(store) == ["e1"]


@pytest.mark.asyncio
async def test_list_executions_pages_newest_first(store: RedisStateStore) -> None:
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
        await store.write(StateBatch(execution=execution(f"new-{token[:4]}", started_at=9.0)))

    assert seen == [["g", "f", "e"], ["d", "c", "b"], ["a"]]


@pytest.mark.asyncio
async def test_list_executions_filters(store: RedisStateStore) -> None:
    """Workflow, bot, strategy, status, their combinations and [after, before) each filter."""
    await store.write(StateBatch(execution=execution("e1", started_at=10, bot_id="b1")))
    await store.write(
        StateBatch(execution=execution("e2", started_at=20, bot_id="b1", strategy_id="s1"))
    )
    failed = execution("e3", started_at=30, workflow_id="other", status=ExecutionStatus.FAILED)
    await store.write(StateBatch(execution=failed))
    await store.write(StateBatch(execution=execution("e4", started_at=-5.5)))

    assert await ids(store) == ["e3", "e2", "e1", "e4"]
    assert await ids(store, workflow_id="wf") == ["e2", "e1", "e4"]
    assert await ids(store, bot_id="b1") == ["e2", "e1"]
    assert await ids(store, strategy_id="s1") == ["e2"]
    assert await ids(store, status=ExecutionStatus.FAILED) == ["e3"]
    assert await ids(store, status=ExecutionStatus.RUNNING, workflow_id="wf", bot_id="b1") == [
        "e2",
        "e1",
    ]
    assert await ids(store, bot_id="b1", strategy_id="nope") == []
    assert await ids(store, started_after=20, started_before=30) == ["e2"]
    assert await ids(store, started_after=-6, started_before=10) == ["e4"]
    assert await ids(store, started_after=10.000001) == ["e3", "e2"]


@pytest.mark.asyncio
async def test_filtered_pages_scan_past_non_matching_executions(store: RedisStateStore) -> None:
    """Pages of a combined filter fill up across many non-matching executions, then stop."""
    for i in range(40):
        bot = "b1" if i % 10 == 0 else "b2"
        await store.write(StateBatch(execution=execution(f"e{i:02d}", started_at=i, bot_id=bot)))

    first = await store.list_executions(ExecutionQuery(workflow_id="wf", bot_id="b1", limit=2))
    rest = await store.list_executions(
        ExecutionQuery(workflow_id="wf", bot_id="b1", limit=2, page_token=first.next_page_token)
    )

    assert [r.execution_id for r in first.executions] == ["e30", "e20"]
    assert [r.execution_id for r in rest.executions] == ["e10", "e00"]
    assert rest.next_page_token is None


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'["x", "e1"]').decode(),
    ],
)
@pytest.mark.asyncio
async def test_bad_page_token_is_invalid_request(store: RedisStateStore, token: str) -> None:
    """A token the store did not issue is rejected naming the page_token field."""
    with pytest.raises(InvalidRequest) as caught:
        await store.list_executions(ExecutionQuery(page_token=token))

    assert caught.value.field == "page_token"


@pytest.mark.asyncio
async def test_read_events_follows_a_cursor(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Cursors grow in write order; polling with the last one yields only newer events."""
    await store.write(StateBatch(events=(event("e1", 1), event("e2", 1), event("e1", 2))))
    tail = RedisStateStore(client, prefix=prefix)

    first = await tail.read_events(limit=2)
    await store.write(StateBatch(events=(event("e2", 2), event(None, 1))))
    rest = await tail.read_events(after=first[-1][0])
    only_e1 = await tail.read_events(execution_id="e1")
    e1_after = await tail.read_events(execution_id="e1", after=only_e1[0][0])

    assert [e.event_id for _, e in first] == ["e1-1", "e2-1"]
    assert [e.event_id for _, e in rest] == ["e1-2", "e2-2", "None-1"]
    assert [e.event_id for _, e in only_e1] == ["e1-1", "e1-2"]
    assert [e.event_id for _, e in e1_after] == ["e1-2"]
    cursors = [c for c, _ in [*first, *rest]]
    assert cursors == sorted(cursors) == list(range(cursors[0], cursors[0] + 5))
    assert {c for c, _ in only_e1} <= set(cursors)


@pytest.mark.asyncio
async def test_writing_a_batch_twice_stores_it_once(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A retried batch (same events, same sequences) adds no events and changes nothing."""
    batch = StateBatch(
        execution=execution("e1", request_id="req"),
        checkpoints=(checkpoint("e1", "quote"),),
        events=(event("e1", 1), event("e1", 2)),
    )
    await store.write(batch)

    await RedisStateStore(client, prefix=prefix).write(batch)
    await store.write(StateBatch(events=(event("e1", 2), event("e1", 3))))

    assert [e.sequence for _, e in await store.read_events()] == [1, 2, 3]
    assert [e.sequence for _, e in await store.read_events(execution_id="e1")] == [1, 2, 3]
    assert await store.get_execution("e1") == batch.execution
    assert await ids(store) == ["e1"]


@pytest.mark.asyncio
async def test_store_keeps_working_across_a_redis_restart(
    store: RedisStateStore, redis_server: ServerProcess
) -> None:
    """After redis-server restarts under open connections, reads and writes just work."""
    await store.write(StateBatch(execution=execution("e1"), events=(event("e1", 1),)))

    # Blocking the loop on purpose: the pool cannot notice its connections died.
    redis_server.restart()
    finished = execution("e1", status=ExecutionStatus.COMPLETED)

    assert await store.get_execution("e1") == execution("e1")
    await store.write(StateBatch(execution=finished, events=(event("e1", 2),)))
    assert await store.get_execution("e1") == finished
    assert [e.sequence for _, e in await store.read_events(execution_id="e1")] == [1, 2]


@pytest.mark.asyncio
async def test_batch_spanning_executions_lands_with_each(store: RedisStateStore) -> None:
    """Checkpoints and events of two executions (and an event of none) in one batch go to each."""
    batch = StateBatch(
        checkpoints=(checkpoint("e1", "a"), checkpoint("e2", "a"), checkpoint("e1", "b")),
        events=(event("e2", 1), event(None, 1), event("e1", 1), event("e2", 2)),
    )

    await store.write(batch)

    assert await store.get_checkpoints("e1") == {
        "a": checkpoint("e1", "a"),
        "b": checkpoint("e1", "b"),
    }
    assert await store.get_checkpoints("e2") == {"a": checkpoint("e2", "a")}
    assert [e for _, e in await store.read_events()] == list(batch.events)
    assert [e for _, e in await store.read_events(execution_id="e2")] == [
        event("e2", 1),
        event("e2", 2),
    ]


@pytest.mark.asyncio
async def test_thousands_of_checkpoints_in_one_batch_are_all_stored(
    store: RedisStateStore,
) -> None:
    """A batch with more checkpoints than one command takes is stored whole."""
    nodes = [f"n{i}" for i in range(2500)]

    await store.write(StateBatch(checkpoints=tuple(checkpoint("e1", n) for n in nodes)))

    assert await store.get_checkpoints("e1") == {n: checkpoint("e1", n) for n in nodes}


@pytest.mark.asyncio
async def test_max_events_trims_only_the_global_stream(client: aioredis.Redis, prefix: str) -> None:
    """With max_events the stream of every event is trimmed; each execution keeps all of its own."""
    capped = RedisStateStore(client, prefix=prefix, max_events=10)

    for start in range(0, 600, 100):
        await capped.write(
            StateBatch(events=tuple(event("e1", n) for n in range(start, start + 100)))
        )

    everything = await capped.read_events(limit=1000)
    assert 10 <= len(everything) < 600
    assert everything[-1][1] == event("e1", 599)
    own = await capped.read_events(execution_id="e1", limit=1000)
    assert [e.sequence for _, e in own] == list(range(600))


def owner(name: str) -> OwnerInfo:
    return OwnerInfo(name, "executor", "host", 1)


LEASE_SECONDS = 30.0
"""Long enough never to lapse during a test unless the test means it to."""


@pytest.mark.asyncio
async def test_a_fenced_write_is_one_script_call_that_records_its_owner(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """The fence is checked inside the write script: a fenced first write and a fenced later
    write (the store's cached, state-only path) are one script call each."""
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    first = StateBatch(
        execution=execution("e1"), checkpoints=(checkpoint("e1", "a"),), fence=lease.fence
    )
    before = await script_calls(client)

    await store.write(first)
    await store.write(StateBatch(execution=execution("e1"), fence=lease.fence))

    assert await script_calls(client) == before + 2
    stored = await store.get_execution("e1")
    assert (stored.owner, stored.epoch, stored.takeovers, stored.owner_live) == (
        "a",
        lease.epoch,
        0,
        True,
    )


@pytest.mark.asyncio
async def test_a_write_racing_its_lease_expiry_lands_whole_or_not_at_all(
    store: RedisStateStore,
) -> None:
    """Batches written back to back while a short lease runs out: every accepted one is
    stored whole, the first refused one (LeaseLost, lapsed) left nothing."""
    lease = await store.acquire_lease(owner("a"), 0.2)
    accepted = 0
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            n = accepted + 1
            batch = StateBatch(
                execution=execution("e1", result={"batch": n}),
                checkpoints=(checkpoint("e1", f"n{n}"),),
                events=(event("e1", n),),
                fence=lease.fence,
            )
            try:
                await store.write(batch)
            except LeaseLost as lost:
                refused = lost
                break
            accepted = n

    assert accepted > 0
    assert (refused.owner, refused.epoch, refused.execution_id) == ("a", lease.epoch, "e1")
    assert str(refused).endswith(": lapsed")
    assert set(await store.get_checkpoints("e1")) == {f"n{n}" for n in range(1, accepted + 1)}
    sequences: list[int] = []
    cursor = 0
    while page := await store.read_events(after=cursor, execution_id="e1"):
        # Pages hold at most MAX_EVENTS_PAGE: a fast machine accepts more writes than that.
        sequences.extend(e.sequence for _, e in page)
        cursor = page[-1][0]
    assert sequences == list(range(1, accepted + 1))
    stored = await store.get_execution("e1")
    assert stored.result == {"batch": accepted}
    assert not stored.owner_live


@pytest.mark.asyncio
async def test_cached_executions_are_fenced_too(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A store that created an execution still has its later (state-only) writes refused once
    its lease is replaced, and a fresh lease must claim the execution before writing it."""
    old = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    await store.write(StateBatch(execution=execution("e1"), fence=old.fence))
    new = await RedisStateStore(client, prefix=prefix).acquire_lease(owner("a"), LEASE_SECONDS)
    done = execution("e1", status=ExecutionStatus.COMPLETED)

    with pytest.raises(LeaseLost, match=f"replaced by epoch {new.epoch}"):
        await store.write(StateBatch(execution=done, fence=old.fence))
    with pytest.raises(LeaseLost, match=rf"owned by a \(epoch {old.epoch}\)"):
        await store.write(StateBatch(execution=done, fence=new.fence))
    with pytest.raises(LeaseLost, match="carries no fence") as unfenced:
        await store.write(StateBatch(execution=done, checkpoints=(checkpoint("e1", "x"),)))

    assert (unfenced.value.owner, unfenced.value.epoch) == ("", 0)
    assert (await store.get_execution("e1")).status is ExecutionStatus.RUNNING
    assert await store.get_checkpoints("e1") == {}
    # The same owner reclaiming under a new epoch did not die: not a takeover.
    assert await store.claim("e1", new) == Claim(previous_owner="a", takeover=False, takeovers=0)
    await store.write(StateBatch(execution=done, fence=new.fence))
    assert await ids(store, status=ExecutionStatus.COMPLETED) == ["e1"]


@pytest.mark.asyncio
async def test_listing_fills_owner_liveness_in_one_script_call(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """A page of records owned by a live, a released and no lease says which owner is live,
    read with one script call for the whole page."""
    live = await store.acquire_lease(owner("live"), LEASE_SECONDS)
    gone = await store.acquire_lease(owner("gone"), LEASE_SECONDS)
    for name, lease in (("e-live", live), ("e-gone", gone), ("e-none", None)):
        fence = None if lease is None else lease.fence
        await store.write(StateBatch(execution=execution(name), fence=fence))
    await store.release_lease(gone)
    before = await script_calls(client)

    page = await store.list_executions(ExecutionQuery())

    assert await script_calls(client) == before + 1
    seen = {r.execution_id: (r.owner, r.owner_live) for r in page.executions}
    assert seen == {"e-live": ("live", True), "e-gone": ("gone", False), "e-none": (None, False)}


@pytest.mark.asyncio
async def test_orphans_walk_both_status_indexes_oldest_first(store: RedisStateStore) -> None:
    """Orphans come from the running and interrupted indexes merged in (started_at, id) byte
    order, past one chunk of either: every interrupted one (a live owner's too), no running
    one of a live owner, no final one."""
    live = await store.acquire_lease(owner("live"), LEASE_SECONDS)
    expected = []
    for i in range(300):
        for status, name in (
            (ExecutionStatus.RUNNING, f"r-{i}"),
            (ExecutionStatus.INTERRUPTED, f"r_{i}"),
        ):
            await store.write(StateBatch(execution=execution(name, started_at=i, status=status)))
            expected.append(name)
    await store.write(StateBatch(execution=execution("owned", started_at=0.5), fence=live.fence))
    stopped = execution("stopped", started_at=0.5, status=ExecutionStatus.INTERRUPTED)
    await store.write(StateBatch(execution=stopped, fence=live.fence))
    expected.insert(2, "stopped")
    done = execution("done", started_at=0.5, status=ExecutionStatus.FAILED)
    await store.write(StateBatch(execution=done))

    found = await store.orphans(1000)

    assert [r.execution_id for r in found] == expected
    assert [r.execution_id for r in await store.orphans(3)] == ["r-0", "r_0", "stopped"]
    assert await store.orphans(0) == []


@pytest.mark.asyncio
async def test_cancel_of_an_orphan_ends_it_in_the_script(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """An orphan is ended cancelled at the server's time with its result kept exactly (the
    script splices the stored JSON) and moved to the cancelled index; a live owner's
    execution is left running and delivered with its next renewal, once."""
    error = 'quote " comma , bracket ] \u00fc newline \n ends with a backslash \\'
    result = {"filled": 0.1 + 0.2, "note": '"],[', "nested": {"list": [1, None]}}
    orphan = execution("e1", status=ExecutionStatus.INTERRUPTED, error=error, result=result)
    await store.write(StateBatch(execution=orphan))
    seconds, micros = await client.time()

    cancelled = await store.request_cancel("e1")

    assert cancelled.status is ExecutionStatus.CANCELLED
    assert cancelled.error == "cancelled while no executor ran it"
    assert cancelled.result == result
    assert cancelled.finished_at is not None
    assert cancelled.finished_at >= seconds + micros / 1e6
    assert await store.get_execution("e1") == cancelled
    assert await ids(store, status=ExecutionStatus.INTERRUPTED) == []
    assert await ids(store, status=ExecutionStatus.CANCELLED) == ["e1"]
    assert await store.request_cancel("e1") == cancelled
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    await store.write(StateBatch(execution=execution("e2"), fence=lease.fence))
    assert (await store.request_cancel("e2")).status is ExecutionStatus.RUNNING
    assert (await store.renew_lease(lease)).cancel == ("e2",)
    assert (await store.renew_lease(lease)).cancel == ()
    with pytest.raises(ExecutionNotFound):
        await store.request_cancel("nope")


@pytest.mark.asyncio
async def test_epochs_come_from_one_counter_that_outlives_leases(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Epochs grow across owners and re-acquisitions, even once every lease key is gone; a
    replaced lease learns which epoch replaced it."""
    first = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    second = await store.acquire_lease(owner("b"), LEASE_SECONDS)
    leases = [key async for key in client.scan_iter(match=f"{prefix}:lease:*")]
    await client.delete(*leases)
    third = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    fourth = await store.acquire_lease(owner("a"), LEASE_SECONDS)

    assert first.epoch < second.epoch < third.epoch < fourth.epoch
    with pytest.raises(LeaseLost, match=f"replaced by epoch {fourth.epoch}"):
        await store.renew_lease(third)
    with pytest.raises(LeaseLost, match="lapsed"):
        await store.renew_lease(second)
    await store.release_lease(third)  # not the owner's epoch: nothing happens
    assert await store.renew_lease(fourth) == Heartbeat()


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [ExecutionStatus.RUNNING, ExecutionStatus.INTERRUPTED])
async def test_of_concurrent_claims_exactly_one_wins(
    store: RedisStateStore, status: ExecutionStatus
) -> None:
    """Eight live leases claiming one orphan (running or interrupted) at once: one claim,
    seven OwnerAlive naming it."""
    await store.write(StateBatch(execution=execution("e1", status=status)))
    leases = [await store.acquire_lease(owner(f"o{i}"), LEASE_SECONDS) for i in range(8)]

    outcomes = await asyncio.gather(
        *(store.claim("e1", lease) for lease in leases), return_exceptions=True
    )

    claims = [o for o in outcomes if isinstance(o, Claim)]
    assert claims == [Claim(previous_owner=None, takeover=False, takeovers=0)]
    refused = [o for o in outcomes if isinstance(o, OwnerAlive)]
    assert len(refused) == 7
    winner = (await store.get_execution("e1")).owner
    assert all(r.owner == f"{winner} (executor, pid 1 on host)" for r in refused)


@pytest.mark.asyncio
async def test_a_claim_of_an_ended_execution_starts_it_clean_and_moves_the_status_index(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Claiming a failed execution makes it running in the claim's script, from a clean
    slate (no finish time, error, result or cancel asked before it ended), and moves it
    from the failed index to the running one, where listings by status find it."""
    error = 'quote " comma , bracket ] \u00fc newline \n ends with a backslash \\'
    failed = execution(
        "e1", status=ExecutionStatus.FAILED, finished_at=1001.5, error=error, result={"x": 1}
    )
    await store.write(StateBatch(execution=failed))
    await client.hset(f"{prefix}:execution:e1", "cancel_requested", "1")
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)

    claim = await store.claim("e1", lease)

    assert claim == Claim(previous_owner=None, takeover=False, takeovers=0)
    stored = await store.get_execution("e1")
    assert (stored.status, stored.finished_at, stored.error, stored.result) == (
        ExecutionStatus.RUNNING,
        None,
        None,
        None,
    )
    assert await client.hexists(f"{prefix}:execution:e1", "cancel_requested") == 0
    assert await ids(store, status=ExecutionStatus.FAILED) == []
    assert await ids(store, status=ExecutionStatus.RUNNING) == ["e1"]


@pytest.mark.asyncio
async def test_a_claim_of_an_unknown_execution_creates_nothing(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A claim of an execution never written raises ExecutionNotFound and leaves no key
    for it behind."""
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    with pytest.raises(ExecutionNotFound):
        await store.claim("e1", lease)
    assert await client.exists(f"{prefix}:execution:e1") == 0


@pytest.mark.parametrize("url", ["not-a-url", "redis://127.0.0.1:no-port"])
def test_a_malformed_url_names_its_setting(url: str) -> None:
    """connect() turns a malformed Redis URL into a ConfigurationError naming the variable."""
    with pytest.raises(ConfigurationError, match="TRADEFLOW_REDIS_URL is malformed"):
        connect(url)


async def keys_of(client: aioredis.Redis, prefix: str) -> set[str]:
    """Every key under ``prefix`` (the state's, not the emergency state's)."""
    return {key.decode() async for key in client.scan_iter(match=f"{prefix}:*")}


@pytest.mark.asyncio
async def test_write_many_gives_each_batch_its_own_outcome_in_one_round_trip(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Three batches in one call: one refused by its fence, one by a halt, one written;
    one script call each, and only the written one is stored."""
    emergency = RedisEmergencyStore(client, prefix=prefix, clock=SystemClock())
    await emergency.save_halt(
        HaltState(Scope.BOT, "bot-1", "test", "test", 1.0, TradingState.HALTED),
        AuditEntry(0, 1.0, "test", "halt", Scope.BOT, "bot-1", "test"),
    )
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)
    await store.write(StateBatch(execution=execution("owned"), fence=lease.fence))
    other = await store.acquire_lease(owner("b"), LEASE_SECONDS)
    batches = [
        StateBatch(execution=execution("owned"), fence=other.fence),
        StateBatch(
            execution=execution("halted", bot_id="bot-1"),
            checkpoints=(checkpoint("halted", "buy", CheckpointState.INTENT),),
            guard=ActionGuard("wf", "bot-1", None, OrderEffect.OPENS),
        ),
        StateBatch(
            execution=execution("fine"),
            checkpoints=(checkpoint("fine", "quote"),),
            events=(event("fine", 1),),
        ),
    ]
    before = await script_calls(client)

    fenced, halted, written = await store.write_many(batches)

    assert await script_calls(client) == before + 3
    assert isinstance(fenced, LeaseLost) and "owned by a" in str(fenced)
    assert isinstance(halted, EmergencyHalted)
    assert written is None
    assert await store.get_execution("fine") == batches[2].execution
    assert [e for _, e in await store.read_events(execution_id="fine")] == [event("fine", 1)]
    with pytest.raises(ExecutionNotFound):
        await store.get_execution("halted")
    assert (await store.get_execution("owned")).owner == "a"
    assert await store.write_many([]) == []


@pytest.mark.asyncio
async def test_write_many_refuses_only_the_batch_it_cannot_encode(store: RedisStateStore) -> None:
    """A batch holding a value JSON cannot encode is refused on its own (InvalidRequest,
    field batch); the others of the call are written."""
    bad = Checkpoint("e1", "broken", CheckpointState.COMPLETED, 1.0, {"not json": object()})
    batches = [
        StateBatch(execution=execution("e1"), checkpoints=(bad,)),
        StateBatch(execution=execution("e2")),
    ]

    refused, written = await store.write_many(batches)

    assert isinstance(refused, InvalidRequest) and refused.field == "batch"
    assert written is None
    assert await ids(store) == ["e2"]


@pytest.mark.asyncio
async def test_write_many_reloads_the_script_a_restarted_server_lost(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """After SCRIPT FLUSH, a group commit loads the write script again and writes every batch."""
    await client.script_flush()

    outcomes = await store.write_many([StateBatch(execution=execution(f"e{i}")) for i in range(3)])

    assert outcomes == [None, None, None]
    assert await ids(store) == ["e2", "e1", "e0"]


def ended(execution_id: str, status: ExecutionStatus, at: float, **fields: Any) -> StateBatch:
    """A batch of an execution that ended ``status`` at ``at`` (started a second before),
    with one completed checkpoint and two events unless ``fields`` say otherwise."""
    fields.setdefault("checkpoints", (checkpoint(execution_id, "quote"),))
    fields.setdefault("events", (event(execution_id, 1), event(execution_id, 2)))
    record = execution(
        execution_id,
        started_at=at - 1,
        status=status,
        finished_at=at,
        request_id=f"r-{execution_id}",
    )
    return StateBatch(execution=record, **fields)


@pytest.mark.asyncio
async def test_prune_removes_every_trace_of_ended_executions_and_keeps_the_rest(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Executions that ended before the horizon go with their checkpoints, events (in
    both streams), index members and request id; running, interrupted, recent ones and
    those with an unresolved intent stay (counted as kept); the emergency audit stays."""
    emergency = RedisEmergencyStore(client, prefix=prefix, clock=SystemClock())
    await emergency.append_audit(AuditEntry(0, 1.0, "test", "halt", Scope.GLOBAL, None, "x"))
    audit_before = await emergency.audit_entries(10)
    pristine = await keys_of(client, prefix)
    for status in (
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.HALTED,
        ExecutionStatus.CANCELLED,
    ):
        await store.write(ended(f"old-{status.value}", status, 100.0))
    intent = checkpoint("intent", "buy", CheckpointState.INTENT, {"client_order_id": "c1"})
    unknown = checkpoint(
        "unknown", "buy", CheckpointState.FAILED, {"client_order_id": "c2"}, error="timeout"
    )
    refused = checkpoint("refused", "buy", CheckpointState.FAILED, {}, error="no")
    kept = [
        ended("intent", ExecutionStatus.FAILED, 100.0, checkpoints=(intent,)),
        ended("unknown", ExecutionStatus.FAILED, 100.0, checkpoints=(unknown,)),
        ended("recent", ExecutionStatus.COMPLETED, 300.0),
    ]
    for batch in kept:
        await store.write(batch)
    await store.write(ended("refused", ExecutionStatus.FAILED, 100.0, checkpoints=(refused,)))
    await store.write(StateBatch(execution=execution("running", started_at=10.0)))
    stopped = execution("stopped", started_at=10.0, status=ExecutionStatus.INTERRUPTED)
    await store.write(StateBatch(execution=stopped, events=(event("stopped", 1),)))
    survivors = ["recent", "unknown", "intent", "stopped", "running"]
    events_before = {c: e for c, e in await store.read_events(limit=1000)}

    report = await store.prune(200.0)

    assert report == PruneReport(removed=5, kept=2, more=False)
    assert sorted(await ids(store)) == sorted(survivors)
    after = [e for _, e in await store.read_events(limit=1000)]
    assert after == [e for e in events_before.values() if e.execution_id in survivors]
    assert await store.find_by_request_id("r-old-failed") is None
    assert await store.find_by_request_id("r-recent") is not None
    assert await store.get_checkpoints("old-failed") == {}
    assert await store.read_events(execution_id="old-failed") == []
    for status in ExecutionStatus:
        listed = await ids(store, status=status)
        assert not [i for i in listed if i.startswith(("old-", "refused"))]
    left = await keys_of(client, prefix) - pristine
    assert not [key for key in left if "old-" in key or "refused" in key]
    assert await emergency.audit_entries(10) == audit_before
    assert await store.prune(200.0) == PruneReport(removed=0, kept=2, more=False)


@pytest.mark.asyncio
async def test_prune_goes_oldest_first_in_chunks_up_to_its_limit(store: RedisStateStore) -> None:
    """With more ended executions than one script removes and than the limit, a call
    removes exactly ``limit`` of them, the oldest, and says there are more."""
    batches = [ended(f"e{i:03d}", ExecutionStatus.COMPLETED, 100.0 + i) for i in range(250)]
    assert await store.write_many(batches) == [None] * 250

    first = await store.prune(1000.0, limit=180)
    rest = await store.prune(1000.0, limit=180)

    assert first == PruneReport(removed=180, kept=0, more=True)
    assert rest == PruneReport(removed=70, kept=0, more=False)
    assert await ids(store) == []


@pytest.mark.asyncio
async def test_a_live_writer_of_a_pruned_execution_writes_it_whole_again(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A store that created an execution (and so writes only its state next) finds it
    pruned meanwhile by another: its next write stores the record whole."""
    await store.write(StateBatch(execution=execution("e1", started_at=1.0)))
    other = RedisStateStore(client, prefix=prefix)
    await other.write(ended("e1", ExecutionStatus.FAILED, 2.0))
    await other.prune(10.0)
    assert await ids(store) == []
    again = execution("e1", started_at=1.0, result={"n": 1})

    await store.write(StateBatch(execution=again))

    assert await store.get_execution("e1") == again
    assert await ids(store) == ["e1"]


@pytest.mark.asyncio
async def test_prune_racing_a_crowd_of_claims_never_removes_a_claimed_execution(
    store: RedisStateStore,
) -> None:
    """Claims (manual resumes) of failed executions running alongside prunes of them: each
    execution ends either removed whole (its claim found nothing) or claimed, running
    and whole; never in between."""
    count = 64  # within the client's pool, whose size is its default
    batches = [ended(f"e{i:03d}", ExecutionStatus.FAILED, 100.0 + i) for i in range(count)]
    await store.write_many(batches)
    leases = [await store.acquire_lease(owner(f"o{i}"), LEASE_SECONDS) for i in range(count)]

    async def prune_all() -> int:
        removed = 0
        while True:
            report = await store.prune(1000.0, limit=7)
            removed += report.removed
            if not report.more:
                return removed

    claims = [store.claim(f"e{i:03d}", leases[i]) for i in range(count)]
    removed, *outcomes = await asyncio.gather(prune_all(), *claims, return_exceptions=True)

    claimed = {f"e{i:03d}" for i, o in enumerate(outcomes) if isinstance(o, Claim)}
    assert all(isinstance(o, (Claim, ExecutionNotFound)) for o in outcomes), outcomes
    assert removed == count - len(claimed)
    assert set(await ids(store)) == claimed
    for execution_id in claimed:
        record = await store.get_execution(execution_id)
        assert record.status is ExecutionStatus.RUNNING
        assert await store.get_checkpoints(execution_id) == {
            "quote": checkpoint(execution_id, "quote")
        }
        assert len(await store.read_events(execution_id=execution_id)) == 2


async def assert_consistent(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> set[str]:
    """Every index member, request id, record hash, journal and event (read by execution
    or from the global stream) belongs to a whole execution whose status index holds it;
    returns their ids."""
    members = {m.decode() for m in await client.zrange(f"{prefix}:index:all", 0, -1)}
    present = {m[17:]: m for m in members}
    for key in await keys_of(client, prefix):
        kind, _, rest = key[len(prefix) + 1 :].partition(":")
        if kind == "index":
            assert {m.decode() for m in await client.zrange(key, 0, -1)} <= members, key
        elif kind in ("execution", "data"):
            assert rest in present, key
        elif kind == "request":
            assert (await client.get(key) or b"").decode() in present, key
    for execution_id in present:
        status = (await store.get_execution(execution_id)).status
        index = f"{prefix}:index:status:{status.value}"
        assert await client.zscore(index, present[execution_id]) is not None
        assert len(await store.read_events(execution_id=execution_id)) == 2
        assert set(await store.get_checkpoints(execution_id)) == {"quote"}
    cursor = 0
    while page := await store.read_events(after=cursor, limit=1000):
        assert {e.execution_id for _, e in page} <= set(present)
        cursor = page[-1][0]
    return set(present)


def start_quietly(process: ServerProcess) -> None:
    """Start ``process``; a kill before it listens is no error here."""
    with contextlib.suppress(UnavailableError):
        process.start()


@pytest.mark.asyncio
async def test_a_state_service_killed_mid_prune_leaves_a_consistent_store(
    store: RedisStateStore,
    client: aioredis.Redis,
    prefix: str,
    redis_server: ServerProcess,
    tmp_path: Path,
) -> None:
    """The retention loop prunes at start; SIGKILLed once it has begun, the service leaves
    every execution whole or gone (each chunk is one script), and started again it prunes
    the rest, logging retention.pruned, and keeps the running ones."""
    count = 6000
    old = [ended(f"e{i:05d}", ExecutionStatus.COMPLETED, 1000.0 + i) for i in range(count)]
    for start in range(0, count, 500):
        assert await store.write_many(old[start : start + 500]) == [None] * 500
    for i in range(3):
        running = f"running-{i}"
        await store.write(
            StateBatch(
                execution=execution(running, started_at=1.0),
                checkpoints=(checkpoint(running, "quote"),),
                events=(event(running, 1), event(running, 2)),
            )
        )
    total = count + 3
    process = state_service_process(
        redis_server.url, tmp_path, prefix, {"TRADEFLOW_RETENTION_DAYS": "1"}
    )
    starting = asyncio.create_task(asyncio.to_thread(start_quietly, process))
    try:
        await eventually(
            lambda: _fewer(client, f"{prefix}:index:all", total), "the prune has begun"
        )
        process.kill()
        await starting

        present = await assert_consistent(store, client, prefix)
        assert {f"running-{i}" for i in range(3)} <= present

        process.start()
        await eventually(lambda: _fewer(client, f"{prefix}:index:all", 4), "the prune went through")
        await eventually(
            lambda: "retention.pruned" in (tmp_path / "state.log").read_text(),
            "retention.pruned is logged",
        )
        assert await assert_consistent(store, client, prefix) == {f"running-{i}" for i in range(3)}
    finally:
        process.kill()


async def _fewer(client: aioredis.Redis, key: str, than: int) -> bool:
    return int(await client.zcard(key)) < than


@pytest.mark.asyncio
async def test_a_typical_execution_takes_at_most_2_kb_of_redis(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """The bench's typical 10-node execution (its two batches: 10 checkpoints and 19
    events, then the result, 1 checkpoint and 3 events) costs <= 2,048 bytes of MEMORY
    USAGE, every key under the prefix counted (shared streams, indexes and the definition
    included) over 100 executions; its record hash stays a listpack."""
    executions = 100
    for i in range(executions):
        start, finish = typical_batches(f"{i:032x}", 1_795_689_105.0 + i)
        await store.write(start)
        await store.write(finish)

    total = 0
    async for key in client.scan_iter(match=f"{prefix}:*"):
        total += int(await client.memory_usage(key, samples=0) or 0)

    assert total / executions <= 2048, total / executions
    assert await client.object("encoding", f"{prefix}:execution:{0:032x}") == b"listpack"
    _, finish = typical_batches(f"{0:032x}", 1_795_689_105.0)
    assert await store.get_execution(f"{0:032x}") == finish.execution


@pytest.mark.asyncio
async def test_a_prefix_in_the_older_layout_is_refused_with_what_to_do(
    client: aioredis.Redis, prefix: str
) -> None:
    """Keys of the layout before p:layout existed (a stream of every event, its cursor)
    make every execution operation raise ConfigurationError naming the way out, and
    nothing is written; leases (the same in both layouts) still work."""
    await client.set(f"{prefix}:event_cursor", 2)
    await client.xadd(f"{prefix}:execution_events:e1", {"sequence": 1, "event": "[]"}, id="1-0")
    store = RedisStateStore(client, prefix=prefix)
    before = await keys_of(client, prefix)

    for call in (
        store.get_execution("e1"),
        store.write(StateBatch(execution=execution("e2"))),
        store.read_events(),
        store.prune(1.0),
    ):
        with pytest.raises(ConfigurationError, match="TRADEFLOW_REDIS_PREFIX") as caught:
            await call
        message = str(caught.value)
        assert f"delete its state keys ({prefix}:execution:*" in message
        assert f"never {prefix}:paper:*, the ledger" in message
    lease = await store.acquire_lease(owner("a"), LEASE_SECONDS)

    leases = {f"{prefix}:{key}" for key in ("lease:a", "leases", "lease_epoch")}
    assert await keys_of(client, prefix) - before == leases
    await store.release_lease(lease)


@pytest.mark.asyncio
async def test_a_definition_is_stored_once_and_goes_with_its_last_execution(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """Executions of one definition share one copy of it; prune drops it with the last
    execution that refers to it, not before."""
    await store.write(ended("a", ExecutionStatus.COMPLETED, 100.0))
    await store.write(ended("b", ExecutionStatus.COMPLETED, 200.0))
    copies = [key async for key in client.scan_iter(match=f"{prefix}:definition:*")]

    first = await store.prune(150.0)
    kept = (await store.get_execution("b")).definition
    second = await store.prune(250.0)

    assert len(copies) == 1
    assert (first.removed, second.removed) == (1, 1)
    assert kept == execution("b").definition
    assert [key async for key in client.scan_iter(match=f"{prefix}:definition*")] == []


@pytest.mark.asyncio
async def test_an_entry_shared_by_two_executions_outlives_one_of_them(
    store: RedisStateStore,
) -> None:
    """A batch with events of two executions is one entry of the global stream; once one
    of them is pruned, reading the stream yields the other's events with their cursors."""
    await store.write(StateBatch(execution=execution("gone", started_at=1.0)))
    await store.write(StateBatch(events=(event("gone", 1), event("stays", 1), event("gone", 2))))
    before = await store.read_events()
    await store.write(ended("gone", ExecutionStatus.COMPLETED, 5.0, checkpoints=(), events=()))

    assert (await store.prune(10.0)).removed == 1
    after = await store.read_events()

    assert [e.event_id for _, e in before] == ["gone-1", "stays-1", "gone-2"]
    assert after == [before[1]]
    assert await store.read_events(execution_id="stays") == [before[1]]


@pytest.mark.asyncio
async def test_a_long_journal_reads_back_whole(store: RedisStateStore) -> None:
    """Hundreds of batches of one execution (its journal appended past the size where
    it is rewritten whole) read back exactly: checkpoints latest per node, every event
    once with dense cursors, the last sequence, the final result."""
    batches = [
        StateBatch(
            checkpoints=(checkpoint("e1", f"n{i % 7}", outputs={"i": i}),),
            events=(event("e1", 2 * i + 1), event("e1", 2 * i + 2)),
        )
        for i in range(300)
    ]
    await store.write(StateBatch(execution=execution("e1")))
    for batch in batches:
        await store.write(batch)
    finished = execution("e1", status=ExecutionStatus.COMPLETED, result={"done": [1, 2]})
    await store.write(StateBatch(execution=finished))

    events = await store.read_events(execution_id="e1", limit=1000)
    assert [e for _, e in events] == [e for b in batches for e in b.events]
    assert [c for c, _ in events] == list(range(events[0][0], events[0][0] + 600))
    assert await store.read_events(limit=1000) == events
    assert await store.get_checkpoints("e1") == {
        f"n{i % 7}": checkpoint("e1", f"n{i % 7}", outputs={"i": i}) for i in range(293, 300)
    }
    assert await store.last_sequence("e1") == 600
    assert await store.get_execution("e1") == finished


@pytest.mark.asyncio
async def test_a_frame_chained_to_a_journal_another_store_extended_is_sent_unchained(
    store: RedisStateStore, client: aioredis.Redis, prefix: str
) -> None:
    """A store compresses a live execution's next frame against the last one it wrote;
    when another store wrote to that journal meanwhile, the script refuses the chained
    frame and the store sends it again unchained (two script calls): everything reads
    back exactly, from either store."""
    await store.write(
        StateBatch(
            execution=execution("e1"),
            checkpoints=(checkpoint("e1", "a"),),
            events=(event("e1", 1),),
        )
    )
    other = RedisStateStore(client, prefix=prefix)
    await other.write(StateBatch(checkpoints=(checkpoint("e1", "b"),), events=(event("e1", 2),)))
    finished = execution("e1", status=ExecutionStatus.COMPLETED, result={"a": {"price": 101.5}})
    before = await script_calls(client)

    await store.write(
        StateBatch(
            execution=finished, checkpoints=(checkpoint("e1", "c"),), events=(event("e1", 3),)
        )
    )

    assert await script_calls(client) == before + 2
    for view in (store, other, RedisStateStore(client, prefix=prefix)):
        assert await view.get_execution("e1") == finished
        assert set(await view.get_checkpoints("e1")) == {"a", "b", "c"}
        assert [e for _, e in await view.read_events(execution_id="e1")] == [
            event("e1", n) for n in (1, 2, 3)
        ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "stamps",
    [
        [1_796_217_833.0296228, 1_796_217_833.0296667, 1_796_217_833.0360453],
        [1_796_217_833.0296228, 0.5, 1_796_217_833.0296667],
        [1_796_217_833.0296228, 1_796_217_833, 1_796_217_833.0296667],
    ],
    ids=["clock", "another-magnitude", "an-int"],
)
async def test_timestamps_read_back_exactly(store: RedisStateStore, stamps: list[float]) -> None:
    """Event and checkpoint timestamps read back equal and of the same type, whether
    the frame stores them as ticks from its first one (all a clock gives) or as they are
    (one far from the others, or an int)."""
    events = tuple(event("e1", n + 1, timestamp=t) for n, t in enumerate(stamps))
    checkpoints = tuple(checkpoint("e1", f"n{n}", updated_at=t) for n, t in enumerate(stamps))

    await store.write(StateBatch(checkpoints=checkpoints, events=events))

    read = [e for _, e in await store.read_events(execution_id="e1")]
    saved = await store.get_checkpoints("e1")
    assert read == list(events)
    assert [type(e.timestamp) for e in read] == [type(t) for t in stamps]
    assert [saved[f"n{n}"].updated_at for n in range(len(stamps))] == stamps
    assert [type(saved[f"n{n}"].updated_at) for n in range(len(stamps))] == list(map(type, stamps))
