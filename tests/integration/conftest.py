"""Session fixtures: real nats-server, redis-server and the service stack on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ServerProcess, Stack, start_nats, start_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A throwaway redis-server for the whole session."""
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A throwaway nats-server with JetStream for the whole session."""
    server = start_nats(Path(tmp_path_factory.mktemp("nats")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole service stack (NATS, Redis, state, emergency, executor) on free ports."""
    running = Stack(
        Path(tmp_path_factory.mktemp("stack")),
        # The local gate servers of the tests: the executor's egress policy allows loopback
        # explicitly.
        extra_env={"TRADEFLOW_LOG_LEVEL": "info", "TRADEFLOW_EGRESS_ALLOW": "127.0.0.1"},
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def production(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """``Infrastructure.create("production")`` talks to ``stack``; halts are lifted afterwards."""
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRADEFLOW_LOG_LEVEL", "warning")
    yield stack
    asyncio.run(_lift_halts())


async def _lift_halts() -> None:
    from tradeflow.app.infrastructure import Infrastructure

    async with await Infrastructure.create("production") as infra:
        for halt in await infra.emergency.halts():
            await infra.emergency.resume(halt.scope, halt.target, reason="test cleanup")
