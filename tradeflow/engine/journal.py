"""Journals: what an execution leaves behind, told by the runner as it goes.

:data:`NULL_JOURNAL` (the base executor) records nothing and builds nothing.
:class:`DurableJournal` (the enhanced executor) is the one sequence source of its
execution's events; it publishes them, buffers checkpoints and writes both in one atomic
batch at the points that matter: before every action (the write-ahead intent carrying the
client order id, so a resumed execution can never trade twice), before every call
through a circuit breaker such as ``api_call`` (which may be slow, so progress up to it
is on disk), and when the execution ends. A crash loses at most the record of pure
computation since the last batch; resume re-runs it. The buffer is bounded by the
workflow size limit.

An action that ends with ``status`` ``denied`` (``place_order`` refused by a pre-trade
check, :mod:`tradeflow.engine.pretrade`) completed normally; its completion is preceded by
an ``order_denied`` event (the denial, the client order id and the reason) and counted in
``tradeflow_orders_denied_total{check}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.errors import EmergencyHalted, LeaseLost, OrderRejected, describe
from tradeflow.domain.records import (
    ActionGuard,
    Checkpoint,
    CheckpointState,
    Event,
    EventType,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.domain.risk import PRE_TRADE_TYPES
from tradeflow.domain.trading import OrderEffect, TradingState

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from tradeflow.domain.clock import Clock
    from tradeflow.engine.result import ExecutionResult
    from tradeflow.engine.runner import NodePlan
    from tradeflow.engine.runtime import Durability
    from tradeflow.observability.metrics import Series

__all__ = ["NULL_JOURNAL", "DurableJournal", "NullJournal"]

# Plain strings, looked up once: enum attribute access costs ~0.5 us on the hot path.
_NODE_STARTED = EventType.NODE_STARTED.value
_NODE_COMPLETED = EventType.NODE_COMPLETED.value
_NODE_SKIPPED = EventType.NODE_SKIPPED.value
_NODE_FAILED = EventType.NODE_FAILED.value
_NODE_RETRYING = EventType.NODE_RETRYING.value
_INTERRUPTED = EventType.EXECUTION_INTERRUPTED.value
_ORDER_DENIED = EventType.ORDER_DENIED.value
_DENIED: Final = "denied"
"""The ``status`` output of an action a pre-trade check denied."""
_COMPLETED = CheckpointState.COMPLETED
_SKIPPED = CheckpointState.SKIPPED
_FAILED = CheckpointState.FAILED
_INTENT = CheckpointState.INTENT
_REDUCE_ONLY = TradingState.REDUCE_ONLY
_FREE: Final = frozenset({OrderEffect.CANCELS, OrderEffect.NONE})
"""Effects every trading state admits: neither the local view nor the store is asked."""
_PLACE_ORDER: Final = "place_order"
"""The built-in action that places exactly one order, under the node's client order id:
its ``OrderRejected`` for that id proves the order does not exist."""

Classify = Callable[[], Awaitable[OrderEffect]]
"""Works out what an order does against the current position (the node's ``order_effect``)."""

# A named tuple's generated __new__ is a Python frame; tuple.__new__ with the fields in
# order builds the same tuple without it (an event per node transition, a checkpoint per node).
_tuple = tuple.__new__
if len(Event._fields) != 11 or len(Checkpoint._fields) != 7:  # pragma: no cover
    raise ImportError("journal: Event or Checkpoint fields changed; update emit/_checkpoint")

_FINAL_EVENT = {
    ExecutionStatus.COMPLETED: EventType.EXECUTION_COMPLETED.value,
    ExecutionStatus.FAILED: EventType.EXECUTION_FAILED.value,
    ExecutionStatus.HALTED: EventType.EXECUTION_HALTED.value,
    ExecutionStatus.CANCELLED: EventType.EXECUTION_CANCELLED.value,
}


class NullJournal:
    """What the runner tells about one execution as it runs; this one records nothing
    (every method returns at once), the durable journal overrides each."""

    __slots__ = ()

    def node_started(self, node: NodePlan) -> float:
        """Returns the start mark that ``node_completed``/``node_failed`` are given back."""
        return 0.0

    async def begin(self) -> None:
        """Make the execution's start durable now (a submission accepted is never lost)."""

    async def before_io(self, node: NodePlan, classify: Classify | None = None) -> None:
        """Before an action or external call: persist progress; for an action, first record
        the write-ahead intent, which the store commits only if the trading state of the
        execution's scopes admits the action (else ``EmergencyHalted``, and no intent).
        ``classify`` tells what an order does to the position, asked only when that
        matters (the scope is ``REDUCE_ONLY``)."""

    def guard_action(self, node: NodePlan) -> None:
        """Right before each attempt of an action: raise ``LeaseLost`` if this process may
        no longer act for the execution, and ``EmergencyHalted`` if the trading state of
        its scopes no longer admits the action (or cannot be confirmed, unless it only
        cancels or changes nothing at a venue)."""

    def node_completed(self, node: NodePlan, outputs: dict[str, Any], started: float) -> None:
        return None

    def node_skipped(self, node: NodePlan, reason: str) -> None:
        return None

    def node_failed(self, node: NodePlan, error: BaseException, started: float) -> None:
        return None

    def node_retrying(
        self, node: NodePlan, attempt: int, error: BaseException, wait: float
    ) -> None:
        return None

    async def interrupted(self) -> None:
        """The run was interrupted (task cancelled, shutdown)."""

    def unbind(self) -> None:
        """The run is over: its ids leave the log context (called in the run's own task,
        where they were bound)."""

    async def finish(self, result: ExecutionResult) -> ExecutionResult:
        """The run ended: ``result``, carrying the final record when one was written."""
        return result


NULL_JOURNAL = NullJournal()


class DurableJournal(NullJournal):
    """One per execution: emits its events, buffers its checkpoints, guards its actions."""

    # Slots and plain attributes, not a tuple of ids unpacked per event: emit() runs about
    # twenty times per execution and this is the enhanced executor's hot path.
    __slots__ = (
        "acting",
        "attempts",
        "began",
        "bot_id",
        "bound",
        "checkpoints",
        "clock",
        "correlation_id",
        "durability",
        "effects",
        "emergency",
        "events",
        "execution_id",
        "fence",
        "flushing",
        "ids",
        "inherited",
        "log",
        "node_seconds",
        "owner",
        "publish",
        "record",
        "refused",
        "sequence",
        "start",
        "strategy_id",
        "workflow_id",
    )

    def __init__(
        self,
        durability: Durability,
        record: ExecutionRecord,
        *,
        clock: Clock,
        log: FilteringBoundLogger,
        node_seconds: dict[str, Series],
        last_sequence: int,
        inherited: frozenset[str] = frozenset(),
    ) -> None:
        self.start = record
        self.record: ExecutionRecord | None = record
        """Written with the next batch, then None."""
        self.durability = durability
        self.clock = clock
        self.log = log
        self.node_seconds = node_seconds
        self.publish = durability.events.publish
        self.owner = durability.owner
        self.fence = durability.owner.lease.fence
        """Carried by every write: the store refuses it once another owner took over."""
        self.correlation_id = record.correlation_id
        self.execution_id = record.execution_id
        self.workflow_id = record.workflow_id
        self.bot_id = record.bot_id
        self.strategy_id = record.strategy_id
        self.ids = ScopeIds(record.workflow_id, record.bot_id, record.strategy_id)
        self.emergency = durability.emergency
        self.effects: dict[str, OrderEffect] = {}
        """What each action begun so far does to exposure, as its intent recorded it."""
        self.acting: dict[str, str] = {}
        """Client order id of each action whose intent committed and whose outcome is not
        yet recorded."""
        self.attempts: dict[str, int] = {}
        """Attempts of each action so far (``guard_action`` runs before each)."""
        self.refused: set[str] = set()
        """Actions whose attempt ``guard_action`` refused (before the node ran)."""
        self.inherited = inherited
        """Actions whose intent (or failure after it) a previous run of this execution
        recorded: that run may have placed the order, whatever this one does."""
        self.flushing = asyncio.Lock()
        self.sequence = last_sequence
        self.events: list[Event] = []
        self.checkpoints: list[Checkpoint] = []
        self.began = clock.monotonic()
        # The execution's ids on every log line until it ends (interrupted or finished).
        self.bound = structlog.contextvars.bind_contextvars(
            correlation_id=record.correlation_id,
            execution_id=record.execution_id,
            workflow_id=record.workflow_id,
        )
        self.emit(
            EventType.EXECUTION_STARTED.value, data={"resumed": True} if last_sequence else {}
        )

    def emit(
        self,
        type_: str,
        node_id: str | None = None,
        data: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> float:
        """Publish and buffer one event; returns its timestamp."""
        self.sequence = sequence = self.sequence + 1
        if now is None:
            now = self.clock.time()
        event: Event = _tuple(
            Event,
            (
                type_,
                f"{self.execution_id}-{sequence}",
                sequence,
                now,
                self.correlation_id,
                self.execution_id,
                self.workflow_id,
                self.bot_id,
                self.strategy_id,
                node_id,
                data if data is not None else {},
            ),
        )
        self.publish(event)
        self.events.append(event)
        return now

    def _checkpoint(
        self,
        node_id: str,
        state: CheckpointState,
        now: float,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Checkpoint:
        checkpoint: Checkpoint = _tuple(
            Checkpoint, (self.execution_id, node_id, state, now, outputs, error, 1)
        )
        self.checkpoints.append(checkpoint)
        return checkpoint

    async def flush(
        self, guard: ActionGuard | None = None, intent: Checkpoint | None = None
    ) -> None:
        """Write what is buffered as one batch; with ``guard``, the batch carries the
        action's ``intent`` and the store may refuse it (``EmergencyHalted``: then the
        rest goes with the next batch)."""
        if not self.events and not self.checkpoints and self.record is None:
            return
        # One batch of an execution at a time, in order: a store keeps an execution's
        # events once by sequence, so a batch written after a later one (a refused intent's
        # events written again, or two writes reordered on the wire) would lose its events.
        async with self.flushing:
            await self._flush(guard, intent)

    async def _flush(self, guard: ActionGuard | None, intent: Checkpoint | None) -> None:
        if not self.events and not self.checkpoints and self.record is None:
            return
        batch = StateBatch(
            self.record, tuple(self.checkpoints), tuple(self.events), self.fence, guard
        )
        self.record, self.events, self.checkpoints = None, [], []
        try:
            await self.durability.state.write(batch)
        except LeaseLost:
            self.owner.suspect(self.fence.epoch)
            raise
        except EmergencyHalted:
            if guard is None:
                raise
            # The store refused the intent and wrote nothing: everything else of the batch
            # goes with the next one (before what was buffered since, to keep the order).
            self.record = batch.execution if self.record is None else self.record
            self.events[:0] = batch.events
            self.checkpoints[:0] = [c for c in batch.checkpoints if c is not intent]
            raise

    async def begin(self) -> None:
        await self.flush()

    def node_started(self, node: NodePlan) -> float:
        self.emit(_NODE_STARTED, node.block.id)
        return self.clock.monotonic()

    async def before_io(self, node: NodePlan, classify: Classify | None = None) -> None:
        effect = node.effect
        if effect is None:
            await self.flush()
            return
        node_id = node.block.id
        guard = None
        if effect not in _FREE:
            state = self.emergency.trading_state(self.ids)
            if classify is not None and state is _REDUCE_ONLY:
                effect = await classify()
            self.effects[node_id] = effect
            if not state.allows(effect):
                self._allowed(effect)  # a refusal the local view knows costs no write
            guard = ActionGuard(self.workflow_id, self.bot_id, self.strategy_id, effect)
        client_order_id = f"{self.execution_id}:{node_id}"
        intent = self._checkpoint(
            node_id, _INTENT, self.clock.time(), {"client_order_id": client_order_id}
        )
        try:
            await self.flush(guard, intent)
        except EmergencyHalted:
            self.durability.metrics.actions_refused.inc()
            raise
        self.acting[node_id] = client_order_id
        self.owner.acting(self.execution_id, node_id, client_order_id)

    def guard_action(self, node: NodePlan) -> None:
        # After the durable intent, before each attempt: the last moment before the side effect.
        node_id = node.block.id
        self.attempts[node_id] = self.attempts.get(node_id, 0) + 1
        self.owner.check(self.fence.epoch)
        effect = self.effects.get(node.block.id)
        if effect is not None:  # cancels and effect-free actions: the way out stays open
            try:
                self._allowed(effect)
            except EmergencyHalted:
                self.refused.add(node_id)
                raise

    def _allowed(self, effect: OrderEffect) -> None:
        try:
            self.emergency.ensure_allowed(self.ids, effect)
        except EmergencyHalted:
            self.durability.metrics.actions_refused.inc()
            raise

    def _acted(self, node_id: str) -> str | None:
        """The action's outcome is recorded: its client order id if its intent had
        committed (else None)."""
        client_order_id = self.acting.pop(node_id, None)
        if client_order_id is not None:
            self.owner.acted(self.execution_id, node_id)
        return client_order_id

    def node_completed(self, node: NodePlan, outputs: dict[str, Any], started: float) -> None:
        node_id = node.block.id
        seconds = self.clock.monotonic() - started
        self.node_seconds[node_id].observe(seconds)
        if node.is_action and outputs.get("status") == _DENIED:
            self._denied(node_id, outputs)
        now = self.emit(
            _NODE_COMPLETED, node_id, {"outputs": outputs, "duration_ms": seconds * 1000.0}
        )
        self._checkpoint(node_id, _COMPLETED, now, outputs)
        self._acted(node_id)

    def _denied(self, node_id: str, outputs: dict[str, Any]) -> None:
        """The ``order_denied`` event of an action's denied outcome, and its count."""
        denial = outputs.get("denial")
        data: dict[str, Any] = dict(denial) if isinstance(denial, dict) else {}
        data["client_order_id"] = outputs.get("client_order_id")
        data["reason"] = outputs.get("reason")
        check = data.get("check")
        # Bounded labels: a custom action's own denials count as "other".
        self.durability.metrics.orders_denied.labels(
            check if check in PRE_TRADE_TYPES else "other"
        ).inc()
        self.emit(_ORDER_DENIED, node_id, data)

    def node_skipped(self, node: NodePlan, reason: str) -> None:
        node_id = node.block.id
        now = self.emit(_NODE_SKIPPED, node_id, {"reason": reason})
        self._checkpoint(node_id, _SKIPPED, now)

    def node_failed(self, node: NodePlan, error: BaseException, started: float) -> None:
        node_id = node.block.id
        message = describe(error)
        # 0.0: the node failed before it started (its progress could not be persisted).
        seconds = self.clock.monotonic() - started if started else 0.0
        self.node_seconds[node_id].observe(seconds)
        self.durability.metrics.node_failures.labels(node.block.type).inc()
        now = self.emit(
            _NODE_FAILED,
            node_id,
            {"error": message, "error_type": type(error).__name__, "duration_ms": seconds * 1000},
        )
        client_order_id = self._acted(node_id)
        if self._nothing_sent(node, error, client_order_id):
            client_order_id = None
        # After a committed intent the order may exist at the venue: the failure keeps the
        # intent's client order id, so retention keeps the execution
        # (domain.records.unresolved_intent) until someone resolves it.
        self._checkpoint(
            node_id,
            _FAILED,
            now,
            None if client_order_id is None else {"client_order_id": client_order_id},
            message,
        )
        self.log.warning("node.failed", node_id=node_id, node_type=node.block.type, error=message)

    def _nothing_sent(
        self, node: NodePlan, error: BaseException, client_order_id: str | None
    ) -> bool:
        """Whether the failure proves the action's order does not exist: its only attempt
        in a run that inherited no intent of it was refused by :meth:`guard_action`, or is
        the built-in ``place_order``'s rejection of its own order (before or by the
        venue). Anything else (a custom action's error, a retry after an attempt) may
        hide a placed order."""
        node_id = node.block.id
        if self.attempts.get(node_id, 0) > 1 or node_id in self.inherited:
            return False
        return node_id in self.refused or (
            node.block.type == _PLACE_ORDER
            and isinstance(error, OrderRejected)
            and error.client_order_id == client_order_id
        )

    def node_retrying(
        self, node: NodePlan, attempt: int, error: BaseException, wait: float
    ) -> None:
        self.durability.metrics.retries.labels(node.block.type).inc()
        self.emit(
            _NODE_RETRYING,
            node.block.id,
            {"attempt": attempt, "error": describe(error), "next_wait_s": wait},
        )

    async def interrupted(self) -> None:
        """Keep what ran and mark the execution ``interrupted``: resumable, and claimable
        by another owner at once (the lease need not lapse first)."""
        self.emit(_INTERRUPTED, data={"status": ExecutionStatus.INTERRUPTED.value})
        self.record = self._ended(ExecutionStatus.INTERRUPTED, None, None, None)
        try:
            await self.flush()
        except LeaseLost:
            # Another owner has it already: nothing of this run may be written.
            return
        self.log.warning("execution.interrupted")

    def unbind(self) -> None:
        for node_id in tuple(self.acting):
            self._acted(node_id)
        structlog.contextvars.reset_contextvars(**self.bound)

    def _ended(
        self,
        status: ExecutionStatus,
        finished_at: float | None,
        error: str | None,
        result: dict[str, Any] | None,
    ) -> ExecutionRecord:
        """The start record with how the run stopped, owned by this run's lease."""
        start = self.start
        # A constructor, not dataclasses.replace: it costs ~3 us a call on this path.
        return ExecutionRecord(
            start.execution_id,
            start.workflow_id,
            status,
            start.started_at,
            start.definition,
            start.correlation_id,
            start.bot_id,
            start.strategy_id,
            finished_at,
            error,
            result,
            start.request_id,
            start.owner,
            start.epoch,
            start.takeovers,
            True,
        )

    async def finish(self, result: ExecutionResult) -> ExecutionResult:
        """Write the final record (built here, once) with the final event; the result
        carrying that record."""
        status, error = result.status, result.error
        record = self._ended(status, result.finished_at, error, result.as_dict())
        seconds = self.clock.monotonic() - self.began
        data: dict[str, Any] = {"status": status.value, "duration_ms": seconds * 1000.0}
        if error is not None:
            data["error"] = error
        self.emit(_FINAL_EVENT[status], data=data, now=result.finished_at)
        self.record = record
        try:
            await self.flush()
            self.durability.metrics.executions.inc(status.value)
            self.durability.metrics.execution_seconds.observe(seconds)
            if status is ExecutionStatus.COMPLETED:
                self.log.info("execution.completed", duration_ms=round(seconds * 1000, 3))
            else:
                self.log.warning("execution.finished", status=status.value, error=error)
        finally:
            self.unbind()
        return result.with_record(record)
