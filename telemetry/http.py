"""The service's HTTP endpoints on loopback: /metrics (Prometheus), /health (liveness), /ready.

Handlers answer from the health actor's latest published report, never by asking actors, so a
scrape cannot stall the tree and a stalled tree cannot stall a scrape.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from marketfeed.telemetry.health_rules import liveness, readiness
from marketfeed.telemetry.logs import event
from marketfeed.telemetry.report import HealthReport

log = logging.getLogger("marketfeed.http")

# (report, monotonic time it was published) or None before the first report
ReportSource = Callable[[], "tuple[HealthReport, float] | None"]


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') → (host, port); ValueError naming what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class OpsServer:
    def __init__(self, listen: str, latest: ReportSource, max_report_age_s: float):
        self.latest, self.max_report_age_s = latest, max_report_age_s
        host, port = parse_listen(listen)
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> OpsServer:
        host = self.httpd.socket.getsockname()[0]  # the address bound (server_address's type allows a Unix path)
        if not is_loopback(host):  # metrics and health have no authentication: say so when others can reach them
            event(log, "http_not_loopback", logging.WARNING, listen=f"{host}:{self.port}",
                  hint="/metrics, /health and /ready have no authentication; bind 127.0.0.1 or firewall the port")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path in ("/health", "/ready"):
            published = self.latest()
            report, age = (published[0], time.monotonic() - published[1]) if published else (None, 0.0)
            ok, detail = liveness(report, age, self.max_report_age_s) if path == "/health" else readiness(report)
            body = {"ok": ok, "detail": detail, "status": report.get("status") if report else None}
            return (200 if ok else 503), "application/json", orjson.dumps(body)
        return 404, "text/plain", b"not found: try /metrics, /health or /ready\n"

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                code, content_type, body = server.answer(self.path.split("?", 1)[0])
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass  # scrapes every few seconds would flood the JSON log

        return Handler
