"""The built-in node types: outputs, gates, property checks and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest
from httpkit import HttpServer
from kit import DEADLINE_SECONDS
from nodekit import EXECUTION_ID, make_block, node_kit, problems, run_node, spec

from tradeflow.domain.errors import (
    ExternalRequestRejected,
    ExternalServiceError,
    InvalidRequest,
    OrderRejected,
    RiskLimitExceeded,
)
from tradeflow.domain.records import LimitDirection, RiskLimit
from tradeflow.domain.risk import PreTradeLimits
from tradeflow.engine.model import Block
from tradeflow.engine.nodes import ExecutionContext, NodeRegistry, Prop, default_registry, node
from tradeflow.engine.nodes.registry import HttpPool

BTC = "BTC/USDT"


def _api_call(url: str, **properties: Any) -> Block:
    return make_block("providers", "api_call", {"url": url, **properties})


# -- providers -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_static_outputs_its_values() -> None:
    """static outputs one value per entry of its values property."""
    block = make_block("providers", "static", {"values": {"qty": 0.5, "side": "buy"}})
    assert block.outputs == ("qty", "side")
    async with node_kit() as kit:
        assert await run_node(kit, block) == {"qty": 0.5, "side": "buy"}


@pytest.mark.asyncio
async def test_price_feed_outputs_the_quote() -> None:
    """price_feed outputs mid, bid, ask, spread and timestamp of the next quote."""
    async with node_kit() as kit:
        outputs = await run_node(kit, make_block("providers", "price_feed", {"symbol": BTC}))
    assert outputs == {
        "price": 101.0,
        "bid": 100.0,
        "ask": 102.0,
        "spread": 2.0,
        "timestamp": kit.clock.now,
    }


def test_price_feed_wants_a_base_quote_symbol() -> None:
    """price_feed's check rejects a symbol that is not BASE/QUOTE."""
    assert [p[0] for p in problems("providers", "price_feed", {"symbol": "BTCUSDT"})] == [
        "properties.symbol"
    ]


@pytest.mark.asyncio
async def test_api_call_sends_correlation_id_and_extracts(http_server: HttpServer) -> None:
    """api_call sends X-Correlation-ID, params and headers, and extracts a dotted path."""
    http_server.answers["/ticker"] = (200, b'{"data": [{"price": 42.5}]}')
    block = _api_call(
        http_server.url("/ticker"),
        params={"symbol": "BTC"},
        headers={"X-Api": "k"},
        extract="data.0.price",
    )
    async with node_kit(http_pool=http_server.pool()) as kit:
        outputs = await run_node(kit, block)
    assert outputs == {"result": 42.5, "status_code": 200}
    (request,) = http_server.received
    assert (request.method, request.target) == ("GET", "/ticker?symbol=BTC")
    assert request.headers["x-correlation-id"] == "corr-1"
    assert request.headers["x-api"] == "k"


@pytest.mark.asyncio
async def test_api_call_posts_json_and_returns_the_whole_body(http_server: HttpServer) -> None:
    """With a body api_call sends it as JSON; without extract the whole JSON is the result."""
    http_server.answers["/orders"] = (201, b'{"ok": true}')
    block = _api_call(http_server.url("/orders"), method="POST", body={"qty": 1})
    async with node_kit(http_pool=http_server.pool()) as kit:
        outputs = await run_node(kit, block)
    assert outputs == {"result": {"ok": True}, "status_code": 201}
    assert json.loads(http_server.received[0].body) == {"qty": 1}


@pytest.mark.parametrize(
    ("status", "error"), [(503, ExternalServiceError), (404, ExternalRequestRejected)]
)
@pytest.mark.asyncio
async def test_api_call_maps_error_statuses(
    http_server: HttpServer, status: int, error: type[Exception]
) -> None:
    """A 5xx answer is a retryable ExternalServiceError, a 4xx an ExternalRequestRejected."""
    http_server.answers["/x"] = (status, b'{"error": "no"}')
    async with node_kit(http_pool=http_server.pool()) as kit:
        with pytest.raises(error, match=str(status)):
            await run_node(kit, _api_call(http_server.url("/x")))


