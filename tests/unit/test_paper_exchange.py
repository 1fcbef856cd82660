"""PaperExchange: fills, rejects, idempotency, balances, positions, P&L and persistence."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kit import START, ManualClock

from tradeflow.adapters.memory.paper import (
    DEFAULT_BALANCES,
    MemoryPaperLedger,
    PaperExchange,
)
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.domain.clock import new_id
from tradeflow.domain.errors import ExchangeError, OrderRejected
from tradeflow.domain.records import Scope
from tradeflow.domain.trading import (
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    average_cost,
    utc_day,
)

BTC = "BTC/USDT"
Ticks = Mapping[tuple[str, str], Sequence[tuple[float, float]]]


def _exchange(
    ticks: Ticks | None = None, clock: ManualClock | None = None, **options: Any
) -> PaperExchange:
    clock = clock or ManualClock()
    counter = itertools.count(1)
    return PaperExchange(
        ReplayPriceFeed(ticks or {("paper", BTC): [(100.0, 102.0)]}, clock=clock, strict=True),
        clock=clock,
        id_factory=lambda: f"o{next(counter)}",
        **options,
    )


def _order(
    client_order_id: str = "c1",
    side: Side = Side.BUY,
    quantity: float = 1.0,
    *,
    symbol: str = BTC,
    venue: str = "paper",
    limit_price: float | None = None,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id,
        venue=venue,
        symbol=symbol,
        side=side,
        quantity=quantity,
        order_type=OrderType.MARKET if limit_price is None else OrderType.LIMIT,
        limit_price=limit_price,
    )


@pytest.fixture
def connect(db_path: Path) -> Iterator[Any]:
    """Opens autocommit connections to one file, the way callers do; closes them after."""
    opened: list[sqlite3.Connection] = []
    db_path.parent.mkdir()

    def open_connection() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()


@pytest.mark.asyncio
async def test_market_orders_fill_at_the_touch_and_move_balances() -> None:
    """A market buy fills at the ask, a sell at the bid; balances follow."""
    exchange = _exchange()
    bought = await exchange.place_order(_order("c1", Side.BUY, 0.5))
    sold = await exchange.place_order(_order("c2", Side.SELL, 0.5))
    assert (bought.status, bought.filled_quantity, bought.avg_price) == (
        OrderStatus.FILLED,
        0.5,
        102.0,
    )
    assert (sold.status, sold.avg_price, sold.order_id) == (OrderStatus.FILLED, 100.0, "o2")
    balances = await exchange.balances("paper")
    assert balances["USDT"] == pytest.approx(100_000 - 51 + 50)
    assert balances["BTC"] == pytest.approx(2.0)


@pytest.mark.asyncio
async def test_fills_use_the_last_quote_without_advancing_the_feed() -> None:
    """An order fills at the feed's last quote when there is one (no new tick is drawn)."""
    clock = ManualClock()
    feed = ReplayPriceFeed({("paper", BTC): [(100.0, 102.0), (200.0, 202.0)]}, clock=clock)
    exchange = PaperExchange(feed, clock=clock, id_factory=new_id)
    await feed.quote("paper", BTC)
    first = await exchange.place_order(_order("c1"))
    second = await exchange.place_order(_order("c2"))
    assert (first.avg_price, second.avg_price) == (102.0, 102.0)
    assert (await feed.quote("paper", BTC)).ask == 202.0


@pytest.mark.asyncio
async def test_fees_are_charged_in_the_quote_asset() -> None:
    """fee_rate takes quantity * price * fee_rate of the quote asset on each fill."""
    exchange = _exchange(fee_rate=0.01)
    await exchange.place_order(_order("c1", Side.BUY, 1.0))
    await exchange.place_order(_order("c2", Side.SELL, 1.0))
    balances = await exchange.balances("paper")
    assert balances["USDT"] == pytest.approx(100_000 - 102 * 1.01 + 100 * 0.99)


@pytest.mark.asyncio
async def test_marketable_limit_fills_at_the_quote_and_others_rest() -> None:
    """A crossing limit order fills at the quote; one that does not cross rests open."""
    exchange = _exchange()
    crossing = await exchange.place_order(_order("c1", Side.BUY, 1.0, limit_price=105.0))
    resting = await exchange.place_order(_order("c2", Side.SELL, 1.0, limit_price=101.0))
    assert (crossing.status, crossing.avg_price) == (OrderStatus.FILLED, 102.0)
    assert (resting.status, resting.filled_quantity, resting.avg_price) == (
        OrderStatus.OPEN,
        0.0,
        None,
    )
    assert await exchange.position("paper", BTC) == 1.0


