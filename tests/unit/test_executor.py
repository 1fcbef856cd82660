"""The runner through both executors: ordering, concurrency, gating, failures,
halts by scope, risk auto-halt, resilience, subscribers, resume, logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import stamina
import structlog
from workflows import block, resting_bid, trading_workflow, two_orders_workflow

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.domain.errors import (
    EmergencyHalted,
    ExecutionNotFound,
    InvalidRequest,
    OrderRejected,
    RiskLimitExceeded,
)
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    ExecutionQuery,
    ExecutionStatus,
    Scope,
    StateBatch,
    unresolved_intent,
)
from tradeflow.engine.model import Block
from tradeflow.engine.nodes import default_registry
from tradeflow.engine.nodes.registry import ExecutionContext, NodeRegistry, NodeSpec
from tradeflow.observability.logging import configure_logging
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor
from tradeflow.workflow.executor import WorkflowExecutor


def registry_with(*specs: NodeSpec) -> NodeRegistry:
    """The built-ins plus test node types."""
    registry = NodeRegistry()
    for spec in default_registry.specs():
        registry.register(spec)
    for spec in specs:
        registry.register(spec)
    return registry


@pytest_asyncio.fixture
async def infra() -> AsyncIterator[Infrastructure]:
    """An embedded infrastructure on an in-memory database."""
    async with await Infrastructure.create("test") as infra:
        yield infra


class Recorder:
    """A subscriber that keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def types(self, node_id: str | None = None) -> list[str]:
        return [e["type"] for e in self.events if node_id is None or e["node_id"] == node_id]


async def recorded(infra: Infrastructure) -> Recorder:
    recorder = Recorder()
    await infra.events.subscribe("workflow_events", recorder)
    return recorder


def diamond() -> dict[str, Any]:
    return {
        "blocks": [
            block("d", "conditions", "all", {}, {"b": "b.result", "c": "c.result"}),
            block("c", "conditions", "compare", {"op": ">", "value": 1}, {"left": "a.x"}),
            block("b", "conditions", "compare", {"op": "<", "value": 100}, {"left": "a.x"}),
            block("a", "providers", "static", {"values": {"x": 5}}),
        ]
    }


@pytest.mark.asyncio
async def test_nodes_start_in_deterministic_topological_order(infra: Infrastructure) -> None:
    """Upstream first, ties broken by definition order, the same on every run."""
    recorder = await recorded(infra)
    executor = EnhancedWorkflowExecutor(diamond(), infra, "diamond")
    for _ in range(3):
        await executor.execute()
    await infra.events.drain()  # type: ignore[attr-defined]
    starts = [e["node_id"] for e in recorder.events if e["type"] == "node_started"]
    assert starts == ["a", "c", "b", "d"] * 3


