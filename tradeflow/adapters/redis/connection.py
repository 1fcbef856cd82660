"""What the Redis adapters share: the client, and one retry after a dropped connection."""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis
import stamina
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradeflow.domain.errors import ConfigurationError

__all__ = ["CONNECTION_ERRORS", "connect", "reconnecting"]

CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError)

reconnecting: Final = stamina.AsyncRetryingCaller(
    attempts=2, timeout=None, wait_initial=0.0, wait_jitter=0.0
).on(CONNECTION_ERRORS)
"""``await reconnecting(call, *args)`` runs ``call`` once more, at once, after a connection
error: the usual cause is a pooled connection the server dropped (a restart) that the pool
had not noticed yet. Only for calls that are safe to repeat."""


def connect(url: str) -> aioredis.Redis:
    """A bytes client for the Redis at ``url`` (it connects on first use); a malformed
    ``url`` is a ``ConfigurationError`` naming ``TRADEFLOW_REDIS_URL``, its setting."""
    try:
        return aioredis.from_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"TRADEFLOW_REDIS_URL is malformed: {exc}") from None
