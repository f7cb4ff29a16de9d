"""End to end, the worst downtime: QuestDB goes down, `marketfeed run` is SIGKILLed while it is, restarted while it
still is (only the ledger knows where the stored history ends), and QuestDB comes back later. Every exchange's
trades and every closed candle are then stored exactly as the market had them; the candles in progress at the
kill closed while nobody listened, so they come back (REST, Kraken's snapshot too), closed, with their final values.
Candles are flushed less often than trades, and the kill falls between two candle flushes: the downtime window of
each table must start where that table's stored rows end.

The simulator's market time runs TIME_SCALE times as fast as the clock, so 1-minute candles close every few
seconds; the test has a QuestDB of its own, since it stops it.
"""
from __future__ import annotations

import signal
from datetime import UTC
from decimal import Decimal

import pytest

from marketfeed.feeds.kraken import OHLC_INTERVALS
from marketfeed.feeds.polygon import event_trade
from marketfeed.sim import Simulator
from marketfeed.sim.polygon import trade_event
from tests.support.questdb import QuestDB
from tests.support.service import ServiceProcess, Services, sim_feed
from tests.support.truth import assert_trade_ids, truth

pytestmark = pytest.mark.integration  # a QuestDB of its own, and the service

KEY = "PKdowntime0e2e"
SYMBOLS = {"binance": ["BTCUSDT", "ETHUSDT"], "kraken": ["BTC/USD", "ETH/USD"], "coinbase": ["BTC-USD", "ETH-USD"],
           "polygon": ["AAPL", "MSFT"]}
RATE = 100  # trades per clock second per symbol
TIME_SCALE = 20  # market seconds per clock second: trades 200 ms apart, a 1-minute candle closes every 3 s
MS_PER_TRADE = 1000 * TIME_SCALE // RATE
COUNT = 35 * RATE  # 35 s of clock, 700 s of market: the stream runs on after QuestDB is back
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: a 5-minute boundary
# Candle channels, and the candle intervals they store (ms): Binance kline_<interval>, Kraken ohlc-<minutes>.
BINANCE_KLINES = {"kline_1s": 1000, "kline_1m": 60_000}
KRAKEN_OHLC = {"ohlc-1": 60_000, "ohlc-5": 300_000}
CLIENT_RETRY_MS = 1000  # the questdb client's own retry window: the outage is longer
CANDLES_FLUSH_S = 2.0  # 40 s of market: dozens of 1-second candles wait in memory between two candle flushes


@pytest.fixture
def services(tmp_path, own_questdb, table_prefix):
    with Services(tmp_path, own_questdb, table_prefix) as services:
        yield services


def run(services: Services, sim: Simulator) -> ServiceProcess:
    """`marketfeed run` on every feed; the QuestDB client and the sink give up quickly, so the outage shows. Candles
    are batched apart from trades, as the low-volume table may be (sink.candles_flush_interval_s): a kill then cuts
    the two tables at different points, seconds of candles behind the trades."""
    conf = f"{services.questdb.conf}retry_timeout={CLIENT_RETRY_MS};request_timeout=2000;"
    return services(feeds(sim), questdb={"conf": conf}, spool={"high_water_rows": 1000},
                    sink={"max_rows": 2000, "flush_interval_s": 0.1, "retry_min_s": 0.1, "retry_max_s": 0.5,
                          "breaker_reset_s": 0.5, "candles_flush_interval_s": CANDLES_FLUSH_S})


def feeds(sim: Simulator) -> list[dict]:
    return [sim_feed("binance", sim, SYMBOLS["binance"], channels=["trade", *BINANCE_KLINES]),
            sim_feed("kraken", sim, SYMBOLS["kraken"], channels=["trade", *KRAKEN_OHLC]),
            sim_feed("coinbase", sim, SYMBOLS["coinbase"]),
            sim_feed("polygon", sim, SYMBOLS["polygon"], url=f"{sim.url('polygon')}/stocks", api_key=KEY)]


