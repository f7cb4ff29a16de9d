"""End to end, the whole market: a universe read from the twin's listing, sharded over connections within the
exchange's limits, listings followed live, every connection cut at once (simulator → `marketfeed run` → QuestDB)."""
from __future__ import annotations

import math
import signal
from collections import defaultdict

from marketfeed.sim import Simulator
from tests.support.service import sim_feed
from tests.test_polygon_e2e import KEY, expected_ids, polygon_feed

BINANCE_STREAM_LIMIT = 1024  # per connection, documented; the twin refuses the 1025th


def universe(n: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(n)]


def stored_ids(questdb, table: str, exchange: str) -> dict[str, list[int]]:
    """symbol → its stored trade ids (repeats kept), in one query however many symbols."""
    ids: dict[str, list[int]] = defaultdict(list)
    for symbol, trade_id in questdb.query(f"SELECT symbol, trade_id FROM {table} WHERE exchange = %s "
                                          "ORDER BY symbol, trade_id", (exchange,)):
        ids[symbol].append(trade_id)
    return ids


def wait_all_ids(questdb, table: str, exchange: str, expected: dict[str, list[int]], timeout: float = 90.0) -> None:
    """Every symbol's stored ids equal `expected` (nothing missing, nothing doubled, no other symbol)."""
    want = sum(map(len, expected.values()))

    def complete():
        if not questdb.wal_applied(table):
            return False
        return questdb.query(f"SELECT count() FROM {table} WHERE exchange = %s", (exchange,))[0][0] >= want

    questdb.wait_for(complete, timeout, f"{want} {exchange} rows in {table}")
    stored = stored_ids(questdb, table, exchange)
    wrong = {s: (len(stored.get(s, [])), len(ids)) for s, ids in expected.items() if stored.get(s, []) != ids}
    assert not wrong, f"{len(wrong)} symbols differ (stored, expected): {dict(list(wrong.items())[:10])}"
    assert set(stored) == set(expected), f"unexpected symbols: {sorted(set(stored) - set(expected))[:10]}"


def subscribed(sim: Simulator, exchange: str, n: int) -> bool:
    return sum(len(c.symbols) for c in sim.connections(exchange) if not c.closed) >= n


def binance_market(service, symbols: list[str], **options) -> Simulator:
    return service.simulator(["binance"], {"binance": symbols}, rate=options.pop("rate", 1.0),
                             count=options.pop("count", None), seed=5, clock_paused=True, **options)


def test_a_3000_stream_universe_opens_three_connections_and_stores_every_symbols_ids_exactly(
        service, questdb, table_prefix):
    symbols = universe(3000)
    sim = binance_market(service, [*symbols, "BTCEUR"], rate=1.0, count=2)  # BTCEUR: quoted in another asset
    proc = service([sim_feed("binance", sim, ["*"], quote_assets=["USDT"], reconnect_min_s=0.1)])
    sim.wait_until(lambda: subscribed(sim, "binance", 3000), 90, "3000 symbols subscribed")
    connections = [c for c in sim.connections("binance") if not c.closed]
    assert len(connections) == math.ceil(3000 / BINANCE_STREAM_LIMIT)
    assert all(len(c.session.streams) <= BINANCE_STREAM_LIMIT for c in connections)
    sim.start_clock()
    sim.wait_emitted(2, timeout=60)
    wait_all_ids(questdb, f"{table_prefix}trades", "binance", {s: sim.truth("binance", s) for s in symbols})
    assert sim.refusals("binance") == []  # no 1025-stream connection, no 6th message in a second, no connect storm
    resolved = proc.wait_event("universe_resolved")
    assert (resolved["symbols"], resolved["connections"]) == (3000, 3)
    assert proc.stop() == 0


def test_listings_added_and_removed_mid_run_are_followed_and_other_connections_are_untouched(
        service, questdb, table_prefix):
    symbols = universe(6)
    sim = binance_market(service, symbols, rate=20.0)
    proc = service([sim_feed("binance", sim, ["*"], max_streams_per_connection=2, reconnect_min_s=0.1)])
    sim.wait_until(lambda: subscribed(sim, "binance", 6), 30, "6 symbols subscribed")
    before = {c.id: set(c.symbols) for c in sim.connections("binance") if not c.closed}
    assert len(before) == 3
    sim.start_clock()
    sim.wait_emitted(20)
    gone = symbols[0]
    sim.list_symbol("binance", "NEWUSDT")
    sim.delist_symbol("binance", gone)
    proc.signal(signal.SIGHUP)  # reads the listing again (as universe_refresh_s does hourly)
    changed = proc.wait_event("universe_changed")
    assert (changed["added"], changed["removed"]) == (1, 1)
    sim.wait_until(lambda: any("NEWUSDT" in c.symbols for c in sim.connections("binance") if not c.closed), 30,
                   "the new listing subscribed")
    live = {c.id: set(c.symbols) for c in sim.connections("binance") if not c.closed}
    untouched = [cid for cid, syms in before.items() if gone not in syms]
    assert all(live.get(cid) == before[cid] for cid in untouched)  # the same connections, never reopened
    assert all(gone not in syms for syms in live.values())
    emitted = sim.emitted("binance")
    sim.wait_emitted(emitted + 40)
    table = f"{table_prefix}trades"
    new_ids = questdb.wait_for(lambda: questdb.trade_ids(table, "NEWUSDT") if questdb.wal_applied(table) else None,
                               30, "rows of the new listing")
    truth = sim.truth("binance", "NEWUSDT")
    first = truth.index(new_ids[0])  # from its first trade seen on: nothing stored before, no false gap
    assert new_ids == truth[first:first + len(new_ids)] and len(new_ids) >= 10
    assert not [e for e in proc.events("gap_detected") if e.get("symbol") == "NEWUSDT"]
    for symbol in symbols[1:]:
        stored = questdb.trade_ids(table, symbol)
        assert stored == sim.truth("binance", symbol)[:len(stored)] and stored
    assert proc.stop() == 0


