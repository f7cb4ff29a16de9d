"""Kraken WebSocket v2 parser and REST backfill, from the example messages of docs.kraken.com."""
import orjson
import pytest

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import BeyondRetention, Control, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.kraken import KrakenOptions, KrakenProtocol, KrakenSession, channels, rest_pair, rfc3339_ns
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.sequence import SequenceTracker
from marketfeed.storage.tables import CANDLES


def feed(**extra) -> FeedConfig:
    values = {"name": "k", "exchange": "kraken", "url": "wss://ws.kraken.com", "rest_url": "https://api.kraken.com",
              "symbols": ("BTC/USD", "MATIC/USD", "ALGO/USD"), "channels": ("trade", "ohlc-5")}
    return FeedConfig(**{**values, **extra})


def parse(session: KrakenSession, message) -> tuple[Control | None, ParsedRows]:
    out = ParsedRows()
    frame = message if isinstance(message, (bytes, str)) else orjson.dumps(message)
    return session.parse(frame, 42, out), out


def session(**extra) -> KrakenSession:
    return KrakenProtocol(feed(**extra)).open_session()


# The trade channel's documented snapshot example (docs.kraken.com, WebSocket v2, trade).
SNAPSHOT_TRADES: list[dict[str, object]] = [
    {"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 6423.46326, "ord_type": "limit",
     "trade_id": 4665846, "timestamp": "2023-09-25T07:48:36.925533Z"},
    {"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 1136.19677815, "ord_type": "limit",
     "trade_id": 4665847, "timestamp": "2023-09-25T07:49:36.925603Z"},
]
TRADE_SNAPSHOT: dict[str, object] = {"channel": "trade", "type": "snapshot", "data": SNAPSHOT_TRADES}

# The ohlc channel's documented snapshot example (interval 5).
OHLC_SNAPSHOT = {
    "channel": "ohlc",
    "type": "snapshot",
    "timestamp": "2023-10-04T16:26:01.806315597Z",
    "data": [
        {"symbol": "ALGO/USD", "open": 0.09875, "high": 0.09875, "low": 0.09875, "close": 0.09875, "trades": 1,
         "volume": 201.86015, "vwap": 0.09875, "interval_begin": "2023-10-04T15:25:00.000000000Z", "interval": 5,
         "timestamp": "2023-10-04T15:30:00.000000Z"},
        {"symbol": "ALGO/USD", "open": 0.09875, "high": 0.0988, "low": 0.09875, "close": 0.09875, "trades": 13,
         "volume": 16255.46368, "vwap": 0.09879, "interval_begin": "2023-10-04T15:30:00.000000000Z", "interval": 5,
         "timestamp": "2023-10-04T15:35:00.000000Z"},
    ],
}

T_15_25 = 1696433100 * 10**9  # 2023-10-04T15:25:00Z
T_15_30 = T_15_25 + 300 * 10**9


def ohlc(begin: str, close: float, volume: float, kind: str = "update", interval: int = 5) -> dict:
    return {"channel": "ohlc", "type": kind, "timestamp": begin, "data": [
        {"symbol": "ALGO/USD", "open": 0.09875, "high": max(close, 0.09875), "low": min(close, 0.09875),
         "close": close, "trades": 3, "volume": volume, "vwap": close, "interval_begin": begin, "interval": interval,
         "timestamp": begin}]}


def test_documented_trade_snapshot_becomes_trades():
    control, out = parse(session(), TRADE_SNAPSHOT)
    assert control is None  # data: it resets the stale watchdog
    assert out.trades == [
        Trade(1695628116_925533000, "kraken", "MATIC/USD", 4665846, 0.5147, 6423.46326, "buy", 42),
        Trade(1695628176_925603000, "kraken", "MATIC/USD", 4665847, 0.5147, 1136.19677815, "buy", 42),
    ]


def test_heartbeat_status_pong_and_acks_are_control_not_data():
    protocol = session()
    assert parse(protocol, {"channel": "heartbeat"})[0] is Control.HEARTBEAT
    status = {"channel": "status", "data": [{"api_version": "v2", "connection_id": 13834774380200032777,
                                             "system": "online", "version": "2.0.0"}], "type": "update"}
    assert parse(protocol, status)[0] is Control.INFO
    pong = {"method": "pong", "req_id": 101, "time_in": "2023-09-24T14:10:23.799685Z",
            "time_out": "2023-09-24T14:10:23.799703Z"}
    assert parse(protocol, pong)[0] is Control.PONG
    ack = (b'{"method":"subscribe","result":{"channel":"ohlc","interval":1,"snapshot":true,"symbol":"BTC/USD",'
           b'"warnings":["timestamp is deprecated, use interval_begin"]},"success":true,'
           b'"time_in":"2026-10-06T18:06:01.981684Z","time_out":"2026-10-06T18:06:01.981723Z"}')
    control, out = parse(protocol, ack)
    assert control is Control.SUBSCRIBED and len(out) == 0


