"""The ownership contract of every StateStore adapter (embedded, Redis, the state service):
leases with fencing epochs, fenced writes, claims, orphans and cancellation requests.

The tests use only the port methods, on the adapters of ``contract_fixtures``. The
``service`` adapter shares the session's stack (and its executor replica) with other
tests, so every id starts with the test's ``uid``, and the executions written here run
a node type no replica knows: a replica's takeover loop never claims them.

Leases that must stay live for a whole test get a ttl far beyond it; the expiry tests
use a short one and wait (bounded) until the store reports the owner not live.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Final

import kit
import pytest
from kit import eventually

from tradeflow.domain.errors import (
    ExecutionNotFound,
    InvalidRequest,
    LeaseLost,
    OwnerAlive,
)
from tradeflow.domain.ownership import Claim, Heartbeat, Lease, OwnerInfo
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.ports import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DEFINITION: Final[dict[str, Any]] = {
    "blocks": [
        {
            "id": "probe",
            "category": "providers",
            "type": "ownership_contract_probe",
            "properties": {},
        }
    ]
}
"""A workflow of a node type no executor replica has, so none of them takes it over."""
STARTED_AT: Final = 1_767_225_600.25
LIVE_TTL: Final = 120.0
"""Outlives any test: such a lease never lapses by itself during one."""
SHORT_TTL: Final = 0.2


def owner(uid: str, name: str) -> OwnerInfo:
    """An owner of the test (pid and host are what an operator would be shown)."""
    return OwnerInfo(f"{uid}-{name}", "cli", f"host-{name}", 4242)


def execution(uid: str, name: str, **fields: Any) -> ExecutionRecord:
    """A running record of ``DEFINITION`` (started at ``STARTED_AT`` unless told)."""
    fields.setdefault("started_at", STARTED_AT)
    return kit.execution(f"{uid}-{name}", f"{uid}-wf", definition=DEFINITION, **fields)


def event(record: ExecutionRecord, sequence: int) -> Event:
    """Event number ``sequence`` of ``record``'s run."""
    return kit.run_event(record, sequence, "probe", {"n": sequence})


def checkpoint(record: ExecutionRecord, node_id: str = "probe") -> Checkpoint:
    """A completed checkpoint of ``node_id`` in ``record``'s run."""
    return Checkpoint(
        execution_id=record.execution_id,
        node_id=node_id,
        state=CheckpointState.COMPLETED,
        updated_at=record.started_at + 1,
        outputs={"price": 101.25},
    )


def ended(record: ExecutionRecord, status: ExecutionStatus) -> ExecutionRecord:
    """``record`` after its run ended with ``status``."""
    return replace(record, status=status, finished_at=record.started_at + 1.5)


async def started(
    store: StateStore, record: ExecutionRecord, lease: Lease | None
) -> ExecutionRecord:
    """Write ``record`` as the first batch of its run (fenced by ``lease`` if given)."""
    await store.write(StateBatch(execution=record, fence=None if lease is None else lease.fence))
    return record


async def orphan(store: StateStore, uid: str, name: str, **fields: Any) -> ExecutionRecord:
    """A running execution whose owner released its lease (so it died holding it)."""
    lease = await store.acquire_lease(owner(uid, f"{name}-dead"), LIVE_TTL)
    record = await started(store, execution(uid, name, **fields), lease)
    await store.release_lease(lease)
    return record


async def history(store: StateStore, execution_id: str) -> tuple[Any, ...]:
    """Everything stored for an execution: record, checkpoints and events."""
    events = await store.read_events(execution_id=execution_id)
    return (
        await store.get_execution(execution_id),
        await store.get_checkpoints(execution_id),
        [e.event_id for _, e in events],
    )


async def owner_live(store: StateStore, execution_id: str) -> bool:
    return (await store.get_execution(execution_id)).owner_live


async def orphan_ids(store: StateStore, uid: str) -> list[str]:
    """The test's executions among the orphans, in the order the store lists them."""
    return [r.execution_id for r in await store.orphans(100) if r.execution_id.startswith(uid)]


async def listed_with_status(store: StateStore, uid: str, status: ExecutionStatus) -> list[str]:
    """The test's executions (started at ``STARTED_AT``) a listing by ``status`` finds: the
    status filter alone, so Redis reads its status index."""
    query = ExecutionQuery(
        status=status, started_after=STARTED_AT, started_before=STARTED_AT + 1, limit=100
    )
    page = await store.list_executions(query)
    return [r.execution_id for r in page.executions if r.execution_id.startswith(uid)]


