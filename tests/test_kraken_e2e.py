"""End to end, Kraken v2: the twin with faults injected, a real `marketfeed run`, a real QuestDB."""
from datetime import UTC
from decimal import Decimal
from functools import partial

from marketfeed.feeds.kraken import OHLC_INTERVALS
from marketfeed.sim import Simulator
from marketfeed.sim.server import Connection
from tests.support.service import Services, sim_feed
from tests.support.truth import assert_trade_ids, truth

SYMBOLS = ["BTC/USD", "ETH/USD"]
MINUTE_MS = 60_000
BOUNDARY_MS = 1_704_067_200_000 + 10 * MINUTE_MS  # 2024-01-01T00:10:00Z
COUNT = 1200  # at 200/s, 5 ms apart: six seconds of market time


def simulator(service: Services, seed: int, count: int = COUNT) -> Simulator:
    """Trades straddle a minute boundary: half in one 1-minute candle, half in the next."""
    return service.simulator(["kraken"], {"kraken": SYMBOLS}, rate=200, count=count, seed=seed,
                             start_ms=BOUNDARY_MS - count // 2 * 5, clock_paused=True)


feed = partial(sim_feed, "kraken", symbols=SYMBOLS, reconnect_min_s=0.1, reconnect_max_s=0.5)


def new_connection(sim: Simulator, *old: Connection) -> Connection:
    sim.wait_until(lambda: any(c not in old for c in sim.connections("kraken")), 30, "a new connection")
    return next(c for c in sim.connections("kraken") if c not in old)


def test_stored_trade_ids_equal_the_truth_through_drops_stalls_duplicates_and_skips(service, questdb, table_prefix):
    sim = simulator(service, seed=21)
    proc = service([feed(sim, stale_after_s=1.5)])
    first = sim.wait_connections("kraken", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(150)
    first.duplicate_next(20)
    first.skip_next(9, "ETH/USD")  # lost in transit, present over REST
    sim.wait_emitted(400)
    first.drop()  # cut mid-stream, no close frame
    second = new_connection(sim, first)
    sim.wait_emitted(700)
    second.skip_next(60)  # more than the 50-trade snapshot a reconnect brings
    second.stall()  # socket open, nothing sent, not even heartbeats: the stale watchdog reconnects
    new_connection(sim, first, second)
    sim.wait_emitted(COUNT, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "kraken", SYMBOLS))
    assert proc.events("feed_stale") and proc.events("gap_detected")
    assert not proc.events("child_restarted")  # every fault is handled inside the feed actor
    assert proc.stop() == 0


def test_heartbeats_do_not_count_as_data_for_the_stale_watchdog(service, table_prefix):
    sim = simulator(service, seed=22)  # the clock stays paused: heartbeats are all the feed gets
    proc = service([feed(sim, stale_after_s=1.5)])
    first = sim.wait_connections("kraken", 1, timeout=30)[0]
    stale = proc.wait_event("feed_stale", timeout=15)
    assert stale["silent_s"] >= 1.5
    heartbeats_sent = first.counters.frames_sent - 1 - 4  # less the status, two acks and two snapshots
    assert heartbeats_sent >= 1
    new_connection(sim, first)
    assert proc.stop() == 0


def test_an_unanswered_ping_reconnects_while_trades_still_flow(service, questdb, table_prefix):
    """A half-dead path: data arrives, our pings get no pong. Only the pong timeout can tell."""
    sim = simulator(service, seed=24)
    proc = service([feed(sim, ping_interval_s=0.5, pong_timeout_s=1.5)])
    first = sim.wait_connections("kraken", 1, timeout=30)[0]
    proc.wait_event("feed_connected")
    first.mute_replies()
    sim.start_clock()
    assert proc.wait_event("feed_pong_timeout", timeout=15)["timeout_s"] == 1.5
    new_connection(sim, first)
    assert first.counters.trades_sent > 0 and proc.events("feed_stale") == []  # data flowed until then
    sim.wait_emitted(COUNT, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "kraken", SYMBOLS))
    assert proc.stop() == 0


