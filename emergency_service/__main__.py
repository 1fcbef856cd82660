"""``python -m emergency_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from emergency_service.server import build
from tradeflow.app.remote import run_service

sys.exit(run_service("emergency", build))
