"""The test kit: one fake clock, one bounded wait and the record builders, shared by every
suite.

Hand-written fakes live here (as in Nautilus Trader's test kit) instead of a copy per
test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tradeflow.domain.emergency import EmergencySnapshot, ScopeIds
from tradeflow.domain.errors import EmergencyHalted
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    EventType,
    ExecutionRecord,
    ExecutionStatus,
)
from tradeflow.domain.trading import OrderEffect

START = 1_700_000_000.0
"""2023-11-14T22:13:20Z: mid-day, so an hour either way stays on the same UTC day."""

DEADLINE_SECONDS = 30.0
"""Bound on every wait for a condition: only there so that a broken system fails the
test instead of hanging it (never a timing assertion)."""


class ManualClock:
    """A clock that moves only when the test says so (wall and monotonic time together)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition held",
    *,
    poll: float = 0.005,
) -> None:
    """Poll ``condition()`` (a real state with no event to wait on, local or behind a
    request) until it holds; fail, naming ``what``, after :data:`DEADLINE_SECONDS`."""

    async def holds() -> bool:
        held = condition()
        return held if isinstance(held, bool) else await held

    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not await holds():  # noqa: ASYNC110 - states without an event to wait on
                await asyncio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"gave up waiting until {what}") from None


DEFINITION: dict[str, Any] = {
    "blocks": [{"id": "quote", "category": "providers", "type": "price", "properties": {}}]
}
"""The smallest workflow: one price block."""


def execution(
    execution_id: str,
    workflow_id: str = "wf",
    *,
    started_at: float = 1_000.0,
    status: ExecutionStatus = ExecutionStatus.RUNNING,
    **fields: Any,
) -> ExecutionRecord:
    """A record of ``DEFINITION``'s run; one not running finished a second after it started."""
    fields.setdefault("definition", DEFINITION)
    fields.setdefault("finished_at", None if status is ExecutionStatus.RUNNING else started_at + 1)
    return ExecutionRecord(
        execution_id=execution_id,
        workflow_id=workflow_id,
        status=status,
        started_at=started_at,
        correlation_id=f"corr-{execution_id}",
        **fields,
    )


def event(
    execution_id: str | None, sequence: int, data: dict[str, Any] | None = None, **fields: Any
) -> Event:
    """Event number ``sequence`` of a run (timestamps with microseconds, to prove they keep)."""
    fields.setdefault("timestamp", 2_000.123456 + sequence)
    fields.setdefault("workflow_id", "wf")
    fields.setdefault("node_id", "quote")
    return Event(
        type=EventType.NODE_COMPLETED.value,
        event_id=f"{execution_id}-{sequence}",
        sequence=sequence,
        correlation_id=f"corr-{execution_id}",
        execution_id=execution_id,
        data={"seq": sequence} if data is None else data,
        **fields,
    )


def run_event(
    record: ExecutionRecord, sequence: int, node_id: str | None, data: dict[str, Any]
) -> Event:
    """Event number ``sequence`` of ``record``'s run, carrying the record's ids."""
    return Event(
        type=EventType.NODE_COMPLETED.value,
        event_id=f"{record.execution_id}-{sequence}",
        sequence=sequence,
        timestamp=record.started_at + sequence / 1000,
        correlation_id=record.correlation_id,
        execution_id=record.execution_id,
        workflow_id=record.workflow_id,
        bot_id=record.bot_id,
        strategy_id=record.strategy_id,
        node_id=node_id,
        data=data,
    )


def checkpoint(
    execution_id: str,
    node_id: str,
    state: CheckpointState = CheckpointState.COMPLETED,
    outputs: dict[str, Any] | None = None,
    **fields: Any,
) -> Checkpoint:
    """A checkpoint of ``node_id`` (a price quote unless ``outputs`` says otherwise)."""
    fields.setdefault("updated_at", 3_000.5)
    return Checkpoint(
        execution_id=execution_id,
        node_id=node_id,
        state=state,
        outputs={"price": 101.5} if outputs is None else outputs,
        **fields,
    )


def refusal_of(
    snapshot: EmergencySnapshot, ids: ScopeIds, effect: OrderEffect
) -> EmergencyHalted | None:
    """The error ``snapshot.ensure_allowed`` raises for ``ids`` and ``effect``, or None if
    it lets the action start: the domain's answer, which every store must give too."""
    try:
        snapshot.ensure_allowed(ids, effect)
    except EmergencyHalted as exc:
        return exc
    return None


def refusal_fields(error: EmergencyHalted | None) -> tuple[Any, ...] | None:
    """What a refusal says: reason, scope, target and state (None: no refusal)."""
    return None if error is None else (error.reason, error.scope, error.target, error.state)
