"""Public path of the error tree; it lives in :mod:`tradeflow.domain.errors`."""

from tradeflow.domain.errors import *  # noqa: F403
from tradeflow.domain.errors import __all__ as __all__
