"""The remote side of the composition root: the same ports as embedded, backed by the
services, and :func:`run_service`, the entry point of each service.

- events: :class:`~tradeflow.adapters.nats.bus.NatsEventBus` (NATS subjects of
  the contract, captured by a JetStream stream);
- state: :class:`~tradeflow.adapters.grpc.state_client.StateClient` (the state service, Redis behind it);
- emergency: :class:`~tradeflow.adapters.grpc.emergency_client.RemoteEmergencyControl` (a local
  view pushed by the emergency service; fails closed, every scope ``CANCEL_ONLY``, when it
  cannot be confirmed for ``TRADEFLOW_EMERGENCY_MAX_STALENESS``; it acknowledges each new
  state version to the service's halt barrier once the process holds a lease).

Orders go to the paper exchange, whose ledger is in the Redis every replica shares (a
venue adapter implementing :class:`~tradeflow.ports.Exchange` replaces it in a real
deployment).
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Awaitable, Callable

import uvloop

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.adapters.grpc.server import Edges, Service, serve
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.nats.bus import NatsEventBus, NatsOptions
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.adapters.tls import client_ssl_context, redact_url
from tradeflow.app.settings import ServiceSettings, Settings, TlsFiles
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.errors import ConfigurationError, TradeflowError, UnavailableError
from tradeflow.observability.logging import configure_logging
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import EventBus, StateStore

__all__ = [
    "broker_tls",
    "connect_emergency",
    "connect_ledger",
    "connect_services",
    "run_service",
    "transport_security",
]


def transport_security(tls: TlsFiles | None, plaintext: bool) -> TransportSecurity:
    """The gRPC TLS material ``TRADEFLOW_TLS_*`` name, or plaintext where
    ``TRADEFLOW_GRPC_PLAINTEXT=true`` chose it; neither is a ``ConfigurationError``:
    nothing talks to or serves the services unauthenticated by default."""
    if tls is not None:
        return TransportSecurity.from_files(tls.ca, tls.cert, tls.key)
    if plaintext:
        return PLAINTEXT
    raise ConfigurationError(
        "the services need mutual TLS: set TRADEFLOW_TLS_CA, TRADEFLOW_TLS_CERT and "
        "TRADEFLOW_TLS_KEY (or TRADEFLOW_GRPC_PLAINTEXT=true, local development only)"
    )


def broker_tls(tls: TlsFiles | None) -> ssl.SSLContext | None:
    """The client TLS context toward NATS and Redis (used where their URL or server asks
    for TLS): this process's certificate, verified servers; ``None`` without TLS files."""
    return None if tls is None else client_ssl_context(tls.ca, tls.cert, tls.key)


async def connect_services(
    settings: Settings, *, clock: Clock, id_factory: IdFactory, metrics: Metrics
) -> tuple[EventBus, StateStore, RemoteEmergencyControl]:
    """Connect to NATS and the emergency and state services (raises ``UnavailableError``)."""
    security = transport_security(settings.tls, settings.grpc_plaintext)
    try:
        bus = await NatsEventBus.connect(
            settings.nats_url,
            NatsOptions(
                buffer_size=settings.event_buffer, event_subjects=settings.nats_event_subjects
            ),
            metrics=metrics,
            tls=broker_tls(settings.tls),
        )
    except TradeflowError:
        raise
    except Exception as exc:
        raise UnavailableError(f"NATS at {redact_url(settings.nats_url)}: {exc}") from exc
    try:
        emergency = await connect_emergency(settings, clock=clock, id_factory=id_factory)
    except BaseException:
        await bus.close()
        raise
    return bus, StateClient(settings.state_address, security=security), emergency


async def connect_emergency(
    settings: Settings, *, clock: Clock, id_factory: IdFactory
) -> RemoteEmergencyControl:
    """The emergency service alone: all the kill switch (halt, resume, status) needs, so
    it works while NATS or the state service is down."""
    return await RemoteEmergencyControl.connect(
        settings.emergency_address,
        max_staleness=settings.emergency_max_staleness,
        clock=clock,
        id_factory=id_factory,
        security=transport_security(settings.tls, settings.grpc_plaintext),
    )


def connect_ledger(settings: Settings) -> tuple[RedisPaperLedger, Callable[[], Awaitable[None]]]:
    """The paper exchange's ledger in the Redis every replica shares (so an order is placed
    once whichever replica places it), and how to close its client. Connects lazily."""
    client = connect(settings.redis_url, tls=broker_tls(settings.tls))
    return RedisPaperLedger(client, prefix=settings.redis_prefix), client.aclose


def run_service(name: str, build: Callable[[ServiceSettings], Awaitable[Service]]) -> int:
    """Entry point of ``python -m <name>_service``: serve until SIGTERM; the exit status
    is 2, after one line on stderr, for a bad configuration or an unreachable backend."""
    try:
        settings = ServiceSettings.from_env(name)
        configure_logging(json=settings.log_json, level=settings.log_level)

        edges = Edges(
            listen=settings.listen,
            security=transport_security(settings.tls, settings.grpc_plaintext),
            metrics_port=settings.metrics_port,
            metrics_host=settings.metrics_host,
            reflection=settings.reflection,
        )

        async def run() -> None:
            service = await build(settings)
            await serve(service, name=name, edges=edges, grace_seconds=settings.grace_seconds)

        uvloop.run(run())
    except TradeflowError as exc:
        print(f"{name}_service: error: {exc}", file=sys.stderr)
        return 2
    return 0
