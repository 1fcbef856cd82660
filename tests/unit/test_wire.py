"""Records and errors survive the trip through protobuf bytes and back, exactly."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import kit
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.errors import ERROR_METADATA_KEY, error_from_rpc, status_of
from tradeflow.domain.codec import decode_page_token
from tradeflow.domain.emergency import (
    BarrierReport,
    EmergencySnapshot,
    InFlightAction,
    LimitExplanation,
    ScopeIds,
)
from tradeflow.domain.errors import (
    EmergencyHalted,
    InvalidRequest,
    RiskLimitExceeded,
    TradeflowError,
    ValidationIssue,
    WorkflowValidationError,
)
from tradeflow.domain.limits import (
    CURSOR_MAX,
    ERROR_DETAILS_MAX_BYTES,
    ERROR_MESSAGE_MAX_BYTES,
    IN_FLIGHT_MAX,
    PAGE_MAX_BYTES,
    PAGE_TOKEN_MAX_LENGTH,
)
from tradeflow.domain.ownership import Fence
from tradeflow.domain.records import (
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
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2
from tradeflow.proto.state.v1 import state_service_pb2

M = TypeVar("M", bound=Message)
T = TypeVar("T")

NOW = 1_767_323_045.123456
BIG = 2**63 - 1
"""An integer a double cannot hold: proves JSON fields are not squeezed through floats."""
DATA: dict[str, Any] = {
    "quantity": BIG,
    "price": 101.25,
    "side": "buy",
    "fills": [{"id": 1, "qty": 3}, {"id": 2, "qty": 4}],
    "note": None,
    "ok": True,
    "unicode": "\u20ac\U0001f680",
}
DEFINITION: dict[str, Any] = {
    "blocks": [{"id": "quote", "category": "providers", "type": "price", "properties": {}}]
}


def through_wire(msg: M) -> M:
    """Serialize ``msg`` to bytes and parse it back, as a real transport would."""
    return type(msg).FromString(msg.SerializeToString())


def round_trip(value: T, to_proto: Callable[[T], Message], from_proto: Callable[[Any], T]) -> T:
    return from_proto(through_wire(to_proto(value)))


def full_record(**changes: Any) -> ExecutionRecord:
    fields: dict[str, Any] = {
        "execution_id": "exec-1",
        "workflow_id": "wf-1",
        "status": ExecutionStatus.COMPLETED,
        "started_at": NOW,
        "definition": DEFINITION,
        "correlation_id": "corr-1",
        "bot_id": "bot-1",
        "strategy_id": "strat-1",
        "finished_at": NOW + 1.5,
        "error": "node 'buy' failed",
        "result": {"status": "completed", "results": {"quote": DATA}},
        "request_id": "req-1",
    }
    fields.update(changes)
    return ExecutionRecord(**fields)


def full_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "node_completed",
        "event_id": "ev-1",
        "sequence": 7,
        "timestamp": NOW,
        "correlation_id": "corr-1",
        "execution_id": "exec-1",
        "workflow_id": "wf-1",
        "bot_id": "bot-1",
        "strategy_id": "strat-1",
        "node_id": "quote",
        "data": DATA,
    }
    fields.update(changes)
    return Event(**fields)


def checkpoint(node_id: str, state: CheckpointState, **changes: Any) -> Checkpoint:
    return Checkpoint("exec-1", node_id, state, NOW, **changes)


MINIMAL_RECORD = ExecutionRecord(
    execution_id="exec-2",
    workflow_id="wf-2",
    status=ExecutionStatus.RUNNING,
    started_at=NOW,
    definition=DEFINITION,
    correlation_id="corr-2",
)


@pytest.mark.parametrize(
    "event",
    [full_event(), Event("execution_started", "ev-2", 1, NOW)],
    ids=["every-field", "only-required"],
)
def test_event_round_trip(event: Event) -> None:
    """An event comes back equal, unset ids staying None."""
    assert round_trip(event, wire.event_to_proto, wire.event_from_proto) == event


def test_event_proto_carries_schema_version() -> None:
    """The wire event carries the contract's schema version."""
    assert wire.event_to_proto(full_event()).schema_version == 1


@pytest.mark.parametrize(
    "record",
    [full_record(), MINIMAL_RECORD, *(full_record(status=s) for s in ExecutionStatus)],
)
def test_execution_record_round_trip(record: ExecutionRecord) -> None:
    """An execution record comes back equal, whatever its status and unset fields."""
    back = round_trip(record, wire.execution_record_to_proto, wire.execution_record_from_proto)
    assert back == record


@pytest.mark.parametrize("state", list(CheckpointState))
def test_checkpoint_round_trip(state: CheckpointState) -> None:
    """A checkpoint in every state comes back equal, with and without outputs."""
    rich = checkpoint("buy", state, outputs=DATA, error="boom", attempt=3)
    bare = checkpoint("buy", state)
    for cp in (rich, bare):
        assert round_trip(cp, wire.checkpoint_to_proto, wire.checkpoint_from_proto) == cp