def test_candles_and_a_malformed_frame_that_restarts_nothing(service, questdb, table_prefix):
    sim = simulator(service, seed=23)
    proc = service([feed(sim, channels=["trade", "ohlc-1"])])
    connection = sim.wait_connections("kraken", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(300)
    connection.send_garbage(3)  # invalid JSON, truncated JSON, JSON of the wrong shape
    sim.wait_emitted(COUNT, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "kraken", SYMBOLS))

    table = f"{table_prefix}candles"
    for symbol in SYMBOLS:
        trades = sim.trades("kraken", symbol)
        closed = [t for t in trades if t.time_ms < BOUNDARY_MS]
        expected = [candle(closed, True), candle([t for t in trades if t.time_ms >= BOUNDARY_MS], False)]

        def settled(symbol=symbol, expected=expected):
            if not questdb.wal_applied(table):
                return None
            rows = questdb.query(f"SELECT ts, interval, open, high, low, close, volume, closed FROM {table} "
                                 "WHERE symbol = %s ORDER BY ts", (symbol,))
            return rows if [r[1:] for r in rows] == [e[1:] for e in expected] else None

        rows = questdb.wait_for(settled, 30, f"{symbol} candles settled")
        # one closed, one in progress
        assert [r[0].replace(tzinfo=UTC).timestamp() for r in rows] == [e[0] for e in expected]

    assert sum(e["count"] for e in proc.events("malformed_frame")) == 3
    assert sim.connections("kraken") == [connection] and not connection.closed  # the connection lived on
    assert not proc.events("feed_disconnected") and not proc.events("child_restarted")
    assert proc.stop() == 0


def test_candles_that_close_while_the_connection_is_down_come_back_over_rest(service, questdb, table_prefix):
    """A hard drop across a minute and five-minute boundary, a slow reconnect (over 2 s) without snapshots:
    the candles that closed meanwhile get their final state from /0/public/OHLC alone. (With snapshots,
    the resubscribe would re-send them too, unless the outage spanned more candles than a snapshot holds.)"""
    hour_ms = BOUNDARY_MS + 50 * MINUTE_MS  # 2024-01-01T01:00:00Z: a 1- and a 5-minute candle close
    count = 1400  # 5 ms apart: 7 s of market time, the boundary after trade 400
    sim = service.simulator(["kraken"], {"kraken": SYMBOLS}, rate=200, count=count, seed=24,
                            start_ms=hour_ms - 400 * 5, clock_paused=True)
    proc = service([feed(sim, channels=["trade", "ohlc-1", "ohlc-5"], snapshot=False, reconnect_min_s=2.5,
                         reconnect_max_s=3.0)])
    connection = sim.wait_connections("kraken", 1, timeout=30)[0]
    # Without snapshots, a trade before the subscriptions are in would be missed for good.
    sim.wait_until(lambda: len(connection.session.streams) == 6, 30, "trade and ohlc subscriptions")
    sim.start_clock()
    sim.wait_emitted(200, timeout=30)  # a second before the boundary
    assert sim.faults("kraken").drop_all() == 1
    sim.wait_emitted(count, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "kraken", SYMBOLS))

    table = f"{table_prefix}candles"
    expected = []
    for symbol in SYMBOLS:
        trades = sim.trades("kraken", symbol)
        before, after = [t for t in trades if t.time_ms < hour_ms], [t for t in trades if t.time_ms >= hour_ms]
        expected += [(symbol, *candle(ts, closed, minutes)) for minutes in (1, 5)
                     for ts, closed in ((before, True), (after, False))]
    expected.sort(key=lambda e: (e[0], e[2], e[1]))

    def stored() -> list[tuple]:
        rows = questdb.query(f"SELECT symbol, ts, interval, open, high, low, close, volume, closed FROM {table} "
                             "ORDER BY symbol, interval, ts")
        return [(r[0], r[1].replace(tzinfo=UTC).timestamp(), *r[2:]) for r in rows]

    try:
        questdb.wait_for(lambda: questdb.wal_applied(table) and stored() == expected, 40, "candles settled")
    except AssertionError:
        pass  # the comparison below shows what differs
    assert stored() == expected  # every period, final values, all closed but the newest of each interval
    def ohlc_backfills() -> list[dict]:
        return [e for e in proc.events("backfill_done") if "@ohlc-" in e["stream"]]

    sim.wait_until(lambda: len(ohlc_backfills()) >= 4, 10, "four ohlc backfills logged")
    done = ohlc_backfills()  # one candle each: the one that closed while the connection was down
    assert sorted(e["stream"] for e in done) == sorted(f"{s}@ohlc-{m}" for s in SYMBOLS for m in (1, 5))
    assert all(e["rows"] == 1 and not e["error"] for e in done)
    assert proc.stop() == 0


def candle(trades, closed: bool, minutes: int = 1) -> tuple:
    """(begin s, interval, open, high, low, close, volume, closed) of one candle, from the truth."""
    prices = [Decimal(t.price) for t in trades]
    begin_ms = trades[0].time_ms - trades[0].time_ms % (minutes * MINUTE_MS)
    return (begin_ms / 1000, OHLC_INTERVALS[minutes], float(prices[0]), float(max(prices)), float(min(prices)),
            float(prices[-1]), float(sum(Decimal(t.qty) for t in trades)), closed)
