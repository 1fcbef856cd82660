"""The state service as a real process on a real redis-server, through StateClient and raw gRPC."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import kit
import pytest
import pytest_asyncio
import redis
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from servers import ServerProcess, Service, start_redis
from state_fixtures import STATE_SERVICE_NAME, start_state_service
from workflows import trading_workflow

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.codec import MAX_EVENTS_PAGE
from tradeflow.domain.errors import ExecutionNotFound, InvalidRequest, LeaseLost, OwnerAlive
from tradeflow.domain.limits import DEFINITION_MAX_BYTES, ID_PATTERN
from tradeflow.domain.ownership import Claim, Heartbeat, OwnerInfo
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.engine.ownership import LeaseKeeper
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.state.v1 import state_service_pb2 as pb
from tradeflow.proto.state.v1 import state_service_pb2_grpc
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

pytestmark = pytest.mark.integration

T0 = 1_767_323_045.25
BIG = 2**63 - 1
"""An integer a double cannot hold: JSON fields must carry it exactly."""


def record(execution_id: str, workflow_id: str = "wf", **fields: Any) -> ExecutionRecord:
    """A kit record started at ``T0`` (unless told) whose definition holds ``BIG``."""
    fields.setdefault("started_at", T0)
    definition = {"blocks": [{"id": "a", "properties": {"qty": BIG}}]}
    return kit.execution(execution_id, workflow_id, definition=definition, **fields)


def event(execution_id: str, sequence: int) -> Event:
    """A kit event with every optional field set and ``BIG`` in its data."""
    data = {"sequence": sequence, "qty": BIG}
    timestamp = T0 + sequence / 1000
    return kit.event(
        execution_id, sequence, data, timestamp=timestamp, bot_id="bot", strategy_id="strat"
    )


def checkpoint(execution_id: str, node_id: str, **fields: Any) -> Checkpoint:
    return kit.checkpoint(
        execution_id, node_id, outputs={"out": node_id}, updated_at=T0 + 1, **fields
    )


@pytest_asyncio.fixture
async def stub(state_service: Service) -> AsyncIterator[Any]:
    """The raw generated stub on its own channel: requests no client would build."""
    async with grpc.aio.insecure_channel(state_service.address) as channel:
        yield state_service_pb2_grpc.StateServiceStub(channel)


@pytest.mark.asyncio
async def test_batch_round_trips_through_the_service(state_client: StateClient) -> None:
    """A written record, its checkpoints and events come back equal, final status included."""
    eid = new_id()
    running = record(eid, bot_id="bot", strategy_id="strat", request_id=f"req-{eid}")
    checkpoints = (
        checkpoint(eid, "a"),
        Checkpoint(eid, "b", CheckpointState.INTENT, T0 + 2, None, None, 2),
    )
    events = tuple(event(eid, n) for n in range(1, 4))
    await state_client.write(StateBatch(running, checkpoints, events))
    done = record(
        eid,
        bot_id="bot",
        strategy_id="strat",
        request_id=f"req-{eid}",
        status=ExecutionStatus.COMPLETED,
        finished_at=T0 + 3,
        result={"status": "completed", "filled": BIG},
    )
    await state_client.write(StateBatch(done, (checkpoint(eid, "b", attempt=2),)))

    assert await state_client.get_execution(eid) == done
    assert await state_client.find_by_request_id(f"req-{eid}") == done
    assert await state_client.find_by_request_id(f"unknown-{eid}") is None
    assert await state_client.get_checkpoints(eid) == {
        "a": checkpoints[0],
        "b": checkpoint(eid, "b", attempt=2),
    }
    history = await state_client.read_events(execution_id=eid)
    assert [e for _, e in history] == list(events)
    cursors = [cursor for cursor, _ in history]
    assert cursors == sorted(cursors)
    after_first = await state_client.read_events(after=cursors[0], execution_id=eid)
    assert [e for _, e in after_first] == list(events[1:])


@pytest.mark.asyncio
async def test_unknown_execution_is_not_found(state_client: StateClient) -> None:
    """GetExecution of an id nobody wrote raises ExecutionNotFound; its checkpoints are empty."""
    eid = new_id()
    with pytest.raises(ExecutionNotFound) as caught:
        await state_client.get_execution(eid)
    assert caught.value.message == f"execution {eid!r} not found"
    assert await state_client.get_checkpoints(eid) == {}


@pytest.mark.asyncio
async def test_list_filters_and_pages_newest_first(state_client: StateClient) -> None:
    """Filters narrow the listing; pages of two walk every match newest first, once each."""
    workflow_id = f"wf-{new_id()}"
    records = [
        record(
            f"{workflow_id}-{n}",
            workflow_id,
            started_at=T0 + n,
            bot_id="even" if n % 2 == 0 else "odd",
            status=ExecutionStatus.COMPLETED if n < 3 else ExecutionStatus.RUNNING,
        )
        for n in range(5)
    ]
    for r in records:
        await state_client.write(StateBatch(r))

    seen: list[ExecutionRecord] = []
    token = None
    while True:
        page = await state_client.list_executions(
            ExecutionQuery(workflow_id=workflow_id, limit=2, page_token=token)
        )
        assert len(page.executions) <= 2
        seen.extend(page.executions)
        token = page.next_page_token
        if token is None:
            break
    assert seen == records[::-1]

    async def ids(**query: Any) -> list[str]:
        page = await state_client.list_executions(ExecutionQuery(workflow_id=workflow_id, **query))
        return [r.execution_id for r in page.executions]

    assert await ids(bot_id="even") == [f"{workflow_id}-{n}" for n in (4, 2, 0)]
    assert await ids(status=ExecutionStatus.RUNNING) == [f"{workflow_id}-{n}" for n in (4, 3)]
    assert await ids(started_after=T0 + 1, started_before=T0 + 3) == [
        f"{workflow_id}-{n}" for n in (2, 1)
    ]
    # The embedded store clamps a limit below 1; so does the client.
    assert await ids(limit=-5) == [f"{workflow_id}-4"]


@pytest.mark.asyncio
async def test_read_events_pages_past_one_call(state_client: StateClient) -> None:
    """A limit larger than one service page returns every event, in order, with no gaps;
    the last sequence comes in one call."""
    eid = new_id()
    total = MAX_EVENTS_PAGE * 2 + 7
    events = [event(eid, n) for n in range(1, total + 1)]
    for start in range(0, total, 500):
        await state_client.write(StateBatch(events=tuple(events[start : start + 500])))
    history = await state_client.read_events(execution_id=eid, limit=1_000_000)
    assert [e.sequence for _, e in history] == list(range(1, total + 1))
    limited = await state_client.read_events(execution_id=eid, limit=MAX_EVENTS_PAGE + 1)
    assert [e.sequence for _, e in limited] == list(range(1, MAX_EVENTS_PAGE + 2))
    assert await state_client.last_sequence(eid) == total


@pytest.mark.asyncio
async def test_enhanced_executor_runs_unchanged_on_the_client(
    state_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enhanced executor whose state store is a StateClient persists its run in the service."""
    monkeypatch.setenv("TRADEFLOW_SQLITE_PATH", ":memory:")
    async with await Infrastructure.create("test") as infra:
        # Replaces the embedded store, and the lease taken on it by one on the service;
        # closing the infrastructure releases that lease and closes the client.
        infra.state = StateClient(state_service.address)
        await infra.owner.stop()
        infra.owner = LeaseKeeper(
            infra.state, infra.owner.info, ttl=30.0, clock=SystemClock(), log=infra.log
        )
        await infra.owner.start()
        result = await EnhancedWorkflowExecutor(trading_workflow(), infra, "remote").execute()
    eid = result["execution_id"]
    assert result["status"] == "completed"
    reader = StateClient(state_service.address)
    try:
        stored = await reader.get_execution(eid)
        checkpoints = await reader.get_checkpoints(eid)
        history = await reader.read_events(execution_id=eid)
    finally:
        await reader.close()
    assert stored.status is ExecutionStatus.COMPLETED
    assert checkpoints["buy"].state is CheckpointState.COMPLETED
    sequences = [e.sequence for _, e in history]
    assert sequences == list(range(1, len(sequences) + 1))
    assert history[-1][1].type == EventType.EXECUTION_COMPLETED