def test_empty_outputs_stay_distinct_from_no_outputs() -> None:
    """Outputs ``{}`` and outputs ``None`` are not confused on the wire."""
    empty = checkpoint("gate", CheckpointState.COMPLETED, outputs={})
    back = round_trip(empty, wire.checkpoint_to_proto, wire.checkpoint_from_proto)
    assert back.outputs == {}
    assert (
        wire.checkpoint_from_proto(
            common_pb2.Checkpoint(state=common_pb2.CHECKPOINT_STATE_COMPLETED)
        ).outputs
        is None
    )


@pytest.mark.parametrize(
    "query",
    [
        ExecutionQuery(),
        ExecutionQuery(
            workflow_id="wf-1",
            bot_id="bot-1",
            strategy_id="strat-1",
            status=ExecutionStatus.HALTED,
            started_after=NOW - 60,
            started_before=NOW,
            limit=10,
            page_token="opaque",
        ),
    ],
    ids=["defaults", "every-filter"],
)
def test_execution_query_round_trip(query: ExecutionQuery) -> None:
    """An execution query comes back equal, unset filters staying None."""
    back = round_trip(query, wire.execution_query_to_proto, wire.execution_query_from_proto)
    assert back == query


def test_execution_query_page_size_zero_keeps_default() -> None:
    """A query with no page size gets the records' default limit."""
    assert wire.execution_query_from_proto(common_pb2.ExecutionQuery()) == ExecutionQuery()


@pytest.mark.parametrize(
    "page",
    [
        ExecutionPage(executions=(full_record(), MINIMAL_RECORD), next_page_token="next"),
        ExecutionPage(executions=()),
    ],
    ids=["with-token", "last-empty"],
)
def test_execution_page_round_trip(page: ExecutionPage) -> None:
    """A page of executions comes back equal, in order, with its token."""
    back = round_trip(page, wire.execution_page_to_proto, wire.execution_page_from_proto)
    assert back == page


