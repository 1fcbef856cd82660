"""Secrets in ``api_call``: given by reference, refused when literal, resolved at run time
from a secrets directory or ``TRADEFLOW_SECRET_*`` variables, sent only to the hosts they
are bound to, and never found in what is stored, emitted, raised, returned or logged."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog
from httpkit import HttpServer
from nodekit import make_block, node_kit, problems, run_node
from structlog.testing import capture_logs

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import Settings
from tradeflow.domain.egress import SecretHosts, masked, masked_json, redacted
from tradeflow.domain.errors import (
    ConfigurationError,
    ExternalRequestRejected,
    ExternalServiceError,
    InvalidRequest,
    WorkflowValidationError,
)
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.secrets import SecretReader
from tradeflow.engine.validation import parse_workflow
from tradeflow.observability.logging import configure_logging
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
"""A Binance-style API key (random; the kind of value that must never be stored)."""
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
PASSWORD = "hunter2-but-longer"


def api_call(**properties: Any) -> dict[str, Any]:
    return {"url": "https://api.example.com/v3/order", **properties}


# -- validation: literal credentials are refused, naming the field, never the value ----------


@pytest.mark.parametrize(
    ("properties", "field", "expected", "found"),
    [
        (
            api_call(headers={"X-MBX-APIKEY": KEY}),
            "properties.headers.X-MBX-APIKEY",
            'a secret reference such as {"secret": "X_MBX_APIKEY"}',
            "a literal value that looks like a long random token",
        ),
        (
            api_call(headers={"Authorization": "Bearer abc"}),
            "properties.headers.Authorization",
            'a secret reference such as {"secret": "AUTHORIZATION"}',
            "a literal value that looks like an HTTP authorization credential",
        ),
        (
            api_call(headers={"Cookie": "sid=1"}),
            "properties.headers.Cookie",
            'a secret reference such as {"secret": "COOKIE"}',
            "a literal value",
        ),
        (
            api_call(headers={"X-Session-Id": "short"}),
            "properties.headers.X-Session-Id",
            'a secret reference such as {"secret": "X_SESSION_ID"}',
            "a literal value",
        ),
        (
            api_call(headers={"X-Trace": JWT}),
            "properties.headers.X-Trace",
            'a secret reference such as {"secret": "X_TRACE"}',
            "a literal value that looks like a JWT",
        ),
        (
            api_call(params={"apiKey": "k1"}),
            "properties.params.apiKey",
            'a secret reference such as {"secret": "APIKEY"}',
            "a literal value",
        ),
        (
            api_call(params={"signature": ["a", {"secret": "SIG"}]}),
            "properties.params.signature",
            'a secret reference such as {"secret": "SIGNATURE"}',
            "a literal value",
        ),
        (
            api_call(params={"filter": {"nested": 1}}),
            "properties.params.filter",
            "a string, number, boolean, a list of those, or a secret reference",
            "a dict",
        ),
        (
            {"url": f"https://bot:{PASSWORD}@api.example.com/v1"},
            "properties.url",
            "a URL without user:password@ (send credentials in a header as a secret "
            'reference such as {"secret": "AUTHORIZATION"})',
            "credentials in the URL",
        ),
        (
            {"url": f"https://api.example.com/v1?symbol=BTC&api_key={PASSWORD}"},
            "properties.url",
            "no credential in the query string: 'api_key' in properties.params as a secret "
            'reference such as {"secret": "API_KEY"}',
            "a literal value for query parameter 'api_key'",
        ),
        (
            api_call(body={"order": {"auth": [JWT]}}),
            "properties.body.order.auth.0",
            'a secret reference such as {"secret": "SECRET_0"}',
            "a literal value that looks like a JWT",
        ),
        (
            api_call(headers={"X-MBX-APIKEY": {"secret": KEY.lower()}}),
            "properties.headers.X-MBX-APIKEY",
            "a secret name matching [A-Z][A-Z0-9_]{0,127}",
            "a name that does not match",
        ),
        (
            api_call(body={"key": {"secret": "../../etc/passwd"}}),
            "properties.body.key",
            "a secret name matching [A-Z][A-Z0-9_]{0,127}",
            "a name that does not match",
        ),
        (
            api_call(params={"apiKey": {"secret": 7}}),
            "properties.params.apiKey",
            "a secret name matching [A-Z][A-Z0-9_]{0,127}",
            "a name that is not a string",
        ),
    ],
)
def test_literal_credentials_are_refused_without_echoing_them(
    properties: dict[str, Any], field: str, expected: str, found: str
) -> None:
    """Each literal credential (by name or by shape) or malformed reference is one problem
    naming the field and how to reference a secret; no problem carries the value."""
    found_problems = problems("providers", "api_call", properties)
    assert found_problems == [(field, expected, found)]
    for secret in (KEY, KEY.lower(), JWT, PASSWORD, "Bearer abc", "sid=1", "etc/passwd"):
        assert secret not in repr(found_problems)


def test_references_and_harmless_literals_pass() -> None:
    """References anywhere, and ordinary values under ordinary names, are fine: a body
    key is not judged by name (``token`` may be an asset)."""
    properties = api_call(
        url="https://api.example.com/v3/ticker?symbol=BTCUSDT",
        headers={"X-MBX-APIKEY": {"secret": "BINANCE_KEY"}, "Accept": "application/json"},
        params={"symbol": "BTCUSDT", "limit": 5, "signature": {"secret": "BINANCE_SIG"}},
        body={"token": "USDT", "auth": {"secret": "BODY_AUTH"}, "ids": [1, 2], "uuid": "0" * 8},
    )
    assert problems("providers", "api_call", properties) == []


def test_validation_message_says_how_to_reference_a_secret() -> None:
    """Through the workflow validator: the message a user reads, value left out."""
    definition = {
        "blocks": [
            {
                "id": "ticker",
                "category": "providers",
                "type": "api_call",
                "properties": api_call(headers={"X-MBX-APIKEY": "abc"}),
            }
        ]
    }
    with pytest.raises(WorkflowValidationError) as invalid:
        parse_workflow(definition)
    assert (
        "block 'ticker': field 'properties.headers.X-MBX-APIKEY': expected a secret reference "
        'such as {"secret": "X_MBX_APIKEY"}, found a literal value'
    ) in str(invalid.value)
    assert "abc" not in str(invalid.value)


# -- resolution ------------------------------------------------------------------------------


def test_a_secret_file_wins_over_the_environment_and_loses_its_newline(tmp_path: Path) -> None:
    (tmp_path / "API_KEY").write_text("from-file\n")
    (tmp_path / "WINDOWS").write_text("crlf\r\n")
    reader = SecretReader(
        str(tmp_path),
        {"TRADEFLOW_SECRET_API_KEY": "from-env", "TRADEFLOW_SECRET_ONLY_ENV": "env-value"},
    )
    assert reader.read("API_KEY") == "from-file"
    assert reader.read("WINDOWS") == "crlf"
    assert reader.read("ONLY_ENV") == "env-value"


def test_a_missing_secret_names_itself_and_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    reader = SecretReader(str(tmp_path), {"TRADEFLOW_SECRET_BLANK": "", "ABSENT": "unprefixed"})
    for name in ("ABSENT", "EMPTY", "BLANK"):
        with pytest.raises(ConfigurationError) as missing:
            reader.read(name)
        assert str(missing.value) == (
            f"secret {name!r} is not set: expected a file {name} in TRADEFLOW_SECRETS_DIR "
            f"({tmp_path}) or an environment variable TRADEFLOW_SECRET_{name} (non-empty)"
        )


def test_a_secret_name_cannot_leave_the_directory(tmp_path: Path) -> None:
    """Only names of the strict pattern are read: no path, no dot, no lower case."""
    (tmp_path / "inside").write_text("x")
    reader = SecretReader(str(tmp_path / "secrets"), {})
    for name in ("../inside", "/etc/passwd", "A/B", "a", ""):
        with pytest.raises(ConfigurationError, match="expected a name matching"):
            reader.read(name)


@pytest.mark.asyncio
async def test_references_are_resolved_at_run_time_and_sent(
    http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header from a secret file, a query parameter and a nested body value from the
    environment reach the server; the block still holds only references."""
    (tmp_path / "BINANCE_KEY").write_text(KEY + "\n")
    monkeypatch.setenv("TRADEFLOW_SECRET_BINANCE_SIG", "sig-from-env")
    monkeypatch.setenv("TRADEFLOW_SECRET_BODY_PASS", PASSWORD)
    http_server.answers["/order"] = (200, b'{"ok": true}')
    properties = {
        "url": http_server.url("/order"),
        "method": "POST",
        "headers": {"X-MBX-APIKEY": {"secret": "BINANCE_KEY"}},
        "params": {"symbol": "BTCUSDT", "signature": {"secret": "BINANCE_SIG"}},
        "body": {"auth": {"pass": {"secret": "BODY_PASS"}}, "qty": 1},
    }
    block = make_block("providers", "api_call", properties)
    bound = ("BINANCE_KEY", "BINANCE_SIG", "BODY_PASS")
    async with node_kit(http_pool=http_server.pool(str(tmp_path), bound)) as kit:
        outputs = await run_node(kit, block)
    assert outputs == {"result": {"ok": True}, "status_code": 200}
    (request,) = http_server.received
    assert request.headers["x-mbx-apikey"] == KEY
    assert request.target == "/order?symbol=BTCUSDT&signature=sig-from-env"
    assert json.loads(request.body) == {"auth": {"pass": PASSWORD}, "qty": 1}
    assert block.properties["headers"] == {"X-MBX-APIKEY": {"secret": "BINANCE_KEY"}}
    assert KEY not in json.dumps(dict(block.properties))