async def stopped(
    store: StateStore, uid: str, name: str, status: ExecutionStatus, *, owner_lives: bool
) -> tuple[ExecutionRecord, Lease]:
    """An execution its owner wrote with ``status`` (not running); that owner's lease is
    released unless ``owner_lives``."""
    lease = await store.acquire_lease(owner(uid, f"{name}-first"), LIVE_TTL)
    record = await started(store, execution(uid, name, status=status), lease)
    if not owner_lives:
        await store.release_lease(lease)
    return record, lease


# -- leases -----------------------------------------------------------------------------


async def test_every_acquired_lease_has_a_larger_epoch(state_store: StateStore, uid: str) -> None:
    """Epochs come from one counter: each grant (any owner, a re-grant, after a release)
    is larger than every earlier one, and the lease carries the owner and ttl asked for."""
    a, b = owner(uid, "a"), owner(uid, "b")
    first = await state_store.acquire_lease(a, LIVE_TTL)
    second = await state_store.acquire_lease(b, LIVE_TTL)
    again = await state_store.acquire_lease(a, LIVE_TTL)
    await state_store.release_lease(again)
    await state_store.release_lease(second)
    after_release = await state_store.acquire_lease(a, LIVE_TTL)

    epochs = [first.epoch, second.epoch, again.epoch, after_release.epoch]
    assert epochs == sorted(set(epochs))
    assert first.epoch > 0
    assert (first.info, first.ttl) == (a, LIVE_TTL)
    assert first.fence == (a.owner, first.epoch)


async def test_renew_of_a_live_lease_keeps_it_and_its_executions_live(
    state_store: StateStore, uid: str
) -> None:
    """Renewing a live lease returns an empty heartbeat and leaves its executions owned live."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)

    assert await state_store.renew_lease(lease) == Heartbeat(cancel=())
    assert await state_store.renew_lease(lease) == Heartbeat(cancel=())
    assert await owner_live(state_store, record.execution_id)


async def test_renew_after_release_raises_lease_lost(state_store: StateStore, uid: str) -> None:
    """A released lease cannot be renewed: LeaseLost names its owner and epoch."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    await state_store.release_lease(lease)

    with pytest.raises(LeaseLost) as caught:
        await state_store.renew_lease(lease)
    assert (caught.value.owner, caught.value.epoch) == (lease.info.owner, lease.epoch)


async def test_renew_of_a_replaced_lease_raises_lease_lost_naming_the_new_epoch(
    state_store: StateStore, uid: str
) -> None:
    """Acquiring again replaces the owner's lease: the old one is lost ("replaced by epoch
    N"), the new one renews."""
    old = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    new = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)

    with pytest.raises(LeaseLost) as caught:
        await state_store.renew_lease(old)
    assert (caught.value.owner, caught.value.epoch) == (old.info.owner, old.epoch)
    assert f"replaced by epoch {new.epoch}" in str(caught.value)
    assert await state_store.renew_lease(new) == Heartbeat()


async def test_release_is_never_an_error_and_spares_a_newer_lease(
    state_store: StateStore, uid: str
) -> None:
    """Releasing a replaced or already released lease does nothing: the owner's newer
    lease stays live."""
    old = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    new = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), new)

    await state_store.release_lease(old)
    await state_store.release_lease(old)

    assert await state_store.renew_lease(new) == Heartbeat()
    assert await owner_live(state_store, record.execution_id)
    await state_store.release_lease(new)
    await state_store.release_lease(new)
    assert not await owner_live(state_store, record.execution_id)


async def test_a_lease_not_renewed_lapses_and_its_running_execution_is_an_orphan(
    state_store: StateStore, uid: str
) -> None:
    """Past its ttl without a heartbeat a lease is not live: its execution is listed as an
    orphan, the lease cannot be renewed, and its fenced writes are refused."""
    lease = await state_store.acquire_lease(owner(uid, "a"), SHORT_TTL)
    record = await started(state_store, execution(uid, "e"), lease)

    async def lapsed() -> bool:
        return not await owner_live(state_store, record.execution_id)

    await eventually(lapsed, "the short lease lapsed")
    assert await orphan_ids(state_store, uid) == [record.execution_id]
    with pytest.raises(LeaseLost):
        await state_store.renew_lease(lease)
    before = await history(state_store, record.execution_id)
    with pytest.raises(LeaseLost) as caught:
        await state_store.write(StateBatch(checkpoints=(checkpoint(record),), fence=lease.fence))
    assert caught.value.execution_id == record.execution_id
    assert await history(state_store, record.execution_id) == before


# -- fenced writes ----------------------------------------------------------------------


