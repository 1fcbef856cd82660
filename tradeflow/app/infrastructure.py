"""``Infrastructure.create(env)``: one object bundling the adapters an executor uses.

- ``"development"``: everything in this process: in-process event bus, a SQLite
  state file (``TRADEFLOW_SQLITE_PATH``), a local emergency controller whose halts
  live in that file (so ``tradeflow halt`` from another shell stops a running bot),
  a paper exchange, readable console logs.
- ``"test"``: the same, on an in-memory database, quiet logs.
- ``"production"``: the gRPC services, NATS and Redis (see ``tradeflow.app.remote``).

One instance is meant to be shared by many concurrent executors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson
import structlog

from tradeflow.adapters.memory.events import InProcessEventBus
from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.clock import Clock, IdFactory, SystemClock, new_id
from tradeflow.domain.errors import ConfigurationError
from tradeflow.domain.records import Event, EventType
from tradeflow.engine.emergency import LocalEmergencyController
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.resilience import BreakerRegistry, BreakerState
from tradeflow.observability.logging import configure_logging, get_logger
from tradeflow.observability.metrics import BREAKER_STATE_VALUES, Metrics
from tradeflow.ports import EmergencyControl, EventBus, Exchange, PriceFeed, StateStore

__all__ = ["ENVIRONMENTS", "Infrastructure", "Settings", "default_sqlite_path"]

ENVIRONMENTS = ("development", "test", "production")

_BREAKER_EVENTS = {
    BreakerState.OPEN: EventType.CIRCUIT_OPENED,
    BreakerState.HALF_OPEN: EventType.CIRCUIT_HALF_OPEN,
    BreakerState.CLOSED: EventType.CIRCUIT_CLOSED,
}


def default_sqlite_path() -> Path:
    """``$XDG_STATE_HOME/tradeflow/tradeflow.db`` (``~/.local/state/...``): one file per
    user, so ``tradeflow halt`` in any shell reaches bots started in any directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tradeflow" / "tradeflow.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of an infrastructure; :meth:`from_env` reads ``TRADEFLOW_*``."""

    sqlite_path: str = field(default_factory=lambda: str(default_sqlite_path()))
    """``TRADEFLOW_SQLITE_PATH``: the embedded state file (``:memory:`` for none)."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """``TRADEFLOW_SQLITE_SYNCHRONOUS``: NORMAL survives a process crash; FULL also
    survives power loss, at ~200 us instead of ~11 us per commit."""
    prices_file: str | None = None
    """``TRADEFLOW_PRICES_FILE``: JSON ticks replayed by ``price_feed`` nodes."""
    log_level: str = "info"
    """``TRADEFLOW_LOG_LEVEL``."""
    log_json: bool = False
    """``TRADEFLOW_LOG_FORMAT=json`` (default in production) or ``console``."""
    event_buffer: int = 10_000
    """Events buffered per slow subscriber before the oldest are dropped."""
    emergency_address: str = "127.0.0.1:50052"
    """``TRADEFLOW_EMERGENCY_ADDR``."""
    state_address: str = "127.0.0.1:50053"
    """``TRADEFLOW_STATE_ADDR``."""
    nats_url: str = "nats://127.0.0.1:4222"
    """``TRADEFLOW_NATS_URL``."""
    paper_balances: dict[str, float] | None = None
    """``TRADEFLOW_PAPER_BALANCES``: starting balances of each paper venue, as a JSON
    object (e.g. ``{"USDT": 50000, "BTC": 1}``); the paper exchange's defaults if unset."""

    @classmethod
    def from_env(cls, env: str, environ: dict[str, str] | None = None) -> Settings:
        e = os.environ if environ is None else environ
        synchronous = e.get("TRADEFLOW_SQLITE_SYNCHRONOUS", "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f"TRADEFLOW_SQLITE_SYNCHRONOUS must be NORMAL or FULL, found {synchronous!r}"
            )
        log_format = e.get("TRADEFLOW_LOG_FORMAT", "json" if env == "production" else "console")
        if log_format not in ("json", "console"):
            raise ConfigurationError(
                f"TRADEFLOW_LOG_FORMAT must be json or console, found {log_format!r}"
            )
        default_path = ":memory:" if env == "test" else str(default_sqlite_path())
        defaults = cls()
        return cls(
            sqlite_path=e.get("TRADEFLOW_SQLITE_PATH", default_path),
            sqlite_synchronous="FULL" if synchronous == "FULL" else "NORMAL",
            prices_file=e.get("TRADEFLOW_PRICES_FILE") or None,
            log_level=e.get("TRADEFLOW_LOG_LEVEL", "warning" if env == "test" else "info"),
            log_json=log_format == "json",
            emergency_address=e.get("TRADEFLOW_EMERGENCY_ADDR", defaults.emergency_address),
            state_address=e.get("TRADEFLOW_STATE_ADDR", defaults.state_address),
            nats_url=e.get("TRADEFLOW_NATS_URL", defaults.nats_url),
            paper_balances=_balances(e.get("TRADEFLOW_PAPER_BALANCES")),
        )

    def price_feed(self, clock: Clock) -> ReplayPriceFeed:
        """The replayed prices these settings describe (a file, or the synthetic series)."""
        if self.prices_file:
            return ReplayPriceFeed.from_file(self.prices_file, clock=clock)
        return ReplayPriceFeed(clock=clock)

    def paper_exchange(self, prices: PriceFeed, **kwargs: Any) -> PaperExchange:
        """The paper exchange these settings describe."""
        if self.paper_balances is not None:
            kwargs["default_balances"] = self.paper_balances
        return PaperExchange(prices, **kwargs)


