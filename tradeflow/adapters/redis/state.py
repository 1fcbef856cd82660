"""The production :class:`~tradeflow.ports.StateStore`: state in Redis.

Layout (``p`` is the prefix):

- ``p:execution:<id>`` hash: ``meta`` -> JSON ``[workflow_id, bot_id, strategy_id,
  started_at, correlation_id, request_id]`` (fixed when the run starts),
  ``definition`` -> JSON, ``state`` -> JSON ``[status, finished_at, error, result]``,
  and once a lease owns it ``owner``, ``epoch`` (that lease's) and ``takeovers``, and
  ``cancel_requested`` (``1``) once a cancel was asked of its live owner;
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
- ``p:request:<request_id>`` -> the execution id created for that key;
- ``p:lease:<owner>`` hash ``epoch``, ``kind``, ``host``, ``pid``: an owner's lease,
  expiring by itself (``PEXPIREAT`` its ttl past the server's ``TIME``, so liveness is
  the server's clock);
  ``p:lease_epoch`` the one counter every epoch comes from (``INCR``: never reused);
  ``p:lease_cancels:<owner>`` set: the cancellations its next renewal collects
  (expiring with the owner's lease; a new lease of the same owner keeps them);
- ``p:leases`` sorted set: the owners, scored by their lease's expiry (ms, the same
  instant): the registry :meth:`~RedisStateStore.live_leases` lists without scanning
  the keyspace (pruned of expired owners as it lists).

``write`` also reads the emergency state's halts (``{<prefix>:emergency}:halts`` and
``:halt_since``, named by :func:`~tradeflow.adapters.redis.emergency.halt_keys`) when
its batch carries a guard.

``write`` is one ``EVALSHA`` of a Lua script: nothing runs in between its
commands, and its refusals (a fence that is not the execution's live lease, a
trading state that does not admit the batch's guarded action, a ``request_id``
another execution holds) are decided before its first write, so
the record and its index moves, the checkpoints and the events with their cursors
land together or not at all, and a write racing its lease's expiry either lands
whole before it or is refused whole. Python packs one command and parses one
reply (redis-py loads the script again when a restarted server lost its cache).
Indexes move only on a status change, out of the index of the status stored
before: a brand-new execution is only added. Every other ownership operation
(acquire, renew, release or revoke, list the live leases, claim, orphans, cancel) is
one script too (claim and
cancel first read the execution's fixed ``meta`` for its index member, as the status
they may change moves it); reads of records are one script that adds each owner's
liveness.

``write_many`` (group commit) sends the write scripts of its batches in one pipeline,
not a transaction: each batch is its own atomic script with its own outcome. A store
remembers the executions it created and writes only their ``state`` next; a script
that finds such an execution gone (pruned meanwhile by another) asks for it whole.

``prune`` is one script per chunk of at most 100 removals: it walks the indexes of the
final statuses together, oldest started first, up to the start key of the horizon (an
execution that started later cannot have ended before it), reads each one's state and
checkpoints in the script (so a claim that made it running, or an unresolved intent,
keeps it), and deletes its hash, checkpoints, stream, its entries of the global stream,
its index members and its request id. A crash between two chunks leaves every
execution whole or gone. The emergency keys (the audit) are another store's.

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
from redis.exceptions import NoScriptError

from tradeflow.adapters.redis.connection import CONNECTION_ERRORS, reconnecting
from tradeflow.adapters.redis.emergency import halt_field, halt_keys, stored_halt
from tradeflow.domain.codec import (
    MAX_EVENTS_PAGE,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    from_json,
    to_json_bytes,
)
from tradeflow.domain.emergency import refusal
from tradeflow.domain.errors import (
    ConfigurationError,
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
    Scope,
    StateBatch,
)
from tradeflow.domain.trading import OrderEffect, TradingState

__all__ = ["RedisStateStore"]

# One write (see the module docstring). Keys are built here from the prefix, so the store
# needs a standalone Redis (as MULTI over these keys did).
# ARGV[1]: JSON [prefix, stream cap ('' for none), record, owners, checkpoints, events,
#   fence, target, guard]:
#   record: false, or [execution id, index member, status, full, indexes, request id or false]
#     (full: this store's first write of it, which also stores meta and definition and
#     joins the indexes);
#   owners: the execution ids the checkpoints and events belong to, each once;
#   checkpoints: flat [owner, node id, ...]; events: flat [owner or 0, sequence, ...],
#     owners as positions in owners (flat and deduplicated: cjson decodes this per write);
#   fence: false, or [lease owner, epoch as text]; target: the batch's execution or false;
#   guard: false (no guard, or one every state admits), or [halts key, halt_since key,
#     the highest rank admitting the guard's effect, halt fields of its scopes broadest
#     first] (keys and fields of adapters.redis.emergency).
# ARGV[2]: the JSON texts to store, newline-separated (compact JSON never holds a raw
#   newline): the record's (meta, definition and state if full, else state), then one per
#   checkpoint, then one per event.
# Returns nil; the execution holding the record's request id; for a refused fence,
#   {1, the owner's live epoch or nil} (the fence's lease is not live), {2, epoch, owner}
#   (the target is another lease's) or {3, epoch, owner} (it is owned, the batch has no
#   fence); or {4, halt field, halt JSON, since} (the deciding halt refuses the guard's
#   effect); or {5}: a state-only write (record not full) of an execution that is not
#   stored (pruned since): the caller writes it again, full. Nothing is written when
#   something is returned.
# RANKS (prepended) maps each trading state to its rank, from TradingState.
_WRITE: Final = r"""
local p, cap, record, owners, checkpoints, events, fence, target, guard =
  unpack(cjson.decode(ARGV[1]))
