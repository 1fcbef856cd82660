"""Well-formed hostile protobuf requests, built from a request's descriptor alone (for
``test_fuzz_rpcs``), so a field or RPC added later is fuzzed without touching the test.

Each :class:`Case` is a plausible base message (every field holds an ordinary value: ids
look like ids, numbers are 1, enums a defined non-zero value, timestamps recent, repeated
fields one element, optional fields set) with ONE field path set to one hostile value
kind, so a wrong answer names the field and the kind of value that caused it. Two
message-level cases come first: the all-default message and one carrying an unknown field.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["MAX_REQUEST_BYTES", "Case", "base", "cases"]

MAX_REQUEST_BYTES = 7 * 1024 * 1024
"""Every case stays under the services' 8 MiB message limit (with room for framing), so a
``RESOURCE_EXHAUSTED`` "message larger than max" can only be about a response."""

DEPTH = 3
"""How deep nested messages are walked (WriteBatchRequest.events[0].timestamp.seconds)."""

MANY = 1000
"""Elements of a repeated field in its "many" kind."""

Value = Callable[[random.Random], Any]

_T = FieldDescriptor
_SIGNED32 = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_SIGNED64 = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UNSIGNED32 = {_T.TYPE_UINT32, _T.TYPE_FIXED32}
_UNSIGNED64 = {_T.TYPE_UINT64, _T.TYPE_FIXED64}


def _fixed(value: Any) -> Value:
    return lambda rng: value


def valid_id(rng: random.Random) -> str:
    """A well-formed id no test outside the fuzz uses (``fuzz-`` prefix)."""
    return f"fuzz-{rng.randrange(10**9):09d}"


_DEEP = 100_000
_BLOCK = {"id": "b", "category": "providers", "type": "static", "properties": {"values": {}}}

STRING_KINDS: Mapping[str, Value] = {
    "empty": _fixed(""),
    "valid id": valid_id,
    "129 chars": _fixed("a" * 129),
    "5 KiB": _fixed("a" * 5 * 1024),
    "1 MiB": _fixed("a" * 1024 * 1024),
    "3 MiB": _fixed("a" * 3 * 1024 * 1024),  # three of them stored overflow a response
    "NUL": _fixed("fuzz\x00id"),
    "ANSI escape": _fixed("\x1b[2J\x1b[31mfuzz\x1b[0m"),
    "newline": _fixed("fuzz\r\nid"),
    "C1 control": _fixed("fuzz\x85\x9bid"),
    "unicode": _fixed("fuzz-\u00fcn\u00ef-\u20ac-\U0001d11e-\u202e-\ufeff"),
    "NATS wildcard": _fixed("fuzz.*.>"),
    "spaces": _fixed(" fuzz id "),
}
JSON_KINDS: Mapping[str, Value] = {
    "not JSON": _fixed("{not json"),
    "JSON scalar": _fixed("42"),
    "JSON null": _fixed("null"),
    "JSON array": _fixed("[]"),
    "JSON NaN": _fixed('{"x": NaN, "y": Infinity}'),
    "JSON huge number": _fixed('{"x": 1e999, "y": ' + "9" * 5000 + "}"),
    "1 MiB JSON": _fixed(json.dumps({"x": "a" * 1024 * 1024})),
    "3 MiB JSON": _fixed(json.dumps({"x": "a" * 3 * 1024 * 1024})),
    "deep JSON array": _fixed("[" * _DEEP + "]" * _DEEP),
    "deep JSON object": _fixed('{"a":' * _DEEP + "1" + "}" * _DEEP),
    "60k blocks": _fixed(
        json.dumps({"blocks": [{**_BLOCK, "id": f"b{i}"} for i in range(60_000)]})
    ),
}
"""Extra kinds of ``*_json`` fields (on top of :data:`STRING_KINDS`)."""

_NUMBER_KINDS: Mapping[str, Mapping[str, Value]] = {
    "signed32": {
        "0": _fixed(0),
        "-1": _fixed(-1),
        "min": _fixed(-(2**31)),
        "max": _fixed(2**31 - 1),
    },
    "signed64": {
        "0": _fixed(0),
        "-1": _fixed(-1),
        "min": _fixed(-(2**63)),
        "max": _fixed(2**63 - 1),
        "2^53+1": _fixed(2**53 + 1),
    },
    "unsigned32": {"0": _fixed(0), "max": _fixed(2**32 - 1)},
    "unsigned64": {
        "0": _fixed(0),
        "2^63-1": _fixed(2**63 - 1),
        "2^63": _fixed(2**63),
        "max": _fixed(2**64 - 1),
    },
    "double": {
        "nan": _fixed(math.nan),
        "inf": _fixed(math.inf),
        "-inf": _fixed(-math.inf),
        "1e308": _fixed(1e308),
        "-1e308": _fixed(-1e308),
        "-0.0": _fixed(-0.0),
        "denormal": _fixed(5e-324),
    },
    "bool": {"true": _fixed(True), "false": _fixed(False)},
    "enum": {"0 (UNSPECIFIED)": _fixed(0), "unknown 99": _fixed(99), "-1": _fixed(-1)},
}
_TIMESTAMP_KINDS: Mapping[str, tuple[int, int]] = {
    "epoch 0": (0, 0),
    "-1 s": (-1, 0),
    "before year 1": (-62_135_596_801, 0),
    "year 10000": (253_402_300_800, 0),
    "max int64 s": (2**63 - 1, 0),
    "nanos 1e9": (1_700_000_000, 1_000_000_000),
    "nanos -1": (1_700_000_000, -1),
}


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile request: ``path`` (``events[0].timestamp``, or ``(message)``) holds a
    value of ``kind``."""

    path: str
    kind: str
    message: Message


