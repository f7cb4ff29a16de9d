"""The downtime window after a restart, per table: each starts where the ledger says that table's stored rows end
(tests/test_downtime_e2e.py runs the whole story against a real service)."""
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline
from marketfeed.feeds.rows import Trade
from marketfeed.storage.tables import CANDLES, TRADES

S = 10**9
NOW_NS = 1_700_000_040 * S  # a minute boundary plus 40 s
TRADES_END_NS, CANDLES_END_NS = NOW_NS - 20 * S, NOW_NS - 30 * S  # the candle buffer lost ten seconds more


def restarted(stored: dict[tuple[str, str, str], int]) -> tuple[FeedPipeline, FeedConfig]:
    config = FeedConfig(name="f", exchange="binance", url="ws://x", symbols=("BTCUSDT",),
                        channels=("trade", "kline_1s"))
    memory = FeedMemory()
    memory.last_event_ns = max(stored.values())  # the newest row of any table, as the service restores it
    memory.stored_ns = stored
    return FeedPipeline(config, BinanceProtocol(config), memory), config


def first_burst(p: FeedPipeline) -> list:
    rows = ParsedRows()
    rows.trades = [Trade(NOW_NS, "binance", "BTCUSDT", 7, 1.0, 1.0, "buy", NOW_NS)]
    return p.live(rows, True, NOW_NS, 0.0).outage_gaps


def test_a_candle_window_starts_where_the_stored_candles_end_not_where_the_trades_do():
    p, config = restarted({(TRADES.name, "binance", "BTCUSDT"): TRADES_END_NS,
                           (CANDLES.name, "binance", "BTCUSDT"): CANDLES_END_NS,
                           (CANDLES.name, "binance", "ETHUSDT"): NOW_NS})  # another feed's symbol: not ours
    (window,) = first_burst(p)
    assert window.table is CANDLES and window.stream == "BTCUSDT@kline_1s"
    assert (window.since_ns, window.until_ns) == (CANDLES_END_NS - S, NOW_NS)  # one interval before, as ever
    assert p.memory.stored_ns == {}  # the start's marks serve its first window only
    again = FeedPipeline(config, p.protocol, p.memory)  # the feed actor restarted: from what it saw live
    assert first_burst(again)[0].since_ns == NOW_NS - S


def test_without_a_stored_candle_the_window_starts_at_the_newest_row_as_before():
    p, _ = restarted({(TRADES.name, "binance", "BTCUSDT"): TRADES_END_NS})
    (window,) = first_burst(p)
    assert window.since_ns == TRADES_END_NS - S
