"""Calling a tradeflow service: one channel per service, the caller's correlation id
sent along, failures turned back into domain errors (:mod:`tradeflow.adapters.grpc.errors`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from tradeflow.adapters.grpc.errors import error_from_rpc
from tradeflow.adapters.grpc.security import PLAINTEXT, TransportSecurity
from tradeflow.adapters.grpc.server import CORRELATION_KEY, MAX_MESSAGE_BYTES

__all__ = ["call", "open_channel"]


def open_channel(
    address: str,
    *,
    security: TransportSecurity = PLAINTEXT,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel with tradeflow's message limits and keepalive, plus ``options``: mutual
    TLS with ``security``'s certificate, or plaintext when it holds none."""
    settings = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        *options,
    ]
    if security.plaintext:
        return grpc.aio.insecure_channel(address, options=settings)
    return grpc.aio.secure_channel(address, security.channel_credentials(), options=settings)


async def call(method: Any, request: Any, *, service: str, deadline: float | None = 10.0) -> Any:
    """Invoke a unary RPC; raises the domain error the service reported."""
    correlation_id = structlog.contextvars.get_contextvars().get("correlation_id")
    metadata = ((CORRELATION_KEY, correlation_id),) if correlation_id else None
    try:
        return await method(request, timeout=deadline, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err, service=service) from None
