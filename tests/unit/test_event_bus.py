"""The in-process event bus: ordering, isolation of slow and failing subscribers, overflow,
the replay history's bound (what every bus does is in the contract suite)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest
import structlog
from kit import DEADLINE_SECONDS, eventually

from tradeflow.adapters.memory.events import WORKFLOW_EVENTS, Event, InProcessEventBus
from tradeflow.domain.errors import ConfigurationError, InvalidRequest, UnavailableError
from tradeflow.observability.metrics import Metrics


def event(sequence: int, *, timestamp: float = 1_700_000_000.0) -> Event:
    return Event(
        type="node_completed",
        event_id=f"ev-{sequence}",
        sequence=sequence,
        timestamp=timestamp,
        execution_id="e1",
        data={"n": sequence},
    )


class Recorder:
    """A subscriber that records sequences and signals once it has seen ``expect`` events."""

    def __init__(self, expect: int = 0) -> None:
        self.seen: list[int] = []
        self.items: list[dict[str, Any]] = []
        self.expect = expect
        self.done = asyncio.Event()

    async def __call__(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.seen.append(item["sequence"])
        if len(self.seen) >= self.expect:
            self.done.set()


class Gated:
    """A subscriber that blocks on ``gate`` after signalling ``entered`` for each event."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def __call__(self, item: dict[str, Any]) -> None:
        self.seen.append(item["sequence"])
        self.entered.set()
        await self.gate.wait()


@pytest.mark.asyncio
async def test_delivers_every_event_in_order_as_contract_dicts() -> None:
    """Each subscriber receives every event, in publish order, as the same contract dict."""
    bus = InProcessEventBus()
    first, second = Recorder(), Recorder()
    await bus.subscribe(WORKFLOW_EVENTS, first)
    await bus.subscribe(WORKFLOW_EVENTS, second)

    for sequence in range(1, 101):
        bus.publish(event(sequence))
    assert await bus.drain(DEADLINE_SECONDS)

    assert first.seen == list(range(1, 101))
    assert second.seen == list(range(1, 101))
    assert first.items[0] is second.items[0]
    assert first.items[0] == event(1).to_dict()
    await bus.close()


@pytest.mark.asyncio
async def test_slow_subscriber_stalls_neither_publisher_nor_others() -> None:
    """While one handler is blocked, publish returns and the other subscriber gets everything."""
    bus = InProcessEventBus()
    slow, fast = Gated(), Recorder(expect=50)
    await bus.subscribe(WORKFLOW_EVENTS, slow)
    await bus.subscribe(WORKFLOW_EVENTS, fast)

    for sequence in range(1, 51):
        bus.publish(event(sequence))
    await asyncio.wait_for(fast.done.wait(), DEADLINE_SECONDS)
    await asyncio.wait_for(slow.entered.wait(), DEADLINE_SECONDS)

    assert fast.seen == list(range(1, 51))
    assert slow.seen == [1]
    slow.gate.set()
    assert await bus.drain(DEADLINE_SECONDS)
    assert slow.seen == list(range(1, 51))
    await bus.close()


@pytest.mark.asyncio
async def test_failing_subscriber_is_logged_counted_and_keeps_receiving() -> None:
    """A handler that raises is logged and counted, and still gets the following events."""
    metrics = Metrics()
    bus = InProcessEventBus(metrics=metrics)
    seen: list[int] = []

    async def flaky(item: dict[str, Any]) -> None:
        seen.append(item["sequence"])
        if item["sequence"] == 2:
            raise RuntimeError("boom")

    await bus.subscribe(WORKFLOW_EVENTS, flaky)
    with structlog.testing.capture_logs() as logs:
        for sequence in (1, 2, 3):
            bus.publish(event(sequence))
        assert await bus.drain(DEADLINE_SECONDS)

    assert seen == [1, 2, 3]
    failures = [entry for entry in logs if entry["event"] == "events.subscriber_failed"]
    assert len(failures) == 1
    assert "flaky" in failures[0]["handler"]
    assert failures[0]["error"] == "boom"
    assert metrics.registry.get_sample_value("tradeflow_subscriber_errors_total") == 1
    await bus.close()


