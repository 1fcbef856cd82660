"""Pre-trade checks shared by two executor replicas (issue 10), every part a real process:
the replicas, the state and emergency services, Redis and NATS of a
:class:`~replica_fixtures.Cluster`, all on one Redis paper ledger.

Limits are set once on the emergency service, which pushes them to both replicas with the
trading state. Then many ``ExecuteWorkflow`` calls run at once, spread over the replicas,
each placing one order for a bot under a shared limit: ``max_position``, ``order_rate``
or ``max_open_orders``. The ledger judges those in the atomic step that stores an order,
so two replicas cannot overshoot a limit twice: what the shared ledger holds afterwards
is checked against each limit exactly, and every submitted order is either in the ledger
(accepted) or denied (an outcome of its execution, audited), never both, never neither.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest
import pytest_asyncio
from barrier_fixtures import Emergency
from kit import DEADLINE_SECONDS, eventually
from replica_fixtures import SYMBOL, Cluster, Replica
from workflows import block

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.records import ExecutionStatus, Scope
from tradeflow.domain.risk import NO_OPTIONS, LimitOptions
from tradeflow.domain.trading import OrderStatus, TradingState
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TEST_SECONDS: Final = 120.0
"""Bound on the test (its waits are bounded one by one as well)."""
ORDER: Final = "order"
QUANTITY: Final = 0.001
PER_BOT: Final = 16
"""Executions submitted for each limited bot, half to each replica, all at once."""
POSITION_BOT, MAX_POSITION = "capped", 0.005
"""Room for five buys of :data:`QUANTITY`."""
RATE_BOT, RATE, WINDOW = "throttled", 5, 3600.0
"""Five orders an hour: the bucket cannot refill a sixth token within the test."""
RESTING_BOT, MAX_OPEN = "resting", 3
PROBE_BOT: Final = "probe"
"""A bot whose every order is denied, by the limit set last: once a replica denies it,
its view holds every limit set before it."""
REPLICA_ENV: Final = {
    "TRADEFLOW_LOG_LEVEL": "warning",
    "TRADEFLOW_PAPER_BALANCES": '{"USDT": 1e9, "BTC": 1e6}',
    "TRADEFLOW_LEASE_SECONDS": "10",
}


@pytest.fixture(autouse=True)
def patient_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services the test starts wait 2 s for acknowledgements (a busy 2-core machine)."""
    monkeypatch.setenv("TRADEFLOW_HALT_ACK_TIMEOUT", "2.0")


@pytest_asyncio.fixture
async def control(make_cluster: Callable[..., Cluster]) -> AsyncIterator[ControlledCluster]:
    """A cluster of two replicas and a client of its emergency service."""
    cluster = make_cluster(2, replica_env=REPLICA_ENV)
    client = await RemoteEmergencyControl.connect(
        cluster.emergency.address, clock=SystemClock(), id_factory=new_id
    )
    try:
        yield ControlledCluster(cluster, client)
    finally:
        await client.close()


@dataclass(frozen=True)
class ControlledCluster:
    cluster: Cluster
    emergency: RemoteEmergencyControl


def one_order(*, limit_price: float | None = None) -> dict[str, Any]:
    """One buy of :data:`QUANTITY` (market, or limit at ``limit_price``: it rests)."""
    properties: dict[str, Any] = {"symbol": SYMBOL, "side": "buy", "quantity": QUANTITY}
    if limit_price is not None:
        properties |= {"order_type": "limit", "limit_price": limit_price}
    return {"blocks": [block(ORDER, "actions", "place_order", properties)]}


@dataclass(frozen=True)
class Outcome:
    """One execution's end: its id and its order's outputs."""

    execution_id: str
    outputs: Mapping[str, Any]

    @property
    def client_order_id(self) -> str:
        return f"{self.execution_id}:{ORDER}"

    @property
    def denied(self) -> bool:
        return self.outputs["status"] == "denied"


async def execute(replica: Replica, workflow: Mapping[str, Any], bot: str) -> Outcome:
    """``workflow`` for ``bot`` through ``replica``'s ``ExecuteWorkflow``: completed
    (asserted), with its order's outputs."""
    response = await replica.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(
            workflow_id="pretrade", bot_id=bot, definition_json=json.dumps(workflow)
        ),
        timeout=DEADLINE_SECONDS,
    )
    record, checkpoints = wire.execution_from_proto(response.execution)
    assert record.status is ExecutionStatus.COMPLETED, record
    outputs = checkpoints[ORDER].outputs
    assert outputs is not None
    return Outcome(record.execution_id, outputs)


async def wait_until_enforced(replicas: Sequence[Replica]) -> None:
    """Until each replica denies an order of :data:`PROBE_BOT` (its view has the limits)."""
    for replica in replicas:

        async def denies(replica: Replica = replica) -> bool:
            return (await execute(replica, one_order(limit_price=1.0), PROBE_BOT)).denied

        await eventually(denies, f"{replica.name} enforces the limits", poll=0.05)