@pytest.mark.asyncio
async def test_cancel_open_finished_and_unknown_orders() -> None:
    """Cancel closes a resting order; a finished one comes back unchanged; unknown is rejected."""
    exchange = _exchange()
    await exchange.place_order(_order("rest", Side.BUY, 1.0, limit_price=50.0))
    filled = await exchange.place_order(_order("fill", Side.BUY, 1.0))
    cancelled = await exchange.cancel_order("paper", "rest")
    assert cancelled.status is OrderStatus.CANCELLED
    assert await exchange.cancel_order("paper", "rest") == cancelled
    assert await exchange.cancel_order("paper", "fill") == filled
    assert await exchange.get_order("paper", "rest") == cancelled
    with pytest.raises(OrderRejected, match=r"'nope'.*no such order"):
        await exchange.cancel_order("paper", "nope")


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (_order(symbol="BTCUSDT"), "not BASE/QUOTE"),
        (_order(quantity=0.0), "quantity must be"),
        (_order(quantity=float("nan")), "quantity must be"),
        (_order(quantity=float("inf")), "quantity must be"),
        (_order(limit_price=-1.0), "limit_price > 0"),
        (_order(quantity=1_000.0), r"insufficient USDT.*needs 102000, has 100000"),
        (_order(side=Side.SELL, quantity=3.0), r"insufficient BTC.*needs 3, has 2"),
        (_order(symbol="ETH/USDT"), r"no price for 'ETH/USDT'"),
    ],
)
@pytest.mark.asyncio
async def test_rejects_with_a_reason(request_: OrderRequest, reason: str) -> None:
    """Bad or unaffordable orders are rejected with a reason and trade nothing."""
    exchange = _exchange()
    with pytest.raises(OrderRejected, match=reason):
        await exchange.place_order(request_)
    assert await exchange.get_order("paper", request_.client_order_id) is None
    assert await exchange.balances("paper") == dict(DEFAULT_BALANCES)


@pytest.mark.asyncio
async def test_allow_short_lets_a_sell_go_below_zero() -> None:
    """With allow_short a sell beyond the base balance fills and the position goes negative."""
    exchange = _exchange(allow_short=True)
    await exchange.place_order(_order("c1", Side.SELL, 3.0))
    assert await exchange.position("paper", BTC) == -3.0
    assert (await exchange.balances("paper"))["BTC"] == pytest.approx(-1.0)


@pytest.mark.asyncio
async def test_replacing_a_client_order_id_trades_nothing() -> None:
    """Placing a known client_order_id again returns the stored order, even with other values."""
    exchange = _exchange()
    first = await exchange.place_order(_order("c1", Side.BUY, 1.0))
    again = await exchange.place_order(_order("c1", Side.SELL, 2.0))
    assert again == first
    assert await exchange.position("paper", BTC) == 1.0


class _GatedFeed:
    """A feed whose quotes wait for a gate, so placements can be made to overlap."""

    def __init__(self, inner: ReplayPriceFeed, waiters: int) -> None:
        self.inner = inner
        self.waiters = waiters
        self.all_waiting = asyncio.Event()
        self.gate = asyncio.Event()

    async def quote(self, venue: str, symbol: str) -> Quote:
        self.waiters -= 1
        if self.waiters == 0:
            self.all_waiting.set()
        await self.gate.wait()
        return await self.inner.quote(venue, symbol)

    def last_quote(self, venue: str, symbol: str) -> Quote | None:
        return None


@pytest.mark.asyncio
async def test_concurrent_placements_of_one_id_trade_once() -> None:
    """Two placements of one client_order_id that overlap in flight get one order, one fill."""
    clock = ManualClock()
    feed = _GatedFeed(ReplayPriceFeed({("paper", BTC): [(100.0, 102.0)]}, clock=clock), waiters=2)
    exchange = PaperExchange(feed, clock=clock, id_factory=new_id)
    placing = [asyncio.create_task(exchange.place_order(_order("c1"))) for _ in range(2)]
    await feed.all_waiting.wait()
    feed.gate.set()
    first, second = await asyncio.gather(*placing)
    assert first == second
    assert await exchange.position("paper", BTC) == 1.0


@pytest.mark.asyncio
async def test_balances_per_venue() -> None:
    """Configured venues start with their balances, others with the defaults."""
    ticks = {("paper", BTC): [(100.0, 102.0)], ("other", BTC): [(100.0, 102.0)]}
    exchange = _exchange(ticks, balances={"other": {"USDT": 500.0}})
    assert await exchange.balances("other") == {"USDT": 500.0}
    assert await exchange.balances("fresh") == dict(DEFAULT_BALANCES)
    await exchange.place_order(_order("c1", venue="other", quantity=2.0))
    assert await exchange.balances("other") == pytest.approx({"USDT": 296.0, "BTC": 2.0})
    assert await exchange.position("paper", BTC) == 0.0


