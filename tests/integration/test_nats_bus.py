"""NatsEventBus against a real nats-server with JetStream: subjects, payloads, replay,
dedupe, slow subscribers, an outage of the server, and shutdown.

Every test uses its own workflow id, so tests share the session's stream and server
without seeing each other's events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
import types
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import nats
import pytest
import pytest_asyncio
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from kit import DEADLINE_SECONDS, eventually
from nats.aio.client import Client
from nats.aio.msg import Msg

from tradeflow.adapters.grpc.server import follow_health
from tradeflow.adapters.nats.bus import (
    DEFAULT_STREAM,
    POSITION_SLOTS,
    NatsEventBus,
    NatsOptions,
    _url_user,
    decode_token,
    encode_token,
    inbox_prefix,
    subject_filter,
    subject_for,
)
from tradeflow.domain.errors import InvalidRequest, UnavailableError
from tradeflow.domain.limits import ID_MAX_LENGTH
from tradeflow.domain.records import Event, EventType, rfc3339
from tradeflow.engine.fanout import WORKFLOW_EVENTS
from tradeflow.observability.metrics import Metrics

pytestmark = pytest.mark.integration

_workflow_ids = itertools.count()


class Server(Protocol):
    """What these tests use of the session's ``nats_server`` (tests/servers.py)."""

    @property
    def url(self) -> str: ...
    def kill(self) -> None: ...
    def start(self) -> object: ...


@pytest.fixture
def workflow_id() -> str:
    """A workflow id no other test uses."""
    return f"wf-nats-{next(_workflow_ids)}"


def make_event(
    workflow_id: str,
    n: int,
    type_: str = EventType.NODE_COMPLETED,
    *,
    bot_id: str | None = "bot-1",
    strategy_id: str | None = "momentum",
    execution_id: str = "exec-1",
) -> Event:
    """The ``n``-th event of a test's workflow (event id derived from both)."""
    return Event(
        type=type_,
        event_id=f"{workflow_id}-{n}",
        sequence=n,
        timestamp=1_767_225_600.0 + n,
        correlation_id="corr-1",
        execution_id=execution_id,
        workflow_id=workflow_id,
        bot_id=bot_id,
        strategy_id=strategy_id,
        node_id=f"node-{n}",
        data={"n": n, "note": "ünïcode"},
    )


@pytest_asyncio.fixture
async def bus(nats_server: Server) -> AsyncIterator[NatsEventBus]:
    """A bus connected to the session's nats-server, closed after the test."""
    connected = await NatsEventBus.connect(nats_server.url, metrics=Metrics())
    yield connected
    await connected.close()


