"""The emergency service as a real ``python -m emergency_service`` subprocess on free ports.

Import the fixtures into a test module (``from emergency_fixtures import ...``);
they need the ``redis_server`` and ``nats_server`` session fixtures from
``conftest.py``. Each test gets its own service and Redis key prefix, so it
starts from an empty emergency state whatever other tests halted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from kit import DEADLINE_SECONDS
from servers import ServerProcess, Service, start_service

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.proto.emergency.v1 import emergency_service_pb2

__all__ = [
    "EMERGENCY_SERVICE_NAME",
    "HEARTBEAT_SECONDS",
    "ClientFactory",
    "emergency_clients",
    "emergency_service",
    "make_emergency_client",
    "start_emergency_service",
]

EMERGENCY_SERVICE_NAME = emergency_service_pb2.DESCRIPTOR.services_by_name[
    "EmergencyService"
].full_name
HEARTBEAT_SECONDS = 0.2
"""The services' heartbeat here: short, so a lost link shows quickly."""
ClientFactory = Callable[[], Awaitable[RemoteEmergencyControl]]


def start_emergency_service(
    redis_url: str, nats_url: str, workdir: Path, extra_env: Mapping[str, str] | None = None
) -> Service:
    """An emergency service on ``redis_url`` and ``nats_url``, logging to ``workdir``, with
    ``extra_env`` added to its environment."""
    env = {
        "TRADEFLOW_REDIS_URL": redis_url,
        "TRADEFLOW_NATS_URL": nats_url,
        "TRADEFLOW_EMERGENCY_HEARTBEAT": str(HEARTBEAT_SECONDS),
        **(extra_env or {}),
    }
    return start_service("emergency", EMERGENCY_SERVICE_NAME, workdir, env)


@pytest.fixture
def emergency_service(
    redis_server: ServerProcess, nats_server: ServerProcess, tmp_path: Path
) -> Iterator[Service]:
    """An emergency service of this test alone, on the session's Redis and NATS."""
    service = start_emergency_service(redis_server.url, nats_server.url, tmp_path)
    yield service
    service.process.stop()


@pytest_asyncio.fixture
async def make_emergency_client(
    emergency_service: Service, redis_server: ServerProcess
) -> AsyncIterator[ClientFactory]:
    """Connects clients to the test's service (each waits for its first snapshot); closes
    them and deletes the test's Redis keys afterwards."""
    async with emergency_clients(emergency_service, redis_server.url) as make:
        yield make


@asynccontextmanager
async def emergency_clients(service: Service, redis_url: str) -> AsyncIterator[ClientFactory]:
    """A factory of clients of ``service`` (each waits for its first snapshot); on exit
    closes them and deletes the service's Redis keys from ``redis_url``."""
    clients: list[RemoteEmergencyControl] = []

    async def make() -> RemoteEmergencyControl:
        client = await RemoteEmergencyControl.connect(
            service.address,
            timeout=DEADLINE_SECONDS,
            max_staleness=HEARTBEAT_SECONDS * 10,
            reconnect_backoff=(0.05, 0.5),
            clock=SystemClock(),
            id_factory=new_id,
        )
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
        cleanup = aioredis.from_url(redis_url)
        keys = [key async for key in cleanup.scan_iter(match=f"*{service.redis_prefix}*")]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()
