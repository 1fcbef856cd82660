"""Validation of workflow definitions: :func:`parse_workflow` turns a dict into a :class:`Workflow`.

Every problem found is collected and raised at once as one
:class:`~tradeflow.domain.errors.WorkflowValidationError`, each a
:class:`~tradeflow.domain.errors.ValidationIssue` naming the block, the field, what was
expected and what was found. ``found`` is a short rendering (type name and a
clipped preview), so a hostile value cannot blow the message up.

Sizes and nesting are checked first, iteratively, against :class:`Limits`, so a
definition built to hurt (a list nested a million deep, a 100 MB string, a
million blocks) is refused quickly with a clear issue, never a ``RecursionError``.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tradeflow.domain.errors import ValidationIssue, WorkflowValidationError
from tradeflow.domain.numbers import finite
from tradeflow.engine.graph import find_cycle, longest_chain, topological_order
from tradeflow.engine.model import Block, BreakerConfig, NodeConfig, Ref, RetryConfig, Workflow
from tradeflow.engine.nodes.registry import (
    CATEGORIES,
    CONTROL_INPUT,
    NodeRegistry,
    NodeSpec,
    Prop,
    default_registry,
)

__all__ = ["DEFAULT_LIMITS", "Limits", "parse_workflow"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a definition, checked before anything else reads a block."""

    max_blocks: int = 1000
    """Blocks in one workflow; past it, that is the only problem reported."""
    max_depth: int = 256
    """Blocks in the longest dependency chain."""
    max_string_length: int = 10_000
    """Characters in any string inside a block (object keys included)."""
    max_block_bytes: int = 65_536
    """Approximate JSON size of one block (and of each top-level field besides ``blocks``)."""
    max_nesting: int = 32
    """Nesting depth of objects and arrays inside one block (``properties`` is level 1)."""
    max_inputs: int = 64
    """Wired inputs of one block."""
    max_issues: int = 100
    """Problems listed in one error; any beyond are counted in a last issue."""


DEFAULT_LIMITS = Limits()

_BLOCK_KEYS = ("id", "name", "category", "type", "properties", "config", "inputs", "outputs")
_ID = re.compile(r"[A-Za-z0-9_-]+")
_ID_EXPECTED = "a block id of 1 to 128 characters from A-Z a-z 0-9 _ -"
_MAX_ID_LENGTH = 128
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WIRE = "a wire '<block_id>.<output>'"
_PREVIEW = 80
_MISSING = "missing"

_Report = Callable[[str, str, str], None]
"""``report(field, expected, found)``: records one problem of one block."""

_Field = tuple[str, Callable[[object], Any]]
"""``(expected, parse)`` for one key of a config object; ``parse`` returns the value to
keep, or ``None`` when it is invalid."""

_Trail = tuple["_Trail", str | int] | None
"""Where a value sits inside a block, as a linked list built without string work."""
_Container = dict[Any, Any] | list[Any]
_Stack = list[tuple[_Container, int, _Trail]]
"""Containers still to scan, with their nesting level and place."""


def parse_workflow(
    definition: object, *, registry: NodeRegistry | None = None, limits: Limits = DEFAULT_LIMITS
) -> Workflow:
    """Validate ``definition`` and return it as a :class:`Workflow`.

    Blocks come out in a deterministic topological order (ties broken by
    definition order) with property defaults filled in and ``config`` parsed.
    Raises :class:`WorkflowValidationError` listing every problem found.
    """
    registry = default_registry if registry is None else registry
    issues = _Issues(limits.max_issues)
    if not isinstance(definition, dict):
        issues.add(None, "definition", "an object with a 'blocks' array", _found(definition))
        raise issues.error()
    raw_blocks = _top_level(definition, limits, issues)
    blocks, outputs_of = _read_blocks(raw_blocks, registry, limits, issues)
    ids = list(outputs_of)
    rank = {block_id: n for n, block_id in enumerate(ids)}
    upstream = {
        block_id: _resolve_wires(block, outputs_of, rank, issues.at(block_id, ""))
        for block_id, block in blocks.items()
    }
    _check_graph(ids, upstream, limits, issues)
    if issues.total:
        raise issues.error()

    order = topological_order(ids, upstream)
    downstream: dict[str, list[str]] = {block_id: [] for block_id in order}
    for block_id in ids:
        for dep in upstream[block_id]:
            downstream[dep].append(block_id)
    return Workflow(
        blocks=tuple(blocks[block_id] for block_id in order),
        definition=definition,
        upstream={block_id: tuple(upstream[block_id]) for block_id in order},
        downstream={block_id: tuple(downstream[block_id]) for block_id in order},
    )


