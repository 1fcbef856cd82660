"""Throwaway servers for integration tests (re-exported from tradeflow.app.devstack, which
also backs `make up`): real nats-server and redis-server processes on free ports, which
tests may kill and restart."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kit import DEADLINE_SECONDS

from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.app.devstack import (
    ServerProcess,
    Stack,
    free_port,
    nats_process,
    redis_process,
    wait_for_port,
)

__all__ = [
    "ServerProcess",
    "Service",
    "Stack",
    "free_port",
    "production_cli",
    "start_nats",
    "start_redis",
    "start_service",
    "wait_for_port",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
_prefixes = itertools.count()


def start_redis(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """redis-server with AOF persistence on a free port."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-redis-"))
    return redis_process(workdir, port or free_port()).start()


def start_nats(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """nats-server with JetStream on a free port."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-nats-"))
    return nats_process(workdir, port or free_port()).start()


@dataclass
class Service:
    """A gRPC service as a ``python -m`` subprocess: its process, metrics port, Redis key
    prefix (kept across restarts) and the name it reports health under."""

    process: ServerProcess
    metrics_port: int
    redis_prefix: str
    health_name: str
    security: TransportSecurity = PLAINTEXT
    """What a client needs to reach it (a certificate of the service's CA over TLS)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> Service:
        """Start the process (again, on the same ports) and wait until it reports SERVING."""
        self.process.start()
        channel = (
            grpc.insecure_channel(self.address)
            if self.security.plaintext
            else grpc.secure_channel(self.address, self.security.channel_credentials())
        )
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=self.health_name),
                wait_for_ready=True,
                timeout=DEADLINE_SECONDS,
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"{self.process.name} service at {self.address} is {reply.status}")
        return self


def start_service(
    name: str,
    health_name: str,
    workdir: Path,
    env: Mapping[str, str],
    security: TransportSecurity = PLAINTEXT,
) -> Service:
    """``python -m {name}_service`` with ``env`` on free ports and a Redis key prefix of
    its own (so services of different tests never see each other's state), logging to
    ``workdir``; returns once it is SERVING. Plaintext unless ``env`` names TLS files
    (then ``security`` is a client's, used for the health check)."""
    port, metrics_port = free_port(), free_port()
    prefix = f"test-{name}-{os.getpid()}-{next(_prefixes)}"
    upper = name.upper()
    full_env = {
        **os.environ,
        # The service package sits beside tradeflow, whatever the editable install maps.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        f"TRADEFLOW_{upper}_ADDR": f"127.0.0.1:{port}",
        f"TRADEFLOW_{upper}_METRICS_PORT": str(metrics_port),
        "TRADEFLOW_REDIS_PREFIX": prefix,
        "TRADEFLOW_LOG_LEVEL": "debug",
        **({} if "TRADEFLOW_TLS_CA" in env else {"TRADEFLOW_GRPC_PLAINTEXT": "true"}),
        **env,
    }
    argv = [sys.executable, "-m", f"{name}_service"]
    process = ServerProcess(name, argv, port, workdir, env=full_env)
    return Service(process, metrics_port, prefix, health_name, security).start()


def production_cli(
    env: Mapping[str, str], *args: str, cwd: Path | None = None, timeout: float = DEADLINE_SECONDS
) -> subprocess.CompletedProcess[str]:
    """``tradeflow <args> --env production`` as a process, with ``env`` over this one's
    environment; bounded by ``timeout``, its exit status not checked."""
    return subprocess.run(
        [sys.executable, "-m", "tradeflow.app.cli", *args, "--env", "production"],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
