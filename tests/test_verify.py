"""`marketfeed verify` against the real QuestDB: planted duplicates and gaps are found, clean data passes."""
import subprocess
import sys
from datetime import UTC, datetime

import orjson
from questdb import Sender

from marketfeed.cli.verify import run
from marketfeed.config.schema import Config, QuestDBConfig
from marketfeed.feeds.base import Gap
from marketfeed.feeds.rows import Trade
from marketfeed.storage.ledger import CloseReason, Journal, Ledger, Origin
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import CANDLES, TRADES
from marketfeed.storage.verify import CONTIGUOUS_LABELS, UnfilledGap, parse_since, unfilled_since, verify
from tests.support.questdb import REPO

BASE = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def plant(questdb, prefix: str, rows: list[Trade]) -> None:
    create_tables(questdb.pg_dsn, prefix, (TRADES,))
    table = f"{prefix}trades"
    with Sender.from_conf(questdb.conf + "protocol_version=2;") as sender:
        buffer = sender.new_buffer()
        TRADES.append(buffer, table, rows)
        sender.flush(buffer)
    questdb.wait_for(lambda: questdb.wal_applied(table) and len(questdb.trade_ids(table)) == len(rows),
                     what="planted rows")


def trade(symbol: str, trade_id: int, ts_ns: int | None = None, exchange: str = "binance") -> Trade:
    return Trade(BASE + trade_id * 10**6 if ts_ns is None else ts_ns, exchange, symbol, trade_id, 1.0, 1.0, "buy", 0)


