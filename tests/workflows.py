"""Workflow definitions shared by the tests (the seed's format)."""

from __future__ import annotations

from typing import Any


def block(
    block_id: str,
    category: str,
    type_: str,
    properties: dict[str, Any] | None = None,
    inputs: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
) -> dict[str, Any]:
    """One block in the seed's format (``outputs`` omitted: the type's outputs)."""
    raw = {
        "id": block_id,
        "name": block_id.replace("_", " "),
        "category": category,
        "type": type_,
        "properties": properties or {},
        "config": config or {},
        "inputs": inputs or {},
    }
    if outputs is not None:
        raw["outputs"] = outputs
    return raw


def trading_workflow(*, below: float = 1e12, quantity: float = 0.001) -> dict[str, Any]:
    """Quote -> threshold trigger -> notional risk check -> market buy -> log.

    With the default ``below`` the trigger always fires, so the order is placed.
    """
    return {
        "blocks": [
            block("quote", "providers", "price_feed", {"symbol": "BTC/USDT"}),
            block("size", "providers", "static", {"values": {"qty": quantity}}),
            block("cheap", "triggers", "threshold", {"below": below}, {"value": "quote.price"}),
            block(
                "notional",
                "risk",
                "max_order_notional",
                {"limit": 1_000_000},
                {"quantity": "size.qty", "price": "quote.price", "when": "cheap.triggered"},
            ),
            block(
                "buy",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy"},
                {"quantity": "size.qty", "when": "notional.ok"},
            ),
            block(
                "note",
                "actions",
                "log",
                {"message": "bought at {price}"},
                {"price": "buy.avg_price"},
            ),
        ]
    }


def two_orders_workflow() -> dict[str, Any]:
    """Buy, then a second, independent-looking sell that depends on the buy's fill."""
    return _buy_then_sell(0.001)


def gated_orders(gate_url: str) -> dict[str, Any]:
    """A buy, then a wait on an HTTP gate (``api_call``), then a sell of what was bought:
    a test holding the gate pauses the execution between its two orders."""
    gate = block(
        "wait",
        "providers",
        "api_call",
        {"url": gate_url},
        {"when": "first.status"},
        config={"timeout": 120},
    )
    return _buy_then_sell(0.002, gate)


def _buy_then_sell(quantity: float, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Buy ``quantity``, then sell what the buy filled (once ``gate`` answers, if given)."""
    sell_inputs = {"quantity": "first.filled_quantity"}
    if gate is not None:
        sell_inputs["when"] = "wait.status_code"
    return {
        "blocks": [
            block("size", "providers", "static", {"values": {"qty": quantity}}),
            block(
                "first",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "buy"},
                {"quantity": "size.qty"},
            ),
            *([] if gate is None else [gate]),
            block(
                "second",
                "actions",
                "place_order",
                {"symbol": "BTC/USDT", "side": "sell"},
                sell_inputs,
            ),
        ]
    }


def resting_bid() -> dict[str, Any]:
    """One limit buy far below the market: it rests."""
    properties = {
        "symbol": "BTC/USDT",
        "side": "buy",
        "quantity": 0.001,
        "order_type": "limit",
        "limit_price": 1.0,
    }
    return {"blocks": [block("bid", "actions", "place_order", properties)]}
