"""The paper exchange's ledger in Redis: the production one, shared by every replica.

Layout (``p`` is ``<prefix>:paper:``):

- ``p:orders:<venue>`` hash: client order id -> ``<status>\\n<JSON>``, the JSON an array
  of the order's other fields (its venue and client order id are in the key and the
  field), the scope ids last (absent from orders stored before they were kept). The
  status leads so that cancelling rewrites it without decoding the rest;
- ``p:open:<venue>`` set: the client order ids of the venue's resting orders (what
  cancel-on-halt reads: never every order ever placed). Orders left resting by a
  version that did not keep this set are not in it;
- ``p:balances:<venue>`` hash: asset -> amount, from the venue's first fill on;
- ``p:positions:<venue>`` hash: symbol -> ``"<quantity> <avg_price>"``;
- ``p:pnl`` hash: UTC day (days since the epoch) -> realized P&L minus fees;
- ``p:fills`` list: every fill as a JSON array of :class:`Fill`'s fields, oldest first;
- ``p:books:<scope>`` hash, one per scope (``<scope>`` is
  :func:`~tradeflow.domain.risk.scope_key`: ``global``, ``bot:b1``...): ``<book>`` ->
  ``"<quantity> <avg_price>"``, the scope's position in each book it traded, a book
  being the JSON array ``[venue, symbol]``; ``global``'s repeat the venues' positions;
- ``p:marks`` hash: ``<book>`` -> its last fill price;
- ``p:realized`` hash: scope -> realized P&L minus fees since the ledger began;
- ``p:resting`` hash: scope -> its resting orders (all venues);
- ``p:buckets`` hash: scope -> ``"<tokens> <at>"``, its ``order_rate`` token bucket,
  from the first order judged against one.

A Redis written before the per-scope keys existed keeps what it holds: its scope books,
realized P&L and marks count the fills from then on (a position held before is marked
from its book's next fill on), and its resting orders are not counted (cancelling one
never takes a count below zero).

``accept`` and ``cancel`` are each one Lua script, so nothing runs between the
deduplication, the shared pre-trade checks, the balance check and the writes: of two
replicas placing one client order id, one stores it and the other gets that order
back, and N replicas cannot overshoot a shared limit N times. The script does the
ledger arithmetic itself, repeating :func:`~tradeflow.domain.risk.shared_denial`,
:func:`~tradeflow.domain.trading.settle` and
:func:`~tradeflow.domain.trading.average_cost` operation for operation; every amount
crosses as text that round-trips exactly (Python's ``repr`` in, ``'%.17g'`` stored),
never through ``cjson``, which keeps 14 digits. A denial comes back as (check, rule,
value) and Python words it (:func:`~tradeflow.domain.risk.rule_denial`). The order and
fill JSON is written and read by Python only (orjson, exact), but for ``cancel``, which
decodes a cancelled order's scope ids (only ids) to count its resting orders down.

What the per-scope books cost each ``accept`` (commands inside the one script call):
a fill adds ``HSET`` of the ``global`` book and of the mark, ``HMGET`` + ``HSET`` of
the realized P&L, and ``HGET`` + ``HSET`` of the book of each other scope the order
names (up to three); an order that rests adds ``HMGET`` + ``HSET`` of the resting
counts; an ``order_rate`` rule adds ``HMGET`` + ``HSET`` of the buckets. The checks
read nothing else: a position is read once, and the fill's average cost reuses it
(only a resting order under a ``max_position`` rule of a scope other than global reads
that scope's book for the check alone). ``cancel`` adds ``HMGET`` + ``HSET`` of the
resting counts when it cancels.

Both scripts are safe to run twice, so every call is retried once after a connection
error (see :data:`~tradeflow.adapters.redis.connection.reconnecting`); a Redis that
stays unreachable or refuses raises ``ExchangeError``. The keys are passed as
``KEYS``, but one call spans several of them: a standalone Redis, like the state store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from tradeflow.adapters.redis.connection import reconnecting
from tradeflow.domain.codec import from_json, to_json_bytes
from tradeflow.domain.errors import ConfigurationError, ExchangeError, describe
from tradeflow.domain.records import Scope
from tradeflow.domain.risk import ScopeBook, ScopeRule, rule_denial, scope_key, scope_keys
from tradeflow.domain.trading import (
    BALANCE_TOLERANCE,
    FLAT,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Side,
    require_balance,
    signed_quantity,
    utc_day,
)

__all__ = ["RedisPaperLedger"]

# KEYS: [1] orders, [2] balances, [3] positions (of the order's venue), [4] pnl, [5] fills,
#   [6] open (of the venue), [7] realized, [8] marks, [9] resting, [10] buckets, then
#   [10 + i] the books of scope i, for each scope the script reads: the order's (global
#   first), then any other a rule names.
# ARGV: [1] client order id, [2] the order as stored, [3] asset required ('' for none),
#   [4] amount required, [5] the fill's JSON ('' when the order rests), [6] symbol,
#   [7] quote asset, [8] base asset, [9] the fill's signed quantity, [10] price, [11] fee,
#   [12] day, [13] the book's field, [14] the order's signed quantity, [15] its time,
#   [16] how many of the scopes are the order's, [17] how many rules, [18...] the scope
#   keys, then 5 per rule (its scope's index, max_position, max_open_orders, rate,
#   window; '' for none), then the venue's opening balances as asset, amount pairs.
# Returns {0, stored order} (the id was taken), {1} (accepted), {2, amount held}
# (insufficient: nothing written) or {3, check, rule (1-based), value} (denied: nothing
# written).
_ACCEPT: Final = (
    f"local TOLERANCE = {BALANCE_TOLERANCE!r}\n"
    + r"""
