"""parse_workflow: every rule of the definition format, hostile inputs and ordering."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tradeflow.domain.errors import ValidationIssue, WorkflowValidationError
from tradeflow.engine.model import Block, BreakerConfig, NodeConfig, Ref, RetryConfig
from tradeflow.engine.nodes.registry import NodeRegistry, NodeSpec, Prop
from tradeflow.engine.validation import DEFAULT_LIMITS, Limits, parse_workflow

BLOCK_KEYS = "id, name, category, type, properties, config, inputs, outputs"


async def _run(ctx: Any, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    return {}


def _compare_check(props: Mapping[str, Any], wired: frozenset[str]) -> list[tuple[str, str, str]]:
    if "right" not in wired and props["threshold"] is None:
        return [("properties.threshold", "a number when 'right' is not wired", "null")]
    return []


@pytest.fixture
def registry() -> NodeRegistry:
    """A registry of test node types, independent of the built-ins."""
    reg = NodeRegistry()
    specs = [
        NodeSpec(
            "providers",
            "price",
            _run,
            properties={
                "symbol": Prop("string", required=True),
                "source": Prop("string", default="a", choices=("a", "b")),
                "scale": Prop("number", default=1.0, minimum=0),
                "count": Prop("integer", default=1, minimum=1),
                "live": Prop("boolean", default=False),
                "levels": Prop("array", default=[]),
                "extra": Prop("object", default={}),
                "anything": Prop("any"),
            },
            outputs=("price", "volume"),
            breaker=lambda props: f"price:{props['source']}",
        ),
        NodeSpec(
            "providers",
            "static",
            _run,
            properties={"values": Prop("object", required=True)},
            outputs_from_properties=lambda props: tuple(props["values"]),
        ),
        NodeSpec(
            "conditions",
            "compare",
            _run,
            properties={"threshold": Prop("number")},
            inputs={"left": True, "right": False},
            outputs=("result",),
            check=_compare_check,
        ),
        NodeSpec("conditions", "all", _run, variadic_inputs=True, outputs=("result",)),
        NodeSpec("actions", "order", _run, inputs={"go": False}, outputs=("order_id",)),
    ]
    for spec in specs:
        reg.register(spec)
    return reg


def price(block_id: object = "p", **fields: Any) -> dict[str, Any]:
    """A valid price provider block, with ``fields`` overriding."""
    return {
        "id": block_id,
        "category": "providers",
        "type": "price",
        "properties": {"symbol": "BTC"},
        **fields,
    }


def order(block_id: str, **inputs: str) -> dict[str, Any]:
    """An order action block wired by ``inputs``."""
    return {"id": block_id, "category": "actions", "type": "order", "inputs": inputs}


def issues_of(definition: object, registry: NodeRegistry, **kw: Any) -> list[ValidationIssue]:
    """The issues parse_workflow raises for ``definition`` (it must raise)."""
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(definition, registry=registry, **kw)
    return list(caught.value.issues)


def only_issue(definition: object, registry: NodeRegistry, **kw: Any) -> ValidationIssue:
    """The single issue parse_workflow raises for ``definition``."""
    issues = issues_of(definition, registry, **kw)
    assert len(issues) == 1, issues
    return issues[0]


# Successful parses


def test_minimal_block_gets_defaults(registry: NodeRegistry) -> None:
    """Absent name, properties, config, inputs and outputs get their defaults."""
    workflow = parse_workflow({"blocks": [price()]}, registry=registry)
    (block,) = workflow.blocks
    assert block.name == "p"
    assert block.properties == {
        "symbol": "BTC",
        "source": "a",
        "scale": 1.0,
        "count": 1,
        "live": False,
        "levels": [],
        "extra": {},
        "anything": None,
    }
    assert block.config == NodeConfig()
    assert block.inputs == {}
    assert block.outputs == ("price", "volume")
    assert block.index == 0


def test_mutable_defaults_are_copied_per_block(registry: NodeRegistry) -> None:
    """Two blocks never share a default list, nor share it with the spec."""
    workflow = parse_workflow({"blocks": [price("a"), price("b")]}, registry=registry)
    a, b = workflow.blocks
    a.properties["levels"].append(1)
    assert b.properties["levels"] == []
    assert registry.get("providers", "price").properties["levels"].default == []  # type: ignore[union-attr]


def test_given_values_are_kept(registry: NodeRegistry) -> None:
    """Explicit name, properties, outputs and top-level keys survive parsing."""
    definition = {
        "name": "wf",
        "description": "d",
        "version": 2,
        "metadata": {"owner": "me"},
        "blocks": [
            price(
                name="Price",
                properties={"symbol": "ETH", "source": "b", "scale": 0, "count": 3},
                outputs=["price"],
            )
        ],
    }
    workflow = parse_workflow(definition, registry=registry)
    (block,) = workflow.blocks
    assert (block.name, block.outputs) == ("Price", ("price",))
    assert block.properties["source"] == "b"
    assert block.properties["scale"] == 0
    assert workflow.definition is definition


def test_config_is_parsed(registry: NodeRegistry) -> None:
    """Timeout, retry and a breaker object build the model's config types."""
    config = {
        "timeout": 2,
        "retry": {
            "max_attempts": 5,
            "initial_interval": 0,
            "backoff_coefficient": 1.5,
            "max_interval": 10,
            "jitter": 0.5,
            "non_retryable": ["OrderRejected"],
        },
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 1.5},
    }
    (block,) = parse_workflow({"blocks": [price(config=config)]}, registry=registry).blocks
    assert block.config == NodeConfig(
        timeout=2.0,
        retry=RetryConfig(5, 0.0, 1.5, 10.0, 0.5, ("OrderRejected",)),
        circuit_breaker=BreakerConfig("price:a", 2, 1.5),
    )


