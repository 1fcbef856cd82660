"""The embedded emergency store: halts, risk limits and the audit log in the tradeflow SQLite file.

:class:`LocalEmergencyController` is the emergency controller on a
:class:`SQLiteEmergencyStore`, so ``tradeflow halt`` run in another process
stops a bot at its next action.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import astuple
from typing import Final

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.codec import from_json, to_json_or_null
from tradeflow.domain.emergency import EmergencySnapshot
from tradeflow.domain.errors import UnavailableError, describe
from tradeflow.domain.records import AuditEntry, Event, HaltState, LimitDirection, RiskLimit, Scope
from tradeflow.engine.emergency import EmergencyController
from tradeflow.observability.metrics import Metrics

__all__ = ["LocalEmergencyController", "SQLiteEmergencyStore"]

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
            self._conn.execute(_UPSERT_LIMIT, astuple(limit))
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
        # The columns are the entry's fields after its id; a Scope (StrEnum) binds as its text.
        *fields, details = astuple(entry)[1:]
        self._conn.execute(_INSERT_AUDIT, (*fields, to_json_or_null(details)))


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
        clock: Clock,
        id_factory: IdFactory,
    ) -> None:
        super().__init__(
            SQLiteEmergencyStore(conn),
            publish=publish,
            metrics=metrics,
            clock=clock,
            id_factory=id_factory,
        )
