"""The state service as a real ``python -m state_service`` subprocess on free ports.

Import the fixtures into a test module (``from state_fixtures import ...``);
they need the ``redis_server`` session fixture from ``conftest.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from servers import ServerProcess, Service, free_port, start_service

from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.app.devstack import service_process
from tradeflow.proto.state.v1 import state_service_pb2

__all__ = [
    "STATE_SERVICE_NAME",
    "client",
    "prefix",
    "start_state_service",
    "state_client",
    "state_service",
    "state_service_process",
]

STATE_SERVICE_NAME = state_service_pb2.DESCRIPTOR.services_by_name["StateService"].full_name


def start_state_service(redis_url: str, workdir: Path) -> Service:
    """A state service on Redis ``redis_url``, logging to ``workdir/state.log``."""
    return start_service("state", STATE_SERVICE_NAME, workdir, {"TRADEFLOW_REDIS_URL": redis_url})


def state_service_process(
    redis_url: str, workdir: Path, prefix: str, env: dict[str, str]
) -> ServerProcess:
    """A plaintext state service on Redis ``redis_url`` and key ``prefix``, with ``env``,
    not started: its ``start()`` returns once it listens (not once it serves), and a
    test may kill it while it starts."""
    return service_process(
        "state",
        free_port(),
        workdir,
        {
            "TRADEFLOW_STATE_METRICS_PORT": str(free_port()),
            "TRADEFLOW_REDIS_URL": redis_url,
            "TRADEFLOW_REDIS_PREFIX": prefix,
            "TRADEFLOW_GRPC_PLAINTEXT": "true",
            "TRADEFLOW_LOG_LEVEL": "info",
            **env,
        },
    )


@pytest.fixture(scope="module")
def state_service(
    redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A state service on the session's redis-server, shared by a test module."""
    service = start_state_service(redis_server.url, tmp_path_factory.mktemp("state"))
    yield service
    service.process.stop()


@pytest_asyncio.fixture
async def state_client(state_service: Service) -> AsyncIterator[StateClient]:
    """A client of the module's state service, closed after the test."""
    client = StateClient(state_service.address)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def client(redis_server: ServerProcess) -> AsyncIterator[aioredis.Redis]:
    """A bytes client on the session's redis-server."""
    connection = aioredis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


@pytest_asyncio.fixture
async def prefix(client: aioredis.Redis, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """This test's own key prefix; its state and emergency keys are deleted afterwards."""
    # Only word characters: SCAN MATCH would read [] in parametrized names as a pattern.
    name = "test:" + re.sub(r"\W", "_", request.node.name)
    yield name
    for pattern in (f"{name}:*", f"{{{name}:emergency}}*"):
        keys = [key async for key in client.scan_iter(match=pattern)]
        if keys:
            await client.delete(*keys)
