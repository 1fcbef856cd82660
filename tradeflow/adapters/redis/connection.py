"""What the Redis adapters share: the client, and one retry after a dropped connection."""

from __future__ import annotations

import ssl
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import stamina
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tradeflow.adapters.tls import redact_url
from tradeflow.domain.errors import ConfigurationError

__all__ = ["CONNECTION_ERRORS", "connect", "reconnecting"]

CONNECTION_ERRORS: Final = (RedisConnectionError, RedisTimeoutError)

reconnecting: Final = stamina.AsyncRetryingCaller(
    attempts=2, timeout=None, wait_initial=0.0, wait_jitter=0.0
).on(CONNECTION_ERRORS)
"""``await reconnecting(call, *args)`` runs ``call`` once more, at once, after a connection
error: the usual cause is a pooled connection the server dropped (a restart) that the pool
had not noticed yet. Only for calls that are safe to repeat."""


class _ContextConnection(SSLConnection):
    """A TLS connection with a given ``ssl.SSLContext`` (redis-py's own builds one from
    file names only, without a way to pass the process's context)."""

    def __init__(self, *, tls: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tls = tls

    def _connection_arguments(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "ssl": self._tls}


def connect(url: str, *, tls: ssl.SSLContext | None = None) -> aioredis.Redis:
    """A bytes client for the Redis at ``url`` (it connects on first use); a malformed
    ``url`` is a ``ConfigurationError`` naming ``TRADEFLOW_REDIS_URL``, its setting.

    ``rediss://`` connects with TLS: with ``tls`` (the process's CA and client
    certificate, :func:`~tradeflow.adapters.tls.client_ssl_context`) when given, else
    with the system's CAs. The user and password, if any, are the URL's
    (``rediss://state:PASSWORD@redis:6379/0``: an ACL user).
    """
    try:
        # No CLIENT SETINFO on connect: a user limited to its commands would be refused it.
        pool = aioredis.ConnectionPool.from_url(url, driver_info=None)
    except ValueError:
        raise ConfigurationError(
            "TRADEFLOW_REDIS_URL is malformed: expected redis://[user:password@]host:port/db "
            f"or rediss://..., found {redact_url(url)!r}"
        ) from None
    if tls is not None and urlsplit(url).scheme == "rediss":
        pool.connection_class = _ContextConnection
        pool.connection_kwargs["tls"] = tls
    return aioredis.Redis.from_pool(pool)
