"""NATS and Redis with the users, permissions and TLS of deploy/ (tradeflow.app.brokers):
real servers started on the rendered configuration, with certificates made at test time.

Each Redis test resets the server's ACL log first and ends by comparing it with the
refusals it caused: a command or key an adapter needs and is not granted shows up there
even where the adapter swallows the error.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from google.protobuf.wrappers_pb2 import StringValue
from kit import DEADLINE_SECONDS, checkpoint, event, eventually, execution
from nats.aio.client import Client
from nats.aio.msg import Msg
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError
from servers import ServerProcess, free_port

from tradeflow.adapters.nats.bus import (
    DEFAULT_STREAM,
    POSITION_SLOTS,
    NatsEventBus,
    NatsOptions,
    inbox_prefix,
    subject_for,
)
from tradeflow.adapters.redis.connection import connect
from tradeflow.adapters.redis.emergency import (
    RedisAckRelay,
    RedisEmergencyController,
    RedisRequestLog,
    halt_keys,
)
from tradeflow.adapters.redis.ledger import RedisPaperLedger
from tradeflow.adapters.redis.state import RedisStateStore
from tradeflow.adapters.tls import client_ssl_context
from tradeflow.app.brokers import (
    REDIS_ACL_SCRIPT,
    nats_authorization,
    nats_password_variable,
    nats_users,
    provision_stream,
    redis_acl,
)
from tradeflow.app.certs import Authority, Issued
from tradeflow.domain.clock import SystemClock, new_id
from tradeflow.domain.errors import (
    ConfigurationError,
    EmergencyHalted,
    ExchangeError,
    UnavailableError,
)
from tradeflow.domain.ownership import Fence, OwnerInfo
from tradeflow.domain.principals import Principal, Role
from tradeflow.domain.records import (
    ActionGuard,
    Event,
    EventType,
    ExecutionQuery,
    Scope,
    StateBatch,
)
from tradeflow.domain.risk import ScopeBook
from tradeflow.domain.trading import Fill, Order, OrderEffect, OrderStatus, OrderType, Side
from tradeflow.engine.fanout import WORKFLOW_EVENTS
from tradeflow.observability.metrics import Metrics

pytestmark = pytest.mark.integration

PREFIX = "tradeflow"
"""The default prefix: the rules these servers run are deploy's, to the character."""
PASSWORDS = {
    user: secrets.token_hex(16)
    for user in ("state", "emergency", "executor", "operator", "provisioner")
}
ADMIN = secrets.token_hex(16)
"""The tests' own Redis user (not in deploy/), to read the ACL log."""


@dataclass(frozen=True)
class Pki:
    """The test CA's server and client certificates, and a client of another CA."""

    workdir: Path
    authority: Authority

    def files(self, name: str, issued: Issued, ca: bytes) -> tuple[str, str, str]:
        """CA, certificate and key paths of ``issued`` (CA file: ``ca``)."""
        cert, key = issued.write(self.workdir, name)
        ca_path = self.workdir / f"{name}-ca.crt"
        ca_path.write_bytes(ca)
        return str(ca_path), str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), Authority("tradeflow test CA"))


@pytest.fixture(scope="module")
def server_files(pki: Pki) -> tuple[str, str, str]:
    return pki.files("server", pki.authority.issue(None), pki.authority.cert_pem)


@pytest.fixture(scope="module")
def client_tls(pki: Pki) -> Any:
    """The client context of a tradeflow process with a certificate of the test CA."""
    issued = pki.authority.issue(Principal(Role.EXECUTOR, "acl-test"))
    return client_ssl_context(*pki.files("client", issued, pki.authority.cert_pem))


@pytest.fixture(scope="module")
def foreign_tls(pki: Pki) -> Any:
    """A client context trusting (and certified by) another CA."""
    other = Authority("another CA")
    return client_ssl_context(*pki.files("foreign", other.issue(None), other.cert_pem))


