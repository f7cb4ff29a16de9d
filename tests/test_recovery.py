"""Recovery at start against the real QuestDB: where stored history ends, and the holes below that; and what a
restored stream asks REST for."""
import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from questdb import Sender

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import Gap
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.kraken import KrakenProtocol, rest_pair
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline
from marketfeed.feeds.polygon import PolygonOptions
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.storage.recovery import (
    StoredHole,
    StoredLast,
    last_trade_ids,
    newest_stored_ns,
    restore_streams,
    stored_holes,
)
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import CANDLES, TRADES

BASE_NS = 1_700_000_000_000_000_000


def store(questdb, table: str, rows: list[Trade]) -> None:
    with Sender.from_conf(questdb.conf) as sender:
        buffer = sender.new_buffer()
        assert TRADES.append(buffer, table, rows) == []
        sender.flush(buffer, transactional=True)
    questdb.wait_for(lambda: questdb.wal_applied(table), 30, f"{table} applied")


def trade(exchange: str, symbol: str, trade_id: int) -> Trade:
    return Trade(BASE_NS + trade_id * 1_000_000, exchange, symbol, trade_id, 100.0, 0.5, "buy", BASE_NS)


def test_holes_below_the_last_stored_id_are_found_per_series_with_the_time_before_them(questdb, table_prefix):
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))
    table = f"{table_prefix}trades"
    ids = {("binance", "BTCUSDT"): [*range(1, 11), *range(15, 21), 40],  # holes 11..14 and 21..39
           ("binance", "ETHUSDT"): list(range(1, 30)),  # none
           ("kraken", "BTC/USD"): [5, 6, 9, 9],  # hole 7..8; a stored duplicate is no hole
           ("polygon", "AAPL"): [1, 5]}  # not contiguous: never asked for
    store(questdb, table, [trade(exchange, symbol, i) for (exchange, symbol), series in ids.items() for i in series])

    holes = stored_holes(questdb.pg_dsn, table_prefix, ("binance", "kraken"), window_s=3600)
    assert sorted(holes, key=lambda h: (h.exchange, h.symbol, h.first_id)) == [
        StoredHole("binance", "BTCUSDT", 11, 14, BASE_NS + 10_000_000),
        StoredHole("binance", "BTCUSDT", 21, 39, BASE_NS + 20_000_000),
        StoredHole("kraken", "BTC/USD", 7, 8, BASE_NS + 6_000_000),
    ]
    # The window ends at the newest stored trade (id 40, at 40 ms), whenever that was: 24 ms back reaches id 16.
    assert stored_holes(questdb.pg_dsn, table_prefix, ("binance",), window_s=0.024) == [
        StoredHole("binance", "BTCUSDT", 21, 39, BASE_NS + 20_000_000)]
    assert last_trade_ids(questdb.pg_dsn, table_prefix)[("binance", "BTCUSDT")].trade_id == 40


def test_no_table_or_an_empty_one_means_no_holes(questdb, table_prefix):
    assert stored_holes(questdb.pg_dsn, f"{table_prefix}absent_", ("binance",), window_s=3600) == []
    assert last_trade_ids(questdb.pg_dsn, f"{table_prefix}absent_") == {}
    create_tables(questdb.pg_dsn, f"{table_prefix}empty_", (TRADES,))  # as after a first start with no trade yet
    assert stored_holes(questdb.pg_dsn, f"{table_prefix}empty_", ("binance",), window_s=3600) == []
    assert last_trade_ids(questdb.pg_dsn, f"{table_prefix}empty_") == {}


def test_the_newest_stored_row_per_series_spans_trades_and_candles(questdb, table_prefix):
    prefix = f"{table_prefix}newest_"
    create_tables(questdb.pg_dsn, prefix, (TRADES, CANDLES))
    store(questdb, f"{prefix}trades", [trade("polygon", "AAPL", 5), trade("polygon", "AAPL", 2),
                                       trade("kraken", "X", 1)])
    with Sender.from_conf(questdb.conf) as sender:
        buffer = sender.new_buffer()
        assert CANDLES.append(buffer, f"{prefix}candles", [
            Candle(BASE_NS + 60_000_000_000, "kraken", "X", "1m", 1.0, 1.0, 1.0, 1.0, 1.0, False, BASE_NS)]) == []
        sender.flush(buffer, transactional=True)
    questdb.wait_for(lambda: questdb.wal_applied(f"{prefix}candles"), 30, "candles applied")
    assert newest_stored_ns(questdb.pg_dsn, prefix) == {("polygon", "AAPL"): BASE_NS + 5_000_000,
                                                        ("kraken", "X"): BASE_NS + 60_000_000_000}
    assert newest_stored_ns(questdb.pg_dsn, f"{table_prefix}absent_") == {}


