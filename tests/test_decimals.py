"""questdb.decimals: prices and amounts parsed from the exchange's text without a float, stored as DECIMAL.

As a DOUBLE, 70329669.63383683 is stored as …84; as a DECIMAL it is stored as sent. Parsers, validation, the spool,
the loader, and the real QuestDB (table, OHLCV views, a table left from DOUBLE mode)."""
import time
from decimal import Decimal

import orjson
import pytest

from marketfeed.config.loader import ConfigError, from_dict
from marketfeed.config.schema import Config, FeedConfig, QuestDBConfig, SinkConfig, SpoolConfig
from marketfeed.feeds.base import Gap, MalformedFrame, ParsedRows
from marketfeed.feeds.binance import AGG_EXCHANGE, BinanceProtocol
from marketfeed.feeds.coinbase import CoinbaseProtocol
from marketfeed.feeds.kraken import KrakenProtocol
from marketfeed.feeds.polygon import PolygonOptions, PolygonProtocol
from marketfeed.feeds.rows import Trade
from marketfeed.feeds.validation import PRICE_OUT_OF_RANGE, RowValidator, Subscribed
from marketfeed.storage import deadletter
from marketfeed.storage.schema import TableMismatch, create_tables
from marketfeed.storage.spool import Spool
from marketfeed.storage.tables import TRADES
from marketfeed.storage.writer import FlushWorker, SinkReport, sender_conf, spooled_rows
from tests.support.service import sim_feed
from tests.support.truth import assert_trade_ids, truth

EXACT = "70329669.63383683"  # 16 significant digits: a double cannot hold it (it reads back as …84)
NOW_NS = time.time_ns()


def protocol(kind, exchange: str, symbols: tuple[str, ...], decimals: bool = True, **extra):
    return kind(FeedConfig("f", exchange, "wss://unused", symbols, rest_url="https://unused", decimals=decimals,
                           **extra))


def parsed(parse, message) -> list[Trade]:
    out = ParsedRows()
    parse(orjson.dumps(message), NOW_NS, out)
    return out.trades


def binance_trade(price: str, qty: str = "0.00100000", event: str = "trade") -> dict:
    return {"stream": "btcusdt@trade", "data": {"e": event, "E": 1, "s": "BTCUSDT", "t": 7, "a": 7, "p": price,
                                               "q": qty, "T": 1_700_000_000_000, "m": True, "M": True}}


# --- parsers

def test_binance_trades_and_aggregate_trades_keep_the_exact_text_as_a_decimal():
    p = protocol(BinanceProtocol, "binance", ("BTCUSDT",), channels=("trade", "aggTrade"))
    (trade,) = parsed(p.parse, binance_trade(EXACT, "12.34567891"))
    (agg,) = parsed(p.parse, binance_trade(EXACT, event="aggTrade"))
    assert (trade.price, trade.amount) == (Decimal(EXACT), Decimal("12.34567891"))
    assert str(trade.price) == EXACT and type(trade.price) is Decimal
    assert (agg.exchange, str(agg.price)) == (AGG_EXCHANGE, EXACT)


def test_without_decimals_the_parser_makes_floats_as_before():
    (trade,) = parsed(protocol(BinanceProtocol, "binance", ("BTCUSDT",), decimals=False).parse, binance_trade(EXACT))
    assert type(trade.price) is float and trade.price == float(EXACT) and repr(trade.price) != EXACT


@pytest.mark.parametrize("price", ["nan", "inf", "-Infinity", "sNaN", "1_000", "12,5", ""])
def test_a_price_no_decimal_can_be_compared_or_that_only_python_reads_is_malformed(price):
    with pytest.raises(MalformedFrame):
        parsed(protocol(BinanceProtocol, "binance", ("BTCUSDT",)).parse, binance_trade(price))


def test_a_json_number_where_binance_documents_a_string_stays_malformed():
    message = binance_trade(EXACT)
    message["data"]["p"] = 70329669.5
    with pytest.raises(MalformedFrame):
        parsed(protocol(BinanceProtocol, "binance", ("BTCUSDT",)).parse, message)


def test_coinbase_matches_and_rest_trades_keep_the_exact_text():
    p = protocol(CoinbaseProtocol, "coinbase", ("BTC-USD",))
    match = {"type": "match", "trade_id": 10, "maker_order_id": "m", "taker_order_id": "t", "side": "sell",
             "size": "0.00000001", "price": EXACT, "product_id": "BTC-USD", "sequence": 50,
             "time": "2024-01-01T00:00:00.000001Z"}
    (trade,) = parsed(p.parse, match)
    assert (str(trade.price), str(trade.amount)) == (EXACT, "1E-8")  # the same number: Decimal's own spelling
    assert trade.amount == Decimal("0.00000001")


