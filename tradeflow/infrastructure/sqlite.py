"""The SQLite file behind the embedded adapters: connection setup, schema, shared helpers.

One file holds executions, checkpoints, events, halts, risk limits and the
audit log, so a ``tradeflow`` command in another process (``halt``,
``events``, ``executions``) sees what a running bot writes, and the reverse.

The connection is used synchronously from the event loop thread, on purpose:
a WAL commit with ``synchronous=NORMAL`` (no fsync) costs about 11 microseconds,
less than handing the work to a thread and back. The price is that a write waiting
on another process's lock blocks the loop for up to ``busy_timeout``; writers
hold the lock only for one short transaction, so that wait stays rare and short.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from tradeflow.errors import ConfigurationError

__all__ = [
    "DB_SCHEMA_VERSION",
    "WriteTransaction",
    "from_json",
    "open_database",
    "to_json",
    "to_json_or_null",
]

DB_SCHEMA_VERSION: Final = 2
"""Layout version stored in ``PRAGMA user_version``.

Version 2 keeps an execution's checkpoints and events as one journal row per
written batch and each distinct workflow definition once. Files of version 1 (an
unreleased development layout) are refused rather than migrated."""

_BUSY_TIMEOUT_MS: Final = 5000

# The state tables are laid out for the write path (see tradeflow.infrastructure.state):
# a commit costs about one page write per B-tree it touches, so executions carry only
# the indexes that listing needs, and a batch is one journal row with one index entry.
# Time-ordered indexes are ascending (and read backwards for newest first): new keys
# then land at the right edge of the B-tree, which SQLite appends to cheaply, where a
# descending index takes them at the left of a full page and rebalances three pages.
#
# Global halts store target '' (never NULL): NULLs are distinct in a primary
# key, so a NULL target would let two global halts coexist.
_SCHEMA: Final = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS definitions (
    digest     BLOB PRIMARY KEY,
    definition TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS executions (
    execution_id   TEXT NOT NULL UNIQUE,
    workflow_id    TEXT NOT NULL,
    bot_id         TEXT,
    strategy_id    TEXT,
    status         TEXT NOT NULL,
    started_at     REAL NOT NULL,
    finished_at    REAL,
    correlation_id TEXT NOT NULL,
    request_id     TEXT,
    error          TEXT,
    definition     BLOB NOT NULL REFERENCES definitions (digest),
    result         TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_start
    ON executions (started_at, execution_id);
CREATE INDEX IF NOT EXISTS executions_by_workflow
    ON executions (workflow_id, started_at, execution_id);
CREATE UNIQUE INDEX IF NOT EXISTS executions_by_request
    ON executions (request_id) WHERE request_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS batches (
    batch_id     INTEGER PRIMARY KEY,
    execution_id TEXT,
    body         TEXT NOT NULL,
    numbers      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_execution
    ON batches (execution_id) WHERE execution_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS halts (
    scope  TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor  TEXT NOT NULL,
    since  REAL NOT NULL,
    PRIMARY KEY (scope, target)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS risk_limits (
    limit_type TEXT PRIMARY KEY,
    threshold  REAL NOT NULL,
    direction  TEXT NOT NULL,
    auto_halt  INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit (
    entry_id INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    scope    TEXT,
    target   TEXT,
    reason   TEXT NOT NULL,
    details  TEXT
);

PRAGMA user_version = {DB_SCHEMA_VERSION};
COMMIT;
"""

_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


def open_database(
    path: str | os.PathLike[str], *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> sqlite3.Connection:
    """Open (creating if needed) the tradeflow database at ``path``.

    The connection runs in autocommit mode (``isolation_level=None``): every
    write goes through an explicit :class:`WriteTransaction`. Files use WAL
    journaling so readers in other processes never block the writer;
    ``":memory:"`` gets a private database. ``synchronous="FULL"`` also
    survives power loss at the cost of an fsync per commit.

    Raises ``ConfigurationError`` if ``synchronous`` is unknown, the file
    cannot use WAL, or its layout is not :data:`DB_SCHEMA_VERSION` (newer, or
    an old development layout).
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigurationError(
            f"invalid sqlite synchronous mode: expected 'NORMAL' or 'FULL', found {synchronous!r}"
        )
    location = os.fspath(path)
    in_memory = location == ":memory:"
    if not in_memory:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    # Synchronous use from the event loop thread is deliberate: a commit is cheaper
    # than a thread hop (module docstring), and one thread needs no locking.
    conn = sqlite3.connect(location, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not in_memory:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise ConfigurationError(
                    f"sqlite database {location!r}: expected journal mode 'wal', found {mode!r}"
                )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        _ensure_schema(conn, location)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, location: str) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > DB_SCHEMA_VERSION:
        raise ConfigurationError(
            f"sqlite database {location!r}: expected schema version <= {DB_SCHEMA_VERSION}, "
            f"found {version} (written by a newer tradeflow)"
        )
    if 0 < version < DB_SCHEMA_VERSION:
        raise ConfigurationError(
            f"sqlite database {location!r}: expected schema version {DB_SCHEMA_VERSION}, "
            f"found {version} (a development layout that is not migrated); move the file "
            "away to start a new one"
        )
    try:
        conn.executescript(_SCHEMA)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class WriteTransaction:
    """``with WriteTransaction(conn):`` runs the block in one ``BEGIN IMMEDIATE`` transaction.

    Commits when the block succeeds; rolls back and lets the error propagate
    otherwise. Reusable (one instance per connection avoids an allocation per
    write) but not re-entrant.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock up front, so a concurrent writer in
        # another process waits on busy_timeout instead of failing mid-transaction.
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if exc_type is None:
            try:
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        # A failed COMMIT may already have rolled back; a second ROLLBACK
        # would raise and hide the original error.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def to_json(value: Any) -> str:
    """Compact JSON (no spaces), as stored in every JSON column."""
    return _encode(value)


def to_json_or_null(value: dict[str, Any] | None) -> str | None:
    """:func:`to_json` of a non-empty dict; ``None`` (stored as NULL) for ``None`` or ``{}``."""
    return _encode(value) if value else None


def from_json(text: str | None) -> Any:
    """Inverse of :func:`to_json` and :func:`to_json_or_null` (NULL gives ``None``)."""
    return None if text is None else _decode(text)
