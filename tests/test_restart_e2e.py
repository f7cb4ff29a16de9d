"""End to end, a restart: SIGKILL, the market moves on, `marketfeed run` again. The gaps since the stored last ids
are fetched over REST as the exchanges document it (aggTrades by symbol, Kraken Trades from `since`), so the
stored ids equal the truth for every id sequence."""
from marketfeed.sim.binance import agg_id
from tests.support.service import sim_feed
from tests.support.truth import assert_trade_ids, truth

SYMBOLS = {"binance": ["BTCUSDT"], "kraken": ["BTC/USD"]}
COUNT = 3000  # at 500/s: six seconds of market
DOWN = 1300  # trades per symbol while nobody listens: more than Kraken's 1000 newest trades reachable without since


def test_a_restart_backfills_aggregate_trades_by_symbol_and_kraken_trades_since_the_last_stored_one(
        service, questdb, table_prefix):
    sim = service.simulator(list(SYMBOLS), SYMBOLS, rate=500, count=COUNT, seed=31, clock_paused=True)
    feeds = [sim_feed("binance", sim, SYMBOLS["binance"], channels=["trade", "aggTrade"]),
             sim_feed("kraken", sim, SYMBOLS["kraken"])]
    first = service(feeds)
    sim.wait_connections("binance", 1, timeout=30)
    sim.wait_connections("kraken", 1, timeout=30)
    sim.start_clock()
    table = f"{table_prefix}trades"

    def every_sequence_stored() -> bool:
        return questdb.wal_applied(table) and questdb.query(
            f"SELECT count_distinct(exchange) FROM {table}")[0][0] == 3  # binance, binance-agg, kraken

    questdb.wait_for(every_sequence_stored, 30, "trades of every sequence stored")
    first.kill()
    down_at = min(sim.emitted("binance"), sim.emitted("kraken"))
    assert down_at + DOWN < COUNT, "the first process ran too long to leave a downtime worth the name"
    sim.wait_emitted(down_at + DOWN, timeout=30)
    second = service(feeds)
    sim.wait_emitted(COUNT, timeout=30)

    assert_trade_ids(questdb, table, truth(sim, "binance", SYMBOLS["binance"]), exchange="binance", log=second)
    assert_trade_ids(questdb, table, {s: [agg_id(t) for t in sim.trades("binance", s)] for s in SYMBOLS["binance"]},
                     exchange="binance-agg", log=second)
    assert_trade_ids(questdb, table, truth(sim, "kraken", SYMBOLS["kraken"]), exchange="kraken", log=second)
    recovered = second.events("last_ids_recovered")[0]["feeds"]
    assert set(recovered["binance"]) == {"BTCUSDT", "BTCUSDT@aggTrade"} and set(recovered["kraken"]) == {"BTC/USD"}
    # A gap asked with a stream key fails (HTTP 400) even where a live id jump then fetches the same ids.
    failed = [(e["stream"], e["error"]) for e in second.events("backfill_done") if e.get("error")]
    assert not failed, failed
    assert second.stop() == 0


def test_a_torn_ledger_record_is_skipped_with_a_log_line_and_the_service_starts_where_the_ledger_says(
        service, questdb, table_prefix, tmp_path):
    symbols = {"binance": ["BTCUSDT"]}
    sim = service.simulator(["binance"], symbols, rate=500, seed=32)
    feeds = [sim_feed("binance", sim, symbols["binance"])]
    first = service(feeds)
    journal = tmp_path / "ledger" / "journal"
    questdb.wait_for(lambda: journal.exists() and b'"op":"mark"' in journal.read_bytes(), 30, "marks journaled")
    first.kill()
    with open(journal, "ab") as f:  # a SIGKILL in the middle of a write
        f.write(b'0badc0de {"op":"open","key":"binance|trades|BTCUS')
    second = service(feeds)
    torn = second.wait_event("ledger_record_torn", timeout=30)
    assert torn["reason"] == "no line end (torn write)"
    loaded = second.wait_event("ledger_loaded", timeout=30)
    assert loaded["series"] >= 1 and loaded["torn_records"] == 1
    second.wait_event("service_started", timeout=30)
    assert b"BTCUS\n" not in journal.read_bytes()  # cut off: what the second process appends stays readable