def test_kraken_json_numbers_become_the_shortest_decimal_of_the_double_sent():
    """Kraken documents price and qty as doubles: what the double holds, never its binary expansion."""
    session = protocol(KrakenProtocol, "kraken", ("MATIC/USD",)).open_session()
    message = {"channel": "trade", "type": "update", "data": [
        {"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 1136.19677815, "ord_type": "limit",
         "trade_id": 4665847, "timestamp": "2023-09-25T07:49:36.925603Z"}]}
    (trade,) = parsed(session.parse, message)
    assert (trade.price, trade.amount) == (Decimal("0.5147"), Decimal("1136.19677815"))


def test_kraken_rest_trades_keep_the_exact_text():
    p = protocol(KrakenProtocol, "kraken", ("BTC/USD",))
    body = orjson.dumps({"error": [], "result": {"XXBTZUSD": [
        ["5541.20000", "0.15850568", 1534614057.321597, "s", "l", "", 1]], "last": "1534614057321597068"}})
    rows, _ = p.parse_backfill(Gap("BTC/USD", first_id=1, last_id=1), body, NOW_NS)
    assert [(str(r.price), str(r.amount)) for r in rows] == [("5541.20000", "0.15850568")]


def test_polygon_numbers_are_decimals_and_its_ids_and_value_filter_are_those_of_double_mode():
    event = {"ev": "T", "sym": "O:SPY251219C00650000", "x": 4, "p": 12.3456, "s": 3, "c": [209], "t": 1_700_000_000_000,
             "q": 1}
    exact, double = (protocol(PolygonProtocol, "polygon", ("O:SPY251219C00650000",), decimals=d,
                              options=PolygonOptions(api_key="k", min_trade_value=3000.0)) for d in (True, False))
    (trade,) = parsed(exact.parse, [event])
    (twin,) = parsed(double.parse, [event])
    assert (trade.price, trade.amount) == (Decimal("12.3456"), Decimal(3))
    assert trade.trade_id == twin.trade_id  # options ids hash the price: the same in both modes
    assert parsed(exact.parse, [{**event, "s": 2}]) == []  # 12.3456 × 2 × 100 < 3000 in both modes
    assert parsed(double.parse, [{**event, "s": 2}]) == []


# --- validation, spool, dead letters

def exact_trades(n: int, price: str = EXACT) -> list[Trade]:
    return [Trade(NOW_NS + i, "binance", "BTCUSDT", i + 1, Decimal(price), Decimal("0.5"), "buy", NOW_NS)
            for i in range(n)]


def test_good_decimal_trades_pass_validation_whole_and_a_price_out_of_range_is_rejected():
    validator = RowValidator(("BTCUSDT",), 60.0, 64, Subscribed(frozenset({"binance"}), decimals=True))
    rows = exact_trades(3)
    assert validator.split(rows, NOW_NS) == (rows, [])
    bad = rows[1]._replace(price=Decimal("1e13"))
    kept, rejected = validator.split([rows[0], bad, rows[2]], NOW_NS)
    assert kept == [rows[0], rows[2]] and rejected == [(bad, PRICE_OUT_OF_RANGE)]


def test_spooled_decimals_come_back_exact_and_follow_a_changed_mode(tmp_path):
    spool = Spool(tmp_path / "spool", 1 << 20, fsync=False)
    spool.append(exact_trades(2))
    back = spooled_rows(TRADES, spool.oldest(Trade), decimals=True)
    assert back == exact_trades(2) and type(back[0].price) is Decimal
    assert spooled_rows(TRADES, spool.oldest(Trade), decimals=False)[0].price == float(EXACT)
    spool.append([exact_trades(1)[0]._replace(price=0.1, amount=2.5)])  # spooled in DOUBLE mode, replayed exact
    spool.remove_oldest()
    assert spooled_rows(TRADES, spool.oldest(Trade), decimals=True)[0][4:6] == (Decimal("0.1"), Decimal("2.5"))


def test_a_dead_letter_holds_a_decimal_as_its_text(tmp_path):
    letters = deadletter.DeadLetters(tmp_path, "trades")
    letters.write([(exact_trades(1)[0], "refused")])
    assert deadletter.read(letters.path)[0]["row"]["price"] == EXACT


# --- configuration

def test_the_loader_gives_every_feed_the_questdb_mode_and_refuses_it_as_a_feed_key():
    feed = {"name": "b", "exchange": "binance", "url": "wss://x", "symbols": ["BTCUSDT"]}
    config = from_dict({"questdb": {"decimals": True}, "feeds": [feed]})
    assert config.questdb.decimals and [f.decimals for f in config.feeds] == [True]
    assert [f.decimals for f in from_dict({"feeds": [feed]}).feeds] == [False]
    with pytest.raises(ConfigError) as info:
        from_dict({"feeds": [{**feed, "decimals": True}]}, source="m.toml")
    assert info.value.problems == [
        "m.toml: feeds[0] (b).decimals: unknown key (a binance feed takes the common keys only)"]


def test_decimals_with_a_client_pinned_to_an_older_ilp_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as info:
        from_dict({"questdb": {"decimals": True, "conf": "http::addr=db:9000;protocol_version=2;"}}, source="m.toml")
    assert info.value.problems == [("m.toml: questdb.conf: protocol_version=2 cannot carry DECIMAL values "
                                    "(questdb.decimals = true needs 3, the default then)")]


