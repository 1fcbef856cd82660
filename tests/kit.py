"""The test kit: one fake clock and one bounded wait, shared by every suite.

Hand-written fakes live here (as in Nautilus Trader's test kit) instead of a copy per
test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
    condition: Callable[[], bool], what: str = "the condition held", *, poll: float = 0.005
) -> None:
    """Poll ``condition()`` (a real state with no event to wait on) until it holds;
    fail, naming ``what``, after :data:`DEADLINE_SECONDS`."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not condition():  # noqa: ASYNC110 - states without an event to wait on
                await asyncio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"gave up waiting until {what}") from None
