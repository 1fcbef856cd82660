"""The HTTP price example against the bundled local price API (a real HTTP server process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from servers import free_port, wait_for_port

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import Settings
from tradeflow.workflow.enhanced_executor import EnhancedWorkflowExecutor

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def price_api() -> Iterator[int]:
    """examples/price_api.py running on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "price_api.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield port
    process.terminate()
    process.wait(10)


@pytest.mark.asyncio
async def test_http_price_example_reads_the_api(price_api: int) -> None:
    """api_call fetches and converts the bid; the log node reports it; the run completes."""
    definition = json.loads((EXAMPLES / "http_price.json").read_text())
    ticker = definition["blocks"][0]["properties"]
    ticker["url"] = ticker["url"].replace(":8765", f":{price_api}")
    # The example's API is local: the egress policy must allow it explicitly.
    settings = replace(Settings.from_env("test"), egress_allow=(f"127.0.0.1:{price_api}",))
    async with await Infrastructure.create("test", settings=settings) as infra:
        result = await EnhancedWorkflowExecutor(definition, infra, "http").execute()
    assert result["status"] == "completed"
    bid = result["results"]["ticker"]["result"]
    assert isinstance(bid, float) and 59_000 < bid < 61_000
    assert result["results"]["note"]["message"] == f"BTC bid over HTTP: {bid}"
