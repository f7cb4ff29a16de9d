"""Recovery at start against the real QuestDB: where stored history ends, and the holes below that."""
from questdb import Sender

from marketfeed.feeds.rows import Candle, Trade
from marketfeed.storage.recovery import StoredHole, last_trade_ids, newest_stored_ns, stored_holes
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
    assert last_trade_ids(questdb.pg_dsn, table_prefix)[("binance", "BTCUSDT")] == 40


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