def _batch(
    execution: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
) -> pb.WriteBatchRequest:
    """A valid request for a fresh execution, its parts' fields overridden as given."""
    eid = new_id()
    return pb.WriteBatchRequest(
        execution=common_pb2.ExecutionRecord(
            **{
                "execution_id": eid,
                "workflow_id": "wf",
                "status": common_pb2.EXECUTION_STATUS_RUNNING,
                "started_at": {"seconds": int(T0)},
                "definition_json": "{}",
                "correlation_id": "c",
                **(execution or {}),
            }
        ),
        checkpoints=[
            common_pb2.Checkpoint(
                **{
                    "execution_id": eid,
                    "node_id": "a",
                    "state": common_pb2.CHECKPOINT_STATE_COMPLETED,
                    **(checkpoint or {}),
                }
            )
        ],
        events=[
            common_pb2.Event(
                **{"type": "node_completed", "event_id": "e1", "execution_id": eid, **(event or {})}
            )
        ],
    )


def _owner_info(**fields: Any) -> pb.OwnerInfo:
    return pb.OwnerInfo(**{"owner": "o", "kind": "executor", "host": "h", "pid": 1, **fields})


GOOD_FENCE = pb.Fence(owner="o", epoch=1)


def _fenced(fence: pb.Fence) -> pb.WriteBatchRequest:
    request = _batch()
    request.fence.CopyFrom(fence)
    return request


