"""The ports the engine depends on.

Embedded adapters (in-process bus, SQLite, local controller) and remote
adapters (NATS, gRPC clients) implement the same protocols; one contract test
suite runs against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from tradeflow.domain.codec import MAX_EVENTS_PAGE
from tradeflow.domain.emergency import (
    DEFAULT_AUDIT_PAGE,
    NO_IDS,
    EmergencySnapshot,
    HaltCondition,
    LimitExplanation,
    ScopeIds,
)
from tradeflow.domain.errors import TradeflowError
from tradeflow.domain.ownership import Claim, Fence, Heartbeat, Lease, OwnerInfo
from tradeflow.domain.records import (
    PRUNE_LIMIT_DEFAULT,
    AuditEntry,
    Checkpoint,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    HaltState,
    LimitDirection,
    PruneReport,
    RiskLimit,
    Scope,
    StateBatch,
)
from tradeflow.domain.risk import (
    NO_OPTIONS,
    Denial,
    LimitOptions,
    PreTradeLimits,
    TriggerProgress,
)
from tradeflow.domain.trading import Order, OrderEffect, OrderRequest, Quote, TradingState

__all__ = [
    "EmergencyControl",
    "EmergencyStore",
    "EventBus",
    "EventHandler",
    "Exchange",
    "LeaseRegistry",
    "PnlSource",
    "PriceFeed",
    "StateStore",
    "Subscription",
]

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
"""A subscriber: receives the contract's event dict (treat it as read-only)."""


class Subscription(Protocol):
    """Handle returned by :meth:`EventBus.subscribe`."""

    @property
    def dropped(self) -> int:
        """Events this subscriber lost because its buffer was full."""
        ...