async def test_fenced_writes_by_the_owner_are_recorded_with_its_owner_and_epoch(
    state_store: StateStore, uid: str
) -> None:
    """The owner's fenced writes (record, checkpoints, events, final record) are stored,
    and the record carries its owner, epoch and liveness."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)
    await state_store.write(
        StateBatch(checkpoints=(checkpoint(record),), events=(event(record, 1),), fence=lease.fence)
    )
    final = ended(record, ExecutionStatus.COMPLETED)
    await state_store.write(
        StateBatch(execution=final, events=(event(record, 2),), fence=lease.fence)
    )

    stored, checkpoints, events = await history(state_store, record.execution_id)
    assert stored == replace(final, owner=lease.info.owner, epoch=lease.epoch, owner_live=True)
    assert checkpoints == {"probe": checkpoint(record)}
    assert events == [f"{record.execution_id}-1", f"{record.execution_id}-2"]


async def test_fenced_write_takes_an_unowned_execution(state_store: StateStore, uid: str) -> None:
    """An execution written without a fence (epoch 0) takes the owner and epoch of the
    first fenced write; from then on unfenced writes are refused."""
    record = await started(state_store, execution(uid, "e"), None)
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)

    await state_store.write(StateBatch(checkpoints=(checkpoint(record),), fence=lease.fence))

    stored = await state_store.get_execution(record.execution_id)
    assert (stored.owner, stored.epoch, stored.owner_live) == (lease.info.owner, lease.epoch, True)
    with pytest.raises(LeaseLost):
        await state_store.write(StateBatch(execution=record))


async def test_fenced_write_with_a_replaced_epoch_is_refused_and_writes_nothing(
    state_store: StateStore, uid: str
) -> None:
    """A write fenced by a lease its owner replaced raises LeaseLost naming the fence and
    the execution, and stores none of the batch."""
    old = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), old)
    await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    before = await history(state_store, record.execution_id)

    with pytest.raises(LeaseLost) as caught:
        await state_store.write(
            StateBatch(
                execution=ended(record, ExecutionStatus.COMPLETED),
                checkpoints=(checkpoint(record),),
                events=(event(record, 1),),
                fence=old.fence,
            )
        )
    lost = caught.value
    assert (lost.owner, lost.epoch, lost.execution_id) == (
        old.info.owner,
        old.epoch,
        record.execution_id,
    )
    assert await history(state_store, record.execution_id) == before


async def test_live_lease_writing_an_execution_another_epoch_owns_is_refused(
    state_store: StateStore, uid: str
) -> None:
    """A live lease cannot write an execution another lease took over: LeaseLost names the
    owner it belongs to, and nothing is stored (with or without the record)."""
    record = await orphan(state_store, uid, "e")
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)
    await state_store.claim(record.execution_id, taker)
    other = await state_store.acquire_lease(owner(uid, "other"), LIVE_TTL)
    before = await history(state_store, record.execution_id)

    for batch in (
        StateBatch(execution=record, events=(event(record, 1),), fence=other.fence),
        StateBatch(checkpoints=(checkpoint(record),), fence=other.fence),
        StateBatch(events=(event(record, 2),), fence=other.fence),
    ):
        with pytest.raises(LeaseLost) as caught:
            await state_store.write(batch)
        assert (caught.value.owner, caught.value.epoch) == (other.info.owner, other.epoch)
        assert caught.value.execution_id == record.execution_id
        assert f"owned by {taker.info.owner} (epoch {taker.epoch})" in str(caught.value)
    assert await history(state_store, record.execution_id) == before


async def test_unfenced_write_to_an_owned_execution_is_refused(
    state_store: StateStore, uid: str
) -> None:
    """A write without a fence cannot touch an owned execution: LeaseLost (owner '',
    epoch 0) names the execution, and nothing is stored."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)
    before = await history(state_store, record.execution_id)

    for batch in (
        StateBatch(execution=ended(record, ExecutionStatus.COMPLETED)),
        StateBatch(checkpoints=(checkpoint(record),), events=(event(record, 1),)),
    ):
        with pytest.raises(LeaseLost) as caught:
            await state_store.write(batch)
        lost = caught.value
        assert (lost.owner, lost.epoch, lost.execution_id) == ("", 0, record.execution_id)
        assert lease.info.owner in str(lost)
    assert await history(state_store, record.execution_id) == before


