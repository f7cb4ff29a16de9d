"""Hostile peers at connect time: redirects to another host or from wss:// down to ws://, handshakes trickled a
byte at a time, and a chunk whose good frames come before a refused one. The peers are raw sockets (tests/ only),
so they can answer what no WebSocket library would send; what they were sent is kept and asserted on.

No QuestDB here: the buffer is tests/test_hostile_feed.py's stand-in actor that records what it would have written.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pykka
import pytest
import websocket

from marketfeed.actors.feed import FeedActor
from marketfeed.actors.feed_reader import HANDSHAKE_S, ReaderLimits, RedirectRefused, redirect_target
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import MalformedFrame, ParsedRows
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.feeds.polygon import PolygonOptions, PolygonProtocol, stock_trade_id
from marketfeed.feeds.wsframes import OP_CLOSE, OP_TEXT
from marketfeed.sim import Simulator
from marketfeed.sim.polygon import PolygonSession
from tests.support.polling import poll
from tests.test_hostile_feed import private_ca, recording_sinks, status  # noqa: F401 - private_ca is a fixture

KEY = "polygon-key-hostile-0123456789"
OTHER_HOST = "127.0.0.2"  # loopback too, but another host by name and address
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


# --- a raw hostile peer

class Peer:
    """A server on (host, ephemeral port) that serves each connection with `behave(peer, stream)` on a thread of
    its own; keeps every request it read and every WebSocket message a client sent it."""

    def __init__(self, host: str, behave: Callable[[Peer, socket.SocketIO], None], tls: ssl.SSLContext | None = None):
        self.behave, self.tls = behave, tls
        self.listener = socket.create_server((host, 0))
        self.url_base = f"{'wss' if tls else 'ws'}://{host}:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []  # each connection's request head, as sent
        self.messages: list[bytes] = []  # data frames clients sent (unmasked)
        self.close_codes: list[int] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "") -> str:
        return self.url_base + path

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.tls:
                connection = self.tls.wrap_socket(connection, server_side=True)
            with connection, connection.makefile("rwb", buffering=0) as stream:
                self.behave(self, stream)
        except (OSError, ValueError):
            pass  # the client went away, or refused our certificate

    def read_request(self, stream: socket.SocketIO) -> dict[str, str]:
        head = b""
        while (line := stream.readline()) not in (b"\r\n", b""):
            head += line
        self.requests.append(head)
        lines = head.decode("latin-1").split("\r\n")
        return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def redirect(location: str, code: int = 301) -> Callable[[Peer, socket.SocketIO], None]:
    def behave(peer: Peer, stream: socket.SocketIO) -> None:
        peer.read_request(stream)
        stream.write(f"HTTP/1.1 {code} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
    return behave


def websocket_server(send: bytes = b"") -> Callable[[Peer, socket.SocketIO], None]:
    """Accepts the upgrade, writes `send` in one go, then keeps what the client sends until it goes away."""
    def behave(peer: Peer, stream: socket.SocketIO) -> None:
        key = peer.read_request(stream).get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        stream.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n" + send)
        while len(head := exactly(stream, 2)) == 2:
            length = head[1] & 0x7F
            if length >= 126:
                length = int.from_bytes(exactly(stream, 2 if length == 126 else 8), "big")
            mask = exactly(stream, 4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(exactly(stream, length)))
            if head[0] & 0x0F == OP_CLOSE:
                peer.close_codes.append(int.from_bytes(payload[:2], "big"))
                return
            peer.messages.append(payload)
    return behave


def exactly(stream: socket.SocketIO, n: int) -> bytes:
    """n bytes, fewer only at the end of the stream (a raw socket stream reads what has arrived)."""
    data = b""
    while len(data) < n and (chunk := stream.read(n - len(data))):
        data += chunk
    return data


def trickle(head: bytes, interval_s: float, http: bool = True) -> Callable[[Peer, socket.SocketIO], None]:
    """Reads the request (or the TLS ClientHello), writes `head`, then one byte every interval_s."""
    def behave(peer: Peer, stream: socket.SocketIO) -> None:
        if http:
            peer.read_request(stream)
        else:
            stream.read(65536)  # the ClientHello, as it arrived
        stream.write(head)
        while not peer.stopped.wait(interval_s):  # the trickle's pace, not synchronization
            stream.write(b"x")
    return behave


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(host: str, behave: Callable[[Peer, socket.SocketIO], None], tls: ssl.SSLContext | None = None) -> Peer:
        made.append(Peer(host, behave, tls))
        return made[-1]

    yield make
    for peer in made:
        peer.stop()


@pytest.fixture
def feeds() -> Iterator[Callable[..., tuple[pykka.ActorRef, list]]]:
    """start(**FeedConfig keys) → (feed actor, rows its buffer got); stops everything after."""
    refs: list[pykka.ActorRef] = []

    def start(**keys) -> tuple[pykka.ActorRef, list]:
        sinks, rows = recording_sinks(refs)
        config = FeedConfig(**{"name": "hostile", "reconnect_min_s": 0.05, "reconnect_max_s": 0.2,
                               "backfill": False, **keys})
        refs.append(FeedActor.start(None, config, sinks, FeedMemory(), "/nonexistent/dead"))
        return refs[-1], rows

    yield start
    for ref in reversed(refs):
        ref.stop()


def polygon_feed(url: str, **extra) -> dict:
    return dict(exchange="polygon", url=url, symbols=("AAPL",), options=PolygonOptions(api_key=KEY), **extra)


def refused(feed) -> dict:
    """The feed's status once a connect failed on a refused redirect."""
    def seen() -> dict | None:
        now = status(feed)
        return now if "RedirectRefused" in now["last_error"] else None

    return poll(seen, what="the redirect refused")


