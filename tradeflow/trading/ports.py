"""The trading ports: where orders go and where prices come from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = [
    "Exchange",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "PriceFeed",
    "Quote",
    "Side",
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


class Exchange(Protocol):
    """A trading venue (or a router over several)."""

    async def place_order(self, request: OrderRequest) -> Order:
        """Place an order. Placing the same ``client_order_id`` again returns the
        existing order and trades nothing. Raises ``OrderRejected``."""
        ...

    async def cancel_order(self, venue: str, client_order_id: str) -> Order:
        """Cancel an open order; cancelling a finished order returns it unchanged.
        Raises ``OrderRejected`` for an unknown order."""
        ...

    async def get_order(self, venue: str, client_order_id: str) -> Order | None:
        """The order placed with this client order id, if any."""
        ...

    async def position(self, venue: str, symbol: str) -> float:
        """Net base-asset position (negative when short)."""
        ...

    async def balances(self, venue: str) -> dict[str, float]:
        """Asset -> free balance."""
        ...

    async def realized_pnl_today(self) -> float:
        """Realized P&L (in quote currency) of today's fills (UTC day), all venues."""
        ...


class PriceFeed(Protocol):
    """Where ``price_feed`` nodes and the paper exchange read prices."""

    async def quote(self, venue: str, symbol: str) -> Quote:
        """The next quote for ``symbol`` on ``venue``."""
        ...

    def last_quote(self, venue: str, symbol: str) -> Quote | None:
        """The quote most recently returned by :meth:`quote`, if any."""
        ...
