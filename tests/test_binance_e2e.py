"""End to end: simulator → `marketfeed run` (a real process) → real QuestDB."""
import signal
import time
from functools import partial

import orjson
import pytest

from marketfeed.cli.service import Service
from marketfeed.config.loader import from_dict
from marketfeed.supervision.supervisor import GetChildren, GetStatus
from tests.support.service import service_config, sim_feed
from tests.support.truth import assert_trade_ids, truth

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
binance_feed = partial(sim_feed, "binance", symbols=SYMBOLS, name="binance-spot")


@pytest.fixture
def sim(service):
    return service.simulator(["binance"], SYMBOLS, rate=200, count=600, seed=7, clock_paused=True)


def test_simulated_trades_land_exactly_once(sim, service, questdb, table_prefix):
    proc = service([binance_feed(sim)])
    sim.wait_connections("binance", 1, timeout=30)
    sim.start_clock()
    sim.wait_emitted(600, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", SYMBOLS))
    assert proc.stop() == 0


def test_cut_connection_is_restored_and_the_stream_resumes(sim, service, questdb, table_prefix):
    proc = service([binance_feed(sim, reconnect_min_s=0.1)])
    first = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(150, timeout=30)
    first.drop()  # the TCP connection is cut mid-stream, no close frame
    sim.wait_until(lambda: any(c is not first for c in sim.connections("binance")), 30, "a reconnect")
    proc.wait_event("feed_connected", after=1)
    sim.wait_emitted(600, timeout=30)
    # Trades sent while disconnected come back over REST backfill; everything after the reconnect streams.
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", SYMBOLS))
    assert proc.events("feed_disconnected")


def test_crashed_feed_actor_is_restarted_by_its_supervisor(sim, questdb, table_prefix, tmp_path):
    """In-process tree: the feed actor gets a message it cannot handle, crashes, and is restarted."""
    config = from_dict(service_config(tmp_path, questdb, table_prefix, [binance_feed(sim)]))
    service = Service(config)
    service.start()
    try:
        sim.wait_connections("binance", 1, timeout=30)
        sim.start_clock()
        sim.wait_emitted(150, timeout=30)
        feeds = child(service.root, "feeds")
        feed = child(feeds, "feed-binance-spot")
        feed.tell("an unknown message")  # the handler raises: an abnormal exit
        sim.wait_until(lambda: child(feeds, "feed-binance-spot") not in (None, feed), 30, "a restart")
        status = feeds.ask(GetStatus(), timeout=5)["children"]["feed-binance-spot"]
        assert status["restarts"] == 1 and "TypeError" in status["last_failure"]
        sim.wait_emitted(600, timeout=30)
        # every id sent after the restart lands (and the outage is backfilled: the tracker outlives the actor)
        assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", SYMBOLS))
    finally:
        service.shutdown()


def child(supervisor, child_id):
    return next((ref for cid, ref, _ in supervisor.ask(GetChildren(), timeout=5) if cid == child_id), None)


def test_sigusr1_yields_a_fresh_health_report_within_a_second(sim, service, tmp_path):
    proc = service([binance_feed(sim, name="binance-a"), binance_feed(sim, name="binance-b")])
    sim.wait_connections("binance", 2, timeout=30)
    sim.start_clock()
    proc.wait_event("feed_connected", where=lambda e: e["feed"] == "binance-b")
    status_file = tmp_path / "status.json"
    sent_at = time.time()
    proc.signal(signal.SIGUSR1)
    line = proc.wait_event("health_report", timeout=1.0, where=lambda e: e["reason"] == "signal")
    assert time.time() - sent_at < 1.0
    report = orjson.loads(status_file.read_bytes())
    assert report["generated_at"] >= sent_at
    for r in (line, report):
        assert set(r["feeds"]) == {"binance-a", "binance-b"}  # the configured names
        assert set(r["buffers"]) == {"trades", "candles"}  # by table, as the table metric label
        for feed in r["feeds"].values():
            assert {"state", "messages", "last_message_age_s", "reconnects"} <= set(feed)
        assert {"buffered_rows", "rows_written", "last_flush_age_s", "failures"} <= set(r["buffers"]["trades"])
    assert proc.stop() == 0