@pytest.mark.asyncio
async def test_a_missing_secret_fails_the_node_before_sending(http_server: HttpServer) -> None:
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/x"), "headers": {"X-Key": {"secret": "NOT_SET_ANYWHERE"}}},
    )
    async with node_kit(http_pool=http_server.pool(secrets=["NOT_SET_ANYWHERE"])) as kit:
        with pytest.raises(ConfigurationError, match="secret 'NOT_SET_ANYWHERE' is not set"):
            await run_node(kit, block)
    assert http_server.received == []


# -- nothing resolved leaks into errors or logs ------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [(500, ExternalServiceError), (401, ExternalRequestRejected)]
)
@pytest.mark.asyncio
async def test_errors_show_no_query_and_no_secret(
    http_server: HttpServer,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    error: type[Exception],
) -> None:
    """A server echoing the key in its error body: the error keeps the status and the
    excerpt, with the key masked and the URL's query left out."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    http_server.answers["/x"] = (status, f'{{"msg": "bad key {KEY}"}}'.encode())
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/x?symbol=BTC"), "params": {"key": {"secret": "API_KEY"}}},
    )
    async with node_kit(http_pool=http_server.pool(secrets=["API_KEY"])) as kit:
        with pytest.raises(error) as failed:
            await run_node(kit, block)
    text = str(failed.value)
    assert f"{http_server.url('/x')} answered {status}" in text
    assert "bad key ***" in text
    assert KEY not in text and "symbol" not in text


def test_texts_lose_urls_queries_userinfo_and_secrets() -> None:
    """What errors pass through: every URL in the text without userinfo or query, every
    secret the request carried masked."""
    text = f"GET https://bot:{PASSWORD}@api.example.com/v1?k={KEY}&s=1 failed; key {KEY}"
    assert redacted(text, {KEY}) == "GET https://api.example.com/v1 failed; key ***"


@pytest.mark.asyncio
async def test_transport_errors_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transport failure of a request carrying a secret: the error shows the URL without
    query and no secret, and does not chain httpx's exception (whose text and request
    carry the full URL, and which a traceback would print)."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    url = f"http://127.0.0.1:{port}/x"
    properties = {"url": f"{url}?symbol=BTC", "params": {"k": {"secret": "API_KEY"}}}
    http_pool = HttpPool(
        egress_allow=[f"127.0.0.1:{port}"], secret_hosts=SecretHosts.parse(["API_KEY=127.0.0.1"])
    )
    async with node_kit(http_pool=http_pool) as kit:
        with pytest.raises(ExternalServiceError) as failed:
            await run_node(kit, make_block("providers", "api_call", properties))
    assert str(failed.value).startswith(f"GET {url} failed: ConnectError")
    assert KEY not in str(failed.value) and "symbol" not in str(failed.value)
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


@pytest.mark.asyncio
async def test_a_request_carrying_secrets_follows_no_redirect(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its headers would go along to the new location: the redirect is answered as a
    rejection instead, and nothing is sent there."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    http_server.answers["/old"] = (302, b"")
    http_server.redirects["/old"] = http_server.url("/new")
    http_server.answers["/new"] = (200, b"{}")
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/old"), "headers": {"X-Api-Key": {"secret": "API_KEY"}}},
    )
    async with node_kit(http_pool=http_server.pool(secrets=["API_KEY"])) as kit:
        with pytest.raises(ExternalRequestRejected, match="redirect not followed"):
            await run_node(kit, block)
    assert [r.target for r in http_server.received] == ["/old"]


@pytest.mark.asyncio
async def test_httpx_request_log_carries_no_query(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's URL at INFO: without its query string."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    http_server.answers["/x"] = (200, b"{}")
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/x"), "params": {"k": {"secret": "API_KEY"}}},
    )
    caplog.set_level(logging.INFO, logger="httpx")
    async with node_kit(http_pool=http_server.pool(secrets=["API_KEY"])) as kit:
        await run_node(kit, block)
    (record,) = [r for r in caplog.records if r.name == "httpx"]
    assert f"GET {http_server.url('/x')} " in record.getMessage()
    assert KEY not in caplog.text and "k=" not in caplog.text


@pytest.mark.asyncio
async def test_stored_definition_events_errors_and_logs_hold_references_only(
    http_server: HttpServer, tmp_path: Path
) -> None:
    """An execution on the embedded stack whose call fails with the key echoed back: the
    stored definition, every event, the stored error and the executor's log lines hold
    the reference's name and never the key."""
    (tmp_path / "BINANCE_KEY").write_text(KEY)
    http_server.answers["/x"] = (503, f"upstream saw {KEY}".encode())
    definition = {
        "blocks": [
            {
                "id": "ticker",
                "category": "providers",
                "type": "api_call",
                "properties": {
                    "url": http_server.url("/x"),
                    "headers": {"X-MBX-APIKEY": {"secret": "BINANCE_KEY"}},
                },
            }
        ]
    }
    settings = replace(
        Settings.from_env("test"),
        egress_allow=(f"127.0.0.1:{http_server.port}",),
        secrets_dir=str(tmp_path),
        secret_hosts=SecretHosts.parse(["BINANCE_KEY=127.0.0.1"]),
    )
    with capture_logs() as logs:
        async with await Infrastructure.create("test", settings=settings) as infra:
            result = await EnhancedWorkflowExecutor(definition, infra, "secret-wf").execute()
            record = await infra.state.get_execution(result["execution_id"])
            events = await infra.state.read_events(execution_id=result["execution_id"])
    assert result["status"] == "failed"
    assert http_server.received[0].headers["x-mbx-apikey"] == KEY
    stored = json.dumps(
        [record.definition, record.error, record.result, [e.to_dict() for _, e in events]],
        default=str,
    )
    assert "BINANCE_KEY" in stored and "upstream saw ***" in stored
    assert KEY not in stored
    assert KEY not in repr(result) and KEY not in repr(logs)


