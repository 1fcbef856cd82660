"""The embedded :class:`~tradeflow.ports.EventBus`: in-process, one event loop.

Subscribers are served by the shared :class:`~tradeflow.engine.fanout.Fanout`
(a bounded buffer and a dispatcher each). For replay the bus numbers every
published event 1, 2, ... and keeps the newest ``history`` of them (none by
default: embedded, the state store holds the history, and every event kept is
one more object for each full garbage collection to walk, which showed in the
executor's p99). While a replay runs, the newest ``buffer_size`` are kept, as
records turned into contract dicts only when replayed: a reader that falls
further behind than that misses the oldest, and the gap shows in the sequence
numbers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import structlog

from tradeflow.domain.errors import ConfigurationError, describe
from tradeflow.domain.records import Event
from tradeflow.engine.fanout import SCOPE_EVENTS, WORKFLOW_EVENTS, Fanout, check_after_sequence
from tradeflow.observability.metrics import Metrics

__all__ = ["WORKFLOW_EVENTS", "Event", "InProcessEventBus"]

_log = structlog.get_logger(__name__)


class InProcessEventBus(Fanout):
    """Delivers :class:`Event` dicts to async handlers in the same process; ``history``
    bounds the events kept for :meth:`replay` (see the module docstring)."""

    __slots__ = ("_appended", "_history", "_keep", "_readers", "_sequence")

    def __init__(
        self, *, buffer_size: int = 10_000, history: int = 0, metrics: Metrics | None = None
    ) -> None:
        super().__init__(buffer_size=buffer_size, metrics=metrics)
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ConfigurationError(
                f"invalid event bus history: expected an integer >= 0, found {history!r}"
            )
        self._keep = history
        self._readers = 0
        self._history: deque[tuple[int, Event]] = deque(maxlen=history)
        self._sequence = 0
        self._appended: asyncio.Event | None = None
        """Set (and dropped) by the next publish; only exists while a replay waits."""

    def publish(self, event: Event) -> None:
        self._sequence += 1
        if self._history.maxlen:
            self._history.append((self._sequence, event))
        appended = self._appended
        if appended is not None:
            self._appended = None
            appended.set()
        if not self._subscriptions:
            return
        try:
            self.deliver(event.to_dict())
        except Exception as exc:
            _log.error(
                "events.publish_failed",
                event_type=getattr(event, "type", None),
                error=describe(exc),
            )

    async def last_sequence(self) -> int:
        return self._sequence

    def healthy(self) -> bool:
        return not self._closed

    def replay(
        self,
        *,
        after_sequence: int = 0,
        bot_id: str | None = None,
        strategy_id: str | None = None,
        workflow_id: str | None = None,
        execution_id: str | None = None,
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        """See :meth:`tradeflow.ports.EventBus.replay`; ``sequence`` numbers published events."""
        check_after_sequence(after_sequence)
        ids = {"bot_id": bot_id, "strategy_id": strategy_id, "workflow_id": workflow_id}
        wanted = [(field, value) for field, value in ids.items() if value is not None]
        skipped = SCOPE_EVENTS if wanted else frozenset()
        if execution_id is not None:
            wanted.append(("execution_id", execution_id))
        return self._replay(after_sequence, wanted, skipped)

    async def _replay(
        self, cursor: int, wanted: list[tuple[str, str]], skipped: frozenset[str]
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        self._readers += 1
        if self._readers == 1 and self._keep < self._buffer_size:
            self._history = deque(self._history, maxlen=self._buffer_size)
        history = self._history
        try:
            while True:
                fresh = min(self._sequence - cursor, len(history))
                if fresh > 0:
                    # Copied from the newest end: publishing while this yields must not
                    # disturb the iteration, and a live reader only looks at the tail.
                    batch = [history[-n] for n in range(fresh, 0, -1)]
                    cursor = batch[-1][0]
                    for sequence, event in batch:
                        if event.type not in skipped and all(
                            getattr(event, field) == value for field, value in wanted
                        ):
                            yield sequence, event.to_dict()
                    continue
                if self._closed:
                    return
                if self._appended is None:
                    self._appended = asyncio.Event()
                await self._appended.wait()
        finally:
            self._readers -= 1
            if not self._readers:
                self._history = deque(self._history, maxlen=self._keep)

    async def close(self) -> None:
        """Deliver what is buffered (at most one second), stop every dispatcher, end replays."""
        await super().close()
        appended, self._appended = self._appended, None
        if appended is not None:
            appended.set()
