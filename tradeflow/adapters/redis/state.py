"""The production :class:`~tradeflow.ports.StateStore`: state in Redis.

Layout (``p`` is the prefix; ``p:layout`` is ``2``, see below):

- ``p:execution:<id>`` hash of small fields only (so Redis keeps it a listpack): the
  fixed ``wf``, ``start`` (JSON number), ``def`` (the definition's digest), ``corr``
  unless the correlation id is the execution id, and, when set, ``bot``, ``strat``,
  ``req``; the state ``st`` (status), ``fin`` (JSON number) and ``err`` when set, ``res``
  (``<offset>,<length>``: the frame of ``p:data:<id>`` that holds the result) when there
  is a result; ``seq``, the last event sequence stored; ``open``, the JSON list of the
  nodes whose latest checkpoint leaves an intent unresolved
  (:func:`~tradeflow.domain.records.unresolved_intent`), when any; and once a lease owns it ``owner``, ``epoch`` (that lease's) and ``takeovers``, and
  ``cancel_requested`` (``1``) once a cancel was asked of its live owner. Checkpoints or
  events of an execution with no record leave only ``seq`` / ``open``: no record;
- ``p:data:<id>`` string: the execution's journal, one frame per written batch,
  ``<kind><first cursor>,<entry>,<length>:<body>``, where the body is raw DEFLATE of
  compact JSON ``[positions, stem, events, checkpoints]`` (``[..., result]`` when the
  batch carried the record's result), its preset dictionary :data:`_ZDICT` and the
  execution id, followed for a chained frame (kind ``j`` or ``s``) by the raw JSON of the
  frame before it (so the result's outputs cost little more than a reference to the
  checkpoints'; a store chains only to a frame it wrote, and the script refuses the
  chain unless the journal still has the size and last bytes that store left it with):
  events are ``[type, event_id or 0 (when it is "<execution id>-<sequence>"), sequence,
  timestamp, node_id, data]``, plus ``[correlation, workflow, bot, strategy]`` when those
  differ from the frame's ``stem`` (the first event's, then a base timestamp: when not
  null, every timestamp of the frame is stored as a whole number of that base's ulps
  from it, exact); their cursors are the first cursor plus each one's
  position in its batch (``positions`` lists them, or is 0 for ``0, 1, ...``);
  checkpoints are ``[node_id, state, updated_at, outputs, error, attempt]``, a later one
  of a node replacing an earlier one. The script writes the header; ``entry`` is the
  batch's entry in ``p:events`` (0: no events), and ``kind`` is ``J`` (``j``: chained)
  when that entry refers to this execution only, else ``S`` (``s``). Extended by GET and
  SET while small (APPEND over-allocates), by APPEND past :data:`_APPEND_ABOVE` bytes;
- ``p:definition:<digest>`` string: a definition's JSON, stored once for every
  execution of it; ``p:definitions`` hash ``digest`` -> how many executions refer to it
  (prune decrements it and deletes the definition at 0);
- ``p:events`` stream: one entry per batch with events, entry id ``<the batch's last
  cursor>-0`` (cursors from the ``p:event_cursor`` counter, one per event, dense), fields
  ``x`` (the ids of the executions holding its events, newline-separated), ``n`` (how
  many events: its cursors are ``id - n + 1`` to ``id``) and ``e`` (JSON ``[[position,
  event], ...]``, the events of no execution) when there are such; a reader finds the
  events in the executions' journals; ``max_events`` trims it exactly by cursor (``MINID``);
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

The layout before this one (layout 1: a JSON ``state`` in the execution hash, a
``p:checkpoints:<id>`` hash and a ``p:execution_events:<id>`` stream, every event in
``p:events``) is not read: a store that finds its keys under its prefix with no
``p:layout`` refuses every call with a ``ConfigurationError`` saying what to do.

``write`` also reads the emergency state's halts (``{<prefix>:emergency}:halts`` and
``:halt_since``, named by :func:`~tradeflow.adapters.redis.emergency.halt_keys`) when
its batch carries a guard.

``write`` is one ``EVALSHA`` of a Lua script: nothing runs in between its
commands, and its refusals (a fence that is not the execution's live lease, a
trading state that does not admit the batch's guarded action, a ``request_id``
another execution holds) are decided before its first write, so
the record and its index moves, the checkpoints and the events with their cursors
land together or not at all, and a write racing its lease's expiry either lands
whole before it or is refused whole. Python encodes and compresses, the script only
concatenates (redis-py loads the script again when a restarted server lost its cache).
Indexes move only on a status change, out of the index of the status stored
before: a brand-new execution is only added. Every other ownership operation
(acquire, renew, release or revoke, list the live leases, claim, orphans, cancel) is
one script too (claim and
cancel first read the execution's fixed ``start`` for its index member, as the status
they may change moves it); reads of records are one script that adds each owner's
liveness, the definition and the result.

``write_many`` (group commit) sends the write scripts of its batches in one pipeline,
not a transaction: each batch is its own atomic script with its own outcome. A store
remembers the executions it created and writes only their state next; a script
that finds such an execution gone (pruned meanwhile by another) asks for it whole.

``prune`` is one script per chunk of at most 100 removals: it walks the indexes of the
final statuses together, oldest started first, up to the start key of the horizon (an
execution that started later cannot have ended before it), reads each one's status, end
and ``open`` in the script (so a claim that made it running, or an unresolved intent,
keeps it), and deletes its hash, journal, the entries of the global stream that refer
to it alone (a reader skips the executions an entry names that are gone), its index
members, its request id and its reference to its definition. A crash between two chunks
leaves every execution whole or gone. The emergency keys (the audit) are another store's.

Writing a batch twice stores its events once: a script that finds an event not above
the last sequence stored for its execution (``seq``) writes nothing and answers with
those sequences; the batch is sent again without the stored events (events without an
execution are not deduplicated). So every operation is retried once after a connection
error (typically a pooled connection the server dropped when it restarted);
a second failure raises ``UnavailableError``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar, cast

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
    EventType,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    PruneReport,
    Scope,
    StateBatch,
    unresolved_intent,
)
from tradeflow.domain.trading import OrderEffect, TradingState

__all__ = ["RedisStateStore", "decode_journal"]

# One write (see the module docstring). Keys are built here from the prefix, so the store
# needs a standalone Redis (as MULTI over these keys did).
# ARGV[1]: JSON [prefix, stream cap ('' for none), record, owners, frames, count, fence,
#   target, guard]:
#   record: false, or [execution id, index member, status, full, indexes, request id or
#     false, fields to set (flat), fields to delete, definition digest or false] (full:
#     this store's first write of it, which also stores the fixed fields and definition
#     and joins the indexes);
#   owners: the execution ids with a frame in this batch, each once; frames: one per owner,
#     [first event sequence or false, last or false, kind (J, S, j or s), has the result
#     (the record's), flat [node, 1 if its checkpoint leaves an intent unresolved else 0],
#     chained: false, or [the size its journal has now, the hex of its last bytes] (the
#     frame's dictionary ends with the raw JSON of the journal's last frame)];
#   count: the batch's events (its cursors), those of no execution included;
#   fence: false, or [lease owner, epoch as text]; target: the batch's execution or false;
#   guard: false (no guard, or one every state admits), or [halts key, halt_since key,
#     the highest rank admitting the guard's effect, halt fields of its scopes broadest
#     first] (keys and fields of adapters.redis.emergency).
# ARGV[2]: the definition's JSON (a full record) or ''; ARGV[3]: the stream entry's
#   events of no execution (field e) or ''; ARGV[3 + k]: the frame body of owners[k].
# Returns {0, the size of the target's journal after it or false}: written; or the
#   execution holding the record's request id; for a refused fence,
#   {1, the owner's live epoch or nil} (the fence's lease is not live), {2, epoch, owner}
#   (the target is another lease's) or {3, epoch, owner} (it is owned, the batch has no
#   fence); or {4, halt field, halt JSON, since} (the deciding halt refuses the guard's
#   effect); or {5}: a state-only write (record not full) of an execution that is not
#   stored (pruned since): the caller writes it again, full; or {6, the last sequence
#   stored (or false) of each owner}: an event of the batch is stored already, the caller
#   sends it again without those; or {7}: a chained frame's journal does not end where
#   the writer saw it end (written by another since): the caller sends it unchained.
#   Nothing is written unless {0, ...} is returned.
# RANKS (prepended) maps each trading state to its rank, from TradingState.
_WRITE: Final = r"""
local p, cap, record, owners, frames, count, fence, target, guard =
  unpack(cjson.decode(ARGV[1]))
