"""The :class:`~tradeflow.ports.EmergencyControl` port over the emergency service.

:class:`RemoteEmergencyControl` is what an executor in another process uses.
The pre-action check (:meth:`~RemoteEmergencyControl.ensure_allowed`,
:meth:`~RemoteEmergencyControl.trading_state`, :meth:`~RemoteEmergencyControl.active_halt`)
reads a local view of the halts and makes no call: a
:class:`~tradeflow.engine.emergency.WatchedView` follows the service's ``WatchState``
stream and installs each snapshot, matching ids with the embedded controller's own
rule. The view fails closed before the first snapshot, while the stream is down (it
reconnects with jittered exponential backoff), and when no snapshot, change or
heartbeat (the service resends its state every ``TRADEFLOW_EMERGENCY_HEARTBEAT``
while idle) arrived for ``max_staleness`` seconds: every scope is then
``CANCEL_ONLY`` (cancels and effect-free actions pass, anything else raises
``EmergencyHalted("emergency state unavailable: ...")``).

Given a source of acknowledgements (:meth:`~RemoteEmergencyControl.acknowledge_with`:
this process's lease and its in-flight actions), the client tells the service's halt
barrier each state version its view enforces (``AcknowledgeState``): after every
snapshot of a version not yet acknowledged under the current lease, and again after
every reconnection. A background task sends them one at a time, the latest version
replacing any not sent yet, so the watch loop never waits on it; a failed one is
logged (the next snapshot retries it, and the barrier fences an executor that stays
silent).

The snapshots carry the configured risk limits too:
:meth:`~RemoteEmergencyControl.pre_trade_limits` reads an order's limits from the view
with no call, and fails closed like the pre-action check; so does a risk node's
:meth:`~RemoteEmergencyControl.check_risk_limit` when it passes (a breach is one call:
the service audits, publishes and halts it).

Every other method is one call. Halt, resume, set-limit and delete-limit calls carry a
fresh ``request_id`` (the service keeps the answer, so a caller that re-sends a request
with the same id gets it instead of a second change; this client does not retry
by itself); a breach's risk check carries none. A change to the halts or limits made through this
client is in its local view before the call returns (read-your-writes), unless the
view is down anyway. A denied order's audit (:meth:`~RemoteEmergencyControl.record_order_denied`)
is sent again once if the service was unreachable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Final

import grpc
import structlog

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.client import call, open_channel
from tradeflow.adapters.grpc.errors import error_from_rpc
from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.emergency import (
    DEFAULT_AUDIT_PAGE,
    MAX_AUDIT_PAGE,
    NO_IDS,
    BarrierReport,
    InFlightAction,
    LimitExplanation,
    ScopeIds,
    assess_limit,
    check_scope_ids,
    checked_number,
    checked_scope_change,
)
from tradeflow.domain.errors import (
    InvalidRequest,
    ResumeAwaitingConfirmation,
    RiskLimitExceeded,
    TradeflowError,
    UnavailableError,
    describe,
)
from tradeflow.domain.limits import IN_FLIGHT_MAX
from tradeflow.domain.ownership import Fence
from tradeflow.domain.records import (
    AuditEntry,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
)
from tradeflow.domain.risk import NO_OPTIONS, Denial, LimitOptions, PreTradeLimits
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.engine.emergency import (
    WatchedView,
    check_allowed,
    checked_restriction,
    current_state,
    fail_closed,
    unconfirmed,
)
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as pb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

__all__ = ["AcknowledgementSource", "RemoteEmergencyControl"]

AcknowledgementSource = Callable[[], tuple[Fence, tuple[InFlightAction, ...]] | None]
"""This process's lease and its actions in flight; ``None`` while it holds no lease
(:meth:`tradeflow.engine.ownership.LeaseKeeper.acknowledgement`)."""

_ACK_RETRY_SECONDS: Final = 0.05
"""Pause before sending a failed acknowledgement again (doubling up to the next)."""
_ACK_RETRY_MAX_SECONDS: Final = 1.0
_SERVICE: Final = "emergency"

_log = structlog.get_logger(__name__)


class RemoteEmergencyControl:
    """:class:`~tradeflow.ports.EmergencyControl` through the emergency service, with a
    local, push-updated view.

    Build it with :meth:`connect`. ``max_staleness`` (seconds) bounds how old the
    last snapshot may be before the view fails closed; keep it a few times the
    service's heartbeat (``TRADEFLOW_EMERGENCY_HEARTBEAT``, 0.25 s by default).
    ``call_timeout`` bounds every call (an acknowledgement, useless once the barrier's
    deadline passed, is bounded by ``max_staleness``); ``reconnect_backoff`` is the
    first and the longest wait between attempts to re-open the stream. Use it from the
    event loop it was connected on.
    """

    __slots__ = (
        "_ack_task",
        "_ack_version",
        "_ack_wake",
        "_acked",
        "_call_timeout",
        "_channel",
        "_id_factory",
        "_links",
        "_max_staleness",
        "_stub",
        "_view",
    )

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        max_staleness: float = 0.75,
        call_timeout: float = 10.0,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        clock: Clock,
        id_factory: IdFactory,
    ) -> None:
        """Use :meth:`connect`; the instance owns ``channel``. Call :meth:`start` to follow."""
        self._channel = channel
        self._stub = emergency_service_pb2_grpc.EmergencyServiceStub(channel)
        self._max_staleness = max_staleness
        self._call_timeout = call_timeout
        self._id_factory = id_factory
        self._view = WatchedView(
            "emergency service",
            clock=clock,
            max_staleness=max_staleness,
            backoff=reconnect_backoff,
        )
        self._ack_task: asyncio.Task[None] | None = None
        self._ack_wake = asyncio.Event()
        self._ack_version: int | None = None
        """The version the view last confirmed: the one to acknowledge next."""
        self._links = 0
        """Streams opened so far: after a reconnection every acknowledgement is sent again
        (the service may have restarted and forgotten them)."""
        self._acked: tuple[int, Fence, int] | None = None
        """The stream, lease and version of the last acknowledgement sent."""

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        # Bounds only the wait for the first snapshot, not the client's life.
        timeout: float | None = 10.0,  # noqa: ASYNC109
        max_staleness: float = 0.75,
        call_timeout: float = 10.0,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        clock: Clock,
        id_factory: IdFactory,
        security: TransportSecurity = PLAINTEXT,
    ) -> RemoteEmergencyControl:
        """Follow the emergency service at ``address`` (``host:port``), over mutual TLS
        with ``security``'s certificate (plaintext when it holds none).

        Return once the first snapshot arrived, or raise ``UnavailableError`` after
        ``timeout`` seconds; with ``timeout=None``, return at once (the view fails closed
        until the first snapshot).
        """
        first, longest = reconnect_backoff
        # gRPC's own reconnect backoff grows to two minutes by default: all that time the
        # view would stay down (trading refused) after the service is back.
        channel = open_channel(
            address,
            security=security,
            options=[
                ("grpc.initial_reconnect_backoff_ms", round(first * 1000)),
                ("grpc.min_reconnect_backoff_ms", round(first * 1000)),
                ("grpc.max_reconnect_backoff_ms", round(longest * 1000)),
            ],
        )
        control = cls(
            channel,
            max_staleness=max_staleness,
            call_timeout=call_timeout,
            reconnect_backoff=reconnect_backoff,
            clock=clock,
            id_factory=id_factory,
        )
        control.start()
        if timeout is not None:
            try:
                async with asyncio.timeout(timeout):
                    await control._view.wait_until(lambda _: True)
            except TimeoutError:
                lost = control._view.problem
                await control.close()
                raise UnavailableError(
                    f"emergency service at {address}: no state within {timeout}s ({lost})"
                ) from None
        return control

    def start(self) -> None:
        """Start following the ``WatchState`` stream (idempotent)."""
        self._view.start(self._watch, name="emergency:watch-state")

    def acknowledge_with(self, source: AcknowledgementSource) -> None:
        """Acknowledge every state version the view reaches to the service's halt barrier,
        with the lease and in-flight actions ``source`` returns at that moment (nothing
        while it returns ``None``). Call once, from the client's event loop."""
        if self._ack_task is None and not self._view.closed:
            self._ack_task = asyncio.create_task(
                self._acknowledge(source), name="emergency:acknowledge"
            )

    # -- the local view ---------------------------------------------------------------

    def ensure_trading_allowed(self, ids: ScopeIds) -> None:
        check_allowed(self._view.current, ids, OrderEffect.OPENS)

    def ensure_allowed(self, ids: ScopeIds, effect: OrderEffect) -> None:
        check_allowed(self._view.current, ids, effect)

    def trading_state(self, ids: ScopeIds) -> TradingState:
        return current_state(self._view.current, ids)

    def active_halt(self, ids: ScopeIds) -> HaltState | None:
        return fail_closed(self._view.current).active_halt(ids)

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        """From the view's limits, with no call; ``EmergencyHalted`` while it is down."""
        return fail_closed(self._view.current).pre_trade_limits(ids)

    @property
    def available(self) -> bool:
        """Whether the local view is current (the pre-action check can answer)."""
        return self._view.problem is None

    @property
    def version(self) -> int | None:
        """Version of the local view; ``None`` while it is down."""
        return None if self._view.problem is not None else self._view.current().version

    async def wait_for_change(self) -> None:
        """Return at the next change of the local view: a new version, lost, back or closed."""
        await self._view.changed()

    async def wait_for_version(self, version: int | None = None) -> int:
        """Wait until the local view holds ``version`` or a later one; ``None`` means the
        service's version now (one ``GetState`` call). Returns the view's version.

        Raises ``UnavailableError`` once the client is closed. Bound the wait
        with ``asyncio.timeout``: a view that is down waits for its reconnection.
        """
        wanted = (await self._get_state()).version if version is None else version
        return (await self._view.wait_until(lambda view: view.version >= wanted)).version

    # -- calls ------------------------------------------------------------------------

    async def halt(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
    ) -> HaltState:
        halt, _ = await self.halt_with_report(
            scope, target, reason=reason, actor=actor, state=state, cancel_orders=cancel_orders
        )
        return halt

    async def halt_with_report(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
    ) -> tuple[HaltState, BarrierReport]:
        """:meth:`halt`, with how the live executors confirmed it: who acknowledged, what
        they had in flight, who was fenced for not answering in time."""
        request = pb.HaltRequest(
            **self._scope_change(scope, target, reason, actor),
            state=wire.TRADING_STATE.to_proto(checked_restriction(state), "state"),
            cancel_orders=bool(cancel_orders),
        )
        response: pb.HaltResponse = await self._call(self._stub.Halt, request)
        await self._catch_up()
        return wire.halt_state_from_proto(response.halt), wire.barrier_report_from_proto(response)

    async def resume(
        self, scope: Scope, target: str | None = None, *, reason: str, actor: str = "unknown"
    ) -> bool:
        """See the port; a resume that awaits a second operator's confirmation raises
        ``ResumeAwaitingConfirmation`` (the request is recorded)."""
        request = pb.ResumeRequest(**self._scope_change(scope, target, reason, actor))
        response: pb.ResumeResponse = await self._call(self._stub.Resume, request)
        if response.awaiting_confirmation:
            where = scope.value if target is None else f"{scope.value} {target}"
            raise ResumeAwaitingConfirmation(
                where,
                response.requested_by,
                wire.timestamp_from_proto(response.confirm_before),
            )
        if response.resumed:
            await self._catch_up()
        return response.resumed

    async def halts(self) -> list[HaltState]:
        """As the service has them now (not the local view)."""
        state = await self._get_state()
        return [wire.halt_state_from_proto(halt) for halt in state.halts]

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None:
        """Judged here first, on the limits of the local view (the pushed state), by the
        service's own rule (:func:`~tradeflow.domain.emergency.assess_limit`): a pass
        makes no call. Only a breach goes to the service, which judges it again on its
        state and audits, publishes and halts it (what a breach halts, and that a bot's
        check cannot waive a configured halt, are the service's to decide).

        The consistency is the pre-action check's: a limit tightened by ``SetRiskLimit``
        applies here once its push arrived, so a check may pass on the older limit for
        at most the staleness bound (``max_staleness``) after the change. Fails closed
        like the pre-action check: with the state unconfirmed (no round trip then), or the
        service not answering a breach within twice the staleness bound, it raises
        ``EmergencyHalted``."""
        checked = checked_number("value", value)
        given = None if threshold is None else checked_number("threshold", threshold)
        check_scope_ids(ids)
        local = assess_limit(
            fail_closed(self._view.current).limits, limit_type, checked, given, auto_halt, ids
        )
        if not local.breached:
            return
        request = pb.CheckRiskLimitRequest(
            limit_type=limit_type,
            value=checked,
            threshold=given,
            auto_halt=auto_halt,
            **asdict(ids),
        )
        try:
            # No request_id: this client never retries a check, and the service would
            # otherwise store an answer in Redis for every breach.
            response: pb.CheckRiskLimitResponse = await call(
                self._stub.CheckRiskLimit,
                request,
                service=_SERVICE,
                deadline=min(self._call_timeout, 2 * self._max_staleness),
            )
        except UnavailableError as exc:
            raise unconfirmed(exc) from exc
        if not response.breached:
            return  # loosened since the view's version: the service's state decides
        if response.halted:
            await self._catch_up()
        raise RiskLimitExceeded(
            limit_type, float(value), response.threshold, halted=response.halted
        )

    async def set_risk_limit(
        self,
        limit_type: str,
        threshold: float,
        direction: LimitDirection | None = None,
        *,
        auto_halt: bool = True,
        actor: str = "unknown",
        scope: Scope = Scope.GLOBAL,
        target: str | None = None,
        options: LimitOptions = NO_OPTIONS,
    ) -> RiskLimit:
        response: pb.SetRiskLimitResponse = await self._call(
            self._stub.SetRiskLimit,
            pb.SetRiskLimitRequest(
                request_id=self._id_factory(),
                limit_type=limit_type,
                threshold=checked_number("threshold", threshold),
                direction=wire.LIMIT_DIRECTION.to_proto(direction, "direction"),
                auto_halt=auto_halt,
                actor=actor,
                scope=wire.SCOPE.to_proto(scope, "scope"),
                target=target,
                **wire.limit_options_fields(options),
            ),
        )
        await self._catch_up()
        return wire.risk_limit_from_proto(response.limit)

    async def delete_risk_limit(
        self,
        limit_type: str,
        scope: Scope = Scope.GLOBAL,
        target: str | None = None,
        *,
        actor: str = "unknown",
    ) -> bool:
        response: pb.DeleteRiskLimitResponse = await self._call(
            self._stub.DeleteRiskLimit,
            pb.DeleteRiskLimitRequest(
                request_id=self._id_factory(),
                limit_type=limit_type,
                scope=wire.SCOPE.to_proto(scope, "scope"),
                target=target,
                actor=actor,
            ),
        )
        if response.deleted:
            await self._catch_up()
        return response.deleted

    async def explain_limits(self, ids: ScopeIds) -> LimitExplanation:
        response: pb.ExplainRiskLimitsResponse = await self._call(
            self._stub.ExplainRiskLimits, pb.ExplainRiskLimitsRequest(**asdict(ids))
        )
        return wire.limit_explanation_from_proto(response, ids)

    async def heartbeat(self, scope: Scope, target: str | None = None) -> float:
        response: pb.HeartbeatResponse = await self._call(
            self._stub.Heartbeat,
            pb.HeartbeatRequest(scope=wire.SCOPE.to_proto(scope, "scope"), target=target),
        )
        return wire.timestamp_from_proto(response.expires_at)

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None:
        """Audited by the service; sent a second time (at most) if it was unreachable, so
        a lost answer may audit the denial twice rather than not at all."""
        request = wire.order_denied_to_proto(
            denial,
            ids=ids,
            execution_id=execution_id,
            node_id=node_id,
            client_order_id=client_order_id,
        )
        try:
            await self._call(self._stub.RecordOrderDenied, request)
        except UnavailableError as exc:
            _log.warning("emergency.order_denied_retried", error=describe(exc))
            await self._call(self._stub.RecordOrderDenied, request)

    async def record_cancel_on_halt(
        self,
        scope: Scope,
        target: str | None,
        *,
        execution_id: str,
        status: str,
        cancelled: Sequence[str],
    ) -> None:
        await self._call(
            self._stub.RecordCancelOnHalt,
            pb.RecordCancelOnHaltRequest(
                scope=wire.SCOPE.to_proto(scope, "scope"),
                target=target,
                execution_id=execution_id,
                status=status,
                cancelled=cancelled,
            ),
        )

    async def list_risk_limits(self) -> list[RiskLimit]:
        response: pb.ListRiskLimitsResponse = await self._call(
            self._stub.ListRiskLimits, pb.ListRiskLimitsRequest()
        )
        return [wire.risk_limit_from_proto(limit) for limit in response.limits]

    async def audit_entries(self, *, limit: int = DEFAULT_AUDIT_PAGE) -> list[AuditEntry]:
        response: pb.ListAuditEntriesResponse = await self._call(
            self._stub.ListAuditEntries,
            pb.ListAuditEntriesRequest(limit=max(1, min(limit, MAX_AUDIT_PAGE))),
        )
        return [wire.audit_entry_from_proto(entry) for entry in response.entries]

    async def close(self) -> None:
        """Stop following the service and close the channel; the view fails closed."""
        if self._view.closed:
            return
        await self._view.close("emergency client closed")
        task, self._ack_task = self._ack_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
        await self._channel.close()

    # -- internals --------------------------------------------------------------------

    async def _call(self, method: Any, request: Any) -> Any:
        return await call(method, request, service=_SERVICE, deadline=self._call_timeout)

    def _scope_change(
        self, scope: Scope, target: str | None, reason: str, actor: str
    ) -> dict[str, Any]:
        """The fields of a halt or resume request, with a fresh ``request_id``; checked
        here as the service checks them, so a malformed one is never sent."""
        checked = checked_scope_change(scope, target, reason, actor)
        return {
            "request_id": self._id_factory(),
            "scope": wire.SCOPE.to_proto(checked, "scope"),
            "target": target,
            "reason": reason,
            "actor": actor,
        }

    async def _get_state(self) -> pb.EmergencyState:
        response: pb.GetStateResponse = await self._call(self._stub.GetState, pb.GetStateRequest())
        return response.state

    async def _catch_up(self) -> None:
        """Wait (bounded) until the view shows the change this client just made."""
        if not self.available:
            return  # failing closed already; the next snapshot brings the change
        try:
            async with asyncio.timeout(self._call_timeout):
                await self.wait_for_version()
        except (TimeoutError, TradeflowError) as exc:
            # The change is made; only this process's view of it is late.
            _log.warning("emergency.view_behind", error=describe(exc))

    async def _watch(self) -> None:
        """One link for the view: install each ``WatchState`` snapshot until the stream ends."""
        stream = self._stub.WatchState(pb.WatchStateRequest())
        self._links += 1
        try:
            while True:
                async with asyncio.timeout(self._max_staleness):
                    response = await stream.read()
                if response is grpc.aio.EOF:
                    lost = "the emergency service ended the stream (shutting down?)"
                    break
                if self._view.problem is not None:
                    _log.info("emergency.watch_established", version=response.state.version)
                snapshot = wire.emergency_state_from_proto(response.state)
                # The stream is the one source of the view and ordered: its latest snapshot
                # is the truth even when its version is lower (the Redis state was rebuilt).
                self._view.confirm(snapshot)
                self._ack_version = snapshot.version
                self._ack_wake.set()
        except grpc.aio.AioRpcError as err:
            lost = error_from_rpc(err, service=_SERVICE).message
        except TimeoutError:
            lost = f"no snapshot from the emergency service for over {self._max_staleness}s"
        except Exception as exc:
            _log.exception("emergency.watch_failed")
            lost = f"unreadable snapshot: {describe(exc)}"
        finally:
            stream.cancel()
        raise UnavailableError(lost)

    async def _acknowledge(self, source: AcknowledgementSource) -> None:
        """Send the acknowledgements :meth:`acknowledge_with` asked for, one at a time; a
        failed one again soon (a barrier is waiting for it), backing off while the service
        stays unreachable; one the service refused as malformed only with the next state."""
        pause = _ACK_RETRY_SECONDS
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            try:
                await self._acknowledge_once(source)
            except InvalidRequest as exc:
                _log.error("emergency.acknowledge_refused", error=describe(exc))
            except Exception as exc:
                if isinstance(exc, TradeflowError):
                    _log.warning("emergency.acknowledge_failed", error=describe(exc))
                else:
                    _log.exception("emergency.acknowledge_failed")
                await asyncio.sleep(pause)
                pause = min(pause * 2, _ACK_RETRY_MAX_SECONDS)
                self._ack_wake.set()
            else:
                pause = _ACK_RETRY_SECONDS

    async def _acknowledge_once(self, source: AcknowledgementSource) -> None:
        """Acknowledge the view's version under the current lease, unless done on this link."""
        version, held = self._ack_version, source()
        if version is None or held is None:
            return
        fence, in_flight = held
        done = (self._links, fence, version)
        if self._acked == done:
            return  # a heartbeat: nothing new to tell
        if len(in_flight) > IN_FLIGHT_MAX:
            _log.warning("emergency.in_flight_cut", in_flight=len(in_flight), sent=IN_FLIGHT_MAX)
        await call(
            self._stub.AcknowledgeState,
            wire.acknowledgement_to_proto(fence, version, in_flight[:IN_FLIGHT_MAX]),
            service=_SERVICE,
            deadline=self._max_staleness,
        )
        self._acked = done