@pytest.mark.asyncio
async def test_independent_io_nodes_overlap_and_respect_the_bound() -> None:
    """Two ready I/O nodes run concurrently; with max_concurrency=1 they do not."""
    running: list[str] = []
    peak = 0
    both_started = asyncio.Event()

    async def probe(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        nonlocal peak
        running.append(blk.id)
        peak = max(peak, len(running))
        if len(running) == 2:
            both_started.set()
        # Alone (bounded run): nobody else will start meanwhile, so stop waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both_started.wait(), 0.2)
        running.remove(blk.id)
        return {"done": True}

    registry = registry_with(NodeSpec("providers", "probe", probe, outputs=("done",)))
    workflow = {"blocks": [block("p1", "providers", "probe"), block("p2", "providers", "probe")]}
    result = await WorkflowExecutor(workflow, registry=registry).execute()
    assert result["status"] == "completed" and peak == 2
    peak = 0
    both_started.clear()
    result = await WorkflowExecutor(workflow, registry=registry, max_concurrency=1).execute()
    assert result["status"] == "completed" and peak == 1


@pytest.mark.asyncio
async def test_untriggered_trigger_skips_dependents_not_the_run(infra: Infrastructure) -> None:
    """A trigger that does not fire skips what depends on it, transitively; the run completes."""
    recorder = await recorded(infra)
    result = await EnhancedWorkflowExecutor(trading_workflow(below=1.0), infra, "quiet").execute()
    await infra.events.drain()  # type: ignore[attr-defined]
    assert result["status"] == "completed"
    assert result["skipped"] == ["notional", "buy", "note"]
    assert "buy" not in result["results"]
    skipped = [e for e in recorder.events if e["type"] == "node_skipped"]
    assert [e["node_id"] for e in skipped] == ["notional", "buy", "note"]
    assert skipped[0]["data"]["reason"] == "upstream 'cheap' did not pass"


@pytest.mark.asyncio
async def test_any_receives_false_gates() -> None:
    """`any` sees a false condition as False instead of being skipped by it."""
    workflow = {
        "blocks": [
            block("a", "providers", "static", {"values": {"x": 5}}),
            block("no", "conditions", "compare", {"op": ">", "value": 10}, {"left": "a.x"}),
            block("yes", "conditions", "compare", {"op": "<", "value": 10}, {"left": "a.x"}),
            block("either", "conditions", "any", {}, {"p": "no.result", "q": "yes.result"}),
            block("both", "conditions", "all", {}, {"p": "no.result", "q": "yes.result"}),
        ]
    }
    result = await WorkflowExecutor(workflow).execute()
    assert result["results"]["either"] == {"result": True}
    assert result["results"]["both"] == {"result": False}
    assert result["skipped"] == []


@pytest.mark.asyncio
async def test_failed_node_fails_the_run_and_names_the_node(infra: Infrastructure) -> None:
    """A raising node: status failed, error names block and type, dependents never run."""

    async def broken(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("feed returned garbage")

    registry = registry_with(NodeSpec("providers", "broken", broken, outputs=("x",)))
    workflow = {
        "blocks": [
            block("src", "providers", "broken"),
            block("use", "triggers", "threshold", {"above": 1}, {"value": "src.x"}),
        ]
    }
    recorder = await recorded(infra)
    result = await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry).execute()
    await infra.events.drain()  # type: ignore[attr-defined]
    assert result["status"] == "failed"
    assert result["errors"] == {"src": "feed returned garbage"}
    assert result["error"] == "node 'src' (broken) failed: feed returned garbage"
    assert "use" not in result["results"]
    assert recorder.types()[-2:] == ["node_failed", "execution_failed"]
    record = await infra.state.get_execution(result["execution_id"])
    assert record.status is ExecutionStatus.FAILED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("scope", "target", "blocked"),
    [
        (Scope.GLOBAL, None, {"wf_a", "wf_b", "wf_c"}),
        (Scope.STRATEGY, "s1", {"wf_a", "wf_b"}),
        (Scope.BOT, "bot2", {"wf_b"}),
        (Scope.WORKFLOW, "wf_c", {"wf_c"}),
    ],
)
async def test_halt_scope_blocks_exactly_what_it_covers(
    infra: Infrastructure, scope: Scope, target: str | None, blocked: set[str]
) -> None:
    """Each halt scope refuses actions of the executions it covers and no others."""
    await infra.emergency.halt(scope, target, reason="test halt", actor="pytest")
    bots = {"wf_a": ("bot1", "s1"), "wf_b": ("bot2", "s1"), "wf_c": ("bot3", "s2")}
    for wf_id, (bot, strategy) in bots.items():
        executor = EnhancedWorkflowExecutor(trading_workflow(), infra, wf_id, bot, strategy)
        if wf_id not in blocked:
            assert (await executor.execute())["status"] == "completed"
            continue
        with pytest.raises(EmergencyHalted) as caught:
            await executor.execute()
        assert caught.value.reason == "test halt"
        assert caught.value.execution_id is not None
        record = await infra.state.get_execution(caught.value.execution_id)
        assert record.status is ExecutionStatus.HALTED
        assert record.result is not None and "buy" not in record.result["results"]
    await infra.emergency.resume(scope, target, reason="clear", actor="pytest")
    result = await EnhancedWorkflowExecutor(
        trading_workflow(), infra, "wf_a", "bot1", "s1"
    ).execute()
    assert result["status"] == "completed"


@pytest.mark.asyncio
async def test_most_restrictive_halt_is_reported(infra: Infrastructure) -> None:
    """With a bot halt and a global halt, the global one is what the executor reports."""
    await infra.emergency.halt(Scope.BOT, "bot1", reason="bot misbehaving")
    await infra.emergency.halt(Scope.GLOBAL, reason="venue down")
    with pytest.raises(EmergencyHalted) as caught:
        await EnhancedWorkflowExecutor(trading_workflow(), infra, "wf", "bot1").execute()
    assert caught.value.scope == "global"
    assert caught.value.reason == "venue down"