def test_refused_subscription_raises_with_kraken_reason():
    refusal = (b'{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,'
               b'"symbol":"XBT/USD","time_in":"2026-10-06T17:39:49.588049Z","time_out":"2026-10-06T17:39:49.588083Z"}')
    with pytest.raises(SubscriptionRejected, match="Currency pair not supported XBT/USD"):
        parse(session(), refusal)


@pytest.mark.parametrize("bad", [
    b"\x7fnot json at all {",
    b'{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","pri',
    b'{"unexpected":["valid","json"],"of":"the wrong shape"}',
    b"[1, 2]",
    b'{"channel":"ticker","type":"update","data":[]}',
    b'{"method":"ping","success":false,"error":"EGeneral:Invalid arguments"}',
])
def test_garbage_is_malformed(bad):
    with pytest.raises(MalformedFrame):
        parse(session(), bad)


@pytest.mark.parametrize("field, value", [
    ("price", "0.5147"),  # v2 sends numbers: a string is not Kraken v2
    ("trade_id", "4665846"),
    ("side", "b"),
    ("timestamp", "2023-09-25 07:48:36"),
    ("qty", None),
    ("symbol", ["MATIC/USD"]),
])
def test_a_bad_trade_field_drops_only_its_entry(field, value):
    message = orjson.loads(orjson.dumps(TRADE_SNAPSHOT))
    message["data"] = [message["data"][0], {**message["data"][1], field: value}, {**message["data"][1]}]
    out = ParsedRows()
    with pytest.raises(MalformedFrame, match="1 of 3 entries dropped") as refused:
        session().parse(orjson.dumps(message), 0, out)
    assert [t.trade_id for t in out.trades] == [4665846, 4665847]  # the entries before and after it
    assert orjson.loads(refused.value.sample) == message["data"][1]  # the sample is the bad entry


def test_a_trade_message_without_a_data_array_is_malformed():
    shapes: tuple[object, ...] = ({}, "x", None)
    for data in shapes:
        with pytest.raises(MalformedFrame, match="no data array"):
            parse(session(), {"channel": "trade", "type": "update", "data": data})


def test_documented_ohlc_snapshot_closes_all_but_the_newest_candle():
    control, out = parse(session(), OHLC_SNAPSHOT)
    assert control is None
    assert out.candles == [Candle(T_15_25, "kraken", "ALGO/USD", "5m", 0.09875, 0.09875, 0.09875, 0.09875,
                                  201.86015, True, 42)]
    assert out.live_candles == [Candle(T_15_30, "kraken", "ALGO/USD", "5m", 0.09875, 0.0988, 0.09875, 0.09875,
                                       16255.46368, False, 42)]


def test_a_candle_closes_once_when_the_next_interval_begins():
    protocol = session()
    first = [parse(protocol, ohlc("2023-10-04T15:25:00.000000000Z", c, v))[1] for c, v in ((0.1, 1.0), (0.2, 3.0))]
    assert all(out.candles == [] for out in first)
    assert [out.live_candles[0].close for out in first] == [0.1, 0.2]  # latest state wins downstream
    _, rollover = parse(protocol, ohlc("2023-10-04T15:30:00.000000000Z", 0.3, 0.5))
    assert [(c.ts_ns, c.close, c.volume, c.closed) for c in rollover.candles] == [(T_15_25, 0.2, 3.0, True)]
    assert [(c.ts_ns, c.closed) for c in rollover.live_candles] == [(T_15_30, False)]
    _, later = parse(protocol, ohlc("2023-10-04T15:30:00.000000000Z", 0.4, 0.7))
    assert later.candles == [] and later.live_candles[0].close == 0.4


