"""Pre-trade checks, loss triggers and the dead-man's switch: the rules, free of I/O.

Limits are :class:`~tradeflow.domain.records.RiskLimit` records kept per scope by the
emergency control and pushed to executors with the trading state. An order is judged
against every limit of every scope it belongs to (global, its strategy, bot and
workflow); the first that fails denies it (:class:`Denial`).

- **Local checks** (:func:`local_denial`), on the order alone and the last price, run
  in the executor: ``max_order_notional`` (quantity times price, above) and
  ``price_collar_bps`` (a limit price's distance from the last mid, in basis points).
- **Shared checks** (:func:`shared_denial`) need what every replica writes: a scope's
  position (``max_position``, absolute, base units, per venue and symbol), its resting
  orders (``max_open_orders``) and its order rate (``order_rate``: ``threshold`` orders
  per ``window`` seconds, a token bucket). The engine hands them to the ledger as
  :class:`ScopeRule` records and the ledger decides in the same atomic step that would
  store the order (the Redis ledger's script mirrors this module), so N replicas
  cannot overshoot a limit N times. An order that shrinks a position always passes
  ``max_position``; a denied order consumes no token.
- **Triggers** (:func:`evaluate_trigger`), evaluated periodically: ``daily_loss`` (P&L
  since the trading day began, in a configured time zone and reset time),
  ``max_drawdown`` (equity below its durable peak) and ``heartbeat`` (the dead-man's
  switch: no beat within ``threshold`` seconds). A breach counted ``consecutive`` times
  in a row moves the scope to the limit's ``state``, and keeps it there while the
  breach lasts (level-triggered: a halt lifted or lost meanwhile is set again) until
  the breach clears (a new beat, a recovered P&L, a new trading day).

Equity (realized P&L minus fees plus positions marked to the last fill price) comes from
the exchange ledger; see :class:`~tradeflow.ports.PnlSource`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tradeflow.domain.errors import InvalidRequest, OrderDenied
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope, limit_key
from tradeflow.domain.trading import (
    BALANCE_TOLERANCE,
    Order,
    OrderStatus,
    Position,
    Side,
    TradingState,
)

__all__ = [
    "HEARTBEAT_TTL_MAX",
    "LOCAL_CHECKS",
    "NO_LIMITS",
    "NO_OPTIONS",
    "PRE_TRADE_TYPES",
    "RULE_DIRECTIONS",
    "SHARED_CHECKS",
    "TIMEZONE_MAX_LENGTH",
    "TRIGGER_TYPES",
    "Bucket",
    "Denial",
    "LimitOptions",
    "PreTradeLimits",
    "ScopeBook",
    "ScopeRule",
    "TriggerOutcome",
    "TriggerProgress",
    "admit",
    "checked_limit_options",
    "covering",
    "evaluate_trigger",
    "is_trigger",
    "local_denial",
    "marked_equity",
    "notional_price",
    "pre_trade_limits",
    "rule_denial",
    "scope_key",
    "scope_keys",
    "shared_denial",
    "stricter",
    "strictest",
    "take_token",
    "trading_day",
]

LOCAL_CHECKS: Final = ("max_order_notional", "price_collar_bps")
"""Limit types an executor checks on the order alone (no round trip)."""
SHARED_CHECKS: Final = ("max_position", "max_open_orders", "order_rate")
"""Limit types the ledger checks atomically with the order's write."""
PRE_TRADE_TYPES: Final = LOCAL_CHECKS + SHARED_CHECKS
TRIGGER_TYPES: Final = ("daily_loss", "max_drawdown", "heartbeat")
"""Limit types the trigger evaluator acts on when they name a ``state`` (``heartbeat``
always does: ``CANCEL_ONLY`` unless told otherwise)."""
HEARTBEAT_TTL_MAX: Final = 86_400.0
"""Longest heartbeat time to live (seconds)."""
CONSECUTIVE_MAX: Final = 1000

