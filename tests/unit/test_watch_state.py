"""The ``WatchState`` stream of the emergency servicer over a stub controller: what it
pushes and when, without Redis (the service end to end: test_emergency_service.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kit import DEADLINE_SECONDS

from emergency_service.servicer import EmergencyServicer
from tradeflow.domain.clock import SystemClock
from tradeflow.domain.emergency import EmergencySnapshot
from tradeflow.engine.emergency import WatchedView

HEARTBEAT = 3600.0
"""Longer than any test: a push that waits for the heartbeat fails the test's deadline."""


class Controller:
    """The part of the controller ``WatchState`` uses, over a real watched view."""

    def __init__(self) -> None:
        self.view = WatchedView("stub", clock=SystemClock(), max_staleness=None, backoff=(1, 1))
        self.version = 1
        self.view.confirm(EmergencySnapshot(halts={}, version=self.version, limits={}))

    def snapshot(self) -> EmergencySnapshot:
        return self.view.current()

    async def changed(self) -> None:
        await self.view.changed()

    def wake(self) -> None:
        self.view.wake()

    def change(self) -> None:
        self.version += 1
        self.view.confirm(EmergencySnapshot(halts={}, version=self.version, limits={}))


def servicer(controller: Controller) -> EmergencyServicer:
    return EmergencyServicer(
        cast(Any, controller),
        cast(Any, None),
        cast(Any, None),
        heartbeat=HEARTBEAT,
        resume_requests=cast(Any, None),
        confirm_scopes=frozenset(),
    )


@pytest.mark.asyncio
async def test_a_change_made_while_a_push_is_being_sent_goes_out_next() -> None:
    """A change that lands while the stream is suspended sending the previous state (gRPC
    awaits the write) is pushed next, not at the next heartbeat; and one made while the
    stream waits wakes it."""
    controller = Controller()
    stream = servicer(controller).WatchState(cast(Any, None), cast(Any, None))
    async with asyncio.timeout(DEADLINE_SECONDS):
        first = await anext(stream)
        controller.change()  # while the first message is "being sent"
        second = await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # the stream is now waiting for a change
        controller.change()
        third = await waiting
    await stream.aclose()
    assert [m.state.version for m in (first, second, third)] == [1, 2, 3]


@pytest.mark.asyncio
async def test_draining_ends_a_waiting_stream_at_once() -> None:
    """A server draining wakes every waiting stream, which ends without another push."""
    controller = Controller()
    watch = servicer(controller)
    stream = watch.WatchState(cast(Any, None), cast(Any, None))
    async with asyncio.timeout(DEADLINE_SECONDS):
        await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        await watch.drain()
        with pytest.raises(StopAsyncIteration):
            await waiting
