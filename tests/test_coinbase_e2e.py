"""End to end: Coinbase Exchange twin with faults → `marketfeed run` (a real process) → real QuestDB."""
from functools import partial

from marketfeed.sim import Simulator
from tests.support.service import sim_feed
from tests.support.truth import assert_trade_ids, truth

PRODUCTS = ["BTC-USD", "ETH-USD"]
coinbase_feed = partial(sim_feed, "coinbase", symbols=PRODUCTS, reconnect_min_s=0.1, stale_after_s=1.5)


def streaming(sim, emitted: int):
    """The service's connection once it subscribed to every product and `emitted` trades each went out."""
    conn = sim.wait_connections("coinbase", 1, timeout=30)[0]
    sim.wait_until(lambda: conn.symbols == set(PRODUCTS), 30, "the matches subscription")
    sim.start_clock()
    sim.wait_emitted(emitted, timeout=30)
    return conn


def test_drops_stalls_duplicates_skips_and_garbage_leave_exactly_the_ground_truth(service, questdb, table_prefix):
    sim = service.simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=200, count=800, seed=11, clock_paused=True)
    proc = service([coinbase_feed(sim)])
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
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "coinbase", PRODUCTS))
    assert len(first.counters.skipped_ids) == 7 and first.counters.duplicates_sent == 10
    assert proc.events("gap_detected") and not proc.events("child_restarted")
    assert proc.stop() == 0


def test_heartbeats_are_not_data_and_a_trailing_gap_is_closed_by_the_reconnect(service, questdb, table_prefix):
    """The last matches are lost and then the market goes quiet: only heartbeats flow. They must not keep
    the feed 'alive'; the stale watchdog reconnects and the new last_match reveals the trailing gap."""
    sim = service.simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=100, count=300, seed=12, clock_paused=True)
    proc = service([coinbase_feed(sim)])
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
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "coinbase", PRODUCTS))
    for product in PRODUCTS:
        missing = [i for i in sim.truth("coinbase", product) if i in lost]
        # found by the new connection's last_match (the final trade), not by a heartbeat
        gap = proc.wait_event("gap_detected", where=lambda e, p=product: e["symbol"] == p and e.get("last_id"))
        assert (gap["first_id"], gap["last_id"]) == (missing[0], missing[-2])
    assert proc.stop() == 0


def next_connection(sim: Simulator, previous):
    sim.wait_until(lambda: any(c.id > previous.id for c in sim.connections("coinbase")), 30, "a reconnect")
    return next(c for c in sim.connections("coinbase") if c.id > previous.id)
