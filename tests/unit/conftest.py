"""Unit-test isolation: every test gets its own embedded state file."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default SQLite file (and XDG state dir) at this test's tmp_path."""
    db = tmp_path / "state" / "tradeflow.db"
    monkeypatch.setenv("TRADEFLOW_SQLITE_PATH", str(db))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TRADEFLOW_PRICES_FILE", raising=False)
    return db