def test_breaker_given_as_a_name(registry: NodeRegistry) -> None:
    """A string circuit_breaker is the breaker's name with default settings."""
    blocks = [order("o"), price(config={"circuit_breaker": {"name": "x"}})]
    blocks[0]["config"] = {"circuit_breaker": "exchange", "retry": {}}
    o, p = parse_workflow({"blocks": blocks}, registry=registry).blocks
    assert o.config == NodeConfig(retry=RetryConfig(), circuit_breaker=BreakerConfig("exchange"))
    assert p.config.circuit_breaker == BreakerConfig("x")


def test_wires_outputs_and_graph_maps(registry: NodeRegistry) -> None:
    """Inputs become Refs; blocks come out topologically with upstream/downstream maps."""
    definition = {
        "blocks": [
            order("buy", go="cmp.result"),
            {
                "id": "cmp",
                "category": "conditions",
                "type": "compare",
                "inputs": {"left": "p.price", "right": "p.volume"},
            },
            price(),
        ]
    }
    workflow = parse_workflow(definition, registry=registry)
    assert [b.id for b in workflow.blocks] == ["p", "cmp", "buy"]
    assert [b.index for b in workflow.blocks] == [2, 1, 0]
    assert workflow.block("cmp").inputs == {"left": Ref("p", "price"), "right": Ref("p", "volume")}
    assert workflow.upstream == {"p": (), "cmp": ("p",), "buy": ("cmp",)}
    assert workflow.downstream == {"p": ("cmp",), "cmp": ("buy",), "buy": ()}


def test_diamond_order_is_deterministic(registry: NodeRegistry) -> None:
    """Ties are broken by definition order, here in a diamond."""

    def compare(block_id: str, threshold: int) -> dict[str, Any]:
        return {
            "id": block_id,
            "category": "conditions",
            "type": "compare",
            "properties": {"threshold": threshold},
            "inputs": {"left": "top.price"},
        }

    join = {
        "id": "join",
        "category": "conditions",
        "type": "all",
        "inputs": {"x": "r.result", "y": "l.result"},
    }
    definition = {"blocks": [price("top"), join, compare("r", 1), compare("l", 2)]}
    workflow = parse_workflow(definition, registry=registry)
    assert [b.id for b in workflow.blocks] == ["top", "r", "l", "join"]
    assert workflow.upstream["join"] == ("r", "l")
    assert workflow.downstream["top"] == ("r", "l")


