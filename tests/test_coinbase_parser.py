"""Coinbase Exchange protocol: frames and REST pages, from the documented examples, to rows."""
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Control, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.coinbase import PROTOCOL, rfc3339_ns
from marketfeed.feeds.rows import Trade
from marketfeed.feeds.sequence import SequenceTracker

FEED = FeedConfig("coinbase", "coinbase", "wss://ws-feed.exchange.coinbase.com", ("BTC-USD", "ETH-USD"),
                  rest_url="https://api.exchange.coinbase.com")

# The match example of the Exchange WebSocket docs (full / matches channel).
MATCH = {
    "type": "match",
    "trade_id": 10,
    "sequence": 50,
    "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
    "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
    "time": "2014-11-07T08:19:27.028459Z",
    "product_id": "BTC-USD",
    "size": "5.23512",
    "price": "400.23",
    "side": "sell",
}
HEARTBEAT = {"type": "heartbeat", "sequence": 90, "last_trade_id": 20, "product_id": "BTC-USD",
             "time": "2014-11-07T08:19:28.464459Z"}
RECEIVED_NS = 1_700_000_000_123_456_789


def parse(message) -> tuple[Control | None, ParsedRows]:
    out = ParsedRows()
    frame = message if isinstance(message, bytes) else orjson.dumps(message)
    return PROTOCOL(FEED).parse(frame, RECEIVED_NS, out), out


def test_subscribes_to_matches_and_heartbeat_for_every_product():
    assert [orjson.loads(m) for m in PROTOCOL(FEED).subscribe_messages()] == [
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channels": ["matches", "heartbeat"]}
    ]
    assert PROTOCOL(FEED).url(FEED.url) == FEED.url
    assert PROTOCOL.contiguous_ids


def test_match_becomes_a_trade_with_the_taker_side():
    control, out = parse(MATCH)
    ts = int(datetime(2014, 11, 7, 8, 19, 27, tzinfo=UTC).timestamp()) * 1_000_000_000 + 28_459_000
    assert control is None  # data: resets the stale watchdog
    # side "sell" is the maker's: a resting sell order was hit, so the taker bought
    assert out.trades == [Trade(ts, "coinbase", "BTC-USD", 10, 400.23, 5.23512, "buy", RECEIVED_NS)]


def test_maker_buy_means_the_taker_sold():
    _, out = parse({**MATCH, "side": "buy"})
    assert out.trades[0].side == "sell"


def test_last_match_is_a_real_trade():
    control, out = parse({**MATCH, "type": "last_match"})
    assert control is None
    assert [t.trade_id for t in out.trades] == [10]


def test_last_match_seeds_the_sequence_and_reveals_an_outage():
    tracker = SequenceTracker()
    _, joined = parse({**MATCH, "type": "last_match", "trade_id": 500})
    _, live = parse({**MATCH, "trade_id": 501})
    assert tracker.observe(joined.trades + live.trades) == []  # joining mid-stream is no gap
    _, after_reconnect = parse({**MATCH, "type": "last_match", "trade_id": 530})
    assert tracker.observe(after_reconnect.trades) == [Gap("BTC-USD", 502, 529, before_ns=live.trades[0].ts_ns)]


def test_time_keeps_every_microsecond():
    assert rfc3339_ns("2014-11-07T08:19:27.028459Z") % 1_000_000_000 == 28_459_000
    assert rfc3339_ns("1970-01-01T00:00:00.000001Z") == 1000
    assert rfc3339_ns("2020-03-20T00:36:59.860Z") % 1_000_000_000 == 860_000_000  # REST pages use ms