def test_snapshot_after_reconnect_closes_the_candle_left_in_progress():
    protocol = session()
    parse(protocol, ohlc("2023-10-04T15:25:00.000000000Z", 0.1, 1.0))
    snapshot = ohlc("2023-10-04T15:25:00.000000000Z", 0.15, 2.0, "snapshot")
    snapshot["data"] += ohlc("2023-10-04T15:30:00.000000000Z", 0.3, 0.5)["data"]
    _, out = parse(protocol, snapshot)
    assert [(c.ts_ns, c.close, c.closed) for c in out.candles] == [(T_15_25, 0.15, True)]  # its final state
    assert [(c.ts_ns, c.closed) for c in out.live_candles] == [(T_15_30, False)]
    _, stale = parse(protocol, ohlc("2023-10-04T15:20:00.000000000Z", 0.05, 1.0, "snapshot"))
    assert [(c.closed, c.close) for c in stale.candles] == [(True, 0.05)] and stale.live_candles == []


def test_a_reconnect_forgets_the_candle_in_progress_rather_than_close_it_stale():
    protocol = KrakenProtocol(feed(options=KrakenOptions(snapshot=False)))
    parse(protocol.open_session(), ohlc("2023-10-04T15:25:00.000000000Z", 0.1, 1.0))
    successor = protocol.open_session()  # the connection was replaced: 15:25's last updates may be lost
    _, out = parse(successor, ohlc("2023-10-04T15:30:00.000000000Z", 0.3, 0.5))
    assert out.candles == [] and [c.ts_ns for c in out.live_candles] == [T_15_30]  # its final state: over REST
    _, out = parse(successor, ohlc("2023-10-04T15:35:00.000000000Z", 0.4, 0.5))
    assert [(c.ts_ns, c.close, c.closed) for c in out.candles] == [(T_15_30, 0.3, True)]  # live again


def test_unsubscribed_symbols_pass_through_to_validation_without_keeping_state():
    protocol = session(symbols=("BTC/USD",))
    for n in range(3):
        _, out = parse(protocol, ohlc(f"2023-10-04T15:{25 + 5 * n}:00.000000000Z", 0.1, 1.0))
        assert [c.symbol for c in out.live_candles] == ["ALGO/USD"] and out.candles == []
    _, out = parse(protocol, TRADE_SNAPSHOT)
    assert len(out.trades) == 2
    assert protocol._candles == {}


def test_intervals_and_symbols_keep_their_own_candles():
    protocol = session(channels=("ohlc-1", "ohlc-5"))
    parse(protocol, ohlc("2023-10-04T15:25:00.000000000Z", 0.1, 1.0, interval=5))
    _, out = parse(protocol, ohlc("2023-10-04T15:29:00.000000000Z", 0.2, 1.0, interval=1))
    assert out.candles == [] and out.live_candles[0].interval == "1m"


def test_subscribe_messages_set_snapshot_explicitly():
    symbols = ["BTC/USD", "MATIC/USD", "ALGO/USD"]
    protocol = KrakenProtocol(feed(options=KrakenOptions(snapshot=False)))
    messages = [orjson.loads(m) for m in protocol.subscribe_messages()]
    assert messages == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": symbols, "snapshot": False},
         "req_id": 1},
        {"method": "subscribe", "params": {"channel": "ohlc", "symbol": symbols, "interval": 5,
                                           "snapshot": False}, "req_id": 2},
    ]
    assert all(orjson.loads(m)["params"]["snapshot"] is True for m in KrakenProtocol(feed()).subscribe_messages())


def test_url_and_keepalive():
    protocol = KrakenProtocol(feed())
    assert protocol.url("wss://ws.kraken.com/") == "wss://ws.kraken.com/v2"
    assert protocol.url("ws://127.0.0.1:9/v2") == "ws://127.0.0.1:9/v2"
    assert orjson.loads(protocol.ping_message) == {"method": "ping"}
    assert protocol.pong_timeout_s > 0 and protocol.contiguous_ids


@pytest.mark.parametrize("names", [("ohlc-2",), ("ohlc",), ("book",), ("kline_1m",)])
def test_unknown_channels_are_refused_by_name(names):
    with pytest.raises(ValueError, match=repr(names[0])):
        channels(names)