def _second_event_bad() -> pb.WriteBatchRequest:
    """A valid request followed by an event without a type: the error must name index 1."""
    request = _batch()
    request.events.add(event_id="e2", execution_id=request.execution.execution_id)
    return request


BAD_REQUESTS = [
    ("GetExecution", pb.GetExecutionRequest(), "execution_id"),
    ("GetCheckpoints", pb.GetCheckpointsRequest(), "execution_id"),
    ("FindExecutionByRequestId", pb.FindExecutionByRequestIdRequest(), "request_id"),
    ("WriteBatch", _batch(execution={"execution_id": ""}), "execution.execution_id"),
    ("WriteBatch", _batch(execution={"workflow_id": ""}), "execution.workflow_id"),
    ("WriteBatch", _batch(execution={"started_at": None}), "execution.started_at"),
    ("WriteBatch", _batch(execution={"status": 0}), "execution.status"),
    ("WriteBatch", _batch(execution={"status": 99}), "execution.status"),
    ("WriteBatch", _batch(execution={"definition_json": "[1]"}), "execution.definition_json"),
    ("WriteBatch", _batch(execution={"result_json": "{nope"}), "execution.result_json"),
    ("WriteBatch", _batch(checkpoint={"execution_id": "other"}), "checkpoints[0].execution_id"),
    ("WriteBatch", _batch(checkpoint={"node_id": ""}), "checkpoints[0].node_id"),
    ("WriteBatch", _batch(checkpoint={"state": 0}), "checkpoints[0].state"),
    ("WriteBatch", _batch(checkpoint={"outputs_json": "nan"}), "checkpoints[0].outputs_json"),
    ("WriteBatch", _batch(event={"execution_id": "other"}), "events[0].execution_id"),
    ("WriteBatch", _batch(event={"event_id": ""}), "events[0].event_id"),
    ("WriteBatch", _batch(event={"data_json": "3"}), "events[0].data_json"),
    ("WriteBatch", _second_event_bad(), "events[1].type"),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(page_size=1001)),
        "query.page_size",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(status=42)),  # type: ignore[arg-type]
        "query.status",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(
            query=common_pb2.ExecutionQuery(
                started_after=Timestamp(seconds=int(T0) + 5),
                started_before=Timestamp(seconds=int(T0)),
            )
        ),
        "query.started_before",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(page_token="not-a-token")),
        "page_token",
    ),
    ("ReadEvents", pb.ReadEventsRequest(limit=MAX_EVENTS_PAGE + 1), "limit"),
    ("ReadEvents", pb.ReadEventsRequest(execution_id=""), "execution_id"),
    ("GetLastSequence", pb.GetLastSequenceRequest(), "execution_id"),
    # Issue 7: ids, cursors, timestamps and sizes past their limits.
    ("GetExecution", pb.GetExecutionRequest(execution_id="e" * 20_000), "execution_id"),
    ("GetCheckpoints", pb.GetCheckpointsRequest(execution_id="a.b"), "execution_id"),
    ("GetLastSequence", pb.GetLastSequenceRequest(execution_id="a\x1bb"), "execution_id"),
    (
        "FindExecutionByRequestId",
        pb.FindExecutionByRequestIdRequest(request_id="r " * 9),
        "request_id",
    ),
    ("ReadEvents", pb.ReadEventsRequest(after=2**64 - 1), "after"),
    ("ReadEvents", pb.ReadEventsRequest(execution_id="e" * 5000), "execution_id"),
    ("WriteBatch", _batch(execution={"bot_id": "b" * 5000}), "execution.bot_id"),
    ("WriteBatch", _batch(execution={"correlation_id": ""}), "execution.correlation_id"),
    ("WriteBatch", _batch(execution={"request_id": "r.1"}), "execution.request_id"),
    (
        "WriteBatch",
        _batch(execution={"definition_json": "x" * (DEFINITION_MAX_BYTES + 1)}),
        "execution.definition_json",
    ),
    ("WriteBatch", _batch(checkpoint={"node_id": "n" * 5000}), "checkpoints[0].node_id"),
    ("WriteBatch", _batch(event={"workflow_id": "w" * 5000}), "events[0].workflow_id"),
    ("WriteBatch", _batch(event={"type": "a b"}), "events[0].type"),
    ("WriteBatch", _batch(event={"sequence": 2**64 - 1}), "events[0].sequence"),
    (
        "WriteBatch",
        _batch(execution={"started_at": {"seconds": 2**63 - 1}}),
        "execution.started_at",
    ),
    ("WriteBatch", _batch(execution={"finished_at": {"seconds": -1}}), "execution.finished_at"),
    (
        "WriteBatch",
        _batch(checkpoint={"updated_at": {"seconds": 2**62}}),
        "checkpoints[0].updated_at",
    ),
    ("WriteBatch", _batch(event={"timestamp": {"seconds": -(2**62)}}), "events[0].timestamp"),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(
            query=common_pb2.ExecutionQuery(started_after=Timestamp(seconds=2**62))
        ),
        "query.started_after",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(
            query=common_pb2.ExecutionQuery(started_before=Timestamp(seconds=-(2**62)))
        ),
        "query.started_before",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(page_token="t" * 100_000)),
        "query.page_token",
    ),
    (
        "ListExecutions",
        pb.ListExecutionsRequest(query=common_pb2.ExecutionQuery(bot_id="b" * 5000)),
        "query.bot_id",
    ),
    ("WriteBatch", _fenced(pb.Fence(owner="o", epoch=0)), "fence.epoch"),
    ("WriteBatch", _fenced(pb.Fence(owner="o o", epoch=1)), "fence.owner"),
    ("AcquireLease", pb.AcquireLeaseRequest(ttl_ms=1000), "owner.owner"),
    (
        "AcquireLease",
        pb.AcquireLeaseRequest(owner=_owner_info(owner="x" * 129), ttl_ms=1000),
        "owner.owner",
    ),
    ("AcquireLease", pb.AcquireLeaseRequest(owner=_owner_info(kind=""), ttl_ms=1000), "owner.kind"),
    (
        "AcquireLease",
        pb.AcquireLeaseRequest(owner=_owner_info(host="\x1b[2J"), ttl_ms=1000),
        "owner.host",
    ),
    ("AcquireLease", pb.AcquireLeaseRequest(owner=_owner_info(), ttl_ms=99), "ttl_ms"),
    ("AcquireLease", pb.AcquireLeaseRequest(owner=_owner_info(), ttl_ms=3_600_001), "ttl_ms"),
    ("RenewLease", pb.RenewLeaseRequest(ttl_ms=1000), "fence.owner"),
    ("RenewLease", pb.RenewLeaseRequest(fence=GOOD_FENCE, ttl_ms=0), "ttl_ms"),
    ("ReleaseLease", pb.ReleaseLeaseRequest(fence=pb.Fence(owner="o", epoch=0)), "fence.epoch"),
    (
        "ClaimExecution",
        pb.ClaimExecutionRequest(execution_id="a b", fence=GOOD_FENCE),
        "execution_id",
    ),
    ("ClaimExecution", pb.ClaimExecutionRequest(execution_id="e"), "fence.owner"),
    ("ListOrphans", pb.ListOrphansRequest(limit=1001), "limit"),
    ("RequestCancel", pb.RequestCancelRequest(), "execution_id"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("method", "request_", "field"), BAD_REQUESTS)
