"""``tradeflow.state.v1.StateService`` over a :class:`~tradeflow.ports.StateStore`.

Requests become records here, and are rejected here when they cannot: every
``InvalidRequest`` names the request field by its path (``checkpoints[2].state``),
so a caller knows which value to fix. Every id must be well-formed and every
bound of :mod:`tradeflow.domain.limits` hold. Everything else is the store's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import grpc

from tradeflow.adapters.grpc import wire
from tradeflow.domain.codec import MAX_EVENTS_PAGE
from tradeflow.domain.errors import InvalidRequest
from tradeflow.domain.limits import DEFINITION_MAX_BYTES, check_cursor, check_id, check_timestamp
from tradeflow.domain.records import Checkpoint, Event, ExecutionRecord, StateBatch
from tradeflow.ports import StateStore
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.state.v1 import state_service_pb2 as pb
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = ["SERVICE_NAME", "StateServicer"]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["StateService"].full_name

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