class EventBus(Protocol):
    """Publishes events to subscribers without ever blocking the publisher."""

    def publish(self, event: Event) -> None:
        """Queue ``event`` for delivery; never blocks, never raises."""
        ...

    async def subscribe(self, topic: str, handler: EventHandler) -> Subscription:
        """Deliver every event of ``topic`` (``"workflow_events"``), from any publisher of
        the bus, to ``handler`` through a bounded buffer of its own, so a slow or failing
        handler delays no other (failures are logged and counted). Raises
        ``InvalidRequest`` for another topic or a handler that is not callable,
        ``UnavailableError`` once closed."""
        ...

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a subscriber; events still buffered for it are discarded."""
        ...

    def replay(
        self,
        *,
        after_sequence: int = 0,
        bot_id: str | None = None,
        strategy_id: str | None = None,
        workflow_id: str | None = None,
        execution_id: str | None = None,
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """``(position, event_dict)`` of the events kept after position ``after_sequence``
        (how many is the adapter's bound: JetStream's retention, the in-process bus's
        ``history``), oldest first, then live ones as they are published; resume by
        passing the last sequence seen. Ends only when the bus closes.

        Each given id must match; emergency events (about a scope, not a run) appear
        only when no bot, strategy or workflow id is given. Stop it with ``aclose()``.
        Raises ``InvalidRequest`` for a negative or non-integer ``after_sequence`` and,
        on first iteration, ``UnavailableError``.
        """
        ...

    async def last_sequence(self) -> int:
        """The position of the newest event (0 if none; the adapter's positions: NATS
        counts events inside its messages): replaying after it gives live events only."""
        ...

    def healthy(self) -> bool:
        """Whether published events reach their destination right now (health checks)."""
        ...

    async def close(self) -> None:
        """Deliver what is queued (bounded wait), then stop."""
        ...


class StateStore(Protocol):
    """Durable executions, per-node checkpoints and event history."""

    async def write(self, batch: StateBatch) -> None:
        """Persist ``batch`` atomically: all of it or none of it."""
        ...

    async def write_many(self, batches: Sequence[StateBatch]) -> list[TradeflowError | None]:
        """Group commit: each of ``batches`` (no two of one execution) persisted as
        :meth:`write` would, each on its own, in one round trip or transaction where the
        store can. One outcome per batch, in order: ``None`` when written, else the
        error that refused it (``LeaseLost``, ``EmergencyHalted``, ``InvalidRequest`` ...).
        Raises (``UnavailableError``) only when the store could not be reached: then any
        of them may or may not be written, and writing one again stores it once."""
        ...

    async def prune(self, ended_before: float, *, limit: int = PRUNE_LIMIT_DEFAULT) -> PruneReport:
        """Remove up to ``limit`` executions (oldest first) that ended before
        ``ended_before`` (epoch seconds) with their checkpoints and events, never one
        ``running`` or ``interrupted``, nor one with an unresolved intent
        (:func:`~tradeflow.domain.records.unresolved_intent`)."""
        ...

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """The record of one execution; raises ``ExecutionNotFound``."""
        ...

    async def find_by_request_id(self, request_id: str) -> ExecutionRecord | None:
        """The execution created for an idempotency key, if any."""
        ...

    async def list_executions(self, query: ExecutionQuery) -> ExecutionPage:
        """One page of the executions matching ``query``, newest first (``started_at``,
        then ``execution_id``); ``started_after``/``started_before`` bound ``started_at``
        as ``[after, before)``, ``limit`` is clamped to 1..``MAX_PAGE_SIZE``. Raises
        ``InvalidRequest`` (field ``page_token``) for a token the store did not issue."""
        ...

    async def get_checkpoints(self, execution_id: str) -> dict[str, Checkpoint]:
        """The latest checkpoint of each node of an execution, by node id (empty if none)."""
        ...

    async def read_events(
        self, *, after: int = 0, execution_id: str | None = None, limit: int = MAX_EVENTS_PAGE
    ) -> Sequence[tuple[int, Event]]:
        """History: ``(cursor, event)`` pairs with cursor > ``after``, oldest first, at
        most ``limit`` (a store clamps it to 1..``MAX_EVENTS_PAGE``). A cursor is an int
        that grows with every event stored: pass the last one back as ``after`` to poll."""
        ...

    async def last_sequence(self, execution_id: str) -> int:
        """The highest event ``sequence`` recorded for an execution (0 if none), where
        its resumed run continues numbering."""
        ...

    # Ownership (domain.ownership): the store is the one authority on who runs what.
    # ``write`` refuses a batch whose ``fence`` is not the live lease the execution
    # records (``LeaseLost``), in the same atomic step that would have written it.

    async def acquire_lease(self, info: OwnerInfo, ttl: float) -> Lease:
        """A new lease for ``info.owner`` with a fresh epoch (larger than every epoch
        granted before), live for ``ttl`` seconds unless renewed; replaces any lease
        that owner held (whose executions then are orphans)."""
        ...

    async def renew_lease(self, lease: Lease) -> Heartbeat:
        """Extend ``lease`` by its ttl and collect the cancellations requested of its
        executions; raises ``LeaseLost`` once it lapsed or was replaced."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """End ``lease`` now (its executions that are still ``running`` become orphans at
        once); no error if it already lapsed."""
        ...

    async def claim(self, execution_id: str, lease: Lease, *, takeover: bool = False) -> Claim:
        """Make ``lease`` the owner of an execution not running under another live lease:
        an orphan (``running`` with a lapsed owner, or ``interrupted``), or, unless
        ``takeover``, an ended one that did not complete (a manual resume). The status
        becomes ``running`` in the same atomic step (so a claimer dying before it writes
        counts as a death), and of two concurrent claims one wins. Raises
        ``ExecutionNotFound``; ``OwnerAlive`` naming the live owner; ``InvalidRequest``
        (``execution_id``) for a completed execution, or any ended one when
        ``takeover``; ``LeaseLost`` if ``lease`` is not live."""
        ...

    async def orphans(self, limit: int) -> list[ExecutionRecord]:
        """Up to ``limit`` executions ``interrupted``, or ``running`` with an owner whose
        lease is not live (oldest first), for a live owner to claim."""
        ...

    async def request_cancel(self, execution_id: str) -> ExecutionRecord:
        """Ask an execution's owner to cancel it: delivered with that lease's next
        heartbeat, and kept on the execution, so that whoever claims it next ends it
        ``cancelled`` (``Claim.cancel_requested``). An orphan (no live owner) is ended
        ``cancelled`` here. Returns the record as it stands; raises ``ExecutionNotFound``."""
        ...

    async def close(self) -> None:
        """Flush and release the store."""
        ...


class LeaseRegistry(Protocol):
    """Who holds a live lease, and revoking one: how a halt barrier fences an executor
    that did not acknowledge (the state stores implement it)."""

    async def live_leases(self) -> list[Fence]:
        """Every lease live now, as ``(owner, epoch)``."""
        ...

    async def revoke_lease(self, fence: Fence) -> bool:
        """End the lease ``fence`` names now, as if it had lapsed (its next write or
        renewal raises ``LeaseLost``, its running executions become orphans); False if
        that lease was no longer live."""
        ...


class EmergencyControl(Protocol):
    """Halt/resume by scope, risk limits, and the pre-action check."""

    def ensure_trading_allowed(self, ids: ScopeIds) -> None:
        """Raise ``EmergencyHalted`` unless an order opening a position may start for
        ``ids``: :meth:`ensure_allowed` of ``OrderEffect.OPENS``."""
        ...

    def ensure_allowed(self, ids: ScopeIds, effect: OrderEffect) -> None:
        """Raise ``EmergencyHalted`` unless the trading state of ``ids`` admits ``effect``.
        A state that cannot be confirmed counts as ``CANCEL_ONLY`` for every scope (fail
        closed: only cancels and effect-free actions pass). Reads a local view: no round
        trip."""
        ...

    def trading_state(self, ids: ScopeIds) -> TradingState:
        """The most restrictive state covering ``ids``; ``CANCEL_ONLY`` when the state
        cannot be confirmed."""
        ...

    def active_halt(self, ids: ScopeIds) -> HaltState | None:
        """The halt that decides what ``ids`` may do (the most restrictive covering them,
        the broadest on a tie), if any; raises ``EmergencyHalted`` when the state cannot be
        confirmed."""
        ...

    async def halt(
        self,
        scope: Scope,
        target: str | None = None,
        *,
        reason: str,
        actor: str = "unknown",
        state: TradingState = TradingState.HALTED,
        cancel_orders: bool = False,
    ) -> HaltState:
        """Restrict trading for ``scope``/``target`` (``None`` for global) to ``state``;
        re-halting updates the reason and state. ``cancel_orders`` asks for every resting
        order of the scope to be cancelled. When it returns the change is committed: no
        action's intent in the scope that the state refuses commits after it. Raises
        ``InvalidRequest`` naming a bad scope, target, reason, actor or state (``ACTIVE``
        is a resume), and ``CapacityExceeded`` for a new halt of a scope kind that has
        ``HALTS_PER_SCOPE_KIND_MAX`` (a global halt never)."""
        ...

    async def resume(
        self, scope: Scope, target: str | None = None, *, reason: str, actor: str = "unknown"
    ) -> bool:
        """Lift the halt on ``scope``/``target``; False (and no audit entry) if there was none."""
        ...

    async def record_cancel_on_halt(
        self,
        scope: Scope,
        target: str | None,
        *,
        execution_id: str,
        status: str,
        cancelled: Sequence[str],
    ) -> None:
        """Audit (action ``cancel_on_halt``) what the cancel-on-halt job of the halt on
        ``scope``/``target`` did: its execution, final status and the client order ids it
        cancelled. ``InvalidRequest`` naming a bad field."""
        ...

    async def halts(self) -> list[HaltState]:
        """Every active halt, broadest scope first."""
        ...

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None:
        """Raise ``RiskLimitExceeded`` if ``value`` breaches the limit (threshold given, or
        the configured one), halting globally first when ``auto_halt``; ``ids`` are those of
        the action checked (audited and published with a breach). ``InvalidRequest`` for a
        bad call."""
        ...

    async def set_risk_limit(
        self,
        limit_type: str,
        threshold: float,
        direction: LimitDirection | None = None,
        *,
        auto_halt: bool = True,
        actor: str = "unknown",
        scope: Scope = Scope.GLOBAL,
        target: str | None = None,
        options: LimitOptions = NO_OPTIONS,
    ) -> RiskLimit:
        """Configure (or replace, audited) the limit on ``limit_type`` of ``scope``/``target``
        (see :class:`~tradeflow.domain.risk.LimitOptions` for the options and
        :mod:`tradeflow.domain.risk` for what each type checks); ``direction`` defaults to
        the known one for the type and is required for others (``InvalidRequest``); a new
        limit past ``RISK_LIMITS_MAX`` is ``CapacityExceeded``. Executors apply a change
        to the orders they start after it reaches them (pushed with the trading state)."""
        ...

    async def delete_risk_limit(
        self,
        limit_type: str,
        scope: Scope = Scope.GLOBAL,
        target: str | None = None,
        *,
        actor: str = "unknown",
    ) -> bool:
        """Remove a limit (and a trigger's progress), audited; False if there was none."""
        ...

    async def list_risk_limits(self) -> list[RiskLimit]:
        """Every configured limit, by key (type, then scope)."""
        ...

    async def explain_limits(self, ids: ScopeIds) -> LimitExplanation:
        """What applies to an action of ``ids``: its trading state and deciding halt,
        every limit of its scopes, the strictest of each type, and each trigger's
        progress. ``InvalidRequest`` for malformed ids."""
        ...

    async def heartbeat(self, scope: Scope, target: str | None = None) -> float:
        """A beat of the dead-man's switch of ``scope``/``target``: returns when it lapses
        (epoch seconds) unless beaten again. ``InvalidRequest`` (field ``scope``) when no
        ``heartbeat`` limit is configured there."""
        ...

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        """The limits an order of ``ids`` is checked against, from the local view (no
        round trip); raises ``EmergencyHalted`` when the state cannot be confirmed."""
        ...

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None:
        """Audit (action ``order_denied``) an order a pre-trade check denied."""
        ...

    async def audit_entries(self, *, limit: int = DEFAULT_AUDIT_PAGE) -> list[AuditEntry]:
        """Newest audit entries first; ``limit`` is clamped to 1..``MAX_AUDIT_PAGE``."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...


class EmergencyStore(Protocol):
    """Where :class:`~tradeflow.engine.emergency.EmergencyController` keeps halts, risk
    limits and the audit log.

    Audit entries passed in carry ``entry_id=0``: the store assigns the id.
    Each write method changes the state and appends its audit entry atomically,
    and is visible in :meth:`snapshot` once it returns.
    """

    def snapshot(self) -> EmergencySnapshot:
        """The current state, from memory (called before every action, so cheap); raises
        ``UnavailableError`` when the state cannot be confirmed."""
        ...

    async def save_halt(
        self, halt: HaltState, audit: AuditEntry, condition: HaltCondition | None = None
    ) -> HaltState | None:
        """Insert or update the halt on ``halt.scope``/``halt.target``, keeping the stored
        ``since`` of an existing one; returns the halt as stored. With ``condition``,
        checked against the standing halt in the same atomic step: ``None`` (nothing
        written, no audit entry) when it does not hold."""
        ...

    async def delete_halt(
        self,
        scope: Scope,
        target: str | None,
        audit: AuditEntry,
        condition: HaltCondition | None = None,
    ) -> bool:
        """Remove the halt and append ``audit``; False (and no audit entry) if there was
        none, or ``condition`` (checked in the same atomic step) does not hold."""
        ...

    async def save_risk_limit(self, limit: RiskLimit, audit: AuditEntry) -> None:
        """Insert or replace the limit ``limit.key`` names."""
        ...

    async def delete_risk_limit(self, key: str, audit: AuditEntry) -> bool:
        """Remove the limit ``key`` names and its trigger progress, and append ``audit``;
        False (and no audit entry) if there was none."""
        ...

    async def trigger_progress(self, keys: Sequence[str]) -> dict[str, TriggerProgress]:
        """The stored progress of the triggers ``keys`` name (absent: never evaluated)."""
        ...

    async def save_trigger_progress(
        self, key: str, progress: TriggerProgress, expected_version: int
    ) -> bool:
        """Store ``progress`` (its ``version`` is ``expected_version + 1``) for trigger
        ``key`` if the stored version is ``expected_version`` (0: none stored) and the
        limit still exists; False (nothing written) otherwise: compare-and-set, so two
        evaluators never both count one evaluation."""
        ...

    async def append_audit(self, audit: AuditEntry) -> None:
        """Append an audit entry that changes no state (a risk breach)."""
        ...

    async def audit_entries(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        ...

    async def close(self) -> None:
        """Release the store; later snapshots raise ``UnavailableError``."""
        ...


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

    async def open_orders(self, venue: str, scope: Scope, target: str | None) -> list[Order]:
        """The resting orders on ``venue`` placed for ``scope``/``target`` (by the scope ids
        the order request carried; every one for ``Scope.GLOBAL``)."""
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


class PnlSource(Protocol):
    """Where loss triggers read a scope's equity: the exchange ledger."""

    async def equity(self, scope: Scope, target: str | None) -> float:
        """Realized P&L minus fees of every fill of ``scope``/``target`` (all of them for
        global) since the ledger began, plus its open positions marked to each symbol's
        last fill price (quote currency)."""
        ...


class PriceFeed(Protocol):
    """Where ``price_feed`` nodes and the paper exchange read prices."""

    async def quote(self, venue: str, symbol: str) -> Quote:
        """The next quote for ``symbol`` on ``venue``."""
        ...

    def last_quote(self, venue: str, symbol: str) -> Quote | None:
        """The quote most recently returned by :meth:`quote`, if any."""
        ...