@pytest_asyncio.fixture
async def raw(nats_server: Server) -> AsyncIterator[Client]:
    """A plain nats-py client, to observe the wire without the adapter."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def subscribed(client: Client) -> None:
    """Return once the server has processed ``client``'s subscriptions so far.

    nats-py's ``flush()`` writes its PING ahead of queued SUBs, so it proves nothing
    about a subscription just made; a request is queued behind them, so its reply does.
    """
    await client.jetstream().account_info()


async def take(stream: AsyncIterator[tuple[int, dict[str, Any]]], count: int) -> list[Any]:
    """The next ``count`` items of a replay (bounded wait)."""
    items = []
    async with asyncio.timeout(DEADLINE_SECONDS):
        async for item in stream:
            items.append(item)
            if len(items) == count:
                break
    return items


async def replayed(bus: NatsEventBus, count: int, **filters: Any) -> list[tuple[int, Any]]:
    """The first ``count`` replayed items matching ``filters``; closes the replay."""
    stream = bus.replay(**filters)
    try:
        return await take(stream, count)
    finally:
        await stream.aclose()


# -- subjects (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["bot.1", "a b\tc", "x*y>z", "_", "%", "%5F", "ünï", "plain-id_1:~@+="]
)
def test_odd_ids_encode_to_one_legal_token_and_back(value: str) -> None:
    """Any id becomes a single legal NATS token that decodes to the same id."""
    token = encode_token(value)
    assert not set(token) & set(".*> \t\r\n")
    assert token.isascii()
    assert decode_token(token) == value


def test_missing_ids_use_the_placeholder_and_filters_use_wildcards() -> None:
    """None and empty ids map to ``_``; filters put ``*`` where an id is not given."""
    event = make_event("wf", 1, bot_id=None, strategy_id="")
    assert subject_for(event) == "tradeflow.v1.events._._.wf.node_completed"
    assert decode_token("_") is None
    assert subject_filter(workflow_id="wf") == "tradeflow.v1.events.*.*.wf.*"
    assert subject_filter(bot_id="b.1", type="node_failed") == (
        "tradeflow.v1.events.b%2E1.*.*.node_failed"
    )


def test_overlong_ids_become_a_fixed_length_digest_token() -> None:
    """An id whose token would pass ID_MAX_LENGTH becomes '#' and 32 hex digits (one per
    id), so a subject stays far below the server's 4 KiB control line; a well-formed
    id of the maximum length is its own token."""
    longest = "a" * ID_MAX_LENGTH
    assert encode_token(longest) == longest
    huge = "w" * 5000
    token = encode_token(huge)
    assert re.fullmatch("#[0-9a-f]{32}", token)
    assert encode_token("ü" * 50) != encode_token("ü" * 51) and encode_token("ü" * 50)[0] == "#"
    assert encode_token(huge) == token != encode_token(huge + "x")
    event = make_event(huge, 1, bot_id="b" * 5000, strategy_id="\ud800" * 5000)
    assert len(subject_for(event)) < 540
    assert subject_filter(workflow_id=huge) == f"tradeflow.v1.events.*.*.{token}.*"


def test_emergency_events_have_their_own_subjects() -> None:
    """Halt, resume and risk breach go to tradeflow.v1.emergency.<kind>."""
    assert subject_for(make_event("wf", 1, EventType.EMERGENCY_HALTED)) == (
        "tradeflow.v1.emergency.halted"
    )
    assert subject_for(make_event("wf", 1, EventType.EMERGENCY_RESUMED)) == (
        "tradeflow.v1.emergency.resumed"
    )
    assert subject_filter(type=EventType.RISK_LIMIT_EXCEEDED) == (
        "tradeflow.v1.emergency.risk_limit_exceeded"
    )
    with pytest.raises(InvalidRequest) as caught:
        subject_filter(bot_id="b", type=EventType.EMERGENCY_HALTED)
    assert caught.value.field == "type"


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("tls://executor:s3cret@nats:4222", "_INBOX_executor"),
        ("nats://a:x@n1:4222,nats://b:y@n2:4222", "_INBOX_a"),
        ("nats://SECRET-TOKEN@nats:4222", "_INBOX"),
        ("nats://127.0.0.1:4222", "_INBOX"),
    ],
)
def test_replies_come_on_the_users_own_inbox(url: str, prefix: str) -> None:
    """A URL's user names its inbox subjects; a token (a secret) never does."""
    assert inbox_prefix(_url_user(url)) == prefix


# -- publishing --------------------------------------------------------------------


@pytest_asyncio.fixture
async def per_event_bus(nats_server: Server) -> AsyncIterator[NatsEventBus]:
    """A bus publishing each workflow event on its own contract subject."""
    connected = await NatsEventBus.connect(
        nats_server.url, NatsOptions(event_subjects=True), metrics=Metrics()
    )
    yield connected
    await connected.close()


@pytest.mark.asyncio
async def test_events_land_on_documented_subjects_with_contract_json(
    per_event_bus: NatsEventBus, raw: Client, workflow_id: str
) -> None:
    """With event_subjects, each event arrives once on its contract subject, as
    Event.to_dict() JSON, with Nats-Msg-Id."""
    bus = per_event_bus
    received: list[Msg] = []

    async def collect(msg: Msg) -> None:
        received.append(msg)

    await raw.subscribe("tradeflow.v1.>", cb=collect)
    await subscribed(raw)
    events = [
        make_event(workflow_id, 1),
        make_event(workflow_id, 2, bot_id=None, strategy_id=None),
        make_event(workflow_id, 3, EventType.EMERGENCY_HALTED),
    ]
    for event in events:
        bus.publish(event)

    def ours() -> list[Msg]:
        return [m for m in received if json.loads(m.data)["workflow_id"] == workflow_id]

    await eventually(lambda: len(ours()) == 3, "three events on the wire")
    by_id = {json.loads(m.data)["event_id"]: m for m in ours()}
    expected_subjects = [
        f"tradeflow.v1.events.bot-1.momentum.{workflow_id}.node_completed",
        f"tradeflow.v1.events._._.{workflow_id}.node_completed",
        "tradeflow.v1.emergency.halted",
    ]
    for event, subject in zip(events, expected_subjects, strict=True):
        msg = by_id[event.event_id]
        assert msg.subject == subject
        assert json.loads(msg.data.decode("utf-8")) == event.to_dict()
        assert msg.headers == {"Nats-Msg-Id": event.event_id}
    assert json.loads(by_id[events[0].event_id].data)["timestamp"] == rfc3339(events[0].timestamp)