@pytest.mark.asyncio
async def test_realized_pnl_is_average_cost_minus_fees_for_today() -> None:
    """P&L averages entry prices, realizes on reductions and flips, and counts fees."""
    clock = ManualClock()
    ticks = {("paper", BTC): [(100.0, 100.0), (110.0, 110.0), (120.0, 120.0), (90.0, 90.0)]}
    feed = ReplayPriceFeed(ticks, clock=clock)
    exchange = PaperExchange(feed, clock=clock, id_factory=new_id, fee_rate=0.001, allow_short=True)

    async def trade(client_order_id: str, side: Side, quantity: float) -> None:
        await feed.quote("paper", BTC)
        await exchange.place_order(_order(client_order_id, side, quantity))

    await trade("c1", Side.BUY, 1.0)  # long 1 @ 100
    await trade("c2", Side.BUY, 1.0)  # long 2 @ 105
    await trade("c3", Side.SELL, 3.0)  # closes 2 @ 120 (+30), short 1 @ 120
    await trade("c4", Side.BUY, 1.0)  # closes the short @ 90 (+30)
    fees = 0.001 * (100 + 110 + 360 + 90)
    assert await exchange.realized_pnl_today() == pytest.approx(60 - fees)
    assert await exchange.position("paper", BTC) == 0.0
    clock.advance(86_400)
    assert await exchange.realized_pnl_today() == 0.0


@pytest.mark.asyncio
async def test_state_survives_a_restart_on_the_same_file(connect: Any) -> None:
    """A second exchange on the same SQLite file sees orders, balances, positions and P&L."""
    clock = ManualClock()
    ticks = {("paper", BTC): [(100.0, 102.0), (110.0, 112.0)]}
    first = PaperExchange(
        ReplayPriceFeed(ticks, clock=clock),
        ledger=SQLitePaperLedger(connect()),
        clock=clock,
        id_factory=new_id,
    )
    await first.place_order(_order("buy"))
    await first.place_order(_order("rest", Side.SELL, 0.5, limit_price=500.0))
    await first.place_order(_order("sell", Side.SELL, 0.5))
    await first.cancel_order("paper", "rest")

    second = PaperExchange(
        ReplayPriceFeed(ticks, clock=clock),
        ledger=SQLitePaperLedger(connect()),
        clock=clock,
        id_factory=new_id,
    )
    for client_order_id in ("buy", "rest", "sell"):
        assert await second.get_order("paper", client_order_id) == await first.get_order(
            "paper", client_order_id
        )
    assert await second.balances("paper") == await first.balances("paper")
    assert await second.position("paper", BTC) == 0.5
    assert await second.realized_pnl_today() == await first.realized_pnl_today() == -1.0
    again = await second.place_order(_order("buy", quantity=1.0))
    assert again == await first.get_order("paper", "buy")
    assert await second.position("paper", BTC) == 0.5


@pytest.mark.asyncio
async def test_tables_are_prefixed_and_one_fill_writes_one_row_each(connect: Any) -> None:
    """The ledger keeps its state in paper_* tables: one order, its balances, one fill,
    one position, one day of P&L, the global scope's realized P&L and the symbol's mark
    (an order without scope ids has no per-scope position beyond the global one)."""
    conn = connect()
    exchange = _exchange(ledger=SQLitePaperLedger(conn), fee_rate=0.001)
    await exchange.place_order(_order("c1"))
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        "paper_orders",
        "paper_balances",
        "paper_fills",
        "paper_positions",
        "paper_daily_pnl",
        "paper_scope_positions",
        "paper_scopes",
        "paper_marks",
    }
    counts = [
        conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        for table in (
            "paper_orders",
            "paper_fills",
            "paper_positions",
            "paper_daily_pnl",
            "paper_marks",
            "paper_scope_positions",
        )
    ]
    assert counts == [1, 1, 1, 1, 1, 0]
    stored = dict(conn.execute("SELECT asset, amount FROM paper_balances WHERE venue = 'paper'"))
    assert stored == pytest.approx({**DEFAULT_BALANCES, "USDT": 100_000 - 102 * 1.001, "BTC": 3.0})
    assert conn.execute(
        "SELECT venue, symbol, quantity, avg_price FROM paper_positions"
    ).fetchall() == [("paper", BTC, 1.0, 102.0)]
    assert conn.execute("SELECT day, realized FROM paper_daily_pnl").fetchall() == [
        (utc_day(START), -102 * 0.001)
    ]