def test_variadic_inputs_accept_any_identifier(registry: NodeRegistry) -> None:
    """A variadic node takes input names its spec does not list."""
    definition = {
        "blocks": [
            price(),
            {
                "id": "all",
                "category": "conditions",
                "type": "all",
                "inputs": {"anything_1": "p.price"},
            },
        ]
    }
    workflow = parse_workflow(definition, registry=registry)
    assert workflow.block("all").inputs == {"anything_1": Ref("p", "price")}


def test_outputs_from_properties(registry: NodeRegistry) -> None:
    """A spec deriving outputs from properties defaults and checks against them."""
    static = {
        "id": "s",
        "category": "providers",
        "type": "static",
        "properties": {"values": {"x": 1, "y": 2}},
    }
    (block,) = parse_workflow({"blocks": [static]}, registry=registry).blocks
    assert block.outputs == ("x", "y")
    issue = only_issue({"blocks": [{**static, "outputs": ["z"]}]}, registry)
    assert (issue.block_id, issue.field, issue.expected) == ("s", "outputs[0]", "one of: x, y")


def test_default_registry_is_used_when_none_given() -> None:
    """Without a registry, types are looked up in the default registry."""
    block = {"id": "x", "category": "providers", "type": "no_such_type_for_tests"}
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow({"blocks": [block]})
    assert caught.value.issues[0].field == "type"


# Workflow-level rules


@pytest.mark.parametrize(
    ("definition", "field", "expected"),
    [
        ([], "definition", "an object with a 'blocks' array"),
        ({}, "blocks", "an array of blocks"),
        ({"blocks": {"a": 1}}, "blocks", "an array of blocks"),
        ({"blocks": []}, "blocks", "at least one block"),
    ],
)
def test_definition_shape(
    registry: NodeRegistry, definition: object, field: str, expected: str
) -> None:
    """The definition must be an object holding a non-empty blocks array."""
    issue = only_issue(definition, registry)
    assert (issue.block_id, issue.field, issue.expected) == (None, field, expected)


def test_unknown_and_mistyped_top_level_keys(registry: NodeRegistry) -> None:
    """Unknown top-level keys and wrongly typed optional ones are reported."""
    definition = {"blocks": [price()], "bloks": [], "metadata": [], "version": True}
    issues = issues_of(definition, registry)
    assert {(i.field, i.found) for i in issues} == {
        ("bloks", "an unknown key"),
        ("metadata", "list []"),
        ("version", "bool True"),
    }


def test_block_must_be_an_object(registry: NodeRegistry) -> None:
    """A block that is not an object is named by its position."""
    issue = only_issue({"blocks": [price(), "oops"]}, registry)
    assert (issue.block_id, issue.field, issue.found) == (None, "blocks[1]", "str 'oops'")


@pytest.mark.parametrize("bad_id", ["", "a.b", "a b", "x" * 129, 7, "a\n"])
def test_unusable_ids_are_named_by_position(registry: NodeRegistry, bad_id: object) -> None:
    """A block whose id is unusable is reported as blocks[i].id."""
    issue = only_issue({"blocks": [price(), price(bad_id)]}, registry)
    assert (issue.block_id, issue.field) == (None, "blocks[1].id")


def test_missing_id_and_later_fields_are_prefixed_by_position(registry: NodeRegistry) -> None:
    """Without an id, every issue of the block names it by position."""
    block = price()
    del block["id"]
    block["properties"] = {}
    issues = issues_of({"blocks": [block]}, registry)
    assert [(i.block_id, i.field, i.found) for i in issues] == [
        (None, "blocks[0].id", "missing"),
        (None, "blocks[0].properties.symbol", "missing"),
    ]


def test_duplicate_ids_name_their_positions(registry: NodeRegistry) -> None:
    """One issue per duplicated id, listing every position it appears at."""
    issue = only_issue({"blocks": [price("a"), price("b"), price("a"), price("a")]}, registry)
    assert (issue.block_id, issue.field) == ("a", "id")
    assert issue.found == "'a' used by blocks[0], blocks[2], blocks[3]"


def test_cycle_is_named(registry: NodeRegistry) -> None:
    """A dependency cycle is reported with its path."""
    blocks = [order("a", go="c.order_id"), order("b", go="a.order_id"), order("c", go="b.order_id")]
    issue = only_issue({"blocks": blocks}, registry)
    assert (issue.block_id, issue.field, issue.found) == ("a", "inputs", "a -> b -> c -> a")


