"""The floor a gRPC service call cannot go under on this machine: a bare ``grpc.aio``
server, in a process of its own like the services, answering each request with its own
bytes (``python -m bench.echo PORT [CA CERT KEY]``: with the three PEM files, over mutual
TLS as the services are by default)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Final

import grpc

from tradeflow.adapters.grpc.security import TransportSecurity

__all__ = ["METHOD", "main"]

METHOD: Final = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int, security: TransportSecurity | None) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    if security is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", security.server_credentials())
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port, *files = sys.argv[1:]
    security = TransportSecurity(*(Path(f).read_bytes() for f in files)) if files else None
    asyncio.run(serve(int(port), security))


if __name__ == "__main__":
    main()