local texts, at = ARGV[2], 1
local function take()
  local stop = string.find(texts, '\n', at, true) or #texts + 1
  local text = string.sub(texts, at, stop - 1)
  at = stop + 1
  return text
end
-- The fence, before the first write: the same script as the write, so a lease cannot
-- lapse (nor the execution change hands) between the check and the write.
local stored, owned = false, {}
if fence then
  local held = redis.call('HGET', p .. 'lease:' .. fence[1], 'epoch')
  if held ~= fence[2] then return {1, held} end
end
if target then
  local found = redis.call('HMGET', p .. 'execution:' .. target, 'state', 'epoch', 'owner')
  stored = found[1]
  local epoch = found[2] or '0'
  if fence then
    if epoch ~= '0' and epoch ~= fence[2] then return {2, epoch, found[3]} end
    -- Unowned or new: it becomes the fence's (a batch without its record can only mark
    -- an execution that exists).
    if epoch ~= fence[2] and (record or stored) then owned = {'owner', fence[1], 'epoch', fence[2]} end
  elseif epoch ~= '0' then
    return {3, epoch, found[3]}
  end
end
-- The trading state, in the same script as the intent it admits: a halt committed
-- before this script refuses it, one committed after it finds it committed.
if guard then
  local found = redis.call('HMGET', guard[1], unpack(guard, 4))
  -- The deciding halt: the most restrictive, the broadest on a tie (a seed's halt,
  -- [reason, actor], is halted).
  local decided, rank = 0, -1
  for i = 1, #found do
    if found[i] then
      local r = RANKS[cjson.decode(found[i])[3] or 'halted']
      if r > rank then decided, rank = i, r end
    end
  end
  if rank > guard[3] then
    local field = guard[decided + 3]
    return {4, field, found[decided], redis.call('HGET', guard[2], field)}
  end
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
  -- A state-only write finds the execution gone (pruned meanwhile): write it whole.
  if not full and not stored then return {5} end
  -- The status is the first element of the stored state: a plain word, never escaped.
  local was = stored and string.match(stored, '^%["([^"]*)"')
  if full then
    redis.call('HSET', key, 'meta', take(), 'definition', take(), 'state', take(), unpack(owned))
    for _, index in ipairs(record[5]) do redis.call('ZADD', p .. index, 0, member) end
  else
    redis.call('HSET', key, 'state', take(), unpack(owned))
  end
  if was ~= status then
    if was then redis.call('ZREM', p .. 'index:status:' .. was, member) end
    redis.call('ZADD', p .. 'index:status:' .. status, 0, member)
  end
elseif #owned > 0 then
  redis.call('HSET', p .. 'execution:' .. target, unpack(owned))
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

# What the scripts that return records share: a record is its hash, flat, plus the
# pseudo-field owner_live ('1' or '0'); a missing one is an empty list.
_RECORDS: Final = r"""
local leases = {}
local function live(p, owner, epoch)
  if not owner or not epoch or epoch == '0' then return false end
  local held = leases[owner]
  if held == nil then
    held = redis.call('HGET', p .. 'lease:' .. owner, 'epoch')
    leases[owner] = held
  end
  return held == epoch
end
local function load(p, id)
  local flat = redis.call('HGETALL', p .. 'execution:' .. id)
  if #flat == 0 then return flat end
  local owner, epoch = false, false
  for i = 1, #flat, 2 do
    if flat[i] == 'owner' then owner = flat[i + 1] elseif flat[i] == 'epoch' then epoch = flat[i + 1] end
  end
  flat[#flat + 1] = 'owner_live'
  flat[#flat + 1] = live(p, owner, epoch) and '1' or '0'
  return flat
end
local function status_of(state) return string.match(state, '^%["([^"]*)"') end
"""

# ARGV: prefix, execution ids. Returns one record (or empty list) per id.
_READ: Final = (
    _RECORDS
    + r"""
local p, out = ARGV[1], {}
for i = 2, #ARGV do out[i - 1] = load(p, ARGV[i]) end
return out
"""
)

# ARGV: prefix, request id. Returns nil, or {execution id, its record}.
_FIND: Final = (
    _RECORDS
    + r"""
local p = ARGV[1]
local id = redis.call('GET', p .. 'request:' .. ARGV[2])
if not id then return false end
return {id, load(p, id)}
"""
)

