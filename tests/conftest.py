"""Fixtures for every test (``tests/`` and ``tests/unit`` are on the path via pytest's
``pythonpath`` setting, so helpers like ``workflows`` and ``gate`` import directly)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gate import GateServer

# Fixture modules of the integration suite (tests/integration is on the path).
pytest_plugins = [
    "contract_fixtures",
    "controller_fixtures",
    "emergency_fixtures",
    "replica_fixtures",
    "state_fixtures",
    # The local HTTP server of the api_call tests (tests/unit is on the path).
    "httpkit",
]


@pytest.fixture
def gate() -> Iterator[GateServer]:
    """A local HTTP gate server; opened (and stopped) at teardown."""
    server = GateServer()
    yield server
    server.close()