def test_the_last_id_of_a_series_comes_with_the_time_of_the_row_holding_it(questdb, table_prefix):
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))
    table = f"{table_prefix}trades"
    late = Trade(BASE_NS + 90_000_000, "kraken", "BTC/USD", 8, 1.0, 1.0, "buy", BASE_NS)  # id 8 stored after id 9
    twice = [trade("binance-agg", "BTCUSDT", 5), trade("binance-agg", "BTCUSDT", 5)._replace(ts_ns=BASE_NS + 1)]
    store(questdb, table, [trade("kraken", "BTC/USD", 9), late, *twice, trade("binance", "BTCUSDT", 3)])
    assert last_trade_ids(questdb.pg_dsn, table_prefix) == {
        ("kraken", "BTC/USD"): StoredLast(9, BASE_NS + 9_000_000),  # the highest id's time, not the newest time
        ("binance-agg", "BTCUSDT"): StoredLast(5, BASE_NS),  # one id under two times: the earlier (µs) one
        ("binance", "BTCUSDT"): StoredLast(3, BASE_NS + 3_000_000)}


def test_stored_times_are_read_to_the_microsecond_never_later(questdb, table_prefix):
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))
    store(questdb, f"{table_prefix}trades", [trade("kraken", "BTC/USD", 1)._replace(ts_ns=BASE_NS + 1_234_999)])
    assert last_trade_ids(questdb.pg_dsn, table_prefix) == {("kraken", "BTC/USD"): StoredLast(1, BASE_NS + 1_234_000)}


# Every query parameter the exchanges document for the requests backfill makes (their REST references):
# Binance GET /api/v3/historicalTrades (symbol, limit, fromId), /api/v3/aggTrades (symbol, fromId, startTime,
# endTime, limit), /api/v3/klines (symbol, interval, startTime, endTime, timeZone, limit); Kraken
# GET /0/public/Trades (pair, since, count) and /0/public/OHLC (pair, interval, since); Coinbase Exchange
# GET /products/{product_id}/trades (limit, before, after); Polygon GET /v3/trades/{ticker} (timestamp with
# .gte/.gt/.lte/.lt, order, limit, sort, apiKey).
DOCUMENTED = {  # path pattern → parameter names
    r"/api/v3/historicalTrades": {"symbol", "limit", "fromId"},
    r"/api/v3/aggTrades": {"symbol", "fromId", "startTime", "endTime", "limit"},
    r"/api/v3/klines": {"symbol", "interval", "startTime", "endTime", "timeZone", "limit"},
    r"/0/public/Trades": {"pair", "since", "count"},
    r"/0/public/OHLC": {"pair", "interval", "since"},
    r"/products/[^/]+/trades": {"limit", "before", "after"},
    r"/v3/trades/[^/]+": {"timestamp", "timestamp.gte", "timestamp.gt", "timestamp.lte", "timestamp.lt", "order",
                          "limit", "sort", "apiKey"},
}
RESTART = [  # (exchange, symbols, channels, options): every stream kind a feed can restore
    ("binance", ("BTCUSDT", "ETHUSDT"), ("trade", "aggTrade", "kline_1m"), None),
    ("kraken", ("BTC/USD", "DOGE/EUR"), ("trade", "ohlc-5"), None),
    ("coinbase", ("BTC-USD", "ETH-USD"), (), None),
    ("polygon", ("AAPL", "O:SPY251219C00650000"), (), PolygonOptions(api_key="k")),
]