RULE_DIRECTIONS: Final[Mapping[str, LimitDirection]] = MappingProxyType(
    {
        "daily_loss": LimitDirection.BELOW,
        "max_drawdown": LimitDirection.BELOW,
        "max_position": LimitDirection.ABS_ABOVE,
        "max_order_notional": LimitDirection.ABOVE,
        "price_collar_bps": LimitDirection.ABOVE,
        "max_open_orders": LimitDirection.ABOVE,
        "order_rate": LimitDirection.ABOVE,
        "heartbeat": LimitDirection.ABOVE,
    }
)
"""The direction of the pre-trade and trigger types: part of their rule (a limit of one
of them with another direction is refused, or, stored by an earlier version, not
enforced before orders)."""
TIMEZONE_MAX_LENGTH: Final = 64
"""Characters of a ``daily_loss`` time zone name."""
_RESET_TIME: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True, slots=True)
class LimitOptions:
    """The options of a limit beyond type, threshold and scope (the fields of the same
    names of :class:`~tradeflow.domain.records.RiskLimit` say what each means)."""

    window: float | None = None
    state: TradingState | None = None
    consecutive: int = 1
    timezone: str = "UTC"
    reset_time: str = "00:00"
    lift_on_reset: bool = False
    cancel_orders: bool = False

    @classmethod
    def of(cls, limit: RiskLimit) -> LimitOptions:
        """The options ``limit`` carries."""
        return cls(**{name: getattr(limit, name) for name in _OPTION_FIELDS})

    def fields(self) -> dict[str, Any]:
        """The options by name: what ``RiskLimit(..., **options.fields())`` takes."""
        return {name: getattr(self, name) for name in _OPTION_FIELDS}


NO_OPTIONS: Final = LimitOptions()
_OPTION_FIELDS: Final = tuple(f.name for f in fields(LimitOptions))


def scope_key(scope: Scope, target: str | None) -> str:
    """How ledgers key what they count per scope: ``global`` or ``<scope>:<target>``."""
    return "global" if scope is Scope.GLOBAL else f"{scope.value}:{target}"


def scope_keys(
    workflow_id: str | None, bot_id: str | None, strategy_id: str | None
) -> tuple[str, ...]:
    """The :func:`scope_key` of every scope an order with these ids belongs to, broadest
    first (``global`` always): what a ledger books the order under."""
    return tuple(
        scope_key(scope, target) for scope, target in _scopes(workflow_id, bot_id, strategy_id)
    )


def _scopes(
    workflow_id: str | None, bot_id: str | None, strategy_id: str | None
) -> tuple[tuple[Scope, str | None], ...]:
    """The scopes an order with these ids belongs to, broadest first."""
    found: list[tuple[Scope, str | None]] = [(Scope.GLOBAL, None)]
    if strategy_id is not None:
        found.append((Scope.STRATEGY, strategy_id))
    if bot_id is not None:
        found.append((Scope.BOT, bot_id))
    if workflow_id is not None:
        found.append((Scope.WORKFLOW, workflow_id))
    return tuple(found)


def covering(
    limits: Mapping[str, RiskLimit],
    limit_type: str,
    workflow_id: str | None = None,
    bot_id: str | None = None,
    strategy_id: str | None = None,
) -> list[RiskLimit]:
    """The limits on ``limit_type`` of every scope these ids belong to, broadest first."""
    found = []
    for scope, target in _scopes(workflow_id, bot_id, strategy_id):
        limit = limits.get(limit_key(limit_type, scope, target))
        if limit is not None:
            found.append(limit)
    return found


def stricter(direction: LimitDirection, a: float, b: float) -> float:
    """The stricter of two thresholds in ``direction`` (the lower cap, the higher floor)."""
    return max(a, b) if direction is LimitDirection.BELOW else min(a, b)


