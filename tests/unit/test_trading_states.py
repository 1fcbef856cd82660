"""The trading-state rules of the domain, as properties: which state admits which effect,
which halt decides for an action (the most restrictive covering it, the broadest on a
tie), what an order does to a position, and that a halt never loosens a scope.

The oracles here are written out plainly (a table of what each state admits, the covering
halts found by hand), independent of the code they check.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Final

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kit import refusal_of

from tradeflow.domain.emergency import EmergencySnapshot, HaltKey, ScopeIds
from tradeflow.domain.records import HaltState, Scope
from tradeflow.domain.trading import (
    BALANCE_TOLERANCE,
    OrderEffect,
    Side,
    TradingState,
    order_effect,
)

ADMITS: Final = {
    TradingState.ACTIVE: frozenset(OrderEffect),
    TradingState.REDUCE_ONLY: frozenset(
        {OrderEffect.REDUCES, OrderEffect.CANCELS, OrderEffect.NONE}
    ),
    TradingState.CANCEL_ONLY: frozenset({OrderEffect.CANCELS, OrderEffect.NONE}),
    TradingState.HALTED: frozenset({OrderEffect.CANCELS, OrderEffect.NONE}),
}
"""What each state admits, as the issue states it."""
RESTRICTIVENESS: Final = (
    TradingState.ACTIVE,
    TradingState.REDUCE_ONLY,
    TradingState.CANCEL_ONLY,
    TradingState.HALTED,
)
"""The states from least to most restrictive."""
BROADEST_FIRST: Final = (Scope.GLOBAL, Scope.STRATEGY, Scope.BOT, Scope.WORKFLOW)
TARGETS: Final = ("a", "b")
"""Few targets, so that generated halts and ids often meet."""

ids_strategy = st.builds(
    ScopeIds,
    workflow_id=st.none() | st.sampled_from(TARGETS),
    bot_id=st.none() | st.sampled_from(TARGETS),
    strategy_id=st.none() | st.sampled_from(TARGETS),
)
keys_strategy = st.just((Scope.GLOBAL, None)) | st.tuples(
    st.sampled_from(BROADEST_FIRST[1:]), st.sampled_from(TARGETS)
)
halts_strategy = st.dictionaries(keys_strategy, st.sampled_from(TradingState), max_size=7)
"""Halts as ``(scope, target) -> state`` (``ACTIVE`` included: a stored state that
restricts nothing)."""
position_strategy = st.just(0.0) | st.floats(
    min_value=1e-3, max_value=1e6, allow_nan=False
).flatmap(lambda size: st.sampled_from((size, -size)))
"""Flat, or long or short by a size well clear of the flat tolerance."""
quantity_strategy = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)


def snapshot_of(halts: dict[HaltKey, TradingState]) -> EmergencySnapshot:
    """A snapshot of ``halts``, each with a reason naming its key."""
    return EmergencySnapshot.of(
        1,
        (
            HaltState(scope, target, f"{scope.value}:{target}", "test", 1.0, state)
            for (scope, target), state in halts.items()
        ),
        (),
    )


def covering(
    halts: dict[HaltKey, TradingState], ids: ScopeIds
) -> list[tuple[HaltKey, TradingState]]:
    """The halts whose scope ``ids`` belong to, broadest first."""
    wanted = {(Scope.GLOBAL, None)} | {
        (scope, target)
        for scope, target in (
            (Scope.STRATEGY, ids.strategy_id),
            (Scope.BOT, ids.bot_id),
            (Scope.WORKFLOW, ids.workflow_id),
        )
        if target is not None
    }
    found = [(key, state) for key, state in halts.items() if key in wanted]
    return sorted(found, key=lambda item: BROADEST_FIRST.index(item[0][0]))


def most_restrictive(states: list[TradingState]) -> TradingState:
    """The most restrictive of ``states`` (``ACTIVE`` for none)."""
    return max(states, key=RESTRICTIVENESS.index, default=TradingState.ACTIVE)


@pytest.mark.parametrize("state", list(TradingState))
@pytest.mark.parametrize("effect", list(OrderEffect))
def test_each_state_admits_exactly_its_effects(state: TradingState, effect: OrderEffect) -> None:
    """``TradingState.allows`` matches the table of the issue for every state and effect."""
    assert state.allows(effect) == (effect in ADMITS[state])


def test_rank_orders_the_states_by_restrictiveness() -> None:
    """``rank`` grows from ACTIVE to HALTED, and a more restrictive state admits no effect
    a less restrictive one refuses."""
    assert [s.rank for s in RESTRICTIVENESS] == sorted({s.rank for s in TradingState})
    for looser, stricter in pairwise(RESTRICTIVENESS):
        assert ADMITS[stricter] <= ADMITS[looser]


@settings(max_examples=500)
@given(halts=halts_strategy, ids=ids_strategy, effect=st.sampled_from(OrderEffect))
def test_ensure_allowed_refuses_exactly_what_the_most_restrictive_covering_state_refuses(
    halts: dict[HaltKey, TradingState], ids: ScopeIds, effect: OrderEffect
) -> None:
    """For any halts over the four scopes and any ids, ensure_allowed refuses exactly when
    the most restrictive covering state does not admit the effect, and then names the
    broadest halt of that state (its reason, scope, target and state)."""
    found = covering(halts, ids)
    deciding = most_restrictive([state for _, state in found])

    refused = refusal_of(snapshot_of(halts), ids, effect)

    assert (refused is not None) == (effect not in ADMITS[deciding])
    if refused is not None:
        (scope, target), state = next((key, s) for key, s in found if s is deciding)
        assert (refused.reason, refused.scope, refused.target, refused.state) == (
            f"{scope.value}:{target}",
            scope.value,
            target,
            state.value,
        )


@given(
    halts=halts_strategy,
    ids=ids_strategy,
    effect=st.sampled_from((OrderEffect.CANCELS, OrderEffect.NONE)),
)
def test_cancels_and_effect_free_actions_always_pass(
    halts: dict[HaltKey, TradingState], ids: ScopeIds, effect: OrderEffect
) -> None:
    """Whatever halts cover an action, a cancel and an effect-free action may start."""
    assert refusal_of(snapshot_of(halts), ids, effect) is None


@given(halts=halts_strategy, ids=ids_strategy)
def test_trading_state_is_the_most_restrictive_covering_state(
    halts: dict[HaltKey, TradingState], ids: ScopeIds
) -> None:
    """trading_state is the most restrictive of the states covering the ids (ACTIVE when
    none does), and active_halt carries that state when it is restricted."""
    snapshot = snapshot_of(halts)
    expected = most_restrictive([state for _, state in covering(halts, ids)])

    assert snapshot.trading_state(ids) is expected
    halt = snapshot.active_halt(ids)
    assert (TradingState.ACTIVE if halt is None else halt.state) is expected


@given(
    halts=halts_strategy,
    key=keys_strategy,
    state=st.sampled_from(TradingState),
    ids=ids_strategy,
)
def test_adding_a_halt_never_makes_a_scope_less_restrictive(
    halts: dict[HaltKey, TradingState], key: HaltKey, state: TradingState, ids: ScopeIds
) -> None:
    """A halt on a scope no halt held yet never lowers the trading state of any ids, nor
    lets through an effect that was refused."""
    assume(key not in halts)
    before = snapshot_of(halts)
    after = snapshot_of({**halts, key: state})

    assert after.trading_state(ids).rank >= before.trading_state(ids).rank
    for effect in OrderEffect:
        if refusal_of(before, ids, effect) is not None:
            assert refusal_of(after, ids, effect) is not None


@given(side=st.sampled_from(Side), quantity=quantity_strategy)
def test_an_order_on_a_flat_position_opens(side: Side, quantity: float) -> None:
    """From flat (within the tolerance), any order opens a position."""
    for flat in (0.0, BALANCE_TOLERANCE / 2, -BALANCE_TOLERANCE / 2):
        assert order_effect(side, quantity, flat) is OrderEffect.OPENS


@given(position=position_strategy, quantity=quantity_strategy)
def test_an_order_on_the_positions_side_grows_it(position: float, quantity: float) -> None:
    """A buy on a long position or a sell on a short one grows it, whatever its size."""
    assume(position != 0)
    side = Side.BUY if position > 0 else Side.SELL
    assert order_effect(side, quantity, position) is OrderEffect.GROWS


@given(position=position_strategy, fraction=st.floats(min_value=1e-6, max_value=1.0))
def test_an_opposite_order_within_the_position_reduces_it(position: float, fraction: float) -> None:
    """An order against the position for at most its size (all of it included) reduces it."""
    assume(position != 0)
    side = Side.SELL if position > 0 else Side.BUY
    assert order_effect(side, abs(position) * fraction, position) is OrderEffect.REDUCES


@given(position=position_strategy, excess=st.floats(min_value=1e-6, max_value=1e6))
def test_an_opposite_order_beyond_the_position_opens(position: float, excess: float) -> None:
    """An order against the position for more than its size flips it: it opens."""
    assume(position != 0)
    side = Side.SELL if position > 0 else Side.BUY
    assert order_effect(side, abs(position) + excess, position) is OrderEffect.OPENS


@given(side=st.sampled_from(Side), quantity=quantity_strategy, position=position_strategy)
def test_reduce_only_admits_exactly_the_orders_that_shrink_the_position(
    side: Side, quantity: float, position: float
) -> None:
    """Under REDUCE_ONLY an order may start exactly when it moves the position toward zero
    without crossing it (computed from the fill it would make); cancels and effect-free
    actions always may."""
    # An order within the flat tolerance of closing the position exactly counts as closing
    # it (the tests above cover that edge); the float sum below cannot tell it apart.
    assume(position == 0 or abs(quantity - abs(position)) > 1e-6)
    after = position + (quantity if side is Side.BUY else -quantity)
    shrinks = position != 0 and abs(after) < abs(position) and after * position >= 0

    effect = order_effect(side, quantity, position)

    assert TradingState.REDUCE_ONLY.allows(effect) == shrinks
    assert TradingState.REDUCE_ONLY.allows(OrderEffect.CANCELS)
    assert TradingState.REDUCE_ONLY.allows(OrderEffect.NONE)
