"""Secrets in ``api_call``: given by reference, refused when literal, resolved at run time
from a secrets directory or the environment, and never found in what is stored, emitted,
raised or logged."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from httpkit import HttpServer
from nodekit import make_block, node_kit, problems, run_node
from structlog.testing import capture_logs

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import Settings
from tradeflow.domain.egress import redacted
from tradeflow.domain.errors import (
    ConfigurationError,
    ExternalRequestRejected,
    ExternalServiceError,
    WorkflowValidationError,
)
from tradeflow.engine.nodes.registry import HttpPool
from tradeflow.engine.secrets import SecretReader
from tradeflow.engine.validation import parse_workflow
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
    reader = SecretReader(str(tmp_path), {"API_KEY": "from-env", "ONLY_ENV": "env-value"})
    assert reader.read("API_KEY") == "from-file"
    assert reader.read("WINDOWS") == "crlf"
    assert reader.read("ONLY_ENV") == "env-value"


def test_a_missing_secret_names_itself_and_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    reader = SecretReader(str(tmp_path), {"BLANK": ""})
    for name in ("ABSENT", "EMPTY", "BLANK"):
        with pytest.raises(ConfigurationError) as missing:
            reader.read(name)
        assert str(missing.value) == (
            f"secret {name!r} is not set: expected a file {name} in TRADEFLOW_SECRETS_DIR "
            f"({tmp_path}) or an environment variable {name} (non-empty)"
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
    monkeypatch.setenv("BINANCE_SIG", "sig-from-env")
    monkeypatch.setenv("BODY_PASS", PASSWORD)
    http_server.answers["/order"] = (200, b'{"ok": true}')
    properties = {
        "url": http_server.url("/order"),
        "method": "POST",
        "headers": {"X-MBX-APIKEY": {"secret": "BINANCE_KEY"}},
        "params": {"symbol": "BTCUSDT", "signature": {"secret": "BINANCE_SIG"}},
        "body": {"auth": {"pass": {"secret": "BODY_PASS"}}, "qty": 1},
    }
    block = make_block("providers", "api_call", properties)
    async with node_kit(http_pool=http_server.pool(secrets_dir=str(tmp_path))) as kit:
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
    async with node_kit(http_pool=http_server.pool()) as kit:
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
    monkeypatch.setenv("API_KEY", KEY)
    http_server.answers["/x"] = (status, f'{{"msg": "bad key {KEY}"}}'.encode())
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/x?symbol=BTC"), "params": {"key": {"secret": "API_KEY"}}},
    )
    async with node_kit(http_pool=http_server.pool()) as kit:
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
    monkeypatch.setenv("API_KEY", KEY)
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    url = f"http://127.0.0.1:{port}/x"
    properties = {"url": f"{url}?symbol=BTC", "params": {"k": {"secret": "API_KEY"}}}
    async with node_kit(http_pool=HttpPool(egress_allow=[f"127.0.0.1:{port}"])) as kit:
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
    monkeypatch.setenv("API_KEY", KEY)
    http_server.answers["/old"] = (302, b"")
    http_server.redirects["/old"] = http_server.url("/new")
    http_server.answers["/new"] = (200, b"{}")
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/old"), "headers": {"X-Api-Key": {"secret": "API_KEY"}}},
    )
    async with node_kit(http_pool=http_server.pool()) as kit:
        with pytest.raises(ExternalRequestRejected, match="redirect not followed"):
            await run_node(kit, block)
    assert [r.target for r in http_server.received] == ["/old"]


@pytest.mark.asyncio
async def test_httpx_request_log_carries_no_query(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's URL at INFO: without its query string."""
    monkeypatch.setenv("API_KEY", KEY)
    http_server.answers["/x"] = (200, b"{}")
    block = make_block(
        "providers",
        "api_call",
        {"url": http_server.url("/x"), "params": {"k": {"secret": "API_KEY"}}},
    )
    caplog.set_level(logging.INFO, logger="httpx")
    async with node_kit(http_pool=http_server.pool()) as kit:
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