-- The fence, before the first write: the same script as the write, so a lease cannot
-- lapse (nor the execution change hands) between the check and the write.
local stored, owned = false, {}
if fence then
  local held = redis.call('HGET', p .. 'lease:' .. fence[1], 'epoch')
  if held ~= fence[2] then return {1, held} end
end
if target then
  local found = redis.call('HMGET', p .. 'execution:' .. target, 'st', 'epoch', 'owner')
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
-- An event not above the last sequence stored for its execution is stored already; a
-- frame chained to the journal's last frame needs the journal to end where it did.
local lasts, sizes, again = {}, {}, false
for k = 1, #owners do
  local held = false
  if frames[k][1] then
    held = redis.call('HGET', p .. 'execution:' .. owners[k], 'seq') or false
    if held and tonumber(frames[k][1]) <= tonumber(held) then again = true end
  end
  lasts[k] = held
  local chain = frames[k][6]
  if chain then
    local data = p .. 'data:' .. owners[k]
    sizes[k] = redis.call('STRLEN', data)
    if sizes[k] ~= chain[1] then return {7} end
    local tail = redis.call('GETRANGE', data, -#chain[2] / 2, -1)
    tail = string.gsub(tail, '.', function(c) return string.format('%02x', string.byte(c)) end)
    if tail ~= chain[2] then return {7} end
  end
end
if again then return {6, unpack(lasts)} end
local function release(digest)
  if redis.call('HINCRBY', p .. 'definitions', digest, -1) <= 0 then
    redis.call('HDEL', p .. 'definitions', digest)
    redis.call('DEL', p .. 'definition:' .. digest)
  end
end
local key = target and p .. 'execution:' .. target
if record then
  local id, member, status, full = record[1], record[2], record[3], record[4]
  if full and record[6] then
    local claim = p .. 'request:' .. record[6]
    local holder = redis.call('GET', claim)
    if holder and holder ~= id then return holder end
    redis.call('SET', claim, id)
  end
  -- A state-only write finds the execution gone (pruned meanwhile): write it whole.
  if not full and not stored then return {5} end
  if full then
    local digest = record[9]
    local held = redis.call('HGET', key, 'def')
    if held ~= digest then
      redis.call('SET', p .. 'definition:' .. digest, ARGV[2], 'NX')
      redis.call('HINCRBY', p .. 'definitions', digest, 1)
      if held then release(held) end
    end
  end
  local fields = record[7]
  for i = 1, #owned do fields[#fields + 1] = owned[i] end
  redis.call('HSET', key, unpack(fields))
  -- A new record has none of the fields to delete.
  if stored and #record[8] > 0 then redis.call('HDEL', key, unpack(record[8])) end
  if full then
    for _, index in ipairs(record[5]) do redis.call('ZADD', p .. index, 0, member) end
  end
  if stored ~= status then
    if stored then redis.call('ZREM', p .. 'index:status:' .. stored, member) end
    redis.call('ZADD', p .. 'index:status:' .. status, 0, member)
  end
elseif #owned > 0 then
  redis.call('HSET', key, unpack(owned))
end
local first, entry = 0, 0
if count > 0 then
  first = redis.call('INCRBY', p .. 'event_cursor', count) - count + 1
  entry = first + count - 1
end
local with, journal = {}, false
for k = 1, #owners do
  local frame, owner = frames[k], owners[k]
  local hash, data, body = p .. 'execution:' .. owner, p .. 'data:' .. owner, ARGV[3 + k]
  local header
  if frame[1] then
    header = string.format('%s%d,%d,%d:', frame[3], first, entry, #body)
    with[#with + 1] = owner
    redis.call('HSET', hash, 'seq', frame[2])
  else
    header = string.format('%s0,0,%d:', frame[3], #body)
  end
  local size = sizes[k] or redis.call('STRLEN', data)
  if owner == target then journal = size + #header + #body end
  if size + #header + #body > APPEND_ABOVE then
    redis.call('APPEND', data, header .. body)
  elseif size > 0 then
    redis.call('SET', data, redis.call('GET', data) .. header .. body)
  else
    redis.call('SET', data, header .. body)
  end
  if frame[4] then redis.call('HSET', hash, 'res', size .. ',' .. (#header + #body)) end
  local nodes = frame[5]
  if #nodes > 0 then
    local open, list = {}, {}
    local held = redis.call('HGET', hash, 'open')
    if held then for _, node in ipairs(cjson.decode(held)) do open[node] = true end end
    for i = 1, #nodes, 2 do open[nodes[i]] = nodes[i + 1] == 1 or nil end
    for node in pairs(open) do list[#list + 1] = node end
    if #list > 0 then
      redis.call('HSET', hash, 'open', cjson.encode(list))
    elseif held then
      redis.call('HDEL', hash, 'open')
    end
  end
end
if count > 0 then
  local all, fields = p .. 'events', {'x', table.concat(with, '\n'), 'n', count}
  if ARGV[3] ~= '' then fields[#fields + 1] = 'e' fields[#fields + 1] = ARGV[3] end
  if cap ~= '' and entry - tonumber(cap) + 1 > 1 then
    redis.call('XADD', all, 'MINID', entry - tonumber(cap) + 1, entry .. '-0', unpack(fields))
  else
    redis.call('XADD', all, entry .. '-0', unpack(fields))
  end
end
return {0, journal}
"""

# What the scripts that return records share: a record is its hash, flat, plus the
# pseudo-fields owner_live ('1' or '0'), definition (its JSON) and result (the journal up
# to the end of the frame that holds it: a frame may be chained to those before it) when
# it has them; a missing one is an empty list.
_RECORDS: Final = r"""
local leases, definitions = {}, {}
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
  local owner, epoch, status, digest, result = false, false, false, false, false
  for i = 1, #flat, 2 do
    local field = flat[i]
    if field == 'owner' then owner = flat[i + 1]
    elseif field == 'epoch' then epoch = flat[i + 1]
    elseif field == 'st' then status = true
    elseif field == 'def' then digest = flat[i + 1]
    elseif field == 'res' then result = flat[i + 1] end
  end
  -- Checkpoints or events of an execution with no record: no record.
  if not status then return {} end
  flat[#flat + 1] = 'owner_live'
  flat[#flat + 1] = live(p, owner, epoch) and '1' or '0'
  if digest then
    local text = definitions[digest]
    if text == nil then
      text = redis.call('GET', p .. 'definition:' .. digest) or false
      definitions[digest] = text
    end
    if text then
      flat[#flat + 1] = 'definition'
      flat[#flat + 1] = text
    end
  end
  if result then
    local at, length = string.match(result, '^(%d+),(%d+)$')
    flat[#flat + 1] = 'result'
    flat[#flat + 1] = redis.call('GETRANGE', p .. 'data:' .. id, 0, at + length - 1)
  end
  return flat
end
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

# ARGV: prefix, the first entry id to read, the most entries. Returns {entries (as XRANGE
# returns them), flat {execution id, its journal} of the executions they name (those
# that still have one)}: one atomic read.
_EVENTS: Final = r"""
local p = ARGV[1]
local entries = redis.call('XRANGE', p .. 'events', ARGV[2], '+', 'COUNT', tonumber(ARGV[3]))
local seen, journals = {}, {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'x' then
      for id in string.gmatch(fields[i + 1], '[^\n]+') do
        if not seen[id] then
          seen[id] = true
          local data = redis.call('GET', p .. 'data:' .. id)
          if data then
            journals[#journals + 1] = id
            journals[#journals + 1] = data
          end
        end
      end
    end
  end
end
return {entries, journals}
"""

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
local found = redis.call('HMGET', key, 'st', 'owner', 'epoch', 'takeovers', 'cancel_requested')
if not found[1] then return {'missing'} end
local status, previous, stored = found[1], found[2], found[3] or '0'
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
  redis.call('HSET', key, 'st', 'running')
  redis.call('HDEL', key, 'fin', 'err', 'res')
  redis.call('ZREM', p .. 'index:status:' .. status, member)
  redis.call('ZADD', p .. 'index:status:running', 0, member)
  if status ~= 'interrupted' then
    redis.call('HDEL', key, 'cancel_requested')
    cancel = 0
  end
end
return {'claimed', previous, died and 1 or 0, takeovers, cancel}
"""

# Sorted-set walks merged in member order (a fragment: the script declares indexes,
# buffers, cursor, after, ended, upper and chunk before it). peek(k) is walk k's next
# member of indexes[k] past after[k] up to upper, read chunk members at a time, nil once
# it is through; earlier(a, b) orders members as Redis does (byte order: Lua's < follows
# the server's locale).
_MERGE: Final = r"""
local function peek(k)
  if cursor[k] > #buffers[k] then
    if ended[k] then return nil end
    buffers[k] = redis.call('ZRANGEBYLEX', indexes[k], after[k], upper, 'LIMIT', 0, chunk)
    cursor[k] = 1
    ended[k] = #buffers[k] < chunk
    if #buffers[k] == 0 then return nil end
    after[k] = '(' .. buffers[k][#buffers[k]]
  end
  return buffers[k][cursor[k]]
end
local function earlier(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
"""

# ARGV: prefix, limit. Walks the running and interrupted indexes together in member
# order (oldest first): every interrupted execution, and the running ones whose owner is
# not live (leases looked up once per owner). Returns {execution id, record} pairs.
_ORPHANS: Final = (
    _RECORDS
    + r"""
local p, limit, chunk, upper = ARGV[1], tonumber(ARGV[2]), 256, '+'
local indexes = {p .. 'index:status:running', p .. 'index:status:interrupted'}
local buffers, cursor, after, ended = {{}, {}}, {1, 1}, {'-', '-'}, {false, false}
"""
    + _MERGE
    + r"""
local out = {}
while #out < limit do
  local a, b = peek(1), peek(2)
  if not a and not b then break end
  local k = (not b or (a and earlier(a, b))) and 1 or 2
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


# ARGV: prefix, execution id, its index member, the error of an orphan cancelled here.
# Returns the record as it stands after (empty when there is none).
_CANCEL: Final = (
    _RECORDS
    + r"""
local p, id, member = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'execution:' .. id
local found = redis.call('HMGET', key, 'st', 'owner', 'epoch')
if not found[1] then return {} end
local status = found[1]
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
-- The result (res) stays.
local now = redis.call('TIME')
local finished = string.format('%.17g', tonumber(now[1]) + tonumber(now[2]) / 1000000)
redis.call('HSET', key, 'st', 'cancelled', 'fin', finished, 'err', ARGV[4])
redis.call('ZREM', p .. 'index:status:' .. status, member)
redis.call('ZADD', p .. 'index:status:cancelled', 0, member)
return load(p, id)
"""
)

# ARGV: prefix, lower bound of the walk ('-' or '(' .. the last member seen), its upper
# bound ('(' .. the start key of ended_before: an execution that started later cannot
# have ended before it), ended_before (epoch seconds), the most executions to remove,
# the most index members to look at. Walks the final statuses' indexes together in member
# order (oldest started first) and removes each execution whose status and end, read
# here, are final and before ended_before, unless it has open intents (``open``: those
# are counted as kept): its record, journal, the global stream's entries that name it
# alone, index members, request id and its reference to its definition. Returns
# {removed, kept, the last member seen, or '' once the walk is through}.
# FINAL (prepended) lists the final statuses, from ExecutionStatus.
_PRUNE: Final = (
    r"""
local p, lower, upper = ARGV[1], ARGV[2], ARGV[3]
local before, quota, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local indexes, buffers, cursor, after, ended = {}, {}, {}, {}, {}
for k, status in ipairs(FINAL) do
  indexes[k], buffers[k], cursor[k], after[k], ended[k] =
    p .. 'index:status:' .. status, {}, 1, lower, false
end
local chunk = 128
"""
    + _MERGE
    + r"""
-- The entries of the global stream that name only this execution, from its frames'
-- headers (kind J or j, with an entry).
local function entries(data)
  local ids, at = {}, 1
  while at <= #data do
    local kind, entry, length, stop = string.match(data, '^(%a)%d+,(%d+),(%d+):()', at)
    if (kind == 'J' or kind == 'j') and entry ~= '0' then ids[#ids + 1] = entry .. '-0' end
    at = stop + tonumber(length)
  end
  return ids
end
local function remove(id, member, found)
  local status, workflow, bot, strategy, request, digest =
    found[1], found[3], found[4], found[5], found[6], found[7]
  redis.call('ZREM', p .. 'index:all', member)
  redis.call('ZREM', p .. 'index:workflow:' .. workflow, member)
  if bot then redis.call('ZREM', p .. 'index:bot:' .. bot, member) end
  if strategy then redis.call('ZREM', p .. 'index:strategy:' .. strategy, member) end
  redis.call('ZREM', p .. 'index:status:' .. status, member)
  if request and redis.call('GET', p .. 'request:' .. request) == id then
    redis.call('DEL', p .. 'request:' .. request)
  end
  local data = p .. 'data:' .. id
  local ids = entries(redis.call('GET', data) or '')
  -- In slices: unpack() fails past the Lua stack's few thousand slots.
  for i = 1, #ids, 1000 do
    redis.call('XDEL', p .. 'events', unpack(ids, i, math.min(i + 999, #ids)))
  end
  if digest and redis.call('HINCRBY', p .. 'definitions', digest, -1) <= 0 then
    redis.call('HDEL', p .. 'definitions', digest)
    redis.call('DEL', p .. 'definition:' .. digest)
  end
  redis.call('DEL', p .. 'execution:' .. id, data)
end
local removed, kept, examined, last = 0, 0, 0, ''
while removed < quota and examined < budget do
  local best, from = nil, 0
  for k = 1, #indexes do
    local member = peek(k)
    if member and (not best or earlier(member, best)) then best, from = member, k end
  end
  if not best then return {removed, kept, ''} end
  cursor[from] = cursor[from] + 1
  examined = examined + 1
  last = best
  -- The member is '<16 hex digits>:<execution id>'.
  local id = string.sub(best, 18)
  local found = redis.call(
    'HMGET', p .. 'execution:' .. id, 'st', 'fin', 'wf', 'bot', 'strat', 'req', 'def', 'open')
  local at = tonumber(found[2])
  if found[1] and found[3] and FINALS[found[1]] and at and at < before then
    if found[8] then
      kept = kept + 1
    else
      remove(id, best, found)
      removed = removed + 1
    end
  end
end
return {removed, kept, last}
"""
)

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

_ORPHAN_CANCELLED: Final = "cancelled while no executor ran it"
"""The error of an orphan ended ``cancelled`` by ``request_cancel``."""

_MAX_SCAN_CHUNK: Final = 1000
_EVENT_ENTRIES: Final = 32
"""Entries of ``p:events`` a page of events reads first (a batch has a few events)."""
_PRUNE_CHUNK: Final = 100
"""Executions one prune script removes at most: a script blocks Redis while it runs."""
_PRUNE_BUDGET: Final = 1000
"""Index members one prune script looks at at most (kept, or ended after the horizon)."""


_APPEND_ABOVE: Final = 4096
"""A journal up to this size is extended by GET and SET (an exact allocation), past it by
APPEND (amortized: Redis over-allocates the string it extends)."""
_LAYOUT: Final = b"2"
"""The layout this module reads and writes (``p:layout``): see the module docstring."""
_LAYOUT_1_KEYS: Final = ("event_cursor", "index:all", "events")
"""Keys the layout before ``p:layout`` existed has once anything was written."""

_ZDICT: Final = (
    "".join(
        f'"{word}"'
        for word in (
            *(t.value for t in EventType),
            *(s.value for s in CheckpointState),
            *(s.value for s in ExecutionStatus),
            "outputs",
            "duration_ms",
            "client_order_id",
            "order_id",
            "status",
            "filled_quantity",
            "avg_price",
            "execution_id",
            "workflow_id",
            "correlation_id",
            "results",
            "errors",
            "skipped",
            "error",
            "started_at",
            "finished_at",
            "price",
            "quantity",
            "side",
            "symbol",
            "triggered",
            "value",
            "result",
            "timestamp",
            "filled",
        )
    )
).encode() + to_json_bytes(
    [
        # A frame's shape (the end of a dictionary is the cheapest to refer to).
        [
            0,
            ["", "", None, None, 0],
            [
                [EventType.EXECUTION_STARTED, 0, 1, 0, None, {}],
                [EventType.NODE_STARTED, 0, 2, 0, "", {}],
                [EventType.NODE_COMPLETED, 0, 3, 0, "", {"outputs": {}, "duration_ms": 0.0}],
                [EventType.NODE_STARTED, 0, 4, 0, "", {}],
                [
                    EventType.NODE_COMPLETED,
                    0,
                    5,
                    0,
                    "",
                    {"outputs": {"result": True}, "duration_ms": 0.0},
                ],
            ],
            [
                ["", CheckpointState.COMPLETED, 0, {}, None, 1],
                ["", CheckpointState.INTENT, 0, {"client_order_id": ":buy"}, None, 1],
            ],
        ],
        [
            EventType.EXECUTION_COMPLETED,
            0,
            22,
            0,
            None,
            {"status": "completed", "duration_ms": 0.0},
        ],
        {
            "status": "completed",
            "execution_id": "",
            "workflow_id": "",
            "correlation_id": "",
            "results": {},
            "errors": {},
            "skipped": [],
            "error": None,
            "started_at": "",
            "finished_at": "",
            "duration_ms": 0.0,
        },
    ]
)
"""The preset dictionary of every journal frame's DEFLATE stream: the engine's own
vocabulary (event types, states, the result's and orders' keys) and a frame's shape.
Frozen: a stored frame is read with the dictionary it was written with (a new one needs
a new frame kind)."""
_WBITS: Final = -15
"""Raw DEFLATE (no zlib header nor checksum: Redis keeps the bytes it was given)."""
_EXACT_INTS: Final = 2**53
"""Integers a float holds exactly."""
_WINDOW: Final = 32768
"""DEFLATE's window: the most of a preset dictionary it uses (its end)."""
_CHAINED: Final = (b"j", b"s")
"""The kinds of frames chained to the frame before them (``J`` and ``S`` are not)."""
_TAIL_BYTES: Final = 16
"""The last bytes of a journal a chained write checks, with its size."""
_TAILS: Final = 4096
"""Executions whose journal's last frame a store keeps (to chain the next one to it)."""


class _Again:
    """A write script's answer that the batch must be sent again, full."""


class _Resend:
    """A write script's answer that some events of the batch are stored already: send
    it again without the events not above ``lasts`` (each execution's last sequence)."""

    __slots__ = ("lasts",)

    def __init__(self, lasts: dict[str, int]) -> None:
        self.lasts = lasts


_AGAIN: Final = _Again()
_WRITE_ROUNDS: Final = 4
"""Round trips of one write at most: one that finds the script gone, one that finds the
execution gone, one that finds events stored already, and the last."""


class _Encoded(NamedTuple):
    """A batch as the write script takes it."""

    args: tuple[bytes, ...]
    target: str | None
    owners: list[str]
    """The executions with a frame, in the script's order."""
    raw: bytes | None
    """The raw JSON of the target's frame, if it has one."""
    end: str
    """The hex of that frame's last bytes."""


class _Tail(NamedTuple):
    """The end of a live execution's journal as this store wrote it."""

    size: int
    end: str
    """The hex of its last bytes (a check, with the size, that nobody wrote since)."""
    raw: bytes
    """The raw JSON of its last frame."""


class _Journal:
    """One execution's part of a batch: what its frame in ``p:data:<id>`` holds."""

    __slots__ = ("checkpoints", "events", "positions")

    def __init__(self) -> None:
        self.checkpoints: list[Checkpoint] = []
        self.events: list[Event] = []
        self.positions: list[int] = []
        """Each event's position in the batch's events (its cursor: the first + this)."""

    def __bool__(self) -> bool:
        return bool(self.events or self.checkpoints)

    def frame(self, kind: str, carries: bool) -> list[Any]:
        """The script's frame entry (see ``_WRITE``)."""
        nodes: dict[str, int] = {}
        for c in self.checkpoints:
            nodes[c.node_id] = 1 if unresolved_intent(c) else 0
        events = self.events
        return [
            str(events[0].sequence) if events else False,
            str(events[-1].sequence) if events else False,
            kind,
            carries,
            [item for pair in nodes.items() for item in pair],
        ]

    def body(
        self, owner: str, result: dict[str, Any] | None, previous: bytes
    ) -> tuple[bytes, bytes]:
        """The frame's compressed body (see the module docstring), chained to the raw
        JSON ``previous`` of the journal's last frame unless empty; and its raw JSON."""
        events = self.events
        stem: list[Any] = []
        rows: list[list[Any]] = []
        base: float | None = None
        if events:
            head = events[0]
            scope = [head.correlation_id, head.workflow_id, head.bot_id, head.strategy_id]
            stamps = [e.timestamp for e in events] + [c.updated_at for c in self.checkpoints]
            base = head.timestamp if _tickable(head.timestamp, stamps) else None
            stem = [*scope, base]
        for e in events:
            row = [
                e.type,
                0 if e.event_id == f"{owner}-{e.sequence}" else e.event_id,
                e.sequence,
                e.timestamp if base is None else _tick(e.timestamp, base),
                e.node_id,
                e.data,
            ]
            scope = [e.correlation_id, e.workflow_id, e.bot_id, e.strategy_id]
            if scope != stem[:4]:
                row += scope
            rows.append(row)
        positions: list[int] | int = self.positions
        if self.positions == list(range(len(self.positions))):
            positions = 0
        checkpoints = [
            [
                c.node_id,
                c.state.value,
                c.updated_at if base is None else _tick(c.updated_at, base),
                c.outputs,
                c.error,
                c.attempt,
            ]
            for c in self.checkpoints
        ]
        body: list[Any] = [positions, stem, rows, checkpoints]
        if result is not None:
            body.append(result)
        raw = to_json_bytes(body)
        compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS, zdict=_dictionary(owner, previous))
        return compressor.compress(raw) + compressor.flush(), raw


def _tickable(base: float, stamps: list[float]) -> bool:
    """Whether every one of ``stamps`` is ``base`` plus a whole number of ``base``'s ulps,
    read back exactly (:func:`_tick`, :func:`_untick`): a few digits each instead of 17."""
    if not isinstance(base, float) or not math.isfinite(base) or base == 0.0:
        return False
    ulp = math.ulp(base)
    for stamp in stamps:
        if not isinstance(stamp, float):
            return False
        ticks = (stamp - base) / ulp
        if not (ticks.is_integer() and abs(ticks) < _EXACT_INTS and base + ticks * ulp == stamp):
            return False
    return True


def _tick(stamp: float, base: float) -> int:
    return int((stamp - base) / math.ulp(base))


def _untick(ticks: int, base: float | None) -> float:
    return ticks if base is None else base + ticks * math.ulp(base)


def _dictionary(owner: str, previous: bytes) -> bytes:
    """A frame's preset dictionary: :data:`_ZDICT`, the execution id, and the raw JSON of
    the frame before it when chained (DEFLATE's window: its last 32 kB)."""
    return (_ZDICT + owner.encode() + previous)[-_WINDOW:]


def _inflated(owner: str, data: bytes) -> list[tuple[int, bytes]]:
    """A journal's frames: (first cursor, raw JSON) each, in write order."""
    frames = []
    at = 0
    previous = b""
    while at < len(data):
        colon = data.index(b":", at)
        first, _, length = data[at + 1 : colon].split(b",")
        stop = colon + 1 + int(length)
        chained = data[at : at + 1] in _CHAINED
        inflater = zlib.decompressobj(
            _WBITS, zdict=_dictionary(owner, previous if chained else b"")
        )
        previous = inflater.decompress(data[colon + 1 : stop]) + inflater.flush()
        frames.append((int(first), previous))
        at = stop
    return frames


def decode_journal(
    execution_id: str, data: bytes
) -> tuple[dict[str, Checkpoint], list[tuple[int, Event]]]:
    """An execution's journal (the ``p:data:<id>`` string, see the module docstring): its
    checkpoints by node (the latest of each) and its events with their cursors, in order.
    For readers of the raw layout, such as a test's atomic snapshot."""
    checkpoints: dict[str, Checkpoint] = {}
    events: list[tuple[int, Event]] = []
    for first, raw in _inflated(execution_id, data):
        positions, stem, rows, saved, *_ = from_json(raw)
        base = stem[4] if stem else None
        for i, row in enumerate(rows):
            type_, event_id, sequence, timestamp, node_id, payload, *scope = row
            correlation, workflow, bot, strategy = scope or stem[:4]
            event = Event(
                type_,
                f"{execution_id}-{sequence}" if event_id == 0 else event_id,
                sequence,
                _untick(timestamp, base),
                correlation,
                execution_id,
                workflow,
                bot,
                strategy,
                node_id,
                payload,
            )
            events.append((first + (positions[i] if positions else i), event))
        for node_id, state, updated_at, outputs, error, attempt in saved:
            checkpoints[node_id] = Checkpoint(
                execution_id,
                node_id,
                CheckpointState(state),
                _untick(updated_at, base),
                outputs,
                error,
                attempt,
            )
    return checkpoints, events


def _result_of(execution_id: str, journal: bytes) -> Any:
    """The result the last frame of ``journal`` (as the record scripts return it: up to the
    end of the frame that holds it) carries."""
    return from_json(_inflated(execution_id, journal)[-1][1])[4]


def _number(value: float) -> str:
    """A JSON number (read back exactly by ``from_json``)."""
    return to_json_bytes(value).decode()


def _optional(fields: list[str], absent: list[str], name: str, value: str | None) -> None:
    """Set ``name`` to ``value``, or delete it when ``value`` is ``None``."""
    if value is None:
        absent.append(name)
    else:
        fields += (name, value)


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


def _checked(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``method`` after the store's layout check (once per store), both ``_retried``.
    Lease operations are not checked: their keys are the same in every layout, and the
    emergency service runs them with a user that may read nothing else."""

    async def checked(*args: P.args, **kwargs: P.kwargs) -> T:
        store = cast(RedisStateStore, args[0])
        if not store._layout_checked:
            await store.check_layout()
        return await method(*args, **kwargs)

    return _retried(functools.wraps(method)(checked))


class RedisStateStore:
    """Executions, checkpoints and event history in Redis, under ``prefix``.

    ``client`` must return bytes (the default, ``decode_responses=False``) and
    stays its owner's to close. ``max_events`` caps the global event stream (its
    entries whose events are all older than the last ``max_events`` are trimmed; the
    executions' journals are never trimmed); ``None`` keeps all.
    """

    __slots__ = (
        "_acquire_script",
        "_cancel_script",
        "_claim_script",
        "_client",
        "_events_cap",
        "_events_script",
        "_find_script",
        "_halts",
        "_layout_checked",
        "_live",
        "_live_script",
        "_orphans_script",
        "_p",
        "_prune_script",
        "_read_script",
        "_release_script",
        "_renew_script",
        "_tails",
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
        self._write_script = client.register_script(
            f"{_RANKS}local APPEND_ABOVE = {_APPEND_ABOVE}\n{_WRITE}"
        )
        self._events_script = client.register_script(_EVENTS)
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
        writes update only the state fields and the status index (still fenced: the
        fence is checked in the script whichever fields it writes)."""
        self._tails: dict[str, _Tail] = {}
        """Live executions' journal sizes and last frames' raw JSON, as this store wrote
        them (a write checks the size before it chains a frame to that one)."""
        self._layout_checked = False

    async def check_layout(self) -> None:
        """Refuse (``ConfigurationError``, saying what to do) a prefix that holds the
        layout before this one; mark an empty one as this layout. Every operation runs
        it once per store (a connection error leaves it to the next)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._p + "layout")
        pipe.exists(*(self._p + key for key in _LAYOUT_1_KEYS))
        layout, older = await pipe.execute()
        if layout is None and older:
            prefix = self._p[:-1]
            raise ConfigurationError(
                f"redis state under prefix {prefix!r} is in the layout before layout 2 "
                f"(no {prefix}:layout key; {prefix}:execution_events:* streams): this version "
                "does not read it. Finish or prune its executions with the previous version "
                f"and delete its state keys ({prefix}:execution:*, {prefix}:checkpoints:*, "
                f"{prefix}:execution_events:*, {prefix}:events, {prefix}:event_cursor, "
                f"{prefix}:index:*, {prefix}:request:*; never {prefix}:paper:*, the ledger, "
                f"nor the emergency keys), or set TRADEFLOW_REDIS_PREFIX to a new prefix"
            )
        if layout is None:
            await self._client.set(self._p + "layout", _LAYOUT, nx=True)
        elif layout != _LAYOUT:
            raise ConfigurationError(
                f"redis state under prefix {self._p[:-1]!r} is in layout {layout.decode()!r}, "
                f"this version reads layout {_LAYOUT.decode()}: upgrade the state service"
            )
        self._layout_checked = True

    @_checked
    async def write(self, batch: StateBatch) -> None:
        """Raises ``InvalidRequest`` (field ``request_id``) when another execution
        already holds the execution's ``request_id``, ``LeaseLost`` when the batch's
        fence is not the live lease its execution records (or it has none and the
        execution is owned), and ``EmergencyHalted`` when the batch's guard is refused by
        the trading state of its scopes (read from the emergency state's halts under the
        same prefix, after the fence); nothing is written then."""
        lasts: dict[str, int] = {}
        for _ in range(_WRITE_ROUNDS):
            sent = self._encode(batch, lasts)
            outcome = self._settle(batch, sent, await self._write_script(args=sent.args))
            if isinstance(outcome, _Resend):
                lasts = outcome.lasts
            elif not isinstance(outcome, _Again):
                if outcome is not None:
                    raise outcome
                return
        raise UnavailableError("redis state store: a batch could not be written")

    @_checked
    async def write_many(self, batches: Sequence[StateBatch]) -> list[TradeflowError | None]:
        """Group commit: one pipeline of write scripts (not a transaction: each batch is
        its own atomic script), one round trip; each outcome is what :meth:`write` would
        raise, or ``None``. A batch that cannot be encoded as JSON is refused on its own
        (``InvalidRequest``, field ``batch``). A state-only write of an execution pruned
        meanwhile is sent again, full, in a second round trip (so is every batch after a
        restarted server lost the script)."""
        outcomes: list[TradeflowError | None] = [None] * len(batches)
        pending = list(range(len(batches)))
        lasts: dict[int, dict[str, int]] = {}
        # At most: a round trip that finds the script gone, one that finds an execution
        # gone, one that finds events stored already, and the last.
        for _ in range(_WRITE_ROUNDS):
            if not pending:
                return outcomes
            pending = await self._write_round(batches, pending, outcomes, lasts)
        raise UnavailableError("redis state store: a batch could not be written")

    async def _write_round(
        self,
        batches: Sequence[StateBatch],
        indexes: list[int],
        outcomes: list[TradeflowError | None],
        lasts: dict[int, dict[str, int]],
    ) -> list[int]:
        """One pipeline of the write scripts of ``batches[indexes]``; sets their
        ``outcomes``, and ``lasts`` of those to send again without stored events;
        returns the indexes to send again."""
        sent: list[tuple[int, _Encoded]] = []
        pipe = self._client.pipeline(transaction=False)
        for i in indexes:
            try:
                encoded = self._encode(batches[i], lasts.get(i, {}))
            except (TypeError, ValueError) as exc:
                outcomes[i] = InvalidRequest("batch", "values JSON can encode", describe(exc))
                continue
            pipe.evalsha(self._write_script.sha, 0, *encoded.args)
            sent.append((i, encoded))
        if not sent:
            return []
        again: list[int] = []
        lost_script = False
        replies = await pipe.execute(raise_on_error=False)
        for (i, encoded), reply in zip(sent, replies, strict=True):
            if isinstance(reply, NoScriptError):
                lost_script = True
                again.append(i)
            elif isinstance(reply, BaseException):
                # This batch's own failure (an out-of-memory or read-only server, say):
                # the others of the pipeline were written or refused on their own.
                outcomes[i] = UnavailableError(f"redis state store: {describe(reply)}")
            elif isinstance(outcome := self._settle(batches[i], encoded, reply), _Again):
                again.append(i)
            elif isinstance(outcome, _Resend):
                lasts[i] = outcome.lasts
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

    @_checked
    async def _prune_chunk(
        self, lower: str, upper: str, ended_before: float, quota: int
    ) -> tuple[int, int, str]:
        """One prune script: removed, kept, and the last member seen ('' once through)."""
        removed, kept, last = await self._prune_script(
            args=(self._p, lower, upper, repr(float(ended_before)), quota, _PRUNE_BUDGET)
        )
        return int(removed), int(kept), last.decode()

    def _encode(self, batch: StateBatch, lasts: dict[str, int]) -> _Encoded:
        """The write script's arguments for ``batch`` (see ``_WRITE``) without the events
        not above ``lasts`` (each execution's last stored sequence)."""
        execution = batch.execution
        record: list[Any] | bool = False
        definition = b""
        target: str | None = None
        if execution is not None:
            record, definition = self._describe(execution)
            target = execution.execution_id
        elif batch.checkpoints:
            target = batch.checkpoints[0].execution_id
        else:
            # The first event's execution that has one.
            target = next(
                (e.execution_id for e in batch.events if e.execution_id is not None), None
            )
        journals: dict[str, _Journal] = {}
        for c in batch.checkpoints:
            journals.setdefault(c.execution_id, _Journal()).checkpoints.append(c)
        # An event not above the last sequence stored (or kept here) for its execution is
        # stored already; events of no execution are kept.
        last: dict[str, float] = dict(lasts)
        inline: list[Any] = []
        count = 0
        for event in batch.events:
            owner = event.execution_id
            if owner is None:
                inline.append([count, tuple(event)])
            elif event.sequence > last.get(owner, -1e308):
                last[owner] = event.sequence
                journal = journals.setdefault(owner, _Journal())
                journal.positions.append(count)
                journal.events.append(event)
            else:
                continue
            count += 1
        result = None if execution is None else execution.result
        if execution is not None and result is not None:
            journals.setdefault(execution.execution_id, _Journal())
        owners = [
            owner
            for owner, journal in journals.items()
            if journal or (result is not None and owner == target)
        ]
        sole = sum(1 for owner in owners if journals[owner].events) == 1 and not inline
        frames = []
        bodies = []
        raw: bytes | None = None
        end = ""
        for owner in owners:
            journal = journals[owner]
            carries = result is not None and owner == target
            tail = self._tails.get(owner) if owner == target else None
            kind = "J" if sole else "S"
            frame = journal.frame(kind.lower() if tail else kind, carries)
            frame.append([tail.size, tail.end] if tail else False)
            frames.append(frame)
            body, text = journal.body(owner, result if carries else None, tail.raw if tail else b"")
            bodies.append(body)
            if owner == target:
                raw = text
                end = body[-_TAIL_BYTES:].hex()
        fence = batch.fence
        header = [
            self._p,
            self._events_cap,
            record,
            owners,
            frames,
            count,
            False if fence is None else (fence[0], str(fence[1])),
            False if target is None else target,
            self._guard(batch.guard),
        ]
        args = (
            to_json_bytes(header),
            definition,
            to_json_bytes(inline) if inline else b"",
            *bodies,
        )
        return _Encoded(args, target, owners, raw, end)

    def _settle(
        self, batch: StateBatch, sent: _Encoded, reply: Any
    ) -> TradeflowError | _Again | _Resend | None:
        """What the write script's ``reply`` to ``sent`` means for ``batch``: ``None``
        (written), the refusal, ``_AGAIN`` (write it again: full, as it was pruned
        meanwhile, or unchained) or a ``_Resend`` (again, without the stored events)."""
        execution = batch.execution
        target, owners = sent.target, sent.owners
        code = reply[0] if isinstance(reply, list) else None
        if code == 0:
            if execution is not None:
                if execution.status is ExecutionStatus.RUNNING:
                    self._live.add(execution.execution_id)
                else:
                    self._live.discard(execution.execution_id)
            if target is not None:
                self._remember(target, reply[1], sent)
            return None
        if target is not None and code in (5, 7):
            self._tails.pop(target, None)
        if code == 7:
            return _AGAIN
        if code == 5:
            assert execution is not None
            self._live.discard(execution.execution_id)
            return _AGAIN
        if code == 6:
            return _Resend(
                {
                    owner: int(held)
                    for owner, held in zip(owners, reply[1:], strict=False)
                    if held is not None
                }
            )
        return self._refused(reply, batch, target)

    @_checked
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        (row,) = await self._read_script(args=(self._p, execution_id))
        if not row:
            raise ExecutionNotFound(execution_id)
        return _record(execution_id, row)

    @_checked
    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        found = await self._find_script(args=(self._p, request_id))
        if not found or not found[1]:
            return None
        return _record(found[0].decode(), found[1])

    @_checked
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

    @_checked
    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        data = cast(bytes | None, await self._client.get(self._p + "data:" + execution_id))
        return decode_journal(execution_id, data)[0] if data else {}

    @_checked
    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = MAX_EVENTS_PAGE
    ) -> Sequence[tuple[int, Event]]:
        """Cursors are global: the same for an event read with or without ``execution_id``."""
        after = max(after, 0)
        limit = max(1, min(limit, MAX_EVENTS_PAGE))
        if execution_id is not None:
            data = cast(bytes | None, await self._client.get(self._p + "data:" + execution_id))
            if not data:
                return []
            events = decode_journal(execution_id, data)[1]
            return [(cursor, e) for cursor, e in events if cursor > after][:limit]
        found: list[tuple[int, Event]] = []
        # An entry holds one event or more (a batch's), and those of pruned executions
        # are skipped: entries are read in growing chunks until the page is full or the
        # stream ends.
        chunk = min(limit, _EVENT_ENTRIES)
        while len(found) < limit:
            entries, flat = await self._events_script(args=(self._p, f"{after + 1}-0", chunk))
            if not entries:
                break
            journals: dict[bytes, list[tuple[int, Event]]] = {
                owner: decode_journal(owner.decode(), data)[1]
                for owner, data in zip(flat[::2], flat[1::2], strict=True)
            }
            for entry_id, flat_fields in entries:
                fields = dict(zip(flat_fields[::2], flat_fields[1::2], strict=True))
                found += _entry_events(int(entry_id.partition(b"-")[0]), fields, journals, after)
            after = int(entries[-1][0].partition(b"-")[0])
            if len(entries) < chunk:
                break
            chunk = min(chunk * 2, limit)
        return found[:limit]

    @_checked
    async def last_sequence(self, execution_id: str) -> int:
        """The execution's ``seq``: writes store only higher ones."""
        held = await self._client.hget(self._p + "execution:" + execution_id, "seq")
        return 0 if held is None else int(held)

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

    @_checked
    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        """One script that also makes it running and moves its status index (whose member
        it is given: read first, as ``started_at`` never changes)."""
        owner, epoch = lease.info.owner, lease.epoch
        start = await self._client.hget(self._p + "execution:" + execution_id, "start")
        if start is None:
            raise ExecutionNotFound(execution_id)
        member = _member(from_json(start), execution_id)
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

    @_checked
    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        if limit <= 0:
            return []
        rows = await self._orphans_script(args=(self._p, limit))
        return [_record(execution_id.decode(), row) for execution_id, row in rows]

    @_checked
    async def request_cancel(self, execution_id: str) -> ExecutionRecord:
        """An orphan (interrupted, or running with no live owner) is ended ``cancelled`` in
        the same script that finds it so (Redis's clock for its ``finished_at``)."""
        # started_at is fixed: the index member read here is still the one the script moves.
        start = await self._client.hget(self._p + "execution:" + execution_id, "start")
        if start is None:
            raise ExecutionNotFound(execution_id)
        member = _member(from_json(start), execution_id)
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
        self._tails.clear()

    def _remember(self, target: str, size: int | None, sent: _Encoded) -> None:
        """Keep the last frame of a live execution's journal (``size``: the journal's size
        after it), to chain its next frame to; forget it once it is not live."""
        if target not in self._live:
            self._tails.pop(target, None)
        elif sent.raw is not None and size is not None:
            self._tails.pop(target, None)
            if len(self._tails) >= _TAILS:
                del self._tails[next(iter(self._tails))]
            self._tails[target] = _Tail(int(size), sent.end, sent.raw)

    def _describe(self, r: ExecutionRecord) -> tuple[list[Any], bytes]:
        """The script's header entry for ``r`` (see ``_WRITE``), and its definition's JSON
        when the entry is full (else ``b""``)."""
        status = r.status.value
        fields: list[str] = ["st", status]
        absent: list[str] = []
        _optional(fields, absent, "fin", None if r.finished_at is None else _number(r.finished_at))
        _optional(fields, absent, "err", r.error)
        if r.result is None:
            absent.append("res")
        member = _member(r.started_at, r.execution_id)
        if r.execution_id in self._live:
            # Live executions are running and their fixed fields and definition are stored.
            return [r.execution_id, member, status, False, [], False, fields, absent, False], b""
        definition = to_json_bytes(r.definition)
        digest = hashlib.blake2b(definition, digest_size=16).hexdigest()
        fields += ("wf", r.workflow_id, "start", _number(r.started_at), "def", digest)
        # Most runs' correlation id is their execution id: then it is not stored.
        _optional(
            fields, absent, "corr", None if r.correlation_id == r.execution_id else r.correlation_id
        )
        _optional(fields, absent, "bot", r.bot_id)
        _optional(fields, absent, "strat", r.strategy_id)
        _optional(fields, absent, "req", r.request_id)
        indexes = ["index:all", "index:workflow:" + r.workflow_id]
        if r.bot_id is not None:
            indexes.append("index:bot:" + r.bot_id)
        if r.strategy_id is not None:
            indexes.append("index:strategy:" + r.strategy_id)
        request_id = False if r.request_id is None else r.request_id
        entry = [r.execution_id, member, status, True, indexes, request_id, fields, absent, digest]
        return entry, definition

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
            self._tails.pop(target, None)
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


def _entry_events(
    entry: int,
    fields: dict[bytes, bytes],
    journals: dict[bytes, list[tuple[int, Event]]],
    after: int,
) -> list[tuple[int, Event]]:
    """The events (cursor above ``after``) of the ``p:events`` entry ``entry`` (its id's
    cursor), from the journals of the executions it names (gone ones: skipped)."""
    first = entry - int(fields[b"n"]) + 1
    found = [
        (cursor, event)
        for owner in fields[b"x"].split(b"\n")
        if owner
        for cursor, event in journals.get(owner, ())
        if first <= cursor <= entry and cursor > after
    ]
    if b"e" in fields:
        found += (
            (first + position, Event(*event))
            for position, event in from_json(fields[b"e"])
            if first + position > after
        )
    found.sort(key=lambda pair: pair[0])
    return found


def _text(raw: dict[bytes, bytes], field: bytes) -> str | None:
    value = raw.get(field)
    return None if value is None else value.decode()


def _record(execution_id: str, flat: list[bytes]) -> ExecutionRecord:
    """A record from its hash as a script returns it (flat, with ``owner_live``, and
    ``definition`` and ``result`` when it has them)."""
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    finished = raw.get(b"fin")
    frame = raw.get(b"result")
    owner = raw.get(b"owner")
    return ExecutionRecord(
        execution_id=execution_id,
        workflow_id=raw[b"wf"].decode(),
        status=ExecutionStatus(raw[b"st"].decode()),
        started_at=from_json(raw[b"start"]),
        definition=from_json(raw[b"definition"]),
        correlation_id=_text(raw, b"corr") or execution_id,
        bot_id=_text(raw, b"bot"),
        strategy_id=_text(raw, b"strat"),
        finished_at=None if finished is None else from_json(finished),
        error=_text(raw, b"err"),
        result=None if frame is None else _result_of(execution_id, frame),
        request_id=_text(raw, b"req"),
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