# -- Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_acl_server(
    tmp_path_factory: pytest.TempPathFactory, server_files: tuple[str, str, str]
) -> Iterator[ServerProcess]:
    """redis-server on TLS only (client certificates required), with the ACL file that
    deploy's init container renders from the rules and a directory of password files."""
    workdir = tmp_path_factory.mktemp("redis-acl")
    rules = workdir / "rules.acl"
    rules.write_text(redis_acl(PREFIX))
    passwords = workdir / "passwords"
    passwords.mkdir()
    for user in ("state", "emergency", "executor"):
        # As a Secret mounts it; a trailing newline (echo > file) is not part of it.
        (passwords / f"redis-{user}").write_text(PASSWORDS[user] + "\n")
    acl = workdir / "users.acl"
    subprocess.run(
        ["sh", "-c", REDIS_ACL_SCRIPT, "render", str(rules), str(passwords), str(acl)],
        check=True,
        timeout=DEADLINE_SECONDS,
    )
    rendered = acl.read_text()
    assert not any(password in rendered for password in PASSWORDS.values())
    with acl.open("a") as out:
        out.write(f"user admin on >{ADMIN} ~* &* +@all\n")
    ca, cert, key = server_files
    port = free_port()
    argv = [
        *(shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1"),
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "yes"),
        *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca),
        *("--aclfile", str(acl), "--save", "", "--appendonly", "no", "--dir", str(workdir)),
    ]
    server = ServerProcess("redis", argv, port, workdir).start()
    yield server
    server.stop()


def redis_url(server: ServerProcess, user: str | None, password: str | None = None) -> str:
    auth = "" if user is None else f"{user}:{password or PASSWORDS.get(user, ADMIN)}@"
    return f"rediss://{auth}127.0.0.1:{server.port}/0"


@pytest_asyncio.fixture
async def admin(redis_acl_server: ServerProcess, client_tls: Any) -> AsyncIterator[aioredis.Redis]:
    """The tests' observer, with an empty ACL log."""
    client = connect(redis_url(redis_acl_server, "admin", ADMIN), tls=client_tls)
    await client.execute_command("ACL", "LOG", "RESET")
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def as_user(redis_acl_server: ServerProcess, client_tls: Any) -> AsyncIterator[Any]:
    """``as_user(name)``: a client logged in as that deploy user (closed afterwards)."""
    opened: list[aioredis.Redis] = []

    def make(user: str) -> aioredis.Redis:
        opened.append(connect(redis_url(redis_acl_server, user), tls=client_tls))
        return opened[-1]

    yield make
    for client in opened:
        await client.aclose()


async def denials(admin: aioredis.Redis) -> set[tuple[str, str]]:
    """(user, key, channel or command) of every refusal in the ACL log."""
    entries = await admin.acl_log()
    return {(_text(entry["username"]), _text(entry["object"])) for entry in entries}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def owner(name: str) -> OwnerInfo:
    return OwnerInfo(name, "executor", "host", 1)


EMERGENCY_VERSION = f"{{{PREFIX}:emergency}}:version"
HALTS = halt_keys(PREFIX)[0]
BALANCES = f"{PREFIX}:paper:balances:paper"
REALIZED = f"{PREFIX}:paper:realized"


