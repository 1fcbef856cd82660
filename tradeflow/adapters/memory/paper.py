"""A paper exchange: deterministic fills against a price feed, optionally durable.

:class:`PaperExchange` fills market orders at the touch (buys at the ask, sells
at the bid) of the feed's latest quote, fills marketable limit orders the same
way and leaves the others resting until cancelled. It keeps balances per venue,
net positions and average-cost realized P&L. Given a :class:`PaperLedger` it
persists every accepted order with its balance changes and fill atomically
before answering, so a restarted process sees the same orders and
re-placing a ``client_order_id`` still trades nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import NoReturn, Protocol

from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.errors import ExchangeError, OrderRejected
from tradeflow.domain.numbers import is_positive
from tradeflow.domain.trading import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    split_symbol,
)
from tradeflow.ports import PriceFeed

__all__ = ["DEFAULT_BALANCES", "PaperExchange", "PaperLedger"]

DEFAULT_BALANCES: Mapping[str, float] = MappingProxyType(
    {"USDT": 100_000.0, "BTC": 2.0, "ETH": 20.0, "SOL": 500.0}
)
"""What a venue holds before its first trade, unless configured otherwise."""

_SIDES = frozenset(Side)
_ORDER_TYPES = frozenset(OrderType)
_SECONDS_PER_DAY = 86_400
_TOLERANCE = 1e-9
"""Float slack in balance checks, so selling exactly what was bought is allowed."""


class PaperLedger(Protocol):
    """Where a durable :class:`PaperExchange` keeps its orders, balances and fills."""

    def load(self) -> tuple[list[Order], dict[str, dict[str, float]], list[Fill]]:
        """Every stored order, the balances by venue, and the fills in the order they happened."""
        ...

    def persist(
        self, order: Order, balances: Mapping[str, float] | None, fill: Fill | None
    ) -> None:
        """Store one order change with its balances and fill, all or nothing; raises
        ``ExchangeError`` if it cannot."""
        ...


@dataclass(frozen=True, slots=True)
class _Book:
    """Net position of one ``(venue, symbol)`` and the average price it was opened at."""

    quantity: float = 0.0
    avg_price: float = 0.0

    def after(self, signed_quantity: float, price: float) -> tuple[_Book, float]:
        """The book after a fill, and the P&L (before fees) the fill realized."""
        held = self.quantity
        total = held + signed_quantity
        if held == 0 or (held > 0) == (signed_quantity > 0):
            return _Book(total, (held * self.avg_price + signed_quantity * price) / total), 0.0
        closed = min(abs(signed_quantity), abs(held))
        realized = closed * (price - self.avg_price) * (1 if held > 0 else -1)
        if abs(total) <= _TOLERANCE:
            return _Book(), realized
        if (total > 0) == (held > 0):
            return _Book(total, self.avg_price), realized
        return _Book(total, price), realized


_FLAT = _Book()


class PaperExchange:
    """An :class:`~tradeflow.ports.Exchange` that trades on paper.

    ``balances`` sets the starting balances of named venues; any other venue
    starts with ``default_balances``. ``fee_rate`` is charged in the quote asset
    on every fill. Without ``allow_short`` a sell needs the base asset in the
    balance. ``ledger`` makes the state durable: it is loaded here.
    """

    __slots__ = (
        "_allow_short",
        "_balances",
        "_books",
        "_clock",
        "_default_balances",
        "_fee_rate",
        "_ledger",
        "_new_id",
        "_orders",
        "_pnl_by_day",
        "_prices",
    )

    def __init__(
        self,
        prices: PriceFeed,
        *,
        balances: Mapping[str, Mapping[str, float]] | None = None,
        default_balances: Mapping[str, float] = DEFAULT_BALANCES,
        fee_rate: float = 0.0,
        allow_short: bool = False,
        ledger: PaperLedger | None = None,
        clock: Clock,
        id_factory: IdFactory,
    ) -> None:
        self._prices = prices
        self._default_balances = dict(default_balances)
        self._fee_rate = fee_rate
        self._allow_short = allow_short
        self._ledger = ledger
        self._clock = clock
        self._new_id = id_factory
        self._balances = {venue: dict(assets) for venue, assets in (balances or {}).items()}
        self._orders: dict[tuple[str, str], Order] = {}
        self._books: dict[tuple[str, str], _Book] = {}
        self._pnl_by_day: dict[int, float] = {}
        if ledger is not None:
            self._load(ledger)

    async def place_order(self, request: OrderRequest) -> Order:
        """Fill or rest ``request``; re-placing a known ``client_order_id`` returns that order."""
        key = (request.venue, request.client_order_id)
        existing = self._orders.get(key)
        if existing is not None:
            return existing
        base, quote_asset = _validate(request)
        quote = await self._quote(request)
        # The await let other tasks run; one of them may have placed this id meanwhile.
        existing = self._orders.get(key)
        if existing is not None:
            return existing
        return self._accept(request, base, quote_asset, quote)

    async def cancel_order(self, venue: str, client_order_id: str) -> Order:
        """Cancel a resting order; a finished one is returned unchanged."""
        order = self._orders.get((venue, client_order_id))
        if order is None:
            raise OrderRejected(client_order_id, f"no such order on venue {venue!r}")
        if order.status is not OrderStatus.OPEN:
            return order
        cancelled = replace(order, status=OrderStatus.CANCELLED)
        self._commit(cancelled)
        return cancelled

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        return self._orders.get((venue, client_order_id))

    async def position(self, venue: str, symbol: str) -> float:
        return self._books.get((venue, symbol), _FLAT).quantity

    async def balances(self, venue: str) -> dict[str, float]:
        return dict(self._venue_balances(venue))

    async def realized_pnl_today(self) -> float:
        """Average-cost realized P&L minus fees of today's fills (UTC day of the clock)."""
        return self._pnl_by_day.get(_utc_day(self._clock.time()), 0.0)

    async def _quote(self, request: OrderRequest) -> Quote:
        quote = self._prices.last_quote(request.venue, request.symbol)
        if quote is not None:
            return quote
        try:
            return await self._prices.quote(request.venue, request.symbol)
        except ExchangeError as exc:
            raise OrderRejected(
                request.client_order_id,
                f"no price for {request.symbol!r} on venue {request.venue!r}: {exc.message}",
            ) from exc

    def _accept(self, request: OrderRequest, base: str, quote_asset: str, quote: Quote) -> Order:
        buy = request.side == Side.BUY
        touch = quote.ask if buy else quote.bid
        limit = request.limit_price
        fills = request.order_type == OrderType.MARKET or (
            limit is not None and (limit >= touch if buy else limit <= touch)
        )
        price = touch if fills or limit is None else limit
        held = self._venue_balances(request.venue)
        quantity = request.quantity
        notional = quantity * price
        fee = notional * self._fee_rate
        if buy:
            _require(request, held, quote_asset, notional + fee)
        elif not self._allow_short:
            _require(request, held, base, quantity)
        order = Order(
            order_id=self._new_id(),
            client_order_id=request.client_order_id,
            venue=request.venue,
            symbol=request.symbol,
            side=Side(request.side),
            quantity=quantity,
            order_type=OrderType(request.order_type),
            limit_price=request.limit_price,
            status=OrderStatus.FILLED if fills else OrderStatus.OPEN,
            filled_quantity=quantity if fills else 0.0,
            avg_price=price if fills else None,
            created_at=self._clock.time(),
        )
        if not fills:
            self._commit(order)
            return order
        sign = 1 if buy else -1
        after = dict(held)
        after[quote_asset] = held.get(quote_asset, 0.0) - sign * notional - fee
        after[base] = held.get(base, 0.0) + sign * quantity
        fill = Fill(
            request.venue,
            request.symbol,
            request.client_order_id,
            order.side,
            quantity,
            price,
            fee,
            order.created_at,
        )
        self._commit(order, after, fill)
        return order

    def _venue_balances(self, venue: str) -> Mapping[str, float]:
        return self._balances.get(venue, self._default_balances)

    def _commit(
        self, order: Order, balances: dict[str, float] | None = None, fill: Fill | None = None
    ) -> None:
        """Make an order (and its balance changes and fill) durable, then visible."""
        if self._ledger is not None:
            self._ledger.persist(order, balances, fill)
        self._orders[order.venue, order.client_order_id] = order
        if balances is not None:
            self._balances[order.venue] = balances
        if fill is not None:
            self._apply_fill(fill)

    def _apply_fill(self, fill: Fill) -> None:
        key = (fill.venue, fill.symbol)
        signed = fill.quantity if fill.side == Side.BUY else -fill.quantity
        self._books[key], realized = self._books.get(key, _FLAT).after(signed, fill.price)
        day = _utc_day(fill.at)
        self._pnl_by_day[day] = self._pnl_by_day.get(day, 0.0) + realized - fill.fee

    def _load(self, ledger: PaperLedger) -> None:
        orders, balances, fills = ledger.load()
        for order in orders:
            self._orders[order.venue, order.client_order_id] = order
        self._balances.update(balances)
        for fill in fills:
            self._apply_fill(fill)


