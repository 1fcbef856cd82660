"""Prometheus metrics, kept in-process on one registry per infrastructure.

Names start with ``tradeflow_``; labels are bounded (node type, status, scope,
limit type, pre-trade check, breaker name: all from finite, operator-controlled sets).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BREAKER_STATE_VALUES", "LATENCY_BUCKETS", "LoopCounter", "LoopHistogram", "Metrics"]

LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
"""Value of ``tradeflow_circuit_breaker_state`` for each breaker state."""


class LoopHistogram(Collector):
    """A histogram (with one label, or none) for values observed on the event loop thread
    only.

    ``prometheus_client.Histogram`` takes a lock and walks its buckets on every
    observation (~1.5 us); the engine observes once per node, so this keeps plain
    counters (~0.3 us) and builds the metric family when scraped.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str | None,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = [] if label is None else [label]
        self._bounds = buckets
        self._series: dict[str, Series] = {}
        self._unlabelled = Series(buckets) if label is None else None
        registry.register(self)

    def labels(self, value: str) -> Series:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = Series(self._bounds)
        return series

    def observe(self, value: float) -> None:
        """Observe ``value`` on the histogram without a label."""
        assert self._unlabelled is not None, "a labelled histogram: use labels(...).observe"
        self._unlabelled.observe(value)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        series = (
            sorted((([value], s) for value, s in self._series.items()))
            if self._unlabelled is None
            else [([], self._unlabelled)]
        )
        for values, one in series:
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), one.counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            family.add_metric(values, buckets, one.total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labels)


class LoopCounter(Collector):
    """A counter with one label, incremented on the event loop thread only.

    ``prometheus_client.Counter`` takes a lock to find the labelled child and another to
    add (~3 us); the engine counts once per execution, so this keeps plain integers
    (~0.2 us) and builds the metric family when scraped.
    """

    def __init__(
        self, name: str, documentation: str, label: str, registry: CollectorRegistry
    ) -> None:
        # prometheus_client's convention: the family is named without "_total".
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._label = label
        self._counts: dict[str, int] = {}
        registry.register(self)

    def inc(self, value: str) -> None:
        """Add one to the series labelled ``value``."""
        counts = self._counts
        counts[value] = counts.get(value, 0) + 1

    def value(self, value: str) -> int:
        """The count of the series labelled ``value``."""
        return self._counts.get(value, 0)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in sorted(self._counts.items()):
            family.add_metric([value], float(count))
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, labels=[self._label])


class Series:
    """One label value of a :class:`LoopHistogram`."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """Every tradeflow metric, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Counted and observed once per execution, on the event loop: no locks.
        self.executions = LoopCounter(
            "tradeflow_executions_total", "Finished executions by final status.", "status", r
        )
        self.execution_seconds = LoopHistogram(
            "tradeflow_execution_duration_seconds",
            "Wall time of one execution.",
            None,
            LATENCY_BUCKETS,
            r,
        )
        self.node_seconds = LoopHistogram(
            "tradeflow_node_duration_seconds",
            "Wall time of one node, by node type.",
            "node_type",
            LATENCY_BUCKETS,
            r,
        )
        self.node_failures = Counter(
            "tradeflow_node_failures_total",
            "Nodes that failed after all attempts.",
            ["node_type"],
            registry=r,
        )
        self.retries = Counter(
            "tradeflow_retries_total",
            "Retry attempts scheduled, by node type.",
            ["node_type"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "tradeflow_circuit_breaker_state",
            "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "tradeflow_circuit_breaker_transitions_total",
            "Breaker state changes.",
            ["breaker", "to_state"],
            registry=r,
        )
        self.halts = Counter(
            "tradeflow_halts_total", "Emergency halts engaged, by scope.", ["scope"], registry=r
        )
        self.actions_refused = Counter(
            "tradeflow_actions_refused_total",
            "Action nodes refused because trading is halted.",
            registry=r,
        )
        self.risk_breaches = Counter(
            "tradeflow_risk_breaches_total",
            "Risk limit breaches, by limit type.",
            ["limit_type"],
            registry=r,
        )
        self.orders_denied = Counter(
            "tradeflow_orders_denied_total",
            "Orders a pre-trade check denied before they reached the venue, by check.",
            ["check"],
            registry=r,
        )
        self.triggers_fired = Counter(
            "tradeflow_trigger_fired_total",
            "Loss triggers and dead-man's switches that fired (moved, or found already"
            " restricted, their scope), by limit type.",
            ["limit_type"],
            registry=r,
        )
        self.trigger_errors = Counter(
            "tradeflow_trigger_errors_total",
            "Trigger evaluations that failed (equity unreadable, store unavailable, a halt"
            " refused), by limit type.",
            ["limit_type"],
            registry=r,
        )
        self.events_dropped = Counter(
            "tradeflow_events_dropped_total",
            "Events lost: a slow subscriber's buffer was full, or the bus could not send them.",
            registry=r,
        )
        self.events_publish_failures = Counter(
            "tradeflow_events_publish_failures_total",
            "Failed attempts to hand events to JetStream, by reason. The event is dropped "
            "for unserialisable, too_large, refused; the batch is sent again for "
            "unacknowledged, no_stream, server_error, error.",
            ["reason"],
            registry=r,
        )
        self.events_discarded = Counter(
            "tradeflow_events_discarded_total",
            "Events received from NATS and not delivered, by reason: undecodable (no JSON "
            "object), wrong_subject (not on the subject its type and ids give: a forgery).",
            ["reason"],
            registry=r,
        )
        self.subscriber_errors = Counter(
            "tradeflow_subscriber_errors_total",
            "Exceptions raised by event subscribers.",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