def test_heartbeat_and_subscriptions_are_not_data():
    control, out = parse(HEARTBEAT)
    assert control is Control.HEARTBEAT and len(out) == 0
    control, out = parse({"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ["BTC-USD"]}]})
    assert control is Control.SUBSCRIBED and len(out) == 0


def test_error_message_rejects_the_subscription():
    with pytest.raises(SubscriptionRejected, match="GIBBERISH-USD is not a valid product"):
        parse({"type": "error", "message": "Failed to subscribe", "reason": "GIBBERISH-USD is not a valid product"})


@pytest.mark.parametrize("frame", [
    b"\x7fnot json {",
    orjson.dumps(MATCH)[:40],
    b'["valid", "json", "wrong shape"]',
    orjson.dumps({k: v for k, v in MATCH.items() if k != "trade_id"}),
    orjson.dumps({**MATCH, "price": "four hundred"}),
    orjson.dumps({**MATCH, "side": "up"}),
    orjson.dumps({**MATCH, "time": "yesterday"}),
    orjson.dumps({**MATCH, "type": "ticker"}),
])
def test_garbage_raises_malformed_frame(frame):
    with pytest.raises(MalformedFrame) as raised:
        parse(frame)
    assert raised.value.sample == frame[:200]


def test_closed_gap_asks_for_the_page_that_ends_at_its_last_id():
    request = PROTOCOL(FEED).backfill_request(Gap("BTC-USD", 101, 150))
    url = urlsplit(request.url)
    assert url.netloc == "api.exchange.coinbase.com" and url.path == "/products/BTC-USD/trades"
    assert parse_qs(url.query) == {"after": ["151"], "limit": ["50"]}  # after: ids older than the cursor
    big = urlsplit(PROTOCOL(FEED).backfill_request(Gap("BTC-USD", 1, 5000)).url)
    assert parse_qs(big.query) == {"after": ["5001"], "limit": ["1000"]}


def test_open_gap_starts_from_the_newest_page():
    url = urlsplit(PROTOCOL(FEED).backfill_request(Gap("ETH-USD", 7)).url)
    assert parse_qs(url.query) == {"limit": ["1000"]}


def rest_page(ids: range) -> bytes:
    """A page as the trades endpoint returns it: newest first (example fields of the REST docs)."""
    return orjson.dumps([{"time": "2020-03-20T00:36:59.860Z", "trade_id": i, "price": "6225.32000000",
                          "size": "0.06469797", "side": "sell"} for i in reversed(ids)])


def test_backfill_page_becomes_trades_and_the_rest_of_the_gap():
    protocol = PROTOCOL(FEED)
    rows, rest = protocol.parse_backfill(Gap("BTC-USD", 100, 2099, stream="BTC-USD"), rest_page(range(1100, 2100)),
                                         RECEIVED_NS)
    assert [t.trade_id for t in rows] == list(range(2099, 1099, -1))
    assert rows[0] == Trade(rfc3339_ns("2020-03-20T00:36:59.860Z"), "coinbase", "BTC-USD", 2099, 6225.32,
                            0.06469797, "buy", RECEIVED_NS)
    assert rest == Gap("BTC-USD", 100, 1099, stream="BTC-USD")
    rows, rest = protocol.parse_backfill(rest, rest_page(range(100, 1100)), RECEIVED_NS)
    assert len(rows) == 1000 and rest is None


def test_backfill_keeps_only_ids_inside_the_gap():
    rows, rest = PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 95, 99), rest_page(range(80, 100)), RECEIVED_NS)
    assert [t.trade_id for t in rows] == [99, 98, 97, 96, 95] and rest is None
    rows, rest = PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 95), rest_page(range(97, 120)), RECEIVED_NS)
    assert [t.trade_id for t in rows] == list(range(119, 96, -1)) and rest == Gap("BTC-USD", 95, 96)


def test_empty_page_ends_the_backfill():
    assert PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 5, 9), b"[]", RECEIVED_NS) == ([], None)


def test_bad_page_is_malformed():
    with pytest.raises(MalformedFrame):
        PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 5, 9), b'{"message": "NotFound"}', RECEIVED_NS)


def test_backfill_takes_trade_ids_as_integers_or_as_the_same_digits_in_a_string():
    documented = rest_page(range(100, 103))  # trade_id an integer, as the REST reference types it
    captured = orjson.dumps([{**t, "trade_id": str(t["trade_id"])} for t in orjson.loads(documented)])
    assert b'"trade_id":"102"' in captured
    for body in (documented, captured):
        rows, rest = PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 95, 101), body, RECEIVED_NS)
        assert [(t.trade_id, type(t.trade_id)) for t in rows] == [(101, int), (100, int)]
        assert rest == Gap("BTC-USD", 95, 99)


@pytest.mark.parametrize("trade_id", ["", "12.0", "-5", " 7", "1_000", "١٢", 12.0, True, None, [12]])
def test_a_trade_id_that_is_no_integer_makes_the_page_malformed(trade_id):
    page = [*orjson.loads(rest_page(range(100, 102))), {"time": "2020-03-20T00:36:59.860Z", "trade_id": trade_id,
                                                        "price": "1", "size": "1", "side": "buy"}]
    with pytest.raises(MalformedFrame, match="bad trades page"):
        PROTOCOL(FEED).parse_backfill(Gap("BTC-USD", 5, 200), orjson.dumps(page), RECEIVED_NS)


def test_history_pages_from_the_newest_trades_back_until_a_page_reaches_before_its_start():
    protocol = PROTOCOL(FEED)
    since, until = rfc3339_ns("2020-03-20T00:36:00Z"), rfc3339_ns("2020-03-20T00:37:00Z")
    (gap,) = protocol.history_gaps(("BTC-USD",), since, until)
    assert protocol.backfill_request(gap).url.endswith("/products/BTC-USD/trades?limit=1000")
    inside = orjson.loads(rest_page(range(1000, 2000)))
    rows, rest = protocol.parse_backfill(gap, orjson.dumps(inside), RECEIVED_NS)
    assert len(rows) == 1000 and rest is not None and rest.last_id == 999
    assert "after=1000" in protocol.backfill_request(rest).url
    older = [{**t, "time": "2020-03-20T00:35:59Z" if t["trade_id"] < 500 else t["time"]}
             for t in orjson.loads(rest_page(range(1000)))]
    rows, rest = protocol.parse_backfill(rest, orjson.dumps(older), RECEIVED_NS)
    assert [t.trade_id for t in rows] == list(range(999, 499, -1)) and rest is None
