"""Production mode end to end: real nats-server, redis-server and the three services
as subprocesses (the session ``stack``); the library and the gRPC edge on top."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
import pytest_asyncio
import seed_examples as seed
from gate import GateServer
from google.protobuf.timestamp_pb2 import Timestamp
from kit import DEADLINE_SECONDS, eventually
from servers import Stack, production_cli
from workflows import block, gated_orders, trading_workflow

from tradeflow.adapters.grpc import wire
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.domain.limits import DEFINITION_MAX_BYTES
from tradeflow.domain.records import ExecutionStatus, Scope
from tradeflow.engine.emergency import EmergencyHalted
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

ENV = "production"


@pytest_asyncio.fixture
async def executor_stub(production: Stack) -> AsyncIterator[pb_grpc.ExecutorServiceStub]:
    """A gRPC stub of the stack's executor service."""
    async with grpc.aio.insecure_channel(production.client_env()["TRADEFLOW_EXECUTOR_ADDR"]) as ch:
        yield pb_grpc.ExecutorServiceStub(ch)


# -- the seed's examples, in production mode ------------------------------------------


@pytest.mark.asyncio
@pytest.mark.usefixtures("production")
async def test_seed_examples_pass_in_production_mode() -> None:
    """The seed's unit/integration test examples and patterns pass against the services."""
    await seed.unit_test_example(ENV, trading_workflow())
    events = await seed.integration_test_example(ENV, trading_workflow())
    assert {e["workflow_id"] for e in events if e["execution_id"]} == {"test"}
    printed, logged = await seed.example1_after(ENV, trading_workflow())
    assert printed == "Trading workflow completed" and "node_completed: buy" in logged
    results = await seed.example2_after(ENV, [trading_workflow() for _ in range(4)])
    assert [r["status"] for r in results] == ["completed"] * 4
    manager = seed.WorkflowManager(ENV)
    await manager.initialize()
    assert (await manager.execute_workflow(trading_workflow(), "wf1"))["status"] == "completed"
    assert manager.infra is not None
    await manager.infra.close()
    async with seed.ExecutorContext(trading_workflow(), "wf_001", ENV) as executor:
        assert (await executor.execute())["status"] == "completed"
    kind, result = await seed.rollback_option1(ENV, trading_workflow(), False)
    assert kind is EnhancedWorkflowExecutor and result["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.usefixtures("production")
async def test_seed_example3_breach_halts_every_executor() -> None:
    """Example 3 in production: the breach halts through the emergency service, and an
    executor on another infrastructure (another connection) is refused."""
    outcome, infra = await seed.example3_after(ENV, trading_workflow(), daily_pnl=-750.0)
    try:
        assert outcome == "Risk limit exceeded: daily_loss"
        async with await Infrastructure.create(ENV) as other:
            with pytest.raises(EmergencyHalted, match="daily_loss"):
                await EnhancedWorkflowExecutor(trading_workflow(), other, "later").execute()
    finally:
        await infra.close()


# -- events on NATS ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_events_on_documented_subjects_and_replay(
    production: Stack,
    executor_stub: pb_grpc.ExecutorServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With TRADEFLOW_NATS_EVENT_SUBJECTS=true, events arrive on
    tradeflow.v1.events.<bot>.<strategy>.<workflow>.<type> as the contract JSON; and
    StreamEvents replays them (published in batches by the executor service) from
    JetStream, resumable from a sequence."""
    monkeypatch.setenv("TRADEFLOW_NATS_EVENT_SUBJECTS", "true")
    nc = await nats.connect(production.client_env()["TRADEFLOW_NATS_URL"])
    received: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        event = json.loads(msg.data)
        received.append((msg.subject, event))
        if event["type"] == "execution_completed":
            done.set()

    await nc.subscribe("tradeflow.v1.events.botA.stratA.>", cb=on_msg)
    await nc.flush()
    await nc.request("$JS.API.INFO", b"", timeout=5)  # the SUB is registered before this answers
    async with await Infrastructure.create(ENV) as infra:
        result = await EnhancedWorkflowExecutor(
            trading_workflow(), infra, "wfA", "botA", "stratA"
        ).execute()
    await asyncio.wait_for(done.wait(), DEADLINE_SECONDS)
    await nc.close()
    execution_id = result["execution_id"]
    mine = [(s, e) for s, e in received if e["execution_id"] == execution_id]
    assert [s for s, e in mine] == [
        f"tradeflow.v1.events.botA.stratA.wfA.{e['type']}" for s, e in mine
    ]
    assert set(mine[0][1]) == {
        "schema_version",
        "type",
        "event_id",
        "sequence",
        "timestamp",
        "correlation_id",
        "execution_id",
        "workflow_id",
        "bot_id",
        "strategy_id",
        "node_id",
        "data",
    }
    assert [e["sequence"] for _, e in mine] == list(range(1, len(mine) + 1))

    async def replay(after: int) -> list[tuple[int, common_pb2.Event]]:
        got: list[tuple[int, common_pb2.Event]] = []
        call = executor_stub.StreamEvents(
            pb.StreamEventsRequest(execution_id=execution_id, after_sequence=after)
        )
        async for response in call:
            got.append((response.stream_sequence, response.event))
            if response.event.type == "execution_completed":
                call.cancel()
                break
        return got

    everything = await replay(0)
    assert [e.sequence for _, e in everything] == list(range(1, len(mine) + 1))
    assert wire.event_from_proto(everything[3][1]).to_dict() == mine[3][1]
    resumed = await replay(everything[4][0])
    assert [e.sequence for _, e in resumed] == list(range(6, len(mine) + 1))


# -- halts across processes ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_halt_stops_next_action_in_executor_service(
    production: Stack, executor_stub: pb_grpc.ExecutorServiceStub, gate: GateServer
) -> None:
    """An execution runs in the executor service (another process); a halt through the
    emergency service lands while it waits; its next order is refused, the first stands."""
    submitted = await executor_stub.SubmitWorkflow(
        pb.SubmitWorkflowRequest(
            workflow_id="gated", bot_id="botH", definition_json=json.dumps(gated_orders(gate.url))
        )
    )
    assert await asyncio.to_thread(gate.arrived.wait, 30)
    async with await Infrastructure.create(ENV) as infra:
        await infra.emergency.halt(Scope.BOT, "botH", reason="operator stop", actor="pytest")
    gate.open.set()
    execution = await _wait_final(executor_stub, submitted.execution_id)
    record, nodes = wire.execution_from_proto(execution)
    assert record.status is ExecutionStatus.HALTED
    assert "operator stop" in (record.error or "")
    assert nodes["first"].state.value == "completed"
    assert nodes["second"].state.value == "failed"


async def _wait_final(stub: pb_grpc.ExecutorServiceStub, execution_id: str) -> Any:
    """The execution once its record has left RUNNING (a final record no longer changes)."""
    request = pb.GetExecutionRequest(execution_id=execution_id)

    async def final() -> bool:
        response = await stub.GetExecution(request)
        return bool(response.execution.record.status != common_pb2.EXECUTION_STATUS_RUNNING)

    await eventually(final, f"{execution_id} left RUNNING", poll=0.02)
    return (await stub.GetExecution(request)).execution


# -- the gRPC edge ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_execute_and_repeated_request_id(executor_stub: pb_grpc.ExecutorServiceStub) -> None:
    """ExecuteWorkflow waits for the result; the same request_id returns the same execution."""
    request = pb.ExecuteWorkflowRequest(
        request_id="req-42",
        workflow_id="grpc",
        strategy_id="s1",
        definition_json=json.dumps(trading_workflow()),
    )
    first = await executor_stub.ExecuteWorkflow(request)
    second = await executor_stub.ExecuteWorkflow(request)
    submitted = await executor_stub.SubmitWorkflow(
        pb.SubmitWorkflowRequest(
            request_id="req-42", workflow_id="grpc", definition_json=json.dumps(trading_workflow())
        )
    )
    assert first.execution.record.status == common_pb2.EXECUTION_STATUS_COMPLETED
    assert [n.node_id for n in first.execution.nodes] == [
        "quote",
        "size",
        "cheap",
        "notional",
        "buy",
        "note",
    ]
    assert second.execution.record.execution_id == first.execution.record.execution_id
    assert submitted.execution_id == first.execution.record.execution_id
    page = await executor_stub.ListExecutions(
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(strategy_id="s1"))
    )
    assert [e.execution_id for e in page.page.executions] == [first.execution.record.execution_id]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("definition_json", "named"),
    [
        ("not json", "definition_json"),
        (
            json.dumps(
                {
                    "blocks": [
                        block("a", "triggers", "threshold", {"above": "x"}, {"value": "b.price"})
                    ]
                }
            ),
            "block 'a': field 'properties.above'",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    executor_stub: pb_grpc.ExecutorServiceStub, definition_json: str, named: str
) -> None:
    """Malformed JSON and invalid definitions get INVALID_ARGUMENT naming the field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor_stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="bad", definition_json=definition_json)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (caught.value.details() or "")