async def test_bad_request_is_invalid_argument_naming_the_field(
    stub: Any, method: str, request_: Message, field: str
) -> None:
    """A malformed request fails with INVALID_ARGUMENT and a message naming the field."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, method)(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"invalid field {field!r}" in (caught.value.details() or "")


@pytest.mark.asyncio
async def test_lease_errors_arrive_as_their_classes_with_their_fields(
    state_client: StateClient,
) -> None:
    """Through the service a refused fence is LeaseLost (owner, epoch, execution), a claim of a
    live owner's execution OwnerAlive naming it, a lapsed renewal LeaseLost."""
    eid, name = new_id(), f"a-{new_id()}"
    holder = await state_client.acquire_lease(OwnerInfo(name, "cli", "box", 42), 30.0)
    other = await state_client.acquire_lease(OwnerInfo(f"b-{eid}", "executor", "box", 7), 30.0)
    await state_client.write(StateBatch(record(eid), fence=holder.fence))

    with pytest.raises(OwnerAlive) as alive:
        await state_client.claim(eid, other)
    with pytest.raises(LeaseLost) as lost:
        await state_client.write(StateBatch(record(eid), fence=other.fence))
    await state_client.release_lease(holder)
    with pytest.raises(LeaseLost) as lapsed:
        await state_client.renew_lease(holder)

    assert (alive.value.execution_id, alive.value.owner) == (eid, f"{name} (cli, pid 42 on box)")
    assert (lost.value.owner, lost.value.epoch, lost.value.execution_id) == (
        other.info.owner,
        other.epoch,
        eid,
    )
    assert f"owned by {name} (epoch {holder.epoch})" in lost.value.message
    assert (lapsed.value.owner, lapsed.value.epoch, lapsed.value.execution_id) == (
        name,
        holder.epoch,
        None,
    )