def run_cli(tmp_path, questdb, prefix: str, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "verify.toml"
    config.write_text(f'[questdb]\npg_dsn = "{questdb.pg_dsn}"\ntable_prefix = "{prefix}"\n'
                      f'[ledger]\ndir = "{tmp_path / "ledger"}"\n')
    return subprocess.run([sys.executable, "-m", "marketfeed.cli.main", "verify", "-c", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_verify_finds_a_planted_duplicate_and_a_planted_gap(questdb, table_prefix, tmp_path):
    btc = [trade("BTCUSDT", i) for i in range(1, 101) if not 40 <= i <= 44]  # ids 40..44 never stored
    btc.append(trade("BTCUSDT", 70, BASE + 70 * 10**6 + 1))  # trade 70 again, one nanosecond later: DEDUP keeps both
    eth = [trade("ETHUSDT", i) for i in range(1, 51)]  # clean
    plant(questdb, table_prefix, btc + eth)

    found = {r.symbol: r for r in verify(questdb.pg_dsn, table_prefix)}
    assert (found["BTCUSDT"].rows, found["BTCUSDT"].duplicates, found["BTCUSDT"].missing_ids) == (96, 1, 5)
    assert found["BTCUSDT"].duplicate_ids == [70] and found["BTCUSDT"].gaps == [(40, 44)]
    assert found["ETHUSDT"].clean and found["ETHUSDT"].rows == 50

    result = run_cli(tmp_path, questdb, table_prefix, "--json")
    assert result.returncode == 1, result.stderr
    body = orjson.loads(result.stdout)
    assert body["clean"] is False
    btc_json = next(s for s in body["series"] if s["symbol"] == "BTCUSDT")
    assert btc_json["gaps"] == [[40, 44]] and btc_json["duplicate_ids"] == [70]

    text = run_cli(tmp_path, questdb, table_prefix)
    assert text.returncode == 1
    assert "gap: trades binance BTCUSDT ids 40..44 (5 missing)" in text.stdout
    assert "duplicate: trades binance BTCUSDT trade id 70" in text.stdout


def test_verify_is_clean_on_clean_data_and_honours_since(questdb, table_prefix, tmp_path):
    plant(questdb, table_prefix, [trade("BTCUSDT", i) for i in range(1, 31)]
          + [trade("ETHUSDT", i, BASE - 86400 * 10**9 + i) for i in (1, 5)])  # a gap, but the day before
    assert run_cli(tmp_path, questdb, table_prefix).returncode == 1
    result = run_cli(tmp_path, questdb, table_prefix, "--since", "2024-01-01T00:00:00Z", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s["symbol"] for s in orjson.loads(result.stdout)["series"]] == ["BTCUSDT"]


def test_since_accepts_iso_times_and_relative_durations():
    now = datetime(2024, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2023, 12, 26, 12, 0, tzinfo=UTC)
    assert parse_since("2024-01-01", now) == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_since("2024-01-01T10:00:00Z", now) == datetime(2024, 1, 1, 10, tzinfo=UTC)


def test_every_contiguous_id_sequence_is_checked_aggregate_trades_too(questdb, table_prefix, tmp_path):
    assert CONTIGUOUS_LABELS == {"binance", "binance-agg", "kraken", "coinbase"}  # polygon's ids are not contiguous
    holes = {"binance-agg": (30, 31), "kraken": (5, 5), "coinbase": (12, 14), "polygon": (20, 29)}
    plant(questdb, table_prefix, [trade("BTCUSDT", i) for i in range(1, 51)]  # binance trades: clean
          + [trade("BTCUSDT" if label.startswith("binance") else "BTC-USD", i, exchange=label)
             for label, (first, last) in holes.items() for i in range(1, 51) if not first <= i <= last])
    found = {r.exchange: r for r in verify(questdb.pg_dsn, table_prefix)}
    assert found["binance"].clean and found["binance"].missing_ids == 0
    for label in ("binance-agg", "kraken", "coinbase"):
        assert (found[label].missing_ids, found[label].gaps) == (holes[label][1] - holes[label][0] + 1, [holes[label]])
    assert found["polygon"].missing_ids is None and found["polygon"].clean
    result = run_cli(tmp_path, questdb, table_prefix)
    assert result.returncode == 1, result.stderr
    assert "gap: trades binance-agg BTCUSDT ids 30..31 (2 missing)" in result.stdout


UNFILLED = [  # as the recovery ledger closes them
    UnfilledGap("polygon", "trades", "AAPL", "AAPL", "unrecoverable: HTTP 403 NOT_AUTHORIZED",
                since_ns=BASE + 60 * 10**9, until_ns=BASE + 120 * 10**9),
    UnfilledGap("kraken", "candles", "BTC/USD", "BTC/USD@ohlc-1", "unrecoverable: older than the 720 entries served",
                since_ns=BASE - 86400 * 10**9, until_ns=BASE - 3600 * 10**9),
    UnfilledGap("binance", "trades", "BTCUSDT", "BTCUSDT@aggTrade", "expired: older than max_gap_age", first_id=7,
                last_id=9),
]


def test_unfilled_gaps_are_those_reaching_into_the_checked_period_oldest_first():
    assert unfilled_since(UNFILLED) == [UNFILLED[2], UNFILLED[1], UNFILLED[0]]  # an id range has no time: first
    since = datetime(2024, 1, 1, tzinfo=UTC)  # BASE: the kraken window ended an hour before
    assert unfilled_since(UNFILLED, since) == [UNFILLED[2], UNFILLED[0]]
    assert unfilled_since([], since) == []


def test_verify_reports_what_the_ledger_could_not_fill_and_exits_1(questdb, table_prefix, capsys):
    plant(questdb, table_prefix, [trade("BTCUSDT", i) for i in range(1, 31)])  # stored rows: clean
    config = Config(questdb=QuestDBConfig(pg_dsn=questdb.pg_dsn, table_prefix=table_prefix))
    assert run(config, None, False) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "clean"

    assert run(config, "2024-01-01T00:00:00Z", False, UNFILLED) == 1
    text = capsys.readouterr().out.splitlines()
    assert text[-3:] == [
        "unfilled: trades feed binance BTCUSDT (BTCUSDT@aggTrade) ids 7..9: expired: older than max_gap_age",
        ("unfilled: trades feed polygon AAPL (AAPL) 2024-01-01T00:01:00.000Z..2024-01-01T00:02:00.000Z: "
         "unrecoverable: HTTP 403 NOT_AUTHORIZED"),
        "problems found"]

    assert run(config, None, True, UNFILLED) == 1
    body = orjson.loads(capsys.readouterr().out)
    assert body["clean"] is False and all(s["clean"] for s in body["series"])
    assert [(g["feed"], g["table"], g["stream"]) for g in body["unfilled"]] == [
        ("binance", "trades", "BTCUSDT@aggTrade"), ("kraken", "candles", "BTC/USD@ohlc-1"),
        ("polygon", "trades", "AAPL")]
    assert body["unfilled"][0] == {"feed": "binance", "table": "trades", "symbol": "BTCUSDT",
                                   "stream": "BTCUSDT@aggTrade", "reason": "expired: older than max_gap_age",
                                   "first_id": 7, "last_id": 9, "since_ns": 0, "until_ns": 0}


def test_verify_reports_the_gaps_the_ledger_gave_up_on_and_exits_1(questdb, table_prefix, tmp_path):
    plant(questdb, table_prefix, [trade("BTCUSDT", i) for i in range(1, 11)])  # the stored ids are clean
    assert run_cli(tmp_path, questdb, table_prefix).returncode == 0
    ledger = Ledger()
    candles = Gap("BTC/USD", since_ns=BASE, until_ns=BASE + 3600 * 10**9, stream="BTC/USD@ohlc-1", table=CANDLES)
    lost, records = ledger.open_gap("kraken-1", candles, Origin.PROCESS_DOWNTIME, BASE)
    records += ledger.close(lost.key, CloseReason.UNRECOVERABLE, "Kraken keeps 720 candles", BASE)
    Journal(tmp_path / "ledger").append(records)
    result = run_cli(tmp_path, questdb, table_prefix)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unfilled: candles feed kraken-1 BTC/USD (BTC/USD@ohlc-1)" in result.stdout
    assert "unrecoverable: Kraken keeps 720 candles" in result.stdout and "problems found" in result.stdout


def test_verify_reports_what_a_backfill_job_could_not_fill(questdb, table_prefix, tmp_path):
    plant(questdb, table_prefix, [trade("BTCUSDT", i) for i in range(1, 11)])
    ledger = Ledger()
    candles = Gap("BTC/USD", since_ns=BASE, until_ns=BASE + 3600 * 10**9, stream="BTC/USD@ohlc-5", table=CANDLES)
    lost, records = ledger.open_gap("kraken-1", candles, Origin.OPERATOR, BASE)
    records += ledger.close(lost.key, CloseReason.UNRECOVERABLE, "beyond Kraken's 720 most recent entries", BASE)
    Journal(tmp_path / "ledger" / "backfill" / "kraken-1-0123456789abcdef").append(records)
    result = run_cli(tmp_path, questdb, table_prefix)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unfilled: candles feed kraken-1 BTC/USD (BTC/USD@ohlc-5)" in result.stdout