@pytest.mark.asyncio
async def test_the_state_user_runs_the_state_store_and_reads_halts_only(
    admin: aioredis.Redis, as_user: Any
) -> None:
    """Every state store operation works as ``state``; the halts its guarded writes read
    are readable, not writable; emergency and ledger keys are refused (NOPERM)."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        client = as_user("state")
        store = RedisStateStore(client, prefix=PREFIX)
        lease = await store.acquire_lease(owner("executor-state-1"), 30.0)
        record = execution("st-1", bot_id="bot-st", request_id="st-req-1")
        batch = StateBatch(
            execution=record, checkpoints=(checkpoint("st-1", "quote"),), events=(event("st-1", 1),)
        )
        await store.write(batch)
        assert await store.get_execution("st-1") == record
        assert await store.find_by_request_id("st-req-1") == record
        page = await store.list_executions(ExecutionQuery(bot_id="bot-st"))
        assert [r.execution_id for r in page.executions] == ["st-1"]
        assert list(await store.get_checkpoints("st-1")) == ["quote"]
        assert [e for _, e in await store.read_events(execution_id="st-1")] == [event("st-1", 1)]
        assert await store.last_sequence("st-1") == 1
        await store.claim("st-1", lease)
        assert (await store.renew_lease(lease)).cancel == ()
        assert Fence(lease.info.owner, lease.epoch) in await store.live_leases()
        await store.request_cancel("st-1")
        assert await store.orphans(10) == []
        # A guarded intent reads the halts (none here): allowed, read-only.
        guard = ActionGuard("wf", "bot-st", None, OrderEffect.OPENS)
        fenced = StateBatch(execution=execution("st-2"), fence=lease.fence, guard=guard)
        await store.write(fenced)
        await store.release_lease(lease)

        assert await client.hgetall(HALTS) == {}
        with pytest.raises(NoPermissionError):
            await client.hset(HALTS, "global:", "[]")
        with pytest.raises(NoPermissionError):
            await client.get(EMERGENCY_VERSION)
        with pytest.raises(NoPermissionError):
            await client.hgetall(BALANCES)
        await store.close()

    assert await denials(admin) == {
        ("state", HALTS),
        ("state", EMERGENCY_VERSION),
        ("state", BALANCES),
    }


@pytest.mark.asyncio
async def test_the_emergency_user_runs_its_store_barrier_and_triggers_only(
    admin: aioredis.Redis, as_user: Any
) -> None:
    """As ``emergency``: the controller (halts, limits, audit, its change channel), the
    request log, the ack relay, listing and revoking leases and reading scope books work;
    the state service's executions, the ledger's orders and writes of books (directly or
    through a script) are refused. Its halt then refuses the state service's guarded
    write."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        client = as_user("emergency")
        controller = RedisEmergencyController(
            client, prefix=PREFIX, clock=SystemClock(), id_factory=new_id
        )
        await controller.start()
        await controller.set_risk_limit("max_order_notional", 1_000.0, actor="admin")
        await controller.halt(Scope.BOT, "bot-em", reason="acl test", actor="operator")

        state = as_user("state")
        store = RedisStateStore(state, prefix=PREFIX)
        lease = await store.acquire_lease(owner("executor-em-1"), 30.0)
        guard = ActionGuard("wf", "bot-em", None, OrderEffect.OPENS)
        with pytest.raises(EmergencyHalted):
            await store.write(StateBatch(execution=execution("em-1"), guard=guard))

        assert await controller.resume(Scope.BOT, "bot-em", reason="acl test", actor="operator")
        assert [entry.action for entry in await controller.audit_entries(limit=10)][:2] == [
            "resume",
            "halt",
        ]

        log = RedisRequestLog(client, prefix=PREFIX, ttl=60.0)
        answer = StringValue(value="done")
        for _ in range(2):
            again = await log.once("Halt", "em-req-1", _answer(answer), StringValue)
            assert again == answer

        delivered: asyncio.Queue[tuple[Fence, int]] = asyncio.Queue()
        follower = asyncio.create_task(
            RedisAckRelay(client, prefix=PREFIX, origin="b").follow(
                lambda fence, version, _: delivered.put_nowait((fence, version))
            )
        )
        channel = f"{PREFIX}:emergency:acks"
        await eventually(lambda: _subscribed(admin, channel), "the relay follows its channel")
        fence = Fence(lease.info.owner, lease.epoch)
        await RedisAckRelay(client, prefix=PREFIX, origin="a").publish(fence, 7, ())
        assert await delivered.get() == (fence, 7)
        follower.cancel()
        await asyncio.wait((follower,))

        leases = RedisStateStore(client, prefix=PREFIX)
        assert fence in await leases.live_leases()
        assert await leases.revoke_lease(fence)

        ledger = RedisPaperLedger(client, prefix=PREFIX)
        assert await ledger.equity(Scope.GLOBAL, None) == 0.0
        # The scope books it reads are read-only for it, inside a script too.
        await admin.script_flush()  # the next read loads its script again
        assert await ledger.scope_book(Scope.BOT, "bot-em") == ScopeBook(0.0, {}, {}, 0, None)
        with pytest.raises(NoPermissionError):
            await client.hset(REALIZED, "global", "1000000")
        with pytest.raises(NoPermissionError):
            await client.evalsha(
                await client.script_load("return redis.call('HSET', KEYS[1], 'global', '1')"),
                1,
                REALIZED,
            )
        order, fill = _trade("em-order-1")
        with pytest.raises(ExchangeError, match=r"NOPERM|permissions"):
            await ledger.accept(order, fill, opening={"USDT": 1_000.0}, require=None)
        with pytest.raises(NoPermissionError):
            await client.hgetall(f"{PREFIX}:execution:em-1")
        await controller.close()
        await store.close()

    orders = f"{PREFIX}:paper:orders:paper"
    assert await denials(admin) == {
        ("emergency", REALIZED),
        ("emergency", orders),
        ("emergency", f"{PREFIX}:execution:em-1"),
    }


