"""Wiring of the state service: a Redis client, the Redis state store, the servicer."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from state_service.servicer import ACCESS, SERVICE_NAME, StateServicer
from tradeflow.adapters.grpc.server import Service
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.remote import broker_tls
from tradeflow.app.settings import ServiceSettings
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

    def register(server: grpc.aio.Server) -> list[str]:
        state_service_pb2_grpc.add_StateServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def close() -> None:
        await store.close()
        await client.aclose()

    return Service(register=register, registry=CollectorRegistry(), close=close, policy=ACCESS)
