"""The emergency service as a real subprocess on real Redis and NATS, and its client's
local, push-updated view: propagation, risk breaches, audit, idempotency, restarts,
validation, NATS events, health/reflection/metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import math
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import httpx
import nats
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from emergency_fixtures import (
    EMERGENCY_SERVICE_NAME,
    HEARTBEAT_SECONDS,
    ClientFactory,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kit import DEADLINE_SECONDS, ManualClock
from nats.aio.msg import Msg
from servers import ServerProcess, Service, Stack, free_port, start_service
from workflows import trading_workflow

from tradeflow.adapters.grpc.client import open_channel
from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.errors import error_from_rpc
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import NO_IDS, InFlightAction, ScopeIds
from tradeflow.domain.errors import (
    CapacityExceeded,
    EmergencyHalted,
    InvalidRequest,
    LeaseLost,
    RiskLimitExceeded,
    TradeflowError,
    UnavailableError,
)
from tradeflow.domain.limits import (
    ERROR_MESSAGE_MAX_BYTES,
    HALTS_PER_SCOPE_KIND_MAX,
    IN_FLIGHT_MAX,
    TEXT_MAX_LENGTH,
)
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import LimitDirection, Scope
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc
from tradeflow.proto.executor.v1 import executor_service_pb2 as executor_pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as executor_grpc

pytestmark = pytest.mark.integration

IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
OTHER_BOT = replace(IDS, bot_id="bot-2")


@pytest_asyncio.fixture
async def stub(
    emergency_service: Service,
) -> AsyncIterator[emergency_service_pb2_grpc.EmergencyServiceAsyncStub]:
    """A raw stub on the test's service, for what the client never sends."""
    async with open_channel(emergency_service.address) as channel:
        yield cast(
            "emergency_service_pb2_grpc.EmergencyServiceAsyncStub",
            emergency_service_pb2_grpc.EmergencyServiceStub(channel),
        )


async def until_unavailable(client: RemoteEmergencyControl) -> None:
    """Wait until ``client``'s view is down."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        while client.available:
            await client.wait_for_change()


async def until_available(client: RemoteEmergencyControl) -> None:
    """Wait until ``client``'s view is current again."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        while not client.available:
            await client.wait_for_change()


@pytest.mark.asyncio
async def test_halt_through_one_client_reaches_another_clients_local_view(
    make_emergency_client: ClientFactory,
) -> None:
    """A halt made through one client shows in a second client's view; a resume lifts it."""
    ops, executor = await make_emergency_client(), await make_emergency_client()
    assert executor.active_halt(IDS) is None

    halt = await ops.halt(Scope.BOT, "bot-1", reason="manual stop", actor="ops")
    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version()

    with pytest.raises(EmergencyHalted) as caught:
        executor.ensure_trading_allowed(IDS)
    assert (caught.value.reason, caught.value.scope, caught.value.target) == (
        "manual stop",
        "bot",
        "bot-1",
    )
    executor.ensure_trading_allowed(OTHER_BOT)
    assert executor.active_halt(IDS) == halt
    assert await executor.halts() == [halt]

    assert await ops.resume(Scope.BOT, "bot-1", reason="fixed", actor="ops")
    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version()
    executor.ensure_trading_allowed(IDS)
    assert await ops.resume(Scope.BOT, "bot-1", reason="again", actor="ops") is False


@pytest.mark.asyncio
async def test_own_halt_is_in_the_local_view_when_the_call_returns(
    make_emergency_client: ClientFactory,
) -> None:
    """Read-your-writes: after halt() returns, the same client's check refuses at once."""
    client = await make_emergency_client()

    await client.halt(Scope.GLOBAL, reason="stop everything", actor="ops")

    with pytest.raises(EmergencyHalted, match="stop everything"):
        client.ensure_trading_allowed(NO_IDS)


