"""The one place where domain errors become gRPC statuses and back.

A service aborts with the status code the error class names
(``TradeflowError.grpc_status``), its message, and the error's class and
structured details as JSON in the ``tradeflow-error-bin`` trailing metadata; the
client turns that back into the same exception class.

Both are bounded (:data:`~tradeflow.domain.limits.ERROR_MESSAGE_MAX_BYTES`,
:data:`~tradeflow.domain.limits.ERROR_DETAILS_MAX_BYTES`) so that, with the
correlation id, they stay under gRPC's 8 KiB metadata limit: past it a client gets
INTERNAL instead of the error. Long texts are cut, the error class and the field
never are.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import grpc

from tradeflow.domain import errors
from tradeflow.domain.errors import TradeflowError, UnavailableError, ValidationIssue
from tradeflow.domain.limits import (
    ERROR_DETAILS_MAX_BYTES,
    ERROR_MESSAGE_MAX_BYTES,
    FOUND_MAX_CHARS,
)

__all__ = [
    "ERROR_METADATA_KEY",
    "error_from_payload",
    "error_from_rpc",
    "error_payload",
    "status_of",
]

ERROR_METADATA_KEY = "tradeflow-error-bin"

# Transport-level failures: the service is not there (or not in time).
_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def status_of(exc: TradeflowError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """Status code, message and trailing metadata for a domain error, each bounded."""
    message = _bounded_message(exc.message)
    payload = {"type": type(exc).__name__, "message": message, "details": exc.details()}
    return grpc.StatusCode[exc.grpc_status], message, ((ERROR_METADATA_KEY, _details(payload)),)


def error_payload(exc: TradeflowError) -> bytes:
    """The JSON a failed call's ``tradeflow-error-bin`` trailer carries for ``exc``, bounded
    the same way: how one item of a call that answers per item (``WriteBatches``) fails."""
    return status_of(exc)[2][0][1]


def error_from_payload(raw: bytes) -> TradeflowError:
    """The domain error :func:`error_payload` encoded."""
    return _rebuild(json.loads(raw))


_CUT = "..."
_SHORT_TEXT = 32
"""Characters each text keeps when the details still do not fit at FOUND_MAX_CHARS."""
_KEPT = frozenset({"type", "field"})
"""Keys whose text is never cut: what the client rebuilds the error and names the field by."""


def _bounded_message(message: str) -> str:
    """``message`` cut to ERROR_MESSAGE_MAX_BYTES as sent (gRPC percent-encodes every byte
    outside printable ASCII, and ``%``, as three)."""
    budget, cost, keep = ERROR_MESSAGE_MAX_BYTES - len(_CUT), 0, 0
    for index, char in enumerate(message[: ERROR_MESSAGE_MAX_BYTES + 1]):
        printable = " " <= char <= "~" and char != "%"
        cost += 1 if printable else 3 * len(char.encode("utf-8", "surrogatepass"))
        if cost > ERROR_MESSAGE_MAX_BYTES:
            return message[:keep] + _CUT
        if cost <= budget:
            keep = index + 1
    return message


def _cut(value: Any, most: int) -> Any:
    """``value`` with every text longer than ``most`` characters cut (but ``_KEPT`` keys)."""
    if isinstance(value, str):
        return value if len(value) <= most else value[:most] + _CUT
    if isinstance(value, dict):
        return {k: v if k in _KEPT else _cut(v, most) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cut(item, most) for item in value]
    return value


def _details(payload: dict[str, Any]) -> bytes:
    """The payload as JSON of at most ERROR_DETAILS_MAX_BYTES: texts are cut, then the
    validation issues past those that fit are counted in a last issue."""
    for most in (None, FOUND_MAX_CHARS, _SHORT_TEXT):
        cut = payload if most is None else _cut(payload, most)
        body = json.dumps(cut, default=str).encode()
        if len(body) <= ERROR_DETAILS_MAX_BYTES:
            return body
    issues = cut["details"].get("issues", [])
    kept = len(issues)
    while kept and len(body) > ERROR_DETAILS_MAX_BYTES:
        kept //= 2
        more = f"{len(issues) - kept} more problems not sent"
        last = {"block_id": None, "field": "issues", "expected": "fewer problems", "found": more}
        cut["details"]["issues"] = [*issues[:kept], last]
        body = json.dumps(cut, default=str).encode()
    return body


def error_from_rpc(err: grpc.aio.AioRpcError, *, service: str) -> TradeflowError:
    """The domain error a failed call carries, or ``UnavailableError`` for transport failures."""
    for key, value in err.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return _rebuild(json.loads(raw))
    code = err.code()
    if code in _UNAVAILABLE_CODES:
        return UnavailableError(f"{service} unavailable: {code.name}: {err.details()}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return errors.AccessDenied(f"{service} refused: {code.name}: {err.details()}")
    return TradeflowError(f"{service} failed: {code.name}: {err.details()}")


# Errors whose constructor takes the fields their details() carry (a newer server may
# send more: only the constructor's are passed).
_BY_DETAILS: dict[str, type[TradeflowError]] = {
    cls.__name__: cls
    for cls in (
        errors.CapacityExceeded,
        errors.ExecutionNotFound,
        errors.EmergencyHalted,
        errors.RiskLimitExceeded,
        errors.OrderRejected,
        errors.CircuitOpenError,
        errors.NodeTimeoutError,
    )
}


def _rebuild(payload: dict[str, Any]) -> TradeflowError:
    name, message, details = payload["type"], payload["message"], payload.get("details") or {}
    if name == "WorkflowValidationError":
        return errors.WorkflowValidationError(ValidationIssue(**i) for i in details["issues"])
    if name == "InvalidRequest":
        invalid = errors.InvalidRequest(details["field"], details["expected"], details["found"])
        invalid.message = message
        invalid.args = (message,)
        return invalid
    rebuilt = _BY_DETAILS.get(name)
    if rebuilt is not None:
        known = inspect.signature(rebuilt).parameters
        return rebuilt(**{key: value for key, value in details.items() if key in known})
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, TradeflowError)):
        cls = TradeflowError
    error = cls.__new__(cls)
    TradeflowError.__init__(error, message)
    for key in cls._detail_fields:
        if key in details:
            setattr(error, key, details[key])
    return error
