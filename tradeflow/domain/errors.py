"""One error tree for tradeflow.

Every error the library raises derives from :class:`TradeflowError`. Each class
names the gRPC status code it maps to (as the canonical upper-case name, so the
core needs no ``grpc`` import); the services map errors to status codes and the
clients map status codes back to these classes in one place each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from tradeflow.domain.limits import shown

__all__ = [
    "AccessDenied",
    "CapacityExceeded",
    "CircuitOpenError",
    "ConfigurationError",
    "EgressRefused",
    "EmergencyHalted",
    "ExchangeError",
    "ExecutionNotFound",
    "ExternalRequestRejected",
    "ExternalServiceError",
    "InvalidRequest",
    "LeaseLost",
    "LooserHaltRefused",
    "NodeExecutionError",
    "NodeTimeoutError",
    "OrderDenied",
    "OrderRejected",
    "OwnerAlive",
    "ResumeAwaitingConfirmation",
    "RiskLimitExceeded",
    "TradeflowError",
    "UnavailableError",
    "ValidationIssue",
    "WorkflowValidationError",
]


class TradeflowError(Exception):
    """Root of every error tradeflow raises."""

    grpc_status: ClassVar[str] = "INTERNAL"
    """Canonical gRPC status code name this error maps to at a service edge."""
    _detail_fields: ClassVar[tuple[str, ...]] = ()
    """The attributes :meth:`details` carries."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Structured fields carried across the wire next to the message."""
        return {name: getattr(self, name) for name in self._detail_fields}


class ConfigurationError(TradeflowError):
    """A setting (environment variable, factory argument) is missing or malformed."""

    grpc_status = "FAILED_PRECONDITION"


class InvalidRequest(TradeflowError):
    """A request is malformed: a field is missing, of the wrong type or out of range.

    ``found`` is quoted through :func:`~tradeflow.domain.limits.shown`: truncated, so no
    message or detail carries a huge value.
    """

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, field: str, expected: str, found: object) -> None:
        super().__init__(f"invalid field {field!r}: expected {expected}, found {shown(found)}")
        self.field = field
        self.expected = expected
        self.found = found

    def details(self) -> dict[str, Any]:
        return {"field": self.field, "expected": self.expected, "found": shown(self.found)}


class CapacityExceeded(TradeflowError):
    """Adding one more would pass a count bound (active halts of one scope kind, risk limit
    types); the caller must free one first, so a retry alone cannot succeed."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("what", "capacity")

    def __init__(self, what: str, capacity: int) -> None:
        super().__init__(f"too many {what}: at most {capacity} (remove one before adding another)")
        self.what = what
        self.capacity = capacity


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One problem found in a workflow definition."""

    block_id: str | None
    """Id of the block at fault (``None`` for workflow-level problems)."""
    field: str
    """Dotted path of the offending field, e.g. ``properties.symbol``."""
    expected: str
    """What a valid definition has there."""
    found: str
    """What the definition has there instead."""

    def __str__(self) -> str:
        where = f"block {self.block_id!r}" if self.block_id is not None else "workflow"
        return f"{where}: field {self.field!r}: expected {self.expected}, found {self.found}"


