"""The way out of the process for ``api_call``: every connection goes through the egress
policy of :mod:`tradeflow.domain.egress`.

The policy sits where connections are made, in an httpcore network backend
(:class:`EgressBackend`): it resolves the host itself, refuses the connection if any
address is forbidden, then connects to the very address it checked, so a DNS answer
that changes between check and connect (rebinding) cannot slip through. TLS still
verifies the certificate and sends SNI for the host name (httpcore starts TLS with the
URL's host, whatever address the stream was opened to). Redirects are followed by
httpx hop by hop, each hop a new request through the same backend: every redirect
target is checked like the first.

httpx 0.28 has no public option to hand its transport a network backend (a pull
request proposing one, encode/httpx#3749, is open), so :class:`EgressTransport` is a
small ``httpx.AsyncBaseTransport`` around ``httpcore.AsyncConnectionPool(
network_backend=...)``, both public APIs, translating requests, responses and
httpcore errors the way httpx's own ``AsyncHTTPTransport`` does. A client with an
explicit transport ignores proxy environment variables, so no proxy bypasses the check.

The client is shared by every execution and bot of the process, so it keeps no cookies:
a session one bot's call was given must not ride along with another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from ipaddress import ip_address
from typing import Any

import httpcore
import httpx

from tradeflow.domain.egress import (
    METADATA_NAMES,
    AllowList,
    IPAddress,
    literal_address,
    redacted_url,
    refusal,
)
from tradeflow.domain.errors import EgressRefused

__all__ = [
    "EgressBackend",
    "EgressTransport",
    "Resolver",
    "egress_client",
    "system_resolver",
]

Resolver = Callable[[str, int], Awaitable[Iterable[str]]]
"""``await resolve(host, port)``: the IP addresses (as strings) ``host`` resolves to."""

MAX_REDIRECTS = 5


async def system_resolver(host: str, port: int) -> list[str]:
    """The event loop's ``getaddrinfo`` (every address, in the resolver's order)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections for httpcore, only to addresses the policy allows.

    A host on the allow-list is connected to as it is. Any other host is resolved with
    ``resolver`` (a literal address, in any spelling, is taken as it is), every address
    it resolves to is checked, and a forbidden one refuses the whole host with
    :class:`~tradeflow.domain.errors.EgressRefused` before any connection is made; else
    ``connector`` (httpcore's asyncio backend) connects to the checked addresses in
    turn until one answers."""

    def __init__(
        self,
        allow: AllowList,
        *,
        resolver: Resolver = system_resolver,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = allow
        self._resolver = resolver
        self._connector = connector if connector is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._allow.permits(host, port):
            targets = [host]
        else:
            try:
                async with asyncio.timeout(timeout):
                    targets = [str(address) for address in await self.checked(host, port)]
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        failure: httpcore.ConnectError | None = None
        for target in targets:
            try:
                return await self._connector.connect_tcp(
                    target, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def checked(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host`` if the policy allows every one of them; raises
        ``EgressRefused`` naming the host and why otherwise."""
        if host.lower().removesuffix(".") in METADATA_NAMES:
            raise EgressRefused(host, "cloud metadata host")
        literal = literal_address(host)
        if literal is not None:
            reason = refusal(literal)
            if reason is not None:
                spelled = host.strip("[]") == str(literal)
                raise EgressRefused(host, reason if spelled else f"{reason} ({literal})")
            return [literal]
        try:
            addresses = [ip_address(found) for found in await self._resolver(host, port)]
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise EgressRefused(host, f"resolves to {address}, a {reason}")
        return addresses

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


_CORE_ERRORS = (
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    httpcore.ProtocolError,
    httpcore.TimeoutException,
    httpcore.NetworkError,
)


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's errors as the httpx errors of the same names (what callers catch)."""
    try:
        yield
    except _CORE_ERRORS as exc:
        error: type[httpx.TransportError] = getattr(httpx, type(exc).__name__, httpx.TransportError)
        raise error(str(exc), request=request) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class EgressTransport(httpx.AsyncBaseTransport):
    """httpx's transport over an httpcore connection pool whose every connection goes
    through ``backend`` (httpx's default TLS context and pool limits)."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        limits = httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def egress_client(
    allow: AllowList,
    *,
    timeout: float,
    resolver: Resolver = system_resolver,
    connector: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose connections all go through the egress policy; it
    follows redirects (at most :data:`MAX_REDIRECTS`), each hop checked anew, and stores
    no cookie (a jar whose policy accepts none)."""
    _redact_httpx_log()
    backend = EgressBackend(allow, resolver=resolver, connector=connector)
    return httpx.AsyncClient(
        timeout=timeout,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        transport=EgressTransport(backend),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
    )


class _RedactedUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: keep query strings (API keys travel
    there) and credentials out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(arg: Any) -> Any:
    return redacted_url(str(arg)) if isinstance(arg, httpx.URL) else arg


def _redact_httpx_log() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _RedactedUrls) for existing in logger.filters):
        logger.addFilter(_RedactedUrls())