def test_a_history_page_over_the_byte_bound_ends_early_at_a_cursor() -> None:
    """ReadEvents answers at most PAGE_MAX_BYTES of events (never fewer than one): the
    events sent are the first ones, so a reader continues after the last cursor it got."""
    data = {"blob": "x" * (PAGE_MAX_BYTES // 3)}
    history = [(n, kit.event("e", n, data=data)) for n in range(1, 6)]
    msg = wire.events_page_to_proto(history)
    sent = [wire.history_event_from_proto(item) for item in msg.events]
    assert 1 <= len(sent) < len(history)
    assert sent == history[: len(sent)]
    assert msg.ByteSize() <= PAGE_MAX_BYTES + 1024
    assert len(wire.events_page_to_proto(history[:1]).events) == 1


def test_a_page_over_the_byte_bound_ends_early_and_its_token_continues_after_it() -> None:
    """A page of large records is cut at PAGE_MAX_BYTES (never below one record), and its
    token names the last record sent, so the next page starts right after it."""
    big = {"blocks": [], "note": "x" * (PAGE_MAX_BYTES // 3)}
    records = tuple(
        kit.execution(f"e{n}", started_at=1_000.0 - n, definition=big) for n in range(5)
    )
    msg = wire.execution_page_to_proto(ExecutionPage(executions=records, next_page_token=None))
    sent = len(msg.executions)
    assert 1 <= sent < len(records)
    assert msg.ByteSize() <= PAGE_MAX_BYTES + 1024
    assert decode_page_token(msg.next_page_token) == (records[sent - 1].started_at, f"e{sent - 1}")
    one = wire.execution_page_to_proto(ExecutionPage(executions=records[:1], next_page_token="t"))
    assert len(one.executions) == 1 and one.next_page_token == "t"


@pytest.mark.parametrize(
    "issue",
    [
        ValidationIssue("buy", "properties.symbol", "a non-empty string", "''"),
        ValidationIssue(None, "blocks", "a non-empty list", "[]"),
    ],
    ids=["block", "workflow-level"],
)
def test_validation_issue_round_trip(issue: ValidationIssue) -> None:
    """A validation issue comes back equal, a missing block id staying None."""
    back = round_trip(issue, wire.validation_issue_to_proto, wire.validation_issue_from_proto)
    assert back == issue


def test_execution_round_trip_keeps_node_order() -> None:
    """An execution with per-node results comes back equal, nodes in the given order."""
    nodes = {
        "quote": checkpoint("quote", CheckpointState.COMPLETED, outputs={"price": 101}),
        "gate": checkpoint("gate", CheckpointState.SKIPPED),
        "buy": checkpoint("buy", CheckpointState.FAILED, error="rejected", attempt=2),
    }
    msg = through_wire(wire.execution_to_proto(full_record(), nodes.values()))
    record, back = wire.execution_from_proto(msg)
    assert (record, list(back.items())) == (full_record(), list(nodes.items()))


@pytest.mark.parametrize(
    "halt",
    [
        HaltState(Scope.GLOBAL, None, "kill switch", "ops", NOW),
        *(HaltState(s, "target-1", "drawdown", "risk", NOW) for s in Scope if s != Scope.GLOBAL),
    ],
)
def test_halt_state_round_trip(halt: HaltState) -> None:
    """A halt of every scope comes back equal, a global one without target."""
    assert round_trip(halt, wire.halt_state_to_proto, wire.halt_state_from_proto) == halt


@pytest.mark.parametrize("state", list(TradingState))
@pytest.mark.parametrize("cancel_orders", [False, True])
def test_halt_state_keeps_its_trading_state_and_cancel_orders(
    state: TradingState, cancel_orders: bool
) -> None:
    """Every trading state and the cancel-on-halt flag come back as they were sent."""
    halt = HaltState(Scope.BOT, "bot-1", "wind down", "ops", NOW, state, cancel_orders)
    assert round_trip(halt, wire.halt_state_to_proto, wire.halt_state_from_proto) == halt


def test_a_halt_without_a_state_reads_as_halted() -> None:
    """A halt from a service that sends no state (unspecified) is HALTED, the strictest."""
    msg = emergency_service_pb2.HaltState(scope=common_pb2.SCOPE_GLOBAL, reason="x", actor="a")
    assert wire.halt_state_from_proto(msg).state is TradingState.HALTED


@pytest.mark.parametrize(
    ("number", "state"),
    [
        (emergency_service_pb2.TRADING_STATE_UNSPECIFIED, TradingState.HALTED),
        (emergency_service_pb2.TRADING_STATE_REDUCE_ONLY, TradingState.REDUCE_ONLY),
        (emergency_service_pb2.TRADING_STATE_CANCEL_ONLY, TradingState.CANCEL_ONLY),
        (emergency_service_pb2.TRADING_STATE_HALTED, TradingState.HALTED),
    ],
)
def test_a_halt_request_asks_for_a_restricting_state(number: int, state: TradingState) -> None:
    """A HaltRequest's state decodes to itself; unspecified means HALTED."""
    assert wire.restriction_from_proto(number) is state


@pytest.mark.parametrize("number", [emergency_service_pb2.TRADING_STATE_ACTIVE, 99])
def test_a_halt_request_for_active_or_no_state_names_the_field(number: int) -> None:
    """ACTIVE is a resume, not a halt, and a number no state has is no state: both are
    InvalidRequest naming ``state``."""
    with pytest.raises(InvalidRequest) as caught:
        wire.restriction_from_proto(number)
    assert caught.value.field == "state"


def test_barrier_report_round_trip() -> None:
    """A halt's answer carries the barrier's report whole: version, live, acknowledged,
    in-flight actions and fenced owners."""
    halt = HaltState(Scope.GLOBAL, None, "stop", "ops", NOW, TradingState.CANCEL_ONLY, True)
    report = BarrierReport(
        version=BIG,
        live=("exec-a", "exec-b", "exec-c"),
        acknowledged=("exec-a", "exec-b"),
        in_flight=(
            InFlightAction("exec-a", "run-1", "buy", "co-1"),
            InFlightAction("exec-b", "run-2", "sell", ""),
        ),
        fenced=("exec-c",),
    )
    msg = through_wire(wire.halt_response_to_proto(halt, report))
    assert wire.halt_state_from_proto(msg.halt) == halt
    assert wire.barrier_report_from_proto(msg) == report


def test_acknowledgement_round_trip() -> None:
    """An executor's acknowledgement comes back as lease, version and in-flight actions;
    an action placing no order of its own has an empty client order id."""
    actions = (
        InFlightAction("exec-a", "run-1", "buy", "co-1"),
        InFlightAction("exec-a", "run-1", "cancel", ""),
    )
    msg = through_wire(wire.acknowledgement_to_proto(Fence("exec-a", 4), CURSOR_MAX, actions))
    assert wire.acknowledgement_from_proto(msg) == (Fence("exec-a", 4), CURSOR_MAX, actions)


def _acknowledgement(**changes: Any) -> emergency_service_pb2.AcknowledgeStateRequest:
    fields: dict[str, Any] = {"owner": "exec-a", "epoch": 1, "version": 1, "in_flight": []}
    fields.update(changes)
    return emergency_service_pb2.AcknowledgeStateRequest(**fields)


def _action(**changes: str) -> emergency_service_pb2.InFlightAction:
    fields = {"owner": "exec-a", "execution_id": "run-1", "node_id": "buy", "client_order_id": ""}
    fields.update(changes)
    return emergency_service_pb2.InFlightAction(**fields)


@pytest.mark.parametrize(
    ("request_msg", "field"),
    [
        (_acknowledgement(owner=""), "owner"),
        (_acknowledgement(owner="exec a"), "owner"),
        (_acknowledgement(epoch=0), "epoch"),
        (_acknowledgement(version=CURSOR_MAX + 1), "version"),
        (_acknowledgement(in_flight=[_action()] * (IN_FLIGHT_MAX + 1)), "in_flight"),
        (_acknowledgement(in_flight=[_action(), _action(owner="exec-b")]), "in_flight[1].owner"),
        (_acknowledgement(in_flight=[_action(execution_id="")]), "in_flight[0].execution_id"),
        (_acknowledgement(in_flight=[_action(node_id="n" * 129)]), "in_flight[0].node_id"),
        (
            _acknowledgement(in_flight=[_action(client_order_id="co\x00")]),
            "in_flight[0].client_order_id",
        ),
    ],
    ids=[
        "empty-owner",
        "owner-not-an-id",
        "epoch-0",
        "version-past-cursor-max",
        "too-many-actions",
        "action-of-another-owner",
        "empty-execution-id",
        "long-node-id",
        "client-order-id-not-an-id",
    ],
)
def test_a_malformed_acknowledgement_is_refused_naming_the_field(
    request_msg: emergency_service_pb2.AcknowledgeStateRequest, field: str
) -> None:
    """Owner, epoch, version, the number of actions and each action's ids are checked."""
    with pytest.raises(InvalidRequest) as caught:
        wire.acknowledgement_from_proto(request_msg)
    assert caught.value.field == field


def test_emergency_state_round_trip() -> None:
    """A snapshot of halts and limits comes back with the same halts, limits and version."""
    halts = (
        HaltState(Scope.GLOBAL, None, "kill switch", "ops", NOW),
        HaltState(Scope.BOT, "bot-1", "drawdown", "risk", NOW + 1),
    )
    limits = (
        RiskLimit("max_position", 5.0, LimitDirection.ABS_ABOVE, True, NOW, "ops"),
        RiskLimit(
            "order_rate", 10, LimitDirection.ABOVE, True, NOW, "ops", Scope.BOT, "bot-1", 60.0
        ),
    )
    msg = through_wire(wire.emergency_state_to_proto(halts, 42, limits))
    snapshot = wire.emergency_state_from_proto(msg)
    assert snapshot == EmergencySnapshot.of(42, halts, limits)
    assert set(snapshot.limits) == {"max_position", "order_rate@bot:bot-1"}


def test_a_snapshot_with_a_malformed_limit_names_the_limit_and_field() -> None:
    """An unreadable limit in a pushed snapshot is refused naming its index and field."""
    msg = wire.emergency_state_to_proto((), 1, [RiskLimit("x", 1.0, LimitDirection.ABOVE)])
    msg.limits[0].state = 99
    with pytest.raises(InvalidRequest) as caught:
        wire.emergency_state_from_proto(msg)
    assert caught.value.field == "limits[0].state"


@pytest.mark.parametrize("direction", list(LimitDirection))
def test_risk_limit_round_trip(direction: LimitDirection) -> None:
    """A risk limit in every direction comes back equal."""
    limit = RiskLimit("daily_pnl", -500.25, direction, False, NOW, "ops")
    assert round_trip(limit, wire.risk_limit_to_proto, wire.risk_limit_from_proto) == limit


ids_st = st.from_regex(r"[A-Za-z0-9_\-:~@+=]{1,128}", fullmatch=True)
scopes_st = st.one_of(
    st.just((Scope.GLOBAL, None)),
    st.tuples(st.sampled_from([Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW]), ids_st),
)
finite_st = st.floats(allow_nan=False, allow_infinity=False)
options_st = st.builds(
    LimitOptions,
    window=st.none() | st.floats(min_value=1e-3, max_value=86_400.0),
    state=st.none() | st.sampled_from(TradingState),
    consecutive=st.integers(min_value=1, max_value=1000),
    timezone=st.sampled_from(["UTC", "Europe/London", "America/New_York", "Asia/Tokyo"]),
    reset_time=st.from_regex(r"([01]\d|2[0-3]):[0-5]\d", fullmatch=True),
    lift_on_reset=st.booleans(),
    cancel_orders=st.booleans(),
)


@st.composite
def risk_limits(draw: st.DrawFn) -> RiskLimit:
    scope, target = draw(scopes_st)
    options = draw(options_st)
    return RiskLimit(
        limit_type=draw(ids_st),
        threshold=draw(finite_st),
        direction=draw(st.sampled_from(LimitDirection)),
        auto_halt=draw(st.booleans()),
        # Whole microseconds: what a Timestamp carries exactly for any time we store.
        updated_at=NOW + draw(st.integers(0, 10**9)) / 1e6,
        updated_by=draw(st.text(max_size=20)),
        scope=scope,
        target=target,
        window=options.window,
        state=options.state,
        consecutive=options.consecutive,
        timezone=options.timezone,
        reset_time=options.reset_time,
        lift_on_reset=options.lift_on_reset,
        cancel_orders=options.cancel_orders,
    )


@given(limit=risk_limits())
def test_a_scoped_limit_with_every_option_round_trips(limit: RiskLimit) -> None:
    """Any limit of any scope with any options (window, trigger state, consecutive, time
    zone, reset time, lift on reset, cancel orders) comes back equal, key included."""
    back = round_trip(limit, wire.risk_limit_to_proto, wire.risk_limit_from_proto)
    assert back == limit
    assert back.key == limit.key


def test_a_limit_stored_before_scopes_reads_as_global_with_default_options() -> None:
    """A RiskLimit message without fields 7-15 (an older service) is a global limit, not a
    trigger, with a consecutive of 1, UTC and 00:00."""
    old = emergency_service_pb2.RiskLimit(
        limit_type="max_position",
        threshold=5.0,
        direction=emergency_service_pb2.LIMIT_DIRECTION_ABS_ABOVE,
        auto_halt=True,
        updated_at=wire.timestamp_to_proto(NOW),
        updated_by="ops",
    )
    limit = wire.risk_limit_from_proto(through_wire(old))
    assert limit == RiskLimit("max_position", 5.0, LimitDirection.ABS_ABOVE, True, NOW, "ops")
    assert (limit.scope, limit.target, limit.key) == (Scope.GLOBAL, None, "max_position")
    assert wire.limit_options_from_proto(old) == NO_OPTIONS


@given(options=options_st)
def test_set_risk_limit_options_round_trip(options: LimitOptions) -> None:
    """The options a SetRiskLimitRequest carries come back as the LimitOptions sent."""
    msg = emergency_service_pb2.SetRiskLimitRequest(**wire.limit_options_fields(options))
    assert wire.limit_options_from_proto(through_wire(msg)) == options


def test_unset_limit_options_are_the_defaults() -> None:
    """Unset options read as the documented defaults: no window, no trigger state, one
    breach, UTC, 00:00; an unspecified scope is global."""
    request = emergency_service_pb2.SetRiskLimitRequest(limit_type="max_position", threshold=1)
    assert wire.limit_options_from_proto(request) == NO_OPTIONS
    assert wire.limit_scope_from_proto(request) == (Scope.GLOBAL, None)
    delete = emergency_service_pb2.DeleteRiskLimitRequest(
        scope=common_pb2.SCOPE_BOT, target="bot-1"
    )
    assert wire.limit_scope_from_proto(delete) == (Scope.BOT, "bot-1")


@pytest.mark.parametrize(
    ("read", "changes", "field"),
    [
        (wire.limit_options_from_proto, {"state": 99}, "state"),
        (wire.limit_scope_from_proto, {"scope": 42}, "scope"),
    ],
    ids=["unknown-state", "unknown-scope"],
)
def test_a_limit_request_with_an_unknown_enum_names_the_field(
    read: Callable[[Any], object], changes: dict[str, int], field: str
) -> None:
    """A state or scope number no member has is refused naming the field."""
    request = emergency_service_pb2.SetRiskLimitRequest(limit_type="heartbeat", **changes)
    with pytest.raises(InvalidRequest) as caught:
        read(request)
    assert caught.value.field == field


progress_st = st.builds(
    TriggerProgress,
    version=st.just(0),
    breaches=st.integers(0, 1000),
    fired=st.booleans(),
    peak=st.none() | finite_st,
    day=st.none() | st.dates().map(lambda d: d.isoformat()),
    anchor=st.none() | finite_st,
    last_beat=st.none() | st.integers(0, 10**9).map(lambda us: NOW + us / 1e6),
    evaluated_at=st.just(0.0) | st.integers(0, 10**9).map(lambda us: NOW + us / 1e6),
    value=st.none() | finite_st,
)


@given(limit=risk_limits(), progress=progress_st)
def test_trigger_status_round_trip(limit: RiskLimit, progress: TriggerProgress) -> None:
    """A trigger and its progress (breaches, fired, peak, day and anchor, last beat, value,
    when evaluated or never) come back equal; the store's version does not travel."""
    msg = through_wire(wire.trigger_status_to_proto(limit, progress))
    assert wire.trigger_status_from_proto(msg) == (limit, progress)


@pytest.mark.parametrize("halted", [True, False], ids=["halted", "active"])
def test_limit_explanation_round_trip(halted: bool) -> None:
    """An explanation (state, deciding halt or none, applicable and deciding limits, each
    trigger's progress) comes back equal for the ids it was asked for."""
    ids = ScopeIds("wf-1", "bot-1", "strat-1")
    broad = RiskLimit("max_position", 10, LimitDirection.ABS_ABOVE, True, NOW, "ops")
    narrow = replace(broad, scope=Scope.BOT, target="bot-1", threshold=5)
    switch = RiskLimit(
        "heartbeat",
        30,
        LimitDirection.ABOVE,
        True,
        NOW,
        "ops",
        Scope.BOT,
        "bot-1",
        state=TradingState.CANCEL_ONLY,
    )
    halt = HaltState(
        Scope.BOT,
        "bot-1",
        "no heartbeat",
        "trigger:heartbeat@bot:bot-1",
        NOW,
        TradingState.CANCEL_ONLY,
    )
    explanation = LimitExplanation(
        ids=ids,
        state=TradingState.CANCEL_ONLY if halted else TradingState.ACTIVE,
        halt=halt if halted else None,
        applicable=(switch, broad, narrow),
        deciding=(switch, narrow),
        triggers=((switch, TriggerProgress(breaches=1, fired=halted, last_beat=NOW)),),
    )
    msg = through_wire(wire.limit_explanation_to_proto(explanation))
    assert wire.limit_explanation_from_proto(msg, ids) == explanation


@pytest.mark.parametrize(
    "denial",
    [
        Denial("max_position", Scope.BOT, "bot-1", 12.5, 10.0, "position beyond max_position"),
        Denial("order_rate", Scope.GLOBAL, None, 0.25, 5.0, "order rate of global above 5"),
    ],
    ids=["scoped", "global"],
)
def test_order_denied_round_trip(denial: Denial) -> None:
    """A denial report (the denial, ids, execution, node and client order id) comes back
    equal."""
    ids = ScopeIds("wf-1", "bot-1", None)
    msg = through_wire(
        wire.order_denied_to_proto(
            denial, ids=ids, execution_id="ex-1", node_id="buy", client_order_id="ex-1:buy"
        )
    )
    assert wire.order_denied_from_proto(msg) == (denial, ids)
    assert (msg.execution_id, msg.node_id, msg.client_order_id) == ("ex-1", "buy", "ex-1:buy")


def test_a_denial_without_a_price_keeps_its_nan_value() -> None:
    """A check that had no price to judge denies with value NaN, which the wire keeps."""
    denial = Denial("max_order_notional", Scope.GLOBAL, None, math.nan, 100.0, "no price")
    back = round_trip(denial, wire.denial_to_proto, wire.denial_from_proto)
    assert math.isnan(back.value)
    assert (back.check, back.threshold, back.reason) == ("max_order_notional", 100.0, "no price")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scope": common_pb2.SCOPE_UNSPECIFIED}, "denial.scope"),
        ({"target": "bot-1"}, "denial.target"),
        ({"scope": common_pb2.SCOPE_BOT}, "denial.target"),
        ({"check": "not an id"}, "denial.check"),
        ({"reason": "two\nlines"}, "denial.reason"),
    ],
    ids=["no-scope", "global-with-target", "bot-without-target", "check", "reason"],
)
def test_a_malformed_denial_report_is_refused_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    """A denial's scope must be given and fit its target, its check be an id and its reason
    one line of bounded text."""
    fields: dict[str, Any] = {
        "check": "max_position",
        "scope": common_pb2.SCOPE_GLOBAL,
        "value": 1.0,
        "threshold": 0.5,
        "reason": "too big",
        **changes,
    }
    msg = emergency_service_pb2.RecordOrderDeniedRequest(
        denial=emergency_service_pb2.OrderDenial(**fields)
    )
    with pytest.raises(InvalidRequest) as caught:
        wire.order_denied_from_proto(msg)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "entry",
    [
        AuditEntry(1, NOW, "ops", "halt", Scope.STRATEGY, "strat-1", "drawdown", {"n": 1}),
        AuditEntry(BIG, NOW, "ops", "set_risk_limit", None, None, "limit", DATA),
        AuditEntry(3, NOW, "ops", "resume", Scope.GLOBAL, None, "all clear"),
    ],
    ids=["scoped", "unscoped", "no-details"],
)
def test_audit_entry_round_trip(entry: AuditEntry) -> None:
    """An audit entry comes back equal, no scope staying None."""
    assert round_trip(entry, wire.audit_entry_to_proto, wire.audit_entry_from_proto) == entry


@pytest.mark.parametrize(
    "batch",
    [
        StateBatch(
            execution=full_record(),
            checkpoints=(
                checkpoint("quote", CheckpointState.COMPLETED, outputs=DATA),
                checkpoint("buy", CheckpointState.INTENT),
            ),
            events=(full_event(), full_event(sequence=8, node_id=None, data={})),
        ),
        StateBatch(),
    ],
    ids=["everything", "empty"],
)
def test_state_batch_round_trip(batch: StateBatch) -> None:
    """A state batch comes back equal, a missing execution staying None."""
    assert round_trip(batch, wire.state_batch_to_proto, wire.state_batch_from_proto) == batch


@pytest.mark.parametrize("effect", list(OrderEffect))
def test_state_batch_carries_its_action_guard(effect: OrderEffect) -> None:
    """An intent's guard (scope ids, unset ones staying None, and effect) comes back equal."""
    batch = StateBatch(
        checkpoints=(checkpoint("buy", CheckpointState.INTENT),),
        fence=Fence("exec-a", 2),
        guard=ActionGuard("wf-1", None, "strat-1", effect),
    )
    assert round_trip(batch, wire.state_batch_to_proto, wire.state_batch_from_proto) == batch


def test_a_guard_without_an_effect_is_the_strictest() -> None:
    """A guard whose effect nobody set is OPENS, which every restricting state refuses."""
    msg = state_service_pb2.WriteBatchRequest(guard=state_service_pb2.ActionGuard(bot_id="b"))
    assert wire.state_batch_from_proto(msg).guard == ActionGuard(None, "b", None, OrderEffect.OPENS)


@pytest.mark.parametrize(
    ("guard", "field"),
    [
        (state_service_pb2.ActionGuard(bot_id=""), "guard.bot_id"),
        (state_service_pb2.ActionGuard(workflow_id="w" * 129), "guard.workflow_id"),
        (state_service_pb2.ActionGuard(strategy_id="s.1"), "guard.strategy_id"),
        (state_service_pb2.ActionGuard(effect=42), "guard.effect"),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_guard_is_refused_naming_the_field(
    guard: state_service_pb2.ActionGuard, field: str
) -> None:
    """Each set scope id of a guard must be an id, its effect a known one."""
    with pytest.raises(InvalidRequest) as caught:
        wire.state_batch_from_proto(state_service_pb2.WriteBatchRequest(guard=guard))
    assert caught.value.field == field


def test_state_batch_carries_request_id() -> None:
    """The write request carries the caller's idempotency key."""
    msg = through_wire(wire.state_batch_to_proto(StateBatch(), request_id="req-9"))
    assert msg.request_id == "req-9"


def test_history_event_round_trip() -> None:
    """A (cursor, event) pair of history comes back equal."""
    msg = through_wire(wire.history_event_to_proto(BIG, full_event()))
    assert wire.history_event_from_proto(msg) == (BIG, full_event())


def test_json_fields_keep_integers_exact() -> None:
    """Integers in free-form JSON come back as ints with every digit, floats as floats."""
    data = round_trip(full_event(), wire.event_to_proto, wire.event_from_proto).data
    assert (type(data["quantity"]), data["quantity"]) == (int, BIG)
    assert (type(data["price"]), data["fills"][1]["qty"]) == (float, 4)


def test_timestamps_survive_exactly() -> None:
    """Epoch floats with sub-microsecond digits (1970s to 2096) come back bit-identical."""
    rng = random.Random(20260102)
    stamps = [rng.uniform(1e7, 4e9) for _ in range(2000)] + [NOW, 1e9, 4e9 - 1e-6]
    back = [wire.timestamp_from_proto(through_wire(wire.timestamp_to_proto(t))) for t in stamps]
    assert back == stamps


def test_timestamp_rounding_carries_into_seconds() -> None:
    """A fraction that rounds up to a whole second yields a valid Timestamp (nanos < 1e9)."""
    ts = wire.timestamp_to_proto(0.9999999999)
    assert (ts.seconds, ts.nanos) == (1, 0)


def test_timestamp_before_epoch() -> None:
    """Negative epoch seconds use protobuf's convention: floor seconds, positive nanos."""
    ts = wire.timestamp_to_proto(-1.5)
    assert (ts.seconds, ts.nanos, wire.timestamp_from_proto(ts)) == (-2, 500_000_000, -1.5)


@pytest.mark.parametrize(
    ("codec", "members"),
    [
        (wire.EXECUTION_STATUS, ExecutionStatus),
        (wire.SCOPE, Scope),
        (wire.CHECKPOINT_STATE, CheckpointState),
        (wire.LIMIT_DIRECTION, LimitDirection),
        (wire.TRADING_STATE, TradingState),
        (wire.ORDER_EFFECT, OrderEffect),
    ],
)
def test_enum_codecs_map_every_member(codec: wire.EnumCodec[Any, Any], members: Any) -> None:
    """Every records enum member has its own non-zero proto value and maps back to itself."""
    numbers = [codec.to_proto(m) for m in members]
    assert 0 not in numbers
    assert [codec.from_proto(n, "f") for n in numbers] == list(members)


def test_enum_codec_none_is_unspecified() -> None:
    """None travels as _UNSPECIFIED and an optional decode turns it back into None."""
    number = wire.LIMIT_DIRECTION.to_proto(None)
    assert number == emergency_service_pb2.LIMIT_DIRECTION_UNSPECIFIED
    assert wire.LIMIT_DIRECTION.from_proto_optional(number, "direction") is None


def test_unspecified_required_enum_names_the_field() -> None:
    """A record field that needs a value rejects _UNSPECIFIED, naming field and proto value."""
    with pytest.raises(InvalidRequest, match=r"'scope'.*SCOPE_UNSPECIFIED") as caught:
        wire.halt_state_from_proto(emergency_service_pb2.HaltState(reason="x"))
    assert caught.value.field == "scope"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"text"'])
def test_json_that_is_not_an_object_names_the_field(text: str) -> None:
    """A JSON field holding malformed JSON or a non-object is rejected, naming the field."""
    msg = common_pb2.ExecutionRecord(
        status=common_pb2.EXECUTION_STATUS_RUNNING, definition_json=text
    )
    with pytest.raises(InvalidRequest) as caught:
        wire.execution_record_from_proto(msg)
    assert (caught.value.field, caught.value.found) == ("definition_json", text)


def test_empty_json_text_reads_as_empty_object() -> None:
    """A non-optional JSON field left empty reads as {} (proto3's default string)."""
    assert wire.decode_json_object("", "data_json") == {}


@pytest.mark.parametrize(
    "error",
    [
        EmergencyHalted("desk call", scope="bot", target="bot-1"),
        EmergencyHalted("wind down", scope="strategy", target="s-1", state="reduce_only"),
        RiskLimitExceeded("daily_loss", -600.0, -500.0, halted=True),
    ],
)
def test_an_error_with_details_this_client_does_not_know_keeps_its_class(
    error: TradeflowError,
) -> None:
    """Detail keys from a newer server are ignored: the same domain error comes back."""
    code, message, _ = status_of(error)
    details = {**error.details(), "added_later": 1}
    body = json.dumps({"type": type(error).__name__, "message": message, "details": details})
    trailing = grpc.aio.Metadata((ERROR_METADATA_KEY, body.encode()))
    rpc_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message)

    rebuilt = error_from_rpc(rpc_error, service="emergency")

    assert type(rebuilt) is type(error)
    assert (rebuilt.message, rebuilt.details()) == (error.message, error.details())


def _rpc_error(error: TradeflowError) -> tuple[str, bytes, grpc.aio.AioRpcError]:
    """The status message and details ``status_of`` makes, and the RPC error carrying them."""
    code, message, ((key, body),) = status_of(error)
    trailing = grpc.aio.Metadata((key, body))
    return message, body, grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message)


def test_error_message_and_details_stay_within_transport_limits() -> None:
    """A huge message and details are cut to their bounds; class and field survive."""
    error = InvalidRequest("execution_id", "x" * 50_000, "y" * 50_000)
    error.message = "é" * 100_000
    message, body, rpc_error = _rpc_error(error)
    # gRPC percent-encodes every byte outside printable ASCII (and "%") as three.
    sent = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode())
    assert sent <= ERROR_MESSAGE_MAX_BYTES and message.endswith("...")
    assert len(body) <= ERROR_DETAILS_MAX_BYTES
    rebuilt = error_from_rpc(rpc_error, service="state")
    assert isinstance(rebuilt, InvalidRequest) and rebuilt.field == "execution_id"