@pytest.mark.asyncio
async def test_risk_breach_is_a_result_that_halts_everyone(
    make_emergency_client: ClientFactory,
) -> None:
    """A breach raises RiskLimitExceeded and, with auto_halt, halts globally in every view,
    through the halt barrier as any halt."""
    risk, executor = await make_emergency_client(), await make_emergency_client()
    limit = await risk.set_risk_limit("daily_loss", -500.0, actor="risk-desk")
    assert limit.direction is LimitDirection.BELOW
    assert await risk.list_risk_limits() == [limit]

    await risk.check_risk_limit("daily_loss", -100.0)
    with pytest.raises(RiskLimitExceeded) as quiet:
        await risk.check_risk_limit("daily_loss", -501.0, auto_halt=False)
    assert quiet.value.halted is False
    assert await risk.halts() == []

    with pytest.raises(RiskLimitExceeded) as caught:
        await risk.check_risk_limit("daily_loss", -600.0, ids=ScopeIds(bot_id="bot-1"))
    assert (caught.value.value, caught.value.threshold, caught.value.halted) == (
        -600.0,
        -500.0,
        True,
    )
    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version()
    halt = executor.active_halt(OTHER_BOT)
    assert halt is not None
    assert (halt.scope, halt.actor) == (Scope.GLOBAL, "risk:daily_loss")
    # Like an operator's halt, the breach's waited for the live executors (its report).
    actions = [(a.action, a.actor) for a in await risk.audit_entries(limit=3)]
    assert actions == [
        ("halt_barrier", "risk:daily_loss"),
        ("halt", "risk:daily_loss"),
        ("risk_breach", "risk:daily_loss"),
    ]


@pytest.mark.asyncio
async def test_every_change_is_audited_newest_first(
    make_emergency_client: ClientFactory,
) -> None:
    """Halts, resumes, limit changes and breaches each leave one audit entry (a halt a
    second one, its barrier's report): who, why, values."""
    client = await make_emergency_client()
    await client.halt(Scope.STRATEGY, "strat-1", reason="news", actor="alice")
    await client.resume(Scope.STRATEGY, "strat-1", reason="news over", actor="bob")
    await client.set_risk_limit("max_position", 10.0, actor="carol")
    with pytest.raises(RiskLimitExceeded):
        await client.check_risk_limit(
            "max_position", -12.0, auto_halt=False, ids=ScopeIds(bot_id="bot-1")
        )

    entries = await client.audit_entries(limit=10)

    assert [(e.action, e.actor) for e in entries] == [
        ("risk_breach", "risk:max_position"),
        ("set_risk_limit", "carol"),
        ("resume", "bob"),
        ("halt_barrier", "alice"),
        ("halt", "alice"),
    ]
    assert (entries[4].scope, entries[4].target, entries[4].reason) == (
        Scope.STRATEGY,
        "strat-1",
        "news",
    )
    assert entries[0].details["value"] == -12.0
    assert entries[0].details["bot_id"] == "bot-1"
    assert [e.entry_id for e in await client.audit_entries(limit=2)] == [
        e.entry_id for e in entries[:2]
    ]


