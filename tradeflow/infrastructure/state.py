"""The embedded :class:`~tradeflow.infrastructure.ports.StateStore`: one SQLite file.

Open the connection with :func:`tradeflow.infrastructure.sqlite.open_database`;
the store uses it synchronously from the event loop thread (see that module for
why) and does not close it: whoever opened it does, after ``close()``.
SQLite errors propagate unchanged (after a rollback).

The layout serves the write path. The executor writes about twice per execution,
and a write costs the JSON it encodes (about 0.2 us per value on a small VM) plus
one page written to the WAL per B-tree it touches (about 4 us each).

- ``batches`` is a journal: a :class:`StateBatch` adds one row holding its
  checkpoints and events (a batch mixing executions gets one row per run of
  events sharing their ids). ``body`` is one JSON document,
  ``[[correlation_id, workflow_id, bot_id, strategy_id], [[type, event_id, node_id,
  data], ...], [[node_id, state, outputs, error], ...]]``, so ids every event of
  the row shares are stored once. ``numbers`` packs, little-endian, the event
  timestamps and checkpoint times (float64), then the event sequences and
  checkpoint attempts (int64): ``struct`` does that at a fraction of the cost of
  formatting numbers as JSON text.
- :meth:`SQLiteStateStore.get_checkpoints` folds an execution's rows in order:
  the latest checkpoint of each node wins.
- An event's cursor is ``batch_id * 65536 + its index in the row``: an int that
  only grows across the whole file, so a tail in another process polls with the
  last cursor it saw. Rows are never deleted, so batch ids are never reused
  (pruning old rows would need ``AUTOINCREMENT`` to keep that promise).
- ``executions`` has only the indexes listing needs: start time, workflow, and
  the idempotency key. Filtering by bot, strategy or status scans the start-time
  index: fine for one machine's embedded history (production state lives in
  Redis), and every index dropped is a page write saved on every execution.
- A definition is stored once per distinct JSON text, keyed by digest, and the
  store remembers which definition objects it has written, so a bot running one
  workflow encodes its definition once, not once per execution. Definitions are
  treated as immutable once written. ``result`` is stored as given: it is what
  ``get_execution`` returns, and costs about a tenth of an execution's writes.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import struct
from collections.abc import Sequence
from contextlib import closing
from itertools import groupby
from operator import attrgetter
from typing import Any, Final

from tradeflow.errors import ExecutionNotFound, InvalidRequest
from tradeflow.infrastructure.records import (
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.infrastructure.sqlite import WriteTransaction, from_json, to_json, to_json_or_null

__all__ = ["MAX_EVENTS_PAGE", "MAX_PAGE_SIZE", "SQLiteStateStore"]

MAX_PAGE_SIZE: Final = 1000
"""Most executions one :meth:`SQLiteStateStore.list_executions` call returns."""
MAX_EVENTS_PAGE: Final = 10_000
"""Most events one :meth:`SQLiteStateStore.read_events` call returns."""

_ROW_EVENTS: Final = 65536
"""Most events in one journal row; an event's cursor is ``batch_id * _ROW_EVENTS + index``."""
_KNOWN_DEFINITIONS: Final = 64
"""Definition objects remembered as written (a bot has a handful; a service sees many)."""

_EXECUTION_COLUMNS: Final = (
    "execution_id, workflow_id, bot_id, strategy_id, status, started_at, finished_at,"
    " correlation_id, request_id, error, definition, result"
)
# Only the mutable columns change on conflict: the rest is fixed when the run starts.
_UPSERT_EXECUTION: Final = (
    f"INSERT INTO executions ({_EXECUTION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (execution_id) DO UPDATE SET status = excluded.status,"
    " finished_at = excluded.finished_at, error = excluded.error, result = excluded.result"
)
_UPDATE_EXECUTION: Final = (
    "UPDATE executions SET status = ?, finished_at = ?, error = ?, result = ?"
    " WHERE execution_id = ?"
)
_INSERT_DEFINITION: Final = (
    "INSERT INTO definitions (digest, definition) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING"
)
_SELECT_EXECUTIONS: Final = (
    "SELECT e.execution_id, e.workflow_id, e.bot_id, e.strategy_id, e.status, e.started_at,"
    " e.finished_at, e.correlation_id, e.request_id, e.error, d.definition, e.result"
    " FROM executions AS e JOIN definitions AS d ON d.digest = e.definition"
)
_SELECT_EXECUTION: Final = _SELECT_EXECUTIONS + " WHERE e.execution_id = ?"
_SELECT_BY_REQUEST: Final = _SELECT_EXECUTIONS + " WHERE e.request_id = ?"

_INSERT_BATCH: Final = "INSERT INTO batches (execution_id, body, numbers) VALUES (?, ?, ?)"
_SELECT_BATCHES: Final = (
    "SELECT batch_id, execution_id, body, numbers FROM batches"
    " WHERE batch_id >= ? ORDER BY batch_id"
)
_SELECT_EXECUTION_BATCHES: Final = (
    "SELECT batch_id, execution_id, body, numbers FROM batches"
    " WHERE execution_id = ? AND batch_id >= ? ORDER BY batch_id"
)
_SELECT_CHECKPOINT_BATCHES: Final = (
    "SELECT body, numbers FROM batches WHERE execution_id = ? ORDER BY batch_id"
)

