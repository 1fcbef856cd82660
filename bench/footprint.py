"""What one execution leaves on disk and in memory: bytes stored per 10-node execution.

- Embedded (what ``make run`` runs): the SQLite file (state, history and the paper
  ledger in one WAL database) after a checkpoint, grown by ``EXECUTIONS`` executions.
- Services: Redis ``used_memory`` (the state service's keys, the shared paper ledger,
  the emergency state) and the JetStream stream's bytes, grown by the same number of
  ``ExecuteWorkflow`` calls on a local stack.

Growth divided by executions, so the fixed costs (schemas, indexes' roots) do not count
and everything an execution adds does (its record, checkpoints, events, index entries,
its order in the ledger). The target is the issue's: <= 2 kB per 10-node execution in
SQLite and in Redis (JetStream is printed, with no target).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from pathlib import Path

import grpc
import nats
import redis

from bench.embedded import BALANCES, verdict
from bench.services import bench_stack
from bench.workflows import trading_workflow
from tradeflow.app.devstack import Stack
from tradeflow.infrastructure.factory import Infrastructure, Settings
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

__all__ = ["main"]

EXECUTIONS = 2000
TARGET_BYTES = 2048


def _sqlite_bytes(path: Path) -> int:
    """Bytes the database's pages hold (free pages left out), after a WAL checkpoint."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (
            db.execute(f"PRAGMA {pragma}").fetchone()[0]
            for pragma in ("page_count", "freelist_count", "page_size")
        )
    return int((pages - free) * size)


async def embedded_bytes(executions: int) -> float:
    """SQLite bytes per execution of the 10-node bench workflow."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "footprint.db"
        settings = Settings(sqlite_path=str(path), log_level="warning", paper_balances=BALANCES)
        async with await Infrastructure.create("development", settings=settings) as infra:
            executor = EnhancedWorkflowExecutor(trading_workflow(10), infra, "footprint")
            await executor.execute()
            before = _sqlite_bytes(path)
            for _ in range(executions):
                await executor.execute()
            after = _sqlite_bytes(path)
    return (after - before) / executions


async def service_bytes(stack: Stack, executions: int) -> tuple[float, float]:
    """Redis bytes and JetStream bytes per ``ExecuteWorkflow`` of the bench workflow."""
    request = pb.ExecuteWorkflowRequest(
        workflow_id="footprint", definition_json=json.dumps(trading_workflow(10))
    )
    env = stack.client_env()
    store = redis.Redis.from_url(env["TRADEFLOW_REDIS_URL"])
    nc = await nats.connect(env["TRADEFLOW_NATS_URL"])
    js = nc.jetstream()
    async with grpc.aio.insecure_channel(env["TRADEFLOW_EXECUTOR_ADDR"]) as channel:
        stub = pb_grpc.ExecutorServiceStub(channel)
        await stub.ExecuteWorkflow(request)
        memory = int(store.info("memory")["used_memory"])
        stream = (await js.stream_info("TRADEFLOW_EVENTS")).state.bytes
        for _ in range(executions):
            await stub.ExecuteWorkflow(request)
        memory = int(store.info("memory")["used_memory"]) - memory
        stream = (await js.stream_info("TRADEFLOW_EVENTS")).state.bytes - stream
    await nc.close()
    store.close()
    return memory / executions, stream / executions


def _line(what: str, value: float, target: float | None) -> str:
    judged = f"target <= {target:.0f} B   {verdict(value, target)}" if target else "(no target)"
    return f"  {what:<44} {value:8.0f} B per execution   {judged}"


def main() -> None:
    print(f"Stored per 10-node execution (growth over {EXECUTIONS} executions)")
    sqlite_bytes = asyncio.run(embedded_bytes(EXECUTIONS))
    print(_line("embedded, SQLite file (state + ledger)", sqlite_bytes, TARGET_BYTES))
    with tempfile.TemporaryDirectory() as tmp:
        stack = bench_stack(Path(tmp))
        stack.start()
        try:
            redis_bytes, stream_bytes = asyncio.run(service_bytes(stack, EXECUTIONS))
        finally:
            stack.stop()
    print(_line("services, Redis used_memory", redis_bytes, TARGET_BYTES))
    print(_line("services, JetStream stream", stream_bytes, None))