_HOSTILE = [
    ("ExecuteWorkflow", pb.ExecuteWorkflowRequest(workflow_id="w" * 5000), "workflow_id"),
    ("ExecuteWorkflow", pb.ExecuteWorkflowRequest(workflow_id="ok", bot_id="b" * 5000), "bot_id"),
    (
        "SubmitWorkflow",
        pb.SubmitWorkflowRequest(workflow_id="ok", strategy_id="s.1"),
        "strategy_id",
    ),
    (
        "SubmitWorkflow",
        pb.SubmitWorkflowRequest(workflow_id="ok", request_id="r" * 129),
        "request_id",
    ),
    (
        "ExecuteWorkflow",
        pb.ExecuteWorkflowRequest(workflow_id="ok", correlation_id="c\x1b[0m"),
        "correlation_id",
    ),
    ("GetExecution", pb.GetExecutionRequest(execution_id="e" * 20_000), "execution_id"),
    ("CancelExecution", pb.CancelExecutionRequest(execution_id="e" * 20_000), "execution_id"),
    ("StreamEvents", pb.StreamEventsRequest(after_sequence=2**64 - 1), "after_sequence"),
    ("StreamEvents", pb.StreamEventsRequest(bot_id="b" * 5000), "bot_id"),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(
            query=common_pb2.ExecutionQuery(started_after=Timestamp(seconds=2**62))
        ),
        "query.started_after",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(page_token="t" * 100_000)),
        "query.page_token",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(status=42)),  # type: ignore[arg-type]
        "query.status",
    ),
    (
        "ValidateWorkflow",
        # Not JSON at all: refused for its size, so it was never parsed.
        pb.ValidateWorkflowRequest(definition_json="[" * (DEFINITION_MAX_BYTES + 1)),
        "definition_json",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "request_", "field"), _HOSTILE)
