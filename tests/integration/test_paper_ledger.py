"""The paper ledgers: one contract for memory, SQLite and Redis (the shared pre-trade
checks and the per-scope books included), and crowds of real processes on one SQLite
file or one Redis, whose ledger must equal the sum of its fills and never overshoot a
shared limit.

Run as ``python -m test_paper_ledger BACKEND TARGET PREFIX ID_PREFIX COUNT [MODE]``
(with ``tests``, ``tests/unit`` and ``tests/integration`` on ``PYTHONPATH``) this module
is one process of a crowd: it prints ``ready``, waits for ``go`` on stdin, places COUNT
orders (MODE ``shared``: under shared limits, see :data:`CROWD_RULES`) and prints what
each placement returned, as JSON.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from kit import DEADLINE_SECONDS, START, ManualClock
from servers import ServerProcess
from test_pretrade_rules import Cancel, Place, decide_alike, rule_lists, steps

from tradeflow.adapters.memory.paper import (
    DEFAULT_BALANCES,
    MemoryPaperLedger,
    PaperExchange,
    PaperLedger,
)
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.domain.errors import OrderDenied, OrderRejected
from tradeflow.domain.records import Scope
from tradeflow.domain.risk import ScopeBook, ScopeRule, scope_keys
from tradeflow.domain.trading import (
    FLAT,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Side,
    average_cost,
    settle,
    signed_quantity,
    utc_day,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BTC = "BTC/USDT"
ETH = "ETH/USDT"
OPENING = {"USDT": 1_000.0, "BTC": 1.0, "ETH": 3.0}
CROWD_FEE_RATE = 0.001
CROWD_TICKS = [(59_990.5, 60_010.25), (60_100.125, 60_120.0), (59_900.3, 59_910.7)]
CROWD_DEADLINE = 3 * DEADLINE_SECONDS
"""Bound on a whole crowd (starting Python processes is most of it)."""
CROWD_RULES: dict[str, ScopeRule] = {
    "position": ScopeRule(Scope.STRATEGY, "crowd-position", max_position=1.0),
    "open": ScopeRule(Scope.BOT, "crowd-open", max_open_orders=3),
    "rate": ScopeRule(Scope.WORKFLOW, "crowd-rate", rate=5.0, window=3600.0),
}
"""A worker in mode ``shared`` places order ``i`` of kind ``list(CROWD_RULES)[i % 3]``,
carrying that kind's scope id and rule: market buys of 0.1 under a max_position of 1.0,
resting limit buys under a max_open_orders of 3, market buys of 0.01 under an order_rate
of 5 per hour (every worker's clock stands still)."""


# --- the contract, on every ledger -------------------------------------------------


Ledgers = Callable[[], PaperLedger]
"""Opens a ledger on the test's storage: each one sees what the others wrote."""
Storages = Callable[[], Ledgers]
"""A new, empty storage of the test's backend, and how to open ledgers on it."""


@pytest.fixture
def redis_prefix(redis_server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """This test's own key prefix on the session's redis-server, its keys deleted after."""
    # Only word characters: SCAN MATCH would read [] in parametrized names as a pattern.
    prefix = "test:" + re.sub(r"\W", "_", request.node.name)
    yield prefix
    # A synchronous client: async fixtures that use this one run in the event loop.
    with redis.Redis.from_url(redis_server.url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


@pytest_asyncio.fixture(params=["memory", "sqlite", "redis"])
async def storages(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storages]:
    """New storages of one backend: a memory ledger, a SQLite file, or a prefix of the
    session's redis-server under the test's own; ledgers opened on one storage are the
    memory ledger itself, connections to the file, or clients under the prefix."""
    backend = request.param
    numbers = itertools.count()
    connections: list[sqlite3.Connection] = []
    clients: list[aioredis.Redis] = []

    def memory() -> Ledgers:
        shared = MemoryPaperLedger()
        return lambda: shared

    def sqlite_file() -> Ledgers:
        path = tmp_path / f"ledger{next(numbers)}.db"

        def open_sqlite() -> PaperLedger:
            connections.append(open_database(path))
            return SQLitePaperLedger(connections[-1])

        return open_sqlite

    def redis_prefix() -> Ledgers:
        url = request.getfixturevalue("redis_server").url
        prefix = f"{request.getfixturevalue('redis_prefix')}:{next(numbers)}"

        def open_redis() -> PaperLedger:
            clients.append(aioredis.from_url(url))
            return RedisPaperLedger(clients[-1], prefix=prefix)

        return open_redis

    yield {"memory": memory, "sqlite": sqlite_file, "redis": redis_prefix}[backend]
    for connection in connections:
        connection.close()
    for client in clients:
        await client.aclose()


@pytest.fixture
def ledgers(storages: Storages) -> Ledgers:
    """Ledgers of one backend on one storage (see ``storages``)."""
    return storages()


def bounded(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """``test`` failing after :data:`DEADLINE_SECONDS` instead of hanging."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(DEADLINE_SECONDS):
            await test(*args, **kwargs)

    return run


_order_ids = itertools.count(1)


def trade(
    client_order_id: str,
    side: Side,
    quantity: float,
    price: float,
    *,
    book: tuple[str, str] = ("paper", BTC),
    fee: float = 0.0,
    at: float = START,
    rests: bool = False,
    **ids: str,
) -> tuple[Order, Fill | None]:
    """An order on ``book`` (venue, symbol) and its fill, as the paper exchange builds
    them (``rests``: no fill); ``ids``: its ``workflow_id``, ``bot_id``, ``strategy_id``."""
    venue, symbol = book
    order = Order(
        order_id=f"o{next(_order_ids)}",
        client_order_id=client_order_id,
        venue=venue,
        symbol=symbol,
        side=side,
        quantity=quantity,
        order_type=OrderType.LIMIT if rests else OrderType.MARKET,
        limit_price=price if rests else None,
        status=OrderStatus.OPEN if rests else OrderStatus.FILLED,
        filled_quantity=0.0 if rests else quantity,
        avg_price=None if rests else price,
        created_at=at,
        workflow_id=ids.get("workflow_id"),
        bot_id=ids.get("bot_id"),
        strategy_id=ids.get("strategy_id"),
    )
    fill = None if rests else Fill(venue, symbol, client_order_id, side, quantity, price, fee, at)
    return order, fill


def required(order: Order, fee: float = 0.0) -> tuple[str, float]:
    """What the exchange asks the ledger to check for a long-only order."""
    base, _, quote = order.symbol.partition("/")
    price = order.avg_price or order.limit_price or 0.0
    return (
        (quote, order.quantity * price + fee) if order.side == Side.BUY else (base, order.quantity)
    )


@pytest.mark.asyncio
async def test_a_client_order_id_is_accepted_once(ledgers: Ledgers) -> None:
    """A second order with a taken client order id gets the first back and trades nothing,
    also through another ledger on the same storage."""
    ledger, other = ledgers(), ledgers()
    order, fill = trade("c1", Side.BUY, 0.5, 100.0, fee=0.05)
    assert await ledger.accept(order, fill, opening=OPENING, require=None) == order
    balances = await ledger.balances("paper")
    for again in (ledger, other):
        twin, twin_fill = trade("c1", Side.SELL, 0.9, 300.0)
        assert await again.accept(twin, twin_fill, opening=OPENING, require=None) == order
    assert await other.get_order("paper", "c1") == order
    assert await other.balances("paper") == balances == {**OPENING, "USDT": 949.95, "BTC": 1.5}
    assert await other.position("paper", BTC) == Position(0.5, 100.0)
    assert await other.realized_pnl(utc_day(START)) == -0.05


@pytest.mark.asyncio
async def test_an_old_client_order_id_is_found_and_deduplicated_by_a_ledger_opened_later(
    ledgers: Ledgers,
) -> None:
    """After 200 orders, a ledger opened afterwards (SQLite, Redis: reading on demand,
    nothing loaded at start) finds the first by its client order id, and placing that id
    again returns it and trades nothing."""
    ledger = ledgers()
    orders = [trade(f"c{i}", Side.BUY, 0.001, 100.0) for i in range(200)]
    for order, fill in orders:
        await ledger.accept(order, fill, opening=OPENING, require=None)
    later = ledgers()
    first = orders[0][0]
    assert await later.get_order("paper", "c0") == first
    twin, twin_fill = trade("c0", Side.SELL, 0.5, 300.0)
    assert await later.accept(twin, twin_fill, opening=OPENING, require=None) == first
    assert (await later.position("paper", BTC)).quantity == pytest.approx(0.2)


@pytest.mark.asyncio
async def test_insufficient_balance_is_refused_and_changes_nothing(ledgers: Ledgers) -> None:
    """An order the venue cannot pay for is refused with what it needs and has; no order,
    balance, position, P&L or fill is written, before a venue's first fill or after it."""
    ledger = ledgers()
    too_big, fill = trade("big", Side.BUY, 20.0, 100.0)
    with pytest.raises(
        OrderRejected, match=r"insufficient USDT on venue 'paper': needs 2000, has 1000"
    ):
        await ledger.accept(too_big, fill, opening=OPENING, require=required(too_big))
    resting, _ = trade("rest", Side.SELL, 1.5, 500.0, rests=True)
    with pytest.raises(OrderRejected, match=r"insufficient BTC.*needs 1.5, has 1"):
        await ledger.accept(resting, None, opening=OPENING, require=required(resting))
    assert await ledger.balances("paper") is None
    first, first_fill = trade("c1", Side.BUY, 5.0, 100.0)
    await ledger.accept(first, first_fill, opening=OPENING, require=required(first))
    second, second_fill = trade("c2", Side.BUY, 5.1, 100.0)
    with pytest.raises(OrderRejected, match=r"insufficient USDT.*needs 510, has 500"):
        await ledger.accept(second, second_fill, opening=OPENING, require=required(second))
    view = ledgers()
    for client_order_id in ("big", "rest", "c2"):
        assert await view.get_order("paper", client_order_id) is None
    assert await view.balances("paper") == {**OPENING, "USDT": 500.0, "BTC": 6.0}
    assert await view.position("paper", BTC) == Position(5.0, 100.0)
    assert await view.realized_pnl(utc_day(START)) == 0.0


@pytest.mark.asyncio
async def test_cancel_closes_open_orders_only(ledgers: Ledgers) -> None:
    """Cancel marks a resting order cancelled (seen by every ledger on the storage),
    returns finished orders unchanged and unknown ones as None."""
    ledger = ledgers()
    resting, _ = trade("rest", Side.BUY, 1.0, 50.0, rests=True)
    filled, fill = trade("fill", Side.BUY, 1.0, 100.0)
    assert await ledger.accept(resting, None, opening=OPENING, require=required(resting)) == resting
    await ledger.accept(filled, fill, opening=OPENING, require=required(filled))
    assert await ledger.balances("paper") == {**OPENING, "USDT": 900.0, "BTC": 2.0}
    cancelled = await ledger.cancel("paper", "rest")
    assert cancelled is not None
    assert cancelled == Order(**{**_fields(resting), "status": OrderStatus.CANCELLED})
    view = ledgers()
    assert await view.get_order("paper", "rest") == cancelled
    assert await view.cancel("paper", "rest") == cancelled
    assert await view.cancel("paper", "fill") == filled
    assert await view.cancel("paper", "nope") is None
    assert await view.cancel("other", "rest") is None


def _fields(order: Order) -> dict[str, Any]:
    return {name: getattr(order, name) for name in Order.__dataclass_fields__}


# Prices and sizes whose sums do not round evenly, across two venues and two days, with
# adds, partial reductions, flips through zero and shorts.
_PARITY_TRADES: Sequence[tuple[str, str, Side, float, float, float]] = (
    ("paper", BTC, Side.BUY, 0.1, 60_000.1, 0.0),
    ("paper", BTC, Side.BUY, 0.2, 60_010.3, 0.0),
    ("paper", ETH, Side.BUY, 1.3, 3_000.7, 0.0),
    ("paper", BTC, Side.SELL, 0.07, 61_000.9, 0.0),
    ("other", BTC, Side.SELL, 0.3, 59_000.3, 0.0),
    ("paper", BTC, Side.SELL, 0.5, 60_500.7, 1.0),
    ("paper", ETH, Side.SELL, 1.3, 2_999.9, 1.0),
    ("other", BTC, Side.BUY, 0.1, 58_000.1, 1.0),
    ("paper", BTC, Side.BUY, 0.27, 59_999.99, 1.0),
    ("other", BTC, Side.BUY, 0.7, 61_234.5, 1.0),
)
"""(venue, symbol, side, quantity, price, day offset)."""


@pytest.mark.asyncio
async def test_balances_positions_and_pnl_follow_the_domain_math_exactly(
    ledgers: Ledgers,
) -> None:
    """After each fill, balances, position, average price and the day's realized P&L are
    what settle() and average_cost() give, to the bit: every backend agrees."""
    ledger = ledgers()
    balances: dict[str, dict[str, float]] = {}
    positions: dict[tuple[str, str], Position] = {}
    pnl: dict[int, float] = {}
    for n, (venue, symbol, side, quantity, price, days) in enumerate(_PARITY_TRADES):
        at = START + days * 86_400
        fee = quantity * price * 0.00075
        order, fill = trade(f"c{n}", side, quantity, price, book=(venue, symbol), fee=fee, at=at)
        assert fill is not None
        await ledger.accept(order, fill, opening=OPENING, require=None)

        held = balances.setdefault(venue, dict(OPENING))
        base, _, quote = symbol.partition("/")
        held[quote], held[base] = settle(fill, held.get(quote, 0.0), held.get(base, 0.0))
        book = positions.get((venue, symbol), FLAT)
        *after, realized = average_cost(book.quantity, book.avg_price, signed_quantity(fill), price)
        positions[venue, symbol] = Position(*after)
        pnl[utc_day(at)] = pnl.get(utc_day(at), 0.0) + (realized - fee)

        assert await ledger.balances(venue) == held
        assert await ledger.position(venue, symbol) == positions[venue, symbol]
        assert await ledger.realized_pnl(utc_day(at)) == pnl[utc_day(at)]
    view = ledgers()
    for (venue, symbol), position in positions.items():
        assert await view.position(venue, symbol) == position
    assert [await view.realized_pnl(day) for day in sorted(pnl)] == [pnl[d] for d in sorted(pnl)]
    assert positions["paper", BTC].quantity == pytest.approx(0.0)
    assert positions["other", BTC].quantity == pytest.approx(0.5)
    assert positions["other", BTC].avg_price == 61_234.5


# --- shared pre-trade checks and per-scope books, on every ledger ---------------------

SCOPES: Sequence[tuple[Scope, str | None]] = (
    (Scope.GLOBAL, None),
    (Scope.STRATEGY, "s1"),
    (Scope.BOT, "b1"),
    (Scope.BOT, "b2"),
    (Scope.WORKFLOW, "w1"),
)
"""Every scope the tests below book orders under."""


async def denied(
    ledger: PaperLedger, placed: tuple[Order, Fill | None], rules: Sequence[ScopeRule]
) -> OrderDenied:
    """The denial of ``placed`` under ``rules`` (fails if it was accepted)."""
    order, fill = placed
    with pytest.raises(OrderDenied) as caught:
        await ledger.accept(order, fill, opening=OPENING, require=None, rules=rules)
    assert caught.value.client_order_id == order.client_order_id
    return caught.value


async def accepted(
    ledger: PaperLedger, placed: tuple[Order, Fill | None], rules: Sequence[ScopeRule]
) -> None:
    order, fill = placed
    assert await ledger.accept(order, fill, opening=OPENING, require=None, rules=rules) == order


async def everything(ledger: PaperLedger) -> tuple[Any, ...]:
    """All a ledger shows of the book ``paper`` BTC and of every scope in ``SCOPES``."""
    return (
        await ledger.balances("paper"),
        await ledger.position("paper", BTC),
        await ledger.realized_pnl(utc_day(START)),
        [await ledger.scope_book(scope, target) for scope, target in SCOPES],
        [order.client_order_id for order in await ledger.open_orders("paper", Scope.GLOBAL, None)],
    )


@pytest.mark.asyncio
@bounded
async def test_max_position_allows_up_to_its_limit_and_denies_beyond(ledgers: Ledgers) -> None:
    """max_position of a scope admits orders up to the limit (within the tolerance) and
    denies one that would grow the scope's position past it, whatever other scopes hold;
    an order that reduces the position always passes, even above a lowered limit."""
    ledger = ledgers()
    # Another bot's position is its own: the limit of b1 does not see it.
    await accepted(
        ledger,
        trade("b2", Side.BUY, 0.5, 100.0, bot_id="b2"),
        [ScopeRule(Scope.BOT, "b2", max_position=1.0)],
    )
    rules = [ScopeRule(Scope.BOT, "b1", max_position=1.0)]
    for n, quantity in enumerate((0.4, 0.4, 0.2)):
        await accepted(ledger, trade(f"b1-{n}", Side.BUY, quantity, 100.0, bot_id="b1"), rules)
    error = await denied(ledger, trade("over", Side.BUY, 0.1, 100.0, bot_id="b1"), rules)
    assert (error.check, error.scope, error.target, error.threshold) == (
        "max_position",
        "bot",
        "b1",
        1.0,
    )
    assert error.value == pytest.approx(1.1)
    assert "beyond max_position 1 of bot 'b1'" in error.reason
    # A resting order counts as if it filled.
    await denied(ledger, trade("rest", Side.BUY, 0.1, 90.0, bot_id="b1", rests=True), rules)

    lowered = [ScopeRule(Scope.BOT, "b1", max_position=0.25)]
    await accepted(ledger, trade("reduce", Side.SELL, 0.2, 100.0, bot_id="b1"), lowered)
    await denied(ledger, trade("grow", Side.BUY, 0.1, 100.0, bot_id="b1"), lowered)
    flip = await denied(ledger, trade("flip", Side.SELL, 1.9, 100.0, bot_id="b1"), lowered)
    assert flip.value == pytest.approx(-1.1)
    view = ledgers()
    assert (await view.scope_book(Scope.BOT, "b1")).positions["paper", BTC].quantity == 0.8
    assert await view.position("paper", BTC) == Position(1.3, 100.0)


@pytest.mark.asyncio
@bounded
async def test_max_open_orders_counts_resting_orders_and_a_cancel_frees_a_place(
    ledgers: Ledgers,
) -> None:
    """max_open_orders denies a resting order past the limit, never an order that fills;
    a cancel frees a place (also through another ledger on the storage); counts are kept
    per scope, for every scope of each order."""
    ledger = ledgers()
    rules = [ScopeRule(Scope.GLOBAL, None, max_open_orders=2)]
    await accepted(ledger, trade("r1", Side.BUY, 0.1, 90.0, rests=True, bot_id="b1"), rules)
    await accepted(ledger, trade("r2", Side.BUY, 0.1, 91.0, rests=True), rules)
    error = await denied(ledger, trade("r3", Side.BUY, 0.1, 92.0, rests=True), rules)
    assert (error.check, error.value, error.threshold) == ("max_open_orders", 3.0, 2.0)
    assert error.reason == "3 resting orders with this one, above max_open_orders 2 of global"
    await accepted(ledger, trade("fills", Side.BUY, 0.1, 100.0), rules)
    assert (await ledger.scope_book(Scope.BOT, "b1")).resting == 1

    view = ledgers()
    await view.cancel("paper", "r1")
    await view.cancel("paper", "r1")  # cancelling again counts nothing down
    await view.cancel("paper", "fills")
    assert [(await view.scope_book(s, t)).resting for s, t in SCOPES[:3]] == [1, 0, 0]
    await accepted(ledger, trade("r3", Side.BUY, 0.1, 92.0, rests=True), rules)
    await denied(ledger, trade("r4", Side.BUY, 0.1, 93.0, rests=True), rules)
    assert (await view.scope_book(Scope.GLOBAL, None)).resting == 2
    listed = await view.open_orders("paper", Scope.GLOBAL, None)
    assert [order.client_order_id for order in listed] == ["r2", "r3"]


@pytest.mark.asyncio
@bounded
async def test_order_rate_is_a_token_bucket_on_the_orders_clock(ledgers: Ledgers) -> None:
    """order_rate admits ``rate`` orders at once, then one per ``window / rate`` seconds of
    the orders' own time; a denied order takes no token; the bucket is the scope's."""
    ledger = ledgers()
    rules = [ScopeRule(Scope.STRATEGY, "s1", rate=2.0, window=10.0)]
    for name in ("a", "b"):
        await accepted(ledger, trade(name, Side.BUY, 0.01, 100.0, strategy_id="s1"), rules)
    error = await denied(ledger, trade("c", Side.BUY, 0.01, 100.0, strategy_id="s1"), rules)
    assert (error.check, error.scope, error.target, error.value, error.threshold) == (
        "order_rate",
        "strategy",
        "s1",
        0.0,
        2.0,
    )
    assert error.reason == "order rate of strategy 's1' above 2 orders per 10s"
    later = START + 2.5
    error = await denied(
        ledger, trade("d", Side.BUY, 0.01, 100.0, at=later, strategy_id="s1"), rules
    )
    assert error.value == 0.5
    assert (await ledger.scope_book(Scope.STRATEGY, "s1")).bucket == (0.0, START)
    await accepted(ledger, trade("e", Side.BUY, 0.01, 100.0, at=START + 5, strategy_id="s1"), rules)
    # An order stamped earlier (another replica's clock) refills nothing.
    await denied(ledger, trade("f", Side.BUY, 0.01, 100.0, at=START + 4, strategy_id="s1"), rules)
    assert (await ledgers().scope_book(Scope.STRATEGY, "s1")).bucket == (0.0, START + 5)


@pytest.mark.asyncio
@bounded
async def test_a_denied_order_writes_nothing(ledgers: Ledgers) -> None:
    """Whichever check denies it, a denied order leaves no order, balance, position, P&L,
    scope book, resting count, bucket or fill behind."""
    ledger = ledgers()
    ids = {"workflow_id": "w1", "bot_id": "b1", "strategy_id": "s1"}
    await accepted(ledger, trade("fill", Side.BUY, 0.5, 100.0, fee=0.1, **ids), [])
    await accepted(ledger, trade("rest", Side.SELL, 0.1, 120.0, rests=True, **ids), [])
    rate = ScopeRule(Scope.WORKFLOW, "w1", rate=1.0, window=60.0)
    await accepted(ledger, trade("rated", Side.BUY, 0.1, 101.0, **ids), [rate])
    before = await everything(ledger)
    cases = [
        (ScopeRule(Scope.STRATEGY, "s1", max_position=0.5), trade("x1", Side.BUY, 0.1, 1.0, **ids)),
        (
            ScopeRule(Scope.BOT, "b1", max_open_orders=1),
            trade("x2", Side.SELL, 0.1, 130.0, rests=True, **ids),
        ),
        (rate, trade("x3", Side.BUY, 0.1, 100.0, **ids)),
    ]
    for rule, placed in cases:
        await denied(ledger, placed, [ScopeRule(Scope.GLOBAL, None, max_open_orders=5), rule])
    view = ledgers()
    assert await everything(view) == before
    for client_order_id in ("x1", "x2", "x3"):
        assert await view.get_order("paper", client_order_id) is None


@pytest.mark.asyncio
@bounded
async def test_an_order_already_stored_comes_back_and_is_never_denied(ledgers: Ledgers) -> None:
    """Placing a stored client order id again returns the stored order under any rules,
    even rules that would deny every new order, and changes nothing."""
    ledger = ledgers()
    await accepted(ledger, trade("c1", Side.BUY, 1.0, 100.0, rests=True, bot_id="b1"), [])
    stored = await ledger.get_order("paper", "c1")
    before = await everything(ledger)
    deny_all = [
        ScopeRule(Scope.GLOBAL, None, max_position=0.001, max_open_orders=0, rate=1.0, window=1e9),
        ScopeRule(Scope.BOT, "b1", max_position=0.001, max_open_orders=0),
    ]
    for again in (ledger, ledgers()):
        order, fill = trade("c1", Side.BUY, 5.0, 100.0, rests=True, bot_id="b1")
        assert await again.accept(order, fill, opening=OPENING, require=None, rules=deny_all) == (
            stored
        )
    assert await everything(ledger) == before


# Trades over two venues, two symbols and mixed scope ids (some of none), with adds,
# partial reductions, flips through zero and shorts, and fees.
_SCOPED_TRADES: Sequence[tuple[str, str, Side, float, float, dict[str, str]]] = (
    ("paper", BTC, Side.BUY, 0.1, 60_000.1, {"bot_id": "b1", "strategy_id": "s1"}),
    ("paper", BTC, Side.BUY, 0.2, 60_010.3, {"bot_id": "b2", "strategy_id": "s1"}),
    ("paper", ETH, Side.BUY, 1.3, 3_000.7, {"workflow_id": "w1", "bot_id": "b1"}),
    ("paper", BTC, Side.SELL, 0.07, 61_000.9, {"bot_id": "b1"}),
    ("other", BTC, Side.SELL, 0.3, 59_000.3, {"strategy_id": "s1"}),
    ("paper", BTC, Side.SELL, 0.5, 60_500.7, {"bot_id": "b2", "strategy_id": "s1"}),
    ("paper", ETH, Side.SELL, 1.3, 2_999.9, {}),
    ("other", BTC, Side.BUY, 0.1, 58_000.1, {"workflow_id": "w1", "strategy_id": "s1"}),
    ("paper", BTC, Side.BUY, 0.27, 59_999.99, {"bot_id": "b1", "workflow_id": "w1"}),
    ("other", BTC, Side.BUY, 0.7, 61_234.5, {"strategy_id": "s1"}),
)
"""(venue, symbol, side, quantity, price, scope ids)."""


@pytest.mark.asyncio
@bounded
async def test_scope_books_and_equity_follow_average_cost_exactly(ledgers: Ledgers) -> None:
    """Each scope's positions (per venue and symbol), realized P&L minus fees and equity
    (marked to each book's last fill price) are what average_cost gives, to the bit, on
    every backend; global's positions are the venues'."""
    ledger = ledgers()
    books: dict[str, dict[tuple[str, str], Position]] = {}
    realized: dict[str, float] = {}
    marks: dict[tuple[str, str], float] = {}
    for n, (venue, symbol, side, quantity, price, ids) in enumerate(_SCOPED_TRADES):
        fee = quantity * price * 0.00075
        placed = trade(f"c{n}", side, quantity, price, book=(venue, symbol), fee=fee, **ids)
        await accepted(ledger, placed, [])
        signed = quantity if side is Side.BUY else -quantity
        for key in scope_keys(ids.get("workflow_id"), ids.get("bot_id"), ids.get("strategy_id")):
            book = books.setdefault(key, {}).get((venue, symbol), FLAT)
            *after, gain = average_cost(book.quantity, book.avg_price, signed, price)
            books[key][venue, symbol] = Position(*after)
            realized[key] = realized.get(key, 0.0) + (gain - fee)
        marks[venue, symbol] = price
    view = ledgers()
    for (scope, target), key in zip(
        SCOPES, ("global", "strategy:s1", "bot:b1", "bot:b2", "workflow:w1"), strict=True
    ):
        expected = ScopeBook(
            realized[key], books[key], {book: marks[book] for book in books[key]}, 0, None
        )
        assert await view.scope_book(scope, target) == expected
        equity = math.fsum(
            [realized[key]]
            + [p.quantity * (marks[book] - p.avg_price) for book, p in books[key].items()]
        )
        assert await view.equity(scope, target) == equity == expected.equity
    for (venue, symbol), position in books["global"].items():
        assert await view.position(venue, symbol) == position
    assert await view.scope_book(Scope.BOT, "nobody") == ScopeBook()
    assert await view.equity(Scope.BOT, "nobody") == 0.0


@pytest.mark.asyncio
@bounded
async def test_the_exchange_judges_its_requests_rules_and_reports_equity(
    ledgers: Ledgers,
) -> None:
    """PaperExchange hands each request's rules to its ledger, stamped with its clock (a
    denial raises OrderDenied and places nothing), and its equity is the ledger's."""
    clock = ManualClock()
    feed = ReplayPriceFeed({("paper", BTC): [(100.0, 101.0)]}, clock=clock)
    ledger = ledgers()
    exchange = PaperExchange(
        feed, ledger=ledger, fee_rate=0.001, clock=clock, id_factory=_worker_ids()
    )
    rules = (ScopeRule(Scope.BOT, "b1", rate=1.0, window=60.0),)
    request = functools.partial(OrderRequest, venue="paper", symbol=BTC, bot_id="b1", rules=rules)
    await exchange.place_order(request("a", side=Side.BUY, quantity=0.5))
    with pytest.raises(OrderDenied, match="order rate of bot 'b1'"):
        await exchange.place_order(request("b", side=Side.BUY, quantity=0.5))
    assert await exchange.get_order("paper", "b") is None
    clock.advance(60.0)
    await exchange.place_order(request("b", side=Side.SELL, quantity=0.2))
    equity = await exchange.equity(Scope.BOT, "b1")
    assert equity == await ledger.equity(Scope.BOT, "b1")
    # Bought 0.5 at 101, sold 0.2 at 100 (the mark): -0.2 realized, -0.3 unrealized, fees.
    assert equity == pytest.approx(-0.2 - 0.3 - 0.001 * (50.5 + 20.0))
    assert await exchange.equity(Scope.GLOBAL, None) == equity


@pytest.mark.asyncio
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rules=rule_lists, plan=steps)
async def test_every_ledger_decides_exactly_as_shared_denial(
    storages: Storages, rules: list[ScopeRule], plan: list[Place | Cancel]
) -> None:
    """On random sequences of orders and cancels under random shared rules, each backend
    (each example on a new storage) denies exactly what shared_denial of the figures it
    holds denies, with the same denial, and ends with the positions, resting counts and
    buckets the domain functions give: the three ledgers agree."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        await decide_alike(storages()(), rules, plan)


@pytest.mark.asyncio
@bounded
async def test_a_sqlite_file_without_the_scope_tables_gets_them_from_its_fills(
    tmp_path: Path,
) -> None:
    """A file written before the per-scope tables existed gets them in the transaction
    that creates them: positions, realized P&L and marks replayed from its fills with the
    orders' scope ids (an order without them counts under global only), resting counts
    from its resting orders; equal to what accept had booked."""
    path = tmp_path / "ledger.db"
    conn = open_database(path)
    try:
        ledger = SQLitePaperLedger(conn)
        for n, (venue, symbol, side, quantity, price, ids) in enumerate(_SCOPED_TRADES):
            placed = trade(f"c{n}", side, quantity, price, book=(venue, symbol), fee=0.01, **ids)
            await accepted(ledger, placed, [])
        await accepted(ledger, trade("r1", Side.BUY, 0.1, 50.0, rests=True, bot_id="b1"), [])
        await accepted(ledger, trade("r2", Side.BUY, 0.1, 50.0, rests=True), [])
        await accepted(ledger, trade("r3", Side.BUY, 0.1, 50.0, rests=True, bot_id="b2"), [])
        await ledger.cancel("paper", "r3")
        before = [await ledger.scope_book(scope, target) for scope, target in SCOPES]
        for table in ("paper_scope_positions", "paper_scopes", "paper_marks"):
            conn.execute(f"DROP TABLE {table}")
        reopened = SQLitePaperLedger(open_database(path))
        after = [await reopened.scope_book(scope, target) for scope, target in SCOPES]
        assert after == before
        assert before[2].resting == 1
    finally:
        conn.close()


@pytest.mark.asyncio
@bounded
async def test_redis_cancel_counts_down_the_scopes_a_stored_order_names(
    redis_server: ServerProcess, redis_prefix: str
) -> None:
    """Cancel reads the scope ids from the stored order: one written before orders kept
    them counts down global only, and a count never goes below zero."""
    client = aioredis.from_url(redis_server.url)
    try:
        ledger = RedisPaperLedger(client, prefix=redis_prefix)
        await accepted(ledger, trade("new", Side.BUY, 0.1, 50.0, rests=True, bot_id="b1"), [])
        old_layout = b'open\n["o-old","BTC/USDT","buy",0.1,"limit",50.0,0.0,null,1700000000.0]'
        p = f"{redis_prefix}:paper:"
        await client.hset(f"{p}orders:paper", mapping={"old": old_layout, "older": old_layout})
        await client.sadd(f"{p}open:paper", "old", "older")
        await ledger.cancel("paper", "old")
        assert (await ledger.scope_book(Scope.GLOBAL, None)).resting == 0
        assert (await ledger.scope_book(Scope.BOT, "b1")).resting == 1
        cancelled = await ledger.cancel("paper", "older")
        assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
        assert (await ledger.scope_book(Scope.GLOBAL, None)).resting == 0
        await ledger.cancel("paper", "new")
        assert (await ledger.scope_book(Scope.BOT, "b1")).resting == 0
    finally:
        await client.aclose()


# --- crowds of processes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a ledger stores, read from its storage directly."""

    orders: dict[str, str]
    """client order id -> order id, venue 'paper'."""
    fills: list[Fill]
    """In the order they were applied."""
    balances: dict[str, float]
    positions: dict[str, tuple[float, float]]
    pnl: dict[int, float]


def sqlite_snapshot(path: Path) -> Snapshot:
    with sqlite3.connect(path) as conn:
        orders = conn.execute(
            "SELECT client_order_id, order_id FROM paper_orders WHERE venue = 'paper'"
        ).fetchall()
        rows = conn.execute(
            "SELECT venue, symbol, client_order_id, side, quantity, price, fee, at "
            "FROM paper_fills ORDER BY fill_id"
        ).fetchall()
        balances = conn.execute("SELECT asset, amount FROM paper_balances WHERE venue = 'paper'")
        positions = conn.execute(
            "SELECT symbol, quantity, avg_price FROM paper_positions WHERE venue = 'paper'"
        )
        return Snapshot(
            dict(orders),
            [_fill(row) for row in rows],
            dict(balances.fetchall()),
            {symbol: (quantity, avg) for symbol, quantity, avg in positions},
            dict(conn.execute("SELECT day, realized FROM paper_daily_pnl").fetchall()),
        )


async def redis_snapshot(url: str, prefix: str) -> Snapshot:
    client = aioredis.from_url(url)
    p = f"{prefix}:paper:"
    try:
        orders = await client.hgetall(f"{p}orders:paper")
        fills = await client.lrange(f"{p}fills", 0, -1)
        balances = await client.hgetall(f"{p}balances:paper")
        positions = await client.hgetall(f"{p}positions:paper")
        pnl = await client.hgetall(f"{p}pnl")
    finally:
        await client.aclose()
    return Snapshot(
        {
            coid.decode(): json.loads(stored.partition(b"\n")[2])[0]
            for coid, stored in orders.items()
        },
        [_fill(row) for row in map(json.loads, fills)],
        {asset.decode(): float(amount) for asset, amount in balances.items()},
        {symbol.decode(): _book(stored) for symbol, stored in positions.items()},
        {int(day): float(value) for day, value in pnl.items()},
    )


def _fill(row: Sequence[Any]) -> Fill:
    venue, symbol, client_order_id, side, quantity, price, fee, at = row
    return Fill(venue, symbol, client_order_id, Side(side), quantity, price, fee, at)


def _book(stored: bytes) -> tuple[float, float]:
    quantity, avg_price = stored.split()
    return float(quantity), float(avg_price)


def assert_ledger_is_the_sum_of_its_fills(snapshot: Snapshot, client_order_ids: set[str]) -> None:
    """Balances are the opening balances plus every fill, positions the sum of the signed
    fill quantities, average prices and P&L the fills replayed; one order and at most one
    fill per client order id, and nothing else."""
    fills = snapshot.fills
    assert set(snapshot.orders) == client_order_ids
    assert len({fill.client_order_id for fill in fills}) == len(fills)
    assert {fill.client_order_id for fill in fills} <= client_order_ids
    assert fills, "the crowd traded nothing"
    expected = dict(DEFAULT_BALANCES)
    sums: dict[str, float] = {}
    books: dict[str, Position] = {}
    pnl: dict[int, float] = {}
    for fill in fills:
        base, _, quote = fill.symbol.partition("/")
        expected[quote], expected[base] = settle(fill, expected[quote], expected[base])
        sums[fill.symbol] = sums.get(fill.symbol, 0.0) + signed_quantity(fill)
        book = books.get(fill.symbol, FLAT)
        *after, realized = average_cost(
            book.quantity, book.avg_price, signed_quantity(fill), fill.price
        )
        books[fill.symbol] = Position(*after)
        pnl[utc_day(fill.at)] = pnl.get(utc_day(fill.at), 0.0) + (realized - fill.fee)
    assert snapshot.balances.keys() == expected.keys()
    for asset, amount in expected.items():
        assert abs(snapshot.balances[asset] - amount) <= 1e-9, (asset, snapshot.balances, expected)
    assert snapshot.positions.keys() == sums.keys()
    for symbol, total in sums.items():
        assert abs(snapshot.positions[symbol][0] - total) <= 1e-9, (symbol, snapshot.positions)
        assert snapshot.positions[symbol] == (books[symbol].quantity, books[symbol].avg_price)
    assert snapshot.pnl == pnl


def crowd_env() -> dict[str, str]:
    paths = [str(REPO), *(str(REPO / "tests" / sub) for sub in ("", "unit", "integration"))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TRADEFLOW_LOG_LEVEL": "warning"}


async def run_crowd(workers: Sequence[Sequence[str]]) -> list[list[dict[str, Any]]]:
    """Start one process per argument list of this module's worker, let all of them go
    at once when all are ready, and return what each placed."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.timeout(CROWD_DEADLINE):
            for args in workers:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "test_paper_ledger",
                        *args,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        env=crowd_env(),
                        cwd=REPO,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line != b"ready\n":
                    _, err = await proc.communicate()
                    raise AssertionError(f"worker did not start: {line!r} {err.decode()}")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
            outputs = await asyncio.gather(*(proc.communicate() for proc in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    return [json.loads(out) for out, _ in outputs]


def assert_each_id_got_the_stored_order(
    placed: list[list[dict[str, Any]]], snapshot: Snapshot
) -> None:
    """Every process got back, for each id, the one order the ledger stored."""
    for results in placed:
        for result in results:
            assert result["order_id"] == snapshot.orders[result["client_order_id"]], result


@pytest.mark.asyncio
async def test_three_processes_on_one_sqlite_file_lose_no_update(tmp_path: Path) -> None:
    """3 processes x 15 orders on one file at once: balances equal the opening balances
    plus every fill, positions the signed fills, one row per client order id."""
    db = tmp_path / "crowd.db"
    placed = await run_crowd([("sqlite", str(db), "-", f"p{n}-", "15") for n in range(3)])
    snapshot = sqlite_snapshot(db)
    ids = {f"p{n}-{i}" for n in range(3) for i in range(15)}
    assert_ledger_is_the_sum_of_its_fills(snapshot, ids)
    assert len(snapshot.fills) == 45
    assert_each_id_got_the_stored_order(placed, snapshot)


@pytest.mark.asyncio
async def test_two_processes_placing_the_same_ids_on_sqlite_fill_each_once(
    tmp_path: Path,
) -> None:
    """2 processes placing the same 15 client order ids at once: each id fills once, and
    both processes get that one order back."""
    db = tmp_path / "crowd.db"
    placed = await run_crowd([("sqlite", str(db), "-", "same-", "15")] * 2)
    snapshot = sqlite_snapshot(db)
    assert_ledger_is_the_sum_of_its_fills(snapshot, {f"same-{i}" for i in range(15)})
    assert len(snapshot.fills) == 15
    assert_each_id_got_the_stored_order(placed, snapshot)


@pytest.mark.asyncio
async def test_three_processes_on_one_redis_lose_no_update(
    redis_server: ServerProcess, redis_prefix: str
) -> None:
    """3 processes x 15 concurrent orders on one Redis: the ledger is the sum of its fills."""
    workers = [("redis", redis_server.url, redis_prefix, f"p{n}-", "15") for n in range(3)]
    placed = await run_crowd(workers)
    snapshot = await redis_snapshot(redis_server.url, redis_prefix)
    ids = {f"p{n}-{i}" for n in range(3) for i in range(15)}
    assert_ledger_is_the_sum_of_its_fills(snapshot, ids)
    assert len(snapshot.fills) == 45
    assert_each_id_got_the_stored_order(placed, snapshot)


@pytest.mark.asyncio
async def test_two_processes_placing_the_same_ids_on_redis_fill_each_once(
    redis_server: ServerProcess, redis_prefix: str
) -> None:
    """2 processes placing the same 15 ids at once on one Redis: each id fills once."""
    placed = await run_crowd([("redis", redis_server.url, redis_prefix, "same-", "15")] * 2)
    snapshot = await redis_snapshot(redis_server.url, redis_prefix)
    assert_ledger_is_the_sum_of_its_fills(snapshot, {f"same-{i}" for i in range(15)})
    assert len(snapshot.fills) == 15
    assert_each_id_got_the_stored_order(placed, snapshot)


async def assert_no_shared_limit_overshot(
    placed: list[list[dict[str, Any]]], snapshot: Snapshot, ledger: PaperLedger
) -> None:
    """Of a ``shared`` crowd: every placement was accepted or denied by its own rule's
    check, and exactly as many were accepted as each limit allows (no overshoot, no
    needless denial): 10 buys of 0.1 under max_position 1.0, 3 resting orders, 5 orders
    at one instant under order_rate 5 per hour. The ledger stored the accepted ones and
    is the sum of their fills; each scope's book agrees."""
    results = [result for worker in placed for result in worker]
    accepted_ids = {r["client_order_id"] for r in results if r["denied"] is None}
    for kind, rule in CROWD_RULES.items():
        of_kind = [r for r in results if r["kind"] == kind]
        checks = {r["denied"] for r in of_kind} - {None}
        assert checks == {
            {"position": "max_position", "open": "max_open_orders"}.get(kind, "order_rate")
        }
        accepted_of_kind = sum(r["denied"] is None for r in of_kind)
        assert accepted_of_kind == {"position": 10, "open": 3, "rate": 5}[kind], kind
        book = await ledger.scope_book(rule.scope, rule.target)
        if kind == "position":
            quantity = book.positions["paper", BTC].quantity
            assert abs(quantity) <= 1.0 + 1e-9
            assert quantity == pytest.approx(1.0)
        if kind == "open":
            assert book.resting == 3
            resting = await ledger.open_orders("paper", rule.scope, rule.target)
            assert len(resting) == 3
        if kind == "rate":
            assert book.bucket == (0.0, START)
    assert_ledger_is_the_sum_of_its_fills(snapshot, accepted_ids)
    assert len(snapshot.fills) == 15
    assert_each_id_got_the_stored_order(
        [[r for r in worker if r["denied"] is None] for worker in placed], snapshot
    )


@pytest.mark.asyncio
async def test_three_processes_on_one_sqlite_file_never_overshoot_a_shared_limit(
    tmp_path: Path,
) -> None:
    """3 processes x 18 orders at once on one file under shared max_position,
    max_open_orders and order_rate limits: each limit admits exactly what it allows,
    never more, and every order is either accepted or denied."""
    db = tmp_path / "crowd.db"
    placed = await run_crowd([("sqlite", str(db), "-", f"p{n}-", "18", "shared") for n in range(3)])
    assert sum(map(len, placed)) == 54
    conn = open_database(db)
    try:
        await assert_no_shared_limit_overshot(placed, sqlite_snapshot(db), SQLitePaperLedger(conn))
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_three_processes_on_one_redis_never_overshoot_a_shared_limit(
    redis_server: ServerProcess, redis_prefix: str
) -> None:
    """3 processes x 18 concurrent orders on one Redis under shared limits: no overshoot,
    accepted plus denied is every order placed."""
    workers = [
        ("redis", redis_server.url, redis_prefix, f"p{n}-", "18", "shared") for n in range(3)
    ]
    placed = await run_crowd(workers)
    assert sum(map(len, placed)) == 54
    client = aioredis.from_url(redis_server.url)
    try:
        await assert_no_shared_limit_overshot(
            placed,
            await redis_snapshot(redis_server.url, redis_prefix),
            RedisPaperLedger(client, prefix=redis_prefix),
        )
    finally:
        await client.aclose()


def test_three_cli_bots_on_one_state_file_keep_the_ledger_equal_to_its_fills(
    tmp_path: Path,
) -> None:
    """Three `tradeflow run --count 15` bots on one state file at once (the issue's
    measurement): the ledger tables equal the sum of the fills. The bots share one
    position, so the example's max_position limit (auto-halt) may stop them all (exit 3)
    once their joint position reaches it."""
    db = tmp_path / "bots.db"
    examples = REPO / "examples"
    env = {**os.environ, "TRADEFLOW_LOG_LEVEL": "warning"}
    bots = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tradeflow.app.cli",
                "run",
                str(examples / "mean_reversion.json"),
                "--prices",
                str(examples / "prices.json"),
                "--db",
                str(db),
                "--bot-id",
                bot_id,
                "--count",
                "15",
                "--interval",
                "0",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for bot_id in ("b1", "b2", "b3")
    ]
    try:
        for bot in bots:
            _, err = bot.communicate(timeout=CROWD_DEADLINE)
            assert bot.returncode == 0 or (
                bot.returncode == 3 and "risk limit 'max_position'" in err
            ), err
    finally:
        for bot in bots:
            if bot.poll() is None:
                bot.kill()
                bot.wait()
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT client_order_id FROM paper_orders")}
    snapshot = sqlite_snapshot(db)
    assert_ledger_is_the_sum_of_its_fills(snapshot, ids)
    # Not <= the limit: each bot checks the shared position, then orders, and two bots
    # may pass that check together (the limit is checked before an order, not with it).
    assert snapshot.positions[BTC][0] > 0


# --- one process of a crowd ----------------------------------------------------------


async def _worker(
    backend: str, target: str, prefix: str, id_prefix: str, count: int, mode: str
) -> None:
    clock = ManualClock()
    feed = ReplayPriceFeed({("paper", BTC): CROWD_TICKS}, clock=clock)
    close: Callable[[], Any]
    if backend == "sqlite":
        conn = open_database(target)
        ledger: PaperLedger = SQLitePaperLedger(conn)
        close = conn.close
    else:
        client = aioredis.from_url(target)
        ledger = RedisPaperLedger(client, prefix=prefix)
        close = client.aclose
    exchange = PaperExchange(
        feed, ledger=ledger, fee_rate=CROWD_FEE_RATE, clock=clock, id_factory=_worker_ids()
    )
    print("ready", flush=True)
    if sys.stdin.readline() != "go\n":
        raise SystemExit("expected 'go'")

    async def place(i: int) -> dict[str, Any]:
        await feed.quote("paper", BTC)
        if mode == "shared":
            return await place_shared(i)
        side = Side.SELL if i % 3 == 2 else Side.BUY
        order = await exchange.place_order(
            OrderRequest(f"{id_prefix}{i}", "paper", BTC, side, 0.01 * (1 + i % 4))
        )
        return {"client_order_id": order.client_order_id, "order_id": order.order_id}

    async def place_shared(i: int) -> dict[str, Any]:
        kind = list(CROWD_RULES)[i % len(CROWD_RULES)]
        rule = CROWD_RULES[kind]
        request = OrderRequest(
            f"{id_prefix}{i}",
            "paper",
            BTC,
            Side.BUY,
            0.1 if kind == "position" else 0.01,
            OrderType.LIMIT if kind == "open" else OrderType.MARKET,
            50_000.0 if kind == "open" else None,
            rules=(rule,),
            **{f"{rule.scope.value}_id": rule.target},
        )
        outcome: dict[str, Any] = {"client_order_id": request.client_order_id, "kind": kind}
        try:
            order = await exchange.place_order(request)
        except OrderDenied as exc:
            return {**outcome, "order_id": None, "denied": exc.check}
        return {**outcome, "order_id": order.order_id, "denied": None}

    if backend == "sqlite":  # one connection: its calls run one after the other anyway
        results = [await place(i) for i in range(count)]
    else:  # every placement in flight at once, each on a pooled connection of its own
        results = list(await asyncio.gather(*(place(i) for i in range(count))))
    closed = close()
    if asyncio.iscoroutine(closed):
        await closed
    print(json.dumps(results), flush=True)


def _worker_ids() -> Callable[[], str]:
    """Order ids unique across the crowd's processes."""
    counter = itertools.count()
    return lambda: f"{os.getpid()}-{next(counter)}"


if __name__ == "__main__":
    backend_, target_, prefix_, id_prefix_, count_, *mode_ = sys.argv[1:]
    asyncio.run(
        _worker(backend_, target_, prefix_, id_prefix_, int(count_), mode_[0] if mode_ else "plain")
    )