# What the scripts that start or extend a lease share: its expiry, the same instant on
# its hash and in the registry.
_EXTEND: Final = r"""
local function extend(p, owner, ttl)
  local now = redis.call('TIME')
  local expiry = string.format('%d', now[1] * 1000 + math.floor(now[2] / 1000) + ttl)
  redis.call('PEXPIREAT', p .. 'lease:' .. owner, expiry)
  redis.call('ZADD', p .. 'leases', expiry, owner)
  return expiry
end
"""

# ARGV: prefix, owner, kind, host, pid, ttl in ms. Returns the new epoch. The owner's
# pending cancels stay, for the new lease's next renewal (and live as long as it).
_ACQUIRE: Final = (
    _EXTEND
    + r"""
local p, owner = ARGV[1], ARGV[2]
local lease = p .. 'lease:' .. owner
local epoch = redis.call('INCR', p .. 'lease_epoch')
redis.call('DEL', lease)
redis.call('HSET', lease, 'epoch', epoch, 'kind', ARGV[3], 'host', ARGV[4], 'pid', ARGV[5])
redis.call('PEXPIREAT', p .. 'lease_cancels:' .. owner, extend(p, owner, ARGV[6]))
return epoch
"""
)

# ARGV: prefix, owner, epoch, ttl in ms. Returns {1, cancelled execution ids...}, or
# {0, the owner's live epoch or nil} when the lease is not live.
_RENEW: Final = (
    _EXTEND
    + r"""
local p, owner, epoch = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('HGET', p .. 'lease:' .. owner, 'epoch')
if held ~= epoch then return {0, held} end
extend(p, owner, ARGV[4])
local cancels = p .. 'lease_cancels:' .. owner
local out = redis.call('SMEMBERS', cancels)
if #out > 0 then redis.call('DEL', cancels) end
table.insert(out, 1, 1)
return out
"""
)

# ARGV: prefix, owner, epoch. Ends that lease now, as a lapse would: returns 1, or 0 if
# the owner's live lease (if any) has another epoch.
_RELEASE: Final = r"""
local p, owner = ARGV[1], ARGV[2]
local lease = p .. 'lease:' .. owner
if redis.call('HGET', lease, 'epoch') ~= ARGV[3] then return 0 end
redis.call('DEL', lease, p .. 'lease_cancels:' .. owner)
redis.call('ZREM', p .. 'leases', owner)
return 1
"""

# ARGV: prefix. Returns flat {owner, epoch, ...}: every live lease. Drops from the
# registry the owners whose lease expired (by its score, or gone by other means).
_LIVE: Final = r"""
local p = ARGV[1]
local registry = p .. 'leases'
local now = redis.call('TIME')
-- A key expires once the clock is past its expiry: an owner scored now is still live.
local before = string.format('(%d', now[1] * 1000 + math.floor(now[2] / 1000))
redis.call('ZREMRANGEBYSCORE', registry, '-inf', before)
local out = {}
for _, owner in ipairs(redis.call('ZRANGE', registry, 0, -1)) do
  local epoch = redis.call('HGET', p .. 'lease:' .. owner, 'epoch')
  if epoch then
    out[#out + 1] = owner
    out[#out + 1] = epoch
  else
    redis.call('ZREM', registry, owner)
  end
end
return out
"""

# ARGV: prefix, execution id, its index member, owner, epoch, takeover ('1' or '0').
# Returns {'lost', live epoch or nil}, {'missing'}, {'ended', status} (refused: completed,
# or any final status for a takeover), {'alive', owner, kind, host, pid}, or
# {'claimed', previous owner or nil, takeover 0/1, takeovers, cancel requested 0/1}.
_CLAIM: Final = r"""
local p, id, member, owner, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local held = redis.call('HGET', p .. 'lease:' .. owner, 'epoch')
if held ~= epoch then return {'lost', held} end
local key = p .. 'execution:' .. id
local found = redis.call('HMGET', key, 'state', 'owner', 'epoch', 'takeovers', 'cancel_requested')
if not found[1] then return {'missing'} end
local state, previous, stored = found[1], found[2], found[3] or '0'
local status = string.match(state, '^%["([^"]*)"')
local running = status == 'running'
if status == 'completed' or (ARGV[6] == '1' and not running and status ~= 'interrupted') then
  return {'ended', status}
end
local takeovers, died = tonumber(found[4] or '0'), false
if stored == epoch then
  previous = owner
else
  -- Running under a live lease: that owner has it.
  if running and stored ~= '0' and previous then
    local other = redis.call('HMGET', p .. 'lease:' .. previous, 'epoch', 'kind', 'host', 'pid')
    if other[1] == stored then return {'alive', previous, other[2], other[3], other[4]} end
  end
  -- The same process reclaiming under a new epoch (its lease lapsed in a stall) did not die.
  died = running and stored ~= '0' and previous and previous ~= owner
  if died then takeovers = takeovers + 1 end
  redis.call('HSET', key, 'owner', owner, 'epoch', epoch, 'takeovers', takeovers)
end
local cancel = found[5] and 1 or 0
if not running then
  -- Running from now on (a claimer dying before it writes is then a death), from a clean
  -- slate: an ended one's end, and a cancel asked before it ended, are history.
  redis.call('HSET', key, 'state', '["running",null,null,null]')
  redis.call('ZREM', p .. 'index:status:' .. status, member)
  redis.call('ZADD', p .. 'index:status:running', 0, member)
  if status ~= 'interrupted' then
    redis.call('HDEL', key, 'cancel_requested')
    cancel = 0
  end
end
return {'claimed', previous, died and 1 or 0, takeovers, cancel}
"""

