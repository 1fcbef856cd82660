"""Regressions of the review of issue 8 that need the real service stack: executor
replicas (processes) on the state service, Redis and NATS (see ``replica_fixtures``).
The store-level rules are proven for every store by the ownership contract suite; here,
that the engine, the replicas and the wire honour them end to end.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kit import DEADLINE_SECONDS, eventually
from replica_fixtures import BUY, Cluster, final_record, order_workflow, submit_request

from tradeflow.adapters.grpc import wire
from tradeflow.domain.records import ExecutionStatus
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

LEASE_SECONDS = 2.0
"""The replicas' lease here: a cancel sent right after its owner was paused reaches the
store well within the rest of the paused owner's lease (at least two thirds of it)."""
TEST_SECONDS = 60.0


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two replicas with :data:`LEASE_SECONDS` leases; every process stopped afterwards."""
    started = Cluster(
        tmp_path / "cluster", replica_env={"TRADEFLOW_LEASE_SECONDS": str(LEASE_SECONDS)}
    )
    try:
        started.start()
        started.start_replicas(2)
        yield started
    finally:
        await started.close()


async def test_a_cancel_sent_to_a_paused_owner_is_honoured_by_the_replica_taking_over(
    cluster: Cluster,
) -> None:
    """A cancel asked of a live owner that is then lost (paused past its lease) is kept on
    the execution: the replica taking it over ends it cancelled and no order is placed,
    by it or by the old owner once it wakes."""
    async with asyncio.timeout(TEST_SECONDS):
        a, b = cluster.replicas
        workflow = order_workflow(pre=LEASE_SECONDS, marker_dir=cluster.markers)
        reply = await a.stub.SubmitWorkflow(
            submit_request(workflow, "cancel-paused"), timeout=DEADLINE_SECONDS
        )
        execution_id = reply.execution_id
        await eventually(
            lambda: cluster.started_markers().get(execution_id) == a.pid, "a runs the wait"
        )
        a.signal(signal.SIGSTOP)  # it will never heartbeat the cancel
        cancel = await b.stub.CancelExecution(
            pb.CancelExecutionRequest(execution_id=execution_id, reason="test"),
            timeout=DEADLINE_SECONDS,
        )
        # Handed to the (still live) owner, not ended at once as an orphan's would be.
        assert cancel.cancelled
        assert cancel.status == wire.EXECUTION_STATUS.to_proto(ExecutionStatus.RUNNING), (
            "the cancel reached the store after the paused owner's lease lapsed: not the case"
            " under test (the machine stalled longer than the lease)"
        )
        record = await final_record(b, execution_id)
        assert record.status is ExecutionStatus.CANCELLED, record
        assert b.owns(record) and record.takeovers == 1, record
        a.signal(signal.SIGCONT)
        # Woken past its wait, the old owner reaches the buy and gives the run up.
        await eventually(
            lambda: a.logged("execution.moved", execution_id), "the woken owner gave it up"
        )
        assert (await cluster.state_store.get_execution(execution_id)) == record
        assert f"{execution_id}:{BUY}" not in (await cluster.ledger()).orders
