"""A paper exchange: deterministic fills against a price feed, its state in a ledger.

:class:`PaperExchange` fills market orders at the touch (buys at the ask, sells
at the bid) of the feed's latest quote, fills marketable limit orders the same
way and leaves the others resting until cancelled. It prices and validates;
everything it knows of orders, balances, positions and realized P&L lives in
its :class:`PaperLedger` and is read from there on every call. It keeps no
copy: processes sharing one ledger (a SQLite file, a Redis) see one truth, and
a copy is what once let concurrent processes lose updates and fill one client
order id twice. For the same reason the ledger, not the exchange, judges an
order against the shared pre-trade limits its request carries
(:func:`~tradeflow.domain.risk.shared_denial`), in the step that stores it.

:class:`MemoryPaperLedger`, the default, lives and dies with its process;
``tradeflow.adapters.sqlite.ledger`` and ``tradeflow.adapters.redis.ledger``
are shared and durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from types import MappingProxyType
from typing import NoReturn, Protocol

from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.errors import ExchangeError, OrderRejected
from tradeflow.domain.numbers import is_positive
from tradeflow.domain.records import Scope
from tradeflow.domain.risk import (
    Bucket,
    ScopeBook,
    ScopeRule,
    admit,
    scope_key,
    scope_keys,
)
from tradeflow.domain.trading import (
    FLAT,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    average_cost,
    require_balance,
    settle,
    signed_quantity,
    split_symbol,
    utc_day,
)
from tradeflow.ports import PriceFeed

__all__ = [
    "DEFAULT_BALANCES",
    "FINISHED_ORDERS_KEPT",
    "MemoryPaperLedger",
    "PaperExchange",
    "PaperLedger",
]

FINISHED_ORDERS_KEPT = 10_000
"""How many finished (filled or cancelled) orders a :class:`MemoryPaperLedger` keeps by
default, beside every resting one: its deduplication window (about 5 MB)."""

DEFAULT_BALANCES: Mapping[str, float] = MappingProxyType(
    {"USDT": 100_000.0, "BTC": 2.0, "ETH": 20.0, "SOL": 500.0}
)
"""What a venue holds before its first trade, unless configured otherwise."""

_SIDES = frozenset(Side)
_ORDER_TYPES = frozenset(OrderType)


class PaperLedger(Protocol):
    """Where a :class:`PaperExchange` keeps its orders, balances, positions and P&L.

    Every method sees what every other user of the same ledger wrote before it
    (other tasks, other processes). ``accept`` and ``cancel`` are each one atomic
    step; the readers read committed state. Failures to reach the storage raise
    ``ExchangeError``.

    Besides the venue's books, every order is booked under each scope it belongs to
    (:func:`~tradeflow.domain.risk.scope_keys` of its scope ids: ``global`` and its
    strategy, bot and workflow), whether or not a limit applies: a position per
    ``(venue, symbol)`` at average cost, the realized P&L minus fees since the ledger
    began, the resting orders and, once judged, an ``order_rate`` token bucket; and the
    last fill price ("mark") of each ``(venue, symbol)``. See :meth:`scope_book`.
    """

    async def accept(
        self,
        order: Order,
        fill: Fill | None,
        *,
        opening: Mapping[str, float],
        require: tuple[str, float] | None,
        rules: Sequence[ScopeRule] = (),
    ) -> Order:
        """Store ``order`` and apply ``fill``, all or nothing; return the order stored.

        If ``(order.venue, order.client_order_id)`` is stored already, return that
        order and change nothing (the deduplication that makes placing idempotent
        across processes and restarts: an order already stored is never denied).
        Else judge it against ``rules`` exactly as
        :func:`~tradeflow.domain.risk.shared_denial` does, from the scopes' figures
        stored now (their positions in the order's venue and symbol, resting orders
        and buckets; the order adding ``+quantity`` for a buy, ``-quantity`` for a
        sell, resting if it is ``OPEN``, at ``order.created_at``): on a denial raise
        its ``OrderDenied`` and change nothing. Else, if ``require`` is ``(asset,
        amount)`` and the venue holds less of ``asset``, raise ``OrderRejected``
        ("insufficient ...") and change nothing. Else store the order, the buckets the
        judgement took a token from and, if it rests, one more resting order of each
        of its scopes; with a fill, move the quote and base balances (a venue's first
        fill starts from ``opening``), the ``(venue, symbol)`` position of the venue
        and of each of the order's scopes at average cost, the realized P&L (minus
        the fee) of the fill's UTC day and of each scope, the book's mark, and append
        the fill.
        """
        ...

    async def cancel(self, venue: str, client_order_id: str) -> Order | None:
        """Mark an open order cancelled (one resting order less for each of its scopes)
        and return it; a finished order comes back unchanged; ``None`` if there is no
        such order. One atomic step."""
        ...

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        """The order stored under this client order id, if any."""
        ...

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        """The resting (``OPEN``) orders of ``venue`` whose scope id for ``scope`` (the
        ``workflow_id``, ``bot_id`` or ``strategy_id`` their request carried) is
        ``target``; every resting one for ``Scope.GLOBAL``. Oldest first. Reads the
        resting orders only (an index of them), never every order ever placed."""
        ...

    async def balances(self, venue: str) -> dict[str, float] | None:
        """Asset -> amount of ``venue``; ``None`` until its first fill."""
        ...

    async def position(self, venue: str, symbol: str) -> Position:
        """The net position of ``symbol`` on ``venue`` and its average price."""
        ...

    async def realized_pnl(self, day: int) -> float:
        """Realized P&L minus fees of the fills of UTC day ``day`` (see
        :func:`~tradeflow.domain.trading.utc_day`), all venues."""
        ...

    async def scope_book(self, scope: Scope, target: str | None) -> ScopeBook:
        """What is booked under ``scope``/``target`` (``global``: every order), read in
        one consistent step: one scope's rows or hash, never every order or fill."""
        ...

    async def equity(self, scope: Scope, target: str | None) -> float:
        """The :class:`~tradeflow.ports.PnlSource` figure: the scope's realized P&L minus
        fees plus its positions marked to each book's last fill price
        (:attr:`ScopeBook.equity <tradeflow.domain.risk.ScopeBook.equity>`)."""
        ...


