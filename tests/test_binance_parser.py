import orjson
import pytest

from config.schema import FeedConfig
from feeds.base import Control, Gap, MalformedFrame, ParsedRows
from feeds.binance import BinanceProtocol
from feeds.rows import Trade

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
                                 frame(p="abc"), b'{"stream":"x","data":{"e":"weird"}}'])
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