@pytest.mark.asyncio
async def test_the_executor_user_runs_the_paper_ledger_only(
    admin: aioredis.Redis, as_user: Any
) -> None:
    """As ``executor`` the paper ledger works whole; state and emergency keys are refused."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        client = as_user("executor")
        ledger = RedisPaperLedger(client, prefix=PREFIX)
        order, fill = _trade("ex-order-1")
        assert await ledger.accept(order, fill, opening={"USDT": 1_000.0}, require=None) == order
        resting, _ = _trade("ex-order-2", rests=True)
        await ledger.accept(resting, None, opening={"USDT": 1_000.0}, require=None)
        assert [
            o.client_order_id for o in await ledger.open_orders("paper", Scope.GLOBAL, None)
        ] == ["ex-order-2"]
        cancelled = await ledger.cancel("paper", "ex-order-2")
        assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
        assert await ledger.get_order("paper", "ex-order-1") == order
        assert (await ledger.balances("paper") or {})["BTC"] == 0.01
        assert (await ledger.position("paper", "BTC/USDT")).quantity == 0.01
        await ledger.realized_pnl(0)
        await ledger.scope_book(Scope.GLOBAL, None)

        with pytest.raises(NoPermissionError):
            await client.hgetall(HALTS)
        with pytest.raises(NoPermissionError):
            await client.hgetall(f"{PREFIX}:execution:st-1")
        with pytest.raises(NoPermissionError):
            await client.get(f"{PREFIX}:paper:pnl")

    assert await denials(admin) == {
        ("executor", HALTS),
        ("executor", "get"),
        ("executor", f"{PREFIX}:execution:st-1"),
    }


@pytest.mark.asyncio
async def test_no_anonymous_user_no_wrong_password_no_foreign_certificate(
    redis_acl_server: ServerProcess, client_tls: Any, foreign_tls: Any
) -> None:
    """``default`` is off, a wrong password is refused, the probe may only PING, and a
    client of another CA cannot even connect."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        anonymous = connect(redis_url(redis_acl_server, None), tls=client_tls)
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
        await anonymous.aclose()
        wrong = connect(redis_url(redis_acl_server, "state", "0" * 32), tls=client_tls)
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        probe = connect(redis_url(redis_acl_server, "probe", "any"), tls=client_tls)
        assert await probe.ping()
        with pytest.raises(NoPermissionError):
            await probe.get(EMERGENCY_VERSION)
        await probe.aclose()
        foreign = connect(redis_url(redis_acl_server, "state"), tls=foreign_tls)
        with pytest.raises(RedisError) as refused:
            await foreign.ping()
        assert PASSWORDS["state"] not in str(refused.value)
        await foreign.aclose()


def _answer(message: StringValue) -> Any:
    async def run() -> StringValue:
        return message

    return run


async def _subscribed(admin: aioredis.Redis, channel: str) -> bool:
    counts = await admin.pubsub_numsub(channel)
    return bool(counts and counts[0][1])


def _trade(client_order_id: str, *, rests: bool = False) -> tuple[Order, Fill | None]:
    """A buy of 0.01 BTC at 100 on the paper venue (``rests``: an open limit order)."""
    order = Order(
        order_id=f"o-{client_order_id}",
        client_order_id=client_order_id,
        venue="paper",
        symbol="BTC/USDT",
        side=Side.BUY,
        quantity=0.01,
        order_type=OrderType.LIMIT if rests else OrderType.MARKET,
        limit_price=100.0 if rests else None,
        status=OrderStatus.OPEN if rests else OrderStatus.FILLED,
        filled_quantity=0.0 if rests else 0.01,
        avg_price=None if rests else 100.0,
        created_at=1_767_225_600.0,
    )
    fill = (
        None
        if rests
        else Fill("paper", "BTC/USDT", client_order_id, Side.BUY, 0.01, 100.0, 0.0, 1_767_225_600.0)
    )
    return order, fill


