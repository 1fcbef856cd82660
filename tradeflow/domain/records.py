"""Plain records shared by the engine, the ports and every adapter.

They are frozen and slotted: cheap to build on the hot path, safe to share
between the engine and concurrent subscribers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final, NamedTuple

from tradeflow.domain.trading import OrderEffect, TradingState

__all__ = [
    "SCHEMA_VERSION",
    "ActionGuard",
    "AuditEntry",
    "Checkpoint",
    "CheckpointState",
    "Event",
    "EventType",
    "ExecutionPage",
    "ExecutionQuery",
    "ExecutionRecord",
    "ExecutionStatus",
    "HaltState",
    "LimitDirection",
    "RiskLimit",
    "Scope",
    "StateBatch",
    "limit_key",
    "parse_rfc3339",
    "rfc3339",
]

SCHEMA_VERSION = 1


class EventType(StrEnum):
    """Every event type tradeflow publishes (the contract's list)."""

    EXECUTION_STARTED = "execution_started"
    EXECUTION_COMPLETED = "execution_completed"
    EXECUTION_FAILED = "execution_failed"
    EXECUTION_HALTED = "execution_halted"
    EXECUTION_CANCELLED = "execution_cancelled"
    EXECUTION_INTERRUPTED = "execution_interrupted"
    NODE_STARTED = "node_started"
    NODE_COMPLETED = "node_completed"
    NODE_FAILED = "node_failed"
    NODE_SKIPPED = "node_skipped"
    NODE_RETRYING = "node_retrying"
    CIRCUIT_OPENED = "circuit_opened"
    CIRCUIT_HALF_OPEN = "circuit_half_open"
    CIRCUIT_CLOSED = "circuit_closed"
    EMERGENCY_HALTED = "emergency_halted"
    EMERGENCY_RESUMED = "emergency_resumed"
    RISK_LIMIT_EXCEEDED = "risk_limit_exceeded"
    ORDER_DENIED = "order_denied"


def rfc3339(ts: float) -> str:
    """Render epoch seconds as RFC 3339 UTC with microseconds, e.g. ``2026-01-02T03:04:05.000006Z``."""
    second = int(ts // 1)
    micros = round((ts - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    return f"{_second_prefix(second)}.{micros:06d}Z"


def parse_rfc3339(text: str) -> float:
    """Inverse of :func:`rfc3339`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    # Events come in bursts within one second: formatting the date once per
    # second instead of once per event takes ~2.5 us off every event.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_NO_DATA: dict[str, Any] = {}


class Event(NamedTuple):
    """One event, the same on every transport; :meth:`to_dict` gives the contract JSON.

    A named tuple rather than a frozen dataclass: the engine builds one per node
    transition, and a tuple is built four times faster. Treat ``data`` as read-only.
    """

    type: str
    event_id: str
    sequence: int
    timestamp: float
    """Epoch seconds (UTC); rendered as RFC 3339 in :meth:`to_dict`."""
    correlation_id: str | None = None
    execution_id: str | None = None
    workflow_id: str | None = None
    bot_id: str | None = None
    strategy_id: str | None = None
    node_id: str | None = None
    data: dict[str, Any] = _NO_DATA

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object (WebSocket-ready)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "type": self.type,
            "event_id": self.event_id,
            "sequence": self.sequence,
            "timestamp": rfc3339(self.timestamp),
            "correlation_id": self.correlation_id,
            "execution_id": self.execution_id,
            "workflow_id": self.workflow_id,
            "bot_id": self.bot_id,
            "strategy_id": self.strategy_id,
            "node_id": self.node_id,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`."""
        ts = raw["timestamp"]
        if isinstance(ts, str):
            ts = parse_rfc3339(ts)
        return cls(
            type=raw["type"],
            event_id=raw["event_id"],
            sequence=int(raw["sequence"]),
            timestamp=float(ts),
            correlation_id=raw.get("correlation_id"),
            execution_id=raw.get("execution_id"),
            workflow_id=raw.get("workflow_id"),
            bot_id=raw.get("bot_id"),
            strategy_id=raw.get("strategy_id"),
            node_id=raw.get("node_id"),
            data=dict(raw.get("data") or {}),
        )


class ExecutionStatus(StrEnum):
    """Lifecycle of an execution: ``running`` and ``interrupted`` (stopped by SIGTERM or
    Ctrl-C, resumable) are not final; the other four are, and are the seed's result
    statuses."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    HALTED = "halted"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self not in _NOT_FINAL


_NOT_FINAL = frozenset({ExecutionStatus.RUNNING, ExecutionStatus.INTERRUPTED})


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """What the state store keeps about one execution."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    started_at: float
    definition: dict[str, Any]
    correlation_id: str
    bot_id: str | None = None
    strategy_id: str | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    request_id: str | None = None
    owner: str | None = None
    """The lease holder running it (set by the store from the write's fence or a claim)."""
    epoch: int = 0
    """The owner's lease epoch when it took the execution (0: never owned)."""
    takeovers: int = 0
    """How many times an owner died while running it."""
    owner_live: bool = False
    """Read-only, computed by the store when read: the owner's lease is live."""


class CheckpointState(StrEnum):
    """Per-node progress: ``intent`` is the write-ahead record of an action."""

    INTENT = "intent"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"


class Checkpoint(NamedTuple):
    """Progress of one node of one execution (a named tuple: built once per node)."""

    execution_id: str
    node_id: str
    state: CheckpointState
    updated_at: float
    outputs: dict[str, Any] | None = None
    error: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class StateBatch:
    """Everything one atomic write persists: an execution upsert, checkpoints, events."""

    execution: ExecutionRecord | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    events: tuple[Event, ...] = ()
    fence: tuple[str, int] | None = None
    """``(owner, epoch)`` (a ``domain.ownership.Fence``): the store writes the batch only
    if that lease is live and the execution records that epoch (or is new, and then
    records it). ``None``: only for an execution no lease owns."""
    guard: ActionGuard | None = None
    """The batch carries an action's write-ahead intent: the store writes it only if the
    trading state of the guard's scopes, read in the same transaction or script, admits
    the guard's effect, and otherwise refuses the whole batch with ``EmergencyHalted``."""


PRUNE_LIMIT_DEFAULT: Final = 1000
"""Executions one prune call removes at most when not told (``limit`` 0)."""
PRUNE_LIMIT_MAX: Final = 10_000
"""The most executions one prune call may be asked to remove."""


def unresolved_intent(checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` leaves an action's outcome unknown: its latest state is the
    write-ahead intent, or a failure after it (the journal keeps the intent's
    ``client_order_id`` on such a failure). The venue may hold that order, so the
    execution is kept by retention until someone resolves it."""
    return checkpoint.state is CheckpointState.INTENT or (
        checkpoint.state is CheckpointState.FAILED
        and checkpoint.outputs is not None
        and "client_order_id" in checkpoint.outputs
    )


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one prune call did (:meth:`tradeflow.ports.StateStore.prune`)."""

    removed: int
    """Executions removed, with their checkpoints and events."""
    kept: int
    """Executions that ended before the horizon but were kept for an unresolved intent."""
    more: bool
    """Whether another call may remove more (the ``limit`` was reached)."""


@dataclass(frozen=True, slots=True)
class ActionGuard:
    """What the store checks before committing an action's intent: its scope ids (the
    halts that may cover it) and what it does to exposure."""

    workflow_id: str | None
    bot_id: str | None
    strategy_id: str | None
    effect: OrderEffect


@dataclass(frozen=True, slots=True)
class ExecutionQuery:
    """Filter and page for listing executions; ``None`` fields do not filter."""

    workflow_id: str | None = None
    bot_id: str | None = None
    strategy_id: str | None = None
    status: ExecutionStatus | None = None
    started_after: float | None = None
    started_before: float | None = None
    limit: int = 50
    page_token: str | None = None
    """Opaque token from a previous :class:`ExecutionPage`."""


@dataclass(frozen=True, slots=True)
class ExecutionPage:
    """One page of executions, newest first."""

    executions: tuple[ExecutionRecord, ...]
    next_page_token: str | None = None


class Scope(StrEnum):
    """What a halt covers; a global halt covers everything."""

    GLOBAL = "global"
    STRATEGY = "strategy"
    BOT = "bot"
    WORKFLOW = "workflow"


@dataclass(frozen=True, slots=True)
class HaltState:
    """An active halt."""

    scope: Scope
    target: str | None
    """The strategy, bot or workflow id halted; ``None`` for a global halt."""
    reason: str
    actor: str
    since: float
    state: TradingState = TradingState.HALTED
    """What the scope still admits (a halt in the seed's sense is ``HALTED``)."""
    cancel_orders: bool = False
    """The halt asked for every resting order of the scope to be cancelled (a job a
    leased executor runs, reported in the audit)."""


class LimitDirection(StrEnum):
    """Which side of the threshold is a breach."""

    ABOVE = "above"
    """Breach when value > threshold (e.g. order notional)."""
    BELOW = "below"
    """Breach when value < threshold (e.g. daily P&L against -500)."""
    ABS_ABOVE = "abs_above"
    """Breach when abs(value) > threshold (e.g. net position either side)."""

    def breached(self, value: float, threshold: float) -> bool:
        """Whether ``value`` breaches ``threshold`` in this direction."""
        if self is LimitDirection.ABOVE:
            return value > threshold
        if self is LimitDirection.BELOW:
            return value < threshold
        return abs(value) > threshold


@dataclass(frozen=True, slots=True)
class RiskLimit:
    """A configured risk limit of one scope (``global`` unless a strategy, bot or workflow
    is named); :mod:`tradeflow.domain.risk` says what each limit type checks.

    The fields after ``updated_by`` serve the pre-trade checks and the triggers; the
    defaults leave a limit as the seed knew it (global, checked when asked)."""

    limit_type: str
    threshold: float
    direction: LimitDirection
    auto_halt: bool = True
    updated_at: float = 0.0
    updated_by: str = ""
    scope: Scope = Scope.GLOBAL
    target: str | None = None
    """The strategy, bot or workflow id the limit applies to; ``None`` for global."""
    window: float | None = None
    """``order_rate``: seconds in which ``threshold`` orders may be placed (a token bucket
    of ``threshold`` tokens refilled over ``window``)."""
    state: TradingState | None = None
    """A trigger (``daily_loss``, ``max_drawdown``, ``heartbeat``): the trading state a
    breach moves the scope to; ``None``: not a trigger (checked only when asked)."""
    consecutive: int = 1
    """A trigger acts after this many breaching evaluations in a row (debounce)."""
    timezone: str = "UTC"
    """``daily_loss``: the IANA time zone of the trading day."""
    reset_time: str = "00:00"
    """``daily_loss``: the local ``HH:MM`` at which the trading day starts."""
    lift_on_reset: bool = False
    """``daily_loss``: at the next day's start, lift the state this trigger set."""
    cancel_orders: bool = False
    """A trigger: also cancel the scope's resting orders when it acts."""

    @property
    def key(self) -> str:
        """What identifies the limit: its type for a global one (as stored before limits
        had scopes), ``<type>@<scope>:<target>`` otherwise."""
        return limit_key(self.limit_type, self.scope, self.target)


def limit_key(limit_type: str, scope: Scope, target: str | None) -> str:
    """The :attr:`RiskLimit.key` of ``limit_type`` on ``scope``/``target``."""
    if scope is Scope.GLOBAL:
        return limit_type
    return f"{limit_type}@{scope.value}:{target}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to emergency state or risk limits: who, why, scope, values."""

    entry_id: int
    at: float
    actor: str
    action: str
    """``halt``, ``resume``, ``risk_breach`` or ``set_risk_limit``."""
    scope: Scope | None
    target: str | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    """The values of the change, and who asked for it: ``principal`` (``role/name`` of
    the authenticated caller, ``system/tradeflow`` for the process's own work), ``role``
    and ``peer`` (its network address, empty in-process), added as the entry is stored
    (:meth:`attributed`)."""

    def attributed(self, principal: str, role: str, peer: str) -> AuditEntry:
        """This entry with its caller in ``details``."""
        who = {"principal": principal, "role": role, "peer": peer}
        return replace(self, details={**self.details, **who})

    @property
    def principal(self) -> str:
        return str(self.details.get("principal", ""))

    @property
    def role(self) -> str:
        return str(self.details.get("role", ""))

    @property
    def peer(self) -> str:
        return str(self.details.get("peer", ""))
