"""The SQLite file behind the embedded adapters: connection setup, schema, shared helpers.

One file holds executions, checkpoints, events, halts, risk limits and the
audit log, so a ``tradeflow`` command in another process (``halt``,
``events``, ``executions``) sees what a running bot writes, and the reverse.

The connection is used synchronously from the event loop thread, on purpose:
a WAL commit with ``synchronous=NORMAL`` (no fsync) costs a few microseconds
for its locks and per page it writes, less than handing the work to a thread
and back. The price
is that a write waiting on another process's lock blocks the loop for up to
``busy_timeout``; writers hold the lock only for one short transaction, so that
wait stays rare and short.

WAL checkpoints (copying the log back into the database file, with its fsyncs)
are kept off those commits: see :class:`Database`.

Every JSON column is encoded by :mod:`tradeflow.domain.codec`.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import structlog

from tradeflow.domain.errors import ConfigurationError, describe

__all__ = ["DB_SCHEMA_VERSION", "Database", "WriteTransaction", "open_database"]

DB_SCHEMA_VERSION: Final = 7
"""Layout version stored in ``PRAGMA user_version``.

Version 3 keeps an execution's checkpoints and events as one JSON journal row
per written batch, found through the range of rows each execution records (see
:mod:`tradeflow.adapters.sqlite.state`), and each distinct workflow definition
once. Version 4 adds ownership (:mod:`tradeflow.domain.ownership`): each
execution's ``owner``, lease ``epoch``, ``takeovers`` and ``cancel_requested``, the
``leases`` table and the ``counters`` row that hands out epochs. Version 5 adds each
halt's trading ``state`` and ``cancel_orders`` (:class:`~tradeflow.domain.trading.TradingState`).
Version 6 keys ``risk_limits`` by :attr:`~tradeflow.domain.records.RiskLimit.key` (limits
per scope) with a column per option, and adds ``trigger_progress``
(:class:`~tradeflow.domain.risk.TriggerProgress`). Version 7 adds the indexes listing filters
by (status, workflow, bot, strategy) and retention walks (end time), and a compact journal
row encoding (rows of version 6 still read as they are). Files of versions 3 to 6 (released)
are migrated to 7 in place, in one transaction, when they are opened (version 6 only gains
the indexes, built then: a second per 10^5 executions or so); files of versions 1 and 2
(unreleased development layouts) are refused rather than migrated."""

_MIGRATES_FROM: Final = 3
"""The oldest layout :func:`open_database` migrates (to :data:`DB_SCHEMA_VERSION`)."""

_BUSY_TIMEOUT_MS: Final = 5000
_RESTART_WAIT_MS: Final = 100
"""How long the writer's own RESTART checkpoint waits for readers to leave the log."""

_CHECKPOINT_INTERVAL_S: Final = 0.25
"""How often the checkpointer thread runs a PASSIVE checkpoint."""
_WAL_CHECK_COMMITS: Final = 64
"""The writer reads the WAL's length once per this many commits."""
_WAL_WAKE_FRAMES: Final = 1000
"""Frames not yet checkpointed past which the writer wakes the checkpointer early
(SQLite's own automatic checkpoint threshold)."""
_WAL_HARD_LIMIT: Final = 16 * 1024 * 1024
"""WAL bytes past which the writer runs a RESTART checkpoint itself; also the size
SQLite truncates a larger WAL file back to once the log restarts."""
# The wal-index header at the start of the -shm file (https://sqlite.org/walformat.html,
# "The WAL-Index Header"): mxFrame (frames in the log) at byte 16 and nBackfill (frames
# already checkpointed) at byte 96, native byte order. Every SQLite version sharing a
# database must agree on it, so it does not change.
_WAL_INDEX_HEADER: Final = struct.Struct("=16xI76xI")
_TRANSIENT_ERRORS: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

_log = structlog.get_logger(__name__)