# ARGV: prefix, limit. Walks the running and interrupted indexes together in member
# order (oldest first): every interrupted execution, and the running ones whose owner is
# not live (leases looked up once per owner). Returns {execution id, record} pairs.
_ORPHANS: Final = (
    _RECORDS
    + r"""
local p, limit, chunk = ARGV[1], tonumber(ARGV[2]), 256
local indexes = {p .. 'index:status:running', p .. 'index:status:interrupted'}
local buffers, cursor, lower, ended = {{}, {}}, {1, 1}, {'-', '-'}, {false, false}
local function peek(k)
  if cursor[k] > #buffers[k] then
    if ended[k] then return nil end
    buffers[k] = redis.call('ZRANGEBYLEX', indexes[k], lower[k], '+', 'LIMIT', 0, chunk)
    cursor[k] = 1
    ended[k] = #buffers[k] < chunk
    if #buffers[k] == 0 then return nil end
    lower[k] = '(' .. buffers[k][#buffers[k]]
  end
  return buffers[k][cursor[k]]
end
-- Byte order, as Redis orders members (Lua's < follows the server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out = {}
while #out < limit do
  local a, b = peek(1), peek(2)
  if not a and not b then break end
  local k = (not b or (a and before(a, b))) and 1 or 2
  local member = buffers[k][cursor[k]]
  cursor[k] = cursor[k] + 1
  -- The member is '<16 hex digits>:<execution id>'.
  local id = string.sub(member, 18)
  local found = k == 1 and redis.call('HMGET', p .. 'execution:' .. id, 'owner', 'epoch')
  if not found or not live(p, found[1], found[2]) then
    local record = load(p, id)
    if #record > 0 then out[#out + 1] = {id, record} end
  end
end
return out
"""
)

# ARGV: prefix, execution id, its index member, the error (JSON) of an orphan cancelled
# here. Returns the record as it stands after (empty when there is none).
_CANCEL: Final = (
    _RECORDS
    + r"""
local p, id, member = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'execution:' .. id
local found = redis.call('HMGET', key, 'state', 'owner', 'epoch')
if not found[1] then return {} end
local state = found[1]
local status = status_of(state)
if status ~= 'running' and status ~= 'interrupted' then return load(p, id) end
-- Interrupted: no owner runs it (an orphan, its owner live or not).
if status == 'running' and live(p, found[2], found[3]) then
  local cancels = p .. 'lease_cancels:' .. found[2]
  redis.call('SADD', cancels, id)
  -- Gone with the lease it waits for (a renewal collects it, a new lease of the owner
  -- keeps it); the execution keeps the request for whoever claims it next.
  local ttl = redis.call('PTTL', p .. 'lease:' .. found[2])
  if ttl > 0 then redis.call('PEXPIRE', cancels, ttl) end
  redis.call('HSET', key, 'cancel_requested', '1')
  return load(p, id)
end
-- The state is compact JSON [status, finished_at, error, result]: the result is what
-- follows the error (null, or a string whose quotes and backslashes are escaped).
local at = string.find(state, ',', string.find(state, ',', 1, true) + 1, true) + 1
if string.sub(state, at, at) == '"' then
  at = at + 1
  while true do
    local stop = string.find(state, '["\\]', at)
    if string.sub(state, stop, stop) == '"' then at = stop + 1 break end
    at = stop + 2
  end
else
  at = at + 4
end
local now = redis.call('TIME')
local finished = string.format('%.17g', tonumber(now[1]) + tonumber(now[2]) / 1000000)
local result = string.sub(state, at + 1, -2)
redis.call('HSET', key, 'state', '["cancelled",' .. finished .. ',' .. ARGV[4] .. ',' .. result .. ']')
redis.call('ZREM', p .. 'index:status:' .. status, member)
redis.call('ZADD', p .. 'index:status:cancelled', 0, member)
return load(p, id)
"""
)

