"""The halt barrier and the trading states with every part a real process (issue 9):
executor replicas, the state and emergency services, Redis and NATS of a
:class:`~replica_fixtures.Cluster`.

What ``Halt`` promises is checked against Redis itself: right after it returns, one
atomic read of the halted bot's intents and of the paper fills; before the resume, another.
Redis runs one command at a time, so the difference is exactly what committed in
between, with no timing in the check. Each test is bounded in time; measured figures are
printed (``pytest -s``), never asserted on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from barrier_fixtures import (
    ORDER,
    STEADY_BOT,
    Emergency,
    Load,
    ScopeSnapshot,
    cancel_and_log,
    emergency_pid,
    execute,
    scope_snapshot,
    single_order,
)
from kit import eventually
from replica_fixtures import (
    QUANTITY,
    Cluster,
    Replica,
    final_record,
    order_workflow,
    submit,
    wait_started,
)

from tradeflow.domain.emergency import BarrierReport
from tradeflow.domain.records import ExecutionRecord, ExecutionStatus
from tradeflow.domain.trading import OrderStatus, Side, TradingState

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


TEST_SECONDS = 60.0
"""Bound on one test (its waits are bounded one by one as well)."""
HALTS_SECONDS = 150.0
"""Bound on the 1,000 halts under load (about a minute on 2 cores)."""
ROUNDS = 1000
RUNS_BEFORE_HALT = 2
"""Runs of a round's bot submitted before it is halted: the halt lands among them."""
COMPLETED, HALTED = ExecutionStatus.COMPLETED, ExecutionStatus.HALTED
LOAD_ENV = {
    # Quiet logs and funds for thousands of orders; a lease that survives a busy CPU
    # (the barrier, not a lapse, must be what keeps the replicas in line).
    "TRADEFLOW_LOG_LEVEL": "warning",
    "TRADEFLOW_PAPER_BALANCES": '{"USDT": 1e15, "BTC": 1e9}',
    "TRADEFLOW_LEASE_SECONDS": "10",
}
ACK_TIMEOUT = 2.0
"""The barrier's deadline here: on a busy 2-core machine an acknowledgement can take
longer than the default 0.25 s, and a replica fenced by accident would fail a test about
something else (a fenced replica is test 3's subject)."""
LONG_LEASE = 10 * TEST_SECONDS
"""A lease that cannot lapse within a test: whatever ended it, it was not expiry."""


@pytest.fixture(autouse=True)
def patient_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services a test starts (they inherit this environment) wait
    :data:`ACK_TIMEOUT` for acknowledgements."""
    monkeypatch.setenv("TRADEFLOW_HALT_ACK_TIMEOUT", str(ACK_TIMEOUT))


# -- 1. 1,000 halts under load ----------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One halt of a bot under load and what Redis held around it."""

    bot: str
    report: BarrierReport
    seconds: float
    """Halt's request -> return, as the test saw it."""
    before: ScopeSnapshot
    """Right after ``Halt`` returned."""
    after: ScopeSnapshot
    """Once a run submitted after the return ended and every action in flight settled."""

    def check(self) -> None:
        """No intent of the bot committed between the snapshots; every order of it filled
        in between was reported in flight, or was an action of an executor the barrier
        fenced (which answered nothing: what it had in flight is unknown)."""
        late = self.after.committed.keys() - self.before.committed.keys()
        assert not late, f"{self.bot}: intents committed after Halt returned: {sorted(late)}"
        report = self.report
        reported = {action.client_order_id for action in report.in_flight}
        unreported = {
            coid
            for coid in self.after.orders_of_scope() - reported
            if self.before.committed.get(coid.rsplit(":", 1)[0]) not in report.fenced
        }
        assert not unreported, (
            f"{self.bot}: orders filled after Halt returned, not reported in flight: "
            f"{sorted(unreported)} (in flight: {report.in_flight})"
        )
        ours = {action.execution_id for action in report.in_flight} & self.before.executions
        assert ours <= self.before.committed.keys(), (self.bot, ours, self.before)
        assert sorted(report.acknowledged + report.fenced) == sorted(report.live), report


