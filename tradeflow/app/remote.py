"""``Infrastructure.create("production")``: the same API as embedded, backed by the services.

- events: :class:`~tradeflow.adapters.nats.bus.NatsEventBus` (NATS subjects of
  the contract, captured by a JetStream stream);
- state: :class:`~tradeflow.adapters.grpc.state_client.StateClient` (the state service, Redis behind it);
- emergency: :class:`~tradeflow.adapters.grpc.emergency_client.RemoteEmergencyControl` (a local
  view pushed by the emergency service; fails closed when it cannot be confirmed).

Orders go to the paper exchange of this process (a venue adapter implementing
:class:`~tradeflow.domain.trading.Exchange` replaces it in a real deployment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.nats.bus import NatsEventBus
from tradeflow.domain.clock import Clock, IdFactory
from tradeflow.domain.errors import TradeflowError, UnavailableError
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import Exchange, PriceFeed

if TYPE_CHECKING:
    from tradeflow.app.infrastructure import Infrastructure, Settings

__all__ = ["create_remote"]


async def create_remote(
    cls: type[Infrastructure],
    settings: Settings,
    *,
    clock: Clock,
    id_factory: IdFactory,
    prices: PriceFeed | None,
    exchange: Exchange | None,
) -> Infrastructure:
    """Connect to NATS and the emergency and state services (raises ``UnavailableError``)."""
    metrics = Metrics()
    # Everything that can fail on bad input first, before any connection is opened.
    prices = prices if prices is not None else settings.price_feed(clock)
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
    return cls(
        env="production",
        settings=settings,
        events=bus,
        emergency=emergency,
        state=StateClient(settings.state_address),
        exchange=exchange
        if exchange is not None
        else settings.paper_exchange(prices, clock=clock, id_factory=id_factory),
        prices=prices,
        metrics=metrics,
        clock=clock,
        id_factory=id_factory,
    )
