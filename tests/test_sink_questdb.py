"""The sink against the real QuestDB: bad rows isolated, OHLCV views created and refreshed as configured."""
import time

import pytest

from marketfeed.actors.buffer import BufferActor, RowBatch, SinkDirectory
from marketfeed.config.loader import ConfigError, load
from marketfeed.config.schema import Config, QuestDBConfig, SinkConfig, SpoolConfig
from marketfeed.feeds.rows import Trade
from marketfeed.storage import deadletter
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import TRADES
from marketfeed.storage.writer import FlushWorker, SinkReport
from marketfeed.supervision.supervisor import GetStatus
from tests.support.polling import poll


def trades(first: int, n: int, base: int | None = None) -> list[Trade]:
    base = time.time_ns() if base is None else base
    return [Trade(base + i * 1000, "binance", "BTCUSDT", first + i, 100.0 + i, 0.5, "buy", base) for i in range(n)]


def refresh_of_views(questdb, table: str) -> list[tuple]:
    """(view, refresh type, timer interval, unit, timer start) of the views on `table`, by name."""
    return questdb.query("SELECT view_name, refresh_type, timer_interval, timer_interval_unit, timer_start "
                         "FROM materialized_views() WHERE base_table_name = %s ORDER BY view_name", (table,))


@pytest.fixture
def buffer(request, questdb, table_prefix, tmp_path):
    """A trades buffer actor; its views refresh as the test's indirect parameter says (default: the config's)."""
    refresh = getattr(request, "param", QuestDBConfig.ohlcv_refresh)
    config = Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix,
                                          ohlcv_refresh=refresh),
                    sink=SinkConfig(max_rows=1000, flush_interval_s=0.05, dead_letter_dir=str(tmp_path / "dead")),
                    spool=SpoolConfig(dir=str(tmp_path / "spool")))
    ref = BufferActor.start(None, "trades", config, SinkDirectory())
    yield ref
    ref.stop()


def test_a_bad_row_goes_to_the_dead_letter_file_and_the_rest_of_its_batch_lands(buffer, questdb, table_prefix,
                                                                                 tmp_path):
    rows = trades(1, 20)
    # A float for QuestDB's LONG column (the wrong type is the point): the server refuses the request.
    rows[7] = rows[7]._replace(trade_id=8.5)  # type: ignore[arg-type]
    buffer.tell(RowBatch(rows))
    status = poll(lambda: (s := buffer.ask(GetStatus(), timeout=5))["rows_dead_lettered"] == 1 and s)
    assert (status["rows_written"], status["rows_spooled"], status["breaker"]) == (19, 0, "closed")
    table = f"{table_prefix}trades"
    expected = [i for i in range(1, 21) if i != 8]
    assert questdb.wait_trade_ids(table, expected) == expected
    (letter,) = deadletter.read(tmp_path / "dead" / f"{table}.jsonl")
    assert letter["row"]["trade_id"] == 8.5 and letter["table"] == table
    assert "cast error" in letter["error"]


@pytest.mark.parametrize("buffer", ["immediate"], indirect=True)  # bars at once, not at the next timer tick
def test_ohlcv_views_follow_the_trades(buffer, questdb, table_prefix):
    minute = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
    buffer.tell(RowBatch(trades(1, 3, base=minute + 10**9)))  # 100, 101, 102 within one minute
    view = f"{table_prefix}trades_ohlcv_1m"
    bar = questdb.wait_for(lambda: questdb.query(f"SELECT open, high, low, close, volume, trades FROM {view}"),
                           what="the 1m bar")
    assert bar == [(100.0, 102.0, 100.0, 102.0, 1.5, 3)]
    views = [row[:2] for row in refresh_of_views(questdb, f"{table_prefix}trades")]
    assert views == [(f"{table_prefix}trades_ohlcv_1h", "immediate"), (f"{table_prefix}trades_ohlcv_1m", "immediate")]
    create_tables(questdb.pg_dsn, table_prefix, ohlcv_refresh="immediate")  # idempotent: every writer start runs it


def test_views_refresh_on_a_timer_by_default_and_follow_a_changed_setting(buffer, questdb, table_prefix):
    table = f"{table_prefix}trades"
    buffer.tell(RowBatch(trades(1, 1)))
    assert questdb.wait_trade_ids(table, [1]) == [1]
    timers = refresh_of_views(questdb, table)
    assert [row[:4] for row in timers] == [(f"{table}_ohlcv_1h", "timer", 1, "MINUTE"),
                                           (f"{table}_ohlcv_1m", "timer", 1, "MINUTE")]
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,))
    assert refresh_of_views(questdb, table) == timers  # same setting: views left alone, timers not restarted

    def refresh_is(*state):  # another setting at the next start: the existing views follow it
        return {row[1:4] for row in refresh_of_views(questdb, table)} == {state}

    create_tables(questdb.pg_dsn, table_prefix, (TRADES,), ohlcv_refresh="immediate")
    questdb.wait_for(lambda: refresh_is("immediate", 0, None), what="views refreshed immediately")
    create_tables(questdb.pg_dsn, table_prefix, (TRADES,), ohlcv_refresh="2h")
    questdb.wait_for(lambda: refresh_is("timer", 2, "HOUR"), what="views refreshed every 2h")


@pytest.mark.parametrize("value", ["30s", "0m", "1w", "1 m", "hourly"])
def test_a_bad_ohlcv_refresh_is_refused_naming_file_and_key(tmp_path, value):
    path = tmp_path / "bad.toml"
    path.write_text(f'[questdb]\nohlcv_refresh = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.problems == [
        f"{path}: questdb.ohlcv_refresh: {value!r} is not one of immediate, <n>m, <n>h, <n>d"]


def test_ohlcv_refresh_accepts_immediate_and_questdb_intervals(tmp_path):
    path = tmp_path / "ok.toml"
    for value in ("immediate", "90m", "4h", "1d"):
        path.write_text(f'[questdb]\nohlcv_refresh = "{value}"\n')
        assert load(path, env={}).questdb.ohlcv_refresh == value
    assert load(None, env={}).questdb.ohlcv_refresh == "1m"


def test_batches_queued_behind_a_request_go_out_together_in_one_transaction(questdb, table_prefix, tmp_path):
    """Group commit: what queued while the writer was busy is one request, the stop still comes last."""
    config = Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix),
                    sink=SinkConfig(max_rows=10, dead_letter_dir=str(tmp_path / "dead")),
                    spool=SpoolConfig(dir=str(tmp_path / "spool")))
    reports: list[SinkReport] = []
    worker = FlushWorker("trades", config, reports.append)
    for first in range(1, 71, 10):  # 7 batches queued before the thread runs: as if a request had been slow
        worker.submit(trades(first, 10))
    worker.stop(time.monotonic() + 30)
    worker.start()
    worker.join(30)
    # at most GROUP_COMMIT_FACTOR batches a request: 40 + 30 rows
    assert [(r.rows, r.written) for r in reports] == [(40, 40), (30, 30)]
    table = f"{table_prefix}trades"
    assert questdb.wait_trade_ids(table, list(range(1, 71))) == list(range(1, 71))
    assert questdb.query(f"SELECT count() FROM wal_transactions('{table}')") == [(2,)]
