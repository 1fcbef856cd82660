"""Risk limits per scope through the real emergency service (a subprocess on real Redis
and NATS): set, list, delete and explain per scope, options refused naming the field,
idempotent retries, limits pushed with the state to every watcher, the dead-man's switch
lapsing in the service's own trigger evaluator, and denied orders audited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import httpx
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from emergency_fixtures import (
    ClientFactory,
    emergency_clients,
    start_emergency_service,
)
from kit import DEADLINE_SECONDS, eventually
from servers import ServerProcess, Service

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.client import open_channel
from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.errors import error_from_rpc
from tradeflow.adapters.redis.emergency import RedisEmergencyController
from tradeflow.app.cli import main
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import EmergencySnapshot, ScopeIds
from tradeflow.domain.errors import EmergencyHalted, InvalidRequest, RiskLimitExceeded
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import NO_LIMITS, Denial, LimitOptions, ScopeRule
from tradeflow.domain.trading import TradingState
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

pytestmark = pytest.mark.integration

TRIGGER_INTERVAL = 0.05
"""The service's trigger evaluation period here: short, so a lapsed switch shows quickly
(the tests wait for the pushed state, never for a time)."""
IDS = ScopeIds(workflow_id="wf-1", bot_id="bot-1", strategy_id="strat-1")
OTHER_BOT = ScopeIds(workflow_id="wf-2", bot_id="bot-2", strategy_id="strat-1")
if TYPE_CHECKING:
    Stub = emergency_service_pb2_grpc.EmergencyServiceAsyncStub


@pytest.fixture
def risk_service(
    redis_server: ServerProcess, nats_server: ServerProcess, tmp_path: Path
) -> Iterator[Service]:
    """An emergency service of this test alone, evaluating triggers every
    :data:`TRIGGER_INTERVAL` seconds."""
    service = start_emergency_service(
        redis_server.url,
        nats_server.url,
        tmp_path,
        {"TRADEFLOW_TRIGGER_INTERVAL": str(TRIGGER_INTERVAL)},
    )
    yield service
    service.process.stop()


@pytest_asyncio.fixture
async def connect(
    risk_service: Service, redis_server: ServerProcess
) -> AsyncIterator[ClientFactory]:
    """Connects clients to the test's service (each waits for its first snapshot); closes
    them and deletes the test's Redis keys afterwards."""
    async with emergency_clients(risk_service, redis_server.url) as make:
        yield make


@pytest_asyncio.fixture
async def stub(risk_service: Service) -> AsyncIterator[Stub]:
    """A raw stub on the test's service, for what the client never sends."""
    async with open_channel(risk_service.address) as channel:
        yield cast("Stub", emergency_service_pb2_grpc.EmergencyServiceStub(channel))


