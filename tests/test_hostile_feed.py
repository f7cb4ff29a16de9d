"""A feed actor against a hostile exchange (the simulator): invalid rows never reach the buffer, oversized
frames and JSON are refused, a flood is flagged, an oversized REST answer fails its backfill, and TLS
is verified against the configured CA only.

No QuestDB here: the buffer is a stand-in actor that records what it would have written.
"""
from __future__ import annotations

import dataclasses
import ssl
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pykka
import pytest
from prometheus_client import REGISTRY

from marketfeed.actors.backfill import Backfiller
from marketfeed.actors.buffer import RowBatch, SinkDirectory
from marketfeed.actors.feed import FeedActor
from marketfeed.actors.feed_messages import BackfillDone
from marketfeed.actors.rest_client import RestLimits
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import Gap
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.sim import Simulator
from marketfeed.storage.deadletter import read as read_dead_letters
from marketfeed.supervision.supervisor import GetStatus
from tests.support.polling import poll as wait_for

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


class Recorder(pykka.ThreadingActor):
    """Stands in for a buffer actor: keeps every row it is handed."""

    def __init__(self, rows: list):
        super().__init__()
        self.rows = rows

    def on_receive(self, message):
        if isinstance(message, RowBatch):
            self.rows.extend(message.rows)


def recording_sinks(refs: list[pykka.ActorRef]) -> tuple[SinkDirectory, list]:
    """Sinks whose every table is one Recorder (added to refs, for stopping), and the rows it gets."""
    rows: list = []
    sinks = SinkDirectory()
    recorder = Recorder.start(rows)
    refs.append(recorder)
    for table in ("trades", "candles"):
        sinks.register(table, recorder)
    return sinks, rows




def feed_config(sim: Simulator, **extra) -> FeedConfig:
    return FeedConfig(name="hostile", exchange="binance", url=sim.url("binance"), rest_url=sim.rest_url("binance"),
                      symbols=tuple(SYMBOLS), reconnect_min_s=0.05, reconnect_max_s=0.2, **extra)


@pytest.fixture
def running(tmp_path):
    """start(sim, **feed keys) → (actor ref, rows the buffer got, dead-letter dir); stops everything after."""
    refs: list[pykka.ActorRef] = []

    def start(sim: Simulator, **extra):
        sinks, rows = recording_sinks(refs)
        feed = FeedActor.start(None, feed_config(sim, **extra), sinks, FeedMemory(), str(tmp_path / "dead"))
        refs.append(feed)
        return feed, rows, tmp_path / "dead"

    yield start
    for ref in reversed(refs):
        ref.stop()


def status(feed) -> dict:
    return feed.ask(GetStatus(), timeout=5)


def trade_frame(**fields) -> list[bytes]:
    event = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "100.5", "q": "0.5",
             "T": int(time.time() * 1000), "m": False, **fields}
    return [orjson.dumps({"stream": f"{str(event['s']).lower()}@trade", "data": event})]


def test_invalid_rows_are_rejected_counted_sampled_and_never_reach_the_buffer(running):
    with Simulator(["binance"], SYMBOLS, rate=50, count=20, seed=3, clock_paused=True) as sim:
        feed, rows, dead = running(sim)
        (conn,) = sim.wait_connections("binance", 1)
        bad: dict[str, dict[str, object]] = {
            "bad_price": dict(t=10, p="NaN"), "bad_size": dict(t=11, q="0"),
            "future_timestamp": dict(t=12, T=int(time.time() * 1000) + 3_600_000),
            "timestamp_before_2009": dict(t=13, T=1_000_000_000_000), "unknown_symbol": dict(t=14, s="DOGEUSDT"),
            "oversized_string": dict(t=15, s="B" * 500), "bad_trade_id": dict(t=2**63),
        }
        for fields in bad.values():
            conn.send(trade_frame(**fields))
        conn.send(trade_frame(t=16, p="0.0"))  # a second bad price: counted, not sampled again
        sim.start_clock()
        sim.wait_emitted(20)
        wait_for(lambda: len({r.trade_id for r in rows}) >= 40, what="the simulator's 40 trades")
        rejected = wait_for(lambda: status(feed)["rejected"] if sum(status(feed)["rejected"].values()) == 8 else None)

        assert rejected == {**dict.fromkeys(bad, 1), "bad_price": 2}
        assert all(r.symbol in SYMBOLS and 0 < r.price < float("inf") and r.amount > 0 for r in rows)
        assert {r.trade_id for r in rows} == set(sim.truth("binance", "BTCUSDT") + sim.truth("binance", "ETHUSDT"))
        assert (REGISTRY.get_sample_value("marketfeed_rows_rejected_total",
                                          {"feed": "hostile", "reason": "bad_price"}) or 0) >= 2
        letters = read_dead_letters(dead / "trades.jsonl")
        assert sorted(letter["error"].split(": ")[1].split(" ")[0] for letter in letters) == sorted(bad)
        long_symbol = next(letter for letter in letters if "oversized_string" in letter["error"])
        assert long_symbol["row"]["symbol"] == "B" * 200  # the sample is cut, the file stays small