def test_rfc3339_keeps_every_digit():
    assert rfc3339_ns("2023-10-04T15:25:00.000000001Z") == T_15_25 + 1
    assert rfc3339_ns("2023-10-04T15:25:00Z") == T_15_25
    assert rfc3339_ns("2023-10-04T15:25:00.5Z") == T_15_25 + 500_000_000
    for bad in ("2023-10-04T15:25:00", "2023-10-04T15:25:00.Z", "2023-10-04T15:25:00.0000000001Z",
                "2023-13-04T15:25:00Z", "2023-10-04T15:25:00+00:00", "2023-10-04T15:25:00.\N{FULLWIDTH DIGIT ONE}Z"):
        with pytest.raises(ValueError):
            rfc3339_ns(bad)


def test_rest_pair_names_use_krakens_asset_codes():
    assert [rest_pair(s) for s in ("BTC/USD", "ETH/USD", "DOGE/USD", "SOL/EUR", "ETH/BTC")] == [
        "XBTUSD", "ETHUSD", "XDGUSD", "SOLEUR", "ETHXBT"]


# The REST endpoint's documented example answer (docs.kraken.com, Get Recent Trades).
REST_PAGE = {"error": [], "result": {"XXBTZUSD": [
    ["30243.40000", "0.34507674", 1688669597.8277369, "b", "m", "", 61044952],
    ["30243.30000", "0.00376960", 1688669598.2804112, "s", "l", "", 61044953],
    ["30243.30000", "0.01235716", 1688669602.698379, "s", "m", "", 61044956],
], "last": "1688671969993150842"}}


def test_documented_trades_page_becomes_trades_with_microsecond_times():
    rows, rest = KrakenProtocol(feed()).parse_backfill(Gap("BTC/USD", 61044953, 61044956), orjson.dumps(REST_PAGE), 7)
    assert rows == [
        Trade(1688669598_280411000, "kraken", "BTC/USD", 61044953, 30243.3, 0.0037696, "sell", 7),
        Trade(1688669602_698379000, "kraken", "BTC/USD", 61044956, 30243.3, 0.01235716, "sell", 7),
    ]
    assert rest is None  # short page: nothing newer exists


def test_backfill_starts_at_the_trade_before_the_jump_and_pages_by_cursor():
    protocol, tracker = KrakenProtocol(feed()), SequenceTracker()
    before = {**TRADE_SNAPSHOT, "data": SNAPSHOT_TRADES[:1]}
    after = {**TRADE_SNAPSHOT, "type": "update", "data": [{**SNAPSHOT_TRADES[1], "trade_id": 4665850}]}
    assert tracker.observe(parse(protocol.open_session(), before)[1].trades) == []
    (gap,) = tracker.observe(parse(protocol.open_session(), after)[1].trades)  # ids jump 4665846 → 4665850
    assert (gap.symbol, gap.first_id, gap.last_id) == ("MATIC/USD", 4665847, 4665849)
    request = protocol.backfill_request(gap)
    assert request.url == ("https://api.kraken.com/0/public/Trades?pair=MATICUSD&count=1000"
                           "&since=1695628116925532999")
    full = {"error": [], "result": {"MATICUSD": [["0.5", "1", 1695628116.925533 + i, "b", "l", "", 4665846 + i]
                                                 for i in range(1000)], "last": "1695629115925533000"}}
    rows, rest = protocol.parse_backfill(gap, orjson.dumps(full), 0)
    assert [r.trade_id for r in rows] == [4665847, 4665848, 4665849] and rest is None
    open_gap = Gap("MATIC/USD", 4665847, before_ns=gap.before_ns)  # up to the live stream: page from the cursor
    rows, rest = protocol.parse_backfill(open_gap, orjson.dumps(full), 0)
    assert len(rows) == 999 and rest == Gap("MATIC/USD", 4665846 + 1000, since_ns=1695629115925533000,
                                            before_ns=gap.before_ns)
    assert protocol.backfill_request(rest).url.endswith("&since=1695629115925533000")


def test_after_a_reconnect_backfill_starts_at_the_last_trade_seen():
    protocol, tracker = KrakenProtocol(feed()), SequenceTracker()
    tracker.observe(parse(protocol.open_session(), TRADE_SNAPSHOT)[1].trades)
    (since_last,) = tracker.since_last()  # the connection was replaced
    successor = protocol.open_session()
    jumped = {**TRADE_SNAPSHOT, "data": [{**SNAPSHOT_TRADES[1], "trade_id": 4665860}]}
    (jump,) = tracker.observe(parse(successor, jumped)[1].trades)
    assert (since_last.first_id, since_last.last_id, jump.first_id, jump.last_id) == (4665848, None, 4665848, 4665859)
    for gap in (since_last, jump):  # since the last id; the jump
        assert protocol.backfill_request(gap).url.endswith("pair=MATICUSD&count=1000&since=1695628176925602999")


