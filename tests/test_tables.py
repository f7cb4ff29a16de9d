"""The table descriptors: the SQL of the tables already in QuestDB, keys, encoders and flush policies agree."""
import pytest
from questdb import TimestampNanos

from marketfeed.config.loader import from_dict
from marketfeed.config.schema import SinkConfig
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.storage.schema import refresh_clause
from marketfeed.storage.tables import CANDLES, TABLES, TRADES, Table

# What earlier releases created, whitespace and identifier quotes aside: CREATE TABLE IF NOT EXISTS must keep
# meaning the same table.
TRADES_DDL = ('CREATE TABLE IF NOT EXISTS "p_trades" (ts TIMESTAMP_NS, exchange SYMBOL, symbol SYMBOL, trade_id LONG, '
              "price DOUBLE, amount DOUBLE, side SYMBOL, received_at TIMESTAMP_NS) TIMESTAMP(ts) PARTITION BY DAY WAL "
              "DEDUP UPSERT KEYS(ts, exchange, symbol, trade_id)")
CANDLES_DDL = ('CREATE TABLE IF NOT EXISTS "p_candles" (ts TIMESTAMP_NS, exchange SYMBOL, symbol SYMBOL, '
               "interval SYMBOL, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, closed BOOLEAN, "
               "received_at TIMESTAMP_NS) TIMESTAMP(ts) PARTITION BY DAY WAL "
               "DEDUP UPSERT KEYS(ts, exchange, symbol, interval)")
# Every field a value no other field has, so each written value names the field it came from.
SAMPLE: dict[Table, Trade | Candle] = {
    TRADES: Trade(1_000, "binance", "BTCUSDT", 7, 100.5, 0.25, "buy", 2_000),
    CANDLES: Candle(3_000, "kraken", "BTC/USD", "1m", 1.5, 2.5, 0.5, 2.0, 9.75, True, 4_000),
}


class RecordingBuffer:
    """The part of the client's buffer an appender uses; refuses the rows of `refuse` (symbol values)."""

    def __init__(self, refuse: frozenset[str] = frozenset()):
        self.rows: list[tuple[str, dict, dict, TimestampNanos]] = []
        self.refuse = refuse

    def row(self, name, *, symbols, columns, at):
        if symbols["symbol"] in self.refuse:
            raise ValueError("bad symbol")
        self.rows.append((name, symbols, columns, at))


def test_the_ddl_is_the_sql_of_the_tables_already_stored():
    assert TRADES.ddl(TRADES.name_in_db("p_")) == TRADES_DDL
    assert CANDLES.ddl(CANDLES.name_in_db("p_")) == CANDLES_DDL


def test_trades_have_two_ohlcv_views_named_after_the_table_and_candles_none():
    assert [view.name_in_db("p_trades") for view in TRADES.views] == ["p_trades_ohlcv_1m", "p_trades_ohlcv_1h"]
    sql = " ".join(TRADES.views[1].ddl("p_trades", refresh_clause("1m")).split())
    assert sql == ('CREATE MATERIALIZED VIEW IF NOT EXISTS "p_trades_ohlcv_1h" REFRESH EVERY 1m AS ( SELECT ts, '
                   "exchange, symbol, first(price) AS open, max(price) AS high, min(price) AS low, last(price) AS "
                   'close, sum(amount) AS volume, count() AS trades FROM "p_trades" SAMPLE BY 1h ) PARTITION BY MONTH')
    assert CANDLES.views == ()


def test_the_registry_is_keyed_by_name():
    assert TABLES == {"trades": TRADES, "candles": CANDLES}


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES)
def test_dedup_keys_are_columns_with_the_designated_timestamp_first(table: Table):
    names = [column for column, _ in table.columns]
    assert table.columns[0] == ("ts", "TIMESTAMP_NS") and table.dedup_keys[0] == "ts"
    assert set(table.dedup_keys) <= set(names) and len(set(names)) == len(names)
    assert len(set(table.dedup_keys)) == len(table.dedup_keys)


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES)
def test_the_appender_writes_every_column_from_every_field_of_the_row_type(table: Table):
    row = SAMPLE[table]
    assert type(row) is table.row_type and len(table.row_type._fields) == len(table.columns)
    buffer = RecordingBuffer()
    assert table.append(buffer, "p_t", [row]) == []
    [(name, symbols, columns, at)] = buffer.rows
    kinds = dict(table.columns)
    assert name == "p_t" and at.value == row.ts_ns
    assert {"ts", *symbols, *columns} == set(kinds) and not set(symbols) & set(columns)
    assert set(symbols) == {column for column, kind in kinds.items() if kind == "SYMBOL"}
    written = [*symbols.values(), *(getattr(v, "value", v) for v in columns.values()), at.value]
    assert sorted(map(repr, written)) == sorted(map(repr, row))  # each field once, none left out


def test_a_refused_row_is_left_out_with_its_error_and_the_others_written():
    good, bad = SAMPLE[TRADES], SAMPLE[TRADES]._replace(symbol="BAD")
    buffer = RecordingBuffer(refuse=frozenset({"BAD"}))
    assert TRADES.append(buffer, "p_trades", [good, bad, good]) == ["ValueError: bad symbol"]
    assert [symbols["symbol"] for _, symbols, _, _ in buffer.rows] == ["BTCUSDT", "BTCUSDT"]


def test_candles_have_their_own_flush_policy_keys_and_zero_means_the_sink_wide_value():
    assert TRADES.flush_policy(SinkConfig()) == CANDLES.flush_policy(SinkConfig()) == (10_000, 0.1)
    sink = from_dict({"sink": {"max_rows": 500, "flush_interval_s": 0.5, "candles_max_rows": 50}}).sink
    assert TRADES.flush_policy(sink) == (500, 0.5)
    assert CANDLES.flush_policy(sink) == (50, 0.5)
    sink = from_dict({"sink": {"candles_flush_interval_s": 3.0}}).sink
    assert TRADES.flush_policy(sink) == (10_000, 0.1)
    assert CANDLES.flush_policy(sink) == (10_000, 3.0)
