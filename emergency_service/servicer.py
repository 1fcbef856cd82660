"""``tradeflow.emergency.v1.EmergencyService`` over the Redis-backed emergency controller.

Requests become controller calls here: enums are checked (``InvalidRequest``
naming ``scope`` or ``direction``), unset optionals become ``None`` or their
documented default. Every other rule (well-formed ids, bounded reasons and
actors, finite numbers, how many halts and limits, what a breach does, auditing,
publishing) is the domain's and the controller's, the ``request_id`` is the
request log's, and every error becomes a status code in the server's interceptor
(a malformed value ``INVALID_ARGUMENT``, one halt or limit type too many
``FAILED_PRECONDITION``).

- The state is read with ``snapshot()``: one the controller cannot confirm is
  ``UnavailableError`` (``UNAVAILABLE``), not the pre-action check's ``EmergencyHalted``.
- ``Halt`` returns once the halt is committed and the
  :class:`~tradeflow.engine.barrier.HaltBarrier` has confirmed it: every live executor
  acknowledged the new version (``AcknowledgeState``) or had its lease revoked. The
  barrier's report is the answer and is audited (``halt_barrier``).
- A risk breach is a result (``breached``), not an error.
- Risk limits are set and deleted per scope (an unspecified scope is global), with the
  options of a pre-trade check or a trigger; ``ExplainRiskLimits`` says what applies to
  some ids, ``Heartbeat`` beats a dead-man's switch, ``RecordOrderDenied`` audits an
  executor's denial. The limits travel with every snapshot (``GetState``, ``WatchState``):
  executors check orders against them locally.
- A trigger's halt (the service's
  :class:`~tradeflow.engine.triggers.TriggerEvaluator`) goes through :meth:`confirm`, the
  barrier an operator's halt goes through.
- Mutating calls (``Halt``, ``Resume``, ``CheckRiskLimit``, ``SetRiskLimit``,
  ``DeleteRiskLimit``) pass through a
  :class:`~tradeflow.adapters.redis.emergency.RedisRequestLog`: a repeated
  ``request_id`` gets the first answer back and acts (and audits) once.
- ``WatchState`` sends the current snapshot, then one per change, and resends
  the current one every ``heartbeat`` seconds while nothing changes, so a
  watcher can bound how stale its view is. It ends with ``UNAVAILABLE`` once the
  state cannot be confirmed, and cleanly when the service drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Final

import grpc
import structlog

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.security import ANY_ROLE, Policy, Refusal, Rule, optional, own
from tradeflow.adapters.redis.emergency import (
    RedisAckRelay,
    RedisEmergencyController,
    RedisRequestLog,
    RedisResumeRequests,
)
from tradeflow.domain.emergency import (
    DEFAULT_AUDIT_PAGE,
    MAX_AUDIT_PAGE,
    BarrierReport,
    EmergencySnapshot,
    ScopeIds,
)
from tradeflow.domain.errors import TradeflowError
from tradeflow.domain.principals import Caller, Role, current_caller
from tradeflow.domain.records import HaltState, Scope
from tradeflow.engine.barrier import HaltBarrier
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

__all__ = ["ACCESS", "DENIAL_AUDIT_SECONDS", "SERVICE_NAME", "EmergencyServicer"]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["EmergencyService"].full_name
_UNKNOWN_ACTOR: Final = "unknown"
DENIAL_AUDIT_SECONDS: Final = 10.0
"""At most one ``rpc_denied`` audit entry per principal and method this often."""
_DENIALS_TRACKED: Final = 10_000


def _own_scope(request: pb.HaltRequest | pb.HeartbeatRequest) -> str | None:
    """The bot a request's scope names (``None`` for any other scope)."""
    return optional(request, "target") if request.scope == common_pb2.SCOPE_BOT else None


