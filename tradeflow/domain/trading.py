"""Trading records: orders, fills, quotes, sides; symbols as ``BASE/QUOTE``; and the
ledger arithmetic every paper ledger applies to a fill (balances, average-cost position,
realized P&L), written once here so that the ledgers agree to the last bit."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from tradeflow.domain.errors import OrderRejected

if TYPE_CHECKING:
    from tradeflow.domain.risk import ScopeRule

__all__ = [
    "BALANCE_TOLERANCE",
    "FLAT",
    "ActionEffect",
    "Fill",
    "Order",
    "OrderEffect",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Position",
    "Quote",
    "Side",
    "TradingState",
    "average_cost",
    "order_effect",
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


class OrderEffect(StrEnum):
    """What one action does to exposure, the thing a trading state admits or refuses."""

    OPENS = "opens"
    """Opens a position from flat, or flips one through zero (an order whose effect was
    not worked out against the position counts as this, the strictest)."""
    GROWS = "grows"
    """Adds to a position on its own side."""
    REDUCES = "reduces"
    """Shrinks a position without crossing zero."""
    CANCELS = "cancels"
    """Withdraws a resting order."""
    NONE = "none"
    """Changes nothing at a venue (``log``)."""


_RANKS: Final = {"active": 0, "reduce_only": 1, "cancel_only": 2, "halted": 3}


class TradingState(StrEnum):
    """How much trading a scope admits; of the states covering an action, the most
    restrictive (highest :attr:`rank`) decides."""

    ACTIVE = "active"
    """Everything."""
    REDUCE_ONLY = "reduce_only"
    """Only orders that shrink a position, cancels and effect-free actions."""
    CANCEL_ONLY = "cancel_only"
    """Only cancels and effect-free actions: a controlled wind-down (also what an executor
    assumes of every scope while it cannot confirm the emergency state)."""
    HALTED = "halted"
    """An emergency stop: admits what ``CANCEL_ONLY`` admits (cancels are the way out),
    and is what an operator's halt and a risk breach set."""

    @property
    def rank(self) -> int:
        """0 for ``ACTIVE`` up to 3 for ``HALTED``: the higher, the more restrictive."""
        return _RANKS[self.value]

    def allows(self, effect: OrderEffect) -> bool:
        """Whether an action with ``effect`` may start in this state."""
        if effect is OrderEffect.CANCELS or effect is OrderEffect.NONE:
            return True
        if self is TradingState.ACTIVE:
            return True
        return self is TradingState.REDUCE_ONLY and effect is OrderEffect.REDUCES


def order_effect(side: Side | str, quantity: float, position: float) -> OrderEffect:
    """The effect of an order of ``quantity`` on ``side`` against a signed ``position``:
    a position within :data:`BALANCE_TOLERANCE` of zero is flat, and an opposite order
    larger than the position flips it (``OPENS``)."""
    if abs(position) <= BALANCE_TOLERANCE:
        return OrderEffect.OPENS
    buying = side == Side.BUY
    if buying == (position > 0):
        return OrderEffect.GROWS
    if quantity <= abs(position) + BALANCE_TOLERANCE:
        return OrderEffect.REDUCES
    return OrderEffect.OPENS


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
    workflow_id: str | None = None
    """The scope ids of the execution placing it: what a halt's cancel-on-halt finds."""
    bot_id: str | None = None
    strategy_id: str | None = None
    rules: tuple[ScopeRule, ...] = ()
    """The shared pre-trade limits of its scopes (:func:`tradeflow.domain.risk.shared_denial`):
    the ledger denies the order (``OrderDenied``) in the same atomic step that would store
    it. The engine fills them in from the configured limits."""


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
    workflow_id: str | None = None
    """The scope ids its request carried."""
    bot_id: str | None = None
    strategy_id: str | None = None


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