class WorkflowValidationError(TradeflowError):
    """A workflow definition is invalid; ``issues`` lists every problem found."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, issues: Iterable[ValidationIssue]) -> None:
        self.issues: tuple[ValidationIssue, ...] = tuple(issues)
        count = len(self.issues)
        head = f"invalid workflow ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + ": " + "; ".join(str(i) for i in self.issues))

    def details(self) -> dict[str, Any]:
        return {
            "issues": [
                {"block_id": i.block_id, "field": i.field, "expected": i.expected, "found": i.found}
                for i in self.issues
            ]
        }


class EmergencyHalted(TradeflowError):
    """Trading is halted: the emergency controller refused to start an action.

    ``execution_id`` names the run it stopped, when an executor raised it.
    """

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("reason", "scope", "target", "state")

    def __init__(
        self,
        reason: str,
        *,
        scope: str = "global",
        target: str | None = None,
        state: str = "halted",
    ) -> None:
        where = scope if target is None else f"{scope} {target!r}"
        what = "trading halted" if state == "halted" else f"trading {state}"
        super().__init__(f"{what} ({where}): {reason}")
        self.reason = reason
        self.scope = scope
        self.target = target
        self.state = state
        """The trading state that refused: ``halted``, ``cancel_only`` or ``reduce_only``."""
        self.execution_id: str | None = None


class RiskLimitExceeded(TradeflowError):
    """A risk limit was breached (and, with ``auto_halt``, trading was halted).

    ``execution_id`` names the run it stopped, when an executor raised it.
    """

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("limit_type", "value", "threshold", "halted")

    def __init__(
        self, limit_type: str, value: float, threshold: float, *, halted: bool = False
    ) -> None:
        super().__init__(
            f"risk limit {limit_type!r} exceeded: value {value} breaches threshold {threshold}"
            + (" (trading halted)" if halted else "")
        )
        self.limit_type = limit_type
        self.value = value
        self.threshold = threshold
        self.halted = halted
        self.execution_id: str | None = None


class NodeExecutionError(TradeflowError):
    """A node failed; wraps the cause with the block id and node type."""

    grpc_status = "ABORTED"

    def __init__(self, node_id: str, node_type: str, cause: BaseException) -> None:
        super().__init__(f"node {node_id!r} ({node_type}) failed: {describe(cause)}")
        self.node_id = node_id
        self.node_type = node_type
        self.cause = cause


class NodeTimeoutError(TradeflowError):
    """A node ran longer than its ``config.timeout``."""

    grpc_status = "DEADLINE_EXCEEDED"
    _detail_fields = ("node_id", "timeout")

    def __init__(self, node_id: str, timeout: float) -> None:
        super().__init__(f"node {node_id!r} timed out after {timeout}s")
        self.node_id = node_id
        self.timeout = timeout


class CircuitOpenError(TradeflowError):
    """A call was refused because its circuit breaker is open."""

    grpc_status = "UNAVAILABLE"
    _detail_fields = ("breaker", "retry_after")

    def __init__(self, breaker: str, retry_after: float) -> None:
        super().__init__(f"circuit {breaker!r} is open; retry after {retry_after:.3f}s")
        self.breaker = breaker
        self.retry_after = retry_after


class ExchangeError(TradeflowError):
    """The exchange could not process a request."""

    grpc_status = "UNAVAILABLE"


class OrderRejected(ExchangeError):
    """The exchange rejected an order; retrying the same order cannot succeed."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("client_order_id", "reason")

    def __init__(self, client_order_id: str, reason: str) -> None:
        TradeflowError.__init__(self, f"order {client_order_id!r} rejected: {reason}")
        self.client_order_id = client_order_id
        self.reason = reason


class OrderDenied(TradeflowError):
    """A pre-trade check denied an order before it reached the venue (a configured limit
    of ``scope``/``target``). Not an exchange failure: a retry cannot pass it, and the
    ``place_order`` node turns it into its ``denied`` outcome."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("client_order_id", "check", "scope", "target", "value", "threshold")

    def __init__(
        self,
        client_order_id: str,
        *,
        check: str,
        scope: str,
        target: str | None,
        value: float,
        threshold: float,
        reason: str,
    ) -> None:
        super().__init__(f"order {client_order_id!r} denied: {reason}")
        self.client_order_id = client_order_id
        self.check = check
        """The limit type that denied it (``max_position``, ``order_rate``...)."""
        self.scope = scope
        self.target = target
        self.value = value
        self.threshold = threshold
        self.reason = reason


class ExternalServiceError(TradeflowError):
    """An external dependency (HTTP API) failed in a way a retry may fix (5xx, transport)."""

    grpc_status = "UNAVAILABLE"


class ExternalRequestRejected(TradeflowError):
    """An external dependency refused the request (4xx); retrying cannot fix it."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, url: str, status_code: int, body: str) -> None:
        super().__init__(f"{url} answered {status_code}: {body[:200]}")
        self.url = url
        self.status_code = status_code


