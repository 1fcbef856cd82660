"""The floor a gRPC service call cannot go under on this machine: a bare ``grpc.aio``
server, in a process of its own like the services, answering each request with its own
bytes (``python -m bench.echo PORT``)."""

from __future__ import annotations

import asyncio
import sys
from typing import Final

import grpc

__all__ = ["METHOD", "main"]

METHOD: Final = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
