"""The embedded :class:`~tradeflow.infrastructure.ports.StateStore`: one SQLite file.

Open the connection with :func:`tradeflow.infrastructure.sqlite.open_database`;
the store uses it synchronously from the event loop thread (see that module for
why) and does not close it: whoever opened it does, after ``close()``.
SQLite errors propagate unchanged (after a rollback).
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Sequence
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
_SELECT_EXECUTIONS: Final = f"SELECT {_EXECUTION_COLUMNS} FROM executions"
_SELECT_EXECUTION: Final = _SELECT_EXECUTIONS + " WHERE execution_id = ?"
_SELECT_BY_REQUEST: Final = _SELECT_EXECUTIONS + " WHERE request_id = ?"

_CHECKPOINT_COLUMNS: Final = "execution_id, node_id, state, updated_at, outputs, error, attempt"
_UPSERT_CHECKPOINT: Final = (
    f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT (execution_id, node_id) DO UPDATE SET state = excluded.state,"
    " updated_at = excluded.updated_at, outputs = excluded.outputs, error = excluded.error,"
    " attempt = excluded.attempt"
)
_SELECT_CHECKPOINTS: Final = (
    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE execution_id = ? ORDER BY node_id"
)

_EVENT_COLUMNS: Final = (
    "event_id, type, sequence, timestamp, correlation_id, execution_id, workflow_id, bot_id,"
    " strategy_id, node_id, data"
)
_INSERT_EVENT: Final = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_SELECT_EVENTS: Final = f"SELECT cursor, {_EVENT_COLUMNS} FROM events WHERE cursor > ?"

_BAD_TOKEN: Final = "a page_token returned by a previous list_executions call"

_Row = tuple[Any, ...]


class SQLiteStateStore:
    """Executions, checkpoints and event history in the tradeflow SQLite database."""

    __slots__ = ("_conn", "_live", "_txn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._txn = WriteTransaction(conn)
        self._live: set[str] = set()
        """Executions this store inserted and that are not final yet: their later
        writes update only the mutable columns, skipping the definition's JSON."""

    async def write(self, batch: StateBatch) -> None:
        """Persist ``batch`` in one transaction; on any error nothing is kept and it re-raises."""
        execution = batch.execution
        conn = self._conn
        with self._txn:
            if execution is not None:
                if execution.execution_id in self._live:
                    conn.execute(_UPDATE_EXECUTION, _execution_update_row(execution))
                else:
                    conn.execute(_UPSERT_EXECUTION, _execution_row(execution))
            if batch.checkpoints:
                conn.executemany(_UPSERT_CHECKPOINT, map(_checkpoint_row, batch.checkpoints))
            if batch.events:
                conn.executemany(_INSERT_EVENT, map(_event_row, batch.events))
        if execution is not None:
            # Only after the commit: a rolled-back insert must be inserted again.
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
        ``page_token``) for a token this store did not issue.
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("workflow_id", query.workflow_id),
            ("bot_id", query.bot_id),
            ("strategy_id", query.strategy_id),
            ("status", query.status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.started_after is not None:
            where.append("started_at >= ?")
            params.append(query.started_after)
        if query.started_before is not None:
            where.append("started_at < ?")
            params.append(query.started_before)
        if query.page_token is not None:
            where.append("(started_at, execution_id) < (?, ?)")
            params.extend(_decode_page_token(query.page_token))
        limit = max(1, min(query.limit, MAX_PAGE_SIZE))
        sql = _SELECT_EXECUTIONS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, execution_id DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._conn.execute(sql, params).fetchall()
        records = tuple(_execution_record(row) for row in rows[:limit])
        token = None
        if len(rows) > limit:
            last = records[-1]
            token = _encode_page_token(last.started_at, last.execution_id)
        return ExecutionPage(executions=records, next_page_token=token)

    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        """The latest checkpoint of each node of ``execution_id`` (empty if none)."""
        rows = self._conn.execute(_SELECT_CHECKPOINTS, (execution_id,)).fetchall()
        return {row[1]: _checkpoint(row) for row in rows}

    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = 1000
    ) -> Sequence[tuple[int, Event]]:
        """``(cursor, event)`` pairs with cursor > ``after``, oldest first.

        Pass the last cursor back as ``after`` to poll for newer events (this
        is how a tail in another process follows a run). ``limit`` is clamped
        to 1..:data:`MAX_EVENTS_PAGE`.
        """
        limit = max(1, min(limit, MAX_EVENTS_PAGE))
        if execution_id is None:
            cursor = self._conn.execute(_SELECT_EVENTS + " ORDER BY cursor LIMIT ?", (after, limit))
        else:
            cursor = self._conn.execute(
                _SELECT_EVENTS + " AND execution_id = ? ORDER BY cursor LIMIT ?",
                (after, execution_id, limit),
            )
        return [(row[0], _event(row)) for row in cursor]

    async def close(self) -> None:
        """Forget per-run caches; the connection stays open for its owner to close."""
        self._live.clear()


def _execution_row(r: ExecutionRecord) -> _Row:
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
        to_json(r.definition),
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


def _checkpoint_row(c: Checkpoint) -> _Row:
    return (
        c.execution_id,
        c.node_id,
        c.state.value,
        c.updated_at,
        to_json_or_null(c.outputs),
        c.error,
        c.attempt,
    )


def _checkpoint(row: _Row) -> Checkpoint:
    return Checkpoint(
        execution_id=row[0],
        node_id=row[1],
        state=CheckpointState(row[2]),
        updated_at=row[3],
        outputs=from_json(row[4]),
        error=row[5],
        attempt=row[6],
    )


def _event_row(e: Event) -> _Row:
    return (
        e.event_id,
        e.type,
        e.sequence,
        e.timestamp,
        e.correlation_id,
        e.execution_id,
        e.workflow_id,
        e.bot_id,
        e.strategy_id,
        e.node_id,
        to_json_or_null(e.data),
    )


def _event(row: _Row) -> Event:
    """An event from a ``cursor, <event columns>`` row."""
    return Event(
        type=row[2],
        event_id=row[1],
        sequence=row[3],
        timestamp=row[4],
        correlation_id=row[5],
        execution_id=row[6],
        workflow_id=row[7],
        bot_id=row[8],
        strategy_id=row[9],
        node_id=row[10],
        data=from_json(row[11]) or {},
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
