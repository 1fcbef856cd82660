"""What executions run on: the ports, and the process-wide resources their nodes share.

The composition root (:mod:`tradeflow.app.infrastructure`) or a public executor builds
one; the engine only reads it, so it imports no adapter. It lives here rather than in
:mod:`tradeflow.ports` because breakers, the HTTP pool and the risk checker are the
engine's own types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from tradeflow.domain.clock import Clock, IdFactory
    from tradeflow.engine.nodes.registry import HttpPool, RiskChecker
    from tradeflow.engine.ownership import LeaseKeeper
    from tradeflow.engine.resilience import BreakerRegistry
    from tradeflow.observability.metrics import Metrics
    from tradeflow.ports import EmergencyControl, EventBus, Exchange, PriceFeed, StateStore

__all__ = ["Durability", "Runtime"]


@dataclass(frozen=True, slots=True)
class Durability:
    """What a durable execution adds: it emits events, persists its progress under its
    owner's lease, asks the emergency controller before each action and counts itself in
    the metrics."""

    events: EventBus
    state: StateStore
    emergency: EmergencyControl
    metrics: Metrics
    owner: LeaseKeeper
    """This process's lease: every write carries its fence, every action checks it."""
    max_takeovers: int = 3
    """A resumed execution whose owners died more often than this ends ``failed``."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """The ports and shared resources of the executions of one process."""

    exchange: Exchange
    prices: PriceFeed
    risk: RiskChecker
    """What risk nodes call: the emergency controller, or local checks that halt nothing."""
    clock: Clock
    ids: IdFactory
    breakers: BreakerRegistry
    http: HttpPool
    log: FilteringBoundLogger
    durability: Durability | None
    """None: executions record nothing (the base executor's null journal)."""
