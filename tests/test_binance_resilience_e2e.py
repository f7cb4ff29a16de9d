"""End to end, Binance: faults injected by the simulator, a real `marketfeed run`, a real QuestDB."""
from datetime import UTC, datetime
from functools import partial

from questdb import Sender

from marketfeed.feeds.rows import Trade
from marketfeed.sim import Simulator
from marketfeed.sim.binance import agg_id
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import TRADES
from tests.support.questdb import free_port
from tests.support.service import sim_feed
from tests.support.truth import assert_trade_ids, truth

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
feed = partial(sim_feed, "binance", symbols=SYMBOLS, name="binance-spot", reconnect_min_s=0.1, reconnect_max_s=0.5)


def test_trades_and_agg_trades_equal_the_truth_through_every_fault(service, questdb, table_prefix):
    sim = service.simulator(["binance"], SYMBOLS, rate=200, count=1400, seed=3, clock_paused=True)
    proc = service([feed(sim, channels=["trade", "aggTrade"], stale_after_s=1.0)])
    first = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(100)
    first.duplicate_next(30)
    first.skip_next(15, "BTCUSDT")  # lost in transit, present over REST
    first.send_garbage(3)
    sim.wait_emitted(350)
    first.drop()
    second = sim.wait_until(lambda: [c for c in sim.connections("binance") if c is not first], 30, "reconnect")
    second = next(c for c in sim.connections("binance") if c is not first)
    sim.wait_emitted(600)
    second.stall()  # socket open, nothing sent: the stale watchdog must reconnect
    sim.wait_until(lambda: any(c not in (first, second) for c in sim.connections("binance")), 30, "stale reconnect")
    sim.wait_emitted(1400, timeout=30)
    table = f"{table_prefix}trades"
    assert_trade_ids(questdb, table, truth(sim, "binance", SYMBOLS), exchange="binance")
    assert_trade_ids(questdb, table, {s: [agg_id(t) for t in sim.trades("binance", s)] for s in SYMBOLS},
                     exchange="binance-agg")
    assert proc.events("malformed_frame") and proc.events("feed_stale")
    assert not proc.events("child_restarted")  # faults are handled inside the feed actor
    assert proc.stop() == 0


def test_server_shutdown_and_the_connection_age_cut_lose_nothing(service, questdb, table_prefix):
    sim = service.simulator(["binance"], SYMBOLS, rate=200, count=1000, seed=4, clock_paused=True,
                            max_connection_age=1.5)
    proc = service([feed(sim, channels=["trade", "aggTrade"])])
    first = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(100)
    first.announce_shutdown(close_after_s=2.0)
    proc.wait_event("feed_shutdown_announced")
    sim.wait_emitted(1000, timeout=30)  # 5 s: several age cuts on top
    table = f"{table_prefix}trades"
    assert_trade_ids(questdb, table, truth(sim, "binance", SYMBOLS), exchange="binance")
    assert_trade_ids(questdb, table, {s: [agg_id(t) for t in sim.trades("binance", s)] for s in SYMBOLS},
                     exchange="binance-agg")
    assert len(proc.events("feed_connected")) >= 3
    assert proc.stop() == 0


def test_closed_candles_are_stored_once_and_the_live_candle_ends_as_its_last_state(service, questdb, table_prefix):
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=200, count=700, seed=5, clock_paused=True)
    proc = service([feed(sim, symbols=["BTCUSDT"], channels=["kline_1s"])])
    sim.wait_connections("binance", 1, timeout=30)
    sim.start_clock()
    sim.wait_emitted(700, timeout=30)
    trades = sim.trades("binance", "BTCUSDT")
    periods = sorted({t.time_ms - t.time_ms % 1000 for t in trades})  # 700 trades at 5 ms: 4 periods
    table = f"{table_prefix}candles"
    last = trades[-1]
    expected_last = (periods[-1] * 1000, float(last.price), False)

    def settled():
        if not questdb.wal_applied(table):
            return None
        rows = questdb.query(f"SELECT ts, close, closed FROM {table} WHERE symbol = 'BTCUSDT' ORDER BY ts")
        return rows if len(rows) == len(periods) and rows[-1][1:] == expected_last[1:] else None

    rows = questdb.wait_for(settled, 30, "candles settled")
    assert [r[2] for r in rows] == [True] * (len(periods) - 1) + [False]
    for period, (_, close, _) in zip(periods[:-1], rows[:-1], strict=True):
        in_period = [t for t in trades if t.time_ms - t.time_ms % 1000 == period]
        assert close == float(in_period[-1].price)
    assert proc.stop() == 0


