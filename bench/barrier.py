"""Halt barrier figures (issue 9) against a local stack with four executor replicas
(nats-server, redis-server, the state and emergency services and the executors as
processes on this machine, on free ports, stopped after):

- ``Halt`` request -> return with 4 executors that hold leases (each ran executions
  first), so every halt waits for four acknowledgements; each halt is followed by a
  ``Resume`` of the same bot, idle and under a light load (clients running a 10-node
  workflow at a fixed pace on every replica, for another bot); and, as the baseline,
  before any executor holds a lease (the barrier waits for nobody);
- fail closed: the emergency service SIGSTOPped at a random phase of its heartbeat ->
  the first opening order an executor refuses (``cancel_only``, state unavailable), in
  real time; a few trials.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from bench.embedded import Timing, verdict
from bench.services import BOT, bench_stack, security_of
from bench.workflows import trading_workflow
from tradeflow.adapters.grpc import wire
from tradeflow.adapters.grpc.client import open_channel
from tradeflow.app.devstack import ServerProcess, Stack, free_port, service_process
from tradeflow.domain.principals import Principal, Role
from tradeflow.domain.records import ExecutionRecord, ExecutionStatus, Scope
from tradeflow.proto.emergency.v1 import emergency_service_pb2 as epb
from tradeflow.proto.emergency.v1 import emergency_service_pb2_grpc as epb_grpc
from tradeflow.proto.executor.v1 import executor_service_pb2 as pb
from tradeflow.proto.executor.v1 import executor_service_pb2_grpc as pb_grpc

__all__ = ["main"]

REPLICAS = 4
HALTS = 300
LOAD_RATE = 100.0
"""Executions per second of the light load, over all replicas."""
TRIALS = 7
HALT_P99_TARGET = 0.005
FAIL_CLOSED_TARGET = 1.0
CALL_SECONDS = 30.0
"""Bound on every call and wait: a stuck stack fails the benchmark instead of hanging it."""
_BOT = wire.SCOPE.to_proto(Scope.BOT)
_WORKFLOW = json.dumps(trading_workflow(10))
_OPENING = json.dumps(
    {
        "blocks": [
            {
                "id": "buy",
                "category": "actions",
                "type": "place_order",
                "properties": {"symbol": "BTC/USDT", "side": "buy", "quantity": 0.001},
            }
        ]
    }
)
"""One market buy and nothing else: its risk node would make ``trading_workflow`` wait
on the (frozen) emergency service for a risk check instead of measuring the local view."""


def _more_executors(stack: Stack, count: int) -> list[ServerProcess]:
    """``count`` executors beside the stack's, with its settings (so on its Redis keys)."""
    settings = stack.processes["executor"].env or {}
    return [
        service_process(
            "executor",
            free_port(),
            stack.workdir / f"executor{number}",
            {**settings, "TRADEFLOW_EXECUTOR_METRICS_PORT": str(free_port())},
        )
        for number in range(2, count + 2)
    ]


async def _execute(
    stub: pb_grpc.ExecutorServiceStub, bot: str, definition: str = _WORKFLOW
) -> ExecutionRecord:
    response = await stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id="bench", bot_id=bot, definition_json=definition),
        timeout=CALL_SECONDS,
    )
    return wire.execution_from_proto(response.execution)[0]


async def _halt_timings(stub: epb_grpc.EmergencyServiceStub, halts: int) -> tuple[Timing, str]:
    """``halts`` times Halt then Resume of one bot: Halt's request -> return, and what the
    barrier reported (how many executors acknowledged, how many were fenced)."""
    target = "bench-barrier"
    seconds: list[float] = []
    acknowledged: set[int] = set()
    fenced = 0
    for _ in range(halts):
        request = epb.HaltRequest(
            request_id=uuid.uuid4().hex, scope=_BOT, target=target, reason="bench", actor="bench"
        )
        started = time.perf_counter()
        response = await stub.Halt(request, timeout=CALL_SECONDS)
        seconds.append(time.perf_counter() - started)
        acknowledged.add(len(response.acknowledged))
        fenced += len(response.fenced)
        await stub.Resume(
            epb.ResumeRequest(
                request_id=uuid.uuid4().hex, scope=_BOT, target=target, reason="b", actor="bench"
            ),
            timeout=CALL_SECONDS,
        )
    counts = "/".join(map(str, sorted(acknowledged)))
    return Timing.of(seconds), f"{counts} of {REPLICAS} acknowledged, {fenced} fenced"


async def _light_load(
    stubs: Sequence[pb_grpc.ExecutorServiceStub], stop: asyncio.Event, done: list[float]
) -> None:
    """One client per replica, each starting an execution every ``len(stubs) /
    LOAD_RATE`` seconds (or as soon as the last one ended, when slower)."""
    period = len(stubs) / LOAD_RATE

    async def client(stub: pb_grpc.ExecutorServiceStub) -> None:
        next_start = time.perf_counter()
        while not stop.is_set():
            record = await _execute(stub, BOT.name)
            if record.status is not ExecutionStatus.COMPLETED:
                raise RuntimeError(f"load execution ended {record.status}: {record.error}")
            done.append(time.perf_counter())
            next_start += period
            await asyncio.sleep(max(0.0, next_start - time.perf_counter()))  # the pace

    await asyncio.gather(*(client(stub) for stub in stubs))