async def halt_round(cluster: Cluster, emergency: Emergency, load: Load, number: int) -> Round:
    """Switch the scoped clients to a new bot, halt it once its runs are under way, take
    the two snapshots, resume it."""
    bot = f"halted-{number}"
    load.switch(bot)
    await load.until(lambda: load.submitted[bot] >= RUNS_BEFORE_HALT, f"{bot} runs submitted")
    started = time.perf_counter()
    halt, report = await emergency.halt(bot)
    seconds = time.perf_counter() - started
    load.halted = True  # no await since the return: runs submitted from here on are after
    before = await scope_snapshot(cluster, bot)
    in_flight = {action.execution_id for action in report.in_flight}

    def settled() -> bool:
        runs = load.runs.get(bot, ())
        return in_flight <= load.finished and any(run.within_halt for run in runs)

    await load.until(settled, f"a run of {bot} submitted after its halt ended")
    after = await scope_snapshot(cluster, bot, fills_from=before.fills)
    load.halted = False
    assert await emergency.resume(bot)
    assert halt.state is TradingState.HALTED
    return Round(bot, report, seconds, before, after)


async def test_no_intent_of_a_halted_bot_commits_after_halt_returned_over_1000_halts(
    make_cluster: Callable[..., Cluster],
) -> None:
    """1,000 halts under load: no intent of the halted bot commits after Halt returns, only
    orders reported in flight fill, runs from its return to the resume end halted; the other
    bot trades on."""
    async with asyncio.timeout(HALTS_SECONDS):
        cluster = make_cluster(2, replica_env=LOAD_ENV)
        workflow = single_order(Side.BUY, QUANTITY)
        emergency = Emergency(cluster.emergency.address)
        try:
            for replica in cluster.replicas:  # each one takes its lease
                assert (await execute(replica, workflow, STEADY_BOT)).status is COMPLETED
            load = Load(cluster.replicas, workflow, scoped=2, steady=1)
            load.start("halted-0")
            started = time.perf_counter()
            rounds = []
            for number in range(ROUNDS):
                done = await halt_round(cluster, emergency, load, number)
                done.check()
                rounds.append(done)
            elapsed = time.perf_counter() - started
            await load.stop()
        finally:
            await emergency.close()

    within = [run for r in rounds for run in load.runs[r.bot] if run.within_halt]
    for run in within:
        record = run.record
        assert record.status is HALTED, record
        assert f"(bot {run.bot!r})" in (record.error or ""), record
    steady = load.runs[STEADY_BOT]
    assert all(run.record.status is COMPLETED for run in steady), [
        run.record for run in steady if run.record.status is not COMPLETED
    ]
    steady_ids = {run.record.execution_id for run in steady}
    steady_while_halted = sum(
        1 for r in rounds for coid in r.after.filled if coid.rsplit(":", 1)[0] in steady_ids
    )
    assert steady_while_halted, "the unrelated bot placed no order while another was halted"

    scoped = [run for r in rounds for run in load.runs.get(r.bot, ())]
    landed = sum(len(r.after.orders_of_scope()) for r in rounds)
    halts = sorted(r.seconds for r in rounds)
    print(
        f"{ROUNDS} halts in {elapsed:.1f}s: Halt p50 {statistics.median(halts) * 1e3:.2f} ms, "
        f"p99 {halts[int(len(halts) * 0.99)] * 1e3:.2f} ms (as the test saw it); "
        f"{sum(len(r.report.fenced) for r in rounds)} executors fenced; "
        f"{sum(len(r.report.in_flight) for r in rounds)} actions in flight at return "
        f"({sum(1 for r in rounds if r.report.in_flight)} rounds); {landed} orders of halted "
        f"bots filled after the return, all in flight then; halted bots: "
        f"{sum(1 for run in scoped if run.record.status is COMPLETED)} runs completed, "
        f"{sum(1 for run in scoped if run.record.status is HALTED)} halted "
        f"({len(within)} of them run wholly between return and resume); unrelated bot: "
        f"{len(steady)} runs, {steady_while_halted} orders filled while another was halted"
    )


