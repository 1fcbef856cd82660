"""A local service stack: nats-server, redis-server and the three tradeflow services
as processes on localhost (``tradeflow stack up`` / ``make up``; the integration
tests start one on free ports).

Each process runs in its own session, so the stack outlives the command that
started it; ``stack.json`` in the stack's directory records what runs where, and
``env`` holds the ``TRADEFLOW_*`` settings a client needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tradeflow.domain.errors import ConfigurationError, UnavailableError
from tradeflow.domain.principals import Principal, Role

if TYPE_CHECKING:
    from tradeflow.app.certs import Authority

__all__ = [
    "DEFAULT_PORTS",
    "ServerProcess",
    "Stack",
    "free_port",
    "load_env_file",
    "wait_for_port",
]

_REPO_ROOT = str(Path(__file__).resolve().parents[2])

DEFAULT_PORTS = {
    "nats": 4322,
    "redis": 6479,
    "executor": 50051,
    "emergency": 50052,
    "state": 50053,
    "executor_metrics": 51051,
    "emergency_metrics": 51052,
    "state_metrics": 51053,
}
"""``make up`` ports: off the standard NATS/Redis ports, which a machine may already use."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UnavailableError(
                f"process exited with {process.returncode} before listening on port {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)  # a port has no event to wait on
    raise UnavailableError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def redis_ready(port: int) -> bool:
    """Whether the Redis on ``port`` serves commands (``PING`` answers ``+PONG``, not
    ``-LOADING`` while it replays its append-only file after a restart)."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as conn:
        conn.settimeout(0.5)
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")
    return False


@dataclass
class ServerProcess:
    """A server subprocess that can be stopped, killed and started again on the same port."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    env: dict[str, str] | None = None
    ready: Callable[[int], bool] | None = None
    """Beyond accepting connections, when the server serves (polled after the port opens)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        wait_for_port(self.port, process=self.process)
        if self.ready is not None:
            deadline = time.monotonic() + 20.0
            while not self.ready(self.port):
                if time.monotonic() > deadline:
                    raise UnavailableError(f"{self.name} on port {self.port} not ready after 20s")
                time.sleep(0.02)  # loading has no event to wait on
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (a crash)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM and wait (a graceful shutdown); returns the exit code."""
        self._signal(signal.SIGTERM)
        return None if self.process is None else self.process.returncode

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    @property
    def url(self) -> str:
        scheme = {"redis": "redis", "nats": "nats"}.get(self.name, "http")
        return f"{scheme}://127.0.0.1:{self.port}"