@pytest.mark.asyncio
async def test_a_dead_owners_execution_is_listed_claimed_and_cancelled_through_the_service(
    state_client: StateClient,
) -> None:
    """Each lease RPC end to end: a released owner's execution is an orphan, a claim takes it
    over, a cancel request reaches the new owner's next heartbeat once and stays on the
    execution."""
    eid = new_id()
    dead = await state_client.acquire_lease(OwnerInfo(f"dead-{eid}", "cli", "h", 1), 30.0)
    alive = await state_client.acquire_lease(OwnerInfo(f"alive-{eid}", "executor", "h", 2), 30.0)
    await state_client.write(StateBatch(record(eid, started_at=1.0), fence=dead.fence))
    await state_client.release_lease(dead)

    orphans = {r.execution_id: r for r in await state_client.orphans(1000)}
    claim = await state_client.claim(eid, alive)
    cancelled = await state_client.request_cancel(eid)

    assert (orphans[eid].owner, orphans[eid].owner_live) == (dead.info.owner, False)
    assert claim == Claim(previous_owner=dead.info.owner, takeover=True, takeovers=1)
    assert (cancelled.status, cancelled.owner, cancelled.owner_live) == (
        ExecutionStatus.RUNNING,
        alive.info.owner,
        True,
    )
    assert await state_client.renew_lease(alive) == Heartbeat(cancel=(eid,))
    assert await state_client.renew_lease(alive) == Heartbeat()
    # The request stays on the execution: a claim (its own owner's too) is told of it.
    assert await state_client.claim(eid, alive) == Claim(alive.info.owner, False, 1, True)
    assert eid not in {r.execution_id for r in await state_client.orphans(1000)}