async def test_ownership_fields_of_a_written_record_are_ignored(
    state_store: StateStore, uid: str
) -> None:
    """The store owns owner, epoch, takeovers and owner_live: what a batch's record says of
    them is not stored."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    forged = {"owner": f"{uid}-forged", "epoch": 10**9, "takeovers": 7, "owner_live": True}
    unfenced = await started(state_store, execution(uid, "plain", **forged), None)
    fenced = await started(state_store, execution(uid, "fenced", **forged), lease)

    plain = await state_store.get_execution(unfenced.execution_id)
    assert (plain.owner, plain.epoch, plain.takeovers, plain.owner_live) == (None, 0, 0, False)
    owned = await state_store.get_execution(fenced.execution_id)
    assert (owned.owner, owned.epoch, owned.takeovers, owned.owner_live) == (
        lease.info.owner,
        lease.epoch,
        0,
        True,
    )


async def test_every_read_of_a_record_carries_its_ownership(
    state_store: StateStore, uid: str
) -> None:
    """get_execution, find_by_request_id, list_executions, orphans and request_cancel all
    fill owner, epoch, takeovers and owner_live."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e", request_id=f"{uid}-req"), lease)
    expected = replace(record, owner=lease.info.owner, epoch=lease.epoch, owner_live=True)

    page = await state_store.list_executions(ExecutionQuery(workflow_id=record.workflow_id))
    assert await state_store.get_execution(record.execution_id) == expected
    assert await state_store.find_by_request_id(f"{uid}-req") == expected
    assert list(page.executions) == [expected]
    assert await state_store.request_cancel(record.execution_id) == expected

    await state_store.release_lease(lease)
    (listed,) = [r for r in await state_store.orphans(100) if r.execution_id.startswith(uid)]
    assert listed == replace(expected, owner_live=False)


# -- claims -----------------------------------------------------------------------------


async def test_claim_of_an_orphan_takes_it_over(state_store: StateStore, uid: str) -> None:
    """Claiming a running execution whose owner is gone is a takeover: the claimer owns it
    (still running), takeovers counts it, and only the claimer's writes are accepted."""
    dead = await state_store.acquire_lease(owner(uid, "dead"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), dead)
    await state_store.release_lease(dead)
    assert await orphan_ids(state_store, uid) == [record.execution_id]
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, taker)

    assert claim == Claim(previous_owner=dead.info.owner, takeover=True, takeovers=1)
    stored = await state_store.get_execution(record.execution_id)
    assert stored == replace(
        record, owner=taker.info.owner, epoch=taker.epoch, takeovers=1, owner_live=True
    )
    assert await orphan_ids(state_store, uid) == []
    await state_store.write(StateBatch(checkpoints=(checkpoint(record),), fence=taker.fence))
    assert await state_store.get_checkpoints(record.execution_id) == {"probe": checkpoint(record)}


async def test_takeovers_add_up_across_owners(state_store: StateStore, uid: str) -> None:
    """Each owner that dies holding the execution running adds one takeover."""
    record = await orphan(state_store, uid, "e")
    for n in (1, 2, 3):
        taker = await state_store.acquire_lease(owner(uid, f"taker{n}"), LIVE_TTL)
        claim = await state_store.claim(record.execution_id, taker)
        assert (claim.takeover, claim.takeovers) == (True, n)
        await state_store.release_lease(taker)
    assert (await state_store.get_execution(record.execution_id)).takeovers == 3


async def test_its_own_owner_reclaiming_under_a_new_epoch_is_no_takeover(
    state_store: StateStore, uid: str
) -> None:
    """An owner whose lease lapsed (a stalled store) and who reclaims its execution under a
    new epoch did not die: no takeover is counted (so stalls never quarantine)."""
    first = await state_store.acquire_lease(owner(uid, "stalled"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), first)
    second = await state_store.acquire_lease(owner(uid, "stalled"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, second)

    assert claim == Claim(previous_owner=first.info.owner, takeover=False, takeovers=0)
    assert (await state_store.get_execution(record.execution_id)).epoch == second.epoch


@pytest.mark.parametrize(
    "status",
    [
        ExecutionStatus.INTERRUPTED,
        ExecutionStatus.FAILED,
        ExecutionStatus.HALTED,
        ExecutionStatus.CANCELLED,
    ],
)
async def test_claim_of_a_stopped_execution_makes_it_running_with_no_takeover(
    state_store: StateStore, uid: str, status: ExecutionStatus
) -> None:
    """An interrupted or ended (not completed) execution can be claimed (resumed): its owner
    did not die running it, so it is no takeover, and the claim makes it running at once
    (a listing by status finds it running, not as it was), from a clean slate: no finish
    time, error or result of its end."""
    record, previous = await stopped(state_store, uid, "e", status, owner_lives=False)
    assert await listed_with_status(state_store, uid, status) == [record.execution_id]
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, taker)

    assert claim == Claim(previous_owner=previous.info.owner, takeover=False, takeovers=0)
    stored = await state_store.get_execution(record.execution_id)
    assert stored == replace(
        record,
        status=ExecutionStatus.RUNNING,
        finished_at=None,
        error=None,
        result=None,
        owner=taker.info.owner,
        epoch=taker.epoch,
        owner_live=True,
    )
    assert await listed_with_status(state_store, uid, ExecutionStatus.RUNNING) == [
        record.execution_id
    ]
    assert await listed_with_status(state_store, uid, status) == []


