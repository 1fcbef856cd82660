"""The remote side of the composition root: the same ports as embedded, backed by the services.

- events: :class:`~tradeflow.adapters.nats.bus.NatsEventBus` (NATS subjects of
  the contract, captured by a JetStream stream);
- state: :class:`~tradeflow.adapters.grpc.state_client.StateClient` (the state service, Redis behind it);
- emergency: :class:`~tradeflow.adapters.grpc.emergency_client.RemoteEmergencyControl` (a local
  view pushed by the emergency service; fails closed when it cannot be confirmed).

Orders go to the paper exchange of this process (a venue adapter implementing
:class:`~tradeflow.ports.Exchange` replaces it in a real deployment).
"""

from __future__ import annotations

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.nats.bus import NatsEventBus
from tradeflow.app.settings import Settings
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.errors import TradeflowError, UnavailableError
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import EmergencyControl, EventBus, StateStore

__all__ = ["connect_services"]


async def connect_services(
    settings: Settings, *, clock: Clock, id_factory: IdFactory, metrics: Metrics
) -> tuple[EventBus, EmergencyControl, StateStore]:
    """Connect to NATS and the emergency and state services (raises ``UnavailableError``)."""
    try:
        bus = await NatsEventBus.connect(
            settings.nats_url, buffer_size=settings.event_buffer, metrics=metrics
        )
    except TradeflowError:
        raise
    except Exception as exc:
        raise UnavailableError(f"NATS at {settings.nats_url}: {exc}") from exc
    try:
        emergency = await RemoteEmergencyControl.connect(
            settings.emergency_address, clock=clock, id_factory=id_factory
        )
    except BaseException:
        await bus.close()
        raise
    return bus, emergency, StateClient(settings.state_address)
