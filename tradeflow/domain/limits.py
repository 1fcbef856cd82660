"""Every bound on what a caller may send, in one place (docs/LIMITS.md lists them).

A request past one of these is refused where it enters (the library call, the
RPC, the CLI) with :class:`~tradeflow.domain.errors.InvalidRequest` naming the
field, what was expected and what was found, truncated by :func:`shown`: no
single request can exhaust memory, break a NATS subject, a log line or a
terminal, or push an error past the transport's limits.

Empty strings: ``""`` is never a well-formed id. ``check_id(..., optional=True)``
lets ``None`` through, nothing else; where the wire has ``""`` for "absent" (a
proto3 string without presence, such as ``request_id``), the decoder turns it
into ``None`` before checking.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Literal, overload

if TYPE_CHECKING:
    from tradeflow.domain.errors import InvalidRequest

__all__ = [
    "ACTOR_MAX_LENGTH",
    "AUDITED_ITEMS_MAX",
    "CANCELLED_REPORT_MAX",
    "CLIENT_ORDER_ID_MAX_LENGTH",
    "CURSOR_MAX",
    "DEFINITION_MAX_BYTES",
    "ERROR_DETAILS_MAX_BYTES",
    "ERROR_MESSAGE_MAX_BYTES",
    "FOUND_MAX_CHARS",
    "HALTS_PER_SCOPE_KIND_MAX",
    "ID_CHARACTERS",
    "ID_EXPECTED",
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "IN_FLIGHT_MAX",
    "PAGE_MAX_BYTES",
    "PAGE_TOKEN_MAX_LENGTH",
    "REPORTED_IN_FLIGHT_MAX",
    "RISK_LIMITS_MAX",
    "TEXT_MAX_LENGTH",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "TRACKED_OWNERS_MAX",
    "check_client_order_id",
    "check_cursor",
    "check_id",
    "check_text",
    "check_timestamp",
    "shown",
]

ID_MAX_LENGTH: Final = 128
"""Characters in an id (execution, workflow, bot, strategy, request, correlation,
scope target): 128, room for a UUID with a prefix, short enough for a subject and a log line."""
ID_CHARACTERS: Final = r"A-Za-z0-9_\-:~@+="
"""The characters an id may hold, as the body of a regular-expression class."""
ID_PATTERN: Final = re.compile(f"[{ID_CHARACTERS}]{{1,{ID_MAX_LENGTH}}}")
"""A well-formed id, matched whole: the NATS adapter's plain-token characters, so an id
is a subject token as it is, and safe in a log line and a terminal (no dot, no space,
no control character)."""
ID_EXPECTED: Final = "an id of 1 to 128 characters from A-Z a-z 0-9 _ - : ~ @ + ="
CLIENT_ORDER_ID_MAX_LENGTH: Final = 2 * ID_MAX_LENGTH + 1
"""An execution id, ``:`` and a block id (``ExecutionContext.client_order_id``)."""
CLIENT_ORDER_ID_PATTERN: Final = re.compile(f"[{ID_CHARACTERS}]{{1,{CLIENT_ORDER_ID_MAX_LENGTH}}}")
CLIENT_ORDER_ID_EXPECTED: Final = (
    f"a client order id of 1 to {CLIENT_ORDER_ID_MAX_LENGTH} characters from"
    " A-Z a-z 0-9 _ - : ~ @ + ="
)
TEXT_MAX_LENGTH: Final = 1024
"""Characters in a free text: a halt reason, a message, a description (1024)."""
ACTOR_MAX_LENGTH: Final = 128
"""Characters in an actor name (who halted, resumed or set a limit): 128, like an id."""
FOUND_MAX_CHARS: Final = 200
"""Characters of a refused value an error quotes (its ``found``): 200, then an ellipsis."""
DEFINITION_MAX_BYTES: Final = 2 * 1024 * 1024
"""Bytes of a workflow definition's JSON, checked before it is parsed: 2 MiB. The engine
allows 1000 blocks; real workflows are a few KB to a few hundred KB, and 2 MiB leaves
2 KiB per block at the block maximum, while parsing stays a few tens of MB at worst
(a 5.5 MB definition cost the executor about 50 MB before it was refused)."""
PAGE_MAX_BYTES: Final = 4 * 1024 * 1024
"""Most bytes of executions one page carries over gRPC (half the 8 MiB message limit):
a page that would be larger ends early, its token continuing after the last record sent
(a page always carries at least one)."""
PAGE_TOKEN_MAX_LENGTH: Final = 512
"""Characters of a page token: 512, over twice what a token for a 128-character id needs."""
CURSOR_MAX: Final = 2**63 - 1
"""Largest cursor or sequence number: a signed 64-bit integer, what every store holds."""
TIMESTAMP_MIN: Final = 0
"""Earliest timestamp (epoch seconds) a query may name: 1970-01-01T00:00:00Z."""
TIMESTAMP_MAX: Final = 253402300799
"""Latest timestamp (epoch seconds) a query may name: 9999-12-31T23:59:59Z."""
HALTS_PER_SCOPE_KIND_MAX: Final = 250
"""Active halts of one scope kind (bot, strategy, workflow): 250, so the whole emergency
state fits gRPC's default 4 MiB message, which any watcher can receive: 751 halts of the
longest target, reason and actor (4.8 KB each in 4-byte UTF-8) make 3.6 MB. A global halt
is never refused for being one too many."""
RISK_LIMITS_MAX: Final = 500
"""Configured risk limits, of every type and scope together: 500 (replacing an existing
one is never refused). They travel with the halts in every ``WatchState`` message: 500
limits of the longest fields (about 0.9 kB each) and 751 halts (3.6 MB) stay under gRPC's
default 4 MiB message."""
IN_FLIGHT_MAX: Final = 1000
"""In-flight actions one halt acknowledgement carries (about 0.5 MB of the longest ids):
an executor with more reports the first ones, a request with more is refused."""
REPORTED_IN_FLIGHT_MAX: Final = 5000
"""In-flight actions one halt barrier report lists, whatever the number of executors
(the rest are counted in a log line)."""
TRACKED_OWNERS_MAX: Final = 10_000
"""Executors whose last acknowledgement the barrier keeps; past it the oldest is
forgotten (still live, it is fenced by the next barrier, as if it had not answered)."""
AUDITED_ITEMS_MAX: Final = 100
"""In-flight actions or cancelled orders one audit entry lists (it counts them all)."""
CANCELLED_REPORT_MAX: Final = 10_000
"""Client order ids one cancel-on-halt report may carry."""
ERROR_MESSAGE_MAX_BYTES: Final = 2048
"""Bytes of a gRPC status message as sent (percent-encoding counted): 2 KiB."""
ERROR_DETAILS_MAX_BYTES: Final = 3072
"""Bytes of the ``tradeflow-error-bin`` trailing metadata (JSON): 3 KiB, 4 KiB once
base64-encoded. With the status message and the correlation id, the trailers stay
under gRPC's 8 KiB default metadata limit, past which a client gets INTERNAL."""

