"""Trading records: orders, fills, quotes, sides; symbols as ``BASE/QUOTE``; and the
ledger arithmetic every paper ledger applies to a fill (balances, average-cost position,
realized P&L), written once here so that the ledgers agree to the last bit."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from tradeflow.domain.errors import OrderRejected

__all__ = [
    "BALANCE_TOLERANCE",
    "FLAT",
    "ActionEffect",
    "Fill",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Position",
    "Quote",
    "Side",
    "average_cost",
    "require_balance",
    "settle",
    "signed_quantity",
    "split_symbol",
    "utc_day",
]

BALANCE_TOLERANCE: Final = 1e-9
"""Float slack in balance checks, so that selling exactly what was bought is allowed,
and below which a position counts as flat."""

_SECONDS_PER_DAY: Final = 86_400


class ActionEffect(StrEnum):
    """What an action does at a venue, which decides whether a halt stops it."""

    ORDER = "order"
    """Places an order, which may open or grow exposure: refused while trading is halted."""
    CANCEL = "cancel"
    """Withdraws an order: always allowed, the way out of a position while halted."""
    NONE = "none"
    """Changes nothing at a venue (``log``): always runs."""


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class OrderStatus(StrEnum):
    OPEN = "open"
    """Accepted and resting (a limit order that did not cross)."""
    FILLED = "filled"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Quote:
    """Top of book for one symbol on one venue."""

    venue: str
    symbol: str
    bid: float
    ask: float
    timestamp: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order to place; ``client_order_id`` makes placing it idempotent."""

    client_order_id: str
    venue: str
    symbol: str
    """``BASE/QUOTE``, e.g. ``BTC/USDT``."""
    side: Side
    quantity: float
    order_type: OrderType = OrderType.MARKET
    limit_price: float | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the exchange knows it."""

    order_id: str
    client_order_id: str
    venue: str
    symbol: str
    side: Side
    quantity: float
    order_type: OrderType
    limit_price: float | None
    status: OrderStatus
    filled_quantity: float
    avg_price: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of an order (paper orders fill whole, once)."""

    venue: str
    symbol: str
    client_order_id: str
    side: Side
    quantity: float
    price: float
    fee: float
    """In the quote asset."""
    at: float


def split_symbol(symbol: str) -> tuple[str, str] | None:
    """``(base, quote)`` of a ``BASE/QUOTE`` symbol, or ``None`` if it is not one."""
    base, slash, quote = symbol.partition("/")
    if base and slash and quote and "/" not in quote:
        return base, quote
    return None


@dataclass(frozen=True, slots=True)
class Position:
    """Net position of one ``(venue, symbol)`` (negative when short) and the average
    price it was opened at (0 when flat)."""

    quantity: float = 0.0
    avg_price: float = 0.0


FLAT: Final = Position()


def average_cost(
    quantity: float, avg_price: float, signed_quantity: float, price: float
) -> tuple[float, float, float]:
    """``(quantity, avg_price, realized)`` after a fill of ``signed_quantity`` (negative
    for a sell) at ``price`` on a position of ``quantity`` opened at ``avg_price``.

    Average cost: adding to a position averages its price; reducing it realizes
    ``closed * (price - avg_price)`` (reversed for a short) before fees; a fill past
    flat opens the rest at ``price``. The Redis ledger's Lua repeats these exact
    operations, in this order, so both round alike.
    """
    if quantity == 0:
        return signed_quantity, price, 0.0
    total = quantity + signed_quantity
    if (quantity > 0) == (signed_quantity > 0):
        return total, (quantity * avg_price + signed_quantity * price) / total, 0.0
    closed = min(abs(signed_quantity), abs(quantity))
    realized = closed * (price - avg_price) * (1 if quantity > 0 else -1)
    if abs(total) <= BALANCE_TOLERANCE:
        return 0.0, 0.0, realized
    if (total > 0) == (quantity > 0):
        return total, avg_price, realized
    return total, price, realized


def settle(fill: Fill, quote_held: float, base_held: float) -> tuple[float, float]:
    """The quote and base balances after ``fill``: a buy pays ``quantity * price`` plus
    the fee in the quote asset and receives the base asset; a sell the reverse (the fee
    is always paid)."""
    signed = signed_quantity(fill)
    return quote_held - signed * fill.price - fill.fee, base_held + signed


def signed_quantity(fill: Fill) -> float:
    """The fill's quantity, negative for a sell: what it adds to the position."""
    return fill.quantity if fill.side == Side.BUY else -fill.quantity


def require_balance(
    client_order_id: str, venue: str, asset: str, needed: float, have: float
) -> None:
    """Raise ``OrderRejected`` naming the asset, what is needed and what is held, unless
    ``have`` covers ``needed`` (within :data:`BALANCE_TOLERANCE`)."""
    if needed - have > BALANCE_TOLERANCE:
        raise OrderRejected(
            client_order_id,
            f"insufficient {asset} on venue {venue!r}: needs {needed:.8g}, has {have:.8g}",
        )


def utc_day(timestamp: float) -> int:
    """Days since the epoch of the UTC day ``timestamp`` (seconds) falls on."""
    return int(timestamp // _SECONDS_PER_DAY)