def _read_blocks(
    raw_blocks: list[Any], registry: NodeRegistry, limits: Limits, issues: _Issues
) -> tuple[dict[str, Block], dict[str, tuple[str, ...] | None]]:
    """Each usable block by id (first occurrence), and the outputs of every id found: None
    when the block is too faulty to know them. Reports duplicate ids."""
    blocks: dict[str, Block] = {}
    outputs_of: dict[str, tuple[str, ...] | None] = {}
    positions: dict[str, list[int]] = {}
    for index, raw in enumerate(raw_blocks):
        if not isinstance(raw, dict):
            issues.add(None, f"blocks[{index}]", "an object (a block)", _found(raw))
            continue
        block_id = _usable_id(raw.get("id"))
        report = issues.at(block_id, f"blocks[{index}]")
        if block_id is not None:
            positions.setdefault(block_id, []).append(index)
        problem = _scan(raw, limits)
        if problem is not None:
            report(*problem)
            if block_id is not None:
                outputs_of.setdefault(block_id, None)
            continue
        block, outputs = _read_block(index, raw, block_id, registry, limits, report)
        if block_id is not None and block_id not in outputs_of:
            outputs_of[block_id] = outputs
            blocks[block_id] = block
    for block_id, found_at in positions.items():
        if len(found_at) > 1:
            where = ", ".join(f"blocks[{p}]" for p in found_at)
            issues.add(block_id, "id", "a unique block id", f"{block_id!r} used by {where}")
    return blocks, outputs_of


def _top_level(definition: dict[Any, Any], limits: Limits, issues: _Issues) -> list[Any]:
    """The blocks array, after checking everything around it; raises when it is unusable."""
    top = _fields(definition, _TOP_FIELDS, "", issues.at(None, ""))
    raw_blocks: list[Any] | None = top.get("blocks")
    if raw_blocks is None:
        if "blocks" not in definition:
            issues.add(None, "blocks", _TOP_FIELDS["blocks"][0], _MISSING)
        raise issues.error()
    if len(raw_blocks) > limits.max_blocks:
        issues.add(None, "blocks", f"at most {limits.max_blocks} blocks", f"{len(raw_blocks)}")
        raise issues.error()
    if not raw_blocks:
        issues.add(None, "blocks", "at least one block", "an empty array")
    for key, value in top.items():
        # Wrapped so the value is scanned at the depth a block's fields have.
        problem = None if key == "blocks" else _scan({key: value}, limits)
        if problem is not None:
            issues.add(None, *problem)
    return raw_blocks


def _check_graph(
    ids: list[str], upstream: Mapping[str, list[str]], limits: Limits, issues: _Issues
) -> None:
    cycle = find_cycle(ids, upstream)
    if cycle is not None:
        issues.add(cycle[0], "inputs", "no dependency cycle", " -> ".join(cycle))
        return
    depth = longest_chain(ids, upstream)
    if depth > limits.max_depth:
        expected = f"a dependency chain of at most {limits.max_depth} blocks"
        issues.add(None, "blocks", expected, f"a chain of {depth} blocks")