def test_a_frame_above_max_frame_bytes_closes_the_connection_with_1009(running):
    with Simulator(["binance"], SYMBOLS, rate=50, seed=3) as sim:
        feed, rows, _ = running(sim, max_frame_bytes=4096)
        (conn,) = sim.wait_connections("binance", 1)
        conn.send(trade_frame(p="1" * 5000))
        wait_for(lambda: conn.closed, what="the oversized frame's connection closed")
        assert conn.close_code == 1009
        wait_for(lambda: "MessageTooBig" in status(feed)["last_error"], what="the reason in the status")
        sim.wait_connections("binance", 1)  # it reconnects and the stream goes on
        count = len(rows)
        wait_for(lambda: len(rows) > count, what="rows after the reconnect")


def test_json_above_max_json_bytes_is_a_malformed_frame_and_the_connection_lives(running):
    with Simulator(["binance"], SYMBOLS, rate=50, seed=3) as sim:
        feed, rows, _ = running(sim, max_json_bytes=1024)
        (conn,) = sim.wait_connections("binance", 1)
        conn.send(trade_frame(p="1" * 2000))
        wait_for(lambda: status(feed)["malformed"] == 1, what="one malformed frame")
        count = len(rows)
        wait_for(lambda: len(rows) > count, what="rows after it")
        assert not conn.closed and status(feed)["reconnects"] == 0


def test_a_message_rate_above_the_ceiling_flags_the_feed(running):
    with Simulator(["binance"], SYMBOLS, rate=200, seed=3) as sim:
        feed, _, _ = running(sim, max_messages_per_s=50)
        flagged = wait_for(lambda: status(feed)["rate_exceeded"] and status(feed), timeout=5, what="the flag")
        assert flagged["messages_per_s"] > 50
        assert REGISTRY.get_sample_value("marketfeed_feed_rate_exceeded", {"feed": "hostile"}) == 1


def backfill(sim: Simulator, **extra) -> BackfillDone:
    feed = feed_config(sim, **extra)
    done = threading.Event()
    told = []

    class Inbox:
        def tell(self, message):
            told.append(message)
            if isinstance(message, BackfillDone):
                done.set()

    allowed = threading.Event()
    allowed.set()
    protocol = registry.exchange("binance").protocol(feed)
    limits = dataclasses.replace(RestLimits.of(feed), attempts=1)
    backfiller = Backfiller(feed.name, protocol, Inbox(), allowed, limits)
    backfiller.start()
    backfiller.gaps.put(Gap("BTCUSDT", sim.truth("binance", "BTCUSDT")[0], sim.truth("binance", "BTCUSDT")[-1]))
    assert done.wait(10)
    backfiller.stop()
    return next(m for m in told if isinstance(m, BackfillDone))


def test_a_rest_answer_above_max_backfill_bytes_fails_the_backfill():
    with Simulator(["binance"], SYMBOLS, rate=1000, count=200, seed=3) as sim:
        sim.wait_emitted(200)
        assert backfill(sim, max_backfill_bytes=1 << 20).rows == 200  # the whole page fits: 200 rows
        refused = backfill(sim, max_backfill_bytes=2048)
        assert refused.rows == 0 and "max_backfill_bytes" in refused.error


# --- TLS: a simulator with a certificate from a private CA

@pytest.fixture(scope="module")
def private_ca(tmp_path_factory) -> dict[str, Path]:
    """A self-signed CA and a server certificate it signed for 127.0.0.1 (openssl CLI)."""
    d = tmp_path_factory.mktemp("ca")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=marketfeed test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


@pytest.fixture
def tls_sim(private_ca):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(private_ca["cert"], private_ca["key"])
    with Simulator(["binance"], SYMBOLS, rate=100, count=100, seed=3, ssl_context=context,
                   clock_paused=True) as sim:
        yield sim


def test_wss_without_the_ca_is_refused(running, tls_sim):
    assert tls_sim.url("binance").startswith("wss://")
    feed, rows, _ = running(tls_sim)
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in status(feed)["last_error"], what="a verification failure")
    assert rows == [] and tls_sim.connections("binance") == []


def test_wss_with_the_ca_is_accepted_and_delivers_every_trade(running, tls_sim, private_ca):
    feed, rows, _ = running(tls_sim, ca_file=str(private_ca["ca"]))
    tls_sim.wait_connections("binance", 1)
    tls_sim.start_clock()
    tls_sim.wait_emitted(100)
    wait_for(lambda: len({r.trade_id for r in rows}) == 200, what="every trade over TLS")
    assert status(feed)["state"] == "connected"


def test_https_backfill_verifies_against_the_ca(tls_sim, private_ca):
    tls_sim.start_clock()
    tls_sim.wait_emitted(100)
    refused = backfill(tls_sim)
    assert refused.rows == 0 and "CERTIFICATE_VERIFY_FAILED" in refused.error
    assert backfill(tls_sim, ca_file=str(private_ca["ca"])).rows == 100

