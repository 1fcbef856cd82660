"""Every adapter of the three ports, as parametrized fixtures for the contract suite.

Import the fixtures into a test module (``from contract_fixtures import ...``).
Each param builds a fresh adapter per test and releases it afterwards; servers
are requested (``request.getfixturevalue``) only by the params that need them,
so ``-k sqlite`` runs without any.

- ``state_store``: ``sqlite`` (a tmp file), ``redis`` (a key prefix of its own on
  the session's redis-server, deleted afterwards), ``service`` (a
  :class:`StateClient` of the session ``stack``, shared by every test: use unique ids).
- ``emergency_kit`` / ``emergency``: ``local`` (a tmp file), ``redis`` (a key prefix
  of its own), ``service`` (:class:`RemoteEmergencyControl` on the shared ``stack``:
  every halt the test added is resumed afterwards).
- ``event_bus``: ``in_process``, ``nats`` (the session's nats-server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS
from servers import ServerProcess, Stack

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.memory.events import InProcessEventBus
from tradeflow.adapters.nats.bus import NatsEventBus
from tradeflow.adapters.redis.emergency import RedisEmergencyController
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.ports import EmergencyControl, EventBus, StateStore

__all__ = [
    "EmergencyKit",
    "emergency",
    "emergency_kit",
    "event_bus",
    "state_store",
    "uid",
]


@dataclass(frozen=True, slots=True)
class EmergencyKit:
    """Controllers on one emergency state, and how to bring a controller's local view
    (what ``ensure_trading_allowed`` reads) up to date with every change made so far."""

    open: Callable[[], Awaitable[EmergencyControl]]
    """A new controller on the test's emergency state (closed after the test)."""
    caught_up: Callable[[EmergencyControl], Awaitable[None]]
    """Wait until the controller's local view shows every change made so far, by anyone."""


@pytest.fixture
def uid() -> str:
    """A prefix no other test uses, for the ids a test writes to a shared store."""
    return f"ct-{new_id()[:16]}"


@pytest_asyncio.fixture(params=["sqlite", "redis", "service"])
async def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    """Each :class:`StateStore` adapter in turn, empty except on the shared ``stack``."""
    async with AsyncExitStack() as resources:
        store: StateStore
        if request.param == "sqlite":
            conn = open_database(tmp_path / "tradeflow.db")
            resources.callback(conn.close)
            store = SQLiteStateStore(conn)
        elif request.param == "redis":
            client = await _redis_client(request, resources)
            prefix = f"contract:{new_id()}"
            resources.push_async_callback(_delete_keys, client, f"{prefix}:*")
            store = RedisStateStore(client, prefix=prefix)
        else:
            stack: Stack = request.getfixturevalue("stack")
            store = StateClient(stack.client_env()["TRADEFLOW_STATE_ADDR"])
        resources.push_async_callback(store.close)
        yield store


@pytest_asyncio.fixture(params=["local", "redis", "service"])
async def emergency_kit(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[EmergencyKit]:
    """Each :class:`EmergencyControl` adapter in turn; halts the test added are resumed."""
    async with AsyncExitStack() as resources:
        if request.param == "local":
            kit = _local_kit(tmp_path / "tradeflow.db", resources)
        elif request.param == "redis":
            kit = _redis_kit(await _redis_client(request, resources), resources)
        else:
            stack: Stack = request.getfixturevalue("stack")
            kit = _service_kit(stack.client_env()["TRADEFLOW_EMERGENCY_ADDR"], resources)
        warden = await kit.open()
        before = {(h.scope, h.target) for h in await warden.halts()}
        yield kit
        # Only the shared stack outlives the test; lifting there keeps other tests trading.
        for halt in await warden.halts():
            if (halt.scope, halt.target) not in before:
                await warden.resume(halt.scope, halt.target, reason="contract test cleanup")


@pytest_asyncio.fixture
async def emergency(emergency_kit: EmergencyKit) -> EmergencyControl:
    """A controller of the test's emergency state (see :func:`emergency_kit`)."""
    return await emergency_kit.open()


@pytest_asyncio.fixture(params=["in_process", "nats"])
async def event_bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """Each :class:`EventBus` adapter in turn, closed after the test."""
    bus: EventBus
    if request.param == "in_process":
        bus = InProcessEventBus(history=1_000)  # it keeps none unless configured
    else:
        nats_server: ServerProcess = request.getfixturevalue("nats_server")
        bus = await NatsEventBus.connect(nats_server.url)
    yield bus
    await bus.close()


async def _redis_client(
    request: pytest.FixtureRequest, resources: AsyncExitStack
) -> aioredis.Redis:
    redis_server: ServerProcess = request.getfixturevalue("redis_server")
    client = aioredis.from_url(redis_server.url)
    resources.push_async_callback(client.aclose)
    return client


async def _delete_keys(client: aioredis.Redis, pattern: str) -> None:
    keys = [key async for key in client.scan_iter(match=pattern)]
    if keys:
        await client.delete(*keys)


async def _nothing_to_wait_for(control: EmergencyControl) -> None:
    """The local controller reads the file on every check: its view is never behind."""


def _local_kit(path: Path, resources: AsyncExitStack) -> EmergencyKit:
    async def open_controller() -> EmergencyControl:
        # One connection each, as a second process would have.
        conn = open_database(path)
        resources.callback(conn.close)
        controller = LocalEmergencyController(conn, clock=SystemClock(), id_factory=new_id)
        resources.push_async_callback(controller.close)
        return controller

    return EmergencyKit(open_controller, _nothing_to_wait_for)


def _redis_kit(client: aioredis.Redis, resources: AsyncExitStack) -> EmergencyKit:
    prefix = f"contract-{new_id()}"
    resources.push_async_callback(_delete_keys, client, f"{{{prefix}:*")

    async def open_controller() -> EmergencyControl:
        controller = RedisEmergencyController(
            client, prefix=prefix, clock=SystemClock(), id_factory=new_id
        )
        await controller.start()
        resources.push_async_callback(controller.close)
        return controller

    async def caught_up(control: EmergencyControl) -> None:
        assert isinstance(control, RedisEmergencyController)
        await control.refresh()

    return EmergencyKit(open_controller, caught_up)


def _service_kit(address: str, resources: AsyncExitStack) -> EmergencyKit:
    async def open_controller() -> EmergencyControl:
        control = await RemoteEmergencyControl.connect(
            address, timeout=DEADLINE_SECONDS, clock=SystemClock(), id_factory=new_id
        )
        resources.push_async_callback(control.close)
        return control

    async def caught_up(control: EmergencyControl) -> None:
        # The view changes only when the service pushes a snapshot: wait for the
        # version the service has now.
        assert isinstance(control, RemoteEmergencyControl)
        async with asyncio.timeout(DEADLINE_SECONDS):
            await control.wait_for_version()

    return EmergencyKit(open_controller, caught_up)