def requested_symbol(url: str) -> tuple[str, set[str]]:
    """The symbol a REST request asks for (a query parameter or a path segment) and the request's parameter names."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if "symbol" in query or "pair" in query:
        return (query.get("symbol") or query["pair"])[0], set(query)
    segments = parts.path.split("/")  # /products/{id}/trades, /v3/trades/{ticker}
    return unquote(segments[2] if segments[1] == "products" else segments[3]), set(query)


def documented(url: str) -> set[str]:
    path = urlsplit(url).path
    return next(names for pattern, names in DOCUMENTED.items() if re.fullmatch(pattern, path))


@pytest.mark.parametrize(("exchange", "symbols", "channels", "options"), RESTART, ids=[r[0] for r in RESTART])
def test_no_rest_request_after_a_restart_carries_a_stream_key_as_its_symbol(exchange, symbols, channels, options):
    """A restart restores every stream from stored rows; the gaps since their last ids (and the outage windows since
    the newest row) ask REST for the exchange's symbols, with documented parameters only."""
    extra = {"channels": channels} if channels else {}
    feed = FeedConfig(name="f", exchange=exchange, url="wss://x", rest_url="https://rest.x", symbols=symbols,
                      options=options, **extra)
    protocol = registry.exchange(exchange).protocol(feed)
    stored = {(label, symbol): StoredLast(1000 + n, BASE_NS + n * 1_000_000)
              for n, (label, symbol) in enumerate((label, s) for label in protocol.trade_labels() for s in symbols)}
    memory = FeedMemory()
    restore_streams(memory, protocol, symbols, stored)
    memory.last_event_ns = BASE_NS
    pipeline = FeedPipeline(feed, protocol, memory)
    gaps = pipeline.reconnected() + protocol.outage_gaps(symbols, BASE_NS, BASE_NS + 3_600 * 10**9)
    assert gaps, "a restart with stored rows has something to backfill"
    rest_symbols = {rest_pair(s) for s in symbols} if exchange == "kraken" else set(symbols)
    for gap in gaps:
        request = protocol.backfill_request(gap)
        assert request is not None
        symbol, names = requested_symbol(request.url)
        assert symbol in rest_symbols, f"{request.url} asks for {symbol!r}, not a symbol of {sorted(rest_symbols)}"
        undocumented = names - documented(request.url)
        assert not undocumented, f"{request.url}: undocumented {sorted(undocumented)}"


def test_a_restored_stream_is_all_the_tracker_would_know_of_it_live():
    feed = FeedConfig(name="b", exchange="binance", url="wss://x", rest_url="https://api.x", symbols=("BTCUSDT",),
                      channels=("trade", "aggTrade"))
    protocol = BinanceProtocol(feed)
    memory = FeedMemory()
    restore_streams(memory, protocol, feed.symbols, {("binance-agg", "BTCUSDT"): StoredLast(26129, BASE_NS),
                                                     ("binance", "BTCUSDT"): StoredLast(40, BASE_NS + 7),
                                                     ("binance", "ETHUSDT"): StoredLast(9, BASE_NS)})  # not this feed's
    assert (memory.last_ids, memory.last_ts, memory.stream_symbols) == (
        {"BTCUSDT@aggTrade": 26129, "BTCUSDT": 40}, {"BTCUSDT@aggTrade": BASE_NS, "BTCUSDT": BASE_NS + 7},
        {"BTCUSDT@aggTrade": "BTCUSDT"})
    agg = next(g for g in FeedPipeline(feed, protocol, memory).reconnected() if g.stream == "BTCUSDT@aggTrade")
    assert agg == Gap("BTCUSDT", 26130, None, stream="BTCUSDT@aggTrade", before_ns=BASE_NS)
    assert protocol.backfill_request(agg).url == "https://api.x/api/v3/aggTrades?symbol=BTCUSDT&fromId=26130&limit=1000"


def test_kraken_asks_for_trades_since_the_restored_last_trade():
    feed = FeedConfig(name="k", exchange="kraken", url="wss://x", rest_url="https://api.kraken.com",
                      symbols=("BTC/USD",))
    protocol = KrakenProtocol(feed)
    memory = FeedMemory()
    restore_streams(memory, protocol, feed.symbols, {("kraken", "BTC/USD"): StoredLast(61044952, BASE_NS + 5_000)})
    (gap,) = FeedPipeline(feed, protocol, memory).reconnected()
    assert parse_qs(urlsplit(protocol.backfill_request(gap).url).query) == {
        "pair": ["XBTUSD"], "count": ["1000"], "since": [str(BASE_NS + 5_000 - 1)]}