@pytest.mark.asyncio
async def test_api_call_transport_failure_is_retryable() -> None:
    """A refused connection raises ExternalServiceError."""
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with node_kit(http_pool=HttpPool(egress_allow=[f"127.0.0.1:{port}"])) as kit:
        with pytest.raises(ExternalServiceError, match="ConnectError"):
            await run_node(kit, _api_call(f"http://127.0.0.1:{port}/x"))


@pytest.mark.asyncio
async def test_api_call_names_a_missing_extract_path(http_server: HttpServer) -> None:
    """An extract path absent from the response raises InvalidRequest naming the path."""
    http_server.answers["/t"] = (200, b'{"data": [{"bid": 1}]}')
    async with node_kit(http_pool=http_server.pool()) as kit:
        with pytest.raises(InvalidRequest, match=r"b1\.properties\.extract.*'data\.0\.price'"):
            await run_node(kit, _api_call(http_server.url("/t"), extract="data.0.price"))


def test_api_call_checks_url_and_header_values() -> None:
    """api_call's check wants an http(s) URL and string headers, without echoing values."""
    found = problems("providers", "api_call", {"url": "ftp://x", "headers": {"Auth": 1}})
    assert [p[0] for p in found] == ["properties.url", "properties.headers"]
    assert "1" not in found[1][2].replace("Auth", "")


def test_api_call_breaker_is_per_host_without_credentials() -> None:
    """The default breaker is named http:<host>:<port> and leaves credentials out."""
    breaker = spec("providers", "api_call").breaker
    assert breaker is not None
    assert breaker({"url": "https://user:secret@API.example.com:8443/v1?q=1"}) == (
        "http:api.example.com:8443"
    )
    assert breaker({"url": "http://example.com/x"}) == "http:example.com"


# -- triggers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "value", "triggered"),
    [
        ({"above": 10}, 11, True),
        ({"above": 10}, 10, False),
        ({"below": 5}, 4.5, True),
        ({"above": 10, "below": 5}, 7, False),
        ({"above": 10, "below": 5}, 2, True),
    ],
)
@pytest.mark.asyncio
async def test_threshold(properties: dict[str, float], value: float, triggered: bool) -> None:
    """threshold fires strictly above 'above' or strictly below 'below'."""
    async with node_kit() as kit:
        outputs = await run_node(kit, make_block("triggers", "threshold", properties), value=value)
    assert outputs == {"triggered": triggered, "value": value}


@pytest.mark.asyncio
async def test_threshold_rejects_a_non_number() -> None:
    """A non-numeric value raises InvalidRequest naming the block and input."""
    async with node_kit() as kit:
        with pytest.raises(InvalidRequest, match=r"b1\.inputs\.value.*'high'"):
            await run_node(kit, make_block("triggers", "threshold", {"above": 1}), value="high")


@pytest.mark.parametrize(
    ("properties", "a", "b", "triggered", "direction"),
    [
        ({"min_spread": 5}, 105, 100, True, "a_over_b"),
        ({"min_spread": 5}, 100, 104, False, "b_over_a"),
        ({"min_spread_bps": 50}, 100, 100.5, True, "b_over_a"),
        ({"min_spread_bps": 50}, 100, 100, False, "flat"),
        ({"min_spread": 100, "min_spread_bps": 10}, 101, 100, True, "a_over_b"),
    ],
)
@pytest.mark.asyncio
async def test_spread(
    properties: dict[str, float], a: float, b: float, triggered: bool, direction: str
) -> None:
    """spread fires on either threshold given, and reports sign, size and bps."""
    async with node_kit() as kit:
        outputs = await run_node(kit, make_block("triggers", "spread", properties), a=a, b=b)
    assert outputs["triggered"] is triggered
    assert outputs["direction"] == direction
    assert outputs["spread"] == pytest.approx(a - b)
    assert outputs["spread_bps"] == pytest.approx(abs(a - b) / min(a, b) * 1e4)


@pytest.mark.asyncio
async def test_spread_needs_positive_prices() -> None:
    """A price <= 0 raises InvalidRequest naming the block."""
    async with node_kit() as kit:
        with pytest.raises(InvalidRequest, match=r"b1\.inputs"):
            await run_node(kit, make_block("triggers", "spread", {"min_spread": 1}), a=0, b=1)


