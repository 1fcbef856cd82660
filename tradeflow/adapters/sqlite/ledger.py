"""The paper exchange's ledger in SQLite: orders, balances and fills in ``paper_*`` tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.domain.errors import ExchangeError
from tradeflow.domain.trading import Fill, Order, OrderStatus, OrderType, Side

__all__ = ["SQLitePaperLedger"]

_SCHEMA = (
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
)
_ORDER_COLUMNS = (
    "order_id, client_order_id, venue, symbol, side, quantity, order_type, limit_price, "
    "status, filled_quantity, avg_price, created_at"
)
_FILL_COLUMNS = "venue, symbol, client_order_id, side, quantity, price, fee, at"
# The columns are named after the records' fields, so binding reads those attributes.
_order_values = attrgetter(*_ORDER_COLUMNS.split(", "))
_fill_values = attrgetter(*_FILL_COLUMNS.split(", "))


class SQLitePaperLedger:
    """The durable state of a ``PaperExchange`` on ``conn`` (opened with ``isolation_level=None``).

    Creates its tables if missing. Writes are synchronous, which suits a local
    paper file.
    """

    __slots__ = ("_conn", "_write")

    def __init__(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        self._conn = conn
        self._write = WriteTransaction(conn)

    def load(self) -> tuple[list[Order], dict[str, dict[str, float]], list[Fill]]:
        conn = self._conn
        orders = [
            _order_from_row(row)
            for row in conn.execute(f"SELECT {_ORDER_COLUMNS} FROM paper_orders")
        ]
        balances: dict[str, dict[str, float]] = {}
        for venue, asset, amount in conn.execute("SELECT venue, asset, amount FROM paper_balances"):
            balances.setdefault(venue, {})[asset] = amount
        rows = conn.execute(f"SELECT {_FILL_COLUMNS} FROM paper_fills ORDER BY fill_id")
        fills = [
            Fill(venue, symbol, client_order_id, Side(side), quantity, price, fee, at)
            for venue, symbol, client_order_id, side, quantity, price, fee, at in rows
        ]
        return orders, balances, fills

    def persist(
        self, order: Order, balances: Mapping[str, float] | None, fill: Fill | None
    ) -> None:
        conn = self._conn
        try:
            with self._write:
                conn.execute(
                    f"INSERT OR REPLACE INTO paper_orders ({_ORDER_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _order_values(order),
                )
                if balances is not None:
                    conn.executemany(
                        "INSERT OR REPLACE INTO paper_balances (venue, asset, amount) "
                        "VALUES (?, ?, ?)",
                        [(order.venue, asset, amount) for asset, amount in balances.items()],
                    )
                if fill is not None:
                    conn.execute(
                        f"INSERT INTO paper_fills ({_FILL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        _fill_values(fill),
                    )
        except sqlite3.Error as exc:
            raise ExchangeError(
                f"paper exchange could not persist order {order.client_order_id!r}: {exc}"
            ) from exc


def _order_from_row(row: Any) -> Order:
    # Columns are selected in Order's field order (see _ORDER_COLUMNS).
    ids: tuple[str, str, str, str] = row[:4]  # order_id, client_order_id, venue, symbol
    side, qty, kind, limit, status, filled, avg, at = row[4:]
    return Order(
        *ids, Side(side), qty, OrderType(kind), limit, OrderStatus(status), filled, avg, at
    )