def strictest(limits: Iterable[RiskLimit]) -> RiskLimit | None:
    """Of limits on one type, the one with the strictest threshold (the broadest on a tie)."""
    found: RiskLimit | None = None
    for limit in limits:
        if found is None or (
            stricter(limit.direction, limit.threshold, found.threshold) != found.threshold
        ):
            found = limit
    return found


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a pre-trade check denied an order."""

    check: str
    """The limit type that denied it."""
    scope: Scope
    target: str | None
    value: float
    """What was judged: the notional, the collar distance, the position after the order,
    the resting orders with it, the tokens left."""
    threshold: float
    reason: str

    def error(self, client_order_id: str) -> OrderDenied:
        """The error that carries this denial."""
        return OrderDenied(
            client_order_id,
            check=self.check,
            scope=self.scope.value,
            target=self.target,
            value=self.value,
            threshold=self.threshold,
            reason=self.reason,
        )

    @classmethod
    def of(cls, error: OrderDenied) -> Denial:
        return cls(
            error.check,
            Scope(error.scope),
            error.target,
            error.value,
            error.threshold,
            error.reason,
        )


def _where(scope: Scope, target: str | None) -> str:
    return "global" if scope is Scope.GLOBAL else f"{scope.value} {target!r}"


@dataclass(frozen=True, slots=True)
class ScopeRule:
    """The shared limits of one scope, as the ledger enforces them for one order."""

    scope: Scope
    target: str | None
    max_position: float | None = None
    max_open_orders: int | None = None
    rate: float | None = None
    """Orders per ``window`` (the bucket's size)."""
    window: float | None = None

    @property
    def key(self) -> str:
        return scope_key(self.scope, self.target)


@dataclass(frozen=True, slots=True)
class PreTradeLimits:
    """What an order of given scope ids is checked against."""

    local: tuple[RiskLimit, ...] = ()
    """Its ``max_order_notional`` and ``price_collar_bps`` limits, broadest scope first."""
    rules: tuple[ScopeRule, ...] = ()
    """Its scopes' shared limits, for the ledger (only scopes that have some)."""

    def __bool__(self) -> bool:
        return bool(self.local or self.rules)


NO_LIMITS: Final = PreTradeLimits()


def pre_trade_limits(
    limits: Mapping[str, RiskLimit],
    workflow_id: str | None,
    bot_id: str | None,
    strategy_id: str | None,
) -> PreTradeLimits:
    """The pre-trade limits covering an order of these scope ids."""
    if not limits:
        return NO_LIMITS
    local: list[RiskLimit] = []
    rules: list[ScopeRule] = []
    for scope, target in _scopes(workflow_id, bot_id, strategy_id):
        for limit_type in LOCAL_CHECKS:
            limit = _enforceable(limits.get(limit_key(limit_type, scope, target)))
            if limit is not None:
                local.append(limit)
        position = _enforceable(limits.get(limit_key("max_position", scope, target)))
        open_orders = _enforceable(limits.get(limit_key("max_open_orders", scope, target)))
        rate = _enforceable(limits.get(limit_key("order_rate", scope, target)))
        if position is None and open_orders is None and rate is None:
            continue
        rules.append(
            ScopeRule(
                scope,
                target,
                None if position is None else position.threshold,
                None if open_orders is None else int(open_orders.threshold),
                None if rate is None else rate.threshold,
                None if rate is None else rate.window,
            )
        )
    if not local and not rules:
        return NO_LIMITS
    return PreTradeLimits(tuple(local), tuple(rules))


def notional_price(limit_price: float | None, touch: float | None, *, sell: bool) -> float | None:
    """The highest price an order can trade at (what its notional is valued at), or
    ``None`` when that needs the ``touch`` and there is none: see :func:`local_denial`."""
    if limit_price is None:
        return touch
    if not sell:
        return limit_price
    return None if touch is None else max(limit_price, touch)


def _enforceable(limit: RiskLimit | None) -> RiskLimit | None:
    """``limit`` if it fits its type's rules: a limit of a pre-trade type's name stored
    by an earlier version (which took any type with a direction: an ``order_rate`` with no
    window, a collar of 0) is not enforced before orders (``explain`` still lists it)."""
    if limit is None or limit.direction is not RULE_DIRECTIONS[limit.limit_type]:
        return None
    try:
        checked_limit_options(limit)
    except InvalidRequest:
        return None
    return limit


def local_denial(
    local: Sequence[RiskLimit],
    *,
    quantity: float,
    limit_price: float | None,
    touch: float | None,
    mid: float | None,
    sell: bool = False,
) -> Denial | None:
    """The first local check ``local`` denies, or ``None``.

    The notional is ``quantity`` times the highest price the order can trade at: a market
    order's ``touch`` (the ask for a buy, the bid for a ``sell``); a buy limit's limit
    price (it fills at the ask when that is lower); a sell limit's limit price or the
    bid, whichever is higher (a sell limited below the bid fills at the bid). The collar
    applies to limit orders: ``|limit_price - mid| / mid`` in basis points. A check that
    needs a price nobody knows denies (fail closed)."""
    for limit in local:
        if limit.limit_type == "max_order_notional":
            price = notional_price(limit_price, touch, sell=sell)
            if price is None:
                return Denial(
                    limit.limit_type,
                    limit.scope,
                    limit.target,
                    math.nan,
                    limit.threshold,
                    f"no price to value the order against max_order_notional of"
                    f" {_where(limit.scope, limit.target)}",
                )
            notional = quantity * price
            if notional > limit.threshold:
                return Denial(
                    limit.limit_type,
                    limit.scope,
                    limit.target,
                    notional,
                    limit.threshold,
                    f"notional {notional:.8g} above max_order_notional {limit.threshold:.8g}"
                    f" of {_where(limit.scope, limit.target)}",
                )
        elif limit.limit_type == "price_collar_bps" and limit_price is not None:
            if mid is None or mid <= 0:
                return Denial(
                    limit.limit_type,
                    limit.scope,
                    limit.target,
                    math.nan,
                    limit.threshold,
                    f"no last price to check the price collar of"
                    f" {_where(limit.scope, limit.target)} against",
                )
            distance = abs(limit_price - mid) / mid * 10_000
            if distance > limit.threshold:
                return Denial(
                    limit.limit_type,
                    limit.scope,
                    limit.target,
                    distance,
                    limit.threshold,
                    f"limit price {limit_price:.8g} is {distance:.1f} bps from the last price"
                    f" {mid:.8g}, above price_collar_bps {limit.threshold:.8g} of"
                    f" {_where(limit.scope, limit.target)}",
                )
    return None


def marked_equity(realized: float, books: Iterable[tuple[float, float, float | None]]) -> float:
    """A scope's equity: ``realized`` (its realized P&L minus fees) plus each of its
    ``(quantity, avg_price, mark)`` books marked to ``mark``, the last fill price (a book
    with no mark counts at its average price). Summed exactly (``math.fsum``), so the
    ledgers agree to the bit whatever order they read their books in."""
    return math.fsum(
        [realized]
        + [quantity * (mark - avg_price) for quantity, avg_price, mark in books if mark is not None]
    )


Bucket = tuple[float, float]
"""A token bucket as the ledger stores it: ``(tokens, at)``."""


@dataclass(frozen=True, slots=True)
class ScopeBook:
    """What an exchange ledger keeps for one scope (:func:`scope_key`): every order is
    booked under each scope it belongs to, limits or not, so a limit set later judges
    the true figures."""

    realized: float = 0.0
    """Realized P&L minus fees of the scope's fills since the ledger began (average cost,
    per book)."""
    positions: Mapping[tuple[str, str], Position] = field(default_factory=dict)
    """``(venue, symbol)`` -> the scope's position there (``global``'s is the venue's)."""
    marks: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """``(venue, symbol)`` -> the last fill price of that book (any scope's fill)."""
    resting: int = 0
    """The scope's resting orders, all venues."""
    bucket: Bucket | None = None
    """Its ``order_rate`` token bucket, once an order was judged against one."""

    @property
    def equity(self) -> float:
        """:func:`marked_equity` of this scope."""
        return marked_equity(
            self.realized,
            [
                (position.quantity, position.avg_price, self.marks.get(book))
                for book, position in self.positions.items()
            ],
        )


def take_token(rule: ScopeRule, bucket: Bucket | None, now: float) -> tuple[float, Bucket]:
    """``(tokens before taking, bucket after taking one)`` for an order at ``now``: the
    bucket holds ``rate`` tokens at most, refilled at ``rate / window`` per second (time
    never runs backwards: a ``now`` before ``at`` refills nothing and leaves ``at`` where
    it was, so replicas with skewed clocks cannot refill one interval twice). Only
    meaningful when ``rule.rate`` is set; the caller denies when the tokens before are
    below 1."""
    assert rule.rate is not None and rule.window is not None
    capacity = rule.rate
    if bucket is None:
        return capacity, (capacity - 1.0, now)
    held, at = bucket
    tokens = min(capacity, held + max(0.0, now - at) * capacity / rule.window)
    return tokens, (tokens - 1.0, max(at, now))


def shared_denial(
    rules: Sequence[ScopeRule],
    *,
    positions: Mapping[str, float],
    open_orders: Mapping[str, int],
    buckets: Mapping[str, Bucket],
    signed_quantity: float,
    rests: bool,
    now: float,
) -> tuple[Denial | None, dict[str, Bucket]]:
    """Judge one order against its scopes' shared limits, as a ledger does atomically.

    ``positions`` are the scopes' positions in the order's venue and symbol (by
    :func:`scope_key`; absent is flat), ``open_orders`` their resting orders, ``buckets``
    their token buckets; ``signed_quantity`` what the order adds to a position if it
    fills (negative for a sell); ``rests`` whether it will rest. Returns the first
    denial (positions, then resting orders, then rates, each broadest scope first) and
    the buckets to store: none when denied, so a denied order takes no token."""
    for rule in rules:
        denial = _position_denial(rule, positions.get(rule.key, 0.0), signed_quantity)
        if denial is not None:
            return denial, {}
    if rests:
        for rule in rules:
            denial = _open_orders_denial(rule, open_orders.get(rule.key, 0))
            if denial is not None:
                return denial, {}
    taken: dict[str, Bucket] = {}
    for rule in rules:
        if rule.rate is None:
            continue
        tokens, after_take = take_token(rule, buckets.get(rule.key), now)
        if tokens < 1.0:
            return rule_denial("order_rate", rule, tokens), {}
        taken[rule.key] = after_take
    return None, taken


def rule_denial(check: str, rule: ScopeRule, value: float) -> Denial:
    """The denial of ``check`` (one of :data:`SHARED_CHECKS`) of ``rule`` that judged
    ``value`` (the position after the order, the resting orders with it, the tokens
    left): how :func:`shared_denial` words it, for a ledger that judged elsewhere (the
    Redis ledger's script) to report it alike."""
    where = _where(rule.scope, rule.target)
    if check == "max_position":
        assert rule.max_position is not None
        threshold = rule.max_position
        reason = (
            f"position after the order {value:.8g} beyond max_position {threshold:.8g} of {where}"
        )
    elif check == "max_open_orders":
        assert rule.max_open_orders is not None
        threshold = float(rule.max_open_orders)
        reason = (
            f"{value:.0f} resting orders with this one, above max_open_orders"
            f" {rule.max_open_orders} of {where}"
        )
    elif check == "order_rate":
        assert rule.rate is not None and rule.window is not None
        threshold = rule.rate
        reason = f"order rate of {where} above {rule.rate:.8g} orders per {rule.window:.8g}s"
    else:
        raise ValueError(f"not a shared check: {check!r}")
    return Denial(check, rule.scope, rule.target, value, threshold, reason)


def admit(
    order: Order,
    rules: Sequence[ScopeRule],
    *,
    positions: Mapping[str, float],
    open_orders: Mapping[str, int],
    buckets: Mapping[str, Bucket],
) -> dict[str, Bucket]:
    """:func:`shared_denial` of a stored-to-be ``order`` on a ledger's figures (its
    scopes' positions in its venue and symbol, resting orders, buckets), at the order's
    ``created_at``: the buckets to store, or ``OrderDenied``."""
    denial, taken = shared_denial(
        rules,
        positions=positions,
        open_orders=open_orders,
        buckets=buckets,
        signed_quantity=order.quantity if order.side is Side.BUY else -order.quantity,
        rests=order.status is OrderStatus.OPEN,
        now=order.created_at,
    )
    if denial is not None:
        raise denial.error(order.client_order_id)
    return taken


def _position_denial(rule: ScopeRule, before: float, signed_quantity: float) -> Denial | None:
    if rule.max_position is None:
        return None
    after = before + signed_quantity
    if abs(after) <= rule.max_position + BALANCE_TOLERANCE or abs(after) <= abs(before):
        return None
    return rule_denial("max_position", rule, after)


def _open_orders_denial(rule: ScopeRule, resting: int) -> Denial | None:
    if rule.max_open_orders is None or resting + 1 <= rule.max_open_orders:
        return None
    return rule_denial("max_open_orders", rule, float(resting + 1))


# --- Triggers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerProgress:
    """What a trigger remembers between evaluations (kept durably, compared and set)."""

    version: int = 0
    """Bumped by every save: two evaluators (emergency replicas) cannot both count one
    evaluation."""
    breaches: int = 0
    """Breaching evaluations in a row."""
    fired: bool = False
    """It acted (asked for its state) and the breach has not cleared since."""
    peak: float | None = None
    """``max_drawdown``: the highest equity seen."""
    day: str | None = None
    """``daily_loss``: the trading day (ISO date) ``anchor`` belongs to."""
    anchor: float | None = None
    """``daily_loss``: the equity at the first evaluation of ``day``."""
    last_beat: float | None = None
    """``heartbeat``: when the last beat arrived (epoch seconds)."""
    evaluated_at: float = 0.0
    value: float | None = None
    """What the last evaluation judged (P&L of the day, drawdown, seconds since a beat)."""
    lifting: bool = False
    """``daily_loss`` with ``lift_on_reset``: a new day began and undoing this trigger's
    halt is pending (kept until done, so a failed lift is tried again)."""
    replaced: dict[str, Any] | None = None
    """The weaker halt of another actor this trigger's halt replaced on its scope
    (``state``, ``actor``, ``reason``, ``cancel_orders``): what a ``lift_on_reset``
    puts back instead of lifting the scope to active."""


@dataclass(frozen=True, slots=True)
class TriggerOutcome:
    """One evaluation of one trigger."""

    progress: TriggerProgress
    value: float
    breached: bool
    fire: bool
    """The scope must be in the limit's state now: true at every evaluation while the
    breach has lasted ``consecutive`` evaluations (level-triggered: a halt that failed, or
    was lifted while the breach lasts, is asked for again)."""
    lift: bool
    """A new trading day began and the limit lifts the state it set (``lift_on_reset``)."""

    def reason(self, limit: RiskLimit) -> str:
        where = _where(limit.scope, limit.target)
        if limit.limit_type == "heartbeat":
            return f"dead-man's switch of {where}: no heartbeat for {self.value:.3g}s (ttl {limit.threshold:.3g}s)"
        return (
            f"{limit.limit_type} of {where}: {self.value:.8g} below {limit.threshold:.8g}"
            f" for {self.progress.breaches} evaluation(s) in a row"
        )


def trading_day(now: float, timezone: str, reset_time: str) -> str:
    """The trading day (ISO date) ``now`` falls in, where a day starts at ``reset_time``
    local time in ``timezone``."""
    hours, minutes = (int(part) for part in reset_time.split(":"))
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(timezone))
    return (local - timedelta(hours=hours, minutes=minutes)).date().isoformat()