def test_self_reference_is_a_cycle(registry: NodeRegistry) -> None:
    """A block wired to its own output is a cycle of one."""
    issue = only_issue({"blocks": [order("a", go="a.order_id")]}, registry)
    assert issue.found == "a -> a"


def test_dependency_chain_depth_is_limited(registry: NodeRegistry) -> None:
    """A chain longer than max_depth is refused."""
    blocks = [order("o0")] + [order(f"o{i}", go=f"o{i - 1}.order_id") for i in range(1, 5)]
    limits = Limits(max_depth=4)
    issue = only_issue({"blocks": blocks}, registry, limits=limits)
    assert (issue.field, issue.found) == ("blocks", "a chain of 5 blocks")
    assert len(parse_workflow({"blocks": blocks[:4]}, registry=registry, limits=limits).blocks) == 4


# Block fields


def test_unknown_block_keys_category_and_type(registry: NodeRegistry) -> None:
    """Unknown keys, categories and types are each reported; types list what exists."""
    issues = issues_of(
        {
            "blocks": [
                price("a", colour="red"),
                {"id": "b", "category": "nope", "type": "price"},
                {"id": "c", "category": "providers", "type": "nope"},
                {"id": "d", "category": "risk", "type": 3, "name": 5},
            ]
        },
        registry,
    )
    assert [(i.block_id, i.field, i.expected, i.found) for i in issues] == [
        ("a", "colour", "one of: " + BLOCK_KEYS, "an unknown key"),
        ("b", "category", "one of: providers, triggers, conditions, actions, risk", "str 'nope'"),
        ("c", "type", "a providers type: one of: price, static", "str 'nope'"),
        ("d", "name", "a string", "int 5"),
        ("d", "type", "a node type name", "int 3"),
    ]


@pytest.mark.parametrize(
    ("properties", "field", "expected", "found"),
    [
        ({}, "properties.symbol", "a string", "missing"),
        ({"symbol": "X", "colour": 1}, "properties.colour", "one of: ", "an unknown property"),
        ({"symbol": 5}, "properties.symbol", "a string", "int 5"),
        ({"symbol": "X", "scale": "abc"}, "properties.scale", "a finite number", "str 'abc'"),
        ({"symbol": "X", "scale": True}, "properties.scale", "a finite number", "bool True"),
        (
            {"symbol": "X", "scale": float("nan")},
            "properties.scale",
            "a finite number",
            "float nan",
        ),
        (
            {"symbol": "X", "scale": float("inf")},
            "properties.scale",
            "a finite number",
            "float inf",
        ),
        ({"symbol": "X", "scale": -1}, "properties.scale", "a finite number >= 0", "int -1"),
        ({"symbol": "X", "count": 1.0}, "properties.count", "an integer", "float 1.0"),
        ({"symbol": "X", "count": False}, "properties.count", "an integer", "bool False"),
        ({"symbol": "X", "count": 0}, "properties.count", "an integer >= 1", "int 0"),
        ({"symbol": "X", "live": 1}, "properties.live", "a boolean", "int 1"),
        ({"symbol": "X", "levels": {}}, "properties.levels", "an array", "dict {}"),
        ({"symbol": "X", "extra": [1]}, "properties.extra", "an object", "list [1]"),
        ({"symbol": "X", "source": "c"}, "properties.source", "one of: 'a', 'b'", "str 'c'"),
    ],
)
def test_property_rules(
    registry: NodeRegistry, properties: dict[str, Any], field: str, expected: str, found: str
) -> None:
    """Each property rule (unknown, required, kind, choices, minimum) yields its issue."""
    issue = only_issue({"blocks": [price(properties=properties)]}, registry)
    assert (issue.block_id, issue.field, issue.found) == ("p", field, found)
    assert issue.expected.startswith(expected)


def test_properties_must_be_an_object(registry: NodeRegistry) -> None:
    """A non-object properties value is one issue."""
    issue = only_issue({"blocks": [price(properties="abc")]}, registry)
    assert (issue.field, issue.expected, issue.found) == ("properties", "an object", "str 'abc'")