def assert_one_second_candles_equal_the_truth(questdb, sim, table: str) -> None:
    """Every period's candle stored, closed but the last, with open/high/low/close as the trades made them."""
    by_period: dict[int, list] = {}
    for t in sim.trades("binance", "BTCUSDT"):
        by_period.setdefault(t.time_ms - t.time_ms % 1000, []).append(t)
    expected = [(datetime.fromtimestamp(period / 1000, UTC).replace(tzinfo=None), float(ts[0].price),
                 max(float(t.price) for t in ts), min(float(t.price) for t in ts), float(ts[-1].price))
                for period, ts in sorted(by_period.items())]

    def settled():
        if not questdb.wal_applied(table):
            return None
        rows = questdb.query(f"SELECT ts, open, high, low, close, closed FROM {table} ORDER BY ts")
        return rows if len(rows) == len(expected) and rows[-1][4] == expected[-1][4] else None

    rows = questdb.wait_for(settled, 90, "candles settled")  # generous: a loaded host backfills slowly
    assert [r[5] for r in rows] == [True] * (len(expected) - 1) + [False]  # the last one is still open
    assert [r[:5] for r in rows[:-1]] == expected[:-1]


def test_candles_that_close_while_the_connection_is_down_come_back_over_rest(service, questdb, table_prefix):
    """A hard drop and a slow reconnect (over 2 s) while 1-second candles close: every one is stored closed."""
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=200, count=1400, seed=9, clock_paused=True)
    proc = service([feed(sim, symbols=["BTCUSDT"], channels=["trade", "kline_1s"], reconnect_min_s=2.5,
                         reconnect_max_s=3.0)])
    sim.wait_connections("binance", 1, timeout=30)
    sim.start_clock()
    sim.wait_emitted(300, timeout=30)
    assert sim.faults("binance").drop_all() == 1
    sim.wait_emitted(1400, timeout=30)
    assert_one_second_candles_equal_the_truth(questdb, sim, f"{table_prefix}candles")
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", ["BTCUSDT"]), exchange="binance")
    assert proc.stop() == 0


def test_candles_that_close_while_the_process_is_down_come_back_after_its_restart(service, questdb, table_prefix):
    """SIGKILL, then over 2 s down while 1-second candles close: the restart fetches them from the newest stored row."""
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=200, count=1400, seed=10, clock_paused=True)
    one_second = partial(feed, symbols=["BTCUSDT"], channels=["kline_1s"])
    first = service([one_second(sim)])
    sim.wait_connections("binance", 1, timeout=30)
    sim.start_clock()
    table = f"{table_prefix}candles"
    questdb.wait_for(lambda: questdb.wal_applied(table) and questdb.query(
        f"SELECT count() FROM {table} WHERE closed")[0][0], 30, "a closed candle stored")
    first.kill()
    down_at = sim.emitted("binance")
    sim.wait_emitted(down_at + 500, timeout=30)  # 2.5 s of market: two or three candles close meanwhile
    second = service([one_second(sim)])
    sim.wait_emitted(1400, timeout=30)
    assert_one_second_candles_equal_the_truth(questdb, sim, table)
    assert second.stop() == 0


def test_a_hole_left_in_the_stored_history_is_backfilled_at_start(service, questdb, table_prefix):
    """What a process killed mid-backfill leaves: ids missing below the last stored one. The next start fills them."""
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=5000, count=600, seed=11)
    sim.wait_emitted(600, timeout=30)  # the market has moved on; nothing new comes live
    trades = sim.trades("binance", "BTCUSDT")
    left = [Trade(t.time_ms * 1_000_000, "binance", t.symbol, t.trade_id, float(t.price), float(t.qty),
                  "sell" if t.buyer_is_maker else "buy", 0) for t in trades[:200] + trades[300:]]
    table = f"{table_prefix}trades"
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))
    with Sender.from_conf(questdb.conf) as sender:
        buffer = sender.new_buffer()
        TRADES.append(buffer, table, left)
        sender.flush(buffer, transactional=True)
    proc = service([feed(sim, symbols=["BTCUSDT"])])
    assert_trade_ids(questdb, table, truth(sim, "binance", ["BTCUSDT"]), exchange="binance")
    assert proc.stop() == 0


def test_breaker_opens_on_a_dead_endpoint_and_closes_when_it_returns(service, questdb, table_prefix):
    port = free_port()  # closed again: connects are refused
    sim = Simulator(["binance"], SYMBOLS, rate=200, count=400, seed=6, clock_paused=True, port=port)
    proc = service([feed(None, url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}",
                         breaker_failures=3, breaker_reset_s=1.0)])
    failed = proc.wait_event("feed_disconnected", where=lambda e: e["state"] == "failed")
    assert failed["failures"] == 3
    with sim:
        sim.wait_connections("binance", 1, timeout=30)  # the half-open trial succeeds
        proc.wait_event("feed_connected")
        sim.start_clock()
        sim.wait_emitted(400, timeout=30)
        assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", SYMBOLS), exchange="binance")
    assert proc.stop() == 0


def test_a_dead_primary_url_fails_over_to_the_alternative(service, questdb, table_prefix):
    sim = service.simulator(["binance"], SYMBOLS, rate=200, count=400, seed=8, clock_paused=True)
    proc = service([feed(sim, url=f"ws://127.0.0.1:{free_port()}", alt_urls=[sim.url("binance")])])
    sim.wait_connections("binance", 1, timeout=30)
    connected = proc.wait_event("feed_connected")
    assert connected["url"].startswith(sim.url("binance"))
    sim.start_clock()
    sim.wait_emitted(400, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", SYMBOLS), exchange="binance")
    assert not proc.events("child_restarted")
    assert proc.stop() == 0
