"""ReplayPriceFeed: replay order, looping, synthetic series, strictness, file loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kit import ManualClock

from tradeflow.adapters.memory.prices import ReplayPriceFeed
from tradeflow.domain.errors import ConfigurationError, ExchangeError
from tradeflow.domain.trading import split_symbol

TICKS = {
    ("a", "BTC/USDT"): [(1.0, 2.0), (3.0, 4.0)],
    ("b", "BTC/USDT"): [(10.0, 11.0)],
}


async def _ticks(
    feed: ReplayPriceFeed, venue: str, symbol: str, n: int
) -> list[tuple[float, float]]:
    return [((q := await feed.quote(venue, symbol)).bid, q.ask) for _ in range(n)]


@pytest.mark.asyncio
async def test_replays_each_pair_in_order_and_loops() -> None:
    """Each pair replays its own ticks in order and starts over when exhausted."""
    feed = ReplayPriceFeed(TICKS, clock=ManualClock())
    assert await _ticks(feed, "a", "BTC/USDT", 5) == [(1, 2), (3, 4), (1, 2), (3, 4), (1, 2)]
    assert await _ticks(feed, "b", "BTC/USDT", 2) == [(10, 11), (10, 11)]


@pytest.mark.asyncio
async def test_without_loop_keeps_returning_the_last_tick() -> None:
    """With loop=False an exhausted series repeats its last tick."""
    feed = ReplayPriceFeed(TICKS, clock=ManualClock(), loop=False)
    assert await _ticks(feed, "a", "BTC/USDT", 4) == [(1, 2), (3, 4), (3, 4), (3, 4)]


@pytest.mark.asyncio
async def test_last_quote_is_the_latest_quote_stamped_by_the_clock() -> None:
    """last_quote is None before the first quote, then the quote just returned, clock-stamped."""
    clock = ManualClock(1_000.0)
    feed = ReplayPriceFeed(TICKS, clock=clock)
    assert feed.last_quote("a", "BTC/USDT") is None
    await feed.quote("a", "BTC/USDT")
    clock.advance(5)
    second = await feed.quote("a", "BTC/USDT")
    assert feed.last_quote("a", "BTC/USDT") == second
    assert (second.venue, second.symbol, second.bid, second.ask) == ("a", "BTC/USDT", 3.0, 4.0)
    assert second.timestamp == 1_005.0
    assert second.mid == 3.5


@pytest.mark.asyncio
async def test_synthetic_series_is_deterministic_across_instances() -> None:
    """Two feeds produce the same synthetic series for the same pair."""
    first = await _ticks(ReplayPriceFeed(clock=ManualClock()), "binance", "ETH/USDT", 50)
    second = await _ticks(ReplayPriceFeed(clock=ManualClock()), "binance", "ETH/USDT", 50)
    assert first == second
    assert all(0 < bid < ask for bid, ask in first)


def test_synthetic_series_is_the_same_in_another_process() -> None:
    """The synthetic seed does not depend on the process's string-hash randomisation."""
    script = (
        "import asyncio\n"
        "from tradeflow.adapters.memory.prices import ReplayPriceFeed\n"
        "from tradeflow.domain.clock import SystemClock\n"
        "feed = ReplayPriceFeed(clock=SystemClock())\n"
        "print(repr(asyncio.run(feed.quote('kraken', 'SOL/USDT')).bid))\n"
    )
    bids = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert len(bids) == 1


@pytest.mark.asyncio
async def test_synthetic_prices_start_near_the_base_and_differ_by_venue() -> None:
    """Known symbols start near their base price; venues are offset from each other."""
    feed = ReplayPriceFeed(clock=ManualClock())
    binance = await feed.quote("binance", "BTC/USDT")
    kraken = await feed.quote("kraken", "BTC/USDT")
    other = await feed.quote("binance", "XYZ/USDT")
    assert 57_000 < binance.mid < 63_000
    assert binance.mid != kraken.mid
    assert 95 < other.mid < 105


@pytest.mark.asyncio
async def test_strict_feed_refuses_unknown_pairs() -> None:
    """strict=True raises ExchangeError naming the venue and symbol of an unknown pair."""
    feed = ReplayPriceFeed(TICKS, clock=ManualClock(), strict=True)
    with pytest.raises(ExchangeError, match=r"'DOGE/USDT'.*'a'"):
        await feed.quote("a", "DOGE/USDT")
    assert (await feed.quote("a", "BTC/USDT")).bid == 1.0


@pytest.mark.parametrize(
    ("series", "fragment"),
    [
        ([], "non-empty list"),
        ([(2.0, 1.0)], "tick 0"),
        ([(1.0, 2.0), (1.0,)], "tick 1"),
        ([(1.0, 2.0), ("1", 2.0)], "tick 1"),
        ([(float("nan"), 2.0)], "tick 0"),
    ],
)
def test_constructor_rejects_malformed_ticks(series: list[Any], fragment: str) -> None:
    """Malformed ticks raise ConfigurationError naming venue, symbol and tick."""
    with pytest.raises(ConfigurationError, match=rf"venue 'v' symbol 'S/Q'.*{fragment}"):
        ReplayPriceFeed({("v", "S/Q"): series}, clock=ManualClock())


@pytest.mark.asyncio
async def test_from_file_loads_every_venue_and_symbol(tmp_path: Path) -> None:
    """from_file serves the file's ticks per venue and symbol."""
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"venues": {"x": {"BTC/USDT": [[1, 2], [3, 4]]}, "y": {"ETH/USDT": [[5, 6]]}}})
    )
    feed = ReplayPriceFeed.from_file(path, clock=ManualClock(), strict=True)
    assert await _ticks(feed, "x", "BTC/USDT", 2) == [(1, 2), (3, 4)]
    assert await _ticks(feed, "y", "ETH/USDT", 1) == [(5, 6)]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"venues"'),
        ('{"venues": []}', '"venues"'),
        ('{"venues": {"x": [1, 2]}}', "venue 'x': expected an object"),
        ('{"venues": {"x": {"BTC/USDT": []}}}', "venue 'x' symbol 'BTC/USDT'.*non-empty"),
        ('{"venues": {"x": {"BTC/USDT": [[1, 2], [3, "4"]]}}}', "symbol 'BTC/USDT' tick 1"),
    ],
)
def test_from_file_names_what_is_malformed(tmp_path: Path, content: str, fragment: str) -> None:
    """A malformed file raises ConfigurationError naming the file and the bad part."""
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=rf"prices\.json.*{fragment}"):
        ReplayPriceFeed.from_file(path, clock=ManualClock())


def test_from_file_reports_a_missing_file(tmp_path: Path) -> None:
    """A missing file raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=r"absent\.json"):
        ReplayPriceFeed.from_file(tmp_path / "absent.json", clock=ManualClock())


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [("BTC/USDT", ("BTC", "USDT")), ("BTC", None), ("/USDT", None), ("A/B/C", None)],
)
def test_split_symbol(symbol: str, expected: tuple[str, str] | None) -> None:
    """split_symbol accepts exactly BASE/QUOTE."""
    assert split_symbol(symbol) == expected