def test_spec_check_sees_defaults_and_wired_inputs(registry: NodeRegistry) -> None:
    """The spec's cross-field check runs on filled properties and the wired input names."""
    compare = {
        "id": "c",
        "category": "conditions",
        "type": "compare",
        "inputs": {"left": "p.price"},
    }
    issue = only_issue({"blocks": [price(), compare]}, registry)
    assert (issue.block_id, issue.field, issue.found) == ("c", "properties.threshold", "null")
    compare["inputs"] = {"left": "p.price", "right": "p.volume"}
    assert len(parse_workflow({"blocks": [price(), compare]}, registry=registry).blocks) == 2


@pytest.mark.parametrize(
    ("inputs", "field", "expected", "found"),
    [
        ({"go": "p.price", "stop": "p.price"}, "inputs.stop", "one of: go", "an unknown input"),
        ({"go": "pprice"}, "inputs.go", "a wire '<block_id>.<output>'", "str 'pprice'"),
        ({"go": "p."}, "inputs.go", "a wire '<block_id>.<output>'", "str 'p.'"),
        ({"go": ".price"}, "inputs.go", "a wire '<block_id>.<output>'", "str '.price'"),
        ({"go": 3}, "inputs.go", "a wire '<block_id>.<output>'", "int 3"),
        ({"go": "q.price"}, "inputs.go", "a wire to an existing block", "unknown block 'q'"),
        ({"go": "p.bid"}, "inputs.go", "an output of 'p': one of: price, volume", "str 'bid'"),
        ({"1go": "p.price"}, "inputs.1go", "an input name matching", "an invalid name"),
    ],
)
def test_input_rules(
    registry: NodeRegistry, inputs: dict[str, Any], field: str, expected: str, found: str
) -> None:
    """Each wiring rule (names, format, target block, target output) yields its issue."""
    issue = only_issue({"blocks": [price(), {**order("o"), "inputs": inputs}]}, registry)
    assert (issue.block_id, issue.field, issue.found) == ("o", field, found)
    assert issue.expected.startswith(expected)


def test_required_input_must_be_wired(registry: NodeRegistry) -> None:
    """An unwired required input is reported as missing."""
    compare: dict[str, Any] = {"id": "c", "category": "conditions", "type": "compare"}
    compare["properties"] = {"threshold": 1}
    issue = only_issue({"blocks": [compare]}, registry)
    assert (issue.field, issue.found) == ("inputs.left", "missing")


def test_wire_checks_the_targets_declared_outputs(registry: NodeRegistry) -> None:
    """A wire must name an output the target declares, not merely one its type has."""
    blocks = [price(outputs=["price"]), order("o", go="p.volume")]
    issue = only_issue({"blocks": blocks}, registry)
    assert (issue.field, issue.expected) == ("inputs.go", "an output of 'p': one of: price")


def test_too_many_inputs(registry: NodeRegistry) -> None:
    """More wired inputs than max_inputs is one issue."""
    inputs = {f"i{n}": "p.price" for n in range(3)}
    block = {"id": "all", "category": "conditions", "type": "all", "inputs": inputs}
    issue = only_issue({"blocks": [price(), block]}, registry, limits=Limits(max_inputs=2))
    assert (issue.field, issue.expected, issue.found) == ("inputs", "at most 2 inputs", "3")


def test_outputs_rules(registry: NodeRegistry) -> None:
    """Outputs must be a list of names the type produces."""
    issues = issues_of(
        {"blocks": [price("a", outputs="price"), price("b", outputs=["price", "bid"])]}, registry
    )
    assert [(i.block_id, i.field, i.expected, i.found) for i in issues] == [
        ("a", "outputs", "an array of output names", "str 'price'"),
        ("b", "outputs[1]", "one of: price, volume", "str 'bid'"),
    ]


