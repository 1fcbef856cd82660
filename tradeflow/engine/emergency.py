"""Emergency control over ports: the controller on a store, and the watched view.

:class:`EmergencyController` applies the rules of :mod:`tradeflow.domain.emergency`
and :mod:`tradeflow.domain.risk` (scope checks, which halt covers which ids, limits per
scope and their options) and acts on a breach (audit, publish, halt); an
:class:`~tradeflow.ports.EmergencyStore` only keeps the state. The loss triggers and
dead-man's switches are evaluated by :class:`~tradeflow.engine.triggers.TriggerEvaluator`
through the controller's ``*_for_trigger`` methods. The embedded store is SQLite (:mod:`tradeflow.adapters.sqlite.emergency`), the
emergency service's is Redis (:mod:`tradeflow.adapters.redis.emergency`).

The pre-action check is synchronous and reads an in-memory
:class:`~tradeflow.domain.emergency.EmergencySnapshot`; a state that cannot be
confirmed fails closed (``EmergencyHalted``). A failed write lets the store's
error propagate. A :class:`WatchedView` is that snapshot when another process
pushes it: every remote view (Redis store, gRPC client) is one.

``EmergencyHalted`` and ``RiskLimitExceeded`` are re-exported here.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, Final

import stamina
import structlog

from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.emergency import (
    DEFAULT_AUDIT_PAGE,
    MAX_AUDIT_PAGE,
    NO_IDS,
    BarrierReport,
    EmergencySnapshot,
    HaltCondition,
    LimitExplanation,
    LimitVerdict,
    ScopeIds,
    assess_limit,
    check_scope_ids,
    checked_direction,
    checked_number,
    checked_scope,
    checked_scope_change,
    require_text,
)
from tradeflow.domain.errors import (
    EmergencyHalted,
    InvalidRequest,
    LooserHaltRefused,
    RiskLimitExceeded,
    UnavailableError,
)
from tradeflow.domain.limits import (
    ACTOR_MAX_LENGTH,
    AUDITED_ITEMS_MAX,
    CANCELLED_REPORT_MAX,
    check_client_order_id,
    check_id,
    check_text,
)
from tradeflow.domain.principals import current_caller
from tradeflow.domain.records import (
    AuditEntry,
    Event,
    EventType,
    ExecutionStatus,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
    limit_key,
)
from tradeflow.domain.risk import (
    NO_LIMITS,
    NO_OPTIONS,
    RULE_DIRECTIONS,
    TIMEZONE_MAX_LENGTH,
    Denial,
    LimitOptions,
    PreTradeLimits,
    TriggerProgress,
    checked_limit_options,
    is_trigger,
    strictest,
)
from tradeflow.domain.trading import OrderEffect, TradingState
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import EmergencyStore

__all__ = [
    "EmergencyController",
    "EmergencyHalted",
    "LocalRiskChecker",
    "RiskLimitExceeded",
    "WatchedView",
    "check_allowed",
    "checked_restriction",
    "current_state",
    "fail_closed",
    "trigger_actor",
    "unconfirmed",
]

_EMPTY: Final = EmergencySnapshot(0, {}, {})
_BEAT_ATTEMPTS: Final = 16
"""Compare-and-set attempts of one heartbeat before it gives up (``UnavailableError``):
it only competes with evaluations, one per trigger interval."""

_log = structlog.get_logger(__name__)


def fail_closed(read: Callable[[], EmergencySnapshot]) -> EmergencySnapshot:
    """``read()``, with a state that cannot be confirmed raised as ``EmergencyHalted``
    (state ``cancel_only``: what every scope counts as meanwhile)."""
    try:
        return read()
    except UnavailableError as exc:
        raise unconfirmed(exc) from exc


def unconfirmed(error: UnavailableError) -> EmergencyHalted:
    """The refusal of anything but a cancel while the state cannot be confirmed."""
    return EmergencyHalted(
        f"emergency state unavailable: {error.message}", state=TradingState.CANCEL_ONLY.value
    )


def check_allowed(
    read: Callable[[], EmergencySnapshot], ids: ScopeIds, effect: OrderEffect
) -> None:
    """The pre-action check on the snapshot ``read()`` returns: ``EmergencyHalted`` unless
    the state of ``ids`` admits ``effect``. A state that cannot be confirmed
    (``UnavailableError``) counts as ``CANCEL_ONLY`` for every scope: cancels and
    effect-free actions pass without reading it, anything else is refused."""
    if effect is OrderEffect.CANCELS or effect is OrderEffect.NONE:
        return
    fail_closed(read).ensure_allowed(ids, effect)


def current_state(read: Callable[[], EmergencySnapshot], ids: ScopeIds) -> TradingState:
    """The trading state of ``ids`` in ``read()``; ``CANCEL_ONLY`` when it cannot be confirmed."""
    try:
        return read().trading_state(ids)
    except UnavailableError:
        return TradingState.CANCEL_ONLY


class EmergencyController:
    """:class:`~tradeflow.ports.EmergencyControl` over any ``store``; every read fails
    closed (``EmergencyHalted``) when the store cannot confirm the state.

    ``publish`` receives ``emergency_halted``, ``emergency_resumed`` and
    ``risk_limit_exceeded`` events (typically an event bus's ``publish``).

    Every input is checked here, for the embedded controller and the service alike
    (:mod:`tradeflow.domain.emergency`). A new scoped halt or limit type is counted
    against its bound and written under one lock, so the bound is exact in one process;
    writers in several processes at the same instant may each add one more.
    """

    __slots__ = (
        "_clock",
        "_id_factory",
        "_metrics",
        "_publish",
        "_sequence",
        "_store",
        "_writing",
    )

    def __init__(
        self,
        store: EmergencyStore,
        *,
        publish: Callable[[Event], None] | None = None,
        metrics: Metrics | None = None,
        clock: Clock,
        id_factory: IdFactory,
    ) -> None:
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._clock = clock
        self._id_factory = id_factory
        self._sequence = itertools.count(1)
        self._writing = asyncio.Lock()

    def snapshot(self) -> EmergencySnapshot:
        """The current halts and limits; ``UnavailableError`` if they cannot be confirmed."""
        return self._store.snapshot()

    def state(self) -> EmergencySnapshot:
        """The current halts and limits; raises ``EmergencyHalted`` if they cannot be confirmed."""
        return fail_closed(self._store.snapshot)

    @property
    def version(self) -> int:
        """Version of the current :meth:`state`."""
        return self.state().version

    def ensure_trading_allowed(self, ids: ScopeIds) -> None:
        check_allowed(self._store.snapshot, ids, OrderEffect.OPENS)

    def ensure_allowed(self, ids: ScopeIds, effect: OrderEffect) -> None:
        check_allowed(self._store.snapshot, ids, effect)

    def trading_state(self, ids: ScopeIds) -> TradingState:
        return current_state(self._store.snapshot, ids)

    def active_halt(self, ids: ScopeIds) -> HaltState | None:
        return self.state().active_halt(ids)

    async def halt(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
        no_looser: bool = False,
    ) -> HaltState:
        """See the port; with ``no_looser``, a halt that would loosen the standing one is
        refused (``LooserHaltRefused``), checked by the store in the step that writes."""
        return await self._halt(
            checked_scope_change(scope, target, reason, actor),
            target,
            reason,
            actor,
            checked_restriction(state),
            bool(cancel_orders),
            HaltCondition(no_looser=True) if no_looser else None,
        )

    async def _halt(
        self,
        scope: Scope,
        target: str | None,
        reason: str,
        actor: str,
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
        condition: HaltCondition | None = None,
    ) -> HaltState:
        """Store, count, log and announce a halt whose fields are checked (or generated:
        a breach's actor is ``risk:<limit type>``, a little longer than an actor may be);
        ``LooserHaltRefused`` when ``condition`` (never looser) did not hold."""
        async with self._writing:
            halt = await self._save_halt(
                scope, target, reason, actor, state, cancel_orders, condition
            )
        if halt is None:
            standing = self.snapshot().halts.get((scope, target))
            raise LooserHaltRefused(
                scope.value if target is None else f"{scope.value} {target}",
                standing.state.value if standing is not None else "more restricted",
                state.value,
            )
        await self._announce_halt(halt)
        return halt

    async def _save_halt(
        self,
        scope: Scope,
        target: str | None,
        reason: str,
        actor: str,
        state: TradingState,
        cancel_orders: bool,
        condition: HaltCondition | None = None,
    ) -> HaltState | None:
        """Store a halt (the caller holds ``_writing``; :meth:`_halted` announces it);
        ``None`` when ``condition`` did not hold in the store."""
        now = self._clock.time()
        details = {"state": state.value, "cancel_orders": cancel_orders}
        if scope is not Scope.GLOBAL:  # a global halt is never refused, even unconfirmed
            self.snapshot().ensure_room_for_halt(scope, target)
        return await self._store.save_halt(
            HaltState(scope, target, reason, actor, now, state, cancel_orders),
            AuditEntry(0, now, actor, "halt", scope, target, reason, details),
            condition,
        )

    async def _announce_halt(self, halt: HaltState) -> None:
        """:meth:`_halted`, one turn of the loop after the write: the watchers the store
        woke when it installed the new state (``WatchState`` streams) push it first, so
        the log line and the event never delay the halt reaching the executors. Done
        even if the caller is cancelled meanwhile: the halt is committed."""
        try:
            await asyncio.sleep(0)
        finally:
            self._halted(halt)

    def _halted(self, halt: HaltState) -> None:
        """Count, log and announce a stored halt."""
        if self._metrics is not None:
            self._metrics.halts.labels(halt.scope.value).inc()
        data = {
            **_halt_data(halt.scope, halt.target, halt.reason, halt.actor),
            "state": halt.state.value,
            "cancel_orders": halt.cancel_orders,
        }
        _log.warning("emergency.halted", **data)
        self._announce(EventType.EMERGENCY_HALTED, self._clock.time(), data)

    async def audit_barrier(self, halt: HaltState, report: BarrierReport) -> None:
        """Audit how the live executors confirmed ``halt`` (action ``halt_barrier``): who
        acknowledged, who was fenced, how many actions were in flight and the first
        :data:`AUDITED_ITEMS_MAX` of them (the response lists them all)."""
        reason = (
            f"{len(report.acknowledged)} of {len(report.live)} executors acknowledged"
            f" version {report.version}, {len(report.in_flight)} actions in flight"
            + (f"; fenced {', '.join(report.fenced)}" if report.fenced else "")
        )
        details = asdict(report)
        details["in_flight"] = details["in_flight"][:AUDITED_ITEMS_MAX]
        details["in_flight_count"] = len(report.in_flight)
        await self._store.append_audit(
            AuditEntry(
                0,
                self._clock.time(),
                halt.actor,
                "halt_barrier",
                halt.scope,
                halt.target,
                reason,
                details,
            )
        )

    async def record_cancel_on_halt(
        self,
        scope: Scope,
        target: str | None,
        *,
        execution_id: str,
        status: str,
        cancelled: Sequence[str],
    ) -> None:
        checked = checked_scope(scope, target)
        check_id("execution_id", execution_id)
        try:
            ended = ExecutionStatus(status)
        except ValueError:
            raise InvalidRequest("status", "an execution status", status) from None
        if len(cancelled) > CANCELLED_REPORT_MAX:
            raise InvalidRequest(
                "cancelled", f"at most {CANCELLED_REPORT_MAX} client order ids", len(cancelled)
            )
        for client_order_id in cancelled:
            check_client_order_id("cancelled", client_order_id)
        reason = f"{len(cancelled)} resting orders cancelled by {execution_id} ({ended.value})"
        details = {
            "execution_id": execution_id,
            "status": ended.value,
            "cancelled_count": len(cancelled),
            "cancelled": list(cancelled[:AUDITED_ITEMS_MAX]),
        }
        await self._store.append_audit(
            AuditEntry(
                0,
                self._clock.time(),
                "cancel-on-halt",
                "cancel_on_halt",
                checked,
                target,
                reason,
                details,
            )
        )

    async def resume(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        details: Mapping[str, Any] | None = None,
        since: float | None = None,
        over: str | None = None,
    ) -> bool:
        """See the port; ``details`` go into the audit entry (a two-step resume's
        requester); with ``since`` (``over``), only a halt standing since then (made by
        that actor) is lifted, checked by the store in the step that deletes it."""
        return await self._resume(
            checked_scope_change(scope, target, reason, actor),
            target,
            reason,
            actor,
            None if since is None and over is None else HaltCondition(over=over, since=since),
            details=details,
        )

    async def record_audit(
        self,
        action: str,
        reason: str,
        *,
        scope: Scope | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an audit entry about no change of state (a resume request awaiting its
        confirmation, a refused call); its actor is the caller of the work in progress."""
        caller = current_caller()
        await self._store.append_audit(
            AuditEntry(
                0,
                self._clock.time(),
                str(caller.principal),
                action,
                scope,
                target,
                reason,
                dict(details or {}),
            )
        )

    async def _resume(
        self,
        scope: Scope,
        target: str | None,
        reason: str,
        actor: str,
        condition: HaltCondition | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Remove, log and announce the halt of checked ``scope``/``target`` (if
        ``condition`` holds in the store)."""
        now = self._clock.time()
        audit = AuditEntry(0, now, actor, "resume", scope, target, reason, dict(details or {}))
        if not await self._store.delete_halt(scope, target, audit, condition):
            return False
        data = _halt_data(scope, target, reason, actor)
        try:
            await asyncio.sleep(0)  # the watchers push first (see _announce_halt)
        finally:
            _log.warning("emergency.resumed", **data)
            self._announce(EventType.EMERGENCY_RESUMED, now, data)
        return True

    async def halt_for_trigger(self, limit: RiskLimit, reason: str) -> HaltState | None:
        """Move the scope of the trigger ``limit`` to its ``state`` (actor
        ``trigger:<key>``, cancelling resting orders if it says so), unless a halt of that
        same scope already sets an equal or more restrictive state (a trigger never
        loosens a halt): then nothing, and ``None``. The store checks that again in the
        step that writes, so a halt another replica wrote meanwhile is never replaced."""
        assert limit.state is not None, "only a trigger acts"
        async with self._writing:
            standing = self.state().halts.get((limit.scope, limit.target))
            if standing is not None and standing.state.rank >= limit.state.rank:
                return None
            halt = await self._save_halt(
                limit.scope,
                limit.target,
                reason,
                trigger_actor(limit),
                limit.state,
                limit.cancel_orders,
                # Checked again by the store: another replica may have halted it since.
                HaltCondition(stricter=True),
            )
        if halt is not None:
            await self._announce_halt(halt)
        return halt

    async def lift_for_trigger(
        self, limit: RiskLimit, reason: str, restore: HaltState | None = None
    ) -> bool:
        """Undo the halt the trigger ``limit`` set on its scope, if the halt standing there
        is still its own (actor ``trigger:<key>``; an operator's halt, or another
        trigger's, stays): put back ``restore`` (the weaker halt it had replaced), else
        resume the scope. True if it changed the scope."""
        async with self._writing:
            standing = self.state().halts.get((limit.scope, limit.target))
            if standing is None or standing.actor != trigger_actor(limit):
                return False
            # Checked again by the store: another replica may have halted it since.
            own = HaltCondition(over=standing.actor)
            if restore is None:
                return await self._resume(limit.scope, limit.target, reason, standing.actor, own)
            halt = await self._save_halt(
                restore.scope,
                restore.target,
                restore.reason,
                restore.actor,
                restore.state,
                restore.cancel_orders,
                own,
            )
        if halt is None:
            return False
        await self._announce_halt(halt)
        return True

    async def trigger_progress(self, keys: Sequence[str]) -> dict[str, TriggerProgress]:
        """The stored progress of the triggers ``keys`` name (absent: never evaluated)."""
        return await self._store.trigger_progress(keys)

    async def save_trigger_progress(
        self, key: str, progress: TriggerProgress, expected_version: int
    ) -> bool:
        """Compare-and-set a trigger's progress (see the store port)."""
        return await self._store.save_trigger_progress(key, progress, expected_version)

    @property
    def metrics(self) -> Metrics | None:
        """Where this controller counts (the trigger evaluator counts there too)."""
        return self._metrics

    async def halts(self) -> list[HaltState]:
        return self.state().halt_list()

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None:
        """:meth:`check` on the :meth:`state` (so it fails closed); a breach raises."""
        verdict = await self.check(limit_type, value, threshold, auto_halt, ids, self.state())
        if verdict.breached:
            raise verdict.exceeded()

    async def check(
        self,
        limit_type: str,
        value: float,
        threshold: float | None,
        auto_halt: bool,
        ids: ScopeIds,
        state: EmergencySnapshot | None = None,
        *,
        halts: tuple[Scope, str | None] = (Scope.GLOBAL, None),
        binding: bool = False,
    ) -> LimitVerdict:
        """Judge ``value`` by :func:`~tradeflow.domain.emergency.assess_limit` on the limits
        of ``state`` (default: the :meth:`snapshot`). A breach is audited, counted and
        published with ``ids``, and halts the scope ``halts`` (default: everything) if the
        verdict says so: a bot's own check halts only the bot, and (``binding``) cannot
        waive a configured limit's halt."""
        check_scope_ids(ids)
        limits = (self.snapshot() if state is None else state).limits
        verdict = assess_limit(
            limits, limit_type, value, threshold, auto_halt, ids, binding=binding
        )
        if not verdict.breached:
            return verdict
        now = self._clock.time()
        actor = f"risk:{verdict.limit_type}"
        reason = verdict.reason()
        data: dict[str, Any] = {
            "limit_type": verdict.limit_type,
            "value": verdict.value,
            "threshold": verdict.threshold,
            "direction": verdict.direction.value,
            "auto_halt": verdict.halts,
        }
        id_fields = asdict(ids)
        await self._store.append_audit(
            AuditEntry(0, now, actor, "risk_breach", None, None, reason, {**data, **id_fields})
        )
        if self._metrics is not None:
            self._metrics.risk_breaches.labels(verdict.limit_type).inc()
        _log.warning("emergency.risk_breach", reason=reason, auto_halt=verdict.halts, **id_fields)
        self._announce(EventType.RISK_LIMIT_EXCEEDED, now, data, ids)
        if verdict.halts:
            scope, target = halts
            await self._halt(checked_scope(scope, target), target, reason, actor)
        return verdict

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
        """See the port. The audit entry (``set_risk_limit``) names the scope and target
        (none for a global limit, as before limits had scopes) and carries every option;
        replacing a trigger keeps its progress (breaches, peak, day anchor, last beat)."""
        scope = checked_scope(scope, target)
        _check_limit_type(limit_type)
        checked = checked_number("threshold", threshold)
        direction = _checked_limit_direction(limit_type, direction)
        check_text("actor", actor, max_length=ACTOR_MAX_LENGTH)
        now = self._clock.time()
        limit = checked_limit_options(
            replace(
                _with_options(RiskLimit(limit_type, checked, direction), options),
                auto_halt=bool(auto_halt),
                updated_at=now,
                updated_by=actor,
                scope=scope,
                target=target,
            )
        )
        details = _limit_details(limit)
        reason = f"limit {limit.key!r}: {direction.value} {limit.threshold}" + (
            f", moves its scope to {limit.state.value}" if limit.state is not None else ""
        )
        audit_scope = None if scope is Scope.GLOBAL else scope
        async with self._writing:
            self.snapshot().ensure_room_for_limit(limit.key)
            await self._store.save_risk_limit(
                limit,
                AuditEntry(0, now, actor, "set_risk_limit", audit_scope, target, reason, details),
            )
        return limit

    async def delete_risk_limit(
        self,
        limit_type: str,
        scope: Scope = Scope.GLOBAL,
        target: str | None = None,
        *,
        actor: str = "unknown",
    ) -> bool:
        """See the port (audit entry ``delete_risk_limit``)."""
        scope = checked_scope(scope, target)
        _check_limit_type(limit_type)
        check_text("actor", actor, max_length=ACTOR_MAX_LENGTH)
        key = limit_key(limit_type, scope, target)
        now = self._clock.time()
        details = {"limit_type": limit_type, "scope": scope.value, "target": target}
        audit = AuditEntry(
            0,
            now,
            actor,
            "delete_risk_limit",
            None if scope is Scope.GLOBAL else scope,
            target,
            f"limit {key!r} removed",
            details,
        )
        async with self._writing:
            return await self._store.delete_risk_limit(key, audit)

    async def list_risk_limits(self) -> list[RiskLimit]:
        return self.state().limit_list()

    async def explain_limits(self, ids: ScopeIds) -> LimitExplanation:
        check_scope_ids(ids)
        state = self.snapshot()  # unconfirmed: UnavailableError (the caller may retry)
        applicable = state.covering_limits(ids)
        by_type: dict[str, list[RiskLimit]] = {}
        for limit in applicable:
            by_type.setdefault(limit.limit_type, []).append(limit)
        deciding = [strictest(limits) for limits in by_type.values()]
        triggers = [limit for limit in applicable if is_trigger(limit)]
        progress = await self._store.trigger_progress([limit.key for limit in triggers])
        return LimitExplanation(
            ids,
            state.trading_state(ids),
            state.active_halt(ids),
            tuple(applicable),
            tuple(limit for limit in deciding if limit is not None),
            tuple((limit, progress.get(limit.key, TriggerProgress())) for limit in triggers),
        )

    async def heartbeat(self, scope: Scope, target: str | None = None) -> float:
        """See the port: the beat re-arms the switch (breaches and ``fired`` cleared); a
        halt the switch set stays until resumed."""
        scope = checked_scope(scope, target)
        key = limit_key("heartbeat", scope, target)
        for _ in range(_BEAT_ATTEMPTS):
            # Unconfirmed: UnavailableError, which a beating client retries.
            limit = self.snapshot().limits.get(key)
            if limit is None:
                where = "global" if scope is Scope.GLOBAL else f"{scope.value}:{target}"
                raise InvalidRequest("scope", "a scope with a heartbeat limit", where)
            now = self._clock.time()
            progress = (await self._store.trigger_progress([key])).get(key, TriggerProgress())
            beaten = replace(
                progress, version=progress.version + 1, last_beat=now, fired=False, breaches=0
            )
            if await self._store.save_trigger_progress(key, beaten, progress.version):
                return now + limit.threshold
        raise UnavailableError(f"heartbeat of {key!r}: lost {_BEAT_ATTEMPTS} races in a row")

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        return self.state().pre_trade_limits(ids)

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None:
        """See the port: one audit entry, action ``order_denied``, actor ``risk:<check>``,
        on the denial's scope (the engine counts denials, once per order, in
        ``tradeflow_orders_denied_total``)."""
        check_scope_ids(ids)
        check_id("execution_id", execution_id)
        check_id("node_id", node_id)
        check_client_order_id("client_order_id", client_order_id)
        check_id("check", denial.check)
        scope = checked_scope(denial.scope, denial.target)
        value = _checked_value("value", denial.value)
        threshold = checked_number("threshold", denial.threshold)
        reason = require_text("reason", denial.reason)
        details = {
            "check": denial.check,
            "value": value,
            "threshold": threshold,
            **asdict(ids),
            "execution_id": execution_id,
            "node_id": node_id,
            "client_order_id": client_order_id,
        }
        await self._store.append_audit(
            AuditEntry(
                0,
                self._clock.time(),
                f"risk:{denial.check}",
                "order_denied",
                scope,
                denial.target,
                reason,
                details,
            )
        )
        _log.info("emergency.order_denied", reason=reason, **details)

    async def audit_entries(self, *, limit: int = DEFAULT_AUDIT_PAGE) -> list[AuditEntry]:
        return await self._store.audit_entries(max(1, min(limit, MAX_AUDIT_PAGE)))

    async def close(self) -> None:
        """Close the store: later checks fail closed."""
        await self._store.close()

    def _announce(
        self, event_type: EventType, at: float, data: dict[str, Any], ids: ScopeIds = NO_IDS
    ) -> None:
        if self._publish is None:
            return
        self._publish(
            Event(
                type=event_type.value,
                event_id=self._id_factory(),
                sequence=next(self._sequence),
                timestamp=at,
                workflow_id=ids.workflow_id,
                bot_id=ids.bot_id,
                strategy_id=ids.strategy_id,
                data=data,
            )
        )


def trigger_actor(limit: RiskLimit) -> str:
    """The actor of the halts a trigger sets and lifts: ``trigger:<key>`` (generated, so
    it may be longer than an actor an operator gives)."""
    return f"trigger:{limit.key}"


def _check_limit_type(limit_type: str) -> None:
    """An id without ``@``: the key of a scoped limit is ``<type>@<scope>:<target>``, so a
    type with one could name another type's scoped limit."""
    check_id("limit_type", limit_type)
    if "@" in limit_type:
        raise InvalidRequest("limit_type", "an id without '@'", limit_type)


def _checked_limit_direction(
    limit_type: str, direction: LimitDirection | str | None
) -> LimitDirection:
    """:func:`checked_direction`, and the only one a pre-trade or trigger type has."""
    checked = checked_direction(limit_type, direction)
    fixed = RULE_DIRECTIONS.get(limit_type)
    if fixed is not None and checked is not fixed:
        raise InvalidRequest("direction", f"{fixed.value} (the rule of {limit_type})", direction)
    return checked


def _with_options(limit: RiskLimit, options: LimitOptions) -> RiskLimit:
    """``limit`` with ``options``, each of the type its field needs (``InvalidRequest``
    naming it otherwise); :func:`checked_limit_options` then checks what they mean."""
    if not isinstance(options, LimitOptions):
        raise InvalidRequest("options", "LimitOptions", options)
    window = None if options.window is None else checked_number("window", options.window)
    state = None if options.state is None else checked_restriction(options.state)
    consecutive = options.consecutive
    if isinstance(consecutive, bool) or not isinstance(consecutive, int):
        raise InvalidRequest("consecutive", "a whole number", consecutive)
    timezone = check_text("timezone", options.timezone, max_length=TIMEZONE_MAX_LENGTH)
    reset_time = check_text("reset_time", options.reset_time, max_length=5)
    return replace(
        limit,
        window=window,
        state=state,
        consecutive=consecutive,
        timezone=timezone,
        reset_time=reset_time,
        lift_on_reset=bool(options.lift_on_reset),
        cancel_orders=bool(options.cancel_orders),
    )


def _limit_details(limit: RiskLimit) -> dict[str, Any]:
    """What the audit entry of setting ``limit`` records: every field but who and when."""
    return {
        "limit_type": limit.limit_type,
        "threshold": limit.threshold,
        "direction": limit.direction.value,
        "auto_halt": limit.auto_halt,
        "scope": limit.scope.value,
        "target": limit.target,
        "window": limit.window,
        "state": None if limit.state is None else limit.state.value,
        "consecutive": limit.consecutive,
        "timezone": limit.timezone,
        "reset_time": limit.reset_time,
        "lift_on_reset": limit.lift_on_reset,
        "cancel_orders": limit.cancel_orders,
    }


def _checked_value(field: str, value: object) -> float:
    """A denial's judged value: a number, NaN when there was no price to judge by, or
    infinite (a notional past the float range); stored as null when not finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return checked_number(field, value)


def checked_restriction(state: TradingState | str) -> TradingState:
    """``state`` as a :class:`TradingState` a halt may set; ``InvalidRequest`` naming
    ``state`` otherwise (``ACTIVE`` restricts nothing: lifting a halt is a resume)."""
    try:
        checked = TradingState(state)
    except (ValueError, TypeError):
        checked = None
    if checked is None or checked is TradingState.ACTIVE:
        allowed = ", ".join(s.value for s in TradingState if s is not TradingState.ACTIVE)
        raise InvalidRequest("state", f"one of {allowed} (active is a resume)", state)
    return checked


def _halt_data(scope: Scope, target: str | None, reason: str, actor: str) -> dict[str, Any]:
    return {"scope": scope.value, "target": target, "reason": reason, "actor": actor}


class WatchedView:
    """An emergency snapshot another process pushes, failing closed when it cannot vouch for it.

    :meth:`start` runs ``link`` again and again until :meth:`close`: each run
    opens the link, calls :meth:`confirm` with every snapshot or heartbeat it
    reads, and raises ``UnavailableError`` when the link breaks. A link that
    broke before confirming anything is retried with jittered exponential
    back-off (``backoff`` is the first and the longest wait); one that had
    worked is re-opened at once, with a fresh back-off. :meth:`current` answers
    only while the last confirmation is at most ``max_staleness`` seconds old
    (``None``: never expires). Use it from one event loop.
    """

    __slots__ = (
        "_backoff",
        "_changed",
        "_clock",
        "_closed",
        "_confirmations",
        "_confirmed_at",
        "_error",
        "_max_staleness",
        "_snapshot",
        "_source",
        "_task",
    )

    def __init__(
        self,
        source: str,
        *,
        clock: Clock,
        max_staleness: float | None,
        backoff: tuple[float, float],
    ) -> None:
        self._source = source
        self._clock = clock
        self._max_staleness = max_staleness
        self._backoff = backoff
        self._snapshot = _EMPTY
        self._error: str | None = f"no state from the {source} yet"
        self._closed = False
        self._confirmed_at = 0.0
        self._confirmations = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def problem(self) -> str | None:
        """Why :meth:`current` fails now; ``None`` when it answers."""
        if self._error is not None:
            return self._error
        limit = self._max_staleness
        if limit is not None and self._clock.monotonic() - self._confirmed_at > limit:
            return f"no state from the {self._source} for over {limit}s"
        return None

    def current(self) -> EmergencySnapshot:
        """The snapshot; ``UnavailableError`` unless it is confirmed and fresh."""
        problem = self.problem
        if problem is not None:
            raise UnavailableError(problem)
        return self._snapshot

    def confirm(self, snapshot: EmergencySnapshot) -> None:
        """``snapshot`` is the state as of now; waiters wake if the view changed."""
        if self._closed:
            return
        changed = self._error is not None or self._snapshot.version != snapshot.version
        self._snapshot, self._error = snapshot, None
        self._confirmed_at = self._clock.monotonic()
        self._confirmations += 1
        if changed:
            self._notify()

    def lose(self, reason: str) -> None:
        """The state cannot be confirmed: :meth:`current` fails with ``reason`` until the
        next :meth:`confirm`."""
        if not self._closed:
            self._error = reason
            self._notify()

    async def changed(self) -> None:
        """Return at the next change of the view: a new version, lost, back, or closed (or
        :meth:`wake`). The waiting task is woken directly, so a push sent on a change goes
        out in the first turn of the loop after it."""
        await self._changed.wait()

    def wake(self) -> None:
        """Wake every :meth:`changed` waiter now, changed or not (a server draining)."""
        self._notify()

    async def wait_until(self, done: Callable[[EmergencySnapshot], bool]) -> EmergencySnapshot:
        """The first confirmed snapshot ``done`` accepts (waits for changes); raises
        ``UnavailableError`` once the view is closed."""
        while True:
            if self._closed:
                raise UnavailableError(self._error or "closed")
            if self._error is None and done(self._snapshot):
                return self._snapshot
            await self.changed()

    def start(self, link: Callable[[], Awaitable[None]], *, name: str) -> None:
        """Follow the pushed state through ``link`` (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._follow(link), name=name)

    async def close(self, reason: str) -> None:
        """Stop following; the view fails with ``reason`` from now on."""
        self._error, self._closed = reason, True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))
        self._notify()

    async def _follow(self, link: Callable[[], Awaitable[None]]) -> None:
        first, longest = self._backoff
        while not self._closed:
            try:
                async for attempt in stamina.retry_context(
                    on=UnavailableError,
                    attempts=None,
                    timeout=None,
                    wait_initial=first,
                    wait_max=longest,
                    wait_jitter=first,
                ):
                    with attempt:
                        await self._run(link)
            except UnavailableError:
                # stamina gave up (switched off, or capped in its test mode): the view must
                # still follow, never faster than the longest back-off.
                await asyncio.sleep(longest)

    async def _run(self, link: Callable[[], Awaitable[None]]) -> None:
        """Run ``link`` once; raise ``UnavailableError`` if it broke before confirming."""
        confirmations = self._confirmations
        try:
            await link()
        except UnavailableError as exc:
            # close() cancels the link; a client may turn that into its error.
            if self._closed:
                return
            self.lose(exc.message)
            _log.warning("emergency.view_lost", source=self._source, error=exc.message)
            if self._confirmations == confirmations:
                raise

    def _notify(self) -> None:
        waking, self._changed = self._changed, asyncio.Event()
        waking.set()


class LocalRiskChecker:
    """Risk checks without an emergency controller: the same rule, nothing is configured,
    and a breach raises without halting."""

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None:
        verdict = assess_limit({}, limit_type, value, threshold, auto_halt=False)
        if verdict.breached:
            raise verdict.exceeded()

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        return NO_LIMITS

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None:
        """Nothing to audit to: the denial is in the execution's own record and events."""
