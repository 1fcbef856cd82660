"""A tiny local HTTP price API for the ``http_price.json`` example (no internet needed).

    python examples/price_api.py --port 8765 &
    TRADEFLOW_EGRESS_ALLOW=127.0.0.1:8765 tradeflow run examples/http_price.json

(api_call refuses loopback addresses unless the egress allow-list names them.)

GET /api/v3/ticker/bookTicker?symbol=BTCUSDT answers like Binance's book ticker,
with a price that walks a little on every request. It echoes X-Correlation-ID.
"""

from __future__ import annotations

import argparse
import json
import math
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from urllib.parse import parse_qs, urlparse

BASE = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0}
_ticks = count()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        symbol = parse_qs(url.query).get("symbol", [""])[0]
        if url.path != "/api/v3/ticker/bookTicker" or symbol not in BASE:
            self._send(400, {"code": -1121, "msg": f"Invalid symbol {symbol!r}."})
            return
        mid = BASE[symbol] * (1 + 0.004 * math.sin(next(_ticks) / 3))
        self._send(
            200, {"symbol": symbol, "bidPrice": f"{mid - 5:.2f}", "askPrice": f"{mid + 5:.2f}"}
        )

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        correlation = self.headers.get("X-Correlation-ID")
        if correlation:
            self.send_header("X-Correlation-ID", correlation)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"price API on http://127.0.0.1:{args.port}/api/v3/ticker/bookTicker?symbol=BTCUSDT")
    server.serve_forever()


if __name__ == "__main__":
    main()
