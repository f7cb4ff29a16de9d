"""The REST client of an exchange host, and the backfill thread on it: against the simulator's REST twins (their
documented throttling and bans, asserted on the twin's request log) and local servers that keep connections
alive, trickle answers or echo what they were sent.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from marketfeed.actors.backfill import Backfiller
from marketfeed.actors.feed_messages import BackfillDone, BackfillRows
from marketfeed.actors.rest_client import RestLimits, fetch, host_client
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import FeedProtocol, Gap
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.polygon import PolygonOptions
from marketfeed.feeds.rest_policy import VerdictKind
from marketfeed.sim import Simulator
from marketfeed.telemetry import logs
from tests.support.polling import poll

KEY = "polygon-key-0123456789"


def protocol(exchange: str, rest_url: str, symbols: tuple[str, ...], name: str = "test", **extra) -> FeedProtocol:
    return registry.exchange(exchange).protocol(FeedConfig(name=name, exchange=exchange, url="ws://unused",
                                                           rest_url=rest_url, symbols=symbols, **extra))


def trades_gap(sim: Simulator, exchange: str, symbol: str) -> Gap:
    ids = sim.truth(exchange, symbol)
    return Gap(symbol, ids[0], ids[-1])


def get(p: FeedProtocol, gap: Gap, limits: RestLimits | None = None):
    request = p.backfill_request(gap)
    assert request is not None
    return fetch(request, p, limits or RestLimits(), threading.Event())


# --- the simulator's twins: Retry-After, bans, Kraken's error arrays

@pytest.fixture
def binance():
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, rate=1000, count=200, seed=3) as sim:
        sim.wait_emitted(200)
        yield sim


def test_a_429_is_retried_no_sooner_than_its_retry_after(binance):
    p = protocol("binance", binance.rest_url("binance"), ("BTCUSDT",))
    binance.rest_throttle("binance", 1, retry_after_s=2)
    result = get(p, trades_gap(binance, "binance", "BTCUSDT"))
    assert result.verdict.kind is VerdictKind.OK and len(orjson.loads(result.body)) == 200
    limited, served = binance.rest_log("binance")
    assert (limited.status, served.status) == (429, 200)
    assert served.time - limited.time >= 2.0


def test_a_418_stops_every_request_to_the_host_until_the_ban_ends(binance):
    url = binance.rest_url("binance")
    first, second = (protocol("binance", url, ("BTCUSDT",), name=name) for name in ("first", "second"))
    binance.rest_ban("binance", 3)
    refused = get(first, trades_gap(binance, "binance", "BTCUSDT"), RestLimits(max_wait_s=1.0))
    assert refused.verdict.kind is VerdictKind.BANNED and 2.5 < refused.retry_after_s <= 3.0
    assert [entry.status for entry in binance.rest_log("binance")] == [418]  # not asked again meanwhile
    served = get(second, trades_gap(binance, "binance", "BTCUSDT"))  # another feed of the host waits it out
    assert served.verdict.kind is VerdictKind.OK
    banned, answered = binance.rest_log("binance")
    assert (banned.status, answered.status) == (418, 200) and answered.time - banned.time >= 3.0


def test_the_hosts_weight_header_is_budgeted(binance):
    p = protocol("binance", binance.rest_url("binance"), ("BTCUSDT",))
    assert get(p, trades_gap(binance, "binance", "BTCUSDT")).verdict.kind is VerdictKind.OK
    assert host_client(binance.rest_url("binance"), p).policy.used_weight(time.time()) == 25  # historicalTrades


def test_a_kraken_rate_limit_with_http_200_is_retried_after_its_wait():
    with Simulator(["kraken"], {"kraken": ["BTC/USD"]}, rate=1000, count=100, seed=3) as sim:
        sim.wait_emitted(100)
        p = protocol("kraken", sim.rest_url("kraken"), ("BTC/USD",))
        sim.rest_throttle("kraken", 1)
        result = get(p, trades_gap(sim, "kraken", "BTC/USD"))
        assert result.verdict.kind is VerdictKind.OK
        limited, served = sim.rest_log("kraken")
        assert (limited.status, served.status) == (200, 200)  # Kraken's error array comes with HTTP 200
        assert served.time - limited.time >= p.rest_limited_wait_s


# --- the backfill thread

@dataclass
class Inbox:
    """Stands in for the feed actor."""

    told: list = field(default_factory=list)
    done: queue.Queue[BackfillDone] = field(default_factory=queue.Queue)

    def tell(self, message) -> None:
        self.told.append(message)
        if isinstance(message, BackfillDone):
            self.done.put(message)

    def next_done(self) -> BackfillDone:
        return self.done.get(timeout=20)


@contextmanager
def backfilling(p: FeedProtocol) -> Iterator[tuple[Backfiller, Inbox]]:
    inbox, allowed = Inbox(), threading.Event()
    allowed.set()
    backfiller = Backfiller("test", p, inbox, allowed, RestLimits(attempts=2))
    backfiller.start()
    try:
        yield backfiller, inbox
    finally:
        backfiller.stop()
        backfiller.join(5)


def test_a_gap_of_several_pages_is_filled():
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, rate=5000, count=2500, seed=3) as sim:
        sim.wait_emitted(2500)
        with backfilling(protocol("binance", sim.rest_url("binance"), ("BTCUSDT",))) as (backfiller, inbox):
            backfiller.gaps.put(trades_gap(sim, "binance", "BTCUSDT"))
            done = inbox.next_done()
        assert (done.rows, done.error, done.left) == (2500, "", None)
        ids = [row.trade_id for message in inbox.told if isinstance(message, BackfillRows) for row in message.rows]
        assert ids == sim.truth("binance", "BTCUSDT") and len(sim.rest_log("binance")) == 3


def test_server_errors_past_the_attempts_leave_the_page_with_the_exchanges_delay(binance):
    gap = trades_gap(binance, "binance", "BTCUSDT")
    binance.rest_errors("binance", 5, 503, retry_after_s=2)
    with backfilling(protocol("binance", binance.rest_url("binance"), ("BTCUSDT",))) as (backfiller, inbox):
        backfiller.gaps.put(gap)
        done = inbox.next_done()
    assert done.rows == 0 and done.error.startswith("HTTP 503") and done.left == gap and not done.unrecoverable
    assert 1.5 < done.retry_after_s <= 2.0
    first, second = binance.rest_log("binance")
    assert second.time - first.time >= 2.0


def test_an_unknown_kraken_pair_is_unrecoverable():
    with Simulator(["kraken"], {"kraken": ["BTC/USD"]}, rate=1000, count=10, seed=3) as sim:
        p = protocol("kraken", sim.rest_url("kraken"), ("BTC/USD",))
        gap = Gap("NOT/APAIR", 1, 10)
        with backfilling(p) as (backfiller, inbox):
            backfiller.gaps.put(gap)
            done = inbox.next_done()
        assert done.unrecoverable and done.left == gap and "EQuery:Unknown asset pair" in done.error
        assert len(sim.rest_log("kraken")) == 1  # not asked again


def test_stop_ends_the_thread_while_it_waits_out_a_ban(binance):
    binance.rest_ban("binance", 30)
    with backfilling(protocol("binance", binance.rest_url("binance"), ("BTCUSDT",))) as (backfiller, inbox):
        backfiller.gaps.put(trades_gap(binance, "binance", "BTCUSDT"))
        poll(lambda: binance.rest_log("binance"), timeout=10, what="the banned request")
        backfiller.stop()
        backfiller.join(5)
        assert not backfiller.is_alive()  # within 5 s of the 30 s ban: the wait was cut short, not waited out
    assert inbox.told == []


# --- local servers: keep-alive, garbage, echoes, trickles

@dataclass
class LocalServer:
    url: str
    answer: Callable[[str], tuple[int, bytes]]  # path → (status, body)
    peers: set = field(default_factory=set)  # client (address, port) pairs: one per connection


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """An HTTP/1.1 server that keeps connections alive; answers what its `answer` says (default: [])."""
    local = LocalServer("", lambda path: (200, b"[]"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            local.peers.add(self.client_address)
            status, body = local.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    local.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield local
    finally:
        server.shutdown()
        server.server_close()


def test_feeds_of_one_host_share_one_kept_alive_connection(http_server):
    feeds = [protocol("coinbase", http_server.url, ("BTC-USD",), name=name) for name in ("a", "b")]
    for _ in range(3):
        for p in feeds:
            assert get(p, Gap("BTC-USD", 1, 10)).verdict.kind is VerdictKind.OK
    assert host_client(http_server.url, feeds[0]) is host_client(http_server.url, feeds[1])
    assert len(http_server.peers) == 1


def test_a_page_that_does_not_parse_leaves_it_for_a_later_attempt(http_server):
    http_server.answer = lambda path: (200, b"<html>maintenance</html>")
    gap = Gap("BTCUSDT", 1, 10)
    with backfilling(protocol("binance", http_server.url, ("BTCUSDT",))) as (backfiller, inbox):
        backfiller.gaps.put(gap)
        done = inbox.next_done()
    assert done.error.startswith("MalformedFrame") and done.left == gap and not done.unrecoverable


def test_error_texts_show_no_api_key(http_server):
    http_server.answer = lambda path: (401, orjson.dumps({"status": "ERROR", "error": f"Unknown API Key in {path}"}))
    p = protocol("polygon", http_server.url, ("AAPL",), options=PolygonOptions(api_key=KEY))
    logs.hide([KEY])
    try:
        with backfilling(p) as (backfiller, inbox):
            backfiller.gaps.put(Gap("AAPL", since_ns=1, until_ns=2))
            done = inbox.next_done()
    finally:
        logs.hide([])
    assert done.unrecoverable and "Unknown API Key" in done.error
    assert KEY not in done.error and logs.SECRET_SHOWN_AS in done.error


class Exploding(BinanceProtocol):
    def parse_backfill(self, gap, body, received_ns):
        raise RuntimeError(f"a bug near {KEY}")


def test_any_exception_ends_only_that_gaps_attempt_reported_and_logged_scrubbed(http_server, caplog):
    p = Exploding(FeedConfig(name="boom", exchange="binance", url="ws://unused", rest_url=http_server.url,
                             symbols=("BTCUSDT",)))
    first, second = Gap("BTCUSDT", 1, 10), Gap("BTCUSDT", 20, 30)
    logs.hide([KEY])
    try:
        with caplog.at_level(logging.ERROR, logger="marketfeed.feed"), backfilling(p) as (backfiller, inbox):
            backfiller.gaps.put(first)
            backfiller.gaps.put(second)
            dones = [inbox.next_done(), inbox.next_done()]  # the thread lived on to the next gap
    finally:
        logs.hide([])
    assert [done.left for done in dones] == [first, second]
    assert dones[0].error == f"RuntimeError: a bug near {logs.SECRET_SHOWN_AS}" and not dones[0].unrecoverable
    assert [record.getMessage() for record in caplog.records].count("backfill_crashed") == 2


@contextmanager
def trickling_server(head: bytes, interval_s: float) -> Iterator[str]:
    """Answers one request with `head`, then one more byte every interval_s until the client goes away."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            try:
                connection.sendall(head)
                while not stop.wait(interval_s):  # the trickle's pace, not synchronization
                    connection.sendall(b"x")
            except OSError:
                pass  # the client hung up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("head, scheme", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", "http"),  # the body trickles
    (b"HTTP/1.1 200 OK\r\nX-Slow: ", "http"),  # the headers trickle
    (b"\x16\x03\x03\x40\x00", "https"),  # the TLS handshake trickles: a 16 kB record after the ClientHello
], ids=["body", "headers", "tls_handshake"])
def test_an_answer_trickled_byte_by_byte_ends_at_the_deadline(head, scheme):
    # A byte every 0.5 s: no single read waits out a 1 s read timeout, only a total deadline ends it.
    with trickling_server(head, 0.5) as url:
        url = url.replace("http://", f"{scheme}://")
        started = time.monotonic()
        result = get(protocol("coinbase", url, ("BTC-USD",)), Gap("BTC-USD", 1, 10),
                     RestLimits(attempts=1, timeout_s=1.0))
        elapsed = time.monotonic() - started
    assert result.verdict.kind is VerdictKind.RETRY and "no complete answer within 1.0 s" in result.verdict.reason
    assert 1.0 <= elapsed < 2.0


def test_a_body_trickled_a_byte_a_second_ends_at_the_deadline():
    timeout_s = 3.0  # the default (RestLimits().timeout_s, 10 s) is the same proof, later
    with trickling_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", 1.0) as url:
        started = time.monotonic()
        result = get(protocol("coinbase", url, ("BTC-USD",)), Gap("BTC-USD", 1, 10),
                     RestLimits(attempts=1, timeout_s=timeout_s))
        elapsed = time.monotonic() - started
    assert result.verdict.kind is VerdictKind.RETRY
    assert f"no complete answer within {timeout_s} s" in result.verdict.reason
    assert timeout_s <= elapsed < timeout_s + 1
