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


def test_secret_hosts_are_read_and_a_malformed_binding_refuses_to_start() -> None:
    """``TRADEFLOW_SECRET_HOSTS`` binds each secret to its hosts; a malformed entry fails
    ``from_env`` naming the variable; unset, no secret may be sent anywhere."""
    env = {"TRADEFLOW_SECRET_HOSTS": "BINANCE_KEY=api.binance.com|testnet.binance.vision,O=x.io"}
    hosts = Settings.from_env("production", env).secret_hosts
    assert hosts.refusal("BINANCE_KEY", "testnet.binance.vision") is None
    assert hosts.refusal("O", "x.io") is None
    assert hosts.refusal("O", "api.binance.com") is not None
    assert Settings.from_env("production", {}).secret_hosts.refusal("O", "x.io") is not None
    bad = {"TRADEFLOW_SECRET_HOSTS": "BINANCE_KEY=*.binance.com"}
    with pytest.raises(ConfigurationError, match=r"^TRADEFLOW_SECRET_HOSTS: expected"):
        Settings.from_env("production", bad)


def test_broker_urls_stay_out_of_the_settings_repr() -> None:
    """NATS and Redis URLs may carry passwords: ``repr`` (a log line, a traceback) leaves
    them out."""
    env = {
        "TRADEFLOW_NATS_URL": "tls://executor:nats-pw-1@nats:4222",
        "TRADEFLOW_REDIS_URL": "rediss://executor:redis-pw-2@redis:6379/0",
    }
    for settings in (Settings.from_env("production", env), ServiceSettings.from_env("state", env)):
        assert settings.redis_url == env["TRADEFLOW_REDIS_URL"]
        assert "nats-pw-1" not in repr(settings) and "redis-pw-2" not in repr(settings)