class ExecutionNotFound(TradeflowError):
    """No execution with that id is known to the state store."""

    grpc_status = "NOT_FOUND"
    _detail_fields = ("execution_id",)

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} not found")
        self.execution_id = execution_id


class LeaseLost(TradeflowError):
    """This process's lease lapsed or was superseded (it was paused, partitioned or slow
    past its lease, and another owner may have taken its executions): it may neither
    write nor trade for them. The run stops where it is; nothing more is recorded."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("owner", "epoch", "execution_id")

    def __init__(
        self, owner: str, epoch: int, execution_id: str | None = None, why: str = ""
    ) -> None:
        about = f" for execution {execution_id!r}" if execution_id else ""
        super().__init__(
            f"lease of {owner!r} (epoch {epoch}) is no longer valid{about}"
            + (f": {why}" if why else "")
        )
        self.owner = owner
        self.epoch = epoch
        self.execution_id = execution_id


class OwnerAlive(TradeflowError):
    """An execution cannot be claimed (resumed) because a live owner is running it."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("execution_id", "owner")

    def __init__(self, execution_id: str, owner: str, detail: str = "") -> None:
        super().__init__(
            f"execution {execution_id!r} is running under a live lease held by {owner}"
            + (f" {detail}" if detail else "")
            + "; stop that process or wait for it to end (a dead owner's lease lapses by itself)"
        )
        self.execution_id = execution_id
        self.owner = owner


class UnavailableError(TradeflowError):
    """A backing service (state store, emergency controller, bus) cannot be reached."""

    grpc_status = "UNAVAILABLE"


def describe(exc: BaseException) -> str:
    """One line naming an exception: its message, or its class when it has none."""
    text = str(exc)
    return text if text else type(exc).__name__


class EgressRefused(TradeflowError):
    """The egress policy refused an ``api_call`` destination (a loopback, private,
    link-local or cloud metadata address...) before any connection was made. The
    request is wrong, not the dependency: never retried, never trips a breaker."""

    grpc_status = "PERMISSION_DENIED"
    _detail_fields = ("host", "reason")

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(
            f"api_call to {host}: {reason}, refused by the egress policy "
            "(allow it with TRADEFLOW_EGRESS_ALLOW)"
        )
        self.host = host
        self.reason = reason


class AccessDenied(TradeflowError):
    """A service refused the caller: no tradeflow principal in its certificate
    (``UNAUTHENTICATED``), or a role or id it may not use (``PERMISSION_DENIED``)."""

    grpc_status = "PERMISSION_DENIED"


class ResumeAwaitingConfirmation(TradeflowError):
    """A resume was recorded, not done: the scope's resume takes a second operator, who
    must make the same request before ``confirm_before`` (epoch seconds)."""

    grpc_status = "FAILED_PRECONDITION"
    _detail_fields = ("requested_by", "confirm_before")

    def __init__(self, where: str, requested_by: str, confirm_before: float) -> None:
        super().__init__(
            f"resume of {where} requested by {requested_by}: it takes effect when a "
            "different operator asks for it too (before the request lapses)"
        )
        self.requested_by = requested_by
        self.confirm_before = confirm_before


class LooserHaltRefused(TradeflowError):
    """A halt that would loosen a scope this caller may not loosen (a bot's own scope, a
    scope whose resume takes two operators): loosening is a resume."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, where: str, standing: str, asked: str) -> None:
        super().__init__(
            f"{where} is {standing}: a halt may not loosen it to {asked}; lift it with "
            "Resume (which may take a second operator)"
        )
