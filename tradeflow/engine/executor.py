"""The base executor: runs a workflow with no infrastructure at all.

    executor = WorkflowExecutor(workflow_definition)
    await executor.initialize()
    result = await executor.execute()

Orders go to an in-memory :class:`~tradeflow.adapters.memory.paper.PaperExchange`
unless another :class:`~tradeflow.domain.trading.Exchange` is given; risk nodes
check limits locally (a breach raises ``RiskLimitExceeded``; there is no halt
to engage without an emergency controller).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.clock import Clock, IdFactory, SystemClock, new_id
from tradeflow.domain.errors import EmergencyHalted, RiskLimitExceeded
from tradeflow.domain.records import ExecutionStatus, rfc3339
from tradeflow.engine.emergency import LocalRiskChecker
from tradeflow.engine.model import Workflow
from tradeflow.engine.nodes import default_registry
from tradeflow.engine.nodes.registry import ExecutionContext, HttpPool, NodeRegistry
from tradeflow.engine.resilience import BreakerRegistry
from tradeflow.engine.runner import Plan, RunOutcome, run_plan
from tradeflow.observability.logging import get_logger
from tradeflow.ports import Exchange, PriceFeed

__all__ = ["WorkflowExecutor", "build_result", "raise_if_halted"]


class WorkflowExecutor:
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
        self.definition = workflow
        self.registry = registry if registry is not None else default_registry
        self.clock = clock if clock is not None else SystemClock()
        self.id_factory = id_factory
        self.max_concurrency = max_concurrency
        self.plan: Plan | None = None
        self._prices = prices
        self._exchange = exchange
        self._http = HttpPool()
        self._breakers = BreakerRegistry(clock=self.clock)
        self._log = get_logger("tradeflow.executor")
        self._cancelled = asyncio.Event()

    async def initialize(self) -> None:
        """Validate the definition and plan the run (raises ``WorkflowValidationError``)."""
        if self.plan is not None:
            return
        self.plan = Plan.of(self.definition, self.registry)
        if self._prices is None:
            self._prices = ReplayPriceFeed(clock=self.clock)
        if self._exchange is None:
            self._exchange = PaperExchange(self._prices, clock=self.clock)

    async def close(self) -> None:
        """Release the HTTP client, if an ``api_call`` node created one."""
        await self._http.aclose()

    async def __aenter__(self) -> WorkflowExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cancel(self) -> None:
        """Stop the run in progress (or the next one, if none is): nodes already running
        finish, no further node starts, the status becomes ``cancelled``."""
        self._cancelled.set()

    async def execute(self) -> dict[str, Any]:
        """Run the workflow once and return the result dict."""
        await self.initialize()
        assert self.plan is not None and self._exchange is not None and self._prices is not None
        execution_id = self.id_factory()
        ctx = ExecutionContext(
            execution_id=execution_id,
            workflow_id="",
            correlation_id=execution_id,
            bot_id=None,
            strategy_id=None,
            exchange=self._exchange,
            prices=self._prices,
            risk=LocalRiskChecker(),
            http_pool=self._http,
            log=self._log,
        )
        started = self.clock.time()
        try:
            outcome = await run_plan(
                self.plan,
                ctx,
                clock=self.clock,
                breakers=self._breakers,
                max_concurrency=self.max_concurrency,
                cancelled=self._cancelled,
            )
        finally:
            self._cancelled = asyncio.Event()
        result = build_result(
            outcome,
            execution_id=execution_id,
            workflow_id=None,
            correlation_id=execution_id,
            started_at=started,
            finished_at=self.clock.time(),
        )
        raise_if_halted(outcome, result)
        return result


def build_result(
    outcome: RunOutcome,
    *,
    execution_id: str,
    workflow_id: str | None,
    correlation_id: str,
    started_at: float,
    finished_at: float,
) -> dict[str, Any]:
    """The result dict both executors return."""
    return {
        "status": outcome.status.value,
        "execution_id": execution_id,
        "workflow_id": workflow_id,
        "correlation_id": correlation_id,
        "results": outcome.results,
        "errors": outcome.errors,
        "skipped": outcome.skipped,
        "error": outcome.error,
        "started_at": rfc3339(started_at),
        "finished_at": rfc3339(finished_at),
        "duration_ms": (finished_at - started_at) * 1000.0,
    }


def raise_if_halted(outcome: RunOutcome, result: dict[str, Any]) -> None:
    """A halted run raises its halt (``EmergencyHalted`` / ``RiskLimitExceeded``) with
    ``.result`` set to the partial result, as the seed's examples expect."""
    if outcome.status is ExecutionStatus.HALTED and outcome.halt is not None:
        halt: EmergencyHalted | RiskLimitExceeded = outcome.halt
        halt.result = result
        raise halt