def test_backfill_without_a_known_start_asks_for_the_latest_trades():
    request = KrakenProtocol(feed()).backfill_request(Gap("BTC/USD", 10, 20))
    assert request.url == "https://api.kraken.com/0/public/Trades?pair=XBTUSD&count=1000"


@pytest.mark.parametrize("body", [b'{"error":["EQuery:Unknown asset pair"]}', b"<html>", b'{"result":{"last":"1"}}',
                                  b'{"error":[],"result":{"X":[["1","1",1.0,"x","l","",5]],"last":"1"}}'])
def test_bad_trades_pages_are_malformed(body):
    with pytest.raises(MalformedFrame):
        KrakenProtocol(feed()).parse_backfill(Gap("BTC/USD", 1, 9), body, 0)


def test_an_outage_backfills_the_candles_of_every_ohlc_channel_over_rest():
    protocol = KrakenProtocol(feed(symbols=("BTC/USD", "ETH/USD"), channels=("trade", "ohlc-5", "ohlc-1")))
    since, until = 1688671342_500_000_000, 1688671502_000_000_000  # 19:22:22.5 … 19:25:02
    gaps = protocol.outage_gaps(("BTC/USD", "ETH/USD"), since, until)
    # From one interval before the candle open at the outage, in case its last updates were lost with it.
    assert gaps == [Gap("BTC/USD", since_ns=1688670900 * 10**9, until_ns=until, stream="BTC/USD@ohlc-5", table=CANDLES),
                    Gap("ETH/USD", since_ns=1688670900 * 10**9, until_ns=until, stream="ETH/USD@ohlc-5", table=CANDLES),
                    Gap("BTC/USD", since_ns=1688671260 * 10**9, until_ns=until, stream="BTC/USD@ohlc-1", table=CANDLES),
                    Gap("ETH/USD", since_ns=1688671260 * 10**9, until_ns=until, stream="ETH/USD@ohlc-1", table=CANDLES)]
    assert protocol.backfill_request(gaps[0]).url == (  # since is exclusive: one second before the window
        "https://api.kraken.com/0/public/OHLC?pair=XBTUSD&interval=5&since=1688670899")
    assert KrakenProtocol(feed(channels=("trade",))).outage_gaps(("BTC/USD",), since, until) == []  # ids do that


# The REST endpoint's documented example answer (docs.kraken.com, Get OHLC Data).
OHLC_PAGE = {"error": [], "result": {"XXBTZUSD": [
    [1688671200, "30306.1", "30306.2", "30305.7", "30305.7", "30306.1", "3.39243896", 23],
    [1688671260, "30304.5", "30304.5", "30300.0", "30300.0", "30300.0", "4.42996871", 18],
    [1688671320, "30300.3", "30300.4", "30291.4", "30291.4", "30294.7", "2.13024789", 25],
    [1688671380, "30291.8", "30295.1", "30291.8", "30295.0", "30293.8", "1.01836275", 9],
], "last": 1688672160}}