class _Issues:
    """Collects problems, keeping the first ``limit`` and counting the rest."""

    __slots__ = ("_kept", "_limit", "total")

    def __init__(self, limit: int) -> None:
        self._kept: list[ValidationIssue] = []
        self._limit = limit
        self.total = 0

    def add(self, block_id: str | None, field: str, expected: str, found: str) -> None:
        self.total += 1
        if len(self._kept) < self._limit:
            self._kept.append(ValidationIssue(block_id, field, expected, found))

    def at(self, block_id: str | None, position: str) -> _Report:
        """A reporter for one block; without a usable id, fields are prefixed by its position."""
        prefix = "" if block_id is not None else position

        def report(field: str, expected: str, found: str) -> None:
            self.add(block_id, _join(prefix, field) or "block", expected, found)

        return report

    def error(self) -> WorkflowValidationError:
        issues = list(self._kept)
        if self.total > len(issues):
            more = f"{self.total - len(issues)} more problems not listed"
            expected = f"at most {self._limit} problems listed"
            issues.append(ValidationIssue(None, "definition", expected, more))
        return WorkflowValidationError(issues)


def _read_block(
    index: int,
    raw: dict[str, Any],
    block_id: str | None,
    registry: NodeRegistry,
    limits: Limits,
    report: _Report,
) -> tuple[Block, tuple[str, ...] | None]:
    """The block (id ``""`` if unusable) and its outputs (None if unknowable: a faulty block)."""
    if block_id is None:
        report("id", _ID_EXPECTED, _found(raw["id"]) if "id" in raw else _MISSING)
    _reject_unknown(raw, _BLOCK_KEYS, "", report)
    name = raw.get("name", block_id)
    if "name" in raw and not isinstance(name, str):
        report("name", "a string", _found(name))
    spec = _spec(raw, registry, report)
    properties, properties_ok = _properties(raw.get("properties", {}), spec, report)
    wires = _wires(raw.get("inputs", {}), spec, limits, report)
    if spec is not None and spec.check is not None and properties_ok:
        problems = spec.check(properties, frozenset(wires))
        for field, expected, found in problems:
            report(field, expected, _clip(found))
        properties_ok = not problems
    config = _config(raw.get("config", {}), spec, properties, properties_ok, report)
    outputs = _outputs(raw, spec, properties, properties_ok, report)
    block = Block(
        id=block_id or "",
        name=name if isinstance(name, str) else "",
        category=raw.get("category", ""),
        type=raw.get("type", ""),
        properties=properties,
        config=config,
        inputs=wires,
        outputs=outputs or (),
        index=index,
    )
    return block, outputs


def _spec(raw: dict[str, Any], registry: NodeRegistry, report: _Report) -> NodeSpec | None:
    category = raw.get("category")
    type_ = raw.get("type")
    if not isinstance(category, str) or category not in CATEGORIES:
        report("category", _one_of(CATEGORIES), _found(category) if "category" in raw else _MISSING)
        category = None
    if not isinstance(type_, str):
        report("type", "a node type name", _found(type_) if "type" in raw else _MISSING)
        return None
    if category is None:
        return None
    spec = registry.get(category, type_)
    if spec is None:
        types = registry.types(category)
        expected = f"a {category} type: " + (_one_of(types) if types else "none is registered")
        report("type", expected, _found(type_))
    return spec


def _properties(raw: object, spec: NodeSpec | None, report: _Report) -> tuple[dict[str, Any], bool]:
    """Properties with defaults filled in, and whether they are all valid."""
    if not isinstance(raw, dict):
        report("properties", "an object", _found(raw))
        return {}, False
    if spec is None:
        return dict(raw), False
    accepted = spec.properties
    problems: list[tuple[str, str, str]] = []
    for name, value in raw.items():
        prop = accepted.get(name)
        if prop is None:
            expected = _one_of(accepted) if accepted else "no properties (this type takes none)"
            problems.append((f"properties.{_label(name)}", expected, "an unknown property"))
            continue
        wanted = _property_problem(prop, value)
        if wanted is not None:
            # A sensitive value (a URL, headers...) may hold a credential: its type only.
            type_only = prop.sensitive and value is not None
            found = f"a {type(value).__name__}" if type_only else _found(value)
            problems.append((f"properties.{name}", wanted, found))
    filled = dict(raw)
    for name, prop in accepted.items():
        if name in raw:
            continue
        if prop.required:
            problems.append((f"properties.{name}", _KINDS[prop.kind][0], _MISSING))
        else:
            # A shared mutable default would leak one block's changes into another.
            filled[name] = copy.deepcopy(prop.default)
    for problem in problems:
        report(*problem)
    return filled, not problems


