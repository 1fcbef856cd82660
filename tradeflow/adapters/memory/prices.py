"""A replaying price feed: recorded ticks, or deterministic synthetic ones.

:class:`ReplayPriceFeed` serves each ``(venue, symbol)`` pair its own series of
``(bid, ask)`` ticks, one per :meth:`~ReplayPriceFeed.quote` call. Pairs without
recorded ticks get a synthetic series that is the same in every process, so a
paper-trading run is reproducible end to end.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tradeflow.domain.clock import Clock
from tradeflow.domain.errors import ConfigurationError, ExchangeError
from tradeflow.domain.numbers import is_positive
from tradeflow.domain.trading import Quote

__all__ = ["ReplayPriceFeed"]

Pair = tuple[str, str]
"""``(venue, symbol)``."""
Tick = tuple[float, float]
"""``(bid, ask)``."""

_BASE_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}
_DEFAULT_BASE_PRICE = 100.0
_HALF_SPREAD = 1e-4
"""Half the synthetic bid/ask spread, as a fraction of the mid (1 bp)."""
_STEP = 5e-4
"""Standard deviation of one synthetic log-price step (5 bp)."""
_REVERSION = 0.01
"""Pull of each step back toward the base price, so the walk stays near it."""
_VENUE_SKEW_BPS = 20
"""Largest venue offset from the base price, in basis points (either way)."""


class _Replay:
    """Recorded ticks, served in order."""

    __slots__ = ("_index", "_loop", "_ticks")

    def __init__(self, ticks: tuple[Tick, ...], loop: bool) -> None:
        self._ticks = ticks
        self._loop = loop
        self._index = 0

    def next(self) -> Tick:
        tick = self._ticks[self._index]
        if self._index + 1 < len(self._ticks):
            self._index += 1
        elif self._loop:
            self._index = 0
        return tick


class _Walk:
    """A mean-reverting random walk around a base price, seeded by the pair.

    The seed comes from ``zlib.crc32`` (stable across processes, unlike ``hash``),
    and each venue sits a fixed few basis points off the base price, so the same
    symbol on two venues shows the spreads an arbitrage workflow looks for.
    """

    __slots__ = ("_level", "_mid", "_rng")

    def __init__(self, venue: str, symbol: str) -> None:
        self._rng = random.Random(zlib.crc32(f"{venue}\x00{symbol}".encode()))
        base = _BASE_PRICES.get(symbol.partition("/")[0], _DEFAULT_BASE_PRICE)
        skew_bps = zlib.crc32(venue.encode()) % (2 * _VENUE_SKEW_BPS + 1) - _VENUE_SKEW_BPS
        self._mid = base * (1 + skew_bps * 1e-4)
        self._level = 0.0

    def next(self) -> Tick:
        self._level = self._level * (1 - _REVERSION) + self._rng.gauss(0.0, _STEP)
        mid = self._mid * math.exp(self._level)
        return mid * (1 - _HALF_SPREAD), mid * (1 + _HALF_SPREAD)


class ReplayPriceFeed:
    """A :class:`~tradeflow.ports.PriceFeed` replaying ticks per ``(venue, symbol)``.

    Each :meth:`quote` call returns the next tick of its pair, stamped with the
    clock's time. When a recorded series runs out it starts over (``loop=True``)
    or keeps returning its last tick. A pair with no recorded ticks gets a
    deterministic synthetic series, unless ``strict`` is set, in which case
    quoting it raises :class:`~tradeflow.domain.errors.ExchangeError`.
    """

    __slots__ = ("_clock", "_last", "_series", "_strict")

    def __init__(
        self,
        ticks: Mapping[Pair, Sequence[Tick]] | None = None,
        *,
        clock: Clock,
        loop: bool = True,
        strict: bool = False,
    ) -> None:
        self._clock = clock
        self._strict = strict
        self._series: dict[Pair, _Replay | _Walk] = {
            (venue, symbol): _Replay(_checked_series(venue, symbol, series), loop)
            for (venue, symbol), series in (ticks or {}).items()
        }
        self._last: dict[Pair, Quote] = {}

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        clock: Clock,
        loop: bool = True,
        strict: bool = False,
    ) -> ReplayPriceFeed:
        """Load ticks from JSON ``{"venues": {"<venue>": {"<symbol>": [[bid, ask], ...]}}}``.

        Raises :class:`~tradeflow.domain.errors.ConfigurationError` naming the file and
        the venue, symbol and tick index at fault.
        """
        try:
            # orjson: a file nested too deep is a ValueError, not a RecursionError.
            raw = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"price file {str(path)!r}: cannot read it: {exc}") from exc
        except ValueError as exc:
            raise ConfigurationError(f"price file {str(path)!r}: not valid JSON: {exc}") from exc
        try:
            ticks = _parse_venues(raw)
            return cls(ticks, clock=clock, loop=loop, strict=strict)
        except ConfigurationError as exc:
            raise ConfigurationError(f"price file {str(path)!r}: {exc.message}") from None

    async def quote(self, venue: str, symbol: str) -> Quote:
        key = (venue, symbol)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._synthetic(venue, symbol)
        bid, ask = series.next()
        quote = self._last[key] = Quote(venue, symbol, bid, ask, self._clock.time())
        return quote

    def last_quote(self, venue: str, symbol: str) -> Quote | None:
        return self._last.get((venue, symbol))

    def _synthetic(self, venue: str, symbol: str) -> _Walk:
        if self._strict:
            raise ExchangeError(f"no prices for symbol {symbol!r} on venue {venue!r}")
        return _Walk(venue, symbol)


def _parse_venues(raw: Any) -> dict[Pair, Sequence[Any]]:
    """Flatten the file's ``venues`` object into ``{(venue, symbol): ticks}``."""
    venues = raw.get("venues") if isinstance(raw, dict) else None
    if not isinstance(venues, dict):
        raise ConfigurationError(
            'expected {"venues": {"<venue>": {"<symbol>": [[bid, ask], ...]}}}, '
            f"found {_excerpt(raw)}"
        )
    ticks: dict[Pair, Sequence[Any]] = {}
    for venue, symbols in venues.items():
        if not isinstance(symbols, dict):
            raise ConfigurationError(
                f"venue {venue!r}: expected an object of symbol -> ticks, found {_excerpt(symbols)}"
            )
        for symbol, series in symbols.items():
            ticks[venue, symbol] = series
    return ticks


def _checked_series(venue: str, symbol: str, series: Any) -> tuple[Tick, ...]:
    """``series`` as ``(bid, ask)`` float pairs; raises ``ConfigurationError`` naming the tick."""
    where = f"venue {venue!r} symbol {symbol!r}"
    if isinstance(series, str | bytes) or not isinstance(series, Sequence) or not series:
        raise ConfigurationError(
            f"{where}: expected a non-empty list of [bid, ask], found {_excerpt(series)}"
        )
    return tuple(_checked_tick(where, index, tick) for index, tick in enumerate(series))


def _checked_tick(where: str, index: int, tick: Any) -> Tick:
    if (
        isinstance(tick, Sequence)
        and not isinstance(tick, str | bytes)
        and len(tick) == 2
        and all(is_positive(v) for v in tick)
        and tick[0] <= tick[1]
    ):
        return float(tick[0]), float(tick[1])
    raise ConfigurationError(
        f"{where} tick {index}: expected [bid, ask] with finite 0 < bid <= ask, found {tick!r}"
    )


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
