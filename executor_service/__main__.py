"""``python -m executor_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from executor_service.server import build
from tradeflow.app.remote import run_service

sys.exit(run_service("executor", build))