def _validate(request: OrderRequest) -> tuple[str, str]:
    """The ``(base, quote)`` assets of a well-formed request; raises ``OrderRejected``."""
    assets = split_symbol(request.symbol)
    if assets is None:
        _reject(request, f"symbol {request.symbol!r} is not BASE/QUOTE")
    if request.side not in _SIDES:
        _reject(request, f"side must be 'buy' or 'sell', found {request.side!r}")
    if request.order_type not in _ORDER_TYPES:
        _reject(request, f"order_type must be 'market' or 'limit', found {request.order_type!r}")
    if not is_positive(request.quantity):
        _reject(request, f"quantity must be a finite number > 0, found {request.quantity!r}")
    if request.order_type == OrderType.LIMIT and not is_positive(request.limit_price):
        _reject(request, f"a limit order needs a limit_price > 0, found {request.limit_price!r}")
    return assets


def _require(request: OrderRequest, held: Mapping[str, float], asset: str, needed: float) -> None:
    have = held.get(asset, 0.0)
    if needed - have > _TOLERANCE:
        _reject(
            request,
            f"insufficient {asset} on venue {request.venue!r}: needs {needed:.8g}, has {have:.8g}",
        )


def _reject(request: OrderRequest, reason: str) -> NoReturn:
    raise OrderRejected(request.client_order_id, reason)


def _utc_day(ts: float) -> int:
    return int(ts // _SECONDS_PER_DAY)
