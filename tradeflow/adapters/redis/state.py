"""The production :class:`~tradeflow.ports.StateStore`: state in Redis.

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

``write`` is one ``EVALSHA`` of a Lua script: nothing runs in between its
commands, and its one refusal, a ``request_id`` another execution holds, is
decided before its first write, so the record and its index moves, the
checkpoints and the events with their cursors land together or not at all.
Python packs one command and parses one reply (redis-py loads the script again
when a restarted server lost its cache). Indexes move only on a status change,
out of the index of the status stored before: a brand-new execution is only
added.

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

from tradeflow.adapters.redis.connection import CONNECTION_ERRORS, reconnecting
from tradeflow.domain.codec import (
    MAX_EVENTS_PAGE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    from_json,
    to_json_bytes,
)
from tradeflow.domain.errors import (
    ConfigurationError,
    ExecutionNotFound,
    InvalidRequest,
    UnavailableError,
    describe,
)
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)

__all__ = ["RedisStateStore"]

# One write (see the module docstring). Keys are built here from the prefix, so the store
# needs a standalone Redis (as MULTI over these keys did).
# ARGV[1]: JSON [prefix, stream cap ('' for none), record, owners, checkpoints, events]:
#   record: false, or [execution id, index member, status, full, indexes, request id or false]
#     (full: this store's first write of it, which also stores meta and definition and
#     joins the indexes);
#   owners: the execution ids the checkpoints and events belong to, each once;
#   checkpoints: flat [owner, node id, ...]; events: flat [owner or 0, sequence, ...],
#     owners as positions in owners (flat and deduplicated: cjson decodes this per write).
# ARGV[2]: the JSON texts to store, newline-separated (compact JSON never holds a raw
#   newline): the record's (meta, definition and state if full, else state), then one per
#   checkpoint, then one per event.
# Returns nil, or the execution holding the record's request id (then nothing is written).
_WRITE: Final = r"""
local p, cap, record, owners, checkpoints, events = unpack(cjson.decode(ARGV[1]))
local texts, at = ARGV[2], 1
local function take()
  local stop = string.find(texts, '\n', at, true) or #texts + 1
  local text = string.sub(texts, at, stop - 1)
  at = stop + 1
  return text
end
if record then
  local id, member, status, full = record[1], record[2], record[3], record[4]
  local key = p .. 'execution:' .. id
  if full and record[6] then
    local claim = p .. 'request:' .. record[6]
    local holder = redis.call('GET', claim)
    if holder and holder ~= id then return holder end
    redis.call('SET', claim, id)
  end
  -- The status is the first element of the stored state: a plain word, never escaped.
  local stored = redis.call('HGET', key, 'state')
  local was = stored and string.match(stored, '^%["([^"]*)"')
  if full then
    redis.call('HSET', key, 'meta', take(), 'definition', take(), 'state', take())
    for _, index in ipairs(record[5]) do redis.call('ZADD', p .. index, 0, member) end
  else
    redis.call('HSET', key, 'state', take())
  end
  if was ~= status then
    if was then redis.call('ZREM', p .. 'index:status:' .. was, member) end
    redis.call('ZADD', p .. 'index:status:' .. status, 0, member)
  end
