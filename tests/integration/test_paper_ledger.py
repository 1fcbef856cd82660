"""The paper ledgers: one contract for memory, SQLite and Redis, and crowds of real
processes on one SQLite file or one Redis, whose ledger must equal the sum of its fills.

Run as ``python -m test_paper_ledger BACKEND TARGET PREFIX ID_PREFIX COUNT`` (with
``tests`` and ``tests/integration`` on ``PYTHONPATH``) this module is one process of a
crowd: it prints ``ready``, waits for ``go`` on stdin, places COUNT orders and prints
what each placement returned, as JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS, START, ManualClock
from servers import ServerProcess

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
from tradeflow.domain.errors import OrderRejected
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


# --- the contract, on every ledger -------------------------------------------------


Ledgers = Callable[[], PaperLedger]
"""Opens a ledger on the test's storage: each one sees what the others wrote."""


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
async def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledgers]:
    """Ledgers of one backend on one storage: the memory ledger itself, connections to one
    SQLite file, or clients of the session's redis-server under the test's own prefix."""
    backend = request.param
    if backend == "memory":
        shared = MemoryPaperLedger()
        yield lambda: shared
    elif backend == "sqlite":
        connections: list[sqlite3.Connection] = []

        def open_sqlite() -> PaperLedger:
            connections.append(open_database(tmp_path / "ledger.db"))
            return SQLitePaperLedger(connections[-1])

        yield open_sqlite
        for connection in connections:
            connection.close()
    else:
        url = request.getfixturevalue("redis_server").url
        prefix = request.getfixturevalue("redis_prefix")
        clients: list[aioredis.Redis] = []

        def open_redis() -> PaperLedger:
            clients.append(aioredis.from_url(url))
            return RedisPaperLedger(clients[-1], prefix=prefix)

        yield open_redis
        for client in clients:
            await client.aclose()


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
) -> tuple[Order, Fill | None]:
    """An order on ``book`` (venue, symbol) and its fill, as the paper exchange builds
    them (``rests``: no fill)."""
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
    paths = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "integration")]
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


async def _worker(backend: str, target: str, prefix: str, id_prefix: str, count: int) -> None:
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
        side = Side.SELL if i % 3 == 2 else Side.BUY
        order = await exchange.place_order(
            OrderRequest(f"{id_prefix}{i}", "paper", BTC, side, 0.01 * (1 + i % 4))
        )
        return {"client_order_id": order.client_order_id, "order_id": order.order_id}

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
    backend_, target_, prefix_, id_prefix_, count_ = sys.argv[1:]
    asyncio.run(_worker(backend_, target_, prefix_, id_prefix_, int(count_)))
