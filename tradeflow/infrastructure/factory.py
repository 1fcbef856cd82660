"""Public path of :class:`Infrastructure` (the seed's API); see :mod:`tradeflow.app.infrastructure`."""

from tradeflow.app.infrastructure import Infrastructure
from tradeflow.app.settings import ENVIRONMENTS, Settings, default_sqlite_path

__all__ = ["ENVIRONMENTS", "Infrastructure", "Settings", "default_sqlite_path"]