# The state tables are laid out for the write path (see tradeflow.adapters.sqlite.state):
# a commit costs about one page write per B-tree page it touches, so executions carry
# only the indexes that listing by start time and the idempotency key need, and a
# journal row has no index of its own. Time-ordered indexes are ascending (and read
# backwards for newest first): new keys then land at the right edge of the B-tree,
# which SQLite appends to cheaply, where a descending index takes them at the left of
# a full page and rebalances three pages.
#
# Global halts store target '' (never NULL): NULLs are distinct in a primary
# key, so a NULL target would let two global halts coexist.
#
# Ownership: ``leases`` holds one row per owner (its latest lease); ``expires_at`` is
# store-clock seconds and ``cancels`` the ids (space-separated) requested since the
# owner's last heartbeat. ``counters`` row 'epoch' is the last epoch granted, so an
# epoch is never reused, even once its lease row is gone. An execution's ``epoch`` 0
# means no lease ever owned it; ``cancel_requested`` 1: a cancel was asked of its live
# owner (kept for whoever claims it next). Version 3 files gain the four ownership
# columns by ALTER TABLE (appended, hence last here too) and the two tables from this
# schema.
#
# Risk limits: ``limit_key`` is RiskLimit.key (the type alone for a global limit, as
# version 5 keyed them), so a version 5 row keeps its key; ``target`` is NULL for a
# global limit (the key, not the target, is unique). ``trigger_progress`` holds one row
# per trigger ever evaluated or beaten: its compare-and-set ``version`` and the rest of
# its progress as a JSON object by field name; it is removed with its limit.
_RISK_LIMITS: Final = """risk_limits (
    limit_key  TEXT PRIMARY KEY,
    limit_type TEXT NOT NULL,
    threshold  REAL NOT NULL,
    direction  TEXT NOT NULL,
    auto_halt  INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL,
    scope      TEXT NOT NULL DEFAULT 'global',
    target     TEXT,
    window_seconds REAL,
    state      TEXT,
    consecutive INTEGER NOT NULL DEFAULT 1,
    timezone   TEXT NOT NULL DEFAULT 'UTC',
    reset_time TEXT NOT NULL DEFAULT '00:00',
    lift_on_reset INTEGER NOT NULL DEFAULT 0,
    cancel_orders INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID"""
