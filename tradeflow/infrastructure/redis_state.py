"""The production :class:`~tradeflow.infrastructure.ports.StateStore`: state in Redis.

Layout (``p`` is the prefix):

- ``p:execution:<id>`` hash: ``meta`` -> JSON ``[workflow_id, bot_id, strategy_id,
  started_at, correlation_id, request_id]`` (fixed when the run starts),
  ``definition`` -> JSON, ``state`` -> JSON ``[status, finished_at, error, result]``;
- ``p:checkpoints:<id>`` hash ``node_id`` -> JSON ``[state, updated_at, outputs,
  error, attempt]``;
- ``p:events`` stream (every event) and ``p:execution_events:<id>`` stream (one
  execution's), entry ids ``<cursor>-0`` from the ``p:event_cursor`` counter,
  field ``event`` -> JSON array of the :class:`Event` fields in order (the
  execution's stream also has field ``sequence``, first);
- ``p:index:all`` and ``p:index:{workflow,bot,strategy,status}:<value>`` sorted
  sets of ``"<start key>:<execution id>"``, where the start key is 16 hex digits
  that sort like ``started_at``. Every member scores 0 and ranges are
  lexicographic: that orders by ``(started_at, execution_id)`` exactly, so keyset
  pages break ties by id and concurrent inserts cannot shift them, which score
  ranges with offsets cannot promise;
- ``p:request:<request_id>`` -> the execution id created for that key.

``write`` is one ``MULTI``/``EXEC`` round trip. Event cursors are assigned
inside that transaction by a short Lua script (sent with ``EVAL``, so a
restarted server without the script cache cannot fail half a transaction).
The first write of an execution that carries a ``request_id`` also ``WATCH``es
the request key, so a second execution can never claim the same key.

Writing a batch twice stores it once: an event whose ``sequence`` is not above
the last one stored for its execution is skipped (events without an execution
are not deduplicated). So every operation is retried once after a connection
error (typically a pooled connection the server dropped when it restarted);
a second failure raises ``UnavailableError``.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from redis.typing import EncodableT, FieldT

from tradeflow.errors import (
    ConfigurationError,
    ExecutionNotFound,
    InvalidRequest,
    UnavailableError,
    describe,
)
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
from tradeflow.infrastructure.sqlite import from_json, to_json_bytes
from tradeflow.infrastructure.state import (
    MAX_EVENTS_PAGE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
)

__all__ = ["RedisStateStore"]

# KEYS: 1 cursor counter, 2 global stream, 2+i stream of event i's execution (KEYS[2]
# for none). ARGV: 1 approximate cap of the global stream ('' for none), then for
# event i: 2i its sequence, 2i+1 its JSON.
_APPEND_EVENTS: Final = """
local last = {}
for i = 1, (#ARGV - 1) / 2 do
  local stream, sequence, event = KEYS[2 + i], tonumber(ARGV[2 * i]), ARGV[2 * i + 1]
  local fresh = true
  if stream ~= KEYS[2] then
    if last[stream] == nil then
      local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      last[stream] = tail and tonumber(tail[2][2]) or -math.huge
    end
    fresh = sequence > last[stream]
    if fresh then last[stream] = sequence end
  end
  if fresh then
    local id = string.format('%d-0', redis.call('INCR', KEYS[1]))
    if ARGV[1] == '' then
      redis.call('XADD', KEYS[2], id, 'event', event)
    else
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, 'event', event)
    end
    if stream ~= KEYS[2] then
      redis.call('XADD', stream, id, 'sequence', ARGV[2 * i], 'event', event)
    end
  end
