"""Feed actor against the simulator: a paused sink stops the reading, and nothing is lost when it clears."""
import pykka
import pytest

from actors.buffer import RowBatch, SinkDirectory
from actors.feed import FeedActor, FeedMemory
from config.schema import FeedConfig
from sim import Simulator
from supervision.supervisor import GetStatus

SYMBOLS = ("BTCUSDT", "ETHUSDT")


class CollectingSink(pykka.ThreadingActor):
    """Stands in for a buffer actor: keeps every row it is told."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_receive(self, message):
        if isinstance(message, RowBatch):
            self.rows.extend(message.rows)
        return list(self.rows)


@pytest.fixture
def sim():
    with Simulator(["binance"], list(SYMBOLS), rate=200, count=900, seed=11, clock_paused=True) as simulator:
        yield simulator


def test_a_paused_sink_stops_the_reading_and_the_hole_is_backfilled(sim, tmp_path):
    sinks, sink = SinkDirectory(), CollectingSink.start()
    sinks.register("trades", sink)
    feed = FeedConfig(name="b", exchange="binance", url=sim.url("binance"), rest_url=sim.rest_url("binance"),
                      symbols=SYMBOLS, reconnect_min_s=0.05)
    actor = FeedActor.start(None, feed, sinks, FeedMemory(), str(tmp_path / "deadletter"))
    try:
        sim.wait_connections("binance", 1)
        sim.start_clock()
        sim.wait_emitted(200)
        sinks.set_paused("trades", True)  # the spool filled up under on_full = "pause_feeds"
        sim.wait_until(lambda: actor.ask(GetStatus(), timeout=5)["state"] == "paused", 10, "paused")
        sim.wait_until(lambda: not sim.connections("binance"), 10, "the socket closed")
        sim.wait_emitted(500)
        assert not sim.connections("binance")  # still not reading
        sinks.set_paused("trades", False)
        sim.wait_connections("binance", 1)
        sim.wait_emitted(900)

        def stored():
            rows = sink.ask(None, timeout=5)
            return {s: [r.trade_id for r in rows if r.symbol == s] for s in SYMBOLS}

        expected = {s: sim.truth("binance", s) for s in SYMBOLS}
        sim.wait_until(lambda: {s: sorted(ids) for s, ids in stored().items()} == expected, 20, "every id")
        assert all(len(ids) == len(set(ids)) for ids in stored().values())  # none doubled
    finally:
        actor.stop()
        sink.stop()