def evaluate_trigger(
    limit: RiskLimit, progress: TriggerProgress, equity: float | None, now: float
) -> TriggerOutcome:
    """One evaluation of the trigger ``limit`` at ``now``, ``equity`` being its scope's
    equity (unused by ``heartbeat``; required by the others)."""
    lift = False
    if limit.limit_type == "heartbeat":
        since = progress.last_beat if progress.last_beat is not None else limit.updated_at
        value = max(0.0, now - since)
        breached = value > limit.threshold
        progress = replace(progress, value=value)
    else:
        if equity is None:
            raise ValueError(f"trigger {limit.key!r} needs its scope's equity")
        if limit.limit_type == "daily_loss":
            day = trading_day(now, limit.timezone, limit.reset_time)
            # Days only move forward: a repeated local hour (a DST change), a clock set
            # back or a changed reset time never reopens a day that ended.
            if progress.day is None or day > progress.day:
                lift = limit.lift_on_reset and progress.day is not None
                progress = replace(
                    progress,
                    day=day,
                    anchor=equity,
                    breaches=0,
                    fired=False,
                    lifting=progress.lifting or lift,
                )
            anchor = equity if progress.anchor is None else progress.anchor
            value = equity - anchor
        else:  # max_drawdown
            peak = equity if progress.peak is None else max(progress.peak, equity)
            value = equity - peak
            progress = replace(progress, peak=peak)
        breached = limit.direction.breached(value, limit.threshold)
        progress = replace(progress, value=value)
    if breached:
        breaches = min(progress.breaches + 1, CONSECUTIVE_MAX)
        fire = breaches >= limit.consecutive
        progress = replace(progress, breaches=breaches, fired=progress.fired or fire)
    else:
        fire = False
        progress = replace(progress, breaches=0, fired=False)
    progress = replace(progress, evaluated_at=now)
    return TriggerOutcome(progress, value, breached, fire, lift)


