"""Settings of the emergency service beyond :class:`~tradeflow.adapters.grpc.config.ServiceConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tradeflow.adapters.grpc.config import ServiceConfig
from tradeflow.domain.errors import ConfigurationError

__all__ = ["EmergencyConfig"]


@dataclass(frozen=True, slots=True)
class EmergencyConfig:
    """What the emergency service reads from ``TRADEFLOW_*`` on top of the common settings."""

    service: ServiceConfig
    """Listen address, metrics port, Redis and NATS URLs, shutdown grace."""
    redis_prefix: str = "tradeflow"
    """``TRADEFLOW_REDIS_PREFIX``: namespace of every Redis key the service writes."""
    heartbeat_seconds: float = 1.0
    """``TRADEFLOW_EMERGENCY_HEARTBEAT``: an idle ``WatchState`` stream resends the
    current snapshot this often, so watchers can tell a quiet state from a dead link."""
    request_ttl_seconds: float = 3600.0
    """``TRADEFLOW_EMERGENCY_REQUEST_TTL``: how long the answer to a mutating request is
    kept by its ``request_id``; a retry within it is answered without acting twice."""

    @classmethod
    def from_env(
        cls, service: ServiceConfig, environ: Mapping[str, str] | None = None
    ) -> EmergencyConfig:
        """Read the settings; ``ConfigurationError`` names a malformed variable."""
        env = os.environ if environ is None else environ
        defaults = cls(service)
        prefix = env.get("TRADEFLOW_REDIS_PREFIX", defaults.redis_prefix)
        if not prefix:
            raise ConfigurationError("TRADEFLOW_REDIS_PREFIX must not be empty")
        return cls(
            service=service,
            redis_prefix=prefix,
            heartbeat_seconds=_positive(
                env, "TRADEFLOW_EMERGENCY_HEARTBEAT", defaults.heartbeat_seconds
            ),
            request_ttl_seconds=_positive(
                env, "TRADEFLOW_EMERGENCY_REQUEST_TTL", defaults.request_ttl_seconds
            ),
        )


def _positive(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigurationError(f"{key} must be a number > 0, found {raw!r}")
    return value
