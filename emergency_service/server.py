"""Wiring of the emergency service: Redis, NATS, the emergency controller, the halt
barrier, the servicer.

Halts, risk limits and the audit trail live in Redis
(:class:`~tradeflow.adapters.redis.emergency.RedisEmergencyController`), so
they survive a restart of the service; every change is published on NATS
(``tradeflow.v1.emergency.*``) through the controller's publish hook. The answers
to mutating requests are kept by ``request_id`` in Redis
(:class:`~tradeflow.adapters.redis.emergency.RedisRequestLog`).

Loss triggers and dead-man's switches are evaluated here, every
``TRADEFLOW_TRIGGER_INTERVAL`` seconds, by a
:class:`~tradeflow.engine.triggers.TriggerEvaluator` that reads each scope's equity from
the paper exchange's ledger in the same Redis (``TRADEFLOW_REDIS_PREFIX``, the executors'
ledger) and puts a trigger's halt through the halt barrier like an operator's. Replicas
of the service each run one: the triggers' progress is compared and set in Redis, so a
breach is counted once and acted on by one of them.

Redis and NATS must be reachable at start: the service refuses to serve a state
it cannot load (exit status 2, the orchestrator restarts it).

The halt barrier lists and revokes executors' leases through a
:class:`~tradeflow.adapters.redis.state.RedisStateStore` on the same Redis and prefix as
the state service's (``TRADEFLOW_REDIS_PREFIX``): the leases it reads are the ones every
intent commit is fenced by.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from emergency_service.servicer import ACCESS, SERVICE_NAME, EmergencyServicer
from tradeflow.adapters.grpc.server import Service
from tradeflow.adapters.nats.bus import NatsEventBus, NatsOptions
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.emergency import (
    RedisAckRelay,
    RedisEmergencyController,
    RedisRequestLog,
    RedisResumeRequests,
)
from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.remote import broker_tls
from tradeflow.app.settings import ServiceSettings
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.records import Scope
from tradeflow.engine.barrier import HaltBarrier
from tradeflow.engine.triggers import TriggerEvaluator
from tradeflow.observability.metrics import Metrics
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc

__all__ = ["build"]


async def build(settings: ServiceSettings) -> Service:
    """The emergency service on the Redis at ``settings.redis_url`` and the NATS at
    ``settings.nats_url``."""
    metrics = Metrics()
    clock = SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        client = connect(settings.redis_url, tls=broker_tls(settings.tls))
        stack.push_async_callback(client.aclose)
        bus = await NatsEventBus.connect(
            settings.nats_url,
            NatsOptions(name="tradeflow-emergency-service"),
            metrics=metrics,
            tls=broker_tls(settings.tls),
        )
        stack.push_async_callback(bus.close)
        controller = RedisEmergencyController(
            client,
            prefix=settings.redis_prefix,
            publish=bus.publish,
            metrics=metrics,
            clock=clock,
            id_factory=new_id,
        )
        await controller.start()
        stack.push_async_callback(controller.close)
        resources = stack.pop_all()

    leases = RedisStateStore(client, prefix=settings.redis_prefix)
    barrier = HaltBarrier(leases, timeout=settings.halt_ack_timeout)
    relay = RedisAckRelay(client, prefix=settings.redis_prefix, origin=new_id())
    # Every replica's barrier hears every acknowledgement, whichever replica received it.
    following = asyncio.create_task(relay.follow(barrier.acknowledge), name="emergency:acks")
    resources.push_async_callback(_cancelled, following)
    servicer = EmergencyServicer(
        controller,
        RedisRequestLog(client, prefix=settings.redis_prefix, ttl=settings.request_ttl_seconds),
        barrier,
        heartbeat=settings.heartbeat_seconds,
        relay=relay,
        resume_requests=RedisResumeRequests(
            client,
            prefix=settings.redis_prefix,
            window=settings.resume_confirm_seconds,
            clock=clock,
        ),
        confirm_scopes=frozenset(Scope(name) for name in settings.resume_confirm_scopes),
    )
    triggers = TriggerEvaluator(
        controller,
        RedisPaperLedger(client, prefix=settings.redis_prefix),
        clock=clock,
        interval=settings.trigger_interval,
        confirm=servicer.confirm,
    )
    triggers.start()
    # Closed first: no trigger acts on a controller or barrier being torn down.
    resources.push_async_callback(triggers.close)

    def register(server: grpc.aio.Server) -> list[str]:
        emergency_service_pb2_grpc.add_EmergencyServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return Service(
        register=register,
        registry=metrics.registry,
        drain=servicer.drain,
        close=resources.aclose,
        policy=ACCESS,
        denied=servicer.denied,
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait((task,))