@pytest.mark.asyncio
async def test_a_claims_takeover_flag_and_cancel_request_cross_the_service(
    state_client: StateClient,
) -> None:
    """ClaimExecution carries takeover both ways: a takeover of a failed execution is refused
    (InvalidRequest naming execution_id), a plain claim of it is not; and a cancel asked of
    a live owner that then died comes back with the next claim (cancel_requested)."""
    failed, running = new_id(), new_id()
    first = await state_client.acquire_lease(OwnerInfo(f"first-{failed}", "cli", "h", 1), 30.0)
    taker = await state_client.acquire_lease(OwnerInfo(f"taker-{failed}", "cli", "h", 2), 30.0)
    ended = record(failed, status=ExecutionStatus.FAILED, finished_at=T0 + 1)
    await state_client.write(StateBatch(ended, fence=first.fence))
    await state_client.write(StateBatch(record(running), fence=first.fence))
    await state_client.request_cancel(running)
    await state_client.release_lease(first)

    with pytest.raises(InvalidRequest) as refused:
        await state_client.claim(failed, taker, takeover=True)
    resumed = await state_client.claim(failed, taker)
    cancelled = await state_client.claim(running, taker, takeover=True)

    assert refused.value.field == "execution_id"
    assert f"{failed} (failed)" in refused.value.message
    assert resumed == Claim(first.info.owner, takeover=False, takeovers=0)
    assert cancelled == Claim(first.info.owner, takeover=True, takeovers=1, cancel_requested=True)
    assert (await state_client.get_execution(failed)).status is ExecutionStatus.RUNNING


@pytest.mark.asyncio
async def test_list_orphans_without_a_limit_returns_a_hundred(
    stub: Any, state_client: StateClient
) -> None:
    """ListOrphans with limit 0 answers the default 100 when more orphans exist."""
    for _ in range(101):
        await state_client.write(StateBatch(record(new_id(), started_at=2.0)))

    response = await stub.ListOrphans(pb.ListOrphansRequest())

    assert len(response.executions) == 100


@pytest.mark.asyncio
async def test_malformed_correlation_id_is_replaced_not_echoed(stub: Any) -> None:
    """A malformed x-correlation-id is not echoed: the trailers carry a fresh, well-formed id."""
    sent = "c" * 5000
    call = stub.GetLastSequence(
        pb.GetLastSequenceRequest(execution_id=new_id()), metadata=(("x-correlation-id", sent),)
    )
    await call
    echoed = dict(await call.trailing_metadata())["x-correlation-id"]
    assert echoed != sent and ID_PATTERN.fullmatch(echoed)


@pytest.mark.asyncio
async def test_rejected_batch_writes_nothing(stub: Any, state_client: StateClient) -> None:
    """A batch rejected for one bad event keeps none of its record, checkpoints or events."""
    request = _batch(event={"execution_id": "other"})
    eid = request.execution.execution_id
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.WriteBatch(request)
    with pytest.raises(ExecutionNotFound):
        await state_client.get_execution(eid)
    assert await state_client.get_checkpoints(eid) == {}


@pytest.mark.asyncio
async def test_client_raises_invalid_request_with_the_field(state_client: StateClient) -> None:
    """Through StateClient the rejection is the domain's InvalidRequest, field intact."""
    eid = new_id()
    batch = StateBatch(record(eid), (checkpoint(f"other-{eid}", "a"),))
    with pytest.raises(InvalidRequest) as caught:
        await state_client.write(batch)
    assert caught.value.field == "checkpoints[0].execution_id"


