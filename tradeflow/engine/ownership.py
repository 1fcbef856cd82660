"""This process's lease on the state store: acquired once, renewed by heartbeat, checked
before every action.

A :class:`LeaseKeeper` is the owner every durable execution of a process runs under
(:mod:`tradeflow.domain.ownership`). It renews the lease every third of its ttl. The
store decides whether the lease lives (every fenced write checks it there, atomically);
the keeper only keeps a conservative local deadline, the moment the lease was last
*sent* for renewal plus its ttl, so that an action is refused locally as soon as the
store may already have given the lease away. A pause (SIGSTOP, a long GC, a frozen VM)
past that deadline therefore costs the process its actions before its first write
finds out. When a renewal answers ``LeaseLost`` the keeper takes a new lease (a new
epoch) for executions started from then on; executions begun under the lost one stop
at their next write or action, and a live owner takes them over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from tradeflow.domain.emergency import InFlightAction
from tradeflow.domain.errors import LeaseLost, describe
from tradeflow.domain.ownership import Fence, Lease, OwnerInfo

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from tradeflow.domain.clock import Clock
    from tradeflow.ports import StateStore

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Holds ``info``'s lease on ``store`` for ``ttl`` seconds at a time."""

    __slots__ = (
        "_clock",
        "_deadline",
        "_heartbeat",
        "_in_flight",
        "_lease",
        "_log",
        "_lost",
        "_starting",
        "_store",
        "_task",
        "_wake",
        "_watchers",
        "info",
        "ttl",
    )

    def __init__(
        self,
        store: StateStore,
        info: OwnerInfo,
        *,
        ttl: float,
        clock: Clock,
        log: FilteringBoundLogger,
    ) -> None:
        self._store = store
        self.info = info
        self.ttl = ttl
        self._clock = clock
        self._log = log
        self._lease: Lease | None = None
        self._deadline = 0.0
        self._lost: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._heartbeat = ttl / 3
        self._watchers: dict[str, Callable[[], None]] = {}
        self._in_flight: dict[tuple[str, str], InFlightAction] = {}

    @property
    def lease(self) -> Lease:
        """The current lease; raises ``LeaseLost`` before :meth:`start` or after :meth:`stop`."""
        if self._lease is None:
            raise LeaseLost(self.info.owner, 0, why="no lease held (not started, or stopped)")
        return self._lease

    @property
    def started(self) -> bool:
        """The heartbeat runs and the current lease has not been given up."""
        lease = self._lease
        return self._task is not None and lease is not None and lease.epoch not in self._lost

    @property
    def deadline(self) -> float:
        """The keeper clock's monotonic time from which :meth:`check` refuses the lease."""
        return self._deadline

    async def start(self) -> Lease:
        """Acquire the lease and start the heartbeat; idempotent, and concurrent callers
        share one acquisition. Called by the first execution (a process that runs none,
        say ``tradeflow halt``, never takes a lease)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            lease = self._lease
            if lease is not None and lease.epoch in self._lost:
                # Given up (past its deadline, or lost), not yet replaced: no new work under it.
                await self._release(lease)
                self._lease = None
            if self._lease is None:
                await self._acquire()
            if self._task is None:
                self._wake = asyncio.Event()
                self._task = asyncio.create_task(self._beat(), name=f"lease {self.info.owner}")
        return self.lease

    def check(self, epoch: int) -> None:
        """Raise ``LeaseLost`` unless the lease of ``epoch`` is the current one and within
        its local deadline: called right before each action's side effect. A lease past
        its deadline is given up for good (released, and a new one taken), so the
        executions refused here become orphans that a live owner resumes, rather than
        stay ``running`` under a lease the store still thinks live."""
        lease = self._lease
        if lease is None or lease.epoch != epoch or epoch in self._lost:
            raise LeaseLost(self.info.owner, epoch, why="superseded")
        if self._clock.monotonic() >= self._deadline:
            self._lost.add(epoch)
            if self._wake is not None:
                self._wake.set()
            raise LeaseLost(
                self.info.owner, epoch, why="not renewed within its ttl (paused or cut off)"
            )

    def suspect(self, epoch: int) -> None:
        """A write under ``epoch`` was refused: renew now rather than at the next beat, so
        a lease revoked or lost in the store is replaced at once (the renewal tells)."""
        lease = self._lease
        if lease is not None and lease.epoch == epoch and self._wake is not None:
            self._wake.set()

    def watch(self, execution_id: str, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` when another process requests the cancellation of
        ``execution_id`` (it comes with a heartbeat) until :meth:`unwatch`."""
        self._watchers[execution_id] = cancel

    def unwatch(self, execution_id: str) -> None:
        self._watchers.pop(execution_id, None)

    def acting(self, execution_id: str, node_id: str, client_order_id: str) -> None:
        """An action's intent committed: it is in flight until :meth:`acted`."""
        self._in_flight[execution_id, node_id] = InFlightAction(
            self.info.owner, execution_id, node_id, client_order_id
        )

    def acted(self, execution_id: str, node_id: str) -> None:
        """The action's outcome is recorded (or its run ended)."""
        self._in_flight.pop((execution_id, node_id), None)

    def acknowledgement(self) -> tuple[Fence, tuple[InFlightAction, ...]] | None:
        """What this process tells a halt barrier: its lease and its actions in flight;
        ``None`` while it holds no lease (it runs no execution, so it owes no answer)."""
        if not self.started:
            return None
        return self.lease.fence, tuple(self._in_flight.values())

    async def stop(self, *, release: bool = True) -> None:
        """Stop the heartbeat and (unless ``release`` is false) end the lease now, so this
        owner's unfinished executions are orphans at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease, self._lease = self._lease, None
        if lease is not None and release:
            await self._release(lease)

    async def _release(self, lease: Lease) -> None:
        try:
            await self._store.release_lease(lease)
        except Exception as exc:
            # The lease then lapses by itself within its ttl.
            self._log.warning("lease.release_failed", owner=lease.info.owner, error=describe(exc))

    async def _acquire(self) -> None:
        sent = self._clock.monotonic()
        self._lease = await self._store.acquire_lease(self.info, self.ttl)
        self._deadline = sent + self.ttl

    async def _beat(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            # Not wait_for: on 3.11 it swallows a cancel (stop()) that arrives as the
            # wake-up completes, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await wake.wait()
            wake.clear()
            lease = self._lease
            if lease is None:
                return
            if lease.epoch in self._lost:
                # Past its local deadline: actions were refused under it; end it in the
                # store too, so its executions become orphans now.
                self._log.error("lease.expired_locally", owner=lease.info.owner, epoch=lease.epoch)
                await self._release(lease)
                await self._reacquire()
                continue
            await self._renew(lease)

    async def _renew(self, lease: Lease) -> None:
        sent = self._clock.monotonic()
        try:
            heartbeat = await self._store.renew_lease(lease)
        except LeaseLost as exc:
            self._lost.add(lease.epoch)
            self._log.error(
                "lease.lost", owner=lease.info.owner, epoch=lease.epoch, error=exc.message
            )
            await self._reacquire()
            return
        except Exception as exc:
            # The store unreachable, its file locked past its busy timeout...: keep
            # trying (nothing else would renew the lease); actions stop at the deadline.
            self._log.warning("lease.renew_failed", owner=lease.info.owner, error=describe(exc))
            return
        if self._lease is lease and lease.epoch not in self._lost:
            self._deadline = sent + self.ttl
        for execution_id in heartbeat.cancel:
            cancel = self._watchers.get(execution_id)
            if cancel is not None:
                cancel()

    async def _reacquire(self) -> None:
        try:
            await self._acquire()
        except Exception as exc:
            self._log.warning("lease.acquire_failed", owner=self.info.owner, error=describe(exc))
        else:
            self._log.info("lease.acquired", owner=self.info.owner, epoch=self.lease.epoch)