async def test_hostile_requests_are_invalid_argument_naming_the_field(
    executor_stub: pb_grpc.ExecutorServiceStub, method: str, request_: Any, field: str
) -> None:
    """Ids, cursors, queries and sizes past their limits answer INVALID_ARGUMENT naming the
    field, with a bounded message (issue 7)."""
    call = getattr(executor_stub, method)(request_)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(DEADLINE_SECONDS):
            await (call.read() if method == "StreamEvents" else call)
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"invalid field {field!r}" in details and len(details) < 1000


@pytest.mark.asyncio
async def test_oversized_definition_is_refused_before_it_is_parsed(
    executor_stub: pb_grpc.ExecutorServiceStub,
) -> None:
    """A definition over DEFINITION_MAX_BYTES is refused for its size, not its content."""
    text = json.dumps({"blocks": [], "pad": "x" * DEFINITION_MAX_BYTES})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor_stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="big", definition_json=text)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {DEFINITION_MAX_BYTES} bytes" in (caught.value.details() or "")


@pytest.mark.asyncio
async def test_events_still_flow_after_a_long_bot_id_is_refused(
    executor_stub: pb_grpc.ExecutorServiceStub,
) -> None:
    """After a 5 KB bot_id is refused, a later execution's events still reach the stream."""
    definition_json = json.dumps(trading_workflow())
    with pytest.raises(grpc.aio.AioRpcError):
        await executor_stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                workflow_id="wf", bot_id="b" * 5000, definition_json=definition_json
            )
        )
    done = await executor_stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id="wf", bot_id="bot-7", definition_json=definition_json)
    )
    execution_id = done.execution.record.execution_id
    stream = executor_stub.StreamEvents(
        pb.StreamEventsRequest(after_sequence=0, execution_id=execution_id)
    )
    async with asyncio.timeout(DEADLINE_SECONDS):
        first = await stream.read()
    stream.cancel()
    assert (first.event.type, first.event.bot_id) == ("execution_started", "bot-7")


@pytest.mark.asyncio
async def test_validate_workflow_lists_every_problem(
    executor_stub: pb_grpc.ExecutorServiceStub,
) -> None:
    """ValidateWorkflow returns every issue as data, not an error."""
    definition = {"blocks": [block("a", "providers", "nope"), block("a", "risk", "max_position")]}
    response = await executor_stub.ValidateWorkflow(
        pb.ValidateWorkflowRequest(definition_json=json.dumps(definition))
    )
    assert not response.valid
    fields = {(i.block_id, i.field) for i in response.issues}
    assert ("a", "type") in fields and ("a", "id") in fields


