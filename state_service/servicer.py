"""``tradeflow.state.v1.StateService`` over a :class:`~tradeflow.ports.StateStore`.

Requests become records here, and are rejected here when they cannot: every
``InvalidRequest`` names the request field by its path (``checkpoints[2].state``),
so a caller knows which value to fix. Every id must be well-formed and every
bound of :mod:`tradeflow.domain.limits` hold, a lease time and an orphan count too
(each store would otherwise meet a value it cannot use: a zero or an overflowing
``PEXPIRE``). Everything else is the store's business, the trading-state check of an
intent's ``guard`` too: a refusal is ``EmergencyHalted`` (``FAILED_PRECONDITION``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import grpc

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.errors import error_payload
from tradeflow.adapters.grpc.security import Policy, Rule
from tradeflow.adapters.grpc.state_client import GROUP_MAX
from tradeflow.domain.codec import MAX_EVENTS_PAGE
from tradeflow.domain.errors import InvalidRequest, TradeflowError
from tradeflow.domain.limits import (
    DEFINITION_MAX_BYTES,
    PAGE_MAX_BYTES,
    check_cursor,
    check_id,
    check_timestamp,
)
from tradeflow.domain.ownership import Lease, OwnerInfo
from tradeflow.domain.principals import Role
from tradeflow.domain.records import (
    PRUNE_LIMIT_DEFAULT,
    PRUNE_LIMIT_MAX,
    Checkpoint,
    Event,
    ExecutionRecord,
    StateBatch,
)
from tradeflow.ports import StateStore
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.state.v1 import state_service_pb2 as pb
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = [
    "ACCESS",
    "LEASE_TTL_MAX_MS",
    "LEASE_TTL_MIN_MS",
    "ORPHANS_DEFAULT",
    "ORPHANS_MAX",
    "SERVICE_NAME",
    "StateServicer",
]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["StateService"].full_name

_EXECUTORS: Final = Rule(frozenset({Role.EXECUTOR}))
_READERS: Final = Rule(frozenset({Role.EXECUTOR, Role.OPERATOR}))
ACCESS: Policy = {
    # Only executors write state: no one else can forge an execution or an order.
    **dict.fromkeys(
        (
            "WriteBatch",
            "WriteBatches",
            "AcquireLease",
            "RenewLease",
            "ReleaseLease",
            "ClaimExecution",
            "ListOrphans",
            "RequestCancel",
        ),
        _EXECUTORS,
    ),
    # Executions of every bot: executors and operators (bots read theirs through the
    # executor service, which checks they are theirs).
    **dict.fromkeys(
        (
            "GetExecution",
            "FindExecutionByRequestId",
            "ListExecutions",
            "GetCheckpoints",
            "ReadEvents",
            "GetLastSequence",
        ),
        _READERS,
    ),
    # Deleting history is an administrator's act (the service's own retention needs no call).
    "PruneExecutions": Rule(frozenset({Role.ADMIN})),
}
"""Who may call each method (see :mod:`tradeflow.adapters.grpc.security`)."""

LEASE_TTL_MIN_MS: Final = 100
"""Shortest lease a request may ask for: a heartbeat every third of it stays feasible."""
LEASE_TTL_MAX_MS: Final = 3_600_000
"""Longest lease (an hour): a dead owner's executions wait at most this for a takeover."""
ORPHANS_MAX: Final = 1000
ORPHANS_DEFAULT: Final = 100
"""Orphans a ``ListOrphans`` with ``limit`` 0 returns."""

M = TypeVar("M")
R = TypeVar("R")