_BAD_TOKEN: Final = "a page_token returned by a previous list_executions call"

_Row = tuple[Any, ...]

_event_ids = attrgetter("execution_id", "correlation_id", "workflow_id", "bot_id", "strategy_id")
_event_fields = attrgetter("type", "event_id", "node_id", "data")
_event_timestamp = attrgetter("timestamp")
_event_sequence = attrgetter("sequence")
_checkpoint_execution = attrgetter("execution_id")
_checkpoint_fields = attrgetter("node_id", "state", "outputs", "error")
_checkpoint_time = attrgetter("updated_at")
_checkpoint_attempt = attrgetter("attempt")


class SQLiteStateStore:
    """Executions, checkpoints and event history in the tradeflow SQLite database."""

    __slots__ = ("_conn", "_definitions", "_live", "_txn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._txn = WriteTransaction(conn)
        self._live: set[str] = set()
        """Executions this store inserted and that are not final yet: their later
        writes update only the mutable columns."""
        self._definitions: dict[int, tuple[dict[str, Any], bytes]] = {}
        """``id(definition)`` -> (definition, digest) of definitions already stored. The
        entry holds the object, so its id cannot be reused by another one meanwhile."""

    async def write(self, batch: StateBatch) -> None:
        """Persist ``batch`` in one transaction; on any error nothing is kept and it re-raises."""
        execution = batch.execution
        record: tuple[str, _Row] | None = None
        definition: tuple[bytes, str] | None = None
        if execution is not None:
            if execution.execution_id in self._live:
                record = _UPDATE_EXECUTION, _execution_update_row(execution)
            else:
                digest, definition = self._definition_digest(execution.definition)
                record = _UPSERT_EXECUTION, _execution_row(execution, digest)
        rows = _journal_rows(batch.events, batch.checkpoints)
        # Everything is encoded before the transaction starts: the write lock, which
        # other processes wait on, is held only for the statements themselves.
        conn = self._conn
        with self._txn:
            if definition is not None:
                conn.execute(_INSERT_DEFINITION, definition)
            if record is not None:
                conn.execute(*record)
            if rows:
                conn.executemany(_INSERT_BATCH, rows)
        if execution is not None:
            # Only after the commit: what was rolled back must be written again.
            if definition is not None:
                self._remember(execution.definition, definition[0])
            if execution.status is ExecutionStatus.RUNNING:
                self._live.add(execution.execution_id)
            else:
                self._live.discard(execution.execution_id)

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """The record of ``execution_id``; raises ``ExecutionNotFound``."""
        row = self._conn.execute(_SELECT_EXECUTION, (execution_id,)).fetchone()
        if row is None:
            raise ExecutionNotFound(execution_id)
        return _execution_record(row)

    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        """The execution created for idempotency key ``request_id``, if any."""
        row = self._conn.execute(_SELECT_BY_REQUEST, (request_id,)).fetchone()
        return None if row is None else _execution_record(row)

    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
        """Executions matching ``query``, newest first (``started_at``, then ``execution_id``).

        ``started_after``/``started_before`` bound ``started_at`` as the
        half-open interval ``[after, before)``. ``limit`` is clamped to
        1..:data:`MAX_PAGE_SIZE`. Raises ``InvalidRequest`` (field
        ``page_token``) for a token this store did not issue. Only the workflow
        filter has an index of its own: the others scan newest first.
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("e.workflow_id", query.workflow_id),
            ("e.bot_id", query.bot_id),
            ("e.strategy_id", query.strategy_id),
            ("e.status", query.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.started_after is not None:
            where.append("e.started_at >= ?")
            params.append(query.started_after)
        if query.started_before is not None:
            where.append("e.started_at < ?")
            params.append(query.started_before)
        if query.page_token is not None:
            where.append("(e.started_at, e.execution_id) < (?, ?)")
            params.extend(_decode_page_token(query.page_token))
        limit = max(1, min(query.limit, MAX_PAGE_SIZE))
        sql = _SELECT_EXECUTIONS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.started_at DESC, e.execution_id DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._conn.execute(sql, params).fetchall()
        records = tuple(_execution_record(row) for row in rows[:limit])
        token = None
        if len(rows) > limit:
            last = records[-1]
            token = _encode_page_token(last.started_at, last.execution_id)
        return ExecutionPage(executions=records, next_page_token=token)

    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        """The latest checkpoint of each node of ``execution_id`` (empty if none), by node id."""
        latest: dict[str, Checkpoint] = {}
        for body, numbers in self._conn.execute(_SELECT_CHECKPOINT_BATCHES, (execution_id,)):
            _fold_checkpoints(latest, execution_id, body, numbers)
        return dict(sorted(latest.items()))

    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = 1000
    ) -> Sequence[tuple[int, Event]]:
        """``(cursor, event)`` pairs with cursor > ``after``, oldest first.

        Pass the last cursor back as ``after`` to poll for newer events (this
        is how a tail in another process follows a run). A cursor is
        ``batch_id * 65536 + index`` (see the module docstring): opaque to
        callers, but an int that grows with every event written to the file.
        ``limit`` is clamped to 1..:data:`MAX_EVENTS_PAGE`.
        """
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
        text = to_json(definition)
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        return digest, (digest, text)

    def _remember(self, definition: dict[str, Any], digest: bytes) -> None:
        known = self._definitions
        if len(known) >= _KNOWN_DEFINITIONS:
            del known[next(iter(known))]
        known[id(definition)] = (definition, digest)


def _execution_row(r: ExecutionRecord, definition: bytes) -> _Row:
    return (
        r.execution_id,
        r.workflow_id,
        r.bot_id,
        r.strategy_id,
        r.status.value,
        r.started_at,
        r.finished_at,
        r.correlation_id,
        r.request_id,
        r.error,
        definition,
        to_json_or_null(r.result),
    )


def _execution_update_row(r: ExecutionRecord) -> _Row:
    return (r.status.value, r.finished_at, r.error, to_json_or_null(r.result), r.execution_id)


def _execution_record(row: _Row) -> ExecutionRecord:
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
        result=from_json(row[11]),
    )


def _journal_rows(events: Sequence[Event], checkpoints: Sequence[Checkpoint]) -> list[_Row]:
    """The ``batches`` rows of one batch, in order.

    One row per run of consecutive events sharing their ids (one row, for what the
    executor writes), split every :data:`_ROW_EVENTS` events. An execution's
    checkpoints go in the first row of its events, or in a row of their own.
    """
    pending: dict[str, list[Checkpoint]] = {}
    for owner, same_owner in groupby(checkpoints, _checkpoint_execution):
        pending.setdefault(owner, []).extend(same_owner)
    rows: list[_Row] = []
    for ids, run in groupby(events, _event_ids):
        run_events = list(run)
        owned: Sequence[Checkpoint] = pending.pop(ids[0], ()) if ids[0] is not None else ()
        for start in range(0, len(run_events), _ROW_EVENTS):
            rows.append(_journal_row(ids, run_events[start : start + _ROW_EVENTS], owned))
            owned = ()
    for owner, owned in pending.items():
        rows.append(_journal_row((owner, None, None, None, None), (), owned))
    return rows


def _journal_row(ids: _Row, events: Sequence[Event], checkpoints: Sequence[Checkpoint]) -> _Row:
    """``(execution_id, body, numbers)``; ``ids`` are the events' shared ids, execution first."""
    body = to_json(
        (ids[1:], list(map(_event_fields, events)), list(map(_checkpoint_fields, checkpoints)))
    )
    count = len(events) + len(checkpoints)
    numbers = struct.pack(
        _numbers_format(count),
        *map(_event_timestamp, events),
        *map(_checkpoint_time, checkpoints),
        *map(_event_sequence, events),
        *map(_checkpoint_attempt, checkpoints),
    )
    return (ids[0], body, numbers)


def _numbers_format(count: int) -> str:
    """``count`` float64 (times) then ``count`` int64 (sequences, attempts), little-endian."""
    return f"<{count}d{count}q"


def _unpack_numbers(numbers: bytes) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The times and the integers of a row, both indexed events first, then checkpoints."""
    count = len(numbers) // 16
    values = struct.unpack(_numbers_format(count), numbers)
    return values[:count], values[count:]


def _row_events(
    batch_id: int, execution_id: str | None, body: str, numbers: bytes
) -> list[tuple[int, Event]]:
    """The ``(cursor, event)`` pairs of one journal row."""
    (correlation_id, workflow_id, bot_id, strategy_id), events, _ = from_json(body)
    times, integers = _unpack_numbers(numbers)
    base = batch_id * _ROW_EVENTS
    return [
        (
            base + i,
            Event(
                type_,
                event_id,
                integers[i],
                times[i],
                correlation_id,
                execution_id,
                workflow_id,
                bot_id,
                strategy_id,
                node_id,
                data or {},
            ),
        )
        for i, (type_, event_id, node_id, data) in enumerate(events)
    ]


def _fold_checkpoints(
    latest: dict[str, Checkpoint], execution_id: str, body: str, numbers: bytes
) -> None:
    """Apply one journal row's checkpoints to ``latest`` (node id -> checkpoint)."""
    _, events, checkpoints = from_json(body)
    times, integers = _unpack_numbers(numbers)
    for i, (node_id, state, outputs, error) in enumerate(checkpoints, len(events)):
        latest[node_id] = Checkpoint(
            execution_id,
            node_id,
            CheckpointState(state),
            times[i],
            outputs or None,
            error,
            integers[i],
        )


def _encode_page_token(started_at: float, execution_id: str) -> str:
    raw = to_json([started_at, execution_id]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_page_token(token: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        started_at, execution_id = from_json(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidRequest("page_token", _BAD_TOKEN, token) from exc
    if (
        isinstance(started_at, bool)
        or not isinstance(started_at, int | float)
        or not isinstance(execution_id, str)
    ):
        raise InvalidRequest("page_token", _BAD_TOKEN, token)
    return float(started_at), execution_id
