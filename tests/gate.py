"""An HTTP endpoint that holds requests until the test opens it: a workflow waiting on
it (an ``api_call`` node) is paused at a known point, between two orders say."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GateServer:
    """An HTTP endpoint that holds requests until released: the kill happens while the
    workflow waits on it, after its first order and before its second."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.open = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.arrived.set()
                gate.open.wait(60)
                body = b'{"go": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gate"
        self.allow = f"127.0.0.1:{self.server.server_address[1]}"
        """The ``TRADEFLOW_EGRESS_ALLOW`` entry an executor needs to reach this (loopback) gate."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.open.set()
        self.server.shutdown()