def _property_problem(prop: Prop, value: object) -> str | None:
    """What ``value`` should have been, or ``None`` when it is fine."""
    expected, accepts = _KINDS[prop.kind]
    if not accepts(value):
        return expected
    if prop.choices is not None and value not in prop.choices:
        return "one of: " + ", ".join(repr(choice) for choice in prop.choices)
    if (
        prop.minimum is not None
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value < prop.minimum
    ):
        return f"{expected} >= {prop.minimum}"
    return None


def _wires(raw: object, spec: NodeSpec | None, limits: Limits, report: _Report) -> dict[str, Ref]:
    """Well-formed wires by input name; reports names and references that are not."""
    if not isinstance(raw, dict):
        report("inputs", f"an object mapping input names to {_WIRE}", _found(raw))
        return {}
    if len(raw) > limits.max_inputs:
        report("inputs", f"at most {limits.max_inputs} inputs", f"{len(raw)}")
        return {}
    wires: dict[str, Ref] = {}
    for name, target in raw.items():
        field = f"inputs.{_label(name)}"
        if not _IDENTIFIER.fullmatch(name):
            report(field, "an input name matching [A-Za-z_][A-Za-z0-9_]*", "an invalid name")
            continue
        if (
            spec is not None
            and not spec.variadic_inputs
            and name not in spec.inputs
            and name != CONTROL_INPUT
        ):
            report(field, _one_of(spec.inputs) if spec.inputs else "no inputs", "an unknown input")
        ref = _ref(target)
        if ref is None:
            report(field, _WIRE, _found(target))
        else:
            wires[name] = ref
    if spec is not None:
        for name, required in spec.inputs.items():
            if required and name not in raw:
                report(f"inputs.{name}", f"{_WIRE} (required input)", _MISSING)
    return wires


def _ref(target: object) -> Ref | None:
    if not isinstance(target, str):
        return None
    block_id, dot, output = target.partition(".")
    if not dot or not output or _usable_id(block_id) is None:
        return None
    return Ref(block_id, output)


def _resolve_wires(
    block: Block,
    outputs_of: Mapping[str, tuple[str, ...] | None],
    rank: Mapping[str, int],
    report: _Report,
) -> list[str]:
    """Ids the block reads from, in definition order; reports wires to nothing."""
    upstream: set[str] = set()
    for name, ref in block.inputs.items():
        if ref.block_id not in outputs_of:
            report(
                f"inputs.{name}", "a wire to an existing block", f"unknown block {ref.block_id!r}"
            )
            continue
        outputs = outputs_of[ref.block_id]
        # Unknown outputs mean the target block is faulty and already reported.
        if outputs is not None and ref.output not in outputs:
            expected = f"an output of {ref.block_id!r}: " + _one_of(outputs)
            report(f"inputs.{name}", expected, _found(ref.output))
        upstream.add(ref.block_id)
    return sorted(upstream, key=rank.__getitem__)


def _outputs(
    raw: dict[str, Any],
    spec: NodeSpec | None,
    properties: Mapping[str, Any],
    properties_ok: bool,
    report: _Report,
) -> tuple[str, ...] | None:
    allowed = spec.output_names(properties) if spec is not None and properties_ok else None
    if "outputs" not in raw:
        return allowed
    declared = raw["outputs"]
    if not isinstance(declared, list) or not all(isinstance(name, str) for name in declared):
        report("outputs", "an array of output names", _found(declared))
        return None
    if allowed is not None:
        for position, name in enumerate(declared):
            if name not in allowed:
                expected = _one_of(allowed) if allowed else "no outputs (this type has none)"
                report(f"outputs[{position}]", expected, _found(name))
    return tuple(declared)


