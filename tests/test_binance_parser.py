import dataclasses

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Control, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.storage.tables import CANDLES

FEED = FeedConfig(name="b", exchange="binance", url="wss://x:9443", rest_url="https://api.x",
                  symbols=("BTCUSDT", "ETHUSDT"))


def frame(**data):
    base = {"e": "trade", "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "p": "0.00100000",
            "q": "100.5", "T": 1672515782134, "m": True, "M": True}
    base.update(data)
    return orjson.dumps({"stream": "btcusdt@trade", "data": base})


def test_url_is_the_combined_stream():
    assert BinanceProtocol(FEED).url("wss://x:9443/") == "wss://x:9443/stream?streams=btcusdt@trade/ethusdt@trade"


def test_trade_fields_and_taker_side():
    out = ParsedRows()
    assert BinanceProtocol(FEED).parse(frame(), 99, out) is None
    assert BinanceProtocol(FEED).parse(frame(t=12346, m=False), 100, out) is None
    assert out.trades == [
        Trade(1672515782134_000_000, "binance", "BTCUSDT", 12345, 0.001, 100.5, "sell", 99),
        Trade(1672515782134_000_000, "binance", "BTCUSDT", 12346, 0.001, 100.5, "buy", 100),
    ]


@pytest.mark.parametrize("bad", [b"not json", b"{}", b'{"stream":"x","data":{"e":"trade"}}',
                                 frame(p="abc"), b'{"stream":"x","data":{"e":"weird"}}',
                                 frame(p=True), frame(q=1.5), frame(p="1_000")])  # prices are decimal strings
def test_malformed_frames_raise_malformed(bad):
    with pytest.raises(MalformedFrame):
        BinanceProtocol(FEED).parse(bad, 0, ParsedRows())


def test_subscribe_reply_is_control():
    assert BinanceProtocol(FEED).parse(b'{"result":null,"id":1}', 0, ParsedRows()) is Control.SUBSCRIBED


def test_backfill_pages_until_the_gap_is_filled():
    p = BinanceProtocol(FEED)
    gap = Gap("BTCUSDT", 10, 12)
    req = p.backfill_request(gap)
    assert req.url == "https://api.x/api/v3/historicalTrades?symbol=BTCUSDT&fromId=10&limit=1000"
    body = orjson.dumps([{"id": i, "price": "1.5", "qty": "2", "quoteQty": "3", "time": 1000 + i,
                          "isBuyerMaker": i % 2 == 0, "isBestMatch": True} for i in range(10, 20)])
    rows, rest = p.parse_backfill(gap, body, 7)
    assert [r.trade_id for r in rows] == [10, 11, 12] and rest is None
    assert rows[0] == Trade(1010_000_000, "binance", "BTCUSDT", 10, 1.5, 2.0, "sell", 7)


def combined(stream, data):
    return orjson.dumps({"stream": stream, "data": data})


AGG = {"e": "aggTrade", "E": 1672515782136, "s": "BTCUSDT", "a": 26129, "p": "0.01633102", "q": "4.70443515",
       "f": 27781, "l": 27781, "T": 1672515782134, "m": False, "M": True}


def test_agg_trades_are_rows_of_their_own_sequence():
    p, out = BinanceProtocol(FEED), ParsedRows()
    assert p.parse(combined("btcusdt@aggTrade", AGG), 5, out) is None
    row = out.trades[0]
    assert row == Trade(1672515782134_000_000, "binance-agg", "BTCUSDT", 26129, 0.01633102, 4.70443515, "buy", 5)
    assert p.stream_key(row) == "BTCUSDT@aggTrade"
    assert p.stream_key(out.trades[0]._replace(exchange="binance")) == "BTCUSDT"


