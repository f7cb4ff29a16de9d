"""The sink against the real QuestDB: bad rows isolated, OHLCV views created with the schema."""
import time

import pytest

from actors.buffer import BufferActor, RowBatch, SinkDirectory
from config.schema import Config, QuestDBConfig, SinkConfig, SpoolConfig
from feeds.rows import Trade
from storage import deadletter
from storage.schema import create_tables
from supervision.supervisor import GetStatus
from tests.support.polling import poll


def trades(first: int, n: int, base: int | None = None) -> list[Trade]:
    base = time.time_ns() if base is None else base
    return [Trade(base + i * 1000, "binance", "BTCUSDT", first + i, 100.0 + i, 0.5, "buy", base) for i in range(n)]




@pytest.fixture
def buffer(questdb, table_prefix, tmp_path):
    config = Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix),
                    sink=SinkConfig(max_rows=1000, flush_interval_s=0.05, dead_letter_dir=str(tmp_path / "dead")),
                    spool=SpoolConfig(dir=str(tmp_path / "spool")))
    ref = BufferActor.start(None, "trades", config, SinkDirectory())
    yield ref
    ref.stop()


def test_a_bad_row_goes_to_the_dead_letter_file_and_the_rest_of_its_batch_lands(buffer, questdb, table_prefix, tmp_path):
    rows = trades(1, 20)
    rows[7] = rows[7]._replace(trade_id=8.5)  # a float for QuestDB's LONG column: the server refuses the request
    buffer.tell(RowBatch(rows))
    status = poll(lambda: (s := buffer.ask(GetStatus(), timeout=5))["rows_dead_lettered"] == 1 and s)
    assert (status["rows_written"], status["rows_spooled"], status["breaker"]) == (19, 0, "closed")
    table = f"{table_prefix}trades"
    expected = [i for i in range(1, 21) if i != 8]
    assert questdb.wait_trade_ids(table, expected) == expected
    (letter,) = deadletter.read(tmp_path / "dead" / f"{table}.jsonl")
    assert letter["row"]["trade_id"] == 8.5 and letter["table"] == table
    assert "cast error" in letter["error"]


def test_ohlcv_views_follow_the_trades(buffer, questdb, table_prefix):
    minute = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
    buffer.tell(RowBatch(trades(1, 3, base=minute + 10**9)))  # 100, 101, 102 within one minute
    view = f"{table_prefix}trades_ohlcv_1m"
    bar = questdb.wait_for(lambda: questdb.query(f"SELECT open, high, low, close, volume, trades FROM {view}"),
                           what="the 1m bar")
    assert bar == [(100.0, 102.0, 100.0, 102.0, 1.5, 3)]
    hourly = questdb.query("SELECT view_name FROM materialized_views() WHERE view_name = %s", (f"{table_prefix}trades_ohlcv_1h",))
    assert hourly
    create_tables(questdb.pg_dsn, table_prefix)  # idempotent: every writer start runs it
