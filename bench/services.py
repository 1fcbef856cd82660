"""Service figures against a local stack (nats-server, redis-server and the three
services as processes on this machine, started on free ports and stopped after), over
mutual TLS as the services are by default (the caller a bot; :mod:`bench.barrier`
measures ``Halt``):

- gRPC ``ExecuteWorkflow`` of a 10-node workflow with one order, 1 client, interleaved
  call by call with a bare ``grpc.aio`` echo of the same payload over mutual TLS too
  (:mod:`bench.echo`, the floor): p50/p99 of both and their ratios;
- 16 concurrent clients: executions per second through one executor process, and the
  CPU every process of the stack spent per execution (from ``/proc``);
- what mutual TLS costs: ``ExecuteWorkflow`` by a bot over mTLS against the same call
  on a plaintext stack, interleaved one by one (two stacks side by side).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.echo import METHOD as ECHO_METHOD
from bench.embedded import BALANCES, Timing, verdict
from bench.workflows import trading_workflow
from tradeflow.adapters.grpc.client import open_channel
from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.app.devstack import ServerProcess, Stack, free_port
from tradeflow.domain.principals import Principal, Role
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc

__all__ = ["main"]


BOT: Final = Principal(Role.BOT, "bench-bot")


def _request() -> pb.ExecuteWorkflowRequest:
    return pb.ExecuteWorkflowRequest(
        workflow_id="bench", bot_id=BOT.name, definition_json=json.dumps(trading_workflow(10))
    )


def security_of(stack: Stack, principal: Principal | None) -> TransportSecurity:
    """The certificate ``principal`` calls ``stack`` with (plaintext for a plaintext stack)."""
    files = stack.identity_env(principal)
    if not files:
        return PLAINTEXT
    return TransportSecurity.from_files(
        files["TRADEFLOW_TLS_CA"], files["TRADEFLOW_TLS_CERT"], files["TRADEFLOW_TLS_KEY"]
    )


def _completed(response: pb.ExecuteWorkflowResponse) -> None:
    if response.execution.record.status != common_pb2.EXECUTION_STATUS_COMPLETED:
        raise RuntimeError(f"benchmark execution ended {response.execution.record}")


async def floor_figures(
    address: str, echo_address: str, rounds: int, security: TransportSecurity
) -> str:
    """``ExecuteWorkflow`` against the echo floor, one call of each per round (which goes
    first alternates), after a warm-up; the targets are ratios of the same run."""
    request = _request()
    payload = request.SerializeToString()
    timings: dict[str, list[float]] = {"execute": [], "echo": []}
    async with (
        open_channel(address, security=security) as channel,
        open_channel(echo_address, security=security) as echo_channel,
    ):
        stub = pb_grpc.ExecutorServiceStub(channel)
        echo = echo_channel.unary_unary(ECHO_METHOD)
        calls = {"execute": lambda: stub.ExecuteWorkflow(request), "echo": lambda: echo(payload)}
        for round_ in range(100 + rounds):
            for name in ("execute", "echo") if round_ % 2 else ("echo", "execute"):
                started = time.perf_counter()
                reply = await calls[name]()
                elapsed = time.perf_counter() - started
                if name == "execute":
                    _completed(reply)
                if round_ >= 100:
                    timings[name].append(elapsed)
    run, floor = Timing.of(timings["execute"]), Timing.of(timings["echo"])
    p50, p99 = run.median_us / floor.median_us, run.p99_us / floor.p99_us
    return (
        f"  ExecuteWorkflow p50 {run.median_us / 1e3:6.2f} ms  p99 {run.p99_us / 1e3:6.2f} ms;"
        f"  echo p50 {floor.median_us / 1e3:5.2f} ms  p99 {floor.p99_us / 1e3:5.2f} ms"
        f"  ({rounds} each)\n"
        f"  p50 {p50:5.1f}x the echo   target <= 3x   {verdict(p50, 3)}\n"
        f"  p99 {p99:5.1f}x the echo   target <= 5x   {verdict(p99, 5)}"
    )


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        # Fields 14 and 15 (utime, stime) of /proc/<pid>/stat, after the command's ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def load_figures(
    stack: Stack, clients: int, per_client: int, security: TransportSecurity
) -> str:
    """Executions per second with ``clients`` concurrent clients, and the CPU the whole
    stack (services, NATS, Redis) spent per execution meanwhile."""
    request = _request()
    pids = [p.pid for p in (stack.nats, stack.redis, *stack.processes.values()) if p.pid]
    latencies: list[float] = []
    address = stack.client_env()["TRADEFLOW_EXECUTOR_ADDR"]
    async with open_channel(address, security=security) as ch:
        stub = pb_grpc.ExecutorServiceStub(ch)
        for _ in range(100):
            _completed(await stub.ExecuteWorkflow(request))

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                _completed(await stub.ExecuteWorkflow(request))
                latencies.append(time.perf_counter() - started)

        cpu, started = _cpu_seconds(pids), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds(pids) - cpu
    rate, per_execution_ms = len(latencies) / elapsed, cpu / len(latencies) * 1e3
    t = Timing.of(latencies)
    return (
        f"  {clients} clients: p50 {t.median_us / 1e3:6.2f} ms  p99 {t.p99_us / 1e3:6.2f} ms\n"
        f"  {rate:6.0f} executions/s      target >= 1000/s   "
        f"{verdict(rate, 1000, at_least=True)}\n"
        f"  {per_execution_ms:6.2f} ms CPU/execution (all {len(pids)} processes)   "
        f"target <= 2 ms   {verdict(per_execution_ms, 2)}"
    )


async def tls_figures(plain: Stack, tls: Stack, rounds: int) -> str:
    """p50/p99 of ``ExecuteWorkflow`` over mutual TLS (as bot ``bench-bot``) and over
    plaintext, calls interleaved; the ratio of the medians."""
    security = security_of(tls, BOT)
    request = _request()
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


async def run(stack: Stack, echo_address: str) -> None:
    env = stack.client_env()
    bot = security_of(stack, BOT)
    print(
        "Services on this machine (one process each; 2 cores shared with the clients;"
        " mutual TLS, a bot calling)"
    )
    print(" ExecuteWorkflow, 10-node workflow with one market order, 1 client, vs the floor")
    print(await floor_figures(env["TRADEFLOW_EXECUTOR_ADDR"], echo_address, 1000, bot))
    print(" ExecuteWorkflow under load (one executor process)")
    print(await load_figures(stack, 16, 150, bot))


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
        stack = bench_stack(Path(tmp) / "tls", tls=True)
        echo_port = free_port()
        files = stack.identity_env(None)  # a serving certificate, as the services have
        echo = ServerProcess(
            "echo",
            [
                sys.executable,
                "-m",
                "bench.echo",
                str(echo_port),
                *(files[f"TRADEFLOW_TLS_{part}"] for part in ("CA", "CERT", "KEY")),
            ],
            echo_port,
            Path(tmp),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        try:
            stack.start()
            echo.start()
            asyncio.run(run(stack, f"127.0.0.1:{echo_port}"))
            plain = bench_stack(Path(tmp) / "plain")
            plain.start()
            try:
                print(" ExecuteWorkflow over mutual TLS vs plaintext, interleaved (1 client)")
                print(asyncio.run(tls_figures(plain, stack, 500)))
            finally:
                plain.stop()
        finally:
            echo.stop()
            stack.stop()
