"""Throwaway servers for integration tests: real nats-server and redis-server
processes on free ports, which tests may kill and restart (fault tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "start_nats", "start_redis", "wait_for_port"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before listening on {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)  # polling a port: there is no event to wait on
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class ServerProcess:
    """A server subprocess that can be stopped, killed and started again on the same port."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServerProcess:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )
        wait_for_port(self.port, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (a crash)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait (a graceful shutdown)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=15)
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


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found on PATH: run `make setup`")
    return found


def start_redis(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """redis-server with persistence (AOF, fsync every second) so a restart keeps data."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-redis-"))
    port = port or free_port()
    argv = [
        _binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
        "--protected-mode",
        "no",
    ]
    return ServerProcess("redis", argv, port, workdir).start()


def start_nats(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """nats-server with JetStream, storing in ``workdir``."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-nats-"))
    port = port or free_port()
    argv = [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir)]
    return ServerProcess("nats", argv, port, workdir, env=dict(os.environ)).start()
