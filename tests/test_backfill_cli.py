"""`marketfeed backfill`, `feeds.history` and `verify --repair` end to end: the real QuestDB, the simulator's REST
twins, the command as a user runs it. Every test compares what is stored with what the exchange has, exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg2

from marketfeed.config.loader import to_toml
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import TRADES
from marketfeed.storage.verify import CONTIGUOUS_LABELS
from tests.support.polling import poll
from tests.support.questdb import REPO
from tests.support.service import service_config, sim_feed
from tests.support.truth import assert_trade_ids, truth

COLUMNS = "ts, exchange, symbol, trade_id, price, amount, side"  # all but received_at, our own receive time


def cli(config: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marketfeed.cli.main", *args, "-c", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, questdb, prefix: str, feeds: list[dict], **sections) -> Path:
    path = tmp_path / "backfill.toml"
    path.write_text(to_toml(service_config(tmp_path, questdb, prefix, feeds, **sections)))
    return path


def lines(stdout: str) -> list[dict]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def rows_between(questdb, table: str, since_ns: int, until_ns: int) -> list[tuple]:
    return questdb.query(f"SELECT {COLUMNS} FROM {table} WHERE ts BETWEEN '{iso(since_ns)}' AND '{iso(until_ns)}' "
                         "ORDER BY exchange, symbol, trade_id")


def cut_out(questdb, prefix: str, since_ns: int, until_ns: int) -> None:
    """Delete a time window from the trades table (QuestDB has no DELETE): copy the rest, recreate, copy back."""
    table = TRADES.name_in_db(prefix)
    keep = f"{table}keep"
    views = questdb.query("SELECT view_name FROM materialized_views() WHERE base_table_name = %s", (table,))
    with closing(psycopg2.connect(questdb.pg_dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute(f"CREATE TABLE {keep} AS (SELECT * FROM {table} WHERE ts < '{iso(since_ns)}' "
                    f"OR ts > '{iso(until_ns)}')")
        for (view,) in views:
            cur.execute(f"DROP MATERIALIZED VIEW {view}")
        cur.execute(f"DROP TABLE {table}")
        create_tables(questdb.pg_dsn, prefix, (TRADES,))
        cur.execute(f"INSERT INTO {table} SELECT * FROM {keep}")
        cur.execute(f"DROP TABLE {keep}")
    questdb.wait_for(lambda: questdb.wal_applied(table), what="the cut table's WAL applied")


def connected(sim, symbols: dict) -> None:
    """Every feed subscribed: then the market starts, so that the service sees all of it live."""
    for exchange in symbols:
        (connection,) = sim.wait_connections(exchange, 1, timeout=30)
        poll(lambda c=connection: c.session.symbols, 30, f"{exchange} subscribed")  # connected is not subscribed
    sim.start_clock()


SYMBOLS = {"binance": ["BTCUSDT"], "kraken": ["BTC/USD"], "coinbase": ["BTC-USD"]}


def test_a_deleted_window_is_restored_row_for_row_by_a_backfill_of_that_window(
        service, questdb, table_prefix, tmp_path):
    sim = service.simulator(list(SYMBOLS), SYMBOLS, rate=300, count=1500, seed=41, clock_paused=True)
    feeds = [sim_feed("binance", sim, SYMBOLS["binance"], channels=["trade", "aggTrade"]),
             sim_feed("kraken", sim, SYMBOLS["kraken"]), sim_feed("coinbase", sim, SYMBOLS["coinbase"])]
    running = service(feeds)
    connected(sim, SYMBOLS)
    table = TRADES.name_in_db(table_prefix)
    sim.wait_emitted(1500, timeout=30)
    # What the service stored is the truth: the window's rows are known. Stopped only then: the last trades sent
    # may still be on their way when the market ends (a loaded host takes a while).
    for exchange, symbols in SYMBOLS.items():
        assert_trade_ids(questdb, table, truth(sim, exchange, symbols), exchange=exchange, log=running)
    running.stop()
    (first, last), = questdb.query(f"SELECT min(ts), max(ts) FROM {table}")
    first_ns, last_ns = (int(t.timestamp() * 1e6) * 1000 for t in (first, last))
    since_ns, until_ns = first_ns + (last_ns - first_ns) // 3, first_ns + 2 * (last_ns - first_ns) // 3
    before = rows_between(questdb, table, since_ns, until_ns)
    total = questdb.query(f"SELECT count() FROM {table}")[0][0]
    assert {row[1] for row in before} == {"binance", "binance-agg", "kraken", "coinbase"}

    cut_out(questdb, table_prefix, since_ns, until_ns)
    assert rows_between(questdb, table, since_ns, until_ns) == []
    config = write_config(tmp_path, questdb, table_prefix, feeds)
    for feed in ("binance", "kraken", "coinbase"):
        done = cli(config, "backfill", "--feed", feed, "--from", iso(since_ns), "--to", iso(until_ns), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert lines(done.stdout)[-1]["state"] == "done"

    questdb.wait_for(lambda: questdb.wal_applied(table) and questdb.query(f"SELECT count() FROM {table}")[0][0]
                     >= total, what="the window restored")
    assert rows_between(questdb, table, since_ns, until_ns) == before
    assert questdb.query(f"SELECT count() FROM {table}")[0][0] == total  # nothing outside it, nothing twice


def test_a_backfill_killed_midway_resumes_from_its_journal_and_completes(service, questdb, table_prefix, tmp_path):
    symbols = {"binance": ["BTCUSDT"]}
    count = 20_000  # 20 pages of historicalTrades, at least 0.2 s apart: seconds to kill it in
    sim = service.simulator(["binance"], symbols, rate=10_000, count=count, seed=42)
    sim.wait_emitted(count, timeout=30)
    trades = sim.trades("binance", "BTCUSDT")
    # Event times 1 ms apart at most (sim.Simulator): the market runs ahead of the clock, so --to names its end.
    since_ns, until_ns = trades[0].time_ms * 1_000_000, trades[-1].time_ms * 1_000_000
    config = write_config(tmp_path, questdb, table_prefix, [sim_feed("binance", sim, symbols["binance"])])
    args = [sys.executable, "-m", "marketfeed.cli.main", "backfill", "-c", str(config), "--feed", "binance",
            "--from", iso(since_ns), "--to", iso(until_ns), "--json"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs = tmp_path / "ledger" / "backfill"

    def pages_journaled() -> int:
        return sum(path.read_bytes().count(b'"op":"advance"') for path in jobs.glob("*/journal"))

    try:
        poll(lambda: pages_journaled() >= 3, 60, "three pages stored and journaled")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    killed_after = pages_journaled()
    assert killed_after < count // 1000, "the first run finished before it was killed"
    requests_before = len(sim.rest_log("binance"))

    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    events = lines(second.stdout)
    assert events[0] == {"event": "start", "gaps": 1, "resumed": True}
    resumed_from = int(sim.rest_log("binance")[requests_before].query["fromId"])
    # Where the journal says the job was: its first record found the window's first id, each later one a page.
    assert resumed_from == truth(sim, "binance", ["BTCUSDT"])["BTCUSDT"][0] + (killed_after - 1) * 1000
    assert_trade_ids(questdb, TRADES.name_in_db(table_prefix), truth(sim, "binance", ["BTCUSDT"]), exchange="binance")


def test_history_fills_a_new_table_with_what_the_exchange_had_before_the_first_start(service, questdb, table_prefix):
    symbols = {"binance": ["BTCUSDT", "ETHUSDT"], "kraken": ["BTC/USD"]}
    sim = service.simulator(list(symbols), symbols, rate=300, count=2100, seed=43)
    sim.wait_emitted(1200, timeout=30)  # four seconds of market before the service ever ran
    running = service([sim_feed("binance", sim, symbols["binance"], history="1h"),
                       sim_feed("kraken", sim, symbols["kraken"], history="1h")])
    planned = running.wait_event("history_planned", timeout=30)
    assert planned["history"] == "1h"
    table = TRADES.name_in_db(table_prefix)
    sim.wait_emitted(2100, timeout=30)
    for exchange in symbols:
        assert_trade_ids(questdb, table, truth(sim, exchange, symbols[exchange]), exchange=exchange, log=running)
    assert running.stop() == 0


def test_verify_repair_hands_the_holes_it_finds_to_the_ledger_and_the_service_fills_them(
        service, questdb, table_prefix, tmp_path):
    symbols = {"binance": ["BTCUSDT"]}
    sim = service.simulator(["binance"], symbols, rate=300, count=900, seed=44, clock_paused=True)
    feeds = [sim_feed("binance", sim, symbols["binance"])]
    running = service(feeds)
    connected(sim, symbols)
    table = TRADES.name_in_db(table_prefix)
    sim.wait_emitted(900, timeout=30)
    # Stopped once everything sent is stored: the last trades may still be on their way when the market ends.
    assert_trade_ids(questdb, table, truth(sim, "binance", ["BTCUSDT"]), exchange="binance", log=running)
    running.stop()
    hole = sim.trades("binance", "BTCUSDT")[300:400]
    cut_out(questdb, table_prefix, hole[0].time_ms * 1_000_000, hole[-1].time_ms * 1_000_000)
    assert "binance" in CONTIGUOUS_LABELS
    config = write_config(tmp_path, questdb, table_prefix, feeds)

    found = cli(config, "verify", "--repair")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "handed 1 gap" in found.stdout, found.stdout
    assert list((tmp_path / "ledger" / "requests").glob("*/*.json"))

    # The service's own scan for holes at start is off: only the handed-over request can fill it.
    again = service(feeds, questdb={"hole_scan_h": 0.0})
    taken = again.wait_event("gap_request_taken", timeout=30)
    assert taken["gaps"] == 1
    assert_trade_ids(questdb, table, truth(sim, "binance", ["BTCUSDT"]), exchange="binance", log=again)
    poll(lambda: not list((tmp_path / "ledger" / "requests").glob("*/*.json")), 30, "the request file removed")
    assert again.stop() == 0
    clean = cli(config, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