_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What a free text may not hold: C0 and C1 controls (NUL, ESC and so every ANSI
sequence, newlines), DEL, Unicode line separators and bidirectional overrides."""


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut at :data:`FOUND_MAX_CHARS` with its length.

    A long string is cut before ``repr`` so a huge value costs nothing to show.
    """
    if isinstance(value, str | bytes):
        size, unit = len(value), "bytes" if isinstance(value, bytes) else "characters"
        text = repr(value[:FOUND_MAX_CHARS])
    else:
        text = repr(value)
        size, unit = len(text), "characters"
    if size <= FOUND_MAX_CHARS and len(text) <= FOUND_MAX_CHARS:
        return text
    return f"{text[:FOUND_MAX_CHARS]}... ({size} {unit})"


def _invalid(field: str, expected: str, found: object) -> InvalidRequest:
    # errors.py imports shown() from here: import it back only when refusing.
    from tradeflow.domain.errors import InvalidRequest

    return InvalidRequest(field, expected, found)


@overload
def check_id(field: str, value: object) -> str: ...
@overload
def check_id(field: str, value: object, *, optional: Literal[True]) -> str | None: ...
def check_id(field: str, value: object, *, optional: bool = False) -> str | None:
    """``value`` if it is a well-formed id (``None`` too with ``optional``); else
    ``InvalidRequest`` naming ``field``."""
    if isinstance(value, str) and ID_PATTERN.fullmatch(value):
        return value
    if value is None and optional:
        return None
    raise _invalid(field, ID_EXPECTED + (" (or none)" if optional else ""), value)


def check_client_order_id(field: str, value: object) -> str:
    """``value`` if it is a client order id as executions make them (an execution id, ``:``,
    a block id: at most :data:`CLIENT_ORDER_ID_MAX_LENGTH` id characters); else
    ``InvalidRequest`` naming ``field``."""
    if isinstance(value, str) and CLIENT_ORDER_ID_PATTERN.fullmatch(value):
        return value
    raise _invalid(field, CLIENT_ORDER_ID_EXPECTED, value)


def check_text(field: str, value: object, *, max_length: int = TEXT_MAX_LENGTH) -> str:
    """``value`` if it is a string of at most ``max_length`` characters with no control
    character (see ``_CONTROL``); else ``InvalidRequest`` naming ``field``."""
    if isinstance(value, str) and len(value) <= max_length and not _CONTROL.search(value):
        return value
    expected = f"text of at most {max_length} characters without control characters"
    raise _invalid(field, expected, value)


def check_cursor(field: str, value: int) -> int:
    """``value`` if it is within 0 .. :data:`CURSOR_MAX`; else ``InvalidRequest``."""
    if 0 <= value <= CURSOR_MAX:
        return value
    raise _invalid(field, f"a cursor from 0 to {CURSOR_MAX}", value)


def check_timestamp(field: str, value: float) -> float:
    """``value`` (epoch seconds) if within :data:`TIMESTAMP_MIN` .. :data:`TIMESTAMP_MAX`."""
    if TIMESTAMP_MIN <= value <= TIMESTAMP_MAX:
        return value
    expected = f"epoch seconds from {TIMESTAMP_MIN} to {TIMESTAMP_MAX} (9999-12-31T23:59:59Z)"
    raise _invalid(field, expected, value)