@pytest.mark.asyncio
async def test_workflow_events_travel_in_one_batch_per_send(
    bus: NatsEventBus, raw: Client, workflow_id: str
) -> None:
    """By default the events one execution emits between sends go in one message on the
    batch subject of their ids ({"schema_version": 1, "events": [...]}, each the contract
    JSON); emergency events still go alone on their own subject."""
    received: list[Msg] = []

    async def collect(msg: Msg) -> None:
        received.append(msg)

    await raw.subscribe("tradeflow.v1.>", cb=collect)
    await subscribed(raw)
    events = [make_event(workflow_id, n) for n in range(1, 6)]
    halted = make_event(workflow_id, 6, EventType.EMERGENCY_HALTED)
    for event in (*events, halted):  # queued in one turn: one send
        bus.publish(event)
    batch_subject = f"tradeflow.v1.batches.bot-1.momentum.{workflow_id}.batch"

    def ours() -> list[Msg]:
        return [m for m in received if m.subject in (batch_subject, subject_for(halted))]

    await eventually(lambda: len(ours()) == 2, "one batch and one emergency message")
    batch, alone = sorted(ours(), key=lambda m: m.subject != batch_subject)
    assert json.loads(batch.data) == {
        "schema_version": 1,
        "events": [event.to_dict() for event in events],
    }
    assert batch.headers == {"Nats-Msg-Id": f"{events[0].event_id}+5"}
    assert json.loads(alone.data) == halted.to_dict()


