"""Running a tradeflow gRPC service: interceptors, health, reflection, metrics,
graceful shutdown. Each service's ``server.py`` hands :func:`serve` its servicers.

- Every call: the correlation id is taken from the ``x-correlation-id`` metadata
  (or made up when absent or not a well-formed id, since it is echoed and logged),
  bound to the logs, and returned in the trailing metadata; domain errors become
  status codes (:mod:`tradeflow.adapters.grpc.errors`); anything else becomes
  ``INTERNAL`` with the correlation id, logged with its traceback, never sent.
- Every call is authorised first (:mod:`tradeflow.adapters.grpc.security`): the caller's
  principal comes from its client certificate, the service's :class:`Policy` says whether
  its role may call the method and, for a bot, whether the request (and a read's
  response) is its own. A refusal is ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``,
  logged as ``audit.rpc_denied`` with the principal, role and peer, and handed to the
  service's ``denied`` hook (the emergency service audits it). The caller is bound to
  the call (:data:`~tradeflow.domain.principals.CALLER`), so whatever the call changes is
  audited under its principal. A plaintext server (local development) authenticates
  nobody and authorises everything.
- ``tradeflow_rpc_server_handled_seconds{method, code}`` times every call.
- Health is SERVING while the service's ``healthy`` hook (if any) holds, NOT_SERVING
  while it does not (polled every :data:`HEALTH_POLL_SECONDS`).
- SIGTERM/SIGINT: health turns NOT_SERVING (load balancers stop routing), the
  service's drain hook finishes or checkpoints in-flight work, then the server
  stops with a grace period.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from tradeflow.adapters.grpc.errors import status_of
from tradeflow.adapters.grpc.security import (
    ANY_ROLE,
    Policy,
    Refusal,
    Rule,
    TransportSecurity,
    caller_of,
)
from tradeflow.domain.clock import new_id
from tradeflow.domain.errors import ConfigurationError, TradeflowError
from tradeflow.domain.limits import ID_PATTERN
from tradeflow.domain.principals import CALLER, SYSTEM, Caller
from tradeflow.observability.logging import get_logger
from tradeflow.observability.metrics import LATENCY_BUCKETS

__all__ = [
    "CORRELATION_KEY",
    "HEALTH_POLL_SECONDS",
    "Edges",
    "Service",
    "follow_health",
    "serve",
]

CORRELATION_KEY = "x-correlation-id"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
HEALTH_POLL_SECONDS = 1.0

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """What a service plugs into :func:`serve`."""

    register: Callable[[grpc.aio.Server], Sequence[str]]
    """Adds the servicers to the server; returns their full service names."""
    registry: CollectorRegistry
    """The Prometheus registry ``/metrics`` serves."""
    drain: Callable[[], Awaitable[None]] | None = None
    """Finish or checkpoint in-flight work (called once, on shutdown)."""
    close: Callable[[], Awaitable[None]] | None = None
    """Release connections after the server stopped."""
    healthy: Callable[[], bool] | None = None
    """Whether the service can do its work right now (say, its events reach the stream)."""
    policy: Policy
    """Who may call each method of the service's servicers (a method not named: nobody)."""
    denied: Callable[[str, Caller, str], Awaitable[None]] | None = None
    """Audits a refused call: method, caller, reason (the log line is written anyway)."""