def is_trigger(limit: RiskLimit) -> bool:
    """Whether the trigger evaluator acts on ``limit``."""
    return limit.limit_type in TRIGGER_TYPES and limit.state is not None


# --- Validation -------------------------------------------------------------------------


def checked_limit_options(limit: RiskLimit) -> RiskLimit:
    """``limit`` with its per-type options checked and defaulted (a ``heartbeat``'s state
    is ``CANCEL_ONLY`` unless given): ``InvalidRequest`` naming the field otherwise. Scope,
    target, type and a finite threshold are the caller's to check."""
    _check_threshold(limit)
    state = _checked_state(limit)
    _check_trigger_options(limit, state)
    return limit if state is limit.state else replace(limit, state=state)


def _check_threshold(limit: RiskLimit) -> None:
    kind, threshold = limit.limit_type, limit.threshold
    if kind in ("max_order_notional", "price_collar_bps", "max_position") and threshold <= 0:
        raise InvalidRequest("threshold", f"a number > 0 for {kind}", threshold)
    if kind in ("max_open_orders", "order_rate"):
        least = 0 if kind == "max_open_orders" else 1
        if threshold < least or threshold != int(threshold):
            raise InvalidRequest("threshold", f"a whole number >= {least} for {kind}", threshold)
    if kind == "heartbeat" and not (0 < threshold <= HEARTBEAT_TTL_MAX):
        raise InvalidRequest(
            "threshold", f"a time to live in (0, {HEARTBEAT_TTL_MAX:.0f}] seconds", threshold
        )
    if kind == "order_rate":
        if limit.window is None or not (0 < limit.window <= HEARTBEAT_TTL_MAX):
            raise InvalidRequest(
                "window", f"seconds in (0, {HEARTBEAT_TTL_MAX:.0f}] for order_rate", limit.window
            )
    elif limit.window is not None:
        raise InvalidRequest("window", "no window (only order_rate has one)", limit.window)


