"""Session fixtures: real nats-server and redis-server on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import ServerProcess, start_nats, start_redis

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