def _number_family(field: FieldDescriptor) -> str:
    kind = field.type
    if kind in _SIGNED32:
        return "signed32"
    if kind in _SIGNED64:
        return "signed64"
    if kind in _UNSIGNED32:
        return "unsigned32"
    if kind in _UNSIGNED64:
        return "unsigned64"
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return "double"
    if kind == _T.TYPE_BOOL:
        return "bool"
    return "enum"


def _is_timestamp(field: Any) -> bool:
    return (
        field.message_type is not None
        and field.message_type.full_name == Timestamp.DESCRIPTOR.full_name
    )


_SHARED_IDS = frozenset({"execution_id", "workflow_id", "bot_id", "strategy_id", "correlation_id"})
"""Ids that name what a record belongs to: one value per base message (a batch's checkpoints
and events belong to its execution)."""


@dataclass
class _Base:
    """What a base message being built shares: its random source, scalar overrides by field
    full name or name, the fields left unset (by full name: messages, and scalars that have
    presence), its owner ids, and a clock so later
    timestamps come later (started_after < started_before, started_at < finished_at)."""

    rng: random.Random
    overrides: Mapping[str, object]
    ids: dict[str, str]
    unset: Collection[str] = ()
    clock: int = 1_700_000_000

    def timestamp(self) -> Timestamp:
        self.clock += 1000
        return Timestamp(seconds=self.clock)


def _base_scalar(field: Any, base: _Base) -> Any:
    rng = base.rng
    if field.full_name in base.overrides:
        return base.overrides[field.full_name]
    if field.name in base.overrides:
        return base.overrides[field.name]
    if field.type == _T.TYPE_STRING:
        if field.name == "page_token":
            return ""  # the first page: anything else must come from a previous page
        if field.name.endswith("_json"):
            return "{}"
        if field.name in _SHARED_IDS:
            return base.ids.setdefault(field.name, valid_id(rng))
        return valid_id(rng)
    if field.type == _T.TYPE_BYTES:
        return b"fuzz"
    if field.type == _T.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values if v.number != 0])
    if field.type == _T.TYPE_BOOL:
        return rng.choice([True, False])
    return 1.0 if field.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT) else 1


def base(
    descriptor: Descriptor,
    rng: random.Random,
    overrides: Mapping[str, object],
    unset: Collection[str] = (),
) -> Message:
    """A plausible message of ``descriptor``; ``overrides`` gives scalar fields by full name
    (``pkg.Message.field``, for one message) or by name (for every message), and the fields
    named (by full name) in ``unset`` stay unset."""
    message = GetMessageClass(descriptor)()
    _fill(message, _Base(rng, overrides, {}, unset), DEPTH)
    return message


def _fill(message: Message, base: _Base, depth: int) -> None:
    for field in message.DESCRIPTOR.fields:
        if _is_timestamp(field):
            stamp = base.timestamp()
            if field.is_repeated:
                getattr(message, field.name).append(stamp)
            else:
                getattr(message, field.name).CopyFrom(stamp)
        elif field.message_type is not None:
            if depth > 0 and field.full_name not in base.unset:
                _fill_child(message, field, base, depth - 1)
        elif field.has_presence and field.full_name in base.unset:
            continue
        else:
            value = _base_scalar(field, base)
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)


def _fill_child(message: Message, field: Any, base: _Base, depth: int) -> None:
    child = getattr(message, field.name)
    _fill(child.add() if field.is_repeated else child, base, depth)


