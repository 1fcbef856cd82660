"""Service configuration read from ``TRADEFLOW_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tradeflow.domain.errors import ConfigurationError

__all__ = ["ServiceConfig"]

# Module constants, not ``cls.<field>``: on a slotted dataclass that is the slot
# descriptor, not the default.
_REDIS_URL = "redis://127.0.0.1:6379/0"
_NATS_URL = "nats://127.0.0.1:4222"
_GRACE_SECONDS = 10.0
_LOG_LEVEL = "info"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What every service needs; each service reads its own listen address."""

    name: str
    """``executor``, ``emergency`` or ``state``."""
    listen: str
    """``TRADEFLOW_<NAME>_ADDR``: host:port the gRPC server binds."""
    metrics_port: int
    """``TRADEFLOW_<NAME>_METRICS_PORT``: Prometheus ``/metrics`` over HTTP (0: off)."""
    redis_url: str = _REDIS_URL
    """``TRADEFLOW_REDIS_URL``."""
    nats_url: str = _NATS_URL
    """``TRADEFLOW_NATS_URL``."""
    grace_seconds: float = _GRACE_SECONDS
    """``TRADEFLOW_SHUTDOWN_GRACE``: how long SIGTERM waits for in-flight calls."""
    log_level: str = _LOG_LEVEL
    """``TRADEFLOW_LOG_LEVEL``."""
    log_json: bool = True
    """``TRADEFLOW_LOG_FORMAT`` (json unless ``console``)."""

    @classmethod
    def from_env(
        cls, name: str, *, default_port: int, environ: Mapping[str, str] | None = None
    ) -> ServiceConfig:
        env = os.environ if environ is None else environ
        prefix = f"TRADEFLOW_{name.upper()}"
        return cls(
            name=name,
            listen=env.get(f"{prefix}_ADDR", f"127.0.0.1:{default_port}"),
            metrics_port=_int(env, f"{prefix}_METRICS_PORT", default_port + 1000),
            redis_url=env.get("TRADEFLOW_REDIS_URL", _REDIS_URL),
            nats_url=env.get("TRADEFLOW_NATS_URL", _NATS_URL),
            grace_seconds=_float(env, "TRADEFLOW_SHUTDOWN_GRACE", _GRACE_SECONDS),
            log_level=env.get("TRADEFLOW_LOG_LEVEL", _LOG_LEVEL),
            log_json=env.get("TRADEFLOW_LOG_FORMAT", "json") != "console",
        )


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be an integer, found {raw!r}") from None


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{key} must be a number, found {raw!r}") from None
