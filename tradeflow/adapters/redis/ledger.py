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
- ``p:fills`` list: every fill as a JSON array of :class:`Fill`'s fields, oldest first.

``accept`` and ``cancel`` are each one Lua script, so nothing runs between the
deduplication, the balance check and the writes: of two replicas placing one client
order id, one stores it and the other gets that order back. The script does the
ledger arithmetic itself, repeating :func:`~tradeflow.domain.trading.settle` and
:func:`~tradeflow.domain.trading.average_cost` operation for operation; every amount
crosses as text that round-trips exactly (Python's ``repr`` in, ``'%.17g'`` stored),
never through ``cjson``, which keeps 14 digits. The order and fill JSON is written and
read by Python only (orjson, exact).

Both scripts are safe to run twice, so every call is retried once after a connection
error (see :data:`~tradeflow.adapters.redis.connection.reconnecting`); a Redis that
stays unreachable or refuses raises ``ExchangeError``. The keys are passed as
``KEYS``, but one call spans several of them: a standalone Redis, like the state store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tradeflow.adapters.redis.connection import reconnecting
from tradeflow.domain.codec import from_json, to_json_bytes
from tradeflow.domain.errors import ConfigurationError, ExchangeError, describe
from tradeflow.domain.records import Scope
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

# KEYS: orders, balances, positions (of the order's venue), pnl, fills, open (of the venue).
# ARGV: [1] client order id, [2] the order as stored, [3] asset required ('' for none),
#   [4] amount required, [5] the fill's JSON ('' when the order rests), [6] symbol,
#   [7] quote asset, [8] base asset, [9] signed quantity, [10] price, [11] fee, [12] day,
#   [13...] the venue's opening balances as asset, amount pairs.
# Returns {0, stored order} (the id was taken), {1} (accepted) or {2, amount held}
# (insufficient: nothing written).
_ACCEPT: Final = (
    f"local TOLERANCE = {BALANCE_TOLERANCE!r}\n"
    + r"""
local orders, balances, positions = KEYS[1], KEYS[2], KEYS[3]
local stored = redis.call('HGET', orders, ARGV[1])
if stored then return {0, stored} end
local fresh = redis.call('EXISTS', balances) == 0
local function held(asset)
  if not fresh then return tonumber(redis.call('HGET', balances, asset) or '0') end
  for i = 13, #ARGV - 1, 2 do
    if ARGV[i] == asset then return tonumber(ARGV[i + 1]) end
  end
  return 0
end
if ARGV[3] ~= '' then
  local have = held(ARGV[3])
  if tonumber(ARGV[4]) - have > TOLERANCE then return {2, string.format('%.17g', have)} end
end
redis.call('HSET', orders, ARGV[1], ARGV[2])
if string.sub(ARGV[2], 1, 5) == 'open\n' then redis.call('SADD', KEYS[6], ARGV[1]) end
if ARGV[5] == '' then return {1} end
local symbol, quote, base = ARGV[6], ARGV[7], ARGV[8]
local signed, price, fee = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
-- settle()
local quote_after = held(quote) - signed * price - fee
local base_after = held(base) + signed
if fresh then
  for i = 13, #ARGV - 1, 2 do
    redis.call('HSET', balances, ARGV[i], string.format('%.17g', tonumber(ARGV[i + 1])))
  end
end
redis.call('HSET', balances, quote, string.format('%.17g', quote_after),
  base, string.format('%.17g', base_after))
-- average_cost()
local quantity, avg, realized = 0, 0, 0
local book = redis.call('HGET', positions, symbol)
if book then
  local q, a = string.match(book, '^(%S+) (%S+)$')
  quantity, avg = tonumber(q), tonumber(a)
end
if quantity == 0 then
  quantity, avg = signed, price
else
  local total = quantity + signed
  if (quantity > 0) == (signed > 0) then
    quantity, avg = total, (quantity * avg + signed * price) / total
  else
    local closed = math.min(math.abs(signed), math.abs(quantity))
    local direction = -1
    if quantity > 0 then direction = 1 end
    realized = closed * (price - avg) * direction
    if math.abs(total) <= TOLERANCE then
      quantity, avg = 0, 0
    elseif (total > 0) == (quantity > 0) then
      quantity = total
    else
      quantity, avg = total, price
    end
  end
end
redis.call('HSET', positions, symbol, string.format('%.17g %.17g', quantity, avg))
local pnl = tonumber(redis.call('HGET', KEYS[4], ARGV[12]) or '0') + (realized - fee)
redis.call('HSET', KEYS[4], ARGV[12], string.format('%.17g', pnl))
redis.call('RPUSH', KEYS[5], ARGV[5])
return {1}
"""
)

# KEYS: orders, open (of the venue). ARGV: client order id. Returns the order as stored
# after the call, or nil.
_CANCEL: Final = r"""
local order = redis.call('HGET', KEYS[1], ARGV[1])
if not order then return false end
if string.sub(order, 1, 5) == 'open\n' then
  order = 'cancelled\n' .. string.sub(order, 6)
  redis.call('HSET', KEYS[1], ARGV[1], order)
end
redis.call('SREM', KEYS[2], ARGV[1])
return order
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

_TAKEN, _ACCEPTED, _INSUFFICIENT = 0, 1, 2


class RedisPaperLedger:
    """The :class:`~tradeflow.adapters.memory.paper.PaperLedger` in Redis, under
    ``<prefix>:paper:``.

    ``client`` must return bytes (the default, ``decode_responses=False``) and stays
    its owner's to close; the state store's client and prefix fit.
    """

    __slots__ = ("_accept", "_cancel", "_client", "_fills", "_open", "_p", "_pnl")

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tradeflow") -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "redis client for the paper ledger: expected decode_responses=False, found True"
            )
        self._client = client
        self._p = f"{prefix}:paper:"
        self._pnl = f"{self._p}pnl"
        self._fills = f"{self._p}fills"
        self._accept = client.register_script(_ACCEPT)
        self._cancel = client.register_script(_CANCEL)
        self._open = client.register_script(_OPEN)

    async def accept(
        self,
        order: Order,
        fill: Fill | None,
        *,
        opening: Mapping[str, float],
        require: tuple[str, float] | None,
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
        for name, amount in opening.items():
            args += (name, repr(float(amount)))
        keys = (
            f"{self._p}orders:{venue}",
            f"{self._p}balances:{venue}",
            f"{self._p}positions:{venue}",
            self._pnl,
            self._fills,
            f"{self._p}open:{venue}",
        )
        reply = await self._call(
            f"accept order {order.client_order_id!r}", self._accept, keys=keys, args=args
        )
        outcome = reply[0]
        if outcome == _TAKEN:
            return _decode_order(venue, order.client_order_id, reply[1])
        if outcome == _INSUFFICIENT:
            require_balance(order.client_order_id, venue, asset, needed, float(reply[1]))
        return order

    async def cancel(self, venue: str, client_order_id: str) -> Order | None:
        stored = await self._call(
            f"cancel order {client_order_id!r}",
            self._cancel,
            keys=(f"{self._p}orders:{venue}", f"{self._p}open:{venue}"),
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