def _checked_state(limit: RiskLimit) -> TradingState | None:
    kind, state = limit.limit_type, limit.state
    if kind == "heartbeat" and state is None:
        state = TradingState.CANCEL_ONLY
    if state is None:
        return None
    if kind not in TRIGGER_TYPES:
        raise InvalidRequest(
            "state", f"no state (only {', '.join(TRIGGER_TYPES)} act as triggers)", state.value
        )
    if state is TradingState.ACTIVE:
        raise InvalidRequest("state", "reduce_only, cancel_only or halted", state.value)
    if kind != "heartbeat" and limit.threshold >= 0:
        raise InvalidRequest(
            "threshold", f"a loss (a number < 0) for the {kind} trigger", limit.threshold
        )
    return state


def _check_trigger_options(limit: RiskLimit, state: TradingState | None) -> None:
    if not (1 <= limit.consecutive <= CONSECUTIVE_MAX) or (
        state is None and limit.consecutive != 1
    ):
        raise InvalidRequest(
            "consecutive",
            f"1..{CONSECUTIVE_MAX} (more than 1 only for a trigger)",
            limit.consecutive,
        )
    if limit.cancel_orders and state is None:
        raise InvalidRequest("cancel_orders", "false unless the limit is a trigger", True)
    daily = limit.limit_type == "daily_loss"
    if not _RESET_TIME.fullmatch(limit.reset_time) or (not daily and limit.reset_time != "00:00"):
        raise InvalidRequest(
            "reset_time", "HH:MM (00:00 to 23:59; only daily_loss has one)", limit.reset_time
        )
    try:
        if len(limit.timezone) > TIMEZONE_MAX_LENGTH:
            raise ValueError(limit.timezone)
        ZoneInfo(limit.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
        raise InvalidRequest(
            "timezone", "an IANA time zone, e.g. Europe/London", limit.timezone
        ) from None
    if not daily and limit.timezone != "UTC":
        raise InvalidRequest("timezone", "UTC (only daily_loss has a time zone)", limit.timezone)
    if limit.lift_on_reset and not (daily and state is not None):
        raise InvalidRequest("lift_on_reset", "false unless a daily_loss trigger", True)
