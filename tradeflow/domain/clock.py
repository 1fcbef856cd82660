"""Injectable time and id sources, so tests control both."""

from __future__ import annotations

import os
import time
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
    """A random 128-bit id as 32 hex digits (the entropy of a UUID4 at a quarter of
    ``uuid.uuid4().hex``'s cost: two are made per execution)."""
    return os.urandom(16).hex()