def test_ohlc_candles_that_ended_before_the_stream_resumed_are_stored_closed():
    protocol = KrakenProtocol(feed())
    gap = Gap("BTC/USD", since_ns=1688671200 * 10**9, until_ns=1688671350 * 10**9, stream="BTC/USD@ohlc-1",
              table=CANDLES)
    candles, rest = protocol.parse_backfill(gap, orjson.dumps(OHLC_PAGE), 7)
    assert rest is None  # Kraken serves the most recent entries only: there is no older page to ask for
    assert candles == [  # 19:22 was still open at 19:22:30: it closes over the live stream
        Candle(1688671200 * 10**9, "kraken", "BTC/USD", "1m", 30306.1, 30306.2, 30305.7, 30305.7, 3.39243896, True, 7),
        Candle(1688671260 * 10**9, "kraken", "BTC/USD", "1m", 30304.5, 30304.5, 30300.0, 30300.0, 4.42996871, True, 7),
    ]
    later = Gap("BTC/USD", since_ns=gap.since_ns, until_ns=1688672000 * 10**9, stream="BTC/USD@ohlc-1", table=CANDLES)
    candles, _ = protocol.parse_backfill(later, orjson.dumps(OHLC_PAGE), 7)
    assert [c.ts_ns // 10**9 for c in candles] == [1688671200, 1688671260, 1688671320]  # never the uncommitted last


def test_ohlc_periods_without_trades_are_not_candles():
    page = orjson.loads(orjson.dumps(OHLC_PAGE))
    page["result"]["XXBTZUSD"][1] = [1688671260, "30305.7", "30305.7", "30305.7", "30305.7", "0.0", "0.00000000", 0]
    gap = Gap("BTC/USD", since_ns=1688671200 * 10**9, until_ns=1688672000 * 10**9, stream="BTC/USD@ohlc-1",
              table=CANDLES)
    candles, _ = KrakenProtocol(feed()).parse_backfill(gap, orjson.dumps(page), 7)
    assert [c.ts_ns // 10**9 for c in candles] == [1688671200, 1688671320]  # as the ohlc channel has them


@pytest.mark.parametrize("body", [
    b'{"error":["EGeneral:Invalid arguments"]}', b"<html>", b'{"result":{"last":1}}', b"[]",
    b'{"error":[],"result":{"XXBTZUSD":[[1688671200,"30306.1","30306.2"],[1688671260]],"last":1}}',
    b'{"error":[],"result":{"XXBTZUSD":[["1688671200","1","1","1","1","1","1",1],[0]],"last":1}}',
    b'{"error":[],"result":{"XXBTZUSD":[[1688671200,"1","1","1","x","1","1",1],[0]],"last":1}}',
])
def test_bad_ohlc_pages_are_malformed(body):
    gap = Gap("BTC/USD", since_ns=1688671200 * 10**9, until_ns=1688672000 * 10**9, stream="BTC/USD@ohlc-1",
              table=CANDLES)
    with pytest.raises(MalformedFrame):
        KrakenProtocol(feed()).parse_backfill(gap, body, 0)


def test_an_ohlc_answer_of_720_entries_that_starts_after_the_gap_closes_it_as_beyond_retention():
    """"Returns up to 720 of the most recent entries (older data cannot be retrieved, regardless of since)"."""
    start = 1688671200
    entries = [[start + 60 * i, "1", "2", "0.5", "1.5", "1.2", "3.0", 5] for i in range(720)]
    body = orjson.dumps({"error": [], "result": {"XXBTZUSD": entries, "last": start + 60 * 718}})
    until = (start + 60 * 720) * 10**9
    old = Gap("BTC/USD", since_ns=(start - 3600) * 10**9, until_ns=until, stream="BTC/USD@ohlc-1", table=CANDLES)
    with pytest.raises(BeyondRetention) as lost:
        KrakenProtocol(feed()).parse_backfill(old, body, 7)
    assert "720" in lost.value.reason and len(lost.value.rows) == 719  # what it still serves is kept
    recent = Gap("BTC/USD", since_ns=start * 10**9, until_ns=until, stream="BTC/USD@ohlc-1", table=CANDLES)
    candles, rest = KrakenProtocol(feed()).parse_backfill(recent, body, 7)
    assert len(candles) == 719 and rest is None


def test_history_asks_trades_since_its_start_and_stops_at_its_end():
    protocol = KrakenProtocol(feed(channels=("trade",)))
    since, until = 1688671342_500_000_000, 1688671342_900_000_000
    (gap,) = protocol.history_gaps(("BTC/USD",), since, until)
    assert "since=1688671342499999999" in protocol.backfill_request(gap).url  # exclusive
    page = {"error": [], "result": {"XXBTZUSD": [
        ["30243.40000", "0.34507674", 1688671342.6, "b", "m", "", 1],
        ["30243.30000", "0.00376960", 1688671342.95, "s", "l", "", 2],
    ], "last": "1688671342950000000"}}
    rows, rest = protocol.parse_backfill(gap, orjson.dumps(page), 7)
    assert [t.trade_id for t in rows] == [1] and rest is None  # the one past the end ends the window


def test_a_bad_entry_of_an_ohlc_message_drops_only_itself():
    message = ohlc("2023-10-04T16:25:00.000000000Z", 0.1, 5.0)
    good = message["data"][0]
    message["data"] = [{**good, "close": True}, good, {**good, "interval": 7}]
    out = ParsedRows()
    with pytest.raises(MalformedFrame, match="2 of 3 entries dropped") as info:
        session().parse(orjson.dumps(message), 42, out)
    assert [c.close for c in out.live_candles] == [0.1]  # the good one is kept
    assert b'"close":true' in info.value.sample
