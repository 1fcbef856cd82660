"""Wiring of the emergency service: Redis, NATS, the emergency controller, the servicer.

Halts, risk limits and the audit trail live in Redis
(:class:`~tradeflow.adapters.redis.emergency.RedisEmergencyController`), so
they survive a restart of the service; every change is published on NATS
(``tradeflow.v1.emergency.*``) through the controller's publish hook. The answers
to mutating requests are kept by ``request_id`` in Redis (:class:`RedisRequestLog`).

Redis and NATS must be reachable at start: the service refuses to serve a state
it cannot load (exit status 2, the orchestrator restarts it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import grpc
import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.exceptions import RedisError

from emergency_service.config import EmergencyConfig
from emergency_service.servicer import SERVICE_NAME, EmergencyServicer
from tradeflow.adapters.grpc.config import ServiceConfig
from tradeflow.adapters.grpc.server import Service
from tradeflow.adapters.nats.bus import NatsEventBus
from tradeflow.adapters.redis.emergency import RedisEmergencyController
from tradeflow.domain.errors import ConfigurationError, UnavailableError, describe
from tradeflow.observability.logging import get_logger
from tradeflow.observability.metrics import Metrics
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

__all__ = ["RedisRequestLog", "build"]

M = TypeVar("M", bound=Message)

_RUNNING: Final = b"running"
_ANSWER: Final = b"="
"""Prefix of a stored answer (a serialized answer may be empty, so it needs one)."""
_CLAIM_SECONDS: Final = 60.0
"""How long a claimed id stays blocked if its service dies before answering."""

_log = get_logger("tradeflow.emergency_service")


class RedisRequestLog:
    """The answers to mutating requests, by method and ``request_id``, kept ``ttl`` seconds.

    The first request with an id claims it (``SET NX``, expiring after a minute
    in case the service dies mid-call) and then stores its serialized answer for
    ``ttl`` seconds; a repeat within that time gets the stored answer and does
    not act again. A repeat while the first is still running is refused with
    ``UnavailableError`` (retry it); a request that fails releases its id.
    Bounded by the TTL: Redis forgets each id on its own.
    """

    __slots__ = ("_client", "_prefix", "_ttl_ms")

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl: float) -> None:
        self._client = client
        self._prefix = f"{prefix}:emergency:request:"
        self._ttl_ms = max(1, round(ttl * 1000))

    async def once(
        self,
        method: str,
        request_id: str,
        run: Callable[[], Awaitable[M]],
        response_type: type[M],
    ) -> M:
        if not request_id:
            return await run()
        key = f"{self._prefix}{method}:{request_id}"
        try:
            claimed = await self._client.set(
                key, _RUNNING, nx=True, px=round(_CLAIM_SECONDS * 1000)
            )
            stored = None if claimed else await self._client.get(key)
        except RedisError as exc:
            raise UnavailableError(f"request log in redis: {describe(exc)}") from exc
        if not claimed:
            if isinstance(stored, bytes) and stored.startswith(_ANSWER):
                return response_type.FromString(stored[len(_ANSWER) :])
            raise UnavailableError(
                f"{method} request {request_id!r} is still being processed; retry it"
            )
        try:
            response = await run()
        except BaseException:
            with contextlib.suppress(RedisError):
                await self._client.delete(key)
            raise
        try:
            await self._client.set(key, _ANSWER + response.SerializeToString(), px=self._ttl_ms)
        except RedisError as exc:
            # The change is made and audited; only a retry of it could act twice.
            _log.warning("emergency.request_log_failed", request_id=request_id, error=describe(exc))
        return response


async def build(config: ServiceConfig) -> Service:
    """The emergency service on the Redis at ``TRADEFLOW_REDIS_URL`` and the NATS at
    ``TRADEFLOW_NATS_URL`` (see :class:`~emergency_service.config.EmergencyConfig`)."""
    settings = EmergencyConfig.from_env(config)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = aioredis.from_url(config.redis_url)
        except ValueError as exc:
            raise ConfigurationError(f"TRADEFLOW_REDIS_URL is malformed: {exc}") from None
        stack.push_async_callback(client.aclose)
        bus = await NatsEventBus.connect(
            config.nats_url, metrics=metrics, name="tradeflow-emergency-service"
        )
        stack.push_async_callback(bus.close)
        controller = RedisEmergencyController(
            client, prefix=settings.redis_prefix, publish=bus.publish, metrics=metrics
        )
        await controller.start()
        stack.push_async_callback(controller.close)
        resources = stack.pop_all()

    servicer = EmergencyServicer(
        controller,
        RedisRequestLog(client, prefix=settings.redis_prefix, ttl=settings.request_ttl_seconds),
        heartbeat=settings.heartbeat_seconds,
    )

    def register(server: grpc.aio.Server) -> list[str]:
        emergency_service_pb2_grpc.add_EmergencyServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return Service(
        register=register,
        registry=metrics.registry,
        drain=servicer.drain,
        close=resources.aclose,
    )
