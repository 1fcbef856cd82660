"""Every RPC of the three services, fuzzed with well-formed hostile requests (issue 7).

Each request is answered OK or with a client-error code, never INTERNAL, UNKNOWN or a
retryable code; afterwards every service still serves and an unrelated bot still trades.
The RPCs come from the generated descriptors, so a new RPC (or field) is fuzzed as soon
as it exists; the requests come from ``fuzz_messages`` (150 per RPC, or every field and
value kind once where that is more; 2 for a request with no fields: all default, and an
unknown field). After each RPC's requests, a few normal calls show whether what they
stored broke a later read (and name the RPC that did).
About 5,000 requests (with the limit, heartbeat and denial RPCs of issue 10), plus ~2 s
to start and stop the stack.

A well-formed GLOBAL halt (a fuzzed ``Halt``, or a ``CheckRiskLimit`` breach with
auto-halt) legitimately stops all trading: such halts are resumed after the fuzzing,
every other fuzzed halt stays in place while the unrelated bot trades.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import pytest_asyncio
from fuzz_messages import Case, base, cases
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit import DEADLINE_SECONDS
from servers import Stack
from workflows import trading_workflow

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.client import open_channel
from tradeflow.adapters.grpc.errors import ERROR_METADATA_KEY
from tradeflow.domain.clock import new_id
from tradeflow.domain.limits import ERROR_DETAILS_MAX_BYTES, ERROR_MESSAGE_MAX_BYTES, check_id
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import NO_OPTIONS, checked_limit_options
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as emergency_pb
from tradeflow.proto.executor.v1 import executor_service_pb2 as executor_pb
from tradeflow.proto.state.v1 import state_service_pb2 as state_pb

pytestmark = pytest.mark.integration

SEED = 7
PER_RPC = 150
"""Requests per RPC at least (every field and value kind once where that is more)."""
IN_FLIGHT = 16
"""Requests of one RPC in flight at once."""
UNARY_DEADLINE = 20.0
"""A unary call not answered by then hangs (a violation); only a bound, never a timing."""
STREAM_WAIT = 1.0
"""A stream that neither sends a message nor ends within this is correctly waiting for
events (its filters match nothing yet): not a violation. An error arrives before it."""

CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Documented answers to a bad request; anything else (INTERNAL, UNKNOWN, UNAVAILABLE,
DEADLINE_EXCEEDED, ABORTED, CANCELLED...) is a violation."""

# In this order: the executor's fuzzing sees what the state fuzzing stored, and the
# emergency fuzzing (which may halt globally) comes last.
SERVICES: tuple[tuple[str, ModuleType], ...] = (
    ("state", state_pb),
    ("executor", executor_pb),
    ("emergency", emergency_pb),
)
DEFINITION_JSON = json.dumps(trading_workflow())
_SET_LIMIT = emergency_pb.SetRiskLimitRequest.DESCRIPTOR.full_name
OVERRIDES: dict[str, object] = {
    "definition_json": DEFINITION_JSON,
    "limit_type": "max_exposure",
    "ttl_ms": 3000,
    f"{_SET_LIMIT}.scope": common_pb2.SCOPE_BOT,
    f"{_SET_LIMIT}.state": emergency_pb.TRADING_STATE_UNSPECIFIED,
    f"{_SET_LIMIT}.consecutive": 0,
    f"{_SET_LIMIT}.timezone": "",
    f"{_SET_LIMIT}.reset_time": "",
    f"{_SET_LIMIT}.lift_on_reset": False,
    f"{_SET_LIMIT}.cancel_orders": False,
}
"""Base values by field full name or name: a real one-order workflow where a definition
goes, a known limit type (one the unrelated bot's workflow does not check), a lease time
the state service accepts (so AcquireLease and RenewLease cases reach the store), and a
SetRiskLimit of one bot with no trigger options (which max_exposure does not take), so its
cases reach the store."""
UNSET = frozenset(
    {
        state_pb.WriteBatchRequest.DESCRIPTOR.fields_by_name["fence"].full_name,
        f"{_SET_LIMIT}.window",
    }
)
"""Fields the base requests leave out: a fuzzed fence names no live lease, so a fenced
WriteBatch would stop at LeaseLost before the store's write path (its own cases,
fence.owner and fence.epoch, still carry one); a window only order_rate takes."""
OWNERSHIP_RPCS = frozenset(
    {
        "AcquireLease",
        "RenewLease",
        "ReleaseLease",
        "ClaimExecution",
        "ListOrphans",
        "RequestCancel",
    }
)


