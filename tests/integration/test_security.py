"""Who may do what, over the real services with real certificates (issue 11).

One stack for the module: NATS, Redis and the three services speaking mutual TLS with a
CA made at test time. Each test acts as principals of its own (distinct bot and operator
names), so the tests do not interfere, and lifts the halts it makes.

- Transport: plaintext, no client certificate or one of another CA never reach a service;
  a certificate of the right CA naming no principal (or a malformed one) is
  UNAUTHENTICATED.
- Roles: the emergency, executor and state services refuse what a role may not do
  (PERMISSION_DENIED), audit the refusal and who asked, and allow what it may.
- Two-step resume: a global halt takes a request and a confirmation by two operators.
- Edges: ``/metrics`` binds the configured host, reflection can be turned off, and a
  service with no TLS files nor an explicit plaintext choice refuses to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from emergency_fixtures import EMERGENCY_SERVICE_NAME
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kit import DEADLINE_SECONDS, checkpoint, eventually, execution
from servers import REPO_ROOT, Stack, production_cli, start_service
from state_fixtures import STATE_SERVICE_NAME
from workflows import trading_workflow

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.security import TransportSecurity
from tradeflow.adapters.redis.emergency import RedisResumeRequests
from tradeflow.app.certs import Authority, Issued
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.principals import Principal, Role
from tradeflow.domain.records import ExecutionStatus, HaltState, Scope, StateBatch
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as em
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc as em_grpc
from tradeflow.proto.executor.v1 import executor_service_pb2 as ex
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as ex_grpc
from tradeflow.proto.state.v1 import state_service_pb2 as st
from tradeflow.proto.state.v1 import state_service_pb2_grpc as st_grpc

pytestmark = pytest.mark.integration

DEFINITION = json.dumps(trading_workflow())
"""Quote -> trigger -> risk check -> paper market buy: no ``api_call``, so no egress."""
DENIED = grpc.StatusCode.PERMISSION_DENIED
SERVICES = ("executor", "emergency", "state")


def bot(name: str) -> Principal:
    return Principal(Role.BOT, name)


def operator(name: str) -> Principal:
    return Principal(Role.OPERATOR, name)


ADMIN = Principal(Role.ADMIN, "root")


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The services over mutual TLS with a throwaway CA, for the whole module."""
    stack = Stack(
        Path(tmp_path_factory.mktemp("tls-stack")),
        tls=True,
        extra_env={"TRADEFLOW_LOG_LEVEL": "info", "TRADEFLOW_BOT_STRATEGIES": "bot-s1=strat-1"},
    )
    stack.start()
    yield stack
    stack.stop()


def authority(stack: Stack) -> Authority:
    assert stack.authority is not None
    return stack.authority


def security_of(stack: Stack, principal: Principal) -> TransportSecurity:
    """The TLS material of a client acting as ``principal`` (its certificate issued now)."""
    env = stack.identity_env(principal)
    return TransportSecurity.from_files(
        env["TRADEFLOW_TLS_CA"], env["TRADEFLOW_TLS_CERT"], env["TRADEFLOW_TLS_KEY"]
    )


def address(stack: Stack, service: str) -> str:
    return f"127.0.0.1:{stack.ports[service]}"


