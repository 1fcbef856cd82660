"""Helpers of the halt barrier tests (issue 9), on a :class:`~replica_fixtures.Cluster`:

- :class:`Emergency`: the cluster's emergency service through its gRPC API (halts come
  back with the barrier's report);
- workflows of one order, or of a cancel and a log, and :func:`execute` (one run through
  ``ExecuteWorkflow``, its final record);
- :func:`scope_snapshot`: one atomic read (a Lua script: Redis runs nothing in between)
  of which executions of a bot committed their order's intent, and of the fills the
  shared paper ledger appended;
- :class:`Load`: clients running workflows back to back on the replicas, for the bot
  under test and for an unrelated one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from kit import DEADLINE_SECONDS
from replica_fixtures import SYMBOL, Cluster, Replica
from workflows import block

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.redis.state import decode_journal
from tradeflow.domain.emergency import BarrierReport
from tradeflow.domain.records import (
    AuditEntry,
    CheckpointState,
    EventType,
    ExecutionRecord,
    HaltState,
    Scope,
)
from tradeflow.domain.trading import Side, TradingState
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as epb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc as epb_grpc
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb

__all__ = [
    "ORDER",
    "STEADY_BOT",
    "Emergency",
    "Load",
    "Run",
    "ScopeSnapshot",
    "cancel_and_log",
    "emergency_pid",
    "execute",
    "scope_snapshot",
    "single_order",
]

ORDER: Final = "order"
"""The block of :func:`single_order`: its client order id is ``<execution_id>:order``."""
STEADY_BOT: Final = "steady"
"""The bot :class:`Load` trades for beside the one under test; never halted."""
_BOT = wire.SCOPE.to_proto(Scope.BOT)


class Emergency:
    """The emergency service at ``address``: bot halts and resumes through its RPCs
    (each with a request id of its own), the audit trail. Use it in one event loop."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = epb_grpc.EmergencyServiceStub(self._channel)
        self._requests = itertools.count()

    async def halt(
        self, bot: str, state: TradingState = TradingState.HALTED
    ) -> tuple[HaltState, BarrierReport]:
        """Restrict ``bot`` to ``state``: the halt committed and the barrier's report."""
        response = await self._stub.Halt(
            epb.HaltRequest(
                request_id=f"halt-{next(self._requests)}",
                scope=_BOT,
                target=bot,
                reason="barrier test",
                actor="tests",
                state=wire.TRADING_STATE.to_proto(state),
            ),
            timeout=DEADLINE_SECONDS,
        )
        return wire.halt_state_from_proto(response.halt), wire.barrier_report_from_proto(response)

    async def resume(self, bot: str) -> bool:
        response = await self._stub.Resume(
            epb.ResumeRequest(
                request_id=f"resume-{next(self._requests)}",
                scope=_BOT,
                target=bot,
                reason="barrier test",
                actor="tests",
            ),
            timeout=DEADLINE_SECONDS,
        )
        return bool(response.resumed)

    async def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        response = await self._stub.ListAuditEntries(
            epb.ListAuditEntriesRequest(limit=limit), timeout=DEADLINE_SECONDS
        )
        return [wire.audit_entry_from_proto(entry) for entry in response.entries]

    async def close(self) -> None:
        await self._channel.close()


def emergency_pid(cluster: Cluster) -> int:
    """The process id of the cluster's emergency service (to pause it)."""
    pid = cluster.emergency.process.pid
    assert pid is not None
    return pid


# -- workflows ----------------------------------------------------------------------------


def single_order(
    side: Side, quantity: float, *, limit_price: float | None = None
) -> dict[str, Any]:
    """One :data:`ORDER` block: a market order, or a limit order at ``limit_price``."""
    properties: dict[str, Any] = {"symbol": SYMBOL, "side": side.value, "quantity": quantity}
    if limit_price is not None:
        properties |= {"order_type": "limit", "limit_price": limit_price}
    return {"blocks": [block(ORDER, "actions", "place_order", properties)]}


def cancel_and_log(client_order_id: str) -> dict[str, Any]:
    """Cancel the order ``client_order_id``, then log its status: the way out, which no
    trading state refuses."""
    return {
        "blocks": [
            block("cancel", "actions", "cancel_order", {"client_order_id": client_order_id}),
            block(
                "note",
                "actions",
                "log",
                {"message": "cancelled: {status}"},
                {"status": "cancel.status"},
            ),
        ]
    }


async def execute(replica: Replica, workflow: Mapping[str, Any], bot: str) -> ExecutionRecord:
    """Run ``workflow`` for ``bot`` through ``replica``'s ``ExecuteWorkflow``: the final
    record (a halted run is a result, not an error)."""
    response = await replica.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(
            workflow_id="barrier", bot_id=bot, definition_json=json.dumps(workflow)
        ),
        timeout=DEADLINE_SECONDS,
    )
    return wire.execution_from_proto(response.execution)[0]


# -- one atomic snapshot of a scope ---------------------------------------------------------

# The state store's and the paper ledger's Redis layout (their module docstrings).
# ARGV: [1] key prefix with its colon, [2] bot id, [3] the first fill to return (0-based;
#   '' for none).
# Returns {the bot's executions, flat {journal ('' for none), owner ('' for none)} of each,
#   the number of fills, the fills from ARGV[3] on}.
_SNAPSHOT: Final = r"""
local p = ARGV[1]
local executions, journals = {}, {}
for _, member in ipairs(redis.call('ZRANGE', p .. 'index:bot:' .. ARGV[2], 0, -1)) do
  local id = string.sub(member, 18)
  table.insert(executions, id)
  table.insert(journals, redis.call('GET', p .. 'data:' .. id) or '')
  table.insert(journals, redis.call('HGET', p .. 'execution:' .. id, 'owner') or '')
end
local fills = p .. 'paper:fills'
local appended = {}
if ARGV[3] ~= '' then appended = redis.call('LRANGE', fills, tonumber(ARGV[3]), -1) end
return {executions, journals, redis.call('LLEN', fills), appended}
"""