@pytest.mark.asyncio
async def test_halt_stops_the_next_action_but_not_data_nodes(infra: Infrastructure) -> None:
    """Providers and checks run while halted; the run stops before the first action and is
    recorded as halted, with its event; run() returns that result instead of raising."""
    recorder = await recorded(infra)
    await infra.emergency.halt(Scope.WORKFLOW, "wf", reason="maintenance")
    result = await EnhancedWorkflowExecutor(trading_workflow(), infra, "wf").run()
    await infra.events.drain()  # type: ignore[attr-defined]
    assert result.status is ExecutionStatus.HALTED
    assert isinstance(result.halt, EmergencyHalted) and result.halt.reason == "maintenance"
    assert set(result.results) == {"quote", "size", "cheap", "notional"}
    assert result.as_dict()["status"] == "halted"
    assert "execution_halted" in recorder.types()
    assert await infra.state.get_execution(result.execution_id) == result.record
    assert infra.metrics.actions_refused._value.get() == 1


@pytest.mark.asyncio
async def test_a_halt_lets_cancels_and_logs_through_and_refuses_orders(
    infra: Infrastructure,
) -> None:
    """While halted, the way out stays open: a cancel of a resting order and a log run, an
    order is refused, and the run ends halted (the seed's EmergencyHalted is raised)."""
    placed = await EnhancedWorkflowExecutor(resting_bid(), infra, "rest").execute()
    client_order_id = placed["results"]["bid"]["client_order_id"]
    assert placed["results"]["bid"]["status"] == "open"
    await infra.emergency.halt(Scope.GLOBAL, reason="unwind")
    unwind = {
        "blocks": [
            block("note", "actions", "log", {"message": "unwinding"}),
            block(
                "pull",
                "actions",
                "cancel_order",
                {"client_order_id": client_order_id},
            ),
            block(
                "buy",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy", "quantity": 0.001},
            ),
        ]
    }
    with pytest.raises(EmergencyHalted):
        await EnhancedWorkflowExecutor(unwind, infra, "unwind").execute()
    order = await infra.exchange.get_order("paper", client_order_id)
    assert order is not None and order.status.value == "cancelled"
    [record] = (await infra.state.list_executions(ExecutionQuery(workflow_id="unwind"))).executions
    assert record.status is ExecutionStatus.HALTED
    assert record.result is not None and set(record.result["results"]) == {"note", "pull"}
    assert infra.metrics.actions_refused._value.get() == 1


@pytest.mark.asyncio
async def test_risk_node_breach_raises_and_halts_everything(infra: Infrastructure) -> None:
    """A max_position breach raises RiskLimitExceeded and auto-halts: the next run is refused."""
    workflow = {
        "blocks": [
            block("size", "providers", "static", {"values": {"qty": 5.0}}),
            block(
                "pos",
                "risk",
                "max_position",
                {"symbol": "BTC/USDT", "limit": 1.0, "side": "buy"},
                {"quantity": "size.qty"},
            ),
            block(
                "buy",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy"},
                {"quantity": "size.qty", "when": "pos.ok"},
            ),
        ]
    }
    recorder = await recorded(infra)
    with pytest.raises(RiskLimitExceeded) as caught:
        await EnhancedWorkflowExecutor(workflow, infra, "risky").execute()
    assert caught.value.limit_type == "max_position"
    assert caught.value.value == 5.0 and caught.value.threshold == 1.0
    assert caught.value.halted
    with pytest.raises(EmergencyHalted, match="max_position"):
        await EnhancedWorkflowExecutor(trading_workflow(), infra, "other").execute()
    await infra.events.drain()  # type: ignore[attr-defined]
    assert {"risk_limit_exceeded", "emergency_halted"} <= set(recorder.types())
    assert await infra.exchange.position("paper", "BTC/USDT") == 0.0


@pytest.mark.asyncio
async def test_base_executor_risk_breach_raises_without_halting() -> None:
    """Without an emergency controller a breach raises but nothing is halted."""
    workflow = {
        "blocks": [
            block("loss", "risk", "daily_loss_limit", {"max_loss": 100}, {"pnl": "p.v"}),
            block("p", "providers", "static", {"values": {"v": -150.0}}),
        ]
    }
    with pytest.raises(RiskLimitExceeded) as caught:
        await WorkflowExecutor(workflow).execute()
    assert caught.value.threshold == -100 and not caught.value.halted


