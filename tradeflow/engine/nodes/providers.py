"""Provider nodes: they bring values into a workflow (constants, prices, HTTP APIs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from tradeflow.domain.errors import ExternalRequestRejected, ExternalServiceError, InvalidRequest
from tradeflow.engine.model import Block
from tradeflow.engine.nodes._checks import Problems, require_symbol
from tradeflow.engine.nodes.registry import ExecutionContext, Prop, node

__all__ = ["api_call", "price_feed", "static"]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _static_outputs(props: Mapping[str, Any]) -> tuple[str, ...]:
    values = props.get("values")
    return tuple(values) if isinstance(values, dict) else ()


@node(
    "providers",
    "static",
    properties={"values": Prop("object", required=True, doc="Output name -> JSON value.")},
    outputs_from_properties=_static_outputs,
    pure=True,
)
async def static(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Constant outputs: one per entry of ``values``."""
    return dict(block.properties["values"])


@node(
    "providers",
    "price_feed",
    properties={
        "symbol": Prop("string", required=True, doc="BASE/QUOTE, e.g. BTC/USDT."),
        "venue": Prop("string", default="paper", doc="Venue to quote."),
    },
    outputs=("price", "bid", "ask", "spread", "timestamp"),
    check=require_symbol,
)
async def price_feed(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Top of book of ``symbol`` on ``venue``; ``price`` is the mid."""
    quote = await ctx.prices.quote(block.properties["venue"], block.properties["symbol"])
    return {
        "price": quote.mid,
        "bid": quote.bid,
        "ask": quote.ask,
        "spread": quote.ask - quote.bid,
        "timestamp": quote.timestamp,
    }


def _check_api_call(props: Mapping[str, Any], wired: frozenset[str]) -> Problems:
    problems: Problems = []
    url = props["url"]
    if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
        problems.append(("properties.url", "an http:// or https:// URL", repr(url)))
    headers = props["headers"]
    if isinstance(headers, dict):
        # Name the offending headers only: their values may be credentials.
        bad = sorted(name for name, value in headers.items() if not isinstance(value, str))
        if bad:
            problems.append(("properties.headers", "string header values", f"non-strings in {bad}"))
    return problems


def _without_secrets(url: str) -> str:
    """The URL as errors, events and logs show it: no credentials, no query (API keys
    often travel in either)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _breaker_name(props: Mapping[str, Any]) -> str:
    """``http:<host>[:<port>]``: one breaker per server, credentials in the URL left out."""
    return "http:" + urlsplit(str(props["url"])).netloc.rpartition("@")[2].lower()


@node(
    "providers",
    "api_call",
    properties={
        "url": Prop("string", required=True, doc="http:// or https:// URL."),
        "method": Prop("string", default="GET", choices=_METHODS),
        "headers": Prop("object", default={}, doc="Extra request headers (string values)."),
        "params": Prop("object", default={}, doc="Query parameters."),
        "body": Prop("any", doc="Sent as JSON when set."),
        "extract": Prop("string", doc="Dotted path into the JSON response, e.g. data.0.price."),
        "as_number": Prop(
            "boolean",
            default=False,
            doc="Convert the result to a number (APIs such as Binance send prices as strings).",
        ),
    },
    outputs=("result", "status_code"),
    breaker=_breaker_name,
    check=_check_api_call,
)
async def api_call(ctx: ExecutionContext, block: Block, inputs: dict[str, Any]) -> dict[str, Any]:
    """Call an HTTP API; ``result`` is the JSON body, or the part of it ``extract`` names.

    Sends ``X-Correlation-ID``. A 5xx answer or a transport failure raises
    ``ExternalServiceError`` (worth a retry); any other non-2xx answer raises
    ``ExternalRequestRejected``.
    """
    props = block.properties
    method = props["method"]
    url = props["url"]
    shown = _without_secrets(url)
    try:
        response = await ctx.http.request(
            method,
            url,
            headers={**props["headers"], "X-Correlation-ID": ctx.correlation_id},
            params=props["params"] or None,
            json=props["body"],
        )
    except httpx.RequestError as exc:
        reason = str(exc).replace(url, shown)
        raise ExternalServiceError(
            f"{method} {shown} failed: {type(exc).__name__}: {reason}"
        ) from exc
    status = response.status_code
    if status >= 500:
        raise ExternalServiceError(f"{method} {shown} answered {status}: {response.text[:200]}")
    if not 200 <= status < 300:
        raise ExternalRequestRejected(shown, status, response.text)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    path = props["extract"]
    result = body if path is None else _extract(block, body, path)
    if props["as_number"]:
        result = _to_number(block, result)
    return {"result": result, "status_code": status}


def _to_number(block: Block, value: Any) -> float:
    """A finite number from a JSON number or numeric string."""
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise InvalidRequest(f"{block.id}.result", "a number or numeric string", value)


def _extract(block: Block, body: Any, path: str) -> Any:
    """Follow a dotted path (keys, or list indices) into ``body``."""
    keys = path.split(".")
    current = body
    for depth, key in enumerate(keys):
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdecimal() and int(key) < len(current):
            current = current[int(key)]
        else:
            where = ".".join(keys[:depth]) or "the top level"
            raise InvalidRequest(
                f"{block.id}.properties.extract",
                f"{key!r} under {where} of the response (path {path!r})",
                _shape(current),
            )
    return current


def _shape(value: Any) -> str:
    """What sits where a path step failed, without dumping the payload."""
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:20]}"
    if isinstance(value, list):
        return f"a list of length {len(value)}"
    return f"a {type(value).__name__}"