# ARGV: prefix, lower bound of the walk ('-' or '(' .. the last member seen), its upper
# bound ('(' .. the start key of ended_before: an execution that started later cannot
# have ended before it), ended_before (epoch seconds), the most executions to remove,
# the most index members to look at. Walks the final statuses' indexes together in member
# order (oldest started first) and removes each execution whose state, read here, is
# final and ended before ended_before, unless a checkpoint leaves an intent unresolved
# (those are counted as kept): its record, checkpoints, events (in its stream and the
# global one), index members and request id. Returns {removed, kept, the last member seen,
# or '' once the walk is through}.
# FINAL (prepended) lists the final statuses, from ExecutionStatus.
_PRUNE: Final = r"""
local p, lower, upper = ARGV[1], ARGV[2], ARGV[3]
local before, quota, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local indexes, buffers, cursor, bounds, ended = {}, {}, {}, {}, {}
for k, status in ipairs(FINAL) do
  indexes[k], buffers[k], cursor[k], bounds[k], ended[k] =
    p .. 'index:status:' .. status, {}, 1, lower, false
end
local chunk = 128
local function peek(k)
  if cursor[k] > #buffers[k] then
    if ended[k] then return nil end
    buffers[k] = redis.call('ZRANGEBYLEX', indexes[k], bounds[k], upper, 'LIMIT', 0, chunk)
    cursor[k] = 1
    ended[k] = #buffers[k] < chunk
    if #buffers[k] == 0 then return nil end
    bounds[k] = '(' .. buffers[k][#buffers[k]]
  end
  return buffers[k][cursor[k]]
end
-- Byte order, as Redis orders members (Lua's < follows the server's locale).
local function before_member(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- unresolved_intent() of the domain, on each stored checkpoint [state, updated_at,
-- outputs, error, attempt]: an intent, or a failure that kept its client_order_id.
local function unresolved(id)
  local flat = redis.call('HGETALL', p .. 'checkpoints:' .. id)
  for i = 2, #flat, 2 do
    local value = flat[i]
    if string.sub(value, 1, 9) == '["intent"' then return true end
    if string.sub(value, 1, 9) == '["failed"' then
      local outputs = cjson.decode(value)[3]
      if type(outputs) == 'table' and outputs['client_order_id'] ~= nil then return true end
    end
  end
  return false
end
local function remove(id, member, status, meta)
  local workflow, bot, strategy, request = meta[1], meta[2], meta[3], meta[6]
  redis.call('ZREM', p .. 'index:all', member)
  redis.call('ZREM', p .. 'index:workflow:' .. workflow, member)
  if type(bot) == 'string' then redis.call('ZREM', p .. 'index:bot:' .. bot, member) end
  if type(strategy) == 'string' then
    redis.call('ZREM', p .. 'index:strategy:' .. strategy, member)
  end
  redis.call('ZREM', p .. 'index:status:' .. status, member)
  if type(request) == 'string' and redis.call('GET', p .. 'request:' .. request) == id then
    redis.call('DEL', p .. 'request:' .. request)
  end
  local stream = p .. 'execution_events:' .. id
  local entries = redis.call('XRANGE', stream, '-', '+')
  local ids = {}
  for i = 1, #entries do ids[#ids + 1] = entries[i][1] end
  -- In slices: unpack() fails past the Lua stack's few thousand slots.
  for i = 1, #ids, 1000 do
    redis.call('XDEL', p .. 'events', unpack(ids, i, math.min(i + 999, #ids)))
  end
  redis.call('DEL', p .. 'execution:' .. id, p .. 'checkpoints:' .. id, stream)
end
local removed, kept, examined, last = 0, 0, 0, ''
while removed < quota and examined < budget do
  local best, from = nil, 0
  for k = 1, #indexes do
    local member = peek(k)
    if member and (not best or before_member(member, best)) then best, from = member, k end
  end
  if not best then return {removed, kept, ''} end
  cursor[from] = cursor[from] + 1
  examined = examined + 1
  last = best
  -- The member is '<16 hex digits>:<execution id>'.
  local id = string.sub(best, 18)
  local found = redis.call('HMGET', p .. 'execution:' .. id, 'state', 'meta')
  if found[1] and found[2] then
    local status, finished = string.match(found[1], '^%["([^"]*)",([^,]*),')
    local at = tonumber(finished)
    if FINALS[status] and at and at < before then
      if unresolved(id) then
        kept = kept + 1
      else
        remove(id, best, status, cjson.decode(found[2]))
        removed = removed + 1
      end
    end
  end
end
return {removed, kept, last}
"""

_RANKS: Final = f"local RANKS = {{{', '.join(f'{s.value} = {s.rank}' for s in TradingState)}}}\n"
"""The Lua table of each trading state's rank, which the write script starts with."""
_FINAL: Final = (
    "local FINAL, FINALS = {"
    + ", ".join(f"'{s.value}'" for s in ExecutionStatus if s.final)
    + "}, {}\nfor _, s in ipairs(FINAL) do FINALS[s] = true end\n"
)
"""The Lua list (and set) of the final statuses, which the prune script starts with."""
_ADMITTING: Final = {
    effect: max(state.rank for state in TradingState if state.allows(effect))
    for effect in OrderEffect
}
"""The highest rank of a state that admits each effect: the write refuses a guarded
batch whose deciding halt ranks above it."""
_NO_GUARD: Final = max(state.rank for state in TradingState)
"""An effect every state admits (a cancel, an effect-free action) needs no guard."""

_ORPHAN_CANCELLED: Final = to_json_bytes("cancelled while no executor ran it")
"""The error of an orphan ended ``cancelled`` by ``request_cancel``."""

_MAX_SCAN_CHUNK: Final = 1000
_PRUNE_CHUNK: Final = 100
"""Executions one prune script removes at most: a script blocks Redis while it runs."""
_PRUNE_BUDGET: Final = 1000
"""Index members one prune script looks at at most (kept, or ended after the horizon)."""


