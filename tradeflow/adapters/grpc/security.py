"""Who may call what: mutual TLS on every channel and one access policy per service.

- :class:`TransportSecurity` is a process's TLS material (the CA, its certificate and
  key), or :data:`PLAINTEXT` when local development chose no TLS. Servers require a
  client certificate chaining to the CA; clients present theirs.
- The caller's principal is the certificate's SPIFFE id (URI SAN
  ``spiffe://tradeflow/<role>/<name>``, :class:`~tradeflow.domain.principals.Principal`),
  as the TLS handshake verified it: never a request field.
- :class:`Policy` maps each method of a service to a :class:`Rule`: the roles allowed,
  and for the roles bound to an id (a bot and its ``bot_id``) a check of the request
  and, for reads, of the response. A method the policy does not name is refused.
  The server's interceptor (:mod:`tradeflow.adapters.grpc.server`) applies it: no
  principal is ``UNAUTHENTICATED``, a role or a binding refused ``PERMISSION_DENIED``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc

from tradeflow.domain.errors import ConfigurationError, InvalidRequest
from tradeflow.domain.principals import Caller, Principal, Role

__all__ = [
    "ANY_ROLE",
    "BOUND_ROLES",
    "PLAINTEXT",
    "UNAUTHENTICATED",
    "Check",
    "Policy",
    "Refusal",
    "Rule",
    "TransportSecurity",
    "caller_of",
    "optional",
    "own",
]

UNAUTHENTICATED: Final = Principal(Role.SYSTEM, "unauthenticated")
"""The principal of every call to a plaintext server (local development)."""
ANY_ROLE: Final = frozenset({Role.BOT, Role.OPERATOR, Role.ADMIN, Role.EXECUTOR})
BOUND_ROLES: Final = frozenset({Role.BOT})
"""Roles limited to their own ids: a rule's ``request`` and ``response`` checks apply to
them alone."""
_SPIFFE_ID: Final = "peer_spiffe_id"


@dataclass(frozen=True, slots=True)
class TransportSecurity:
    """PEM bytes of the CA, this process's certificate and key; all ``None``: plaintext."""

    ca: bytes | None = None
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)

    @property
    def plaintext(self) -> bool:
        return self.ca is None

    @classmethod
    def from_files(cls, ca: str, cert: str, key: str) -> TransportSecurity:
        """Read the three PEM files; ``ConfigurationError`` names one that cannot be read."""
        material = []
        for variable, path in (
            ("TRADEFLOW_TLS_CA", ca),
            ("TRADEFLOW_TLS_CERT", cert),
            ("TRADEFLOW_TLS_KEY", key),
        ):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
            if b"-----BEGIN " not in data:
                raise ConfigurationError(f"{variable}: {path} is not a PEM file")
            material.append(data)
        return cls(*material)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate chaining to the CA."""
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: the server checked against the CA, this certificate shown."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


PLAINTEXT: Final = TransportSecurity()


class Refusal(Exception):
    """A call refused by the policy: its status code and a message safe to send."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Check = Callable[[Any, Caller], str | None]
"""A check of a request (or response) against the caller: the reason it is refused, or
``None``. Only consulted for roles the rule binds."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method."""

    roles: frozenset[Role]
    request: Check | None = None
    response: Check | None = None

    def admit(self, caller: Caller, method: str) -> None:
        """Raise :class:`Refusal` unless the caller's role may call ``method``."""
        if caller.role not in self.roles:
            allowed = ", ".join(sorted(role.value for role in self.roles)) or "no role"
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.principal} may not call {method} (allowed: {allowed})",
            )

    def check(self, check: Check | None, message: Any, caller: Caller, method: str) -> None:
        if check is None or caller.role not in BOUND_ROLES:
            return
        reason = check(message, caller)
        if reason is not None:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED, f"{caller.principal} {method}: {reason}"
            )


def optional(message: Any, name: str) -> Any:
    """``message.<name>``, or ``None`` when that optional field is unset."""
    return getattr(message, name) if message.HasField(name) else None


def own(read: Callable[[Any], Any], what: str) -> Check:
    """A check that the id ``read`` finds in a message is the caller's own name (a
    bot's ``bot_id``); a missing id is refused too, so a bot can never reach past it."""

    def check(message: Any, caller: Caller) -> str | None:
        found = read(message)
        if found == caller.name:
            return None
        return f"{what} must be the caller's own ({caller.name!r}), found {found!r}"

    return check


Policy = Mapping[str, Rule]
"""Method name (``Halt``) -> rule; a method not named is refused to every caller."""


def caller_of(context: grpc.aio.ServicerContext, security: TransportSecurity) -> Caller:
    """The authenticated caller of a call: its certificate's principal and its peer.
    Plaintext servers authenticate nobody (:data:`UNAUTHENTICATED`)."""
    peer = context.peer() or ""
    if security.plaintext:
        return Caller(UNAUTHENTICATED, peer)
    ids = (context.auth_context() or {}).get(_SPIFFE_ID) or []
    if len(ids) != 1:
        raise Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "the client certificate names no tradeflow principal "
            "(a URI SAN spiffe://tradeflow/<role>/<name>)",
        )
    try:
        principal = Principal.parse(ids[0].decode(errors="replace"))
    except InvalidRequest as exc:
        raise Refusal(grpc.StatusCode.UNAUTHENTICATED, exc.message) from None
    return Caller(principal, peer)
