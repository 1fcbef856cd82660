"""Every code example of the seed's MIGRATION_GUIDE.md, as written there (import root
``tradeflow.`` for ``src.``), as functions of the environment they create.

The unit suite runs them with ``"development"``; the integration suite runs the
same functions with ``"production"`` against the real services. Where the seed
waits with ``asyncio.sleep`` for events, these wait for delivery instead.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kit import eventually

from tradeflow.infrastructure.emergency import EmergencyHalted, RiskLimitExceeded
from tradeflow.infrastructure.factory import Infrastructure
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor
from tradeflow.workflow.executor import WorkflowExecutor


async def wait_for_events(infra: Infrastructure, events: list[dict[str, Any]], kind: str) -> None:
    """Wait until an event of ``kind`` has been delivered to ``events``: the seed's handlers
    only append to lists (as the seed wrote them), so there is no event to wait on."""
    await eventually(lambda: any(e["type"] == kind for e in events), f"{kind} was delivered")


async def step1_before(workflow_definition: dict[str, Any]) -> dict[str, Any]:
    executor = WorkflowExecutor(workflow_definition)
    await executor.initialize()
    result = await executor.execute()
    return result


async def step1_after(env: str, workflow_definition: dict[str, Any]) -> dict[str, Any]:
    infra = await Infrastructure.create(env)
    executor = EnhancedWorkflowExecutor(
        workflow=workflow_definition,
        infra=infra,
        workflow_id="arb_btc_001",
        bot_id="bot_001",
        strategy_id="arbitrage_btc",
    )
    await executor.initialize()
    result = await executor.execute()
    await infra.close()
    return result


async def step2_subscribe(env: str, workflow: dict[str, Any]) -> list[str]:
    infra = await Infrastructure.create(env)
    printed: list[str] = []

    async def handle_event(event: dict[str, Any]) -> None:
        printed.append(f"Event: {event['type']} - {event.get('node_id')}")

    await infra.events.subscribe("workflow_events", handle_event)
    executor = EnhancedWorkflowExecutor(workflow=workflow, infra=infra, workflow_id="step2")
    await executor.execute()
    await eventually(
        lambda: any("execution_completed" in line for line in printed), "completion was printed"
    )
    await infra.close()
    return printed


async def step3_handle_halt(env: str, workflow: dict[str, Any]) -> str | None:
    """Returns the reason logged for the halt (None if nothing was halted)."""
    infra = await Infrastructure.create(env)
    executor = EnhancedWorkflowExecutor(workflow=workflow, infra=infra, workflow_id="step3")
    logged: str | None = None
    try:
        await executor.execute()
    except EmergencyHalted as e:
        logged = f"Trading halted: {e.reason}"
    await infra.close()
    return logged


async def example1_before(trading_workflow: dict[str, Any]) -> str | None:
    executor = WorkflowExecutor(trading_workflow)
    await executor.initialize()
    result = await executor.execute()
    if result["status"] == "completed":
        return "Trading workflow completed"
    return None


async def example1_after(
    env: str, trading_workflow: dict[str, Any]
) -> tuple[str | None, list[str]]:
    infra = await Infrastructure.create(env)
    logged: list[str] = []

    async def log_events(event: dict[str, Any]) -> None:
        logged.append(f"{event['type']}: {event.get('node_id')}")

    await infra.events.subscribe("workflow_events", log_events)
    executor = EnhancedWorkflowExecutor(
        workflow=trading_workflow,
        infra=infra,
        workflow_id="trade_001",
        bot_id="trading_bot_001",
        strategy_id="mean_reversion",
    )
    await executor.initialize()
    printed: str | None = None
    try:
        result = await executor.execute()
        if result["status"] == "completed":
            printed = "Trading workflow completed"
    except EmergencyHalted as e:
        logged.append(f"Emergency halt: {e.reason}")
    await eventually(
        lambda: any(line.startswith("execution_") for line in logged), "the outcome was logged"
    )
    await infra.close()
    return printed, logged


async def example2_before(workflows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for workflow_def in workflows:
        executor = WorkflowExecutor(workflow_def)
        await executor.initialize()
        result = await executor.execute()
        results.append(result)
    return results


async def example2_after(env: str, workflows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    infra = await Infrastructure.create(env)

    async def run_workflow(workflow_def: dict[str, Any], workflow_id: str) -> dict[str, Any]:
        executor = EnhancedWorkflowExecutor(
            workflow=workflow_def,
            infra=infra,
            workflow_id=workflow_id,
            bot_id="multi_bot",
            strategy_id="concurrent_strategy",
        )
        await executor.initialize()
        return await executor.execute()

    tasks = [run_workflow(wf, f"wf_{i}") for i, wf in enumerate(workflows)]
    results = await asyncio.gather(*tasks)
    await infra.close()
    return list(results)


async def example3_before(trading_workflow: dict[str, Any], daily_pnl: float) -> dict[str, Any]:
    if daily_pnl < -500:
        raise Exception("Daily loss limit exceeded")
    executor = WorkflowExecutor(trading_workflow)
    return await executor.execute()


async def example3_after(
    env: str, trading_workflow: dict[str, Any], daily_pnl: float
) -> tuple[str, Infrastructure]:
    """Returns what happened and the (still open) infrastructure, so the caller can check
    that the controller stays halted. The caller closes it."""
    infra = await Infrastructure.create(env)
    try:
        await infra.emergency.check_risk_limit("daily_loss", daily_pnl, -500.0, auto_halt=True)
        executor = EnhancedWorkflowExecutor(
            workflow=trading_workflow, infra=infra, workflow_id="trade_001"
        )
        result = await executor.execute()
        return f"status: {result['status']}", infra
    except RiskLimitExceeded as e:
        return f"Risk limit exceeded: {e.limit_type}", infra
    except EmergencyHalted as e:
        return f"Trading halted: {e.reason}", infra


async def unit_test_example(env: str, workflow: dict[str, Any]) -> None:
    """The seed's `test_migrated_workflow`, body unchanged."""
    infra = await Infrastructure.create(env)
    executor = EnhancedWorkflowExecutor(workflow=workflow, infra=infra, workflow_id="test_workflow")
    await executor.initialize()
    result = await executor.execute()
    assert result["status"] == "completed"
    await infra.close()


