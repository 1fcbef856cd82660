"""The one place where domain errors become gRPC statuses and back.

A service aborts with the status code the error class names
(``TradeflowError.grpc_status``), its message, and the error's class and
structured details as JSON in the ``tradeflow-error-bin`` trailing metadata; the
client turns that back into the same exception class.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import grpc

from tradeflow.domain import errors
from tradeflow.domain.errors import TradeflowError, UnavailableError, ValidationIssue

__all__ = ["ERROR_METADATA_KEY", "error_from_rpc", "status_of"]

ERROR_METADATA_KEY = "tradeflow-error-bin"

# Transport-level failures: the service is not there (or not in time).
_UNAVAILABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}


def status_of(exc: TradeflowError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """Status code, message and trailing metadata for a domain error."""
    payload = {"type": type(exc).__name__, "message": exc.message, "details": exc.details()}
    body = json.dumps(payload, default=str).encode()
    return grpc.StatusCode[exc.grpc_status], exc.message, ((ERROR_METADATA_KEY, body),)


def error_from_rpc(err: grpc.aio.AioRpcError, *, service: str) -> TradeflowError:
    """The domain error a failed call carries, or ``UnavailableError`` for transport failures."""
    for key, value in err.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return _rebuild(json.loads(raw))
    code = err.code()
    if code in _UNAVAILABLE_CODES:
        return UnavailableError(f"{service} unavailable: {code.name}: {err.details()}")
    return TradeflowError(f"{service} failed: {code.name}: {err.details()}")


# Errors whose constructor takes the fields their details() carry (a newer server may
# send more: only the constructor's are passed).
_BY_DETAILS: dict[str, type[TradeflowError]] = {
    cls.__name__: cls
    for cls in (
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
    return error