def test_many_validation_issues_are_cut_and_counted_in_a_last_issue() -> None:
    """Issues past what fits the details travel as one last issue counting them."""
    issues = [ValidationIssue(f"b{i}", "properties.x", "e" * 300, "f" * 300) for i in range(100)]
    _, body, rpc_error = _rpc_error(WorkflowValidationError(issues))
    rebuilt = error_from_rpc(rpc_error, service="executor")
    assert len(body) <= ERROR_DETAILS_MAX_BYTES
    assert isinstance(rebuilt, WorkflowValidationError)
    *kept, last = rebuilt.issues
    assert [i.block_id for i in kept] == [f"b{i}" for i in range(len(kept))]
    assert last.found == f"{100 - len(kept)} more problems not sent"


def test_a_short_error_travels_unchanged() -> None:
    """Within the bounds nothing is cut."""
    error = InvalidRequest("bot_id", "an id", "a.b")
    message, body, _ = _rpc_error(error)
    assert message == error.message
    assert json.loads(body)["details"] == error.details()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (common_pb2.ExecutionQuery(started_after={"seconds": 2**62}), "started_after"),
        (common_pb2.ExecutionQuery(started_before={"seconds": -1}), "started_before"),
        (common_pb2.ExecutionQuery(bot_id="b" * 5000), "bot_id"),
        (common_pb2.ExecutionQuery(workflow_id=""), "workflow_id"),
        (common_pb2.ExecutionQuery(page_token="t" * (PAGE_TOKEN_MAX_LENGTH + 1)), "page_token"),
        (common_pb2.ExecutionQuery(page_size=1001), "page_size"),
        (common_pb2.ExecutionQuery(status=42), "status"),  # type: ignore[arg-type]
    ],
)
def test_query_past_its_limits_is_refused_naming_the_field(
    query: common_pb2.ExecutionQuery, field: str
) -> None:
    """Ids, time range, page size, page token length and status are checked on decoding."""
    with pytest.raises(InvalidRequest) as caught:
        wire.execution_query_from_proto(query)
    assert caught.value.field == field


def test_size_is_checked_in_utf8_bytes() -> None:
    """bytes_at_most counts UTF-8 bytes, not characters."""
    assert wire.bytes_at_most("definition_json", "é" * 5, 10) == "é" * 5
    with pytest.raises(InvalidRequest, match="12 bytes"):
        wire.bytes_at_most("definition_json", "é" * 6, 11)


def test_an_acknowledgement_carries_client_order_ids_of_the_longest_ids() -> None:
    """A client order id is an execution id, ':' and a block id: up to 257 id characters
    pass (an executor running such an action can still acknowledge), one more is refused
    naming the field."""
    longest = f"{'e' * 128}:{'b' * 128}"
    _, _, in_flight = wire.acknowledgement_from_proto(
        _acknowledgement(in_flight=[_action(client_order_id=longest)])
    )
    assert in_flight[0].client_order_id == longest
    with pytest.raises(InvalidRequest) as caught:
        wire.acknowledgement_from_proto(
            _acknowledgement(in_flight=[_action(client_order_id=longest + "x")])
        )
    assert caught.value.field.endswith("client_order_id")
