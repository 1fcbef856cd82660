"""Emergency control: scoped halts, risk limits and the pre-action check, over a pluggable store.

:class:`EmergencyController` holds every rule (scope validation, which halt
covers which ids, limit directions, what a breach does); an
:class:`EmergencyStore` only keeps the state. The embedded
:class:`LocalEmergencyController` is the controller on a
:class:`SQLiteEmergencyStore`: halts, risk limits and the audit log live in the
tradeflow SQLite file, so ``tradeflow halt`` run in another process stops a bot
at its next action. The Redis store behind the emergency service is in
:mod:`tradeflow.adapters.redis.emergency`.

The pre-action check is synchronous and reads the store's in-memory
:class:`EmergencySnapshot`; a state that cannot be confirmed fails closed
(``EmergencyHalted``). A failed write lets the store's error propagate.

``EmergencyHalted`` and ``RiskLimitExceeded`` are re-exported here: this is
the import path the seed's code uses.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

import structlog

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.domain.clock import Clock, IdFactory, SystemClock, new_id
from tradeflow.domain.codec import from_json, to_json_or_null
from tradeflow.domain.errors import (
    EmergencyHalted,
    InvalidRequest,
    RiskLimitExceeded,
    UnavailableError,
    describe,
)
from tradeflow.domain.numbers import finite
from tradeflow.domain.records import (
    AuditEntry,
    Event,
    EventType,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
)
from tradeflow.observability.metrics import Metrics

__all__ = [
    "DEFAULT_DIRECTIONS",
    "MAX_AUDIT_PAGE",
    "EmergencyController",
    "EmergencyHalted",
    "EmergencySnapshot",
    "EmergencyStore",
    "HaltKey",
    "LocalEmergencyController",
    "LocalRiskChecker",
    "RiskLimitExceeded",
    "SQLiteEmergencyStore",
]

DEFAULT_DIRECTIONS: Final[Mapping[str, LimitDirection]] = MappingProxyType(
    {
        "daily_loss": LimitDirection.BELOW,
        "max_drawdown": LimitDirection.BELOW,
        "max_position": LimitDirection.ABS_ABOVE,
        "max_order_notional": LimitDirection.ABOVE,
        "max_exposure": LimitDirection.ABOVE,
    }
)
"""Breach direction of the well-known limit types (a configured limit overrides it)."""

MAX_AUDIT_PAGE: Final = 1000
"""Most entries one :meth:`EmergencyController.audit_entries` call returns."""

HaltKey = tuple[Scope, str | None]
"""How a snapshot keys its halts: scope and target (``None`` for global)."""

_SCOPE_RANK: Final = {Scope.GLOBAL: 0, Scope.STRATEGY: 1, Scope.BOT: 2, Scope.WORKFLOW: 3}
_GLOBAL_KEY: Final[HaltKey] = (Scope.GLOBAL, None)
_KNOWN_TYPES: Final = ", ".join(DEFAULT_DIRECTIONS)
_DIRECTIONS: Final = ", ".join(d.value for d in LimitDirection)
_SYSTEM_CLOCK: Final = SystemClock()

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EmergencySnapshot:
    """One consistent view of the emergency state; treat the mappings as read-only."""

    version: int
    """Differs between snapshots of one store whenever halts or limits differ."""
    halts: Mapping[HaltKey, HaltState]
    limits: Mapping[str, RiskLimit]

    @classmethod
    def of(
        cls, version: int, halts: Iterable[HaltState], limits: Iterable[RiskLimit]
    ) -> EmergencySnapshot:
        """A snapshot keyed the way :meth:`active_halt` looks halts up."""
        return cls(
            version,
            {(h.scope, h.target): h for h in halts},
            {limit.limit_type: limit for limit in limits},
        )

    def ensure_trading_allowed(
        self, *, workflow_id: str | None, bot_id: str | None, strategy_id: str | None
    ) -> None:
        """Raise ``EmergencyHalted`` (broadest halt's reason and scope) if a halt covers these ids."""
        halt = self.active_halt(workflow_id=workflow_id, bot_id=bot_id, strategy_id=strategy_id)
        if halt is not None:
            raise EmergencyHalted(halt.reason, scope=halt.scope.value, target=halt.target)

    def active_halt(
        self, *, workflow_id: str | None, bot_id: str | None, strategy_id: str | None
    ) -> HaltState | None:
        """The broadest halt covering these ids (global > strategy > bot > workflow), if any."""
        halts = self.halts
        if not halts:
            return None
        found = halts.get(_GLOBAL_KEY)
        if found is None and strategy_id is not None:
            found = halts.get((Scope.STRATEGY, strategy_id))
        if found is None and bot_id is not None:
            found = halts.get((Scope.BOT, bot_id))
        if found is None and workflow_id is not None:
            found = halts.get((Scope.WORKFLOW, workflow_id))
        return found

    def halt_list(self) -> list[HaltState]:
        """Every halt, broadest scope first, then by target."""
        return sorted(self.halts.values(), key=lambda h: (_SCOPE_RANK[h.scope], h.target or ""))

    def limit_list(self) -> list[RiskLimit]:
        """Every configured limit, by limit type."""
        return sorted(self.limits.values(), key=lambda limit: limit.limit_type)


class EmergencyStore(Protocol):
    """Where an :class:`EmergencyController` keeps halts, risk limits and the audit log.

    Audit entries passed in carry ``entry_id=0``: the store assigns the id.
    Each write method changes the state and appends its audit entry atomically,
    and is visible in :meth:`snapshot` once it returns.
    """

    def snapshot(self) -> EmergencySnapshot:
        """The current state, from memory (called before every action, so cheap).

        Raises ``UnavailableError`` when the state cannot be confirmed.
        """
        ...

    async def save_halt(self, halt: HaltState, audit: AuditEntry) -> HaltState:
        """Insert or update the halt on ``halt.scope``/``halt.target``, keeping the stored
        ``since`` of an existing one; returns the halt as stored."""
        ...

    async def delete_halt(self, scope: Scope, target: str | None, audit: AuditEntry) -> bool:
        """Remove the halt and append ``audit``; False (and no audit entry) if there was none."""
        ...

    async def save_risk_limit(self, limit: RiskLimit, audit: AuditEntry) -> None:
        """Insert or replace the limit on ``limit.limit_type``."""
        ...

    async def append_audit(self, audit: AuditEntry) -> None:
        """Append an audit entry that changes no state (a risk breach)."""
        ...

    async def audit_entries(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        ...

    async def close(self) -> None:
        """Release the store; later snapshots raise ``UnavailableError``."""
        ...


class EmergencyController:
    """Halt/resume by scope, risk limits and the pre-action check, over any ``store``.

    ``publish`` receives ``emergency_halted``, ``emergency_resumed`` and
    ``risk_limit_exceeded`` events (typically an event bus's ``publish``).
    """

    __slots__ = ("_clock", "_id_factory", "_metrics", "_publish", "_sequence", "_store")

    def __init__(
        self,
        store: EmergencyStore,
        *,
        publish: Callable[[Event], None] | None = None,
        metrics: Metrics | None = None,
        clock: Clock = _SYSTEM_CLOCK,
        id_factory: IdFactory = new_id,
    ) -> None:
        self._store = store
        self._publish = publish
        self._metrics = metrics
        self._clock = clock
        self._id_factory = id_factory
        self._sequence = itertools.count(1)

    def state(self) -> EmergencySnapshot:
        """The current halts and limits; raises ``EmergencyHalted`` if they cannot be confirmed."""
        try:
            return self._store.snapshot()
        except UnavailableError as exc:
            raise EmergencyHalted(f"emergency state unavailable: {exc.message}") from exc

    @property
    def version(self) -> int:
        """Version of the current :meth:`state`."""
        return self.state().version

    def ensure_trading_allowed(
        self, *, workflow_id: str | None, bot_id: str | None, strategy_id: str | None
    ) -> None:
        """Raise ``EmergencyHalted`` if a halt covers these ids or the state cannot be read."""
        self.state().ensure_trading_allowed(
            workflow_id=workflow_id, bot_id=bot_id, strategy_id=strategy_id
        )

    def active_halt(
        self, *, workflow_id: str | None, bot_id: str | None, strategy_id: str | None
    ) -> HaltState | None:
        """The broadest halt covering these ids (global > strategy > bot > workflow), if any.

        Raises ``EmergencyHalted`` when the state cannot be read (fail closed).
        """
        return self.state().active_halt(
            workflow_id=workflow_id, bot_id=bot_id, strategy_id=strategy_id
        )

    async def halt(
        self, scope: Scope, target: str | None = None, *, reason: str, actor: str = "unknown"
    ) -> HaltState:
        """Halt ``scope``/``target`` (``target`` is ``None`` for global); re-halting updates
        the reason. Raises ``InvalidRequest`` naming a bad scope, target or reason."""
        scope = _checked_scope(scope, target)
        _require_text("reason", reason)
        now = self._clock.time()
        state = await self._store.save_halt(
            HaltState(scope=scope, target=target, reason=reason, actor=actor, since=now),
            AuditEntry(0, now, actor, "halt", scope, target, reason),
        )
        if self._metrics is not None:
            self._metrics.halts.labels(scope.value).inc()
        _log.warning(
            "emergency.halted", scope=scope.value, target=target, reason=reason, actor=actor
        )
        self._announce(EventType.EMERGENCY_HALTED, now, _halt_data(scope, target, reason, actor))
        return state

    async def resume(
        self, scope: Scope, target: str | None = None, *, reason: str, actor: str = "unknown"
    ) -> bool:
        """Lift the halt on ``scope``/``target``; False (and no audit entry) if there was none."""
        scope = _checked_scope(scope, target)
        _require_text("reason", reason)
        now = self._clock.time()
        audit = AuditEntry(0, now, actor, "resume", scope, target, reason)
        if not await self._store.delete_halt(scope, target, audit):
            return False
        _log.warning(
            "emergency.resumed", scope=scope.value, target=target, reason=reason, actor=actor
        )
        self._announce(EventType.EMERGENCY_RESUMED, now, _halt_data(scope, target, reason, actor))
        return True

    async def halts(self) -> list[HaltState]:
        """Every active halt, broadest scope first; ``EmergencyHalted`` if unreadable."""
        return self.state().halt_list()

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        workflow_id: str | None = None,
        bot_id: str | None = None,
        strategy_id: str | None = None,
    ) -> None:
        """Raise ``RiskLimitExceeded`` if ``value`` breaches the limit.

        The direction comes from the configured limit, else from
        :data:`DEFAULT_DIRECTIONS`; ``threshold=None`` uses the configured
        threshold. A breach is audited, counted and published; with
        ``auto_halt`` trading is then halted globally, so every later action
        is refused until someone resumes. Raises ``InvalidRequest`` for an
        unknown limit type, a missing threshold or a value that is not a
        finite number, and ``EmergencyHalted`` if the limits cannot be read.
        """
        _require_text("limit_type", limit_type)
        _require_number("value", value)
        configured = self.state().limits.get(limit_type)
        direction = (
            configured.direction if configured is not None else DEFAULT_DIRECTIONS.get(limit_type)
        )
        if direction is None:
            raise InvalidRequest(
                "limit_type", f"a configured limit type or one of {_KNOWN_TYPES}", limit_type
            )
        if threshold is None:
            if configured is None:
                raise InvalidRequest(
                    "threshold", f"a number (no {limit_type!r} limit is configured)", threshold
                )
            threshold = configured.threshold
        else:
            _require_number("threshold", threshold)
        if not direction.breached(value, threshold):
            return
        # A limit configured not to halt overrides the seed's default auto_halt=True.
        auto_halt = bool(auto_halt) and (configured is None or configured.auto_halt)
        value, threshold = float(value), float(threshold)
        await self._breach(
            limit_type,
            value,
            threshold,
            direction,
            auto_halt=auto_halt,
            ids={"workflow_id": workflow_id, "bot_id": bot_id, "strategy_id": strategy_id},
        )
        raise RiskLimitExceeded(limit_type, value, threshold, halted=auto_halt)

    async def set_risk_limit(
        self,
        limit_type: str,
        threshold: float,
        direction: LimitDirection | None = None,
        *,
        auto_halt: bool = True,
        actor: str = "unknown",
    ) -> RiskLimit:
        """Configure (or replace) the limit on ``limit_type``; the change is audited.

        ``direction`` defaults to :data:`DEFAULT_DIRECTIONS` for known types
        and is required for others (``InvalidRequest`` naming ``direction``).
        """
        _require_text("limit_type", limit_type)
        _require_number("threshold", threshold)
        direction = _checked_direction(limit_type, direction)
        now = self._clock.time()
        limit = RiskLimit(
            limit_type=limit_type,
            threshold=float(threshold),
            direction=direction,
            auto_halt=bool(auto_halt),
            updated_at=now,
            updated_by=actor,
        )
        details = {
            "limit_type": limit_type,
            "threshold": limit.threshold,
            "direction": direction.value,
            "auto_halt": limit.auto_halt,
        }
        reason = f"limit {limit_type!r}: {direction.value} {limit.threshold}"
        await self._store.save_risk_limit(
            limit, AuditEntry(0, now, actor, "set_risk_limit", None, None, reason, details)
        )
        return limit

    async def list_risk_limits(self) -> list[RiskLimit]:
        """Every configured limit, by limit type; ``EmergencyHalted`` if unreadable."""
        return self.state().limit_list()

    async def audit_entries(self, *, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries first; ``limit`` is clamped to 1..:data:`MAX_AUDIT_PAGE`."""
        return await self._store.audit_entries(max(1, min(limit, MAX_AUDIT_PAGE)))

    async def close(self) -> None:
        """Close the store: later checks fail closed."""
        await self._store.close()

    async def _breach(
        self,
        limit_type: str,
        value: float,
        threshold: float,
        direction: LimitDirection,
        *,
        auto_halt: bool,
        ids: dict[str, str | None],
    ) -> None:
        now = self._clock.time()
        actor = f"risk:{limit_type}"
        reason = f"risk limit {limit_type!r} breached: {_comparison(direction, value, threshold)}"
        data: dict[str, Any] = {
            "limit_type": limit_type,
            "value": value,
            "threshold": threshold,
            "direction": direction.value,
            "auto_halt": auto_halt,
        }
        await self._store.append_audit(
            AuditEntry(0, now, actor, "risk_breach", None, None, reason, {**data, **ids})
        )
        if self._metrics is not None:
            self._metrics.risk_breaches.labels(limit_type).inc()
        _log.warning("emergency.risk_breach", reason=reason, auto_halt=auto_halt, **ids)
        self._announce(EventType.RISK_LIMIT_EXCEEDED, now, data, **ids)
        if auto_halt:
            await self.halt(Scope.GLOBAL, reason=reason, actor=actor)

    def _announce(
        self,
        event_type: EventType,
        at: float,
        data: dict[str, Any],
        *,
        workflow_id: str | None = None,
        bot_id: str | None = None,
        strategy_id: str | None = None,
    ) -> None:
        if self._publish is None:
            return
        self._publish(
            Event(
                type=event_type.value,
                event_id=self._id_factory(),
                sequence=next(self._sequence),
                timestamp=at,
                workflow_id=workflow_id,
                bot_id=bot_id,
                strategy_id=strategy_id,
                data=data,
            )
        )


_DATA_VERSION: Final = "PRAGMA data_version"
_SELECT_HALTS: Final = "SELECT scope, target, reason, actor, since FROM halts"
_SELECT_LIMITS: Final = (
    "SELECT limit_type, threshold, direction, auto_halt, updated_at, updated_by FROM risk_limits"
)
# Re-halting keeps ``since`` (the halt has lasted since then) and takes the new reason.
_UPSERT_HALT: Final = (
    "INSERT INTO halts (scope, target, reason, actor, since) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (scope, target) DO UPDATE SET reason = excluded.reason, actor = excluded.actor"
    " RETURNING since"
)
_DELETE_HALT: Final = "DELETE FROM halts WHERE scope = ? AND target = ?"
_UPSERT_LIMIT: Final = (
    "INSERT INTO risk_limits (limit_type, threshold, direction, auto_halt, updated_at, updated_by)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (limit_type) DO UPDATE SET"
    " threshold = excluded.threshold, direction = excluded.direction,"
    " auto_halt = excluded.auto_halt, updated_at = excluded.updated_at,"
    " updated_by = excluded.updated_by"
)
_INSERT_AUDIT: Final = (
    "INSERT INTO audit (at, actor, action, scope, target, reason, details)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_AUDIT: Final = (
    "SELECT entry_id, at, actor, action, scope, target, reason, details FROM audit"
    " ORDER BY entry_id DESC LIMIT ?"
)


class SQLiteEmergencyStore:
    """Halts, risk limits and the audit log in the tradeflow SQLite file.

    ``conn`` comes from :func:`tradeflow.adapters.sqlite.database.open_database`
    and stays its opener's to close. The snapshot is reloaded only when
    ``PRAGMA data_version`` says another connection committed, or after this
    store's own writes (which do not move ``data_version``). Its version counts
    the reloads of this store.
    """

    __slots__ = ("_conn", "_cursor", "_loads", "_seen_version", "_snapshot", "_txn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # A kept cursor makes the per-check version query cheaper than conn.execute.
        self._cursor = conn.cursor()
        self._txn = WriteTransaction(conn)
        self._loads = 0
        self._seen_version: int | None = None
        self._snapshot = EmergencySnapshot(0, {}, {})

    def snapshot(self) -> EmergencySnapshot:
        """The state as last committed by any connection; ``UnavailableError`` if unreadable."""
        try:
            (version,) = self._cursor.execute(_DATA_VERSION).fetchone()
            if version != self._seen_version:
                self._snapshot = self._load()
                self._seen_version = version
        except (sqlite3.Error, ValueError) as exc:
            # ValueError: a row no tradeflow wrote (unknown scope or direction).
            raise UnavailableError(describe(exc)) from exc
        return self._snapshot

    async def save_halt(self, halt: HaltState, audit: AuditEntry) -> HaltState:
        with self._txn:
            ((since,),) = self._conn.execute(
                _UPSERT_HALT,
                (halt.scope.value, halt.target or "", halt.reason, halt.actor, halt.since),
            ).fetchall()
            self._audit(audit)
        self._seen_version = None
        return HaltState(halt.scope, halt.target, halt.reason, halt.actor, since)

    async def delete_halt(self, scope: Scope, target: str | None, audit: AuditEntry) -> bool:
        with self._txn:
            removed = self._conn.execute(_DELETE_HALT, (scope.value, target or "")).rowcount
            if removed:
                self._audit(audit)
        self._seen_version = None
        return bool(removed)

    async def save_risk_limit(self, limit: RiskLimit, audit: AuditEntry) -> None:
        with self._txn:
            self._conn.execute(
                _UPSERT_LIMIT,
                (
                    limit.limit_type,
                    limit.threshold,
                    limit.direction.value,
                    limit.auto_halt,
                    limit.updated_at,
                    limit.updated_by,
                ),
            )
            self._audit(audit)
        self._seen_version = None

    async def append_audit(self, audit: AuditEntry) -> None:
        with self._txn:
            self._audit(audit)

    async def audit_entries(self, limit: int) -> list[AuditEntry]:
        rows = self._conn.execute(_SELECT_AUDIT, (limit,))
        return [
            AuditEntry(
                entry_id=entry_id,
                at=at,
                actor=actor,
                action=action,
                scope=None if scope is None else Scope(scope),
                target=target,
                reason=reason,
                details=from_json(details) or {},
            )
            for entry_id, at, actor, action, scope, target, reason, details in rows
        ]

    async def close(self) -> None:
        """Stop reading the database: later snapshots fail. The connection stays open."""
        self._cursor.close()

    def _load(self) -> EmergencySnapshot:
        halts = []
        for scope_name, stored_target, reason, actor, since in self._conn.execute(_SELECT_HALTS):
            scope = Scope(scope_name)
            target = None if scope is Scope.GLOBAL else stored_target
            halts.append(HaltState(scope, target, reason, actor, since))
        limits = [
            RiskLimit(row[0], row[1], LimitDirection(row[2]), bool(row[3]), row[4], row[5])
            for row in self._conn.execute(_SELECT_LIMITS)
        ]
        self._loads += 1
        return EmergencySnapshot.of(self._loads, halts, limits)

    def _audit(self, entry: AuditEntry) -> None:
        self._conn.execute(
            _INSERT_AUDIT,
            (
                entry.at,
                entry.actor,
                entry.action,
                None if entry.scope is None else entry.scope.value,
                entry.target,
                entry.reason,
                to_json_or_null(entry.details),
            ),
        )


class LocalEmergencyController(EmergencyController):
    """The embedded controller: an :class:`EmergencyController` on a SQLite connection.

    Share one connection with the state store: commits on another connection
    make the next check reload the view.
    """

    __slots__ = ()

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        publish: Callable[[Event], None] | None = None,
        metrics: Metrics | None = None,
        clock: Clock = _SYSTEM_CLOCK,
        id_factory: IdFactory = new_id,
    ) -> None:
        super().__init__(
            SQLiteEmergencyStore(conn),
            publish=publish,
            metrics=metrics,
            clock=clock,
            id_factory=id_factory,
        )


def _checked_scope(scope: Scope | str, target: str | None) -> Scope:
    try:
        checked = Scope(scope)
    except (ValueError, TypeError):
        raise InvalidRequest("scope", f"one of {', '.join(Scope)}", scope) from None
    if checked is Scope.GLOBAL:
        if target is not None:
            raise InvalidRequest("target", "None for a global halt", target)
    elif not isinstance(target, str) or not target.strip():
        raise InvalidRequest("target", f"a non-empty {checked.value} id", target)
    return checked


def _checked_direction(limit_type: str, direction: LimitDirection | str | None) -> LimitDirection:
    if direction is None:
        default = DEFAULT_DIRECTIONS.get(limit_type)
        if default is None:
            raise InvalidRequest(
                "direction",
                f"one of {_DIRECTIONS} (only {_KNOWN_TYPES} have a default)",
                direction,
            )
        return default
    try:
        return LimitDirection(direction)
    except (ValueError, TypeError):
        raise InvalidRequest("direction", f"one of {_DIRECTIONS}", direction) from None


def _require_text(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(field, "a non-empty string", value)


def _require_number(field: str, value: object) -> None:
    if finite(value) is None:
        raise InvalidRequest(field, "a finite number", value)


def _comparison(direction: LimitDirection, value: float, threshold: float) -> str:
    if direction is LimitDirection.BELOW:
        return f"value {value} < threshold {threshold}"
    if direction is LimitDirection.ABOVE:
        return f"value {value} > threshold {threshold}"
    return f"|value| {abs(value)} > threshold {threshold}"


def _halt_data(scope: Scope, target: str | None, reason: str, actor: str) -> dict[str, Any]:
    return {"scope": scope.value, "target": target, "reason": reason, "actor": actor}


class LocalRiskChecker:
    """Risk checks without an emergency controller: a breach raises, nothing halts."""

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        workflow_id: str | None = None,
        bot_id: str | None = None,
        strategy_id: str | None = None,
    ) -> None:
        direction = DEFAULT_DIRECTIONS.get(limit_type)
        if direction is None:
            raise InvalidRequest("limit_type", f"one of {sorted(DEFAULT_DIRECTIONS)}", limit_type)
        if threshold is None:
            raise InvalidRequest("threshold", "a number (no configured limits here)", threshold)
        if direction.breached(value, threshold):
            raise RiskLimitExceeded(limit_type, value, threshold, halted=False)