class MemoryPaperLedger:
    """A :class:`PaperLedger` in this process's memory, for one exchange or several.

    Nothing in a method awaits, so on one event loop each call is atomic. Fills are
    applied, not kept. Orders are kept for deduplication, but not all of them: every
    resting order, and the last ``finished_kept`` finished ones (filled or cancelled;
    the oldest to finish goes first). A process that runs for days would otherwise
    hold every order it ever placed. The engine's client order ids are unique per
    execution, and only a resumed execution places one again: with this ledger (the
    base executor's, which keeps no journal) that does not happen. A process that
    pairs it with a durable journal and resumes an execution whose order finished more
    than ``finished_kept`` orders ago would place that order again: use a durable
    ledger (SQLite, Redis) wherever executions are resumed.
    Balances, positions, P&L and the scopes' books are exact whatever is forgotten.
    """

    __slots__ = (
        "_balances",
        "_books",
        "_buckets",
        "_finished",
        "_finished_kept",
        "_marks",
        "_open",
        "_orders",
        "_pnl",
        "_realized",
        "_resting",
    )

    def __init__(self, *, finished_kept: int = FINISHED_ORDERS_KEPT) -> None:
        if finished_kept < 0:
            raise ValueError(f"finished_kept must be >= 0, found {finished_kept!r}")
        self._finished_kept = finished_kept
        self._orders: dict[tuple[str, str], Order] = {}
        self._finished: dict[tuple[str, str], None] = {}
        """The keys of the finished orders kept, oldest to finish first."""
        self._open: dict[str, dict[str, None]] = {}
        """Venue -> the client order ids of its resting orders, oldest first."""
        self._balances: dict[str, dict[str, float]] = {}
        self._pnl: dict[int, float] = {}
        self._books: dict[str, dict[tuple[str, str], Position]] = {}
        """Scope key -> ``(venue, symbol)`` -> position; ``global``'s are the venues'."""
        self._realized: dict[str, float] = {}
        self._resting: dict[str, int] = {}
        self._buckets: dict[str, Bucket] = {}
        self._marks: dict[tuple[str, str], float] = {}

    async def accept(
        self,
        order: Order,
        fill: Fill | None,
        *,
        opening: Mapping[str, float],
        require: tuple[str, float] | None,
        rules: Sequence[ScopeRule] = (),
    ) -> Order:
        venue = order.venue
        key = (venue, order.client_order_id)
        existing = self._orders.get(key)
        if existing is not None:
            return existing
        taken = self._judge(order, rules) if rules else {}
        held = self._balances.get(venue)
        if require is not None:
            asset, needed = require
            have = (opening if held is None else held).get(asset, 0.0)
            require_balance(order.client_order_id, venue, asset, needed, have)
        self._orders[key] = order
        self._buckets.update(taken)
        scopes = scope_keys(order.workflow_id, order.bot_id, order.strategy_id)
        if order.status is OrderStatus.OPEN:
            self._open.setdefault(venue, {})[order.client_order_id] = None
            for scope in scopes:
                self._resting[scope] = self._resting.get(scope, 0) + 1
        else:
            self._finish(key)
        if fill is not None:
            if held is None:
                held = self._balances[venue] = dict(opening)
            base, quote = fill.symbol.split("/")
            held[quote], held[base] = settle(fill, held.get(quote, 0.0), held.get(base, 0.0))
            self._book(fill, scopes)
        return order

    def _judge(self, order: Order, rules: Sequence[ScopeRule]) -> Mapping[str, Bucket]:
        """:func:`shared_denial` of ``order`` on the figures stored now: the buckets to
        store, or ``OrderDenied``."""
        book = (order.venue, order.symbol)
        return admit(
            order,
            rules,
            positions={
                rule.key: self._books.get(rule.key, {}).get(book, FLAT).quantity for rule in rules
            },
            open_orders=self._resting,
            buckets=self._buckets,
        )

    def _book(self, fill: Fill, scopes: Sequence[str]) -> None:
        """``fill`` into the position and realized P&L of each of ``scopes`` (``global``
        first: the venue's, whose realized also goes to the day), and its book's mark."""
        book = (fill.venue, fill.symbol)
        signed = signed_quantity(fill)
        for scope in scopes:
            positions = self._books.setdefault(scope, {})
            position = positions.get(book, FLAT)
            quantity, avg_price, realized = average_cost(
                position.quantity, position.avg_price, signed, fill.price
            )
            positions[book] = Position(quantity, avg_price)
            self._realized[scope] = self._realized.get(scope, 0.0) + (realized - fill.fee)
            if scope == "global":
                day = utc_day(fill.at)
                self._pnl[day] = self._pnl.get(day, 0.0) + (realized - fill.fee)
        self._marks[book] = fill.price

    async def cancel(self, venue: str, client_order_id: str) -> Order | None:
        key = (venue, client_order_id)
        order = self._orders.get(key)
        if order is None or order.status is not OrderStatus.OPEN:
            return order
        cancelled = self._orders[key] = replace(order, status=OrderStatus.CANCELLED)
        del self._open[venue][client_order_id]
        for scope in scope_keys(order.workflow_id, order.bot_id, order.strategy_id):
            self._resting[scope] = max(0, self._resting.get(scope, 0) - 1)
        self._finish(key)
        return cancelled

    def _finish(self, key: tuple[str, str]) -> None:
        """Count the order under ``key`` as finished; forget the oldest finished ones
        beyond the window (never a resting one: they are not counted here)."""
        finished = self._finished
        finished[key] = None
        while len(finished) > self._finished_kept:
            oldest = next(iter(finished))
            del finished[oldest]
            del self._orders[oldest]

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        return self._orders.get((venue, client_order_id))

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        resting = (self._orders[venue, key] for key in self._open.get(venue, ()))
        return list(_of_scope(resting, scope, target))

    async def balances(self, venue: str) -> dict[str, float] | None:
        held = self._balances.get(venue)
        return None if held is None else dict(held)

    async def position(self, venue: str, symbol: str) -> Position:
        return self._books.get("global", {}).get((venue, symbol), FLAT)

    async def realized_pnl(self, day: int) -> float:
        return self._pnl.get(day, 0.0)

    async def scope_book(self, scope: Scope, target: str | None) -> ScopeBook:
        key = scope_key(scope, target)
        positions = dict(self._books.get(key, {}))
        return ScopeBook(
            self._realized.get(key, 0.0),
            positions,
            {book: self._marks[book] for book in positions},
            self._resting.get(key, 0),
            self._buckets.get(key),
        )

    async def equity(self, scope: Scope, target: str | None) -> float:
        return (await self.scope_book(scope, target)).equity


