"""Embedded memory soak: RSS over back-to-back executions of the bench workflow.

Runs the 10-node bench workflow (:func:`bench.workflows.trading_workflow`) back to
back on what ``make run`` runs (``Infrastructure.create("development")``: a temp
SQLite WAL file holding events, checkpoints, history and the paper ledger; logs at
WARNING; the paper balances of :data:`bench.embedded.BALANCES`) for
``TRADEFLOW_SOAK_SECONDS`` (default 600). Prints the process's RSS at the start, at
half-time and at the end, and judges the growth over the second half against issue
12's target (<= 5%): the first half may fill bounded caches (SQLite's page cache, the
allocator's arenas); anything still growing after it grows without bound.

Beside the RSS it prints the Python heap (``sys.getallocatedblocks``): a structure
kept per execution shows there; a growth of the RSS alone is native (SQLite, the
allocator).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.embedded import BALANCES, verdict
from bench.workflows import trading_workflow
from tradeflow.infrastructure.factory import Infrastructure, Settings
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

TARGET_GROWTH_PCT = 5.0
"""Issue 12: RSS growth over the second half of the soak, at most."""
SAMPLES = 10
"""RSS samples printed over the soak (half-time is one of them)."""


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    executions: int
    rss_mb: float
    blocks: int
    """Python's allocated memory blocks (``sys.getallocatedblocks``)."""


def rss_mb() -> float:
    """This process's resident set, in MiB (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def sample(started: float, executions: int) -> Sample:
    gc.collect()
    return Sample(time.perf_counter() - started, executions, rss_mb(), sys.getallocatedblocks())


def files_size(directory: Path) -> int:
    """Bytes in the files of ``directory`` (the state file, its WAL and shared memory)."""
    return sum(path.stat().st_size for path in directory.iterdir())


def seconds() -> float:
    raw = os.environ.get("TRADEFLOW_SOAK_SECONDS", "600")
    try:
        value = float(raw)
    except ValueError:
        sys.exit(f"TRADEFLOW_SOAK_SECONDS: expected a number of seconds, found {raw!r}")
    if value <= 0:
        sys.exit(f"TRADEFLOW_SOAK_SECONDS: expected a number of seconds > 0, found {raw!r}")
    return value


async def soak(duration: float) -> tuple[list[Sample], int]:
    """Executions back to back for ``duration`` seconds: the RSS samples (start,
    ``SAMPLES`` evenly spaced, the last at the end) and the state file's size."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soak.db"
        settings = Settings(sqlite_path=str(path), log_level="warning", paper_balances=BALANCES)
        async with await Infrastructure.create("development", settings=settings) as infra:
            executor = EnhancedWorkflowExecutor(trading_workflow(10), infra, "soak")
            await executor.execute()  # imports and first-use caches are not growth
            executions = 0
            started = time.perf_counter()
            samples = [sample(started, 0)]
            for tick in range(1, SAMPLES + 1):
                until = started + duration * tick / SAMPLES
                while time.perf_counter() < until:
                    result = await executor.execute()
                    if result["status"] != "completed":
                        raise RuntimeError(f"soak execution did not complete: {result}")
                    executions += 1
                samples.append(sample(started, executions))
        size = files_size(Path(tmp))
    return samples, size


def report(samples: list[Sample], size: int) -> str:
    start, half, end = samples[0], samples[SAMPLES // 2], samples[-1]
    growth = (end.rss_mb - half.rss_mb) / half.rss_mb * 100
    lines = [f"  {'time s':>8} {'executions':>11} {'RSS MiB':>9} {'py blocks':>11}"]
    lines += [f"  {s.at_s:8.1f} {s.executions:11,} {s.rss_mb:9.1f} {s.blocks:11,}" for s in samples]
    runs = end.executions
    lines += [
        f"  RSS: start {start.rss_mb:.1f} MiB, half-time {half.rss_mb:.1f} MiB, "
        f"end {end.rss_mb:.1f} MiB",
        f"  Python heap over the second half: {end.blocks - half.blocks:+,} blocks",
        f"  {runs:,} executions ({runs / end.at_s:,.0f}/s); state file "
        f"{size / 1e6:,.0f} MB ({size / max(runs, 1):,.0f} B per execution)",
        f"  RSS growth over the second half {growth:+.1f}%   target <= "
        f"{TARGET_GROWTH_PCT:g}%   {verdict(growth, TARGET_GROWTH_PCT)}",
    ]
    return "\n".join(lines)


def main() -> None:
    duration = seconds()
    print(f"Embedded memory soak, 10-node workflow back to back for {duration:g} s")
    print("  (TRADEFLOW_SOAK_SECONDS), on Infrastructure.create('development')")
    samples, size = asyncio.run(soak(duration))
    print(report(samples, size))


if __name__ == "__main__":
    main()