class StateServicer(state_service_pb2_grpc.StateServiceServicer):
    """Translates each RPC to one call on ``store``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def WriteBatch(
        self, request: pb.WriteBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.WriteBatchResponse:
        if request.request_id:
            check_id("request_id", request.request_id)
        await self._store.write(_batch(request))
        return pb.WriteBatchResponse()

    async def WriteBatches(
        self, request: pb.WriteBatchesRequest, context: grpc.aio.ServicerContext
    ) -> pb.WriteBatchesResponse:
        if len(request.batches) > GROUP_MAX:
            raise InvalidRequest("batches", f"at most {GROUP_MAX} batches", len(request.batches))
        # A malformed batch, or a second one of an execution (the order of two in one call
        # would be the store's), is refused in its own outcome: the others (other
        # executions, grouped by the client) are written all the same.
        outcomes: list[TradeflowError | None] = [None] * len(request.batches)
        valid: list[tuple[int, StateBatch]] = []
        owners: set[str] = set()
        for index, batch in enumerate(request.batches):
            owner = _owner(batch)
            try:
                if owner in owners:
                    raise InvalidRequest(
                        "batches", "at most one batch per execution in a call", "a second one"
                    )
                valid.append((index, _grouped(batch)))
            except InvalidRequest as exc:
                outcomes[index] = exc
            if owner:
                owners.add(owner)
        written = await self._store.write_many([batch for _, batch in valid])
        for (index, _), error in zip(valid, written, strict=True):
            outcomes[index] = error
        return pb.WriteBatchesResponse(
            outcomes=[
                pb.BatchOutcome(error=b"" if error is None else error_payload(error))
                for error in outcomes
            ]
        )

    async def PruneExecutions(
        self, request: pb.PruneExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PruneExecutionsResponse:
        if not request.HasField("ended_before"):
            raise InvalidRequest("ended_before", "a timestamp", "unset")
        ended_before = wire.timestamp_from_proto(request.ended_before)
        check_timestamp("ended_before", ended_before)
        limit = wire.at_most("limit", request.limit, PRUNE_LIMIT_MAX) or PRUNE_LIMIT_DEFAULT
        report = await self._store.prune(ended_before, limit=limit)
        return pb.PruneExecutionsResponse(
            removed=report.removed, kept=report.kept, more=report.more
        )

    async def AcquireLease(
        self, request: pb.AcquireLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcquireLeaseResponse:
        info = wire.within("owner", _owner_info, request.owner)
        lease = await self._store.acquire_lease(info, _ttl(request.ttl_ms))
        return pb.AcquireLeaseResponse(epoch=lease.epoch)

    async def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewLeaseResponse:
        lease = _lease(request.fence, _ttl(request.ttl_ms))
        heartbeat = await self._store.renew_lease(lease)
        return pb.RenewLeaseResponse(cancel_execution_ids=heartbeat.cancel)

    async def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseLeaseResponse:
        await self._store.release_lease(_lease(request.fence))
        return pb.ReleaseLeaseResponse()

    async def ClaimExecution(
        self, request: pb.ClaimExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimExecutionResponse:
        execution_id = check_id("execution_id", request.execution_id)
        claim = await self._store.claim(
            execution_id, _lease(request.fence), takeover=request.takeover
        )
        return pb.ClaimExecutionResponse(
            previous_owner=claim.previous_owner,
            takeover=claim.takeover,
            takeovers=claim.takeovers,
            cancel_requested=claim.cancel_requested,
        )

    async def ListOrphans(
        self, request: pb.ListOrphansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOrphansResponse:
        limit = wire.at_most("limit", request.limit, ORPHANS_MAX) or ORPHANS_DEFAULT
        response = pb.ListOrphansResponse()
        size = 0
        # Bounded like a page of executions: the orphans left out are still orphans on
        # the next call (a claimed one no longer is).
        for record in await self._store.orphans(limit):
            item = wire.execution_record_to_proto(record)
            size += item.ByteSize()
            if size > PAGE_MAX_BYTES and response.executions:
                break
            response.executions.append(item)
        return response

    async def RequestCancel(
        self, request: pb.RequestCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestCancelResponse:
        record = await self._store.request_cancel(check_id("execution_id", request.execution_id))
        return pb.RequestCancelResponse(execution=wire.execution_record_to_proto(record))

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExecutionResponse:
        record = await self._store.get_execution(check_id("execution_id", request.execution_id))
        return pb.GetExecutionResponse(execution=wire.execution_record_to_proto(record))

    async def FindExecutionByRequestId(
        self, request: pb.FindExecutionByRequestIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindExecutionByRequestIdResponse:
        record = await self._store.find_by_request_id(check_id("request_id", request.request_id))
        if record is None:
            return pb.FindExecutionByRequestIdResponse()
        return pb.FindExecutionByRequestIdResponse(execution=wire.execution_record_to_proto(record))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        query = wire.within("query", wire.execution_query_from_proto, request.query)
        page = await self._store.list_executions(query)
        return pb.ListExecutionsResponse(page=wire.execution_page_to_proto(page))

    async def GetCheckpoints(
        self, request: pb.GetCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCheckpointsResponse:
        checkpoints = await self._store.get_checkpoints(
            check_id("execution_id", request.execution_id)
        )
        return pb.GetCheckpointsResponse(
            checkpoints=[wire.checkpoint_to_proto(c) for c in checkpoints.values()]
        )

    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReadEventsResponse:
        execution_id = _optional_id(request, "execution_id")
        limit = wire.at_most("limit", request.limit, MAX_EVENTS_PAGE) or MAX_EVENTS_PAGE
        after = check_cursor("after", request.after)
        history = await self._store.read_events(after=after, execution_id=execution_id, limit=limit)
        return wire.events_page_to_proto(history)

    async def GetLastSequence(
        self, request: pb.GetLastSequenceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLastSequenceResponse:
        sequence = await self._store.last_sequence(check_id("execution_id", request.execution_id))
        return pb.GetLastSequenceResponse(sequence=sequence)


def _owner_info(msg: pb.OwnerInfo) -> OwnerInfo:
    """Who asks for a lease: each text an id (shown to operators, and bounded)."""
    return OwnerInfo(
        check_id("owner", msg.owner),
        check_id("kind", msg.kind),
        check_id("host", msg.host),
        msg.pid,
    )


def _ttl(ttl_ms: int) -> float:
    """A request's lease time, in seconds."""
    if not LEASE_TTL_MIN_MS <= ttl_ms <= LEASE_TTL_MAX_MS:
        raise InvalidRequest(
            "ttl_ms", f"{LEASE_TTL_MIN_MS} .. {LEASE_TTL_MAX_MS} milliseconds", ttl_ms
        )
    return ttl_ms / 1000


