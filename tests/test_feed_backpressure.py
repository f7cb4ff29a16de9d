"""Feed actor against the simulator: a paused sink stops the reading, and nothing is lost when it clears."""
import pykka
import pytest

from marketfeed.actors.buffer import RowBatch, SinkDirectory
from marketfeed.actors.feed import FeedActor
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.sim import Simulator
from marketfeed.supervision.supervisor import GetStatus

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


@pytest.fixture
def feed(sim, tmp_path):
    """start(**feed settings) → (sink directory, collecting sink, feed actor); both actors stop after the test."""
    started: list[pykka.ActorRef] = []

    def start(**settings):
        sinks, sink = SinkDirectory(), CollectingSink.start()
        sinks.register("trades", sink)
        config = FeedConfig(name="b", exchange="binance", url=sim.url("binance"), rest_url=sim.rest_url("binance"),
                            symbols=SYMBOLS, **settings)
        actor = FeedActor.start(None, config, sinks, FeedMemory(), str(tmp_path / "deadletter"))
        started.extend((actor, sink))
        return sinks, sink, actor

    yield start
    for ref in started:
        ref.stop()


def test_a_paused_sink_stops_the_reading_and_the_hole_is_backfilled(sim, feed):
    sinks, sink, actor = feed(reconnect_min_s=0.05)
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


def test_a_writer_behind_stops_the_reading_with_the_connection_open(sim, feed):
    """Flow control: no pause, no reconnect, no backfill; the rows wait in the socket until the writer catches up."""
    sinks, sink, actor = feed(stale_after_s=0.5)
    sim.wait_connections("binance", 1)
    sim.start_clock()
    sim.wait_emitted(100)
    sinks.set_behind("trades", True)
    handed_on = len(sink.ask(None, timeout=5))
    sim.wait_emitted(600)  # 2 s of trades, four times stale_after_s
    assert len(sink.ask(None, timeout=5)) < handed_on + 100  # of 1200 sent: at most a read already under way
    assert len(sim.connections("binance")) == 1
    sinks.set_behind("trades", False)
    sim.wait_emitted(900)
    expected = sorted(sim.truth("binance", "BTCUSDT") + sim.truth("binance", "ETHUSDT"))
    sim.wait_until(lambda: sorted(r.trade_id for r in sink.ask(None, timeout=5)) == expected, 20, "every id once")
    status = actor.ask(GetStatus(), timeout=5)
    assert (status["reconnects"], status["backfilled"], status["state"]) == (0, 0, "connected")
