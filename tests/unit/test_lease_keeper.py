"""LeaseKeeper, the lease a process runs its executions under, on a real SQLite store
whose clock (and the keeper's) only moves when the test says so."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import pytest_asyncio
from kit import START, ManualClock, eventually, execution

from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.errors import LeaseLost
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import StateBatch
from tradeflow.engine.ownership import LeaseKeeper
from tradeflow.observability.logging import get_logger

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

SLOW_TTL = 30.0
"""A lease whose heartbeat (every ttl/3 of real time) never comes during a test."""
FAST_TTL = 0.06
"""A lease whose heartbeat comes every 20 ms of real time: a test waits for a renewal
with ``eventually``. The store's clock is manual, so the lease only lapses when the
test moves that clock."""

INFO = OwnerInfo("cli-testhost-4242-abcdefgh", "cli", "testhost", 4242)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def store(conn: sqlite3.Connection, clock: ManualClock) -> SQLiteStateStore:
    return SQLiteStateStore(conn, clock=clock)


def keeper_of(store: SQLiteStateStore, clock: ManualClock, ttl: float) -> LeaseKeeper:
    return LeaseKeeper(store, INFO, ttl=ttl, clock=clock, log=get_logger("test.lease"))


@pytest_asyncio.fixture
async def slow(store: SQLiteStateStore, clock: ManualClock) -> AsyncIterator[LeaseKeeper]:
    """A started keeper that renews only when a test waits 10 s (never)."""
    keeper = keeper_of(store, clock, SLOW_TTL)
    await keeper.start()
    yield keeper
    await keeper.stop()


@pytest_asyncio.fixture
async def fast(store: SQLiteStateStore, clock: ManualClock) -> AsyncIterator[LeaseKeeper]:
    """A started keeper renewing every 20 ms of real time."""
    keeper = keeper_of(store, clock, FAST_TTL)
    await keeper.start()
    yield keeper
    await keeper.stop()


async def owned_execution(store: SQLiteStateStore, keeper: LeaseKeeper, execution_id: str) -> None:
    """Start ``execution_id`` under the keeper's current lease (a fenced first write)."""
    await store.write(StateBatch(execution(execution_id), fence=keeper.lease.fence))


@pytest.mark.asyncio
async def test_check_passes_within_the_ttl_and_refuses_from_the_local_deadline_on(
    slow: LeaseKeeper, clock: ManualClock
) -> None:
    """check() passes until the local deadline (grant time + ttl, keeper clock) and
    refuses from that moment on, though the store was never asked: a paused process
    loses its actions before its first write finds out."""
    epoch = slow.lease.epoch
    clock.advance(SLOW_TTL - 0.001)
    slow.check(epoch)
    clock.advance(0.001)
    with pytest.raises(LeaseLost, match="not renewed within its ttl") as lost:
        slow.check(epoch)
    assert (lost.value.owner, lost.value.epoch) == (INFO.owner, epoch)


@pytest.mark.asyncio
async def test_check_refuses_an_epoch_that_is_not_the_current_lease(slow: LeaseKeeper) -> None:
    """check() of any other epoch than the current lease's raises LeaseLost (superseded)."""
    epoch = slow.lease.epoch
    for other in (epoch - 1, epoch + 1, 0):
        with pytest.raises(LeaseLost, match="superseded"):
            slow.check(other)
    slow.check(epoch)