@pytest.mark.asyncio
async def test_a_repeated_request_id_acts_and_audits_once(
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """A retried Halt or CheckRiskLimit (same request_id) gets the first answer, one audit entry."""
    halt = pb.HaltRequest(
        request_id="req-halt", scope=common_pb2.SCOPE_BOT, target="bot-1", reason="x", actor="a"
    )
    check = pb.CheckRiskLimitRequest(
        request_id="req-check", limit_type="max_order_notional", value=2.0, threshold=1.0
    )

    first, again = await stub.Halt(halt), await stub.Halt(halt)
    breach, breach_again = await stub.CheckRiskLimit(check), await stub.CheckRiskLimit(check)

    assert first == again
    assert breach == breach_again
    assert (breach.breached, breach.halted, breach.threshold, breach.direction) == (
        True,
        True,
        1.0,
        pb.LIMIT_DIRECTION_ABOVE,
    )
    audit = await stub.ListAuditEntries(pb.ListAuditEntriesRequest())
    assert sorted(entry.action for entry in audit.entries) == [
        "halt",
        "halt",
        "halt_barrier",
        "halt_barrier",  # the breach's global halt has its barrier too
        "risk_breach",
    ]


@pytest.mark.asyncio
async def test_state_survives_a_crash_and_views_fail_closed_until_it_is_back(
    emergency_service: Service, make_emergency_client: ClientFactory
) -> None:
    """SIGKILL: the view refuses everything; after a restart the halt from Redis is back."""
    client = await make_emergency_client()
    await client.halt(Scope.BOT, "bot-1", reason="before crash", actor="ops")
    client.ensure_trading_allowed(OTHER_BOT)

    emergency_service.process.kill()
    await until_unavailable(client)
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        client.ensure_trading_allowed(OTHER_BOT)

    await asyncio.to_thread(emergency_service.start)
    await until_available(client)
    client.ensure_trading_allowed(OTHER_BOT)
    halt = client.active_halt(IDS)
    assert halt is not None
    assert halt.reason == "before crash"


@pytest.mark.asyncio
async def test_invalid_requests_are_invalid_argument_naming_the_field(
    make_emergency_client: ClientFactory,
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """Bad requests fail with INVALID_ARGUMENT and an InvalidRequest naming the field."""
    client = await make_emergency_client()
    attempts = {
        "target": client.halt(Scope.BOT, None, reason="x"),
        "reason": client.halt(Scope.GLOBAL, reason=" "),
        "actor": client.resume(Scope.GLOBAL, reason="x", actor="\x1b[2J"),
        "value": client.check_risk_limit("daily_loss", math.nan, -1.0),
        "direction": client.set_risk_limit("custom_limit", 1.0),
        "limit_type": client.check_risk_limit("no_such_limit", 1.0, 2.0),
    }
    for field, attempt in attempts.items():
        with pytest.raises(InvalidRequest) as caught:
            await attempt
        assert caught.value.field == field

    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await stub.Halt(pb.HaltRequest(scope=common_pb2.SCOPE_UNSPECIFIED, reason="x"))
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(raw.value, service="emergency")
    assert isinstance(error, InvalidRequest)
    assert error.field == "scope"
    assert await client.audit_entries() == []


async def refused(
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub, request: pb.HaltRequest
) -> tuple[grpc.StatusCode, TradeflowError, str]:
    """The status code, rebuilt error and status message of a Halt the service refuses."""
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await stub.Halt(request, timeout=DEADLINE_SECONDS)
    error = error_from_rpc(raw.value, service="emergency")
    return raw.value.code(), error, raw.value.details() or ""


@pytest.mark.asyncio
async def test_hostile_halts_are_refused_and_an_unrelated_bot_keeps_trading(
    make_emergency_client: ClientFactory,
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """Huge reasons and targets, control characters and malformed request ids are
    INVALID_ARGUMENT naming the field; one bot halt past the bound is FAILED_PRECONDITION.
    Through it all another bot's executor view stays confirmed and lets it trade."""
    ops, executor = await make_emergency_client(), await make_emergency_client()
    bot = common_pb2.SCOPE_BOT
    hostile = {
        "reason": [
            pb.HaltRequest(scope=bot, target=f"made-up-{n}", reason="r" * 3_000_000)
            for n in range(3)
        ]
        + [
            pb.HaltRequest(scope=common_pb2.SCOPE_GLOBAL, reason="\x1b[2J\x1b[31mhalted"),
            pb.HaltRequest(scope=bot, target="bot-9", reason="nul\x00"),
        ],
        "target": [
            pb.HaltRequest(scope=bot, target="b" * 1_000_000, reason="r"),
            pb.HaltRequest(scope=bot, target="bot\x00", reason="r"),
            pb.HaltRequest(scope=bot, target="\x1b]0;owned\x07", reason="r"),
        ],
        "actor": [pb.HaltRequest(scope=bot, target="bot-9", reason="r", actor="a" * 100_000)],
        "request_id": [
            pb.HaltRequest(request_id="id with spaces", scope=bot, target="bot-9", reason="r"),
            pb.HaltRequest(request_id="q" * 1_000_000, scope=bot, target="bot-9", reason="r"),
        ],
    }
    for field, requests in hostile.items():
        for request in requests:
            code, error, message = await refused(stub, request)
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert isinstance(error, InvalidRequest)
            assert error.field == field
            assert len(message.encode()) <= ERROR_MESSAGE_MAX_BYTES

    longest = "r" * TEXT_MAX_LENGTH
    async with asyncio.timeout(DEADLINE_SECONDS):
        for n in range(HALTS_PER_SCOPE_KIND_MAX):
            await ops.halt(Scope.BOT, f"bot-{n:03}", reason=longest, actor="ops")
    code, error, _ = await refused(
        stub, pb.HaltRequest(scope=bot, target="one-too-many", reason="r")
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(error, CapacityExceeded)
    assert (error.what, error.capacity) == ("active bot halts", HALTS_PER_SCOPE_KIND_MAX)

    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version()
    assert executor.available
    executor.ensure_trading_allowed(ScopeIds(workflow_id="wf-x", bot_id="unrelated-bot"))
    with pytest.raises(EmergencyHalted):
        executor.ensure_trading_allowed(ScopeIds(bot_id="bot-007"))
    assert len(await executor.halts()) == HALTS_PER_SCOPE_KIND_MAX

    await ops.halt(Scope.GLOBAL, reason="a global halt is never one too many", actor="ops")
    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version()
    with pytest.raises(EmergencyHalted, match="never one too many"):
        executor.ensure_trading_allowed(ScopeIds(bot_id="unrelated-bot"))


@pytest.mark.asyncio
async def test_changes_are_published_on_nats_emergency_subjects(
    nats_server: ServerProcess, make_emergency_client: ClientFactory
) -> None:
    """Halt, resume and a breach (with its auto-halt) appear on tradeflow.v1.emergency.*."""
    client = await make_emergency_client()
    received: asyncio.Queue[Msg] = asyncio.Queue()
    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe("tradeflow.v1.emergency.>", cb=received.put)
        await nc.flush()
        await client.halt(Scope.STRATEGY, "strat-ev", reason="news", actor="ops")
        await client.resume(Scope.STRATEGY, "strat-ev", reason="calm", actor="ops")
        with pytest.raises(RiskLimitExceeded):
            await client.check_risk_limit("max_exposure", 2.0, 1.0, ids=ScopeIds(bot_id="bot-ev"))
        async with asyncio.timeout(DEADLINE_SECONDS):
            messages = [await received.get() for _ in range(4)]
    finally:
        await nc.close()

    events = [json.loads(msg.data) for msg in messages]
    assert [msg.subject for msg in messages] == [
        "tradeflow.v1.emergency.halted",
        "tradeflow.v1.emergency.resumed",
        "tradeflow.v1.emergency.risk_limit_exceeded",
        "tradeflow.v1.emergency.halted",
    ]
    assert [e["type"] for e in events] == [
        "emergency_halted",
        "emergency_resumed",
        "risk_limit_exceeded",
        "emergency_halted",
    ]
    assert events[0]["data"] == {
        "scope": "strategy",
        "target": "strat-ev",
        "reason": "news",
        "actor": "ops",
        "state": "halted",
        "cancel_orders": False,
    }
    assert events[2]["bot_id"] == "bot-ev"
    assert events[2]["data"]["value"] == 2.0


@pytest.mark.asyncio
async def test_health_reflection_and_metrics(
    emergency_service: Service, make_emergency_client: ClientFactory
) -> None:
    """The service reports SERVING, lists itself by reflection and counts halts in /metrics."""
    client = await make_emergency_client()
    await client.halt(Scope.GLOBAL, reason="metrics", actor="ops")

    async with open_channel(emergency_service.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=EMERGENCY_SERVICE_NAME)
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = [s.name async for r in reflection for s in r.list_services_response.service]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(emergency_service.metrics_url)).text

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert EMERGENCY_SERVICE_NAME in listed
    assert 'tradeflow_halts_total{scope="global"} 1.0' in metrics
    assert 'tradeflow_rpc_server_handled_seconds_count{code="OK",method="Halt"}' in metrics


@pytest.mark.asyncio
async def test_idle_watch_stream_sends_heartbeat_snapshots(
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """With nothing changing, WatchState resends the current snapshot (same version)."""
    stream = stub.WatchState(pb.WatchStateRequest())
    async with asyncio.timeout(DEADLINE_SECONDS):
        first, second = await stream.read(), await stream.read()
    stream.cancel()

    assert first == second


@pytest.mark.asyncio
async def test_sigterm_ends_watch_streams_cleanly_and_exits_zero(
    emergency_service: Service,
    make_emergency_client: ClientFactory,
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """SIGTERM ends open WatchState streams with OK, the process exits 0, views fail closed."""
    client = await make_emergency_client()
    stream = stub.WatchState(pb.WatchStateRequest())
    process = emergency_service.process.process
    assert process is not None
    async with asyncio.timeout(DEADLINE_SECONDS):
        await stream.read()

        process.send_signal(signal.SIGTERM)
        while await stream.read() is not grpc.aio.EOF:
            pass  # heartbeats sent before the drain
        code = await stream.code()
        await until_unavailable(client)
    exit_status = await asyncio.to_thread(process.wait, DEADLINE_SECONDS)

    assert code is grpc.StatusCode.OK
    assert exit_status == 0
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        client.ensure_trading_allowed(IDS)


@pytest.mark.asyncio
async def test_view_fails_closed_before_the_first_snapshot() -> None:
    """With no service to follow, the check refuses and connect() gives up with Unavailable."""
    address = f"127.0.0.1:{free_port()}"
    client = await RemoteEmergencyControl.connect(
        address, timeout=None, clock=SystemClock(), id_factory=new_id
    )
    try:
        with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
            client.ensure_trading_allowed(IDS)
        with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
            client.active_halt(IDS)
    finally:
        await client.close()

    with pytest.raises(UnavailableError, match="no state within"):
        await RemoteEmergencyControl.connect(
            address, timeout=0.2, clock=SystemClock(), id_factory=new_id
        )


@pytest.mark.asyncio
async def test_view_fails_closed_once_older_than_max_staleness(
    emergency_service: Service,
) -> None:
    """A snapshot older than max_staleness no longer confirms the state: the check refuses."""
    clock = ManualClock()
    client = await RemoteEmergencyControl.connect(
        emergency_service.address, max_staleness=5.0, clock=clock, id_factory=new_id
    )
    try:
        client.ensure_trading_allowed(IDS)
        clock.advance(5.5)
        with pytest.raises(EmergencyHalted, match=r"for over 5\.0s"):
            client.ensure_trading_allowed(IDS)
        assert client.available is False
    finally:
        await client.close()


# -- trading states and the halt barrier ---------------------------------------------------

PATIENT_ACK_SECONDS = 2.0
"""The barrier deadline of ``patient_service``: an executor that answers is never late
on a loaded machine, while the silent one costs the test this long."""


@pytest.fixture
def patient_service(
    redis_server: ServerProcess, nats_server: ServerProcess, tmp_path: Path
) -> Iterator[Service]:
    """An emergency service of this test alone whose barrier waits PATIENT_ACK_SECONDS;
    its Redis keys (halts and leases) are deleted afterwards."""
    env = {
        "TRADEFLOW_REDIS_URL": redis_server.url,
        "TRADEFLOW_NATS_URL": nats_server.url,
        "TRADEFLOW_EMERGENCY_HEARTBEAT": str(HEARTBEAT_SECONDS),
        "TRADEFLOW_HALT_ACK_TIMEOUT": str(PATIENT_ACK_SECONDS),
    }
    service = start_service("emergency", EMERGENCY_SERVICE_NAME, tmp_path, env)
    yield service
    service.process.stop()
    with redis.Redis.from_url(redis_server.url) as cleanup:
        keys = list(cleanup.scan_iter(match=f"*{service.redis_prefix}*"))
        if keys:
            cleanup.delete(*keys)


async def connect_client(service: Service) -> RemoteEmergencyControl:
    """A client of ``service`` that waits for its first snapshot."""
    return await RemoteEmergencyControl.connect(
        service.address,
        timeout=DEADLINE_SECONDS,
        max_staleness=HEARTBEAT_SECONDS * 10,
        reconnect_backoff=(0.05, 0.5),
        clock=SystemClock(),
        id_factory=new_id,
    )


@pytest.mark.asyncio
async def test_a_halt_sets_its_trading_state_and_views_refuse_by_effect(
    make_emergency_client: ClientFactory,
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """A REDUCE_ONLY halt with cancel-on-halt comes back as asked, reaches another view,
    which then lets reducing orders, cancels and effect-free actions through and refuses
    opening ones; an unspecified state is HALTED. With no executor holding a lease the
    answer's barrier report lists no one."""
    ops, executor = await make_emergency_client(), await make_emergency_client()

    halt, report = await ops.halt_with_report(
        Scope.BOT,
        "bot-1",
        reason="wind down",
        actor="ops",
        state=TradingState.REDUCE_ONLY,
        cancel_orders=True,
    )
    async with asyncio.timeout(DEADLINE_SECONDS):
        await executor.wait_for_version(report.version)

    assert (halt.state, halt.cancel_orders) == (TradingState.REDUCE_ONLY, True)
    assert (report.live, report.acknowledged, report.in_flight, report.fenced) == ((), (), (), ())
    assert executor.active_halt(IDS) == halt
    assert await executor.halts() == [halt]
    assert executor.trading_state(IDS) is TradingState.REDUCE_ONLY
    assert executor.trading_state(OTHER_BOT) is TradingState.ACTIVE
    for effect in (OrderEffect.REDUCES, OrderEffect.CANCELS, OrderEffect.NONE):
        executor.ensure_allowed(IDS, effect)
    with pytest.raises(EmergencyHalted) as caught:
        executor.ensure_allowed(IDS, OrderEffect.OPENS)
    assert (caught.value.state, caught.value.scope, caught.value.target) == (
        "reduce_only",
        "bot",
        "bot-1",
    )

    unspecified = await stub.Halt(
        pb.HaltRequest(scope=common_pb2.SCOPE_BOT, target="b2", reason="x")
    )
    assert unspecified.halt.state == pb.TRADING_STATE_HALTED


@pytest.mark.asyncio
async def test_a_halt_to_active_is_refused_naming_the_state(
    make_emergency_client: ClientFactory,
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """ACTIVE is a resume: the client refuses it before sending, the service (for a raw
    request, or a state no enum has) with INVALID_ARGUMENT naming ``state``."""
    client = await make_emergency_client()
    with pytest.raises(InvalidRequest) as local:
        await client.halt(Scope.GLOBAL, reason="x", state=TradingState.ACTIVE)
    assert local.value.field == "state"

    for state in (pb.TRADING_STATE_ACTIVE, 42):
        code, error, _ = await refused(
            stub,
            pb.HaltRequest(scope=common_pb2.SCOPE_GLOBAL, reason="x", state=state),  # type: ignore[arg-type]
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(error, InvalidRequest)
        assert error.field == "state"
    assert await client.halts() == []


@pytest.mark.asyncio
async def test_acknowledge_state_checks_its_request(
    stub: emergency_service_pb2_grpc.EmergencyServiceAsyncStub,
) -> None:
    """A well-formed acknowledgement is OK; a malformed owner, epoch, version, too many
    in-flight actions or one of another owner are INVALID_ARGUMENT naming the field."""
    action = pb.InFlightAction(owner="exec-a", execution_id="run-1", node_id="buy")
    await stub.AcknowledgeState(
        pb.AcknowledgeStateRequest(owner="exec-a", epoch=1, version=3, in_flight=[action])
    )
    hostile = {
        "owner": pb.AcknowledgeStateRequest(owner="exec a", epoch=1),
        "epoch": pb.AcknowledgeStateRequest(owner="exec-a", epoch=0),
        "version": pb.AcknowledgeStateRequest(owner="exec-a", epoch=1, version=2**64 - 1),
        "in_flight": pb.AcknowledgeStateRequest(
            owner="exec-a", epoch=1, in_flight=[action] * (IN_FLIGHT_MAX + 1)
        ),
        "in_flight[0].owner": pb.AcknowledgeStateRequest(
            owner="exec-b", epoch=1, in_flight=[action]
        ),
        "in_flight[0].node_id": pb.AcknowledgeStateRequest(
            owner="exec-a",
            epoch=1,
            in_flight=[pb.InFlightAction(owner="exec-a", execution_id="run-1", node_id="\x1b[2J")],
        ),
    }
    for field, request in hostile.items():
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.AcknowledgeState(request, timeout=DEADLINE_SECONDS)
        assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        error = error_from_rpc(raw.value, service="emergency")
        assert isinstance(error, InvalidRequest)
        assert error.field == field


@pytest.mark.asyncio
async def test_a_halt_waits_for_the_executor_that_answers_and_fences_the_silent_one(
    patient_service: Service, redis_server: ServerProcess
) -> None:
    """Two executors hold leases; one follows the state and acknowledges it, reporting its
    order in flight, the other never answers. The halt's answer lists both live, the
    first acknowledged with its order, the second fenced: its lease is revoked (its next
    renewal is LeaseLost) while the first keeps its own, and the audit says so."""
    client = aioredis.from_url(redis_server.url)
    store = RedisStateStore(client, prefix=patient_service.redis_prefix)
    answering = await store.acquire_lease(OwnerInfo("exec-answers", "executor", "h", 1), 60)
    silent = await store.acquire_lease(OwnerInfo("exec-silent", "executor", "h", 2), 60)
    order = InFlightAction("exec-answers", "run-1", "buy", "co-1")
    executor, ops = await connect_client(patient_service), await connect_client(patient_service)
    executor.acknowledge_with(lambda: (answering.fence, (order,)))
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            halt, report = await ops.halt_with_report(
                Scope.GLOBAL, reason="barrier", actor="ops", state=TradingState.CANCEL_ONLY
            )

        assert report.live == ("exec-answers", "exec-silent")
        assert (report.acknowledged, report.in_flight, report.fenced) == (
            ("exec-answers",),
            (order,),
            ("exec-silent",),
        )
        assert executor.trading_state(NO_IDS) is TradingState.CANCEL_ONLY
        with pytest.raises(LeaseLost):
            await store.renew_lease(silent)
        await store.renew_lease(answering)
        barrier, halted = await ops.audit_entries(limit=2)
        assert (barrier.action, halted.action) == ("halt_barrier", "halt")
        assert (barrier.scope, barrier.actor) == (halt.scope, "ops")
        assert barrier.details["fenced"] == ["exec-silent"]
        assert barrier.details["acknowledged"] == ["exec-answers"]
        assert "exec-silent" in barrier.reason
    finally:
        await executor.close()
        await ops.close()
        await client.aclose()


@pytest.mark.asyncio
async def test_a_halt_is_acknowledged_by_a_running_executor_service(production: Stack) -> None:
    """The stack's executor service holds a lease once it ran an execution and follows the
    emergency state: a halt's answer lists it live and acknowledged, never fenced, and
    everyone live is either acknowledged or fenced."""
    env = production.client_env()
    async with open_channel(env["TRADEFLOW_EXECUTOR_ADDR"]) as channel:
        executed = await executor_grpc.ExecutorServiceStub(channel).ExecuteWorkflow(
            executor_pb.ExecuteWorkflowRequest(
                workflow_id="barrier",
                bot_id="bot-barrier",
                definition_json=json.dumps(trading_workflow()),
            ),
            timeout=DEADLINE_SECONDS,
        )
    owner = executed.execution.record.owner
    assert owner

    async with open_channel(env["TRADEFLOW_EMERGENCY_ADDR"]) as channel:
        response = await emergency_service_pb2_grpc.EmergencyServiceStub(channel).Halt(
            pb.HaltRequest(
                scope=common_pb2.SCOPE_BOT, target="bot-barrier", reason="barrier", actor="pytest"
            ),
            timeout=DEADLINE_SECONDS,
        )

    assert owner in response.live
    assert owner in response.acknowledged
    assert owner not in response.fenced
    assert set(response.live) == set(response.acknowledged) | set(response.fenced)