class _Again:
    """A write script's answer that the batch must be sent again, full."""


_AGAIN: Final = _Again()
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

    __slots__ = (
        "_acquire_script",
        "_cancel_script",
        "_claim_script",
        "_client",
        "_events_cap",
        "_find_script",
        "_halts",
        "_live",
        "_live_script",
        "_orphans_script",
        "_p",
        "_prune_script",
        "_read_script",
        "_release_script",
        "_renew_script",
        "_write_script",
    )

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
        self._halts = halt_keys(prefix)
        self._write_script = client.register_script(_RANKS + _WRITE)
        self._read_script = client.register_script(_READ)
        self._find_script = client.register_script(_FIND)
        self._acquire_script = client.register_script(_ACQUIRE)
        self._renew_script = client.register_script(_RENEW)
        self._release_script = client.register_script(_RELEASE)
        self._live_script = client.register_script(_LIVE)
        self._claim_script = client.register_script(_CLAIM)
        self._orphans_script = client.register_script(_ORPHANS)
        self._cancel_script = client.register_script(_CANCEL)
        self._prune_script = client.register_script(_FINAL + _PRUNE)
        self._live: set[str] = set()
        """Executions this store created and that are not final yet: their later
        writes update only the ``state`` field and the status index (still fenced: the
        fence is checked in the script whichever fields it writes)."""

    @_retried
    async def write(self, batch: StateBatch) -> None:
        """Raises ``InvalidRequest`` (field ``request_id``) when another execution
        already holds the execution's ``request_id``, ``LeaseLost`` when the batch's
        fence is not the live lease its execution records (or it has none and the
        execution is owned), and ``EmergencyHalted`` when the batch's guard is refused by
        the trading state of its scopes (read from the emergency state's halts under the
        same prefix, after the fence); nothing is written then."""
        for _ in range(2):
            args, target = self._encode(batch)
            outcome = self._settle(batch, target, await self._write_script(args=args))
            if not isinstance(outcome, _Again):
                if outcome is not None:
                    raise outcome
                return
        raise AssertionError("a full write is never sent again")  # pragma: no cover

    @_retried
    async def write_many(self, batches: Sequence[StateBatch]) -> list[TradeflowError | None]:
        """Group commit: one pipeline of write scripts (not a transaction: each batch is
        its own atomic script), one round trip; each outcome is what :meth:`write` would
        raise, or ``None``. A batch that cannot be encoded as JSON is refused on its own
        (``InvalidRequest``, field ``batch``). A state-only write of an execution pruned
        meanwhile is sent again, full, in a second round trip (so is every batch after a
        restarted server lost the script)."""
        outcomes: list[TradeflowError | None] = [None] * len(batches)
        pending = list(range(len(batches)))
        # At most: a round trip that finds the script gone, one that finds an execution
        # gone, and the last.
        for _ in range(3):
            if not pending:
                return outcomes
            pending = await self._write_round(batches, pending, outcomes)
        raise UnavailableError("redis state store: a batch could not be written")

    async def _write_round(
        self,
        batches: Sequence[StateBatch],
        indexes: list[int],
        outcomes: list[TradeflowError | None],
    ) -> list[int]:
        """One pipeline of the write scripts of ``batches[indexes]``; sets their
        ``outcomes``; returns the indexes to send again."""
        sent: list[tuple[int, str | None]] = []
        pipe = self._client.pipeline(transaction=False)
        for i in indexes:
            try:
                args, target = self._encode(batches[i])
            except (TypeError, ValueError) as exc:
                outcomes[i] = InvalidRequest("batch", "values JSON can encode", describe(exc))
                continue
            pipe.evalsha(self._write_script.sha, 0, *args)
            sent.append((i, target))
        if not sent:
            return []
        again: list[int] = []
        lost_script = False
        for (i, target), reply in zip(sent, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, NoScriptError):
                lost_script = True
                again.append(i)
            elif isinstance(reply, BaseException):
                raise reply
            elif isinstance(outcome := self._settle(batches[i], target, reply), _Again):
                again.append(i)
            else:
                outcomes[i] = outcome
        if lost_script:
            # A restarted server lost its script cache (redis-py's Script reloads it for a
            # single call, not in a pipeline).
            await self._client.script_load(self._write_script.script)
        return again

    async def prune(self, ended_before: float, *, limit: int = PRUNE_LIMIT_DEFAULT) -> PruneReport:
        """One script per chunk of at most :data:`_PRUNE_CHUNK` removals (each atomic, so
        a crash between two leaves every execution whole or gone), walking the final
        statuses' indexes oldest first; the status and end are read inside each script,
        so an execution a claim made running meanwhile is never removed."""
        limit = max(1, min(limit or PRUNE_LIMIT_DEFAULT, PRUNE_LIMIT_MAX))
        upper = "(" + _start_key(ended_before)
        lower = "-"
        removed = kept = 0
        while removed < limit:
            quota = min(_PRUNE_CHUNK, limit - removed)
            chunk_removed, chunk_kept, last = await self._prune_chunk(
                lower, upper, ended_before, quota
            )
            removed += chunk_removed
            kept += chunk_kept
            if not last:
                return PruneReport(removed, kept, more=False)
            lower = "(" + last
        return PruneReport(removed, kept, more=True)

    @_retried
    async def _prune_chunk(
        self, lower: str, upper: str, ended_before: float, quota: int
    ) -> tuple[int, int, str]:
        """One prune script: removed, kept, and the last member seen ('' once through)."""
        removed, kept, last = await self._prune_script(
            args=(self._p, lower, upper, repr(float(ended_before)), quota, _PRUNE_BUDGET)
        )
        return int(removed), int(kept), last.decode()

    def _encode(self, batch: StateBatch) -> tuple[tuple[bytes, bytes], str | None]:
        """The write script's arguments for ``batch`` (see ``_WRITE``), and its target."""
        texts: list[bytes] = []
        execution = batch.execution
        record: list[Any] | bool = False
        target: str | None = None
        if execution is not None:
            record = self._describe(execution, texts)
            target = execution.execution_id
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
        if target is None and owners:
            # The first checkpoint's execution, else the first event's that has one.
            target = next(iter(owners))
        fence = batch.fence
        header = [
            self._p,
            self._events_cap,
            record,
            list(owners),
            checkpoints,
            events,
            False if fence is None else (fence[0], str(fence[1])),
            False if target is None else target,
            self._guard(batch.guard),
        ]
        return (to_json_bytes(header), b"\n".join(texts)), target

    def _settle(
        self, batch: StateBatch, target: str | None, reply: Any
    ) -> TradeflowError | _Again | None:
        """What the write script's ``reply`` means for ``batch``: ``None`` (written), the
        refusal, or ``_AGAIN`` (write it again, full: it was pruned meanwhile)."""
        execution = batch.execution
        if reply is None:
            if execution is not None:
                if execution.status is ExecutionStatus.RUNNING:
                    self._live.add(execution.execution_id)
                else:
                    self._live.discard(execution.execution_id)
            return None
        if isinstance(reply, list) and reply[0] == 5:
            assert execution is not None
            self._live.discard(execution.execution_id)
            return _AGAIN
        return self._refused(reply, batch, target)

    @_retried
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        (row,) = await self._read_script(args=(self._p, execution_id))
        if not row:
            raise ExecutionNotFound(execution_id)
        return _record(execution_id, row)

    @_retried
    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        found = await self._find_script(args=(self._p, request_id))
        if not found or not found[1]:
            return None
        return _record(found[0].decode(), found[1])

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

    @_retried
    async def acquire_lease(self, info: OwnerInfo, ttl: float) -> Lease:
        """The lease expires by itself ``ttl`` seconds on (Redis's clock)."""
        epoch = await self._acquire_script(
            args=(self._p, info.owner, info.kind, info.host, info.pid, _milliseconds(ttl))
        )
        return Lease(info, int(epoch), ttl)

    @_retried
    async def renew_lease(self, lease: Lease) -> Heartbeat:
        owner, epoch = lease.info.owner, lease.epoch
        reply = await self._renew_script(args=(self._p, owner, epoch, _milliseconds(lease.ttl)))
        if reply[0] == 0:
            raise LeaseLost(owner, epoch, why=_lapsed_or_replaced(reply[1]))
        return Heartbeat(tuple(execution_id.decode() for execution_id in reply[1:]))

    @_retried
    async def release_lease(self, lease: Lease) -> None:
        await self._release_script(args=(self._p, lease.info.owner, lease.epoch))

    @_retried
    async def live_leases(self) -> list[Fence]:
        """From the registry of owners (no keyspace scan), each checked against its lease."""
        flat = await self._live_script(args=(self._p,))
        return [
            Fence(owner.decode(), int(epoch))
            for owner, epoch in zip(flat[::2], flat[1::2], strict=True)
        ]

    @_retried
    async def revoke_lease(self, fence: Fence) -> bool:
        """A release of ``fence``'s lease by someone else."""
        return bool(await self._release_script(args=(self._p, fence.owner, fence.epoch)))

    @_retried
    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        """One script that also makes it running and moves its status index (whose member
        it is given: read first, as ``started_at`` never changes)."""
        owner, epoch = lease.info.owner, lease.epoch
        meta = await self._client.hget(self._p + "execution:" + execution_id, "meta")
        if meta is None:
            raise ExecutionNotFound(execution_id)
        member = _member(from_json(meta)[3], execution_id)
        reply = await self._claim_script(
            args=(self._p, execution_id, member, owner, epoch, "1" if takeover else "0")
        )
        outcome = reply[0]
        if outcome == b"claimed":
            previous = None if reply[1] is None else reply[1].decode()
            return Claim(previous, reply[2] == 1, reply[3], cancel_requested=reply[4] == 1)
        if outcome == b"lost":
            raise LeaseLost(owner, epoch, execution_id, why=_lapsed_or_replaced(reply[1]))
        if outcome == b"missing":
            raise ExecutionNotFound(execution_id)
        if outcome == b"ended":
            refused = ExecutionStatus(reply[1].decode())
            if takeover:
                raise InvalidRequest(
                    "execution_id",
                    "an unfinished execution (running or interrupted)",
                    f"{execution_id} ({refused.value})",
                )
            raise InvalidRequest(
                "execution_id", "an execution that did not complete", f"{execution_id} (completed)"
            )
        alive, kind, host, pid = (value.decode() for value in reply[1:])
        raise OwnerAlive(execution_id, OwnerInfo(alive, kind, host, int(pid)).describe())

    @_retried
    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        if limit <= 0:
            return []
        rows = await self._orphans_script(args=(self._p, limit))
        return [_record(execution_id.decode(), row) for execution_id, row in rows]

    @_retried
    async def request_cancel(self, execution_id: str) -> ExecutionRecord:
        """An orphan (interrupted, or running with no live owner) is ended ``cancelled`` in
        the same script that finds it so (Redis's clock for its ``finished_at``)."""
        # started_at is fixed: the index member read here is still the one the script moves.
        meta = await self._client.hget(self._p + "execution:" + execution_id, "meta")
        if meta is None:
            raise ExecutionNotFound(execution_id)
        member = _member(from_json(meta)[3], execution_id)
        row = await self._cancel_script(args=(self._p, execution_id, member, _ORPHAN_CANCELLED))
        if not row:
            raise ExecutionNotFound(execution_id)
        record = _record(execution_id, row)
        if record.status.final:
            self._live.discard(execution_id)
        return record

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

    def _refused(self, reply: Any, batch: StateBatch, target: str | None) -> TradeflowError:
        """The error for the write script's refusal ``reply`` of ``batch`` (see ``_WRITE``)."""
        if isinstance(reply, bytes):
            assert batch.execution is not None  # only a record claims a request id
            return InvalidRequest(
                "request_id",
                f"an idempotency key no other execution holds (execution {reply.decode()!r}"
                " holds it)",
                batch.execution.request_id,
            )
        if reply[0] == 4:
            _, field, payload, since = reply
            return refusal(stored_halt(field, payload, since))
        if target is not None:
            # Another owner's now (or never this writer's): its next write here is a full one.
            self._live.discard(target)
        return _fence_refused(cast(list[Any], reply), batch.fence, target)

    def _guard(self, guard: ActionGuard | None) -> list[Any] | bool:
        """The script's header entry for ``guard`` (see ``_WRITE``): ``False`` for none, or
        for one whose effect every state admits (the script then reads no halt)."""
        if guard is None or _ADMITTING[guard.effect] >= _NO_GUARD:
            return False
        scopes = (
            (Scope.STRATEGY, guard.strategy_id),
            (Scope.BOT, guard.bot_id),
            (Scope.WORKFLOW, guard.workflow_id),
        )
        return [
            *self._halts,
            _ADMITTING[guard.effect],
            halt_field(Scope.GLOBAL, None),
            *(halt_field(scope, target) for scope, target in scopes if target is not None),
        ]

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
        """The records of ``execution_ids`` with their owners' liveness: one script call."""
        rows = await self._read_script(args=(self._p, *execution_ids))
        return [
            _record(execution_id.decode(), row) if row else None
            for execution_id, row in zip(execution_ids, rows, strict=True)
        ]


