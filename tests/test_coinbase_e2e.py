"""End to end: Coinbase Exchange twin with faults → `marketfeed run` (a real process) → real QuestDB."""
import pytest

from marketfeed.sim import Simulator
from tests.support.service import ServiceProcess, service_config

PRODUCTS = ["BTC-USD", "ETH-USD"]


def coinbase_feed(sim: Simulator, **extra) -> dict:
    return {"name": "coinbase", "exchange": "coinbase", "url": sim.url("coinbase"),
            "rest_url": sim.rest_url("coinbase"), "symbols": PRODUCTS, "reconnect_min_s": 0.1,
            "stale_after_s": 1.5, **extra}


@pytest.fixture
def service(tmp_path, questdb, table_prefix):
    started = []

    def start(sim: Simulator) -> ServiceProcess:
        process = ServiceProcess.start(tmp_path, service_config(tmp_path, questdb, table_prefix, [coinbase_feed(sim)]))
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def streaming(sim, emitted: int):
    """The service's connection once it subscribed to every product and `emitted` trades each went out."""
    conn = sim.wait_connections("coinbase", 1, timeout=30)[0]
    sim.wait_until(lambda: conn.symbols == set(PRODUCTS), 30, "the matches subscription")
    sim.start_clock()
    sim.wait_emitted(emitted, timeout=30)
    return conn


def assert_ids_equal_truth(questdb, sim, table):
    for product in PRODUCTS:
        truth = sim.truth("coinbase", product)
        stored = questdb.wait_trade_ids(table, truth, product, timeout=60)
        assert stored == truth, f"{product}: {len(stored)} stored vs {len(truth)} happened"


def test_drops_stalls_duplicates_skips_and_garbage_leave_exactly_the_ground_truth(service, questdb, table_prefix):
    with Simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=200, count=800, seed=11, clock_paused=True) as sim:
        proc = service(sim)
        first = streaming(sim, 100)
        first.duplicate_next(10)
        first.skip_next(7)  # lost in transit: the next match of the product reveals the hole by trade_id
        first.send_garbage(3)
        malformed = proc.wait_event("malformed_frame")
        sim.wait_until(lambda: sum(e["count"] for e in proc.events("malformed_frame")) >= 3, 30, "3 malformed")
        assert sum(e["count"] for e in proc.events("malformed_frame")) == 3 and malformed["reason"]
        sim.wait_emitted(250, timeout=30)
        assert not first.closed and not proc.events("child_restarted")  # garbage costs neither socket nor actor
        first.drop()  # cut mid-stream; the new connection's last_match reveals the outage
        second = next_connection(sim, first)
        sim.wait_emitted(450, timeout=30)
        second.stall()  # socket open, nothing sent (heartbeats neither): the stale watchdog reconnects
        proc.wait_event("feed_stale")
        next_connection(sim, second)
        sim.wait_emitted(800, timeout=30)
        assert_ids_equal_truth(questdb, sim, f"{table_prefix}trades")
        assert len(first.counters.skipped_ids) == 7 and first.counters.duplicates_sent == 10
        assert proc.events("gap_detected") and not proc.events("child_restarted")
        assert proc.stop() == 0


def test_heartbeats_are_not_data_and_a_trailing_gap_is_closed_by_the_reconnect(service, questdb, table_prefix):
    """The last matches are lost and then the market goes quiet: only heartbeats flow. They must not keep
    the feed 'alive'; the stale watchdog reconnects and the new last_match reveals the trailing gap."""
    with Simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=100, count=300, seed=12, clock_paused=True) as sim:
        proc = service(sim)
        conn = streaming(sim, 200)
        for product in PRODUCTS:
            conn.skip_next(1000, product)  # every match from here to the end of the run
        frames_before_silence = conn.counters.frames_sent  # from here on every match is lost
        stale = proc.wait_event("feed_stale")
        assert stale["silent_s"] >= 1.5
        assert conn.counters.frames_sent > frames_before_silence  # heartbeats kept coming all along
        sim.wait_emitted(300, timeout=30)
        lost = set(conn.counters.skipped_ids)
        assert {sim.truth("coinbase", p)[-1] for p in PRODUCTS} <= lost  # the gap trails: no later match shows it
        next_connection(sim, conn)
        assert_ids_equal_truth(questdb, sim, f"{table_prefix}trades")
        for product in PRODUCTS:
            truth = sim.truth("coinbase", product)
            missing = [i for i in truth if i in lost]
            # found by the new connection's last_match (the final trade), not by a heartbeat
            gap = proc.wait_event("gap_detected", where=lambda e, p=product: e["symbol"] == p and e.get("last_id"))
            assert (gap["first_id"], gap["last_id"]) == (missing[0], missing[-2])
        assert proc.stop() == 0


def next_connection(sim: Simulator, previous):
    sim.wait_until(lambda: any(c.id > previous.id for c in sim.connections("coinbase")), 30, "a reconnect")
    return next(c for c in sim.connections("coinbase") if c.id > previous.id)
