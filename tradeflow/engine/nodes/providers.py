"""Provider nodes: they bring values into a workflow (constants, prices, HTTP APIs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from tradeflow.domain.egress import (
    SECRET_NAME,
    credential_name,
    credential_shape,
    forbidden_header,
    is_secret_reference,
    masked_json,
    path_credential,
    redacted,
    redacted_url,
    secret_name_for,
)
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
    """An http(s) URL (scheme in any case) with a host and without userinfo; no
    credential given literally in the URL's path, query or fragment, the headers, the
    params or the body (secret references instead); well-formed references; no header
    that steers the connection or the routing. Problems name the field, never echo a
    value."""
    return [
        *_url_problems(props["url"]),
        *_header_problems(props["headers"]),
        *_param_problems(props["params"]),
        *_body_problems("properties.body", props["body"]),
    ]


def _url_problems(url: Any) -> Problems:
    if not isinstance(url, str):
        return [("properties.url", "an http:// or https:// URL", f"a {type(url).__name__}")]
    if url.lower().startswith(("http://", "https://")) and urlsplit(url).hostname:
        return _url_credentials(url)
    # Only the scheme is shown: the rest of a URL may hold a credential.
    scheme = urlsplit(url).scheme[:20]
    if scheme.lower() in ("http", "https"):
        found = "a URL without a host"
    elif scheme:
        found = f"a URL with scheme {scheme!r}"
    else:
        found = "a string that is not a URL"
    return [("properties.url", "an http:// or https:// URL with a host", found)]


def _header_problems(headers: Any) -> Problems:
    if not isinstance(headers, dict):
        return []
    problems: Problems = []
    bad = []
    for name, value in headers.items():
        field = f"properties.headers.{name}"
        if forbidden_header(str(name)):
            problems.append(
                (field, _HEADER_EXPECTED, "a header that steers the connection or the routing")
            )
        elif isinstance(value, str) or is_secret_reference(value):
            problems += _credential_problems(field, name, value)
        else:
            bad.append(name)
    if bad:
        # Name the offending headers only: their values may be credentials.
        problems.append(
            (
                "properties.headers",
                "string header values or secret references",
                f"others in {sorted(bad)}",
            )
        )
    return problems


def _param_problems(params: Any) -> Problems:
    if not isinstance(params, dict):
        return []
    problems: Problems = []
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            field = f"properties.params.{name}"
            if isinstance(item, dict | list) and not is_secret_reference(item):
                problems.append((field, _PARAM_VALUE, f"a {type(item).__name__}"))
            else:
                problems += _credential_problems(field, name, item)
    return problems


_PARAM_VALUE = "a string, number, boolean, a list of those, or a secret reference"
_HEADER_EXPECTED = (
    "a header other than Host, Transfer-Encoding, Content-Length, Connection, Upgrade, TE, "
    "Trailer, Keep-Alive, Forwarded, X-Forwarded-* and Proxy-*"
)


def _reference_example(name: str) -> str:
    return f'a secret reference such as {{"secret": "{secret_name_for(name)}"}}'


def _credential_problems(field: str, name: str, value: Any) -> Problems:
    """A header or query parameter ``name: value``: a well-formed reference, or a literal
    that neither sits under a credential name nor looks like a credential."""
    if is_secret_reference(value):
        return _reference_problems(field, value)
    shape = credential_shape(value)
    if credential_name(name) or shape is not None:
        found = "a literal value" + (f" that looks like {shape}" if shape else "")
        return [(field, _reference_example(name), found)]
    return []


def _reference_problems(field: str, reference: dict[str, object]) -> Problems:
    name = reference["secret"]
    if isinstance(name, str) and SECRET_NAME.fullmatch(name):
        return []
    # The name is not echoed: a secret value put where its name belongs must not leak.
    found = "a name that does not match" if isinstance(name, str) else "a name that is not a string"
    return [(field, f"a secret name matching {SECRET_NAME.pattern}", found)]


def _url_credentials(url: str) -> Problems:
    """Credentials in the URL itself: userinfo, a path that carries one
    (:func:`~tradeflow.domain.egress.path_credential`), or one in the query string or the
    fragment (pairs separated by ``&`` or ``;``), by name or by shape."""
    parts = urlsplit(url)
    problems: Problems = []
    if "@" in parts.netloc:
        problems.append(
            (
                "properties.url",
                "a URL without user:password@ (send credentials in a header as "
                + _reference_example("Authorization")
                + ")",
                "credentials in the URL",
            )
        )
    carried = path_credential(parts.hostname or "", parts.path)
    if carried is not None:
        problems.append(
            (
                "properties.url",
                "a URL without a credential in its path (api_call sends credentials only as "
                "secret references in headers, params or body)",
                f"a path that holds {carried}",
            )
        )
    for where, text in (("query string", parts.query), ("fragment", parts.fragment)):
        for piece in text.split(";"):
            for name, value in parse_qsl(piece, keep_blank_values=True):
                problems += _query_problems(where, name, value)
    return problems


def _query_problems(where: str, name: str, value: str) -> Problems:
    """A literal ``name=value`` of the URL's query string or fragment: a credential by
    its name or its value's shape, or a name that itself looks like one (not echoed)."""
    if (shape := credential_shape(name)) is not None:
        return [
            (
                "properties.url",
                f"no credential in the {where}",
                f"a parameter name that looks like {shape}",
            )
        ]
    if not credential_name(name) and credential_shape(value) is None:
        return []
    return [
        (
            "properties.url",
            f"no credential in the {where}: {name!r} in properties.params as "
            + _reference_example(name),
            f"a literal value for query parameter {name!r}",
        )
    ]