@pytest.mark.asyncio
async def test_a_file_with_fills_but_no_positions_is_rebuilt_from_its_fills(
    connect: Any,
) -> None:
    """A file written before positions and daily P&L were tables gets both rebuilt from
    paper_fills, equal to what the fills had produced one by one."""
    clock = ManualClock()
    ticks = {("paper", BTC): [(100.0, 100.1), (110.3, 110.4), (95.7, 95.9)]}
    feed = ReplayPriceFeed(ticks, clock=clock)
    exchange = PaperExchange(
        feed,
        ledger=SQLitePaperLedger(connect()),
        fee_rate=0.001,
        allow_short=True,
        clock=clock,
        id_factory=new_id,
    )
    for client_order_id, side, quantity in (("a", Side.BUY, 0.3), ("b", Side.SELL, 0.7)):
        await feed.quote("paper", BTC)
        await exchange.place_order(_order(client_order_id, side, quantity))
        clock.advance(86_400)
    await feed.quote("paper", BTC)
    await exchange.place_order(_order("c", Side.BUY, 0.1))
    conn = connect()
    tables = ("paper_positions", "paper_daily_pnl")
    before = [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in tables]
    for table in tables:
        conn.execute(f"DROP TABLE {table}")

    SQLitePaperLedger(connect())

    after = [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in tables]
    assert after == before
    assert len(before[1]) == 3 and before[0][0][2] == pytest.approx(-0.3)


@pytest.mark.asyncio
async def test_exchanges_on_one_ledger_share_one_state(connect: Any) -> None:
    """Two exchanges on one file keep no copy: each sees the other's orders, balances,
    position and P&L at once, and an id one placed is not placed again by the other."""
    clock = ManualClock()
    ticks = {("paper", BTC): [(100.0, 102.0)]}
    one, two = (
        PaperExchange(
            ReplayPriceFeed(ticks, clock=clock),
            ledger=SQLitePaperLedger(connect()),
            fee_rate=0.01,
            clock=clock,
            id_factory=new_id,
        )
        for _ in range(2)
    )
    first = await one.place_order(_order("c1"))
    assert await two.place_order(_order("c1", quantity=5.0)) == first
    await two.place_order(_order("c2", Side.SELL, 0.5))
    assert await one.get_order("paper", "c2") == await two.get_order("paper", "c2")
    assert await one.position("paper", BTC) == await two.position("paper", BTC) == 0.5
    assert await one.balances("paper") == await two.balances("paper")
    assert (await one.balances("paper"))["USDT"] == pytest.approx(100_000 - 102 * 1.01 + 50 * 0.99)
    assert await one.realized_pnl_today() == await two.realized_pnl_today()
    assert await one.realized_pnl_today() == pytest.approx(0.5 * (100 - 102) - 1.02 - 0.5)


@pytest.mark.asyncio
async def test_a_failed_write_changes_nothing(connect: Any) -> None:
    """If the transaction fails, the order is neither stored nor visible, and balances stay."""
    conn = connect()
    exchange = _exchange(ledger=SQLitePaperLedger(conn))
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON paper_fills "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(ExchangeError, match=r"could not persist order 'c1'.*disk full"):
        await exchange.place_order(_order("c1"))
    assert await exchange.get_order("paper", "c1") is None
    assert await exchange.balances("paper") == dict(DEFAULT_BALANCES)
    assert conn.execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0] == 0
    assert not conn.in_transaction


async def _found(exchange: PaperExchange, client_order_ids: Sequence[str]) -> list[str]:
    return [c for c in client_order_ids if await exchange.get_order("paper", c) is not None]


@pytest.mark.asyncio
async def test_the_memory_ledger_keeps_every_resting_order_and_the_last_finished_ones() -> None:
    """After 50 fills a memory ledger keeping 5 finished orders holds those 5 and the
    older resting one; a recent id still deduplicates; a cancel makes one more finished."""
    exchange = _exchange(ledger=MemoryPaperLedger(finished_kept=5))
    await exchange.place_order(_order("rest", Side.SELL, 0.5, limit_price=500.0))
    fills = [f"f{i}" for i in range(50)]
    for client_order_id in fills:
        await exchange.place_order(_order(client_order_id, quantity=0.01))
    assert await _found(exchange, ["rest", *fills]) == ["rest", *fills[-5:]]
    again = await exchange.place_order(_order("f49", Side.SELL, 1.0))
    assert (again.side, again.quantity) == (Side.BUY, 0.01)
    assert await exchange.position("paper", BTC) == pytest.approx(0.5)

    cancelled = await exchange.cancel_order("paper", "rest")
    assert cancelled.status is OrderStatus.CANCELLED
    assert await exchange.open_orders("paper", Scope.GLOBAL, None) == []
    assert await _found(exchange, ["rest", *fills]) == ["rest", *fills[-4:]]