def _committed(execution_id: str, journal: bytes) -> bool:
    """Whether the execution's action's intent committed: the checkpoint it wrote is still
    there, or was followed by the outcome: ``completed``, or ``failed`` after the node
    started (a refused intent writes nothing, and its run ends with the node ``failed``
    without ever starting it)."""
    checkpoints, events = decode_journal(execution_id, journal)
    checkpoint = checkpoints.get(ORDER)
    if checkpoint is None:
        return False
    if checkpoint.state in (CheckpointState.INTENT, CheckpointState.COMPLETED):
        return True
    return checkpoint.state is CheckpointState.FAILED and any(
        e.type == EventType.NODE_STARTED and e.node_id == ORDER for _, e in events
    )


@dataclass(frozen=True)
class ScopeSnapshot:
    """What Redis held at one instant about a bot's executions and the paper fills."""

    executions: frozenset[str]
    """The bot's executions the state store holds."""
    committed: Mapping[str, str]
    """Those whose action's intent committed -> their owner (lease holder) then."""
    fills: int
    """Fills the paper ledger holds (all bots)."""
    filled: tuple[str, ...]
    """Client order ids of the fills from the offset asked for on, in order."""

    def orders_of_scope(self) -> set[str]:
        """Of :attr:`filled`, the client order ids of the bot's executions."""
        return {coid for coid in self.filled if coid.rsplit(":", 1)[0] in self.executions}


async def scope_snapshot(
    cluster: Cluster, bot: str, *, fills_from: int | None = None
) -> ScopeSnapshot:
    """One atomic read of ``bot``'s executions and of the fills (those from ``fills_from``
    on, when given) of ``cluster``'s shared Redis."""
    client = cluster.redis_client
    executions, journals, fills, appended = await client.eval(
        _SNAPSHOT, 0, f"{cluster.prefix}:", bot, "" if fills_from is None else str(fills_from)
    )
    ids = [e.decode() for e in executions]
    return ScopeSnapshot(
        frozenset(ids),
        {
            execution_id: owner.decode()
            for execution_id, journal, owner in zip(ids, journals[::2], journals[1::2], strict=True)
            if _committed(execution_id, journal)
        },
        int(fills),
        tuple(json.loads(fill)[2] for fill in appended),
    )


# -- load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run a :class:`Load` client made."""

    bot: str
    within_halt: bool
    """Submitted once ``Halt`` of ``bot`` had returned and ended before its resume was
    asked for: the whole run saw the bot halted."""
    record: ExecutionRecord


@dataclass
class Load:
    """Clients running ``workflow`` back to back, spread over the replicas: ``scoped`` of
    them for :attr:`bot` (the scope a test halts and resumes), ``steady`` for
    :data:`STEADY_BOT`. Start, switch the bot, wait for its runs, stop."""

    replicas: Sequence[Replica]
    workflow: Mapping[str, Any]
    scoped: int
    steady: int
    bot: str = ""
    halted: bool = False
    """Set by the test as soon as ``Halt`` of :attr:`bot` returned, cleared before it asks
    for the resume."""
    submitted: Counter[str] = field(default_factory=Counter)
    """Bot -> runs submitted."""
    runs: dict[str, list[Run]] = field(default_factory=dict)
    """Bot -> its runs that ended, in the order they ended."""
    finished: set[str] = field(default_factory=set)
    """Execution ids of the runs that ended."""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def start(self, bot: str) -> None:
        self.switch(bot)
        clients = [False] * self.scoped + [True] * self.steady
        self._tasks = [
            asyncio.create_task(self._client(self.replicas[i % len(self.replicas)], steady))
            for i, steady in enumerate(clients)
        ]

    def switch(self, bot: str) -> None:
        """Runs submitted from now on are for ``bot``, not halted yet."""
        self.bot, self.halted = bot, False

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds, asked again whenever a run starts or ends;
        fail naming ``what`` after :data:`~kit.DEADLINE_SECONDS`, or with a client's error
        as soon as one fails."""

        def holds() -> bool:
            for task in self._tasks:
                if task.done():
                    task.result()
                    raise AssertionError("a load client stopped")
            return condition()

        try:
            async with asyncio.timeout(DEADLINE_SECONDS), self._changed:
                await self._changed.wait_for(holds)
        except TimeoutError:
            raise AssertionError(f"gave up waiting until {what}") from None

    async def stop(self) -> None:
        """Let each client finish its current run, then end it."""
        self._stopping = True
        await asyncio.gather(*self._tasks)

    async def _client(self, replica: Replica, steady: bool) -> None:
        definition = json.dumps(self.workflow)
        while not self._stopping:
            bot = STEADY_BOT if steady else self.bot
            after_halt = not steady and self.halted
            request = pb.ExecuteWorkflowRequest(
                workflow_id="load", bot_id=bot, definition_json=definition
            )
            async with self._changed:
                self.submitted[bot] += 1
                self._changed.notify_all()
            response = await replica.stub.ExecuteWorkflow(request, timeout=DEADLINE_SECONDS)
            record = wire.execution_from_proto(response.execution)[0]
            async with self._changed:
                within = after_halt and self.halted and self.bot == bot
                self.runs.setdefault(bot, []).append(Run(bot, within, record))
                self.finished.add(record.execution_id)
                self._changed.notify_all()