@pytest.mark.parametrize(
    ("type_", "field"), [("threshold", "properties.above"), ("spread", "properties.min_spread")]
)
def test_triggers_need_a_threshold(type_: str, field: str) -> None:
    """threshold and spread each need at least one of their threshold properties."""
    assert [p[0] for p in problems("triggers", type_)] == [field]


# -- conditions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "left", "right", "result"),
    [
        (">", 2, 1, True),
        (">=", 1, 1, True),
        ("<", 2, 1, False),
        ("<=", 1, 1.5, True),
        ("==", "buy", "buy", True),
        ("!=", "buy", "sell", True),
    ],
)
@pytest.mark.asyncio
async def test_compare_against_the_value_property(
    op: str, left: Any, right: Any, result: bool
) -> None:
    """compare applies its operator to left and the value property."""
    block = make_block("conditions", "compare", {"op": op, "value": right})
    async with node_kit() as kit:
        assert await run_node(kit, block, left=left) == {"result": result}


@pytest.mark.asyncio
async def test_compare_prefers_the_wired_right_input() -> None:
    """A wired right input is compared instead of the value property."""
    block = make_block("conditions", "compare", {"op": ">", "value": 100}, inputs=["left", "right"])
    async with node_kit() as kit:
        assert await run_node(kit, block, left=5, right=1) == {"result": True}


@pytest.mark.asyncio
async def test_compare_ordering_needs_numbers() -> None:
    """Ordering a string raises InvalidRequest naming the block and both values."""
    block = make_block("conditions", "compare", {"op": ">", "value": 1}, block_id="cmp")
    async with node_kit() as kit:
        with pytest.raises(InvalidRequest, match=r"cmp\.inputs.*\('abc', 1\)"):
            await run_node(kit, block, left="abc")


def test_compare_needs_a_right_hand_side() -> None:
    """compare's check wants a value property or a wired right input."""
    assert [p[0] for p in problems("conditions", "compare", {"op": "=="})] == ["properties.value"]
    assert problems("conditions", "compare", {"op": "=="}, wired=["left", "right"]) == []


@pytest.mark.parametrize(
    ("type_", "values", "result"),
    [
        ("all", [True, True], True),
        ("all", [True, False], False),
        ("any", [False, True], True),
        ("any", [False, False], False),
    ],
)
@pytest.mark.asyncio
async def test_all_and_any_combine_gates(type_: str, values: list[bool], result: bool) -> None:
    """all/any fold their inputs, false gate values included."""
    inputs = {f"in{i}": v for i, v in enumerate(values)}
    block = make_block("conditions", type_, inputs=inputs)
    async with node_kit() as kit:
        assert await run_node(kit, block, **inputs) == {"result": result}


@pytest.mark.parametrize("type_", ["all", "any"])
def test_all_and_any_need_an_input(type_: str) -> None:
    """all/any's check wants at least one wired input."""
    assert [p[0] for p in problems("conditions", type_)] == ["inputs"]
    assert problems("conditions", type_, wired=["x"]) == []


def test_gates_are_declared_outputs() -> None:
    """Triggers gate on 'triggered', conditions on 'result'; only all/any accept gates."""
    for node_spec in default_registry.specs():
        if node_spec.category in ("triggers", "conditions"):
            expected = "triggered" if node_spec.category == "triggers" else "result"
            assert node_spec.gate == expected
            assert node_spec.gate in node_spec.outputs
        else:
            assert node_spec.gate is None
        assert node_spec.accepts_gates is (node_spec.type in ("all", "any"))


# -- actions ---------------------------------------------------------------------------------


def _place(inputs: Iterable[str] = (), block_id: str = "b1", **properties: Any) -> Block:
    return make_block(
        "actions", "place_order", {"symbol": BTC, **properties}, inputs=inputs, block_id=block_id
    )


def _local(limit_type: str, threshold: float) -> PreTradeLimits:
    return PreTradeLimits(local=(RiskLimit(limit_type, threshold, LimitDirection.ABOVE),))