@pytest.mark.asyncio
async def test_full_buffer_drops_oldest_and_counts() -> None:
    """With the buffer full, the oldest waiting event is dropped and counted (handle and metric)."""
    metrics = Metrics()
    bus = InProcessEventBus(buffer_size=2, metrics=metrics)
    slow = Gated()
    subscription = await bus.subscribe(WORKFLOW_EVENTS, slow)
    bus.publish(event(1))
    await asyncio.wait_for(slow.entered.wait(), DEADLINE_SECONDS)

    for sequence in (2, 3, 4):
        bus.publish(event(sequence))
    slow.gate.set()
    assert await bus.drain(DEADLINE_SECONDS)

    assert slow.seen == [1, 3, 4]
    assert subscription.dropped == 1
    assert metrics.registry.get_sample_value("tradeflow_events_dropped_total") == 1
    await bus.close()


@pytest.mark.asyncio
async def test_unknown_topic_is_invalid_request() -> None:
    """Only 'workflow_events' exists; another topic names the topic field."""
    bus = InProcessEventBus()

    with pytest.raises(InvalidRequest) as caught:
        await bus.subscribe("orders", Recorder())

    assert caught.value.field == "topic"
    assert caught.value.found == "orders"


@pytest.mark.asyncio
async def test_unsubscribe_stops_delivery() -> None:
    """After unsubscribe the handler gets nothing more; other subscribers still do."""
    bus = InProcessEventBus()
    gone, stays = Recorder(expect=1), Recorder(expect=2)
    subscription = await bus.subscribe(WORKFLOW_EVENTS, gone)
    await bus.subscribe(WORKFLOW_EVENTS, stays)
    bus.publish(event(1))
    await asyncio.wait_for(gone.done.wait(), DEADLINE_SECONDS)

    await bus.unsubscribe(subscription)
    bus.publish(event(2))
    await asyncio.wait_for(stays.done.wait(), DEADLINE_SECONDS)

    assert gone.seen == [1]
    assert stays.seen == [1, 2]
    await bus.close()


@pytest.mark.asyncio
async def test_handler_can_unsubscribe_itself() -> None:
    """A handler that unsubscribes from inside its own call ends its dispatcher cleanly."""
    bus = InProcessEventBus()
    seen: list[int] = []
    handle: list[Any] = []

    async def once(item: dict[str, Any]) -> None:
        seen.append(item["sequence"])
        await bus.unsubscribe(handle[0])

    handle.append(await bus.subscribe(WORKFLOW_EVENTS, once))
    bus.publish(event(1))
    bus.publish(event(2))
    assert await bus.drain(DEADLINE_SECONDS)

    assert seen == [1]
    await bus.close()


@pytest.mark.asyncio
async def test_publish_never_raises() -> None:
    """Publishing with no subscriber, or an event that cannot be rendered, returns quietly."""
    bus = InProcessEventBus()
    bus.publish(event(1))
    recorder = Recorder(expect=1)
    await bus.subscribe(WORKFLOW_EVENTS, recorder)

    with structlog.testing.capture_logs() as logs:
        bus.publish(event(2, timestamp=float("inf")))
    bus.publish(event(3))
    await asyncio.wait_for(recorder.done.wait(), DEADLINE_SECONDS)

    assert recorder.seen == [3]
    assert [entry["event"] for entry in logs] == ["events.publish_failed"]
    await bus.close()


class Counted(Event):
    """An event that counts how often it is rendered as a contract dict."""

    rendered = 0

    def to_dict(self) -> dict[str, Any]:
        Counted.rendered += 1
        return super().to_dict()


@pytest.mark.asyncio
async def test_event_dicts_are_built_only_for_live_subscribers() -> None:
    """With no subscriber a published event is numbered but never rendered; with one, once."""
    bus = InProcessEventBus()
    Counted.rendered = 0
    bus.publish(Counted(*event(1)))
    assert Counted.rendered == 0 and await bus.last_sequence() == 1
    recorder = Recorder(expect=1)
    await bus.subscribe(WORKFLOW_EVENTS, recorder)
    bus.publish(Counted(*event(2)))
    await asyncio.wait_for(recorder.done.wait(), DEADLINE_SECONDS)
    assert Counted.rendered == 1 and recorder.seen == [2]
    await bus.close()


