"""The paper exchange's ledger in SQLite, shared by every process on the file.

Tables (created if missing; the first three are the layout earlier versions wrote,
kept as they were):

- ``paper_orders``: one row per ``(venue, client_order_id)``, the order as placed
  (its status moves to cancelled), with the scope ids its request carried, and an
  index of the resting ones by venue (what cancel-on-halt reads);
- ``paper_balances``: ``(venue, asset) -> amount``, rows from a venue's first fill on;
- ``paper_fills``: every fill, in the order they happened (``fill_id``);
- ``paper_positions``: ``(venue, symbol) -> quantity, avg_price`` (average cost): the
  venues' positions, which are also the ``global`` scope's;
- ``paper_daily_pnl``: ``day`` (UTC days since the epoch) -> realized P&L minus fees;
- ``paper_scope_positions``: ``(scope, venue, symbol) -> quantity, avg_price``, the
  position of every other scope (``scope`` is :func:`~tradeflow.domain.risk.scope_key`,
  e.g. ``bot:b1``) an order was booked under;
- ``paper_scopes``: ``scope -> realized, resting, tokens, at``: the scope's realized P&L
  minus fees since the ledger began, its resting orders, and its ``order_rate`` token
  bucket (``NULL`` until an order was judged against one);
- ``paper_marks``: ``(venue, symbol) -> price``, the book's last fill price.

A file written before ``paper_positions`` and ``paper_daily_pnl`` existed has fills but
no positions: the constructor then rebuilds both from ``paper_fills``, in the
transaction that creates them (so two processes opening the file do it once). One
written before orders kept their scope ids gains the three columns in that transaction
too (``NULL`` in the orders already there). One written before the last three tables
existed gets them filled the same way, once: positions and realized P&L per scope by
replaying ``paper_fills`` joined with the orders' scope ids (an order without them
counts under ``global`` only), marks from the last fill of each book, resting counts
from the resting orders. Buckets start full.

Every ``accept`` and ``cancel`` is one ``BEGIN IMMEDIATE`` transaction: it takes the
file's write lock before reading, so what it decides (the client order id is new, the
shared pre-trade limits pass, the balance suffices, the position it averages) holds
until it commits, whichever other process writes the file. That lock is what the copy
kept in each process lacked (lost balance updates, one id filled by two processes),
and what keeps N processes from overshooting a shared limit N times. ``accept``
inserts the order first (the insert is the deduplication); a denial or refusal after
it rolls the transaction back, so nothing it wrote is ever seen. The reads read
committed state, without a lock (WAL readers never block); :meth:`scope_book` is one
statement, so one snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, Final

from tradeflow.adapters.sqlite.database import WriteTransaction
from tradeflow.domain.errors import ConfigurationError, ExchangeError, describe
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
_SCOPE_SCHEMA: Final = (
    """CREATE TABLE paper_scope_positions (
        scope TEXT NOT NULL,
        venue TEXT NOT NULL,
        symbol TEXT NOT NULL,
        quantity REAL NOT NULL,
        avg_price REAL NOT NULL,
        PRIMARY KEY (scope, venue, symbol)) WITHOUT ROWID""",
    """CREATE TABLE paper_scopes (
        scope TEXT PRIMARY KEY,
        realized REAL NOT NULL DEFAULT 0,
        resting INTEGER NOT NULL DEFAULT 0,
        tokens REAL,
        at REAL) WITHOUT ROWID""",
    """CREATE TABLE paper_marks (
        venue TEXT NOT NULL,
        symbol TEXT NOT NULL,
        price REAL NOT NULL,
        PRIMARY KEY (venue, symbol)) WITHOUT ROWID""",
)
"""The per-scope tables: created (and filled from what the file holds) together, once."""
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
_SELECT_SCOPE_POSITION: Final = (
    "SELECT quantity, avg_price FROM paper_scope_positions "
    "WHERE scope = ? AND venue = ? AND symbol = ?"
)
_SET_SCOPE_POSITION: Final = (
    "INSERT INTO paper_scope_positions (scope, venue, symbol, quantity, avg_price) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, venue, symbol) DO UPDATE "
    "SET quantity = excluded.quantity, avg_price = excluded.avg_price"
)
_SELECT_SCOPE: Final = "SELECT resting, tokens, at FROM paper_scopes WHERE scope = ?"
_ADD_REALIZED: Final = (
    "INSERT INTO paper_scopes (scope, realized) VALUES (?, ?) "
    "ON CONFLICT (scope) DO UPDATE SET realized = realized + excluded.realized"
)
_ADD_RESTING: Final = (
    "INSERT INTO paper_scopes (scope, resting) VALUES (?, 1) "
    "ON CONFLICT (scope) DO UPDATE SET resting = resting + 1"
)
# Never below zero: an order left resting by a version that kept no counts was not counted.
_REMOVE_RESTING: Final = (
    "INSERT INTO paper_scopes (scope) VALUES (?) "
    "ON CONFLICT (scope) DO UPDATE SET resting = max(0, resting - 1)"
)
_SET_BUCKET: Final = (
    "INSERT INTO paper_scopes (scope, tokens, at) VALUES (?, ?, ?) "
    "ON CONFLICT (scope) DO UPDATE SET tokens = excluded.tokens, at = excluded.at"
)
_SET_MARK: Final = (
    "INSERT INTO paper_marks (venue, symbol, price) VALUES (?, ?, ?) "
    "ON CONFLICT (venue, symbol) DO UPDATE SET price = excluded.price"
)
# One statement (one snapshot): the scope's row, then one row per book with its mark.
_BOOKS_OF: Final = (
    "SELECT 1, NULL, NULL, realized, resting, tokens, at FROM paper_scopes WHERE scope = ?1 "
    "UNION ALL SELECT 2, p.venue, p.symbol, p.quantity, p.avg_price, m.price, NULL FROM {} p "
    "LEFT JOIN paper_marks m ON m.venue = p.venue AND m.symbol = p.symbol"
)
_SELECT_BOOK: Final = {
    scope: _BOOKS_OF.format("paper_positions")
    if scope is Scope.GLOBAL
    else _BOOKS_OF.format("paper_scope_positions") + " WHERE p.scope = ?1"
    for scope in Scope
}


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
                if not cursor.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'paper_scopes'"
                ).fetchone():
                    for statement in _SCOPE_SCHEMA:
                        cursor.execute(statement)
                    _rebuild_scopes(cursor)
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
        rules: Sequence[ScopeRule] = (),
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
                taken = self._judge(order, rules) if rules else {}
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
                scopes = scope_keys(order.workflow_id, order.bot_id, order.strategy_id)
                if taken:
                    cursor.executemany(_SET_BUCKET, [(k, *bucket) for k, bucket in taken.items()])
                if order.status is OrderStatus.OPEN:
                    cursor.executemany(_ADD_RESTING, [(scope,) for scope in scopes])
                if fill is not None:
                    self._apply(fill, held, fresh, scopes)
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
                self._cursor.executemany(
                    _REMOVE_RESTING,
                    [
                        (scope,)
                        for scope in scope_keys(order.workflow_id, order.bot_id, order.strategy_id)
                    ],
                )
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

    async def scope_book(self, scope: Scope, target: str | None) -> ScopeBook:
        key = scope_key(scope, target)
        try:
            rows = self._cursor.execute(_SELECT_BOOK[scope], (key,)).fetchall()
        except sqlite3.Error as exc:
            raise _unreadable(exc) from exc
        realized, resting, bucket = 0.0, 0, None
        positions: dict[tuple[str, str], Position] = {}
        marks: dict[tuple[str, str], float] = {}
        for kind, venue, symbol, *values in rows:
            if kind == 1:
                realized, resting, tokens, at = values
                bucket = None if tokens is None else (tokens, at)
                continue
            quantity, avg_price, mark, _ = values
            positions[venue, symbol] = Position(quantity, avg_price)
            if mark is not None:
                marks[venue, symbol] = mark
        return ScopeBook(realized, positions, marks, resting, bucket)

    async def equity(self, scope: Scope, target: str | None) -> float:
        return (await self.scope_book(scope, target)).equity

    def _judge(self, order: Order, rules: Sequence[ScopeRule]) -> Mapping[str, Bucket]:
        """:func:`shared_denial` of ``order`` on the figures stored now, inside ``accept``'s
        transaction: the buckets to store, or ``OrderDenied`` (rolling it back)."""
        cursor = self._cursor
        venue, symbol = order.venue, order.symbol
        positions: dict[str, float] = {}
        open_orders: dict[str, int] = {}
        buckets: dict[str, Bucket] = {}
        for rule in rules:
            if rule.max_position is not None:
                row = (
                    cursor.execute(_SELECT_POSITION, (venue, symbol))
                    if rule.key == "global"
                    else cursor.execute(_SELECT_SCOPE_POSITION, (rule.key, venue, symbol))
                ).fetchone()
                positions[rule.key] = FLAT.quantity if row is None else row[0]
            if rule.max_open_orders is not None or rule.rate is not None:
                row = cursor.execute(_SELECT_SCOPE, (rule.key,)).fetchone()
                if row is not None:
                    open_orders[rule.key] = row[0]
                    if row[1] is not None:
                        buckets[rule.key] = (row[1], row[2])
        return admit(
            order,
            rules,
            positions=positions,
            open_orders=open_orders,
            buckets=buckets,
        )

    def _order(self, venue: str, client_order_id: str) -> Order | None:
        row = self._cursor.execute(_SELECT_ORDER, (venue, client_order_id)).fetchone()
        return None if row is None else _order_from_row(row)

    def _apply(
        self, fill: Fill, held: Mapping[str, float], fresh: bool, scopes: Sequence[str]
    ) -> None:
        """Balances, positions (the venue's and each of ``scopes``'), day and scope P&L,
        the book's mark and the fill row, inside ``accept``'s transaction."""
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
        gains = [("global", realized - fill.fee)]
        for scope in scopes[1:]:  # the first is global, whose position is the venue's
            row = cursor.execute(_SELECT_SCOPE_POSITION, (scope, venue, symbol)).fetchone()
            held_quantity, avg_price = (FLAT.quantity, FLAT.avg_price) if row is None else row
            quantity, avg_price, realized = average_cost(
                held_quantity, avg_price, signed_quantity(fill), fill.price
            )
            cursor.execute(_SET_SCOPE_POSITION, (scope, venue, symbol, quantity, avg_price))
            gains.append((scope, realized - fill.fee))
        cursor.executemany(_ADD_REALIZED, gains)
        cursor.execute(_SET_MARK, (venue, symbol, fill.price))


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


def _rebuild_scopes(cursor: sqlite3.Cursor) -> None:
    """The per-scope tables from what the file holds (see the module docstring): each
    fill replayed, in order, into the books of its order's scopes, as ``accept`` would
    have applied it."""
    positions: dict[tuple[str, str, str], tuple[float, float]] = {}
    realized: dict[str, float] = {}
    marks: dict[tuple[str, str], float] = {}
    fills = cursor.execute(
        "SELECT f.venue, f.symbol, f.side, f.quantity, f.price, f.fee, "
        "o.workflow_id, o.bot_id, o.strategy_id FROM paper_fills f "
        "LEFT JOIN paper_orders o ON o.venue = f.venue AND o.client_order_id = f.client_order_id "
        "ORDER BY f.fill_id"
    ).fetchall()
    for venue, symbol, side, quantity, price, fee, *ids in fills:
        signed = quantity if side == Side.BUY else -quantity
        for scope in scope_keys(*ids):
            held, avg_price = positions.get((scope, venue, symbol), (FLAT.quantity, FLAT.avg_price))
            held, avg_price, gain = average_cost(held, avg_price, signed, price)
            positions[scope, venue, symbol] = (held, avg_price)
            realized[scope] = realized.get(scope, 0.0) + (gain - fee)
        marks[venue, symbol] = price
    cursor.executemany(
        _SET_SCOPE_POSITION,
        [(*key, *book) for key, book in positions.items() if key[0] != "global"],
    )
    cursor.executemany(_ADD_REALIZED, list(realized.items()))
    cursor.executemany(_SET_MARK, [(*book, price) for book, price in marks.items()])
    resting = cursor.execute(
        "SELECT workflow_id, bot_id, strategy_id FROM paper_orders WHERE status = 'open'"
    ).fetchall()
    cursor.executemany(_ADD_RESTING, [(scope,) for ids in resting for scope in scope_keys(*ids)])


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
