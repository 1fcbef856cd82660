"""Executor replicas under real faults, every part a process (issue 8): two or more
``executor_service`` replicas share one state service and one paper ledger in Redis;
a replica is killed, paused or stopped mid-execution and the others must finish its
work, trading each order exactly once.

Fault moments are random (the seed is printed); the measured takeover times are
printed too (``pytest -s``), never asserted on. Each test is bounded in time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from statistics import median
from typing import Any, ParamSpec

import grpc
import pytest
from kit import DEADLINE_SECONDS, eventually
from replica_fixtures import (
    BUY,
    Cluster,
    Replica,
    final_record,
    order_workflow,
    resumed_at,
    submit,
    wait_started,
)

from tradeflow.adapters.grpc import wire
from tradeflow.domain.records import EventType, ExecutionRecord, ExecutionStatus
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

P = ParamSpec("P")
TEST_SECONDS = 60.0
"""Bound on one test (its waits are bounded one by one as well)."""
KILL_TRIALS = 6
SUBMISSIONS_PER_TRIAL = 6


def bounded(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Fail the test if it runs longer than :data:`TEST_SECONDS`."""

    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        async with asyncio.timeout(TEST_SECONDS):
            await test(*args, **kwargs)

    return run


def seeded() -> random.Random:
    seed = random.randrange(2**32)
    print(f"random seed {seed}")
    return random.Random(seed)


def describe_times(times: Sequence[float]) -> str:
    if not times:
        return "none taken over"
    return (
        f"{len(times)} taken over: min {min(times):.2f}s, median {median(times):.2f}s, "
        f"max {max(times):.2f}s"
    )