class _Deadline(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Gives every call without a deadline :data:`DEADLINE_SECONDS`: a service that hangs
    fails the test instead of hanging it."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=DEADLINE_SECONDS)
        return await continuation(details, request)


def bounded_channel(target: str, security: TransportSecurity) -> grpc.aio.Channel:
    """A mutual-TLS channel to ``target`` whose unary calls are bounded in time."""
    return grpc.aio.secure_channel(
        target, security.channel_credentials(), interceptors=[_Deadline()]
    )


class Clients:
    """Stubs of the stack's services as any principal (or with any TLS material); the
    channels close with the test."""

    def __init__(self, stack: Stack, exits: AsyncExitStack) -> None:
        self.stack = stack
        self._exits = exits

    async def _channel(self, service: str, security: TransportSecurity) -> grpc.aio.Channel:
        channel = bounded_channel(address(self.stack, service), security)
        self._exits.push_async_callback(channel.close)
        return channel

    async def emergency(self, principal: Principal) -> em_grpc.EmergencyServiceStub:
        channel = await self._channel("emergency", security_of(self.stack, principal))
        return em_grpc.EmergencyServiceStub(channel)

    async def executor(self, principal: Principal) -> ex_grpc.ExecutorServiceStub:
        channel = await self._channel("executor", security_of(self.stack, principal))
        return ex_grpc.ExecutorServiceStub(channel)

    async def state(self, principal: Principal) -> st_grpc.StateServiceStub:
        channel = await self._channel("state", security_of(self.stack, principal))
        return st_grpc.StateServiceStub(channel)

    async def with_material(self, service: str, material: Issued) -> grpc.aio.Channel:
        """A channel presenting ``material`` (checked against the stack's CA)."""
        ca = authority(self.stack).cert_pem
        security = TransportSecurity(ca, material.cert_pem, material.key_pem)
        return await self._channel(service, security)


@pytest_asyncio.fixture
async def clients(tls_stack: Stack) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as exits:
        yield Clients(tls_stack, exits)


async def refused(call: Awaitable[Any], code: grpc.StatusCode = DENIED) -> str:
    """Await ``call``; it must fail with ``code``. Returns the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


def halt(
    scope: common_pb2.Scope.ValueType, target: str | None = None, actor: str = ""
) -> em.HaltRequest:
    return em.HaltRequest(
        request_id=new_id(), scope=scope, target=target, reason="test halt", actor=actor
    )


def resume(
    scope: common_pb2.Scope.ValueType, target: str | None = None, actor: str = ""
) -> em.ResumeRequest:
    return em.ResumeRequest(
        request_id=new_id(), scope=scope, target=target, reason="test resume", actor=actor
    )


def halted(state: em.GetStateResponse) -> set[tuple[int, str | None]]:
    """The (scope, target) of every halt of a state."""
    return {(h.scope, h.target if h.HasField("target") else None) for h in state.state.halts}


async def audit(stub: em_grpc.EmergencyServiceStub, action: str) -> list[Any]:
    """The newest audit entries of ``action`` (newest first)."""
    reply = await stub.ListAuditEntries(em.ListAuditEntriesRequest(limit=500))
    return [entry for entry in reply.entries if entry.action == action]


async def lift_global(clients: Clients) -> None:
    """Resume the global halt: requested by one operator (unless a test's request stands),
    confirmed by another."""
    first = await clients.emergency(operator("lifter-1"))
    if (await first.Resume(resume(common_pb2.SCOPE_GLOBAL))).resumed:
        return
    second = await clients.emergency(operator("lifter-2"))
    assert (await second.Resume(resume(common_pb2.SCOPE_GLOBAL))).resumed


# --- transport --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("service", SERVICES)
async def test_a_plaintext_client_fails_at_the_handshake(tls_stack: Stack, service: str) -> None:
    async with grpc.aio.insecure_channel(address(tls_stack, service)) as channel:
        stub = em_grpc.EmergencyServiceStub(channel)
        await refused(
            stub.GetState(em.GetStateRequest(), timeout=DEADLINE_SECONDS),
            grpc.StatusCode.UNAVAILABLE,
        )


@pytest.mark.asyncio
async def test_a_tls_client_without_a_certificate_fails(tls_stack: Stack) -> None:
    credentials = grpc.ssl_channel_credentials(authority(tls_stack).cert_pem)
    async with grpc.aio.secure_channel(address(tls_stack, "emergency"), credentials) as channel:
        stub = em_grpc.EmergencyServiceStub(channel)
        await refused(
            stub.GetState(em.GetStateRequest(), timeout=DEADLINE_SECONDS),
            grpc.StatusCode.UNAVAILABLE,
        )


@pytest.mark.asyncio
async def test_a_certificate_of_another_ca_fails(clients: Clients) -> None:
    """An operator's certificate, but not of the stack's CA: the handshake refuses it."""
    foreign = Authority("someone else's CA").issue(operator("mallory"))
    stub = em_grpc.EmergencyServiceStub(await clients.with_material("emergency", foreign))
    await refused(
        stub.GetState(em.GetStateRequest(), timeout=DEADLINE_SECONDS),
        grpc.StatusCode.UNAVAILABLE,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "principal",
    [
        None,  # a bare certificate of the right CA
        Principal(Role.SYSTEM, "tradeflow"),  # no role a certificate may name
        Principal(Role.BOT, "bad/name"),  # spiffe://tradeflow/bot/bad/name
    ],
    ids=["no-principal", "system-role", "malformed-name"],
)
async def test_a_certificate_naming_no_principal_is_unauthenticated(
    clients: Clients, principal: Principal | None
) -> None:
    material = authority(clients.stack).issue(principal)
    for service in SERVICES:
        channel = await clients.with_material(service, material)
        if service == "emergency":
            call = em_grpc.EmergencyServiceStub(channel).GetState(em.GetStateRequest())
        elif service == "executor":
            call = ex_grpc.ExecutorServiceStub(channel).ListExecutions(ex.ListExecutionsRequest())
        else:
            call = st_grpc.StateServiceStub(channel).GetLastSequence(st.GetLastSequenceRequest())
        details = await refused(call, grpc.StatusCode.UNAUTHENTICATED)
        assert "spiffe://tradeflow/" in details


# --- roles on the emergency service -----------------------------------------------------


@pytest.mark.asyncio
async def test_a_bot_cannot_resume_and_its_refusal_is_audited(clients: Clients) -> None:
    me = await clients.emergency(bot("bot-e1"))
    ops = await clients.emergency(operator("olga"))
    await me.Halt(halt(common_pb2.SCOPE_BOT, "bot-e1"))
    try:
        details = await refused(me.Resume(resume(common_pb2.SCOPE_BOT, "bot-e1")))
        assert "bot/bot-e1" in details and "Resume" in details
        assert (common_pb2.SCOPE_BOT, "bot-e1") in halted(await ops.GetState(em.GetStateRequest()))
        denial = next(e for e in await audit(ops, "rpc_denied") if e.principal == "bot/bot-e1")
        assert (denial.actor, denial.role) == ("bot/bot-e1", "bot")
        assert denial.peer.startswith("ipv4:127.0.0.1:")
        assert json.loads(denial.details_json)["method"] == "Resume"
        # Nor may a bot read the audit trail.
        await refused(me.ListAuditEntries(em.ListAuditEntriesRequest()))
    finally:
        # A bot's halt takes one operator to lift (bot scopes are not confirmed twice).
        lifted = await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-e1"))
    assert lifted.resumed and not lifted.awaiting_confirmation


@pytest.mark.asyncio
async def test_only_an_admin_changes_limits(clients: Clients) -> None:
    admin = await clients.emergency(ADMIN)
    loosen = em.SetRiskLimitRequest(
        request_id=new_id(),
        limit_type="max_order_notional",
        threshold=1e300,
        auto_halt=False,
    )
    await refused((await clients.emergency(bot("bot-e2"))).SetRiskLimit(loosen))
    await refused((await clients.emergency(operator("otto"))).SetRiskLimit(loosen))
    limits = (await admin.ListRiskLimits(em.ListRiskLimitsRequest())).limits
    assert all(limit.threshold != 1e300 for limit in limits)

    target = "bot-e2-limited"
    set_limit = em.SetRiskLimitRequest(
        request_id=new_id(),
        limit_type="max_exposure",
        threshold=5.0,
        scope=common_pb2.SCOPE_BOT,
        target=target,
        actor="someone-else",
    )
    try:
        reply = await admin.SetRiskLimit(set_limit)
        assert (reply.limit.threshold, reply.limit.updated_by) == (5.0, "admin/root")
        entry = next(
            e
            for e in await audit(admin, "set_risk_limit")
            if e.HasField("target") and e.target == target
        )
        assert (entry.actor, entry.principal, entry.role) == ("admin/root", "admin/root", "admin")
    finally:
        deleted = await admin.DeleteRiskLimit(
            em.DeleteRiskLimitRequest(
                request_id=new_id(),
                limit_type="max_exposure",
                scope=common_pb2.SCOPE_BOT,
                target=target,
            )
        )
    assert deleted.deleted


@pytest.mark.asyncio
async def test_a_bot_halts_its_own_scope_and_no_other(clients: Clients) -> None:
    me = await clients.emergency(bot("bot-e3"))
    ops = await clients.emergency(operator("oscar"))
    await refused(me.Halt(halt(common_pb2.SCOPE_BOT, "bot-e4")))
    await refused(me.Halt(halt(common_pb2.SCOPE_GLOBAL)))
    await refused(me.Halt(halt(common_pb2.SCOPE_STRATEGY, "bot-e3")))
    before = halted(await ops.GetState(em.GetStateRequest()))
    assert (common_pb2.SCOPE_BOT, "bot-e4") not in before
    assert (common_pb2.SCOPE_GLOBAL, None) not in before
    await me.Halt(halt(common_pb2.SCOPE_BOT, "bot-e3"))
    try:
        assert (common_pb2.SCOPE_BOT, "bot-e3") in halted(await me.GetState(em.GetStateRequest()))
    finally:
        assert (await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-e3"))).resumed


@pytest.mark.asyncio
async def test_a_halt_never_loosens_what_its_caller_may_not_resume(clients: Clients) -> None:
    """Loosening is resuming: a halted bot re-halting itself as reduce_only, or one
    operator turning a global halt into reduce_only, is refused (FAILED_PRECONDITION) and
    the halt stands; tightening is a halt like any other."""
    me = await clients.emergency(bot("bot-e10"))
    ops = await clients.emergency(operator("otto"))
    await ops.Halt(halt(common_pb2.SCOPE_BOT, "bot-e10"))
    await ops.Halt(halt(common_pb2.SCOPE_GLOBAL))
    try:
        for stub, scope, target in (
            (me, common_pb2.SCOPE_BOT, "bot-e10"),
            (ops, common_pb2.SCOPE_GLOBAL, None),
        ):
            looser = halt(scope, target)
            looser.state = em.TRADING_STATE_REDUCE_ONLY
            details = await refused(stub.Halt(looser), grpc.StatusCode.FAILED_PRECONDITION)
            assert "may not loosen" in details
        now = {
            (h.scope, h.target if h.HasField("target") else None): h.state
            for h in (await ops.GetState(em.GetStateRequest())).state.halts
        }
        assert now[(common_pb2.SCOPE_BOT, "bot-e10")] == em.TRADING_STATE_HALTED
        assert now[(common_pb2.SCOPE_GLOBAL, None)] == em.TRADING_STATE_HALTED
        # The bot may still tighten its own scope from reduce_only to halted.
        assert (await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-e10"))).resumed
        mild = halt(common_pb2.SCOPE_BOT, "bot-e10")
        mild.state = em.TRADING_STATE_REDUCE_ONLY
        await me.Halt(mild)
        assert (await me.Halt(halt(common_pb2.SCOPE_BOT, "bot-e10"))).halt.state == (
            em.TRADING_STATE_HALTED
        )
    finally:
        await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-e10"))
        await lift_global(clients)


@pytest.mark.asyncio
async def test_a_request_id_is_the_callers_own(clients: Clients) -> None:
    """A bot that claims the request_id an operator will use neither turns the operator's
    halt into a replay of its own answer nor reads the operator's answer back."""
    me = await clients.emergency(bot("bot-e7"))
    ops = await clients.emergency(operator("olga"))
    mine = await me.Halt(replace_id(halt(common_pb2.SCOPE_BOT, "bot-e7"), "shared-id"))
    theirs = await ops.Halt(replace_id(halt(common_pb2.SCOPE_BOT, "bot-e8"), "shared-id"))
    try:
        assert (mine.halt.target, theirs.halt.target) == ("bot-e7", "bot-e8")
        now = halted(await ops.GetState(em.GetStateRequest()))
        assert {(common_pb2.SCOPE_BOT, "bot-e7"), (common_pb2.SCOPE_BOT, "bot-e8")} <= now
        # Each caller's retry gets its own first answer back.
        again = await ops.Halt(replace_id(halt(common_pb2.SCOPE_BOT, "bot-e9"), "shared-id"))
        assert again.halt.target == "bot-e8"
    finally:
        for target in ("bot-e7", "bot-e8"):
            assert (await ops.Resume(resume(common_pb2.SCOPE_BOT, target))).resumed


def replace_id(request: em.HaltRequest, request_id: str) -> em.HaltRequest:
    request.request_id = request_id
    return request


@pytest.mark.asyncio
async def test_the_audit_names_the_certificate_not_the_request(clients: Clients) -> None:
    """An operator's global halt claiming to be ``bot_001``: the audit names operator/alice."""
    alice = await clients.emergency(operator("alice"))
    await alice.Halt(halt(common_pb2.SCOPE_GLOBAL, actor="bot_001"))
    try:
        state = await alice.GetState(em.GetStateRequest())
        assert (common_pb2.SCOPE_GLOBAL, None) in halted(state)
        assert {h.actor for h in state.state.halts if h.scope == common_pb2.SCOPE_GLOBAL} == {
            "operator/alice"
        }
        entry = next(e for e in await audit(alice, "halt") if e.scope == common_pb2.SCOPE_GLOBAL)
        assert (entry.actor, entry.principal, entry.role) == (
            "operator/alice",
            "operator/alice",
            "operator",
        )
        assert entry.peer.startswith("ipv4:127.0.0.1:")
    finally:
        await lift_global(clients)


# --- two-step resume --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_global_resume_takes_two_operators(clients: Clients) -> None:
    alice = await clients.emergency(operator("alice2"))
    bob = await clients.emergency(operator("bob2"))
    await alice.Halt(halt(common_pb2.SCOPE_GLOBAL))

    first = await alice.Resume(resume(common_pb2.SCOPE_GLOBAL))
    assert (first.resumed, first.awaiting_confirmation) == (False, True)
    assert first.requested_by == "operator/alice2" and first.HasField("confirm_before")
    again = await alice.Resume(resume(common_pb2.SCOPE_GLOBAL))
    assert (again.resumed, again.awaiting_confirmation) == (False, True)
    assert (common_pb2.SCOPE_GLOBAL, None) in halted(await bob.GetState(em.GetStateRequest()))

    confirmed = await bob.Resume(resume(common_pb2.SCOPE_GLOBAL))
    assert (confirmed.resumed, confirmed.requested_by) == (True, "operator/alice2")
    assert (common_pb2.SCOPE_GLOBAL, None) not in halted(await bob.GetState(em.GetStateRequest()))

    requested = next(
        e for e in await audit(bob, "resume_requested") if e.principal == "operator/alice2"
    )
    assert requested.scope == common_pb2.SCOPE_GLOBAL
    lifted = next(e for e in await audit(bob, "resume") if e.principal == "operator/bob2")
    assert (lifted.actor, lifted.role) == ("operator/bob2", "operator")
    assert json.loads(lifted.details_json)["requested_by"] == "operator/alice2"


@pytest.mark.asyncio
async def test_two_confirmations_at_once_resume_once(clients: Clients) -> None:
    alice = await clients.emergency(operator("alice3"))
    bob = await clients.emergency(operator("bob3"))
    carol = await clients.emergency(operator("carol3"))
    await alice.Halt(halt(common_pb2.SCOPE_GLOBAL))
    assert (await alice.Resume(resume(common_pb2.SCOPE_GLOBAL))).awaiting_confirmation
    replies = await asyncio.gather(
        bob.Resume(resume(common_pb2.SCOPE_GLOBAL)),
        carol.Resume(resume(common_pb2.SCOPE_GLOBAL)),
    )
    assert sorted(reply.resumed for reply in replies) == [False, True]
    assert (common_pb2.SCOPE_GLOBAL, None) not in halted(await alice.GetState(em.GetStateRequest()))

    # The loser's call left no request behind that a newcomer's resume of the next halt
    # would confirm: the newcomer's is a request of its own.
    await alice.Halt(halt(common_pb2.SCOPE_GLOBAL))
    dave = await clients.emergency(operator("dave3"))
    try:
        reply = await dave.Resume(resume(common_pb2.SCOPE_GLOBAL))
        assert (reply.resumed, reply.requested_by) == (False, "operator/dave3")
    finally:
        if (common_pb2.SCOPE_GLOBAL, None) in halted(await alice.GetState(em.GetStateRequest())):
            await lift_global(clients)


@pytest.mark.asyncio
async def test_no_single_operator_lifts_a_global_halt_while_hammering_resume(
    clients: Clients,
) -> None:
    """An operator calling Resume(global) in a loop, from four tasks, while another halts:
    over 5 halts, none of its calls lifts the halt alone (a halt its replica has not seen
    yet is never resumed in one step); each halt ends with its request recorded."""
    mallory = await clients.emergency(operator("mallory"))
    victor = await clients.emergency(operator("victor"))
    lifted_alone = []
    for _ in range(5):
        recorded = asyncio.Event()

        async def hammer(done: asyncio.Event = recorded) -> None:
            while not done.is_set():
                reply = await mallory.Resume(resume(common_pb2.SCOPE_GLOBAL))
                if reply.resumed:
                    lifted_alone.append(reply)
                if reply.awaiting_confirmation:
                    done.set()

        async with asyncio.timeout(DEADLINE_SECONDS):
            tasks = [asyncio.ensure_future(hammer()) for _ in range(4)]
            await victor.Halt(halt(common_pb2.SCOPE_GLOBAL))
            await asyncio.gather(*tasks)
        assert (common_pb2.SCOPE_GLOBAL, None) in halted(
            await victor.GetState(em.GetStateRequest())
        )
        confirmed = await victor.Resume(resume(common_pb2.SCOPE_GLOBAL))
        assert (confirmed.resumed, confirmed.requested_by) == (True, "operator/mallory")
    assert lifted_alone == []


@pytest.mark.asyncio
async def test_refused_calls_are_audited_without_flooding_the_audit(clients: Clients) -> None:
    """Twenty refused calls in a row from one bot (well within the 10 s window): one
    rpc_denied entry, so refusals cannot push the changes out of the capped audit."""
    me = await clients.emergency(bot("bot-flood"))
    for _ in range(20):
        await refused(me.Resume(resume(common_pb2.SCOPE_BOT, "bot-flood")))
    reader = await clients.emergency(operator("auditor"))
    mine = [e for e in await audit(reader, "rpc_denied") if e.principal == "bot/bot-flood"]
    assert len(mine) == 1
    assert json.loads(mine[0].details_json)["method"] == "Resume"


@pytest.mark.asyncio
async def test_a_request_confirms_only_the_halt_it_was_made_for(tls_stack: Stack) -> None:
    """A request left about an earlier halt of the scope (by a confirmation that lost a
    race) is replaced by the next operator's, never consumed as its confirmation."""
    client = aioredis.from_url(f"redis://127.0.0.1:{tls_stack.ports['redis']}/0")
    prefix = f"test-security-{new_id()}"
    requests = RedisResumeRequests(client, prefix=prefix, window=60.0, clock=SystemClock())
    earlier = HaltState(Scope.GLOBAL, None, "test halt", "operator/a", since=1_000.0)
    later = replace(earlier, since=2_000.0)
    try:
        assert (await requests.step(earlier, caller="operator/a", reason="r")).outcome == (
            "requested"
        )
        step = await requests.step(later, caller="operator/b", reason="r")
        assert (step.outcome, step.requested_by) == ("requested", "operator/b")
        step = await requests.step(later, caller="operator/c", reason="r")
        assert (step.outcome, step.requested_by) == ("confirmed", "operator/b")
    finally:
        keys = [key async for key in client.scan_iter(match=f"*{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.mark.asyncio
async def test_an_unconfirmed_request_lapses(tls_stack: Stack, tmp_path: Path) -> None:
    """With a 0.2 s window, a request nobody confirmed in time is gone: the next operator's
    call makes a new request instead of resuming."""
    service = start_service(
        "emergency",
        EMERGENCY_SERVICE_NAME,
        tmp_path,
        {
            "TRADEFLOW_REDIS_URL": f"redis://127.0.0.1:{tls_stack.ports['redis']}/0",
            "TRADEFLOW_NATS_URL": f"nats://127.0.0.1:{tls_stack.ports['nats']}",
            "TRADEFLOW_RESUME_CONFIRM_SECONDS": "0.2",
            **tls_stack.identity_env(Principal(Role.EXECUTOR, "emergency")),
        },
        security=security_of(tls_stack, operator("watcher")),
    )
    redis = aioredis.from_url(f"redis://127.0.0.1:{tls_stack.ports['redis']}/0")
    try:
        async with AsyncExitStack() as exits:
            stubs = []
            for name in ("alice4", "bob4"):
                channel = bounded_channel(service.address, security_of(tls_stack, operator(name)))
                exits.push_async_callback(channel.close)
                stubs.append(em_grpc.EmergencyServiceStub(channel))
            alice, bob = stubs
            await alice.Halt(halt(common_pb2.SCOPE_GLOBAL))
            assert (await alice.Resume(resume(common_pb2.SCOPE_GLOBAL))).awaiting_confirmation
            pattern = f"*{service.redis_prefix}*resume_request*"

            async def lapsed() -> bool:
                return not [key async for key in redis.scan_iter(match=pattern)]

            await eventually(lapsed, "alice's resume request lapsed")
            late = await bob.Resume(resume(common_pb2.SCOPE_GLOBAL))
            assert (late.resumed, late.awaiting_confirmation) == (False, True)
            assert late.requested_by == "operator/bob4"
            assert (common_pb2.SCOPE_GLOBAL, None) in halted(
                await bob.GetState(em.GetStateRequest())
            )
    finally:
        service.process.stop()
        keys = [key async for key in redis.scan_iter(match=f"*{service.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@pytest.mark.asyncio
async def test_a_resume_request_outlives_its_replica(tls_stack: Stack, tmp_path: Path) -> None:
    """Crash: alice's request is recorded by an emergency replica that is then SIGKILLed;
    a replica started afterwards on the same Redis takes bob's confirmation."""
    redis_url = f"redis://127.0.0.1:{tls_stack.ports['redis']}/0"
    prefix = f"test-resume-crash-{new_id()}"

    def replica(name: str) -> Any:
        return start_service(
            "emergency",
            EMERGENCY_SERVICE_NAME,
            tmp_path / name,
            {
                "TRADEFLOW_REDIS_URL": redis_url,
                "TRADEFLOW_NATS_URL": f"nats://127.0.0.1:{tls_stack.ports['nats']}",
                "TRADEFLOW_REDIS_PREFIX": prefix,
                **tls_stack.identity_env(Principal(Role.EXECUTOR, "emergency")),
            },
            security=security_of(tls_stack, operator("watcher")),
        )

    redis = aioredis.from_url(redis_url)
    first = replica("first")
    second = None
    try:
        async with AsyncExitStack() as exits:

            async def stub(service: Any, name: str) -> em_grpc.EmergencyServiceStub:
                channel = bounded_channel(service.address, security_of(tls_stack, operator(name)))
                exits.push_async_callback(channel.close)
                return em_grpc.EmergencyServiceStub(channel)

            alice = await stub(first, "alice5")
            await alice.Halt(halt(common_pb2.SCOPE_GLOBAL))
            assert (await alice.Resume(resume(common_pb2.SCOPE_GLOBAL))).awaiting_confirmation
            first.process.kill()
            second = replica("second")
            bob = await stub(second, "bob5")
            confirmed = await bob.Resume(resume(common_pb2.SCOPE_GLOBAL))
            assert (confirmed.resumed, confirmed.requested_by) == (True, "operator/alice5")
            assert halted(await bob.GetState(em.GetStateRequest())) == set()
    finally:
        for service in (first, second):
            if service is not None:
                service.process.stop()
        keys = [key async for key in redis.scan_iter(match=f"*{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


# --- the executor service ---------------------------------------------------------------


def execute(bot_id: str | None) -> ex.ExecuteWorkflowRequest:
    return ex.ExecuteWorkflowRequest(
        request_id=new_id(), workflow_id="secured", bot_id=bot_id, definition_json=DEFINITION
    )


def query(bot_id: str | None = None) -> ex.ListExecutionsRequest:
    return ex.ListExecutionsRequest(query=common_pb2.ExecutionQuery(bot_id=bot_id))


@pytest.mark.asyncio
async def test_a_bot_runs_and_reads_only_its_own_executions(clients: Clients) -> None:
    bot_a = await clients.executor(bot("bot-a"))
    bot_b = await clients.executor(bot("bot-b"))
    ops = await clients.executor(operator("olivia"))

    done = (await bot_a.ExecuteWorkflow(execute("bot-a"))).execution.record
    assert done.status == common_pb2.EXECUTION_STATUS_COMPLETED and done.bot_id == "bot-a"
    await refused(bot_a.ExecuteWorkflow(execute("bot-a-alias")))
    await refused(bot_a.ExecuteWorkflow(execute(None)))
    await refused(ops.ExecuteWorkflow(execute("bot-a")))

    mine = ex.GetExecutionRequest(execution_id=done.execution_id)
    assert (await bot_a.GetExecution(mine)).execution.record.bot_id == "bot-a"
    await refused(bot_b.GetExecution(mine))
    assert (await ops.GetExecution(mine)).execution.record.execution_id == done.execution_id

    await refused(bot_b.ListExecutions(query()))
    await refused(bot_b.ListExecutions(query("bot-a")))
    own = (await bot_a.ListExecutions(query("bot-a"))).page.executions
    assert done.execution_id in {record.execution_id for record in own}
    assert {record.bot_id for record in own} == {"bot-a"}
    other = (await bot_b.ExecuteWorkflow(execute("bot-b"))).execution.record
    theirs = (await bot_b.ListExecutions(query("bot-b"))).page.executions
    assert other.execution_id in {record.execution_id for record in theirs}
    assert {record.bot_id for record in theirs} == {"bot-b"}
    every = (await ops.ListExecutions(query())).page.executions
    assert done.execution_id in {record.execution_id for record in every}


@pytest.mark.asyncio
async def test_a_halted_bot_cannot_trade_on_under_another_bot_id(clients: Clients) -> None:
    bot_c = await clients.executor(bot("bot-c"))
    ops = await clients.emergency(operator("oliver"))
    await ops.Halt(halt(common_pb2.SCOPE_BOT, "bot-c"))
    try:
        await refused(bot_c.ExecuteWorkflow(execute("bot-c-alias")))
        halted_run = (await bot_c.ExecuteWorkflow(execute("bot-c"))).execution.record
        # Under its own bot_id it runs into its halt: no order is placed.
        assert halted_run.status == common_pb2.EXECUTION_STATUS_HALTED
    finally:
        assert (await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-c"))).resumed


# --- the state service ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_only_executors_write_state(clients: Clients) -> None:
    forged_id = new_id()
    forged = wire.state_batch_to_proto(_forged_batch(forged_id), request_id=new_id())
    for principal in (bot("bot-f"), operator("otis"), ADMIN):
        stub = await clients.state(principal)
        await refused(stub.WriteBatch(forged))
        await refused(stub.WriteBatches(st.WriteBatchesRequest(batches=[forged])))
        owner = st.OwnerInfo(owner=f"forger-{principal.name}", kind="executor", host="h", pid=1)
        await refused(stub.AcquireLease(st.AcquireLeaseRequest(owner=owner, ttl_ms=60_000)))
    await refused((await clients.state(bot("bot-f"))).ListExecutions(st.ListExecutionsRequest()))

    # Nothing was written: the executor service serves no such execution.
    executor_ops = await clients.executor(operator("otis"))
    await refused(
        executor_ops.GetExecution(ex.GetExecutionRequest(execution_id=forged_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    reader = await clients.state(operator("otis"))
    listed = (await reader.ListExecutions(st.ListExecutionsRequest())).page.executions
    assert forged_id not in {record.execution_id for record in listed}

    # An executor's write is allowed (its lease given back at once, so no halt waits on it).
    executor = await clients.state(Principal(Role.EXECUTOR, "probe"))
    owner = st.OwnerInfo(owner=f"probe-{new_id()}", kind="executor", host="h", pid=1)
    lease = await executor.AcquireLease(st.AcquireLeaseRequest(owner=owner, ttl_ms=60_000))
    assert lease.epoch > 0
    await executor.ReleaseLease(
        st.ReleaseLeaseRequest(fence=st.Fence(owner=owner.owner, epoch=lease.epoch))
    )


@pytest.mark.asyncio
async def test_only_admins_prune_history(clients: Clients) -> None:
    """PruneExecutions deletes history: an admin may, a bot, an operator or an executor
    may not (the state service's own retention needs no call); an admin's malformed
    request is INVALID_ARGUMENT naming the field."""
    ancient = st.PruneExecutionsRequest(ended_before=wire.timestamp_to_proto(1.0))
    for principal in (bot("bot-p"), operator("odile"), Principal(Role.EXECUTOR, "pruner")):
        await refused((await clients.state(principal)).PruneExecutions(ancient))
    admin = await clients.state(ADMIN)
    report = await admin.PruneExecutions(ancient)
    assert (report.removed, report.more) == (0, False)
    for request, field in (
        (st.PruneExecutionsRequest(), "ended_before"),
        (st.PruneExecutionsRequest(ended_before=ancient.ended_before, limit=10_001), "limit"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.PruneExecutions(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"invalid field {field!r}" in (caught.value.details() or "")


def _forged_batch(execution_id: str) -> StateBatch:
    """A completed execution of ``bot-f`` with a filled order it never placed."""
    record = execution(execution_id, "forged", status=ExecutionStatus.COMPLETED, bot_id="bot-f")
    filled = checkpoint(execution_id, "buy", outputs={"order_id": "x", "status": "filled"})
    return StateBatch(record, (filled,))


# --- risk checks by a bot ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_bots_breach_halts_only_the_bot(clients: Clients) -> None:
    me = await clients.emergency(bot("bot-r"))
    admin = await clients.emergency(ADMIN)
    ops = await clients.emergency(operator("ophelia"))

    def check(bot_id: str | None) -> em.CheckRiskLimitRequest:
        # A loose threshold: the configured 100 still decides.
        return em.CheckRiskLimitRequest(
            request_id=new_id(),
            limit_type="max_exposure",
            value=500.0,
            threshold=1e9,
            auto_halt=True,
            bot_id=bot_id,
        )

    await refused(me.CheckRiskLimit(check(None)))
    await refused(me.CheckRiskLimit(check("bot-r-other")))
    limit = em.SetRiskLimitRequest(
        request_id=new_id(),
        limit_type="max_exposure",
        threshold=100.0,
        scope=common_pb2.SCOPE_BOT,
        target="bot-r",
    )
    await admin.SetRiskLimit(limit)
    try:
        verdict = await me.CheckRiskLimit(check("bot-r"))
        assert (verdict.breached, verdict.halted, verdict.threshold) == (True, True, 100.0)
        now = halted(await ops.GetState(em.GetStateRequest()))
        assert (common_pb2.SCOPE_BOT, "bot-r") in now
        assert (common_pb2.SCOPE_GLOBAL, None) not in now
    finally:
        await admin.DeleteRiskLimit(
            em.DeleteRiskLimitRequest(
                request_id=new_id(),
                limit_type="max_exposure",
                scope=common_pb2.SCOPE_BOT,
                target="bot-r",
            )
        )
        await ops.Resume(resume(common_pb2.SCOPE_BOT, "bot-r"))


# --- edges ------------------------------------------------------------------------------


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                host, _, hex_port = fields[1].rpartition(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(host)
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_bind_the_listen_host(tls_stack: Stack, service: str) -> None:
    """TRADEFLOW_METRICS_HOST defaults to the gRPC host (127.0.0.1), never every address."""
    assert _listeners(tls_stack.ports[f"{service}_metrics"]) == {"0100007F"}


@pytest.mark.parametrize("service", SERVICES)
def test_health_is_served_over_http_for_probes(tls_stack: Stack, service: str) -> None:
    """``/healthz`` beside ``/metrics`` answers 200 while the service serves: the probe a
    kubelet, which has no client certificate, can use."""
    url = f"http://127.0.0.1:{tls_stack.ports[f'{service}_metrics']}"
    with urllib.request.urlopen(f"{url}/healthz", timeout=DEADLINE_SECONDS) as reply:
        assert (reply.status, reply.read()) == (200, b"serving\n")
    with urllib.request.urlopen(f"{url}/metrics", timeout=DEADLINE_SECONDS) as reply:
        assert b"tradeflow_rpc_server_handled_seconds" in reply.read()


@pytest.mark.asyncio
async def test_a_bots_api_call_cannot_reach_the_executor_itself(
    clients: Clients, tls_stack: Stack
) -> None:
    """Server-side request forgery through the executor service: a bot's ``api_call`` to
    the executor's own ``/metrics`` (a literal loopback address: refused before any
    connection) fails the run and brings nothing back; the credential it references is
    stored as a reference."""
    me = await clients.executor(bot("bot-ssrf"))
    metrics = f"http://127.0.0.1:{tls_stack.ports['executor_metrics']}/metrics"

    async def run(properties: dict[str, Any]) -> Any:
        definition = {
            "blocks": [
                {
                    "id": "steal",
                    "category": "providers",
                    "type": "api_call",
                    "properties": properties,
                }
            ]
        }
        request = ex.ExecuteWorkflowRequest(
            request_id=new_id(),
            workflow_id="ssrf",
            bot_id="bot-ssrf",
            definition_json=json.dumps(definition),
        )
        done = (await me.ExecuteWorkflow(request)).execution
        assert done.record.status == common_pb2.EXECUTION_STATUS_FAILED
        assert "tradeflow_" not in str(done)  # no metrics text came back
        return done

    refused_run = await run({"url": metrics})
    assert "refused by the egress policy" in refused_run.record.error
    # A secret bound to no host is sent nowhere; what is stored is the reference.
    keyed = await run({"url": metrics, "headers": {"X-Api-Key": {"secret": "VENUE_KEY"}}})
    assert "bound to no host" in keyed.record.error
    stored = json.loads(keyed.record.definition_json)["blocks"][0]["properties"]["headers"]
    assert stored == {"X-Api-Key": {"secret": "VENUE_KEY"}}


@pytest.mark.asyncio
async def test_a_bot_bound_to_a_strategy_runs_only_under_it(clients: Clients) -> None:
    """``TRADEFLOW_BOT_STRATEGIES=bot-s1=strat-1``: bot-s1 cannot escape its strategy's
    halts and limits by naming another strategy or none; an unbound bot names its own."""
    me = await clients.executor(bot("bot-s1"))

    def under(strategy: str | None, bot_id: str = "bot-s1") -> ex.ExecuteWorkflowRequest:
        request = execute(bot_id)
        if strategy is not None:
            request.strategy_id = strategy
        return request

    done = (await me.ExecuteWorkflow(under("strat-1"))).execution.record
    assert (done.status, done.strategy_id) == (common_pb2.EXECUTION_STATUS_COMPLETED, "strat-1")
    for escape in (None, "strat-2"):
        assert "strategy_id must be 'strat-1'" in await refused(me.ExecuteWorkflow(under(escape)))
    free = await clients.executor(bot("bot-s2"))
    assert (await free.ExecuteWorkflow(under("any", "bot-s2"))).execution.record.bot_id == "bot-s2"


@pytest.mark.asyncio
async def test_a_request_id_names_only_its_own_bots_execution(clients: Clients) -> None:
    """A bot replaying another bot's request_id neither reads that execution nor gets it
    as its own; the owner's retry still gets its first answer."""
    bot_a = await clients.executor(bot("bot-ra"))
    bot_b = await clients.executor(bot("bot-rb"))
    first = execute("bot-ra")
    done = (await bot_a.ExecuteWorkflow(first)).execution.record
    replayed = execute("bot-rb")
    replayed.request_id = first.request_id
    details = await refused(bot_b.ExecuteWorkflow(replayed), grpc.StatusCode.INVALID_ARGUMENT)
    assert "request_id" in details and done.execution_id not in details
    submitted = ex.SubmitWorkflowRequest(
        request_id=first.request_id, workflow_id="secured", bot_id="bot-rb", definition_json="{}"
    )
    await refused(bot_b.SubmitWorkflow(submitted), grpc.StatusCode.INVALID_ARGUMENT)
    again = (await bot_a.ExecuteWorkflow(first)).execution.record
    assert again.execution_id == done.execution_id


@pytest.mark.asyncio
async def test_no_caller_can_plant_a_cancel_on_halt_job(clients: Clients) -> None:
    """The executors' cancel-on-halt jobs have request ids of their own: a bot submitting
    under one (to make the job look done) is refused."""
    me = await clients.executor(bot("bot-planter"))
    planted = execute("bot-planter")
    planted.request_id = "cancel-on-halt:bot:1764669440000000:bot-victim"
    details = await refused(me.ExecuteWorkflow(planted), grpc.StatusCode.INVALID_ARGUMENT)
    assert "reserved" in details


def test_reflection_needs_a_principal(tls_stack: Stack) -> None:
    """Reflection streams both ways: it is authenticated like every other method."""
    nobody = authority(tls_stack).issue(None)
    ca = authority(tls_stack).cert_pem
    credentials = grpc.ssl_channel_credentials(ca, nobody.key_pem, nobody.cert_pem)
    with (
        grpc.secure_channel(address(tls_stack, "state"), credentials) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        reflected_services(channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def reflected_services(channel: grpc.Channel) -> set[str]:
    """The services reflection lists (``grpc.RpcError`` when it is not served)."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([request]), timeout=DEADLINE_SECONDS
    )
    return {service.name for reply in replies for service in reply.list_services_response.service}


def test_reflection_is_served_by_default(tls_stack: Stack) -> None:
    material = security_of(tls_stack, operator("rita"))
    with grpc.secure_channel(
        address(tls_stack, "state"), material.channel_credentials()
    ) as channel:
        services = reflected_services(channel)
    assert STATE_SERVICE_NAME in services


def test_reflection_can_be_turned_off(tls_stack: Stack, tmp_path: Path) -> None:
    material = security_of(tls_stack, operator("rita"))
    service = start_service(
        "state",
        STATE_SERVICE_NAME,
        tmp_path,
        {
            "TRADEFLOW_REDIS_URL": f"redis://127.0.0.1:{tls_stack.ports['redis']}/0",
            "TRADEFLOW_GRPC_REFLECTION": "false",
            **tls_stack.identity_env(Principal(Role.EXECUTOR, "state")),
        },
        security=material,
    )
    try:
        with (
            grpc.secure_channel(service.address, material.channel_credentials()) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            reflected_services(channel)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        service.process.stop()


def test_a_service_without_tls_or_plaintext_refuses_to_start(tmp_path: Path) -> None:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO_ROOT),
        "TRADEFLOW_STATE_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "state_service"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("state_service: error:")
    for variable in ("TRADEFLOW_TLS_CA", "TRADEFLOW_TLS_CERT", "TRADEFLOW_TLS_KEY"):
        assert variable in lines[0]


def cli_as(
    stack: Stack, principal: Principal, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``tradeflow <args> --env production`` acting as ``principal`` on the stack."""
    env = {**stack.client_env(principal), "TRADEFLOW_LOG_LEVEL": "warning"}
    return production_cli(env, *args, cwd=cwd)


@pytest.mark.asyncio
async def test_the_cli_resumes_in_two_steps_and_says_when_it_is_refused(
    clients: Clients, tls_stack: Stack, tmp_path: Path
) -> None:
    """The operator's CLI: a global resume exits 6 naming the request, a second operator's
    resumes (exit 0); a bot's resume is refused by the service (exit 7)."""
    ops = await clients.emergency(operator("olaf"))
    await ops.Halt(halt(common_pb2.SCOPE_GLOBAL))
    try:
        denied = cli_as(tls_stack, bot("bot-cli"), "resume", "--reason", "r", cwd=tmp_path)
        assert denied.returncode == 7, denied.stderr
        assert "PERMISSION_DENIED" in denied.stderr and "bot/bot-cli" in denied.stderr
        first = cli_as(tls_stack, operator("olaf"), "resume", "--reason", "r", cwd=tmp_path)
        assert first.returncode == 6, first.stderr
        assert "global stays halted" in first.stdout and "operator/olaf" in first.stdout
        second = cli_as(tls_stack, operator("oona"), "resume", "--reason", "r", cwd=tmp_path)
        assert (second.returncode, second.stdout.strip()) == (0, "resumed global"), second.stderr
    finally:
        if (common_pb2.SCOPE_GLOBAL, None) in halted(await ops.GetState(em.GetStateRequest())):
            await lift_global(clients)
