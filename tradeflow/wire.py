"""Conversions between tradeflow's records and their protobuf messages, both ways.

Pure functions, shared by the services (servicers) and their clients, so each
mapping is written once. ``None`` travels as an unset field: proto3 ``optional``
for scalars, an absent message for timestamps, the ``_UNSPECIFIED`` value for
enums. Free-form dicts travel as JSON text, so integers stay integers.

Timestamps are epoch seconds as floats here and ``google.protobuf.Timestamp``
on the wire; for any time after February 1970 a float survives the trip exactly
(nanosecond resolution is far finer than a float's at that magnitude).

A message that cannot become a record (an unspecified enum where a value is
required, text that is not a JSON object) raises
:class:`~tradeflow.errors.InvalidRequest` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from tradeflow.errors import InvalidRequest, ValidationIssue
from tradeflow.infrastructure.records import (
    AuditEntry,
    Checkpoint,
    CheckpointState,
    Event,
    ExecutionPage,
    ExecutionQuery,
    ExecutionRecord,
    ExecutionStatus,
    HaltState,
    LimitDirection,
    RiskLimit,
    Scope,
    StateBatch,
)
from tradeflow.proto.common.v1 import common_pb2
from tradeflow.proto.emergency.v1 import emergency_service_pb2
from tradeflow.proto.executor.v1 import executor_service_pb2
from tradeflow.proto.state.v1 import state_service_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "CHECKPOINT_STATE",
    "EXECUTION_STATUS",
    "LIMIT_DIRECTION",
    "SCOPE",
    "EnumCodec",
    "audit_entry_from_proto",
    "audit_entry_to_proto",
    "checkpoint_from_proto",
    "checkpoint_to_proto",
    "decode_json_object",
    "emergency_state_from_proto",
    "emergency_state_to_proto",
    "encode_json",
    "event_from_proto",
    "event_to_proto",
    "execution_from_proto",
    "execution_page_from_proto",
    "execution_page_to_proto",
    "execution_query_from_proto",
    "execution_query_to_proto",
    "execution_record_from_proto",
    "execution_record_to_proto",
    "execution_to_proto",
    "halt_state_from_proto",
    "halt_state_to_proto",
    "history_event_from_proto",
    "history_event_to_proto",
    "risk_limit_from_proto",
    "risk_limit_to_proto",
    "state_batch_from_proto",
    "state_batch_to_proto",
    "timestamp_from_proto",
    "timestamp_to_proto",
    "validation_issue_from_proto",
    "validation_issue_to_proto",
]

E = TypeVar("E", bound=StrEnum)
V = TypeVar("V", bound=int)

_NANOS_PER_SECOND = 1_000_000_000
_SHOWN_JSON_CHARS = 200
"""How much of malformed JSON text an error message quotes."""

# The same encoding as the SQLite store: compact, NaN-tolerant, ASCII-only (a
# lone surrogate in a Python str cannot become a protobuf string otherwise).
encode_json = json.JSONEncoder(separators=(",", ":")).encode
"""Render a JSON-ready value as compact JSON text."""
_decode_json = json.JSONDecoder().decode


class EnumCodec(Generic[E, V]):
    """Maps one records enum to its protobuf enum (``X.NAME`` <-> ``PREFIX_NAME``).

    Built at import, so a records member missing from the proto fails at once.
    """

    __slots__ = ("_from_proto", "_name", "_to_proto")

    def __init__(self, members: type[E], proto: _EnumTypeWrapper[V], prefix: str) -> None:
        self._to_proto = {member: proto.Value(prefix + member.name) for member in members}
        self._from_proto: dict[int, E] = {number: m for m, number in self._to_proto.items()}
        self._name = proto.Name

    def to_proto(self, member: E | None) -> V:
        """The proto value of ``member``; ``None`` becomes ``_UNSPECIFIED`` (0)."""
        if member is None:
            return self._name.__self__.Value(self._unspecified)  # type: ignore[attr-defined,no-any-return]
        return self._to_proto[member]

    def from_proto(self, number: int, field: str) -> E:
        """The member for ``number``; ``InvalidRequest`` naming ``field`` if there is none."""
        member = self._from_proto.get(number)
        if member is None:
            expected = "one of " + ", ".join(m.value for m in self._from_proto.values())
            raise InvalidRequest(field, expected, self._describe(number))
        return member

    def from_proto_optional(self, number: int, field: str) -> E | None:
        """Like :meth:`from_proto`, but ``_UNSPECIFIED`` (0) becomes ``None``."""
        return None if number == 0 else self.from_proto(number, field)

    def _describe(self, number: int) -> str:
        try:
            return self._name(number)  # type: ignore[arg-type]
        except ValueError:
            return str(number)
