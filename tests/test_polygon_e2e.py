"""End to end: Polygon twin → `marketfeed run` (a real process) → real QuestDB.

Polygon's ids cannot reveal a gap, so exactness rests on the outage-window backfill: whatever
was lost around a drop or a stall comes back over REST v3 trades, and dedup absorbs the overlap.
"""
from __future__ import annotations

import signal
import urllib.request

from marketfeed.feeds.polygon import event_trade
from marketfeed.sim import Simulator
from marketfeed.sim.polygon import is_option, trade_event
from tests.support.questdb import free_port
from tests.support.service import Services, sim_feed
from tests.support.truth import assert_trade_ids

KEY = "PKmarker7f3a9c1e5b"  # a marker: it must appear in no output of a run
STOCKS = ["AAPL", "MSFT"]
OPTIONS = ["O:SPY251219C00650000", "O:AAPL251219P00200000"]


def polygon_feed(sim: Simulator, cluster: str = "stocks", symbols=STOCKS, **extra) -> dict:
    """Polygon serves each cluster (stocks, options) at its own path of the WebSocket."""
    settings = {"api_key": KEY, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **extra}
    return sim_feed("polygon", sim, symbols, name=f"polygon-{cluster}", url=f"{sim.url('polygon')}/{cluster}",
                    **settings)


def make_sim(service: Services, symbols, count: int) -> Simulator:
    return service.simulator(["polygon"], {"polygon": symbols}, rate=200, count=count, seed=11, clock_paused=True,
                             twin_options={"polygon": {"api_key": KEY}})


def expected_ids(sim: Simulator, symbol: str, min_value: float = 0.0) -> list[int]:
    """The stored ids the ground truth calls for: every trade worth at least min_value, once."""
    ids = []
    for trade in sim.trades("polygon", symbol):
        event = trade_event(trade)
        if event["p"] * event["s"] * (100 if is_option(symbol) else 1) >= min_value:
            ids.append(event_trade(event, 0).trade_id)
    return sorted(ids)


def assert_stored_equal_truth(questdb, sim, proc, table, symbols, min_value: float = 0.0) -> None:
    assert_trade_ids(questdb, table, {symbol: expected_ids(sim, symbol, min_value) for symbol in symbols}, log=proc)


def wait_subscribed(sim: Simulator, n: int = 1) -> list:
    sim.wait_until(lambda: sum(bool(c.symbols) for c in sim.connections("polygon")) >= n, 30, "subscriptions")
    return sim.connections("polygon")


def wait_replaced(sim: Simulator, old) -> None:
    sim.wait_until(lambda: any(c is not old and c.symbols for c in sim.connections("polygon")), 30, "a resubscribe")


def test_drops_stalls_duplicates_and_garbage_end_in_exactly_the_ground_truth(service, questdb, table_prefix):
    sim = make_sim(service, STOCKS, count=1400)
    proc = service([polygon_feed(sim, stale_after_s=1.0)])
    first = wait_subscribed(sim)[0]
    sim.start_clock()
    sim.wait_emitted(100)
    first.duplicate_next(20)
    first.send_garbage(3)
    sim.wait_emitted(200)
    first.skip_next(10**6)  # lost in transit from here on…
    sim.wait_until(lambda: len(first.counters.skipped_ids) >= 40, 10, "skipped trades")
    first.drop()  # …until the connection dies: all of it is inside the outage window
    wait_replaced(sim, first)
    second = next(c for c in sim.connections("polygon") if c is not first)
    sim.wait_until(lambda: second.counters.trades_sent >= 20, 10, "live trades on the new connection")
    second.stall()  # open but silent: the stale-feed watchdog must notice
    wait_replaced(sim, second)
    sim.wait_emitted(1400, timeout=30)
    assert_stored_equal_truth(questdb, sim, proc, f"{table_prefix}trades", STOCKS)
    proc.signal(signal.SIGUSR1)
    report = proc.wait_event("health_report", where=lambda e: e["reason"] == "signal")
    feed = report["feeds"]["polygon-stocks"]
    assert feed["duplicates"] >= 20 and feed["malformed"] == 3 and feed["backfilled"] > 40
    assert proc.events("feed_stale")
    assert proc.stop() == 0


