"""Who is calling: principals, their roles, and the caller of the work in progress.

A principal is named by its certificate's URI SAN ``spiffe://tradeflow/<role>/<name>``
(checked by the services' interceptor; never taken from a request field). The roles:

- ``bot``: runs its own workflows (the ``bot_id`` is the principal's name) and may halt
  its own scope; never resumes, never changes limits;
- ``operator``: halts, resumes, cancels and reads everything;
- ``admin``: changes risk limits (and reads them);
- ``executor``: the executor service itself, the only role that writes execution state.

The caller of the work in progress is a context variable, bound by the interceptor for
each call, so the audit records who asked whatever code path the request takes. Work no
caller asked for (the embedded library, the trigger evaluator) runs as :data:`SYSTEM`.
"""

from __future__ import annotations

import enum
import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from tradeflow.domain.errors import InvalidRequest
from tradeflow.domain.records import AuditEntry

__all__ = [
    "CALLER",
    "PRINCIPAL_PREFIX",
    "SYSTEM",
    "Caller",
    "Principal",
    "Role",
    "attributed",
    "current_caller",
]

PRINCIPAL_PREFIX: Final = "spiffe://tradeflow/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,118}")
"""At most 119 characters: ``role/name`` is the actor of every change a principal makes,
and an actor is at most ``ACTOR_MAX_LENGTH`` (128) long."""


class Role(enum.StrEnum):
    BOT = "bot"
    OPERATOR = "operator"
    ADMIN = "admin"
    EXECUTOR = "executor"
    SYSTEM = "system"
    """Not a certificate's role: work of the process itself (embedded, triggers)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated identity: a role and a name (a bot's name is its ``bot_id``)."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        return f"{PRINCIPAL_PREFIX}{self.role.value}/{self.name}"

    def __str__(self) -> str:
        return f"{self.role.value}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Principal:
        """The principal a URI SAN names; ``InvalidRequest`` when it names none."""
        rest = uri.removeprefix(PRINCIPAL_PREFIX)
        role, _, name = rest.partition("/")
        if (
            rest == uri
            or role not in {r.value for r in Role if r is not Role.SYSTEM}
            or not _NAME.fullmatch(name)
        ):
            raise InvalidRequest(
                "principal", f"{PRINCIPAL_PREFIX}<bot|operator|admin|executor>/<name>", uri
            )
        return cls(Role(role), name)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked for the work in progress, and from where."""

    principal: Principal
    peer: str = ""
    """The network peer (``ipv4:10.0.0.7:51234``), empty when in-process."""

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def role(self) -> Role:
        return self.principal.role


SYSTEM: Final = Caller(Principal(Role.SYSTEM, "tradeflow"))
CALLER: ContextVar[Caller] = ContextVar("tradeflow_caller", default=SYSTEM)


def current_caller() -> Caller:
    """The caller bound to the work in progress (:data:`SYSTEM` when none is)."""
    return CALLER.get()


def attributed(entry: AuditEntry) -> AuditEntry:
    """``entry`` with the caller of the work in progress recorded in it (the stores call
    this on every entry they write, so no change escapes attribution)."""
    caller = current_caller()
    return entry.attributed(str(caller.principal), caller.role.value, caller.peer)