end
"""

_MAX_SCAN_CHUNK: Final = 1000
_START_KEY_LENGTH: Final = 16
_DOUBLE: Final = struct.Struct(">d")
_UINT64: Final = struct.Struct(">Q")
_ALL_BITS: Final = 0xFFFF_FFFF_FFFF_FFFF
_SIGN_BIT: Final = 1 << 63

_CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError)

P = ParamSpec("P")
T = TypeVar("T")

_StreamRows = list[tuple[bytes, dict[bytes, bytes]]]
"""What ``XRANGE`` returns on a bytes client."""
_Hash = dict[bytes, bytes]


def _retried(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run ``method`` once more after a connection error, then raise ``UnavailableError``.

    Safe because every store operation is idempotent; the usual cause is a pooled
    connection the server dropped (a restart) that the pool had not noticed yet.
    """

    @functools.wraps(method)
    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except _CONNECTION_ERRORS:
            pass
        try:
            return await method(*args, **kwargs)
        except _CONNECTION_ERRORS as exc:
            raise UnavailableError(f"redis state store: {describe(exc)}") from exc

    return retrying


class RedisStateStore:
    """Executions, checkpoints and event history in Redis, under ``prefix``.

    ``client`` must return bytes (the default, ``decode_responses=False``) and
    stays its owner's to close. ``max_events`` caps the global event stream
    (approximately; per-execution streams are never trimmed); ``None`` keeps all.
    """

    __slots__ = ("_client", "_events_cap", "_live", "_p")

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "tradeflow", max_events: int | None = None
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "redis client for the state store: expected decode_responses=False, found True"
            )
        self._client = client
        self._p = f"{prefix}:"
        self._events_cap = "" if max_events is None else str(max_events)
        self._live: set[str] = set()
        """Executions this store created and that are not final yet: their later
        writes update only the ``state`` field and the status index."""

    @_retried
    async def write(self, batch: StateBatch) -> None:
        """Persist ``batch`` in one transaction: all of it or none of it.

        Raises ``InvalidRequest`` (field ``request_id``) when another execution
        already holds the execution's ``request_id``; nothing is written then.
        """
        execution = batch.execution
        live = execution is not None and execution.execution_id in self._live
        if execution is not None and execution.request_id is not None and not live:
            await self._write_claiming(batch, execution.execution_id, execution.request_id)
        else:
            pipe = self._client.pipeline(transaction=True)
            self._queue(pipe, batch, live=live)
            await pipe.execute()
        if execution is not None:
            if execution.status is ExecutionStatus.RUNNING:
                self._live.add(execution.execution_id)
            else:
                self._live.discard(execution.execution_id)

    @_retried
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """The record of ``execution_id``; raises ``ExecutionNotFound``."""
        raw = cast(_Hash, await self._client.hgetall(self._p + "execution:" + execution_id))
        if not raw:
            raise ExecutionNotFound(execution_id)
        return _record(execution_id, raw)

    @_retried
    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        """The execution created for idempotency key ``request_id``, if any."""
        owner = cast(bytes | None, await self._client.get(self._p + "request:" + request_id))
        if owner is None:
            return None
        try:
            return await self.get_execution(owner.decode())
        except ExecutionNotFound:
            return None

    @_retried
    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
        """Executions matching ``query``, newest first (``started_at``, then ``execution_id``).

        ``started_after``/``started_before`` bound ``started_at`` as the
        half-open interval ``[after, before)``. ``limit`` is clamped to
        1..``MAX_PAGE_SIZE``. Raises ``InvalidRequest`` (field ``page_token``)
        for a token this store did not issue.
        """
        limit = max(1, min(query.limit, MAX_PAGE_SIZE))
        upper = "+"
        if query.started_before is not None:
            upper = "(" + _start_key(query.started_before)
        if query.page_token is not None:
            after_token = "(" + _member(*decode_page_token(query.page_token))
            upper = after_token if upper == "+" else min(upper, after_token)
        lower = "-" if query.started_after is None else "[" + _start_key(query.started_after)
        index = await self._index_for(query)
        found: list[ExecutionRecord] = []
        chunk = limit + 1
        while len(found) <= limit:
            members = cast(
                list[bytes],
                await self._client.zrevrangebylex(index, upper, lower, start=0, num=chunk),
            )
            if not members:
                break
            for record in await self._load([m[_START_KEY_LENGTH + 1 :] for m in members]):
                if record is not None and _matches(record, query):
                    found.append(record)
            if len(members) < chunk:
                break
            upper = "(" + members[-1].decode()
            chunk = min(chunk * 2, _MAX_SCAN_CHUNK)
        records = tuple(found[:limit])
        token = None
        if len(found) > limit:
            token = encode_page_token(records[-1].started_at, records[-1].execution_id)
        return ExecutionPage(executions=records, next_page_token=token)

    @_retried
    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        """The latest checkpoint of each node of ``execution_id`` (empty if none)."""
        raw = cast(_Hash, await self._client.hgetall(self._p + "checkpoints:" + execution_id))
        checkpoints = {}
        for node, payload in raw.items():
            state, updated_at, outputs, error, attempt = from_json(payload)
            node_id = node.decode()
            checkpoints[node_id] = Checkpoint(
                execution_id, node_id, CheckpointState(state), updated_at, outputs, error, attempt
            )
        return checkpoints

    @_retried
    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = 1000
    ) -> Sequence[tuple[int, Event]]:
        """``(cursor, event)`` pairs with cursor > ``after``, oldest first.

        Cursors are global (the same for an event whether read with or without
        ``execution_id``); pass the last one back as ``after`` to poll for newer
        events. ``limit`` is clamped to 1..``MAX_EVENTS_PAGE``.
        """
        key = self._p + ("events" if execution_id is None else "execution_events:" + execution_id)
        rows = cast(
            _StreamRows,
            await self._client.xrange(
                key, min=f"{max(after, 0) + 1}-0", count=max(1, min(limit, MAX_EVENTS_PAGE))
            ),
        )
        return [
            (int(entry_id.partition(b"-")[0]), Event(*from_json(fields[b"event"])))
            for entry_id, fields in rows
        ]

    async def close(self) -> None:
        """Forget per-run caches; the client stays open for its owner to close."""
        self._live.clear()

    async def _write_claiming(self, batch: StateBatch, execution_id: str, request_id: str) -> None:
        key = self._p + "request:" + request_id
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    owner = cast(bytes | None, await pipe.get(key))
                    if owner is not None and owner.decode() != execution_id:
                        raise InvalidRequest(
                            "request_id",
                            "an idempotency key no other execution holds"
                            f" (execution {owner.decode()!r} holds it)",
                            request_id,
                        )
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    pipe.set(key, execution_id)
                    self._queue(pipe, batch, live=False)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # the key changed under us: look again

    def _queue(self, pipe: Pipeline, batch: StateBatch, *, live: bool) -> None:
        """Queue the commands of ``batch`` (JSON errors raise here, before anything is sent)."""
        p = self._p
        execution = batch.execution
        if execution is not None:
            self._queue_execution(pipe, execution, live=live)
        if batch.checkpoints:
            by_execution: dict[str, dict[FieldT, EncodableT]] = {}
            for c in batch.checkpoints:
                by_execution.setdefault(c.execution_id, {})[c.node_id] = to_json_bytes(
                    [c.state.value, c.updated_at, c.outputs, c.error, c.attempt]
                )
            for execution_id, mapping in by_execution.items():
                pipe.hset(p + "checkpoints:" + execution_id, mapping=mapping)
        if batch.events:
            stream = p + "events"
            keys = [p + "event_cursor", stream]
            args: list[EncodableT] = [self._events_cap]
            for event in batch.events:
                owner = event.execution_id
                keys.append(stream if owner is None else p + "execution_events:" + owner)
                args += (str(event.sequence), to_json_bytes(tuple(event)))
            pipe.eval(_APPEND_EVENTS, len(keys), *keys, *args)

    def _queue_execution(self, pipe: Pipeline, r: ExecutionRecord, *, live: bool) -> None:
        p = self._p
        status = r.status
        state = to_json_bytes([status.value, r.finished_at, r.error, r.result])
        member = _member(r.started_at, r.execution_id)
        if live:
            # Live executions are running: only a final status moves the index.
            pipe.hset(p + "execution:" + r.execution_id, "state", state)
            if status is not ExecutionStatus.RUNNING:
                pipe.zrem(p + "index:status:running", member)
                pipe.zadd(p + "index:status:" + status.value, {member: 0})
            return
        meta = [
            r.workflow_id,
            r.bot_id,
            r.strategy_id,
            r.started_at,
            r.correlation_id,
            r.request_id,
        ]
        pipe.hset(
            p + "execution:" + r.execution_id,
            mapping={
                "meta": to_json_bytes(meta),
                "definition": to_json_bytes(r.definition),
                "state": state,
            },
        )
        for other in ExecutionStatus:
            if other is not status:
                pipe.zrem(p + "index:status:" + other.value, member)
        for index in (
            "index:all",
            "index:workflow:" + r.workflow_id,
            None if r.bot_id is None else "index:bot:" + r.bot_id,
            None if r.strategy_id is None else "index:strategy:" + r.strategy_id,
            "index:status:" + status.value,
        ):
            if index is not None:
                pipe.zadd(p + index, {member: 0})

    async def _index_for(self, query: ExecutionQuery) -> str:
        """The smallest index that covers one of the query's filters."""
        p = self._p
        candidates = [
            p + name + value
            for name, value in (
                ("index:workflow:", query.workflow_id),
                ("index:bot:", query.bot_id),
                ("index:strategy:", query.strategy_id),
                ("index:status:", None if query.status is None else query.status.value),
            )
            if value is not None
        ]
        if not candidates:
            return p + "index:all"
        if len(candidates) == 1:
            return candidates[0]
        pipe = self._client.pipeline(transaction=False)
        for key in candidates:
            pipe.zcard(key)
        sizes = await pipe.execute()
        return min(zip(sizes, candidates, strict=True))[1]

    async def _load(self, execution_ids: list[bytes]) -> list[ExecutionRecord | None]:
        pipe = self._client.pipeline(transaction=False)
        for execution_id in execution_ids:
            pipe.hgetall(self._p.encode() + b"execution:" + execution_id)
        raws = await pipe.execute()
        return [
            _record(execution_id.decode(), raw) if raw else None
            for execution_id, raw in zip(execution_ids, raws, strict=True)
        ]


