"""Trading records: orders, fills, quotes, sides; symbols as ``BASE/QUOTE``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Fill",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Quote",
    "Side",
    "split_symbol",
]


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