@pytest.mark.asyncio
async def test_a_sell_limited_below_the_bid_is_valued_at_the_bid_it_fills_at() -> None:
    """max_order_notional 150: selling 1.9 limited at 1.0 (notional 1.9 at its limit)
    would fill at the bid, 100, a notional of 190: denied, never placed."""
    block = _place(side="sell", quantity=1.9, order_type="limit", limit_price=1.0)
    async with node_kit() as kit:
        kit.risk.limits = _local("max_order_notional", 150.0)
        outputs = await run_node(kit, block)
        await asyncio.gather(*kit.ctx.audits)
        stored = await kit.exchange.get_order("paper", f"{EXECUTION_ID}:b1")
    assert (outputs["status"], outputs["denial"]["value"]) == ("denied", 190.0)
    assert stored is None
    assert [d.check for d, _ in kit.risk.denials] == ["max_order_notional"]


@pytest.mark.asyncio
async def test_a_retry_whose_order_was_placed_adopts_it_instead_of_a_denial() -> None:
    """An attempt whose reply was lost placed the order; the retry's local check now
    denies (the limit tightened): the placed order is the outcome, not a denial beside
    it, and nothing is audited as denied."""
    block = _place(side="buy", quantity=0.5)
    async with node_kit() as kit:
        first = await run_node(kit, block)
        kit.risk.limits = _local("max_order_notional", 1.0)
        retried = await run_node(kit, block)
    assert retried == first
    assert first["status"] == "filled"
    assert kit.risk.denials == []


@pytest.mark.asyncio
async def test_a_denials_audit_runs_outside_the_node() -> None:
    """The node returns its denied outcome while the audit is still running (a slow
    emergency service cannot turn a denial into a timed-out, retried node); the task
    completes the audit."""
    block = _place(side="buy", quantity=0.5)
    release = asyncio.Event()
    async with node_kit() as kit:
        recorded = kit.risk.record_order_denied

        async def slow(denial: Any, **call: Any) -> None:
            await release.wait()
            await recorded(denial, **call)

        kit.risk.record_order_denied = slow  # type: ignore[method-assign]
        kit.risk.limits = _local("max_order_notional", 1.0)
        outputs = await run_node(kit, block)
        assert outputs["status"] == "denied"
        assert kit.risk.denials == []
        release.set()
        await asyncio.wait_for(asyncio.gather(*kit.ctx.audits), DEADLINE_SECONDS)
    assert [d.check for d, _ in kit.risk.denials] == ["max_order_notional"]


@pytest.mark.asyncio
async def test_place_order_fills_once_per_execution_and_block() -> None:
    """place_order uses '<execution>:<block>' as client order id, so a re-run trades nothing."""
    block = _place(side="buy", quantity=0.5)
    async with node_kit() as kit:
        first = await run_node(kit, block)
        again = await run_node(kit, block)
        position = await kit.exchange.position("paper", BTC)
    assert first == {
        "order_id": first["order_id"],
        "client_order_id": f"{EXECUTION_ID}:b1",
        "status": "filled",
        "filled_quantity": 0.5,
        "avg_price": 102.0,
        "reason": None,
        "denial": None,
    }
    assert again == first
    assert position == 0.5


@pytest.mark.asyncio
async def test_place_order_inputs_override_properties() -> None:
    """Wired side, quantity and price win over the properties."""
    block = _place(side="buy", quantity=5, order_type="limit", limit_price=1.0)
    async with node_kit() as kit:
        outputs = await run_node(kit, block, side="sell", quantity=0.25, price=99.0)
        order = await kit.exchange.get_order("paper", outputs["client_order_id"])
    assert order is not None
    assert (order.side, order.quantity, order.limit_price) == ("sell", 0.25, 99.0)
    assert outputs["status"] == "filled"


@pytest.mark.asyncio
async def test_place_order_rests_a_limit_order_that_does_not_cross() -> None:
    """A limit buy below the ask rests open."""
    async with node_kit() as kit:
        block = _place(side="buy", quantity=1, order_type="limit", limit_price=50.0)
        outputs = await run_node(kit, block)
    assert (outputs["status"], outputs["filled_quantity"], outputs["avg_price"]) == (
        "open",
        0.0,
        None,
    )


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"side": "hold", "quantity": 1}, "side must be 'buy' or 'sell', found 'hold'"),
        ({"side": "buy", "quantity": 0}, "quantity must be a finite number > 0, found 0"),
        ({"side": "buy", "quantity": float("nan")}, "quantity must be"),
        ({"side": "buy", "quantity": "1"}, "quantity must be"),
    ],
)
@pytest.mark.asyncio
async def test_place_order_rejects_bad_final_values(inputs: dict[str, Any], reason: str) -> None:
    """Bad resolved side or quantity raise OrderRejected naming the block; nothing trades."""
    block = _place(inputs=["side", "quantity"])
    async with node_kit() as kit:
        with pytest.raises(OrderRejected, match=rf"block 'b1': {reason}"):
            await run_node(kit, block, **inputs)
        assert await kit.exchange.position("paper", BTC) == 0.0