def _encoded(make: Value) -> Value:
    return lambda rng: make(rng).encode()


def _kinds(field: FieldDescriptor) -> Mapping[str, Value]:
    if field.type in (_T.TYPE_STRING, _T.TYPE_BYTES):
        kinds = dict(STRING_KINDS)
        if field.name.endswith("_json"):
            kinds.update(JSON_KINDS)
        if field.type == _T.TYPE_BYTES:
            return {name: _encoded(make) for name, make in kinds.items()}
        return kinds
    return _NUMBER_KINDS[_number_family(field)]


def _paths(descriptor: Descriptor, prefix: str, depth: int) -> Iterator[tuple[str, str]]:
    """Every (field path, kind) of ``descriptor``, nested messages down to ``depth``."""
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if field.is_repeated:
            yield path, "empty list"
            yield path, "many"
            path += "[0]"
        elif field.has_presence:
            yield path, "unset"
        if _is_timestamp(field):
            yield from ((path, kind) for kind in _TIMESTAMP_KINDS)
        elif field.message_type is not None:
            if depth > 0:
                yield from _paths(field.message_type, f"{path}.", depth - 1)
        else:
            yield from ((path, kind) for kind in _kinds(field))


def _apply(message: Message, path: str, kind: str, base: _Base) -> None:
    """Sets ``path`` of ``message`` (a base, so every element on the path exists) to ``kind``."""
    head, _, rest = path.partition(".")
    name, indexed = head.removesuffix("[0]"), head.endswith("[0]")
    field: Any = message.DESCRIPTOR.fields_by_name[name]
    container: Any = getattr(message, name)  # the field's value: a container on the way
    if rest:
        _apply(container[0] if indexed else container, rest, kind, base)
        return
    if field.is_repeated and not indexed:
        del container[:]
        if kind == "many":
            for _ in range(MANY):
                if field.message_type is None:
                    container.append(_base_scalar(field, base))
                elif _is_timestamp(field):
                    container.append(base.timestamp())
                else:
                    _fill(container.add(), base, DEPTH - 1)
        return
    if kind == "unset":
        message.ClearField(name)
    elif _is_timestamp(field):
        seconds, nanos = _TIMESTAMP_KINDS[kind]
        target = container[0] if indexed else container
        target.seconds, target.nanos = seconds, nanos
    else:
        value = _kinds(field)[kind](base.rng)
        if indexed:
            container[0] = value
        else:
            setattr(message, name, value)


def _unknown_field() -> bytes:
    """Field 1000, length-delimited, 1 KiB: what a newer client may send."""
    tag, payload = (1000 << 3) | 2, b"u" * 1024
    out = bytearray()
    for number in (tag, len(payload)):
        while number > 0x7F:
            out.append((number & 0x7F) | 0x80)
            number >>= 7
        out.append(number)
    return bytes(out) + payload


def cases(
    descriptor: Descriptor,
    count: int,
    seed: int,
    overrides: Mapping[str, object] | None = None,
    unset: Collection[str] = (),
) -> list[Case]:
    """The message-level cases, then every (path, kind) once in a seeded order, cycling with
    fresh bases up to ``count`` cases in all (a request with no fields gets just the two
    message-level ones); the same for the same ``seed``. ``overrides`` sets base scalar
    fields by full name or name (e.g. a real definition for ``definition_json``); a field in
    ``unset`` (full names) is left out of the base, except in the cases that fuzz it or a
    path inside it (a WriteBatch fence no live lease holds would refuse every batch)."""
    rng = random.Random(seed)
    names = overrides or {}
    empty = base(descriptor, rng, names, unset)
    empty.Clear()
    unknown = base(descriptor, rng, names, unset)
    unknown.MergeFromString(_unknown_field())
    found = [Case("(message)", "all default", empty), Case("(message)", "unknown field", unknown)]
    combos = list(_paths(descriptor, "", DEPTH))
    rng.shuffle(combos)
    total = max(count, len(found) + len(combos)) if combos else len(found)
    for index in range(total - len(found)):
        path, kind = combos[index % len(combos)]
        building = _Base(rng, names, {}, unset)
        message = GetMessageClass(descriptor)()
        _fill(message, building, DEPTH)
        head: Any = descriptor.fields_by_name[path.partition(".")[0].removesuffix("[0]")]
        if head.full_name in unset and head.message_type is not None and kind != "unset":
            _fill_child(message, head, building, DEPTH - 1)
        _apply(message, path, kind, building)
        if message.ByteSize() <= MAX_REQUEST_BYTES:
            found.append(Case(path, kind, message))
    return found
