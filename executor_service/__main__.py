"""``python -m executor_service``: configured by ``TRADEFLOW_*`` environment variables."""

import sys

from executor_service.server import build
from tradeflow.adapters.grpc.server import main

sys.exit(main("executor", 50051, build))
