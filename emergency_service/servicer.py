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
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Final

import grpc
import structlog

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.redis.emergency import (
    RedisAckRelay,
    RedisEmergencyController,
    RedisRequestLog,
)
from tradeflow.domain.emergency import (
    DEFAULT_AUDIT_PAGE,
    MAX_AUDIT_PAGE,
    BarrierReport,
    EmergencySnapshot,
)
from tradeflow.domain.errors import TradeflowError
from tradeflow.domain.records import HaltState, Scope
from tradeflow.engine.barrier import HaltBarrier
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

__all__ = ["SERVICE_NAME", "EmergencyServicer"]

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["EmergencyService"].full_name
_UNKNOWN_ACTOR: Final = "unknown"

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
    ) -> None:
        self._controller = controller
        self._requests = requests
        self._barrier = barrier
        self._relay = relay
        """Shares acknowledgements with the other replicas (``None``: this one is alone)."""
        self._heartbeat = heartbeat
        self._draining = asyncio.Event()
        self._watched: tuple[EmergencySnapshot, pb.WatchStateResponse] | None = None

    async def drain(self) -> None:
        """End every ``WatchState`` stream cleanly (later ones end after their first snapshot)."""
        self._draining.set()

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
                actor=request.actor or _UNKNOWN_ACTOR,
                state=state,
                cancel_orders=request.cancel_orders,
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
            resumed = await self._controller.resume(
                scope, target, reason=request.reason, actor=request.actor or _UNKNOWN_ACTOR
            )
            return pb.ResumeResponse(resumed=resumed)

        return await self._requests.once("Resume", request.request_id, run, pb.ResumeResponse)

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

        async def run() -> pb.CheckRiskLimitResponse:
            verdict = await self._controller.check(
                request.limit_type, request.value, threshold, auto_halt, ids
            )
            if verdict.breached and verdict.halts:
                # The breach halted trading globally: a change that restricts trading,
                # confirmed by every live executor like an operator's halt.
                halt = self._controller.snapshot().halts.get((Scope.GLOBAL, None))
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
                actor=request.actor or _UNKNOWN_ACTOR,
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
                request.limit_type, scope, target, actor=request.actor or _UNKNOWN_ACTOR
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
        version = snapshot.version
        drained = asyncio.ensure_future(self._draining.wait())
        change: asyncio.Future[EmergencySnapshot] | None = None
        try:
            while True:
                if change is None:
                    change = asyncio.ensure_future(self._controller.wait_for_change(version))
                done, _ = await asyncio.wait(
                    (change, drained),
                    timeout=self._heartbeat,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if drained in done:
                    return
                if change in done:
                    change.result()  # a closed store raises UnavailableError here
                    change = None
                # The current, confirmed state: after a change, or as the heartbeat.
                snapshot = self._controller.snapshot()
                if snapshot.version != version:
                    version = snapshot.version
                    if change is not None:
                        change.cancel()
                        change = None
                yield self._watch_response(snapshot)
        finally:
            drained.cancel()
            if change is not None:
                change.cancel()


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
