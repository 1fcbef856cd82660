"""Injectable time and id sources, so tests control both."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "IdFactory", "SystemClock", "new_id"]


class Clock(Protocol):
    """Where the core reads time from."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for durations and deadlines."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


IdFactory = Callable[[], str]


def new_id() -> str:
    """A random 32-hex-digit id (UUID4)."""
    return uuid.uuid4().hex