@pytest.mark.asyncio
async def test_replay_resumes_inside_a_batch_and_subscribers_get_each_event(
    bus: NatsEventBus, workflow_id: str
) -> None:
    """Replay yields a batch's events one by one with growing positions; resuming after
    the second event of a batch yields the third next (none lost, none repeated); a live
    subscriber gets every event of a batch."""
    live: list[dict[str, Any]] = []

    async def handler(event: dict[str, Any]) -> None:
        live.append(event)

    await bus.subscribe(WORKFLOW_EVENTS, handler)
    for n in range(1, 5):
        bus.publish(make_event(workflow_id, n))
    stream = bus.replay(workflow_id=workflow_id)
    try:
        first = await take(stream, 4)
    finally:
        await stream.aclose()
    assert [item["sequence"] for _, item in first] == [1, 2, 3, 4]
    positions = [position for position, _ in first]
    assert positions == sorted(set(positions))
    # One message (one stream sequence), four positions in it.
    assert len({position // POSITION_SLOTS for position in positions}) == 1
    resumed = bus.replay(workflow_id=workflow_id, after_sequence=positions[1])
    try:
        rest = await take(resumed, 2)
    finally:
        await resumed.aclose()
    assert [(p, item["sequence"]) for p, item in rest] == [
        (positions[2], 3),
        (positions[3], 4),
    ]
    await eventually(
        lambda: [e["sequence"] for e in live if e["workflow_id"] == workflow_id] == [1, 2, 3, 4],
        "each event of the batch delivered live",
    )


@pytest.mark.asyncio
async def test_a_forged_batch_is_dropped(
    nats_server: Server, raw: Client, workflow_id: str
) -> None:
    """A batch holding an emergency event, an event of other ids than its subject's, or
    more events than a message has positions is dropped whole, live and in replays, and
    counted: a publisher allowed on batch subjects can neither speak for the emergency
    service or another workflow, nor make a resuming consumer skip the next message."""
    metrics = Metrics()
    bus = await NatsEventBus.connect(nats_server.url, metrics=metrics)
    try:
        live: list[dict[str, Any]] = []

        async def handler(event: dict[str, Any]) -> None:
            live.append(event)

        await bus.subscribe(WORKFLOW_EVENTS, handler)
        before = await bus.last_sequence()
        subject = f"tradeflow.v1.batches.bot-1.momentum.{workflow_id}.batch"
        oversized = [make_event(workflow_id, n).to_dict() for n in range(100, 100 + POSITION_SLOTS)]
        for items in (
            [make_event(workflow_id, 1, EventType.EMERGENCY_HALTED).to_dict()],
            [make_event("another", 1).to_dict()],
            oversized,
        ):
            payload = json.dumps({"schema_version": 1, "events": items}).encode()
            # Acknowledged by the stream: stored before the genuine event (another
            # connection), so the replay meets them first.
            await raw.jetstream().publish(subject, payload)
        genuine = make_event(workflow_id, 2)
        bus.publish(genuine)
        await eventually(lambda: any(e["sequence"] == 2 for e in live), "the genuine event")
        assert [e["event_id"] for e in live if e["workflow_id"] in (workflow_id, "another")] == [
            genuine.event_id
        ]
        replayed_items = await replayed(bus, 1, after_sequence=before, workflow_id=workflow_id)
        assert [item["event_id"] for _, item in replayed_items] == [genuine.event_id]
        assert discarded(metrics) == {"wrong_subject": 4, "undecodable": 2}
    finally:
        await bus.close()


@pytest.mark.asyncio
async def test_replay_follows_live_events_and_stops_cleanly(
    bus: NatsEventBus, workflow_id: str
) -> None:
    """After the stored events, replay yields new ones as they are published; a
    consumer task blocked on it can be cancelled."""
    bus.publish(make_event(workflow_id, 1))
    stream = bus.replay(workflow_id=workflow_id)
    assert isinstance(stream, types.AsyncGeneratorType)
    first = await take(stream, 1)
    assert first[0][1]["event_id"] == f"{workflow_id}-1"

    async def next_item() -> tuple[int, dict[str, Any]]:
        return await anext(stream)

    live = asyncio.create_task(next_item())
    bus.publish(make_event(workflow_id, 2))
    seq, item = await asyncio.wait_for(live, DEADLINE_SECONDS)
    assert item["event_id"] == f"{workflow_id}-2"
    assert seq > first[0][0]

    waiting = asyncio.create_task(next_item())
    await eventually(lambda: stream.ag_running, "the consumer is blocked inside the replay")
    waiting.cancel()
    await asyncio.wait((waiting,))
    assert waiting.cancelled()
    await stream.aclose()


@pytest.mark.asyncio
async def test_stream_drops_a_republished_event_id(
    per_event_bus: NatsEventBus, bus: NatsEventBus, workflow_id: str
) -> None:
    """Publishing the same event_id twice on its own subject stores it once, and the
    same batch twice stores it once (JetStream dedupe by message id)."""
    for event in (make_event(workflow_id, 1), make_event(workflow_id, 2)):
        bus.publish(event)
    assert await bus.flush(DEADLINE_SECONDS)
    for event in (make_event(workflow_id, 1), make_event(workflow_id, 2)):
        bus.publish(event)
    assert await bus.flush(DEADLINE_SECONDS)
    items = await replayed(bus, 2, workflow_id=workflow_id)
    assert [item["event_id"] for _, item in items] == [f"{workflow_id}-1", f"{workflow_id}-2"]
    bus.publish(make_event(workflow_id, 3))
    more = await replayed(bus, 1, workflow_id=workflow_id, after_sequence=items[-1][0])
    assert [item["event_id"] for _, item in more] == [f"{workflow_id}-3"]

    workflow_id += "-alone"
    bus = per_event_bus
    bus.publish(make_event(workflow_id, 1))
    assert await bus.flush(DEADLINE_SECONDS)
    bus.publish(make_event(workflow_id, 1))
    bus.publish(make_event(workflow_id, 2))
    assert await bus.flush(DEADLINE_SECONDS)

    items = await replayed(bus, 2, workflow_id=workflow_id)
    assert [item["event_id"] for _, item in items] == [f"{workflow_id}-1", f"{workflow_id}-2"]


@pytest.mark.asyncio
async def test_odd_ids_round_trip_through_nats(
    per_event_bus: NatsEventBus, raw: Client, workflow_id: str
) -> None:
    """An id with dots, spaces and wildcards is published on its encoded subject, and
    a filter built from the same id finds it."""
    bus = per_event_bus
    odd = "desk.alpha *>1"
    sub = await raw.subscribe(subject_filter(bot_id=odd, workflow_id=workflow_id))
    await subscribed(raw)
    bus.publish(make_event(workflow_id, 1, bot_id=odd))

    msg = await sub.next_msg(timeout=DEADLINE_SECONDS)
    assert msg.subject.split(".")[3] == encode_token(odd)
    assert json.loads(msg.data)["bot_id"] == odd
    items = await replayed(bus, 1, bot_id=odd, workflow_id=workflow_id)
    assert items[0][1]["bot_id"] == odd


def publish_failures(metrics: Metrics) -> dict[str, float]:
    """``tradeflow_events_publish_failures_total`` by reason (the reasons seen so far)."""
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "tradeflow_events_publish_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@pytest.mark.asyncio
async def test_a_5kb_id_keeps_the_connection_and_later_events_arrive(
    nats_server: Server, workflow_id: str
) -> None:
    """An event with 5 KB ids (it closed the connection for good) reaches the stream
    under digest tokens, the connection stays up, the next event arrives, and replay by
    the long id and by a well-formed id both find theirs; nothing failed."""
    metrics = Metrics()
    bus = await NatsEventBus.connect(nats_server.url, metrics=metrics)
    try:
        huge = workflow_id + "-" + "w" * 5000
        bus.publish(make_event(huge, 1, bot_id="b" * 5000, execution_id="e" * 5000))
        bus.publish(make_event(workflow_id, 2))
        assert await bus.flush(DEADLINE_SECONDS)
        assert bus.healthy() and bus._nc.stats["reconnects"] == 0
        ((_, long_one),) = await replayed(bus, 1, workflow_id=huge, bot_id="b" * 5000)
        assert long_one["workflow_id"] == huge and long_one["sequence"] == 1
        ((_, normal),) = await replayed(bus, 1, workflow_id=workflow_id)
        assert normal["sequence"] == 2
        assert publish_failures(metrics) == {}
    finally:
        await bus.close()


@pytest.mark.asyncio
async def test_an_event_that_cannot_be_sent_is_counted_logged_and_dropped(
    bus: NatsEventBus, workflow_id: str
) -> None:
    """An event over NATS max_payload is dropped, counted by reason and logged; the
    connection stays healthy and the next event reaches the stream."""
    metrics = bus._metrics
    assert metrics is not None
    too_big = make_event(workflow_id, 1)
    too_big.data["blob"] = "x" * bus._nc.max_payload
    with structlog.testing.capture_logs() as logs:
        bus.publish(too_big)
        bus.publish(make_event(workflow_id, 2))
        assert await bus.flush(DEADLINE_SECONDS)
    assert publish_failures(metrics) == {"too_large": 1.0}
    assert bus.dropped == 1
    (rejected,) = [log for log in logs if log["event"] == "events.publish_rejected"]
    assert rejected["reason"] == "too_large" and rejected["event_id"] == repr(too_big.event_id)
    assert bus.healthy()
    ((_, item),) = await replayed(bus, 1, workflow_id=workflow_id)
    assert item["sequence"] == 2


@pytest.mark.asyncio
async def test_grpc_health_follows_the_bus_through_an_outage(
    nats_server: Server, workflow_id: str
) -> None:
    """The health hook the executor service uses turns NOT_SERVING while nats-server is
    down and SERVING again once the bus is back (checked over gRPC)."""
    bus = await NatsEventBus.connect(
        nats_server.url, NatsOptions(reconnect_backoff=(0.02, 0.2)), metrics=Metrics()
    )
    health = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    follower = asyncio.create_task(follow_health(health, [""], bus.healthy, poll=0.01))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def status_is(expected: int) -> bool:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return bool(reply.status == expected)

    try:
        assert await status_is(health_pb2.HealthCheckResponse.SERVING)
        nats_server.kill()
        try:
            await eventually(
                lambda: status_is(health_pb2.HealthCheckResponse.NOT_SERVING),
                "health reported NOT_SERVING",
            )
        finally:
            nats_server.start()
        await eventually(
            lambda: status_is(health_pb2.HealthCheckResponse.SERVING), "health recovered"
        )
        bus.publish(make_event(workflow_id, 1))
        assert await bus.flush(DEADLINE_SECONDS)
    finally:
        follower.cancel()
        await channel.close()
        await server.stop(None)
        await bus.close()


# -- subscribers -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_or_failing_subscriber_does_not_block_others(
    nats_server: Server, workflow_id: str
) -> None:
    """A stuck handler and a raising handler leave a third one receiving everything."""
    metrics = Metrics()
    bus = await NatsEventBus.connect(nats_server.url, metrics=metrics)
    release = asyncio.Event()
    fast: list[dict[str, Any]] = []
    stuck_got = asyncio.Event()

    async def stuck(item: dict[str, Any]) -> None:
        stuck_got.set()
        await release.wait()

    async def failing(item: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    async def quick(item: dict[str, Any]) -> None:
        if item["workflow_id"] == workflow_id:
            fast.append(item)

    try:
        await bus.subscribe("workflow_events", stuck)
        await bus.subscribe("workflow_events", failing)
        await bus.subscribe("workflow_events", quick)
        for n in range(5):
            bus.publish(make_event(workflow_id, n))
        await eventually(lambda: len(fast) == 5, "the quick subscriber got all five")
        assert stuck_got.is_set()
        assert not release.is_set()
        assert [item["sequence"] for item in fast] == [0, 1, 2, 3, 4]
        await eventually(
            lambda: metrics.registry.get_sample_value("tradeflow_subscriber_errors_total") == 5,
            "the failures were counted",
        )
    finally:
        release.set()
        await bus.close()


@pytest.mark.asyncio
async def test_subscribe_validates_topic_and_unsubscribe_stops_delivery(
    bus: NatsEventBus, workflow_id: str
) -> None:
    """An unknown topic is refused naming the field; an unsubscribed handler gets nothing more."""

    async def ignore(item: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidRequest) as caught:
        await bus.subscribe("orders", ignore)
    assert caught.value.field == "topic"

    gone: list[str] = []
    kept: list[str] = []

    async def leaving(item: dict[str, Any]) -> None:
        gone.append(item["event_id"])

    async def staying(item: dict[str, Any]) -> None:
        kept.append(item["event_id"])

    leaver = await bus.subscribe("workflow_events", leaving)
    await bus.subscribe("workflow_events", staying)
    await bus.unsubscribe(leaver)
    bus.publish(make_event(workflow_id, 1))
    await eventually(lambda: f"{workflow_id}-1" in kept, "the remaining subscriber got it")
    assert f"{workflow_id}-1" not in gone


# -- outage and shutdown -----------------------------------------------------------


@pytest.mark.asyncio
async def test_events_published_during_an_outage_arrive_after_restart(
    nats_server: Server, workflow_id: str
) -> None:
    """With nats-server killed, publish keeps buffering (bounded, oldest dropped and
    counted); once it is back, the buffered events reach the stream."""
    metrics = Metrics()
    bus = await NatsEventBus.connect(
        nats_server.url,
        NatsOptions(buffer_size=5, reconnect_backoff=(0.02, 0.2)),
        metrics=metrics,
    )
    try:
        nats_server.kill()
        await eventually(lambda: not bus.healthy(), "the bus noticed the outage")
        for n in range(8):
            bus.publish(make_event(workflow_id, n))
        assert bus.dropped == 3
        assert metrics.registry.get_sample_value("tradeflow_events_dropped_total") == 3
        assert not await bus.flush(0.2)
    finally:
        nats_server.start()
    try:
        assert await bus.flush(DEADLINE_SECONDS)
        items = await replayed(bus, 5, workflow_id=workflow_id)
        assert [item["sequence"] for _, item in items] == [3, 4, 5, 6, 7]
    finally:
        await bus.close()


@pytest.mark.asyncio
async def test_close_sends_what_is_queued(nats_server: Server, workflow_id: str) -> None:
    """close() flushes the queue before disconnecting; publish after close is a
    counted no-op."""
    bus = await NatsEventBus.connect(nats_server.url)
    for n in range(50):
        bus.publish(make_event(workflow_id, n))
    await bus.close()
    bus.publish(make_event(workflow_id, 99))
    assert bus.dropped == 1
    with pytest.raises(UnavailableError):
        await bus.subscribe("workflow_events", _noop)

    reader = await NatsEventBus.connect(nats_server.url)
    try:
        items = await replayed(reader, 50, workflow_id=workflow_id)
        assert [item["sequence"] for _, item in items] == list(range(50))
    finally:
        await reader.close()


async def _noop(item: dict[str, Any]) -> None:
    return None


@pytest.mark.asyncio
async def test_connect_reuses_the_stream_and_fails_clearly_without_server(
    nats_server: Server, raw: Client
) -> None:
    """A second bus on an existing stream (other limits) updates it; an unreachable
    server raises UnavailableError naming the URL."""
    bus = await NatsEventBus.connect(nats_server.url, NatsOptions(max_age=3600.0))
    try:
        info = await raw.jetstream().stream_info(DEFAULT_STREAM)
        assert info.config.max_age == 3600.0
        assert info.config.subjects == ["tradeflow.v1.>"]
    finally:
        await bus.close()
    again = await NatsEventBus.connect(nats_server.url)
    await again.close()

    with pytest.raises(UnavailableError) as caught:
        await NatsEventBus.connect("nats://127.0.0.1:1", NatsOptions(connect_timeout=0.5))
    assert "nats://127.0.0.1:1" in str(caught.value)


@pytest.mark.asyncio
async def test_events_not_on_their_own_subject_reach_no_subscriber_nor_replay(
    nats_server: Server, raw: Client, workflow_id: str
) -> None:
    """An emergency event on a workflow subject (which executors may publish on), a
    workflow event on another workflow's subject and a payload that is no JSON object
    are dropped and counted, live and replayed; the genuine event after them arrives."""
    metrics = Metrics()
    bus = await NatsEventBus.connect(nats_server.url, metrics=metrics)
    try:
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_event(item: dict[str, Any]) -> None:
            received.put_nowait(item)

        await bus.subscribe(WORKFLOW_EVENTS, on_event)
        halted = make_event(workflow_id, 1, EventType.EMERGENCY_HALTED)
        genuine = make_event(workflow_id, 3)
        own_subject = subject_for(genuine)
        for subject, payload in (
            (own_subject.replace("node_completed", "emergency_halted"), halted.to_dict()),
            (subject_for(make_event(f"{workflow_id}-other", 2)), genuine.to_dict()),
            (own_subject, [1]),
            (own_subject, genuine.to_dict()),
        ):
            await raw.publish(subject, json.dumps(payload).encode())
        async with asyncio.timeout(DEADLINE_SECONDS):
            assert (await received.get())["event_id"] == genuine.event_id
        assert received.empty()
        assert discarded(metrics) == {"wrong_subject": 2, "undecodable": 1}

        items = await replayed(bus, 1, workflow_id=workflow_id)
        assert [item["event_id"] for _, item in items] == [genuine.event_id]
        # The replay read (and dropped) the two of them on this workflow's subjects.
        assert discarded(metrics) == {"wrong_subject": 3, "undecodable": 2}
    finally:
        await bus.close()


def discarded(metrics: Metrics) -> dict[str, float]:
    """``tradeflow_events_discarded_total`` by reason (the reasons seen so far)."""
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "tradeflow_events_discarded"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


@pytest.mark.asyncio
async def test_connect_sets_back_a_stream_changed_to_lose_events(
    nats_server: Server, raw: Client
) -> None:
    """Without users (the local stack) the bus may update the stream: one changed to
    take rollups and to keep few messages per subject is set back when a bus connects;
    one as configured is left as it is."""
    jsm = raw.jetstream()
    configured = (await jsm.stream_info(DEFAULT_STREAM)).config
    changed = dataclasses.replace(configured, allow_rollup_hdrs=True, max_msgs_per_subject=1000)
    await jsm.update_stream(changed)
    for _ in range(2):
        bus = await NatsEventBus.connect(nats_server.url)
        await bus.close()
        config = (await jsm.stream_info(DEFAULT_STREAM)).config
        assert (config.allow_rollup_hdrs, config.max_msgs_per_subject) == (False, -1)
        assert config == configured