# -- what a reference may read, and where its secret may go ---------------------------------


@pytest.mark.asyncio
async def test_a_reference_reads_no_variable_of_the_process_configuration(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even bound to the host, ``{"secret": "REDIS_PASSWORD"}`` or ``TRADEFLOW_REDIS_URL``
    finds nothing: only ``TRADEFLOW_SECRET_<NAME>`` variables are secrets, so a workflow
    cannot send the process's own credentials anywhere."""
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("TRADEFLOW_REDIS_URL", f"rediss://executor:{PASSWORD}@redis:6379/0")
    http_server.answers["/x"] = (200, b"{}")
    pool = http_server.pool(secrets=["REDIS_PASSWORD", "TRADEFLOW_REDIS_URL"])
    async with node_kit(http_pool=pool) as kit:
        for name in ("REDIS_PASSWORD", "TRADEFLOW_REDIS_URL"):
            block = make_block(
                "providers",
                "api_call",
                {"url": http_server.url("/x"), "headers": {"X-Trace": {"secret": name}}},
            )
            with pytest.raises(ConfigurationError) as missing:
                await run_node(kit, block)
            assert str(missing.value) == (
                f"secret {name!r} is not set: expected an environment variable "
                f"TRADEFLOW_SECRET_{name} (non-empty)"
            )
    assert http_server.received == []


@pytest.mark.asyncio
async def test_a_secret_bound_to_no_host_or_another_is_neither_read_nor_sent(
    http_server: HttpServer, tmp_path: Path
) -> None:
    """The binding is checked against the URL's host before the secret is read (an unset
    secret is refused for its binding, not its absence); nothing reaches the server."""
    (tmp_path / "API_KEY").write_text(KEY)
    http_server.answers["/x"] = (200, b"{}")
    properties = {"url": http_server.url("/x"), "headers": {"X-Api-Key": {"secret": "API_KEY"}}}
    unbound = HttpPool(egress_allow=[f"127.0.0.1:{http_server.port}"], secrets_dir=str(tmp_path))
    elsewhere = HttpPool(
        egress_allow=[f"127.0.0.1:{http_server.port}"],
        secrets_dir=str(tmp_path),
        secret_hosts=SecretHosts.parse(["API_KEY=api.binance.com|Testnet.Binance.Vision."]),
    )
    refusals = []
    for http_pool in (unbound, elsewhere):
        async with node_kit(http_pool=http_pool) as kit:
            with pytest.raises(ConfigurationError) as refused:
                await run_node(kit, make_block("providers", "api_call", properties))
            refusals.append(str(refused.value))
    assert refusals == [
        "secret 'API_KEY' is bound to no host: expected an entry API_KEY=<host> in "
        "TRADEFLOW_SECRET_HOSTS before any request may carry it",
        "secret 'API_KEY' may not be sent to '127.0.0.1': TRADEFLOW_SECRET_HOSTS binds it to "
        "api.binance.com|testnet.binance.vision only",
    ]
    assert http_server.received == []
    reader = SecretReader(hosts=SecretHosts.parse(["UNSET=api.example.com"]), environ={})
    with pytest.raises(ConfigurationError, match="bound to no host"):
        reader.resolve({"secret": "NOT_BOUND"}, "api.example.com", set())
    with pytest.raises(ConfigurationError, match=r"may not be sent to 'evil\.example'"):
        reader.resolve([{"x": {"secret": "UNSET"}}], "evil.example", set())


@pytest.mark.asyncio
async def test_a_bound_secret_goes_to_its_host_whatever_the_case_of_the_url(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upper-case scheme is an http URL like any other: validation takes it and the
    call is made, the secret sent to the host it is bound to."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    http_server.answers["/x"] = (200, b'{"ok": 1}')
    properties = {
        "url": f"HTTP://127.0.0.1:{http_server.port}/x",
        "headers": {"X-Api-Key": {"secret": "API_KEY"}},
    }
    assert problems("providers", "api_call", properties) == []
    async with node_kit(http_pool=http_server.pool(secrets=["API_KEY"])) as kit:
        outputs = await run_node(kit, make_block("providers", "api_call", properties))
    assert outputs == {"result": {"ok": 1}, "status_code": 200}
    assert http_server.received[0].headers["x-api-key"] == KEY


@pytest.mark.parametrize(
    ("entry", "found"),
    [
        ("BINANCE_KEY", "'BINANCE_KEY'"),
        ("BINANCE_KEY=", "'BINANCE_KEY='"),
        ("binance_key=api.binance.com", "'binance_key=api.binance.com'"),
        ("KEY=https://api.binance.com", "'KEY=https://api.binance.com'"),
        ("KEY=api.binance.com:443", "'KEY=api.binance.com:443'"),
        ("KEY=*.binance.com", "'KEY=*.binance.com'"),
        ("KEY=a.com||b.com", "'KEY=a.com||b.com'"),
    ],
)
def test_malformed_secret_bindings_are_refused(entry: str, found: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        SecretHosts.parse([entry])
    assert str(refused.value) == (
        "TRADEFLOW_SECRET_HOSTS: expected comma-separated NAME=host|host entries (NAME "
        "matching [A-Z][A-Z0-9_]{0,127}, hosts without scheme, port or wildcard), found " + found
    )


def test_secret_bindings_name_each_secret_once() -> None:
    hosts = SecretHosts.parse(["A=x.example|[::1]|127.1", " B = y.example "])
    assert hosts.refusal("A", "X.Example.") is None
    assert hosts.refusal("A", "::1") is None
    assert hosts.refusal("A", "127.0.0.1") is None
    assert hosts.refusal("B", "y.example") is None
    assert hosts.refusal("B", "x.example") is not None
    with pytest.raises(ConfigurationError, match="expected each secret once, found A twice"):
        SecretHosts.parse(["A=x.example", "A=y.example"])


# -- what a server echoes back ------------------------------------------------------------------

ODD = 'p@ss/w:rd+"x y'
"""A secret with characters that URL-encoding and JSON escaping change."""


def test_masking_covers_the_encoded_forms_of_a_secret() -> None:
    """As sent, ``quote(s, safe="")``, ``quote_plus(s)`` and escaped in a JSON string."""
    text = f"{ODD} {quote(ODD, safe='')} {quote_plus(ODD)} {json.dumps(ODD)}"
    assert masked(text, {ODD}) == '*** *** *** "***"'
    assert redacted(f"see https://h.example/p?k={quote(ODD)} {ODD}", {ODD}) == (
        "see https://h.example/p ***"
    )
    assert masked_json({ODD: [f"k={quote_plus(ODD)}", 3, None]}, {ODD}) == {
        "***": ["k=***", 3, None]
    }


@pytest.mark.asyncio
async def test_a_result_echoing_the_secrets_is_masked(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server answering with what it received (values, keys, encoded forms): the
    result, hence outputs, events and storage, holds ``***`` instead."""
    monkeypatch.setenv("TRADEFLOW_SECRET_API_KEY", KEY)
    monkeypatch.setenv("TRADEFLOW_SECRET_ODD", ODD)
    echo = {"headers": {"x-api-key": KEY}, KEY: "as a key", "query": f"odd={quote_plus(ODD)}"}
    http_server.answers["/echo"] = (200, json.dumps({"echo": echo, "odd": ODD}).encode())
    properties = {
        "url": http_server.url("/echo"),
        "headers": {"X-Api-Key": {"secret": "API_KEY"}},
        "params": {"odd": {"secret": "ODD"}},
    }
    async with node_kit(http_pool=http_server.pool(secrets=["API_KEY", "ODD"])) as kit:
        outputs = await run_node(kit, make_block("providers", "api_call", properties))
    assert outputs["result"] == {
        "echo": {"headers": {"x-api-key": "***"}, "***": "as a key", "query": "odd=***"},
        "odd": "***",
    }


@pytest.mark.asyncio
async def test_extract_and_number_errors_show_no_part_of_the_response(
    http_server: HttpServer,
) -> None:
    """A failed ``extract`` names the path and the kind of value it met, not its keys;
    a failed number conversion names the kind, not the value."""
    http_server.answers["/x"] = (
        200,
        b'{"data": {"private_key_name": 1, "text": "text-of-the-answer"}}',
    )
    missing_path = {"url": http_server.url("/x"), "extract": "data.price"}
    not_numeric = {"url": http_server.url("/x"), "extract": "data.text", "as_number": True}
    async with node_kit(http_pool=http_server.pool()) as kit:
        with pytest.raises(InvalidRequest) as missing:
            await run_node(kit, make_block("providers", "api_call", missing_path))
        with pytest.raises(InvalidRequest) as not_a_number:
            await run_node(kit, make_block("providers", "api_call", not_numeric))
    assert str(missing.value) == (
        "invalid field 'b1.properties.extract': expected 'price' under data of the response "
        "(path 'data.price'), found 'an object'"
    )
    assert str(not_a_number.value) == (
        "invalid field 'b1.result': expected a number or numeric string, "
        "found 'a str that is not a finite number'"
    )


# -- validation: no value echoed, no steering header, no credential in the URL ------------------


@pytest.mark.parametrize(
    ("properties", "field", "found"),
    [
        ({"url": "https://a.example/x", "method": KEY}, "properties.method", "a str"),
        ({"url": "https://a.example/x", "headers": f"X-Key: {KEY}"}, "properties.headers", "a str"),
        ({"url": "https://a.example/x", "params": [KEY]}, "properties.params", "a list"),
        ({"url": ["https://a.example/x", KEY]}, "properties.url", "a list"),
        (
            {"url": f"ftp://u:{KEY}@a.example/{KEY}?k={KEY}"},
            "properties.url",
            "a URL with scheme 'ftp'",
        ),
        ({"url": f"https:///{KEY}"}, "properties.url", "a URL without a host"),
        ({"url": f"{KEY}"}, "properties.url", "a string that is not a URL"),
    ],
)
def test_validation_reports_the_type_of_a_bad_value_not_the_value(
    properties: dict[str, Any], field: str, found: str
) -> None:
    block = {"id": "b", "category": "providers", "type": "api_call", "properties": properties}
    with pytest.raises(WorkflowValidationError) as invalid:
        parse_workflow({"blocks": [block]})
    (issue,) = invalid.value.issues
    assert (issue.field, issue.found) == (field, found)
    assert KEY not in str(invalid.value) and KEY[:12] not in repr(invalid.value.issues)


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "host",
        "Transfer-Encoding",
        "CONTENT-LENGTH",
        "Connection",
        "X-Forwarded-For",
        "x-forwarded-host",
        "Forwarded",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Upgrade",
        "TE",
        "Trailer",
        "Keep-Alive",
    ],
)
def test_headers_that_steer_the_connection_or_the_routing_are_refused(name: str) -> None:
    found = problems("providers", "api_call", api_call(headers={name: "x"}))
    assert found == [
        (
            f"properties.headers.{name}",
            "a header other than Host, Transfer-Encoding, Content-Length, Connection, Upgrade, "
            "TE, Trailer, Keep-Alive, Forwarded, X-Forwarded-* and Proxy-*",
            "a header that steers the connection or the routing",
        )
    ]


TELEGRAM = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


@pytest.mark.parametrize(
    ("url", "found"),
    [
        (f"https://api.telegram.org/bot123456789:{TELEGRAM}/sendMessage", "a Telegram bot token"),
        (
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "a Slack webhook secret",
        ),
        ("https://discord.com/api/webhooks/1/abc", "a Discord webhook token"),
        (f"https://chat.example/hook/{KEY}/send", "a long random token"),
        (f"https://chat.example/hook/user:{KEY}", "a long random token"),
        (f"https://chat.example/v1/{JWT}", "a JWT"),
    ],
)
def test_a_credential_in_the_url_path_is_refused(url: str, found: str) -> None:
    (problem,) = problems("providers", "api_call", {"url": url})
    assert problem == (
        "properties.url",
        "a URL without a credential in its path (api_call sends credentials only as secret "
        "references in headers, params or body)",
        f"a path that holds {found}",
    )
    assert KEY not in repr(problem) and TELEGRAM not in repr(problem)


@pytest.mark.parametrize(
    ("url", "where", "name"),
    [
        ("https://x.example/p?x=1;apikey=abc", "query string", "apikey"),
        ("https://x.example/p#access_token=abc", "fragment", "access_token"),
    ],
)
def test_query_pairs_after_a_semicolon_and_in_the_fragment_are_judged(
    url: str, where: str, name: str
) -> None:
    assert problems("providers", "api_call", {"url": url}) == [
        (
            "properties.url",
            f"no credential in the {where}: {name!r} in properties.params as a secret "
            f'reference such as {{"secret": "{name.upper()}"}}',
            f"a literal value for query parameter {name!r}",
        )
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.binance.com/api/v3/ticker/bookTicker?symbol=BTCUSDT",
        "https://api.example.com/v1/orders/550e8400-e29b-41d4-a716-446655440000",
        "https://api.example.com/tx/0x5c504ed432cb51138bcf09aa5e8a410dd4a1e204ef84bfed1be16dfba1b22060",
        "https://api.telegram.org/",
        "HTTPS://API.example.com/v1;matrix=1?a=1;b=2",
    ],
)
def test_ordinary_urls_pass(url: str) -> None:
    assert problems("providers", "api_call", {"url": url}) == []


# -- the development console ------------------------------------------------------------------


def test_the_console_log_prints_tracebacks_without_local_variables() -> None:
    """A traceback rendered by the development console shows code, not the values of the
    frames' variables (a resolved secret may be one; rich's tracebacks would show it)."""

    def call(resolved: str) -> None:
        raise ValueError(f"{len(resolved)} characters")

    stream = io.StringIO()
    configure_logging(json=False, level="info", stream=stream)
    try:
        try:
            call(PASSWORD)
        except ValueError:
            structlog.get_logger().exception("call failed")
    finally:
        structlog.reset_defaults()
    output = stream.getvalue()
    assert "Traceback (most recent call last):" in output
    assert "ValueError: 18 characters" in output
    assert PASSWORD not in output