def _body_problems(field: str, body: Any) -> Problems:
    """Secret references anywhere in the body are well-formed; no string in it looks
    like a credential (body keys are not judged by name: ``token`` may be an asset)."""
    if is_secret_reference(body):
        return _reference_problems(field, body)
    if isinstance(body, dict):
        return [p for key, item in body.items() for p in _body_problems(f"{field}.{key}", item)]
    if isinstance(body, list):
        return [p for i, item in enumerate(body) for p in _body_problems(f"{field}.{i}", item)]
    shape = credential_shape(body)
    if shape is None:
        return []
    return [
        (
            field,
            _reference_example(field.rpartition(".")[2]),
            f"a literal value that looks like {shape}",
        )
    ]


def _breaker_name(props: Mapping[str, Any]) -> str:
    """``http:<host>[:<port>]``: one breaker per server, credentials in the URL left out."""
    return "http:" + urlsplit(str(props["url"])).netloc.rpartition("@")[2].lower()


@node(
    "providers",
    "api_call",
    properties={
        "url": Prop(
            "string",
            required=True,
            sensitive=True,
            doc="http:// or https:// URL (no credentials).",
        ),
        "method": Prop("string", default="GET", choices=_METHODS, sensitive=True),
        "headers": Prop(
            "object",
            default={},
            sensitive=True,
            doc='Extra request headers: strings, or {"secret": "NAME"} for credentials.',
        ),
        "params": Prop(
            "object",
            default={},
            sensitive=True,
            doc='Query parameters; {"secret": "NAME"} for credentials.',
        ),
        "body": Prop(
            "any",
            sensitive=True,
            doc='Sent as JSON when set; {"secret": "NAME"} at any depth.',
        ),
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

    Sends ``X-Correlation-ID``; keeps no cookie between calls. ``{"secret": "NAME"}`` in
    ``headers``, ``params`` or ``body`` is replaced by the secret when the node runs,
    only if ``TRADEFLOW_SECRET_HOSTS`` binds it to the URL's host (``ConfigurationError``
    otherwise, before anything is read or sent). Every connection, each redirect hop
    included, passes the egress policy (``EgressRefused`` otherwise); a request carrying
    a secret follows no redirect (its secrets would go along), and the secrets it carried
    are masked (``***``) wherever the answer echoes them. A 5xx answer or a transport
    failure raises ``ExternalServiceError`` (worth a retry); any other non-2xx answer
    raises ``ExternalRequestRejected``. Errors show the URL without query or
    credentials and never a secret; a failed ``extract`` or ``as_number`` shows no part
    of the answer.
    """
    props = block.properties
    method = props["method"]
    shown = redacted_url(props["url"])
    try:
        url = httpx.URL(props["url"])
    except httpx.InvalidURL as exc:
        raise InvalidRequest(
            f"{block.id}.properties.url", "a valid URL", redacted(str(exc))
        ) from None
    secrets: set[str] = set()
    resolve = ctx.http_pool.secrets.resolve
    headers = resolve(props["headers"], url.host, secrets)
    params = resolve(props["params"], url.host, secrets)
    body = resolve(props["body"], url.host, secrets)
    try:
        response = await ctx.http.request(
            method,
            url,
            headers={**headers, "X-Correlation-ID": ctx.correlation_id},
            params=params or None,
            json=body,
            follow_redirects=not secrets,
        )
    except httpx.RequestError as exc:
        reason = redacted(str(exc), secrets)
        raise ExternalServiceError(
            f"{method} {shown} failed: {type(exc).__name__}: {reason}"
        ) from None
    status = response.status_code
    excerpt = redacted(response.text, secrets)[:200]
    if status >= 500:
        raise ExternalServiceError(f"{method} {shown} answered {status}: {excerpt}")
    if not 200 <= status < 300:
        if secrets and response.is_redirect:
            excerpt = "redirect not followed: the request carries secrets"
        raise ExternalRequestRejected(shown, status, excerpt)
    try:
        result: Any = response.json()
    except ValueError:
        result = response.text
    if secrets:
        result = masked_json(result, secrets)
    path = props["extract"]
    result = result if path is None else _extract(block, result, path)
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
    # The value is not shown: it is the server's, and may echo what the request carried.
    found = "a str that is not a finite number" if isinstance(value, str) else _shape(value)
    raise InvalidRequest(f"{block.id}.result", "a number or numeric string", found)


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
    """What a value of the response is, without showing any of it (not even an object's
    keys: a server may echo what the request carried)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of length {len(value)}"
    return f"a {type(value).__name__}"