def test_the_trades_of_a_killed_process_downtime_come_back_after_its_restart(service, questdb, table_prefix):
    """SIGKILL: the rows it held and everything traded while it was down exist only at the exchange."""
    sim = make_sim(service, STOCKS, count=1400)
    feeds = [polygon_feed(sim)]
    first = service(feeds)
    wait_subscribed(sim)
    sim.start_clock()
    table = f"{table_prefix}trades"
    questdb.wait_for(lambda: questdb.wal_applied(table) and questdb.query(f"SELECT count() FROM {table}")[0][0],
                     30, "some trades stored")
    first.kill()
    down_at = sim.emitted("polygon")
    sim.wait_emitted(down_at + 300)  # the market moves on while nobody listens
    second = service(feeds)
    sim.wait_emitted(1400, timeout=30)
    assert_stored_equal_truth(questdb, sim, second, table, STOCKS)
    assert second.events("gap_detected")  # the window from the newest stored trade on
    assert second.stop() == 0


def test_minimum_trade_value_keeps_only_large_stock_and_option_trades(service, questdb, table_prefix):
    sim = make_sim(service, STOCKS + OPTIONS, count=600)
    feeds = [polygon_feed(sim, "stocks", STOCKS, min_trade_value=1_000.0),
             polygon_feed(sim, "options", OPTIONS, min_trade_value=60_000.0)]  # 100 shares a contract
    proc = service(feeds)
    connections = wait_subscribed(sim, 2)
    sim.start_clock()
    sim.wait_emitted(200)
    for connection in connections:
        connection.drop()  # the backfilled window is filtered the same way
    sim.wait_emitted(600, timeout=30)
    table = f"{table_prefix}trades"
    assert_stored_equal_truth(questdb, sim, proc, table, STOCKS, 1_000.0)
    assert_stored_equal_truth(questdb, sim, proc, table, OPTIONS, 60_000.0)
    kept = len(questdb.trade_ids(table))
    assert 0 < kept < 0.5 * 600 * 4  # a whale watcher stores a minority of the prints
    assert proc.stop() == 0


def test_the_api_key_appears_in_no_output_of_a_run(service, questdb, table_prefix, tmp_path):
    sim = make_sim(service, STOCKS, count=600)
    port = free_port()
    proc = service([polygon_feed(sim)], service={"log_level": "debug", "http_listen": f"127.0.0.1:{port}"})
    first = wait_subscribed(sim)[0]
    sim.start_clock()
    sim.wait_emitted(150)
    first.drop()  # a reconnect (auth again) and a REST backfill (apiKey in its query)
    wait_replaced(sim, first)
    sim.wait_emitted(600, timeout=30)
    assert_stored_equal_truth(questdb, sim, proc, f"{table_prefix}trades", STOCKS)
    assert any(e["rows"] for e in proc.events("backfill_done"))
    proc.signal(signal.SIGUSR1)
    proc.wait_event("health_report", where=lambda e: e["reason"] == "signal")
    http = {path: urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
            for path in ("/metrics", "/health", "/ready")}
    assert "marketfeed_" in http["/metrics"]
    status = (tmp_path / "status.json").read_text()
    assert proc.stop() == 0
    outputs = {"stdout": "".join(proc.raw), "status file": status, **http}
    assert len(outputs["stdout"]) > 1000  # there was plenty to leak into
    for where, text in outputs.items():
        assert KEY not in text, f"the API key leaked into {where}"


def test_a_refused_key_reports_the_feed_failed_without_a_reconnect_storm(service, tmp_path):
    sim = make_sim(service, STOCKS, count=10**6)
    wrong = "PKwrongkey0d9e8f7a"
    feed = polygon_feed(sim, api_key=wrong, breaker_reset_s=1.0)
    proc = service([feed])
    refusal = proc.wait_event("feed_subscription_refused")
    assert refusal["state"] == "failed" and "authentication failed" in refusal["reason"]
    proc.wait_event("feed_subscription_refused", after=2, timeout=10)  # tried again after each cool-down…
    proc.signal(signal.SIGUSR1)
    report = proc.wait_event("health_report", where=lambda e: e["reason"] == "signal")
    feed_status = report["feeds"]["polygon-stocks"]
    assert feed_status["state"] == "failed" and "refused" in feed_status["last_error"]
    assert len(proc.events("feed_subscription_refused")) <= 6  # …not in a tight loop
    assert proc.proc.poll() is None and not proc.events("child_exited")  # the actor lives on
    assert proc.stop() == 0
    assert wrong not in "".join(proc.raw) and wrong not in (tmp_path / "status.json").read_text()
