"""Cost of one state write in production: ``python -m bench.state_service``.

Replays the two writes of a typical execution (:func:`bench.sqlite_write.typical_batches`:
the execution insert with 10 checkpoints and 19 events, then the final update with
1 checkpoint and 3 events), execution after execution, sequentially, and prints the
median/p99 of each write:

- on :class:`~tradeflow.adapters.redis.state.RedisStateStore` directly;
- through the state service: :class:`~tradeflow.adapters.grpc.state_client.StateClient` ->
  gRPC -> ``python -m state_service`` (a real subprocess) -> the same store.

It also prints the store's footprint (``MEMORY USAGE`` of every key under its prefix,
its shared streams and indexes included, divided by the executions written; target
<= 2 kB), split by kind of key (the part of its name after the prefix: ``execution``
hashes, ``data`` journals, ``index`` sorted sets, the ``events`` stream...), and Redis's
own time per write script (``INFO commandstats``: ``usec_per_call`` of ``EVALSHA``) with
the commands the scripts ran per execution.

redis-server and the service run on free ports of this machine, in a temporary
directory, and are stopped afterwards.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from bench.sqlite_write import WriteTimings, time_typical_writes
from tradeflow.adapters.grpc.state_client import StateClient
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.app.devstack import ServerProcess, free_port, redis_process, service_process

__all__ = ["main"]


def _state_service(workdir: Path, redis_url: str) -> ServerProcess:
    env = {
        "TRADEFLOW_STATE_METRICS_PORT": str(free_port()),
        "TRADEFLOW_REDIS_URL": redis_url,
        "TRADEFLOW_REDIS_PREFIX": "bench-service",
        "TRADEFLOW_LOG_LEVEL": "warning",
        # Measured against a plaintext server: the store's cost, not the handshake's.
        "TRADEFLOW_GRPC_PLAINTEXT": "true",
    }
    return service_process("state", free_port(), workdir, env)


FOOTPRINT_TARGET_BYTES = 2048


async def _direct(redis_url: str, executions: int, warmup: int) -> tuple[WriteTimings, str]:
    """The timings on the store, and the lines of its footprint and script time."""
    client = aioredis.from_url(redis_url)
    try:
        await client.config_resetstat()
        store = RedisStateStore(client, prefix="bench-direct")
        timings = await time_typical_writes(store, executions, warmup)
        stats = await client.info("commandstats")
        kinds: dict[str, int] = {}
        async for key in client.scan_iter(match="bench-direct:*", count=1000):
            kind = key.decode().split(":")[1]
            kinds[kind] = kinds.get(kind, 0) + int(await client.memory_usage(key, samples=0) or 0)
    finally:
        await client.aclose()
    written = executions + warmup
    per_execution = sum(kinds.values()) / written
    verdict = "met" if per_execution <= FOOTPRINT_TARGET_BYTES else "MISSED"
    script = stats.get("cmdstat_evalsha", {})
    split = ", ".join(
        f"{kind} {size / written:.0f}"
        for kind, size in sorted(kinds.items(), key=lambda item: -item[1])
        if size / written >= 1
    )
    commands = {
        name.removeprefix("cmdstat_"): int(values.get("calls", 0))
        for name, values in stats.items()
        if name.startswith("cmdstat_") and name not in ("cmdstat_evalsha", "cmdstat_info")
    }
    ran = ", ".join(
        f"{name} {calls / written:.1f}"
        for name, calls in sorted(commands.items(), key=lambda item: -item[1])
        if calls / written >= 0.5
    )
    return timings, (
        f" redis store footprint {per_execution:8.0f} bytes per execution "
        f"(target <= {FOOTPRINT_TARGET_BYTES}: {verdict})\n"
        f"  by key kind (bytes per execution): {split}\n"
        f" redis time per write script {float(script.get('usec_per_call', 0.0)):6.1f} us "
        f"({script.get('calls', 0)} calls)\n"
        f"  commands per execution: {ran}"
    )


async def _through_service(address: str, executions: int, warmup: int) -> WriteTimings:
    client = StateClient(address)
    try:
        return await time_typical_writes(client, executions, warmup)
    finally:
        await client.close()


def main(executions: int = 3000, warmup: int = 300) -> None:
    """Print the figures of both paths."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        redis = redis_process(root / "redis", free_port()).start()
        try:
            direct, store_lines = asyncio.run(_direct(redis.url, executions, warmup))
            service = _state_service(root / "state", redis.url).start()
            try:
                address = f"127.0.0.1:{service.port}"
                remote = asyncio.run(_through_service(address, executions, warmup))
            finally:
                service.stop()
        finally:
            redis.stop()
    print(f"state writes of a typical 10-node execution, {executions} executions (us)")
    for name, timings in (("redis store", direct), ("state service", remote)):
        print(f" {name}")
        print("\n".join(timings.lines()))
    print(store_lines)


if __name__ == "__main__":
    main()