class PaperExchange:
    """An :class:`~tradeflow.ports.Exchange` that trades on paper.

    ``balances`` sets the starting balances of named venues; any other venue
    starts with ``default_balances`` (they apply from a venue's first fill in the
    ledger on, and every process sharing the ledger must configure the same).
    ``fee_rate`` is charged in the quote asset on every fill. Without
    ``allow_short`` a sell needs the base asset in the balance. ``ledger`` holds
    the state (a fresh :class:`MemoryPaperLedger` if omitted).
    """

    __slots__ = (
        "_allow_short",
        "_clock",
        "_default_balances",
        "_fee_rate",
        "_ledger",
        "_new_id",
        "_opening",
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
        self._default_balances = MappingProxyType(dict(default_balances))
        self._opening = {
            venue: MappingProxyType(dict(assets)) for venue, assets in (balances or {}).items()
        }
        self._fee_rate = fee_rate
        self._allow_short = allow_short
        self._ledger: PaperLedger = MemoryPaperLedger() if ledger is None else ledger
        self._clock = clock
        self._new_id = id_factory

    @property
    def ledger(self) -> PaperLedger:
        """Where this exchange's state lives."""
        return self._ledger

    async def place_order(self, request: OrderRequest) -> Order:
        """Fill or rest ``request``; re-placing a known ``client_order_id`` returns that order
        (the ledger's atomic step finds it; the engine asks ``get_order`` first only for an
        action resumed from its intent, so a new order costs one ledger round trip)."""
        base, quote_asset = _validate(request)
        quote = await self._quote(request)
        buy = request.side == Side.BUY
        touch = quote.ask if buy else quote.bid
        limit = request.limit_price
        fills = request.order_type == OrderType.MARKET or (
            limit is not None and (limit >= touch if buy else limit <= touch)
        )
        price = touch if fills or limit is None else limit
        quantity = request.quantity
        notional = quantity * price
        fee = notional * self._fee_rate
        require: tuple[str, float] | None = None
        if buy:
            require = (quote_asset, notional + fee)
        elif not self._allow_short:
            require = (base, quantity)
        now = self._clock.time()
        order = Order(
            order_id=self._new_id(),
            client_order_id=request.client_order_id,
            venue=request.venue,
            symbol=request.symbol,
            side=Side(request.side),
            quantity=quantity,
            order_type=OrderType(request.order_type),
            limit_price=limit,
            status=OrderStatus.FILLED if fills else OrderStatus.OPEN,
            filled_quantity=quantity if fills else 0.0,
            avg_price=price if fills else None,
            created_at=now,
            workflow_id=request.workflow_id,
            bot_id=request.bot_id,
            strategy_id=request.strategy_id,
        )
        fill = (
            Fill(
                request.venue,
                request.symbol,
                request.client_order_id,
                order.side,
                quantity,
                price,
                fee,
                now,
            )
            if fills
            else None
        )
        return await self._ledger.accept(
            order,
            fill,
            opening=self._opening_of(request.venue),
            require=require,
            rules=request.rules,
        )

    async def cancel_order(self, venue: str, client_order_id: str) -> Order:
        """Cancel a resting order; a finished one still known is returned unchanged (one
        the memory ledger forgot, or an unknown id, raises ``OrderRejected``)."""
        order = await self._ledger.cancel(venue, client_order_id)
        if order is None:
            raise OrderRejected(client_order_id, f"no such order on venue {venue!r}")
        return order

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        return await self._ledger.get_order(venue, client_order_id)

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        """The resting orders of ``venue`` placed for ``scope``/``target`` (see
        :meth:`PaperLedger.open_orders`)."""
        return await self._ledger.open_orders(venue, scope, target)

    async def position(self, venue: str, symbol: str) -> float:
        return (await self._ledger.position(venue, symbol)).quantity

    async def balances(self, venue: str) -> dict[str, float]:
        held = await self._ledger.balances(venue)
        return dict(self._opening_of(venue)) if held is None else held

    async def realized_pnl_today(self) -> float:
        """Average-cost realized P&L minus fees of today's fills (UTC day of the clock)."""
        return await self._ledger.realized_pnl(utc_day(self._clock.time()))

    async def equity(self, scope: Scope, target: str | None) -> float:
        """The scope's equity, from the ledger (:meth:`PaperLedger.equity`): this
        exchange is a :class:`~tradeflow.ports.PnlSource`."""
        return await self._ledger.equity(scope, target)

    def _opening_of(self, venue: str) -> Mapping[str, float]:
        return self._opening.get(venue, self._default_balances)

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


def _of_scope(orders: Iterable[Order], scope: Scope, target: str | None) -> Iterable[Order]:
    """Those of ``orders`` placed for ``scope``/``target`` (all of them for global)."""
    if scope is Scope.GLOBAL:
        return orders
    scope_id = attrgetter(f"{scope.value}_id")  # Order.workflow_id, .bot_id, .strategy_id
    return (order for order in orders if scope_id(order) == target)


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


def _reject(request: OrderRequest, reason: str) -> NoReturn:
    raise OrderRejected(request.client_order_id, reason)