@pytest.mark.asyncio
async def test_start_takes_a_store_wide_increasing_epoch_and_is_idempotent(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """start() acquires a lease (epochs of later keepers are larger) and a second start()
    keeps the same lease."""
    first, second = keeper_of(store, clock, SLOW_TTL), keeper_of(store, clock, SLOW_TTL)
    try:
        lease = await first.start()
        assert await first.start() == lease
        assert (await second.start()).epoch > lease.epoch
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.asyncio
async def test_a_lost_renewal_takes_a_new_epoch_and_the_old_one_is_refused_everywhere(
    fast: LeaseKeeper, store: SQLiteStateStore, clock: ManualClock
) -> None:
    """When the store's clock passes the lease's ttl (a pause), the next renewal answers
    LeaseLost: the keeper takes a larger epoch for new executions, while the old epoch
    is refused by check() and by the store (a write fenced with it changes nothing)."""
    old = fast.lease
    await owned_execution(store, fast, "begun-under-old")
    clock.advance(1.0)  # > FAST_TTL: the store sees the lease lapsed
    await eventually(lambda: fast.lease.epoch != old.epoch, "the keeper took a new lease")
    new = fast.lease
    assert new.epoch > old.epoch and new.info == old.info
    with pytest.raises(LeaseLost, match="superseded"):
        fast.check(old.epoch)
    fast.check(new.epoch)
    with pytest.raises(LeaseLost):
        await store.write(StateBatch(execution("begun-under-old"), fence=old.fence))
    with pytest.raises(LeaseLost):
        await store.renew_lease(old)
    record = await store.get_execution("begun-under-old")
    assert (record.owner, record.epoch, record.owner_live) == (INFO.owner, old.epoch, False)
    # New executions run under the new lease.
    await owned_execution(store, fast, "begun-under-new")
    record = await store.get_execution("begun-under-new")
    assert (record.epoch, record.owner_live) == (new.epoch, True)


@pytest.mark.asyncio
async def test_renewal_moves_the_local_deadline(fast: LeaseKeeper, clock: ManualClock) -> None:
    """A renewal extends the local deadline to the time it was sent plus the ttl: moved
    half a ttl at a time, the clock crosses five ttls while check() keeps passing, under
    one epoch."""
    epoch = fast.lease.epoch
    for _ in range(10):
        clock.advance(FAST_TTL / 2)
        # Past the current clock + half a ttl only if a renewal was sent since it moved.
        later = clock.now + FAST_TTL / 2
        await eventually(
            functools.partial(lambda at: fast.deadline > at, later),
            "a renewal extended the local deadline",
        )
        fast.check(epoch)
    assert fast.lease.epoch == epoch


class RecordingLog:
    """A logger that keeps the (level, event) of each line: what the keeper reported."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event))

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event))


@pytest.mark.asyncio
async def test_a_renewal_that_fails_otherwise_is_retried_and_the_heartbeat_survives(
    conn: sqlite3.Connection, store: SQLiteStateStore, clock: ManualClock, db_path: Path
) -> None:
    """A renewal failing with another error than LeaseLost (the file locked by another
    process past busy_timeout) is logged and retried: the heartbeat goes on and renews
    the same lease once the lock is gone, and stop() still works."""
    conn.execute("PRAGMA busy_timeout = 10")
    log = RecordingLog()
    keeper = LeaseKeeper(
        store, INFO, ttl=FAST_TTL, clock=clock, log=cast("FilteringBoundLogger", log)
    )
    epoch = (await keeper.start()).epoch
    try:
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            await eventually(
                lambda: ("warning", "lease.renew_failed") in log.lines,
                "a renewal failed on the locked file and was logged",
            )
        finally:
            other.close()  # rolls the lock holder's transaction back
        clock.advance(FAST_TTL / 2)
        later = clock.now + FAST_TTL / 2
        await eventually(lambda: keeper.deadline > later, "the heartbeat renewed the lease again")
        assert keeper.lease.epoch == epoch
    finally:
        await keeper.stop()
    assert ("error", "lease.lost") not in log.lines


@pytest.mark.asyncio
async def test_cancellations_requested_elsewhere_reach_the_hook_once_each(
    fast: LeaseKeeper, store: SQLiteStateStore
) -> None:
    """request_cancel of an execution the keeper's lease owns is delivered by the next
    heartbeat to the watcher of that execution, once; an unwatched one reaches nobody."""
    delivered: list[str] = []
    fast.watch("cancel-me", functools.partial(delivered.append, "cancel-me"))
    fast.watch("cancel-me-too", functools.partial(delivered.append, "cancel-me-too"))
    await owned_execution(store, fast, "cancel-me")
    await owned_execution(store, fast, "cancel-me-too")
    await owned_execution(store, fast, "unwatched")
    record = await store.request_cancel("cancel-me")
    assert record.status.value == "running" and record.owner_live
    await eventually(lambda: delivered == ["cancel-me"], "the first request was delivered")
    await store.request_cancel("unwatched")
    await store.request_cancel("cancel-me-too")
    await eventually(
        lambda: delivered == ["cancel-me", "cancel-me-too"], "the later request was delivered"
    )


@pytest.mark.asyncio
async def test_stop_releases_the_lease_so_its_executions_are_orphans_at_once(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """stop() ends the lease in the store (its running executions are orphans without
    waiting for the ttl) and the keeper then refuses every action."""
    keeper = keeper_of(store, clock, SLOW_TTL)
    lease = await keeper.start()
    await owned_execution(store, keeper, "left-running")
    assert (await store.get_execution("left-running")).owner_live
    await keeper.stop()
    await keeper.stop()  # idempotent
    record = await store.get_execution("left-running")
    assert (record.owner, record.epoch, record.owner_live) == (INFO.owner, lease.epoch, False)
    assert [r.execution_id for r in await store.orphans(10)] == ["left-running"]
    with pytest.raises(LeaseLost):
        keeper.check(lease.epoch)
    with pytest.raises(LeaseLost, match="no lease held"):
        _ = keeper.lease


@pytest.mark.asyncio
async def test_stop_without_release_leaves_the_lease_to_lapse(
    store: SQLiteStateStore, clock: ManualClock
) -> None:
    """stop(release=False) keeps the store's lease until its ttl passes (what a kill -9
    leaves behind): the execution is live until then, an orphan after."""
    keeper = keeper_of(store, clock, SLOW_TTL)
    await keeper.start()
    await owned_execution(store, keeper, "kept")
    await keeper.stop(release=False)
    assert (await store.get_execution("kept")).owner_live
    assert await store.orphans(10) == []
    clock.advance(SLOW_TTL)
    assert not (await store.get_execution("kept")).owner_live
    assert [r.execution_id for r in await store.orphans(10)] == ["kept"]
