"""Wiring of the executor service: production infrastructure, the manager, the servicer."""

from __future__ import annotations

import grpc

from executor_service.servicer import ExecutorServicer, access
from tradeflow.adapters.grpc.server import Service
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.manager import ExecutionManager
from tradeflow.app.settings import ServiceSettings
from tradeflow.proto.executor.v1 import executor_service_pb2, executor_service_pb2_grpc

__all__ = ["build"]


async def build(config: ServiceSettings) -> Service:
    """The executor service: runs workflows on ``Infrastructure.create("production")`` as
    one replica among any number: it holds a lease and takes over the orphans of dead
    replicas."""
    infra = await Infrastructure.create("production", owner_kind="executor")
    manager = ExecutionManager(infra)
    manager.start_takeover(infra.settings.takeover_interval)
    servicer = ExecutorServicer(manager, infra.events)

    def register(server: grpc.aio.Server) -> list[str]:
        executor_service_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, server)
        return [executor_service_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name]

    async def drain() -> None:
        await manager.drain(config.grace_seconds)

    return Service(
        register=register,
        registry=infra.metrics.registry,
        drain=drain,
        close=infra.close,
        # Health follows the event bus: executions whose events cannot reach the stream
        # would run unseen.
        healthy=infra.events.healthy,
        policy=access(config.bot_strategies),
    )
