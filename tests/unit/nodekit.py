"""Test kit for node tests: a real execution context over paper trading, plus fakes.

:func:`node_kit` builds an :class:`~tradeflow.engine.nodes.ExecutionContext`
around a :class:`PaperExchange` on a :class:`ReplayPriceFeed`, a
:class:`RecordingRisk` checker, a real (lazily built) ``httpx.AsyncClient`` and a structlog
logger that captures what it logs. :func:`make_block`, :func:`run_node` and
:func:`problems` drive a node type the way validation and the engine would.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import astuple, dataclass, field
from typing import Any

import structlog
from kit import ManualClock
from structlog.testing import CapturingLogger

from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.clock import new_id
from tradeflow.domain.emergency import NO_IDS, ScopeIds
from tradeflow.domain.errors import RiskLimitExceeded
from tradeflow.domain.records import LimitDirection
from tradeflow.domain.risk import NO_LIMITS, Denial, PreTradeLimits
from tradeflow.engine.model import Block, NodeConfig, Ref
from tradeflow.engine.nodes import ExecutionContext, NodeSpec, default_registry
from tradeflow.engine.nodes.registry import HttpPool

__all__ = [
    "EXECUTION_ID",
    "NodeKit",
    "RecordingRisk",
    "RiskCall",
    "make_block",
    "node_kit",
    "problems",
    "run_node",
    "spec",
]

EXECUTION_ID = "exec-1"


@dataclass(frozen=True, slots=True)
class RiskCall:
    """One ``check_risk_limit`` call as the risk checker received it."""

    limit_type: str
    value: float
    threshold: float | None
    auto_halt: bool
    workflow_id: str | None
    bot_id: str | None
    strategy_id: str | None


class RecordingRisk:
    """A hand-written ``RiskChecker``: records every call and raises
    ``RiskLimitExceeded`` on a breach, judged by :attr:`DIRECTIONS`."""

    DIRECTIONS: Mapping[str, LimitDirection] = {
        "max_position": LimitDirection.ABS_ABOVE,
        "max_order_notional": LimitDirection.ABOVE,
        "daily_loss": LimitDirection.BELOW,
    }

    def __init__(self) -> None:
        self.calls: list[RiskCall] = []
        self.halted = False
        self.limits: PreTradeLimits = NO_LIMITS
        self.denials: list[tuple[Denial, str]] = []

    def pre_trade_limits(self, ids: ScopeIds) -> PreTradeLimits:
        return self.limits

    async def record_order_denied(
        self,
        denial: Denial,
        *,
        ids: ScopeIds,
        execution_id: str,
        node_id: str,
        client_order_id: str,
    ) -> None:
        self.denials.append((denial, client_order_id))

    async def check_risk_limit(
        self,
        limit_type: str,
        value: float,
        threshold: float | None = None,
        auto_halt: bool = True,
        *,
        ids: ScopeIds = NO_IDS,
    ) -> None:
        self.calls.append(RiskCall(limit_type, value, threshold, auto_halt, *astuple(ids)))
        assert threshold is not None, "the built-in risk nodes always pass a threshold"
        direction = self.DIRECTIONS[limit_type]
        breached = (
            value > threshold
            if direction is LimitDirection.ABOVE
            else value < threshold
            if direction is LimitDirection.BELOW
            else abs(value) > threshold
        )
        if breached:
            self.halted = self.halted or auto_halt
            raise RiskLimitExceeded(limit_type, value, threshold, halted=auto_halt)


@dataclass(slots=True)
class NodeKit:
    """What a node test holds: the context and the real objects behind it."""

    ctx: ExecutionContext
    exchange: PaperExchange
    prices: ReplayPriceFeed
    risk: RecordingRisk
    clock: ManualClock
    logs: CapturingLogger = field(repr=False)


DEFAULT_TICKS: Mapping[tuple[str, str], Sequence[tuple[float, float]]] = {
    ("paper", "BTC/USDT"): [(100.0, 102.0), (110.0, 112.0), (90.0, 92.0)],
}
"""Small, round prices so expected fills are obvious."""


@asynccontextmanager
async def node_kit(
    ticks: Mapping[tuple[str, str], Sequence[tuple[float, float]]] = DEFAULT_TICKS,
    *,
    http_pool: HttpPool | None = None,
    **exchange_options: Any,
) -> AsyncIterator[NodeKit]:
    """A fresh kit; ``exchange_options`` go to :class:`PaperExchange`. ``http_pool``
    (closed with the kit) replaces the default one, which allows no private address."""
    clock = ManualClock()
    prices = ReplayPriceFeed(ticks, clock=clock)
    exchange = PaperExchange(prices, clock=clock, id_factory=new_id, **exchange_options)
    risk = RecordingRisk()
    logs = CapturingLogger()
    logger = structlog.wrap_logger(
        logs, processors=[], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    http_pool = http_pool if http_pool is not None else HttpPool()
    try:
        ctx = ExecutionContext(
            execution_id=EXECUTION_ID,
            workflow_id="wf-1",
            correlation_id="corr-1",
            bot_id="bot-1",
            strategy_id="strat-1",
            exchange=exchange,
            prices=prices,
            risk=risk,
            http_pool=http_pool,
            log=logger,
        )
        yield NodeKit(ctx, exchange, prices, risk, clock, logs)
    finally:
        await http_pool.aclose()


def spec(category: str, type_: str) -> NodeSpec:
    """The registered spec of a built-in node type."""
    found = default_registry.get(category, type_)
    assert found is not None, f"{category}/{type_} is not registered"
    return found


def _with_defaults(node_spec: NodeSpec, properties: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {name: prop.default for name, prop in node_spec.properties.items()}
    return {**defaults, **properties}


def make_block(
    category: str,
    type_: str,
    properties: Mapping[str, Any] | None = None,
    *,
    inputs: Iterable[str] = (),
    block_id: str = "b1",
) -> Block:
    """A block as validation would produce it: defaults filled, ``inputs`` wired."""
    node_spec = spec(category, type_)
    props = _with_defaults(node_spec, properties or {})
    return Block(
        id=block_id,
        name=block_id,
        category=category,
        type=type_,
        properties=props,
        config=NodeConfig(),
        inputs={name: Ref("upstream", name) for name in inputs},
        outputs=node_spec.output_names(props),
        index=0,
    )


async def run_node(kit: NodeKit, block: Block, **inputs: Any) -> dict[str, Any]:
    """Run ``block`` with ``inputs``; checks it returned every output its spec names."""
    node_spec = spec(block.category, block.type)
    outputs = await node_spec.run(kit.ctx, block, inputs)
    missing = set(node_spec.output_names(block.properties)) - set(outputs)
    assert not missing, f"{block.type} did not return outputs {sorted(missing)}"
    return outputs


def problems(
    category: str,
    type_: str,
    properties: Mapping[str, Any] | None = None,
    wired: Iterable[str] = (),
) -> list[tuple[str, str, str]]:
    """What the node type's cross-field check says about these properties and wires."""
    node_spec = spec(category, type_)
    if node_spec.check is None:
        return []
    return node_spec.check(_with_defaults(node_spec, properties or {}), frozenset(wired))