def test_a_cut_of_every_connection_reconnects_within_the_rate_limit_and_loses_nothing(
        service, questdb, table_prefix):
    symbols = universe(24)
    sim = binance_market(service, symbols, rate=20.0, count=300)
    proc = service([sim_feed("binance", sim, ["*"], max_streams_per_connection=2, reconnect_min_s=0.1,
                             reconnect_max_s=0.5)])
    sim.wait_until(lambda: subscribed(sim, "binance", 24), 30, "24 symbols subscribed")
    first = {c.id for c in sim.connections("binance") if not c.closed}
    assert len(first) == 12
    sim.start_clock()
    sim.wait_emitted(100)
    assert sim.faults("binance").drop_all() == 12  # a network cut: every connection at once, no close frame
    sim.wait_until(lambda: subscribed(sim, "binance", 24) and not first & {c.id for c in sim.connections("binance")
                                                                           if not c.closed}, 60, "every reconnect")
    sim.wait_emitted(300, timeout=60)
    wait_all_ids(questdb, f"{table_prefix}trades", "binance", {s: sim.truth("binance", s) for s in symbols})
    assert sim.refusals("binance") == []
    assert proc.stop() == 0


def test_polygon_wildcard_with_a_value_threshold_stores_exactly_the_qualifying_trades(service, questdb, table_prefix):
    contracts = [f"O:SPY2512{d:02d}C00{650 + k:03d}000" for d in range(19, 22) for k in range(8)]
    sim = service.simulator(["polygon"], {"polygon": contracts}, rate=50, count=200, seed=3, clock_paused=True,
                            twin_options={"polygon": {"api_key": KEY}})
    proc = service([polygon_feed(sim, "options", ["*"], min_trade_value=60_000.0)])
    sim.wait_until(lambda: any(c.session.streams for c in sim.connections("polygon")), 30, "T.* subscribed")
    sim.start_clock()
    sim.wait_emitted(200, timeout=30)
    expected = {symbol: expected_ids(sim, symbol, 60_000.0) for symbol in contracts}
    expected = {symbol: ids for symbol, ids in expected.items() if ids}
    wait_all_ids(questdb, f"{table_prefix}trades", "polygon", expected)
    assert proc.stop() == 0


def test_a_universe_that_cannot_be_read_is_retried_with_its_reason_and_the_other_feeds_run(
        service, questdb, table_prefix):
    symbols = universe(4)
    sim = service.simulator(["binance", "coinbase"], {"binance": symbols, "coinbase": ["BTC-USD", "ETH-USD"]},
                            rate=20.0, seed=5, clock_paused=True)
    sim.rest_errors("binance", 5, status=503)  # the listing endpoint fails at start: every retry of the first read
    proc = service([sim_feed("binance", sim, ["*"], name="whole", reconnect_min_s=0.1),
                    sim_feed("coinbase", sim, ["*"], name="bad-quote", quote_assets=["USDX"]),
                    sim_feed("binance", sim, ["S0001USDT"], name="plain")])
    bad = proc.wait_event("universe_read_failed", where=lambda e: e["feed"] == "bad-quote")
    assert "unknown quote asset 'USDX' (feeds.quote_assets); known: USD" in bad["reason"]
    failed = proc.wait_event("universe_read_failed", timeout=60, where=lambda e: e["feed"] == "whole")
    assert "503" in failed["reason"] and failed["retry_in_s"] > 0
    proc.wait_event("universe_resolved", timeout=60, where=lambda e: e["feed"] == "whole")
    sim.wait_until(lambda: subscribed(sim, "binance", 5), 30, "whole and plain subscribed")
    sim.start_clock()
    sim.wait_emitted(20)
    table = f"{table_prefix}trades"
    stored = questdb.wait_for(lambda: questdb.wal_applied(table) and questdb.trade_ids(table, "S0002USDT"), 30,
                              "rows of the whole market")
    assert stored == sim.truth("binance", "S0002USDT")[:len(stored)]
    proc.signal(signal.SIGUSR1)
    report = proc.wait_event("health_report", where=lambda e: e.get("reason") == "signal")
    bad_status = report["feeds"]["bad-quote"]
    assert bad_status["state"] == "failed" and "USDX" in bad_status["universe_error"] and bad_status["symbols"] == 0
    assert report["feeds"]["whole"]["symbols"] == 4
    assert proc.stop() == 0
