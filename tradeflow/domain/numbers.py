"""What counts as a number wherever tradeflow checks one: an int or float (a bool is
not), finite (NaN and infinities are refused), small enough to be a float."""

from __future__ import annotations

import math

__all__ = ["finite", "is_positive"]


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def is_positive(value: object) -> bool:
    """``value`` is a finite number > 0."""
    number = finite(value)
    return number is not None and number > 0
