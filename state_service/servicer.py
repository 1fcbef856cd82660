"""``tradeflow.state.v1.StateService`` over a :class:`~tradeflow.ports.StateStore`.

Requests become records here, and are rejected here when they cannot: every
``InvalidRequest`` names the request field by its path (``checkpoints[2].state``),
so a caller knows which value to fix. Everything else is the store's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

import grpc

from tradeflow.adapters.grpc import wire
from tradeflow.domain.codec import MAX_EVENTS_PAGE, MAX_PAGE_SIZE
from tradeflow.domain.errors import InvalidRequest
from tradeflow.domain.records import (
    Checkpoint,
    Event,
    ExecutionQuery,
    ExecutionRecord,
    StateBatch,
)
from tradeflow.ports import StateStore
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.state.v1 import state_service_pb2 as pb
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = ["SERVICE_NAME", "StateServicer"]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["StateService"].full_name

_NON_EMPTY: Final = "a non-empty string"

M = TypeVar("M")
R = TypeVar("R")


class StateServicer(state_service_pb2_grpc.StateServiceServicer):
    """Translates each RPC to one call on ``store``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def WriteBatch(
        self, request: pb.WriteBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.WriteBatchResponse:
        await self._store.write(_batch(request))
        return pb.WriteBatchResponse()

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExecutionResponse:
        record = await self._store.get_execution(_required("execution_id", request.execution_id))
        return pb.GetExecutionResponse(execution=wire.execution_record_to_proto(record))

    async def FindExecutionByRequestId(
        self, request: pb.FindExecutionByRequestIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindExecutionByRequestIdResponse:
        record = await self._store.find_by_request_id(_required("request_id", request.request_id))
        if record is None:
            return pb.FindExecutionByRequestIdResponse()
        return pb.FindExecutionByRequestIdResponse(execution=wire.execution_record_to_proto(record))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        page = await self._store.list_executions(_query(request.query))
        return pb.ListExecutionsResponse(page=wire.execution_page_to_proto(page))

    async def GetCheckpoints(
        self, request: pb.GetCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCheckpointsResponse:
        checkpoints = await self._store.get_checkpoints(
            _required("execution_id", request.execution_id)
        )
        return pb.GetCheckpointsResponse(
            checkpoints=[wire.checkpoint_to_proto(c) for c in checkpoints.values()]
        )

    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReadEventsResponse:
        execution_id = (
            _required("execution_id", request.execution_id)
            if request.HasField("execution_id")
            else None
        )
        limit = wire.at_most("limit", request.limit, MAX_EVENTS_PAGE) or MAX_EVENTS_PAGE
        history = await self._store.read_events(
            after=request.after, execution_id=execution_id, limit=limit
        )
        return pb.ReadEventsResponse(
            events=[wire.history_event_to_proto(cursor, event) for cursor, event in history]
        )

    async def GetLastSequence(
        self, request: pb.GetLastSequenceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLastSequenceResponse:
        sequence = await self._store.last_sequence(_required("execution_id", request.execution_id))
        return pb.GetLastSequenceResponse(sequence=sequence)


def _required(field: str, value: str) -> str:
    if not value:
        raise InvalidRequest(field, _NON_EMPTY, value)
    return value


def _prefixed(path: str, exc: InvalidRequest) -> InvalidRequest:
    return InvalidRequest(f"{path}.{exc.field}", exc.expected, exc.found)


def _at(path: str, convert: Callable[[M], R], msg: M) -> R:
    """``convert(msg)``, with the field of an ``InvalidRequest`` prefixed by ``path``."""
    try:
        return convert(msg)
    except InvalidRequest as exc:
        raise _prefixed(path, exc) from None


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
            raise _prefixed(f"{path}[{index}]", exc) from None
    return tuple(parts)


def _batch(request: pb.WriteBatchRequest) -> StateBatch:
    """The batch a request writes; every part must belong to one execution."""
    record = None
    if request.HasField("execution"):
        record = _at("execution", _record, request.execution)
    owner = _owner(request)
    return StateBatch(
        execution=record,
        checkpoints=_each("checkpoints", request.checkpoints, _checkpoint, owner),
        events=_each("events", request.events, _event, owner),
    )


def _record(msg: common_pb2.ExecutionRecord) -> ExecutionRecord:
    _required("execution_id", msg.execution_id)
    _required("workflow_id", msg.workflow_id)
    if not msg.HasField("started_at"):
        raise InvalidRequest("started_at", "a timestamp", "unset")
    return wire.execution_record_from_proto(msg)


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
    _required("execution_id", msg.execution_id)
    _same_execution("execution_id", msg.execution_id, owner)
    _required("node_id", msg.node_id)
    return wire.checkpoint_from_proto(msg)


def _event(msg: common_pb2.Event, owner: str) -> Event:
    _required("type", msg.type)
    _required("event_id", msg.event_id)
    # An event about no execution (an emergency halt) may travel in any batch.
    if msg.HasField("execution_id"):
        _same_execution("execution_id", msg.execution_id, owner)
    return wire.event_from_proto(msg)


def _query(msg: common_pb2.ExecutionQuery) -> ExecutionQuery:
    wire.at_most("query.page_size", msg.page_size, MAX_PAGE_SIZE)
    query = _at("query", wire.execution_query_from_proto, msg)
    after, before = query.started_after, query.started_before
    if after is not None and before is not None and before <= after:
        raise InvalidRequest(
            "query.started_before", f"a time after started_after ({after})", before
        )
    return query
