"""The halt barrier over an in-memory lease registry: who counts as having acknowledged
a state version, and what happens to the leases of those who did not in time; and the
executor's side, what the emergency client acknowledges and when (over a fake stub)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from kit import DEADLINE_SECONDS

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import BarrierReport, InFlightAction
from tradeflow.domain.limits import REPORTED_IN_FLIGHT_MAX, TRACKED_OWNERS_MAX
from tradeflow.domain.ownership import Fence
from tradeflow.engine.barrier import HaltBarrier
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb

SHORT = 0.01
"""A deadline the silent executors of a test miss for certain (they never answer)."""
LONG = 3600.0
"""A deadline no test reaches: the barrier must return because every owner answered."""

A, B = Fence("exec-a", 3), Fence("exec-b", 1)
ORDER_A = InFlightAction("exec-a", "run-1", "buy", "co-1")
ORDER_B = InFlightAction("exec-b", "run-2", "sell", "co-2")


class FakeLeases:
    """A :class:`~tradeflow.ports.LeaseRegistry` in memory: owner -> live epoch. With
    ``lapse_when_listed``, every lease lapses right after it is listed."""

    def __init__(self, *fences: Fence, lapse_when_listed: bool = False) -> None:
        self.live = {fence.owner: fence.epoch for fence in fences}
        self.revoked: list[Fence] = []
        self.listed = asyncio.Event()
        self._lapse = lapse_when_listed

    async def live_leases(self) -> list[Fence]:
        self.listed.set()
        fences = [Fence(owner, epoch) for owner, epoch in self.live.items()]
        if self._lapse:
            self.live.clear()
        return fences

    async def revoke_lease(self, fence: Fence) -> bool:
        self.revoked.append(fence)
        if self.live.get(fence.owner) != fence.epoch:
            return False
        del self.live[fence.owner]
        return True


async def bounded_wait(barrier: HaltBarrier, version: int) -> BarrierReport:
    async with asyncio.timeout(DEADLINE_SECONDS):
        return await barrier.wait(version)


@pytest.mark.asyncio
async def test_acknowledgements_arriving_during_the_wait_end_it_before_the_deadline() -> None:
    """Both live owners acknowledge while the barrier waits: it returns without waiting out
    its (hour-long) deadline, lists both and their in-flight actions, revokes nothing."""
    leases = FakeLeases(A, B)
    barrier = HaltBarrier(leases, timeout=LONG)
    waiting = asyncio.create_task(bounded_wait(barrier, 7))
    async with asyncio.timeout(DEADLINE_SECONDS):
        await leases.listed.wait()

    barrier.acknowledge(A, 7, [ORDER_A])
    barrier.acknowledge(B, 8, [ORDER_B])
    report = await waiting

    assert report == BarrierReport(
        version=7,
        live=("exec-a", "exec-b"),
        acknowledged=("exec-a", "exec-b"),
        in_flight=(ORDER_A, ORDER_B),
        fenced=(),
    )
    assert leases.revoked == []


@pytest.mark.asyncio
async def test_an_acknowledgement_sent_before_the_wait_counts() -> None:
    """An executor fast enough to acknowledge before the barrier lists the leases is
    acknowledged, not fenced."""
    leases = FakeLeases(A)
    barrier = HaltBarrier(leases, timeout=LONG)
    barrier.acknowledge(A, 5, ())

    report = await bounded_wait(barrier, 5)

    assert (report.acknowledged, report.fenced) == (("exec-a",), ())


@pytest.mark.asyncio
async def test_a_silent_executor_is_fenced_and_loses_its_lease() -> None:
    """The owner that never acknowledges is named fenced and its lease revoked; the one
    that answered keeps its lease."""
    leases = FakeLeases(A, B)
    barrier = HaltBarrier(leases, timeout=SHORT)
    barrier.acknowledge(A, 2, [ORDER_A])

    report = await bounded_wait(barrier, 2)

    assert report.live == ("exec-a", "exec-b")
    assert (report.acknowledged, report.fenced, report.in_flight) == (
        ("exec-a",),
        ("exec-b",),
        (ORDER_A,),
    )
    assert leases.revoked == [B]
    assert leases.live == {"exec-a": 3}


@pytest.mark.asyncio
async def test_an_acknowledgement_after_the_deadline_does_not_undo_the_fence() -> None:
    """A late acknowledgement finds its lease already revoked: the report stands."""
    leases = FakeLeases(B)
    barrier = HaltBarrier(leases, timeout=SHORT)

    report = await bounded_wait(barrier, 4)
    barrier.acknowledge(B, 4, ())

    assert report.fenced == ("exec-b",)
    assert "exec-b" not in leases.live


@pytest.mark.asyncio
async def test_an_acknowledgement_of_an_older_version_does_not_count() -> None:
    """Having reached version 6 says nothing about version 7: the owner is fenced."""
    leases = FakeLeases(A)
    barrier = HaltBarrier(leases, timeout=SHORT)
    barrier.acknowledge(A, 6, [ORDER_A])

    report = await bounded_wait(barrier, 7)

    assert (report.acknowledged, report.fenced, report.in_flight) == ((), ("exec-a",), ())
    assert leases.revoked == [A]


@pytest.mark.asyncio
async def test_an_acknowledgement_under_another_epoch_does_not_count() -> None:
    """An acknowledgement made under the owner's previous lease (epoch 2) does not vouch
    for its live one (epoch 3)."""
    leases = FakeLeases(A)
    barrier = HaltBarrier(leases, timeout=SHORT)
    barrier.acknowledge(Fence("exec-a", 2), 9, ())

    report = await bounded_wait(barrier, 9)

    assert report.fenced == ("exec-a",)
    assert leases.revoked == [A]


@pytest.mark.asyncio
async def test_the_latest_acknowledgement_of_an_owner_replaces_the_earlier_one() -> None:
    """An owner's new acknowledgement (here under a new lease) replaces its last one,
    in-flight actions included."""
    leases = FakeLeases(A)
    barrier = HaltBarrier(leases, timeout=LONG)
    barrier.acknowledge(Fence("exec-a", 2), 1, [ORDER_A])
    barrier.acknowledge(A, 1, ())

    report = await bounded_wait(barrier, 1)

    assert (report.acknowledged, report.in_flight) == (("exec-a",), ())


@pytest.mark.asyncio
async def test_no_live_lease_means_nothing_to_wait_for() -> None:
    """With no executor holding a lease the barrier returns at once, with an empty report."""
    report = await bounded_wait(HaltBarrier(FakeLeases(), timeout=LONG), 3)

    assert report == BarrierReport(version=3)


@pytest.mark.asyncio
async def test_a_lease_that_ended_on_its_own_is_still_named_fenced() -> None:
    """An owner whose lease lapsed between the listing and the revoke (revoke answers
    False) is named: it did not answer and writes no more either way."""
    leases = FakeLeases(B, lapse_when_listed=True)
    barrier = HaltBarrier(leases, timeout=SHORT)

    report = await bounded_wait(barrier, 1)

    assert report.fenced == ("exec-b",)
    assert leases.revoked == [B]


@pytest.mark.asyncio
async def test_the_reported_in_flight_actions_are_bounded() -> None:
    """However much the executors report, one report lists at most REPORTED_IN_FLIGHT_MAX
    actions."""
    owners = [Fence(f"exec-{n}", 1) for n in range(6)]
    leases = FakeLeases(*owners)
    barrier = HaltBarrier(leases, timeout=LONG)
    for fence in owners:
        actions = [InFlightAction(fence.owner, f"run-{i}", "buy", f"co-{i}") for i in range(1000)]
        barrier.acknowledge(fence, 1, actions)

    report = await bounded_wait(barrier, 1)

    assert len(report.acknowledged) == 6
    assert len(report.in_flight) == REPORTED_IN_FLIGHT_MAX


@pytest.mark.asyncio
async def test_the_oldest_acknowledgements_are_forgotten_past_the_bound() -> None:
    """Past TRACKED_OWNERS_MAX owners, the one that acknowledged longest ago is forgotten
    (and would be fenced); a newer one still counts."""
    leases = FakeLeases(A, B)
    barrier = HaltBarrier(leases, timeout=SHORT)
    barrier.acknowledge(A, 1, ())
    barrier.acknowledge(B, 1, ())
    for n in range(TRACKED_OWNERS_MAX - 1):
        barrier.acknowledge(Fence(f"other-{n}", 1), 1, ())

    report = await bounded_wait(barrier, 1)

    assert (report.acknowledged, report.fenced) == (("exec-b",), ("exec-a",))


# -- the executor's side: what RemoteEmergencyControl acknowledges, and when --------------


class FakeWatch:
    """A ``WatchState`` stream the test feeds snapshots into."""

    def __init__(self) -> None:
        self.snapshots: asyncio.Queue[pb.WatchStateResponse] = asyncio.Queue()

    async def read(self) -> pb.WatchStateResponse:
        return await self.snapshots.get()

    def cancel(self) -> None:
        pass

    def send(self, version: int) -> None:
        self.snapshots.put_nowait(pb.WatchStateResponse(state=pb.EmergencyState(version=version)))


class FakeStub:
    """The emergency service as the client sees it: one watch stream, and every
    ``AcknowledgeState`` request recorded; ``answer`` (set) lets them return, ``fail``
    makes the next one fail UNAVAILABLE."""

    def __init__(self) -> None:
        self.watch = FakeWatch()
        self.acks: asyncio.Queue[pb.AcknowledgeStateRequest] = asyncio.Queue()
        self.answer = asyncio.Event()
        self.answer.set()
        self.fail = False

    def WatchState(self, request: pb.WatchStateRequest) -> FakeWatch:
        return self.watch

    async def AcknowledgeState(
        self, request: pb.AcknowledgeStateRequest, **_: object
    ) -> pb.AcknowledgeStateResponse:
        self.acks.put_nowait(request)
        await self.answer.wait()
        if self.fail:
            self.fail = False
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        return pb.AcknowledgeStateResponse()

    async def next_ack(self) -> tuple[str, int, int, int]:
        """(owner, epoch, version, in-flight count) of the next acknowledgement sent."""
        async with asyncio.timeout(DEADLINE_SECONDS):
            ack = await self.acks.get()
        return ack.owner, ack.epoch, ack.version, len(ack.in_flight)


@pytest_asyncio.fixture
async def followed() -> AsyncIterator[tuple[RemoteEmergencyControl, FakeStub]]:
    """A client following a fake service (its stub swapped before it starts)."""
    client = RemoteEmergencyControl(
        grpc.aio.insecure_channel("127.0.0.1:1"),
        max_staleness=LONG,
        clock=SystemClock(),
        id_factory=new_id,
    )
    stub = FakeStub()
    client._stub = stub  # type: ignore[assignment]  # the one seam a unit test needs
    client.start()
    yield client, stub
    await client.close()


async def view_at(client: RemoteEmergencyControl, version: int) -> None:
    async with asyncio.timeout(DEADLINE_SECONDS):
        await client.wait_for_version(version)


@pytest.mark.asyncio
async def test_an_executor_acknowledges_once_it_holds_a_lease_and_each_new_version_once(
    followed: tuple[RemoteEmergencyControl, FakeStub],
) -> None:
    """Nothing is acknowledged without a lease; once one is held the next snapshot (even
    a heartbeat) is, with the in-flight actions; a heartbeat of an acknowledged version
    is not, a new version is."""
    client, stub = followed
    held: list[tuple[Fence, tuple[InFlightAction, ...]]] = []
    client.acknowledge_with(lambda: held[-1] if held else None)
    stub.watch.send(1)
    await view_at(client, 1)

    held.append((A, (ORDER_A,)))
    stub.watch.send(1)
    assert await stub.next_ack() == ("exec-a", 3, 1, 1)

    stub.watch.send(1)
    stub.watch.send(2)
    assert await stub.next_ack() == ("exec-a", 3, 2, 1)


@pytest.mark.asyncio
async def test_acknowledgements_never_pile_up_the_latest_version_wins(
    followed: tuple[RemoteEmergencyControl, FakeStub],
) -> None:
    """While one acknowledgement is unanswered the view moves on through three versions:
    the next one sent is for the latest, the ones in between are never sent."""
    client, stub = followed
    client.acknowledge_with(lambda: (A, ()))
    stub.answer.clear()
    stub.watch.send(1)
    assert await stub.next_ack() == ("exec-a", 3, 1, 0)

    for version in (2, 3, 4):
        stub.watch.send(version)
    await view_at(client, 4)
    stub.answer.set()

    assert await stub.next_ack() == ("exec-a", 3, 4, 0)
    stub.watch.send(5)
    assert await stub.next_ack() == ("exec-a", 3, 5, 0)


@pytest.mark.asyncio
async def test_a_failed_acknowledgement_is_sent_again_and_the_view_stays_up(
    followed: tuple[RemoteEmergencyControl, FakeStub],
) -> None:
    """An acknowledgement that fails is only logged: the view keeps following, and the
    next snapshot of the same version sends it again."""
    client, stub = followed
    client.acknowledge_with(lambda: (A, ()))
    stub.fail = True
    stub.watch.send(1)
    assert await stub.next_ack() == ("exec-a", 3, 1, 0)

    stub.watch.send(1)
    assert await stub.next_ack() == ("exec-a", 3, 1, 0)
    assert client.available


@pytest.mark.asyncio
async def test_a_new_lease_acknowledges_the_same_version_again(
    followed: tuple[RemoteEmergencyControl, FakeStub],
) -> None:
    """An acknowledgement under the lost lease does not vouch for the new one: the next
    snapshot, same version, is acknowledged under the new epoch."""
    client, stub = followed
    fence = [Fence("exec-a", 3)]
    client.acknowledge_with(lambda: (fence[0], ()))
    stub.watch.send(7)
    assert await stub.next_ack() == ("exec-a", 3, 7, 0)

    fence[0] = Fence("exec-a", 4)
    stub.watch.send(7)
    assert await stub.next_ack() == ("exec-a", 4, 7, 0)


@pytest.mark.asyncio
async def test_an_acknowledgement_of_another_epoch_never_masks_the_current_one() -> None:
    """Only a newer acknowledgement of the same lease wins over an older one: an
    acknowledgement claiming a huge epoch (forged, or of a lease long gone) is replaced by
    the owner's next real one, which the barrier then counts."""
    fence = Fence("exec-a", 3)
    barrier = HaltBarrier(FakeLeases(fence), timeout=LONG)
    barrier.acknowledge(Fence("exec-a", 10**9), 10**9, ())
    barrier.acknowledge(fence, 5, (ORDER_A,))
    barrier.acknowledge(fence, 4, ())  # relayed late: older, same lease
    report = await bounded_wait(barrier, 5)
    assert (report.acknowledged, report.in_flight, report.fenced) == (("exec-a",), (ORDER_A,), ())