@dataclass(frozen=True, slots=True)
class Violation:
    """A hostile request answered wrongly."""

    rpc: str
    case: Case
    code: str
    details: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.rpc, self.case.path, self.case.kind, self.code


def _listing(violations: list[Violation]) -> list[str]:
    """One line per (RPC, field, value kind, code), with how often and one status message."""
    counts = Counter(v.key for v in violations)
    first = {v.key: v for v in reversed(violations)}
    lines = []
    for key in sorted(first):
        rpc, path, kind, code = key
        details = first[key].details
        shown = details if len(details) <= 300 else f"{details[:300]}..."
        lines.append(f"{rpc} {path} = <{kind}> x{counts[key]}: {code} {shown!r}")
    return lines


def rpcs() -> Iterator[tuple[str, MethodDescriptor]]:
    """(service, method) of every RPC in the generated descriptors."""
    for name, module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield name, method


def test_the_ownership_rpcs_are_fuzzed_with_requests_that_reach_the_store() -> None:
    """The six lease RPCs are among those fuzzed, and their base requests carry a lease time
    the service accepts, so their cases get past validation to the store."""
    names = {method.name for service, method in rpcs() if service == "state"}
    assert names >= OWNERSHIP_RPCS
    for name in ("AcquireLease", "RenewLease"):
        request: Any = base(_method(state_pb, name).input_type, random.Random(SEED), OVERRIDES)
        assert 100 <= request.ttl_ms <= 3_600_000, name


def test_a_set_risk_limit_base_request_is_one_the_service_accepts() -> None:
    """The SetRiskLimit cases start from a request the service would store (a bot's limit
    with default options), so each fuzzed field is what gets judged."""
    request: Any = base(
        _method(emergency_pb, "SetRiskLimit").input_type, random.Random(SEED), OVERRIDES, UNSET
    )
    options = wire.limit_options_from_proto(request)
    assert options == NO_OPTIONS
    scope, target = wire.limit_scope_from_proto(request)
    limit = RiskLimit(request.limit_type, request.threshold, LimitDirection.ABOVE)
    limit = checked_limit_options(replace(limit, scope=scope, target=target))
    assert (limit.scope, limit.state, limit.window) == (Scope.BOT, None, None)
    check_id("target", target)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module alone: what the fuzzing stores and halts touches no other test."""
    running = Stack(
        Path(tmp_path_factory.mktemp("fuzz-stack")), extra_env={"TRADEFLOW_LOG_LEVEL": "warning"}
    )
    running.start()
    yield running
    running.stop()


@pytest_asyncio.fixture
async def channels(fuzz_stack: Stack) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """One channel per service, with the services' own message limits."""
    env = fuzz_stack.client_env()
    opened = {name: open_channel(env[f"TRADEFLOW_{name.upper()}_ADDR"]) for name, _ in SERVICES}
    yield opened
    for channel in opened.values():
        await channel.close()


def _callable(channel: grpc.aio.Channel, method: MethodDescriptor) -> Any:
    path = f"/{method.containing_service.full_name}/{method.name}"
    response = GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    return kind(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )


async def _answer(invoke: Any, method: MethodDescriptor, case: Case) -> grpc.aio.AioRpcError | None:
    """The error a request got, or None for OK (or a stream correctly waiting)."""
    if not method.server_streaming:
        try:
            await invoke(case.message, timeout=UNARY_DEADLINE)
        except grpc.aio.AioRpcError as err:
            return err
        return None
    call = invoke(case.message)
    try:
        async with asyncio.timeout(STREAM_WAIT):
            await call.read()  # the first message, or EOF when the stream ends at once
    except TimeoutError:
        return None
    except grpc.aio.AioRpcError as err:
        return err
    finally:
        call.cancel()
    return None


def _violation(rpc: str, case: Case, err: grpc.aio.AioRpcError | None) -> Violation | None:
    if err is None:
        return None
    code, details = err.code(), err.details() or ""
    if code not in CLIENT_ERRORS:
        return Violation(rpc, case, code.name, details)
    if "message larger than max (" in details:  # gRPC's own words
        # Every request is under the limit (fuzz_messages.MAX_REQUEST_BYTES): the response is not.
        return Violation(rpc, case, f"{code.name} (response over the message limit)", details)
    if len(details.encode()) > ERROR_MESSAGE_MAX_BYTES:
        return Violation(rpc, case, f"{code.name} (status message over the limit)", details)
    for key, value in err.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY and len(value) > ERROR_DETAILS_MAX_BYTES:
            return Violation(rpc, case, f"{code.name} (error details over the limit)", details)
    return None