local orders, balances, positions = KEYS[1], KEYS[2], KEYS[3]
local stored = redis.call('HGET', orders, ARGV[1])
if stored then return {0, stored} end
local function fmt(x) return string.format('%.17g', x) end
local symbol, field, now = ARGV[6], ARGV[13], tonumber(ARGV[15])
local rests = string.sub(ARGV[2], 1, 5) == 'open\n'
local n_scopes, n_own, n_rules = #KEYS - 10, tonumber(ARGV[16]), tonumber(ARGV[17])
local scopes = {}
for i = 1, n_scopes do scopes[i] = ARGV[17 + i] end
local rules_at = 18 + n_scopes
local opening_at = rules_at + 5 * n_rules
local function rule(k, j) return ARGV[rules_at + 5 * (k - 1) + j] end

-- The position of scope i in the order's book (global's is the venue's), read once.
local quantities, averages = {}, {}
local function book(i)
  if quantities[i] == nil then
    local stored
    if i == 1 then stored = redis.call('HGET', positions, symbol)
    else stored = redis.call('HGET', KEYS[10 + i], field) end
    quantities[i], averages[i] = 0, 0
    if stored then
      local q, a = string.match(stored, '^(%S+) (%S+)$')
      quantities[i], averages[i] = tonumber(q), tonumber(a)
    end
  end
  return quantities[i], averages[i]
end

-- shared_denial(): positions, then resting orders, then rates, each in the rules' order.
local signed_order = tonumber(ARGV[14])
for k = 1, n_rules do
  if rule(k, 1) ~= '' then
    local before = book(tonumber(rule(k, 0)))
    local after = before + signed_order
    if math.abs(after) > tonumber(rule(k, 1)) + TOLERANCE and math.abs(after) > math.abs(before) then
      return {3, 'max_position', k, fmt(after)}
    end
  end
end
local resting = {}
if rests then
  local counts = redis.call('HMGET', KEYS[9], unpack(scopes))
  for i = 1, n_scopes do resting[i] = tonumber(counts[i] or '0') end
  for k = 1, n_rules do
    local i = tonumber(rule(k, 0))
    if rule(k, 2) ~= '' and resting[i] + 1 > tonumber(rule(k, 2)) then
      return {3, 'max_open_orders', k, fmt(resting[i] + 1)}
    end
  end
