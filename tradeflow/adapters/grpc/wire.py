"""Conversions between tradeflow's records and their protobuf messages, both ways.

Pure functions, shared by the services (servicers) and their clients, so each
mapping is written once. ``None`` travels as an unset field: proto3 ``optional``
for scalars, an absent message for timestamps, the ``_UNSPECIFIED`` value for
enums. Free-form dicts travel as JSON text, so integers stay integers.

Timestamps are epoch seconds as floats here and ``google.protobuf.Timestamp``
on the wire; for any time after February 1970 a float survives the trip exactly
(nanosecond resolution is far finer than a float's at that magnitude).

A message that cannot become a record (an unspecified enum where a value is
required, text that is not a JSON object) raises
:class:`~tradeflow.domain.errors.InvalidRequest` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tradeflow.domain.codec import MAX_PAGE_SIZE, encode_page_token, from_json, to_json_bytes
from tradeflow.domain.emergency import (
    BarrierReport,
    EmergencySnapshot,
    InFlightAction,
    LimitExplanation,
    LimitVerdict,
    ScopeIds,
    checked_scope,
)
from tradeflow.domain.errors import InvalidRequest, ValidationIssue
from tradeflow.domain.limits import (
    IN_FLIGHT_MAX,
    PAGE_MAX_BYTES,
    PAGE_TOKEN_MAX_LENGTH,
    check_client_order_id,
    check_cursor,
    check_id,
    check_text,
    check_timestamp,
)
from tradeflow.domain.ownership import Fence
from tradeflow.domain.records import (
    SCHEMA_VERSION,
    ActionGuard,
    AuditEntry,
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
    StateBatch,
)
from tradeflow.domain.risk import NO_OPTIONS, Denial, LimitOptions, TriggerProgress
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.engine.emergency import checked_restriction
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2
from tradeflow.proto.executor.v1 import executor_service_pb2
from tradeflow.proto.state.v1 import state_service_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "CHECKPOINT_STATE",
    "EXECUTION_STATUS",
    "LIMIT_DIRECTION",
    "ORDER_EFFECT",
    "SCOPE",
    "TRADING_STATE",
    "EnumCodec",
    "acknowledgement_from_proto",
    "acknowledgement_to_proto",
    "action_guard_from_proto",
    "action_guard_to_proto",
    "at_most",
    "audit_entry_from_proto",
    "audit_entry_to_proto",
    "barrier_report_from_proto",
    "bytes_at_most",
    "checkpoint_from_proto",
    "checkpoint_to_proto",
    "decode_json_object",
    "denial_from_proto",
    "denial_to_proto",
    "emergency_state_from_proto",
    "emergency_state_to_proto",
    "encode_json",
    "event_from_proto",
    "event_to_proto",
    "execution_from_proto",
    "execution_page_from_proto",
    "execution_page_to_proto",
    "execution_query_from_proto",
    "execution_query_to_proto",
    "execution_record_from_proto",
    "execution_record_to_proto",
    "execution_to_proto",
    "halt_response_to_proto",
    "halt_state_from_proto",
    "halt_state_to_proto",
    "history_event_from_proto",
    "history_event_to_proto",
    "in_flight_action_from_proto",
    "in_flight_action_to_proto",
    "limit_explanation_from_proto",
    "limit_explanation_to_proto",
    "limit_options_fields",
    "limit_options_from_proto",
    "limit_scope_from_proto",
    "limit_verdict_to_proto",
    "order_denied_from_proto",
    "order_denied_to_proto",
    "restriction_from_proto",
    "risk_limit_from_proto",
    "risk_limit_to_proto",
    "scope_ids_from_proto",
    "state_batch_from_proto",
    "state_batch_to_proto",
    "timestamp_from_proto",
    "timestamp_to_proto",
    "trigger_status_from_proto",
    "trigger_status_to_proto",
    "validation_issue_from_proto",
    "validation_issue_to_proto",
    "within",
]

E = TypeVar("E", bound=StrEnum)
V = TypeVar("V", bound=int)
T = TypeVar("T")
M = TypeVar("M")

_NANOS_PER_SECOND = 1_000_000_000


def encode_json(value: Any) -> str:
    """Compact JSON text, encoded as the SQLite store encodes it (orjson; NaN and
    Infinity become null; non-string keys become strings)."""
    return to_json_bytes(value).decode()


def _optional(msg: Message, field: str, convert: Callable[[Any], T] = lambda v: v) -> T | None:
    """``convert(msg.<field>)``, or ``None`` where the optional ``field`` is unset."""
    return convert(getattr(msg, field)) if msg.HasField(field) else None


def at_most(field: str, value: int, most: int) -> int:
    """A request's page bound (0 asks for the default); ``InvalidRequest`` above ``most``."""
    if value > most:
        raise InvalidRequest(field, f"at most {most} (0 for the default)", value)
    return value