def test_health_serving_and_reflection_lists_the_service(state_service: Service) -> None:
    """Health says SERVING for the server and the service; reflection names the service."""
    with grpc.insecure_channel(state_service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", STATE_SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {STATE_SERVICE_NAME, "grpc.health.v1.Health"} <= services


@pytest.mark.asyncio
async def test_metrics_time_calls_by_method(
    state_service: Service, state_client: StateClient
) -> None:
    """/metrics counts calls in tradeflow_rpc_server_handled_seconds, by method and code."""
    with pytest.raises(ExecutionNotFound):
        await state_client.get_execution(new_id())
    await state_client.get_checkpoints(new_id())
    async with httpx.AsyncClient() as http:
        text = (await http.get(state_service.metrics_url)).text
    assert (
        'tradeflow_rpc_server_handled_seconds_count{code="NOT_FOUND",method="GetExecution"}' in text
    )
    assert 'tradeflow_rpc_server_handled_seconds_count{code="OK",method="GetCheckpoints"}' in text


async def _write_batches_calls(http: httpx.AsyncClient, service: Service) -> float:
    """How many WriteBatches calls the service has answered OK so far."""
    text = (await http.get(service.metrics_url)).text
    line = 'tradeflow_rpc_server_handled_seconds_count{code="OK",method="WriteBatches"} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


@pytest.mark.asyncio
async def test_concurrent_writes_share_calls_and_each_gets_its_own_outcome(
    state_service: Service, state_client: StateClient
) -> None:
    """Group commit: 40 executions writing at once go in a few WriteBatches calls (not
    40), every batch is stored, and a batch refused in the group (another lease's fence;
    a malformed one) fails only its own writer, with its own error and field."""
    holder = await state_client.acquire_lease(OwnerInfo(f"g-{new_id()}", "executor", "b", 1), 30)
    other = await state_client.acquire_lease(OwnerInfo(f"h-{new_id()}", "executor", "b", 2), 30)
    taken = new_id()
    await state_client.write(StateBatch(record(taken), fence=holder.fence))
    ids = [new_id() for _ in range(40)]
    async with httpx.AsyncClient() as http:
        before = await _write_batches_calls(http, state_service)
        outcomes = await asyncio.gather(
            *(
                state_client.write(
                    StateBatch(record(eid), (checkpoint(eid, "a"),), (event(eid, 1),))
                )
                for eid in ids
            ),
            state_client.write(StateBatch(record(taken), fence=other.fence)),
            state_client.write(StateBatch(record(new_id()), (checkpoint("elsewhere", "a"),))),
            return_exceptions=True,
        )
        calls = await _write_batches_calls(http, state_service) - before
    assert outcomes[:40] == [None] * 40
    assert isinstance(outcomes[40], LeaseLost)
    assert isinstance(outcomes[41], InvalidRequest)
    assert outcomes[41].field == "checkpoints[0].execution_id"
    assert 1 <= calls <= 3
    for eid in ids:
        assert (await state_client.get_execution(eid)).execution_id == eid
        assert await state_client.last_sequence(eid) == 1
    assert (await state_client.get_execution(taken)).epoch == holder.epoch


@pytest.mark.asyncio
async def test_write_batches_refuses_a_second_batch_of_one_execution_and_too_many(
    stub: Any, state_client: StateClient
) -> None:
    """In one WriteBatches call a second batch of an execution is refused in its own
    outcome (the first and the others are written); more than 256 batches fail the whole
    call with INVALID_ARGUMENT naming `batches`, writing nothing."""
    eid, other = new_id(), new_id()
    first = wire.state_batch_to_proto(StateBatch(record(eid)))
    second = wire.state_batch_to_proto(StateBatch(record(eid, status=ExecutionStatus.FAILED)))
    elsewhere = wire.state_batch_to_proto(StateBatch(record(other)))
    reply = await stub.WriteBatches(pb.WriteBatchesRequest(batches=[first, second, elsewhere]))
    assert [bool(outcome.error) for outcome in reply.outcomes] == [False, True, False]
    assert json.loads(reply.outcomes[1].error)["details"]["field"] == "batches"
    assert (await state_client.get_execution(eid)).status is ExecutionStatus.RUNNING
    await state_client.get_execution(other)

    never = new_id()
    too_many = [wire.state_batch_to_proto(StateBatch(record(never)))] + [
        wire.state_batch_to_proto(StateBatch(record(new_id()))) for _ in range(256)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WriteBatches(pb.WriteBatchesRequest(batches=too_many))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'batches'" in (caught.value.details() or "")
    with pytest.raises(ExecutionNotFound):
        await state_client.get_execution(never)


@pytest.mark.asyncio
async def test_two_batches_of_one_execution_pending_together_go_in_order(
    state_client: StateClient,
) -> None:
    """Group commit: a second batch of an execution handed over while its first waits
    (a drain's "interrupted" mark behind a cancelled writer's batch) goes in the next
    call, after the first: both land, in order, and an unrelated batch of the same round
    is not failed by them."""
    eid, other = new_id(), new_id()
    outcomes = await asyncio.gather(
        state_client.write(StateBatch(record(eid), (checkpoint(eid, "a"),), (event(eid, 1),))),
        state_client.write(
            StateBatch(record(eid, status=ExecutionStatus.INTERRUPTED), (), (event(eid, 2),))
        ),
        state_client.write(StateBatch(record(other))),
    )
    assert outcomes == [None, None, None]
    assert (await state_client.get_execution(eid)).status is ExecutionStatus.INTERRUPTED
    assert await state_client.last_sequence(eid) == 2
    assert set(await state_client.get_checkpoints(eid)) == {"a"}
    await state_client.get_execution(other)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[ServerProcess]:
    """A redis-server of this test's own, fsyncing every write so SIGKILL loses nothing."""
    server = start_redis(tmp_path / "redis")
    with redis.Redis(port=server.port) as admin:
        admin.config_set("appendfsync", "always")
    yield server
    server.stop()


@pytest.mark.asyncio
async def test_execution_survives_sigkill_of_service_and_redis(
    durable_redis: ServerProcess, tmp_path: Path
) -> None:
    """SIGKILL the state service, then redis-server; after restarts the execution is all there."""
    service = start_state_service(durable_redis.url, tmp_path)
    eid = new_id()
    batch = StateBatch(record(eid), (checkpoint(eid, "a"),), (event(eid, 1),))

    async def stored(address: str) -> tuple[Any, ...]:
        client = StateClient(address)
        try:
            return (
                await client.get_execution(eid),
                await client.get_checkpoints(eid),
                [e for _, e in await client.read_events(execution_id=eid)],
            )
        finally:
            await client.close()

    try:
        writer = StateClient(service.address)
        await writer.write(batch)
        await writer.close()
        expected = (batch.execution, {"a": batch.checkpoints[0]}, list(batch.events))

        service.process.kill()
        service.start()
        assert await stored(service.address) == expected

        durable_redis.kill()
        durable_redis.start()
        assert await stored(service.address) == expected
    finally:
        service.process.stop()


def test_sigterm_exits_cleanly(redis_server: ServerProcess, tmp_path: Path) -> None:
    """SIGTERM drains and stops the service with exit code 0."""
    service = start_state_service(redis_server.url, tmp_path)
    process = service.process.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_lifecycle_log_lines_name_the_service(redis_server: ServerProcess, tmp_path: Path) -> None:
    """service.started, service.draining and service.stopped name the service, "state"."""
    start_state_service(redis_server.url, tmp_path).process.stop()
    log = (tmp_path / "state.log").read_text().splitlines()
    lines = [json.loads(line) for line in log if line.startswith("{")]
    named = {line["event"]: line["service"] for line in lines if "service" in line}
    assert named == {
        "service.started": "state",
        "service.draining": "state",
        "service.stopped": "state",
    }