def test_agg_trade_gaps_are_backfilled_from_agg_trades():
    p = BinanceProtocol(FEED)
    gap = Gap("BTCUSDT", 26129, 26130, stream="BTCUSDT@aggTrade")
    assert p.backfill_request(gap).url == "https://api.x/api/v3/aggTrades?symbol=BTCUSDT&fromId=26129&limit=1000"
    page = [{k: v for k, v in AGG.items() if k not in ("e", "E", "s")} | {"a": a} for a in (26129, 26130, 26131)]
    rows, rest = p.parse_backfill(gap, orjson.dumps(page), 9)
    assert [(r.exchange, r.trade_id) for r in rows] == [("binance-agg", 26129), ("binance-agg", 26130)]
    assert rest is None


def test_a_full_page_continues_the_gap_on_the_same_stream():
    p = BinanceProtocol(FEED)
    gap = Gap("BTCUSDT", 1, None, stream="BTCUSDT@aggTrade")
    page = [{k: v for k, v in AGG.items() if k not in ("e", "E", "s")} | {"a": a} for a in range(1, 1001)]
    rows, rest = p.parse_backfill(gap, orjson.dumps(page), 9)
    assert len(rows) == 1000 and rest == Gap("BTCUSDT", 1001, None, stream="BTCUSDT@aggTrade")


def kline(closed):
    return {"e": "kline", "E": 1672515782136, "s": "BTCUSDT",
            "k": {"t": 1672515780000, "T": 1672515839999, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200,
                  "o": "1.0", "c": "2.0", "h": "2.5", "l": "0.5", "v": "1000", "n": 100, "x": closed,
                  "q": "1.0", "V": "500", "Q": "0.5", "B": "123456"}}


def test_klines_in_progress_and_closed_take_their_own_paths():
    p, out = BinanceProtocol(FEED), ParsedRows()
    assert p.parse(combined("btcusdt@kline_1m", kline(False)), 1, out) is None
    assert p.parse(combined("btcusdt@kline_1m", kline(True)), 2, out) is None
    expected = Candle(1672515780000_000_000, "binance", "BTCUSDT", "1m", 1.0, 2.5, 0.5, 2.0, 1000.0, False, 1)
    assert out.live_candles == [expected]
    assert out.candles == [expected._replace(closed=True, received_ns=2)]


def test_an_outage_backfills_the_closed_candles_of_every_kline_channel_only():
    p = BinanceProtocol(FeedConfig(name="b", exchange="binance", url="wss://x", rest_url="https://api.x",
                                   symbols=("BTCUSDT",), channels=("trade", "kline_1m", "kline_1s")))
    since, until = 1672515782134_000_000, 1672515902000_000_000  # 12:23:02.134 … 12:25:02
    gaps = p.outage_gaps(("BTCUSDT",), since, until)
    # From one interval before the candle open at the outage, in case its closing event was lost with it.
    assert gaps == [
        Gap("BTCUSDT", since_ns=1672515720000_000_000, until_ns=until, stream="BTCUSDT@kline_1m", table=CANDLES),
        Gap("BTCUSDT", since_ns=1672515781000_000_000, until_ns=until, stream="BTCUSDT@kline_1s", table=CANDLES)]
    assert p.backfill_request(gaps[0]).url == ("https://api.x/api/v3/klines?symbol=BTCUSDT&interval=1m"
                                               "&startTime=1672515720000&endTime=1672515902000&limit=1000")
    assert BinanceProtocol(FEED).outage_gaps(("BTCUSDT",), since, until) == []  # trade ids find their own gaps


def rest_kline(open_ms: int, step_ms: int, close: str) -> list:
    return [open_ms, "1.0", "2.5", "0.5", close, "1000", open_ms + step_ms - 1, "0", 100, "0", "0", "0"]


