"""Cost of one state write in production: ``python -m bench.state_service``.

Replays the two writes of a typical execution (:func:`bench.sqlite_write.typical_batches`:
the execution insert with 10 checkpoints and 19 events, then the final update with
1 checkpoint and 3 events), execution after execution, sequentially, and prints the
p50/p99 of each write:

- on :class:`~tradeflow.adapters.redis.state.RedisStateStore` directly;
- through the state service: :class:`~tradeflow.adapters.grpc.state_client.StateClient` ->
  gRPC -> ``python -m state_service`` (a real subprocess) -> the same store.

redis-server and the service run on free ports of this machine, in a temporary
directory, and are stopped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from bench.sqlite_write import time_typical_writes
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.devstack import ServerProcess, free_port, redis_process
from tradeflow.ports import StateStore

__all__ = ["WriteFigures", "main", "measure"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_FIRST_START = 1_795_689_105.0


@dataclass(frozen=True, slots=True)
class WriteFigures:
    """Microseconds per ``StateBatch`` write, p50 and p99."""

    write_p50_us: float
    """Every write (both kinds)."""
    write_p99_us: float
    start_p50_us: float
    """The execution's first write (insert, 10 checkpoints, 19 events)."""
    finish_p50_us: float
    """Its final write (update with result, 1 checkpoint, 3 events)."""


async def measure(store: StateStore, executions: int, warmup: int) -> WriteFigures:
    """Write ``warmup`` + ``executions`` typical executions to ``store``; time the last ones."""
    starts, finishes = await time_typical_writes(
        store, executions, warmup, first_start=_FIRST_START
    )
    both = starts + finishes
    return WriteFigures(
        statistics.median(both) / 1000,
        _p99(both) / 1000,
        statistics.median(starts) / 1000,
        statistics.median(finishes) / 1000,
    )


def _p99(samples: Sequence[int]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def _state_service(workdir: Path, redis_url: str) -> ServerProcess:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])
        ),
        "TRADEFLOW_STATE_ADDR": f"127.0.0.1:{port}",
        "TRADEFLOW_STATE_METRICS_PORT": str(free_port()),
        "TRADEFLOW_REDIS_URL": redis_url,
        "TRADEFLOW_REDIS_PREFIX": "bench-service",
        "TRADEFLOW_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "state_service"]
    return ServerProcess("state", argv, port, workdir, env=env)


async def _direct(redis_url: str, executions: int, warmup: int) -> WriteFigures:
    client = aioredis.from_url(redis_url)
    try:
        return await measure(RedisStateStore(client, prefix="bench-direct"), executions, warmup)
    finally:
        await client.aclose()


async def _through_service(address: str, executions: int, warmup: int) -> WriteFigures:
    client = StateClient(address)
    try:
        return await measure(client, executions, warmup)
    finally:
        await client.close()


def _line(name: str, f: WriteFigures) -> str:
    return (
        f"  {name:<18} per write p50 {f.write_p50_us:7.1f}   p99 {f.write_p99_us:7.1f}"
        f"   (first write p50 {f.start_p50_us:7.1f}, final write p50 {f.finish_p50_us:7.1f})"
    )


def main(executions: int = 3000, warmup: int = 300) -> None:
    """Print the figures of both paths."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        redis = redis_process(root / "redis", free_port()).start()
        try:
            direct = asyncio.run(_direct(redis.url, executions, warmup))
            service = _state_service(root / "state", redis.url).start()
            try:
                address = f"127.0.0.1:{service.port}"
                remote = asyncio.run(_through_service(address, executions, warmup))
            finally:
                service.stop()
        finally:
            redis.stop()
    print(f"state writes of a typical 10-node execution, {executions} executions (us)")
    print(_line("redis store", direct))
    print(_line("state service", remote))


if __name__ == "__main__":
    main()
