"""The sink's pure parts and its files: bad-row isolation, transport choice, spool, dead letters, flush policy."""
import os

import pytest

from marketfeed.config.loader import from_dict
from marketfeed.config.schema import Config, QuestDBConfig, SinkConfig, SpoolConfig
from marketfeed.feeds.rows import Trade
from marketfeed.storage import deadletter
from marketfeed.storage.spool import Spool, SpoolFull
from marketfeed.storage.tables import CANDLES, TRADES
from marketfeed.storage.writer import (
    BadData,
    Unavailable,
    client_store_and_forward,
    isolate_bad_rows,
    sender_conf,
    spool_enabled,
)


def trades(first: int, n: int) -> list[Trade]:
    return [Trade(1_700_000_000_000_000_000 + i, "binance", "BTCUSDT", first + i, 100.5 + i, 0.25, "buy", 7)
            for i in range(n)]


def test_isolation_writes_everything_but_the_bad_rows():
    rows = trades(1, 37)
    bad = {5, 30}
    stored: list[int] = []
    requests: list[int] = []

    def write(batch):  # QuestDB's behaviour: one bad row refuses the whole transactional request
        requests.append(len(batch))
        if refused := [r.trade_id for r in batch if r.trade_id in bad]:
            raise BadData(f"cast error in trade {refused[0]}")
        stored.extend(r.trade_id for r in batch)

    rejected = isolate_bad_rows(rows, write)
    assert sorted(stored) == [i for i in range(1, 38) if i not in bad]
    assert rejected == [(rows[4], "cast error in trade 5"), (rows[29], "cast error in trade 30")]  # ids 5 and 30
    assert len(requests) < 30  # halving, not one request per row


def test_isolation_lets_unavailability_through():
    def write(batch):
        raise Unavailable("connection refused")

    with pytest.raises(Unavailable):
        isolate_bad_rows(trades(1, 4), write)


@pytest.mark.parametrize("conf, client_sf, spool", [
    ("http::addr=db:9000;", False, True),
    ("https::addr=db:9000;username=u;password=p;", False, True),
    ("ws::addr=db:9000;", False, True),  # QWP in memory mode: our spool still protects the rows
    ("ws::addr=db:9000;sf_dir=/var/lib/marketfeed/qdb-sf;", True, False),
    ("wss::addr=db:9000;sf_dir=/sf;sender_id=a;", True, False),
    ("http::addr=db:9000;sf_dir=/sf;", False, True),  # sf_dir means nothing to ILP/HTTP
])
def test_spool_steps_aside_only_for_the_clients_own_store_and_forward(conf, client_sf, spool):
    assert client_store_and_forward(conf) is client_sf
    assert spool_enabled(Config(questdb=QuestDBConfig(conf=conf))) is spool
    assert spool_enabled(Config(questdb=QuestDBConfig(conf=conf), spool=SpoolConfig(enabled=False))) is False


def test_sender_conf_adds_http_only_keys_only_to_http():
    assert sender_conf("http::addr=db:9000;") == "http::addr=db:9000;auto_flush=off;protocol_version=2;retry_timeout=0;"
    assert sender_conf("http::addr=db:9000;retry_timeout=5000") == (
        "http::addr=db:9000;retry_timeout=5000;auto_flush=off;protocol_version=2;")
    assert sender_conf("ws::addr=db:9000;") == "ws::addr=db:9000;auto_flush=off;"


def test_spool_keeps_batches_in_order_across_a_restart(tmp_path):
    spool = Spool(tmp_path / "trades", max_bytes=1 << 20)
    spool.append(trades(1, 3))
    spool.append(trades(4, 2))
    (tmp_path / "trades" / "0000000000000003.tmp").write_bytes(b"[[half a batch")  # killed mid-write
    reopened = Spool(tmp_path / "trades", max_bytes=1 << 20)
    assert (len(reopened), reopened.rows, reopened.bytes) == (2, 5, spool.bytes)
    assert not list((tmp_path / "trades").glob("*.tmp"))
    assert reopened.oldest(Trade) == trades(1, 3)  # every field back, floats exact
    assert reopened.remove_oldest() == 3
    reopened.append(trades(6, 1))
    assert reopened.oldest(Trade) == trades(4, 2)
    reopened.remove_oldest()
    assert reopened.oldest(Trade) == trades(6, 1)


def test_spool_refuses_past_max_bytes(tmp_path):
    spool = Spool(tmp_path, max_bytes=250)
    assert spool.append(trades(1, 3)) > 125  # one batch fits, two do not
    with pytest.raises(SpoolFull):
        spool.append(trades(4, 3))
    assert spool.rows == 3


def test_an_unused_spool_leaves_no_directory(tmp_path):
    Spool(tmp_path / "never", max_bytes=1000)
    assert not (tmp_path / "never").exists()


def test_dead_letters_are_json_lines_with_the_error(tmp_path):
    letters = deadletter.DeadLetters(tmp_path, "p_trades")
    row = trades(9, 1)[0]
    letters.write([(row, "cast error")])
    letters.write([(row, "again")])
    got = deadletter.read(tmp_path / "p_trades.jsonl")
    assert [g["error"] for g in got] == ["cast error", "again"]
    assert got[0]["table"] == "p_trades" and Trade(**got[0]["row"]) == row
    assert os.path.getsize(tmp_path / "p_trades.jsonl") > 0


def test_flush_policy_per_table_and_new_config_keys_load():
    config = from_dict({"sink": {"max_rows": 5000, "candles_flush_interval_s": 2.0, "breaker_failures": 3},
                        "spool": {"dir": "/data/spool", "max_bytes": 1 << 20, "on_full": "pause_feeds"}})
    assert TRADES.flush_policy(config.sink) == (5000, 0.1)
    assert CANDLES.flush_policy(config.sink) == (5000, 2.0)
    assert config.spool.on_full == "pause_feeds" and config.sink.breaker_failures == 3
    assert CANDLES.flush_policy(SinkConfig()) == TRADES.flush_policy(SinkConfig())
