"""Public path of the seed's emergency exceptions."""

from tradeflow.domain.errors import EmergencyHalted, RiskLimitExceeded

__all__ = ["EmergencyHalted", "RiskLimitExceeded"]