def _record(execution_id: str, raw: _Hash) -> ExecutionRecord:
    workflow_id, bot_id, strategy_id, started_at, correlation_id, request_id = from_json(
        raw[b"meta"]
    )
    status, finished_at, error, result = from_json(raw[b"state"])
    return ExecutionRecord(
        execution_id=execution_id,
        workflow_id=workflow_id,
        status=ExecutionStatus(status),
        started_at=started_at,
        definition=from_json(raw[b"definition"]),
        correlation_id=correlation_id,
        bot_id=bot_id,
        strategy_id=strategy_id,
        finished_at=finished_at,
        error=error,
        result=result,
        request_id=request_id,
    )


def _matches(record: ExecutionRecord, query: ExecutionQuery) -> bool:
    return (
        (query.workflow_id is None or record.workflow_id == query.workflow_id)
        and (query.bot_id is None or record.bot_id == query.bot_id)
        and (query.strategy_id is None or record.strategy_id == query.strategy_id)
        and (query.status is None or record.status is query.status)
    )


def _start_key(started_at: float) -> str:
    """16 hex digits whose string order is the numeric order of ``started_at``."""
    # + 0.0 turns -0.0 into 0.0, which compares equal to it.
    (bits,) = _UINT64.unpack(_DOUBLE.pack(float(started_at) + 0.0))
    # IEEE 754 bits sort like the numbers once positives get the sign bit set
    # and negatives get every bit flipped.
    return f"{bits ^ _ALL_BITS if bits & _SIGN_BIT else bits | _SIGN_BIT:016x}"


def _member(started_at: float, execution_id: str) -> str:
    return f"{_start_key(started_at)}:{execution_id}"
