"""An embedded emergency controller on the test's state file, with a manual clock, its
published events and its metrics (registered in ``tests/conftest.py``; needs the unit
tests' ``conn``)."""

from __future__ import annotations

import itertools
import sqlite3

import pytest
from kit import ManualClock

from tradeflow.adapters.sqlite.emergency import LocalEmergencyController
from tradeflow.domain.records import Event
from tradeflow.observability.metrics import Metrics

__all__ = ["clock", "controller", "metrics", "published"]


@pytest.fixture
def published() -> list[Event]:
    """The events the controller published."""
    return []


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def controller(
    conn: sqlite3.Connection, published: list[Event], metrics: Metrics, clock: ManualClock
) -> LocalEmergencyController:
    counter = itertools.count(1)
    return LocalEmergencyController(
        conn,
        publish=published.append,
        metrics=metrics,
        clock=clock,
        id_factory=lambda: f"id-{next(counter)}",
    )
