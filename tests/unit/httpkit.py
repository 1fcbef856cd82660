"""A real HTTP server on 127.0.0.1 for ``api_call`` tests, and the HTTP pool whose egress
policy explicitly allows it (loopback is refused by default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import pytest_asyncio

from tradeflow.domain.egress import SecretHosts
from tradeflow.engine.nodes.registry import HttpPool

__all__ = ["HttpServer", "Received", "http_server"]


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class HttpServer:
    """A minimal HTTP/1.1 server on a free local port: canned answers by path (and a
    ``Location`` header for the paths in ``redirects``), one per connection, recording
    every request it receives."""

    port: int = 0
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def pool(self, secrets_dir: str | None = None, secrets: Iterable[str] = ()) -> HttpPool:
        """An HTTP pool whose egress policy explicitly allows this (loopback) server, and
        which may send the secrets named in ``secrets`` to it."""
        return HttpPool(
            egress_allow=[f"127.0.0.1:{self.port}"],
            secrets_dir=secrets_dir,
            secret_hosts=SecretHosts.parse(f"{name}=127.0.0.1" for name in secrets),
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append(Received(method, target, headers, body))
        path = target.partition("?")[0]
        status, payload = self.answers.get(path, (404, b'{"error": "none"}'))
        location = f"Location: {self.redirects[path]}\r\n" if path in self.redirects else ""
        writer.write(
            f"HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\n{location}"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest_asyncio.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    server = HttpServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
