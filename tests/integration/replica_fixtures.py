"""A cluster of executor replicas for the fault tests, every part a real process:
nats-server, redis-server, the state and emergency services and any number of
``python -m executor_service`` replicas, all on one Redis key prefix (so the replicas
share the executions' state and the paper ledger) and on free ports.

Replicas load the test node types of ``tests/plugins/tf_test_nodes.py`` (unless told
not to) and run with a short lease and takeover interval, so a takeover costs about a
second. A test builds its own :class:`Cluster` and closes it (every process stops).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS, eventually
from servers import REPO_ROOT, ServerProcess, Service, start_nats, start_redis, start_service
from workflows import block

from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.domain.records import (
    Event,
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
)
from tradeflow.domain.trading import Order, OrderStatus, Position
from tradeflow.proto.emergency.v1 import emergency_service_pb2
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tradeflow.proto.state.v1 import state_service_pb2

__all__ = [
    "LEASE_SECONDS",
    "QUANTITY",
    "Cluster",
    "LedgerView",
    "Replica",
    "final_record",
    "make_cluster",
    "order_workflow",
    "resumed_at",
    "submit",
    "submit_request",
    "wait_started",
]

PLUGINS_DIR = REPO_ROOT / "tests" / "plugins"
PLUGIN_MODULE = "tf_test_nodes"
LEASE_SECONDS = 1.0
"""Every replica's lease here: a dead owner's executions are orphans after about this."""
TAKEOVER_INTERVAL = 0.2
SHUTDOWN_GRACE = 0.3
QUANTITY = 0.001
"""BTC bought by each execution of :func:`order_workflow`."""
VENUE, SYMBOL = "paper", "BTC/USDT"
BUY = "buy"
"""The block of :func:`order_workflow` that places the order."""

_NAMES = {
    "state": state_service_pb2.DESCRIPTOR.services_by_name["StateService"].full_name,
    "emergency": emergency_service_pb2.DESCRIPTOR.services_by_name["EmergencyService"].full_name,
    "executor": pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
}
_FINAL_PROTO = frozenset(wire.EXECUTION_STATUS.to_proto(s) for s in ExecutionStatus if s.final)


def order_workflow(
    pre: float = 0.0, post: float = 0.0, *, marker_dir: Path | None = None, crash: bool = False
) -> dict[str, Any]:
    """Wait ``pre`` seconds, buy :data:`QUANTITY` BTC (client order id
    ``<execution_id>:buy``), wait ``post`` seconds; each wait drops a start marker in
    ``marker_dir``. With ``crash``, a ``tf_crash`` block first ends the owner's process.

    Nothing but the order is I/O to the engine: a submitted execution is durable from
    its start, one run by ``ExecuteWorkflow`` only from its order's intent on."""
    markers = str(marker_dir or "")
    blocks = [block("size", "providers", "static", {"values": {"qty": QUANTITY}})]
    if crash:
        blocks.append(block("crash", "providers", "tf_crash", {}, {"when": "size.qty"}))
    pre_wait = {"seconds": pre, "marker_dir": markers}
    post_wait = {"seconds": post, "marker_dir": markers}
    blocks += [
        block(
            "pre", "providers", "tf_wait", pre_wait, {"when": "crash.done" if crash else "size.qty"}
        ),
        block(
            BUY,
            "actions",
            "place_order",
            {"symbol": SYMBOL, "side": "buy"},
            {"quantity": "size.qty", "when": "pre.done"},
        ),
        block("post", "providers", "tf_wait", post_wait, {"when": "buy.status"}),
    ]
    return {"blocks": blocks}


