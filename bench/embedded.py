"""Embedded executor figures: base vs enhanced, 10- and 100-node workflows.

The enhanced executor runs with everything on: events published, checkpoints and
history persisted to a SQLite file (WAL), the emergency check before the order,
metrics, logs (at WARNING, so none are written on the happy path).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.workflows import trading_workflow
from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.app.infrastructure import Infrastructure, Settings
from tradeflow.engine.enhanced import EnhancedWorkflowExecutor
from tradeflow.engine.executor import WorkflowExecutor
from tradeflow.observability.logging import configure_logging

# Big enough that thousands of benchmark orders never run out of funds.
BALANCES = {"USDT": 1e15, "BTC": 1e9}


@dataclass(frozen=True, slots=True)
class Timing:
    median_us: float
    p99_us: float


async def measure(run: Callable[[], Awaitable[dict[str, Any]]], runs: int) -> Timing:
    """Median and p99 wall time of ``run()`` after a warm-up."""
    for _ in range(max(50, runs // 10)):
        await run()
    samples = []
    gc.collect()
    for _ in range(runs):
        start = time.perf_counter()
        result = await run()
        samples.append(time.perf_counter() - start)
        if result["status"] != "completed":
            raise RuntimeError(f"benchmark run did not complete: {result}")
    samples.sort()
    return Timing(statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6)


async def base_timing(nodes: int, runs: int) -> Timing:
    prices = ReplayPriceFeed()
    executor = WorkflowExecutor(
        trading_workflow(nodes),
        exchange=PaperExchange(prices, default_balances=BALANCES),
        prices=prices,
    )
    return await measure(executor.execute, runs)


async def enhanced_timing(
    nodes: int, runs: int, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> Timing:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            sqlite_path=str(Path(tmp) / "bench.db"),
            sqlite_synchronous=synchronous,
            log_level="warning",
        )
        prices = ReplayPriceFeed()
        async with await Infrastructure.create(
            "development",
            settings=settings,
            prices=prices,
            exchange=PaperExchange(prices, default_balances=BALANCES),
        ) as infra:
            executor = EnhancedWorkflowExecutor(trading_workflow(nodes), infra, f"bench{nodes}")
            return await measure(executor.execute, runs)


def row(label: str, timing: Timing, nodes: int) -> str:
    return (
        f"  {label:<34} {timing.median_us:10.1f} {timing.p99_us:10.1f} "
        f"{timing.median_us / nodes:12.2f}"
    )


async def run() -> None:
    configure_logging(json=True, level="warning")
    print("Embedded executor, one execution at a time (microseconds per execution)")
    print("  SQLite WAL synchronous=NORMAL, logs at WARNING, one market order per workflow")
    print(f"  {'':<34} {'median':>10} {'p99':>10} {'median/node':>12}")
    for nodes, runs in ((10, 3000), (100, 600)):
        base = await base_timing(nodes, runs)
        enhanced = await enhanced_timing(nodes, runs)
        overhead = Timing(enhanced.median_us - base.median_us, enhanced.p99_us - base.p99_us)
        print(f" {nodes}-node workflow")
        print(row("base WorkflowExecutor", base, nodes))
        print(row("EnhancedWorkflowExecutor", enhanced, nodes))
        print(row("enhanced - base", overhead, nodes))
    full = await enhanced_timing(10, 500, synchronous="FULL")
    print(" 10-node workflow, synchronous=FULL (each commit survives power loss)")
    print(row("EnhancedWorkflowExecutor", full, 10))
    print("  targets: enhanced - base <= 100 us per 10-node execution; base <= 10 us per node")


def main() -> None:
    asyncio.run(run())