def binary(name: str) -> str:
    """Path of a server binary, or a one-line error saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(f"{name} not found on PATH: run `make setup`")
    return found


def redis_process(workdir: Path, port: int) -> ServerProcess:
    """redis-server with AOF (fsync every second), so a restart keeps the data."""
    options = f"--port {port} --bind 127.0.0.1 --appendonly yes --appendfsync everysec"
    argv = [binary("redis-server"), *options.split(), "--protected-mode", "no", "--save", ""]
    return ServerProcess("redis", [*argv, "--dir", str(workdir)], port, workdir, ready=redis_ready)


def nats_process(workdir: Path, port: int) -> ServerProcess:
    """nats-server with JetStream storing in ``workdir``."""
    argv = [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir)]
    return ServerProcess("nats", argv, port, workdir)


def service_process(name: str, port: int, workdir: Path, env: Mapping[str, str]) -> ServerProcess:
    """``python -m <name>_service`` listening on ``port``, with ``env`` over this process's
    environment; the service packages sit beside tradeflow, whatever an editable install maps."""
    full = {**os.environ, **env, f"TRADEFLOW_{name.upper()}_ADDR": f"127.0.0.1:{port}"}
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, full.get("PYTHONPATH")]))
    return ServerProcess(name, [sys.executable, "-m", f"{name}_service"], port, workdir, full)


class Stack:
    """nats-server, redis-server, state, emergency and executor services.

    With ``tls`` (``tradeflow stack up``), the services speak mutual TLS with
    certificates of a throwaway CA made here (``certs/`` in the workdir): the executor
    service's names the principal ``executor/executor``, the other services' none (they
    only serve), and client certificates are issued for :data:`CLIENTS`
    (:meth:`identity_env` issues more). Without it the services run plaintext, which
    they only do when told (``TRADEFLOW_GRPC_PLAINTEXT=true``).
    """

    SERVICES = ("state", "emergency", "executor")
    CLIENTS = (
        Principal(Role.OPERATOR, "operator"),
        Principal(Role.OPERATOR, "second"),  # confirms what the first asks to resume
        Principal(Role.ADMIN, "admin"),
        Principal(Role.BOT, "bot-1"),
        # `tradeflow run --env production` executes in its own process: an executor.
        Principal(Role.EXECUTOR, "cli"),
    )

    def __init__(
        self,
        workdir: Path,
        ports: Mapping[str, int] | None = None,
        *,
        extra_env: Mapping[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.ports = dict(ports or {name: free_port() for name in DEFAULT_PORTS})
        self.nats = nats_process(workdir / "nats", self.ports["nats"])
        self.redis = redis_process(workdir / "redis", self.ports["redis"])
        self.certs = workdir / "certs"
        self._authority: Authority | None = None
        if tls:
            from tradeflow.app.certs import Authority  # only a TLS stack needs cryptography

            self._authority = Authority()
            self.certs.mkdir(parents=True, exist_ok=True)
            (self.certs / "ca.crt").write_bytes(self._authority.cert_pem)
            for principal in self.CLIENTS:
                self.identity_env(principal)
        env = {**self._addresses(), **(extra_env or {})}
        for name in self.SERVICES:
            env[f"TRADEFLOW_{name.upper()}_METRICS_PORT"] = str(self.ports[f"{name}_metrics"])
        self.processes = {
            name: service_process(
                name, self.ports[name], workdir / name, {**env, **self._service_identity(name)}
            )
            for name in self.SERVICES
        }

    @property
    def tls(self) -> bool:
        return self._authority is not None

    @property
    def authority(self) -> Authority | None:
        """The stack's CA (``None`` for a plaintext stack): issues certificates of any
        kind, say one naming no principal."""
        return self._authority

    def identity_env(self, principal: Principal | None) -> dict[str, str]:
        """The ``TRADEFLOW_TLS_*`` settings of a process acting as ``principal`` (its
        certificate issued on first use; ``None``: a serving certificate naming no
        principal); ``{}`` for a plaintext stack."""
        if self._authority is None:
            return {}
        name = "server" if principal is None else f"{principal.role.value}-{principal.name}"
        cert, key = self.certs / f"{name}.crt", self.certs / f"{name}.key"
        if not cert.exists():
            self._authority.issue(principal).write(self.certs, name)
        return {
            "TRADEFLOW_TLS_CA": str(self.certs / "ca.crt"),
            "TRADEFLOW_TLS_CERT": str(cert),
            "TRADEFLOW_TLS_KEY": str(key),
        }

    def _service_identity(self, name: str) -> dict[str, str]:
        if self._authority is None:
            return {"TRADEFLOW_GRPC_PLAINTEXT": "true"}
        # The executor service calls the others as an executor; the others only serve, so
        # their certificate names no principal (one naming a role would carry its rights).
        return self.identity_env(Principal(Role.EXECUTOR, name) if name == "executor" else None)

    def _addresses(self) -> dict[str, str]:
        p = self.ports
        return {
            "TRADEFLOW_NATS_URL": f"nats://127.0.0.1:{p['nats']}",
            "TRADEFLOW_REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
            "TRADEFLOW_EXECUTOR_ADDR": f"127.0.0.1:{p['executor']}",
            "TRADEFLOW_EMERGENCY_ADDR": f"127.0.0.1:{p['emergency']}",
            "TRADEFLOW_STATE_ADDR": f"127.0.0.1:{p['state']}",
        }

    def client_env(self, principal: Principal = CLIENTS[0]) -> dict[str, str]:
        """``TRADEFLOW_*`` settings of a client of this stack (over TLS: as ``principal``,
        by default the operator)."""
        identity = self.identity_env(principal) or {"TRADEFLOW_GRPC_PLAINTEXT": "true"}
        return {**self._addresses(), **identity}

    def start(self) -> Stack:
        """Start everything (dependencies first) and wait until each one listens."""
        try:
            self.nats.start()
            self.redis.start()
            for name in self.SERVICES:
                self.processes[name].start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM everything, services first."""
        for name in reversed(self.SERVICES):
            self.processes[name].stop()
        self.redis.stop()
        self.nats.stop()

    def describe(self) -> dict[str, object]:
        procs = {"nats": self.nats, "redis": self.redis, **self.processes}
        return {
            "ports": self.ports,
            "pids": {name: p.pid for name, p in procs.items()},
            "env": self.client_env(),
        }

    def write_files(self) -> None:
        """``stack.json`` (pids, ports) and ``env`` (``export`` lines: the operator's
        settings) in the workdir; over TLS also ``env-<role>-<name>`` for each of
        :data:`CLIENTS`."""
        (self.workdir / "stack.json").write_text(json.dumps(self.describe(), indent=2))
        files = {"env": self.client_env()}
        if self.tls:
            files |= {
                f"env-{principal.role.value}-{principal.name}": self.client_env(principal)
                for principal in self.CLIENTS
            }
        for name, values in files.items():
            (self.workdir / name).write_text(
                "".join(f"export {k}={v}\n" for k, v in values.items())
            )


def stop_recorded(workdir: Path) -> list[str]:
    """SIGTERM the processes a ``stack.json`` records; returns what was stopped."""
    path = workdir / "stack.json"
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    stopped = []
    for name, marker in _MARKERS.items():
        pid = recorded["pids"].get(name)
        if not pid or not _runs(pid, marker):
            # Gone, or the pid now belongs to another program (a stale stack.json).
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)
            stopped.append(name)
    path.unlink()
    return stopped


_MARKERS = {
    "executor": "executor_service",
    "emergency": "emergency_service",
    "state": "state_service",
    "redis": "redis-server",
    "nats": "nats-server",
}
"""What a recorded process's command line contains when it is still ours, in stopping order."""


def _runs(pid: int, marker: str) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # another session's child: no handle to wait on
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def load_env_file(path: Path) -> dict[str, str]:
    """The ``export KEY=VALUE`` lines of a stack's ``env`` file."""
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values