@dataclass
class Replica:
    """One executor replica: its process, a gRPC stub (made on first use, in the test's
    event loop) and its log."""

    name: str
    service: Service
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)

    @property
    def process(self) -> ServerProcess:
        return self.service.process

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return int(self.process.pid)

    @property
    def stub(self) -> pb_grpc.ExecutorServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.service.address)
        return pb_grpc.ExecutorServiceStub(self._channel)

    def owns(self, record: ExecutionRecord) -> bool:
        """Whether ``record``'s owner is this replica's current process."""
        return record.owner is not None and f"-{self.pid}-" in record.owner

    def alive(self) -> bool:
        popen = self.process.process
        return popen is not None and popen.poll() is None

    def signal(self, sig: signal.Signals) -> float:
        """Send ``sig``; returns the wall time it was sent at."""
        assert self.alive(), f"{self.name} is not running"
        sent = time.time()
        os.kill(self.pid, sig)
        return sent

    def kill(self) -> float:
        """SIGKILL (a crash); returns the wall time of the signal once the process is gone."""
        sent = self.signal(signal.SIGKILL)
        assert self.process.process is not None
        self.process.process.wait(DEADLINE_SECONDS)
        return sent

    async def restart(self, *, may_die: bool = False) -> None:
        """Start the process again (same ports, same settings) and wait until it serves;
        calls go on a new channel (the old one may sit in its reconnect back-off, failing
        every call fast with the last "connection refused" until the back-off ends).

        ``may_die``: the test expects the process may die at once (it takes over an
        execution that kills its owner), possibly while its health is still being asked:
        then a health check cut short by its exit is no failure."""
        try:
            await asyncio.to_thread(self.service.start)
        except grpc.RpcError:
            if not may_die:
                raise
            await eventually(lambda: not self.alive(), f"{self.name} died while starting")
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def log(self) -> str:
        return (self.process.workdir / f"{self.process.name}.log").read_text(errors="replace")

    def logged(self, event: str, execution_id: str) -> bool:
        """Whether a line of this replica's log is ``event`` about ``execution_id``."""
        return any(
            f'"{event}"' in line and execution_id in line for line in self.log().splitlines()
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


@dataclass(frozen=True)
class LedgerView:
    """What the shared paper ledger in Redis holds."""

    orders: Mapping[str, Order]
    """Client order id -> order, of venue ``paper``."""
    fills: Counter[str]
    """Client order id -> how many fills the ledger appended for it."""
    filled_quantity: float
    """Sum of the quantities of the fills."""
    position: Position

    def assert_each_once(self, execution_ids: Sequence[str]) -> None:
        """Each execution's order is in the ledger, filled once; no other fill exists;
        the position is the sum of the fills (nothing applied twice)."""
        expected = {f"{execution_id}:{BUY}" for execution_id in execution_ids}
        missing = sorted(expected - self.orders.keys())
        assert not missing, f"orders missing from the ledger: {missing}"
        twice = {coid: n for coid, n in self.fills.items() if n != 1}
        assert not twice, f"client order ids filled more than once: {twice}"
        assert set(self.fills) == expected, (
            f"fills of orders of no execution here: {sorted(set(self.fills) - expected)}, "
            f"orders without a fill: {sorted(expected - set(self.fills))}"
        )
        for coid in expected:
            assert self.orders[coid].status is OrderStatus.FILLED, self.orders[coid]
        assert abs(self.filled_quantity - QUANTITY * len(expected)) < 1e-9, self.filled_quantity
        assert abs(self.position.quantity - self.filled_quantity) < 1e-9, self.position


class Cluster:
    """NATS, Redis, the state and emergency services and executor replicas, on one Redis
    prefix. Replicas get :data:`LEASE_SECONDS`, :data:`TAKEOVER_INTERVAL` and the test
    node types unless ``replica_env`` says otherwise."""

    def __init__(self, workdir: Path, *, replica_env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.markers = workdir / "markers"
        self.prefix = f"replicas-{os.getpid()}-{workdir.name}"
        self.replicas: list[Replica] = []
        self.servers: list[ServerProcess] = []
        """Every process but the replicas, in starting order."""
        self._state: StateClient | None = None
        self._redis: aioredis.Redis | None = None
        self._replica_env = dict(replica_env or {})
        self.base_env: dict[str, str] = {}
        self.replica_env: dict[str, str] = {}

    def start(self) -> Cluster:
        """Start NATS, Redis, then the state and emergency services (in parallel)."""
        self.markers.mkdir(parents=True)
        nats = start_nats(self.workdir / "nats")
        self.servers.append(nats)
        redis = start_redis(self.workdir / "redis")
        self.servers.append(redis)
        self.redis_url = f"{redis.url}/0"
        self.base_env = {
            "TRADEFLOW_NATS_URL": nats.url,
            "TRADEFLOW_REDIS_URL": self.redis_url,
            "TRADEFLOW_REDIS_PREFIX": self.prefix,
            "TRADEFLOW_LOG_LEVEL": "info",
        }
        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(lambda name: self._service(name, {}), ("state", "emergency")))
        self.servers += [s.process for s in started]
        self.state, self.emergency = started
        self.replica_env = {
            **self.base_env,
            "TRADEFLOW_STATE_ADDR": self.state.address,
            "TRADEFLOW_EMERGENCY_ADDR": self.emergency.address,
            "TRADEFLOW_LEASE_SECONDS": str(LEASE_SECONDS),
            "TRADEFLOW_TAKEOVER_INTERVAL": str(TAKEOVER_INTERVAL),
            "TRADEFLOW_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE),
            "TRADEFLOW_NODE_MODULES": PLUGIN_MODULE,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS_DIR)]),
            **self._replica_env,
        }
        return self

    def _service(self, name: str, env: Mapping[str, str], workdir: str | None = None) -> Service:
        return start_service(
            name, _NAMES[name], self.workdir / (workdir or name), {**self.base_env, **env}
        )

    def start_replicas(self, count: int, *, plugins: bool = True, **env: str) -> list[Replica]:
        """Start ``count`` more replicas (in parallel), ``env`` over the cluster's settings;
        without ``plugins`` they know the built-in node types only."""
        settings = {**self.replica_env, **env}
        if not plugins:
            settings.pop("TRADEFLOW_NODE_MODULES")
        first = len(self.replicas)
        names = [f"replica-{chr(ord('a') + first + i)}" for i in range(count)]
        with ThreadPoolExecutor(count) as pool:
            services = list(pool.map(lambda n: self._service("executor", settings, n), names))
        started = [Replica(n, s) for n, s in zip(names, services, strict=True)]
        self.replicas += started
        return started

    def signal_state(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the state service (SIGSTOP stalls it, SIGCONT ends the stall)."""
        assert self.state.process.pid is not None
        os.kill(self.state.process.pid, sig)

    # -- reading the shared state ---------------------------------------------------------

    @property
    def state_store(self) -> StateClient:
        """A client of the state service (what every replica reads and writes)."""
        if self._state is None:
            self._state = StateClient(self.state.address)
        return self._state

    @property
    def redis_client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.from_url(self.redis_url)
        return self._redis

    async def ledger(self) -> LedgerView:
        """The shared paper ledger, read from Redis."""
        client = self.redis_client
        paper = f"{self.prefix}:paper:"
        ledger = RedisPaperLedger(client, prefix=self.prefix)
        orders: dict[str, Order] = {}
        for raw_coid in await client.hkeys(f"{paper}orders:{VENUE}"):
            coid = raw_coid.decode() if isinstance(raw_coid, bytes) else raw_coid
            order = await ledger.get_order(VENUE, coid)
            assert order is not None
            orders[coid] = order
        fills: Counter[str] = Counter()
        filled = 0.0
        for raw in await client.lrange(f"{paper}fills", 0, -1):
            _venue, _symbol, coid, _side, quantity, *_ = json.loads(raw)
            fills[coid] += 1
            filled += quantity
        return LedgerView(orders, fills, filled, await ledger.position(VENUE, SYMBOL))

    async def assert_orders_once(self, execution_ids: Sequence[str]) -> None:
        """Each execution's order is in the shared ledger once, filled once, nothing else
        is (:meth:`LedgerView.assert_each_once`), and the order the execution recorded
        is that one (a new owner adopted it instead of placing another)."""
        ledger = await self.ledger()
        ledger.assert_each_once(execution_ids)
        for execution_id in execution_ids:
            recorded = (await self.state_store.get_checkpoints(execution_id))[BUY].outputs
            stored = ledger.orders[f"{execution_id}:{BUY}"]
            assert recorded is not None and recorded["order_id"] == stored.order_id, (
                execution_id,
                recorded,
                stored,
            )

    async def leases_of(self, replica: Replica) -> list[str]:
        """The Redis keys of the live leases of ``replica``'s process."""
        pattern = f"{self.prefix}:lease:executor-*-{replica.pid}-*"
        return [key.decode() async for key in self.redis_client.scan_iter(match=pattern)]

    async def events(self, execution_id: str) -> list[Event]:
        return [e for _, e in await self.state_store.read_events(execution_id=execution_id)]

    async def unfinished(self) -> list[ExecutionRecord]:
        """Every execution still ``running`` or ``interrupted``."""
        left: list[ExecutionRecord] = []
        for status in (ExecutionStatus.RUNNING, ExecutionStatus.INTERRUPTED):
            page = await self.state_store.list_executions(ExecutionQuery(status=status, limit=500))
            left += page.executions
        return left

    def started_markers(self, block_id: str = "pre") -> dict[str, int]:
        """Execution id -> pid of the last process that started its ``block_id`` wait."""
        seen: dict[str, tuple[float, int]] = {}
        for path in self.markers.iterdir():
            execution_id, marker_block, pid = path.name.rsplit(".", 2)
            mtime = path.stat().st_mtime
            if marker_block == block_id and mtime >= seen.get(execution_id, (0.0, 0))[0]:
                seen[execution_id] = (mtime, int(pid))
        return {execution_id: pid for execution_id, (_, pid) in seen.items()}

    # -- teardown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every process (continuing paused ones first) and close the clients."""
        for replica in self.replicas:
            await replica.close()
        if self._state is not None:
            await self._state.close()
        if self._redis is not None:
            await self._redis.aclose()
        for process in [r.process for r in self.replicas] + self.servers:
            if process.process is not None and process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
        # Nothing here is kept: the services are killed (a drain costs a second each),
        # nats-server and redis-server stopped.
        for process in [r.process for r in self.replicas] + self.servers[2:]:
            process.kill()
        for process in reversed(self.servers[:2]):
            process.stop()


async def final_record(replica: Replica, execution_id: str) -> ExecutionRecord:
    """The execution's record through ``replica``'s GetExecution once it is final
    (``interrupted`` is not)."""
    request = pb.GetExecutionRequest(execution_id=execution_id)

    async def final() -> bool:
        response = await replica.stub.GetExecution(request, timeout=DEADLINE_SECONDS)
        return response.execution.record.status in _FINAL_PROTO

    await eventually(final, f"{execution_id} is final (asked {replica.name})", poll=0.02)
    response = await replica.stub.GetExecution(request, timeout=DEADLINE_SECONDS)
    return wire.execution_from_proto(response.execution)[0]


def resumed_at(events: Sequence[Event]) -> float | None:
    """When the execution last started again after its first start (a takeover or a
    resume), by the event's timestamp; ``None`` if it never did."""
    starts = [
        e.timestamp
        for e in events
        if e.type == EventType.EXECUTION_STARTED.value and e.data.get("resumed")
    ]
    return starts[-1] if starts else None


def submit_request(
    workflow: Mapping[str, Any], request_id: str, workflow_id: str = "replicas"
) -> pb.SubmitWorkflowRequest:
    return pb.SubmitWorkflowRequest(
        request_id=request_id, workflow_id=workflow_id, definition_json=json.dumps(workflow)
    )


@pytest_asyncio.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Cluster]]:
    """Starts this test's cluster with ``replicas`` executor replicas (``replica_env``
    over their settings); stops every process of it afterwards."""
    clusters: list[Cluster] = []

    def make(replicas: int = 2, *, replica_env: dict[str, str] | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", replica_env=replica_env)
        clusters.append(cluster)
        cluster.start()
        if replicas:
            cluster.start_replicas(replicas)
        return cluster

    yield make
    for cluster in clusters:
        await cluster.close()


async def submit(replica: Replica, workflow: dict[str, Any], request_id: str) -> str:
    reply = await replica.stub.SubmitWorkflow(
        submit_request(workflow, request_id), timeout=DEADLINE_SECONDS
    )
    return str(reply.execution_id)


async def wait_started(cluster: Cluster, execution_ids: Sequence[str], replica: Replica) -> None:
    """Until ``replica`` runs the ``pre`` wait of every execution (its markers exist)."""

    def started() -> bool:
        markers = cluster.started_markers()
        return all(markers.get(e) == replica.pid for e in execution_ids)

    await eventually(started, f"{replica.name} runs the wait of {list(execution_ids)}")