# -- 2. the emergency service frozen ------------------------------------------------------


async def run_until(
    replica: Replica, workflow: dict[str, Any], bot: str, status: ExecutionStatus
) -> ExecutionRecord:
    """Run ``workflow`` again and again until a run ends ``status`` (each run ends
    completed or halted); that run's record."""
    last: list[ExecutionRecord] = []

    async def reached() -> bool:
        record = await execute(replica, workflow, bot)
        assert record.status in (COMPLETED, HALTED), record
        last[:] = [record]
        return record.status is status

    await eventually(reached, f"a run for {bot} ends {status.value}", poll=0)
    return last[0]


async def test_frozen_emergency_service_stops_opening_orders_but_not_cancels_or_logs(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Emergency service SIGSTOPped: opening orders end halted (cancel_only, state
    unavailable) once the staleness bound passes, a cancel and a log still run; SIGCONT
    lets orders through again."""
    async with asyncio.timeout(TEST_SECONDS):
        cluster = make_cluster(1)
        (replica,) = cluster.replicas
        opening = single_order(Side.BUY, QUANTITY)
        resting_order = single_order(Side.BUY, QUANTITY, limit_price=1.0)
        resting = await run_until(replica, resting_order, "b", COMPLETED)
        resting_id = f"{resting.execution_id}:{ORDER}"
        assert (await cluster.ledger()).orders[resting_id].status is OrderStatus.OPEN

        paused = emergency_pid(cluster)
        os.kill(paused, signal.SIGSTOP)
        frozen_at = time.monotonic()
        refused = await run_until(replica, opening, "b", HALTED)
        refused_after = time.monotonic() - frozen_at
        assert "trading cancel_only (global)" in (refused.error or ""), refused
        assert "emergency state unavailable" in (refused.error or ""), refused
        way_out = await execute(replica, cancel_and_log(resting_id), "b")
        assert way_out.status is COMPLETED, way_out
        ledger = await cluster.ledger()
        assert ledger.orders[resting_id].status is OrderStatus.CANCELLED
        assert f"{refused.execution_id}:{ORDER}" not in ledger.orders

        os.kill(paused, signal.SIGCONT)
        again = await run_until(replica, opening, "b", COMPLETED)
        assert f"{again.execution_id}:{ORDER}" in (await cluster.ledger()).orders
    print(f"frozen emergency service: first opening order refused {refused_after:.2f}s after")


# -- 3. an executor frozen during a halt ---------------------------------------------------


async def test_executor_frozen_during_a_halt_is_fenced_and_its_execution_taken_over(
    make_cluster: Callable[..., Cluster],
) -> None:
    """An executor SIGSTOPped during a Halt is named fenced (answer and audit) and loses its
    lease, which could not have lapsed: the other replica takes its execution over and,
    woken, it writes nothing more."""
    async with asyncio.timeout(TEST_SECONDS):
        cluster = make_cluster(2, replica_env={"TRADEFLOW_LEASE_SECONDS": str(LONG_LEASE)})
        a, b = cluster.replicas
        emergency = Emergency(cluster.emergency.address)
        try:
            warm = await execute(b, order_workflow(), "warm")  # b holds a lease too
            assert warm.status is COMPLETED, warm
            workflow = order_workflow(pre=1.0, marker_dir=cluster.markers)
            execution_id = await submit(a, workflow, "fenced")
            await wait_started(cluster, [execution_id], a)
            a.signal(signal.SIGSTOP)
            started = time.monotonic()
            _, report = await emergency.halt("elsewhere")
            seconds = time.monotonic() - started
            (fenced,) = report.fenced
            assert f"-{a.pid}-" in fenced, report
            assert [f"-{b.pid}-" in owner for owner in report.acknowledged] == [True], report
            assert not await cluster.leases_of(a)
            (audited,) = [
                entry
                for entry in await emergency.audit()
                if entry.action == "halt_barrier" and entry.target == "elsewhere"
            ]
            assert audited.details["fenced"] == [fenced], audited

            record = await final_record(b, execution_id)
            assert record.status is COMPLETED, record
            assert b.owns(record) and record.takeovers == 1, record
            before = await _stored(cluster, execution_id)
            a.signal(signal.SIGCONT)
            await eventually(
                lambda: _moved_for_lost_lease(a, execution_id), "the woken owner's write failed"
            )
            assert await _stored(cluster, execution_id) == before
            await cluster.assert_orders_once([warm.execution_id, execution_id])
            assert await emergency.resume("elsewhere")
        finally:
            await emergency.close()
    print(f"frozen executor: fenced by a Halt that took {seconds * 1e3:.0f} ms")


async def _stored(cluster: Cluster, execution_id: str) -> tuple[object, ...]:
    state = cluster.state_store
    return (
        await state.get_execution(execution_id),
        await state.get_checkpoints(execution_id),
        await cluster.events(execution_id),
    )


def _moved_for_lost_lease(replica: Replica, execution_id: str) -> bool:
    """Whether ``replica`` gave ``execution_id`` up because its lease was no longer valid."""
    return any(
        '"execution.moved"' in line and execution_id in line and "is no longer valid" in line
        for line in replica.log().splitlines()
    )


# -- 4. trading states through the service ------------------------------------------------


async def test_reduce_only_and_cancel_only_through_the_emergency_service(
    make_cluster: Callable[..., Cluster],
) -> None:
    """REDUCE_ONLY lets the bot's reducing sell through and refuses growing or flipping
    orders; CANCEL_ONLY refuses the reducing sell too but runs a cancel and a log; other
    bots trade on."""
    async with asyncio.timeout(TEST_SECONDS):
        cluster = make_cluster(1)
        (replica,) = cluster.replicas
        emergency = Emergency(cluster.emergency.address)
        bot = "restricted"

        async def run(workflow: dict[str, Any], who: str = bot) -> ExecutionRecord:
            return await execute(replica, workflow, who)

        try:
            bought = await run(single_order(Side.BUY, 2 * QUANTITY))
            resting = await run(single_order(Side.BUY, QUANTITY, limit_price=1.0))
            assert bought.status is COMPLETED and resting.status is COMPLETED
            resting_id = f"{resting.execution_id}:{ORDER}"

            halt, report = await emergency.halt(bot, TradingState.REDUCE_ONLY)
            assert halt.state is TradingState.REDUCE_ONLY and not report.fenced, (halt, report)
            reduced = await run(single_order(Side.SELL, QUANTITY))
            assert reduced.status is COMPLETED, reduced
            for refused in (
                await run(single_order(Side.BUY, QUANTITY)),  # grows the long position
                await run(single_order(Side.SELL, 10 * QUANTITY)),  # flips it short
            ):
                _assert_refused(refused, f"trading reduce_only (bot {bot!r})")
            assert (await run(single_order(Side.BUY, QUANTITY), "other")).status is COMPLETED

            halt, _ = await emergency.halt(bot, TradingState.CANCEL_ONLY)
            assert halt.state is TradingState.CANCEL_ONLY
            _assert_refused(await run(single_order(Side.SELL, QUANTITY / 2)), "trading cancel_only")
            way_out = await run(cancel_and_log(resting_id))
            assert way_out.status is COMPLETED, way_out
            assert (await cluster.ledger()).orders[resting_id].status is OrderStatus.CANCELLED
            # +2 -1 for the bot, +1 for the other: none of the refused orders was placed.
            position = (await cluster.ledger()).position.quantity
            assert abs(position - 2 * QUANTITY) < 1e-12, position
            assert await emergency.resume(bot)
        finally:
            await emergency.close()


def _assert_refused(record: ExecutionRecord, refusal: str) -> None:
    """``record``'s run ended halted, refused by ``refusal``."""
    assert record.status is HALTED, record
    assert refusal in (record.error or ""), record
