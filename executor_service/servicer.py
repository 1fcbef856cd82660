"""ExecutorService: protobuf <-> :class:`~tradeflow.app.manager.ExecutionManager`, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.security import ANY_ROLE, Policy, Rule, optional, own
from tradeflow.app.cancel_on_halt import JOB_REQUEST_PREFIX
from tradeflow.app.manager import ExecutionManager, Submission
from tradeflow.domain.errors import InvalidRequest, describe
from tradeflow.domain.limits import DEFINITION_MAX_BYTES, check_cursor, check_id
from tradeflow.domain.principals import Caller, Role
from tradeflow.domain.records import Event
from tradeflow.observability.logging import get_logger
from tradeflow.ports import EventBus
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc

__all__ = ["ExecutorServicer", "access"]

_log = get_logger("tradeflow.executor_service")

_OWN_BOT = own(lambda request: optional(request, "bot_id"), "bot_id")


def access(bot_strategies: Mapping[str, str]) -> Policy:
    """Who may call each method (see :mod:`tradeflow.adapters.grpc.security`): a bot runs,
    lists, reads and follows its own executions (its bot_id is its name), under the
    strategy ``bot_strategies`` binds it to, if any."""

    def run_as_itself(request: Any, caller: Caller) -> str | None:
        bound = bot_strategies.get(caller.name)
        strategy = optional(request, "strategy_id")
        if bound is not None and strategy != bound:
            return f"strategy_id must be {bound!r} (TRADEFLOW_BOT_STRATEGIES), found {strategy!r}"
        return _OWN_BOT(request, caller)

    return {
        "ExecuteWorkflow": Rule(frozenset({Role.BOT}), request=run_as_itself),
        "SubmitWorkflow": Rule(frozenset({Role.BOT}), request=run_as_itself),
        "GetExecution": Rule(
            frozenset({Role.BOT, Role.OPERATOR}),
            response=own(lambda reply: optional(reply.execution.record, "bot_id"), "the bot_id"),
        ),
        "ListExecutions": Rule(
            frozenset({Role.BOT, Role.OPERATOR}),
            request=own(lambda request: optional(request.query, "bot_id"), "query.bot_id"),
        ),
        "StreamEvents": Rule(frozenset({Role.BOT, Role.OPERATOR}), request=_OWN_BOT),
        "CancelExecution": Rule(frozenset({Role.OPERATOR})),
        "ValidateWorkflow": Rule(ANY_ROLE),
    }


def _definition(text: str) -> dict[str, Any]:
    """The definition's JSON object, its size checked before it is parsed."""
    checked = wire.bytes_at_most("definition_json", text, DEFINITION_MAX_BYTES)
    return wire.decode_json_object(checked, "definition_json")


def _submission(request: pb.ExecuteWorkflowRequest | pb.SubmitWorkflowRequest) -> Submission:
    if request.request_id.startswith(JOB_REQUEST_PREFIX):
        # The executors' own cancel-on-halt jobs: a caller's execution must never stand in
        # for one (the job would count as done and cancel nothing).
        raise InvalidRequest(
            "request_id",
            f"an id not starting with {JOB_REQUEST_PREFIX!r} (reserved)",
            request.request_id,
        )
    return Submission(
        definition=_definition(request.definition_json),
        workflow_id=request.workflow_id,
        bot_id=optional(request, "bot_id"),
        strategy_id=optional(request, "strategy_id"),
        request_id=request.request_id or None,
        correlation_id=optional(request, "correlation_id"),
    )


class ExecutorServicer(pb_grpc.ExecutorServiceServicer):
    """Serves the executor contract."""

    def __init__(self, manager: ExecutionManager, bus: EventBus) -> None:
        self._manager = manager
        self._bus = bus

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteWorkflowResponse:
        view = await self._manager.execute(_submission(request))
        return pb.ExecuteWorkflowResponse(
            execution=wire.execution_to_proto(view.record, view.nodes)
        )

    async def SubmitWorkflow(
        self, request: pb.SubmitWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitWorkflowResponse:
        return pb.SubmitWorkflowResponse(
            execution_id=await self._manager.submit(_submission(request))
        )

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExecutionResponse:
        view = await self._manager.get(request.execution_id)
        return pb.GetExecutionResponse(execution=wire.execution_to_proto(view.record, view.nodes))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        page = await self._manager.list(
            wire.within("query", wire.execution_query_from_proto, request.query)
        )
        return pb.ListExecutionsResponse(page=wire.execution_page_to_proto(page))

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelExecutionResponse:
        cancelled, status = await self._manager.cancel(request.execution_id)
        return pb.CancelExecutionResponse(
            cancelled=cancelled, status=wire.EXECUTION_STATUS.to_proto(status)
        )

    async def ValidateWorkflow(
        self, request: pb.ValidateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateWorkflowResponse:
        issues = self._manager.validate(_definition(request.definition_json))
        return pb.ValidateWorkflowResponse(
            valid=not issues, issues=[wire.validation_issue_to_proto(i) for i in issues]
        )

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        filters = {
            field: check_id(field, optional(request, field), optional=True)
            for field in ("execution_id", "workflow_id", "bot_id", "strategy_id")
        }
        if request.HasField("after_sequence"):
            after = check_cursor("after_sequence", request.after_sequence)
        else:
            after = await self._bus.last_sequence()
        async for sequence, event in self._bus.replay(after_sequence=after, **filters):
            try:
                message = wire.event_to_proto(Event.from_dict(event))
            except (KeyError, TypeError, ValueError) as exc:
                # Not an event tradeflow wrote: skip it rather than end the caller's stream.
                _log.warning("events.undecodable", stream_sequence=sequence, error=describe(exc))
                continue
            yield pb.StreamEventsResponse(event=message, stream_sequence=sequence)
