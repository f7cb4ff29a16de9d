"""The feed pipeline alone: validate → outage window → dedup → sequence → candles, with the clock passed in."""
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Gap, ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.kraken import KrakenProtocol
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.storage.tables import CANDLES, TRADES

NOW_NS = 1_700_000_000 * 10**9
MINUTE_NS = 60 * 10**9


def feed(exchange="binance", symbols=("BTCUSDT",), **extra) -> FeedConfig:
    extra.setdefault("channels", ("trade", "kline_1m") if exchange == "binance" else ("trade", "ohlc-1"))
    return FeedConfig(name="f", exchange=exchange, url="ws://x", symbols=symbols, **extra)


def pipeline(memory=None, **extra) -> FeedPipeline:
    config = feed(**extra)
    return FeedPipeline(config, BinanceProtocol(config), memory if memory is not None else FeedMemory())


def trade(trade_id, ts_ns=None, symbol="BTCUSDT", price=100.0) -> Trade:
    return Trade(NOW_NS - 10**9 + trade_id if ts_ns is None else ts_ns, "binance", symbol, trade_id, price, 1.0,
                 "buy", NOW_NS)


def candle(minute, close, closed, interval="1m") -> Candle:
    return Candle(NOW_NS - (10 - minute) * MINUTE_NS, "binance", "BTCUSDT", interval, 1.0, 2.0, 0.5, close, 3.0, closed,
                  NOW_NS)


def burst(trades=(), candles=(), live=()) -> ParsedRows:
    rows = ParsedRows()
    rows.trades, rows.candles, rows.live_candles = list(trades), list(candles), list(live)
    return rows


