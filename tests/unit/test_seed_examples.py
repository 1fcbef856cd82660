"""The seed's MIGRATION_GUIDE examples, run embedded ("development")."""

from __future__ import annotations

import pytest
import seed_examples as seed
from workflows import block, trading_workflow

from tradeflow.domain.records import Scope
from tradeflow.infrastructure.emergency import EmergencyHalted
from tradeflow.infrastructure.factory import Infrastructure
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor
from tradeflow.workflow.executor import WorkflowExecutor

ENV = "development"


@pytest.mark.asyncio
async def test_step1_before_and_after_give_the_same_outcome() -> None:
    """Step 1: the base and the enhanced executor complete the same workflow alike."""
    before = await seed.step1_before(trading_workflow())
    after = await seed.step1_after(ENV, trading_workflow())
    assert before["status"] == after["status"] == "completed"
    assert set(before["results"]) == set(after["results"])
    assert after["results"]["buy"]["status"] == "filled"


@pytest.mark.asyncio
async def test_step2_subscriber_sees_each_node() -> None:
    """Step 2: a subscriber is told about every node by id."""
    printed = await seed.step2_subscribe(ENV, trading_workflow())
    assert "Event: execution_started - None" in printed
    assert "Event: node_completed - buy" in printed


@pytest.mark.asyncio
async def test_step3_emergency_halted_is_caught_with_reason() -> None:
    """Step 3: a halt makes execute() raise EmergencyHalted carrying the reason."""
    async with await Infrastructure.create(ENV) as infra:
        await infra.emergency.halt(Scope.GLOBAL, reason="exchange outage", actor="ops")
    logged = await seed.step3_handle_halt(ENV, trading_workflow())
    assert logged == "Trading halted: exchange outage"


@pytest.mark.asyncio
async def test_example1_before_prints_completed() -> None:
    """Example 1 (before): the base executor completes the trading bot."""
    assert await seed.example1_before(trading_workflow()) == "Trading workflow completed"


@pytest.mark.asyncio
async def test_example1_after_completes_and_logs_events() -> None:
    """Example 1 (after): completes, and the event log names the order node."""
    printed, logged = await seed.example1_after(ENV, trading_workflow())
    assert printed == "Trading workflow completed"
    assert "node_completed: buy" in logged


@pytest.mark.asyncio
async def test_example1_after_reports_emergency_halt() -> None:
    """Example 1 (after): under a strategy halt the except branch logs the reason."""
    async with await Infrastructure.create(ENV) as infra:
        await infra.emergency.halt(Scope.STRATEGY, "mean_reversion", reason="drawdown review")
    printed, logged = await seed.example1_after(ENV, trading_workflow())
    assert printed is None
    assert "Emergency halt: drawdown review" in logged


@pytest.mark.asyncio
async def test_example2_sequential_and_concurrent_agree() -> None:
    """Example 2: five workflows sequentially (base) and concurrently (enhanced, shared infra)."""
    workflows = [trading_workflow(quantity=0.001 * (i + 1)) for i in range(5)]
    before = await seed.example2_before(workflows)
    after = await seed.example2_after(ENV, workflows)
    assert [r["status"] for r in before] == ["completed"] * 5
    assert [r["status"] for r in after] == ["completed"] * 5
    assert len({r["execution_id"] for r in after}) == 5
    assert sorted(r["workflow_id"] for r in after) == [f"wf_{i}" for i in range(5)]
    assert [r["results"]["buy"]["filled_quantity"] for r in after] == pytest.approx(
        [0.001 * (i + 1) for i in range(5)]
    )


@pytest.mark.asyncio
async def test_example3_before_raises_on_manual_check() -> None:
    """Example 3 (before): the manual check raises past -500."""
    with pytest.raises(Exception, match="Daily loss limit exceeded"):
        await seed.example3_before(trading_workflow(), daily_pnl=-600.0)
    assert (await seed.example3_before(trading_workflow(), daily_pnl=-100.0))[
        "status"
    ] == "completed"


@pytest.mark.asyncio
async def test_example3_after_breach_halts_and_blocks_later_trades() -> None:
    """Example 3 (after): a breach raises RiskLimitExceeded, halts, and later trades are blocked."""
    outcome, infra = await seed.example3_after(ENV, trading_workflow(), daily_pnl=-600.0)
    try:
        assert outcome == "Risk limit exceeded: daily_loss"
        halts = await infra.emergency.halts()
        assert [h.scope for h in halts] == [Scope.GLOBAL]
        executor = EnhancedWorkflowExecutor(trading_workflow(), infra, "later")
        with pytest.raises(EmergencyHalted, match="daily_loss"):
            await executor.execute()
    finally:
        await infra.close()


