"""The emergency rules, free of I/O: which halt covers which ids, limit directions, breaches.

:class:`EmergencySnapshot` is one consistent view of halts and limits; every
emergency control (embedded, Redis-backed, remote) answers the pre-action check
with it. :func:`assess_limit` decides a risk check; the controller acts on its
:class:`LimitVerdict` (audit, publish, halt). Targets, limit types and the ids of a
check are well-formed ids, reasons and actors bounded text, and the number of halts
per scope kind and of limit types is bounded (:mod:`tradeflow.domain.limits`), so the
whole state always fits one message to every watcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from tradeflow.domain.errors import (
    CapacityExceeded,
    EmergencyHalted,
    InvalidRequest,
    RiskLimitExceeded,
)
from tradeflow.domain.limits import (
    ACTOR_MAX_LENGTH,
    HALTS_PER_SCOPE_KIND_MAX,
    RISK_LIMITS_MAX,
    check_id,
    check_text,
)
from tradeflow.domain.numbers import finite
from tradeflow.domain.records import HaltState, LimitDirection, RiskLimit, Scope
from tradeflow.domain.risk import (
    NO_LIMITS,
    RULE_DIRECTIONS,
    PreTradeLimits,
    TriggerProgress,
    covering,
    pre_trade_limits,
    stricter,
    strictest,
)
from tradeflow.domain.trading import OrderEffect, TradingState

__all__ = [
    "DEFAULT_AUDIT_PAGE",
    "DEFAULT_DIRECTIONS",
    "MAX_AUDIT_PAGE",
    "NO_IDS",
    "BarrierReport",
    "EmergencySnapshot",
    "HaltCondition",
    "HaltKey",
    "InFlightAction",
    "LimitExplanation",
    "LimitVerdict",
    "ScopeIds",
    "assess_limit",
    "check_scope_ids",
    "checked_direction",
    "checked_number",
    "checked_scope",
    "checked_scope_change",
    "deciding_halt",
    "refusal",
    "require_text",
]

DEFAULT_DIRECTIONS: Final[Mapping[str, LimitDirection]] = MappingProxyType(
    {**RULE_DIRECTIONS, "max_exposure": LimitDirection.ABOVE}
)
"""Breach direction of the well-known limit types (a configured limit overrides it)."""

DEFAULT_AUDIT_PAGE: Final = 100
"""Entries one ``audit_entries`` call returns unless told otherwise."""
MAX_AUDIT_PAGE: Final = 1000
"""Most entries one ``audit_entries`` call returns."""

_PRE_TRADE_CACHE_MAX: Final = 4096
"""Ids whose pre-trade limits one snapshot remembers (then it starts over)."""

HaltKey = tuple[Scope, str | None]
"""How a snapshot keys its halts: scope and target (``None`` for global)."""

_SCOPE_RANK: Final = {Scope.GLOBAL: 0, Scope.STRATEGY: 1, Scope.BOT: 2, Scope.WORKFLOW: 3}
_GLOBAL_KEY: Final[HaltKey] = (Scope.GLOBAL, None)
_KNOWN_TYPES: Final = ", ".join(DEFAULT_DIRECTIONS)
_DIRECTIONS: Final = ", ".join(d.value for d in LimitDirection)


@dataclass(frozen=True, slots=True)
class ScopeIds:
    """The ids an action or a risk check belongs to: what a halt may cover."""

    workflow_id: str | None = None
    bot_id: str | None = None
    strategy_id: str | None = None


NO_IDS: Final = ScopeIds()
"""An action or check that belongs to no workflow, bot or strategy."""


@dataclass(frozen=True, slots=True)
class EmergencySnapshot:
    """One consistent view of the emergency state; treat the mappings as read-only."""

    version: int
    """Differs between snapshots of one store whenever halts or limits differ."""
    halts: Mapping[HaltKey, HaltState]
    limits: Mapping[str, RiskLimit]
    """By :attr:`RiskLimit.key <tradeflow.domain.records.RiskLimit.key>`."""
    _pre_trade: dict[ScopeIds, PreTradeLimits] = field(
        default_factory=dict, compare=False, repr=False
    )
    """:meth:`pre_trade_limits` by ids: a snapshot never changes, so each is worked out once."""

    @classmethod
    def of(
        cls, version: int, halts: Iterable[HaltState], limits: Iterable[RiskLimit]
    ) -> EmergencySnapshot:
        """A snapshot keyed the way :meth:`active_halt` looks halts up."""
        return cls(
            version,
            {(h.scope, h.target): h for h in halts},
            {limit.key: limit for limit in limits},
        )

    def ensure_trading_allowed(self, ids: ScopeIds) -> None:
        """Raise ``EmergencyHalted`` unless an order that opens a position may start for
        ``ids`` (:meth:`ensure_allowed` of ``OPENS``)."""
        self.ensure_allowed(ids, OrderEffect.OPENS)

    def ensure_allowed(self, ids: ScopeIds, effect: OrderEffect) -> None:
        """Raise ``EmergencyHalted`` (the deciding halt's reason, scope and state) unless
        the trading state of ``ids`` admits ``effect``."""
        halt = self.active_halt(ids)
        if halt is not None and not halt.state.allows(effect):
            raise refusal(halt)

    def trading_state(self, ids: ScopeIds) -> TradingState:
        """The most restrictive state of the scopes ``ids`` belong to (``ACTIVE`` if none
        is restricted)."""
        halt = self.active_halt(ids)
        return TradingState.ACTIVE if halt is None else halt.state

    def ensure_room_for_halt(self, scope: Scope, target: str | None) -> None:
        """``CapacityExceeded`` if halting ``target`` would make more than
        :data:`~tradeflow.domain.limits.HALTS_PER_SCOPE_KIND_MAX` active halts of ``scope``;
        a global halt and a halt already active always have room."""
        if scope is Scope.GLOBAL or (scope, target) in self.halts:
            return
        if sum(1 for kind, _ in self.halts if kind is scope) >= HALTS_PER_SCOPE_KIND_MAX:
            raise CapacityExceeded(f"active {scope.value} halts", HALTS_PER_SCOPE_KIND_MAX)

    def ensure_room_for_limit(self, key: str) -> None:
        """``CapacityExceeded`` if a new limit ``key`` would make more than
        :data:`~tradeflow.domain.limits.RISK_LIMITS_MAX` limits; replacing one always has room."""
        if key not in self.limits and len(self.limits) >= RISK_LIMITS_MAX:
            raise CapacityExceeded("risk limits", RISK_LIMITS_MAX)

    def active_halt(self, ids: ScopeIds) -> HaltState | None:
        """The halt that decides what ``ids`` may do: the most restrictive of those
        covering them, the broadest on a tie (global > strategy > bot > workflow)."""
        halts = self.halts
        if not halts:
            return None
        return deciding_halt(
            (
                halts.get(_GLOBAL_KEY),
                None if ids.strategy_id is None else halts.get((Scope.STRATEGY, ids.strategy_id)),
                None if ids.bot_id is None else halts.get((Scope.BOT, ids.bot_id)),
                None if ids.workflow_id is None else halts.get((Scope.WORKFLOW, ids.workflow_id)),
            )
        )

    def halt_list(self) -> list[HaltState]:
        """Every halt, broadest scope first, then by target."""
        return sorted(self.halts.values(), key=lambda h: (_SCOPE_RANK[h.scope], h.target or ""))

    def limit_list(self) -> list[RiskLimit]:
        """Every configured limit, by limit type, then scope (broadest first) and target."""
        return sorted(
            self.limits.values(),
            key=lambda limit: (limit.limit_type, _SCOPE_RANK[limit.scope], limit.target or ""),
        )

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        """The limits an order of ``ids`` is checked against (worked out once per ids)."""
        if not self.limits:
            return NO_LIMITS
        cache = self._pre_trade
        found = cache.get(ids)
        if found is None:
            if len(cache) >= _PRE_TRADE_CACHE_MAX:
                cache.clear()
            found = cache[ids] = pre_trade_limits(
                self.limits, ids.workflow_id, ids.bot_id, ids.strategy_id
            )
        return found

    def covering_limits(self, ids: ScopeIds) -> list[RiskLimit]:
        """Every limit of a scope ``ids`` belong to, by limit type, broadest scope first."""
        wanted = {
            (Scope.GLOBAL, None),
            (Scope.STRATEGY, ids.strategy_id),
            (Scope.BOT, ids.bot_id),
            (Scope.WORKFLOW, ids.workflow_id),
        }
        return [
            limit
            for limit in self.limit_list()
            if (limit.scope, limit.target) in wanted
            and (limit.scope is Scope.GLOBAL or limit.target is not None)
        ]


def deciding_halt(covering: Iterable[HaltState | None]) -> HaltState | None:
    """Of the halts ``covering`` an action, broadest scope first (``None`` where a scope has
    none), the one that decides: the most restrictive, the broadest on a tie. Every store
    that checks an intent applies this rule (the Redis script mirrors it)."""
    found: HaltState | None = None
    for halt in covering:
        if halt is not None and (found is None or halt.state.rank > found.state.rank):
            found = halt
    return found


def refusal(halt: HaltState) -> EmergencyHalted:
    """The error for an action ``halt`` does not admit."""
    return EmergencyHalted(
        halt.reason, scope=halt.scope.value, target=halt.target, state=halt.state.value
    )


@dataclass(frozen=True, slots=True)
class HaltCondition:
    """What must hold of the halt standing on a scope for a store to write over it or
    delete it, checked in the same atomic step as the write (a trigger's halt and lift:
    another replica may have changed the scope since the caller's view)."""

    stricter: bool = False
    """Write only if no halt stands there or the standing one is less restrictive."""
    over: str | None = None
    """Write or delete only if a halt stands there and its actor is this one."""
    since: float | None = None
    """Write or delete only if a halt stands there and has stood since this time: the
    halt a caller saw, not one made after it was lifted (a two-step resume's)."""
    no_looser: bool = False
    """Write only if no halt stands there or the standing one is not more restrictive: a
    halt that would loosen a scope (a bot's own, a two-step scope's) is a resume."""

    def admits(self, standing: HaltState | None, state: TradingState | None) -> bool:
        """Whether a write of ``state`` (``None``: a delete) may go over ``standing``."""
        if self.over is not None and (standing is None or standing.actor != self.over):
            return False
        if self.since is not None and (standing is None or standing.since != self.since):
            return False
        if (
            self.no_looser
            and standing is not None
            and state is not None
            and standing.state.rank > state.rank
        ):
            return False
        return not (
            self.stricter
            and standing is not None
            and state is not None
            and standing.state.rank >= state.rank
        )


@dataclass(frozen=True, slots=True)
class InFlightAction:
    """An action whose intent was committed and whose outcome is not yet recorded: it may
    still reach its venue. An executor reports these when it acknowledges a new state."""

    owner: str
    """The lease owner (executor) running it."""
    execution_id: str
    node_id: str
    client_order_id: str


@dataclass(frozen=True, slots=True)
class BarrierReport:
    """How a change that restricts trading was confirmed by the live executors."""

    version: int
    """The emergency state version every executor had to acknowledge."""
    live: tuple[str, ...] = ()
    """The lease owners live when the change was committed."""
    acknowledged: tuple[str, ...] = ()
    """Those that acknowledged ``version`` (or a later one) in time."""
    in_flight: tuple[InFlightAction, ...] = ()
    """What the acknowledging executors reported still in flight."""
    fenced: tuple[str, ...] = ()
    """Those that did not acknowledge in time: their leases were revoked, so their
    executions move to other owners and nothing more of theirs is written."""


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """What one risk check compared, and whether it breached."""

    limit_type: str
    value: float
    threshold: float
    direction: LimitDirection
    halts: bool
    """A breach halts trading globally (the caller's ``auto_halt`` and the limit's agree)."""

    @property
    def breached(self) -> bool:
        return self.direction.breached(self.value, self.threshold)

    def exceeded(self) -> RiskLimitExceeded:
        """The error a breach raises."""
        return RiskLimitExceeded(self.limit_type, self.value, self.threshold, halted=self.halts)

    def reason(self) -> str:
        """The breach, as a halt reason."""
        if self.direction is LimitDirection.BELOW:
            comparison = f"value {self.value} < threshold {self.threshold}"
        elif self.direction is LimitDirection.ABOVE:
            comparison = f"value {self.value} > threshold {self.threshold}"
        else:
            comparison = f"|value| {abs(self.value)} > threshold {self.threshold}"
        return f"risk limit {self.limit_type!r} breached: {comparison}"


def assess_limit(
    limits: Mapping[str, RiskLimit],
    limit_type: str,
    value: float,
    threshold: float | None,
    auto_halt: bool,
    ids: ScopeIds = NO_IDS,
    *,
    binding: bool = False,
) -> LimitVerdict:
    """Judge ``value`` against the limit on ``limit_type``.

    The configured limit is the strictest of those on ``limit_type`` of every scope
    ``ids`` belong to (global, strategy, bot, workflow). Its direction wins, else the
    type's in :data:`DEFAULT_DIRECTIONS`; with both a ``threshold`` given and a
    configured one, the stricter applies (a caller can tighten a limit, never loosen
    it); ``threshold=None`` uses the configured one. A limit configured not to halt
    overrides ``auto_halt``, and so does a trigger (a limit that names a state: it moves
    its own scope, never everything).
    With ``binding`` (a bot's own check, over mutual TLS) the caller cannot waive a
    configured halt either: a breach of a configured limit that halts halts, whatever
    ``auto_halt`` says.
    Raises ``InvalidRequest`` for a limit type that is no id or unknown, a missing
    threshold or a value that is not a finite number.
    """
    check_id("limit_type", limit_type)
    checked_value = checked_number("value", value)
    found = covering(limits, limit_type, ids.workflow_id, ids.bot_id, ids.strategy_id)
    configured = strictest(found)
    direction = (
        configured.direction if configured is not None else DEFAULT_DIRECTIONS.get(limit_type)
    )
    if direction is None:
        raise InvalidRequest(
            "limit_type", f"a configured limit type or one of {_KNOWN_TYPES}", limit_type
        )
    given = None if threshold is None else checked_number("threshold", threshold)
    if given is None and configured is None:
        raise InvalidRequest(
            "threshold", f"a number (no {limit_type!r} limit is configured)", threshold
        )
    used = _stricter_of(direction, given, configured)
    # A trigger (a limit that names a state) acts on its own scope through the evaluator:
    # a breach of its threshold alone never halts everything. What may halt is judged on
    # the given threshold and the limits that are not triggers, as if no trigger existed.
    plain = strictest(limit for limit in found if limit.state is None)
    halting = _stricter_of(direction, given, plain) if given is not None or plain else None
    halts = (
        bool(auto_halt)
        and (plain is None or plain.auto_halt)
        and halting is not None
        and direction.breached(checked_value, halting)
    ) or (
        binding
        and plain is not None
        and plain.auto_halt
        and direction.breached(checked_value, plain.threshold)
    )
    return LimitVerdict(limit_type, checked_value, used, direction, halts)


def _stricter_of(
    direction: LimitDirection, given: float | None, configured: RiskLimit | None
) -> float:
    """The stricter of a given threshold and a configured limit's (either may be absent,
    not both)."""
    if configured is None:
        assert given is not None
        return given
    return (
        configured.threshold if given is None else stricter(direction, given, configured.threshold)
    )


@dataclass(frozen=True, slots=True)
class LimitExplanation:
    """What applies to an action of ``ids`` (``EmergencyControl.explain_limits``)."""

    ids: ScopeIds
    state: TradingState
    halt: HaltState | None
    """The halt that decides ``state``, if any."""
    applicable: tuple[RiskLimit, ...]
    """Every limit of a scope ``ids`` belong to, by type, broadest scope first."""
    deciding: tuple[RiskLimit, ...]
    """Of those, the strictest of each type: the one that decides."""
    triggers: tuple[tuple[RiskLimit, TriggerProgress], ...]
    """Each applicable trigger and its progress (breaches in a row, peak, day anchor,
    last beat)."""


def checked_scope(scope: Scope | str, target: str | None) -> Scope:
    """``scope`` as a :class:`Scope` whose ``target`` fits it; ``InvalidRequest`` otherwise."""
    try:
        checked = Scope(scope)
    except (ValueError, TypeError):
        raise InvalidRequest("scope", f"one of {', '.join(Scope)}", scope) from None
    if checked is Scope.GLOBAL:
        if target is not None:
            raise InvalidRequest("target", "None for a global halt", target)
    else:
        check_id("target", target)
    return checked


def checked_scope_change(scope: Scope | str, target: str | None, reason: str, actor: str) -> Scope:
    """:func:`checked_scope` of a halt or resume whose reason is non-blank text and whose
    actor is text of at most ``ACTOR_MAX_LENGTH``; ``InvalidRequest`` naming the field."""
    checked = checked_scope(scope, target)
    require_text("reason", reason)
    check_text("actor", actor, max_length=ACTOR_MAX_LENGTH)
    return checked


def check_scope_ids(ids: ScopeIds) -> None:
    """``InvalidRequest`` naming the first of ``ids`` that is neither ``None`` nor an id."""
    check_id("workflow_id", ids.workflow_id, optional=True)
    check_id("bot_id", ids.bot_id, optional=True)
    check_id("strategy_id", ids.strategy_id, optional=True)


def checked_direction(limit_type: str, direction: LimitDirection | str | None) -> LimitDirection:
    """The direction of a limit being set: given, or the known type's default."""
    if direction is None:
        default = DEFAULT_DIRECTIONS.get(limit_type)
        if default is None:
            raise InvalidRequest(
                "direction",
                f"one of {_DIRECTIONS} (only {_KNOWN_TYPES} have a default)",
                direction,
            )
        return default
    try:
        return LimitDirection(direction)
    except (ValueError, TypeError):
        raise InvalidRequest("direction", f"one of {_DIRECTIONS}", direction) from None


def require_text(field: str, value: object) -> str:
    """``value`` if :func:`~tradeflow.domain.limits.check_text` accepts it and it is not
    blank; else ``InvalidRequest`` naming ``field``."""
    text = check_text(field, value)
    if not text.strip():
        raise InvalidRequest(field, "a non-blank text", value)
    return text


def checked_number(field: str, value: object) -> float:
    """``value`` as a float; ``InvalidRequest`` naming ``field`` unless a finite number."""
    checked = finite(value)
    if checked is None:
        raise InvalidRequest(field, "a finite number", value)
    return checked
