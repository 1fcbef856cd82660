"""The paper exchange's ledger in SQLite, shared by every process on the file.

Tables (created if missing; the first three are the layout earlier versions wrote,
kept as they were):

- ``paper_orders``: one row per ``(venue, client_order_id)``, the order as placed
  (its status moves to cancelled), with the scope ids its request carried, and an
  index of the resting ones by venue (what cancel-on-halt reads);
- ``paper_balances``: ``(venue, asset) -> amount``, rows from a venue's first fill on;
- ``paper_fills``: every fill, in the order they happened (``fill_id``);
- ``paper_positions``: ``(venue, symbol) -> quantity, avg_price`` (average cost);
- ``paper_daily_pnl``: ``day`` (UTC days since the epoch) -> realized P&L minus fees.

A file written before the last two tables existed has fills but no positions: the
constructor then rebuilds both from ``paper_fills``, in the transaction that creates
them (so two processes opening the file do it once). One written before orders kept
their scope ids gains the three columns in that transaction too (``NULL`` in the
orders already there).

Every ``accept`` and ``cancel`` is one ``BEGIN IMMEDIATE`` transaction: it takes the
file's write lock before reading, so what it decides (the client order id is new, the
balance suffices, the position it averages) holds until it commits, whichever other
process writes the file. That lock is what the copy kept in each process lacked
(lost balance updates, one id filled by two processes). The reads read committed
state, without a lock (WAL readers never block).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from operator import attrgetter
from typing import Any, Final

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.domain.errors import ConfigurationError, ExchangeError, describe
from tradeflow.domain.records import Scope
from tradeflow.domain.trading import (
    FLAT,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Side,
    average_cost,
    require_balance,
    settle,
    signed_quantity,
    utc_day,
)

__all__ = ["SQLitePaperLedger"]

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS paper_orders (
        venue TEXT NOT NULL,
        client_order_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity REAL NOT NULL,
        order_type TEXT NOT NULL,
        limit_price REAL,
        status TEXT NOT NULL,
        filled_quantity REAL NOT NULL,
        avg_price REAL,
        created_at REAL NOT NULL,
        workflow_id TEXT,
        bot_id TEXT,
        strategy_id TEXT,
        PRIMARY KEY (venue, client_order_id))""",
    """CREATE TABLE IF NOT EXISTS paper_balances (
        venue TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount REAL NOT NULL,
        PRIMARY KEY (venue, asset))""",
    """CREATE TABLE IF NOT EXISTS paper_fills (
        fill_id INTEGER PRIMARY KEY,
        venue TEXT NOT NULL,
        symbol TEXT NOT NULL,
        client_order_id TEXT NOT NULL,
        side TEXT NOT NULL,
        quantity REAL NOT NULL,
        price REAL NOT NULL,
        fee REAL NOT NULL,
        at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_positions (
        venue TEXT NOT NULL,
        symbol TEXT NOT NULL,
        quantity REAL NOT NULL,
        avg_price REAL NOT NULL,
        PRIMARY KEY (venue, symbol)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS paper_daily_pnl (
        day INTEGER PRIMARY KEY,
        realized REAL NOT NULL)""",
    # The resting orders only (a partial index): listing them reads no finished order.
    """CREATE INDEX IF NOT EXISTS paper_orders_open
        ON paper_orders (venue) WHERE status = 'open'""",
)
_SCOPE_COLUMNS: Final = ("workflow_id", "bot_id", "strategy_id")
"""Added to ``paper_orders`` after its first layout: a file without them gains them."""
_ORDER_COLUMNS: Final = (
    "order_id, client_order_id, venue, symbol, side, quantity, order_type, limit_price, "
    "status, filled_quantity, avg_price, created_at, " + ", ".join(_SCOPE_COLUMNS)
)
_FILL_COLUMNS: Final = "venue, symbol, client_order_id, side, quantity, price, fee, at"
# The columns are named after the records' fields, so binding reads those attributes.
_order_values = attrgetter(*_ORDER_COLUMNS.split(", "))
_fill_values = attrgetter(*_FILL_COLUMNS.split(", "))