# -- NATS -----------------------------------------------------------------------------


def start_nats_acl(workdir: Path, server_files: tuple[str, str, str]) -> ServerProcess:
    """nats-server with JetStream, TLS with client certificates, and deploy's users
    (passwords from the environment, as the StatefulSet passes them)."""
    ca, cert, key = server_files
    port = free_port()
    config = workdir / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{workdir / "js"}" }}\n'
        f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", verify: true }}\n'
        + nats_authorization()
    )
    # Quoted, as the StatefulSet passes them: NATS parses a variable's value, and an
    # unquoted hex password may read as a number.
    users = [user.name for user in nats_users()]
    env = {**os.environ, **{nats_password_variable(u): f'"{PASSWORDS[u]}"' for u in users}}
    argv = [shutil.which("nats-server") or "nats-server", "-c", str(config)]
    return ServerProcess("nats", argv, port, workdir, env=env).start()


@pytest.fixture(scope="module")
def nats_acl_server(
    tmp_path_factory: pytest.TempPathFactory, server_files: tuple[str, str, str]
) -> Iterator[ServerProcess]:
    """deploy's NATS, its stream not set up yet (the ``stream`` fixture does)."""
    server = start_nats_acl(tmp_path_factory.mktemp("nats-acl"), server_files)
    yield server
    server.stop()


def nats_url(server: ServerProcess, user: str, password: str | None = None) -> str:
    return f"tls://{user}:{password or PASSWORDS[user]}@127.0.0.1:{server.port}"


@pytest_asyncio.fixture
async def stream(nats_acl_server: ServerProcess, client_tls: Any) -> ServerProcess:
    """deploy's NATS with the stream set up by the provisioner (as the Job does; a no-op
    once done)."""
    await provision_stream(nats_url(nats_acl_server, "provisioner"), tls=client_tls)
    return nats_acl_server


@dataclass
class Raw:
    """A plain nats-py client and what the server reported to it."""

    client: Client
    errors: asyncio.Queue[Exception]

    async def refusal(self) -> str:
        """The next error the server reported, a permissions violation (lower case: as
        nats-py words it)."""
        error = str(await self.errors.get()).lower()
        assert "permissions violation" in error, error
        return error


@pytest_asyncio.fixture
async def raw(stream: ServerProcess, client_tls: Any) -> AsyncIterator[Any]:
    """``await raw(user)``: a plain client logged in as that user, with its replies on
    its own inbox subjects as the bus's (closed afterwards)."""
    opened: list[Client] = []

    async def make(user: str) -> Raw:
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def error(exc: Exception) -> None:
            errors.put_nowait(exc)

        client = await nats.connect(
            nats_url(stream, user),
            tls=client_tls,
            error_cb=error,
            allow_reconnect=False,
            inbox_prefix=inbox_prefix(user),
        )
        opened.append(client)
        return Raw(client, errors)

    yield make
    for client in opened:
        await client.close()


@pytest_asyncio.fixture
async def bus_as(stream: ServerProcess, client_tls: Any) -> AsyncIterator[Any]:
    """``await bus_as(user)``: a NatsEventBus logged in as that user over TLS."""
    opened: list[NatsEventBus] = []

    async def make(user: str, metrics: Metrics | None = None) -> NatsEventBus:
        url = nats_url(stream, user)
        opened.append(await NatsEventBus.connect(url, tls=client_tls, metrics=metrics))
        return opened[-1]

    yield make
    for bus in opened:
        await bus.close()


async def watching(operator: Raw) -> asyncio.Queue[Msg]:
    """What the operator receives of ``tradeflow.v1.>`` from now on."""
    received: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        received.put_nowait(msg)

    await operator.client.subscribe("tradeflow.v1.>", cb=on_message)
    # A request queued behind the SUB: its reply proves the server has the interest.
    await operator.client.jetstream().account_info()
    return received


def nats_event(type_: str, n: int) -> Event:
    return Event(
        type=type_,
        event_id=f"acl-{type_}-{n}",
        sequence=n,
        timestamp=1_767_225_600.0 + n,
        correlation_id="corr-acl",
        execution_id="exec-acl",
        workflow_id="wf-acl",
        bot_id="bot-acl",
        strategy_id="strat-acl",
    )