@pytest.mark.asyncio
async def test_example3_after_within_limit_trades() -> None:
    """Example 3 (after): within the limit the workflow runs and completes."""
    outcome, infra = await seed.example3_after(ENV, trading_workflow(), daily_pnl=-100.0)
    await infra.close()
    assert outcome == "status: completed"


@pytest.mark.asyncio
async def test_seed_unit_test_example() -> None:
    """'Testing your migration' 1: the unit test passes as written."""
    await seed.unit_test_example(ENV, trading_workflow())


@pytest.mark.asyncio
async def test_seed_integration_test_example() -> None:
    """'Testing your migration' 2: events are emitted, with contract fields."""
    events = await seed.integration_test_example(ENV, trading_workflow())
    started = next(e for e in events if e["type"] == "execution_started")
    assert started["schema_version"] == 1
    assert started["workflow_id"] == "test"
    assert all(
        e["correlation_id"] == started["correlation_id"]
        for e in events
        if e["execution_id"] == started["execution_id"]
    )


@pytest.mark.asyncio
async def test_seed_manual_test_example(capsys: pytest.CaptureFixture[str]) -> None:
    """'Testing your migration' 3: events and the result are printed."""
    result = await seed.manual_test_example(ENV, trading_workflow())
    out = capsys.readouterr().out
    assert result["status"] == "completed"
    assert "Event: {'schema_version': 1, 'type': 'execution_started'" in out
    assert f"Result: {{'status': 'completed', 'execution_id': '{result['execution_id']}'" in out


@pytest.mark.asyncio
async def test_pattern1_singleton_infrastructure() -> None:
    """Pattern 1: one infrastructure reused by two workflows."""
    manager = seed.WorkflowManager(ENV)
    await manager.initialize()
    result1 = await manager.execute_workflow(trading_workflow(), "wf1")
    result2 = await manager.execute_workflow(trading_workflow(), "wf2")
    assert manager.infra is not None
    page = await manager.infra.state.list_executions(
        __import__("tradeflow.domain.records", fromlist=["ExecutionQuery"]).ExecutionQuery()
    )
    await manager.infra.close()
    assert result1["status"] == result2["status"] == "completed"
    assert {r.workflow_id for r in page.executions} == {"wf1", "wf2"}


@pytest.mark.asyncio
async def test_pattern2_factory_function_without_initialize() -> None:
    """Pattern 2: the factory's executor runs without an explicit initialize()."""
    executor = await seed.create_executor(trading_workflow(), "wf_001")
    result = await executor.execute()
    await executor.infra.close()
    assert result["status"] == "completed"


@pytest.mark.asyncio
async def test_pattern3_context_manager() -> None:
    """Pattern 3: the context manager yields an initialized executor and cleans up."""
    context = seed.ExecutorContext(trading_workflow(), "wf_001", ENV)
    async with context as executor:
        result = await executor.execute()
    assert result["status"] == "completed"
    assert context.infra is not None and context.infra._closed


@pytest.mark.asyncio
@pytest.mark.parametrize("critical", [True, False])
async def test_rollback_option1_keep_both(critical: bool) -> None:
    """Rollback option 1: both executors coexist and give the same status."""
    kind, result = await seed.rollback_option1(ENV, trading_workflow(), critical)
    assert kind is (WorkflowExecutor if critical else EnhancedWorkflowExecutor)
    assert result["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.parametrize("flag", ["true", "false"])
async def test_rollback_option2_feature_flag(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rollback option 2: USE_ENHANCED_EXECUTOR picks the executor."""
    monkeypatch.setenv("USE_ENHANCED_EXECUTOR", flag)
    kind, result = await seed.rollback_option2(ENV, trading_workflow())
    assert kind is (EnhancedWorkflowExecutor if flag == "true" else WorkflowExecutor)
    assert result["status"] == "completed"


@pytest.mark.asyncio
async def test_seed_definition_format_runs_on_both_executors() -> None:
    """'Workflow Definition (Unchanged)': the seed's block shape runs on both executors."""
    workflow = {
        "blocks": [
            block("node1", "providers", "static", {"values": {"result": 42}}, outputs=["result"])
        ]
    }
    base = await WorkflowExecutor(workflow).execute()
    async with await Infrastructure.create(ENV) as infra:
        enhanced = await EnhancedWorkflowExecutor(workflow, infra, "fmt").execute()
    assert base["results"]["node1"] == enhanced["results"]["node1"] == {"result": 42}
