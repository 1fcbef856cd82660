"""Ownership of running executions: leases with fencing epochs (no I/O).

Every process that runs executions (an executor replica, the embedded CLI, a library
process) holds one :class:`Lease` in the state store, renewed by heartbeat. Its epoch
comes from one store-wide counter, so a newer lease always has a larger epoch; it is the
fencing token every write of the owner's executions carries (a :class:`Fence`). An
execution belongs to the lease whose epoch it records; when that lease lapses, the
execution is an *orphan* and a live owner may claim it (its epoch then moves to the
claimer's, and the old owner's writes are refused).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import NamedTuple

from tradeflow.domain.limits import ID_CHARACTERS

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_TAKEOVERS",
    "Claim",
    "Fence",
    "Heartbeat",
    "Lease",
    "OwnerInfo",
]

DEFAULT_LEASE_SECONDS = 3.0
"""How long a lease lives without a heartbeat (renewed every third of it)."""
DEFAULT_MAX_TAKEOVERS = 3
"""An execution whose owners died more than this many times while running it is
quarantined (ended ``failed``) instead of being taken over again."""

_NOT_ID = re.compile(f"[^{ID_CHARACTERS}]")


class Fence(NamedTuple):
    """What a write of an owned execution carries: the owner and its lease epoch."""

    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """Who holds (or asks for) a lease: shown to operators when a resume is refused."""

    owner: str
    """An id (``domain.limits.ID_PATTERN``), unique per process: ``kind-host-pid-random``."""
    kind: str
    """``executor``, ``cli`` or ``library``."""
    host: str
    pid: int

    @classmethod
    def of_this_process(cls, kind: str, suffix: str) -> OwnerInfo:
        """This process as an owner of ``kind``; ``suffix`` (random) tells restarts apart."""
        host = _NOT_ID.sub("_", socket.gethostname())[:40] or "host"
        pid = os.getpid()
        return cls(f"{kind}-{host}-{pid}-{suffix[:8]}", kind, host, pid)

    def describe(self) -> str:
        return f"{self.owner} ({self.kind}, pid {self.pid} on {self.host})"


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: valid until ``ttl`` seconds after its last grant or renewal."""

    info: OwnerInfo
    epoch: int
    ttl: float

    @property
    def fence(self) -> Fence:
        return Fence(self.info.owner, self.epoch)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A renewal's answer: the cancellations requested (by any replica) of executions
    this lease owns since the last heartbeat."""

    cancel: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """A successful claim of an execution (see ``StateStore.claim``)."""

    previous_owner: str | None
    """The owner it was taken from (``None``: it had none)."""
    takeover: bool
    """The previous owner died holding it running (counted in ``takeovers``)."""
    takeovers: int
    """How many times an owner died holding it, this one included."""
    cancel_requested: bool = False
    """Its cancellation was requested (of a previous owner, or while it had none): the
    claimer ends it ``cancelled`` without running anything."""
