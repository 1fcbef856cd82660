"""The emergency service as a real ``python -m emergency_service`` subprocess on free ports.

Import the fixtures into a test module (``from emergency_fixtures import ...``);
they need the ``redis_server`` and ``nats_server`` session fixtures from
``conftest.py``. Each test gets its own service and Redis key prefix, so it
starts from an empty emergency state whatever other tests halted.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import ServerProcess, free_port

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.proto.emergency.v1 import emergency_service_pb2

__all__ = [
    "EMERGENCY_SERVICE_NAME",
    "HEARTBEAT_SECONDS",
    "ClientFactory",
    "EmergencyService",
    "emergency_service",
    "make_emergency_client",
    "start_emergency_service",
]

EMERGENCY_SERVICE_NAME = emergency_service_pb2.DESCRIPTOR.services_by_name[
    "EmergencyService"
].full_name
HEARTBEAT_SECONDS = 0.2
"""The services' heartbeat here: short, so a lost link shows quickly."""
REPO_ROOT = Path(__file__).resolve().parents[2]
# Only there so a service that never becomes healthy fails the test instead of hanging it.
READY_TIMEOUT_SECONDS = 30

ClientFactory = Callable[[], Awaitable[RemoteEmergencyControl]]

_prefixes = itertools.count()


@dataclass
class EmergencyService:
    """A running emergency service: its process, gRPC address, metrics port, Redis prefix."""

    process: ServerProcess
    metrics_port: int
    redis_prefix: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> EmergencyService:
        """Start the process (again, on the same ports) and wait until it reports SERVING."""
        self.process.start()
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=EMERGENCY_SERVICE_NAME),
                wait_for_ready=True,
                timeout=READY_TIMEOUT_SECONDS,
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"emergency service at {self.address} is {reply.status}")
        return self


def start_emergency_service(
    redis_url: str, nats_url: str, workdir: Path, *, redis_prefix: str
) -> EmergencyService:
    """An emergency service on ``redis_url`` and ``nats_url``, logging to ``workdir``."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        # The service package sits beside tradeflow, whatever the editable install maps.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "TRADEFLOW_EMERGENCY_ADDR": f"127.0.0.1:{port}",
        "TRADEFLOW_EMERGENCY_METRICS_PORT": str(metrics_port),
        "TRADEFLOW_REDIS_URL": redis_url,
        "TRADEFLOW_NATS_URL": nats_url,
        "TRADEFLOW_REDIS_PREFIX": redis_prefix,
        "TRADEFLOW_EMERGENCY_HEARTBEAT": str(HEARTBEAT_SECONDS),
        "TRADEFLOW_LOG_LEVEL": "debug",
    }
    argv = [sys.executable, "-m", "emergency_service"]
    process = ServerProcess("emergency", argv, port, workdir, env=env)
    return EmergencyService(process, metrics_port, redis_prefix).start()


@pytest.fixture
def emergency_service(
    redis_server: ServerProcess, nats_server: ServerProcess, tmp_path: Path
) -> Iterator[EmergencyService]:
    """An emergency service of this test alone, on the session's Redis and NATS."""
    prefix = f"test-emergency-{os.getpid()}-{next(_prefixes)}"
    service = start_emergency_service(
        redis_server.url, nats_server.url, tmp_path, redis_prefix=prefix
    )
    yield service
    service.process.stop()


@pytest_asyncio.fixture
async def make_emergency_client(
    emergency_service: EmergencyService, redis_server: ServerProcess
) -> AsyncIterator[ClientFactory]:
    """Connects clients to the test's service (each waits for its first snapshot); closes
    them and deletes the test's Redis keys afterwards."""
    clients: list[RemoteEmergencyControl] = []

    async def make() -> RemoteEmergencyControl:
        client = await RemoteEmergencyControl.connect(
            emergency_service.address,
            timeout=READY_TIMEOUT_SECONDS,
            max_staleness=HEARTBEAT_SECONDS * 10,
            reconnect_backoff=(0.05, 0.5),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    cleanup = aioredis.from_url(redis_server.url)
    keys = [key async for key in cleanup.scan_iter(match=f"*{emergency_service.redis_prefix}*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()
