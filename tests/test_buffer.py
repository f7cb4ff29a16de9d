"""Buffer actor against the real QuestDB: rows land, flushes happen on size and on time."""
import time

import pytest

from marketfeed.actors.buffer import BufferActor, RowBatch, SinkDirectory
from marketfeed.config.schema import Config, QuestDBConfig, SinkConfig, SpoolConfig
from marketfeed.feeds.rows import Trade
from marketfeed.supervision.supervisor import GetStatus
from tests.support.polling import poll


def trades(first: int, n: int, symbol: str = "BTCUSDT") -> list[Trade]:
    base = time.time_ns()
    return [Trade(base + i, "binance", symbol, first + i, 100.0 + i, 0.5, "buy", base) for i in range(n)]


@pytest.fixture
def start_buffer(questdb, table_prefix):
    started = []

    def start(max_rows: int, flush_interval_s: float):
        config = Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix),
                        sink=SinkConfig(max_rows=max_rows, flush_interval_s=flush_interval_s))
        ref = BufferActor.start(None, "trades", config, SinkDirectory())
        started.append(ref)
        return ref

    yield start
    for ref in started:
        ref.stop()


def status(ref) -> dict:
    return ref.ask(GetStatus(), timeout=5)




def test_readers_are_held_while_rows_wait_above_half_the_high_water_mark(questdb, table_prefix, tmp_path):
    config = Config(questdb=QuestDBConfig(conf=questdb.conf, pg_dsn=questdb.pg_dsn, table_prefix=table_prefix),
                    sink=SinkConfig(max_rows=100, flush_interval_s=3600),
                    spool=SpoolConfig(dir=str(tmp_path / "spool"), high_water_rows=100))
    directory = SinkDirectory()
    ref = BufferActor.start(None, "trades", config, directory)
    try:
        ref.tell(RowBatch(trades(1, 80)))  # 80 waiting > 50: behind
        poll(lambda: status(ref)["behind"])
        assert directory.behind() and not directory.wait_caught_up(0.05)
        ref.tell(RowBatch(trades(81, 20)))  # max_rows: flushed, written, caught up
        poll(lambda: status(ref)["rows_written"] == 100)
        assert directory.wait_caught_up(5) and not status(ref)["behind"]
        ref.tell(RowBatch(trades(101, 60)))
        poll(lambda: directory.behind())
    finally:
        ref.stop()
    assert not directory.behind()  # a stopped buffer holds no reader


def test_flush_by_time_when_fewer_than_max_rows_arrive(start_buffer, questdb, table_prefix):
    ref = start_buffer(max_rows=1000, flush_interval_s=0.3)
    ref.tell(RowBatch(trades(1, 10)))
    # Nothing else arrives: only the timer can flush these ten rows.
    poll(lambda: status(ref)["rows_written"] == 10)
    assert status(ref)["buffered_rows"] == 0
    assert questdb.wait_trade_ids(f"{table_prefix}trades", list(range(1, 11))) == list(range(1, 11))


def test_flush_by_size_when_more_than_max_rows_arrive(start_buffer, questdb, table_prefix):
    ref = start_buffer(max_rows=100, flush_interval_s=3600)  # the timer would take an hour
    ref.tell(RowBatch(trades(1, 150)))
    ref.tell(RowBatch(trades(151, 100)))
    poll(lambda: status(ref)["rows_written"] == 200)
    s = status(ref)
    assert s["buffered_rows"] == 50  # below max_rows: waits for more rows or the (hour-long) timer
    ids = questdb.wait_trade_ids(f"{table_prefix}trades", list(range(1, 201)))
    assert ids == list(range(1, 201))


def test_a_replayed_batch_does_not_duplicate(start_buffer, questdb, table_prefix):
    ref = start_buffer(max_rows=1000, flush_interval_s=0.1)
    rows = trades(1, 20)
    ref.tell(RowBatch(rows))
    poll(lambda: status(ref)["rows_written"] == 20)
    ref.tell(RowBatch(list(rows)))  # the same rows again, as after a retry or a second instance
    poll(lambda: status(ref)["rows_written"] == 40)
    table = f"{table_prefix}trades"
    questdb.wait_for(lambda: questdb.wal_applied(table), what="WAL applied")
    assert questdb.trade_ids(table) == list(range(1, 21))
