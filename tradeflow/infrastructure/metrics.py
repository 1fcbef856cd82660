"""Prometheus metrics, kept in-process on one registry per infrastructure.

Names start with ``tradeflow_``; labels are bounded (node type, status, scope,
limit type, breaker name: all from finite, operator-controlled sets).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BREAKER_STATE_VALUES", "Metrics"]

_LATENCY_BUCKETS = (
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


class Metrics:
    """Every tradeflow metric, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "tradeflow_executions_total",
            "Finished executions by final status.",
            ["status"],
            registry=r,
        )
        self.execution_seconds = Histogram(
            "tradeflow_execution_duration_seconds",
            "Wall time of one execution.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.node_seconds = Histogram(
            "tradeflow_node_duration_seconds",
            "Wall time of one node, by node type.",
            ["node_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
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
            "tradeflow_halts_total",
            "Emergency halts engaged, by scope.",
            ["scope"],
            registry=r,
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
        self.events_dropped = Counter(
            "tradeflow_events_dropped_total",
            "Events a slow subscriber lost (buffer full).",
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