async def test_a_claimer_dying_before_it_writes_counts_as_a_takeover_next_time(
    state_store: StateStore, uid: str
) -> None:
    """A claimer of an interrupted execution that dies before its first write leaves it
    running with a dead owner: an orphan, and the next claim is a takeover (so an
    execution that kills its runners is quarantined even when it starts interrupted)."""
    record, _ = await stopped(state_store, uid, "e", ExecutionStatus.INTERRUPTED, owner_lives=False)
    doomed = await state_store.acquire_lease(owner(uid, "doomed"), LIVE_TTL)
    first = await state_store.claim(record.execution_id, doomed, takeover=True)
    await state_store.release_lease(doomed)
    assert await orphan_ids(state_store, uid) == [record.execution_id]
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    second = await state_store.claim(record.execution_id, taker, takeover=True)

    assert (first.takeover, first.takeovers) == (False, 0)
    assert second == Claim(previous_owner=doomed.info.owner, takeover=True, takeovers=1)
    stored = await state_store.get_execution(record.execution_id)
    assert (stored.status, stored.owner, stored.takeovers) == (
        ExecutionStatus.RUNNING,
        taker.info.owner,
        1,
    )


async def test_an_interrupted_execution_of_a_live_owner_is_an_orphan_it_can_lose(
    state_store: StateStore, uid: str
) -> None:
    """Nobody runs an interrupted execution, even while the owner that interrupted it lives
    on: it is listed as an orphan (its owner shown live) and another owner's claim takes it,
    with no takeover; the previous owner's writes are refused from then on."""
    record, first = await stopped(
        state_store, uid, "e", ExecutionStatus.INTERRUPTED, owner_lives=True
    )
    (listed,) = [r for r in await state_store.orphans(100) if r.execution_id.startswith(uid)]
    assert (listed.execution_id, listed.owner, listed.owner_live) == (
        record.execution_id,
        first.info.owner,
        True,
    )
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, taker, takeover=True)

    assert claim == Claim(previous_owner=first.info.owner, takeover=False, takeovers=0)
    assert await orphan_ids(state_store, uid) == []
    with pytest.raises(LeaseLost) as caught:
        await state_store.write(StateBatch(checkpoints=(checkpoint(record),), fence=first.fence))
    assert f"owned by {taker.info.owner} (epoch {taker.epoch})" in str(caught.value)


@pytest.mark.parametrize("owner_lives", [False, True])
async def test_an_interrupted_execution_once_claimed_is_refused_to_another(
    state_store: StateStore, uid: str, owner_lives: bool
) -> None:
    """The first claim of an interrupted execution makes it running under the claimer's live
    lease, so a second claim (takeover or not) is OwnerAlive naming the first claimer, and
    changes nothing."""
    record, _ = await stopped(
        state_store, uid, "e", ExecutionStatus.INTERRUPTED, owner_lives=owner_lives
    )
    first = await state_store.acquire_lease(owner(uid, "first"), LIVE_TTL)
    await state_store.claim(record.execution_id, first)
    claimed = await state_store.get_execution(record.execution_id)
    second = await state_store.acquire_lease(owner(uid, "second"), LIVE_TTL)

    for takeover in (False, True):
        with pytest.raises(OwnerAlive) as caught:
            await state_store.claim(record.execution_id, second, takeover=takeover)
        assert caught.value.owner == first.info.describe()
    assert await state_store.get_execution(record.execution_id) == claimed


async def test_claim_of_a_failed_execution_needs_no_dead_owner(
    state_store: StateStore, uid: str
) -> None:
    """An ended execution is resumable even while the process that ran it lives on."""
    first = await state_store.acquire_lease(owner(uid, "first"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e", status=ExecutionStatus.FAILED), first)
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, taker)

    assert claim == Claim(previous_owner=first.info.owner, takeover=False, takeovers=0)


async def test_claim_of_an_unowned_running_execution_is_no_takeover(
    state_store: StateStore, uid: str
) -> None:
    """A running execution no lease ever owned (written without a fence) is claimed with no
    previous owner and no takeover."""
    record = await started(state_store, execution(uid, "e"), None)
    assert await orphan_ids(state_store, uid) == [record.execution_id]
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, taker)

    assert claim == Claim(previous_owner=None, takeover=False, takeovers=0)
    assert (await state_store.get_execution(record.execution_id)).owner == taker.info.owner