@pytest.mark.asyncio
async def test_deadline_exceeded_leaves_the_execution_running(
    executor_stub: pb_grpc.ExecutorServiceStub, gate: GateServer
) -> None:
    """A caller's deadline ends its call, not the execution, which completes later."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor_stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                request_id="slow-1",
                workflow_id="slow",
                definition_json=json.dumps(gated_orders(gate.url)),
            ),
            timeout=0.5,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.open.set()
    again = await executor_stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(
            request_id="slow-1",
            workflow_id="slow",
            definition_json=json.dumps(gated_orders(gate.url)),
        )
    )
    assert again.execution.record.status == common_pb2.EXECUTION_STATUS_COMPLETED


@pytest.mark.asyncio
async def test_cancel_execution(
    executor_stub: pb_grpc.ExecutorServiceStub, gate: GateServer
) -> None:
    """CancelExecution stops a running execution before its next node."""
    submitted = await executor_stub.SubmitWorkflow(
        pb.SubmitWorkflowRequest(
            workflow_id="cancel-me", definition_json=json.dumps(gated_orders(gate.url))
        )
    )
    assert await asyncio.to_thread(gate.arrived.wait, 30)
    response = await executor_stub.CancelExecution(
        pb.CancelExecutionRequest(execution_id=submitted.execution_id, reason="test")
    )
    assert response.cancelled
    assert response.status == common_pb2.EXECUTION_STATUS_RUNNING
    gate.open.set()
    execution = await _wait_final(executor_stub, submitted.execution_id)
    assert execution.record.status == common_pb2.EXECUTION_STATUS_CANCELLED
    assert [n.node_id for n in execution.nodes] == ["size", "first", "wait"]
    unknown = executor_stub.CancelExecution(pb.CancelExecutionRequest(execution_id="nope"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unknown
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_restart_of_the_executor_service_loses_no_execution(production: Stack) -> None:
    """Executions submitted just before a SIGTERM are finished by the drain and are all
    there, completed, after the service comes back."""

    async def submit_all() -> list[str]:
        async with grpc.aio.insecure_channel(
            production.client_env()["TRADEFLOW_EXECUTOR_ADDR"]
        ) as ch:
            stub = pb_grpc.ExecutorServiceStub(ch)
            ids = []
            for i in range(20):
                response = await stub.SubmitWorkflow(
                    pb.SubmitWorkflowRequest(
                        workflow_id=f"restart{i}", definition_json=json.dumps(trading_workflow())
                    )
                )
                ids.append(response.execution_id)
            return ids

    async def statuses(ids: list[str]) -> list[int]:
        async with grpc.aio.insecure_channel(
            production.client_env()["TRADEFLOW_EXECUTOR_ADDR"]
        ) as ch:
            stub = pb_grpc.ExecutorServiceStub(ch)
            return [
                (
                    await stub.GetExecution(pb.GetExecutionRequest(execution_id=i))
                ).execution.record.status
                for i in ids
            ]

    ids = asyncio.run(submit_all())
    executor = production.processes["executor"]
    assert executor.stop() == 0
    executor.start()
    assert asyncio.run(statuses(ids)) == [common_pb2.EXECUTION_STATUS_COMPLETED] * 20


def test_cli_runs_and_halts_in_production_mode(production: Stack, tmp_path: Any) -> None:
    """`tradeflow run --env production` runs against the stack; `tradeflow halt --env
    production` from another process makes the next run exit 3."""
    path = tmp_path / "bot.json"
    path.write_text(json.dumps(trading_workflow()))
    env = {**production.client_env(), "TRADEFLOW_LOG_LEVEL": "warning"}

    def tradeflow(*args: str) -> subprocess.CompletedProcess[str]:
        return production_cli(env, *args, timeout=120)

    run = tradeflow("run", str(path), "--bot-id", "cli-bot")
    assert run.returncode == 0, run.stderr
    assert "= completed in" in run.stdout
    listed = tradeflow("executions", "list", "--bot", "cli-bot")
    assert "completed" in listed.stdout
    assert tradeflow("halt", "--reason", "cli stop").returncode == 0
    halted = tradeflow("run", str(path))
    assert halted.returncode == 3
    assert "cli stop" in halted.stderr
    assert "HALTED global" in tradeflow("status").stdout