@pytest.mark.parametrize(
    ("config", "field", "expected", "found"),
    [
        ("fast", "config", "an object", "str 'fast'"),
        ({"timeout": 0}, "config.timeout", "a number > 0", "int 0"),
        ({"timeout": True}, "config.timeout", "a number > 0", "bool True"),
        ({"timeout": float("inf")}, "config.timeout", "a number > 0", "float inf"),
        ({"timeout": 10**400}, "config.timeout", "a number > 0", "int <1329-bit integer>"),
        (
            {"retries": 3},
            "config.retries",
            "one of: timeout, retry, circuit_breaker",
            "an unknown key",
        ),
        ({"retry": 3}, "config.retry", "an object", "int 3"),
        (
            {"retry": {"max_attempts": 0}},
            "config.retry.max_attempts",
            "an integer from 1 to 100",
            "int 0",
        ),
        (
            {"retry": {"max_attempts": 101}},
            "config.retry.max_attempts",
            "an integer from 1 to 100",
            "int 101",
        ),
        (
            {"retry": {"initial_interval": -1}},
            "config.retry.initial_interval",
            "a number >= 0",
            "int -1",
        ),
        (
            {"retry": {"backoff_coefficient": 0.5}},
            "config.retry.backoff_coefficient",
            "a number >= 1",
            "float 0.5",
        ),
        ({"retry": {"max_interval": "1"}}, "config.retry.max_interval", "a number >= 0", "str '1'"),
        ({"retry": {"jitter": None}}, "config.retry.jitter", "a number >= 0", "null"),
        (
            {"retry": {"non_retryable": [1]}},
            "config.retry.non_retryable",
            "an array of error class names",
            "list [1]",
        ),
        ({"retry": {"tries": 1}}, "config.retry.tries", "one of: max_attempts, ", "an unknown key"),
        (
            {"circuit_breaker": ""},
            "config.circuit_breaker",
            "a breaker name or an object",
            "str ''",
        ),
        (
            {"circuit_breaker": {"name": 1}},
            "config.circuit_breaker.name",
            "a non-empty string",
            "int 1",
        ),
        (
            {"circuit_breaker": {"failure_threshold": 0}},
            "config.circuit_breaker.failure_threshold",
            "an integer >= 1",
            "int 0",
        ),
        (
            {"circuit_breaker": {"recovery_timeout": 0}},
            "config.circuit_breaker.recovery_timeout",
            "a number > 0",
            "int 0",
        ),
        (
            {"circuit_breaker": {"size": 0}},
            "config.circuit_breaker.size",
            "one of: name, ",
            "an unknown key",
        ),
    ],
)
def test_config_rules(
    registry: NodeRegistry, config: object, field: str, expected: str, found: str
) -> None:
    """Each config rule (timeout, retry fields, breaker fields, unknown keys) yields its issue."""
    issue = only_issue({"blocks": [price(config=config)]}, registry)
    assert (issue.block_id, issue.field, issue.found) == ("p", field, found)
    assert issue.expected.startswith(expected)


def test_breaker_name_required_without_a_spec_default(registry: NodeRegistry) -> None:
    """A breaker object for a type with no default breaker name must name one."""
    block = {**order("o"), "config": {"circuit_breaker": {"failure_threshold": 2}}}
    issue = only_issue({"blocks": [block]}, registry)
    assert (issue.field, issue.found) == ("config.circuit_breaker.name", "missing")


def test_every_problem_is_reported_at_once(registry: NodeRegistry) -> None:
    """A definition with many different problems yields all of them in one error."""
    definition = {
        "blocks": [
            price("a", properties={"symbol": 1}, config={"timeout": -1}),
            price("a"),
            order("b", go="ghost.out"),
            "not a block",
            {"id": "c.d", "category": "risk", "type": "x"},
        ],
        "extra": 1,
    }
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow(definition, registry=registry)
    found = {(i.block_id, i.field) for i in caught.value.issues}
    assert found == {
        (None, "extra"),
        ("a", "properties.symbol"),
        ("a", "config.timeout"),
        ("b", "inputs.go"),
        (None, "blocks[3]"),
        (None, "blocks[4].id"),
        (None, "blocks[4].type"),
        ("a", "id"),
    }
    assert caught.value.message.startswith("invalid workflow (8 problems): ")
    assert caught.value.details()["issues"][0]["field"] == "extra"