_OPEN_SERVICES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Health and reflection: any authenticated caller."""
_OPEN: Final = Rule(ANY_ROLE)
_NOBODY: Final = Rule(frozenset())


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, latency: Histogram, service: Service, security: TransportSecurity) -> None:
        self._latency = latency
        self._service = service
        self._security = security

    def _rule(self, full_method: str) -> Rule:
        if full_method.startswith(_OPEN_SERVICES):
            return _OPEN
        return self._service.policy.get(full_method.rsplit("/", 1)[-1], _NOBODY)

    def _admit(
        self, context: grpc.aio.ServicerContext, rule: Rule, method: str, request: Any
    ) -> None:
        """Bind the authenticated caller to the call, once the rule admits it and its
        request (raises :class:`Refusal`)."""
        caller = caller_of(context, self._security)
        CALLER.set(caller)  # each call runs in a context of its own
        if not self._security.plaintext:
            rule.admit(caller, method)
            rule.check(rule.request, request, caller, method)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, refusal: Refusal, method: str
    ) -> None:
        caller = CALLER.get()
        known = caller is not SYSTEM  # bound: the caller was authenticated
        peer = context.peer() or ""
        _log.warning(
            "audit.rpc_denied",
            method=method,
            code=refusal.code.name,
            principal=str(caller.principal) if known else "unauthenticated",
            role=caller.role.value if known else "",
            peer=peer,
            reason=refusal.message,
        )
        if self._service.denied is not None and known:
            try:
                await self._service.denied(method, caller, refusal.message)
            except TradeflowError as exc:
                _log.error("audit.rpc_denied_not_recorded", method=method, error=exc.message)
        await context.abort(refusal.code, refusal.message)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        full_method = str(details.method)
        method, rule = full_method.rsplit("/", 1)[-1], self._rule(full_method)
        if handler.request_streaming and rule.request is not None:
            rule = _NOBODY  # a check of the request cannot see a stream of requests
        # Every kind of method is wrapped (reflection streams both ways): none escapes the
        # caller's authentication.
        wrap, make = {
            (False, False): (self._unary, grpc.unary_unary_rpc_method_handler),
            (False, True): (self._stream, grpc.unary_stream_rpc_method_handler),
            (True, False): (self._unary, grpc.stream_unary_rpc_method_handler),
            (True, True): (self._stream, grpc.stream_stream_rpc_method_handler),
        }[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behaviour = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        return make(
            wrap(behaviour, method, rule),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behaviour: Any, method: str, rule: Rule) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            correlation_id = _correlation_id(context)
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
                try:
                    self._admit(context, rule, method, request)
                    response = await behaviour(request, context)
                    if not self._security.plaintext:
                        rule.check(rule.response, response, CALLER.get(), method)
                    return response
                except Refusal as refusal:
                    await self._refuse(context, refusal, method)
                except Exception as exc:
                    await _abort(context, exc, method, correlation_id)
                finally:
                    self._observe(method, context, started)

        return call

    def _stream(self, behaviour: Any, method: str, rule: Rule) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            correlation_id = _correlation_id(context)
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
                try:
                    self._admit(context, rule, method, request)
                    async for response in behaviour(request, context):
                        yield response
                except Refusal as refusal:
                    await self._refuse(context, refusal, method)
                except Exception as exc:
                    await _abort(context, exc, method, correlation_id)
                finally:
                    self._observe(method, context, started)

        return call

    def _observe(self, method: str, context: grpc.aio.ServicerContext, started: float) -> None:
        # After abort() the context knows the code; a call that returned normally has none.
        code = (
            grpc.StatusCode.CANCELLED
            if context.cancelled()
            else context.code() or grpc.StatusCode.OK
        )
        self._latency.labels(method, code.name).observe(time.perf_counter() - started)


def _correlation_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CORRELATION_KEY and isinstance(value, str) and ID_PATTERN.fullmatch(value):
            correlation_id = value
            break
    else:
        correlation_id = new_id()
    context.set_trailing_metadata(((CORRELATION_KEY, correlation_id),))
    return correlation_id


async def _abort(
    context: grpc.aio.ServicerContext, exc: Exception, method: str, correlation_id: str
) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, TradeflowError):
        code, message, metadata = status_of(exc)
        _log.info("rpc.failed", method=method, code=code.name, error=message)
        context.set_trailing_metadata(((CORRELATION_KEY, correlation_id), *metadata))
        await context.abort(code, message)
    _log.error("rpc.crashed", method=method, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (correlation id {correlation_id})"
    )
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


async def follow_health(
    health: HealthServicer,
    names: Sequence[str],
    healthy: Callable[[], bool] | None,
    poll: float = HEALTH_POLL_SECONDS,
) -> None:
    """Set ``names`` SERVING while ``healthy()`` holds and NOT_SERVING while it does not,
    checking every ``poll`` seconds until cancelled; ``names`` start SERVING (and stay so
    without a ``healthy``)."""
    if healthy is None:
        return
    serving = True
    while True:
        await asyncio.sleep(poll)
        if healthy() == serving:
            continue
        serving = not serving
        _log.warning("service.health_changed", serving=serving)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in names:
            await health.set(name, status)


@dataclass(frozen=True, slots=True, kw_only=True)
class Edges:
    """Where and how a service is reached."""

    listen: str
    """host:port of the gRPC server."""
    security: TransportSecurity
    """Its TLS material (plaintext only when local development chose it)."""
    metrics_port: int
    """``/metrics`` over HTTP (0: off)..."""
    metrics_host: str = "127.0.0.1"
    """...bound to this address."""
    reflection: bool = True
    """Whether gRPC reflection is served."""


def _bind(server: grpc.aio.Server, edges: Edges) -> None:
    try:
        if edges.security.plaintext:
            server.add_insecure_port(edges.listen)
        else:
            server.add_secure_port(edges.listen, edges.security.server_credentials())
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot listen on {edges.listen}: {exc}") from exc


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log line per scrape or probe."""


