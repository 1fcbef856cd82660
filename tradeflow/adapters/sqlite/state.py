"""The embedded :class:`~tradeflow.ports.StateStore`: one SQLite file.

Open the connection with :func:`tradeflow.adapters.sqlite.database.open_database`;
the store uses it synchronously from the event loop thread (see that module for
why) and does not close it: whoever opened it does, after ``close()``.
SQLite errors propagate unchanged (after a rollback); so does the ``TypeError``
of a value the JSON policy of :mod:`tradeflow.adapters.sqlite.database` refuses
(an int beyond 64 bits, an object orjson does not serialize). Under that policy
NaN and infinities read back as ``None`` and non-string keys as strings.

The layout serves the write path. The executor writes about twice per execution,
and a write costs the encoding of its rows (about 15 us for the first write of a
10-node run, with one deflate of 6 us; its last write's row is small and not
deflated), a few microseconds per statement and for the transaction's locks, and one
WAL frame (two ``pwrite`` calls) for every B-tree page it changes; a new page also
rewrites the file header page and the parent page. A 10-node run takes about 11.5
frames over its two writes (the journal row, the record, and an entry in each of
the listing indexes, the status one moved at the end), so a write touches as few
pages as it can:

- ``batches`` is a journal: a :class:`StateBatch` adds one row holding its
  checkpoints and events (a batch mixing executions gets one row per run of
  events sharing their ids). ``body`` is a first byte, then one JSON document
  holding the events column by column and each output once:
  ``[[correlation_id, workflow_id, bot_id, strategy_id], first_sequence, origin,
  [type code, ...], [time, ...], [node_id, ...], [data, ...], [checkpoint, ...],
  irregular]``. The ids every event of the row shares are stored once (the
  correlation id as 0 when it is the execution id); a type is its index in
  :data:`_EVENT_TYPES`; sequences run on from the first and event ids are
  ``<execution_id>-<sequence>`` unless ``irregular`` is ``[sequences, ids]``; a time
  is an int of ticks after ``origin`` (the first event's time,
  :data:`_TICKS_PER_SECOND`) when that is exact, else the float (orjson writes
  floats in their shortest exact form: times read back bit for bit). A checkpoint
  is the index of the event whose data holds the very same outputs object (the
  completion of the same node at the same time, as the executor writes them), else
  ``[node_id, state code, time, outputs(, error, attempt)]``. A row of 640 bytes or
  more is deflated (first byte 2; plain: 3). Rows of schema 7's first encoding
  (first byte 1: deflated ``[ids, [[type, event_id, sequence, timestamp, node_id,
  data], ...], [[node_id, state, updated_at, outputs, error, attempt], ...]]``) and
  of schema 6 (that JSON as text) still read.
- A final ``result`` whose node outputs are the very objects the execution's latest
  checkpoints hold (what the executor writes, when this store wrote all of them) is
  stored by reference (first byte 4): its node ids and its other values, read back
  by folding the execution's checkpoints up to the row written with it. Any other
  result is stored whole (deflated, first byte 1).
- Journal rows have no index: an execution's rows lie between the
  ``first_batch`` and ``last_batch`` of its ``executions`` row, which the same
  write sets (the executor's first and last writes carry the record anyway;
  a write without it updates that one row, as an index entry would cost).
  Reading skips the rows of executions that ran meanwhile. A row whose
  execution has no ``executions`` row yet is flagged ``orphan`` and found
  through a partial index instead, which costs nothing for the other rows.
- :meth:`SQLiteStateStore.get_checkpoints` folds an execution's rows in order:
  the latest checkpoint of each node wins.
- An event's cursor is ``batch_id * 65536 + its index in the row``: an int that
  only grows across the whole file, so a tail in another process polls with the
  last cursor it saw. A prune deletes rows but never leaves the newest one deleted
  (it stays, emptied), so batch ids are never reused.
- ``executions`` has the indexes listing newest first, the idempotency key, each
  listing filter (status, workflow, and bot and strategy where set) and retention
  (end time) need: a filter, even one nothing matches, reads only its entries. Each
  costs an entry per execution (the status one is moved at the end of a run).
- A definition is stored once per distinct JSON text, keyed by digest, and the
  store remembers which definition objects it has written, so a bot running one
  workflow encodes its definition once, not once per execution. Definitions are
  treated as immutable once written. ``result`` is stored as given: it is what
  ``get_execution`` returns.

Ownership (:mod:`tradeflow.domain.ownership`, the rules in ``StateStore``) lives in
the same file, so one transaction both checks a fence and writes:

- ``leases`` has a row per owner (its latest lease) with its epoch and expiry in
  this store's clock (wall time, shared by every process on the machine); a lease
  is live while ``expires_at > now``. Epochs come from the ``counters`` row
  ``epoch``, incremented in the transaction that grants a lease.
- A fenced write adds one primary-key lookup of the lease to its transaction, and
  the execution statement it runs anyway carries the epoch condition: a row owned
  by another epoch is left unchanged, and the write raises ``LeaseLost`` and rolls
  back. ``BEGIN IMMEDIATE`` serializes the check and the write against every other
  process's claims and writes, so nothing lands between them.
- Every read joins the record's lease (a primary-key lookup) to tell whether its
  owner is live. :meth:`SQLiteStateStore.orphans` reads the status index's
  ``running`` and ``interrupted`` entries.
- A cancellation for a live owner waits in its lease row (``cancels``) until the
  next heartbeat takes it (acquiring the lease again keeps it), and sets the
  execution's ``cancel_requested``, which stays for whoever claims it next.
- A claim sets the status to ``running``: a claimer that dies before its first
  write leaves a running execution with a lapsed owner (a takeover next time),
  and a second claim meets a live owner.
- Revoking a lease (a halt barrier fencing an executor that did not acknowledge)
  ends it the way a lapse does: its expiry moves to now, so its executions are
  orphans, its next write or renewal raises ``LeaseLost`` and its pending cancels
  wait for its next lease.

The emergency halts live in the same file too (:mod:`tradeflow.adapters.sqlite.emergency`),
so a batch carrying an action's intent (``StateBatch.guard``) is checked against them in
its own transaction: after the fence, before anything is written, one statement looks the
covering halts up by primary key (at most four), and a refusal raises ``EmergencyHalted``
and rolls back. ``BEGIN IMMEDIATE`` orders that check against every halt committed by any
process: once a halt's commit returned, no intent it refuses commits. A batch without a
guard, or whose effect every state admits, does not read the halts at all.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import zlib
from collections.abc import Sequence
from contextlib import closing
from dataclasses import replace
from itertools import chain, count, groupby
from operator import attrgetter, itemgetter
from typing import Any, Final

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.adapters.sqlite.emergency import HALT_COLUMNS, halt_of_row
from tradeflow.domain.clock import Clock, SystemClock
from tradeflow.domain.codec import (
    MAX_EVENTS_PAGE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    from_json,
    to_json_bytes,
)
from tradeflow.domain.emergency import EmergencySnapshot, ScopeIds
from tradeflow.domain.errors import (
    ExecutionNotFound,
    InvalidRequest,
    LeaseLost,
    OwnerAlive,
    TradeflowError,
    UnavailableError,
    describe,
)
from tradeflow.domain.ownership import Claim, Fence, Heartbeat, Lease, OwnerInfo
from tradeflow.domain.records import (
    PRUNE_LIMIT_DEFAULT,
    PRUNE_LIMIT_MAX,
    ActionGuard,
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    PruneReport,
    StateBatch,
    unresolved_intent,
)
from tradeflow.domain.trading import TradingState

__all__ = ["SQLiteStateStore"]


_ROW_EVENTS: Final = 65536
"""Most events in one journal row; an event's cursor is ``batch_id * _ROW_EVENTS + index``."""
_KNOWN_DEFINITIONS: Final = 64
"""Definition objects remembered as written (a bot has a handful; a service sees many)."""

