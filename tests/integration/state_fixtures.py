"""The state service as a real ``python -m state_service`` subprocess on free ports.

Import the fixtures into a test module (``from state_fixtures import ...``);
they need the ``redis_server`` session fixture from ``conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import ServerProcess, free_port

from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.proto.state.v1 import state_service_pb2

__all__ = [
    "STATE_SERVICE_NAME",
    "StateService",
    "start_state_service",
    "state_client",
    "state_service",
]

STATE_SERVICE_NAME = state_service_pb2.DESCRIPTOR.services_by_name["StateService"].full_name
REPO_ROOT = Path(__file__).resolve().parents[2]
# Only there so a service that never becomes healthy fails the test instead of hanging it.
READY_TIMEOUT_SECONDS = 30

_prefixes = itertools.count()


@dataclass
class StateService:
    """A running state service: its process, gRPC address and metrics port."""

    process: ServerProcess
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> StateService:
        """Start the process (again, on the same ports) and wait until it reports SERVING."""
        self.process.start()
        with grpc.insecure_channel(self.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=STATE_SERVICE_NAME),
                wait_for_ready=True,
                timeout=READY_TIMEOUT_SECONDS,
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"state service at {self.address} is {reply.status}")
        return self


def start_state_service(redis_url: str, workdir: Path) -> StateService:
    """A state service on Redis ``redis_url``, logging to ``workdir/state.log``.

    Each service gets a Redis key prefix of its own (kept across restarts), so
    services of different tests never see each other's executions.
    """
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        # The service package sits beside tradeflow, whatever the editable install maps.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "TRADEFLOW_STATE_ADDR": f"127.0.0.1:{port}",
        "TRADEFLOW_STATE_METRICS_PORT": str(metrics_port),
        "TRADEFLOW_REDIS_URL": redis_url,
        "TRADEFLOW_REDIS_PREFIX": f"test-state-{os.getpid()}-{next(_prefixes)}",
        "TRADEFLOW_LOG_LEVEL": "debug",
    }
    argv = [sys.executable, "-m", "state_service"]
    service = StateService(ServerProcess("state", argv, port, workdir, env=env), metrics_port)
    return service.start()


@pytest.fixture(scope="module")
def state_service(
    redis_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StateService]:
    """A state service on the session's redis-server, shared by a test module."""
    service = start_state_service(redis_server.url, tmp_path_factory.mktemp("state"))
    yield service
    service.process.stop()


@pytest_asyncio.fixture
async def state_client(state_service: StateService) -> AsyncIterator[StateClient]:
    """A client of the module's state service, closed after the test."""
    client = StateClient(state_service.address)
    yield client
    await client.close()
