"""Encodings shared by every store and the wire: JSON under one policy, page tokens.

Every stored JSON value is written by :func:`to_json_bytes` (or
:func:`to_json_or_null`) and read by :func:`from_json`, all orjson with one policy:

- keys that are not strings (int, float, bool, ``None``, enums) are written as
  strings, as the standard library did (``OPT_NON_STR_KEYS``, applied only to a
  value that needs it: it slows every call by about a third);
- NaN and +/-Infinity are written as ``null`` (JSON has no such numbers);
- there is no ``default=`` fallback: an int beyond 64 bits, or an object of a
  type orjson does not serialize, raises ``TypeError``, so a write holding one
  fails as a whole instead of storing something that reads back different.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import orjson

from tradeflow.domain.errors import InvalidRequest

__all__ = [
    "MAX_EVENTS_PAGE",
    "MAX_PAGE_SIZE",
    "decode_page_token",
    "encode_page_token",
    "from_json",
    "to_json_bytes",
    "to_json_or_null",
]

MAX_PAGE_SIZE: Final = 1000
"""Most executions one ``list_executions`` call returns, on every store."""
MAX_EVENTS_PAGE: Final = 1000
"""Most events one ``read_events`` call returns, on every store (a page of events
must fit in one gRPC message)."""
_BAD_TOKEN: Final = "a page_token returned by a previous list_executions call"


def to_json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value`` under the module's JSON policy, for BLOB columns."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # OPT_NON_STR_KEYS makes every call about a third slower, and values with
        # non-string keys are rare: pay for it only when one has them.
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def to_json_or_null(value: dict[str, Any] | None) -> str | None:
    """JSON text of a non-empty dict; ``None`` (stored as NULL) for ``None`` or ``{}``."""
    return to_json_bytes(value).decode() if value else None


def from_json(text: str | bytes | None) -> Any:
    """Inverse of the encoders (NULL gives ``None``); raises ``ValueError`` on malformed JSON."""
    return None if text is None else orjson.loads(text)


def encode_page_token(started_at: float, execution_id: str) -> str:
    return base64.urlsafe_b64encode(to_json_bytes([started_at, execution_id])).decode("ascii")


def decode_page_token(token: str) -> tuple[float, str]:
    try:
        started_at, execution_id = from_json(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("page_token", _BAD_TOKEN, token) from exc
    if (
        isinstance(started_at, bool)
        or not isinstance(started_at, int | float)
        or not isinstance(execution_id, str)
    ):
        raise InvalidRequest("page_token", _BAD_TOKEN, token)
    return float(started_at), execution_id