end
local buckets, taken = nil, {}
for k = 1, n_rules do
  if rule(k, 3) ~= '' then
    if not buckets then buckets = redis.call('HMGET', KEYS[10], unpack(scopes)) end
    local i = tonumber(rule(k, 0))
    local capacity, window = tonumber(rule(k, 3)), tonumber(rule(k, 4))
    -- take_token()
    local tokens, at = capacity, now
    if buckets[i] then
      local held, since = string.match(buckets[i], '^(%S+) (%S+)$')
      held, since = tonumber(held), tonumber(since)
      tokens = math.min(capacity, held + math.max(0, now - since) * capacity / window)
      at = math.max(since, now)
    end
    if tokens < 1 then return {3, 'order_rate', k, fmt(tokens)} end
    taken[#taken + 1] = scopes[i]
    taken[#taken + 1] = fmt(tokens - 1) .. ' ' .. fmt(at)
  end
end

local fresh = redis.call('EXISTS', balances) == 0
local function held(asset)
  if not fresh then return tonumber(redis.call('HGET', balances, asset) or '0') end
  for i = opening_at, #ARGV - 1, 2 do
    if ARGV[i] == asset then return tonumber(ARGV[i + 1]) end
  end
  return 0
end
if ARGV[3] ~= '' then
  local have = held(ARGV[3])
  if tonumber(ARGV[4]) - have > TOLERANCE then return {2, fmt(have)} end
end
redis.call('HSET', orders, ARGV[1], ARGV[2])
if rests then
  redis.call('SADD', KEYS[6], ARGV[1])
  local counts = {}
  for i = 1, n_own do
    counts[#counts + 1] = scopes[i]
    counts[#counts + 1] = string.format('%d', resting[i] + 1)
  end
  redis.call('HSET', KEYS[9], unpack(counts))
end
if #taken > 0 then redis.call('HSET', KEYS[10], unpack(taken)) end
if ARGV[5] == '' then return {1} end
local quote, base = ARGV[7], ARGV[8]
local signed, price, fee = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
-- settle()
local quote_after = held(quote) - signed * price - fee
local base_after = held(base) + signed
if fresh then
  for i = opening_at, #ARGV - 1, 2 do
    redis.call('HSET', balances, ARGV[i], fmt(tonumber(ARGV[i + 1])))
  end
end
redis.call('HSET', balances, quote, fmt(quote_after), base, fmt(base_after))
-- average_cost()
local function average_cost(quantity, avg)
  if quantity == 0 then return signed, price, 0 end
  local total = quantity + signed
  if (quantity > 0) == (signed > 0) then
    return total, (quantity * avg + signed * price) / total, 0
  end
  local closed = math.min(math.abs(signed), math.abs(quantity))
  local direction = -1
  if quantity > 0 then direction = 1 end
  local realized = closed * (price - avg) * direction
  if math.abs(total) <= TOLERANCE then return 0, 0, realized end
  if (total > 0) == (quantity > 0) then return total, avg, realized end
  return total, price, realized
end
-- Each of the order's books, global (the venue's) first.
local before = redis.call('HMGET', KEYS[7], unpack(scopes, 1, n_own))
local gains, day_realized = {}, 0
for i = 1, n_own do
  local quantity, avg, realized = average_cost(book(i))
  local position = fmt(quantity) .. ' ' .. fmt(avg)
  if i == 1 then
    redis.call('HSET', positions, symbol, position)
    day_realized = realized
  end
  redis.call('HSET', KEYS[10 + i], field, position)
  gains[#gains + 1] = scopes[i]
  gains[#gains + 1] = fmt(tonumber(before[i] or '0') + (realized - fee))
end
redis.call('HSET', KEYS[7], unpack(gains))
redis.call('HSET', KEYS[8], field, fmt(price))
local pnl = tonumber(redis.call('HGET', KEYS[4], ARGV[12]) or '0') + (day_realized - fee)
redis.call('HSET', KEYS[4], ARGV[12], fmt(pnl))
redis.call('RPUSH', KEYS[5], ARGV[5])
return {1}
"""
)

# KEYS: orders, open (of the venue), resting. ARGV: client order id. Returns the order as
# stored after the call, or nil. cjson only reads the scope ids (10 to 12 of the JSON
# array: workflow, bot, strategy), absent from orders stored before they were kept.
_CANCEL: Final = r"""
local order = redis.call('HGET', KEYS[1], ARGV[1])
if not order then return false end
if string.sub(order, 1, 5) == 'open\n' then
  local fields = cjson.decode(string.sub(order, 6))
  order = 'cancelled\n' .. string.sub(order, 6)
  redis.call('HSET', KEYS[1], ARGV[1], order)
  local scopes = {'global'}
  for i, scope in ipairs({'workflow', 'bot', 'strategy'}) do
    if type(fields[9 + i]) == 'string' then scopes[#scopes + 1] = scope .. ':' .. fields[9 + i] end
  end
  local counts = redis.call('HMGET', KEYS[3], unpack(scopes))
  local after = {}
  for i = 1, #scopes do
    after[#after + 1] = scopes[i]
    after[#after + 1] = string.format('%d', math.max(0, tonumber(counts[i] or '0') - 1))
  end
  redis.call('HSET', KEYS[3], unpack(after))
end
redis.call('SREM', KEYS[2], ARGV[1])
return order
"""

# KEYS: realized, resting, buckets, the scope's books, marks. ARGV: the scope key.
# Returns realized, resting, bucket ('' for none), then book, position, mark ('' for
# none) of each of its books.
_SCOPE_BOOK: Final = r"""
local out = {}
for i = 1, 3 do out[i] = redis.call('HGET', KEYS[i], ARGV[1]) or '' end
local books = redis.call('HGETALL', KEYS[4])
if #books == 0 then return out end
local fields = {}
for i = 1, #books, 2 do fields[#fields + 1] = books[i] end
local marks = redis.call('HMGET', KEYS[5], unpack(fields))
for i = 1, #fields do
  out[#out + 1] = books[2 * i - 1]
  out[#out + 1] = books[2 * i]
  out[#out + 1] = marks[i] or ''
end
return out
"""

# KEYS: orders, open (of the venue). ARGV: [1] the position (1-based) in the order's JSON
# array of the scope id to match, 0 for every order; [2] the id it must equal.
# Returns client order id, stored order, ... of the resting orders that match. cjson only
# reads the ids here: the amounts go back as stored.
_OPEN: Final = r"""
local field, out = tonumber(ARGV[1]), {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local order = redis.call('HGET', KEYS[1], id)
  if order and string.sub(order, 1, 5) == 'open\n'
      and (field == 0 or cjson.decode(string.sub(order, 6))[field] == ARGV[2]) then
    out[#out + 1] = id
    out[#out + 1] = order
  end
end
return out
"""

_TAKEN, _ACCEPTED, _INSUFFICIENT, _DENIED = 0, 1, 2, 3
_FIXED_KEYS: Final = 10
"""Keys of ``_ACCEPT`` before the scopes' books."""


class RedisPaperLedger:
    """The :class:`~tradeflow.adapters.memory.paper.PaperLedger` in Redis, under
    ``<prefix>:paper:``.

    ``client`` must return bytes (the default, ``decode_responses=False``) and stays
    its owner's to close; the state store's client and prefix fit.
    """

    __slots__ = (
        "_accept",
        "_buckets",
        "_cancel",
        "_client",
        "_fills",
        "_marks",
        "_open",
        "_p",
        "_pnl",
        "_realized",
        "_resting",
        "_scope_book",
    )

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tradeflow") -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "redis client for the paper ledger: expected decode_responses=False, found True"
            )
        self._client = client
        self._p = f"{prefix}:paper:"
        self._pnl = f"{self._p}pnl"
        self._fills = f"{self._p}fills"
        self._realized = f"{self._p}realized"
        self._marks = f"{self._p}marks"
        self._resting = f"{self._p}resting"
        self._buckets = f"{self._p}buckets"
        self._accept = client.register_script(_ACCEPT)
        self._cancel = client.register_script(_CANCEL)
        self._open = client.register_script(_OPEN)
        self._scope_book = client.register_script(_SCOPE_BOOK)

    async def accept(
        self,
        order: Order,
        fill: Fill | None,
        *,
        opening: Mapping[str, float],
        require: tuple[str, float] | None,
        rules: Sequence[ScopeRule] = (),
    ) -> Order:
        venue, symbol = order.venue, order.symbol
        asset, needed = require if require is not None else ("", 0.0)
        args: list[str | bytes] = [order.client_order_id, _encode_order(order), asset, repr(needed)]
        if fill is None:
            args += ("", "", "", "", "", "", "", "")
        else:
            base, _, quote = symbol.partition("/")
            args += (
                to_json_bytes(
                    [
                        venue,
                        symbol,
                        fill.client_order_id,
                        fill.side.value,
                        fill.quantity,
                        fill.price,
                        fill.fee,
                        fill.at,
                    ]
                ),
                symbol,
                quote,
                base,
                repr(signed_quantity(fill)),
                repr(fill.price),
                repr(fill.fee),
                str(utc_day(fill.at)),
            )
        # The order's scopes (global first), then any other a rule names (judged only).
        scopes = list(scope_keys(order.workflow_id, order.bot_id, order.strategy_id))
        own = len(scopes)
        for rule in rules:
            if rule.key not in scopes:
                scopes.append(rule.key)
        signed_order = order.quantity if order.side is Side.BUY else -order.quantity
        args += (
            _book_field(venue, symbol),
            repr(signed_order),
            repr(order.created_at),
            str(own),
            str(len(rules)),
            *scopes,
        )
        for rule in rules:
            args += (str(scopes.index(rule.key) + 1), *_rule_args(rule))
        for name, amount in opening.items():
            args += (name, repr(float(amount)))
        keys = [
            f"{self._p}orders:{venue}",
            f"{self._p}balances:{venue}",
            f"{self._p}positions:{venue}",
            self._pnl,
            self._fills,
            f"{self._p}open:{venue}",
            self._realized,
            self._marks,
            self._resting,
            self._buckets,
        ]
        keys += (self._books(scope) for scope in scopes)
        reply = await self._call(
            f"accept order {order.client_order_id!r}", self._accept, keys=keys, args=args
        )
        outcome = reply[0]
        if outcome == _TAKEN:
            return _decode_order(venue, order.client_order_id, reply[1])
        if outcome == _INSUFFICIENT:
            require_balance(order.client_order_id, venue, asset, needed, float(reply[1]))
        if outcome == _DENIED:
            check, index, value = reply[1:]
            denial = rule_denial(check.decode(), rules[index - 1], float(value))
            raise denial.error(order.client_order_id)
        return order

    async def cancel(self, venue: str, client_order_id: str) -> Order | None:
        stored = await self._call(
            f"cancel order {client_order_id!r}",
            self._cancel,
            keys=(f"{self._p}orders:{venue}", f"{self._p}open:{venue}", self._resting),
            args=(client_order_id,),
        )
        return None if stored is None else _decode_order(venue, client_order_id, stored)

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        found = await self._call(
            f"list the open orders of venue {venue!r}",
            self._open,
            keys=(f"{self._p}orders:{venue}", f"{self._p}open:{venue}"),
            args=(_SCOPE_FIELDS.get(scope, 0), "" if target is None else target),
        )
        orders = [
            _decode_order(venue, client_order_id.decode(), stored)
            for client_order_id, stored in zip(found[::2], found[1::2], strict=True)
        ]
        return sorted(orders, key=_age)

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        stored = await self._call(
            f"read order {client_order_id!r}",
            self._client.hget,
            f"{self._p}orders:{venue}",
            client_order_id,
        )
        return None if stored is None else _decode_order(venue, client_order_id, stored)

    async def balances(self, venue: str) -> dict[str, float] | None:
        stored = cast(
            dict[bytes, bytes],
            await self._call(
                f"read the balances of venue {venue!r}",
                self._client.hgetall,
                f"{self._p}balances:{venue}",
            ),
        )
        return {asset.decode(): float(amount) for asset, amount in stored.items()} or None

    async def position(self, venue: str, symbol: str) -> Position:
        stored = await self._call(
            f"read the position of {symbol!r} on venue {venue!r}",
            self._client.hget,
            f"{self._p}positions:{venue}",
            symbol,
        )
        if stored is None:
            return FLAT
        quantity, avg_price = stored.split()
        return Position(float(quantity), float(avg_price))

    async def realized_pnl(self, day: int) -> float:
        stored = await self._call("read the realized P&L", self._client.hget, self._pnl, day)
        return 0.0 if stored is None else float(stored)

    async def scope_book(self, scope: Scope, target: str | None) -> ScopeBook:
        key = scope_key(scope, target)
        reply = await self._call(
            f"read the books of scope {key!r}",
            self._read_books,
            (self._realized, self._resting, self._buckets, self._books(key), self._marks),
            key,
        )
        realized, resting, bucket = reply[:3]
        positions: dict[tuple[str, str], Position] = {}
        marks: dict[tuple[str, str], float] = {}
        rest = reply[3:]
        for field, stored, mark in zip(rest[::3], rest[1::3], rest[2::3], strict=True):
            venue, symbol = from_json(field)
            quantity, avg_price = stored.split()
            positions[venue, symbol] = Position(float(quantity), float(avg_price))
            if mark:
                marks[venue, symbol] = float(mark)
        tokens_at = bucket.split()
        return ScopeBook(
            float(realized) if realized else 0.0,
            positions,
            marks,
            int(resting) if resting else 0,
            (float(tokens_at[0]), float(tokens_at[1])) if tokens_at else None,
        )

    async def equity(self, scope: Scope, target: str | None) -> float:
        return (await self.scope_book(scope, target)).equity

    async def _read_books(self, keys: Sequence[str], scope: str) -> Any:
        """The scope book script, as ``EVALSHA_RO``: Redis runs it read-only and checks its
        keys as read, so a user granted only reads of them (the emergency service's loss
        triggers: :mod:`tradeflow.app.brokers`) may run it. Loaded again if the server
        lost it."""
        script = self._scope_book
        try:
            return await self._client.evalsha_ro(script.sha, len(keys), *keys, scope)
        except NoScriptError:
            await self._client.script_load(script.script)
            return await self._client.evalsha_ro(script.sha, len(keys), *keys, scope)

    def _books(self, scope: str) -> str:
        return f"{self._p}books:{scope}"

    async def _call(
        self, what: str, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """``call`` once more after a dropped connection (every call here may run twice);
        any Redis failure becomes ``ExchangeError`` naming ``what`` failed."""
        try:
            return await reconnecting(call, *args, **kwargs)
        except RedisError as exc:
            raise ExchangeError(f"paper ledger in redis: cannot {what}: {describe(exc)}") from exc


_SCOPE_FIELDS: Final = {Scope.WORKFLOW: 10, Scope.BOT: 11, Scope.STRATEGY: 12}
"""Where :func:`_encode_order` puts each scope id in its JSON array, counted from 1 (Lua's
way, for ``_OPEN``)."""


def _book_field(venue: str, symbol: str) -> bytes:
    """A book's field in ``p:books:<scope>`` and ``p:marks``: unambiguous whatever the
    names hold."""
    return to_json_bytes([venue, symbol])


def _rule_args(rule: ScopeRule) -> tuple[str, str, str, str]:
    """max_position, max_open_orders, rate, window of ``rule`` for ``_ACCEPT`` ('' for none)."""
    return (
        "" if rule.max_position is None else repr(float(rule.max_position)),
        "" if rule.max_open_orders is None else str(int(rule.max_open_orders)),
        "" if rule.rate is None else repr(float(rule.rate)),
        "" if rule.window is None else repr(float(rule.window)),
    )


def _age(order: Order) -> tuple[float, str]:
    """Oldest first; placed at one instant, by client order id (a set has no order)."""
    return order.created_at, order.client_order_id


def _encode_order(order: Order) -> bytes:
    body = to_json_bytes(
        [
            order.order_id,
            order.symbol,
            order.side.value,
            order.quantity,
            order.order_type.value,
            order.limit_price,
            order.filled_quantity,
            order.avg_price,
            order.created_at,
            order.workflow_id,
            order.bot_id,
            order.strategy_id,
        ]
    )
    return f"{order.status.value}\n".encode() + body


def _decode_order(venue: str, client_order_id: str, stored: bytes) -> Order:
    status, _, body = stored.partition(b"\n")
    # ``scope``: the three scope ids, or nothing for an order stored before they were kept.
    order_id, symbol, side, quantity, kind, limit, filled, avg, at, *scope = from_json(body)
    return Order(
        order_id,
        client_order_id,
        venue,
        symbol,
        Side(side),
        quantity,
        OrderType(kind),
        limit,
        OrderStatus(status.decode()),
        filled,
        avg,
        at,
        *scope,
    )
