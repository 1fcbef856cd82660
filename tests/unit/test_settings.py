"""Numeric TRADEFLOW_* variables of the services: what each kind accepts and how it refuses."""

from __future__ import annotations

import re

import pytest

from tradeflow.app.settings import ServiceSettings, Settings
from tradeflow.domain.errors import ConfigurationError

INTEGER = ("TRADEFLOW_STATE_MAX_EVENTS", "max_events", "an integer > 0")
NUMBER = ("TRADEFLOW_EMERGENCY_HEARTBEAT", "heartbeat_seconds", "a number > 0")


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        (INTEGER, "5", 5),
        (INTEGER, "+5", None),
        (INTEGER, " 5", None),
        (INTEGER, "1_000", None),
        (INTEGER, "0", None),
        (NUMBER, "2.5", 2.5),
        (NUMBER, "+5", 5.0),
        (NUMBER, " 5", 5.0),
        (NUMBER, "1_000", 1000.0),
        (NUMBER, "0", None),
    ],
)
def test_numeric_variables(
    variable: tuple[str, str, str], raw: str, expected: float | None
) -> None:
    """An integer variable takes digits only, a number what float() reads; else an error naming it."""
    key, field, kind = variable
    if expected is None:
        message = f"{key} must be {kind}, found {raw!r}"
        with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$"):
            ServiceSettings.from_env("state", {key: raw})
    else:
        value = getattr(ServiceSettings.from_env("state", {key: raw}), field)
        assert (value, type(value)) == (expected, type(expected))


def test_the_kill_switch_defaults_leave_under_a_second_of_doubt() -> None:
    """By default an executor fails closed within 1 s of the emergency service's last sign
    of life: the staleness bound is under a second and a few heartbeats long, and the halt
    barrier's deadline is short; each is read from its variable."""
    settings, service = (
        Settings.from_env("production", {}),
        ServiceSettings.from_env("emergency", {}),
    )
    assert settings.emergency_max_staleness < 1.0
    assert settings.emergency_max_staleness >= 2 * service.heartbeat_seconds
    assert service.halt_ack_timeout < 1.0
    env = {"TRADEFLOW_EMERGENCY_MAX_STALENESS": "0.5", "TRADEFLOW_HALT_ACK_TIMEOUT": "0.1"}
    assert Settings.from_env("production", env).emergency_max_staleness == 0.5
    assert ServiceSettings.from_env("emergency", env).halt_ack_timeout == 0.1