def test_decimal_mode_sends_ilp_v3():
    assert sender_conf("http::addr=db:9000;", decimals=True) == (
        "http::addr=db:9000;auto_flush=off;protocol_version=3;retry_timeout=0;")
    assert sender_conf("tcp::addr=db:9009;", decimals=True) == "tcp::addr=db:9009;auto_flush=off;protocol_version=3;"


# --- the real QuestDB

def exact_config(questdb, table_prefix, tmp_path, refresh: str = "immediate") -> Config:
    return Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix,
                                        ohlcv_refresh=refresh, decimals=True),
                  sink=SinkConfig(max_rows=100, dead_letter_dir=str(tmp_path / "dead"), breaker_reset_s=0.0),
                  spool=SpoolConfig(dir=str(tmp_path / "spool")))


def write(config: Config, batches: list[list[Trade]]) -> list[SinkReport]:
    reports: list[SinkReport] = []
    worker = FlushWorker("trades", config, reports.append)
    for rows in batches:
        worker.submit(rows)
    worker.stop(time.monotonic() + 30)
    worker.start()
    worker.join(30)
    return reports


def test_a_decimal_is_stored_and_read_back_as_sent_and_the_ohlcv_view_sums_exactly(questdb, table_prefix, tmp_path):
    minute = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
    rows = [Trade(minute + 10**9 + i, "binance", "BTCUSDT", i + 1, Decimal(price), Decimal(amount), "buy", minute)
            for i, (price, amount) in enumerate([(EXACT, "0.1"), ("70329669.63383690", "0.2"),
                                                 ("70329669.63383601", "0.00000001")])]
    reports = write(exact_config(questdb, table_prefix, tmp_path), [rows])
    assert sum(r.written for r in reports) == 3 and not any(r.dead_lettered or r.spooled for r in reports)
    table = f"{table_prefix}trades"
    assert questdb.wait_trade_ids(table, [1, 2, 3]) == [1, 2, 3]
    assert questdb.query(f"SELECT price, amount FROM {table} WHERE trade_id = 1") == [(Decimal(EXACT), Decimal("0.1"))]
    assert questdb.query(f"SELECT price::string FROM {table} WHERE trade_id = 1") == [(EXACT + "0000",)]  # scale 12
    columns = dict(questdb.query(f"SELECT \"column\", type FROM table_columns('{table}')"))
    assert (columns["price"], columns["amount"]) == ("DECIMAL(38,12)", "DECIMAL(38,12)")
    view = f"{table}_ohlcv_1m"
    bar = questdb.wait_for(lambda: questdb.query(f"SELECT open, high, low, close, volume, trades FROM {view}"),
                           what="the 1m bar")
    assert bar == [(Decimal(EXACT), Decimal("70329669.63383690"), Decimal("70329669.63383601"),
                    Decimal("70329669.63383601"), Decimal("0.30000001"), 3)]  # 0.1 + 0.2 is not 0.30000000000000004


def test_a_table_left_from_double_mode_is_refused_with_a_clear_error_and_no_row_is_lost(questdb, table_prefix,
                                                                                         tmp_path):
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))  # DOUBLE: the default before
    with pytest.raises(TableMismatch) as info:
        create_tables(questdb.pg_dsn, table_prefix, (TRADES,), decimals=True)
    assert str(info.value) == (f"table {table_prefix}trades: price is DOUBLE, amount is DOUBLE, but questdb.decimals = "
                               "true writes DECIMAL values, which QuestDB refuses there: migrate the table (README, "
                               "Exact decimals) or set questdb.decimals = false")
    reports = write(exact_config(questdb, table_prefix, tmp_path), [exact_trades(5)])
    assert sum(r.spooled for r in reports) == 5 and not any(r.dead_lettered or r.written for r in reports)
    assert "TableMismatch" in reports[0].error and "migrate the table" in reports[0].error


def test_the_service_stores_every_simulated_price_exactly(service, questdb, table_prefix):
    symbols = ["BTCUSDT", "ETHUSDT"]
    sim = service.simulator(["binance"], symbols, rate=200, count=200, seed=3, clock_paused=True)
    proc = service([sim_feed("binance", sim, symbols=symbols, name="exact")], questdb={"decimals": True})
    sim.wait_connections("binance", 1, timeout=30)
    sim.start_clock()
    sim.wait_emitted(200, timeout=30)
    table = f"{table_prefix}trades"
    assert_trade_ids(questdb, table, truth(sim, "binance", symbols))
    stored = {(s, i): (p, a) for s, i, p, a in questdb.query(f"SELECT symbol, trade_id, price, amount FROM {table}")}
    sent = {(s, t.trade_id): (Decimal(t.price), Decimal(t.qty)) for s in symbols for t in sim.trades("binance", s)}
    assert stored == sent
    assert proc.stop() == 0