end
local fields = {}
for i = 1, #checkpoints, 2 do
  local owner = checkpoints[i]
  local flat = fields[owner] or {}
  fields[owner] = flat
  flat[#flat + 1] = checkpoints[i + 1]
  flat[#flat + 1] = take()
end
for owner, flat in pairs(fields) do
  local key = p .. 'checkpoints:' .. owners[owner]
  -- In slices: unpack() fails past the Lua stack's few thousand slots.
  for i = 1, #flat, 1000 do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat)))
  end
end
-- An event not above the last sequence stored for its execution is stored already.
local streams, last, n, owner_of, sequence_of, body_of = {}, {}, 0, {}, {}, {}
for i = 1, #events, 2 do
  local owner, sequence, body = events[i], events[i + 1], take()
  if owner > 0 and not streams[owner] then
    streams[owner] = p .. 'execution_events:' .. owners[owner]
    local tail = redis.call('XREVRANGE', streams[owner], '+', '-', 'COUNT', 1)[1]
    last[owner] = tail and tonumber(tail[2][2]) or -math.huge
  end
  if owner == 0 or tonumber(sequence) > last[owner] then
    if owner > 0 then last[owner] = tonumber(sequence) end
    n = n + 1
    owner_of[n], sequence_of[n], body_of[n] = owner, sequence, body
  end
end
if n == 0 then return false end
local all = p .. 'events'
local first = redis.call('INCRBY', p .. 'event_cursor', n) - n
for k = 1, n do
  local id, body = string.format('%d-0', first + k), body_of[k]
  if cap == '' then
    redis.call('XADD', all, id, 'event', body)
  else
    redis.call('XADD', all, 'MAXLEN', '~', cap, id, 'event', body)
  end
  if owner_of[k] > 0 then
    redis.call('XADD', streams[owner_of[k]], id, 'sequence', sequence_of[k], 'event', body)
  end
end
return false
"""

_MAX_SCAN_CHUNK: Final = 1000
_START_KEY_LENGTH: Final = 16
_DOUBLE: Final = struct.Struct(">d")
_UINT64: Final = struct.Struct(">Q")
_ALL_BITS: Final = 0xFFFF_FFFF_FFFF_FFFF
_SIGN_BIT: Final = 1 << 63

P = ParamSpec("P")
T = TypeVar("T")

_StreamRows = list[tuple[bytes, dict[bytes, bytes]]]
"""What ``XRANGE`` returns on a bytes client."""
_Hash = dict[bytes, bytes]


def _retried(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``method`` through ``reconnecting`` (every store operation is idempotent); a second
    connection error raises ``UnavailableError``."""

    @functools.wraps(method)
    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await reconnecting(method, *args, **kwargs)
        except CONNECTION_ERRORS as exc:
            raise UnavailableError(f"redis state store: {describe(exc)}") from exc

    return retrying


class RedisStateStore:
    """Executions, checkpoints and event history in Redis, under ``prefix``.

    ``client`` must return bytes (the default, ``decode_responses=False``) and
    stays its owner's to close. ``max_events`` caps the global event stream
    (approximately; per-execution streams are never trimmed); ``None`` keeps all.
    """

    __slots__ = ("_client", "_events_cap", "_live", "_p", "_write_script")

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
        self._write_script = client.register_script(_WRITE)
        self._live: set[str] = set()
        """Executions this store created and that are not final yet: their later
        writes update only the ``state`` field and the status index."""

    @_retried
    async def write(self, batch: StateBatch) -> None:
        """Raises ``InvalidRequest`` (field ``request_id``) when another execution
        already holds the execution's ``request_id``; nothing is written then."""
        texts: list[bytes] = []
        execution = batch.execution
        record: list[Any] | bool = False
        if execution is not None:
            record = self._describe(execution, texts)
        owners: dict[str, int] = {}
        checkpoints: list[str | int] = []
        for c in batch.checkpoints:
            checkpoints += (owners.setdefault(c.execution_id, len(owners) + 1), c.node_id)
            texts.append(
                to_json_bytes([c.state.value, c.updated_at, c.outputs, c.error, c.attempt])
            )
        events: list[str | int] = []
        for event in batch.events:
            owner = event.execution_id
            events += (
                0 if owner is None else owners.setdefault(owner, len(owners) + 1),
                str(event.sequence),
            )
            texts.append(to_json_bytes(tuple(event)))
        header = [self._p, self._events_cap, record, list(owners), checkpoints, events]
        holder = cast(
            bytes | None,
            await self._write_script(args=(to_json_bytes(header), b"\n".join(texts))),
        )
        if execution is None:
            return
        if holder is not None:
            raise InvalidRequest(
                "request_id",
                f"an idempotency key no other execution holds (execution {holder.decode()!r}"
                " holds it)",
                execution.request_id,
            )
        if execution.status is ExecutionStatus.RUNNING:
            self._live.add(execution.execution_id)
        else:
            self._live.discard(execution.execution_id)

    @_retried
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        raw = cast(_Hash, await self._client.hgetall(self._p + "execution:" + execution_id))
        if not raw:
            raise ExecutionNotFound(execution_id)
        return _record(execution_id, raw)

    @_retried
    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        owner = cast(bytes | None, await self._client.get(self._p + "request:" + request_id))
        if owner is None:
            return None
        try:
            return await self.get_execution(owner.decode())
        except ExecutionNotFound:
            return None

    @_retried
    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
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
        self, *, after: int = 0, execution_id: str | None = None, limit: int = MAX_EVENTS_PAGE
    ) -> Sequence[tuple[int, Event]]:
        """Cursors are global: the same for an event read with or without ``execution_id``."""
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

    @_retried
    async def last_sequence(self, execution_id: str) -> int:
        """Read from the last entry of the execution's stream: writes store only higher ones."""
        rows = cast(
            _StreamRows,
            await self._client.xrevrange(self._p + "execution_events:" + execution_id, count=1),
        )
        return int(rows[0][1][b"sequence"]) if rows else 0

    async def close(self) -> None:
        """Forget per-run caches; the client stays open for its owner to close."""
        self._live.clear()

    def _describe(self, r: ExecutionRecord, texts: list[bytes]) -> list[Any]:
        """The script's header entry for ``r``; appends its JSON texts to ``texts``."""
        state = to_json_bytes([r.status.value, r.finished_at, r.error, r.result])
        member = _member(r.started_at, r.execution_id)
        if r.execution_id in self._live:
            # Live executions are running and their meta and definition are stored.
            texts.append(state)
            return [r.execution_id, member, r.status.value, False]
        meta = [
            r.workflow_id,
            r.bot_id,
            r.strategy_id,
            r.started_at,
            r.correlation_id,
            r.request_id,
        ]
        texts += (to_json_bytes(meta), to_json_bytes(r.definition), state)
        indexes = ["index:all", "index:workflow:" + r.workflow_id]
        if r.bot_id is not None:
            indexes.append("index:bot:" + r.bot_id)
        if r.strategy_id is not None:
            indexes.append("index:strategy:" + r.strategy_id)
        request_id = False if r.request_id is None else r.request_id
        return [r.execution_id, member, r.status.value, True, indexes, request_id]

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
