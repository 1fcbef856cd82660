"""``Infrastructure.create(env)``: the composition root. It wires the adapters an
executor runs on, embedded or remote, and hands them to the engine as one
:class:`~tradeflow.engine.runtime.Runtime` (``infra.runtime``).

- ``"development"``: everything in this process: in-process event bus, a SQLite
  state file (``TRADEFLOW_SQLITE_PATH``), a local emergency controller whose halts
  live in that file (so ``tradeflow halt`` from another shell stops a running bot),
  a paper exchange whose ledger is in that file too, readable console logs, and the
  trigger evaluator (``infra.triggers``: loss triggers and dead-man's switches every
  ``TRADEFLOW_TRIGGER_INTERVAL`` seconds, on the paper exchange's equity; every process
  on one file runs one, and they count each evaluation once between them).
- ``"test"``: the same, on an in-memory database, quiet logs.
- ``"production"``: the gRPC services, NATS and Redis (see ``tradeflow.app.remote``); the
  emergency service evaluates the triggers (``infra.triggers`` is ``None``).

One instance is meant to be shared by many concurrent executors. It holds this
process's lease on the state store (:class:`~tradeflow.engine.ownership.LeaseKeeper`),
under which every execution it runs is owned: acquired by the first execution (so a
process that runs none, such as ``tradeflow halt``, never needs the state store),
renewed by heartbeat, released by :meth:`Infrastructure.close`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, cast

import structlog

from tradeflow.adapters.memory.events import InProcessEventBus
from tradeflow.adapters.memory.paper import PaperLedger
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
from tradeflow.adapters.sqlite.ledger import SQLitePaperLedger
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.app.settings import ENVIRONMENTS, Settings
from tradeflow.domain.clock import Clock, IdFactory, SystemClock, new_id
from tradeflow.domain.errors import ConfigurationError
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import Event, EventType
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.ownership import LeaseKeeper
from tradeflow.engine.resilience import BreakerRegistry, BreakerState
from tradeflow.engine.runtime import Durability, Runtime
from tradeflow.engine.triggers import TriggerEvaluator
from tradeflow.observability.logging import configure_logging, get_logger
from tradeflow.observability.metrics import BREAKER_STATE_VALUES, Metrics
from tradeflow.ports import EmergencyControl, Exchange, PnlSource, PriceFeed

if TYPE_CHECKING:
    from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl

__all__ = ["Infrastructure", "Settings"]

_BREAKER_EVENTS = {
    BreakerState.OPEN: EventType.CIRCUIT_OPENED,
    BreakerState.HALF_OPEN: EventType.CIRCUIT_HALF_OPEN,
    BreakerState.CLOSED: EventType.CIRCUIT_CLOSED,
}


class Infrastructure:
    """The adapters behind an enhanced executor: ``events``, ``emergency``, ``state``,
    ``exchange``, ``prices``, ``metrics``, ``breakers``, ``owner``, the lease they
    run under, and ``triggers``, the embedded trigger evaluator (``None`` in production)."""

    def __init__(
        self,
        *,
        env: str,
        settings: Settings,
        durability: Durability,
        exchange: Exchange,
        prices: PriceFeed,
        clock: Clock,
        id_factory: IdFactory,
        closers: tuple[Callable[[], object], ...] = (),
    ) -> None:
        self.env = env
        self.settings = settings
        self.events = durability.events
        self.emergency = durability.emergency
        self.state = durability.state
        self.metrics = durability.metrics
        self.owner = durability.owner
        self._max_takeovers = durability.max_takeovers
        self.exchange = exchange
        self.prices = prices
        self.clock = clock
        self.id_factory = id_factory
        self.http = HttpPool(
            egress_allow=settings.egress_allow,
            secrets_dir=settings.secrets_dir,
            secret_hosts=settings.secret_hosts,
        )
        self.log = get_logger("tradeflow.executor")
        self.breakers = BreakerRegistry(clock=clock, on_transition=self._breaker_moved)
        self._breaker_sequence = itertools.count(1)
        """Breaker events belong to no execution: they are numbered here, once per process."""
        self._closers = closers
        self._closed = False
        self.triggers: TriggerEvaluator | None = None
        """Embedded: the trigger evaluator (started); call ``evaluate()`` for one round."""

    @property
    def runtime(self) -> Runtime:
        """The ports executors run on (read when an executor is made: a swapped adapter counts)."""
        return Runtime(
            exchange=self.exchange,
            prices=self.prices,
            risk=self.emergency,
            clock=self.clock,
            ids=self.id_factory,
            breakers=self.breakers,
            http=self.http,
            log=self.log,
            durability=Durability(
                self.events,
                self.state,
                self.emergency,
                self.metrics,
                self.owner,
                self._max_takeovers,
            ),
        )

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
        owner_kind: str = "library",
    ) -> Infrastructure:
        """Build the infrastructure for ``env`` (``development``, ``test``, ``production``)
        and take this process's lease (``owner_kind``: ``library``, ``cli``, ``executor``)."""
        if env not in ENVIRONMENTS:
            raise ConfigurationError(f"environment must be one of {ENVIRONMENTS}, found {env!r}")
        settings = settings if settings is not None else Settings.from_env(env)
        if not structlog.is_configured():
            configure_logging(json=settings.log_json, level=settings.log_level)
        clock = clock if clock is not None else SystemClock()
        _load_node_types(settings.node_modules)
        metrics = Metrics()
        # Everything that can fail on bad input first: connections and the database last.
        prices = prices if prices is not None else settings.price_feed(clock)
        ledger: PaperLedger | None = None
        closers: tuple[Callable[[], object], ...] = ()
        emergency: EmergencyControl
        remote_emergency: RemoteEmergencyControl | None = None
        local_emergency: LocalEmergencyController | None = None
        if env == "production":
            # Imported here: embedded use never loads NATS, gRPC or Redis.
            from tradeflow.app.remote import connect_ledger, connect_services

            # The ledger's client first: it connects lazily, and a malformed URL must
            # fail before any connection is open.
            ledger, close_ledger = connect_ledger(settings)
            closers = (close_ledger,)
            try:
                bus, state, emergency = await connect_services(
                    settings, clock=clock, id_factory=id_factory, metrics=metrics
                )
            except BaseException:
                await close_ledger()
                raise
            remote_emergency = emergency
        else:
            bus = InProcessEventBus(buffer_size=settings.event_buffer, metrics=metrics)
            conn = open_database(settings.sqlite_path, synchronous=settings.sqlite_synchronous)
            emergency = local_emergency = LocalEmergencyController(
                conn, publish=bus.publish, metrics=metrics, clock=clock, id_factory=id_factory
            )
            state = SQLiteStateStore(conn)
            closers, ledger = (conn.close,), SQLitePaperLedger(conn)
        owner = LeaseKeeper(
            state,
            OwnerInfo.of_this_process(owner_kind, id_factory()),
            ttl=settings.lease_seconds,
            clock=SystemClock(),  # leases live in real time, whatever clock the runs see
            log=get_logger("tradeflow.lease"),
        )
        if remote_emergency is not None:
            # What the halt barrier waits for: this process's lease and its in-flight actions.
            remote_emergency.acknowledge_with(owner.acknowledgement)
        durability = Durability(bus, state, emergency, metrics, owner, settings.max_takeovers)
        if exchange is None:
            exchange = settings.paper_exchange(prices, ledger=ledger, clock=clock, ids=id_factory)
        infra = cls(
            env=env,
            settings=settings,
            durability=durability,
            exchange=exchange,
            prices=prices,
            clock=clock,
            id_factory=id_factory,
            closers=closers,
        )
        if local_emergency is not None:
            infra.triggers = TriggerEvaluator(
                local_emergency,
                _pnl_source(exchange),
                clock=clock,
                interval=settings.trigger_interval,
            )
            infra.triggers.start()
        return infra

    def _breaker_moved(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUES[new.value])
        self.metrics.breaker_transitions.labels(name, new.value).inc()
        self.events.publish(
            Event(
                _BREAKER_EVENTS[new].value,
                self.id_factory(),
                next(self._breaker_sequence),
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
        if self.triggers is not None:
            await self.triggers.close()
        await self.owner.stop()
        await self.events.close()
        await self.http.aclose()
        await self.emergency.close()
        await self.state.close()
        for close in self._closers:
            done = close()
            if inspect.isawaitable(done):
                await done

    async def __aenter__(self) -> Infrastructure:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _pnl_source(exchange: Exchange) -> PnlSource | None:
    """Where the embedded loss triggers read equity: the exchange, when it keeps a ledger
    that knows it (the paper exchange); ``None`` otherwise (loss triggers are skipped)."""
    if callable(getattr(exchange, "equity", None)):
        return cast(PnlSource, exchange)
    return None


@functools.cache
def _load_node_types(modules: tuple[str, ...]) -> None:
    """Import the modules (and ``tradeflow.nodes`` entry points) registering custom node
    types: a replica that takes over an execution must know every type it uses. Once per
    process and module list: scanning the installed packages' entry points costs a few
    milliseconds, which every ``Infrastructure.create`` would pay again."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"TRADEFLOW_NODE_MODULES: cannot import node module {name!r}: {exc}"
            ) from exc
    for entry in importlib.metadata.entry_points(group="tradeflow.nodes"):
        try:
            entry.load()
        except Exception as exc:
            raise ConfigurationError(
                f"entry point {entry.name!r} of group tradeflow.nodes ({entry.value}) "
                f"cannot be loaded: {exc}"
            ) from exc