def wait_subscribed(sim: Simulator) -> None:
    """Every feed subscribed to every symbol and channel before the first trade: the whole history is the truth."""
    def subscribed() -> bool:
        connections = {exchange: sim.connections(exchange) for exchange in SYMBOLS}
        return (all(len(c) == 1 for c in connections.values())
                and len(connections["kraken"][0].session.streams) == 2 * (1 + len(KRAKEN_OHLC))
                and all(connections[exchange][0].symbols == set(SYMBOLS[exchange]) for exchange in SYMBOLS))

    sim.wait_until(subscribed, 30, "every feed subscribed")


def stored_everywhere(questdb: QuestDB, prefix: str) -> bool:
    """Trades of every exchange and candles of both candle exchanges are in QuestDB."""
    trades, candles = f"{prefix}trades", f"{prefix}candles"
    return (questdb.wal_applied(trades) and questdb.wal_applied(candles)
            and len(questdb.query(f"SELECT DISTINCT exchange FROM {trades}")) == len(SYMBOLS)
            and len(questdb.query(f"SELECT DISTINCT exchange FROM {candles}")) == 2)


def expected_candles(sim: Simulator, exchange: str, intervals: dict[str, int],
                     symbols: list[str] | None = None) -> list[tuple]:
    """(symbol, interval, begin s, open, high, low, close, volume, closed) of every period that had trades, from
    the ground truth: all closed but the newest of each interval, which no later trade closed."""
    rows = []
    for symbol in symbols or SYMBOLS[exchange]:
        trades = sim.trades(exchange, symbol)
        for step_ms in intervals.values():
            periods: dict[int, list] = {}
            for t in trades:
                periods.setdefault(t.time_ms - t.time_ms % step_ms, []).append(t)
            newest = max(periods)
            for begin_ms, period in periods.items():
                prices = [Decimal(t.price) for t in period]
                rows.append((symbol, interval_name(exchange, step_ms), begin_ms / 1000, float(prices[0]),
                             float(max(prices)), float(min(prices)), float(prices[-1]),
                             float(sum(Decimal(t.qty) for t in period)), begin_ms != newest))
    return sorted(rows)