_INSERT_ORDER: Final = (
    f"INSERT INTO paper_orders ({_ORDER_COLUMNS}) "
    f"VALUES ({', '.join(['?'] * len(_ORDER_COLUMNS.split(', ')))}) "
    "ON CONFLICT (venue, client_order_id) DO NOTHING"
)
_SELECT_ORDER: Final = (
    f"SELECT {_ORDER_COLUMNS} FROM paper_orders WHERE venue = ? AND client_order_id = ?"
)
# ``status = 'open'`` as a literal, so that the partial index applies; rowid: placement order.
_SELECT_OPEN: Final = {
    scope: f"SELECT {_ORDER_COLUMNS} FROM paper_orders WHERE venue = ? AND status = 'open'"
    + ("" if scope is Scope.GLOBAL else f" AND {scope.value}_id = ?")
    + " ORDER BY rowid"
    for scope in Scope
}
_CANCEL_ORDER: Final = (
    "UPDATE paper_orders SET status = 'cancelled' WHERE venue = ? AND client_order_id = ?"
)
_SELECT_BALANCES: Final = "SELECT asset, amount FROM paper_balances WHERE venue = ?"
_SET_BALANCE: Final = (
    "INSERT INTO paper_balances (venue, asset, amount) VALUES (?, ?, ?) "
    "ON CONFLICT (venue, asset) DO UPDATE SET amount = excluded.amount"
)
_SELECT_POSITION: Final = (
    "SELECT quantity, avg_price FROM paper_positions WHERE venue = ? AND symbol = ?"
)
_SET_POSITION: Final = (
    "INSERT INTO paper_positions (venue, symbol, quantity, avg_price) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (venue, symbol) DO UPDATE "
    "SET quantity = excluded.quantity, avg_price = excluded.avg_price"
)
_ADD_PNL: Final = (
    "INSERT INTO paper_daily_pnl (day, realized) VALUES (?, ?) "
    "ON CONFLICT (day) DO UPDATE SET realized = realized + excluded.realized"
)
_SELECT_PNL: Final = "SELECT realized FROM paper_daily_pnl WHERE day = ?"
_INSERT_FILL: Final = f"INSERT INTO paper_fills ({_FILL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class SQLitePaperLedger:
    """The :class:`~tradeflow.adapters.memory.paper.PaperLedger` on ``conn`` (opened
    with ``isolation_level=None``, as :func:`~tradeflow.adapters.sqlite.database.open_database`
    does; the state store may share it).

    Creates its tables if missing, and rebuilds positions and daily P&L from the
    fills of a file that predates them (raises ``ConfigurationError`` if it cannot).
    Calls are synchronous underneath, like the other embedded adapters (see
    :mod:`tradeflow.adapters.sqlite.database`); a failure of the file raises
    ``ExchangeError``.
    """

    __slots__ = ("_conn", "_cursor", "_write")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._write = WriteTransaction(conn)
        self._cursor = conn.cursor()
        cursor = self._cursor
        try:
            with self._write:
                for statement in _SCHEMA:
                    cursor.execute(statement)
                columns = {row[1] for row in cursor.execute("PRAGMA table_info(paper_orders)")}
                for column in _SCOPE_COLUMNS:
                    if column not in columns:
                        cursor.execute(f"ALTER TABLE paper_orders ADD COLUMN {column} TEXT")
                ((positions, fills),) = cursor.execute(
                    "SELECT EXISTS (SELECT 1 FROM paper_positions), "
                    "EXISTS (SELECT 1 FROM paper_fills)"
                ).fetchall()
                if fills and not positions:
                    _rebuild(cursor)
        except sqlite3.Error as exc:
            raise ConfigurationError(
                f"paper ledger in the state file: cannot set up its tables: {describe(exc)}"
            ) from exc

    async def accept(
        self,
        order: Order,
        fill: Fill | None,
        *,
        opening: Mapping[str, float],
        require: tuple[str, float] | None,
    ) -> Order:
        venue = order.venue
        cursor = self._cursor
        try:
            with self._write:
                cursor.execute(_INSERT_ORDER, _order_values(order))
                if cursor.rowcount == 0:  # the client order id is taken: that order stands
                    stored = self._order(venue, order.client_order_id)
                    assert stored is not None  # the write lock is held since the insert
                    return stored
                held: Mapping[str, float] = dict(
                    cursor.execute(_SELECT_BALANCES, (venue,)).fetchall()
                )
                fresh = not held
                if fresh:
                    held = opening
                if require is not None:
                    asset, needed = require
                    require_balance(
                        order.client_order_id, venue, asset, needed, held.get(asset, 0.0)
                    )
                if fill is None:
                    return order
                self._apply(fill, held, fresh)
        except sqlite3.Error as exc:
            raise ExchangeError(
                f"paper exchange could not persist order {order.client_order_id!r}: {exc}"
            ) from exc
        return order

    async def cancel(self, venue: str, client_order_id: str) -> Order | None:
        try:
            with self._write:
                order = self._order(venue, client_order_id)
                if order is None or order.status is not OrderStatus.OPEN:
                    return order
                self._cursor.execute(_CANCEL_ORDER, (venue, client_order_id))
        except sqlite3.Error as exc:
            raise ExchangeError(
                f"paper exchange could not cancel order {client_order_id!r}: {exc}"
            ) from exc
        return replace(order, status=OrderStatus.CANCELLED)

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        try:
            return self._order(venue, client_order_id)
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        query = _SELECT_OPEN[scope]
        try:
            rows = self._cursor.execute(
                query, (venue,) if scope is Scope.GLOBAL else (venue, target)
            ).fetchall()
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc
        return [_order_from_row(row) for row in rows]

    async def balances(self, venue: str) -> dict[str, float] | None:
        try:
            rows = self._cursor.execute(_SELECT_BALANCES, (venue,)).fetchall()
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc
        return dict(rows) if rows else None

    async def position(self, venue: str, symbol: str) -> Position:
        try:
            row = self._cursor.execute(_SELECT_POSITION, (venue, symbol)).fetchone()
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc
        return FLAT if row is None else Position(*row)

    async def realized_pnl(self, day: int) -> float:
        try:
            row = self._cursor.execute(_SELECT_PNL, (day,)).fetchone()
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc
        return 0.0 if row is None else float(row[0])

    def _order(self, venue: str, client_order_id: str) -> Order | None:
        row = self._cursor.execute(_SELECT_ORDER, (venue, client_order_id)).fetchone()
        return None if row is None else _order_from_row(row)

    def _apply(self, fill: Fill, held: Mapping[str, float], fresh: bool) -> None:
        """Balances, position, day P&L and the fill row, inside ``accept``'s transaction."""
        cursor = self._cursor
        venue, symbol = fill.venue, fill.symbol
        base, _, quote = symbol.partition("/")
        quote_after, base_after = settle(fill, held.get(quote, 0.0), held.get(base, 0.0))
        # A venue's first fill stores its opening balances too; later ones the two it moves.
        rows = [(venue, asset, amount) for asset, amount in held.items()] if fresh else []
        rows += ((venue, quote, quote_after), (venue, base, base_after))
        cursor.executemany(_SET_BALANCE, rows)
        row = cursor.execute(_SELECT_POSITION, (venue, symbol)).fetchone()
        held_quantity, avg_price = FLAT.quantity, FLAT.avg_price
        if row is not None:
            held_quantity, avg_price = row
        quantity, avg_price, realized = average_cost(
            held_quantity, avg_price, signed_quantity(fill), fill.price
        )
        cursor.execute(_SET_POSITION, (venue, symbol, quantity, avg_price))
        cursor.execute(_ADD_PNL, (utc_day(fill.at), realized - fill.fee))
        cursor.execute(_INSERT_FILL, _fill_values(fill))


