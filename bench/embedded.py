"""Embedded executor figures: base vs enhanced, 10- and 100-node workflows.

The enhanced executor runs on what ``make run`` runs (``Infrastructure.create(
"development")``: events, checkpoints, history and the paper ledger in one SQLite
WAL file, the emergency check, metrics, logs at WARNING); the base one on its own
in-memory paper exchange. Through the public API only, so older trees run it too.

Both run in one process, interleaved: each round runs ``BATCH`` executions of one,
then of the other, which goes first next round (after every single execution, each
evicts the other from the caches: +15% on base). The overhead is the median and p99
of ``enhanced - base`` between the i-th executions of a round: one distribution of
the same rounds (a difference of p99s subtracts unrelated tails; a ratio does not
speak to the target, which is in microseconds).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.workflows import trading_workflow
from tradeflow.infrastructure.factory import Infrastructure, Settings
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor
from tradeflow.workflow.executor import WorkflowExecutor

# Big enough that thousands of benchmark orders never run out of funds.
BALANCES = {"USDT": 1e15, "BTC": 1e9}
BATCH = 10


def verdict(value: float, target: float, *, at_least: bool = False) -> str:
    """``ok`` when ``value`` is at most ``target`` (``at_least``: at least), else
    ``MISSED``."""
    return "ok" if (value >= target if at_least else value <= target) else "MISSED"


@dataclass(frozen=True, slots=True)
class Timing:
    median_us: float
    p99_us: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        ordered = sorted(seconds)
        return cls(statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.99)] * 1e6)


@dataclass(frozen=True, slots=True)
class Paired:
    """Per-execution timings of the same interleaved rounds."""

    base: Timing
    enhanced: Timing
    overhead: Timing


async def _timed(run: Callable[[], Awaitable[dict[str, Any]]]) -> float:
    start = time.perf_counter()
    result = await run()
    elapsed = time.perf_counter() - start
    if result["status"] != "completed":
        raise RuntimeError(f"benchmark run did not complete: {result}")
    return elapsed


async def paired_timings(
    nodes: int, rounds: int, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> Paired:
    """``rounds`` interleaved rounds of ``BATCH`` executions of each executor, after a
    warm-up."""
    base_s: list[float] = []
    enhanced_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            sqlite_path=str(Path(tmp) / "bench.db"),
            sqlite_synchronous=synchronous,
            log_level="warning",
            paper_balances=BALANCES,
        )
        async with await Infrastructure.create("development", settings=settings) as infra:
            prices = settings.price_feed(infra.clock)
            async with WorkflowExecutor(
                trading_workflow(nodes),
                exchange=settings.paper_exchange(prices, clock=infra.clock, ids=infra.id_factory),
                prices=prices,
            ) as base:
                enhanced = EnhancedWorkflowExecutor(trading_workflow(nodes), infra, f"bench{nodes}")
                turns = ((base.execute, base_s), (enhanced.execute, enhanced_s))
                for round_ in range(-max(5, rounds // 10), rounds):
                    if round_ == 0:  # the warm-up is over
                        gc.collect()
                        base_s.clear()
                        enhanced_s.clear()
                    for execute, samples in turns if round_ % 2 else reversed(turns):
                        samples.extend([await _timed(execute) for _ in range(BATCH)])
    return Paired(
        Timing.of(base_s),
        Timing.of(enhanced_s),
        Timing.of([e - b for e, b in zip(enhanced_s, base_s, strict=True)]),
    )


def row(label: str, timing: Timing, nodes: int) -> str:
    return (
        f"  {label:<34} {timing.median_us:10.1f} {timing.p99_us:10.1f} "
        f"{timing.median_us / nodes:12.2f}"
    )


async def run() -> None:
    print("Embedded executor, one execution at a time (microseconds per execution)")
    print("  SQLite WAL synchronous=NORMAL, logs at WARNING, one market order per workflow;")
    print("  base and enhanced interleaved round by round in this process")
    print(f"  {'':<34} {'median':>10} {'p99':>10} {'median/node':>12}")
    for nodes, rounds in ((10, 300), (100, 60)):
        timings = await paired_timings(nodes, rounds)
        print(f" {nodes}-node workflow, {rounds * BATCH} executions of each")
        print(row("base WorkflowExecutor", timings.base, nodes))
        print(row("EnhancedWorkflowExecutor", timings.enhanced, nodes))
        print(row("enhanced - base, per round", timings.overhead, nodes))
    full = await paired_timings(10, 50, synchronous="FULL")
    print(" 10-node workflow, synchronous=FULL (each commit survives power loss)")
    print(row("EnhancedWorkflowExecutor", full.enhanced, 10))
    print(row("enhanced - base, per round", full.overhead, 10))
    print("  targets: enhanced - base <= 100 us per 10-node execution; base <= 10 us per node")


def main() -> None:
    asyncio.run(run())
