"""Wiring of the state service: a Redis client, the Redis state store, the servicer, and
the retention loop (prunes ended executions every ``retention_interval`` seconds, the
first time at start; off with ``retention_days`` 0)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from prometheus_client import CollectorRegistry

from state_service.servicer import ACCESS, SERVICE_NAME, StateServicer
from tradeflow.adapters.grpc.server import Service
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.remote import broker_tls
from tradeflow.app.settings import ServiceSettings
from tradeflow.domain.errors import TradeflowError
from tradeflow.domain.records import PRUNE_LIMIT_MAX
from tradeflow.observability.logging import get_logger
from tradeflow.ports import StateStore
from tradeflow.proto.state.v1 import state_service_pb2_grpc

__all__ = ["build", "retain"]

_log = get_logger(__name__)
_DAY = 86_400.0


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
        retention = asyncio.create_task(
            retain(store, settings.retention_days, settings.retention_interval),
            name="retention",
        )

    def register(server: grpc.aio.Server) -> list[str]:
        state_service_pb2_grpc.add_StateServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    async def close() -> None:
        if retention is not None:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        await store.close()
        await client.aclose()

    return Service(register=register, registry=CollectorRegistry(), close=close, policy=ACCESS)


async def retain(store: StateStore, days: float, interval: float) -> None:
    """Forever: prune the executions that ended more than ``days`` ago (chunk after
    chunk until none is left), log ``retention.pruned``, wait ``interval`` seconds. A
    prune that fails (Redis unreachable) is logged and tried again after the interval.
    Each chunk is one atomic script: a crash (or cancellation) between two leaves every
    execution whole or gone."""
    while True:
        started = time.monotonic()
        removed = kept = 0
        try:
            while True:
                report = await store.prune(time.time() - days * _DAY, limit=PRUNE_LIMIT_MAX)
                removed += report.removed
                # The kept ones are seen again by each call: the last call's count is theirs.
                kept = report.kept
                if not report.more:
                    break
        except TradeflowError as exc:
            _log.warning("retention.failed", error=str(exc), removed=removed)
        else:
            _log.info(
                "retention.pruned",
                removed=removed,
                kept=kept,
                retention_days=days,
                seconds=round(time.monotonic() - started, 3),
            )
        await asyncio.sleep(interval)