def _config(
    raw: object,
    spec: NodeSpec | None,
    properties: Mapping[str, Any],
    properties_ok: bool,
    report: _Report,
) -> NodeConfig:
    if not isinstance(raw, dict):
        report("config", "an object", _found(raw))
        return NodeConfig()
    values = _fields(raw, _CONFIG_FIELDS, "config", report)
    retry = values.get("retry")
    if retry is not None:
        parts = _fields(retry, _RETRY_FIELDS, "config.retry", report)
        if "non_retryable" in parts:
            parts["non_retryable"] = tuple(parts["non_retryable"])
        values["retry"] = RetryConfig(**parts)
    breaker = values.pop("circuit_breaker", None)
    if isinstance(breaker, str):
        values["circuit_breaker"] = BreakerConfig(name=breaker)
    elif breaker is not None:
        parts = _fields(breaker, _BREAKER_FIELDS, "config.circuit_breaker", report)
        if "name" not in breaker and spec is not None:
            if spec.breaker is None:
                expected = "a breaker name (this node type has no default)"
                report("config.circuit_breaker.name", expected, _MISSING)
            elif properties_ok:
                parts["name"] = spec.breaker(properties)
        if "name" in parts:
            values["circuit_breaker"] = BreakerConfig(**parts)
    return NodeConfig(**values)


def _fields(
    raw: Mapping[Any, Any], table: Mapping[str, _Field], path: str, report: _Report
) -> dict[str, Any]:
    """The values of ``raw`` that ``table`` accepts; reports unknown keys and bad values."""
    _reject_unknown(raw, table, path, report)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in table:
            continue
        expected, parse = table[key]
        parsed = parse(value)
        if parsed is None:
            report(_join(path, key), expected, _found(value))
        else:
            values[key] = parsed
    return values


def _reject_unknown(
    raw: Mapping[Any, Any], allowed: Collection[str], path: str, report: _Report
) -> None:
    for key in raw:
        if not isinstance(key, str) or key not in allowed:
            report(_join(path, _label(key)), _one_of(allowed), "an unknown key")


def _number(minimum: float, *, exclusive: bool = False) -> _Field:
    def parse(value: object) -> float | None:
        number = finite(value)
        if number is None or number < minimum or (exclusive and number == minimum):
            return None
        return number

    return f"a number {'>' if exclusive else '>='} {minimum:g}", parse