_EXECUTION_COLUMNS: Final = (
    "execution_id, workflow_id, bot_id, strategy_id, status, started_at, finished_at,"
    " correlation_id, request_id, error, definition, result, first_batch, last_batch,"
    " owner, epoch"
)
# Only the mutable columns change on conflict: the rest is fixed when the run starts.
# A journal range only widens: its first row stays, its last moves to this write's.
# The fence is the last two values (owner, epoch; NULL and 0 unfenced): a row of epoch
# 0 or the fence's takes them, a row owned by another epoch is left unchanged (no row
# changed: the write raises LeaseLost and rolls back).
_UPSERT_EXECUTION: Final = (
    f"INSERT INTO executions ({_EXECUTION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (execution_id) DO UPDATE SET status = excluded.status,"
    " finished_at = excluded.finished_at, error = excluded.error, result = excluded.result,"
    " first_batch = coalesce(first_batch, excluded.first_batch),"
    " last_batch = coalesce(excluded.last_batch, last_batch),"
    " owner = excluded.owner, epoch = excluded.epoch"
    " WHERE executions.epoch IN (0, excluded.epoch)"
)
_UPDATE_EXECUTION: Final = (
    "UPDATE executions SET status = ?2, finished_at = ?3, error = ?4, result = ?5,"
    " first_batch = coalesce(first_batch, ?6), last_batch = coalesce(?7, last_batch),"
    " owner = ?8, epoch = ?9 WHERE execution_id = ?1 AND epoch IN (0, ?9)"
)
# ?3, ?4: the fence. SET reads the row as it was, so an unowned row takes the fence and
# the epoch returned differs from the fence's only for a row owned by another epoch.
_EXTEND_RANGE: Final = (
    "UPDATE executions SET first_batch = coalesce(first_batch, ?1), last_batch = ?1,"
    " owner = iif(epoch = 0, ?3, owner), epoch = iif(epoch = 0, ?4, epoch)"
    " WHERE execution_id = ?2 RETURNING epoch"
)
_INSERT_DEFINITION: Final = (
    "INSERT INTO definitions (digest, definition) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING"
)
# The first parameter is the store's time: the owner is live if its lease joins.
_SELECT_EXECUTIONS: Final = (
    "SELECT e.execution_id, e.workflow_id, e.bot_id, e.strategy_id, e.status, e.started_at,"
    " e.finished_at, e.correlation_id, e.request_id, e.error, d.definition, e.result,"
    " e.owner, e.epoch, e.takeovers, l.owner IS NOT NULL"
    " FROM executions AS e JOIN definitions AS d ON d.digest = e.definition"
    " LEFT JOIN leases AS l ON l.owner = e.owner AND l.epoch = e.epoch AND l.expires_at > ?"
)
_SELECT_EXECUTION: Final = _SELECT_EXECUTIONS + " WHERE e.execution_id = ?"
_SELECT_BY_REQUEST: Final = _SELECT_EXECUTIONS + " WHERE e.request_id = ?"
# Interrupted: stopped, nobody runs it (a claim makes it running), whoever its owner.
_SELECT_ORPHANS: Final = (
    _SELECT_EXECUTIONS
    + " WHERE (e.status = 'interrupted' OR (e.status = 'running' AND l.owner IS NULL))"
    + " ORDER BY e.started_at, e.execution_id LIMIT ?"
)
_SELECT_OWNER: Final = "SELECT owner, epoch FROM executions WHERE execution_id = ?"

_SELECT_LEASE: Final = "SELECT epoch, expires_at FROM leases WHERE owner = ?"
_NEXT_EPOCH: Final = (
    "INSERT INTO counters (name, value) VALUES ('epoch', 1)"
    " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
)
# The owner's pending cancels stay: a process acquiring again (its lease lapsed in a
# stall) still gets them with its next heartbeat.
_PUT_LEASE: Final = (
    "INSERT INTO leases (owner, epoch, kind, host, pid, expires_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (owner) DO UPDATE SET epoch = excluded.epoch, kind = excluded.kind,"
    " host = excluded.host, pid = excluded.pid, expires_at = excluded.expires_at"
)
_SELECT_RENEWED: Final = "SELECT epoch, expires_at, cancels FROM leases WHERE owner = ?"
_RENEW_LEASE: Final = "UPDATE leases SET expires_at = ?, cancels = NULL WHERE owner = ?"
_RELEASE_LEASE: Final = "DELETE FROM leases WHERE owner = ? AND epoch = ?"
_SELECT_LIVE_LEASES: Final = "SELECT owner, epoch FROM leases WHERE expires_at > ? ORDER BY owner"
# ?3: the store's time. Only a live lease of that epoch lapses; its row (and its pending
# cancels) stays, as after a lapse.
_REVOKE_LEASE: Final = (
    "UPDATE leases SET expires_at = ?3 WHERE owner = ?1 AND epoch = ?2 AND expires_at > ?3"
)
# Ids hold no spaces (domain.limits.ID_CHARACTERS); an id already pending is not added
# again, so the list stays bounded by the executions the lease owns.
_ADD_CANCEL: Final = (
    "UPDATE leases SET cancels = coalesce(cancels || ' ', '') || ?1"
    " WHERE owner = ?2 AND epoch = ?3"
    " AND instr(' ' || coalesce(cancels, '') || ' ', ' ' || ?1 || ' ') = 0"
)
_SELECT_CLAIMED: Final = (
    "SELECT e.status, e.owner, e.epoch, e.takeovers, e.cancel_requested, l.kind, l.host, l.pid"
    " FROM executions AS e LEFT JOIN leases AS l"
    " ON l.owner = e.owner AND l.epoch = e.epoch AND l.expires_at > ?1"
    " WHERE e.execution_id = ?2"
)
# An ended execution claimed (a manual resume) runs again from a clean slate: its end,
# and a cancel it was asked before it ended, are history.
_CLAIM: Final = (
    "UPDATE executions SET owner = ?2, epoch = ?3, takeovers = ?4, status = 'running',"
    " finished_at = NULL, error = NULL, result = NULL,"
    " cancel_requested = iif(status IN ('running', 'interrupted'), cancel_requested, 0)"
    " WHERE execution_id = ?1"
)
_REQUEST_CANCEL: Final = "UPDATE executions SET cancel_requested = 1 WHERE execution_id = ?"
_CANCEL_ORPHAN: Final = (
    "UPDATE executions SET status = ?2, finished_at = ?3, error = ?4 WHERE execution_id = ?1"
)
_ORPHAN_CANCELLED: Final = "cancelled while no executor ran it"
_SYSTEM_CLOCK: Final = SystemClock()

# ?1 strategy, ?2 bot, ?3 workflow id: an id that is None (NULL) matches no halt. One
# primary-key search per scope; UNION ALL, as the keys differ (an OR would make SQLite
# build a temporary index to drop duplicates, twice the cost).
_SELECT_COVERING_HALTS: Final = " UNION ALL ".join(
    f"SELECT {HALT_COLUMNS} FROM halts WHERE scope = '{scope}' AND target = {target}"
    for scope, target in (
        ("global", "''"),
        ("strategy", "?1"),
        ("bot", "?2"),
        ("workflow", "?3"),
    )
)

_INSERT_BATCH: Final = "INSERT INTO batches (execution_id, body) VALUES (?, ?)"
_MARK_ORPHAN: Final = "UPDATE batches SET orphan = 1 WHERE batch_id = ?"
_SELECT_BATCHES: Final = (
    "SELECT batch_id, execution_id, body FROM batches WHERE batch_id >= ? ORDER BY batch_id"
)
# ?1 execution id, ?2 first batch id wanted. The range of the executions row, then the
# orphans (rows written before that row existed), in journal order.
_SELECT_EXECUTION_BATCHES: Final = (
    "SELECT b.batch_id, b.execution_id, b.body FROM executions AS e JOIN batches AS b"
    " ON b.batch_id BETWEEN max(e.first_batch, ?2) AND e.last_batch"
    " AND b.execution_id = e.execution_id WHERE e.execution_id = ?1"
    " UNION ALL SELECT batch_id, execution_id, body FROM batches"
    " WHERE orphan IS NOT NULL AND execution_id = ?1 AND batch_id >= ?2"
    " ORDER BY 1"
)


