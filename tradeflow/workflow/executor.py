"""Public path of the base executor (the seed's API): the engine's executor on an
in-memory runtime whose executions record nothing.

    executor = WorkflowExecutor(workflow_definition)
    await executor.initialize()
    result = await executor.execute()

Orders go to an in-memory :class:`~tradeflow.adapters.memory.paper.PaperExchange`
unless another :class:`~tradeflow.ports.Exchange` is given; risk nodes check limits
locally (a breach raises ``RiskLimitExceeded``; there is no halt to engage without an
emergency controller).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.clock import Clock, IdFactory, SystemClock, new_id
from tradeflow.engine.emergency import LocalRiskChecker
from tradeflow.engine.executor import Executor
from tradeflow.engine.model import Workflow
from tradeflow.engine.nodes.registry import HttpPool, NodeRegistry
from tradeflow.engine.resilience import BreakerRegistry
from tradeflow.engine.runtime import Runtime
from tradeflow.observability.logging import get_logger
from tradeflow.ports import Exchange, PriceFeed

__all__ = ["WorkflowExecutor"]


class WorkflowExecutor(Executor):
    """Runs one workflow definition, as many times as :meth:`execute` is called."""

    def __init__(
        self,
        workflow: Mapping[str, Any] | Workflow,
        *,
        registry: NodeRegistry | None = None,
        exchange: Exchange | None = None,
        prices: PriceFeed | None = None,
        clock: Clock | None = None,
        id_factory: IdFactory = new_id,
        max_concurrency: int = 16,
    ) -> None:
        clock = clock if clock is not None else SystemClock()
        prices = prices if prices is not None else ReplayPriceFeed(clock=clock)
        runtime = Runtime(
            exchange=exchange
            if exchange is not None
            else PaperExchange(prices, clock=clock, id_factory=id_factory),
            prices=prices,
            risk=LocalRiskChecker(),
            clock=clock,
            ids=id_factory,
            breakers=BreakerRegistry(clock=clock),
            http=HttpPool(),
            log=get_logger("tradeflow.executor"),
            durability=None,
        )
        super().__init__(workflow, runtime, registry=registry, max_concurrency=max_concurrency)

    async def close(self) -> None:
        """Release the HTTP client, if an ``api_call`` node created one."""
        await self.runtime.http.aclose()

    async def __aenter__(self) -> WorkflowExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
