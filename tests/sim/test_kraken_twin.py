"""The Kraken v2 twin: status, acks and errors, snapshots, ping, heartbeats, trades, ohlc and REST Trades."""
import urllib.request
from decimal import ROUND_FLOOR, Decimal

import orjson
import pytest
import websocket

from marketfeed.feeds.kraken import rfc3339_ns
from marketfeed.sim import Simulator
from marketfeed.sim.kraken import OHLC_MAX_ENTRIES, KrakenTwin
from marketfeed.sim.market import ExchangeMarket

SYMBOLS = ["BTC/USD", "ETH/USD"]
MINUTE_MS = 60_000
BOUNDARY_MS = 1_704_067_200_000 + 5 * MINUTE_MS  # a minute boundary
COUNT = 400  # at 200/s: two seconds of market time, half on each side of BOUNDARY_MS


@pytest.fixture(scope="module")
def sim():
    with Simulator(["kraken"], {"kraken": SYMBOLS}, rate=200, count=COUNT, seed=5,
                   start_ms=BOUNDARY_MS - COUNT // 2 * 5, clock_paused=True) as simulator:
        yield simulator


@pytest.fixture
def connect(sim):
    sockets = []

    def open_socket() -> websocket.WebSocket:
        ws = websocket.create_connection(sim.url("kraken") + "/v2", timeout=5)
        sockets.append(ws)
        assert orjson.loads(ws.recv())["channel"] == "status"  # every connection opens with a status update
        return ws

    yield open_socket
    for ws in sockets:
        ws.close()


def request(ws, method: str, req_id: int | None = None, **params) -> None:
    message: dict[str, object] = {"method": method, **({"params": params} if params else {})}
    if req_id is not None:
        message["req_id"] = req_id
    ws.send(orjson.dumps(message))


def receive(ws, where=lambda m: True, n: int = 1) -> list[dict]:
    """The next n messages matching `where`, skipping heartbeats and anything else."""
    found: list[dict] = []
    while len(found) < n:
        message = orjson.loads(ws.recv())
        if where(message):
            found.append(message)
    return found


def channel(name: str, kind: str | None = None):
    return lambda m: m.get("channel") == name and (kind is None or m.get("type") == kind)


def test_subscribe_is_acknowledged_per_symbol_and_unknown_pairs_are_refused(sim, connect):
    ws = connect()
    request(ws, "subscribe", 7, channel="trade", symbol=["BTC/USD", "XBT/USD"], snapshot=False)
    ok, refused = receive(ws, lambda m: m.get("method") == "subscribe", 2)
    assert ok["success"] is True and ok["req_id"] == 7
    assert ok["result"] == {"channel": "trade", "symbol": "BTC/USD", "snapshot": False}
    assert {"time_in", "time_out"} <= set(ok)
    assert refused["success"] is False and refused["error"] == "Currency pair not supported XBT/USD"
    assert refused["symbol"] == "XBT/USD" and "result" not in refused
    request(ws, "subscribe", 8, channel="book", symbol=["BTC/USD"])
    assert receive(ws, lambda m: m.get("req_id") == 8)[0]["success"] is False
    request(ws, "subscribe", 9, channel="ohlc", symbol=["BTC/USD"], interval=7)
    assert receive(ws, lambda m: m.get("req_id") == 9)[0]["success"] is False


def test_ping_is_answered_with_pong(connect):
    ws = connect()
    request(ws, "ping", 101)
    pong = receive(ws, lambda m: m.get("method") == "pong")[0]
    assert pong["req_id"] == 101 and rfc3339_ns(pong["time_in"]) <= rfc3339_ns(pong["time_out"])


def test_heartbeats_come_once_a_second_on_a_quiet_subscribed_connection(sim, connect):
    ws = connect()
    ws.settimeout(1.6)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()  # not subscribed yet: silence
    ws.settimeout(5)
    request(ws, "subscribe", channel="trade", symbol=["ETH/USD"], snapshot=False)
    receive(ws, lambda m: m.get("method") == "subscribe")
    assert receive(ws)[0] == {"channel": "heartbeat"}  # the clock is paused: nothing else to send


def test_trades_snapshot_ohlc_and_rest_all_tell_the_same_ground_truth(sim, connect):
    early = connect()
    request(early, "subscribe", 1, channel="trade", symbol=SYMBOLS, snapshot=True)
    request(early, "subscribe", 2, channel="ohlc", symbol=["BTC/USD"], interval=1, snapshot=True)
    replies = receive(early, lambda m: m.get("channel") != "heartbeat", 6)
    assert [(m.get("method"), m.get("channel"), m.get("type")) for m in replies] == [
        ("subscribe", None, None), ("subscribe", None, None), (None, "trade", "snapshot"), (None, "trade", "snapshot"),
        ("subscribe", None, None), (None, "ohlc", "snapshot")]  # each request's acks, then its snapshots
    assert replies[4]["result"]["interval"] == 1
    assert all(m["data"] == [] for m in replies if "type" in m)  # nothing has happened yet
    sim.start_clock()
    sim.wait_emitted(COUNT)

    updates = receive(early, lambda m: m.get("type") == "update" and m["channel"] in ("trade", "ohlc"), 3 * COUNT)
    trades = [m["data"][0] for m in updates if m["channel"] == "trade"]
    for symbol in SYMBOLS:
        truth = sim.trades("kraken", symbol)
        events = [t for t in trades if t["symbol"] == symbol]
        assert [t["trade_id"] for t in events] == [t.trade_id for t in truth]
        for event, trade in zip(events, truth, strict=True):
            assert event["price"] == float(trade.price) and event["qty"] == float(trade.qty)
            assert rfc3339_ns(event["timestamp"]) == trade.time_ms * 1_000_000
            assert event["side"] == ("sell" if trade.buyer_is_maker else "buy")
            assert event["ord_type"] in ("limit", "market")

    candles = [m["data"][0] for m in updates if m["channel"] == "ohlc"]
    truth = sim.trades("kraken", "BTC/USD")
    assert len(candles) == len(truth)  # one update per trade event
    for k, candle in enumerate(candles):  # each update is the candle through that trade
        begin = truth[k].time_ms - truth[k].time_ms % MINUTE_MS
        so_far = [t for t in truth[: k + 1] if t.time_ms >= begin]
        assert rfc3339_ns(candle["interval_begin"]) == begin * 1_000_000
        assert (candle["open"], candle["high"], candle["low"], candle["close"], candle["trades"], candle["volume"]) == \
            expected_candle(so_far)
    assert {c["interval_begin"][:19] for c in candles} == {"2024-01-01T00:04:00", "2024-01-01T00:05:00"}

    late = connect()  # joins after the fact: the snapshots carry the history
    request(late, "subscribe", 3, channel="trade", symbol=["ETH/USD"], snapshot=True)
    request(late, "subscribe", 4, channel="ohlc", symbol=["BTC/USD"], interval=1, snapshot=True)
    trade_snapshot, ohlc_snapshot = receive(late, lambda m: m.get("type") == "snapshot", 2)
    eth = sim.trades("kraken", "ETH/USD")
    assert [t["trade_id"] for t in trade_snapshot["data"]] == [t.trade_id for t in eth[-50:]]
    closed, in_progress = ohlc_snapshot["data"]
    assert closed == candles[COUNT // 2 - 1] and in_progress == candles[-1]

    status, body = get(sim, "/0/public/Trades?pair=XBTUSD&count=1000")
    assert status == 200 and body["error"] == [] and list(body["result"]) == ["XXBTZUSD", "last"]
    page = body["result"]["XXBTZUSD"]
    assert [row[6] for row in page] == [t.trade_id for t in truth]
    for row, event in zip(page, [t for t in trades if t["symbol"] == "BTC/USD"], strict=True):
        assert float(row[0]) == event["price"] and float(row[1]) == event["qty"]
        assert round(row[2] * 1_000_000) * 1000 == rfc3339_ns(event["timestamp"])
        assert (row[3], row[4]) == (event["side"][0], event["ord_type"][0])
    assert body["result"]["last"] == str(truth[-1].time_ms * 1_000_000)


def test_rest_pages_by_time_after_since_and_refuses_unknown_pairs(sim):
    sim.start_clock()
    sim.wait_emitted(COUNT)
    truth = sim.trades("kraken", "ETH/USD")
    since = truth[99].time_ms * 1_000_000
    status, body = get(sim, f"/0/public/Trades?pair=ETHUSD&since={since}&count=10")
    assert status == 200 and [row[6] for row in body["result"]["XETHZUSD"]] == [t.trade_id for t in truth[100:110]]
    assert body["result"]["last"] == str(truth[109].time_ms * 1_000_000)  # the next page's since
    _, tail = get(sim, f"/0/public/Trades?pair=XETHZUSD&since={truth[-1].time_ms * 1_000_000}")
    assert tail["result"]["XETHZUSD"] == []  # nothing newer yet
    assert get(sim, "/0/public/Trades?pair=DOGEUSD")[1] == {"error": ["EQuery:Unknown asset pair"]}
    assert get(sim, "/0/public/Trades?pair=XBTUSD&since=yesterday")[1] == {"error": ["EGeneral:Invalid arguments"]}


def test_rest_ohlc_is_the_candles_of_the_trades_that_happened(sim):
    sim.start_clock()
    sim.wait_emitted(COUNT)
    periods: dict[int, list] = {}
    for trade in sim.trades("kraken", "ETH/USD"):
        periods.setdefault(trade.time_ms - trade.time_ms % MINUTE_MS, []).append(trade)
    status, body = get(sim, "/0/public/OHLC?pair=ETHUSD&interval=1")
    assert status == 200 and body["error"] == [] and list(body["result"]) == ["XETHZUSD", "last"]
    entries = body["result"]["XETHZUSD"]
    assert [e[0] * 1000 for e in entries] == sorted(periods) and len(entries) == 2  # one closed, one current
    for entry, (_, trades) in zip(entries, sorted(periods.items()), strict=True):
        _time_s, open_, high, low, close, vwap, volume, count = entry
        assert (float(open_), float(high), float(low), float(close), count, float(volume)) == expected_candle(trades)
        notional = sum((Decimal(t.price) * Decimal(t.qty) for t in trades), Decimal(0))
        quantity = sum((Decimal(t.qty) for t in trades), Decimal(0))
        assert Decimal(vwap) == (notional / quantity).quantize(Decimal("1e-8"), ROUND_FLOOR)
    assert body["result"]["last"] == entries[0][0]  # the newest committed candle: where polling resumes

    _, after = get(sim, f"/0/public/OHLC?pair=XETHZUSD&interval=1&since={entries[0][0]}")
    assert after["result"]["XETHZUSD"] == entries[1:]  # since is exclusive
    _, ahead = get(sim, f"/0/public/OHLC?pair=ETHUSD&since={entries[-1][0] + 3600}")
    assert ahead["result"] == {"XETHZUSD": entries[1:], "last": entries[-1][0] + 3600}  # the current one, always
    _, five = get(sim, "/0/public/OHLC?pair=ETHUSD&interval=5")
    assert [e[0] * 1000 for e in five["result"]["XETHZUSD"]] == [BOUNDARY_MS - 5 * MINUTE_MS, BOUNDARY_MS]


def test_rest_ohlc_keeps_the_720_most_recent_candles_and_refuses_bad_arguments():
    market = ExchangeMarket("kraken", ["BTC/USD"], seed=1, rate=0.001, start_ms=BOUNDARY_MS)  # 1000 s apart
    twin = KrakenTwin(market)
    begins = [t.time_ms // 1000 - t.time_ms // 1000 % 60 for t in market["BTC/USD"].trades(0, 800)]

    def ohlc(**query) -> dict:
        response = twin.rest("/0/public/OHLC", {"pair": "XBTUSD", **query}, 800)
        assert response.status == 200  # Kraken reports errors in the body
        return orjson.loads(response.body)

    body = ohlc()
    assert [e[0] for e in body["result"]["XXBTZUSD"]] == begins[-OHLC_MAX_ENTRIES:]  # older ones cannot be had
    assert [e[0] for e in ohlc(since=str(begins[0]))["result"]["XXBTZUSD"]] == begins[-OHLC_MAX_ENTRIES:]
    assert [e[0] for e in ohlc(since=str(begins[-4]))["result"]["XXBTZUSD"]] == begins[-3:]
    assert ohlc(pair="DOGEUSD") == {"error": ["EQuery:Unknown asset pair"]}
    for bad in ({"interval": "7"}, {"interval": "1m"}, {"since": "yesterday"}):
        assert ohlc(**bad) == {"error": ["EGeneral:Invalid arguments"]}


def expected_candle(trades) -> tuple:
    prices = [Decimal(t.price) for t in trades]
    volume = sum(Decimal(t.qty) for t in trades)
    return (float(prices[0]), float(max(prices)), float(min(prices)), float(prices[-1]), len(trades), float(volume))


def get(sim, path: str) -> tuple[int, dict]:
    with urllib.request.urlopen(sim.rest_url("kraken") + path, timeout=5) as response:
        return response.status, orjson.loads(response.read())
