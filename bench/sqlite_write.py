"""Cost of the embedded state store's write path: ``python -m bench.sqlite_write``.

Replays, execution after execution, the two writes the enhanced executor's journal
makes for the 10-node trading workflow of :mod:`bench.workflows` (shapes taken from
a real run): before the order, the execution insert with 10 checkpoints (9 completed
nodes and the order's intent) and 19 events; at the end, the final execution update
with its result, the order's checkpoint and 3 events. The file is a real WAL file
with its background checkpointer running, as in production. Back-to-back writes
never leave the log idle long enough to restart by itself, so the writer's own
RESTART checkpoint at the WAL's hard bound (about every 450 executions here) and
the background checkpoints running alongside land in the tail.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from bench.embedded import Timing
from bench.workflows import trading_workflow
from tradeflow.adapters.sqlite.database import open_database
from tradeflow.adapters.sqlite.state import SQLiteStateStore
from tradeflow.domain.records import (
    Checkpoint,
    CheckpointState,
    Event,
    EventType,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    StateBatch,
)
from tradeflow.ports import StateStore

__all__ = [
    "ListingTimings",
    "WriteTimings",
    "measure",
    "measure_listing",
    "time_typical_writes",
    "typical_batches",
]

_DEFINITION = trading_workflow(10)
_QUOTE = {"price": 59705.0, "bid": 59700.0, "ask": 59710.0, "spread": 10.0, "timestamp": 0.0}
_OUTPUTS: dict[str, dict[str, Any]] = {
    "size": {"qty": 0.001},
    "quote": _QUOTE,
    "c0_0": {"triggered": True, "value": 59705.0},
    "c0_1": {"result": True},
    "c0_2": {"triggered": True, "value": 59705.0},
    "c0_3": {"result": True},
    "c0_4": {"triggered": True, "value": 59705.0},
    "notional": {"ok": True, "value": 59.705, "threshold": 1000000.0},
    "go": {"result": True},
}


@dataclass(frozen=True, slots=True)
class WriteTimings:
    """Per ``StateBatch`` write of the last ``executions`` of a run."""

    start: Timing
    """The write before the order: execution insert, 10 checkpoints, 19 events."""
    finish: Timing
    """The final write: execution update with result, 1 checkpoint, 3 events."""
    execution: Timing
    """Both writes of one execution."""
    execution_mean_us: float
    """Includes the WAL checkpoints (see the module docstring), which the median hides."""

    def lines(self) -> list[str]:
        return [
            f"  start write   median {self.start.median_us:7.1f}   p99 {self.start.p99_us:7.1f}",
            f"  finish write  median {self.finish.median_us:7.1f}   p99 {self.finish.p99_us:7.1f}",
            f"  per execution median {self.execution.median_us:7.1f}   "
            f"p99 {self.execution.p99_us:7.1f}   mean {self.execution_mean_us:7.1f}",
        ]


def typical_batches(execution_id: str, started_at: float) -> tuple[StateBatch, StateBatch]:
    """The two batches the journal writes for one run of the 10-node trading workflow."""
    at = started_at
    sequence = 0

    def event(type_: str, node_id: str | None, data: dict[str, Any]) -> Event:
        nonlocal sequence
        sequence += 1
        return Event(
            type_,
            f"{execution_id}-{sequence}",
            sequence,
            at,
            execution_id,
            execution_id,
            "wf",
            None,
            None,
            node_id,
            data,
        )

    record = ExecutionRecord(
        execution_id=execution_id,
        workflow_id="wf",
        status=ExecutionStatus.RUNNING,
        started_at=started_at,
        definition=_DEFINITION,
        correlation_id=execution_id,
    )
    events = [event(EventType.EXECUTION_STARTED, None, {})]
    checkpoints = []
    for node_id, outputs in _OUTPUTS.items():
        events.append(event(EventType.NODE_STARTED, node_id, {}))
        events.append(
            event(EventType.NODE_COMPLETED, node_id, {"outputs": outputs, "duration_ms": 0.0123})
        )
        checkpoints.append(
            Checkpoint(execution_id, node_id, CheckpointState.COMPLETED, at, outputs)
        )
    order = {"client_order_id": f"{execution_id}:buy"}
    checkpoints.append(Checkpoint(execution_id, "buy", CheckpointState.INTENT, at, order))
    start = StateBatch(record, tuple(checkpoints), tuple(events))

    filled: dict[str, Any] = {
        "order_id": "74643ee6864c4df4b8b0aaf2fe1ddbaf",
        **order,
        "status": "filled",
        "filled_quantity": 0.001,
        "avg_price": 59710.0,
    }
    result: dict[str, Any] = {
        "status": "completed",
        "execution_id": execution_id,
        "workflow_id": "wf",
        "correlation_id": execution_id,
        "results": {**_OUTPUTS, "buy": filled},
        "errors": {},
        "skipped": [],
        "error": None,
        "started_at": "2026-11-26T10:31:45.246338Z",
        "finished_at": "2026-11-26T10:31:45.247652Z",
        "duration_ms": 1.31,
    }
    final = ExecutionRecord(
        execution_id=execution_id,
        workflow_id="wf",
        status=ExecutionStatus.COMPLETED,
        started_at=started_at,
        definition=_DEFINITION,
        correlation_id=execution_id,
        finished_at=at + 0.0013,
        result=result,
    )
    finish = StateBatch(
        final,
        (Checkpoint(execution_id, "buy", CheckpointState.COMPLETED, at, filled),),
        (
            event(EventType.NODE_STARTED, "buy", {}),
            event(EventType.NODE_COMPLETED, "buy", {"outputs": filled, "duration_ms": 0.79}),
            event(EventType.EXECUTION_COMPLETED, None, {"status": "completed", "duration_ms": 1.3}),
        ),
    )
    return start, finish


def measure(
    executions: int = 5000,
    *,
    warmup: int = 500,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
) -> WriteTimings:
    """Time typical executions on a fresh WAL file (see :func:`time_typical_writes`)."""
    with tempfile.TemporaryDirectory() as directory:
        conn = open_database(Path(directory) / "bench.db", synchronous=synchronous)
        try:
            return asyncio.run(time_typical_writes(SQLiteStateStore(conn), executions, warmup))
        finally:
            conn.close()


async def time_typical_writes(store: StateStore, executions: int, warmup: int) -> WriteTimings:
    """Write ``warmup`` + ``executions`` typical executions (start and finish batch each)
    to ``store``; time the last ``executions`` of them."""
    starts: list[float] = []
    finishes: list[float] = []
    ids = random.Random(0)
    for i in range(warmup + executions):
        # Random ids, like the executor's uuid4 ones: they land anywhere in id indexes.
        start, finish = typical_batches(f"{ids.getrandbits(128):032x}", 1_795_689_105.0 + i)
        t0 = perf_counter()
        await store.write(start)
        t1 = perf_counter()
        await store.write(finish)
        t2 = perf_counter()
        if i >= warmup:
            starts.append(t1 - t0)
            finishes.append(t2 - t1)
    both = [a + b for a, b in zip(starts, finishes, strict=True)]
    return WriteTimings(
        Timing.of(starts), Timing.of(finishes), Timing.of(both), statistics.fmean(both) * 1e6
    )


@dataclass(frozen=True, slots=True)
class ListingTimings:
    """``list_executions`` of a page of 1,000 out of ``executions`` stored ones (ms)."""

    executions: int
    newest: Timing
    """The newest page, no filter."""
    by_workflow: Timing
    """The newest page of one workflow (half of them)."""
    no_match: Timing
    """A status nobody has (``halted``): an empty page."""

    def lines(self) -> list[str]:
        return [
            f"  listing 1,000 of {self.executions:,} executions (ms): "
            f"newest median {self.newest.median_us / 1000:.1f} p99 {self.newest.p99_us / 1000:.1f}"
            f"; one workflow median {self.by_workflow.median_us / 1000:.1f}"
            f"; status with no match median {self.no_match.median_us / 1000:.3f}",
        ]


def measure_listing(executions: int = 100_000, *, repeat: int = 20) -> ListingTimings:
    """Store ``executions`` final records (typical, with their result; journals left out,
    as listing never reads them), in groups of 1,000 per ``write_many``, then time pages."""
    with tempfile.TemporaryDirectory() as directory:
        conn = open_database(Path(directory) / "bench.db")
        try:
            return asyncio.run(_time_listing(SQLiteStateStore(conn), executions, repeat))
        finally:
            conn.close()


async def _time_listing(store: SQLiteStateStore, executions: int, repeat: int) -> ListingTimings:
    ids = random.Random(1)
    group: list[StateBatch] = []
    for i in range(executions):
        _, finish = typical_batches(f"{ids.getrandbits(128):032x}", 1_795_689_105.0 + i)
        assert finish.execution is not None
        record = finish.execution
        if i % 2:
            record = replace(record, workflow_id="other")
        group.append(StateBatch(record))
        if len(group) == 1000:
            await store.write_many(group)
            group.clear()
    if group:
        await store.write_many(group)

    async def timed(query: ExecutionQuery) -> Timing:
        samples = []
        for _ in range(repeat):
            t0 = perf_counter()
            await store.list_executions(query)
            samples.append(perf_counter() - t0)
        return Timing.of(samples)

    return ListingTimings(
        executions,
        await timed(ExecutionQuery(limit=1000)),
        await timed(ExecutionQuery(workflow_id="wf", limit=1000)),
        await timed(ExecutionQuery(status=ExecutionStatus.HALTED, limit=1000)),
    )


def main() -> None:
    """Print the timings for synchronous=NORMAL."""
    print("sqlite state store, 10-node execution, synchronous=NORMAL (us)")
    print("\n".join(measure().lines()))
    print("\n".join(measure_listing().lines()))


if __name__ == "__main__":
    main()