async def integration_test_example(env: str, your_workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's `test_events_emitted`; waits for delivery instead of sleeping 0.1 s."""
    infra = await Infrastructure.create(env)
    events_received: list[dict[str, Any]] = []

    async def capture_events(event: dict[str, Any]) -> None:
        events_received.append(event)

    await infra.events.subscribe("workflow_events", capture_events)
    executor = EnhancedWorkflowExecutor(workflow=your_workflow, infra=infra, workflow_id="test")
    await executor.initialize()
    await executor.execute()
    await wait_for_events(infra, events_received, "execution_completed")
    assert len(events_received) > 0
    assert any(e["type"] == "execution_started" for e in events_received)
    assert any(e["type"] == "execution_completed" for e in events_received)
    await infra.close()
    return events_received


async def manual_test_example(env: str, your_workflow: dict[str, Any]) -> dict[str, Any]:
    infra = await Infrastructure.create(env)

    async def print_events(event: dict[str, Any]) -> None:
        print(f"Event: {event}")

    await infra.events.subscribe("workflow_events", print_events)
    executor = EnhancedWorkflowExecutor(
        workflow=your_workflow, infra=infra, workflow_id="manual_test"
    )
    await executor.initialize()
    result = await executor.execute()
    print(f"Result: {result}")
    await infra.close()
    return result


class WorkflowManager:
    """Pattern 1: singleton infrastructure."""

    def __init__(self, env: str) -> None:
        self.env = env
        self.infra: Infrastructure | None = None

    async def initialize(self) -> None:
        self.infra = await Infrastructure.create(self.env)

    async def execute_workflow(
        self, workflow_def: dict[str, Any], workflow_id: str
    ) -> dict[str, Any]:
        assert self.infra is not None
        executor = EnhancedWorkflowExecutor(
            workflow=workflow_def, infra=self.infra, workflow_id=workflow_id
        )
        await executor.initialize()
        return await executor.execute()


async def create_executor(
    workflow_def: dict[str, Any], workflow_id: str, infra: Infrastructure | None = None
) -> EnhancedWorkflowExecutor:
    """Pattern 2: factory function (the seed's default environment, development)."""
    if infra is None:
        infra = await Infrastructure.create("development")
    return EnhancedWorkflowExecutor(workflow=workflow_def, infra=infra, workflow_id=workflow_id)


class ExecutorContext:
    """Pattern 3: context manager."""

    def __init__(self, workflow: dict[str, Any], workflow_id: str, env: str) -> None:
        self.workflow = workflow
        self.workflow_id = workflow_id
        self.env = env
        self.infra: Infrastructure | None = None
        self.executor: EnhancedWorkflowExecutor | None = None

    async def __aenter__(self) -> EnhancedWorkflowExecutor:
        self.infra = await Infrastructure.create(self.env)
        self.executor = EnhancedWorkflowExecutor(
            workflow=self.workflow, infra=self.infra, workflow_id=self.workflow_id
        )
        await self.executor.initialize()
        return self.executor

    async def __aexit__(self, *exc: object) -> None:
        if self.infra is not None:
            await self.infra.close()


async def rollback_option1(
    env: str, workflow: dict[str, Any], is_critical_workflow: bool
) -> tuple[type, dict[str, Any]]:
    infra = await Infrastructure.create(env)
    executor: WorkflowExecutor | EnhancedWorkflowExecutor
    if is_critical_workflow:
        executor = WorkflowExecutor(workflow)
    else:
        executor = EnhancedWorkflowExecutor(workflow, infra, "rollback_wf")
    result = await executor.execute()
    await infra.close()
    return type(executor), result


async def rollback_option2(env: str, workflow: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    infra = await Infrastructure.create(env)
    workflow_id = "flagged_wf"
    use_enhanced_executor = os.getenv("USE_ENHANCED_EXECUTOR", "false") == "true"
    executor: WorkflowExecutor | EnhancedWorkflowExecutor
    if use_enhanced_executor:
        executor = EnhancedWorkflowExecutor(workflow, infra, workflow_id)
    else:
        executor = WorkflowExecutor(workflow)
    result = await executor.execute()
    await infra.close()
    return type(executor), result