def _record(execution_id: str, flat: list[bytes]) -> ExecutionRecord:
    """A record from its hash as a script returns it (flat, with ``owner_live``)."""
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    workflow_id, bot_id, strategy_id, started_at, correlation_id, request_id = from_json(
        raw[b"meta"]
    )
    status, finished_at, error, result = from_json(raw[b"state"])
    owner = raw.get(b"owner")
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
        owner=None if owner is None else owner.decode(),
        epoch=int(raw.get(b"epoch", 0)),
        takeovers=int(raw.get(b"takeovers", 0)),
        owner_live=raw[b"owner_live"] == b"1",
    )


def _fence_refused(
    reply: list[Any], fence: tuple[str, int] | None, execution_id: str | None
) -> LeaseLost:
    """The ``LeaseLost`` of a write the script refused (its reply: see ``_WRITE``)."""
    code = reply[0]
    if code == 1:
        assert fence is not None
        return LeaseLost(*fence, execution_id, why=_lapsed_or_replaced(reply[1]))
    epoch, owner = int(reply[1]), reply[2].decode()
    if code == 2:
        assert fence is not None
        return LeaseLost(*fence, execution_id, why=f"owned by {owner} (epoch {epoch})")
    return LeaseLost(
        "",
        0,
        execution_id,
        why=f"the execution is owned by {owner} (epoch {epoch}) and the write carries no fence",
    )


def _lapsed_or_replaced(held: bytes | None) -> str:
    """Why a lease is not live, from the epoch its owner holds now (``None``: none)."""
    return "lapsed" if held is None else f"replaced by epoch {int(held)}"


def _milliseconds(ttl: float) -> int:
    """A lease time for ``PEXPIRE`` (which refuses 0)."""
    return max(1, round(ttl * 1000))


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