def interval_name(exchange: str, step_ms: int) -> str:
    """The interval as the candles table stores it: Binance's own name, Kraken's minutes mapped."""
    if exchange == "binance":
        return next(channel.removeprefix("kline_") for channel, ms in BINANCE_KLINES.items() if ms == step_ms)
    return OHLC_INTERVALS[step_ms // 60_000]


def stored_candles(questdb: QuestDB, table: str, exchange: str) -> list[tuple]:
    rows = questdb.query(f"SELECT symbol, interval, ts, open, high, low, close, volume, closed FROM {table} "
                         "WHERE exchange = %s", (exchange,))
    return sorted((r[0], r[1], r[2].replace(tzinfo=UTC).timestamp(), *r[3:]) for r in rows)


def polygon_ids(sim: Simulator) -> dict[str, list[int]]:
    """Polygon's ids say nothing about order or holes; each is a stable hash of one print, so equal id lists are
    equal trades."""
    return {s: sorted(event_trade(trade_event(t), 0).trade_id for t in sim.trades("polygon", s))
            for s in SYMBOLS["polygon"]}


def test_sigkill_while_questdb_is_down_and_a_restart_while_it_still_is_lose_no_trade_and_no_candle(
        own_questdb, services, table_prefix):
    questdb = own_questdb
    sim = services.simulator(list(SYMBOLS), SYMBOLS, rate=RATE, count=COUNT, seed=41, start_ms=START_MS,
                             clock_paused=True, time_scale=TIME_SCALE, twin_options={"polygon": {"api_key": KEY}})
    first = run(services, sim)
    wait_subscribed(sim)
    sim.start_clock()
    questdb.wait_for(lambda: stored_everywhere(questdb, table_prefix), 30, "trades and candles stored")

    questdb.stop()
    try:
        spool = services.tmp_path / "spool"

        def batches(table: str) -> set[str]:
            return {p.name for p in spool.glob(f"{table_prefix}{table}/*.batch")}

        candles_before = batches("candles")
        questdb.wait_for(lambda: batches("candles") - candles_before, 30, "candles spooled during the outage")
        trades_then = batches("trades")
        # The kill comes between two candle flushes, trades spooled since the last: each table is cut at its own point.
        questdb.wait_for(lambda: len(batches("trades") - trades_then) >= 5, 30, "trades spooled after the candles")
        first.signal(signal.SIGKILL)
        first.wait(10)
        killed_at = sim.emitted("binance")  # one clock for every exchange
        # The 1-minute candles in progress at the kill (begin ms): they close while nobody listens.
        in_progress_ms = (START_MS + (killed_at - 1) * MS_PER_TRADE) // 60_000 * 60_000
        closed_by = (in_progress_ms + 60_000 - START_MS) // MS_PER_TRADE + 1  # trades, the first of the next minute
        sim.wait_emitted(max(killed_at + 2 * RATE, closed_by), timeout=30)
        restarted_at = sim.emitted("binance")
        second = run(services, sim)  # QuestDB is still down: only the ledger knows where the history ends
        second.wait_event("last_ids_unavailable", timeout=30)
        streams = candle_streams()
        sim.wait_until(lambda: streams <= {e["stream"] for e in second.events("backfill_done") if not e["error"]},
                       60, "every candle stream backfilled while QuestDB is down")
    finally:
        questdb.start()
    assert restarted_at < COUNT, "the stream ended before the restart: COUNT is too small for this machine"
    sim.wait_emitted(COUNT, timeout=60)

    table = f"{table_prefix}trades"
    for exchange in ("binance", "kraken", "coinbase"):
        assert_trade_ids(questdb, table, truth(sim, exchange, SYMBOLS[exchange]), exchange=exchange, log=second)
    assert_trade_ids(questdb, table, polygon_ids(sim), exchange="polygon", log=second)

    candles = f"{table_prefix}candles"
    for exchange, intervals in (("binance", BINANCE_KLINES), ("kraken", KRAKEN_OHLC)):
        expected = expected_candles(sim, exchange, intervals)
        try:
            questdb.wait_for(lambda: questdb.wal_applied(candles)
                             and stored_candles(questdb, candles, exchange) == expected,  # noqa: B023 - awaited here
                             30, f"{exchange} candles equal to the truth")
        except AssertionError:
            pass  # the comparison below says what differs
        stored = stored_candles(questdb, candles, exchange)
        assert_candles(stored, expected, exchange, second)
        for symbol in SYMBOLS[exchange]:  # the candle in progress at the kill: closed, with its final values
            final = next(e for e in expected if e[:3] == (symbol, "1m", in_progress_ms / 1000))
            assert final[-1] is True and final in stored
    downtime = {e["feed"] for e in second.events("gap_detected") if e.get("origin") == "process_downtime"}
    assert downtime >= {"binance", "kraken", "polygon"}  # time windows: candles, Polygon's trades
    assert second.stop() == 0


def candle_streams() -> set[str]:
    return ({f"{s}@{channel}" for s in SYMBOLS["binance"] for channel in BINANCE_KLINES}
            | {f"{s}@{channel}" for s in SYMBOLS["kraken"] for channel in KRAKEN_OHLC})


def assert_candles(stored: list[tuple], expected: list[tuple], exchange: str, log: ServiceProcess) -> None:
    """Equal, or a message naming the first candles missing, unexpected or different."""
    if stored == expected:
        return
    keys = {e[:3]: e for e in expected}
    held = {s[:3]: s for s in stored}
    missing = [k for k in keys if k not in held]
    unexpected = [k for k in held if k not in keys]
    differing = [(held[k], keys[k]) for k in keys if k in held and held[k] != keys[k]]
    pytest.fail(f"{exchange} candles: {len(stored)} stored vs {len(expected)} expected; missing {len(missing)} "
                f"{missing[:5]}; unexpected {len(unexpected)} {unexpected[:5]}; differing {len(differing)} "
                f"(stored, expected) {differing[:5]}\n{log.tail()}")
