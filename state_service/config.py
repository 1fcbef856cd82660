"""Settings of the state service beyond :class:`~tradeflow.adapters.grpc.config.ServiceConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tradeflow.adapters.grpc.config import ServiceConfig
from tradeflow.domain.errors import ConfigurationError

__all__ = ["StateConfig"]


@dataclass(frozen=True, slots=True)
class StateConfig:
    """What the state service reads from ``TRADEFLOW_*`` on top of the common settings."""

    service: ServiceConfig
    """Listen address, metrics port, Redis URL, shutdown grace."""
    redis_prefix: str = "tradeflow"
    """``TRADEFLOW_REDIS_PREFIX``: namespace of every Redis key the service writes
    (the same variable the emergency service reads)."""
    max_events: int | None = None
    """``TRADEFLOW_STATE_MAX_EVENTS``: approximate cap on the stream of every event
    (unset: keep all). Each execution's own history is never trimmed."""

    @classmethod
    def from_env(
        cls, service: ServiceConfig, environ: Mapping[str, str] | None = None
    ) -> StateConfig:
        """Read the settings; ``ConfigurationError`` names a malformed variable."""
        env = os.environ if environ is None else environ
        prefix = env.get("TRADEFLOW_REDIS_PREFIX", "tradeflow")
        if not prefix:
            raise ConfigurationError("TRADEFLOW_REDIS_PREFIX must not be empty")
        return cls(
            service=service,
            redis_prefix=prefix,
            max_events=_optional_positive_int(env, "TRADEFLOW_STATE_MAX_EVENTS"),
        )


def _optional_positive_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if raw is None:
        return None
    if not (raw.isdigit() and int(raw) > 0):
        raise ConfigurationError(f"{key} must be an integer > 0, found {raw!r}")
    return int(raw)