def test_klines_that_closed_before_the_stream_resumed_are_stored_closed():
    p = BinanceProtocol(FEED)
    gap = Gap("BTCUSDT", since_ns=1672515720000_000_000, until_ns=1672515902000_000_000, stream="BTCUSDT@kline_1m",
              table=CANDLES)
    page = [rest_kline(1672515720000 + i * 60_000, 60_000, f"{i}.0") for i in range(4)]  # the last one still open
    candles, rest = p.parse_backfill(gap, orjson.dumps(page), 7)
    assert rest is None
    assert candles == [Candle(1672515720000_000_000 + i * 60_000_000_000, "binance", "BTCUSDT", "1m",
                              1.0, 2.5, 0.5, float(i), 1000.0, True, 7) for i in range(3)]
    with pytest.raises(MalformedFrame):
        p.parse_backfill(gap, orjson.dumps([["not", "a", "kline"]]), 7)


def test_a_full_klines_page_continues_after_its_last_candle():
    p = BinanceProtocol(FEED)
    gap = Gap("BTCUSDT", since_ns=1_000_000_000_000, until_ns=10_000_000_000_000, stream="BTCUSDT@kline_1s",
              table=CANDLES)
    page = [rest_kline(1_000_000 + i * 1000, 1000, "1.0") for i in range(1000)]
    candles, rest = p.parse_backfill(gap, orjson.dumps(page), 7)
    assert len(candles) == 1000
    assert rest == Gap("BTCUSDT", since_ns=2_000_000_000_000, until_ns=gap.until_ns, stream="BTCUSDT@kline_1s",
                       table=CANDLES)


@pytest.mark.parametrize("notice", [
    {"event": {"e": "serverShutdown", "E": 1770123456789}},  # as the WebSocket API documents it
    {"stream": "x", "data": {"e": "serverShutdown", "E": 1770123456789}},
    {"e": "serverShutdown", "E": 1770123456789},
])
def test_server_shutdown_asks_for_a_reconnect(notice):
    assert BinanceProtocol(FEED).parse(orjson.dumps(notice), 0, ParsedRows()) is Control.RECONNECT