_SELECT_NEWEST_BATCH: Final = "SELECT max(batch_id) FROM batches"
# ?1 horizon, (?2, ?3) the (finished_at, rowid) last seen, ?4 how many. Oldest end first,
# on the executions_by_end index (its entries hold the rowid: the tie-break; the unary +
# keeps SQLite from preferring the status index).
_SELECT_ENDED: Final = (
    "SELECT rowid, finished_at, execution_id FROM executions"
    " WHERE finished_at < ?1 AND (finished_at, rowid) > (?2, ?3)"
    " AND +status IN ('completed', 'failed', 'halted', 'cancelled')"
    " ORDER BY finished_at, rowid LIMIT ?4"
)
_DELETE_EXECUTION_BATCHES: Final = (
    "DELETE FROM batches WHERE batch_id IN (SELECT b.batch_id FROM executions AS e"
    " JOIN batches AS b ON b.batch_id BETWEEN e.first_batch AND e.last_batch"
    " AND b.execution_id = e.execution_id WHERE e.execution_id = ?1)"
)
_DELETE_ORPHAN_BATCHES: Final = "DELETE FROM batches WHERE orphan IS NOT NULL AND execution_id = ?1"
_DELETE_EXECUTION: Final = "DELETE FROM executions WHERE rowid = ?"
# The newest row, if a prune deleted it, comes back empty: the next row then takes a
# larger id, as a cursor a tail holds expects.
_KEEP_NEWEST_BATCH: Final = (
    "INSERT INTO batches (batch_id, execution_id, body) VALUES (?, NULL, ?)"
    " ON CONFLICT (batch_id) DO NOTHING"
)


_PACKED: Final = b"\x01"
"""First byte of a packed value (:func:`_pack`); JSON starts with ``[`` or ``{``."""
_ZDICT: Final = (
    b'"execution_id","workflow_id","correlation_id","results":{"errors":{},"skipped":[],'
    b'"error":null,"started_at":"20","finished_at":"20","duration_ms":'
    b'"execution_halted","execution_failed","execution_cancelled","execution_interrupted",'
    b'"node_failed","node_skipped","node_retrying","failed","skipped","intent",'
    b'{"price":,"bid":,"ask":,"spread":,"timestamp":,"ok":true,"threshold":,"qty":'
    b'"order_id":","client_order_id":"status":"filled","filled_quantity":,"avg_price":'
    b',"reason":null,"denial":null},"triggered":true,"value":{"result":true},'
    b'["execution_started",null,1,{}],["node_started",{}],["node_completed",'
    b'{"outputs":{,"duration_ms":0.00}],"completed",null,1],["execution_completed",'
    b'{"status":"completed","duration_ms":'
)
"""The preset dictionary of :func:`_pack`: the words an execution's rows repeat, so a
small row compresses too. Packed rows depend on it: never change it (a new dictionary
needs a new first byte)."""


def _pack(encoded: bytes) -> bytes:
    """``encoded`` JSON, deflated against :data:`_ZDICT` behind the :data:`_PACKED` byte.
    A 4 KiB window and small memory level: a row is a few kB, and a larger setup costs
    more than the compression itself."""
    packer = zlib.compressobj(1, zlib.DEFLATED, -12, 4, zdict=_ZDICT)
    return _PACKED + packer.compress(encoded) + packer.flush()


def _unpack(stored: bytes | str | None) -> bytes | str | None:
    """The JSON of a stored value: packed (:func:`_pack`) or, from files of version 6 or
    older, as it was written."""
    if isinstance(stored, bytes) and stored[:1] == _PACKED:
        return zlib.decompressobj(-12, zdict=_ZDICT).decompress(memoryview(stored)[1:])
    return stored


def _packed_result(result: dict[str, Any] | None) -> bytes | None:
    """The ``result`` column: NULL for ``None`` or ``{}``, else packed JSON."""
    return _pack(to_json_bytes(result)) if result else None


_COMPACT: Final = b"\x02"
"""First byte of a journal row in the compact form (:func:`_journal_body`), deflated."""
_PLAIN: Final = b"\x03"
"""First byte of a journal row in the compact form, not deflated."""
_COMPACT_FORMS: Final = (_COMPACT, _PLAIN)
_DEFLATE_FROM: Final = 640
"""Compact rows of this many bytes or more are deflated. Deflating costs about 13 us
whatever the size (setting up and flushing the stream), and saves half of a row: on a small
row (an execution's last write) the bytes saved are not worth it."""
_EVENT_TYPES: Final = (
    "execution_started",
    "execution_completed",
    "execution_failed",
    "execution_halted",
    "execution_cancelled",
    "execution_interrupted",
    "node_started",
    "node_completed",
    "node_failed",
    "node_skipped",
    "node_retrying",
    "circuit_opened",
    "circuit_half_open",
    "circuit_closed",
    "emergency_halted",
    "emergency_resumed",
    "risk_limit_exceeded",
    "order_denied",
)
"""An event type's code in a compact row is its index here; stored rows depend on it:
append only. A type not listed is stored as its text."""
_EVENT_CODES: Final = {type_: code for code, type_ in enumerate(_EVENT_TYPES)}
_CHECKPOINT_STATES: Final = (
    CheckpointState.INTENT,
    CheckpointState.COMPLETED,
    CheckpointState.SKIPPED,
    CheckpointState.FAILED,
)
"""A checkpoint state's code in a compact row is its index here (append only)."""
_STATE_CODES: Final = {state.value: code for code, state in enumerate(_CHECKPOINT_STATES)}
_COMPLETED: Final = CheckpointState.COMPLETED
_SEQUENCE_SUFFIXES: Final = tuple(f"-{sequence}" for sequence in range(4096))
"""``-<sequence>``: an event id is derived from its execution id and sequence when it is
``<execution_id>-<sequence>``; checking that for each event costs less with these at hand
(a row of later sequences stores its ids)."""
_TICKS_PER_SECOND: Final = 4194304.0
"""2**22: doubles between 2**30 and 2**31 seconds (years 2004 to 2038) are whole ticks
apart, so an event's time is stored exactly as a small int of ticks after the row's
first time; a time that is not (another era, a test's) is stored as it is."""
_SECONDS_PER_TICK: Final = 1 / _TICKS_PER_SECOND
_COMPACT_ZDICT: Final = (
    b'"client_order_id":"order_id":"status":"filled","filled_quantity":"avg_price":'
    b'"reason":null,"denial":null},"price":"bid":"ask":"spread":"timestamp":'
    b'{"triggered":true,"value":{"result":true},{"ok":true,"value":"threshold":'
    b'{"qty":0.00{"status":"completed","duration_ms":0.00'
    b'},"duration_ms":0.00},{},{"outputs":{"'
    b",[0,6,7,6,7,6,7,6,7,6,7,6,7,6,7,6,7,6,7,6,7],[0,"
)
"""The preset dictionary of compact rows (:func:`_deflate`). Stored rows depend on it:
never change it (a new dictionary needs a new first byte)."""


