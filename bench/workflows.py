"""Workflows the benchmarks run: realistic shapes with exactly one order each."""

from __future__ import annotations

from typing import Any


def _block(
    block_id: str,
    category: str,
    type_: str,
    properties: dict[str, Any],
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": block_id,
        "name": block_id,
        "category": category,
        "type": type_,
        "properties": properties,
        "config": {},
        "inputs": inputs or {},
    }


def trading_workflow(nodes: int) -> dict[str, Any]:
    """``nodes`` blocks: a quote, order size, ``branches`` parallel chains of threshold and
    compare checks, a risk check, an ``all`` gate and one market order."""
    if nodes < 6:
        raise ValueError("at least 6 nodes")
    blocks = [
        _block("quote", "providers", "price_feed", {"symbol": "BTC/USDT"}),
        _block("size", "providers", "static", {"values": {"qty": 0.001}}),
        _block(
            "notional",
            "risk",
            "max_order_notional",
            {"limit": 1_000_000},
            {"quantity": "size.qty", "price": "quote.price"},
        ),
    ]
    checks = nodes - 5
    branches = max(1, checks // 10)
    gate_inputs = {"risk": "notional.ok"}
    for branch in range(branches):
        length = checks // branches + (1 if branch < checks % branches else 0)
        previous, tail = "quote.price", ""
        for step in range(length):
            node_id = f"c{branch}_{step}"
            if step % 2 == 0:
                blocks.append(
                    _block(node_id, "triggers", "threshold", {"above": 1.0}, {"value": previous})
                )
                previous, tail = f"{node_id}.value", f"{node_id}.triggered"
            else:
                blocks.append(
                    _block(
                        node_id,
                        "conditions",
                        "compare",
                        {"op": ">", "value": 0},
                        {"left": previous},
                    )
                )
                tail = f"{node_id}.result"
        gate_inputs[f"branch{branch}"] = tail
    blocks.append(_block("go", "conditions", "all", {}, gate_inputs))
    blocks.append(
        _block(
            "buy",
            "actions",
            "place_order",
            {"symbol": "BTC/USDT", "side": "buy"},
            {"quantity": "size.qty", "when": "go.result"},
        )
    )
    assert len(blocks) == nodes, (len(blocks), nodes)
    return {"blocks": blocks}
