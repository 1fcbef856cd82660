"""The pre-trade rules of ``domain/risk.py``, property-tested: the token bucket, the shared
checks, the local checks and which limits cover an order; and the ledgers that enforce
the shared checks (memory, SQLite) deciding exactly as :func:`shared_denial` does."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeflow.adapters.memory.paper import MemoryPaperLedger, PaperLedger
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.domain.emergency import DEFAULT_DIRECTIONS
from tradeflow.domain.errors import OrderDenied
from tradeflow.domain.records import LimitDirection, RiskLimit, Scope, limit_key
from tradeflow.domain.risk import (
    LOCAL_CHECKS,
    PRE_TRADE_TYPES,
    SHARED_CHECKS,
    Bucket,
    Denial,
    ScopeRule,
    local_denial,
    pre_trade_limits,
    rule_denial,
    scope_keys,
    shared_denial,
    take_token,
)
from tradeflow.domain.trading import (
    BALANCE_TOLERANCE,
    FLAT,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Side,
    average_cost,
)

START = 1_700_000_000.0
VENUE, SYMBOL = "paper", "BTC/USDT"

rates = st.integers(min_value=1, max_value=6).map(float)
windows = st.sampled_from([0.5, 1.0, 3.0, 60.0, 3600.0])
# Offsets from START, in any order: replicas' clocks are not in step.
instants = st.lists(
    st.floats(min_value=-100.0, max_value=10_000.0, allow_nan=False), min_size=1, max_size=60
)


def rate_rule(rate: float, window: float) -> ScopeRule:
    return ScopeRule(Scope.GLOBAL, None, rate=rate, window=window)


# --- the token bucket ----------------------------------------------------------------


@settings(max_examples=300)
@given(rate=rates, window=windows, offsets=instants)
def test_a_bucket_never_admits_more_than_its_rate_over_any_sequence(
    rate: float, window: float, offsets: list[float]
) -> None:
    """Over any sequence of order times (backwards too), a bucket admits at most ``rate``
    plus ``rate / window`` per second elapsed since its first order."""
    rule = rate_rule(rate, window)
    buckets: dict[str, Bucket] = {}
    admitted = 0
    first = latest = START + offsets[0]
    for offset in offsets:
        now = START + offset
        latest = max(latest, now)
        denial, taken = shared_denial(
            [rule],
            positions={},
            open_orders={},
            buckets=buckets,
            signed_quantity=1.0,
            rests=False,
            now=now,
        )
        if denial is None:
            admitted += 1
            buckets.update(taken)
        assert admitted <= rate + max(0.0, latest - first) * rate / window + 1e-6


@given(rate=rates, window=windows)
def test_a_fresh_bucket_admits_exactly_its_rate_at_one_instant(rate: float, window: float) -> None:
    """At one instant, a new bucket admits ``rate`` orders and denies the next, whose
    denial names the tokens left (below one) and the rate."""
    rule = rate_rule(rate, window)
    bucket: Bucket | None = None
    for _ in range(int(rate)):
        tokens, bucket = take_token(rule, bucket, START)
        assert tokens >= 1.0
    denial, taken = shared_denial(
        [rule],
        positions={},
        open_orders={},
        buckets={"global": bucket} if bucket else {},
        signed_quantity=1.0,
        rests=False,
        now=START,
    )
    assert denial is not None
    assert (denial.check, denial.threshold, taken) == ("order_rate", rate, {})
    assert denial.value < 1.0


@given(rate=rates, window=windows, held=st.floats(0.0, 6.0), back=st.floats(0.0, 1e4))
def test_time_running_backwards_refills_nothing_and_keeps_the_bucket_time(
    rate: float, window: float, held: float, back: float
) -> None:
    """An order timed before the bucket's last one refills nothing and leaves the bucket's
    time where it was (so a later order cannot refill that interval twice)."""
    rule = rate_rule(rate, window)
    tokens, (after, at) = take_token(rule, (min(held, rate), START), START - back)
    assert tokens == min(held, rate)
    assert (after, at) == (tokens - 1.0, START)


# --- the shared checks ---------------------------------------------------------------

targets = {Scope.STRATEGY: ["s1"], Scope.BOT: ["b1", "b2"], Scope.WORKFLOW: ["w1"]}
scopes = st.sampled_from(
    [(Scope.GLOBAL, None)] + [(scope, t) for scope, ts in targets.items() for t in ts]
)
caps = st.sampled_from([0.3, 0.5, 1.0, 2.0])


@st.composite
def scope_rules(draw: st.DrawFn) -> ScopeRule:
    scope, target = draw(scopes)
    rate = draw(st.none() | rates)
    return ScopeRule(
        scope,
        target,
        max_position=draw(st.none() | caps),
        max_open_orders=draw(st.none() | st.integers(0, 3)),
        rate=rate,
        window=None if rate is None else draw(windows),
    )


rule_lists = st.lists(scope_rules(), max_size=4, unique_by=lambda rule: rule.key)
keys = st.sampled_from(["global", "strategy:s1", "bot:b1", "bot:b2", "workflow:w1"])
figures = st.dictionaries(keys, st.floats(-3.0, 3.0))
counts = st.dictionaries(keys, st.integers(0, 4))
bucket_maps = st.dictionaries(
    keys, st.tuples(st.floats(-1.0, 6.0), st.floats(START - 100, START + 100))
)
quantities = st.sampled_from([0.1, 0.2, 0.25, 0.5, 1.0, 1.5]) | st.floats(1e-6, 5.0)


@settings(max_examples=300)
@given(
    rules=rule_lists,
    positions=figures,
    open_orders=counts,
    buckets=bucket_maps,
    signed=quantities.flatmap(lambda q: st.sampled_from([q, -q])),
    rests=st.booleans(),
    offset=st.floats(-100.0, 200.0),
)
def test_shared_denial_is_the_first_failing_check_and_a_denial_takes_no_token(
    rules: list[ScopeRule],
    positions: dict[str, float],
    open_orders: dict[str, int],
    buckets: dict[str, Bucket],
    signed: float,
    rests: bool,
    offset: float,
) -> None:
    """shared_denial denies with the first failing check (positions, then resting orders
    when the order rests, then rates, each in the rules' order, broadest first), worded
    by rule_denial; a denial takes no token, an allowed order one from each rate rule's
    bucket; the figures passed in are never changed."""
    before = (dict(positions), dict(open_orders), dict(buckets))
    now = START + offset
    denial, taken = shared_denial(
        rules,
        positions=positions,
        open_orders=open_orders,
        buckets=buckets,
        signed_quantity=signed,
        rests=rests,
        now=now,
    )
    assert (positions, open_orders, buckets) == before

    expected: Denial | None = None
    for rule in rules:
        held = positions.get(rule.key, 0.0)
        after = held + signed
        if (
            rule.max_position is not None
            and abs(after) > rule.max_position + BALANCE_TOLERANCE
            and abs(after) > abs(held)
        ):
            expected = rule_denial("max_position", rule, after)
            break
    if expected is None and rests:
        for rule in rules:
            resting = open_orders.get(rule.key, 0)
            if rule.max_open_orders is not None and resting + 1 > rule.max_open_orders:
                expected = rule_denial("max_open_orders", rule, resting + 1)
                break
    expected_taken: dict[str, Bucket] = {}
    if expected is None:
        for rule in rules:
            if rule.rate is None:
                continue
            tokens, after_take = take_token(rule, buckets.get(rule.key), now)
            if tokens < 1.0:
                expected = rule_denial("order_rate", rule, tokens)
                break
            expected_taken[rule.key] = after_take
    assert denial == expected
    assert taken == ({} if expected is not None else expected_taken)


@settings(max_examples=300)
@given(
    rules=rule_lists,
    held=st.floats(-5.0, 5.0).filter(lambda q: abs(q) > 1e-6),
    fraction=st.floats(0.0, 2.0),
)
def test_an_order_that_reduces_a_position_is_never_denied_by_max_position(
    rules: list[ScopeRule], held: float, fraction: float
) -> None:
    """An order against the position for up to twice its size (the position shrinks or
    flips to at most its size) passes max_position, however low the limits, even with
    every scope far past them."""
    signed = -held * fraction
    positions = {key: held for key in ("global", "strategy:s1", "bot:b1", "bot:b2", "workflow:w1")}
    denial, _ = shared_denial(
        rules,
        positions=positions,
        open_orders={},
        buckets={},
        signed_quantity=signed,
        rests=False,
        now=START,
    )
    assert denial is None or denial.check != "max_position"


@given(cap=caps, held=st.floats(-3.0, 3.0), quantity=quantities, side=st.sampled_from([1, -1]))
def test_max_position_denies_exactly_a_grown_position_beyond_the_limit(
    cap: float, held: float, quantity: float, side: int
) -> None:
    """max_position denies an order exactly when the position after it is beyond the
    limit (past the tolerance) and larger than before; the denial carries that position."""
    rule = ScopeRule(Scope.BOT, "b1", max_position=cap)
    signed = side * quantity
    denial, _ = shared_denial(
        [rule],
        positions={"bot:b1": held},
        open_orders={},
        buckets={},
        signed_quantity=signed,
        rests=True,
        now=START,
    )
    after = held + signed
    denied = abs(after) > cap + BALANCE_TOLERANCE and abs(after) > abs(held)
    assert (denial is not None) == denied
    if denial is not None:
        assert (denial.check, denial.value, denial.threshold) == ("max_position", after, cap)
        assert denial.reason.endswith("of bot 'b1'")


@given(cap=st.integers(0, 4), resting=st.integers(0, 6), rests=st.booleans())
def test_max_open_orders_counts_only_an_order_that_rests(
    cap: int, resting: int, rests: bool
) -> None:
    """max_open_orders denies a resting order that would make more than the limit, and
    never an order that does not rest."""
    rule = ScopeRule(Scope.GLOBAL, None, max_open_orders=cap)
    denial, _ = shared_denial(
        [rule],
        positions={},
        open_orders={"global": resting},
        buckets={},
        signed_quantity=1.0,
        rests=rests,
        now=START,
    )
    assert (denial is not None) == (rests and resting + 1 > cap)
    if denial is not None:
        assert (denial.value, denial.threshold) == (resting + 1, cap)
        assert denial.reason.startswith(f"{resting + 1} resting orders with this one")


def test_rule_denial_words_each_check_and_refuses_others() -> None:
    """rule_denial gives each shared check its reason, threshold and the error it raises."""
    rule = ScopeRule(Scope.WORKFLOW, "w1", 1.0, 2, 5.0, 60.0)
    rate = rule_denial("order_rate", rule, 0.25)
    assert rate.reason == "order rate of workflow 'w1' above 5 orders per 60s"
    error = rate.error("c1")
    assert isinstance(error, OrderDenied)
    assert (error.check, error.scope, error.target, error.value, error.threshold) == (
        "order_rate",
        "workflow",
        "w1",
        0.25,
        5.0,
    )
    assert Denial.of(error) == rate
    assert rule_denial("max_open_orders", rule, 3.0).threshold == 2.0
    with pytest.raises(ValueError, match="not a shared check"):
        rule_denial("max_order_notional", rule, 1.0)


# --- the local checks and which limits apply -----------------------------------------


def limit(limit_type: str, threshold: float, scope: Scope, target: str | None) -> RiskLimit:
    return RiskLimit(
        limit_type,
        threshold,
        DEFAULT_DIRECTIONS[limit_type],
        scope=scope,
        target=target,
        window=60.0 if limit_type == "order_rate" else None,
    )


@st.composite
def limit_maps(draw: st.DrawFn) -> dict[str, RiskLimit]:
    chosen = draw(
        st.lists(st.tuples(st.sampled_from((*PRE_TRADE_TYPES, "daily_loss")), scopes), max_size=12)
    )
    limits = {}
    for limit_type, (scope, target) in chosen:
        threshold = float(draw(st.integers(1, 5)))
        limits[limit_key(limit_type, scope, target)] = limit(limit_type, threshold, scope, target)
    return limits


ids = st.tuples(st.none() | st.just("w1"), st.none() | st.sampled_from(["b1", "b2"]))


@settings(max_examples=300)
@given(limits=limit_maps(), order_ids=ids, strategy=st.none() | st.just("s1"))
def test_pre_trade_limits_are_those_of_the_orders_scopes_broadest_first(
    limits: dict[str, RiskLimit], order_ids: tuple[str | None, str | None], strategy: str | None
) -> None:
    """An order is checked against the local limits of exactly its scopes, and gets one
    rule per scope of its with a shared limit, carrying those thresholds; broadest first."""
    workflow_id, bot_id = order_ids
    found = pre_trade_limits(limits, workflow_id, bot_id, strategy)
    keys_of_order = scope_keys(workflow_id, bot_id, strategy)
    expected_local = [
        limits[limit_key(limit_type, scope, target)]
        for key in keys_of_order
        for scope, target in [_scope_of(key)]
        for limit_type in LOCAL_CHECKS
        if limit_key(limit_type, scope, target) in limits
    ]
    assert list(found.local) == expected_local
    expected_rules = []
    for key in keys_of_order:
        scope, target = _scope_of(key)
        shared = {t: limits.get(limit_key(t, scope, target)) for t in SHARED_CHECKS}
        if not any(shared.values()):
            continue
        position, open_orders, rate = shared.values()
        expected_rules.append(
            ScopeRule(
                scope,
                target,
                None if position is None else position.threshold,
                None if open_orders is None else int(open_orders.threshold),
                None if rate is None else rate.threshold,
                None if rate is None else rate.window,
            )
        )
    assert list(found.rules) == expected_rules
    assert bool(found) == bool(expected_local or expected_rules)


@pytest.mark.parametrize(
    "stored",
    [
        RiskLimit("order_rate", 10.0, LimitDirection.ABOVE),  # no window
        RiskLimit("price_collar_bps", 0.0, LimitDirection.ABOVE),
        RiskLimit("max_position", 1.0, LimitDirection.BELOW),
        RiskLimit("max_open_orders", 2.5, LimitDirection.ABOVE),
    ],
)
def test_a_stored_limit_that_breaks_its_types_rules_is_not_enforced(stored: RiskLimit) -> None:
    """An earlier version took any limit type with a direction (a risk node's
    ``order_rate`` without a window, a collar of 0, a ``max_position`` below): such a row,
    loaded as it was, is not enforced before orders rather than breaking or blocking
    every order."""
    assert not pre_trade_limits({stored.key: stored}, "w1", "b1", "s1")


def _scope_of(key: str) -> tuple[Scope, str | None]:
    if key == "global":
        return Scope.GLOBAL, None
    scope, _, target = key.partition(":")
    return Scope(scope), target


@given(
    threshold=st.floats(1.0, 1e6),
    quantity=st.floats(1e-4, 10.0),
    limit_price=st.none() | st.floats(1.0, 1e5),
    touch=st.none() | st.floats(1.0, 1e5),
)
def test_max_order_notional_denies_exactly_above_the_threshold_and_fails_closed(
    threshold: float, quantity: float, limit_price: float | None, touch: float | None
) -> None:
    """The notional is quantity times the limit price (the touch for a market order);
    above the threshold it is denied, and with no price at all it is denied too."""
    rule = limit("max_order_notional", threshold, Scope.GLOBAL, None)
    denial = local_denial([rule], quantity=quantity, limit_price=limit_price, touch=touch, mid=None)
    price = limit_price if limit_price is not None else touch
    if price is None:
        assert denial is not None and denial.reason.startswith("no price")
    else:
        assert (denial is not None) == (quantity * price > threshold)


@given(
    threshold=st.floats(1.0, 1000.0),
    limit_price=st.none() | st.floats(1.0, 1e5),
    mid=st.none() | st.floats(0.0, 1e5),
)
def test_the_price_collar_judges_limit_orders_only_against_a_known_mid(
    threshold: float, limit_price: float | None, mid: float | None
) -> None:
    """A limit price further than the collar (in bps of the mid) is denied, a market order
    never; with no usable mid a limit order is denied (fail closed)."""
    rule = limit("price_collar_bps", threshold, Scope.BOT, "b1")
    denial = local_denial([rule], quantity=1.0, limit_price=limit_price, touch=None, mid=mid)
    if limit_price is None:
        assert denial is None
    elif mid is None or mid <= 0:
        assert denial is not None and denial.reason.startswith("no last price")
    else:
        distance = abs(limit_price - mid) / mid * 10_000
        assert (denial is not None) == (distance > threshold)


# --- the ledgers decide as shared_denial does ----------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    side: Side
    quantity: float
    rests: bool
    workflow_id: str | None
    bot_id: str | None
    strategy_id: str | None
    dt: float
    price: float


@dataclass(frozen=True, slots=True)
class Cancel:
    pick: int


steps = st.lists(
    st.builds(
        Place,
        side=st.sampled_from(Side),
        quantity=st.sampled_from([0.1, 0.2, 0.3, 0.5]),
        rests=st.booleans(),
        workflow_id=st.none() | st.just("w1"),
        bot_id=st.none() | st.sampled_from(["b1", "b2"]),
        strategy_id=st.none() | st.just("s1"),
        dt=st.sampled_from([0.0, 0.0, 0.5, 2.0, 30.0, -1.0]),
        price=st.sampled_from([99.5, 100.0, 100.25, 101.0]),
    )
    | st.builds(Cancel, pick=st.integers(0, 10)),
    max_size=30,
)


class Model:
    """What a ledger should hold, kept with the domain functions alone."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.resting: dict[str, int] = {}
        self.buckets: dict[str, Bucket] = {}
        self.open: list[Order] = []

    def judge(
        self, order: Order, rules: Sequence[ScopeRule]
    ) -> tuple[Denial | None, dict[str, Bucket]]:
        signed = order.quantity if order.side is Side.BUY else -order.quantity
        return shared_denial(
            rules,
            positions={key: book.quantity for key, book in self.positions.items()},
            open_orders=self.resting,
            buckets=self.buckets,
            signed_quantity=signed,
            rests=order.status is OrderStatus.OPEN,
            now=order.created_at,
        )

    def accept(self, order: Order, fill: Fill | None, taken: dict[str, Bucket]) -> None:
        self.buckets.update(taken)
        scopes = scope_keys(order.workflow_id, order.bot_id, order.strategy_id)
        if fill is None:
            self.open.append(order)
            for key in scopes:
                self.resting[key] = self.resting.get(key, 0) + 1
            return
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        for key in scopes:
            book = self.positions.get(key, FLAT)
            quantity, avg_price, _ = average_cost(book.quantity, book.avg_price, signed, fill.price)
            self.positions[key] = Position(quantity, avg_price)

    def cancel(self, pick: int) -> Order | None:
        if not self.open:
            return None
        order = self.open.pop(pick % len(self.open))
        for key in scope_keys(order.workflow_id, order.bot_id, order.strategy_id):
            self.resting[key] -= 1
        return order


def _build(n: int, step: Place, at: float) -> tuple[Order, Fill | None]:
    order = Order(
        order_id=f"o{n}",
        client_order_id=f"c{n}",
        venue=VENUE,
        symbol=SYMBOL,
        side=step.side,
        quantity=step.quantity,
        order_type=OrderType.LIMIT if step.rests else OrderType.MARKET,
        limit_price=step.price if step.rests else None,
        status=OrderStatus.OPEN if step.rests else OrderStatus.FILLED,
        filled_quantity=0.0 if step.rests else step.quantity,
        avg_price=None if step.rests else step.price,
        created_at=at,
        workflow_id=step.workflow_id,
        bot_id=step.bot_id,
        strategy_id=step.strategy_id,
    )
    if step.rests:
        return order, None
    fill = Fill(VENUE, SYMBOL, order.client_order_id, step.side, step.quantity, step.price, 0.0, at)
    return order, fill


async def decide_alike(
    ledger: PaperLedger, rules: list[ScopeRule], plan: list[Place | Cancel]
) -> None:
    model = Model()
    at = START
    numbers = itertools.count()
    for step in plan:
        if isinstance(step, Cancel):
            order = model.cancel(step.pick)
            if order is not None:
                cancelled = await ledger.cancel(VENUE, order.client_order_id)
                assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
            continue
        at += step.dt
        order, fill = _build(next(numbers), step, at)
        expected, taken = model.judge(order, rules)
        denied: Denial | None = None
        try:
            await ledger.accept(order, fill, opening={}, require=None, rules=rules)
        except OrderDenied as exc:
            denied = Denial.of(exc)
        assert denied == expected
        if denied is None:
            model.accept(order, fill, taken)
        else:
            assert await ledger.get_order(VENUE, order.client_order_id) is None
    for key in ("global", "strategy:s1", "bot:b1", "bot:b2", "workflow:w1"):
        book = await ledger.scope_book(*_scope_of(key))
        assert book.resting == model.resting.get(key, 0)
        assert book.bucket == model.buckets.get(key)
        expected_position = model.positions.get(key)
        assert book.positions.get((VENUE, SYMBOL)) == expected_position


def memory_ledger() -> tuple[PaperLedger, Callable[[], None]]:
    return MemoryPaperLedger(), lambda: None


def sqlite_ledger() -> tuple[PaperLedger, Callable[[], None]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    return SQLitePaperLedger(conn), conn.close


@pytest.mark.parametrize("open_ledger", [memory_ledger, sqlite_ledger], ids=["memory", "sqlite"])
@settings(max_examples=150, deadline=None)
@given(rules=rule_lists, plan=steps)
def test_the_ledgers_decide_exactly_as_shared_denial(
    open_ledger: Callable[[], tuple[PaperLedger, Callable[[], None]]],
    rules: list[ScopeRule],
    plan: list[Place | Cancel],
) -> None:
    """On any sequence of orders (resting or filled, any scope ids, clocks not in step)
    and cancels, under any shared rules, a ledger denies exactly what shared_denial of the
    figures it holds denies, with the same denial, stores nothing of a denied order, and
    ends with the positions, resting counts and buckets the domain functions give."""
    ledger, close = open_ledger()
    try:
        asyncio.run(asyncio.wait_for(decide_alike(ledger, rules, plan), timeout=30))
    finally:
        close()