_OWN_SCOPE = own(_own_scope, "the scope (SCOPE_BOT and its bot_id as target)")
_EXECUTOR: Final = Rule(frozenset({Role.EXECUTOR}))
ACCESS: Policy = {
    # A bot halts itself (never resumes); operators halt and resume anything.
    "Halt": Rule(frozenset({Role.OPERATOR, Role.BOT}), request=_OWN_SCOPE),
    "Resume": Rule(frozenset({Role.OPERATOR})),
    # Limits: admins change them, anyone reads them (executors check orders on them).
    "SetRiskLimit": Rule(frozenset({Role.ADMIN})),
    "DeleteRiskLimit": Rule(frozenset({Role.ADMIN})),
    "ListRiskLimits": Rule(ANY_ROLE),
    "ExplainRiskLimits": Rule(ANY_ROLE),
    "GetState": Rule(ANY_ROLE),
    "WatchState": Rule(ANY_ROLE),
    "ListAuditEntries": Rule(frozenset({Role.OPERATOR, Role.ADMIN})),
    # A risk check names the bot it is for; a bot's threshold can only tighten the
    # configured one (the domain's rule) and its breach halts that bot alone.
    "CheckRiskLimit": Rule(
        frozenset({Role.EXECUTOR, Role.BOT}),
        request=own(lambda request: optional(request, "bot_id"), "bot_id"),
    ),
    "Heartbeat": Rule(frozenset({Role.EXECUTOR, Role.OPERATOR, Role.BOT}), request=_OWN_SCOPE),
    "AcknowledgeState": _EXECUTOR,
    "RecordCancelOnHalt": _EXECUTOR,
    "RecordOrderDenied": _EXECUTOR,
}
"""Who may call each method (see :mod:`tradeflow.adapters.grpc.security`)."""


def _actor(requested: str) -> str:
    """Who the audit names: the authenticated principal (``operator/alice``), or, on a
    plaintext server where nobody is authenticated, what the request says."""
    caller = current_caller()
    if caller.role is Role.SYSTEM:
        return requested or _UNKNOWN_ACTOR
    return str(caller.principal)


_log = structlog.get_logger(__name__)


