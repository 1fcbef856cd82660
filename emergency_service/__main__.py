"""``python -m emergency_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from emergency_service.server import build
from tradeflow.adapters.grpc.server import main

sys.exit(main("emergency", 50052, build))