def _integer(low: int, high: int | None = None) -> _Field:
    def parse(value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if low <= value and (high is None or value <= high) else None

    expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return expected, parse


def _of_type(expected: str, *types: type) -> _Field:
    return expected, lambda value: value if isinstance(value, types) else None


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _names(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _breaker(value: object) -> str | dict[str, Any] | None:
    return value if isinstance(value, dict) else _name(value)


def _version(value: object) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


_TOP_FIELDS: dict[str, _Field] = {
    "blocks": _of_type("an array of blocks", list),
    "name": _of_type("a string", str),
    "description": _of_type("a string", str),
    "version": ("a string or an integer", _version),
    "metadata": _of_type("an object", dict),
}
_CONFIG_FIELDS: dict[str, _Field] = {
    "timeout": _number(0, exclusive=True),
    "retry": _of_type("an object", dict),
    "circuit_breaker": ("a breaker name or an object", _breaker),
}
_RETRY_FIELDS: dict[str, _Field] = {
    "max_attempts": _integer(1, 100),
    "initial_interval": _number(0),
    "backoff_coefficient": _number(1),
    "max_interval": _number(0),
    "jitter": _number(0),
    "non_retryable": ("an array of error class names", _names),
}
_BREAKER_FIELDS: dict[str, _Field] = {
    "name": ("a non-empty string", _name),
    "failure_threshold": _integer(1),
    "recovery_timeout": _number(0, exclusive=True),
}
_KINDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "number": ("a finite number", lambda v: finite(v) is not None),
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "boolean": ("a boolean", lambda v: isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "any": ("any value", lambda v: True),
}


# Size limits, checked iteratively before anything else reads a block.


def _scan(root: dict[Any, Any], limits: Limits) -> tuple[str, str, str] | None:
    """The first limit ``root`` breaks, as ``(field, expected, found)``; ``None`` if none.

    An explicit stack holds containers only, each charged its length before its
    items are looked at, so the work stays bounded by the limits whatever the input.
    """
    budget = limits.max_block_bytes
    max_string = limits.max_string_length
    stack: _Stack = [(root, 0, None)]
    while stack:
        container, level, where = stack.pop()
        if level > limits.max_nesting:
            expected = f"objects and arrays nested at most {limits.max_nesting} deep"
            return _path(where), expected, f"{type(container).__name__} nested deeper"
        budget -= 2 + 2 * len(container)
        cost = 0 if budget < 0 else _scan_items(container, level, where, stack, max_string)
        if isinstance(cost, tuple):
            return cost
        budget -= cost
        if budget < 0:
            return _path(where), f"at most {limits.max_block_bytes} bytes", "more"
    return None


def _scan_items(
    container: _Container, level: int, where: _Trail, stack: _Stack, max_string: int
) -> int | tuple[str, str, str]:
    """The bytes of ``container``'s keys and scalars, or the first limit they break; pushes
    the containers inside it on ``stack``."""
    cost = 0
    is_dict = isinstance(container, dict)
    for key, item in container.items() if isinstance(container, dict) else enumerate(container):
        if is_dict:
            if not isinstance(key, str):
                return _path(where), "object keys that are strings", f"key {_found(key)}"
            if len(key) > max_string:
                expected = f"keys of at most {max_string} characters"
                return _path(where), expected, f"a key of {len(key)} characters"
            cost += len(key)
        if isinstance(item, str):
            if len(item) > max_string:
                expected = f"a string of at most {max_string} characters"
                return _path((where, key)), expected, f"str of {len(item)} characters"
            cost += len(item) + 2
        elif isinstance(item, dict | list):
            stack.append((item, level + 1, (where, key)))
        elif isinstance(item, int):
            # bit_length / 3 slightly overestimates decimal digits without converting.
            cost += item.bit_length() // 3 + 1
        elif isinstance(item, float) or item is None:
            cost += 8
        else:
            expected = "a JSON value (object, array, string, number, boolean or null)"
            return _path((where, key)), expected, _found(item)
    return cost


def _path(trail: _Trail) -> str:
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        parts.append(f"[{key}]" if isinstance(key, int) else "." + _clip(key, 40))
    text = "".join(reversed(parts))
    return text[1:] if text.startswith(".") else text


# Rendering: short, bounded whatever the value.


def _found(value: object) -> str:
    """Type name and a clipped preview, e.g. ``str 'abc'``."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {_preview(value)}"


def _preview(value: object, *, nested: bool = False) -> str:
    if isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        # Huge ints refuse str() (and would be slow to render anyway).
        bits = value.bit_length()
        return repr(value) if bits <= 200 else f"<{bits}-bit integer>"
    if isinstance(value, str):
        return _clip(repr(value[:_PREVIEW]))
    if isinstance(value, dict):
        if nested:
            return "{...}"
        items = (
            f"{_preview(k, nested=True)}: {_preview(v, nested=True)}" for k, v in value.items()
        )
        return _clip(_bounded_join("{", items, "}"))
    if isinstance(value, list | tuple):
        if nested:
            return "[...]"
        return _clip(_bounded_join("[", (_preview(v, nested=True) for v in value), "]"))
    return f"<{type(value).__name__}>"


def _bounded_join(opening: str, parts: Iterable[str], closing: str) -> str:
    """Join only as many parts as can show, so a million-item container costs a few."""
    kept: list[str] = []
    size = 0
    for part in itertools.islice(parts, _PREVIEW):
        kept.append(part)
        size += len(part) + 2
        if size > _PREVIEW:
            break
    return opening + ", ".join(kept) + closing


def _clip(text: str, width: int = _PREVIEW) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _label(key: object) -> str:
    """A key as it appears in a field path."""
    return _clip(key, 40) if isinstance(key, str) else _preview(key)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


def _one_of(names: Iterable[Any]) -> str:
    return "one of: " + ", ".join(str(name) for name in names)


def _usable_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH and _ID.fullmatch(value):
        return value
    return None