async def test_two_replicas_never_overshoot_shared_limits(control: ControlledCluster) -> None:
    """max_position on one bot, order_rate on another, max_open_orders on a third, set on
    the emergency service; 16 concurrent executions per bot over two replicas: the shared
    ledger holds exactly as many of each bot's orders as its limit admits (position 0.005
    from five buys, five orders an hour, three resting), accepted + denied = submitted,
    no denied order is in the ledger, each accepted one is, each denial is audited."""
    cluster, emergency = control.cluster, control.emergency
    async with asyncio.timeout(TEST_SECONDS):
        for limit_type, threshold, bot, options in (
            ("max_position", MAX_POSITION, POSITION_BOT, NO_OPTIONS),
            ("order_rate", RATE, RATE_BOT, LimitOptions(window=WINDOW)),
            ("max_open_orders", MAX_OPEN, RESTING_BOT, NO_OPTIONS),
            ("max_order_notional", 1e-6, PROBE_BOT, NO_OPTIONS),
        ):
            await emergency.set_risk_limit(
                limit_type,
                threshold,
                auto_halt=False,
                actor="tests",
                scope=Scope.BOT,
                target=bot,
                options=options,
            )
        await wait_until_enforced(cluster.replicas)

        workloads = {
            POSITION_BOT: one_order(),
            RATE_BOT: one_order(),
            RESTING_BOT: one_order(limit_price=1.0),
        }
        calls = [
            execute(cluster.replicas[i % 2], workflow, bot)
            for bot, workflow in workloads.items()
            for i in range(PER_BOT)
        ]
        outcomes = await asyncio.gather(*calls)
        by_bot = {bot: outcomes[n * PER_BOT : (n + 1) * PER_BOT] for n, bot in enumerate(workloads)}

        ledger = await cluster.ledger()
        trail = Emergency(cluster.emergency.address)
        try:
            audit = await trail.audit(limit=500)
        finally:
            await trail.close()
        for bot, expected_accepted, check in (
            (POSITION_BOT, round(MAX_POSITION / QUANTITY), "max_position"),
            (RATE_BOT, RATE, "order_rate"),
            (RESTING_BOT, MAX_OPEN, "max_open_orders"),
        ):
            runs = by_bot[bot]
            accepted = [o for o in runs if o.outputs["status"] in ("filled", "open")]
            refused = [o for o in runs if o.denied]
            assert len(accepted) + len(refused) == PER_BOT, [o.outputs for o in runs]
            in_ledger = {c: o for c, o in ledger.orders.items() if o.bot_id == bot}
            assert set(in_ledger) == {o.client_order_id for o in accepted}, bot
            assert len(accepted) == expected_accepted, (bot, [o.outputs for o in runs])
            for outcome in refused:
                denial = outcome.outputs["denial"]
                assert (denial["check"], denial["scope"], denial["target"]) == (check, "bot", bot)
            audited = {
                entry.details.get("client_order_id")
                for entry in audit
                if entry.action == "order_denied" and entry.target == bot
            }
            assert audited == {o.client_order_id for o in refused}, bot
            if bot == POSITION_BOT:
                position = sum(o.filled_quantity for o in in_ledger.values())
                assert position <= MAX_POSITION + 1e-9, position
            if bot == RESTING_BOT:
                resting = [o for o in in_ledger.values() if o.status is OrderStatus.OPEN]
                assert len(resting) == MAX_OPEN, resting
        # Only the market buys filled (the probes' and the resting bids rest).
        assert ledger.position.quantity == pytest.approx(MAX_POSITION + RATE * QUANTITY)


LOSER: Final = "loser"


def round_trip() -> dict[str, Any]:
    """Buy :data:`QUANTITY` at the ask, then sell it at the bid: a realized loss of the
    spread."""
    buy = {"symbol": SYMBOL, "side": "buy", "quantity": QUANTITY}
    sell = {**buy, "side": "sell"}
    return {
        "blocks": [
            block("buy", "actions", "place_order", buy),
            block("sell", "actions", "place_order", sell, inputs={"when": "buy.status"}),
        ]
    }


async def test_a_loss_on_the_shared_ledger_moves_its_bot_through_the_services_trigger(
    control: ControlledCluster,
) -> None:
    """A daily_loss trigger on one bot, set on the emergency service: once its first
    evaluation anchored the day, a losing round trip through a replica (the spread, on the
    shared Redis ledger the service reads its equity from) moves that bot, and only it, to
    REDUCE_ONLY, by the service's own evaluator and through its halt barrier; the replicas
    then refuse the bot's opening orders."""
    cluster, emergency = control.cluster, control.emergency
    ids = ScopeIds(workflow_id="pretrade", bot_id=LOSER)
    async with asyncio.timeout(TEST_SECONDS):
        await emergency.set_risk_limit(
            "daily_loss",
            -1e-9,
            actor="tests",
            scope=Scope.BOT,
            target=LOSER,
            options=LimitOptions(state=TradingState.REDUCE_ONLY),
        )

        async def anchored() -> bool:
            ((_, progress),) = (await emergency.explain_limits(ids)).triggers
            return progress.day is not None

        await eventually(anchored, "the trigger's day is anchored", poll=0.05)
        assert emergency.trading_state(ids) is TradingState.ACTIVE

        run = await cluster.replicas[0].stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                workflow_id="pretrade", bot_id=LOSER, definition_json=json.dumps(round_trip())
            ),
            timeout=DEADLINE_SECONDS,
        )
        record, checkpoints = wire.execution_from_proto(run.execution)
        assert record.status is ExecutionStatus.COMPLETED, record
        assert [checkpoints[n].outputs["status"] for n in ("buy", "sell")] == ["filled"] * 2

        await eventually(
            lambda: emergency.trading_state(ids) is TradingState.REDUCE_ONLY,
            "the loser is reduce-only",
            poll=0.05,
        )
        halt = emergency.active_halt(ids)
        assert halt is not None
        assert (halt.scope, halt.target, halt.actor) == (
            Scope.BOT,
            LOSER,
            "trigger:daily_loss@bot:loser",
        )
        assert emergency.trading_state(ScopeIds(bot_id="someone-else")) is TradingState.ACTIVE
        refused = await cluster.replicas[1].stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                workflow_id="pretrade", bot_id=LOSER, definition_json=json.dumps(one_order())
            ),
            timeout=DEADLINE_SECONDS,
        )
        assert wire.execution_from_proto(refused.execution)[0].status is ExecutionStatus.HALTED
