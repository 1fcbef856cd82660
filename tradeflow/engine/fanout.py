"""Local delivery of event dicts to this process's subscribers; every event bus uses it.

Each subscriber owns a bounded buffer and a dispatcher task that awaits its
handler one event at a time, in delivery order. Delivering only appends to
buffers, so a slow or failing subscriber never delays the publisher or anyone
else; when a buffer is full the oldest event is dropped (a live view wants the
newest) and counted.

It sits in the engine, not among the adapters, because the in-process bus and
the NATS bus (whose subscribers see events from every process) both need it and
adapters do not import each other; it needs the ports' handler type, so it
cannot go lower.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

import structlog

from tradeflow.domain.errors import ConfigurationError, InvalidRequest, UnavailableError, describe
from tradeflow.domain.records import EventType
from tradeflow.observability.metrics import Metrics
from tradeflow.ports import EventHandler, Subscription

__all__ = ["SCOPE_EVENTS", "WORKFLOW_EVENTS", "Fanout", "LocalSubscription", "check_after_sequence"]

WORKFLOW_EVENTS: Final = "workflow_events"
"""The one topic: every event tradeflow publishes."""
SCOPE_EVENTS: Final = frozenset(
    (EventType.EMERGENCY_HALTED, EventType.EMERGENCY_RESUMED, EventType.RISK_LIMIT_EXCEEDED)
)
"""Events about an emergency scope, not a run: a replay filtered by bot, strategy or
workflow id leaves them out (on NATS their subjects carry no ids)."""

_CLOSE_DRAIN_SECONDS: Final = 1.0

_log = structlog.get_logger(__name__)


def check_after_sequence(after_sequence: int) -> None:
    """Raise ``InvalidRequest`` unless ``after_sequence`` is an integer >= 0."""
    if (
        isinstance(after_sequence, bool)
        or not isinstance(after_sequence, int)
        or after_sequence < 0
    ):
        raise InvalidRequest("after_sequence", "an integer >= 0", after_sequence)


class LocalSubscription:
    """One subscriber: its buffer, its dispatcher task, and how many events it lost."""

    __slots__ = ("_buffer", "_idle", "_metrics", "_stopped", "_task", "_wakeup", "dropped", "name")

    def __init__(self, handler: EventHandler, buffer_size: int, metrics: Metrics | None) -> None:
        self.name: str = getattr(handler, "__qualname__", None) or repr(handler)
        self.dropped = 0
        self._buffer: deque[dict[str, Any]] = deque(maxlen=buffer_size)
        self._metrics = metrics
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopped = False
        self._task = asyncio.create_task(self._dispatch(handler), name=f"events:{self.name}")

    def _offer(self, item: dict[str, Any]) -> None:
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            # deque(maxlen) evicts the oldest on append; only the count is ours.
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.events_dropped.inc()
        buffer.append(item)
        self._idle.clear()
        self._wakeup.set()

    async def _dispatch(self, handler: EventHandler) -> None:
        buffer = self._buffer
        while not self._stopped:
            if not buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await handler(buffer.popleft())
            except Exception as exc:
                _log.error(
                    "events.subscriber_failed",
                    handler=self.name,
                    error=describe(exc),
                    error_type=type(exc).__name__,
                )
                if self._metrics is not None:
                    self._metrics.subscriber_errors.inc()

    async def _stop(self) -> None:
        self._stopped = True
        self._idle.set()
        task = self._task
        # A handler unsubscribing itself: the loop ends after it returns.
        if task is asyncio.current_task():
            return
        task.cancel()
        # asyncio.wait, unlike awaiting the task, never raises the task's
        # CancelledError into (nor swallows a cancellation of) the caller.
        await asyncio.wait((task,))


class Fanout:
    """The subscribers of one bus. ``buffer_size`` bounds each one's backlog;
    ``metrics`` counts dropped events and handler errors."""

    __slots__ = ("_buffer_size", "_closed", "_metrics", "_subscriptions")

    def __init__(self, *, buffer_size: int = 10_000, metrics: Metrics | None = None) -> None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigurationError(
                f"invalid event bus buffer_size: expected an integer >= 1, found {buffer_size!r}"
            )
        self._buffer_size = buffer_size
        self._metrics = metrics
        # A tuple, replaced on (un)subscribe, so deliver iterates without copying.
        self._subscriptions: tuple[LocalSubscription, ...] = ()
        self._closed = False

    def deliver(self, item: dict[str, Any]) -> None:
        """Hand an event dict (already in contract form) to every subscriber's buffer.

        One dict shared by every subscriber: handlers must treat it as read-only.
        """
        for subscription in self._subscriptions:
            subscription._offer(item)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscriptions)

    async def subscribe(self, topic: str, handler: EventHandler) -> LocalSubscription:
        """See :meth:`tradeflow.ports.EventBus.subscribe`."""
        if topic != WORKFLOW_EVENTS:
            raise InvalidRequest("topic", repr(WORKFLOW_EVENTS), topic)
        if not callable(handler):
            raise InvalidRequest("handler", "an async callable taking the event dict", handler)
        if self._closed:
            raise UnavailableError("event bus is closed")
        subscription = LocalSubscription(handler, self._buffer_size, self._metrics)
        self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        for candidate in self._subscriptions:
            if candidate is subscription:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not candidate)
                await candidate._stop()
                return

    # The bound is part of the call (close() and the CLI always want one), hence ASYNC109.
    async def drain(self, timeout: float = 1.0) -> bool:  # noqa: ASYNC109
        """Wait until every subscriber has handled everything buffered for it; False if
        that did not happen within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while pending := [s for s in self._subscriptions if not s._idle.is_set()]:
                    await asyncio.gather(*(s._idle.wait() for s in pending))
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Deliver what is buffered (at most one second), then stop every dispatcher."""
        self._closed = True
        await self.drain(_CLOSE_DRAIN_SECONDS)
        subscriptions, self._subscriptions = self._subscriptions, ()
        for subscription in subscriptions:
            await subscription._stop()