def _serve_http(
    registry: CollectorRegistry, edges: Edges, serving: Callable[[], bool]
) -> WSGIServer | None:
    """``/metrics`` and ``/healthz`` over HTTP on the metrics host and port (``None``
    when off). ``/healthz`` answers 200 while ``serving()`` holds and 503 otherwise: the
    probe for orchestrators, whose gRPC probes cannot present a client certificate."""
    if not edges.metrics_port:
        return None
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return list(metrics(environ, start_response))
        ok = serving()
        start_response(
            "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
        )
        return [b"serving\n" if ok else b"not serving\n"]

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in edges.metrics_host else socket.AF_INET

    try:
        server = make_server(
            edges.metrics_host, edges.metrics_port, app, Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve /metrics on {edges.metrics_host}:{edges.metrics_port}: {exc.strerror}"
        ) from exc
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


async def serve(service: Service, *, name: str, edges: Edges, grace_seconds: float) -> None:
    """Serve ``service`` at ``edges`` until SIGTERM/SIGINT, then shut down, giving in-flight
    calls ``grace_seconds``."""
    latency = Histogram(
        "tradeflow_rpc_server_handled_seconds",
        "gRPC calls handled, by method and status code.",
        ["method", "code"],
        buckets=LATENCY_BUCKETS,
        registry=service.registry,
    )
    server = grpc.aio.server(
        interceptors=[_Interceptor(latency, service, edges.security)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = list(service.register(server))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if edges.reflection:
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    listen, metrics_port = edges.listen, edges.metrics_port
    stop = asyncio.Event()

    def serving() -> bool:
        return not stop.is_set() and (service.healthy is None or service.healthy())

    metrics_server = None
    try:
        _bind(server, edges)
        metrics_server = _serve_http(service.registry, edges, serving)
        await server.start()
        for health_name in ("", *names):
            await health.set(health_name, health_pb2.HealthCheckResponse.SERVING)
        watcher = asyncio.create_task(follow_health(health, ("", *names), service.healthy))
        _log.info(
            "service.started",
            service=name,
            listen=listen,
            tls=not edges.security.plaintext,
            metrics=f"{edges.metrics_host}:{metrics_port}" if metrics_port else "off",
        )
        if edges.security.plaintext:
            _log.warning("service.plaintext", detail="no TLS: every caller is unauthenticated")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        _log.info("service.draining", service=name)
        watcher.cancel()
        await health.enter_graceful_shutdown()
        if service.drain is not None:
            await service.drain()
    finally:
        # Whatever happened above, stop serving and release connections.
        await server.stop(grace_seconds)
        if service.close is not None:
            await service.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    _log.info("service.stopped", service=name)
