"""REST on the WebSocket's port: only trades that happened, and exactly what a client missed."""
import pytest
from simclient import by_symbol, get

from marketfeed.sim import Simulator

REST_KEYS = ["id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"]


@pytest.fixture(scope="module")
def finished():
    """A market that has stopped: 1200 trades per symbol, so every answer is exact."""
    with Simulator(["binance"], ["BTCUSDT", "ETHUSDT"], rate=5000, count=1200, seed=2) as sim:
        sim.wait_emitted(1200)
        yield sim


def test_historical_trades_from_id(finished):
    base = finished.rest_url("binance")
    status, page = get(f"{base}/api/v3/historicalTrades?symbol=ETHUSDT&fromId=2000010&limit=5")
    assert status == 200 and all(list(t) == REST_KEYS for t in page)
    truth = finished.trades("binance", "ETHUSDT")[10:15]
    assert [(t["id"], t["price"], t["qty"], t["time"], t["isBuyerMaker"]) for t in page] == [
        (t.trade_id, t.price, t.qty, t.time_ms, t.buyer_is_maker) for t in truth
    ]


def test_limits_default_max_and_end_of_history(finished):
    base = finished.rest_url("binance") + "/api/v3/historicalTrades?symbol=BTCUSDT"
    assert [t["id"] for t in get(f"{base}&fromId=1000000")[1]] == list(range(1_000_000, 1_000_500))
    assert len(get(f"{base}&fromId=1000000&limit=5000")[1]) == 1000
    assert [t["id"] for t in get(f"{base}&fromId=1001190&limit=100")[1]] == list(range(1_001_190, 1_001_200))
    assert get(f"{base}&fromId=1001200")[1] == []  # has not happened


def test_recent_trades(finished):
    status, page = get(finished.rest_url("binance") + "/api/v3/trades?symbol=BTCUSDT&limit=3")
    assert status == 200 and [t["id"] for t in page] == [1_001_197, 1_001_198, 1_001_199]


def test_klines_are_the_candles_of_the_trades_that_happened(finished):
    trades = finished.trades("binance", "BTCUSDT")  # 1200 trades at 5000/s: 240 ms, within one or two seconds
    start = trades[0].time_ms - trades[0].time_ms % 1000
    status, page = get(f"{finished.rest_url('binance')}/api/v3/klines?symbol=BTCUSDT&interval=1s&startTime={start}")
    periods = sorted({t.time_ms - t.time_ms % 1000 for t in trades})
    assert status == 200 and [k[0] for k in page] == periods and all(k[6] == k[0] + 999 for k in page)
    for kline, period in zip(page, periods, strict=True):
        inside = [t for t in trades if t.time_ms - t.time_ms % 1000 == period]
        prices = [float(t.price) for t in inside]
        assert (kline[1], kline[4], kline[8]) == (inside[0].price, inside[-1].price, len(inside))
        assert (float(kline[2]), float(kline[3])) == (max(prices), min(prices))
    later = get(f"{finished.rest_url('binance')}/api/v3/klines?symbol=BTCUSDT&interval=1s&startTime={start + 1}")[1]
    assert [k[0] for k in later] == periods[1:]  # candles open at or after startTime
    assert get(f"{finished.rest_url('binance')}/api/v3/klines?symbol=BTCUSDT&interval=7s")[0] == 400


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("/api/v3/trades?symbol=DOGEBTC", 400, {"code": -1121, "msg": "Invalid symbol."}),
        ("/api/v3/historicalTrades?limit=5", 400,
         {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}),
        ("/api/v3/unknown", 404, None),
    ],
)
def test_errors(finished, query, status, body):
    assert get(finished.rest_url("binance") + query) == (status, body)


def test_rest_serves_only_what_happened(sim):
    first = sim.market("binance")["BTCUSDT"].first_id
    before = sim.emitted("binance")
    ids = [t["id"] for t in get(sim.rest_url("binance") + "/api/v3/trades?symbol=BTCUSDT&limit=1000")[1]]
    after = sim.emitted("binance")
    assert ids == list(range(ids[0], ids[-1] + 1))
    assert first + before - 1 <= ids[-1] <= first + after - 1  # the newest that had happened, nothing later
    assert len(ids) == min(1000, ids[-1] - first + 1)


def test_backfill_after_a_disconnect_returns_exactly_the_missed_ids(sim, connect):
    first = by_symbol(connect().trades(20))
    sim.wait_emitted(sim.emitted("binance") + 30)  # the market moves on while we are away
    second = by_symbol(connect().trades(20))
    for symbol in ("BTCUSDT", "ETHUSDT"):
        last_seen, next_seen = first[symbol][-1], second[symbol][0]
        query = f"/api/v3/historicalTrades?symbol={symbol}&fromId={last_seen + 1}&limit={next_seen - last_seen - 1}"
        missed = [t["id"] for t in get(sim.rest_url("binance") + query)[1]]
        assert missed == list(range(last_seen + 1, next_seen)) and len(missed) >= 30
        assert first[symbol] + missed + second[symbol] == list(range(first[symbol][0], second[symbol][-1] + 1))