def _balances(raw: str | None) -> dict[str, float] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigurationError(
            f"TRADEFLOW_PAPER_BALANCES must be a JSON object of asset -> amount, found {raw!r}"
        )
    return {k: float(v) for k, v in value.items()}


class Infrastructure:
    """The adapters behind an enhanced executor: ``events``, ``emergency``, ``state``,
    ``exchange``, ``prices``, ``metrics``, ``breakers``."""

    def __init__(
        self,
        *,
        env: str,
        settings: Settings,
        events: EventBus,
        emergency: EmergencyControl,
        state: StateStore,
        exchange: Exchange,
        prices: PriceFeed,
        metrics: Metrics,
        clock: Clock,
        id_factory: IdFactory,
        closers: tuple[Callable[[], object], ...] = (),
    ) -> None:
        self.env = env
        self.settings = settings
        self.events = events
        self.emergency = emergency
        self.state = state
        self.exchange = exchange
        self.prices = prices
        self.metrics = metrics
        self.clock = clock
        self.id_factory = id_factory
        self.http = HttpPool()
        self.log = get_logger("tradeflow.executor")
        self.breakers = BreakerRegistry(clock=clock, on_transition=self._breaker_moved)
        self._breaker_sequence = 0
        self._closers = closers
        self._closed = False

    @classmethod
    async def create(
        cls,
        env: str = "development",
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        id_factory: IdFactory = new_id,
        prices: PriceFeed | None = None,
        exchange: Exchange | None = None,
    ) -> Infrastructure:
        """Build the infrastructure for ``env`` (``development``, ``test``, ``production``)."""
        if env not in ENVIRONMENTS:
            raise ConfigurationError(f"environment must be one of {ENVIRONMENTS}, found {env!r}")
        settings = settings if settings is not None else Settings.from_env(env)
        if not structlog.is_configured():
            configure_logging(json=settings.log_json, level=settings.log_level)
        clock = clock if clock is not None else SystemClock()
        if env == "production":
            from tradeflow.app.remote import create_remote

            return await create_remote(
                cls, settings, clock=clock, id_factory=id_factory, prices=prices, exchange=exchange
            )
        return cls._create_embedded(
            env, settings, clock=clock, id_factory=id_factory, prices=prices, exchange=exchange
        )

    @classmethod
    def _create_embedded(
        cls,
        env: str,
        settings: Settings,
        *,
        clock: Clock,
        id_factory: IdFactory,
        prices: PriceFeed | None,
        exchange: Exchange | None,
    ) -> Infrastructure:
        metrics = Metrics()
        # Everything that can fail on bad input first: the database opens last.
        prices = prices if prices is not None else settings.price_feed(clock)
        bus = InProcessEventBus(buffer_size=settings.event_buffer, metrics=metrics)
        conn = open_database(settings.sqlite_path, synchronous=settings.sqlite_synchronous)
        return cls(
            env=env,
            settings=settings,
            events=bus,
            emergency=LocalEmergencyController(
                conn, publish=bus.publish, metrics=metrics, clock=clock, id_factory=id_factory
            ),
            state=SQLiteStateStore(conn),
            exchange=exchange
            if exchange is not None
            else settings.paper_exchange(prices, conn=conn, clock=clock, id_factory=id_factory),
            prices=prices,
            metrics=metrics,
            clock=clock,
            id_factory=id_factory,
            closers=(conn.close,),
        )

    def _breaker_moved(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUES[new.value])
        self.metrics.breaker_transitions.labels(name, new.value).inc()
        self._breaker_sequence += 1
        self.events.publish(
            Event(
                _BREAKER_EVENTS[new].value,
                self.id_factory(),
                self._breaker_sequence,
                self.clock.time(),
                data={"breaker": name, "from_state": old.value, "to_state": new.value},
            )
        )
        self.log.warning("circuit.transition", breaker=name, from_state=old.value, to_state=new)

    async def close(self) -> None:
        """Deliver queued events, then release every adapter (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.events.close()
        await self.http.aclose()
        await self.emergency.close()
        await self.state.close()
        for close in self._closers:
            close()

    async def __aenter__(self) -> Infrastructure:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
