"""Public path of :class:`Infrastructure` (the seed's API); see :mod:`tradeflow.app.infrastructure`."""

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import Settings

__all__ = ["Infrastructure", "Settings"]