async def until(client: RemoteEmergencyControl, holds: Callable[[], bool], what: str) -> None:
    """Wait, on the pushes ``client``'s view receives, until ``holds()``."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not holds():
                await client.wait_for_change()
    except TimeoutError:
        raise AssertionError(f"gave up waiting until {what}") from None


async def _has(actions: Awaitable[list[str]], action: str) -> bool:
    return action in await actions


async def invalid_field(call: Any) -> str:
    """The field an RPC the service refused with INVALID_ARGUMENT names."""
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await call
    assert raw.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raw.value.details()
    error = error_from_rpc(raw.value, service="emergency")
    assert isinstance(error, InvalidRequest)
    return error.field


@pytest.mark.asyncio
async def test_limits_are_set_listed_and_deleted_per_scope(connect: ClientFactory) -> None:
    """A limit on one type per scope (global, strategy, bot, workflow) is four limits, each
    listed with its scope and options and deleted alone; deleting one that is gone is no
    error (False); every change is audited with its scope."""
    client = await connect()
    set_ = [
        await client.set_risk_limit("max_position", 10, actor="ops"),
        await client.set_risk_limit(
            "max_position", 5, scope=Scope.STRATEGY, target="strat-1", actor="ops"
        ),
        await client.set_risk_limit("max_position", 2, scope=Scope.BOT, target="bot-1"),
        await client.set_risk_limit(
            "order_rate",
            20,
            scope=Scope.WORKFLOW,
            target="wf-1",
            options=LimitOptions(window=60.0),
        ),
        await client.set_risk_limit(
            "daily_loss",
            -500,
            scope=Scope.BOT,
            target="bot-1",
            options=LimitOptions(
                state=TradingState.REDUCE_ONLY,
                consecutive=3,
                timezone="America/New_York",
                reset_time="17:00",
                lift_on_reset=True,
                cancel_orders=True,
            ),
        ),
    ]
    assert [limit.key for limit in set_] == [
        "max_position",
        "max_position@strategy:strat-1",
        "max_position@bot:bot-1",
        "order_rate@workflow:wf-1",
        "daily_loss@bot:bot-1",
    ]
    daily = set_[-1]
    assert (daily.state, daily.consecutive, daily.timezone, daily.reset_time) == (
        TradingState.REDUCE_ONLY,
        3,
        "America/New_York",
        "17:00",
    )
    assert daily.lift_on_reset and daily.cancel_orders
    assert set_[3].window == 60.0
    listed = await client.list_risk_limits()
    assert {limit.key: limit for limit in listed} == {limit.key: limit for limit in set_}

    assert await client.delete_risk_limit("max_position", Scope.BOT, "bot-1", actor="ops")
    assert not await client.delete_risk_limit("max_position", Scope.BOT, "bot-1", actor="ops")
    assert "max_position@bot:bot-1" not in {limit.key for limit in await client.list_risk_limits()}
    audit = await client.audit_entries()
    assert [(e.action, e.scope, e.target) for e in audit[:2]] == [
        ("delete_risk_limit", Scope.BOT, "bot-1"),
        ("set_risk_limit", Scope.BOT, "bot-1"),
    ]
    assert audit[1].details["consecutive"] == 3


@pytest.mark.asyncio
async def test_explain_names_the_state_the_limits_and_the_deciding_one_per_type(
    connect: ClientFactory,
) -> None:
    """ExplainRiskLimits for some ids gives their state and deciding halt, every limit of
    their scopes (not another bot's), the strictest of each type, and each trigger's
    progress (a heartbeat's last beat)."""
    client = await connect()
    broad = await client.set_risk_limit("max_order_notional", 1000)
    narrow = await client.set_risk_limit(
        "max_order_notional", 250, scope=Scope.STRATEGY, target="strat-1"
    )
    await client.set_risk_limit("max_order_notional", 5, scope=Scope.BOT, target="bot-2")
    switch = await client.set_risk_limit("heartbeat", 3600, scope=Scope.BOT, target="bot-1")
    halt = await client.halt(
        Scope.WORKFLOW, "wf-1", reason="wind down", state=TradingState.REDUCE_ONLY
    )
    await client.heartbeat(Scope.BOT, "bot-1")

    explained = await client.explain_limits(IDS)

    assert (explained.ids, explained.state, explained.halt) == (
        IDS,
        TradingState.REDUCE_ONLY,
        halt,
    )
    assert switch.state is TradingState.CANCEL_ONLY  # a heartbeat's default
    assert {limit.key for limit in explained.applicable} == {broad.key, narrow.key, switch.key}
    assert {limit.key for limit in explained.deciding} == {narrow.key, switch.key}
    [(trigger, progress)] = explained.triggers
    assert trigger == switch
    assert progress.last_beat is not None and not progress.fired

    bare = await client.explain_limits(ScopeIds())
    assert (bare.state, bare.halt, bare.triggers) == (TradingState.ACTIVE, None, ())
    assert [limit.key for limit in bare.applicable] == [broad.key]


@pytest.mark.asyncio
async def test_bad_limit_options_are_invalid_argument_naming_the_field(
    connect: ClientFactory, stub: Stub
) -> None:
    """A malformed SetRiskLimit (bad time zone or reset time, a window on a non-rate limit
    or none on a rate limit, a state on a pre-trade type, ACTIVE as a trigger's state, a
    negative heartbeat ttl, a consecutive count on a non-trigger, a target on a global
    limit, an unknown scope), Heartbeat, DeleteRiskLimit or ExplainRiskLimits is
    INVALID_ARGUMENT naming the field, and changes nothing."""
    client = await connect()
    bot = {"scope": common_pb2.SCOPE_BOT, "target": "bot-1"}
    halted = {"state": pb.TRADING_STATE_HALTED}
    bad_sets: dict[str, dict[str, Any]] = {
        "timezone": {"limit_type": "daily_loss", "threshold": -5, **halted, "timezone": "Mars/X"},
        "reset_time": {
            "limit_type": "daily_loss",
            "threshold": -5,
            **halted,
            "reset_time": "7pm",
        },
        "window": {"limit_type": "max_position", "threshold": 5, "window": 10.0},
        "state": {"limit_type": "max_order_notional", "threshold": 5, **halted},
        "threshold": {"limit_type": "heartbeat", "threshold": -0.3, **bot},
        "consecutive": {"limit_type": "max_position", "threshold": 5, "consecutive": 2},
        "target": {"limit_type": "max_position", "threshold": 5, "target": "bot-1"},
        "scope": {"limit_type": "max_position", "threshold": 5, "scope": 42, "target": "x"},
    }
    for field, fields in bad_sets.items():
        request = pb.SetRiskLimitRequest(request_id=new_id(), **fields)
        assert await invalid_field(stub.SetRiskLimit(request)) == field, fields
    rate_without_window = pb.SetRiskLimitRequest(limit_type="order_rate", threshold=5)
    assert await invalid_field(stub.SetRiskLimit(rate_without_window)) == "window"
    active = pb.SetRiskLimitRequest(
        limit_type="max_drawdown", threshold=-5, state=pb.TRADING_STATE_ACTIVE
    )
    assert await invalid_field(stub.SetRiskLimit(active)) == "state"

    assert await invalid_field(stub.Heartbeat(pb.HeartbeatRequest(**bot))) == "scope"
    no_target = pb.HeartbeatRequest(scope=common_pb2.SCOPE_BOT)
    assert await invalid_field(stub.Heartbeat(no_target)) == "target"
    delete = pb.DeleteRiskLimitRequest(limit_type="not an id")
    assert await invalid_field(stub.DeleteRiskLimit(delete)) == "limit_type"
    explain = pb.ExplainRiskLimitsRequest(bot_id="bot\x00")
    assert await invalid_field(stub.ExplainRiskLimits(explain)) == "bot_id"

    assert await client.list_risk_limits() == []
    assert await client.audit_entries() == []


@pytest.mark.asyncio
async def test_a_retried_set_or_delete_acts_and_audits_once(stub: Stub) -> None:
    """A SetRiskLimit or DeleteRiskLimit retried with its request_id gets the first answer
    back and is audited once (a second delete would answer deleted=false)."""
    set_ = pb.SetRiskLimitRequest(
        request_id="req-set",
        limit_type="max_open_orders",
        threshold=4,
        scope=common_pb2.SCOPE_STRATEGY,
        target="strat-1",
        actor="ops",
    )
    delete = pb.DeleteRiskLimitRequest(
        request_id="req-delete",
        limit_type="max_open_orders",
        scope=common_pb2.SCOPE_STRATEGY,
        target="strat-1",
        actor="ops",
    )

    first, again = await stub.SetRiskLimit(set_), await stub.SetRiskLimit(set_)
    gone, gone_again = await stub.DeleteRiskLimit(delete), await stub.DeleteRiskLimit(delete)

    assert first == again
    assert wire.risk_limit_from_proto(first.limit).key == "max_open_orders@strategy:strat-1"
    assert gone.deleted and gone_again.deleted
    audit = await stub.ListAuditEntries(pb.ListAuditEntriesRequest())
    assert sorted(entry.action for entry in audit.entries) == [
        "delete_risk_limit",
        "set_risk_limit",
    ]


@pytest.mark.asyncio
async def test_watchers_get_the_limits_with_the_state_and_check_orders_locally(
    connect: ClientFactory, stub: Stub
) -> None:
    """The pushed WatchState carries every limit; an executor's RemoteEmergencyControl sees
    a limit set through another client in pre_trade_limits (no round trip), and its
    deletion, for the ids it covers only; with its view down it fails closed."""
    ops, executor = await connect(), await connect()
    assert executor.pre_trade_limits(IDS) is NO_LIMITS
    watch = stub.WatchState(pb.WatchStateRequest())
    first = await watch.read()
    assert isinstance(first, pb.WatchStateResponse)
    assert list(first.state.limits) == []

    notional = await ops.set_risk_limit(
        "max_order_notional", 100, scope=Scope.BOT, target="bot-1", actor="ops"
    )
    position = await ops.set_risk_limit("max_position", 3, scope=Scope.STRATEGY, target="strat-1")
    rate = await ops.set_risk_limit("order_rate", 5, options=LimitOptions(window=1.0), actor="ops")

    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            pushed = await watch.read()
            assert isinstance(pushed, pb.WatchStateResponse)
            snapshot: EmergencySnapshot = wire.emergency_state_from_proto(pushed.state)
            if len(snapshot.limits) == 3:
                break
    watch.cancel()
    assert snapshot.limits == {limit.key: limit for limit in (notional, position, rate)}

    await until(executor, lambda: len(executor.pre_trade_limits(IDS).rules) == 2, "pushed")
    limits = executor.pre_trade_limits(IDS)
    assert limits.local == (notional,)
    assert limits.rules == (
        ScopeRule(Scope.GLOBAL, None, rate=5.0, window=1.0),
        ScopeRule(Scope.STRATEGY, "strat-1", max_position=3.0),
    )
    assert executor.pre_trade_limits(OTHER_BOT).local == ()

    await ops.delete_risk_limit("max_order_notional", Scope.BOT, "bot-1")
    await until(executor, lambda: executor.pre_trade_limits(IDS).local == (), "deleted")

    await executor.close()
    with pytest.raises(EmergencyHalted, match="emergency state unavailable"):
        executor.pre_trade_limits(IDS)


async def risk_checks_served(service: Service) -> float:
    """How many ``CheckRiskLimit`` calls ``service`` answered (its own metrics)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(service.metrics_url)).text
    prefix = 'tradeflow_rpc_server_handled_seconds_count{code="OK",method="CheckRiskLimit"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.asyncio
async def test_a_passing_risk_check_is_judged_locally_and_only_a_breach_calls(
    connect: ClientFactory, risk_service: Service
) -> None:
    """Risk checks pass on the pushed limits with no call to the service; a limit tightened
    by SetRiskLimit applies locally once pushed; a breach is one call, which audits and
    halts as before."""
    ops, executor = await connect(), await connect()
    await ops.set_risk_limit("max_position", 10.0, scope=Scope.BOT, target="bot-1", actor="ops")
    await executor.wait_for_version()

    for value in (1.0, 5.0, -9.0):
        await executor.check_risk_limit("max_position", value, 100.0, ids=IDS)
    assert await risk_checks_served(risk_service) == 0

    await ops.set_risk_limit("max_position", 4.0, scope=Scope.BOT, target="bot-1", actor="ops")
    await executor.wait_for_version()
    # Judged on the pushed limit: 5 passed under 10, it breaches 4 (one call, audited).
    with pytest.raises(RiskLimitExceeded) as quiet:
        await executor.check_risk_limit("max_position", 5.0, 100.0, False, ids=IDS)
    assert (quiet.value.threshold, quiet.value.halted) == (4.0, False)
    await executor.check_risk_limit("max_position", 3.0, ids=IDS)
    assert await risk_checks_served(risk_service) == 1

    with pytest.raises(RiskLimitExceeded) as caught:
        await executor.check_risk_limit("max_position", 6.0, ids=IDS)
    assert caught.value.halted
    await until(executor, lambda: executor.active_halt(OTHER_BOT) is not None, "the breach halted")
    assert await risk_checks_served(risk_service) == 2
    audit = [e.action for e in await ops.audit_entries(limit=4)]
    assert audit == ["halt_barrier", "halt", "risk_breach", "risk_breach"]


@pytest.mark.asyncio
async def test_a_lapsed_heartbeat_moves_its_scope_to_cancel_only_in_the_real_service(
    connect: ClientFactory,
) -> None:
    """A bot's dead-man's switch (ttl 0.3 s) that is not beaten lapses in the service's own
    trigger evaluator: the bot's scope drops to CANCEL_ONLY (pushed to every executor),
    the halt's actor is the trigger, it went through the halt barrier and is audited;
    other bots trade on; a new beat re-arms the switch but does not lift the halt."""
    ops, executor = await connect(), await connect()
    switch = await ops.set_risk_limit(
        "heartbeat", 0.3, scope=Scope.BOT, target="bot-1", actor="ops"
    )
    await ops.heartbeat(Scope.BOT, "bot-1")

    await until(
        executor,
        lambda: executor.trading_state(IDS) is TradingState.CANCEL_ONLY,
        "the lapsed switch moved bot-1 to cancel_only",
    )
    halt = executor.active_halt(IDS)
    assert halt is not None
    assert (halt.scope, halt.target, halt.actor) == (Scope.BOT, "bot-1", f"trigger:{switch.key}")
    assert "no heartbeat" in halt.reason
    assert executor.trading_state(OTHER_BOT) is TradingState.ACTIVE

    async def audited() -> list[str]:
        return [e.action for e in await ops.audit_entries() if e.actor == f"trigger:{switch.key}"]

    # The push may reach an executor before the barrier's report is written: wait for it.
    await eventually(
        lambda: _has(audited(), "halt_barrier"), "the trigger's halt barrier was audited"
    )
    assert (await audited())[-1] == "halt"

    [(_, progress)] = (await ops.explain_limits(IDS)).triggers
    assert progress.fired and progress.last_beat is not None
    # A longer ttl first (replacing a trigger keeps its progress), so the re-armed switch
    # cannot lapse again before it is looked at, however slow the machine.
    await ops.set_risk_limit("heartbeat", 3600, scope=Scope.BOT, target="bot-1", actor="ops")
    await ops.heartbeat(Scope.BOT, "bot-1")
    [(_, rearmed)] = (await ops.explain_limits(IDS)).triggers
    assert rearmed.last_beat is not None and rearmed.last_beat > progress.last_beat
    assert not rearmed.fired and rearmed.breaches == 0
    assert executor.trading_state(IDS) is TradingState.CANCEL_ONLY
    assert (await ops.halts()) == [halt]


@pytest.mark.asyncio
async def test_a_denied_order_is_audited_and_a_malformed_report_refused(
    connect: ClientFactory, stub: Stub
) -> None:
    """RecordOrderDenied writes one audit entry (action order_denied, actor risk:<check>,
    the denial's scope, the order's ids); a report whose denial has no scope is
    INVALID_ARGUMENT naming denial.scope."""
    client = await connect()
    denial = Denial(
        "max_position",
        Scope.STRATEGY,
        "strat-1",
        12.0,
        10.0,
        "position after the order 12 beyond max_position 10 of strategy 'strat-1'",
    )

    await client.record_order_denied(
        denial, ids=IDS, execution_id="ex-1", node_id="buy", client_order_id="ex-1:buy"
    )

    [entry] = await client.audit_entries()
    assert (entry.action, entry.actor, entry.scope, entry.target, entry.reason) == (
        "order_denied",
        "risk:max_position",
        Scope.STRATEGY,
        "strat-1",
        denial.reason,
    )
    assert entry.details["bot_id"] == "bot-1"
    assert entry.details["client_order_id"] == "ex-1:buy"
    assert (entry.details["value"], entry.details["threshold"]) == (12.0, 10.0)

    request = wire.order_denied_to_proto(
        denial, ids=IDS, execution_id="ex-1", node_id="buy", client_order_id="ex-1:buy"
    )
    request.denial.scope = common_pb2.SCOPE_UNSPECIFIED
    assert await invalid_field(stub.RecordOrderDenied(request)) == "denial.scope"
    assert len(await client.audit_entries()) == 1


@pytest.mark.asyncio
async def test_limits_set_before_scopes_existed_keep_working_as_global(
    connect: ClientFactory, stub: Stub
) -> None:
    """A SetRiskLimitRequest with none of the new fields (an older client) sets a global
    limit with default options, listed and pushed as before."""
    client = await connect()
    response = await stub.SetRiskLimit(
        pb.SetRiskLimitRequest(limit_type="max_order_notional", threshold=50, actor="old")
    )
    limit = wire.risk_limit_from_proto(response.limit)
    assert limit == RiskLimit(
        "max_order_notional",
        50.0,
        LimitDirection.ABOVE,
        True,
        limit.updated_at,
        "old",
    )
    await until(client, lambda: bool(client.pre_trade_limits(IDS)), "pushed")
    assert client.pre_trade_limits(IDS).local == (limit,)


@pytest.fixture
def service_keys_dropped(risk_service: Service, redis_server: ServerProcess) -> Iterator[None]:
    """Deletes the test's Redis keys afterwards (for a test with no async client)."""
    yield
    cleanup = redis.Redis.from_url(redis_server.url)
    keys = list(cleanup.scan_iter(match=f"*{risk_service.redis_prefix}*"))
    if keys:
        cleanup.delete(*keys)
    cleanup.close()


@pytest.mark.usefixtures("service_keys_dropped")
def test_the_cli_sets_explains_beats_and_deletes_limits_in_production(
    risk_service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tradeflow limits ... --env production` and `tradeflow heartbeat --env production`
    talk to the emergency service alone: set, list (--json), explain, beat and delete work,
    and a refused option is one line naming the field, exit 2."""
    monkeypatch.setenv("TRADEFLOW_EMERGENCY_ADDR", risk_service.address)
    monkeypatch.setenv("TRADEFLOW_GRPC_PLAINTEXT", "true")  # the fixture's service is plaintext

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--env", "production"])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("limits", "set", "max_position", "2", "--bot", "bot-1")
    assert code == 0, err
    assert out.startswith("set max_position bot 'bot-1': abs_above 2; set by ")
    assert cli("limits", "set", "heartbeat", "3600", "--workflow", "wf-1")[0] == 0
    code, out, _ = cli("heartbeat", "--workflow", "wf-1")
    assert code == 0 and out.startswith("heartbeat workflow 'wf-1': lapses at ")

    code, out, _ = cli("limits", "explain", "--bot", "bot-1", "--workflow", "wf-1")
    assert code == 0
    assert "  * max_position bot 'bot-1': abs_above 2;" in out
    assert "    heartbeat workflow 'wf-1': " in out and "last beat " in out

    assert cli("limits", "delete", "max_position", "--bot", "bot-1") == (
        0,
        "deleted max_position bot 'bot-1'\n",
        "",
    )
    bad = ["daily_loss", "-5", "--state", "halted", "--timezone", "Mars/X"]
    code, out, err = cli("limits", "set", *bad)
    assert (code, out) == (2, "")
    assert err.startswith("error: invalid field 'timezone': ") and err.count("\n") == 1
    code, out, _ = cli("limits", "list", "--json")
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["heartbeat@workflow:wf-1"]


@pytest.mark.asyncio
async def test_a_switch_that_fired_as_its_service_was_killed_restricts_after_a_restart(
    connect: ClientFactory, risk_service: Service, redis_server: ServerProcess
) -> None:
    """SIGKILL the emergency service; while it is dead, leave Redis as a service killed in
    the middle of a fire leaves it (the switch's progress stored as fired, no halt
    written) with a lapsed switch. The restarted service's evaluator restricts the bot
    (level-triggered firing recovers the halt the dead one never wrote): 0 lapsed
    switches left without their state."""
    ops = await connect()
    switch = await ops.set_risk_limit(
        "heartbeat", 3600, scope=Scope.BOT, target="bot-1", actor="ops"
    )
    await ops.heartbeat(Scope.BOT, "bot-1")
    risk_service.process.kill()

    client = aioredis.from_url(redis_server.url)
    dead = RedisEmergencyController(
        client,
        prefix=risk_service.redis_prefix,
        clock=SystemClock(),
        id_factory=new_id,
        max_staleness=None,
    )
    try:
        await dead.start()
        await dead.set_risk_limit("heartbeat", 0.05, scope=Scope.BOT, target="bot-1")
        key = switch.key
        ((_, progress),) = (await dead.explain_limits(IDS)).triggers
        assert progress.last_beat is not None
        died = replace(progress, version=progress.version + 1, breaches=1, fired=True)
        assert await dead.save_trigger_progress(key, died, progress.version)
        assert dead.state().halts == {}
    finally:
        await dead.close()
        await client.aclose()

    await asyncio.to_thread(risk_service.start)
    watcher = await connect()
    await until(
        watcher,
        lambda: watcher.trading_state(IDS) is TradingState.CANCEL_ONLY,
        "the restarted service restricted bot-1",
    )
    halt = watcher.active_halt(IDS)
    assert halt is not None and halt.actor == f"trigger:{key}"
    assert watcher.trading_state(OTHER_BOT) is TradingState.ACTIVE
