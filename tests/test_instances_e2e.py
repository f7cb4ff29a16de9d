"""End to end, several instances on one QuestDB: an HA pair with one member killed and restarted, and a market split
in three shards (simulator → `marketfeed run` × N → QuestDB; exactly once by DEDUP UPSERT KEYS)."""
from __future__ import annotations

import signal

from tests.support.service import sim_feed
from tests.test_downtime_e2e import BINANCE_KLINES, expected_candles, stored_candles
from tests.test_whole_market_e2e import subscribed, universe, wait_all_ids

PAIR_SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def test_an_ha_pair_with_one_member_killed_and_restarted_stores_every_trade_and_final_candle_once(
        service, questdb, table_prefix):
    sim = service.simulator(["binance"], {"binance": PAIR_SYMBOLS}, rate=50, count=1500, seed=13, clock_paused=True,
                            time_scale=20, start_ms=1_704_067_200_000)
    feed = sim_feed("binance", sim, PAIR_SYMBOLS, channels=["trade", *BINANCE_KLINES], reconnect_min_s=0.1)
    a = service.instance("a", [feed], service={"instance_group": "a"})
    b = service.instance("b", [feed], service={"instance_group": "b"})
    sim.wait_until(lambda: len([c for c in sim.connections("binance") if c.symbols]) == 2, 30, "both subscribed")
    sim.start_clock()
    sim.wait_emitted(300)
    a.proc.kill()  # SIGKILL: no flush, no goodbye; b carries on alone
    a.proc.wait(10)
    sim.wait_emitted(800)
    a = service.instance("a", [feed], service={"instance_group": "a"})  # its own ledger: the downtime is a gap
    a.wait_event("feed_connected")
    sim.wait_emitted(1500, timeout=60)
    wait_all_ids(questdb, f"{table_prefix}trades", "binance", {s: sim.truth("binance", s) for s in PAIR_SYMBOLS})
    candles = f"{table_prefix}candles"
    expected = expected_candles(sim, "binance", BINANCE_KLINES, PAIR_SYMBOLS)
    questdb.wait_for(lambda: questdb.wal_applied(candles) and stored_candles(questdb, candles, "binance") == expected,
                     60, "every candle once, in the exchange's final state")
    report = partnered(a)
    assert report["instance"] == {"id": "a", "group": "a", "shard": "", "partners": ["b"], "problems": [],
                                  "peers_error": "", "writes_live_candles": True}
    b.wait_event("live_candles_writer", where=lambda e: not e["writes"])  # a writes the candles in progress
    assert not partnered(b)["instance"]["writes_live_candles"]
    assert a.stop() == 0 and b.stop() == 0


def partnered(proc, attempts: int = 20) -> dict:
    """The first SIGUSR1 report naming a partner: heartbeats come every few seconds."""
    for i in range(attempts):
        proc.signal(signal.SIGUSR1)
        report = proc.wait_event("health_report", where=lambda e: e.get("reason") == "signal", after=i)
        if report["instance"]["partners"]:
            return report
        proc.wait_event("health_report", where=lambda e: e.get("reason") == "tick", after=i * 3, timeout=10)
    raise AssertionError("no partner reported")


def test_a_doubled_instance_id_and_overlapping_shards_of_one_group_are_reported(service, questdb, table_prefix):
    symbols = [f"S{i}USDT" for i in range(12)]
    sim = service.simulator(["binance"], {"binance": symbols}, rate=5, seed=19)
    feed = sim_feed("binance", sim, symbols)
    p = service.instance("p", [feed], service={"instance_id": "dup", "instance_group": "g", "shard": "0/2"})
    q = service.instance("q", [feed], service={"instance_id": "dup", "instance_group": "g", "shard": "1/2"})
    r = service.instance("r", [feed], service={"instance_group": "g", "shard": "1/2"})
    doubled = p.wait_event("instance_conflict", timeout=60)
    assert any("instance id 'dup' is also used by pid" in problem for problem in doubled["problems"])
    overlap = r.wait_event("instance_conflict", timeout=60)
    assert any("instance 'dup' of group 'g' carries shard 1/2, overlapping this one's 1/2" in problem
               for problem in overlap["problems"])
    r.signal(signal.SIGUSR1)
    report = r.wait_event("health_report", where=lambda e: e.get("reason") == "signal")
    assert report["status"] == "degraded" and "instance_conflict" in {a["cause"] for a in report["alerts"]}
    assert all(proc.stop() == 0 for proc in (p, q, r))


def test_three_shards_of_a_3000_symbol_universe_carry_every_symbol_exactly_once(service, questdb, table_prefix):
    symbols = universe(3000)
    sim = service.simulator(["binance"], {"binance": symbols}, rate=1.0, count=2, seed=17, clock_paused=True)
    feed = sim_feed("binance", sim, ["*"], reconnect_min_s=0.1)
    shards = [service.instance(f"shard{k}", [feed], service={"shard": f"{k}/3", "instance_group": "split"})
              for k in range(3)]
    sim.wait_until(lambda: subscribed(sim, "binance", 3000), 90, "3000 symbols subscribed")
    carried = [proc.wait_event("universe_resolved")["symbols"] for proc in shards]
    assert sum(carried) == 3000 and all(800 < n < 1200 for n in carried)
    sim.start_clock()
    sim.wait_emitted(2, timeout=60)
    wait_all_ids(questdb, f"{table_prefix}trades", "binance", {s: sim.truth("binance", s) for s in symbols})
    assert sim.refusals("binance") == []
    assert all(proc.stop() == 0 for proc in shards)


def test_an_ha_pair_both_down_then_both_up_fill_the_downtime_once(service, questdb, table_prefix):
    sim = service.simulator(["binance"], {"binance": PAIR_SYMBOLS}, rate=50, count=1200, seed=23, clock_paused=True)
    feed = sim_feed("binance", sim, PAIR_SYMBOLS, reconnect_min_s=0.1)
    pair = [service.instance(name, [feed], service={"instance_group": name}) for name in ("a", "b")]
    sim.wait_until(lambda: len([c for c in sim.connections("binance") if c.symbols]) == 2, 30, "both subscribed")
    sim.start_clock()
    sim.wait_emitted(300)
    for proc in pair:
        proc.proc.kill()  # both SIGKILLed: the market goes on with nobody listening
        proc.proc.wait(10)
    sim.wait_emitted(700)
    pair = [service.instance(name, [feed], service={"instance_group": name}) for name in ("a", "b")]
    for proc in pair:  # each one's own ledger knows its last ids: both fetch the downtime, DEDUP keeps it once
        proc.wait_event("gap_detected", timeout=30)
    sim.wait_emitted(1200, timeout=60)
    wait_all_ids(questdb, f"{table_prefix}trades", "binance", {s: sim.truth("binance", s) for s in PAIR_SYMBOLS})
    assert all(proc.stop() == 0 for proc in pair)