@pytest.mark.parametrize("reply", [{"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1},
                                   {"code": 2, "msg": "Invalid request: invalid stream", "id": 1}])
def test_an_error_reply_is_a_refused_subscription(reply):
    with pytest.raises(SubscriptionRejected, match="invalid stream"):
        BinanceProtocol(FEED).parse(orjson.dumps(reply), 0, ParsedRows())


def test_connections_roll_over_before_the_24_hour_cut():
    assert 0 < BinanceProtocol.max_connection_age_s < 24 * 3600


def test_history_finds_the_first_ids_of_its_window_by_time_then_pages_by_id_to_its_end():
    protocol = BinanceProtocol(FeedConfig(name="b", exchange="binance", url="wss://x:9443", rest_url="https://api.x",
                                          symbols=("BTCUSDT",), channels=("trade", "aggTrade")))
    since, until = 1_700_000_000_000 * 10**6, 1_700_000_000_900 * 10**6
    trades, agg = protocol.history_gaps(("BTCUSDT",), since, until)
    assert (trades.stream, agg.stream) == ("BTCUSDT", "BTCUSDT@aggTrade")
    assert protocol.backfill_request(trades).url == ("https://api.x/api/v3/aggTrades?symbol=BTCUSDT"
                                                     "&startTime=1700000000000&endTime=1700000000900&limit=1")
    first = orjson.dumps([{"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781,
                           "T": 1700000000100, "m": True, "M": True}])
    assert protocol.parse_backfill(trades, first, 7) == ([], Gap("BTCUSDT", 27781, until_ns=until, stream="BTCUSDT"))
    assert protocol.parse_backfill(agg, first, 7)[1] == Gap("BTCUSDT", 26129, until_ns=until, stream="BTCUSDT@aggTrade")
    located = Gap("BTCUSDT", 27781, until_ns=until, stream="BTCUSDT")
    assert "historicalTrades?symbol=BTCUSDT&fromId=27781" in protocol.backfill_request(located).url
    page = orjson.dumps([{"id": i, "price": "1.5", "qty": "2", "time": 1700000000000 + 100 * (i - 27781),
                          "isBuyerMaker": False, "isBestMatch": True} for i in range(27781, 27781 + 1000)])
    rows, rest = protocol.parse_backfill(located, page, 7)
    assert [t.trade_id for t in rows] == list(range(27781, 27791)) and rest is None  # the window's end
    empty_hour = protocol.parse_backfill(Gap("BTCUSDT", since_ns=since, until_ns=since + 7200 * 10**9,
                                             stream="BTCUSDT"), b"[]", 7)
    assert empty_hour == ([], Gap("BTCUSDT", since_ns=since + 3600 * 10**9, until_ns=since + 7200 * 10**9,
                                  stream="BTCUSDT"))
    assert protocol.parse_backfill(trades, b"[]", 7) == ([], None)  # no trade in the whole window


# Values a hostile or broken peer may put in any field of a trade event: every JSON type, numbers as text, text
# Python alone reads as a number, the documented ones.
_INT = st.integers(-2**63, 2**64 - 1)  # what JSON text carries as integers (orjson writes no more)
_ANY_VALUE = st.one_of(st.none(), st.booleans(), _INT, st.floats(allow_nan=False),
                       st.sampled_from(["0.00100000", "1_000", "nan", "inf", "", "abc", "12345", "true", " 1.5"]),
                       st.text(max_size=8), st.lists(_INT, max_size=2), st.dictionaries(st.text(max_size=2), _INT,
                                                                                        max_size=2))


def _judged(protocol: BinanceProtocol, parse, wire: bytes):
    out = ParsedRows()
    try:
        control = parse(wire, 7, out)
    except MalformedFrame as exc:
        return "malformed", exc.reason
    except SubscriptionRejected as exc:
        return "rejected", str(exc)
    return control, [tuple(row) for row in (*out.trades, *out.candles, *out.live_candles)]


@settings(max_examples=400, deadline=None)
@given(event=st.sampled_from(["trade", "aggTrade", "kline", "weird", 5]),
       fields=st.dictionaries(st.sampled_from(["s", "t", "a", "p", "q", "T", "m", "E", "M"]), _ANY_VALUE),
       drop=st.sets(st.sampled_from(["s", "t", "a", "p", "q", "T", "m"])), wrapped=st.booleans(),
       decimals=st.booleans(), extra=st.one_of(st.none(), st.binary(max_size=6)))
def test_the_typed_fast_path_judges_every_frame_as_the_general_parser(event, fields, drop, wrapped, decimals, extra):
    """BinanceProtocol.parse reads combined trades and aggTrades through msgspec; whatever it is handed, its answer
    (rows, control, or the malformed reason) is the general parser's, field types and strings checked alike."""
    data = {"e": event, "E": 1672515782136, "s": "BTCUSDT", "t": 12345, "a": 777, "p": "0.00100000",
            "q": "100.5", "T": 1672515782134, "m": True, **fields}
    for key in drop:
        data.pop(key, None)
    wire = orjson.dumps({"stream": "btcusdt@trade", "data": data} if wrapped else data)
    if extra is not None:  # a field the fast path skips, holding any bytes (invalid UTF-8, broken JSON), or a key twice
        wire = wire[:-1] + b',"x":"' + extra + b'","e":"trade"}'
    protocol = BinanceProtocol(dataclasses.replace(FEED, decimals=decimals))
    assert _judged(protocol, protocol.parse, wire) == _judged(protocol, protocol._parse_any, wire)


@pytest.mark.parametrize("skipped", [b'"stream":"btc\xffusdt@trade"', b'"stream":"\xed\xa0\x80"', b'"x":"\xc3"'])
def test_invalid_utf8_in_a_field_the_fast_path_skips_is_still_malformed(skipped):
    wire = b'{' + skipped + b',"data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.5","q":"2","T":1,"m":true}}'
    with pytest.raises(MalformedFrame, match="invalid JSON"):
        BinanceProtocol(FEED).parse(wire, 0, ParsedRows())