def _rebuild(cursor: sqlite3.Cursor) -> None:
    """Positions and daily P&L from every fill, replayed in order (as ``accept`` would
    have applied them, to the same bits)."""
    positions: dict[tuple[str, str], tuple[float, float]] = {}
    pnl: dict[int, float] = {}
    fills = cursor.execute(
        "SELECT venue, symbol, side, quantity, price, fee, at FROM paper_fills ORDER BY fill_id"
    ).fetchall()
    for venue, symbol, side, quantity, price, fee, at in fills:
        held, avg_price = positions.get((venue, symbol), (FLAT.quantity, FLAT.avg_price))
        signed = quantity if side == Side.BUY else -quantity
        held, avg_price, realized = average_cost(held, avg_price, signed, price)
        positions[venue, symbol] = (held, avg_price)
        day = utc_day(at)
        pnl[day] = pnl.get(day, 0.0) + (realized - fee)
    cursor.executemany(_SET_POSITION, [(*key, *book) for key, book in positions.items()])
    cursor.executemany(_ADD_PNL, list(pnl.items()))


def _unreadable(exc: sqlite3.Error) -> ExchangeError:
    return ExchangeError(f"paper exchange could not read its ledger: {describe(exc)}")


def _order_from_row(row: Any) -> Order:
    # Columns are selected in Order's field order (see _ORDER_COLUMNS).
    ids: tuple[str, str, str, str] = row[:4]  # order_id, client_order_id, venue, symbol
    side, qty, kind, limit, status, filled, avg, at = row[4:12]
    return Order(
        *ids,
        Side(side),
        qty,
        OrderType(kind),
        limit,
        OrderStatus(status),
        filled,
        avg,
        at,
        *row[12:],  # the scope ids
    )