def logged(caplog, name: str) -> list[dict]:
    return [getattr(record, "fields", {}) for record in caplog.records if record.getMessage() == name]


# --- redirects

@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow_redirects"])
def test_a_redirect_to_another_host_is_refused_and_the_key_never_reaches_it(peers, feeds, caplog, follow):
    other = peers(OTHER_HOST, websocket_server())
    location = other.url("/stocks")
    front = peers("127.0.0.1", redirect(location))
    with caplog.at_level(logging.WARNING, logger="marketfeed.feed"):
        feed, _ = feeds(**polygon_feed(front.url("/stocks"), follow_redirects=follow))
        seen = refused(feed)
    assert location in seen["last_error"] and seen["connect_failures"] >= 1 and seen["state"] != "connected"
    assert "follow_redirects is off" in seen["last_error"] if not follow else "is not the feed's" in seen["last_error"]
    assert front.connections >= 1 and all(KEY.encode() not in request for request in front.requests)
    assert other.connections == 0 and other.messages == []  # not even a TCP connection, let alone the auth
    assert any(location in fields.get("reason", "") for fields in logged(caplog, "feed_disconnected"))


@pytest.fixture
def tls_server(private_ca) -> ssl.SSLContext:  # noqa: F811 - the fixture imported above
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(private_ca["cert"], private_ca["key"])
    return context


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow_redirects"])
def test_a_redirect_from_wss_down_to_ws_is_refused_and_nothing_goes_out_in_clear(peers, feeds, tls_server,
                                                                                 private_ca, follow):  # noqa: F811
    clear = peers("127.0.0.1", websocket_server())  # the feed's own host: only the downgrade is wrong
    location = clear.url("/stocks")
    front = peers("127.0.0.1", redirect(location), tls=tls_server)
    feed, _ = feeds(**polygon_feed(front.url("/stocks"), follow_redirects=follow, ca_file=str(private_ca["ca"])))
    seen = refused(feed)
    assert location in seen["last_error"] and seen["connect_failures"] >= 1
    assert ("follow_redirects is off" if not follow else "wss:// to ws://") in seen["last_error"]
    assert front.connections >= 1 and clear.connections == 0 and clear.messages == []