def test_rows_come_out_by_table_and_an_id_jump_is_a_gap_carrying_the_time_of_the_trade_before():
    p = pipeline()
    out = p.live(burst([trade(1), trade(2), trade(5)]), True, NOW_NS, 0.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [1, 2, 5]
    assert out.gaps == [Gap("BTCUSDT", 3, 4, stream="BTCUSDT", before_ns=trade(2).ts_ns)]
    assert p.gaps == 1 and p.memory.last_ids == {"BTCUSDT": 5}


def test_invalid_rows_are_counted_sampled_once_per_interval_and_never_stored():
    p = pipeline()
    bad = [trade(1, price=-1.0), trade(2, symbol="ETHUSDT")]
    out = p.live(burst([*bad, trade(3)]), True, NOW_NS, 0.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [3]
    (rejected,) = out.rejected
    assert rejected.table is TRADES and rejected.reasons == {"bad_price": 1, "unknown_symbol": 1}
    assert len(rejected.samples) == 2 and rejected.first == bad[0]
    again = p.live(burst([trade(4, price=-1.0)]), True, NOW_NS, 30.0)
    assert again.rejected[0].samples == []  # the same reason within a minute: counted, not sampled again
    assert p.rejected == {"bad_price": 2, "unknown_symbol": 1} and TRADES.name not in again.rows


def test_duplicates_are_dropped_and_counted():
    p = pipeline()
    p.live(burst([trade(1), trade(2)]), True, NOW_NS, 0.0)
    out = p.live(burst([trade(2), trade(3)]), True, NOW_NS, 1.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [3] and out.duplicates == 1


def test_an_outage_window_opens_at_the_newest_event_and_closes_at_the_newest_trade_of_the_first_current_burst():
    config = feed(exchange="binance", channels=("trade", "kline_1m"))
    p = FeedPipeline(config, BinanceProtocol(config), FeedMemory())
    p.live(burst([trade(1, ts_ns=NOW_NS - 5 * MINUTE_NS)]), True, NOW_NS, 0.0)
    p.outage_began(NOW_NS)
    assert p.windows[0].since_ns == NOW_NS - 5 * MINUTE_NS
    p.outage_began(NOW_NS + 1)  # a second disconnect while the window is open moves nothing
    assert p.windows[0].since_ns == NOW_NS - 5 * MINUTE_NS
    stale = p.live(burst([trade(2, ts_ns=NOW_NS - 4 * MINUTE_NS)]), False, NOW_NS, 1.0)
    assert stale.outage_gaps == []  # a connection being replaced closes no window
    resumed = p.live(burst([trade(3, ts_ns=NOW_NS - MINUTE_NS), trade(4, ts_ns=NOW_NS - 2)]), True, NOW_NS, 2.0)
    (window,) = resumed.outage_gaps
    assert window.table is CANDLES and window.until_ns == NOW_NS - 2 and window.since_ns < NOW_NS - 5 * MINUTE_NS
    assert p.windows[0].since_ns == 0 and not resumed.after_restart  # a dropped connection, not the process's downtime


def test_a_new_incarnation_starts_with_an_outage_window_from_its_memory():
    memory = FeedMemory()
    memory.last_event_ns = NOW_NS - MINUTE_NS
    p = pipeline(memory)
    assert p.windows[0].since_ns == NOW_NS - MINUTE_NS
    assert p.live(burst([trade(1, ts_ns=NOW_NS - 1)]), True, NOW_NS, 0.0).after_restart


def test_closed_candles_are_stored_and_retire_the_live_state_which_waits_latest_wins():
    p = pipeline()
    p.live(burst(live=[candle(0, 1.0, False), candle(0, 2.0, False)]), True, NOW_NS, 0.0)
    assert [c.close for c in p.live_candles.pending.values()] == [2.0]
    out = p.live(burst(candles=[candle(0, 3.0, True)], live=[candle(1, 4.0, False)]), True, NOW_NS, 1.0)
    assert out.rows[CANDLES.name] == [candle(0, 3.0, True)]
    assert [c.close for c in p.live_candles.take()] == [4.0]


def test_backfilled_trades_fill_the_sequence_without_gaps_and_skip_what_was_stored_live():
    p = pipeline()
    p.live(burst([trade(1), trade(4)]), True, NOW_NS, 0.0)
    out = p.backfill(TRADES, [trade(2), trade(3), trade(4)], NOW_NS, 1.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [2, 3] and out.backfilled == 2 and out.gaps == []
    assert p.backfilled == 2


def test_backfilled_candles_close_the_live_candle_of_their_period():
    p = pipeline()
    p.live(burst(live=[candle(0, 1.0, False)]), True, NOW_NS, 0.0)
    out = p.backfill(CANDLES, [candle(0, 5.0, True)], NOW_NS, 1.0)
    assert out.rows[CANDLES.name] == [candle(0, 5.0, True)] and len(p.live_candles) == 0


def test_reconnected_asks_for_everything_since_the_last_id_only_where_ids_are_contiguous():
    p = pipeline()
    p.live(burst([trade(7)]), True, NOW_NS, 0.0)
    assert p.reconnected() == [Gap("BTCUSDT", 8, None, stream="BTCUSDT", before_ns=trade(7).ts_ns)]
    config = feed(exchange="polygon", symbols=("AAPL",))
    from marketfeed.feeds.polygon import PolygonProtocol
    polygon = FeedPipeline(config, PolygonProtocol(config), FeedMemory())
    assert polygon.reconnected() == []


def test_stored_holes_are_handed_out_once():
    memory = FeedMemory()
    memory.stored_holes = [Gap("BTCUSDT", 3, 4)]
    p = pipeline(memory)
    assert p.stored_holes() == [Gap("BTCUSDT", 3, 4)] and p.stored_holes() == [] and p.gaps == 1


def test_kraken_sessions_parse_into_one_pipeline_without_sharing_state():
    config = feed(exchange="kraken", symbols=("BTC/USD",))
    protocol = KrakenProtocol(config)
    first, second = protocol.open_session(), protocol.open_session()
    assert first is not second and first._candles is not second._candles


def test_a_fake_id_far_ahead_is_refused_and_blinds_nothing_while_rest_is_asked_for_it():
    p = pipeline(max_id_jump=1000)
    p.live(burst([trade(1)]), True, NOW_NS, 0.0)
    out = p.live(burst([trade(10**12, ts_ns=trade(2).ts_ns), trade(2), trade(4)]), True, NOW_NS, 0.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [2, 4]  # the fake one never reaches a buffer
    assert out.rejected[0].reasons == {"implausible_trade_id": 1}
    assert out.gaps == [Gap("BTCUSDT", 10**12, 10**12, stream="BTCUSDT", before_ns=trade(1).ts_ns),  # the question
                        Gap("BTCUSDT", 3, 3, stream="BTCUSDT", before_ns=trade(2).ts_ns)]  # detection goes on
    assert p.backfill(TRADES, [], NOW_NS, 0.0).gaps == [] and p.memory.last_ids == {"BTCUSDT": 4}
    confirmed = p.backfill(TRADES, [trade(9000)], NOW_NS, 0.0)  # a real jump: REST has the id
    assert confirmed.gaps == [] and p.memory.last_ids == {"BTCUSDT": 9000}  # not the one asked about: no new gap


def test_rows_of_a_sequence_or_interval_the_feed_did_not_subscribe_to_are_refused():
    p = pipeline(channels=("trade", "kline_1m"))
    agg = trade(7)._replace(exchange="binance-agg")
    out = p.live(burst([trade(1), agg], [candle(1, 5.0, True, interval="1h"), candle(2, 5.0, True)]), True, NOW_NS,
                 0.0)
    assert [t.trade_id for t in out.rows[TRADES.name]] == [1]
    assert [c.interval for c in out.rows[CANDLES.name]] == ["1m"]
    assert p.rejected == {"unsubscribed": 2}
