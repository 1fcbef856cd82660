"""``python -m state_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from state_service.server import build
from tradeflow.app.remote import run_service

sys.exit(run_service("state", build))
