"""The :class:`~tradeflow.ports.StateStore` port over the state service.

An executor given a :class:`StateClient` instead of the SQLite store runs
unchanged: every method is one RPC (``read_events`` pages when asked for more
than one page, ``prune`` is one call per chunk) and failures arrive as the domain
errors the service raised, or ``UnavailableError`` when it cannot be reached.

Writes are group-committed: :meth:`StateClient.write` sends its batch at once when
no write is in flight, and otherwise with every batch that arrived meanwhile, in the
next ``WriteBatches`` call (one outcome per batch). One client alone pays one call per
write, as before; sixteen concurrent executions share calls instead of queueing for
sixteen. A call holds at most one batch per execution: a second one (its journal writes
one batch at a time, but a writer cancelled while its batch waits, a drain say, may
write its "interrupted" mark meanwhile) waits for the next call, so an execution's
batches are written in the order they were handed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.client import call, open_channel
from tradeflow.adapters.grpc.errors import error_from_payload
from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.domain.codec import MAX_EVENTS_PAGE, MAX_PAGE_SIZE
from tradeflow.domain.errors import TradeflowError
from tradeflow.domain.ownership import Claim, Heartbeat, Lease, OwnerInfo
from tradeflow.domain.records import (
    PRUNE_LIMIT_DEFAULT,
    PRUNE_LIMIT_MAX,
    Checkpoint,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    PruneReport,
    StateBatch,
)
from tradeflow.proto.state.v1 import state_service_pb2 as pb
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = ["StateClient"]

_SERVICE: Final = "state"
_ORPHANS_MAX: Final = 1000
"""The most orphans one ``ListOrphans`` returns (the service refuses more)."""
_UINT32_MAX: Final = 0xFFFF_FFFF
GROUP_MAX: Final = 256
"""The most batches one ``WriteBatches`` call carries (the service refuses more)."""


class StateClient:
    """A state store in the state service at ``address`` (``host:port``).

    The channel connects lazily: constructing a client never fails, its first
    call raises ``UnavailableError`` if the service is not there. ``timeout``
    bounds every call, in seconds; ``security`` is this process's certificate (mutual
    TLS) or none (plaintext).
    """

    __slots__ = ("_channel", "_committer", "_pending", "_stub", "_timeout")

    def __init__(
        self, address: str, *, timeout: float = 10.0, security: TransportSecurity = PLAINTEXT
    ) -> None:
        self._channel = open_channel(address, security=security)
        self._stub = state_service_pb2_grpc.StateServiceStub(self._channel)
        self._timeout = timeout
        self._pending: list[tuple[StateBatch, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def _call(self, method: Any, request: Any) -> Any:
        return await call(method, request, service=_SERVICE, deadline=self._timeout)

    async def write(self, batch: StateBatch) -> None:
        """The batch, fence and guard included, in the next group commit: the service's
        store checks both in the step that commits it (``LeaseLost``, ``EmergencyHalted``).
        Cancelling the caller does not withdraw a batch already handed over (as a call
        cancelled in flight may have been written)."""
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, written))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit())
        await written

    async def _commit(self) -> None:
        """Send what is pending, call after call, until nothing is (one call in flight)."""
        try:
            while self._pending:
                group = self._next_group()
                try:
                    outcomes = await self.write_many([batch for batch, _ in group])
                except Exception as exc:  # every writer of the group gets the call's error
                    for _, written in group:
                        if not written.done():
                            written.set_exception(exc)
                    continue
                except BaseException:  # this task is cancelled (shutdown): so are the writers
                    for _, written in (*group, *self._pending):
                        written.cancel()
                    self._pending.clear()
                    raise
                for (_, written), error in zip(group, outcomes, strict=True):
                    if written.done():  # its writer was cancelled meanwhile
                        continue
                    if error is None:
                        written.set_result(None)
                    else:
                        written.set_exception(error)
        finally:
            self._committer = None

    def _next_group(self) -> list[tuple[StateBatch, asyncio.Future[None]]]:
        """Take the pending batches of the next call: in order, at most :data:`GROUP_MAX`,
        one per execution (a later batch of an execution already taken stays pending, and
        so does everything of that execution behind it)."""
        group: list[tuple[StateBatch, asyncio.Future[None]]] = []
        rest: list[tuple[StateBatch, asyncio.Future[None]]] = []
        taken: set[str] = set()
        for pending in self._pending:
            execution_id = _execution_of(pending[0])
            if len(group) < GROUP_MAX and (execution_id is None or execution_id not in taken):
                group.append(pending)
            else:
                rest.append(pending)
            if execution_id is not None:
                taken.add(execution_id)
        self._pending = rest
        return group

    async def write_many(self, batches: Sequence[StateBatch]) -> list[TradeflowError | None]:
        """One ``WriteBatches`` call (at most :data:`GROUP_MAX` batches)."""
        response: pb.WriteBatchesResponse = await self._call(
            self._stub.WriteBatches,
            pb.WriteBatchesRequest(batches=[wire.state_batch_to_proto(b) for b in batches]),
        )
        if len(response.outcomes) != len(batches):
            raise TradeflowError(
                f"state service answered {len(response.outcomes)} outcomes for "
                f"{len(batches)} batches"
            )
        return [
            error_from_payload(outcome.error) if outcome.error else None
            for outcome in response.outcomes
        ]

    async def prune(self, ended_before: float, *, limit: int = PRUNE_LIMIT_DEFAULT) -> PruneReport:
        response: pb.PruneExecutionsResponse = await self._call(
            self._stub.PruneExecutions,
            pb.PruneExecutionsRequest(
                ended_before=wire.timestamp_to_proto(ended_before),
                limit=max(0, min(limit, PRUNE_LIMIT_MAX)),
            ),
        )
        return PruneReport(int(response.removed), int(response.kept), response.more)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        response: pb.GetExecutionResponse = await self._call(
            self._stub.GetExecution, pb.GetExecutionRequest(execution_id=execution_id)
        )
        return wire.execution_record_from_proto(response.execution)

    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        response: pb.FindExecutionByRequestIdResponse = await self._call(
            self._stub.FindExecutionByRequestId,
            pb.FindExecutionByRequestIdRequest(request_id=request_id),
        )
        if not response.HasField("execution"):
            return None
        return wire.execution_record_from_proto(response.execution)

    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
        # Clamped here as the stores do: the service refuses a page_size it cannot serve.
        query = replace(query, limit=max(1, min(query.limit, MAX_PAGE_SIZE)))
        response: pb.ListExecutionsResponse = await self._call(
            self._stub.ListExecutions,
            pb.ListExecutionsRequest(query=wire.execution_query_to_proto(query)),
        )
        return wire.execution_page_from_proto(response.page)

    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        response: pb.GetCheckpointsResponse = await self._call(
            self._stub.GetCheckpoints, pb.GetCheckpointsRequest(execution_id=execution_id)
        )
        checkpoints = map(wire.checkpoint_from_proto, response.checkpoints)
        return {checkpoint.node_id: checkpoint for checkpoint in checkpoints}

    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = MAX_EVENTS_PAGE
    ) -> Sequence[tuple[int, Event]]:
        """Unlike the stores, returns up to ``limit`` (at least 1) events: one call per
        :data:`MAX_EVENTS_PAGE`."""
        wanted = max(1, limit)
        cursor = max(0, after)
        history: list[tuple[int, Event]] = []
        while True:
            size = min(wanted - len(history), MAX_EVENTS_PAGE)
            response: pb.ReadEventsResponse = await self._call(
                self._stub.ReadEvents,
                pb.ReadEventsRequest(after=cursor, execution_id=execution_id, limit=size),
            )
            history.extend(map(wire.history_event_from_proto, response.events))
            if len(response.events) < size or len(history) >= wanted:
                return history
            cursor = history[-1][0]

    async def last_sequence(self, execution_id: str) -> int:
        response: pb.GetLastSequenceResponse = await self._call(
            self._stub.GetLastSequence, pb.GetLastSequenceRequest(execution_id=execution_id)
        )
        return int(response.sequence)

    async def acquire_lease(self, info: OwnerInfo, ttl: float) -> Lease:
        """``ttl`` travels in whole milliseconds; the service refuses one outside 0.1 s .. 1 h."""
        owner = pb.OwnerInfo(owner=info.owner, kind=info.kind, host=info.host, pid=info.pid)
        response: pb.AcquireLeaseResponse = await self._call(
            self._stub.AcquireLease, pb.AcquireLeaseRequest(owner=owner, ttl_ms=_ms(ttl))
        )
        return Lease(info, int(response.epoch), ttl)

    async def renew_lease(self, lease: Lease) -> Heartbeat:
        response: pb.RenewLeaseResponse = await self._call(
            self._stub.RenewLease,
            pb.RenewLeaseRequest(fence=wire.fence_to_proto(lease.fence), ttl_ms=_ms(lease.ttl)),
        )
        return Heartbeat(tuple(response.cancel_execution_ids))

    async def release_lease(self, lease: Lease) -> None:
        await self._call(
            self._stub.ReleaseLease, pb.ReleaseLeaseRequest(fence=wire.fence_to_proto(lease.fence))
        )

    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        response: pb.ClaimExecutionResponse = await self._call(
            self._stub.ClaimExecution,
            pb.ClaimExecutionRequest(
                execution_id=execution_id, fence=wire.fence_to_proto(lease.fence), takeover=takeover
            ),
        )
        previous = response.previous_owner if response.HasField("previous_owner") else None
        return Claim(previous, response.takeover, response.takeovers, response.cancel_requested)

    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        """At most 1000 (one call; the service may return fewer to bound its answer)."""
        if limit <= 0:
            return []
        response: pb.ListOrphansResponse = await self._call(
            self._stub.ListOrphans, pb.ListOrphansRequest(limit=min(limit, _ORPHANS_MAX))
        )
        return [wire.execution_record_from_proto(record) for record in response.executions]

    async def request_cancel(self, execution_id: str) -> ExecutionRecord:
        response: pb.RequestCancelResponse = await self._call(
            self._stub.RequestCancel, pb.RequestCancelRequest(execution_id=execution_id)
        )
        return wire.execution_record_from_proto(response.execution)

    async def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        await self._channel.close()


def _execution_of(batch: StateBatch) -> str | None:
    """The execution a batch writes (every part of a batch is one execution's)."""
    if batch.execution is not None:
        return batch.execution.execution_id
    if batch.checkpoints:
        return batch.checkpoints[0].execution_id
    return next((e.execution_id for e in batch.events if e.execution_id is not None), None)


def _ms(seconds: float) -> int:
    """A lease time as the wire carries it (whole milliseconds within a uint32: the service
    refuses one out of its range by name)."""
    return min(max(0, round(seconds * 1000)), _UINT32_MAX)