@pytest.mark.parametrize(
    ("properties", "wired", "fields"),
    [
        ({}, [], ["properties.side", "properties.quantity"]),
        ({}, ["side", "quantity"], []),
        ({"side": "buy", "quantity": -1}, [], ["properties.quantity"]),
        ({"side": "buy", "quantity": 1, "order_type": "limit"}, [], ["properties.limit_price"]),
        ({"side": "buy", "quantity": 1, "order_type": "limit"}, ["price"], []),
        ({"symbol": "BTC-USDT", "side": "buy", "quantity": 1}, [], ["properties.symbol"]),
    ],
)
def test_place_order_check(properties: dict[str, Any], wired: list[str], fields: list[str]) -> None:
    """place_order's check wants side and quantity (> 0) and a price for a limit order."""
    found = problems("actions", "place_order", {"symbol": BTC, **properties}, wired)
    assert [p[0] for p in found] == fields


@pytest.mark.asyncio
async def test_cancel_order_cancels_a_wired_order() -> None:
    """cancel_order cancels the order whose client order id is wired in."""
    async with node_kit() as kit:
        placed = await run_node(
            kit, _place(side="buy", quantity=1, order_type="limit", limit_price=50.0)
        )
        block = make_block("actions", "cancel_order", inputs=["client_order_id"], block_id="c")
        outputs = await run_node(kit, block, client_order_id=placed["client_order_id"])
    assert outputs == {"status": "cancelled", "client_order_id": placed["client_order_id"]}


@pytest.mark.asyncio
async def test_cancel_order_of_an_unknown_order_is_rejected() -> None:
    """Cancelling an unknown client order id raises OrderRejected."""
    block = make_block("actions", "cancel_order", {"client_order_id": "ghost"})
    async with node_kit() as kit:
        with pytest.raises(OrderRejected, match="'ghost'"):
            await run_node(kit, block)


def test_cancel_order_needs_an_id() -> None:
    """cancel_order's check wants a client_order_id property or input."""
    assert [p[0] for p in problems("actions", "cancel_order")] == ["properties.client_order_id"]


@pytest.mark.asyncio
async def test_log_fills_placeholders_without_format() -> None:
    """log replaces {name} with inputs, keeps unknown ones, and never evaluates anything."""
    message = "spread {spread} on {pair}; {missing} {0} {spread.real} {{x}}"
    block = make_block("actions", "log", {"message": message, "level": "warning"})
    async with node_kit() as kit:
        outputs = await run_node(kit, block, spread=12.5, pair=BTC)
    expected = "spread 12.5 on BTC/USDT; {missing} {0} {spread.real} {{x}}"
    assert outputs == {"message": expected}
    (call,) = kit.logs.calls
    assert call.method_name == "warning"
    assert call.kwargs["message"] == expected
    assert call.kwargs["block_id"] == "b1"


# -- risk ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_max_position_adds_the_proposed_quantity() -> None:
    """max_position checks position + signed quantity against the limit, with context ids."""
    block = make_block(
        "risk", "max_position", {"symbol": BTC, "limit": 2.0}, inputs=["quantity", "side"]
    )
    async with node_kit() as kit:
        await run_node(kit, _place(side="buy", quantity=1.0))
        outputs = await run_node(kit, block, quantity=0.5, side="sell")
    assert outputs == {"ok": True, "value": 0.5, "threshold": 2.0}
    (call,) = kit.risk.calls
    assert (call.limit_type, call.auto_halt) == ("max_position", True)
    assert (call.workflow_id, call.bot_id, call.strategy_id) == ("wf-1", "bot-1", "strat-1")


