"""How the state client groups pending batches into ``WriteBatches`` calls (no server:
the grouping itself; the calls end to end are in test_state_service.py)."""

from __future__ import annotations

import asyncio

import pytest
from kit import event, execution

from tradeflow.adapters.grpc.state_client import GROUP_MAX, StateClient
from tradeflow.domain.records import StateBatch


def batch(execution_id: str | None, sequence: int = 1) -> StateBatch:
    """A batch of ``execution_id`` (a record), or of no execution (one bare event)."""
    if execution_id is None:
        return StateBatch(events=(event(None, sequence),))
    return StateBatch(execution=execution(execution_id))


@pytest.mark.asyncio
async def test_a_call_takes_one_batch_per_execution_in_order_up_to_the_cap() -> None:
    """Each call takes pending batches in order, at most GROUP_MAX, at most one per
    execution: a later batch of an execution already taken waits for the next call, and
    so does everything of that execution behind it; batches of no execution go along."""
    client = StateClient("127.0.0.1:1")  # never called: the channel connects lazily
    loop = asyncio.get_running_loop()
    pending = [
        batch("a"),
        batch("b"),
        batch("a"),
        batch(None),
        batch("c"),
        batch("a"),
        *(batch(f"x{n}") for n in range(GROUP_MAX)),
        batch("b"),
    ]
    client._pending = [(b, loop.create_future()) for b in pending]

    def ids(group: list[tuple[StateBatch, asyncio.Future[None]]]) -> list[str | None]:
        return [b.execution.execution_id if b.execution else None for b, _ in group]

    first = ids(client._next_group())
    assert first == ["a", "b", None, "c", *(f"x{n}" for n in range(GROUP_MAX - 4))]
    second = ids(client._next_group())
    assert second == ["a", *(f"x{n}" for n in range(GROUP_MAX - 4, GROUP_MAX)), "b"]
    assert ids(client._next_group()) == ["a"]
    assert client._pending == []
    await client.close()
