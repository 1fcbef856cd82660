"""Unit-test isolation: every test gets its own embedded state file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradeflow.adapters.sqlite.database import open_database


@pytest.fixture(autouse=True)
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default SQLite file (and XDG state dir) at this test's tmp_path; the
    file's path, not yet created."""
    db = tmp_path / "state" / "tradeflow.db"
    monkeypatch.setenv("TRADEFLOW_SQLITE_PATH", str(db))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TRADEFLOW_PRICES_FILE", raising=False)
    return db


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    """The test's state database, open (and closed afterwards)."""
    connection = open_database(db_path)
    yield connection
    connection.close()