@pytest.mark.asyncio
async def test_max_position_breach_propagates() -> None:
    """A breach raises RiskLimitExceeded out of the node, with auto_halt as configured."""
    block = make_block(
        "risk",
        "max_position",
        {"symbol": BTC, "limit": 1.0, "side": "sell", "auto_halt": False},
        inputs=["quantity"],
    )
    async with node_kit() as kit:
        with pytest.raises(RiskLimitExceeded) as raised:
            await run_node(kit, block, quantity=1.5)
    assert (raised.value.limit_type, raised.value.value, raised.value.threshold) == (
        "max_position",
        -1.5,
        1.0,
    )
    assert kit.risk.halted is False


def test_max_position_check() -> None:
    """max_position wants a positive limit, a BASE/QUOTE symbol, and a side for a quantity."""
    assert [p[0] for p in problems("risk", "max_position", {"symbol": BTC, "limit": 0})] == [
        "properties.limit"
    ]
    found = problems("risk", "max_position", {"symbol": BTC, "limit": 1}, wired=["quantity"])
    assert [p[0] for p in found] == ["properties.side"]


@pytest.mark.asyncio
async def test_max_order_notional_multiplies_quantity_and_price() -> None:
    """The notional is quantity * price, inputs overriding properties; a breach propagates."""
    block = make_block(
        "risk",
        "max_order_notional",
        {"limit": 1_000, "quantity": 2, "price": 100},
        inputs=["price"],
    )
    async with node_kit() as kit:
        assert await run_node(kit, block, price=400) == {
            "ok": True,
            "value": 800.0,
            "threshold": 1000.0,
        }
        with pytest.raises(RiskLimitExceeded, match="max_order_notional"):
            await run_node(kit, block, price=600)
        assert kit.risk.halted is True


def test_max_order_notional_needs_quantity_and_price() -> None:
    """max_order_notional's check wants quantity and price as properties or inputs."""
    found = problems("risk", "max_order_notional", {"limit": 1})
    assert [p[0] for p in found] == ["properties.quantity", "properties.price"]


@pytest.mark.asyncio
async def test_daily_loss_limit_reads_the_exchange_pnl() -> None:
    """Without a pnl input the exchange's realized P&L is checked against -max_loss."""
    block = make_block("risk", "daily_loss_limit", {"max_loss": 5})
    async with node_kit() as kit:
        await run_node(kit, _place(side="buy", quantity=1.0))
        await kit.prices.quote("paper", BTC)
        await kit.prices.quote("paper", BTC)  # bid falls to 90
        await run_node(kit, _place(side="sell", quantity=1.0, block_id="exit"))
        with pytest.raises(RiskLimitExceeded) as raised:
            await run_node(kit, block)
    assert (raised.value.value, raised.value.threshold) == (-12.0, -5.0)


@pytest.mark.asyncio
async def test_daily_loss_limit_prefers_the_pnl_input() -> None:
    """A wired pnl is checked instead of the exchange's."""
    block = make_block("risk", "daily_loss_limit", {"max_loss": 500}, inputs=["pnl"])
    async with node_kit() as kit:
        outputs = await run_node(kit, block, pnl=-100)
    assert outputs == {"ok": True, "value": -100.0, "threshold": -500.0}


# -- registering your own --------------------------------------------------------------------


def test_node_decorator_registers_the_readme_call_in_a_given_registry() -> None:
    """``@node(category, type, properties=..., outputs=..., pure=True)`` registers a spec with
    those options and the docstring, and a second registration needs ``replace``."""
    registry = NodeRegistry()
    price = {"price": Prop("number", required=True)}

    @node(
        "providers",
        "constant_price",
        properties=price,
        outputs=("price",),
        pure=True,
        registry=registry,
    )
    async def constant_price(
        ctx: ExecutionContext, block: Block, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        """A fixed price."""
        return {"price": block.properties["price"]}

    registered = registry.get("providers", "constant_price")
    assert registered is not None
    assert registered.run is constant_price and registered.properties == price
    assert (registered.outputs, registered.pure, registered.inputs) == (("price",), True, {})
    assert registered.doc == "A fixed price."
    assert default_registry.get("providers", "constant_price") is None
    with pytest.raises(ValueError, match="already registered"):
        node("providers", "constant_price", registry=registry)(constant_price)
    node("providers", "constant_price", registry=registry, replace=True)(constant_price)
    replaced = registry.get("providers", "constant_price")
    assert replaced is not None and replaced.properties == {}