async def _until(stub: pb_grpc.ExecutorServiceStub, status: ExecutionStatus) -> ExecutionRecord:
    """Buy again and again until an execution ends ``status`` (each ends completed or
    halted); at most :data:`CALL_SECONDS`."""
    async with asyncio.timeout(CALL_SECONDS):
        while True:
            record = await _execute(stub, BOT.name, _OPENING)
            if record.status is status:
                return record
            if record.status not in (ExecutionStatus.COMPLETED, ExecutionStatus.HALTED):
                raise RuntimeError(f"an opening order ended {record.status}: {record.error}")


async def _fail_closed(stub: pb_grpc.ExecutorServiceStub, emergency_pid: int) -> list[float]:
    """Seconds from SIGSTOP of the emergency service to an opening order refused, per trial."""
    rng = random.Random(9)
    seconds: list[float] = []
    for _ in range(TRIALS):
        await _until(stub, ExecutionStatus.COMPLETED)  # trading again since the last trial
        await asyncio.sleep(rng.uniform(0, 0.5))  # a random phase of the heartbeat
        os.kill(emergency_pid, signal.SIGSTOP)
        stopped = time.perf_counter()
        try:
            refused = await _until(stub, ExecutionStatus.HALTED)
            seconds.append(time.perf_counter() - stopped)
        finally:
            os.kill(emergency_pid, signal.SIGCONT)
        if "emergency state unavailable" not in (refused.error or ""):
            raise RuntimeError(f"refused for another reason: {refused.error}")
    return seconds


def _halt_line(name: str, timing: Timing, acks: str, *, judge: bool = True) -> str:
    target = HALT_P99_TARGET * 1e6
    judged = f"target p99 <= {target / 1e3:.0f} ms: {verdict(timing.p99_us, target)}"
    shown = judged if judge else "(no target)"
    return (
        f"  {name:<34} p50 {timing.median_us / 1e3:6.2f} ms   "
        f"p99 {timing.p99_us / 1e3:6.2f} ms   {shown:<{len(judged)}}   ({acks})"
    )


async def _halt_figures(
    halts: epb_grpc.EmergencyServiceStub, stubs: Sequence[pb_grpc.ExecutorServiceStub]
) -> list[str]:
    """The Halt lines: with no lease holder (the barrier waits for nobody: what the commit,
    audit and request log cost), then with every replica holding a lease, idle and under
    the light load."""
    await _halt_timings(halts, 50)  # warm-up
    baseline, baseline_acks = await _halt_timings(halts, HALTS)
    for stub in stubs:  # each replica takes its lease
        for _ in range(20):
            await _execute(stub, BOT.name)
    await _halt_timings(halts, 50)
    idle, idle_acks = await _halt_timings(halts, HALTS)
    stop = asyncio.Event()
    done: list[float] = []
    load = asyncio.create_task(_light_load(stubs, stop, done))
    try:
        loaded, loaded_acks = await _halt_timings(halts, HALTS)
    finally:
        stop.set()
        await load
    rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else 0.0
    return [
        _halt_line("no lease holder (baseline)", baseline, baseline_acks, judge=False),
        _halt_line(f"{REPLICAS} lease holders, idle", idle, idle_acks),
        _halt_line(f"{REPLICAS} lease holders, {rate:.0f} executions/s", loaded, loaded_acks),
    ]


async def run(stack: Stack, executors: Sequence[str]) -> None:
    env = stack.client_env()
    async with AsyncExitStack() as channels:
        bot = security_of(stack, BOT)
        executor_channels = [
            await channels.enter_async_context(open_channel(a, security=bot)) for a in executors
        ]
        stubs = [pb_grpc.ExecutorServiceStub(channel) for channel in executor_channels]
        emergency = await channels.enter_async_context(
            open_channel(
                env["TRADEFLOW_EMERGENCY_ADDR"],
                security=security_of(stack, Principal(Role.OPERATOR, "bench")),
            )
        )
        print(
            f"Halt barrier: {REPLICAS} executor replicas, one process each, mutual TLS "
            f"(load average {os.getloadavg()[0]:.1f} at the start: other work on the machine "
            "slows every figure)"
        )
        print(f" Halt request -> return, each followed by a Resume ({HALTS} halts)")
        for line in await _halt_figures(epb_grpc.EmergencyServiceStub(emergency), stubs):
            print(line)
        emergency_pid = stack.processes["emergency"].pid
        assert emergency_pid is not None
        closed = await _fail_closed(stubs[0], emergency_pid)
        worst = max(closed)
        print(" Fail closed: emergency service SIGSTOPped -> an opening order refused")
        print(
            f"  {TRIALS} trials: median {statistics.median(closed):.2f} s   max {worst:.2f} s   "
            f"target <= {FAIL_CLOSED_TARGET:.0f} s: {verdict(worst, FAIL_CLOSED_TARGET)}"
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = bench_stack(Path(tmp), tls=True)
        more = _more_executors(stack, REPLICAS - 1)
        stack.start()
        try:
            for process in more:
                process.start()
            executors = [f"127.0.0.1:{p.port}" for p in (stack.processes["executor"], *more)]
            asyncio.run(run(stack, executors))
        finally:
            for process in more:
                process.stop()
            stack.stop()


if __name__ == "__main__":
    main()