@pytest.mark.asyncio
async def test_only_executors_publish_events_and_only_the_emergency_service_changes(
    raw: Any, bus_as: Any
) -> None:
    """Through the event bus, the executor's workflow events and the emergency service's
    changes reach a reader; the executor publishing an emergency subject, the emergency
    service a workflow event and the operator either are refused by the server."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        operator = await raw("operator")
        received = await watching(operator)

        executor = await bus_as("executor")
        executor.publish(nats_event(EventType.NODE_COMPLETED, 1))
        assert await executor.flush()
        assert (await received.get()).subject.startswith("tradeflow.v1.batches.bot-acl.")

        emergency = await bus_as("emergency")
        emergency.publish(nats_event(EventType.EMERGENCY_HALTED, 2))
        assert await emergency.flush()
        assert (await received.get()).subject == "tradeflow.v1.emergency.halted"

        for user, subject in (
            ("executor", "tradeflow.v1.emergency.halted"),
            ("emergency", "tradeflow.v1.events.bot-acl.strat-acl.wf-acl.node_completed"),
            ("emergency", "tradeflow.v1.batches.bot-acl.strat-acl.wf-acl.batch"),
            ("operator", "tradeflow.v1.events.bot-acl.strat-acl.wf-acl.node_completed"),
            ("operator", "tradeflow.v1.batches.bot-acl.strat-acl.wf-acl.batch"),
            ("operator", "tradeflow.v1.emergency.resumed"),
        ):
            sender = await raw(user)
            await sender.client.publish(subject, b"{}")
            await sender.refusal()
        # The refused messages never arrived: the next one that does is a later, allowed one.
        executor.publish(nats_event(EventType.NODE_COMPLETED, 3))
        assert await executor.flush()
        last = await received.get()
        assert (
            last.subject.startswith("tradeflow.v1.batches.")
            and b"acl-node_completed-3" in last.data
        )

        # The executor's JetStream grants serve its replays.
        after = await executor.last_sequence()
        assert after >= 3 * POSITION_SLOTS
        # From the position before the last message: its first event.
        replay = executor.replay(after_sequence=after - POSITION_SLOTS)
        try:
            sequence, item = await anext(replay)
        finally:
            await replay.aclose()
        assert (sequence // POSITION_SLOTS, item["event_id"]) == (
            after // POSITION_SLOTS,
            "acl-node_completed-3",
        )


@pytest.mark.asyncio
async def test_tls_needs_the_test_ca_and_the_right_password(
    nats_acl_server: ServerProcess, client_tls: Any, foreign_tls: Any
) -> None:
    """A client of another CA, or with a wrong password, cannot connect; the error does
    not show the password."""
    options = NatsOptions(connect_timeout=2.0)
    for url, tls in (
        (nats_url(nats_acl_server, "executor"), foreign_tls),
        (nats_url(nats_acl_server, "executor", "f" * 32), client_tls),
    ):
        with pytest.raises(UnavailableError) as failed:
            await NatsEventBus.connect(url, options, tls=tls)
        assert PASSWORDS["executor"] not in str(failed.value)
        assert "f" * 32 not in str(failed.value)
        assert "executor:***@" in str(failed.value)


@pytest.mark.asyncio
async def test_an_executor_cannot_pass_off_an_emergency_event(raw: Any, bus_as: Any) -> None:
    """An executor may publish on workflow subjects only; an emergency event it publishes
    there (the server lets it) reaches neither live subscribers nor replays: the bus
    drops, logs and counts it. The next, genuine event on the same connection arrives."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        metrics = Metrics()
        reader = await bus_as("operator", metrics)
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_event(item: dict[str, Any]) -> None:
            received.put_nowait(item)

        await reader.subscribe(WORKFLOW_EVENTS, on_event)
        before = await reader.last_sequence()
        forged = nats_event(EventType.EMERGENCY_RESUMED, 10).to_dict() | {"scope": "global"}
        genuine = nats_event(EventType.NODE_COMPLETED, 11)
        executor = await raw("executor")
        for subject, payload in (
            ("tradeflow.v1.events.bot-acl.strat-acl.wf-acl.emergency_resumed", forged),
            (subject_for(genuine), genuine.to_dict()),
        ):
            await executor.client.publish(subject, orjson.dumps(payload))
        item = await received.get()
        assert (item["type"], item["event_id"]) == (EventType.NODE_COMPLETED, genuine.event_id)
        assert received.empty()

        replay = reader.replay(after_sequence=before)
        try:
            sequence, item = await anext(replay)
        finally:
            await replay.aclose()
        # The stream holds both; the replay skips the forged one.
        assert (sequence, item["event_id"]) == (
            (before // POSITION_SLOTS + 2) * POSITION_SLOTS,
            genuine.event_id,
        )
        discarded = "tradeflow_events_discarded_total"
        assert metrics.registry.get_sample_value(discarded, {"reason": "wrong_subject"}) == 2
        assert executor.errors.empty()


@pytest.mark.asyncio
async def test_no_runtime_user_can_change_the_stream_or_delete_a_consumer(
    raw: Any, bus_as: Any, stream: ServerProcess, client_tls: Any
) -> None:
    """Executor, emergency and operator are refused updating the stream (a rollup or
    max_msgs=1 would erase the emergency events), deleting or purging it and deleting a
    consumer; the stream is unchanged. The executor's bus works on the provisioned stream
    and refuses, clearly, one configured otherwise, which it may not update."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        operator = await raw("operator")
        jsm = operator.client.jetstream()
        before = (await jsm.stream_info(DEFAULT_STREAM)).config
        changed = before.as_dict() | {"allow_rollup_hdrs": True, "max_msgs": 1}
        for user in ("executor", "emergency", "operator"):
            client = await raw(user)
            for verb in ("UPDATE", "DELETE", "PURGE"):
                body = orjson.dumps(changed) if verb == "UPDATE" else b""
                await client.client.publish(f"$JS.API.STREAM.{verb}.{DEFAULT_STREAM}", body)
                assert f"stream.{verb.lower()}" in await client.refusal()
            await client.client.publish(f"$JS.API.CONSUMER.DELETE.{DEFAULT_STREAM}.any", b"")
            assert "consumer.delete" in await client.refusal()
        assert (await jsm.stream_info(DEFAULT_STREAM)).config == before

        executor = await bus_as("executor")
        executor.publish(nats_event(EventType.NODE_COMPLETED, 20))
        assert await executor.flush()
        with pytest.raises(ConfigurationError, match=r"differs in \['max_age'\].*provisioner"):
            await NatsEventBus.connect(
                nats_url(stream, "executor"), NatsOptions(max_age=60.0), tls=client_tls
            )
        assert (await jsm.stream_info(DEFAULT_STREAM)).config == before


@pytest.mark.asyncio
async def test_each_user_reads_its_own_replies_only(raw: Any) -> None:
    """Replies come on ``_INBOX_<user>.>``: another user's, or the shared ``_INBOX.>``,
    cannot be subscribed to."""
    async with asyncio.timeout(DEADLINE_SECONDS):
        operator = await raw("operator")
        for subject in ("_INBOX_executor.>", "_INBOX_emergency.>", "_INBOX.>"):
            await operator.client.subscribe(subject)
            assert subject.lower() in await operator.refusal()
        # Its own inbox serves its requests.
        assert (await operator.client.jetstream().account_info()).streams >= 1


@pytest.mark.asyncio
async def test_only_the_provisioner_sets_the_stream_up(
    tmp_path: Path, server_files: tuple[str, str, str], client_tls: Any
) -> None:
    """On a NATS without the stream, the services' buses fail to connect, saying why;
    once the provisioner has set it up (twice: the second is a no-op), they connect."""
    server = start_nats_acl(tmp_path, server_files)
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            with pytest.raises(ConfigurationError, match=r"is missing.*provisioner"):
                await NatsEventBus.connect(nats_url(server, "emergency"), tls=client_tls)
            for _ in range(2):
                await provision_stream(nats_url(server, "provisioner"), tls=client_tls)
            for user in ("executor", "emergency", "operator"):
                bus = await NatsEventBus.connect(nats_url(server, user), tls=client_tls)
                await bus.close()
    finally:
        server.stop()