class EmergencyServicer(emergency_service_pb2_grpc.EmergencyServiceServicer):
    """Translates each RPC to calls on ``controller``; halts wait on ``barrier``."""

    def __init__(
        self,
        controller: RedisEmergencyController,
        requests: RedisRequestLog,
        barrier: HaltBarrier,
        *,
        heartbeat: float,
        relay: RedisAckRelay | None = None,
        resume_requests: RedisResumeRequests,
        confirm_scopes: frozenset[Scope],
    ) -> None:
        self._controller = controller
        self._resume_requests = resume_requests
        """The requests of two-step resumes awaiting their confirmation."""
        self._confirm_scopes = confirm_scopes
        """The scopes whose resume takes two operators (over mutual TLS)."""
        self._requests = requests
        self._barrier = barrier
        self._relay = relay
        """Shares acknowledgements with the other replicas (``None``: this one is alone)."""
        self._heartbeat = heartbeat
        self._draining = asyncio.Event()
        self._watched: tuple[EmergencySnapshot, pb.WatchStateResponse] | None = None
        self._denials: dict[tuple[str, str], tuple[float, int]] = {}
        """Per principal and method: when a refusal was last audited, refusals left out."""

    async def drain(self) -> None:
        """End every ``WatchState`` stream cleanly (later ones end after their first snapshot)."""
        self._draining.set()
        self._controller.wake()

    async def Halt(
        self, request: pb.HaltRequest, context: grpc.aio.ServicerContext
    ) -> pb.HaltResponse:
        scope = wire.SCOPE.from_proto(request.scope, "scope")
        target = request.target if request.HasField("target") else None
        state = wire.restriction_from_proto(request.state)

        async def run() -> pb.HaltResponse:
            halt = await self._controller.halt(
                scope,
                target,
                reason=request.reason,
                actor=_actor(request.actor),
                state=state,
                cancel_orders=request.cancel_orders,
                # Loosening is resuming: a bot may not, nor one operator a two-step scope.
                no_looser=current_caller().role is Role.BOT or self._takes_two(scope),
            )
            # The halt is committed: its barrier runs to its end (fencing included) even if
            # the caller goes away, and a failure of it does not make the halt look failed.
            report = await asyncio.shield(self.confirm(halt))
            return wire.halt_response_to_proto(halt, report)

        return await self._requests.once("Halt", request.request_id, run, pb.HaltResponse)

    async def confirm(self, halt: HaltState) -> BarrierReport:
        """Wait for the live executors to enforce ``halt`` (the version it made, or a later
        one) and audit how they did: after an operator's halt, a breach's and a trigger's.
        A barrier that cannot run (the leases unreadable) is logged and reported empty, and
        an audit that cannot be written is logged: the store's own check still refuses
        every intent, and the halt stands."""
        try:
            version = self._controller.snapshot().version
            report = await self._barrier.wait(version)
        except TradeflowError as exc:
            _log.error("emergency.barrier_failed", error=exc.message)
            return BarrierReport(0)
        try:
            await self._controller.audit_barrier(halt, report)
        except TradeflowError as exc:
            _log.error("emergency.barrier_not_audited", report=asdict(report), error=exc.message)
        return report

    def _watch_response(self, snapshot: EmergencySnapshot) -> pb.WatchStateResponse:
        """The ``WatchState`` message of ``snapshot``, built once per state for every
        stream and heartbeat."""
        cached = self._watched
        # The halts compared too: a Redis that lost its last writes may reuse a version.
        if cached is None or not _same(cached[0], snapshot):
            cached = (snapshot, pb.WatchStateResponse(state=_state_message(snapshot)))
            self._watched = cached
        return cached[1]

    async def Resume(
        self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeResponse:
        scope = wire.SCOPE.from_proto(request.scope, "scope")
        target = request.target if request.HasField("target") else None

        async def run() -> pb.ResumeResponse:
            actor = _actor(request.actor)
            if not self._takes_two(scope):
                resumed = await self._controller.resume(
                    scope, target, reason=request.reason, actor=actor
                )
                return pb.ResumeResponse(resumed=resumed)
            halt = self._controller.snapshot().halts.get((scope, target))
            if halt is None:
                # Nothing to resume as far as this replica knows, and nothing is written:
                # a halt it has not seen yet is never lifted in one step.
                return pb.ResumeResponse(resumed=False)
            return await self._two_step_resume(halt, request.reason, actor)

        return await self._requests.once("Resume", request.request_id, run, pb.ResumeResponse)

    def _takes_two(self, scope: Scope) -> bool:
        """Whether resuming ``scope`` takes a second operator: over mutual TLS, for a
        configured scope."""
        return scope in self._confirm_scopes and current_caller().role is not Role.SYSTEM

    async def _two_step_resume(self, halt: HaltState, reason: str, actor: str) -> pb.ResumeResponse:
        """The first operator's call records a request to resume ``halt``; another
        operator's, within the window and while that same halt stands, lifts it. Both are
        audited (``resume_requested``, then ``resume`` naming both)."""
        scope, target = halt.scope, halt.target
        step = await self._resume_requests.step(halt, caller=actor, reason=reason)
        if step.outcome == "confirmed":
            # Only the halt the request was about: not one made since it was lifted.
            resumed = await self._controller.resume(
                scope,
                target,
                reason=reason,
                actor=actor,
                details={"requested_by": step.requested_by, "request_reason": step.reason},
                since=halt.since,
                over=halt.actor,
            )
            return pb.ResumeResponse(resumed=resumed, requested_by=step.requested_by)
        if step.outcome == "requested":
            await self._controller.record_audit(
                "resume_requested",
                reason,
                scope=scope,
                target=target,
                details={"confirm_before": step.expires_at},
            )
        return pb.ResumeResponse(
            resumed=False,
            awaiting_confirmation=True,
            requested_by=step.requested_by,
            confirm_before=wire.timestamp_to_proto(step.expires_at),
        )

    async def denied(self, method: str, caller: Caller, reason: str) -> None:
        """Audit a refused call (``rpc_denied``; the interceptor bound its caller): at most
        one entry per principal and method every :data:`DENIAL_AUDIT_SECONDS` per replica,
        counting the refusals left out since the last (each is logged anyway), so a
        caller hammering refused calls cannot push the changes out of the capped audit."""
        key = (str(caller.principal), method)
        now = time.monotonic()
        last, left_out = self._denials.get(key, (-math.inf, 0))
        if now - last < DENIAL_AUDIT_SECONDS:
            self._denials[key] = (last, left_out + 1)
            return
        if len(self._denials) >= _DENIALS_TRACKED:
            self._denials.clear()  # bounded memory: at worst, a few more entries
        self._denials[key] = (now, 0)
        await self._controller.record_audit(
            "rpc_denied", reason, details={"method": method, "left_out": left_out}
        )

    async def GetState(
        self, request: pb.GetStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStateResponse:
        return pb.GetStateResponse(state=_state_message(self._controller.snapshot()))

    async def CheckRiskLimit(
        self, request: pb.CheckRiskLimitRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckRiskLimitResponse:
        threshold = request.threshold if request.HasField("threshold") else None
        auto_halt = request.auto_halt if request.HasField("auto_halt") else True
        ids = wire.scope_ids_from_proto(request)

        halts = _halted_by_check(ids)

        async def run() -> pb.CheckRiskLimitResponse:
            verdict = await self._controller.check(
                request.limit_type,
                request.value,
                threshold,
                auto_halt,
                ids,
                halts=halts,
                # A bot (or its executor) cannot waive a configured limit's halt.
                binding=current_caller().role in _BOUND_CHECKERS,
            )
            if verdict.breached and verdict.halts:
                # The breach halted trading (everything, or the bot that checked): a
                # change that restricts trading, confirmed by every live executor like an
                # operator's halt.
                halt = self._controller.snapshot().halts.get(halts)
                if halt is not None:
                    await asyncio.shield(self.confirm(halt))
            return wire.limit_verdict_to_proto(verdict)

        return await self._requests.once(
            "CheckRiskLimit", request.request_id, run, pb.CheckRiskLimitResponse
        )

    async def SetRiskLimit(
        self, request: pb.SetRiskLimitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetRiskLimitResponse:
        direction = wire.LIMIT_DIRECTION.from_proto_optional(request.direction, "direction")
        scope, target = wire.limit_scope_from_proto(request)
        options = wire.limit_options_from_proto(request)

        async def run() -> pb.SetRiskLimitResponse:
            limit = await self._controller.set_risk_limit(
                request.limit_type,
                request.threshold,
                direction,
                auto_halt=request.auto_halt if request.HasField("auto_halt") else True,
                actor=_actor(request.actor),
                scope=scope,
                target=target,
                options=options,
            )
            return pb.SetRiskLimitResponse(limit=wire.risk_limit_to_proto(limit))

        return await self._requests.once(
            "SetRiskLimit", request.request_id, run, pb.SetRiskLimitResponse
        )

    async def DeleteRiskLimit(
        self, request: pb.DeleteRiskLimitRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRiskLimitResponse:
        scope, target = wire.limit_scope_from_proto(request)

        async def run() -> pb.DeleteRiskLimitResponse:
            deleted = await self._controller.delete_risk_limit(
                request.limit_type, scope, target, actor=_actor(request.actor)
            )
            return pb.DeleteRiskLimitResponse(deleted=deleted)

        return await self._requests.once(
            "DeleteRiskLimit", request.request_id, run, pb.DeleteRiskLimitResponse
        )

    async def ListRiskLimits(
        self, request: pb.ListRiskLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRiskLimitsResponse:
        limits = self._controller.snapshot().limit_list()
        return pb.ListRiskLimitsResponse(limits=[wire.risk_limit_to_proto(x) for x in limits])

    async def ExplainRiskLimits(
        self, request: pb.ExplainRiskLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainRiskLimitsResponse:
        explanation = await self._controller.explain_limits(wire.scope_ids_from_proto(request))
        return wire.limit_explanation_to_proto(explanation)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatResponse:
        scope, target = wire.limit_scope_from_proto(request)
        expires_at = await self._controller.heartbeat(scope, target)
        return pb.HeartbeatResponse(expires_at=wire.timestamp_to_proto(expires_at))

    async def RecordOrderDenied(
        self, request: pb.RecordOrderDeniedRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOrderDeniedResponse:
        denial, ids = wire.order_denied_from_proto(request)
        await self._controller.record_order_denied(
            denial,
            ids=ids,
            execution_id=request.execution_id,
            node_id=request.node_id,
            client_order_id=request.client_order_id,
        )
        return pb.RecordOrderDeniedResponse()

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        limit = wire.at_most("limit", request.limit, MAX_AUDIT_PAGE) or DEFAULT_AUDIT_PAGE
        entries = await self._controller.audit_entries(limit=limit)
        return pb.ListAuditEntriesResponse(
            entries=[wire.audit_entry_to_proto(entry) for entry in entries]
        )

    async def AcknowledgeState(
        self, request: pb.AcknowledgeStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcknowledgeStateResponse:
        fence, version, in_flight = wire.acknowledgement_from_proto(request)
        self._barrier.acknowledge(fence, version, in_flight)
        if self._relay is not None:
            try:
                await self._relay.publish(fence, version, in_flight)
            except TradeflowError as exc:
                # This replica's barrier has it; another's may fence the executor.
                _log.warning("emergency.ack_not_relayed", owner=fence.owner, error=exc.message)
        return pb.AcknowledgeStateResponse()

    async def RecordCancelOnHalt(
        self, request: pb.RecordCancelOnHaltRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordCancelOnHaltResponse:
        await self._controller.record_cancel_on_halt(
            wire.SCOPE.from_proto(request.scope, "scope"),
            request.target if request.HasField("target") else None,
            execution_id=request.execution_id,
            status=request.status,
            cancelled=request.cancelled,
        )
        return pb.RecordCancelOnHaltResponse()

    async def WatchState(
        self, request: pb.WatchStateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchStateResponse]:
        snapshot = self._controller.snapshot()
        yield self._watch_response(snapshot)
        while not self._draining.is_set():
            # A change that landed while the last message was being sent goes out at once;
            # otherwise wait, woken directly by the change (no task in between): a halt's
            # push goes out in the first turn of the loop after its script's reply, before
            # its log line, its event and its barrier's lease listing.
            if self._controller.snapshot().version == snapshot.version:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await self._controller.changed()
                if self._draining.is_set():
                    return
            # The current, confirmed state (UnavailableError ends the stream once it cannot
            # be confirmed): after a change, or as the heartbeat.
            snapshot = self._controller.snapshot()
            yield self._watch_response(snapshot)


_BOUND_CHECKERS: Final = (Role.BOT, Role.EXECUTOR)
"""Callers whose risk checks are a bot's: they halt the bot alone and cannot waive a
configured limit's halt."""


def _halted_by_check(ids: ScopeIds) -> tuple[Scope, str | None]:
    """What a breach found by a risk check halts: everything for an operator's (or any
    caller's on a plaintext server); for a bot's or its executor's, the bot alone (the
    workflow alone when an executor runs one for no bot)."""
    caller = current_caller()
    if caller.role not in _BOUND_CHECKERS:
        return (Scope.GLOBAL, None)
    if ids.bot_id is not None:
        return (Scope.BOT, ids.bot_id)
    if caller.role is Role.EXECUTOR and ids.workflow_id is not None:
        return (Scope.WORKFLOW, ids.workflow_id)
    raise Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{caller.principal} CheckRiskLimit: a risk check must name the bot_id (or, from "
        "an executor, the workflow_id) whose scope its breach halts",
    )


def _same(known: EmergencySnapshot, snapshot: EmergencySnapshot) -> bool:
    return known is snapshot or (
        known.version == snapshot.version
        and known.halts == snapshot.halts
        and known.limits == snapshot.limits
    )


def _state_message(snapshot: EmergencySnapshot) -> pb.EmergencyState:
    """The state as sent (``GetState``; ``WatchState`` through its per-version cache): the
    halts and the limits, which executors check orders against with no round trip."""
    return wire.emergency_state_to_proto(
        snapshot.halt_list(), snapshot.version, snapshot.limit_list()
    )