async def test_claim_by_its_own_owner_changes_nothing(state_store: StateStore, uid: str) -> None:
    """The owner claiming its own execution gets it back as it is: no takeover."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)
    before = await state_store.get_execution(record.execution_id)

    claim = await state_store.claim(record.execution_id, lease)

    assert claim == Claim(previous_owner=lease.info.owner, takeover=False, takeovers=0)
    assert await state_store.get_execution(record.execution_id) == before


async def test_claim_by_its_own_owner_of_its_interrupted_execution_makes_it_running(
    state_store: StateStore, uid: str
) -> None:
    """An owner resuming the execution it interrupted, under the same lease, gets it back
    running (no takeover), like any other claimer."""
    record, lease = await stopped(
        state_store, uid, "e", ExecutionStatus.INTERRUPTED, owner_lives=True
    )

    claim = await state_store.claim(record.execution_id, lease, takeover=True)

    assert claim == Claim(previous_owner=lease.info.owner, takeover=False, takeovers=0)
    stored = await state_store.get_execution(record.execution_id)
    assert (stored.status, stored.owner, stored.epoch) == (
        ExecutionStatus.RUNNING,
        lease.info.owner,
        lease.epoch,
    )
    assert await listed_with_status(state_store, uid, ExecutionStatus.INTERRUPTED) == []


@pytest.mark.parametrize("takeover", [False, True])
async def test_claim_of_a_live_owners_running_execution_raises_owner_alive(
    state_store: StateStore, uid: str, takeover: bool
) -> None:
    """A running execution whose owner is live cannot be claimed: OwnerAlive names the
    execution and the owner (id, kind, pid and host), and the record is unchanged."""
    running = owner(uid, "runner")
    lease = await state_store.acquire_lease(running, LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)
    before = await state_store.get_execution(record.execution_id)
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    with pytest.raises(OwnerAlive) as caught:
        await state_store.claim(record.execution_id, taker, takeover=takeover)

    assert caught.value.execution_id == record.execution_id
    assert caught.value.owner == running.describe()
    assert await state_store.get_execution(record.execution_id) == before


async def test_claim_of_a_completed_execution_is_invalid_request(
    state_store: StateStore, uid: str
) -> None:
    """A completed execution has nothing left to run: claiming it is an InvalidRequest
    naming the execution_id field."""
    record = await orphan(state_store, uid, "e", status=ExecutionStatus.COMPLETED)
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    with pytest.raises(InvalidRequest) as caught:
        await state_store.claim(record.execution_id, taker)
    assert caught.value.field == "execution_id"
    assert record.execution_id in str(caught.value)


@pytest.mark.parametrize(
    "status",
    [
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.HALTED,
        ExecutionStatus.CANCELLED,
    ],
)
async def test_a_takeover_claim_of_an_ended_execution_is_invalid_request(
    state_store: StateStore, uid: str, status: ExecutionStatus
) -> None:
    """A takeover claims only an unfinished execution: one that ended (however) is an
    InvalidRequest naming the execution_id field, the execution and its status, and nothing
    changes (owner, epoch, status, its status listing)."""
    record, _ = await stopped(state_store, uid, "e", status, owner_lives=False)
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)
    before = await history(state_store, record.execution_id)

    with pytest.raises(InvalidRequest) as caught:
        await state_store.claim(record.execution_id, taker, takeover=True)

    assert caught.value.field == "execution_id"
    assert caught.value.expected == "an unfinished execution (running or interrupted)"
    assert f"{record.execution_id} ({status.value})" in str(caught.value)
    assert await history(state_store, record.execution_id) == before
    assert await listed_with_status(state_store, uid, status) == [record.execution_id]


async def test_claim_of_an_unknown_execution_raises_not_found(
    state_store: StateStore, uid: str
) -> None:
    """Claiming an id never written raises ExecutionNotFound naming it."""
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)
    with pytest.raises(ExecutionNotFound) as caught:
        await state_store.claim(f"{uid}-missing", taker)
    assert caught.value.execution_id == f"{uid}-missing"


async def test_claim_with_a_lease_that_is_not_live_raises_lease_lost(
    state_store: StateStore, uid: str
) -> None:
    """A released lease claims nothing: LeaseLost, and the orphan stays an orphan."""
    record = await orphan(state_store, uid, "e")
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)
    await state_store.release_lease(taker)

    with pytest.raises(LeaseLost) as caught:
        await state_store.claim(record.execution_id, taker)
    assert (caught.value.owner, caught.value.epoch) == (taker.info.owner, taker.epoch)
    assert await orphan_ids(state_store, uid) == [record.execution_id]


@pytest.mark.parametrize(
    ("status", "owner_lives"),
    [
        (ExecutionStatus.RUNNING, False),
        (ExecutionStatus.INTERRUPTED, False),
        (ExecutionStatus.INTERRUPTED, True),
    ],
)
async def test_of_two_concurrent_claims_exactly_one_wins(
    state_store: StateStore, uid: str, status: ExecutionStatus, owner_lives: bool
) -> None:
    """Two owners claiming the same orphan (running with a dead owner, interrupted with a
    dead or a live one) at once, as takeovers or not: one gets it, the other OwnerAlive
    naming the winner, and the record names the winner, running."""
    first = await state_store.acquire_lease(owner(uid, "first"), LIVE_TTL)
    second = await state_store.acquire_lease(owner(uid, "second"), LIVE_TTL)
    for trial in range(8):
        previous = await state_store.acquire_lease(owner(uid, f"previous{trial}"), LIVE_TTL)
        record = await started(state_store, execution(uid, f"e{trial}", status=status), previous)
        if not owner_lives:
            await state_store.release_lease(previous)
        leases = (first, second) if trial % 2 else (second, first)

        outcomes = await asyncio.gather(
            *(
                state_store.claim(record.execution_id, lease, takeover=trial // 2 % 2 == 1)
                for lease in leases
            ),
            return_exceptions=True,
        )

        won = [lease for lease, o in zip(leases, outcomes, strict=True) if isinstance(o, Claim)]
        refused = [o for o in outcomes if isinstance(o, OwnerAlive)]
        assert len(won) == 1 and len(refused) == 1, outcomes
        assert refused[0].owner == won[0].info.describe()
        stored = await state_store.get_execution(record.execution_id)
        assert (stored.epoch, stored.status) == (won[0].epoch, ExecutionStatus.RUNNING)


# -- orphans ----------------------------------------------------------------------------


async def test_orphans_are_the_interrupted_and_the_running_without_a_live_owner(
    state_store: StateStore, uid: str
) -> None:
    """orphans lists the interrupted executions (whatever their owner) and the running ones
    whose owner is not live (or that never had one), oldest first, up to the limit; not
    ended ones nor those a live owner runs."""
    dead = await state_store.acquire_lease(owner(uid, "dead"), LIVE_TTL)
    live = await state_store.acquire_lease(owner(uid, "live"), LIVE_TTL)
    # Older than anything other tests write, so these come first even on a shared store.
    oldest = await started(state_store, execution(uid, "running", started_at=1.0), dead)
    interrupted = execution(uid, "interrupted", started_at=2.0, status=ExecutionStatus.INTERRUPTED)
    await started(state_store, interrupted, dead)
    unowned = await started(state_store, execution(uid, "unowned", started_at=3.0), None)
    stopped_live = execution(
        uid, "stopped-live", started_at=4.0, status=ExecutionStatus.INTERRUPTED
    )
    await started(state_store, stopped_live, live)
    await started(
        state_store, execution(uid, "failed", started_at=0.5, status=ExecutionStatus.FAILED), dead
    )
    await started(state_store, execution(uid, "alive", started_at=0.5), live)
    await state_store.release_lease(dead)

    assert await orphan_ids(state_store, uid) == [
        oldest.execution_id,
        interrupted.execution_id,
        unowned.execution_id,
        stopped_live.execution_id,
    ]
    first_two = await state_store.orphans(2)
    assert [r.execution_id for r in first_two] == [oldest.execution_id, interrupted.execution_id]
    assert not any(r.owner_live for r in first_two)


# -- cancellation -----------------------------------------------------------------------


async def test_cancel_of_a_live_owners_execution_comes_with_its_next_heartbeat_once(
    state_store: StateStore, uid: str
) -> None:
    """request_cancel of a live owner's executions returns them unchanged; the owner's next
    heartbeat carries their ids, and the one after that none."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    one = await started(state_store, execution(uid, "one"), lease)
    two = await started(state_store, execution(uid, "two"), lease)
    bystander = await state_store.acquire_lease(owner(uid, "b"), LIVE_TTL)
    before = await state_store.get_execution(one.execution_id)

    assert await state_store.request_cancel(one.execution_id) == before
    await state_store.request_cancel(two.execution_id)
    await state_store.request_cancel(one.execution_id)

    assert await state_store.renew_lease(bystander) == Heartbeat()
    heartbeat = await state_store.renew_lease(lease)
    assert set(heartbeat.cancel) == {one.execution_id, two.execution_id}
    assert await state_store.renew_lease(lease) == Heartbeat()
    assert await state_store.get_execution(one.execution_id) == before


