"""Throwaway servers for integration tests (re-exported from tradeflow.app.devstack, which
also backs `make up`): real nats-server and redis-server processes on free ports, which
tests may kill and restart."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tradeflow.app.devstack import (
    ServerProcess,
    Stack,
    free_port,
    nats_process,
    redis_process,
    wait_for_port,
)

__all__ = ["ServerProcess", "Stack", "free_port", "start_nats", "start_redis", "wait_for_port"]


def start_redis(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """redis-server with AOF persistence on a free port."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-redis-"))
    return redis_process(workdir, port or free_port()).start()


def start_nats(workdir: Path | None = None, port: int | None = None) -> ServerProcess:
    """nats-server with JetStream on a free port."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tf-nats-"))
    return nats_process(workdir, port or free_port()).start()