class EnumCodec(Generic[E, V]):
    """Maps one records enum to its protobuf enum (``X.NAME`` <-> ``PREFIX_NAME``).

    Built at import, so a records member missing from the proto fails at once.
    """

    __slots__ = ("_from_proto", "_names", "_to_proto", "_unspecified")

    def __init__(self, members: type[E], proto: _EnumTypeWrapper[V], prefix: str) -> None:
        self._to_proto = {member: proto.Value(prefix + member.name) for member in members}
        self._from_proto: dict[int, E] = {number: m for m, number in self._to_proto.items()}
        self._unspecified = proto.Value(prefix + "UNSPECIFIED")
        self._names: dict[int, str] = {number: name for name, number in proto.items()}

    def to_proto(self, member: E | None, field: str = "value") -> V:
        """The proto value of ``member``; ``None`` becomes ``_UNSPECIFIED``; a value that is
        no member is ``InvalidRequest`` naming ``field``."""
        if member is None:
            return self._unspecified
        try:
            return self._to_proto[member]
        except KeyError:
            raise InvalidRequest(field, "a member of its enum", member) from None

    def from_proto(self, number: int, field: str) -> E:
        """The member for ``number``; ``InvalidRequest`` naming ``field`` if there is none."""
        member = self._from_proto.get(number)
        if member is None:
            expected = "one of " + ", ".join(m.value for m in self._from_proto.values())
            raise InvalidRequest(field, expected, self._names.get(number, number))
        return member

    def from_proto_optional(self, number: int, field: str) -> E | None:
        """Like :meth:`from_proto`, but ``_UNSPECIFIED`` becomes ``None``."""
        return None if number == self._unspecified else self.from_proto(number, field)


EXECUTION_STATUS = EnumCodec(ExecutionStatus, common_pb2.ExecutionStatus, "EXECUTION_STATUS_")
SCOPE = EnumCodec(Scope, common_pb2.Scope, "SCOPE_")
CHECKPOINT_STATE = EnumCodec(CheckpointState, common_pb2.CheckpointState, "CHECKPOINT_STATE_")
LIMIT_DIRECTION = EnumCodec(
    LimitDirection, emergency_service_pb2.LimitDirection, "LIMIT_DIRECTION_"
)
TRADING_STATE = EnumCodec(TradingState, emergency_service_pb2.TradingState, "TRADING_STATE_")
ORDER_EFFECT = EnumCodec(OrderEffect, state_service_pb2.OrderEffect, "ORDER_EFFECT_")