@pytest.mark.parametrize(
    ("status", "owner_lives"),
    [
        (ExecutionStatus.RUNNING, False),
        (ExecutionStatus.INTERRUPTED, False),
        (ExecutionStatus.INTERRUPTED, True),
    ],
)
async def test_cancel_of_an_orphan_ends_it_cancelled(
    state_store: StateStore, uid: str, status: ExecutionStatus, owner_lives: bool
) -> None:
    """With no owner running it (a dead owner, or an interrupted execution) request_cancel
    ends the execution cancelled itself (with its finish time and why), it is no orphan any
    more, and the owner's heartbeat has nothing to deliver."""
    lease = await state_store.acquire_lease(owner(uid, "first"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e", status=status), lease)
    if not owner_lives:
        await state_store.release_lease(lease)

    cancelled = await state_store.request_cancel(record.execution_id)

    assert cancelled.status is ExecutionStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.error == "cancelled while no executor ran it"
    assert await state_store.get_execution(record.execution_id) == cancelled
    assert await orphan_ids(state_store, uid) == []
    if owner_lives:
        assert await state_store.renew_lease(lease) == Heartbeat()


@pytest.mark.parametrize("delivered", [False, True])
async def test_a_cancel_request_outlives_the_owner_it_was_asked_of(
    state_store: StateStore, uid: str, delivered: bool
) -> None:
    """A cancel asked of a live owner stays on the execution: when that owner dies (whether
    or not its heartbeat took the request), whoever claims the execution next is told
    (cancel_requested) so that it ends it cancelled; claims of other executions are not."""
    lease = await state_store.acquire_lease(owner(uid, "doomed"), LIVE_TTL)
    asked = await started(state_store, execution(uid, "asked"), lease)
    spared = await started(state_store, execution(uid, "spared"), lease)
    await state_store.request_cancel(asked.execution_id)
    if delivered:
        assert await state_store.renew_lease(lease) == Heartbeat(cancel=(asked.execution_id,))
    await state_store.release_lease(lease)
    taker = await state_store.acquire_lease(owner(uid, "taker"), LIVE_TTL)

    claim = await state_store.claim(asked.execution_id, taker, takeover=True)
    other = await state_store.claim(spared.execution_id, taker, takeover=True)

    assert claim == Claim(lease.info.owner, takeover=True, takeovers=1, cancel_requested=True)
    assert other == Claim(lease.info.owner, takeover=True, takeovers=1, cancel_requested=False)
    assert await state_store.renew_lease(taker) == Heartbeat()


async def test_a_cancel_asked_before_an_execution_ended_does_not_cancel_its_resume(
    state_store: StateStore, uid: str
) -> None:
    """A cancel asked of a running execution that then ended otherwise (failed before the
    owner saw it) is history: a later manual resume of it is not told to cancel."""
    lease = await state_store.acquire_lease(owner(uid, "owner"), LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), lease)
    await state_store.request_cancel(record.execution_id)
    await state_store.write(
        StateBatch(execution=ended(record, ExecutionStatus.FAILED), fence=lease.fence)
    )
    resumer = await state_store.acquire_lease(owner(uid, "resumer"), LIVE_TTL)

    claim = await state_store.claim(record.execution_id, resumer)

    assert claim.cancel_requested is False
    # Running again: a new cancel counts, as for any running execution.
    await state_store.request_cancel(record.execution_id)
    assert await state_store.renew_lease(resumer) == Heartbeat(cancel=(record.execution_id,))


async def test_an_owner_acquiring_again_keeps_its_pending_cancels(
    state_store: StateStore, uid: str
) -> None:
    """Cancels waiting for an owner's heartbeat survive that owner acquiring a new lease
    (a stall replaced its lease): the new lease's next renewal delivers them once, and
    reclaiming the execution says its cancel was requested."""
    name = owner(uid, "stalled")
    old = await state_store.acquire_lease(name, LIVE_TTL)
    record = await started(state_store, execution(uid, "e"), old)
    await state_store.request_cancel(record.execution_id)

    new = await state_store.acquire_lease(name, LIVE_TTL)

    assert await state_store.renew_lease(new) == Heartbeat(cancel=(record.execution_id,))
    assert await state_store.renew_lease(new) == Heartbeat()
    claim = await state_store.claim(record.execution_id, new)
    assert claim == Claim(name.owner, takeover=False, takeovers=0, cancel_requested=True)


async def test_cancel_of_an_ended_execution_changes_nothing(
    state_store: StateStore, uid: str
) -> None:
    """request_cancel of a completed execution returns it as it is and leaves it so."""
    lease = await state_store.acquire_lease(owner(uid, "a"), LIVE_TTL)
    record = await started(
        state_store, execution(uid, "e", status=ExecutionStatus.COMPLETED), lease
    )
    await state_store.release_lease(lease)
    before = await state_store.get_execution(record.execution_id)

    assert await state_store.request_cancel(record.execution_id) == before
    assert await state_store.get_execution(record.execution_id) == before


async def test_cancel_of_an_unknown_execution_raises_not_found(
    state_store: StateStore, uid: str
) -> None:
    """request_cancel of an id never written raises ExecutionNotFound naming it."""
    with pytest.raises(ExecutionNotFound) as caught:
        await state_store.request_cancel(f"{uid}-missing")
    assert caught.value.execution_id == f"{uid}-missing"
