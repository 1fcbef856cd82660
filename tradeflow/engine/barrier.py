"""The halt barrier: a change that restricts trading returns only once every live
executor enforces it, or has lost its lease.

Executors acknowledge each emergency state version their local view reached
(:meth:`HaltBarrier.acknowledge`, with the lease they hold and the actions they have in
flight). After a halt is committed, :meth:`HaltBarrier.wait` lists the live leases and
waits until each one's owner acknowledged that version (or a later one) under that
lease's epoch. An owner that did not within the deadline has its lease revoked: its
next write or renewal raises ``LeaseLost`` and its executions go to other owners, so
nothing it was about to do commits. The :class:`~tradeflow.domain.emergency.BarrierReport`
says who was live, who acknowledged, what they had in flight and who was fenced.

Waiting is event-driven (each acknowledgement wakes the waiters), never a poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from tradeflow.domain.emergency import BarrierReport, InFlightAction
from tradeflow.domain.limits import REPORTED_IN_FLIGHT_MAX, TRACKED_OWNERS_MAX
from tradeflow.domain.ownership import Fence
from tradeflow.ports import LeaseRegistry

__all__ = ["HaltBarrier"]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Ack:
    epoch: int
    version: int
    in_flight: tuple[InFlightAction, ...]


class HaltBarrier:
    """Acknowledgements of emergency state versions, and the wait for them over
    ``leases`` (``timeout``: the deadline, in seconds, for every live owner to answer).

    Each owner's latest acknowledgement is kept (one executor sends them one at a time,
    so the latest to arrive is its newest). Use it from one event loop.
    """

    __slots__ = ("_acks", "_changed", "_leases", "_timeout")

    def __init__(self, leases: LeaseRegistry, *, timeout: float) -> None:
        self._leases = leases
        self._timeout = timeout
        self._acks: dict[str, _Ack] = {}
        self._changed = asyncio.Event()

    def acknowledge(self, fence: Fence, version: int, in_flight: Sequence[InFlightAction]) -> None:
        """The owner of ``fence`` enforces state ``version``; ``in_flight`` are its actions
        whose intent is committed and whose outcome is not recorded yet."""
        owner, epoch = fence
        acks = self._acks
        known = acks.get(owner)
        if known is not None and known.epoch == epoch and known.version > version:
            return  # relayed late, after a newer one of the same lease: nothing new
        acks.pop(owner, None)  # re-inserted last: the oldest is what the bound drops
        acks[owner] = _Ack(epoch, version, tuple(in_flight))
        while len(acks) > TRACKED_OWNERS_MAX:
            del acks[next(iter(acks))]
        waking, self._changed = self._changed, asyncio.Event()
        waking.set()

    async def wait(self, version: int) -> BarrierReport:
        """Wait until every lease live now is acknowledged at ``version`` or later under
        its epoch, or the deadline passed; revoke the leases of those that did not.
        Raises ``UnavailableError`` when the leases cannot be listed."""
        live = sorted(await self._leases.live_leases())
        pending = {fence.owner: fence for fence in live}
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    changed = self._changed
                    pending = {
                        owner: fence
                        for owner, fence in pending.items()
                        if not self._acknowledged(fence, version)
                    }
                    if not pending:
                        break
                    await changed.wait()
        except TimeoutError:
            pass
        acknowledged = tuple(fence.owner for fence in live if fence.owner not in pending)
        # Read before revoking: an acknowledgement arriving meanwhile must not change it.
        in_flight = self._in_flight(acknowledged, version)
        late = list(pending.values())
        revoked = await asyncio.gather(*(self._leases.revoke_lease(fence) for fence in late))
        for fence, done in zip(late, revoked, strict=True):
            # False: the lease ended on its own meanwhile; either way it writes no more.
            _log.warning(
                "emergency.barrier_fenced",
                owner=fence.owner,
                epoch=fence.epoch,
                version=version,
                revoked=done,
            )
        return BarrierReport(
            version=version,
            live=tuple(fence.owner for fence in live),
            acknowledged=acknowledged,
            in_flight=in_flight,
            fenced=tuple(fence.owner for fence in late),
        )

    def _acknowledged(self, fence: Fence, version: int) -> bool:
        ack = self._acks.get(fence.owner)
        return ack is not None and ack.epoch == fence.epoch and ack.version >= version

    def _in_flight(self, owners: Sequence[str], version: int) -> tuple[InFlightAction, ...]:
        """What ``owners`` last reported in flight, at most :data:`REPORTED_IN_FLIGHT_MAX`
        (an owner the bound on tracked owners forgot meanwhile reports nothing)."""
        acks = (self._acks.get(owner) for owner in owners)
        actions = [action for ack in acks if ack is not None for action in ack.in_flight]
        if len(actions) > REPORTED_IN_FLIGHT_MAX:
            _log.warning(
                "emergency.barrier_in_flight_cut",
                version=version,
                reported=REPORTED_IN_FLIGHT_MAX,
                in_flight=len(actions),
            )
        return tuple(actions[:REPORTED_IN_FLIGHT_MAX])