def decode_json_object(text: str, field: str) -> dict[str, Any]:
    """Parse JSON text holding an object; an empty string is ``{}``.

    Raises ``InvalidRequest`` naming ``field`` for anything else.
    """
    if not text:
        return {}
    try:
        value = from_json(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(field, "a JSON object", text)
    return value


def bytes_at_most(field: str, text: str, most: int) -> str:
    """``text`` if its UTF-8 encoding has at most ``most`` bytes; checked before a JSON
    text is parsed, which costs many times its size."""
    size = len(text.encode())
    if size > most:
        raise InvalidRequest(field, f"at most {most} bytes", f"{size} bytes")
    return text


def within(path: str, convert: Callable[[M], T], msg: M) -> T:
    """``convert(msg)``, with the field of an ``InvalidRequest`` prefixed by ``path``."""
    try:
        return convert(msg)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{path}.{exc.field}", exc.expected, exc.found) from None


def timestamp_to_proto(ts: float) -> Timestamp:
    """Epoch seconds as a ``Timestamp``."""
    seconds = math.floor(ts)
    nanos = round((ts - seconds) * _NANOS_PER_SECOND)
    if nanos == _NANOS_PER_SECOND:
        seconds, nanos = seconds + 1, 0
    return Timestamp(seconds=seconds, nanos=nanos)


def timestamp_from_proto(msg: Timestamp) -> float:
    """A ``Timestamp`` as epoch seconds."""
    return msg.seconds + msg.nanos / _NANOS_PER_SECOND


def event_to_proto(event: Event) -> common_pb2.Event:
    """An event as its protobuf message."""
    return common_pb2.Event(
        schema_version=SCHEMA_VERSION,
        type=event.type,
        event_id=event.event_id,
        sequence=event.sequence,
        timestamp=timestamp_to_proto(event.timestamp),
        correlation_id=event.correlation_id,
        execution_id=event.execution_id,
        workflow_id=event.workflow_id,
        bot_id=event.bot_id,
        strategy_id=event.strategy_id,
        node_id=event.node_id,
        data_json=encode_json(event.data),
    )


def event_from_proto(msg: common_pb2.Event) -> Event:
    """Inverse of :func:`event_to_proto`."""
    return Event(
        type=msg.type,
        event_id=msg.event_id,
        sequence=msg.sequence,
        timestamp=timestamp_from_proto(msg.timestamp),
        correlation_id=_optional(msg, "correlation_id"),
        execution_id=_optional(msg, "execution_id"),
        workflow_id=_optional(msg, "workflow_id"),
        bot_id=_optional(msg, "bot_id"),
        strategy_id=_optional(msg, "strategy_id"),
        node_id=_optional(msg, "node_id"),
        data=decode_json_object(msg.data_json, "data_json"),
    )


def execution_record_to_proto(record: ExecutionRecord) -> common_pb2.ExecutionRecord:
    """An execution record as its protobuf message."""
    return common_pb2.ExecutionRecord(
        execution_id=record.execution_id,
        workflow_id=record.workflow_id,
        status=EXECUTION_STATUS.to_proto(record.status),
        started_at=timestamp_to_proto(record.started_at),
        definition_json=encode_json(record.definition),
        correlation_id=record.correlation_id,
        bot_id=record.bot_id,
        strategy_id=record.strategy_id,
        finished_at=None if record.finished_at is None else timestamp_to_proto(record.finished_at),
        error=record.error,
        result_json=None if record.result is None else encode_json(record.result),
        request_id=record.request_id,
        owner=record.owner,
        epoch=record.epoch,
        takeovers=record.takeovers,
        owner_live=record.owner_live,
    )


def execution_record_from_proto(msg: common_pb2.ExecutionRecord) -> ExecutionRecord:
    """Inverse of :func:`execution_record_to_proto`."""
    return ExecutionRecord(
        execution_id=msg.execution_id,
        workflow_id=msg.workflow_id,
        status=EXECUTION_STATUS.from_proto(msg.status, "status"),
        started_at=timestamp_from_proto(msg.started_at),
        definition=decode_json_object(msg.definition_json, "definition_json"),
        correlation_id=msg.correlation_id,
        bot_id=_optional(msg, "bot_id"),
        strategy_id=_optional(msg, "strategy_id"),
        finished_at=_optional(msg, "finished_at", timestamp_from_proto),
        error=_optional(msg, "error"),
        result=_optional(msg, "result_json", lambda t: decode_json_object(t, "result_json")),
        request_id=_optional(msg, "request_id"),
        owner=_optional(msg, "owner"),
        epoch=msg.epoch,
        takeovers=msg.takeovers,
        owner_live=msg.owner_live,
    )


def checkpoint_to_proto(checkpoint: Checkpoint) -> common_pb2.Checkpoint:
    """A checkpoint as its protobuf message."""
    outputs = checkpoint.outputs
    return common_pb2.Checkpoint(
        execution_id=checkpoint.execution_id,
        node_id=checkpoint.node_id,
        state=CHECKPOINT_STATE.to_proto(checkpoint.state),
        updated_at=timestamp_to_proto(checkpoint.updated_at),
        outputs_json=None if outputs is None else encode_json(outputs),
        error=checkpoint.error,
        attempt=checkpoint.attempt,
    )


def checkpoint_from_proto(msg: common_pb2.Checkpoint) -> Checkpoint:
    """Inverse of :func:`checkpoint_to_proto`."""
    return Checkpoint(
        execution_id=msg.execution_id,
        node_id=msg.node_id,
        state=CHECKPOINT_STATE.from_proto(msg.state, "state"),
        updated_at=timestamp_from_proto(msg.updated_at),
        outputs=_optional(msg, "outputs_json", lambda t: decode_json_object(t, "outputs_json")),
        error=_optional(msg, "error"),
        # An unset attempt (0) can only mean the first one.
        attempt=msg.attempt or 1,
    )


def execution_query_to_proto(query: ExecutionQuery) -> common_pb2.ExecutionQuery:
    """An execution query as its protobuf message."""
    after, before = query.started_after, query.started_before
    return common_pb2.ExecutionQuery(
        workflow_id=query.workflow_id,
        bot_id=query.bot_id,
        strategy_id=query.strategy_id,
        status=EXECUTION_STATUS.to_proto(query.status),
        started_after=None if after is None else timestamp_to_proto(after),
        started_before=None if before is None else timestamp_to_proto(before),
        page_size=query.limit,
        page_token=query.page_token or "",
    )


def execution_query_from_proto(msg: common_pb2.ExecutionQuery) -> ExecutionQuery:
    """Inverse of :func:`execution_query_to_proto`, refusing a query past the limits
    (ids, time range, page size, page token length); page size 0 keeps the default."""
    at_most("page_size", msg.page_size, MAX_PAGE_SIZE)
    if len(msg.page_token) > PAGE_TOKEN_MAX_LENGTH:
        expected = f"a page token of at most {PAGE_TOKEN_MAX_LENGTH} characters"
        raise InvalidRequest("page_token", expected, msg.page_token)
    query = ExecutionQuery(
        workflow_id=check_id("workflow_id", _optional(msg, "workflow_id"), optional=True),
        bot_id=check_id("bot_id", _optional(msg, "bot_id"), optional=True),
        strategy_id=check_id("strategy_id", _optional(msg, "strategy_id"), optional=True),
        status=EXECUTION_STATUS.from_proto_optional(msg.status, "status"),
        started_after=_optional(msg, "started_after", _query_time("started_after")),
        started_before=_optional(msg, "started_before", _query_time("started_before")),
        page_token=msg.page_token or None,
    )
    after, before = query.started_after, query.started_before
    if after is not None and before is not None and before <= after:
        raise InvalidRequest("started_before", f"a time after started_after ({after})", before)
    return replace(query, limit=msg.page_size) if msg.page_size else query


def _query_time(field: str) -> Callable[[Timestamp], float]:
    return lambda msg: check_timestamp(field, timestamp_from_proto(msg))


def events_page_to_proto(
    history: Sequence[tuple[int, Event]],
) -> state_service_pb2.ReadEventsResponse:
    """A page of history of at most ``PAGE_MAX_BYTES`` (never fewer than one event): a
    reader continues after the cursor of the last event it got, as after any page."""
    msg = state_service_pb2.ReadEventsResponse()
    size = 0
    for cursor, event in history:
        item = history_event_to_proto(cursor, event)
        size += item.ByteSize()
        if size > PAGE_MAX_BYTES and msg.events:
            break
        msg.events.append(item)
    return msg


def execution_page_to_proto(page: ExecutionPage) -> common_pb2.ExecutionPage:
    """A page of executions as its protobuf message, of at most ``PAGE_MAX_BYTES``: a
    larger page ends early, its token continuing after the last record sent."""
    msg = common_pb2.ExecutionPage(next_page_token=page.next_page_token or "")
    size = 0
    for record in page.executions:
        item = execution_record_to_proto(record)
        size += item.ByteSize()
        if size > PAGE_MAX_BYTES and msg.executions:
            last = page.executions[len(msg.executions) - 1]
            msg.next_page_token = encode_page_token(last.started_at, last.execution_id)
            break
        msg.executions.append(item)
    return msg


def execution_page_from_proto(msg: common_pb2.ExecutionPage) -> ExecutionPage:
    """Inverse of :func:`execution_page_to_proto`."""
    return ExecutionPage(
        executions=tuple(execution_record_from_proto(record) for record in msg.executions),
        next_page_token=msg.next_page_token or None,
    )


def validation_issue_to_proto(issue: ValidationIssue) -> common_pb2.ValidationIssue:
    """A validation issue as its protobuf message."""
    return common_pb2.ValidationIssue(
        block_id=issue.block_id, field=issue.field, expected=issue.expected, found=issue.found
    )


def validation_issue_from_proto(msg: common_pb2.ValidationIssue) -> ValidationIssue:
    """Inverse of :func:`validation_issue_to_proto`."""
    return ValidationIssue(
        block_id=_optional(msg, "block_id"),
        field=msg.field,
        expected=msg.expected,
        found=msg.found,
    )


def execution_to_proto(
    record: ExecutionRecord, nodes: Iterable[Checkpoint]
) -> executor_service_pb2.Execution:
    """An execution with the latest checkpoint of each node, in the order given."""
    return executor_service_pb2.Execution(
        record=execution_record_to_proto(record),
        nodes=[checkpoint_to_proto(checkpoint) for checkpoint in nodes],
    )


def execution_from_proto(
    msg: executor_service_pb2.Execution,
) -> tuple[ExecutionRecord, dict[str, Checkpoint]]:
    """Inverse of :func:`execution_to_proto`: the record and its checkpoints by node id."""
    checkpoints = (checkpoint_from_proto(node) for node in msg.nodes)
    return execution_record_from_proto(msg.record), {c.node_id: c for c in checkpoints}


def halt_state_to_proto(halt: HaltState) -> emergency_service_pb2.HaltState:
    """An active halt as its protobuf message."""
    return emergency_service_pb2.HaltState(
        scope=SCOPE.to_proto(halt.scope),
        target=halt.target,
        reason=halt.reason,
        actor=halt.actor,
        since=timestamp_to_proto(halt.since),
        state=TRADING_STATE.to_proto(halt.state, "state"),
        cancel_orders=halt.cancel_orders,
    )


def halt_state_from_proto(msg: emergency_service_pb2.HaltState) -> HaltState:
    """Inverse of :func:`halt_state_to_proto`; an unspecified state is ``HALTED`` (what
    every halt was before trading states existed)."""
    return HaltState(
        scope=SCOPE.from_proto(msg.scope, "scope"),
        target=_optional(msg, "target"),
        reason=msg.reason,
        actor=msg.actor,
        since=timestamp_from_proto(msg.since),
        state=TRADING_STATE.from_proto_optional(msg.state, "state") or TradingState.HALTED,
        cancel_orders=msg.cancel_orders,
    )


def restriction_from_proto(number: int) -> TradingState:
    """The state a ``HaltRequest`` asks for: unspecified is ``HALTED``; ``ACTIVE`` (that is
    a resume) and a number no state has are ``InvalidRequest`` naming ``state``."""
    if number == emergency_service_pb2.TRADING_STATE_UNSPECIFIED:
        return TradingState.HALTED
    return checked_restriction(TRADING_STATE.from_proto(number, "state"))


def in_flight_action_to_proto(action: InFlightAction) -> emergency_service_pb2.InFlightAction:
    """An action in flight as its protobuf message."""
    return emergency_service_pb2.InFlightAction(
        owner=action.owner,
        execution_id=action.execution_id,
        node_id=action.node_id,
        client_order_id=action.client_order_id,
    )


def in_flight_action_from_proto(msg: emergency_service_pb2.InFlightAction) -> InFlightAction:
    """Inverse of :func:`in_flight_action_to_proto`: every field an id, but
    ``client_order_id``, which may be ``""`` (an action placing no order of its own)."""
    if msg.client_order_id:
        check_client_order_id("client_order_id", msg.client_order_id)
    return InFlightAction(
        owner=check_id("owner", msg.owner),
        execution_id=check_id("execution_id", msg.execution_id),
        node_id=check_id("node_id", msg.node_id),
        client_order_id=msg.client_order_id,
    )


def acknowledgement_to_proto(
    fence: Fence, version: int, in_flight: Sequence[InFlightAction]
) -> emergency_service_pb2.AcknowledgeStateRequest:
    """An executor's acknowledgement of state ``version`` under its lease ``fence``."""
    return emergency_service_pb2.AcknowledgeStateRequest(
        owner=fence.owner,
        epoch=fence.epoch,
        version=version,
        in_flight=[in_flight_action_to_proto(action) for action in in_flight],
    )


def acknowledgement_from_proto(
    msg: emergency_service_pb2.AcknowledgeStateRequest,
) -> tuple[Fence, int, tuple[InFlightAction, ...]]:
    """Inverse of :func:`acknowledgement_to_proto`, refusing (``InvalidRequest`` naming the
    field) an owner that is no id, an epoch of 0, a version past ``CURSOR_MAX``, more than
    :data:`~tradeflow.domain.limits.IN_FLIGHT_MAX` actions or an action of another owner."""
    owner = check_id("owner", msg.owner)
    if msg.epoch <= 0:
        raise InvalidRequest("epoch", "an epoch > 0 from AcquireLease", msg.epoch)
    version = check_cursor("version", msg.version)
    if len(msg.in_flight) > IN_FLIGHT_MAX:
        raise InvalidRequest(
            "in_flight", f"at most {IN_FLIGHT_MAX} actions", f"{len(msg.in_flight)} actions"
        )
    actions = []
    for index, item in enumerate(msg.in_flight):
        action = within(f"in_flight[{index}]", in_flight_action_from_proto, item)
        if action.owner != owner:
            raise InvalidRequest(f"in_flight[{index}].owner", f"the owner {owner!r}", action.owner)
        actions.append(action)
    return Fence(owner, int(msg.epoch)), version, tuple(actions)


def halt_response_to_proto(
    halt: HaltState, report: BarrierReport
) -> emergency_service_pb2.HaltResponse:
    """A committed halt and how the live executors confirmed it."""
    return emergency_service_pb2.HaltResponse(
        halt=halt_state_to_proto(halt),
        version=report.version,
        live=report.live,
        acknowledged=report.acknowledged,
        in_flight=[in_flight_action_to_proto(action) for action in report.in_flight],
        fenced=report.fenced,
    )


def barrier_report_from_proto(msg: emergency_service_pb2.HaltResponse) -> BarrierReport:
    """The barrier's report a :func:`halt_response_to_proto` answer carries."""
    return BarrierReport(
        version=msg.version,
        live=tuple(msg.live),
        acknowledged=tuple(msg.acknowledged),
        in_flight=tuple(map(in_flight_action_from_proto, msg.in_flight)),
        fenced=tuple(msg.fenced),
    )


def emergency_state_to_proto(
    halts: Iterable[HaltState], version: int, limits: Iterable[RiskLimit] = ()
) -> emergency_service_pb2.EmergencyState:
    """A snapshot of every active halt and every configured limit, with the state's version."""
    return emergency_service_pb2.EmergencyState(
        halts=[halt_state_to_proto(halt) for halt in halts],
        version=version,
        limits=[risk_limit_to_proto(limit) for limit in limits],
    )


def emergency_state_from_proto(msg: emergency_service_pb2.EmergencyState) -> EmergencySnapshot:
    """Inverse of :func:`emergency_state_to_proto`: the snapshot (halts, limits, version)."""
    halts = (within(f"halts[{i}]", halt_state_from_proto, h) for i, h in enumerate(msg.halts))
    limits = (within(f"limits[{i}]", risk_limit_from_proto, x) for i, x in enumerate(msg.limits))
    return EmergencySnapshot.of(msg.version, tuple(halts), tuple(limits))


def scope_ids_from_proto(
    msg: emergency_service_pb2.CheckRiskLimitRequest
    | emergency_service_pb2.ExplainRiskLimitsRequest
    | emergency_service_pb2.RecordOrderDeniedRequest,
) -> ScopeIds:
    """The ids a risk check, an explanation or a denied order belongs to (an unset one is
    ``None``)."""
    return ScopeIds(*(_optional(msg, field) for field in ("workflow_id", "bot_id", "strategy_id")))


def limit_verdict_to_proto(verdict: LimitVerdict) -> emergency_service_pb2.CheckRiskLimitResponse:
    """A risk check's answer: what it compared and whether it breached (and halted)."""
    breached = verdict.breached
    return emergency_service_pb2.CheckRiskLimitResponse(
        breached=breached,
        halted=breached and verdict.halts,
        threshold=verdict.threshold,
        direction=LIMIT_DIRECTION.to_proto(verdict.direction),
    )


_LimitFields = (
    emergency_service_pb2.RiskLimit
    | emergency_service_pb2.SetRiskLimitRequest
    | emergency_service_pb2.DeleteRiskLimitRequest
    | emergency_service_pb2.HeartbeatRequest
)
"""Messages naming a limit's scope (``scope``, ``target``); the first two carry its options
too (fields 9 to 15, named as in :class:`~tradeflow.domain.risk.LimitOptions`)."""


def limit_scope_from_proto(msg: _LimitFields) -> tuple[Scope, str | None]:
    """The scope and target a limit message names: an unspecified scope is global (as every
    limit was before limits had scopes). Whether the target fits the scope is the
    controller's to check (``checked_scope``), as for a halt."""
    return SCOPE.from_proto_optional(msg.scope, "scope") or Scope.GLOBAL, _optional(msg, "target")


def limit_options_fields(options: LimitOptions) -> dict[str, Any]:
    """The option fields of a ``RiskLimit`` or ``SetRiskLimitRequest`` message (named as
    the options are)."""
    return {**options.fields(), "state": TRADING_STATE.to_proto(options.state, "state")}


def limit_options_from_proto(
    msg: emergency_service_pb2.RiskLimit | emergency_service_pb2.SetRiskLimitRequest,
) -> LimitOptions:
    """Inverse of :func:`limit_options_fields`: an unspecified state is ``None`` (not a
    trigger), a ``consecutive`` of 0 is 1, an empty time zone or reset time is the default
    (UTC, 00:00). What each option admits for which limit type is the domain's to check
    (:func:`~tradeflow.domain.risk.checked_limit_options`)."""
    return LimitOptions(
        window=_optional(msg, "window"),
        state=TRADING_STATE.from_proto_optional(msg.state, "state"),
        consecutive=msg.consecutive or NO_OPTIONS.consecutive,
        timezone=msg.timezone or NO_OPTIONS.timezone,
        reset_time=msg.reset_time or NO_OPTIONS.reset_time,
        lift_on_reset=msg.lift_on_reset,
        cancel_orders=msg.cancel_orders,
    )


def risk_limit_to_proto(limit: RiskLimit) -> emergency_service_pb2.RiskLimit:
    """A risk limit as its protobuf message."""
    return emergency_service_pb2.RiskLimit(
        limit_type=limit.limit_type,
        threshold=limit.threshold,
        direction=LIMIT_DIRECTION.to_proto(limit.direction),
        auto_halt=limit.auto_halt,
        updated_at=timestamp_to_proto(limit.updated_at),
        updated_by=limit.updated_by,
        scope=SCOPE.to_proto(limit.scope, "scope"),
        target=limit.target,
        **limit_options_fields(LimitOptions.of(limit)),
    )


def risk_limit_from_proto(msg: emergency_service_pb2.RiskLimit) -> RiskLimit:
    """Inverse of :func:`risk_limit_to_proto` (an unspecified scope is global)."""
    scope, target = limit_scope_from_proto(msg)
    return RiskLimit(
        limit_type=msg.limit_type,
        threshold=msg.threshold,
        direction=LIMIT_DIRECTION.from_proto(msg.direction, "direction"),
        auto_halt=msg.auto_halt,
        updated_at=timestamp_from_proto(msg.updated_at),
        updated_by=msg.updated_by,
        scope=scope,
        target=target,
        **limit_options_from_proto(msg).fields(),
    )


def trigger_status_to_proto(
    limit: RiskLimit, progress: TriggerProgress
) -> emergency_service_pb2.TriggerStatus:
    """A trigger and its progress (never evaluated: no ``evaluated_at``)."""
    return emergency_service_pb2.TriggerStatus(
        limit=risk_limit_to_proto(limit),
        breaches=progress.breaches,
        fired=progress.fired,
        peak=progress.peak,
        day=progress.day,
        anchor=progress.anchor,
        last_beat=None if progress.last_beat is None else timestamp_to_proto(progress.last_beat),
        value=progress.value,
        evaluated_at=timestamp_to_proto(progress.evaluated_at) if progress.evaluated_at else None,
    )


def trigger_status_from_proto(
    msg: emergency_service_pb2.TriggerStatus,
) -> tuple[RiskLimit, TriggerProgress]:
    """Inverse of :func:`trigger_status_to_proto` (the progress's store ``version`` does not
    travel: 0)."""
    return within("limit", risk_limit_from_proto, msg.limit), TriggerProgress(
        breaches=msg.breaches,
        fired=msg.fired,
        peak=_optional(msg, "peak"),
        day=_optional(msg, "day"),
        anchor=_optional(msg, "anchor"),
        last_beat=_optional(msg, "last_beat", timestamp_from_proto),
        evaluated_at=_optional(msg, "evaluated_at", timestamp_from_proto) or 0.0,
        value=_optional(msg, "value"),
    )


def limit_explanation_to_proto(
    explanation: LimitExplanation,
) -> emergency_service_pb2.ExplainRiskLimitsResponse:
    """What applies to an action of some ids (the ids are the request's)."""
    halt = explanation.halt
    return emergency_service_pb2.ExplainRiskLimitsResponse(
        state=TRADING_STATE.to_proto(explanation.state, "state"),
        halt=None if halt is None else halt_state_to_proto(halt),
        applicable=[risk_limit_to_proto(limit) for limit in explanation.applicable],
        deciding=[risk_limit_to_proto(limit) for limit in explanation.deciding],
        triggers=[trigger_status_to_proto(limit, p) for limit, p in explanation.triggers],
    )


def limit_explanation_from_proto(
    msg: emergency_service_pb2.ExplainRiskLimitsResponse, ids: ScopeIds
) -> LimitExplanation:
    """Inverse of :func:`limit_explanation_to_proto` for the request of ``ids``."""
    return LimitExplanation(
        ids=ids,
        state=TRADING_STATE.from_proto(msg.state, "state"),
        halt=_optional(msg, "halt", lambda h: within("halt", halt_state_from_proto, h)),
        applicable=tuple(
            within(f"applicable[{i}]", risk_limit_from_proto, x)
            for i, x in enumerate(msg.applicable)
        ),
        deciding=tuple(
            within(f"deciding[{i}]", risk_limit_from_proto, x) for i, x in enumerate(msg.deciding)
        ),
        triggers=tuple(
            within(f"triggers[{i}]", trigger_status_from_proto, x)
            for i, x in enumerate(msg.triggers)
        ),
    )


def denial_to_proto(denial: Denial) -> emergency_service_pb2.OrderDenial:
    """Why a pre-trade check denied an order, as its protobuf message."""
    return emergency_service_pb2.OrderDenial(
        check=denial.check,
        scope=SCOPE.to_proto(denial.scope, "scope"),
        target=denial.target,
        value=denial.value,
        threshold=denial.threshold,
        reason=denial.reason,
    )


def denial_from_proto(msg: emergency_service_pb2.OrderDenial) -> Denial:
    """Inverse of :func:`denial_to_proto`, refusing (``InvalidRequest`` naming the field) a
    check that is no id, an unspecified scope, a target that does not fit the scope and a
    reason that is not bounded text. ``value`` may be NaN: a check that had no price."""
    target = _optional(msg, "target")
    scope = checked_scope(SCOPE.from_proto(msg.scope, "scope"), target)
    return Denial(
        check=check_id("check", msg.check),
        scope=scope,
        target=target,
        value=msg.value,
        threshold=msg.threshold,
        reason=check_text("reason", msg.reason),
    )


def order_denied_to_proto(
    denial: Denial, *, ids: ScopeIds, execution_id: str, node_id: str, client_order_id: str
) -> emergency_service_pb2.RecordOrderDeniedRequest:
    """An executor's report of an order a pre-trade check denied."""
    return emergency_service_pb2.RecordOrderDeniedRequest(
        denial=denial_to_proto(denial),
        execution_id=execution_id,
        node_id=node_id,
        client_order_id=client_order_id,
        workflow_id=ids.workflow_id,
        bot_id=ids.bot_id,
        strategy_id=ids.strategy_id,
    )


def order_denied_from_proto(
    msg: emergency_service_pb2.RecordOrderDeniedRequest,
) -> tuple[Denial, ScopeIds]:
    """The denial and the ids of :func:`order_denied_to_proto`'s request (its execution,
    node and client order id are the caller's to read; the controller checks every id)."""
    return within("denial", denial_from_proto, msg.denial), scope_ids_from_proto(msg)


def audit_entry_to_proto(entry: AuditEntry) -> emergency_service_pb2.AuditEntry:
    """An audit entry as its protobuf message."""
    return emergency_service_pb2.AuditEntry(
        entry_id=entry.entry_id,
        at=timestamp_to_proto(entry.at),
        actor=entry.actor,
        action=entry.action,
        scope=SCOPE.to_proto(entry.scope),
        target=entry.target,
        reason=entry.reason,
        details_json=encode_json(entry.details),
        principal=entry.principal,
        role=entry.role,
        peer=entry.peer,
    )


def audit_entry_from_proto(msg: emergency_service_pb2.AuditEntry) -> AuditEntry:
    """Inverse of :func:`audit_entry_to_proto`."""
    return AuditEntry(
        entry_id=msg.entry_id,
        at=timestamp_from_proto(msg.at),
        actor=msg.actor,
        action=msg.action,
        scope=SCOPE.from_proto_optional(msg.scope, "scope"),
        target=_optional(msg, "target"),
        reason=msg.reason,
        details=decode_json_object(msg.details_json, "details_json"),
    )


def state_batch_to_proto(
    batch: StateBatch, *, request_id: str = ""
) -> state_service_pb2.WriteBatchRequest:
    """A state batch as the request that writes it (``request_id``: idempotency key)."""
    execution = batch.execution
    return state_service_pb2.WriteBatchRequest(
        request_id=request_id,
        execution=None if execution is None else execution_record_to_proto(execution),
        checkpoints=[checkpoint_to_proto(checkpoint) for checkpoint in batch.checkpoints],
        events=[event_to_proto(event) for event in batch.events],
        fence=None if batch.fence is None else fence_to_proto(batch.fence),
        guard=None if batch.guard is None else action_guard_to_proto(batch.guard),
    )


def action_guard_to_proto(guard: ActionGuard) -> state_service_pb2.ActionGuard:
    """What the store checks before committing an intent, as its protobuf message."""
    return state_service_pb2.ActionGuard(
        workflow_id=guard.workflow_id,
        bot_id=guard.bot_id,
        strategy_id=guard.strategy_id,
        effect=ORDER_EFFECT.to_proto(guard.effect, "effect"),
    )


def action_guard_from_proto(msg: state_service_pb2.ActionGuard) -> ActionGuard:
    """Inverse of :func:`action_guard_to_proto`; each set id must be an id. An unspecified
    effect is ``OPENS``, the strictest (an effect nobody worked out)."""
    effect = ORDER_EFFECT.from_proto_optional(msg.effect, "effect")
    return ActionGuard(
        workflow_id=check_id("workflow_id", _optional(msg, "workflow_id"), optional=True),
        bot_id=check_id("bot_id", _optional(msg, "bot_id"), optional=True),
        strategy_id=check_id("strategy_id", _optional(msg, "strategy_id"), optional=True),
        effect=OrderEffect.OPENS if effect is None else effect,
    )


def fence_to_proto(fence: tuple[str, int]) -> state_service_pb2.Fence:
    owner, epoch = fence
    return state_service_pb2.Fence(owner=owner, epoch=epoch)


def fence_from_proto(msg: state_service_pb2.Fence) -> Fence:
    """The fence a request carries; its owner must be an id and its epoch > 0."""
    check_id("fence.owner", msg.owner)
    if msg.epoch <= 0:
        raise InvalidRequest("fence.epoch", "an epoch > 0 from AcquireLease", msg.epoch)
    return Fence(msg.owner, int(msg.epoch))


def state_batch_from_proto(msg: state_service_pb2.WriteBatchRequest) -> StateBatch:
    """Inverse of :func:`state_batch_to_proto` (the request id is the caller's to read)."""
    return StateBatch(
        execution=_optional(msg, "execution", execution_record_from_proto),
        checkpoints=tuple(checkpoint_from_proto(checkpoint) for checkpoint in msg.checkpoints),
        events=tuple(event_from_proto(event) for event in msg.events),
        fence=_optional(msg, "fence", fence_from_proto),
        guard=_optional(msg, "guard", lambda g: within("guard", action_guard_from_proto, g)),
    )


def history_event_to_proto(cursor: int, event: Event) -> state_service_pb2.HistoryEvent:
    """One ``(cursor, event)`` pair of history as its protobuf message."""
    return state_service_pb2.HistoryEvent(cursor=cursor, event=event_to_proto(event))


def history_event_from_proto(msg: state_service_pb2.HistoryEvent) -> tuple[int, Event]:
    """Inverse of :func:`history_event_to_proto`."""
    return msg.cursor, event_from_proto(msg.event)