async def _fuzz(channels: dict[str, grpc.aio.Channel]) -> tuple[list[Violation], int, list[str]]:
    """Every case of every RPC; returns the violations, the number of requests sent, and
    which normal call first failed after which RPC's cases (what they stored broke it)."""
    violations: list[Violation] = []
    broken: dict[str, str] = {}
    sent = 0
    gate = asyncio.Semaphore(IN_FLIGHT)
    for number, (name, method) in enumerate(rpcs()):
        invoke = _callable(channels[name], method)
        rpc = f"{method.containing_service.name}.{method.name}"

        async def one(
            case: Case, invoke: Any = invoke, method: Any = method, rpc: str = rpc
        ) -> None:
            async with gate:
                found = _violation(rpc, case, await _answer(invoke, method, case))
            if found is not None:
                violations.append(found)

        batch = cases(method.input_type, PER_RPC, SEED + number, OVERRIDES, UNSET)
        sent += len(batch)
        await asyncio.gather(*(one(case) for case in batch))
        calls = [(label, call) for label, call in _normal_calls(channels) if label not in broken]
        answers = await asyncio.gather(*(call() for _, call in calls), return_exceptions=True)
        for (label, _), answer in zip(calls, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                broken[label] = (
                    f"{label} fails since the {rpc} cases: {answer.code().name} "
                    f"{(answer.details() or '')[:300]!r}"
                )
            elif isinstance(answer, BaseException):
                raise answer
    return violations, sent, list(broken.values())


async def _resume_global_halts(channel: grpc.aio.Channel) -> bool:
    """Lifts a GLOBAL halt the fuzzing made (it legitimately stops all trading)."""
    state = await _callable(channel, _method(emergency_pb, "GetState"))(
        emergency_pb.GetStateRequest(), timeout=DEADLINE_SECONDS
    )
    if not any(h.scope == common_pb2.SCOPE_GLOBAL for h in state.state.halts):
        return False
    await _callable(channel, _method(emergency_pb, "Resume"))(
        emergency_pb.ResumeRequest(
            request_id=new_id(), scope=common_pb2.SCOPE_GLOBAL, reason="fuzz done", actor="test"
        ),
        timeout=DEADLINE_SECONDS,
    )
    return True


def _method(module: ModuleType, name: str) -> MethodDescriptor:
    for service in module.DESCRIPTOR.services_by_name.values():
        if name in service.methods_by_name:
            found: MethodDescriptor = service.methods_by_name[name]
            return found
    raise KeyError(name)


async def _unrelated_bot_trades(channel: grpc.aio.Channel, retry_halted: bool) -> str:
    """An ExecuteWorkflow of a one-order workflow by ``unrelated-bot`` completes with its
    order placed; returns its execution id. ``retry_halted``: a global halt was just lifted,
    and the executor's pushed view may still hold it for a moment."""
    execute = _callable(channel, _method(executor_pb, "ExecuteWorkflow"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while True:
        response = await execute(
            executor_pb.ExecuteWorkflowRequest(
                request_id=new_id(),
                workflow_id="unrelated-workflow",
                bot_id="unrelated-bot",
                strategy_id="unrelated-strategy",
                definition_json=DEFINITION_JSON,
            ),
            timeout=DEADLINE_SECONDS,
        )
        record = response.execution.record
        halted = record.status == common_pb2.EXECUTION_STATUS_HALTED
        if not (halted and retry_halted and loop.time() < deadline):
            break
    assert record.status == common_pb2.EXECUTION_STATUS_COMPLETED, record
    nodes = {n.node_id: n.state for n in response.execution.nodes}
    assert nodes["buy"] == common_pb2.CHECKPOINT_STATE_COMPLETED, nodes
    return str(record.execution_id)


async def _serving(channel: grpc.aio.Channel, service: str) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_SECONDS
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, reply


async def _first_snapshot(channel: grpc.aio.Channel) -> None:
    watch = _callable(channel, _method(emergency_pb, "WatchState"))(
        emergency_pb.WatchStateRequest(), timeout=DEADLINE_SECONDS
    )
    assert isinstance(await watch.read(), emergency_pb.WatchStateResponse)
    watch.cancel()


async def _events_reach_stream(channel: grpc.aio.Channel, execution_id: str) -> None:
    """The execution's events replay up to its end: the executor's NATS link survived."""
    events = _callable(channel, _method(executor_pb, "StreamEvents"))(
        executor_pb.StreamEventsRequest(execution_id=execution_id, after_sequence=0),
        timeout=DEADLINE_SECONDS,
    )
    async for response in events:
        if response.event.type == "execution_completed":
            events.cancel()
            return
    raise AssertionError(f"the event stream ended before {execution_id} completed")


async def _stored_completed(channel: grpc.aio.Channel, execution_id: str) -> None:
    stored = await _callable(channel, _method(state_pb, "GetExecution"))(
        state_pb.GetExecutionRequest(execution_id=execution_id), timeout=DEADLINE_SECONDS
    )
    assert stored.execution.status == common_pb2.EXECUTION_STATUS_COMPLETED, stored


NORMAL_CALLS: tuple[tuple[str, ModuleType, Message], ...] = (
    ("state", state_pb, state_pb.ListExecutionsRequest()),
    ("state", state_pb, state_pb.ReadEventsRequest()),
    ("executor", executor_pb, executor_pb.ListExecutionsRequest()),
    ("emergency", emergency_pb, emergency_pb.GetStateRequest()),
    ("emergency", emergency_pb, emergency_pb.ListAuditEntriesRequest()),
    ("emergency", emergency_pb, emergency_pb.ListRiskLimitsRequest()),
)
"""Requests an operator sends any time (all defaults): they must still be answered."""


def _normal_calls(
    channels: dict[str, grpc.aio.Channel],
) -> Iterator[tuple[str, Callable[[], Awaitable[Any]]]]:
    for name, module, request in NORMAL_CALLS:
        method = _method(module, type(request).__name__.removesuffix("Request"))
        invoke = _callable(channels[name], method)
        label = f"{method.containing_service.name}.{method.name}({{}})"
        yield label, partial(invoke, request, timeout=DEADLINE_SECONDS)


async def _after_fuzzing(stack: Stack, channels: dict[str, grpc.aio.Channel]) -> list[str]:
    """What no longer works after the fuzzing, one line per failed check: every service
    alive, SERVING and answering normal calls; the unrelated bot trades and its events
    are stored and streamed."""
    failed: list[str] = []

    async def check(what: str, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except grpc.aio.AioRpcError as err:
            failed.append(f"after the fuzzing, {what}: {err.code().name} {err.details()!r}")
        except AssertionError as err:
            failed.append(f"after the fuzzing, {what}: {err}")
        return None

    for name, process in stack.processes.items():
        if process.process is None or process.process.poll() is not None:
            failed.append(f"after the fuzzing, the {name} service has exited")
    for name, module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            await check(f"{name} health", _serving(channels[name], service.full_name))
    for label, call in _normal_calls(channels):
        await check(label, call())
    await check("WatchState's first snapshot", _first_snapshot(channels["emergency"]))
    resumed = await check("resuming a global halt", _resume_global_halts(channels["emergency"]))
    execution_id = await check(
        "the unrelated bot trading", _unrelated_bot_trades(channels["executor"], bool(resumed))
    )
    if execution_id is not None:
        await check("its stored record", _stored_completed(channels["state"], execution_id))
        await check("its events", _events_reach_stream(channels["executor"], execution_id))
    return failed


@pytest.mark.asyncio
async def test_every_rpc_answers_hostile_requests_with_client_errors(
    fuzz_stack: Stack, channels: dict[str, grpc.aio.Channel]
) -> None:
    """Well-formed hostile requests of every RPC get OK or a client-error code, never
    INTERNAL/UNKNOWN/retryable; afterwards every service serves and an unrelated bot trades."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS * 4):
            violations, sent, broken = await _fuzz(channels)
    except TimeoutError:
        raise AssertionError("the fuzzing did not finish in time: a service hangs") from None
    problems = _listing(violations) + broken + await _after_fuzzing(fuzz_stack, channels)
    listing = "\n".join(problems)
    assert not problems, (
        f"{len(violations)} of {sent} hostile requests answered wrongly:\n{listing}"
    )