async def submit_or_none(replica: Replica, workflow: dict[str, Any], request_id: str) -> str | None:
    """:func:`submit`, or ``None`` when the replica died before it answered (it may still
    have accepted the submission)."""
    try:
        return await submit(replica, workflow, request_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.UNAVAILABLE:
            raise
        return None


async def takeover_seconds(cluster: Cluster, record: ExecutionRecord, since: float) -> float | None:
    """Seconds from ``since`` (a wall time) to the execution's resumed start, if any."""
    started = resumed_at(await cluster.events(record.execution_id))
    return None if started is None else started - since


# -- 1. kill -9 under load ---------------------------------------------------------------


@bounded
async def test_kill9_of_a_replica_under_load_loses_nothing_and_trades_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    """kill -9 of a busy replica at random moments: all complete on the survivor, orders once."""
    cluster = make_cluster()
    rng = seeded()
    executions: list[str] = []
    times: list[float] = []
    for trial in range(KILL_TRIALS):
        victim, survivor = cluster.replicas[trial % 2], cluster.replicas[1 - trial % 2]
        accepted, trial_times = await kill_trial(cluster, victim, survivor, rng, f"t{trial}")
        executions += accepted
        times += trial_times
        if trial < KILL_TRIALS - 1:
            await victim.restart()
    print(f"kill -9: {len(executions)} executions, 0 lost; takeover {describe_times(times)}")
    await cluster.assert_orders_once(executions)


async def kill_trial(
    cluster: Cluster, victim: Replica, survivor: Replica, rng: random.Random, trial: str
) -> tuple[list[str], list[float]]:
    """Submit executions one after the other to ``victim``, SIGKILL it after a random
    number of them was accepted plus a random delay; check that ``survivor`` completes
    every accepted one. Returns their ids and the takeover times."""
    requests = [f"{trial}-{i}" for i in range(SUBMISSIONS_PER_TRIAL)]
    accepted: dict[str, str] = {}

    async def submit_all() -> None:
        for request_id in requests:
            workflow = order_workflow(pre=rng.uniform(0, 0.4), post=rng.uniform(0, 0.2))
            execution_id = await submit_or_none(victim, workflow, request_id)
            if execution_id is None:
                return
            accepted[request_id] = execution_id

    submitting = asyncio.create_task(submit_all())
    after = rng.randint(1, SUBMISSIONS_PER_TRIAL)
    await eventually(lambda: len(accepted) >= after, f"{after} submissions accepted")
    delay = rng.uniform(0, 0.4)
    await asyncio.sleep(delay)  # the kill's random moment (fault injection, not a wait)
    killed_at = victim.kill()
    await submitting
    for request_id in set(requests) - accepted.keys():
        record = await cluster.state_store.find_by_request_id(request_id)
        if record is not None:  # accepted durably, the answer died with the victim
            accepted[request_id] = record.execution_id
    times = []
    for execution_id in accepted.values():
        record = await final_record(survivor, execution_id)
        assert record.status is ExecutionStatus.COMPLETED, record
        taken = await takeover_seconds(cluster, record, killed_at)
        if taken is not None:
            assert survivor.owns(record) and record.takeovers == 1, record
            times.append(taken)
    assert not await cluster.unfinished()
    print(
        f"trial {trial}: SIGKILL of {victim.name} {delay:.2f}s after {after} acceptances: "
        f"{len(accepted)} accepted, all completed; {describe_times(times)}"
    )
    return list(accepted.values()), times


# -- 2. retried ExecuteWorkflow, cancel from any replica ---------------------------------


@bounded
async def test_retried_execute_waits_for_the_end_and_cancel_reaches_the_owner(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A retried Execute waits for the end after its replica died; a cancel reaches the owner."""
    cluster = make_cluster()
    a, b = cluster.replicas
    # Killed in the wait after its order: the order's intent made the execution durable.
    request = pb.ExecuteWorkflowRequest(
        request_id="retried",
        workflow_id="retried",
        definition_json=json.dumps(order_workflow(post=0.8, marker_dir=cluster.markers)),
    )
    first = asyncio.ensure_future(a.stub.ExecuteWorkflow(request, timeout=DEADLINE_SECONDS))

    def after_the_order() -> bool:
        return a.pid in cluster.started_markers("post").values()

    await eventually(after_the_order, "a runs the wait after the order")
    (execution_id,) = cluster.started_markers("post")
    killed_at = a.kill()
    with pytest.raises(grpc.aio.AioRpcError) as died:
        await first
    assert died.value.code() is grpc.StatusCode.UNAVAILABLE
    restarted = asyncio.create_task(a.restart())
    retried = await b.stub.ExecuteWorkflow(request, timeout=DEADLINE_SECONDS)
    record = wire.execution_from_proto(retried.execution)[0]
    assert record.execution_id == execution_id
    assert record.status is ExecutionStatus.COMPLETED, record
    assert record.takeovers == 1, record
    # Its order was placed before the kill: the new owner found it by its client order id.
    assert any(r.logged("order.adopted", execution_id) for r in (a, b))
    print(f"retried execute: taken over {await takeover_seconds(cluster, record, killed_at)}s")
    await restarted

    slow = await submit(b, order_workflow(pre=2.0, marker_dir=cluster.markers), "to-cancel")
    await wait_started(cluster, [slow], b)
    reply = await a.stub.CancelExecution(
        pb.CancelExecutionRequest(execution_id=slow, reason="test"), timeout=DEADLINE_SECONDS
    )
    assert reply.cancelled
    cancelled = await final_record(a, slow)
    assert cancelled.status is ExecutionStatus.CANCELLED, cancelled
    assert b.owns(cancelled), cancelled
    ledger = await cluster.ledger()
    assert f"{slow}:{BUY}" not in ledger.orders
    await cluster.assert_orders_once([execution_id])


# -- 3. a paused owner -----------------------------------------------------------------


@bounded
async def test_paused_owner_that_wakes_up_neither_writes_nor_trades(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An owner paused past its lease is taken over and, once woken, neither writes nor trades."""
    cluster = make_cluster()
    a, b = cluster.replicas
    workflow = order_workflow(pre=1.0, marker_dir=cluster.markers)
    execution_id = await submit(a, workflow, "paused")
    await wait_started(cluster, [execution_id], a)
    paused_at = a.signal(signal.SIGSTOP)
    record = await final_record(b, execution_id)
    assert record.status is ExecutionStatus.COMPLETED, record
    assert b.owns(record) and record.takeovers == 1, record
    print(f"paused owner: taken over {await takeover_seconds(cluster, record, paused_at)}s")

    async def snapshot() -> tuple[object, ...]:
        state = cluster.state_store
        return (
            await state.get_execution(execution_id),
            await state.get_checkpoints(execution_id),
            await cluster.events(execution_id),
        )

    before = await snapshot()
    a.signal(signal.SIGCONT)
    await eventually(
        lambda: a.logged("execution.moved", execution_id), "the woken owner gave the run up"
    )
    assert await snapshot() == before
    # The woken replica serves again, under a new lease.
    again = await a.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(
            workflow_id="again", definition_json=json.dumps(order_workflow())
        ),
        timeout=DEADLINE_SECONDS,
    )
    # The store's record: the one in the answer need not carry the owner.
    after = await cluster.state_store.get_execution(again.execution.record.execution_id)
    assert after.status is ExecutionStatus.COMPLETED and a.owns(after), after
    assert after.epoch > record.epoch, (after, record)
    await cluster.assert_orders_once([execution_id, after.execution_id])


# -- 4. state service stalled, then the owner killed -------------------------------------


@bounded
async def test_state_stall_then_owner_killed_then_takeover_trades_each_order_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    """State stalled past every lease, an owner killed: all executions complete, orders once."""
    cluster = make_cluster()
    a, b = cluster.replicas
    rng = seeded()
    on_a = [
        await submit(
            a,
            order_workflow(pre=rng.uniform(0.05, 0.5), post=0.1, marker_dir=cluster.markers),
            f"a{i}",
        )
        for i in range(3)
    ]
    on_b = [
        await submit(
            b,
            order_workflow(pre=rng.uniform(0.05, 0.5), post=0.1, marker_dir=cluster.markers),
            f"b{i}",
        )
        for i in range(2)
    ]
    await wait_started(cluster, on_a, a)
    await wait_started(cluster, on_b, b)
    cluster.signal_state(signal.SIGSTOP)
    await asyncio.sleep(rng.uniform(0, 0.3))  # random moment (fault injection, not a wait)
    killed_at = a.kill()

    async def lapsed() -> bool:
        return not await cluster.leases_of(a) and not await cluster.leases_of(b)

    await eventually(lapsed, "both replicas' leases lapsed while the state service stalled")
    cluster.signal_state(signal.SIGCONT)
    times = []
    for execution_id in on_a + on_b:
        record = await final_record(b, execution_id)
        assert record.status is ExecutionStatus.COMPLETED, record
        taken = await takeover_seconds(cluster, record, killed_at)
        if taken is not None:
            times.append(taken)
    print(f"state stall + kill: {describe_times(times)} (from the SIGKILL)")
    assert not await cluster.unfinished()
    await cluster.assert_orders_once(on_a + on_b)


# -- 5. graceful stop --------------------------------------------------------------------


LONG_LEASE = TEST_SECONDS
"""A lease that cannot lapse within the test's bound: whatever moved the executions or
removed the lease, it was not expiry."""


@bounded
async def test_sigterm_interrupts_and_the_survivor_takes_over_before_the_lease_lapses(
    make_cluster: Callable[..., Cluster],
) -> None:
    """SIGTERM interrupts and releases: the survivor completes the runs before the lease lapses."""
    cluster = make_cluster(replica_env={"TRADEFLOW_LEASE_SECONDS": str(LONG_LEASE)})
    a, b = cluster.replicas
    workflow = order_workflow(pre=1.5, marker_dir=cluster.markers)
    executions = [await submit(a, workflow, f"term{i}") for i in range(3)]
    await wait_started(cluster, executions, a)
    assert await cluster.leases_of(a), "a holds no lease while it runs executions"
    terminated_at = a.signal(signal.SIGTERM)
    assert a.process.process is not None
    assert await asyncio.to_thread(a.process.process.wait, DEADLINE_SECONDS) == 0
    # Gone though it cannot have lapsed: a released it on its way out.
    assert not await cluster.leases_of(a)
    times = []
    for execution_id in executions:
        record = await final_record(b, execution_id)
        assert record.status is ExecutionStatus.COMPLETED, record
        assert b.owns(record) and record.takeovers == 0, record
        events = await cluster.events(execution_id)
        assert EventType.EXECUTION_INTERRUPTED.value in {e.type for e in events}
        taken = await takeover_seconds(cluster, record, terminated_at)
        assert taken is not None
        times.append(taken)
    print(f"SIGTERM: {describe_times(times)} (lease {LONG_LEASE}s)")
    await cluster.assert_orders_once(executions)


# -- 6. node types and quarantine --------------------------------------------------------


@bounded
async def test_replica_without_the_node_types_leaves_the_orphan_to_one_that_has_them(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A replica lacking an orphan's node types leaves it to a replica that has them."""
    cluster = make_cluster(replicas=0)
    (a,) = cluster.start_replicas(1)
    (b,) = cluster.start_replicas(1, plugins=False)
    execution_id = await submit(a, order_workflow(pre=0.5, marker_dir=cluster.markers), "typed")
    await wait_started(cluster, [execution_id], a)
    first_owner = a.pid
    a.kill()
    await eventually(
        lambda: b.logged("takeover.skipped", execution_id), "b looked at the orphan and left it"
    )
    record = await cluster.state_store.get_execution(execution_id)
    assert record.status is ExecutionStatus.RUNNING, record
    assert f"-{first_owner}-" in (record.owner or "") and not record.owner_live, record
    await a.restart()
    record = await final_record(b, execution_id)
    assert record.status is ExecutionStatus.COMPLETED, record
    assert a.owns(record) and record.takeovers == 1, record
    assert not b.logged("takeover.claiming", execution_id)
    await cluster.assert_orders_once([execution_id])


@bounded
async def test_execution_that_kills_every_owner_is_quarantined(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An execution killing every owner ends failed naming its takeovers, its order never placed."""
    cluster = make_cluster(replica_env={"TRADEFLOW_MAX_TAKEOVERS": "1"})
    a, b = cluster.replicas
    # The crash may end the process before its answer leaves: the record tells.
    await submit_or_none(a, order_workflow(crash=True), "crash")
    record = await cluster.state_store.find_by_request_id("crash")
    assert record is not None, "the submission was not durable before the crash"
    await eventually(lambda: not a.alive(), "the crash block ended its first owner")
    assert a.process.process is not None and a.process.process.returncode == 1
    await a.restart(may_die=True)  # it may take the execution over and die at once
    await eventually(lambda: not (a.alive() and b.alive()), "a second owner died")
    alive = [r for r in (a, b) if r.alive()]
    assert len(alive) == 1, "the third owner died too: the execution was not quarantined"
    (survivor,) = alive
    record = await final_record(survivor, record.execution_id)
    assert record.status is ExecutionStatus.FAILED, record
    assert "takeover" in (record.error or ""), record
    assert record.takeovers == 2, record
    assert survivor.alive()
    ledger = await cluster.ledger()
    assert f"{record.execution_id}:{BUY}" not in ledger.orders
    print(f"quarantined: {record.error}")