# Hostile input


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def test_deep_nesting_is_refused_without_recursion(registry: NodeRegistry) -> None:
    """A list nested 100 000 deep in properties gives a nesting issue, not RecursionError."""
    block = price(properties={"symbol": "X", "anything": _nested(100_000)})
    issue = only_issue({"blocks": [block]}, registry)
    assert issue.block_id == "p"
    assert issue.field.startswith("properties.anything[0][0]")
    assert issue.expected == "objects and arrays nested at most 32 deep"


def test_deep_nesting_outside_blocks_is_refused(registry: NodeRegistry) -> None:
    """Deep values as a block, as metadata or as blocks itself are rendered shallowly."""
    deep = _nested(100_000)
    issues = issues_of({"blocks": [price(), deep], "metadata": {"x": deep}}, registry)
    assert {(i.field, i.found) for i in issues} == {
        ("blocks[1]", "list [[...]]"),
        ("metadata.x" + "[0]" * 31, "list nested deeper"),
    }
    issue = only_issue({"blocks": {"a": deep}}, registry)
    assert issue.found == "dict {'a': [...]}"


def test_nesting_up_to_the_limit_is_accepted(registry: NodeRegistry) -> None:
    """Properties (level 1) plus 31 nested levels is exactly the limit."""
    block = price(properties={"symbol": "X", "anything": _nested(30)})
    assert parse_workflow({"blocks": [block]}, registry=registry).blocks[0].id == "p"
    block["properties"]["anything"] = _nested(31)
    issue = only_issue({"blocks": [block]}, registry)
    assert issue.expected.startswith("objects and arrays nested")


def test_huge_string_is_refused(registry: NodeRegistry) -> None:
    """A 20 MB string is refused by length, and the message stays short."""
    huge = "x" * 20_000_000
    with pytest.raises(WorkflowValidationError) as caught:
        parse_workflow({"blocks": [price(name=huge)], "description": huge}, registry=registry)
    issues = caught.value.issues
    assert [(i.block_id, i.field, i.found) for i in issues] == [
        (None, "description", "str of 20000000 characters"),
        ("p", "name", "str of 20000000 characters"),
    ]
    assert len(caught.value.message) < 500


def test_huge_key_and_wrongly_typed_huge_value_stay_short(registry: NodeRegistry) -> None:
    """Huge keys are refused, and a huge value of the wrong type is rendered clipped."""
    issue = only_issue({"blocks": [price(properties={"k" * 20_000: 1})]}, registry)
    assert issue.expected == "keys of at most 10000 characters"
    issue = only_issue({"blocks": [price(name=["y" * 5000])]}, registry)
    assert issue.field == "name"
    assert len(issue.found) <= 90
    assert issue.found.endswith("...")


def test_oversized_block_is_refused(registry: NodeRegistry) -> None:
    """A block larger than max_block_bytes is refused before its fields are read."""
    block = price(properties={"symbol": "X", "levels": [0] * 1_000_000})
    issue = only_issue({"blocks": [block]}, registry)
    assert (issue.block_id, issue.field) == ("p", "properties.levels")
    assert issue.expected == f"at most {DEFAULT_LIMITS.max_block_bytes} bytes"


def test_too_many_blocks_is_the_only_issue(registry: NodeRegistry) -> None:
    """A million blocks give one issue, without reading any of them."""
    issue = only_issue({"blocks": ["bad"] * 1_000_000}, registry)
    assert (issue.field, issue.found) == ("blocks", "1000000")


def test_non_json_values_are_refused(registry: NodeRegistry) -> None:
    """Values JSON cannot carry (a set, a non-string key) are refused."""
    issues = issues_of(
        {"blocks": [price("a", properties={"symbol": {1, 2}}), price("b", properties={1: 2})]},
        registry,
    )
    assert [(i.block_id, i.field, i.found) for i in issues] == [
        ("a", "properties.symbol", "set <set>"),
        ("b", "properties", "key int 1"),
    ]


def test_issue_count_is_capped(registry: NodeRegistry) -> None:
    """Beyond max_issues, problems are counted in one last issue instead of listed."""
    issues = issues_of({"blocks": [1, 2, 3, 4, 5]}, registry, limits=Limits(max_issues=2))
    assert [i.field for i in issues] == ["blocks[0]", "blocks[1]", "definition"]
    assert issues[-1].found == "3 more problems not listed"
