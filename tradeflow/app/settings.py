"""One ``Settings``: every ``TRADEFLOW_*`` variable the composition root reads, and the
price feed and paper exchange they describe."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from tradeflow.adapters.memory.paper import PaperExchange
from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.clock import Clock
from tradeflow.domain.errors import ConfigurationError
from tradeflow.ports import PriceFeed

__all__ = ["ENVIRONMENTS", "Settings", "default_sqlite_path"]

ENVIRONMENTS = ("development", "test", "production")


def default_sqlite_path() -> Path:
    """``$XDG_STATE_HOME/tradeflow/tradeflow.db`` (``~/.local/state/...``): one file per
    user, so ``tradeflow halt`` in any shell reaches bots started in any directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tradeflow" / "tradeflow.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of an infrastructure; :meth:`from_env` reads ``TRADEFLOW_*``."""

    sqlite_path: str = field(default_factory=lambda: str(default_sqlite_path()))
    """``TRADEFLOW_SQLITE_PATH``: the embedded state file (``:memory:`` for none)."""
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """``TRADEFLOW_SQLITE_SYNCHRONOUS``: NORMAL survives a process crash; FULL also
    survives power loss, at ~200 us instead of ~11 us per commit."""
    prices_file: str | None = None
    """``TRADEFLOW_PRICES_FILE``: JSON ticks replayed by ``price_feed`` nodes."""
    log_level: str = "info"
    """``TRADEFLOW_LOG_LEVEL``."""
    log_json: bool = False
    """``TRADEFLOW_LOG_FORMAT=json`` (default in production) or ``console``."""
    event_buffer: int = 10_000
    """Events buffered per slow subscriber before the oldest are dropped."""
    emergency_address: str = "127.0.0.1:50052"
    """``TRADEFLOW_EMERGENCY_ADDR``."""
    state_address: str = "127.0.0.1:50053"
    """``TRADEFLOW_STATE_ADDR``."""
    nats_url: str = "nats://127.0.0.1:4222"
    """``TRADEFLOW_NATS_URL``."""
    paper_balances: dict[str, float] | None = None
    """``TRADEFLOW_PAPER_BALANCES``: starting balances of each paper venue, as a JSON
    object (e.g. ``{"USDT": 50000, "BTC": 1}``); the paper exchange's defaults if unset."""

    @classmethod
    def from_env(cls, env: str, environ: dict[str, str] | None = None) -> Settings:
        e = os.environ if environ is None else environ
        synchronous = e.get("TRADEFLOW_SQLITE_SYNCHRONOUS", "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(
                f"TRADEFLOW_SQLITE_SYNCHRONOUS must be NORMAL or FULL, found {synchronous!r}"
            )
        log_format = e.get("TRADEFLOW_LOG_FORMAT", "json" if env == "production" else "console")
        if log_format not in ("json", "console"):
            raise ConfigurationError(
                f"TRADEFLOW_LOG_FORMAT must be json or console, found {log_format!r}"
            )
        default_path = ":memory:" if env == "test" else str(default_sqlite_path())
        defaults = cls()
        return cls(
            sqlite_path=e.get("TRADEFLOW_SQLITE_PATH", default_path),
            sqlite_synchronous="FULL" if synchronous == "FULL" else "NORMAL",
            prices_file=e.get("TRADEFLOW_PRICES_FILE") or None,
            log_level=e.get("TRADEFLOW_LOG_LEVEL", "warning" if env == "test" else "info"),
            log_json=log_format == "json",
            emergency_address=e.get("TRADEFLOW_EMERGENCY_ADDR", defaults.emergency_address),
            state_address=e.get("TRADEFLOW_STATE_ADDR", defaults.state_address),
            nats_url=e.get("TRADEFLOW_NATS_URL", defaults.nats_url),
            paper_balances=_balances(e.get("TRADEFLOW_PAPER_BALANCES")),
        )

    def price_feed(self, clock: Clock) -> ReplayPriceFeed:
        """The replayed prices these settings describe (a file, or the synthetic series)."""
        if self.prices_file:
            return ReplayPriceFeed.from_file(self.prices_file, clock=clock)
        return ReplayPriceFeed(clock=clock)

    def paper_exchange(self, prices: PriceFeed, **kwargs: Any) -> PaperExchange:
        """The paper exchange these settings describe."""
        if self.paper_balances is not None:
            kwargs["default_balances"] = self.paper_balances
        return PaperExchange(prices, **kwargs)


def _balances(raw: str | None) -> dict[str, float] | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigurationError(
            f"TRADEFLOW_PAPER_BALANCES must be a JSON object of asset -> amount, found {raw!r}"
        )
    return {k: float(v) for k, v in value.items()}