def _deflate(encoded: bytes) -> bytes:
    """``encoded``, deflated against :data:`_COMPACT_ZDICT` (a 4 KiB window, as in
    :func:`_pack`)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, -12, 4, zdict=_COMPACT_ZDICT)
    return packer.compress(encoded) + packer.flush()


def _inflate(body: bytes) -> bytes:
    """The JSON of a compact row (inverse of :func:`_deflate` behind the first byte)."""
    return zlib.decompressobj(-12, zdict=_COMPACT_ZDICT).decompress(memoryview(body)[1:])


_REFERENCED: Final = b"\x04"
"""First byte of a final result stored by reference to the journal (:func:`_result_reference`)."""
_RESULT_KEYS: Final = (
    "status",
    "execution_id",
    "workflow_id",
    "correlation_id",
    "results",
    "errors",
    "skipped",
    "error",
    "started_at",
    "finished_at",
    "duration_ms",
)
"""The keys of the executor's result dict, in order: such a result is stored as a list."""

_Row = tuple[Any, ...]
_JournalRow = tuple[str | None, bytes]
_Reference = bytes
"""A final result stored by reference, encoded but for its journal bound
(:func:`_result_reference`)."""
_Prepared = tuple[
    tuple[str, _Row] | None, tuple[bytes, str] | None, list[_JournalRow], _Reference | None
]
"""What ``SQLiteStateStore._prepare`` encodes for a batch: its record statement and
values, the definition row to insert, its journal rows, its result by reference."""

# Slices of the records, one C call each: cheaper than attrgetter's field-by-field
# lookups, which the write path would pay for every event and checkpoint.
_event_ids = itemgetter(
    slice(Event._fields.index("correlation_id"), Event._fields.index("strategy_id") + 1)
)
"""``(correlation_id, execution_id, workflow_id, bot_id, strategy_id)``: consecutive fields."""
_event_fields = attrgetter("type", "event_id", "sequence", "timestamp", "node_id", "data")
_execution_fields = attrgetter(*_EXECUTION_COLUMNS.split(", ")[:10])
"""The record's fields named like its first 10 columns (``status`` binds as its text)."""
_checkpoint_execution = attrgetter("execution_id")
_checkpoint_fields = itemgetter(slice(1, None))
"""Every field of a checkpoint but its first, ``execution_id``."""