def test_a_redirect_on_the_feeds_own_host_is_followed_when_configured_and_logged_with_its_url(peers, feeds, caplog):
    with Simulator(["polygon"], {"polygon": ["AAPL"]}, rate=100, count=20, seed=3, clock_paused=True,
                   twin_options={"polygon": {"api_key": KEY}}) as sim:
        target = sim.url("polygon") + "/stocks"
        front = peers("127.0.0.1", redirect(target, 308))
        with caplog.at_level(logging.INFO, logger="marketfeed.feed"):
            feed, rows = feeds(**polygon_feed(front.url("/stocks"), follow_redirects=True))
            (connection,) = sim.wait_connections("polygon", 1)
            poll(lambda: connection.session.symbols, what="the feed subscribed through the redirect")
            sim.start_clock()
            sim.wait_emitted(20)
            poll(lambda: len(rows) >= 20, what="the 20 trades through the redirect")
        session = connection.session
        assert isinstance(session, PolygonSession) and session.authenticated  # the key went to the configured host
        assert status(feed)["state"] == "connected"
    assert [f["to"] for f in logged(caplog, "ws_redirect_followed")] == [target]
    assert [f["url"] for f in logged(caplog, "feed_connected")] == [target]


def test_redirects_are_followed_only_within_the_feeds_hosts_and_never_to_a_weaker_scheme():
    follow = ReaderLimits(1, 0.0, 1 << 20, 1 << 20, follow_redirects=True, hosts=frozenset({"a.example", "b.example"}))
    assert redirect_target("wss://a.example/x", 301, "/y?z=1", follow) == "wss://a.example/y?z=1"
    assert redirect_target("wss://a.example/x", 302, "wss://b.example:9443/x", follow) == "wss://b.example:9443/x"
    assert redirect_target("ws://a.example/x", 307, "wss://a.example/x", follow) == "wss://a.example/x"  # stronger
    for location, why in [("ws://a.example/x", "wss:// to ws://"), ("wss://evil.example/x", "not the feed's"),
                          ("//evil.example/x", "not the feed's"), ("https://a.example/x", "not a ws:// or wss://"),
                          (None, "without a Location")]:
        with pytest.raises(RedirectRefused, match=why):
            redirect_target("wss://a.example/x", 301, location, follow)
    with pytest.raises(RedirectRefused, match="follow_redirects is off"):
        redirect_target("wss://a.example/x", 301, "/y", ReaderLimits(1, 0.0, 1 << 20, 1 << 20))


def test_the_feeds_hosts_are_its_url_and_alt_urls():
    config = FeedConfig(name="f", exchange="binance", url="wss://A.example:9443", symbols=("BTCUSDT",),
                        alt_urls=("wss://b.example",), follow_redirects=True)
    limits = ReaderLimits.of(config)
    assert limits.follow_redirects and limits.hosts == {"a.example", "b.example"}


# --- handshake deadline

DEADLINE_S = 3.0  # feeds.handshake_timeout_s of these tests (default HANDSHAKE_S, 10 s): the same proof, sooner

