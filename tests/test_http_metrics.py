"""/metrics content negotiation on the ops server (telemetry/http.py), started in this process: the text format
0.0.4 by default, OpenMetrics when Accept asks for it (a Prometheus scrape does), gzip when Accept-Encoding allows
it. Answers are parsed with prometheus_client's own parsers and linted with promtool."""
import gzip
import http.client
import shutil
import subprocess
import time

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from marketfeed.storage.tables import TABLES
from marketfeed.telemetry import metrics
from marketfeed.telemetry.http import OpsServer

PROMETHEUS_SCRAPE = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"


def fresh_report():
    return {"status": "ok", "alerts": []}, time.monotonic()


@pytest.fixture
def start():
    servers = []

    def start(registry=REGISTRY) -> OpsServer:
        servers.append(OpsServer("127.0.0.1:0", fresh_report, 10.0, registry=registry).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def restart() -> tuple:
    """The service's registry with the series a config of one feed implies and a restart of that feed: the restart
    counter's sample as samples() gives it."""
    metrics.initialise(["binance-sim"], TABLES)
    labels = {"supervisor": "feeds", "actor": "binance-sim"}
    metrics.ACTOR_RESTARTS.labels(**labels).inc()
    name = "marketfeed_actor_restarts_total"
    return name, tuple(sorted(labels.items())), REGISTRY.get_sample_value(name, labels)


def scrape(port: int, method: str = "GET", **headers: str) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, "/metrics", headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def length(response: http.client.HTTPResponse) -> int:
    value = response.getheader("Content-Length")
    assert value is not None, "no Content-Length"
    return int(value)


def samples(families) -> set[tuple]:
    """Every marketfeed_ sample as (name, labels, value): what both formats must agree on."""
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in families for s in f.samples
            if s.name.startswith("marketfeed_")}


def test_without_an_accept_header_metrics_are_the_text_format_that_promtool_accepts(start, restart):
    response, body = scrape(start().port)
    assert response.status == 200 and response.getheader("Content-Type") == TEXT
    assert response.getheader("Content-Encoding") is None and length(response) == len(body)
    found = samples(parse_text(body.decode()))
    assert restart in found and ("marketfeed_rows_written_total", (("table", "trades"),)) in {s[:2] for s in found}
    assert shutil.which("promtool"), "promtool missing: bin/test-deps installs it"
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


@pytest.mark.parametrize("accept", ["application/openmetrics-text", PROMETHEUS_SCRAPE])
def test_an_openmetrics_accept_header_gets_openmetrics_with_the_same_samples(start, restart, accept):
    server = start()
    response, body = scrape(server.port, Accept=accept)
    assert response.status == 200 and (response.getheader("Content-Type") or "").startswith(OPENMETRICS)
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body.decode())}  # strict: refuses text format 0.0.4
    assert families["marketfeed_actor_restarts"].type == "counter"  # OpenMetrics names a counter without _total
    _, text = scrape(server.port, Accept="text/plain;version=0.0.4")
    shared = samples(families.values())
    assert shared == samples(parse_text(text.decode()))
    assert restart in shared


def test_a_text_accept_header_or_an_unknown_openmetrics_version_gets_the_text_format(start, restart):
    server = start()
    for accept in ("text/plain;version=0.0.4", "*/*", "application/openmetrics-text;version=0.0.1"):
        response, body = scrape(server.port, Accept=accept)
        assert response.getheader("Content-Type") == TEXT, accept
        assert not body.endswith(b"# EOF\n")


@pytest.mark.parametrize("accept", ["", PROMETHEUS_SCRAPE])
def test_gzip_is_sent_when_accepted_and_unzips_to_the_plain_answer(start, accept):
    registry = CollectorRegistry()  # of its own, so that two scrapes give the same bytes
    Counter("marketfeed_test_rows_total", "rows", ["table"], registry=registry).labels("trades").inc(7)
    Gauge("marketfeed_test_buffered_rows", "buffered", ["table"], registry=registry).labels("candles").set(3)
    Histogram("marketfeed_test_flush_seconds", "flushes", registry=registry).observe(0.2)
    server = start(registry)
    plain, identity = scrape(server.port, Accept=accept)
    for encoding in ("gzip", "deflate, gzip;q=0.8", "GZIP"):
        response, body = scrape(server.port, Accept=accept, Accept_Encoding=encoding)
        assert response.getheader("Content-Encoding") == "gzip", encoding
        assert length(response) == len(body) < len(identity)
        assert gzip.decompress(body) == identity
        assert response.getheader("Content-Type") == plain.getheader("Content-Type")
        assert response.getheader("Vary") == "Accept, Accept-Encoding"
    head, nothing = scrape(server.port, "HEAD", Accept=accept, Accept_Encoding="gzip")
    assert nothing == b"" and head.getheader("Content-Encoding") == "gzip" and length(head) > 0
    for encoding in ("identity", "br, deflate"):
        response, body = scrape(server.port, Accept=accept, Accept_Encoding=encoding)
        assert response.getheader("Content-Encoding") is None and body == identity, encoding