class SQLiteStateStore:
    """Executions, checkpoints, event history and leases in the tradeflow SQLite database.

    ``clock`` tells lease expiry (wall time, so every process on the machine agrees).
    """

    __slots__ = ("_clock", "_conn", "_definitions", "_live", "_txn", "_writer")

    def __init__(self, conn: sqlite3.Connection, *, clock: Clock = _SYSTEM_CLOCK) -> None:
        self._conn = conn
        self._clock = clock
        self._txn = WriteTransaction(conn)
        self._writer = conn.cursor()
        """Runs the write statements: a kept cursor saves ``conn.execute`` creating one."""
        self._live: dict[str, list[Sequence[Checkpoint]]] = {}
        """Executions this store inserted and that are not final yet: their later
        writes update only the mutable columns. Each keeps the checkpoints of the
        batches written since (of any execution: filtered when used), which a final
        result may refer to (:func:`_result_reference`)."""
        self._definitions: dict[int, tuple[dict[str, Any], bytes]] = {}
        """``id(definition)`` -> (definition, digest) of definitions already stored. The
        entry holds the object, so its id cannot be reused by another one meanwhile."""

    async def write(self, batch: StateBatch) -> None:
        """See the port; a refused fence raises ``LeaseLost``, and a guard the halts refuse
        ``EmergencyHalted`` (checked after the fence), with nothing written."""
        prepared = self._prepare(batch)
        # Everything is encoded before the transaction starts: the write lock, which
        # other processes wait on, is held only for the statements themselves.
        with self._txn:
            _apply(self._writer, batch, prepared, self._clock)
        self._written(batch, prepared)

    async def write_many(self, batches: Sequence[StateBatch]) -> list[TradeflowError | None]:
        """See the port: one transaction (one commit) for all of them, each batch in a
        savepoint of its own, so a batch refused (``LeaseLost``, ``EmergencyHalted``, a
        value JSON cannot encode or a constraint refuses: ``InvalidRequest``) is rolled
        back alone. A SQLite error other than a constraint (the file locked past the busy
        timeout, disk full...) rolls all of them back and raises ``UnavailableError``."""
        outcomes: list[TradeflowError | None] = [None] * len(batches)
        prepared: list[_Prepared | None] = []
        # A result refers to the checkpoints written before its batch was prepared: not
        # when an earlier batch of this call writes its execution too.
        touched: set[str | None] = set()
        for i, batch in enumerate(batches):
            execution = batch.execution
            refer = execution is None or execution.execution_id not in touched
            if execution is not None:
                touched.add(execution.execution_id)
            touched.update(checkpoint.execution_id for checkpoint in batch.checkpoints)
            try:
                prepared.append(self._prepare(batch, refer=refer))
            except TypeError as exc:
                outcomes[i] = InvalidRequest("batch", "values JSON can encode", describe(exc))
                prepared.append(None)
        writer = self._writer
        try:
            with self._txn:
                for i, (batch, ready) in enumerate(zip(batches, prepared, strict=True)):
                    if ready is None:
                        continue
                    writer.execute("SAVEPOINT batch")
                    try:
                        _apply(writer, batch, ready, self._clock)
                    except (TradeflowError, sqlite3.IntegrityError) as exc:
                        writer.execute("ROLLBACK TO batch")
                        outcomes[i] = (
                            exc
                            if isinstance(exc, TradeflowError)
                            else InvalidRequest(
                                "batch", "a batch the store's constraints admit", describe(exc)
                            )
                        )
                    writer.execute("RELEASE batch")
        except sqlite3.Error as exc:
            raise UnavailableError(f"sqlite: {describe(exc)}") from exc
        for batch, ready, outcome in zip(batches, prepared, outcomes, strict=True):
            if ready is not None and outcome is None:
                self._written(batch, ready)
        return outcomes

    async def prune(self, ended_before: float, *, limit: int = PRUNE_LIMIT_DEFAULT) -> PruneReport:
        """See the port. ``limit`` 0 (or less) means :data:`PRUNE_LIMIT_DEFAULT`, more
        than :data:`PRUNE_LIMIT_MAX` is that. One write transaction walks the ended
        executions oldest end first (the ``executions_by_end`` index), folds each one's
        checkpoints and removes it with its journal rows unless one is an unresolved
        intent: a claim (which makes an execution running) either committed before, and
        the execution is no longer a candidate, or waits for this transaction. The
        journal's newest row is never deleted, only emptied, so batch ids (event cursors)
        are never reused. Definitions stay (they are shared, and few)."""
        if not ended_before == ended_before:  # NaN
            raise InvalidRequest("ended_before", "a time in epoch seconds", ended_before)
        limit = PRUNE_LIMIT_DEFAULT if limit <= 0 else min(limit, PRUNE_LIMIT_MAX)
        writer = self._writer
        removed = kept = 0
        after: tuple[float, int] = (-math.inf, 0)
        with self._txn:
            (newest,) = writer.execute(_SELECT_NEWEST_BATCH).fetchone()
            while removed < limit:
                candidates = writer.execute(
                    _SELECT_ENDED, (ended_before, *after, limit - removed)
                ).fetchall()
                if not candidates:
                    break
                for rowid, finished_at, execution_id in candidates:
                    after = (finished_at, rowid)
                    if _has_unresolved_intent(writer, execution_id):
                        kept += 1
                        continue
                    writer.execute(_DELETE_EXECUTION_BATCHES, (execution_id,))
                    writer.execute(_DELETE_ORPHAN_BATCHES, (execution_id,))
                    writer.execute(_DELETE_EXECUTION, (rowid,))
                    removed += 1
            if newest is not None and removed:
                writer.execute(_KEEP_NEWEST_BATCH, (newest, _EMPTY_BODY))
        return PruneReport(removed=removed, kept=kept, more=removed >= limit)

    def _prepare(self, batch: StateBatch, *, refer: bool = True) -> _Prepared:
        """What :func:`_apply` writes for ``batch``, encoded (outside the transaction);
        its result by reference only if ``refer``."""
        execution = batch.execution
        record: tuple[str, _Row] | None = None
        definition: tuple[bytes, str] | None = None
        rows = _journal_rows(batch.events, batch.checkpoints)
        reference = None
        if execution is not None:
            known = self._live.get(execution.execution_id)
            if known is not None:
                if (
                    refer
                    and execution.result
                    and any(row[0] == execution.execution_id for row in rows)
                ):
                    reference = _result_reference(execution, known, batch.checkpoints)
                record = _UPDATE_EXECUTION, _execution_update_row(execution, reference is None)
            else:
                digest, definition = self._definition_digest(execution.definition)
                record = _UPSERT_EXECUTION, _execution_row(execution, digest)
        return record, definition, rows, reference

    def _written(self, batch: StateBatch, prepared: _Prepared) -> None:
        """Remember what ``batch`` wrote, once committed (what was rolled back must be
        written again)."""
        execution = batch.execution
        live = self._live
        if execution is not None:
            definition = prepared[1]
            if definition is not None:
                self._remember(execution.definition, definition[0])
            if execution.status is ExecutionStatus.RUNNING:
                live.setdefault(execution.execution_id, [])
            else:
                live.pop(execution.execution_id, None)
        checkpoints = batch.checkpoints
        if checkpoints:
            for execution_id in {checkpoints[0].execution_id, checkpoints[-1].execution_id}:
                known = live.get(execution_id)
                if known is not None:
                    known.append(checkpoints)
            if len(checkpoints) > 2:  # a batch may hold other executions in between
                for execution_id in set(map(_checkpoint_execution, checkpoints[1:-1])):
                    known = live.get(execution_id)
                    if known is not None and known[-1] is not checkpoints:
                        known.append(checkpoints)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        row = self._conn.execute(_SELECT_EXECUTION, (self._clock.time(), execution_id)).fetchone()
        if row is None:
            raise ExecutionNotFound(execution_id)
        return _execution_record(row, self._conn)

    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        row = self._conn.execute(_SELECT_BY_REQUEST, (self._clock.time(), request_id)).fetchone()
        return None if row is None else _execution_record(row, self._conn)

    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
        """See the port. Each filter has an index (``executions_by_*``); SQLite picks one."""
        where: list[str] = []
        params: list[Any] = [self._clock.time()]
        for condition, value in (
            ("e.workflow_id = ?", query.workflow_id),
            ("e.bot_id = ?", query.bot_id),
            ("e.strategy_id = ?", query.strategy_id),
            ("e.status = ?", query.status),
            ("e.started_at >= ?", query.started_after),
            ("e.started_at < ?", query.started_before),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        if query.page_token is not None:
            where.append("(e.started_at, e.execution_id) < (?, ?)")
            params.extend(decode_page_token(query.page_token))
        limit = max(1, min(query.limit, MAX_PAGE_SIZE))
        sql = _SELECT_EXECUTIONS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.started_at DESC, e.execution_id DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._conn.execute(sql, params).fetchall()
        records = tuple(_execution_record(row, self._conn) for row in rows[:limit])
        token = None
        if len(rows) > limit:
            last = records[-1]
            token = encode_page_token(last.started_at, last.execution_id)
        return ExecutionPage(executions=records, next_page_token=token)

    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        latest: dict[str, Checkpoint] = {}
        for _, _, body in self._conn.execute(_SELECT_EXECUTION_BATCHES, (execution_id, 0)):
            _fold_checkpoints(latest, execution_id, body)
        return dict(sorted(latest.items()))

    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = MAX_EVENTS_PAGE
    ) -> Sequence[tuple[int, Event]]:
        """See the port; a cursor is ``batch_id * 65536 + index`` (module docstring)."""
        limit = max(1, min(limit, MAX_EVENTS_PAGE))
        first_batch = after // _ROW_EVENTS
        if execution_id is None:
            rows = self._conn.execute(_SELECT_BATCHES, (first_batch,))
        else:
            rows = self._conn.execute(_SELECT_EXECUTION_BATCHES, (execution_id, first_batch))
        found: list[tuple[int, Event]] = []
        # Rows hold any number of events, so the query has no LIMIT: stop reading
        # once the page is full, and close the statement to end the read transaction.
        with closing(rows):
            for row in rows:
                found.extend(pair for pair in _row_events(*row) if pair[0] > after)
                if len(found) >= limit:
                    break
        return found[:limit]

    async def last_sequence(self, execution_id: str) -> int:
        """An execution numbers its events in the order it writes them, so this reads its
        journal rows newest first and stops at the first that holds events."""
        rows = self._conn.execute(_SELECT_EXECUTION_BATCHES + " DESC", (execution_id, 0))
        with closing(rows):
            for _, _, body in rows:
                events = _row_entries(execution_id, body)[0]
                if events:
                    return max(event.sequence for event in events)
        return 0

    async def acquire_lease(self, info: OwnerInfo, ttl: float) -> Lease:
        """See the port. Raises ``InvalidRequest`` (``ttl``) unless ttl is positive."""
        _check_ttl(ttl)
        writer = self._writer
        with self._txn:
            ((epoch,),) = writer.execute(_NEXT_EPOCH).fetchall()
            expires_at = self._clock.time() + ttl
            writer.execute(
                _PUT_LEASE, (info.owner, epoch, info.kind, info.host, info.pid, expires_at)
            )
        return Lease(info, epoch, ttl)

    async def renew_lease(self, lease: Lease) -> Heartbeat:
        _check_ttl(lease.ttl)
        owner, epoch = lease.info.owner, lease.epoch
        writer = self._writer
        with self._txn:
            now = self._clock.time()
            held = writer.execute(_SELECT_RENEWED, (owner,)).fetchone()
            why = _lease_problem(None if held is None else held[:2], epoch, now)
            if why is not None:
                raise LeaseLost(owner, epoch, None, why)
            writer.execute(_RENEW_LEASE, (now + lease.ttl, owner))
        cancels = held[2]
        return Heartbeat(tuple(cancels.split()) if cancels else ())

    async def release_lease(self, lease: Lease) -> None:
        with self._txn:
            self._writer.execute(_RELEASE_LEASE, (lease.info.owner, lease.epoch))

    async def live_leases(self) -> list[Fence]:
        """See :class:`~tradeflow.ports.LeaseRegistry`: the leases unexpired on the store
        clock, by owner."""
        rows = self._conn.execute(_SELECT_LIVE_LEASES, (self._clock.time(),)).fetchall()
        return [Fence(owner, epoch) for owner, epoch in rows]

    async def revoke_lease(self, fence: Fence) -> bool:
        """See :class:`~tradeflow.ports.LeaseRegistry`: the lease lapses now (module
        docstring); False unless it was live with that epoch."""
        with self._txn:
            now = self._clock.time()
            revoked = self._writer.execute(_REVOKE_LEASE, (fence.owner, fence.epoch, now))
        return bool(revoked.rowcount)

    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        """See the port: ``OwnerAlive`` if the execution is running under another live
        lease. The write lock makes it atomic across processes, and the claim sets the
        status to running: a second claim reads the first one's live lease and raises
        ``OwnerAlive``."""
        owner, epoch = lease.info.owner, lease.epoch
        writer = self._writer
        with self._txn:
            now = self._clock.time()
            why = _lease_problem(writer.execute(_SELECT_LEASE, (owner,)).fetchone(), epoch, now)
            if why is not None:
                raise LeaseLost(owner, epoch, execution_id, why)
            row = writer.execute(_SELECT_CLAIMED, (now, execution_id)).fetchone()
            if row is None:
                raise ExecutionNotFound(execution_id)
            status, held_by, held_epoch, takeovers, cancel, kind, host, pid = row
            _check_claimable(execution_id, ExecutionStatus(status), takeover=takeover)
            cancel = cancel and not ExecutionStatus(status).final
            running = status == ExecutionStatus.RUNNING
            if held_epoch == epoch:
                if not running:
                    writer.execute(_CLAIM, (execution_id, owner, epoch, takeovers))
                return Claim(
                    owner, takeover=False, takeovers=takeovers, cancel_requested=bool(cancel)
                )
            if running and kind is not None:
                raise OwnerAlive(execution_id, OwnerInfo(held_by, kind, host, pid).describe())
            # The same process reclaiming under a new epoch (its lease lapsed) did not die.
            died = running and held_epoch != 0 and held_by != owner
            takeovers += died
            writer.execute(_CLAIM, (execution_id, owner, epoch, takeovers))
        return Claim(held_by, takeover=died, takeovers=takeovers, cancel_requested=bool(cancel))

    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        """See the port; ``limit`` is clamped to 1..``MAX_PAGE_SIZE``. Scans the runs
        oldest first (module docstring)."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        rows = self._conn.execute(_SELECT_ORPHANS, (self._clock.time(), limit)).fetchall()
        return [_execution_record(row, self._conn) for row in rows]

    async def request_cancel(self, execution_id: str) -> ExecutionRecord:
        """See the port: an interrupted execution is an orphan, its owner live or not."""
        writer = self._writer
        with self._txn:
            now = self._clock.time()
            row = writer.execute(_SELECT_EXECUTION, (now, execution_id)).fetchone()
            if row is None:
                raise ExecutionNotFound(execution_id)
            record = _execution_record(row, self._conn)
            if record.status.final:
                return record
            # Interrupted: no owner runs it, whether or not its owner lives on.
            if record.owner_live and record.status is ExecutionStatus.RUNNING:
                writer.execute(_ADD_CANCEL, (execution_id, record.owner, record.epoch))
                writer.execute(_REQUEST_CANCEL, (execution_id,))
                return record
            cancelled = ExecutionStatus.CANCELLED
            writer.execute(_CANCEL_ORPHAN, (execution_id, cancelled.value, now, _ORPHAN_CANCELLED))
        return replace(record, status=cancelled, finished_at=now, error=_ORPHAN_CANCELLED)

    async def close(self) -> None:
        """Forget per-run caches; the connection stays open for its owner to close."""
        self._live.clear()
        self._definitions.clear()

    def _definition_digest(
        self, definition: dict[str, Any]
    ) -> tuple[bytes, tuple[bytes, str] | None]:
        """The digest of ``definition``, and the ``definitions`` row to insert unless
        this store has written that very object before."""
        known = self._definitions.get(id(definition))
        if known is not None and known[0] is definition:
            return known[1], None
        encoded = to_json_bytes(definition)
        digest = hashlib.blake2b(encoded, digest_size=16).digest()
        return digest, (digest, encoded.decode())

    def _remember(self, definition: dict[str, Any], digest: bytes) -> None:
        known = self._definitions
        if len(known) >= _KNOWN_DEFINITIONS:
            del known[next(iter(known))]
        known[id(definition)] = (definition, digest)


def _execution_row(r: ExecutionRecord, definition: bytes) -> _Row:
    """The first 12 values of :data:`_UPSERT_EXECUTION` (the journal range follows)."""
    return (*_execution_fields(r), definition, _packed_result(r.result))


def _execution_update_row(r: ExecutionRecord, result: bool = True) -> _Row:
    """The first 5 values of :data:`_UPDATE_EXECUTION` (the journal range follows); the
    result ``None`` unless ``result`` (:func:`_apply` then writes its reference)."""
    return (
        r.execution_id,
        r.status.value,
        r.finished_at,
        r.error,
        _packed_result(r.result) if result else None,
    )


def _result_reference(
    execution: ExecutionRecord,
    known: list[Sequence[Checkpoint]],
    checkpoints: Sequence[Checkpoint],
) -> _Reference | None:
    """The final result of ``execution``, by reference, if each of its node outputs is the
    very object the latest checkpoint of that node holds (``known``: the checkpoints this
    store wrote, then ``checkpoints``, this batch's); else ``None`` (the result is stored
    whole).

    The outputs are then stored once, in the journal: the result keeps the node ids, in
    order, and the rest of its values, its ids replaced by 0 where the record has the
    same; reading it folds the execution's checkpoints up to the batch that wrote it.
    """
    result = execution.result
    assert result is not None
    results = result.get("results")
    if type(results) is not dict or not results:
        return None
    execution_id = execution.execution_id
    written: dict[str, Any] = {}
    for checkpoint in chain.from_iterable((*known, checkpoints)):
        if checkpoint.execution_id == execution_id:
            outputs = checkpoint.outputs
            written[checkpoint.node_id] = (
                outputs if outputs and checkpoint.state == _COMPLETED else None
            )
    for node_id, outputs in results.items():
        current = written.get(node_id)
        if current is None or outputs is not current:
            return None
    template: list[Any] | dict[str, Any]
    if tuple(result) == _RESULT_KEYS:
        template = list(result.values())
        template[4] = None
        for index, own in (
            (1, execution_id),
            (2, execution.workflow_id),
            (3, execution.correlation_id),
        ):
            value = template[index]
            if value == own and type(value) is str:
                template[index] = 0
            elif type(value) is not str:
                template = {**result, "results": None}
                break
    else:
        template = {**result, "results": None}
    return to_json_bytes((list(results), template))


def _referenced_result(conn: sqlite3.Connection, row: _Row, stored: bytes) -> dict[str, Any]:
    """The result of a :data:`_SELECT_EXECUTIONS` row stored by reference
    (:func:`_result_reference`)."""
    last, nodes, template = from_json(stored[1:])
    execution_id = row[0]
    latest: dict[str, Checkpoint] = {}
    with closing(conn.execute(_SELECT_EXECUTION_BATCHES, (execution_id, 0))) as rows:
        for batch_id, _, body in rows:
            if batch_id > last:
                break
            _fold_checkpoints(latest, execution_id, body)
    results = {node_id: latest[node_id].outputs for node_id in nodes}
    if type(template) is dict:
        template["results"] = results
        return template
    for index, own in ((1, row[0]), (2, row[1]), (3, row[7])):
        if type(template[index]) is int:
            template[index] = own
    template[4] = results
    return dict(zip(_RESULT_KEYS, template, strict=True))


def _execution_record(row: _Row, conn: sqlite3.Connection) -> ExecutionRecord:
    """The record of a :data:`_SELECT_EXECUTIONS` row (``conn`` reads the journal of a
    result stored by reference)."""
    stored = row[11]
    if isinstance(stored, bytes) and stored[:1] == _REFERENCED:
        result = _referenced_result(conn, row, stored)
    else:
        result = from_json(_unpack(stored))
    return ExecutionRecord(
        execution_id=row[0],
        workflow_id=row[1],
        bot_id=row[2],
        strategy_id=row[3],
        status=ExecutionStatus(row[4]),
        started_at=row[5],
        finished_at=row[6],
        correlation_id=row[7],
        request_id=row[8],
        error=row[9],
        definition=from_json(row[10]),
        result=result,
        owner=row[12],
        epoch=row[13],
        takeovers=row[14],
        owner_live=bool(row[15]),
    )


def _check_claimable(execution_id: str, status: ExecutionStatus, *, takeover: bool) -> None:
    """Raise ``InvalidRequest`` unless an execution of ``status`` may be claimed: never a
    completed one, and for a takeover only an unfinished one."""
    if takeover and status.final:
        raise InvalidRequest(
            "execution_id",
            "an unfinished execution (running or interrupted)",
            f"{execution_id} ({status.value})",
        )
    if status is ExecutionStatus.COMPLETED:
        raise InvalidRequest(
            "execution_id", "an execution that did not complete", f"{execution_id} (completed)"
        )


def _check_ttl(ttl: float) -> None:
    if not 0 < ttl < math.inf:
        raise InvalidRequest("ttl", "a positive finite number of seconds", ttl)


def _lease_problem(held: _Row | None, epoch: int, now: float) -> str | None:
    """Why the lease of ``epoch`` is not live, given its owner's ``(epoch, expires_at)``
    row (``None``: the owner holds no lease); ``None`` if it is live."""
    if held is None:
        return "lapsed"
    held_epoch, expires_at = held
    if held_epoch != epoch:
        return f"replaced by epoch {held_epoch}"
    return None if expires_at > now else "lapsed"


def _admit(cursor: sqlite3.Cursor, batch: StateBatch, clock: Clock) -> None:
    """What a write checks under the write lock before it writes anything: ``LeaseLost``
    unless its fence (if any) is live, then ``EmergencyHalted`` unless the halts admit
    its guard (if any)."""
    if batch.fence is not None:
        owner, epoch = batch.fence
        # The time is read under the write lock: a lease that lapsed while this write
        # waited for the lock has lapsed.
        _check_fence(cursor, batch, owner, epoch, clock.time())
    if batch.guard is not None:
        _check_guard(cursor, batch.guard)


def _apply(cursor: sqlite3.Cursor, batch: StateBatch, prepared: _Prepared, clock: Clock) -> None:
    """Write ``batch`` (encoded by ``SQLiteStateStore._prepare``) inside the caller's
    transaction: admitted (:func:`_admit`), then its definition, journal rows and record."""
    record, definition, rows, reference = prepared
    execution = batch.execution
    own = None if execution is None else execution.execution_id
    owner, epoch = (None, 0) if batch.fence is None else batch.fence
    _admit(cursor, batch, clock)
    if definition is not None:
        cursor.execute(_INSERT_DEFINITION, definition)
    first, last = _insert_journal(cursor, rows, own, owner, epoch)
    if record is not None:
        sql, values = record
        if reference is not None:
            # The journal rows of the execution up to this batch's last hold the outputs
            # (_prepare refers only when this batch writes a row of the execution).
            assert last is not None
            values = (*values[:4], b"%b[%d,%b" % (_REFERENCED, last, reference[1:]))
        if not cursor.execute(sql, (*values, first, last, owner, epoch)).rowcount:
            raise _owned_elsewhere(cursor, own, owner, epoch)


def _has_unresolved_intent(cursor: sqlite3.Cursor, execution_id: str) -> bool:
    """Whether the latest checkpoint of some node of ``execution_id`` is an unresolved
    intent (:func:`~tradeflow.domain.records.unresolved_intent`)."""
    latest: dict[str, Checkpoint] = {}
    for _, _, body in cursor.execute(_SELECT_EXECUTION_BATCHES, (execution_id, 0)).fetchall():
        _fold_checkpoints(latest, execution_id, body)
    return any(map(unresolved_intent, latest.values()))


def _check_fence(
    cursor: sqlite3.Cursor, batch: StateBatch, owner: str, epoch: int, now: float
) -> None:
    """Raise ``LeaseLost`` unless the lease ``owner``/``epoch`` is live at ``now``."""
    why = _lease_problem(cursor.execute(_SELECT_LEASE, (owner,)).fetchone(), epoch, now)
    if why is not None:
        raise LeaseLost(owner, epoch, _batch_execution(batch), why)


def _check_guard(cursor: sqlite3.Cursor, guard: ActionGuard) -> None:
    """Raise ``EmergencyHalted`` unless the halts covering ``guard``'s scopes admit its
    effect (the domain's rule, on a snapshot of just those halts); ``UnavailableError`` for
    a halt row no tradeflow wrote. An effect the most restrictive state admits reads
    nothing."""
    if TradingState.HALTED.allows(guard.effect):
        return
    rows = cursor.execute(
        _SELECT_COVERING_HALTS, (guard.strategy_id, guard.bot_id, guard.workflow_id)
    ).fetchall()
    if not rows:
        return
    try:
        covering = EmergencySnapshot.of(0, map(halt_of_row, rows), ())
    except ValueError as exc:
        raise UnavailableError(describe(exc)) from exc
    covering.ensure_allowed(
        ScopeIds(guard.workflow_id, guard.bot_id, guard.strategy_id), guard.effect
    )


def _batch_execution(batch: StateBatch) -> str | None:
    """The execution a fenced batch writes for: its record's, else its first
    checkpoint's or event's."""
    if batch.execution is not None:
        return batch.execution.execution_id
    if batch.checkpoints:
        return batch.checkpoints[0].execution_id
    return batch.events[0].execution_id if batch.events else None


def _owned_elsewhere(
    cursor: sqlite3.Cursor, execution_id: str | None, owner: str | None, epoch: int
) -> LeaseLost:
    """The error for a write of ``execution_id`` (fenced by ``owner``/``epoch``, or not:
    ``None``/0) that its stored epoch refused."""
    held_by, held_epoch = cursor.execute(_SELECT_OWNER, (execution_id,)).fetchone()
    if owner is None:
        return LeaseLost(
            "",
            0,
            execution_id,
            f"the execution is owned by {held_by} (epoch {held_epoch})"
            " and the write carries no fence",
        )
    return LeaseLost(owner, epoch, execution_id, f"owned by {held_by} (epoch {held_epoch})")


def _journal_rows(events: Sequence[Event], checkpoints: Sequence[Checkpoint]) -> list[_JournalRow]:
    """The ``(execution_id, body)`` rows of one batch, in order.

    One row per run of consecutive events sharing their ids (one row, for what the
    executor writes), split every :data:`_ROW_EVENTS` events. An execution's
    checkpoints go in the first row of its events, or in a row of their own.
    """
    pending: dict[str, list[Checkpoint]] = {}
    for owner, same_owner in groupby(checkpoints, _checkpoint_execution):
        pending.setdefault(owner, []).extend(same_owner)
    rows: list[_JournalRow] = []
    for (correlation_id, execution_id, *rest), run in groupby(events, _event_ids):
        shared = (correlation_id, *rest)
        run_events = list(run)
        owned: Sequence[Checkpoint] = pending.pop(execution_id, ())
        for start in range(0, len(run_events), _ROW_EVENTS):
            chunk = run_events[start : start + _ROW_EVENTS]
            rows.append((execution_id, _journal_body(execution_id, shared, chunk, owned)))
            owned = ()
    for owner, owned in pending.items():
        rows.append((owner, _journal_body(owner, (None, None, None, None), (), owned)))
    return rows


def _insert_journal(
    cursor: sqlite3.Cursor, rows: list[_JournalRow], own: str | None, owner: str | None, epoch: int
) -> tuple[int | None, int | None]:
    """Insert ``rows``; returns the range of ``own``'s. Others widen theirs (under the
    fence ``owner``/``epoch``: raises ``LeaseLost`` for one owned by another epoch), or
    are orphans."""
    first = last = None
    for execution_id, body in rows:
        batch_id = cursor.execute(_INSERT_BATCH, (execution_id, body)).lastrowid
        if execution_id is None:
            continue
        if execution_id == own:
            if first is None:
                first = batch_id
            last = batch_id
            continue
        # fetchall: the UPDATE must run to its end (reset) before the COMMIT.
        stored = cursor.execute(_EXTEND_RANGE, (batch_id, execution_id, owner, epoch)).fetchall()
        if not stored:
            cursor.execute(_MARK_ORPHAN, (batch_id,))
        elif stored[0][0] != epoch:
            raise _owned_elsewhere(cursor, execution_id, owner, epoch)
    return first, last


def _journal_body(
    execution_id: str | None,
    shared: Sequence[str | None],
    events: Sequence[Event],
    checkpoints: Sequence[Checkpoint],
) -> bytes:
    """One journal row in the compact form (module docstring). ``shared``:
    ``(correlation_id, workflow_id, bot_id, strategy_id)``, the ids every event of the row
    has; ``execution_id``: the row's.

    Column by column, so most of the work runs in C (``zip``, ``map``): a loop over the
    events in Python costs more than the statements that store them.
    """
    correlation_id, *rest = shared
    header: Sequence[Any] = shared
    if correlation_id == execution_id and correlation_id is not None:
        header = (0, *rest)
    if not events:
        origin = checkpoints[0].updated_at if checkpoints else 0.0
        entries = _checkpoint_entries(checkpoints, origin, (), (), {})
        return _PLAIN + to_json_bytes((header, 0, origin, (), (), (), (), entries, None))
    # Events are 11-tuples: strict is moot.
    types, ids, sequences, times, _, _, _, _, _, node_ids, datas = zip(*events, strict=False)
    codes: list[Any] = list(map(_EVENT_CODES.get, types))
    if None in codes:
        codes = [type_ if code is None else code for code, type_ in zip(codes, types, strict=True)]
    origin = times[0]
    first = sequences[0]
    irregular = None
    end = first + len(sequences)
    if (
        type(first) is not int
        or sequences != tuple(range(first, end))
        or not 0 <= first < end <= len(_SEQUENCE_SUFFIXES)
        or ids != tuple(map(str(execution_id).__add__, _SEQUENCE_SUFFIXES[first:end]))
    ):
        irregular = (sequences, ids)
    # A checkpoint looks for its outputs in the last event of its node (its completion).
    last_event = dict(zip(node_ids, count()))
    entries = _checkpoint_entries(checkpoints, origin, times, datas, last_event)
    at = _ticks(times, origin)
    encoded = to_json_bytes((header, first, origin, codes, at, node_ids, datas, entries, irregular))
    if len(encoded) < _DEFLATE_FROM:
        return _PLAIN + encoded
    return _COMPACT + _deflate(encoded)


def _ticks(times: tuple[float, ...], origin: float) -> list[Any]:
    """``times`` as whole ticks after ``origin`` if every one is exactly that, else as they
    are (floats)."""
    ticks = [(time - origin) * _TICKS_PER_SECOND for time in times]
    if all(map(float.is_integer, ticks)) and [
        origin + tick * _SECONDS_PER_TICK for tick in ticks
    ] == list(times):
        return list(map(int, ticks))
    return list(map(float, times))


def _checkpoint_entries(
    checkpoints: Sequence[Checkpoint],
    origin: float,
    times: Sequence[float],
    datas: Sequence[Any],
    last_event: dict[str | None, int],
) -> list[Any]:
    """The checkpoints of a compact row: the index of the completion event that holds
    the same node, time and outputs object, else ``[node_id, state code, time, outputs]``
    (then ``error, attempt`` unless ``None, 1``)."""
    entries: list[Any] = []
    for _, node_id, state, updated_at, outputs, error, attempt in checkpoints:
        index = last_event.get(node_id)
        if (
            index is not None
            and outputs
            and times[index] == updated_at
            and state == _COMPLETED
            and error is None
            and attempt == 1
        ):
            data = datas[index]
            if type(data) is dict and data.get("outputs") is outputs:
                entries.append(index)
                continue
        ticks = (updated_at - origin) * _TICKS_PER_SECOND
        at = (
            int(ticks)
            if ticks.is_integer() and origin + ticks / _TICKS_PER_SECOND == updated_at
            else float(updated_at)
        )
        entry = [node_id, _STATE_CODES.get(state, state), at, outputs or None]
        if error is not None or attempt != 1:
            entry += (error, attempt)
        entries.append(entry)
    return entries


def _row_entries(
    execution_id: str | None, body: bytes | str, *, events_wanted: bool = True
) -> tuple[list[Event], list[Checkpoint]]:
    """The events and checkpoints of one journal row, in any of its encodings (no events
    from a compact row unless ``events_wanted``)."""
    if isinstance(body, bytes) and body[:1] in _COMPACT_FORMS:
        return _compact_entries(execution_id, body, events_wanted=events_wanted)
    (correlation_id, workflow_id, bot_id, strategy_id), events, checkpoints = from_json(
        _unpack(body)
    )
    ids = (correlation_id, execution_id, workflow_id, bot_id, strategy_id)
    return [
        Event(type_, event_id, sequence, float(timestamp), *ids, node_id, data or {})
        for type_, event_id, sequence, timestamp, node_id, data in events
    ], [
        Checkpoint(
            execution_id,  # type: ignore[arg-type]
            node_id,
            CheckpointState(state),
            float(updated_at),
            outputs or None,
            error,
            attempt,
        )
        for node_id, state, updated_at, outputs, error, attempt in checkpoints
    ]


def _compact_entries(
    execution_id: str | None, body: bytes, *, events_wanted: bool = True
) -> tuple[list[Event], list[Checkpoint]]:
    """:func:`_row_entries` of a row in the compact form (:func:`_journal_body`)."""
    encoded = _inflate(body) if body[:1] == _COMPACT else body[1:]
    shared, first, origin, codes, at, node_ids, datas, entries, irregular = from_json(encoded)
    origin = float(origin)
    if not events_wanted:
        return [], _compact_checkpoints(execution_id, origin, at, node_ids, datas, entries)
    correlation_id, workflow_id, bot_id, strategy_id = shared
    if type(correlation_id) is int:
        correlation_id = execution_id
    if irregular is None:
        sequences: Sequence[int] = range(first, first + len(codes))
        ids: Sequence[str] = [f"{execution_id}-{sequence}" for sequence in sequences]
    else:
        sequences, ids = irregular
    events = [
        Event(
            _EVENT_TYPES[code] if type(code) is int else code,
            event_id,
            sequence,
            origin + time / _TICKS_PER_SECOND if type(time) is int else float(time),
            correlation_id,
            execution_id,
            workflow_id,
            bot_id,
            strategy_id,
            node_id,
            data or {},
        )
        for code, event_id, sequence, time, node_id, data in zip(
            codes, ids, sequences, at, node_ids, datas, strict=True
        )
    ]
    return events, _compact_checkpoints(execution_id, origin, at, node_ids, datas, entries)


def _compact_checkpoints(
    execution_id: str | None,
    origin: float,
    at: list[Any],
    node_ids: list[str],
    datas: list[Any],
    entries: list[Any],
) -> list[Checkpoint]:
    """The checkpoints of a compact row, from its columns (:func:`_journal_body`)."""
    checkpoints: list[Checkpoint] = []
    for entry in entries:
        if type(entry) is int:
            time = at[entry]
            checkpoints.append(
                Checkpoint(
                    execution_id,  # type: ignore[arg-type]
                    node_ids[entry],
                    _COMPLETED,
                    origin + time / _TICKS_PER_SECOND if type(time) is int else float(time),
                    datas[entry]["outputs"] or None,
                )
            )
            continue
        node_id, state, time, outputs, *failure = entry
        checkpoints.append(
            Checkpoint(
                execution_id,  # type: ignore[arg-type]
                node_id,
                _CHECKPOINT_STATES[state] if type(state) is int else CheckpointState(state),
                origin + time / _TICKS_PER_SECOND if type(time) is int else float(time),
                outputs or None,
                *failure,
            )
        )
    return checkpoints


def _row_events(batch_id: int, execution_id: str | None, body: bytes) -> list[tuple[int, Event]]:
    """The ``(cursor, event)`` pairs of one journal row."""
    base = batch_id * _ROW_EVENTS
    return list(enumerate(_row_entries(execution_id, body)[0], base))


def _fold_checkpoints(latest: dict[str, Checkpoint], execution_id: str, body: bytes) -> None:
    """Apply one journal row's checkpoints to ``latest`` (node id -> checkpoint)."""
    for checkpoint in _row_entries(execution_id, body, events_wanted=False)[1]:
        latest[checkpoint.node_id] = checkpoint


_EMPTY_BODY: Final = _journal_body(None, (None, None, None, None), (), ())
"""A journal row with no events and no checkpoints (what a pruned newest row becomes)."""
