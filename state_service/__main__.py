"""``python -m state_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from state_service.server import build
from tradeflow.adapters.grpc.server import main

sys.exit(main("state", 50053, build))
