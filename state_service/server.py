"""Wiring of the state service: a Redis client, the Redis state store, the servicer, and
retention (:class:`~tradeflow.app.infrastructure.Retention`, the embedded one's loop:
prunes ended executions every ``retention_interval`` seconds, the first time at start;
off with ``retention_days`` 0)."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from state_service.servicer import ACCESS, SERVICE_NAME, StateServicer
from tradeflow.adapters.grpc.server import Service
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.infrastructure import Retention
from tradeflow.app.remote import broker_tls
from tradeflow.app.settings import ServiceSettings
from tradeflow.domain.clock import SystemClock
from tradeflow.domain.records import PRUNE_LIMIT_MAX
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = ["build"]


async def build(settings: ServiceSettings) -> Service:
    """The state service on the Redis at ``settings.redis_url``.

    Redis is not contacted here: the client connects on the first call, so the
    service starts (and answers UNAVAILABLE per call) while Redis comes up.
    """
    client = connect(settings.redis_url, tls=broker_tls(settings.tls))
    store = RedisStateStore(client, prefix=settings.redis_prefix, max_events=settings.max_events)
    servicer = StateServicer(store)
    retention = None
    if settings.retention_days > 0:
        retention = Retention(
            store,
            days=settings.retention_days,
            interval=settings.retention_interval,
            clock=SystemClock(),
            limit=PRUNE_LIMIT_MAX,
        )
        retention.start()

    def register(server: grpc.aio.Server) -> list[str]:
        state_service_pb2_grpc.add_StateServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def close() -> None:
        if retention is not None:
            await retention.close()
        await store.close()
        await client.aclose()

    return Service(register=register, registry=CollectorRegistry(), close=close, policy=ACCESS)