@pytest.mark.asyncio
async def test_slow_and_failing_subscribers_do_not_stall_execution(infra: Infrastructure) -> None:
    """A subscriber that never returns and one that raises: runs complete, others get all events."""
    never = asyncio.Event()

    async def stuck(event: dict[str, Any]) -> None:
        await never.wait()

    async def failing(event: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    await infra.events.subscribe("workflow_events", stuck)
    await infra.events.subscribe("workflow_events", failing)
    recorder = await recorded(infra)
    results = [
        await EnhancedWorkflowExecutor(trading_workflow(), infra, f"wf{i}").execute()
        for i in range(20)
    ]
    await infra.events.drain(timeout=0.5)  # type: ignore[attr-defined]
    assert all(r["status"] == "completed" for r in results)
    assert recorder.types().count("execution_completed") == 20
    assert infra.metrics.subscriber_errors._value.get() >= 20 * 13
    never.set()


@pytest.mark.asyncio
async def test_retry_with_backoff_then_success(infra: Infrastructure) -> None:
    """A flaky node is retried per config.retry; node_retrying events carry attempt and error."""
    attempts = 0

    async def flaky(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError(f"reset #{attempts}")
        return {"x": attempts}

    registry = registry_with(NodeSpec("providers", "flaky", flaky, outputs=("x",)))
    config = {"retry": {"max_attempts": 4, "initial_interval": 0.01, "jitter": 0}}
    workflow = {"blocks": [block("f", "providers", "flaky", config=config)]}
    recorder = await recorded(infra)
    stamina.set_testing(True, attempts=4)
    try:
        result = await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry).execute()
    finally:
        stamina.set_testing(False)
    await infra.events.drain()  # type: ignore[attr-defined]
    assert result["status"] == "completed" and result["results"]["f"] == {"x": 3}
    retries = [e["data"] for e in recorder.events if e["type"] == "node_retrying"]
    assert [(r["attempt"], r["error"]) for r in retries] == [(1, "reset #1"), (2, "reset #2")]


@pytest.mark.asyncio
async def test_non_retryable_error_fails_at_once() -> None:
    """Errors named in non_retryable are not retried."""
    attempts = 0

    async def bad(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        raise KeyError("missing")

    registry = registry_with(NodeSpec("providers", "bad", bad, outputs=("x",)))
    config = {"retry": {"max_attempts": 5, "initial_interval": 0, "non_retryable": ["KeyError"]}}
    result = await WorkflowExecutor(
        {"blocks": [block("b", "providers", "bad", config=config)]}, registry=registry
    ).execute()
    assert result["status"] == "failed" and attempts == 1


@pytest.mark.asyncio
async def test_timeout_fails_the_node() -> None:
    """A node slower than config.timeout fails with a timeout error naming it."""
    release = asyncio.Event()

    async def slow(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"x": 1}

    registry = registry_with(NodeSpec("providers", "slow", slow, outputs=("x",)))
    workflow = {"blocks": [block("s", "providers", "slow", config={"timeout": 0.05})]}
    result = await WorkflowExecutor(workflow, registry=registry).execute()
    assert result["status"] == "failed"
    assert result["errors"]["s"] == "node 's' timed out after 0.05s"


@pytest.mark.asyncio
async def test_circuit_breaker_opens_and_short_circuits(infra: Infrastructure) -> None:
    """After failure_threshold failures the named breaker opens: calls fail fast, events say so."""
    calls = 0

    async def down(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise ConnectionError("venue down")

    registry = registry_with(NodeSpec("providers", "down", down, outputs=("x",)))
    config = {
        "circuit_breaker": {"name": "venue-x", "failure_threshold": 2, "recovery_timeout": 60}
    }
    workflow = {"blocks": [block("d", "providers", "down", config=config)]}
    recorder = await recorded(infra)
    executor = EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry)
    results = [await executor.execute() for _ in range(4)]
    await infra.events.drain()  # type: ignore[attr-defined]
    assert calls == 2
    assert results[3]["errors"]["d"].startswith("circuit 'venue-x' is open")
    opened = [e for e in recorder.events if e["type"] == "circuit_opened"]
    assert len(opened) == 1 and opened[0]["data"]["breaker"] == "venue-x"
    assert infra.metrics.breaker_state.labels("venue-x")._value.get() == 2


async def rewind(infra: Infrastructure, execution_id: str, *checkpoints: Checkpoint) -> None:
    """Put an ended execution back to ``running`` with ``checkpoints`` over its own, as if
    its process had died there (under this process's lease)."""
    fence = infra.owner.lease.fence
    await infra.state.write(StateBatch(checkpoints=checkpoints, fence=fence))
    record = await infra.state.get_execution(execution_id)
    await infra.state.write(
        StateBatch(execution=replace(record, status=ExecutionStatus.RUNNING), fence=fence)
    )


@pytest.mark.asyncio
async def test_resume_replaces_an_intended_order_exactly_once(infra: Infrastructure) -> None:
    """Crash after the intent and the exchange fill but before the checkpoint: resume re-places
    with the same client order id, the exchange deduplicates, the run completes."""
    executor = EnhancedWorkflowExecutor(two_orders_workflow(), infra, "wf")
    result = await executor.execute()
    execution_id = result["execution_id"]
    # Rewind the execution to just after `second`'s intent, as if the process died there.
    await rewind(
        infra,
        execution_id,
        Checkpoint(
            execution_id,
            "second",
            CheckpointState.INTENT,
            0.0,
            {"client_order_id": f"{execution_id}:second"},
        ),
    )
    resumed = await EnhancedWorkflowExecutor(two_orders_workflow(), infra, "wf").resume(
        execution_id
    )
    assert resumed["status"] == "completed"
    assert resumed["results"]["second"]["order_id"] == result["results"]["second"]["order_id"]
    assert await infra.exchange.position("paper", "BTC/USDT") == pytest.approx(0.0)


def placing_then_failing(fail: bool) -> NodeRegistry:
    """The built-ins plus ``actions/lossy_order``: the real ``place_order`` whose reply is
    lost (the order is placed, then the node raises) while ``fail`` holds."""
    real = default_registry.get("actions", "place_order")
    assert real is not None

    async def lossy(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = await real.run(ctx, blk, inputs)
        if fail:
            raise ConnectionError("reply lost")
        return outputs

    return registry_with(replace(real, type="lossy_order", run=lossy))


def lossy_order_workflow() -> dict[str, Any]:
    return order_workflow(0.001, action="lossy_order")


@pytest.mark.asyncio
async def test_an_action_failing_after_its_intent_keeps_its_client_order_id(
    infra: Infrastructure,
) -> None:
    """A failure after the committed intent keeps the intent's client order id in the FAILED
    checkpoint (an unresolved intent for retention), and resume adopts the order it placed."""
    workflow = lossy_order_workflow()
    failed = await EnhancedWorkflowExecutor(
        workflow, infra, "wf", registry=placing_then_failing(True)
    ).run()
    assert failed.status is ExecutionStatus.FAILED
    checkpoint = (await infra.state.get_checkpoints(failed.execution_id))["buy"]
    assert checkpoint.state is CheckpointState.FAILED
    assert checkpoint.outputs == {"client_order_id": f"{failed.execution_id}:buy"}
    assert unresolved_intent(checkpoint)
    resumed = await EnhancedWorkflowExecutor(
        workflow, infra, "wf", registry=placing_then_failing(False)
    ).resume(failed.execution_id)
    assert resumed["status"] == "completed"
    assert resumed["results"]["buy"]["client_order_id"] == f"{failed.execution_id}:buy"
    assert await infra.exchange.position("paper", "BTC/USDT") == pytest.approx(0.001)


def order_workflow(quantity: float, *, action: str = "place_order") -> dict[str, Any]:
    """A static quantity and one market buy of it (``buy``, an ``action`` node)."""
    return {
        "blocks": [
            block("size", "providers", "static", {"values": {"qty": quantity}}),
            block(
                "buy",
                "actions",
                action,
                {"symbol": "BTC/USDT", "side": "buy"},
                {"quantity": "size.qty"},
            ),
        ]
    }


@pytest.mark.asyncio
async def test_an_action_rejected_on_its_only_attempt_leaves_nothing_unresolved(
    infra: Infrastructure,
) -> None:
    """An order refused before the venue (an invalid quantity) after its intent committed
    leaves no client order id on the failure: no order can exist, so retention may prune
    the execution (only a failure that may have reached the venue keeps it)."""
    workflow = order_workflow(0)
    result = await EnhancedWorkflowExecutor(workflow, infra, "wf").run()
    assert result.status is ExecutionStatus.FAILED
    checkpoint = (await infra.state.get_checkpoints(result.execution_id))["buy"]
    assert checkpoint.state is CheckpointState.FAILED
    assert "rejected" in (checkpoint.error or "")
    assert checkpoint.outputs is None and not unresolved_intent(checkpoint)
    assert result.finished_at is not None
    report = await infra.state.prune(result.finished_at + 1)
    assert report.removed >= 1
    with pytest.raises(ExecutionNotFound):
        await infra.state.get_execution(result.execution_id)


@pytest.mark.asyncio
async def test_a_resumed_action_rejected_keeps_the_intent_a_previous_run_left(
    infra: Infrastructure,
) -> None:
    """A rejection in a resumed run does not clear the intent an earlier run left (that
    run may have placed the order before it died): the failure keeps the client order id,
    and retention keeps the execution unresolved."""

    def sizing(quantity: float) -> NodeRegistry:
        async def size(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
            return {"qty": quantity}

        return registry_with(NodeSpec("providers", "sizing", size, outputs=("qty",)))

    workflow = order_workflow(0.001)
    workflow["blocks"][0] = block("size", "providers", "sizing")
    result = await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=sizing(0.001)).run()
    execution_id = result.execution_id
    # Rewind to just after the order's intent, as if the process died there, with the
    # sizing to run again (its checkpoint lost): this time it sizes the order at 0.
    intent = {"client_order_id": f"{execution_id}:buy"}
    await rewind(
        infra,
        execution_id,
        Checkpoint(execution_id, "size", CheckpointState.FAILED, 0.0, None, "lost"),
        Checkpoint(execution_id, "buy", CheckpointState.INTENT, 0.0, intent),
    )
    # The resumed run's own check rejects the order before it could adopt the placed one.
    outcome = await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=sizing(0)).resume(
        execution_id
    )
    assert outcome["status"] == "failed" and "rejected" in outcome["errors"]["buy"]
    checkpoint = (await infra.state.get_checkpoints(execution_id))["buy"]
    assert checkpoint.state is CheckpointState.FAILED
    assert checkpoint.outputs == intent and unresolved_intent(checkpoint)


@pytest.mark.asyncio
async def test_a_custom_action_rejected_keeps_its_intent(infra: Infrastructure) -> None:
    """A custom action's OrderRejected proves nothing (it may have placed an order before
    failing on another): the failure keeps the client order id."""
    real = default_registry.get("actions", "place_order")
    assert real is not None

    async def placing_then_rejected(
        ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        await real.run(ctx, blk, inputs)
        raise OrderRejected(f"{ctx.client_order_id(blk.id)}-hedge", "hedge refused")

    registry = registry_with(replace(real, type="lossy_order", run=placing_then_rejected))
    failed = await EnhancedWorkflowExecutor(
        lossy_order_workflow(), infra, "wf", registry=registry
    ).run()
    checkpoint = (await infra.state.get_checkpoints(failed.execution_id))["buy"]
    assert checkpoint.outputs == {"client_order_id": f"{failed.execution_id}:buy"}
    assert unresolved_intent(checkpoint)


@pytest.mark.asyncio
async def test_a_node_failing_without_an_intent_keeps_no_outputs(infra: Infrastructure) -> None:
    """A failure of a node that committed no intent records no outputs: nothing unresolved."""

    async def broken(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("broken")

    registry = registry_with(NodeSpec("providers", "broken", broken, outputs=("v",)))
    workflow = {"blocks": [block("x", "providers", "broken")]}
    result = await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry).run()
    assert result.status is ExecutionStatus.FAILED
    checkpoint = (await infra.state.get_checkpoints(result.execution_id))["x"]
    assert checkpoint.state is CheckpointState.FAILED
    assert checkpoint.outputs is None and not unresolved_intent(checkpoint)


@pytest.mark.asyncio
async def test_cancel_stops_scheduling(infra: Infrastructure) -> None:
    """cancel() while a node runs: no further node starts, status cancelled."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gate(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {"x": 1}

    registry = registry_with(NodeSpec("providers", "gate", gate, outputs=("x",)))
    workflow = {
        "blocks": [
            block("g", "providers", "gate"),
            block("t", "triggers", "threshold", {"above": 0}, {"value": "g.x"}),
        ]
    }
    executor = EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry)
    task = asyncio.create_task(executor.execute())
    await entered.wait()
    executor.cancel()
    release.set()
    result = await task
    assert result["status"] == "cancelled"
    assert "t" not in result["results"]


@pytest.mark.asyncio
async def test_a_cancelled_task_stays_resumable_and_leaves_no_log_context(
    infra: Infrastructure,
) -> None:
    """Cancelling the task of a durable run raises CancelledError (nothing replaces it), keeps
    what ran (the execution stays running), unbinds its ids from the log context, and a
    resume finishes it without running the completed nodes again."""
    entered = asyncio.Event()
    calls: list[str] = []

    async def hang(ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]) -> dict[str, Any]:
        calls.append(ctx.execution_id)
        if len(calls) == 1:
            entered.set()
            await asyncio.Event().wait()
        return {"x": 1}

    registry = registry_with(NodeSpec("providers", "hang", hang, outputs=("x",)))
    workflow = {
        "blocks": [
            block("s", "providers", "static", {"values": {"v": 1}}),
            block("h", "providers", "hang", inputs={"when": "s.v"}),
        ]
    }
    executor = EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry)
    task = asyncio.create_task(executor.execute())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [record] = (await infra.state.list_executions(ExecutionQuery())).executions
    assert record.status is ExecutionStatus.INTERRUPTED
    checkpoints = await infra.state.get_checkpoints(record.execution_id)
    assert checkpoints["s"].state is CheckpointState.COMPLETED
    assert "execution_id" not in structlog.contextvars.get_contextvars()
    resumed = await executor.resume(record.execution_id)
    assert resumed["status"] == "completed"
    assert calls == [record.execution_id, record.execution_id]


@pytest.mark.asyncio
async def test_every_log_line_carries_correlation_ids(infra: Infrastructure) -> None:
    """JSON logs of an execution carry correlation_id, execution_id and workflow_id."""
    stream = io.StringIO()
    configure_logging(json=True, level="info", stream=stream)
    try:
        result = await EnhancedWorkflowExecutor(trading_workflow(), infra, "logged").execute()
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {line["event"] for line in lines} >= {"workflow.log", "execution.completed"}
    for line in lines:
        assert line["correlation_id"] == result["correlation_id"]
        assert line["execution_id"] == result["execution_id"]
        assert line["workflow_id"] == "logged"


@pytest.mark.asyncio
async def test_state_is_persisted_as_it_runs(infra: Infrastructure) -> None:
    """After a run: the execution record, a checkpoint per node and the event history exist."""
    result = await EnhancedWorkflowExecutor(trading_workflow(), infra, "wf", "b", "s").execute()
    execution_id = result["execution_id"]
    record = await infra.state.get_execution(execution_id)
    checkpoints = await infra.state.get_checkpoints(execution_id)
    history = await infra.state.read_events(execution_id=execution_id)
    page = await infra.state.list_executions(ExecutionQuery(bot_id="b"))
    assert record.status is ExecutionStatus.COMPLETED and record.strategy_id == "s"
    assert {n: c.state for n, c in checkpoints.items()} == dict.fromkeys(
        ["quote", "size", "cheap", "notional", "buy", "note"], CheckpointState.COMPLETED
    )
    assert checkpoints["buy"].outputs == result["results"]["buy"]
    sequences = [event.sequence for _, event in history]
    assert sequences == list(range(1, len(sequences) + 1))
    assert [r.execution_id for r in page.executions] == [execution_id]


@pytest.mark.asyncio
async def test_metrics_exposition_counts_nodes_and_executions(infra: Infrastructure) -> None:
    """After runs, the Prometheus text has node latency buckets per type and executions by status."""
    for _ in range(3):
        await EnhancedWorkflowExecutor(trading_workflow(), infra, "metered").execute()
    text = infra.metrics.exposition().decode()
    assert 'tradeflow_executions_total{status="completed"} 3.0' in text
    assert "tradeflow_execution_duration_seconds_count 3.0" in text
    assert 'tradeflow_node_duration_seconds_count{node_type="place_order"} 3.0' in text
    assert 'tradeflow_node_duration_seconds_bucket{le="+Inf",node_type="threshold"} 3.0' in text


@pytest.mark.asyncio
async def test_a_halt_during_retry_backoff_stops_the_retry(infra: Infrastructure) -> None:
    """An action whose first attempt fails is not retried once trading is halted meanwhile."""
    attempts = 0

    async def flaky_order(
        ctx: ExecutionContext, blk: Block, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        await infra.emergency.halt(Scope.GLOBAL, reason="halted mid-retry")
        raise ConnectionError("venue timeout")

    registry = registry_with(NodeSpec("actions", "flaky_order", flaky_order, outputs=("ok",)))
    config = {"retry": {"max_attempts": 3, "initial_interval": 0, "jitter": 0}}
    workflow = {"blocks": [block("order", "actions", "flaky_order", config=config)]}
    with pytest.raises(EmergencyHalted, match="halted mid-retry"):
        await EnhancedWorkflowExecutor(workflow, infra, "wf", registry=registry).execute()
    assert attempts == 1


@pytest.mark.asyncio
async def test_a_limit_configured_not_to_halt_does_not_halt(infra: Infrastructure) -> None:
    """A breach of a limit set with auto_halt=False raises but leaves trading active."""
    await infra.emergency.set_risk_limit("max_exposure", 10.0, auto_halt=False, actor="ops")
    with pytest.raises(RiskLimitExceeded) as caught:
        await infra.emergency.check_risk_limit("max_exposure", 11.0)
    assert not caught.value.halted
    assert await infra.emergency.halts() == []


@pytest.mark.asyncio
async def test_cancel_applies_to_one_run_in_both_executors(infra: Infrastructure) -> None:
    """A cancel before execute() cancels that run only, alike in both executors."""
    for executor in (
        WorkflowExecutor(trading_workflow()),
        EnhancedWorkflowExecutor(trading_workflow(), infra, "wf"),
    ):
        executor.cancel()
        assert (await executor.execute())["status"] == "cancelled"
        assert (await executor.execute())["status"] == "completed"


def test_importing_the_enhanced_executor_loads_no_adapter_technology() -> None:
    """A fresh interpreter importing the enhanced executor's public path loads no sqlite3,
    redis, nats or grpc module: the engine sees only ports."""
    probe = (
        "import sys, tradeflow.workflow.enhanced_executor; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlite3', '_sqlite3', 'redis', 'nats', 'grpc'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ids", "field"),
    [
        ({"workflow_id": "w" * 5000}, "workflow_id"),
        ({"workflow_id": ""}, "workflow_id"),
        ({"bot_id": "b" * 5000}, "bot_id"),
        ({"bot_id": "bot.1"}, "bot_id"),
        ({"strategy_id": "s\x1b[0m"}, "strategy_id"),
    ],
)
async def test_enhanced_executor_refuses_a_malformed_id(
    infra: Infrastructure, ids: dict[str, str], field: str
) -> None:
    """The enhanced executor checks its workflow, bot and strategy ids where they enter."""
    arguments = {"workflow_id": "wf", **ids}
    with pytest.raises(InvalidRequest) as caught:
        EnhancedWorkflowExecutor(trading_workflow(), infra, **arguments)
    assert caught.value.field == field


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["correlation_id", "request_id", "execution_id"])
async def test_run_refuses_a_malformed_id_it_is_given(field: str) -> None:
    """run/execute check the ids a caller passes (None still means "make one up")."""
    executor = WorkflowExecutor(trading_workflow())
    with pytest.raises(InvalidRequest) as caught:
        await executor.execute(**{field: "x" * 129})
    assert caught.value.field == field
    assert (await executor.execute(**{field: None}))["status"] == "completed"


@pytest.mark.asyncio
async def test_resume_refuses_a_malformed_execution_id(infra: Infrastructure) -> None:
    """resume checks the execution id before it asks the state store."""
    with pytest.raises(InvalidRequest) as caught:
        await EnhancedWorkflowExecutor(trading_workflow(), infra, "wf").resume("e" * 20_000)
    assert caught.value.field == "execution_id"


@pytest.mark.asyncio
async def test_a_bot_running_back_to_back_keeps_its_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Embedded stores answer without suspending, so runs back to back once starved the
    lease's renewal: with a 0.2 s lease, executions run one after another for three
    lease times all complete (the lease was renewed in between), none lost its lease."""
    monkeypatch.setenv("TRADEFLOW_LEASE_SECONDS", "0.2")
    async with await Infrastructure.create("test") as infra:
        executor = EnhancedWorkflowExecutor(trading_workflow(), infra, workflow_id="busy")
        await executor.initialize()
        loop = asyncio.get_running_loop()
        until, runs = loop.time() + 0.6, 0
        async with asyncio.timeout(30):
            while loop.time() < until:
                result = await executor.execute()
                assert result["status"] == "completed", result
                runs += 1
    assert runs > 1