@pytest.mark.parametrize("scheme, behave", [
    ("ws", trickle(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: ", 1.0)),  # the upgrade answer trickles
    ("wss", trickle(b"\x16\x03\x03\x40\x00", 1.0, http=False)),  # a 16 kB TLS record that trickles
], ids=["upgrade", "tls"])
def test_a_handshake_trickled_byte_by_byte_ends_at_the_deadline(peers, feeds, scheme, behave):
    # A byte a second: no single read waits long enough for a per-read timeout, only a total deadline ends it.
    peer = peers("127.0.0.1", behave)
    url = peer.url().replace("ws://", f"{scheme}://")
    started = time.monotonic()
    feed, _ = feeds(exchange="binance", url=url, symbols=("BTCUSDT",), handshake_timeout_s=DEADLINE_S)
    error = poll(lambda: status(feed)["last_error"] or None, timeout=DEADLINE_S + 10, what="the connect ended")
    elapsed = time.monotonic() - started
    assert error == f"HandshakeTimeout: no WebSocket handshake within {DEADLINE_S:g} s (connect, TLS, upgrade)"
    assert DEADLINE_S <= elapsed < DEADLINE_S + 2
    assert ReaderLimits.of(FeedConfig("f", "binance", url, ("BTCUSDT",))).handshake_s == HANDSHAKE_S  # the default


# --- a refused frame drops only itself

def trade(trade_id: int) -> bytes:
    event = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": trade_id, "p": "100.5", "q": "0.5",
             "T": int(time.time() * 1000), "m": False}
    return websocket.ABNF(1, 0, 0, 0, OP_TEXT, 0, orjson.dumps({"stream": "btcusdt@trade", "data": event})).format()


@pytest.mark.parametrize("bad, code, error", [
    (websocket.ABNF(1, 0, 0, 0, OP_TEXT, 1, b"masked").format(), 1002, "ProtocolViolation"),
    (websocket.ABNF(1, 1, 0, 0, OP_TEXT, 0, b"rsv1").format(), 1002, "ProtocolViolation"),
    (websocket.ABNF(1, 0, 0, 0, OP_TEXT, 0, b"x" * 5000).format(), 1009, "MessageTooBig"),
], ids=["masked", "reserved_bits", "oversize"])
def test_good_frames_before_a_refused_one_in_the_same_chunk_are_delivered(peers, feeds, bad, code, error):
    peer = peers("127.0.0.1", websocket_server(trade(1) + trade(2) + bad + trade(3)))
    feed, rows = feeds(exchange="binance", url=peer.url(), symbols=("BTCUSDT",), max_frame_bytes=4096)
    poll(lambda: peer.close_codes, what="the refusal's close frame")
    poll(lambda: len(rows) >= 2, what="the two good frames")
    assert peer.close_codes[0] == code and error in status(feed)["last_error"]
    assert {row.trade_id for row in rows} == {1, 2}  # the frame after the refused one is never read


def test_a_bad_entry_in_a_kraken_trade_array_drops_only_itself(feeds, caplog):
    now = time.time()

    def entry(trade_id: int, **bad) -> dict:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".123456Z"
        return {"symbol": "BTC/USD", "side": "buy", "price": 64000.5, "qty": 0.25, "ord_type": "market",
                "trade_id": trade_id, "timestamp": stamp, **bad}

    with Simulator(["kraken"], {"kraken": ["BTC/USD"]}, rate=10, count=1, seed=3, clock_paused=True) as sim:
        feed, rows = feeds(exchange="kraken", url=sim.url("kraken"), symbols=("BTC/USD",))
        (connection,) = sim.wait_connections("kraken", 1)
        poll(lambda: status(feed)["state"] == "connected", what="subscribed")
        data = [entry(101), entry(102, price="64000.5"), entry(103), entry(104)]
        with caplog.at_level(logging.WARNING, logger="marketfeed.feed"):
            connection.send([orjson.dumps({"channel": "trade", "type": "update", "data": data})])
            poll(lambda: len(rows) >= 3, what="the three good trades")
            assert poll(lambda: status(feed)["malformed"] or None, what="the bad entry counted") == 1
    assert sorted(row.trade_id for row in rows) == [101, 103, 104]
    (sample,) = [fields["sample"] for fields in logged(caplog, "malformed_frame")]
    assert orjson.loads(sample) == data[1]  # the sample is the bad entry itself


def test_a_bad_event_in_a_polygon_array_drops_only_itself_and_is_the_sample():
    protocol = PolygonProtocol(FeedConfig(name="p", exchange="polygon", url="ws://unused", symbols=("MSFT",),
                                          options=PolygonOptions(api_key=KEY)))
    good = {"ev": "T", "sym": "MSFT", "x": 4, "i": "1", "p": 114.125, "s": 100, "t": 1536036818784}
    bad = {**good, "i": "2", "p": "oops"}
    out = ParsedRows()
    with pytest.raises(MalformedFrame, match="bad trade event") as refused:
        protocol.parse(orjson.dumps([good, bad, {**good, "i": "3"}, {"ev": "Q"}]), 0, out)
    assert [t.trade_id for t in out.trades] == [stock_trade_id(4, None, i) for i in ("1", "3")]
    assert orjson.loads(refused.value.sample) == bad
