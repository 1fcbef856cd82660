"""Cancel on halt with real services: the Redis ledger lists resting orders by scope,
a ``Halt`` with ``cancel_orders`` through the emergency service makes the executor
service run the job that cancels the halted bot's resting orders (and no other's), and
``tradeflow halt --cancel-orders --env production`` prints the halt barrier's report."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from kit import eventually
from servers import ServerProcess
from test_cancel_on_halt import bid, check_resting_orders_by_scope

from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.app.cancel_on_halt import job_request_id
from tradeflow.app.cli import main
from tradeflow.app.infrastructure import Infrastructure
from tradeflow.domain.records import AuditEntry, ExecutionStatus, Scope
from tradeflow.domain.trading import OrderStatus

pytestmark = pytest.mark.integration

PREFIX = "test:cancel-on-halt"
"""The key prefix of the ledger tests here (their keys are deleted after each)."""


@pytest_asyncio.fixture
async def redis_client(redis_server: ServerProcess) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's redis-server; the keys under :data:`PREFIX` are
    deleted afterwards."""
    client = aioredis.from_url(redis_server.url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{PREFIX}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.asyncio
async def test_redis_ledger_lists_resting_orders_by_scope(redis_client: aioredis.Redis) -> None:
    """The Redis ledger keeps the ``open_orders`` contract the embedded ledgers keep."""
    await check_resting_orders_by_scope(RedisPaperLedger(redis_client, prefix=PREFIX))


@pytest.mark.asyncio
async def test_redis_ledger_reads_orders_stored_without_scope_ids(
    redis_client: aioredis.Redis,
) -> None:
    """An order stored before orders kept their scope ids reads back with none."""
    await redis_client.hset(
        f"{PREFIX}:paper:orders:paper",
        "old",
        b'filled\n["o0","BTC/USDT","buy",0.1,"market",null,0.1,100.0,1700000000.0]',
    )
    order = await RedisPaperLedger(redis_client, prefix=PREFIX).get_order("paper", "old")
    assert order is not None
    assert (order.status, order.avg_price) == (OrderStatus.FILLED, 100.0)
    assert (order.workflow_id, order.bot_id, order.strategy_id) == (None, None, None)


@pytest.mark.asyncio
@pytest.mark.usefixtures("production")
async def test_the_executor_service_cancels_a_halted_bots_resting_orders() -> None:
    """Resting orders of two bots in the shared ledger; a halt of one bot with
    cancel_orders through the emergency service: the executor service runs the job
    (request id of the halt) and that bot's orders are cancelled, the other's stay."""
    halted, other = f"b-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    async with await Infrastructure.create("production") as infra:
        mine = [await bid(infra, halted), await bid(infra, halted)]
        theirs = await bid(infra, other)
        halt = await infra.emergency.halt(
            Scope.BOT, halted, reason="fat finger", actor="ops", cancel_orders=True
        )

        async def job_status() -> ExecutionStatus | None:
            record = await infra.state.find_by_request_id(job_request_id(halt))
            return None if record is None else record.status

        async def ended() -> bool:
            status = await job_status()
            return status is not None and status.final

        await eventually(ended, "the executor service ran the cancel-on-halt job")
        assert await job_status() is ExecutionStatus.COMPLETED
        for client_order_id in mine:
            order = await infra.exchange.get_order("paper", client_order_id)
            assert order is not None and order.status is OrderStatus.CANCELLED
        assert [
            o.client_order_id for o in await infra.exchange.open_orders("paper", Scope.BOT, other)
        ] == [theirs]

        async def audited() -> list[AuditEntry]:
            entries = await infra.emergency.audit_entries()
            return [a for a in entries if a.action == "cancel_on_halt" and a.target == halted]

        async def reported() -> bool:
            return bool(await audited())

        await eventually(reported, "the job's report in the emergency audit")
        [entry] = await audited()
        assert sorted(entry.details["cancelled"]) == sorted(mine)
        await infra.emergency.resume(Scope.BOT, halted, reason="test over", actor="ops")


@pytest.mark.usefixtures("production")
def test_cli_halt_cancel_orders_in_production_reports_the_barrier(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tradeflow halt --cancel-orders --env production` prints how the live executors
    confirmed the halt and the job's request id; `status` shows the halt cancels resting
    orders."""
    bot = f"b-{uuid.uuid4().hex[:8]}"
    scope = ["--env", "production", "--scope", "bot", "--target", bot]
    assert main(["halt", *scope, "--reason", "fat finger", "--cancel-orders"]) == 0
    assert main(["status", "--env", "production"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"halted bot '{bot}': fat finger"
    assert re.fullmatch(
        r"confirmed at version \d+: \d+ of \d+ live executor\(s\) acknowledged", out[1]
    )
    # In-flight actions and fenced executors, if any, are listed between.
    assert any(
        line.startswith("resting orders: an executor cancels them (request id cancel-on-halt:bot:")
        for line in out
    )
    assert any(
        line.startswith(f"HALTED bot '{bot}' since ")
        and line.endswith("(cancels resting orders): fat finger")
        for line in out
    )