@pytest.mark.asyncio
async def test_drain_is_bounded_by_its_timeout() -> None:
    """drain reports False instead of waiting forever on a blocked subscriber."""
    bus = InProcessEventBus()
    blocked = Gated()
    await bus.subscribe(WORKFLOW_EVENTS, blocked)
    bus.publish(event(1))

    assert await bus.drain(0.01) is False
    blocked.gate.set()
    assert await bus.drain(DEADLINE_SECONDS) is True
    await bus.close()


@pytest.mark.asyncio
async def test_close_delivers_buffered_events_then_refuses_subscribers() -> None:
    """close delivers what is queued, then the bus accepts no new subscriber."""
    bus = InProcessEventBus()
    recorder = Recorder()
    await bus.subscribe(WORKFLOW_EVENTS, recorder)
    for sequence in (1, 2, 3):
        bus.publish(event(sequence))

    await bus.close()

    assert recorder.seen == [1, 2, 3]
    with pytest.raises(UnavailableError):
        await bus.subscribe(WORKFLOW_EVENTS, Recorder())


@pytest.mark.parametrize(
    ("setting", "size"),
    [
        ("buffer_size", 0),
        *((setting, size) for setting in ("buffer_size", "history") for size in (-1, True, 2.5)),
    ],
)
def test_sizes_must_be_integers_in_range(setting: str, size: Any) -> None:
    """A bad buffer_size (>= 1) or history (>= 0) is a configuration error naming the setting."""
    with pytest.raises(ConfigurationError, match=setting):
        InProcessEventBus(**{setting: size})


@pytest.mark.asyncio
async def test_with_no_history_a_replay_follows_live_events_then_keeps_none() -> None:
    """By default nothing is kept for replay, but a running replay sees every event published
    while it runs; once it ends, nothing is kept again."""
    bus = InProcessEventBus()
    bus.publish(event(1))
    async with aclosing(bus.replay()) as stream:
        first = asyncio.create_task(anext(stream))
        await eventually(lambda: stream.ag_running, "the replay waits for an event")
        for sequence in (2, 3):
            bus.publish(event(sequence))
        live = [await asyncio.wait_for(first, DEADLINE_SECONDS), await anext(stream)]
    bus.publish(event(4))

    assert live == [(2, event(2).to_dict()), (3, event(3).to_dict())]
    async with aclosing(bus.replay(after_sequence=3)) as stream:
        pending = asyncio.create_task(anext(stream))
        await eventually(lambda: stream.ag_running, "the second replay waits")
        bus.publish(event(5))
        assert await asyncio.wait_for(pending, DEADLINE_SECONDS) == (5, event(5).to_dict())
    await bus.close()


@pytest.mark.asyncio
async def test_replay_keeps_only_the_newest_history_events() -> None:
    """Past ``history`` events the oldest are gone from replay, and the sequences show the gap."""
    bus = InProcessEventBus(history=3)
    for sequence in range(1, 6):
        bus.publish(event(sequence))

    async with aclosing(bus.replay()) as stream:
        kept = [await anext(stream) for _ in range(3)]

    assert [sequence for sequence, _ in kept] == [3, 4, 5]
    assert [item for _, item in kept] == [event(n).to_dict() for n in (3, 4, 5)]
    assert await bus.last_sequence() == 5
    await bus.close()


@pytest.mark.asyncio
async def test_close_ends_a_waiting_replay() -> None:
    """A replay waiting for the next event ends when the bus closes."""
    bus = InProcessEventBus()
    stream = bus.replay()
    waiting = asyncio.create_task(anext(stream))
    await eventually(lambda: stream.ag_running, "the replay waits for an event")

    await bus.close()

    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, DEADLINE_SECONDS)