def _lease(fence: pb.Fence, ttl: float = 0.0) -> Lease:
    """The lease a request's fence names (the store needs only its owner, epoch and
    ``ttl``); an unset fence fails on its owner."""
    owner, epoch = wire.fence_from_proto(fence)
    return Lease(OwnerInfo(owner, "", "", 0), epoch, ttl)


def _optional_id(msg: Any, field: str) -> str | None:
    """The id in an optional field (``None`` when unset); a set one must be well-formed."""
    return check_id(field, getattr(msg, field)) if msg.HasField(field) else None


def _each(
    path: str, msgs: Iterable[M], convert: Callable[[M, str], R], owner: str
) -> tuple[R, ...]:
    """``convert(msg, owner)`` of each message; an ``InvalidRequest`` names ``path[index]``."""
    parts = []
    # Paths are only built for an error: this runs for every checkpoint and event.
    for index, msg in enumerate(msgs):
        try:
            parts.append(convert(msg, owner))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{path}[{index}].{exc.field}", exc.expected, exc.found) from None
    return tuple(parts)


def _grouped(request: pb.WriteBatchRequest) -> StateBatch:
    """One batch of a ``WriteBatches`` call, checked as ``WriteBatch`` checks it."""
    if request.request_id:
        check_id("request_id", request.request_id)
    return _batch(request)


def _batch(request: pb.WriteBatchRequest) -> StateBatch:
    """The batch a request writes; every part must belong to one execution."""
    record = None
    if request.HasField("execution"):
        record = wire.within("execution", _record, request.execution)
    owner = _owner(request)
    return StateBatch(
        execution=record,
        checkpoints=_each("checkpoints", request.checkpoints, _checkpoint, owner),
        events=_each("events", request.events, _event, owner),
        fence=wire.fence_from_proto(request.fence) if request.HasField("fence") else None,
        guard=(
            wire.within("guard", wire.action_guard_from_proto, request.guard)
            if request.HasField("guard")
            else None
        ),
    )


def _record(msg: common_pb2.ExecutionRecord) -> ExecutionRecord:
    for field in ("execution_id", "workflow_id", "correlation_id"):
        check_id(field, getattr(msg, field))
    for field in ("bot_id", "strategy_id", "request_id"):
        _optional_id(msg, field)
    if not msg.HasField("started_at"):
        raise InvalidRequest("started_at", "a timestamp", "unset")
    _check_times(msg, "started_at", "finished_at")
    wire.bytes_at_most("definition_json", msg.definition_json, DEFINITION_MAX_BYTES)
    return wire.execution_record_from_proto(msg)


def _check_times(msg: Any, *fields: str) -> None:
    """Each set timestamp within TIMESTAMP_MIN .. TIMESTAMP_MAX: every store and the wire
    can hold it (a float near 2^63 seconds cannot be encoded back)."""
    for field in fields:
        if msg.HasField(field):
            check_timestamp(field, wire.timestamp_from_proto(getattr(msg, field)))


def _owner(request: pb.WriteBatchRequest) -> str:
    """The execution a batch belongs to: the record's, else the first one named."""
    if request.HasField("execution"):
        return request.execution.execution_id
    for checkpoint in request.checkpoints:
        return checkpoint.execution_id
    for event in request.events:
        if event.HasField("execution_id"):
            return event.execution_id
    return ""


def _same_execution(field: str, found: str, owner: str) -> None:
    if found != owner:
        raise InvalidRequest(field, f"the batch's execution {owner!r}", found)


def _checkpoint(msg: common_pb2.Checkpoint, owner: str) -> Checkpoint:
    check_id("execution_id", msg.execution_id)
    _same_execution("execution_id", msg.execution_id, owner)
    check_id("node_id", msg.node_id)
    _check_times(msg, "updated_at")
    return wire.checkpoint_from_proto(msg)


def _event(msg: common_pb2.Event, owner: str) -> Event:
    check_id("type", msg.type)
    check_id("event_id", msg.event_id)
    check_cursor("sequence", msg.sequence)
    _check_times(msg, "timestamp")
    for field in (
        "correlation_id",
        "execution_id",
        "workflow_id",
        "bot_id",
        "strategy_id",
        "node_id",
    ):
        _optional_id(msg, field)
    # An event about no execution (an emergency halt) may travel in any batch.
    if msg.HasField("execution_id"):
        _same_execution("execution_id", msg.execution_id, owner)
    return wire.event_from_proto(msg)