_TRIGGER_PROGRESS: Final = """trigger_progress (
    limit_key TEXT PRIMARY KEY,
    version   INTEGER NOT NULL,
    progress  TEXT NOT NULL
) WITHOUT ROWID"""
_BY_STATUS: Final = "executions_by_status ON executions (status, started_at)"
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS definitions (
    digest     BLOB PRIMARY KEY,
    definition TEXT NOT NULL
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS executions (
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
    first_batch    INTEGER,
    last_batch     INTEGER,
    result         TEXT,
    owner          TEXT,
    epoch          INTEGER NOT NULL DEFAULT 0,
    takeovers      INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE INDEX IF NOT EXISTS executions_by_start
    ON executions (started_at, execution_id)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS executions_by_request
    ON executions (request_id) WHERE request_id IS NOT NULL""",
    # Listing filters: newest first within the filtered value (the rowid each entry holds
    # and a sort of equal start times break ties by id). Bot and strategy are often
    # unset: those rows cost no entry.
    f"CREATE INDEX IF NOT EXISTS {_BY_STATUS}",
    """CREATE INDEX IF NOT EXISTS executions_by_workflow
    ON executions (workflow_id, started_at)""",
    """CREATE INDEX IF NOT EXISTS executions_by_bot
    ON executions (bot_id, started_at) WHERE bot_id IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS executions_by_strategy
    ON executions (strategy_id, started_at) WHERE strategy_id IS NOT NULL""",
    # Retention: ended executions, oldest end first.
    """CREATE INDEX IF NOT EXISTS executions_by_end
    ON executions (finished_at) WHERE finished_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS batches (
    batch_id     INTEGER PRIMARY KEY,
    execution_id TEXT,
    orphan       INTEGER,
    body         BLOB NOT NULL
)""",
    """CREATE INDEX IF NOT EXISTS batches_orphaned
    ON batches (execution_id) WHERE orphan IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS leases (
    owner      TEXT PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    cancels    TEXT
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS halts (
    scope  TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor  TEXT NOT NULL,
    since  REAL NOT NULL,
    state  TEXT NOT NULL DEFAULT 'halted',
    cancel_orders INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, target)
) WITHOUT ROWID""",
    f"CREATE TABLE IF NOT EXISTS {_RISK_LIMITS}",
    f"CREATE TABLE IF NOT EXISTS {_TRIGGER_PROGRESS}",
    """CREATE TABLE IF NOT EXISTS audit (
    entry_id INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    scope    TEXT,
    target   TEXT,
    reason   TEXT NOT NULL,
    details  TEXT
)""",
    f"PRAGMA user_version = {DB_SCHEMA_VERSION}",
)
"""Run in order in one ``BEGIN IMMEDIATE`` transaction on every open (idempotent)."""

# Version 6 gains indexes only (_SCHEMA creates them); this one is created first without
# IF NOT EXISTS, so a file that already has it (one claiming an older version than it
# is) fails at once, as for version 5 below.
_MIGRATE_FROM_6: Final = (f"CREATE INDEX {_BY_STATUS}",)
# A new primary key means a new table: version 5's rows are copied (global limits, keyed
# by type). trigger_progress is created first, without IF NOT EXISTS: on a file that
# already has it (one claiming an older version than it is) the migration fails at once.
_MIGRATE_FROM_5: Final = (
    f"CREATE TABLE {_TRIGGER_PROGRESS}",
    "ALTER TABLE risk_limits RENAME TO risk_limits_v5",
    f"CREATE TABLE {_RISK_LIMITS}",
    "INSERT INTO risk_limits"
    " (limit_key, limit_type, threshold, direction, auto_halt, updated_at, updated_by)"
    " SELECT limit_type, limit_type, threshold, direction, auto_halt, updated_at, updated_by"
    " FROM risk_limits_v5",
    "DROP TABLE risk_limits_v5",
    *_MIGRATE_FROM_6,
)
_MIGRATE_FROM_4: Final = (
    "ALTER TABLE halts ADD COLUMN state TEXT NOT NULL DEFAULT 'halted'",
    "ALTER TABLE halts ADD COLUMN cancel_orders INTEGER NOT NULL DEFAULT 0",
    *_MIGRATE_FROM_5,
)
_MIGRATE_FROM_3: Final = (
    "ALTER TABLE executions ADD COLUMN owner TEXT",
    "ALTER TABLE executions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE executions ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
    *_MIGRATE_FROM_4,
)
_MIGRATIONS: Final = {
    3: _MIGRATE_FROM_3,
    4: _MIGRATE_FROM_4,
    5: _MIGRATE_FROM_5,
    6: _MIGRATE_FROM_6,
}
"""Run before :data:`_SCHEMA`, in its transaction, on a file of the version they are keyed
by (which :data:`_SCHEMA` then completes with any new tables, and marks current)."""


class Database(sqlite3.Connection):
    """The connection :func:`open_database` returns: an ``sqlite3.Connection`` whose
    :meth:`close` also stops its WAL checkpointer.

    SQLite's own automatic checkpoint runs inside the commit that crosses 1000 WAL
    frames, copying them into the database file and syncing it on the writer's
    time. Here it is off (``wal_autocheckpoint=0``) and a daemon thread with a
    connection of its own runs ``PRAGMA wal_checkpoint(PASSIVE)`` every 250 ms,
    which neither waits for nor blocks the writer. Once every 64 commits of a
    :class:`WriteTransaction`, the writer reads the log's length from the
    wal-index header (one ``pread``, no SQL):

    - 1000 frames or more not yet checkpointed: it wakes the thread early;
    - 16 MiB of frames or more (the thread has died, or back-to-back writes leave
      the log no idle moment to restart in, since a PASSIVE checkpoint cannot
      restart it under a busy writer): it runs ``PRAGMA wal_checkpoint(RESTART)``
      itself, so its next commit writes the log from the start again; SQLite then
      also truncates a larger file back to 16 MiB (``journal_size_limit``). A
      reader in another process still using the log makes that checkpoint wait
      (100 ms at most, not ``busy_timeout``: the event loop waits too) and give
      up; the writer then lets the log grow by another 16 MiB before trying again.

    ``":memory:"`` databases have no WAL and no thread. Closing the connection
    (or dropping it) stops and joins the thread first, so the last connection to
    close still checkpoints and removes the WAL file.
    """

    # __weakref__: the base class has no weak reference slot, and the finalizer needs one.
    __slots__ = ("__weakref__", "_checkpointer", "_stop_checkpointer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checkpointer: _Checkpointer | None = None
        self._stop_checkpointer: weakref.finalize[[], Database] | None = None

    def close(self) -> None:
        """Stop the checkpointer thread (if any), then close the connection."""
        if self._stop_checkpointer is not None:
            self._stop_checkpointer()
        self._checkpointer = None
        super().close()

    def _start_checkpointer(self, location: str, synchronous: str) -> None:
        ((page_size,),) = self.execute("PRAGMA page_size").fetchall()
        checkpointer = _Checkpointer(location, synchronous, page_size)
        self._checkpointer = checkpointer
        self._stop_checkpointer = weakref.finalize(self, checkpointer.stop)


class _Checkpointer:
    """The checkpointer thread of one :class:`Database` and the writer's WAL check."""

    __slots__ = (
        "_commits",
        "_conn",
        "_restart_at",
        "_restart_frames",
        "_shm",
        "_stopping",
        "_thread",
        "_wake",
    )

    def __init__(self, location: str, synchronous: str, page_size: int) -> None:
        self._commits = 0
        self._restart_frames = max(1, _WAL_HARD_LIMIT // page_size)
        self._restart_at = self._restart_frames
        self._stopping = False
        self._wake = threading.Event()
        self._conn = sqlite3.connect(
            location,
            isolation_level=None,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
        )
        try:
            # The checkpoint's fsyncs follow the same durability setting as the writer's.
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._shm = os.open(location + "-shm", os.O_RDONLY)
        except BaseException:
            self._conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"sqlite-checkpoint {location}", daemon=True
        )
        self._thread.start()

    def committed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer after each commit on ``conn``; never raises."""
        self._commits += 1
        if self._commits < _WAL_CHECK_COMMITS:
            return
        self._commits = 0
        try:
            frames, backfilled = _WAL_INDEX_HEADER.unpack(
                os.pread(self._shm, _WAL_INDEX_HEADER.size, 0)
            )
        except (OSError, struct.error):
            return
        if frames < self._restart_frames:
            self._restart_at = self._restart_frames
        elif frames >= self._restart_at:
            self._restart(conn, frames)
            return
        if frames - backfilled >= _WAL_WAKE_FRAMES:
            self._wake.set()

    def stop(self) -> None:
        """Stop the thread and wait for it (at most one checkpoint); idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        os.close(self._shm)

    def _restart(self, conn: sqlite3.Connection, frames: int) -> None:
        # The event loop waits on this: give readers a short grace, not busy_timeout.
        try:
            conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")
            try:
                busy, _, checkpointed = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            _log.warning("sqlite.wal_restart_failed", wal_frames=frames, error=str(exc))
            busy, checkpointed = 1, 0
        if not busy:
            self._restart_at = self._restart_frames
        elif checkpointed >= 0:
            # Readers still use the log: try again only once it has grown by as much.
            _log.warning("sqlite.wal_restart_busy", wal_frames=frames)
            self._restart_at = frames + self._restart_frames
        # checkpointed == -1: the thread was checkpointing; try again at the next check.

    def _run(self) -> None:
        conn, wake = self._conn, self._wake
        try:
            while True:
                wake.wait(_CHECKPOINT_INTERVAL_S)
                wake.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:
                    # Busy or locked (another process recovering the file): next time.
                    if exc.sqlite_errorcode & 0xFF not in _TRANSIENT_ERRORS:
                        raise
        except sqlite3.Error as exc:
            # The writer's hard bound still keeps the WAL in check without this thread.
            _log.warning("sqlite.checkpointer_stopped", error=str(exc))
        finally:
            conn.close()


def open_database(
    path: str | os.PathLike[str], *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> Database:
    """Open (creating if needed) the tradeflow database at ``path``.

    The connection runs in autocommit mode (``isolation_level=None``): every
    write goes through an explicit :class:`WriteTransaction`. Files use WAL
    journaling so readers in other processes never block the writer, with
    checkpoints off the commit path (see :class:`Database`; close the
    connection to stop its thread); ``":memory:"`` gets a private database.
    ``synchronous="FULL"`` also survives power loss at the cost of an fsync
    per commit.

    A file of layout version 3 to 6 is migrated to :data:`DB_SCHEMA_VERSION` first (one
    transaction: all of it or none of it). Raises ``ConfigurationError`` if
    ``synchronous`` is unknown, the file cannot use WAL, or its layout is neither
    :data:`DB_SCHEMA_VERSION` nor migrated to it (newer, an old development layout,
    or a migration that failed).
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ConfigurationError(
            f"invalid sqlite synchronous mode: expected 'NORMAL' or 'FULL', found {synchronous!r}"
        )
    location = os.fspath(path)
    try:
        return _open(location, synchronous)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(
            f"cannot open the state file {location!r}: {describe(exc)}"
        ) from exc


def _open(location: str, synchronous: str) -> Database:
    in_memory = location == ":memory:"
    if not in_memory:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    # Synchronous use from the event loop thread is deliberate: a commit is cheaper
    # than a thread hop (module docstring), and one thread needs no locking.
    conn = Database(location, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not in_memory:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise ConfigurationError(
                    f"sqlite database {location!r}: expected journal mode 'wal', found {mode!r}"
                )
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_HARD_LIMIT}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        _ensure_schema(conn, location)
        if not in_memory:
            conn._start_checkpointer(location, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, location: str) -> None:
    _check_version(conn, location)
    cursor = conn.cursor()
    cursor.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created or migrated the file since the first check:
        # only the version read under the write lock decides whether to migrate.
        version = _check_version(conn, location)
        if version in _MIGRATIONS:
            try:
                for statement in _MIGRATIONS[version]:
                    cursor.execute(statement)
            except sqlite3.Error as exc:
                raise ConfigurationError(
                    f"sqlite database {location!r}: expected schema version "
                    f"{DB_SCHEMA_VERSION}, found {version}, and migrating it failed: "
                    f"{describe(exc)}"
                ) from exc
        for statement in _SCHEMA:
            cursor.execute(statement)
        cursor.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            cursor.execute("ROLLBACK")
        raise


def _check_version(conn: sqlite3.Connection, location: str) -> int:
    """The file's layout version, if this code opens it (0: a new file); raises
    ``ConfigurationError`` for a newer one or an unmigrated development layout."""
    ((version,),) = conn.execute("PRAGMA user_version").fetchall()
    if version > DB_SCHEMA_VERSION:
        raise ConfigurationError(
            f"sqlite database {location!r}: expected schema version <= {DB_SCHEMA_VERSION}, "
            f"found {version} (written by a newer tradeflow)"
        )
    if 0 < version < _MIGRATES_FROM:
        raise ConfigurationError(
            f"sqlite database {location!r}: expected schema version {DB_SCHEMA_VERSION}, "
            f"found {version} (a development layout that is not migrated); move the file "
            "away to start a new one"
        )
    return int(version)


class WriteTransaction:
    """``with WriteTransaction(conn):`` runs the block in one ``BEGIN IMMEDIATE`` transaction.

    Commits when the block succeeds; rolls back and lets the error propagate
    otherwise. After a commit on a :class:`Database` it runs the writer's WAL
    check. Reusable (one instance per connection avoids an allocation per
    write) but not re-entrant.
    """

    __slots__ = ("_checkpointer", "_conn", "_cursor")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # A kept cursor: conn.execute creates and registers a cursor per call, which
        # costs about as much as running BEGIN or COMMIT itself.
        self._cursor = conn.cursor()
        self._checkpointer = conn._checkpointer if isinstance(conn, Database) else None

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock up front, so a concurrent writer in
        # another process waits on busy_timeout instead of failing mid-transaction.
        self._cursor.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self._cursor.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if self._checkpointer is not None:
                self._checkpointer.committed(self._conn)
        else:
            self._rollback()

    def _rollback(self) -> None:
        # A failed COMMIT may already have rolled back; a second ROLLBACK
        # would raise and hide the original error.
        if self._conn.in_transaction:
            self._cursor.execute("ROLLBACK")
