"""Service figures against a local stack (nats-server, redis-server and the three
services as processes on this machine, started on free ports and stopped after):

- gRPC ``ExecuteWorkflow`` of a 10-node workflow with one order: p50/p99 latency
  and executions per second, with 1 and with 16 concurrent clients (one executor
  process);
- how long after ``Halt`` returns the executors' local views refuse actions
  (4 watching views, the slowest one counted each time);
- what mutual TLS costs: ``ExecuteWorkflow`` by a bot over mTLS against the same call
  on a plaintext stack, interleaved one by one (two stacks side by side).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc

from bench.embedded import BALANCES, Timing
from bench.workflows import trading_workflow
from tradeflow.adapters.grpc.client import open_channel
from tradeflow.adapters.grpc.emergency_client import RemoteEmergencyControl
from tradeflow.adapters.grpc.security import TransportSecurity
from tradeflow.app.devstack import Stack
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.emergency import ScopeIds
from tradeflow.domain.principals import Principal, Role
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as epb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc as epb_grpc
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc

__all__ = ["main"]


async def execute_figures(address: str, clients: int, per_client: int) -> str:
    request = pb.ExecuteWorkflowRequest(
        workflow_id="bench", definition_json=json.dumps(trading_workflow(10))
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ExecutorServiceStub(channel)
        for _ in range(100):
            await stub.ExecuteWorkflow(request)
        latencies: list[float] = []

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                response = await stub.ExecuteWorkflow(request)
                latencies.append(time.perf_counter() - started)
                if response.execution.record.status != common_pb2.EXECUTION_STATUS_COMPLETED:
                    raise RuntimeError(f"benchmark execution ended {response.execution.record}")

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    t = Timing.of(latencies)
    return (
        f"  {clients:>2} client(s): p50 {t.median_us / 1e3:7.2f} ms   "
        f"p99 {t.p99_us / 1e3:7.2f} ms   {len(latencies) / elapsed:7.0f} executions/s"
    )


async def _until(view: RemoteEmergencyControl, *, halted: bool) -> None:
    # The hot-path check itself, asked again each time the view installs a snapshot.
    while (view.active_halt(ScopeIds(bot_id="bench-bot")) is None) == halted:
        await view.wait_for_change()


async def halt_figures(address: str, rounds: int, views: int) -> str:
    watchers = [
        await RemoteEmergencyControl.connect(address, clock=SystemClock(), id_factory=new_id)
        for _ in range(views)
    ]
    delays: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = epb_grpc.EmergencyServiceStub(channel)
        for _ in range(rounds):
            await stub.Halt(
                epb.HaltRequest(
                    scope=common_pb2.SCOPE_BOT, target="bench-bot", reason="bench", actor="bench"
                )
            )
            returned = time.perf_counter()
            slowest = 0.0
            for view in watchers:
                await _until(view, halted=True)
                slowest = time.perf_counter() - returned
            delays.append(slowest)
            await stub.Resume(
                epb.ResumeRequest(
                    scope=common_pb2.SCOPE_BOT, target="bench-bot", reason="bench", actor="bench"
                )
            )
            for view in watchers:
                await _until(view, halted=False)
    for view in watchers:
        await view.close()
    t = Timing.of(delays)
    return (
        f"  halt visible in all {views} views: p50 {t.median_us / 1e3:6.3f} ms   "
        f"p99 {t.p99_us / 1e3:6.3f} ms   ({rounds} halts)"
    )


async def tls_figures(plain: Stack, tls: Stack, rounds: int) -> str:
    """p50/p99 of ``ExecuteWorkflow`` over mutual TLS (as bot ``bench-bot``) and over
    plaintext, calls interleaved; the ratio of the medians."""
    bot = Principal(Role.BOT, "bench-bot")
    files = tls.identity_env(bot)
    security = TransportSecurity.from_files(
        files["TRADEFLOW_TLS_CA"], files["TRADEFLOW_TLS_CERT"], files["TRADEFLOW_TLS_KEY"]
    )
    request = pb.ExecuteWorkflowRequest(
        workflow_id="bench", bot_id=bot.name, definition_json=json.dumps(trading_workflow(10))
    )
    timings: dict[bool, list[float]] = {False: [], True: []}
    async with (
        open_channel(plain.client_env()["TRADEFLOW_EXECUTOR_ADDR"]) as plain_channel,
        open_channel(tls.client_env()["TRADEFLOW_EXECUTOR_ADDR"], security=security) as tls_channel,
    ):
        stubs = {
            False: pb_grpc.ExecutorServiceStub(plain_channel),
            True: pb_grpc.ExecutorServiceStub(tls_channel),
        }
        for round_ in range(100 + rounds):
            for secured in (round_ % 2 == 0, round_ % 2 == 1):
                started = time.perf_counter()
                await stubs[secured].ExecuteWorkflow(request)
                if round_ >= 100:
                    timings[secured].append(time.perf_counter() - started)
    over_tls, plaintext = Timing.of(timings[True]), Timing.of(timings[False])
    return (
        f"  mTLS p50 {over_tls.median_us / 1e3:6.2f} ms  p99 {over_tls.p99_us / 1e3:6.2f} ms;"
        f"  plaintext p50 {plaintext.median_us / 1e3:6.2f} ms  p99 {plaintext.p99_us / 1e3:6.2f} ms;"
        f"  ratio of medians {over_tls.median_us / plaintext.median_us:4.2f}  ({rounds} each)"
    )


async def run(stack: Stack) -> None:
    env = stack.client_env()
    print("Services on this machine (one process each; 2 cores shared with the clients)")
    print(" ExecuteWorkflow, 10-node workflow with one market order")
    print(await execute_figures(env["TRADEFLOW_EXECUTOR_ADDR"], 1, 1000))
    print(await execute_figures(env["TRADEFLOW_EXECUTOR_ADDR"], 16, 150))
    print(" Halt -> executors refuse actions (local views pushed by WatchState)")
    print(await halt_figures(env["TRADEFLOW_EMERGENCY_ADDR"], 300, 4))
    print("  targets: p50 <= 1 ms, p99 <= 3 ms, >= 1000 executions/s, halt visible <= 2 ms p99")


def bench_stack(workdir: Path, *, tls: bool = False) -> Stack:
    """The stack every service benchmark measures: quiet logs, funded paper balances."""
    return Stack(
        workdir,
        extra_env={
            "TRADEFLOW_LOG_LEVEL": "warning",
            "TRADEFLOW_PAPER_BALANCES": json.dumps(BALANCES),
        },
        tls=tls,
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = bench_stack(Path(tmp) / "plain")
        stack.start()
        try:
            asyncio.run(run(stack))
            secured = bench_stack(Path(tmp) / "tls", tls=True)
            secured.start()
            try:
                print(" ExecuteWorkflow over mutual TLS vs plaintext, interleaved (1 client)")
                print(asyncio.run(tls_figures(stack, secured, 500)))
            finally:
                secured.stop()
        finally:
            stack.stop()
