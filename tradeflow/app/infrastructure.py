"""``Infrastructure.create(env)``: the composition root. It wires the adapters an
executor runs on, embedded or remote, and hands them to the engine as one
:class:`~tradeflow.engine.runtime.Runtime` (``infra.runtime``).

- ``"development"``: everything in this process: in-process event bus, a SQLite
  state file (``TRADEFLOW_SQLITE_PATH``), a local emergency controller whose halts
  live in that file (so ``tradeflow halt`` from another shell stops a running bot),
  a paper exchange whose ledger is in that file too, readable console logs, and the
  trigger evaluator (``infra.triggers``: loss triggers and dead-man's switches every
  ``TRADEFLOW_TRIGGER_INTERVAL`` seconds, on the paper exchange's equity; every process
  on one file runs one, and they count each evaluation once between them), and
  retention (``infra.retention``: executions that ended more than
  ``TRADEFLOW_RETENTION_DAYS`` ago are pruned at start and every
  ``TRADEFLOW_RETENTION_INTERVAL`` seconds; off when the days are 0 or the caller asks
  for none, as the CLI's short commands do).
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

import asyncio
import contextlib
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
from tradeflow.domain.errors import ConfigurationError, describe
from tradeflow.domain.ownership import OwnerInfo
from tradeflow.domain.records import PRUNE_LIMIT_DEFAULT, Event, EventType
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.ownership import LeaseKeeper
from tradeflow.engine.resilience import BreakerRegistry, BreakerState
from tradeflow.engine.runtime import Durability, Runtime
from tradeflow.engine.triggers import TriggerEvaluator
from tradeflow.observability.logging import configure_logging, get_logger
from tradeflow.observability.metrics import BREAKER_STATE_VALUES, Metrics
from tradeflow.ports import EmergencyControl, Exchange, PnlSource, PriceFeed, StateStore

if TYPE_CHECKING:
    from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl

__all__ = ["Infrastructure", "Retention", "Settings"]

_DAY_SECONDS = 86_400.0

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
        self.retention: Retention | None = None
        """Embedded, unless off: the retention task (started); ``prune()`` for one round."""

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
        retention: bool = True,
    ) -> Infrastructure:
        """Build the infrastructure for ``env`` (``development``, ``test``, ``production``)
        and take this process's lease (``owner_kind``: ``library``, ``cli``, ``executor``).
        Embedded, ``retention`` starts the retention task unless
        ``settings.retention_days`` is 0 (production: the state service prunes)."""
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
            if retention and settings.retention_days > 0:
                infra.retention = Retention(
                    state,
                    days=settings.retention_days,
                    interval=settings.retention_interval,
                    clock=clock,
                )
                infra.retention.start()
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
        if self.retention is not None:
            await self.retention.close()
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


class Retention:
    """Embedded retention: prunes the executions that ended more than ``days`` ago (see
    :meth:`~tradeflow.ports.StateStore.prune`) at start, then every ``interval`` seconds,
    on ``clock`` (the one that stamps the runs' end). Each round calls ``prune`` until it
    has nothing more to remove, letting the event loop run between calls, and logs
    ``retention.pruned`` with the counts (at info when it removed or kept any). A round
    that fails is logged (``retention.failed``) and the next one tries again."""

    def __init__(
        self,
        state: StateStore,
        *,
        days: float,
        interval: float,
        clock: Clock,
        limit: int = PRUNE_LIMIT_DEFAULT,
    ) -> None:
        self._state = state
        self._limit = limit
        """Executions one ``prune`` call may remove (each call walks from the oldest end
        again, past every kept one: a service prunes with the largest)."""
        self._horizon = days * _DAY_SECONDS
        self._interval = interval
        self._clock = clock
        self._log = get_logger("tradeflow.retention")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the background task (its first round runs at once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="tradeflow-retention"
            )

    async def prune(self) -> tuple[int, int]:
        """One round: ``(removed, kept)``; ``kept``: ended before the horizon but kept for
        an unresolved intent."""
        ended_before = self._clock.time() - self._horizon
        removed = 0
        while True:
            report = await self._state.prune(ended_before, limit=self._limit)
            removed += report.removed
            if not report.more:
                break
            await asyncio.sleep(0)  # executions run between two prunes
        # Each call walks from the oldest end again: the last one saw every kept one.
        kept = report.kept
        log = self._log.info if removed or kept else self._log.debug
        log("retention.pruned", removed=removed, kept=kept, ended_before=ended_before)
        return removed, kept

    async def close(self) -> None:
        """Stop the task (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as exc:
                self._log.warning("retention.failed", error=describe(exc))
            await asyncio.sleep(self._interval)


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
