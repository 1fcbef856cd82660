"""The kill switch needs only the emergency service: `tradeflow halt`, `status` and
`resume --env production` work while NATS and the state service are down."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from emergency_fixtures import start_emergency_service
from servers import ServerProcess, Service, free_port, production_cli, start_nats

pytestmark = pytest.mark.integration


@pytest.fixture
def emergency_without_nats(redis_server: ServerProcess, tmp_path: Path) -> Iterator[Service]:
    """An emergency service of its own whose NATS is stopped once it serves."""
    nats = start_nats(tmp_path / "nats")
    service = start_emergency_service(redis_server.url, nats.url, tmp_path)
    nats.stop()
    yield service
    service.process.stop()


def tradeflow(*args: str, service: Service) -> subprocess.CompletedProcess[str]:
    """The CLI in production mode, pointed at ``service`` and at a NATS and a state
    service that are not there."""
    env = {
        "TRADEFLOW_EMERGENCY_ADDR": service.address,
        "TRADEFLOW_GRPC_PLAINTEXT": "true",  # the fixture's service is plaintext
        "TRADEFLOW_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "TRADEFLOW_STATE_ADDR": f"127.0.0.1:{free_port()}",
        "TRADEFLOW_LOG_LEVEL": "warning",
    }
    return production_cli(env, *args)


def test_halt_status_and_resume_work_with_nats_and_the_state_service_down(
    emergency_without_nats: Service,
) -> None:
    """With NATS and the state service down, halt, status and resume each succeed against
    the emergency service alone, and status shows the halt between them."""
    halted = tradeflow("halt", "--reason", "nats is down", service=emergency_without_nats)
    assert halted.returncode == 0, halted.stderr
    assert "halted global: nats is down" in halted.stdout

    status = tradeflow("status", service=emergency_without_nats)
    assert status.returncode == 0, status.stderr
    assert "HALTED global" in status.stdout

    resumed = tradeflow("resume", "--reason", "back", service=emergency_without_nats)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed global" in resumed.stdout
    after = tradeflow("status", service=emergency_without_nats)
    assert "trading: ACTIVE" in after.stdout, after.stdout
