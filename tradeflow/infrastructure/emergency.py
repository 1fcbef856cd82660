"""Public path of the seed's emergency exceptions, and of the emergency names that lived
here before the layout (rules in :mod:`tradeflow.domain.emergency`, controller in
:mod:`tradeflow.engine.emergency`, the embedded store in
:mod:`tradeflow.adapters.sqlite.emergency`)."""

from tradeflow.adapters.sqlite.emergency import LocalEmergencyController, SQLiteEmergencyStore
from tradeflow.domain.emergency import (
    DEFAULT_DIRECTIONS,
    MAX_AUDIT_PAGE,
    EmergencySnapshot,
    HaltKey,
)
from tradeflow.domain.errors import EmergencyHalted, RiskLimitExceeded
from tradeflow.engine.emergency import EmergencyController
from tradeflow.ports import EmergencyStore

__all__ = [
    "DEFAULT_DIRECTIONS",
    "MAX_AUDIT_PAGE",
    "EmergencyController",
    "EmergencyHalted",
    "EmergencySnapshot",
    "EmergencyStore",
    "HaltKey",
    "LocalEmergencyController",
    "RiskLimitExceeded",
    "SQLiteEmergencyStore",
]