@pytest.mark.asyncio
async def test_forgetting_finished_orders_leaves_every_figure_exact() -> None:
    """A memory ledger keeping 2 finished orders ends with the balances, position, P&L and
    scope books of one keeping them all, after buys, sells, resting orders and cancels."""
    bounded = MemoryPaperLedger(finished_kept=2)
    exchanges = [
        _exchange(ledger=ledger, fee_rate=0.001, allow_short=True)
        for ledger in (bounded, MemoryPaperLedger())
    ]
    for exchange in exchanges:
        for i in range(30):
            side = Side.BUY if i % 3 else Side.SELL
            limit = 99.0 if i % 7 == 0 else None
            request = replace(
                _order(f"c{i}", side, 0.1 + i / 100, limit_price=limit), workflow_id="w"
            )
            await exchange.place_order(request)
            if limit is not None and i % 2:
                await exchange.cancel_order("paper", f"c{i}")
    small, full = exchanges
    assert await small.balances("paper") == await full.balances("paper")
    assert await small.position("paper", BTC) == await full.position("paper", BTC)
    assert await small.realized_pnl_today() == await full.realized_pnl_today()
    for scope, target in ((Scope.GLOBAL, None), (Scope.WORKFLOW, "w")):
        assert await bounded.scope_book(scope, target) == await full.ledger.scope_book(
            scope, target
        )
    assert await small.open_orders("paper", Scope.WORKFLOW, "w") == await full.open_orders(
        "paper", Scope.WORKFLOW, "w"
    )
    assert len(await _found(small, [f"c{i}" for i in range(30)])) < 30


def _opening_steps(conn: sqlite3.Connection) -> int:
    """SQLite VM instructions that opening a ledger on ``conn`` runs."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    SQLitePaperLedger(conn)
    conn.set_progress_handler(None, 0)
    return steps


@pytest.mark.asyncio
async def test_the_sqlite_ledger_reads_no_order_at_start_and_finds_old_ones_on_demand(
    connect: Any,
) -> None:
    """Opening the ledger costs as many SQLite steps with 400 orders in the file as with 4
    (nothing is loaded at start); the oldest client order id is then read from the file
    and deduplicated there."""
    writer = _exchange(ledger=SQLitePaperLedger(connect()))
    for i in range(4):
        await writer.place_order(_order(f"c{i}", quantity=0.001))
    few = _opening_steps(connect())
    for i in range(4, 400):
        await writer.place_order(_order(f"c{i}", quantity=0.001))
    assert 0 < _opening_steps(connect()) == few

    reader = _exchange(ledger=SQLitePaperLedger(connect()))
    oldest = await reader.get_order("paper", "c0")
    assert oldest == await writer.get_order("paper", "c0")
    assert oldest is not None and oldest.status is OrderStatus.FILLED
    assert await reader.place_order(_order("c0", Side.SELL, 1.0)) == oldest
    assert await reader.position("paper", BTC) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("held", "avg_price", "signed", "price", "expected"),
    [
        (0.0, 0.0, 0.5, 100.0, (0.5, 100.0, 0.0)),  # opens at the fill price
        (1.0, 100.0, 1.0, 110.0, (2.0, 105.0, 0.0)),  # adds: averages
        (2.0, 105.0, -0.5, 120.0, (1.5, 105.0, 7.5)),  # reduces: realizes, keeps the average
        (1.5, 105.0, -1.5, 90.0, (0.0, 0.0, -22.5)),  # closes: flat
        (1.0, 100.0, -3.0, 120.0, (-2.0, 120.0, 20.0)),  # flips: the rest opens at the price
        (-2.0, 120.0, -2.0, 100.0, (-4.0, 110.0, 0.0)),  # adds to a short
        (-4.0, 110.0, 1.0, 100.0, (-3.0, 110.0, 10.0)),  # covers part of a short at a profit
        (0.3, 100.0, -0.3 + 1e-12, 101.0, (0.0, 0.0, pytest.approx(0.3))),  # dust counts as flat
    ],
)
def test_average_cost(
    held: float, avg_price: float, signed: float, price: float, expected: tuple[Any, ...]
) -> None:
    """The position math: averaging on adds, realizing on reductions and flips, short too."""
    assert average_cost(held, avg_price, signed, price) == expected
