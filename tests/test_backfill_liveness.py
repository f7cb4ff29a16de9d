"""A backfill thread that dies anyway (a BaseException, which the page boundary does not catch) is not left
dead: the feed actor's tick sees it, the feed exits abnormally, its supervisor restarts it with a new thread,
health reports the restart, and the gap the dead thread held is fetched by its successor.

No QuestDB: the buffer is a stand-in actor that records what it would have written.
"""
from __future__ import annotations

import threading

import pykka
import pytest

from marketfeed.actors.buffer import SinkDirectory
from marketfeed.actors.feed import FeedActor
from marketfeed.config.schema import AlertConfig, FeedConfig
from marketfeed.feeds.base import FeedProtocol, Gap, HttpRequest
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.sim import Simulator
from marketfeed.supervision.supervisor import ChildContext, ChildSpec, GetStatus, Supervisor, start_child
from marketfeed.telemetry.health_rules import AlertRules
from marketfeed.telemetry.report import ChildState
from tests.support.polling import poll
from tests.test_hostile_feed import Recorder

SYMBOL = "BTCUSDT"


class ThreadKilled(BaseException):
    """What no `except Exception` catches (as SystemExit or KeyboardInterrupt in a worker thread)."""


class KillsTheThread:
    """The feed's protocol, except that its first backfill request kills the thread that asks."""

    def __init__(self, protocol: FeedProtocol):
        self.protocol, self.killed = protocol, False

    def __getattr__(self, name: str):
        return getattr(self.protocol, name)

    def backfill_request(self, gap: Gap) -> HttpRequest | None:
        if not self.killed:
            self.killed = True
            raise ThreadKilled
        return self.protocol.backfill_request(gap)


def status(ref) -> dict:
    return ref.ask(GetStatus(), timeout=5)


@pytest.fixture
def tree():
    refs: list[pykka.ActorRef] = []
    yield refs
    for ref in reversed(refs):
        ref.stop(block=True, timeout=10)


def recorded_feed(sim: Simulator, tree: list, name: str, symbols: tuple[str, ...]):
    """A Binance feed of the simulator whose trades go to a recording stand-in buffer: (config, sinks, rows)."""
    rows: list = []
    recorder = Recorder.start(rows)
    tree.append(recorder)
    sinks = SinkDirectory()
    sinks.register("trades", recorder)
    feed = FeedConfig(name=name, exchange="binance", url=sim.url("binance"), rest_url=sim.rest_url("binance"),
                      symbols=symbols, reconnect_min_s=0.05, reconnect_max_s=0.2)
    return feed, sinks, rows


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread is killed on purpose
def test_a_dead_backfill_thread_restarts_the_feed_and_health_reports_it(tree):
    with Simulator(["binance"], [SYMBOL], rate=20, seed=5) as sim:
        feed, sinks, rows = recorded_feed(sim, tree, "liveness", (SYMBOL,))
        memory, contexts = FeedMemory(), []

        def start(ctx: ChildContext) -> pykka.ActorRef:
            contexts.append(ctx)
            return FeedActor.start(ctx, feed, sinks, memory)

        spec = ChildSpec("feeds", lambda ctx: Supervisor.start(ctx, "feeds", [ChildSpec("feed-liveness", start)],
                                                                min_backoff_s=1.5, max_backoff_s=1.5), supervisor=True)
        supervisor, _ = start_child(spec, None)
        tree.append(supervisor)
        first = contexts[0].actor
        assert isinstance(first, FeedActor) and first.backfiller is not None
        (connection,) = sim.wait_connections("binance", 1)
        poll(lambda: rows, what="live trades")

        backfiller = first.backfiller
        backfiller.protocol = KillsTheThread(backfiller.protocol)  # type: ignore[assignment]
        connection.skip_next(5, SYMBOL)  # an id gap: the pipeline opens it, the backfill thread takes it
        poll(lambda: not backfiller.is_alive(), what="the backfill thread dead")

        def feed_child() -> dict:
            return status(supervisor)["children"]["feed-liveness"]

        restarting = poll(lambda: feed_child() if feed_child()["state"] == ChildState.RESTARTING else None,
                          what="the feed restarting")
        assert "backfill thread died" in restarting["last_failure"]
        report = {"supervisors": {"feeds": status(supervisor)}}
        _, alerts = AlertRules(AlertConfig()).evaluate(report, 0.0)  # type: ignore[arg-type]
        assert {(a["cause"], a.get("child"), a.get("error")) for a in alerts} >= {
            ("child_restarting", "liveness", restarting["last_failure"])}  # the feed by its configured name

        poll(lambda: len(contexts) == 2 and isinstance(contexts[1].actor, FeedActor)
             and feed_child()["state"] == ChildState.RUNNING, what="the feed restarted")
        assert feed_child()["restarts"] == 1
        second = contexts[1].actor
        assert isinstance(second, FeedActor)
        assert second.backfiller is not None and second.backfiller is not backfiller and second.backfiller.is_alive()
        # The gap the dead thread held stayed open in the feed's memory: its successor fetches it.
        poll(lambda: not memory.gaps.feed_gaps("liveness"), what="the held gap filled by the new thread")

        def holes() -> set[int]:
            ids = {r.trade_id for r in list(rows)}
            return {i for i in sim.truth("binance", SYMBOL) if min(ids) <= i <= max(ids)} - ids

        # The fetched rows were told to the recorder before the gap closed; on a busy host its inbox may lag.
        poll(lambda: not holes(), what="no hole left in the recorded ids")


class KillsTheListingThread(KillsTheThread):
    """The feed's protocol, except that the first listing read of a listing thread kills that thread."""

    def listing_request(self) -> HttpRequest | None:
        if threading.current_thread().name.startswith("listing-") and not self.killed:
            self.killed = True
            raise ThreadKilled
        return self.protocol.listing_request()


class ListingKilledFeed(FeedActor):
    def __init__(self, *args):
        super().__init__(*args)
        self.protocol = KillsTheListingThread(self.protocol)  # type: ignore[assignment]  # a stand-in


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread is killed on purpose
def test_a_listing_thread_that_dies_without_a_word_is_noticed_and_the_listing_read_again(tree):
    with Simulator(["binance"], [SYMBOL], rate=20, seed=5) as sim:
        feed, sinks, rows = recorded_feed(sim, tree, "listing", ("*",))
        ref, _ = start_child(ChildSpec("feed-listing", lambda ctx: ListingKilledFeed.start(
            ctx, feed, sinks, FeedMemory())), None)
        tree.append(ref)
        first = poll(lambda: status(ref) if status(ref)["universe_error"] else None, 10, "the death noticed")
        assert first["universe_error"] == "the listing thread died" and first["symbols"] == 0
        resolved = poll(lambda: status(ref) if status(ref)["symbols"] else None, 30, "the listing read again")
        assert resolved["symbols"] == 1 and resolved["universe_error"] == ""
        poll(lambda: rows, 30, "trades of the resolved universe")
