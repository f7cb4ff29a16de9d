"""Polygon protocol, pure: frames and REST pages from Polygon's documented shapes → rows."""
import orjson
import pytest

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Control, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.polygon import BACKFILL_PAGE, PolygonOptions, PolygonProtocol, option_trade_id, stock_trade_id

KEY = "PK-marker-4f1d9c"
OPTION = "O:SPY251219C00650000"
# Polygon's documented stocks trade (WebSocket > Stocks > Trades), an off-exchange print with its TRF.
STOCK_TRADE = {"ev": "T", "sym": "MSFT", "x": 4, "i": "12345", "z": 3, "p": 114.125, "s": 100, "c": [0, 12],
               "t": 1536036818784, "q": 3681328, "trfi": 202, "trft": 1536036818784}
# Options trades carry no trade id and no tape (WebSocket > Options > Trades).
OPTION_TRADE = {"ev": "T", "sym": OPTION, "x": 65, "p": 1.54, "s": 7, "c": [233], "t": 1536036818784, "q": 6311}


def protocol(symbols=("MSFT", OPTION), **extra) -> PolygonProtocol:
    feed = FeedConfig("polygon-test", "polygon", "wss://socket.polygon.io/stocks", tuple(symbols),
                      rest_url="https://api.polygon.io", options=PolygonOptions(**{"api_key": KEY, **extra}))
    return PolygonProtocol(feed)


def parse(p: PolygonProtocol, events) -> tuple[Control | None, list]:
    out = ParsedRows()
    control = p.parse(orjson.dumps(events), 42, out)
    return control, out.trades


def test_a_frame_of_trades_becomes_rows_with_sip_time_unknown_side_and_a_stable_id():
    control, trades = parse(protocol(), [STOCK_TRADE, OPTION_TRADE])
    assert control is None  # data frame: resets the stale-feed watchdog
    stock, option = trades
    assert stock == (1536036818784_000_000, "polygon", "MSFT", stock_trade_id(4, 202, "12345"), 114.125, 100.0,
                     "unknown", 42)
    assert option == (1536036818784_000_000, "polygon", OPTION, option_trade_id(65, 1536036818784, 1.54, 7, [233]),
                      1.54, 7.0, "unknown", 42)
    assert 0 <= stock.trade_id < 2**63 and 0 <= option.trade_id < 2**63  # a QuestDB LONG, never its null


def test_ids_unique_per_ticker_exchange_and_trf_stay_distinct():
    """Polygon repeats trade id "1" across venues and TRFs of one ticker; the stored ids must not collide."""
    same_id = [{**STOCK_TRADE, "x": x, "trfi": trf} for x, trf in ((4, 201), (4, 202), (10, None), (11, None))]
    _, trades = parse(protocol(), same_id)
    assert len({t.trade_id for t in trades}) == 4
    assert stock_trade_id(4, 202, "12345") == stock_trade_id(4, 202, "12345")  # stable across calls and runs
    assert stock_trade_id(10, None, "1") == stock_trade_id(10, 0, "1")  # absent TRF id == 0


def test_status_messages_are_control_frames():
    p = protocol()
    assert parse(p, [{"ev": "status", "status": "connected", "message": "Connected Successfully"}])[0] is Control.INFO
    assert parse(p, [{"ev": "status", "status": "auth_success", "message": "authenticated"}])[0] is Control.INFO
    subscribed = [{"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"}]
    assert parse(p, subscribed)[0] is Control.SUBSCRIBED


def test_auth_failure_is_a_refusal_that_never_shows_the_key():
    echoed = [{"ev": "status", "status": "auth_failed", "message": f"authentication failed for {KEY}"}]
    with pytest.raises(SubscriptionRejected) as refused:
        parse(protocol(), echoed)
    assert "authentication failed" in str(refused.value) and KEY not in str(refused.value)


def test_a_missing_key_is_named_in_the_refusal():
    p = PolygonProtocol(FeedConfig("p", "polygon", "wss://socket.polygon.io", ("MSFT",)))
    assert orjson.loads(p.subscribe_messages()[0]) == {"action": "auth", "params": ""}
    with pytest.raises(SubscriptionRejected, match=r"no API key: set api_key, api_key_file, \$POLYGON_API_KEY"):
        parse(p, [{"ev": "status", "status": "auth_failed", "message": "authentication failed"}])


@pytest.mark.parametrize("frame, reason", [
    (b"\x7fnot json", "invalid JSON"),
    (b'{"ev":"T","sym":"MSFT"}', "not a JSON array"),
])
def test_garbage_is_malformed(frame, reason):
    with pytest.raises(MalformedFrame, match=reason):
        protocol().parse(frame, 0, ParsedRows())


def test_a_bad_event_is_reported_and_the_good_trades_of_its_frame_are_kept():
    out = ParsedRows()
    bad = [STOCK_TRADE, {"ev": "T", "sym": "MSFT", "x": 4, "p": "oops", "s": 1, "t": 1}, {"ev": "Q"}, "text",
           {**STOCK_TRADE, "t": "1536036818784"}, {**STOCK_TRADE, "p": True}, {**STOCK_TRADE, "s": "100"}]
    with pytest.raises(MalformedFrame, match="bad trade event"):
        protocol().parse(orjson.dumps(bad), 0, out)
    assert [t.trade_id for t in out.trades] == [stock_trade_id(4, 202, "12345")]


def test_subscribe_messages_auth_first_then_every_symbol():
    auth, subscribe = (orjson.loads(m) for m in protocol().subscribe_messages())
    assert auth == {"action": "auth", "params": KEY}
    assert subscribe == {"action": "subscribe", "params": f"T.MSFT,T.{OPTION}"}


def test_url_keeps_a_cluster_path_and_picks_one_for_a_bare_host():
    assert protocol().url("wss://socket.polygon.io/options") == "wss://socket.polygon.io/options"
    assert protocol(("MSFT",)).url("ws://127.0.0.1:9") == "ws://127.0.0.1:9/stocks"
    assert protocol((OPTION,)).url("ws://127.0.0.1:9/") == "ws://127.0.0.1:9/options"


def test_minimum_trade_value_counts_option_contracts_as_100_shares():
    p = protocol(min_trade_value=11_000)
    # 114.125 × 100 = 11 412.5 ≥ 11 000 kept; 1.54 × 7 × 100 = 1 078 dropped; 1.54 × 80 × 100 = 12 320 kept
    _, trades = parse(p, [STOCK_TRADE, OPTION_TRADE, {**OPTION_TRADE, "s": 80}, {**STOCK_TRADE, "s": 96}])
    assert [(t.symbol, t.amount) for t in trades] == [("MSFT", 100.0), (OPTION, 80.0)]


def test_a_frame_whose_trades_are_all_below_the_minimum_is_still_data():
    control, trades = parse(protocol(min_trade_value=1e9), [STOCK_TRADE])
    assert control is None and trades == []  # the feed is alive even when nothing is worth storing


def test_contract_multiplier_overrides_the_default():
    _, trades = parse(protocol(min_trade_value=1_000, contract_multiplier=1000.0), [OPTION_TRADE])
    assert len(trades) == 1  # 1.54 × 7 × 1000 = 10 780


def test_the_key_is_in_no_repr():
    p = protocol()
    assert KEY not in repr(p.feed) and KEY not in repr(p)


def test_outage_gaps_cover_whole_milliseconds_of_the_window_for_every_symbol():
    gaps = protocol().outage_gaps(("MSFT", OPTION), 1_000_000_123_456, 2_000_000_000_000)
    assert gaps == [Gap("MSFT", since_ns=1_000_000_000_000, until_ns=2_000_000_999_999),
                    Gap(OPTION, since_ns=1_000_000_000_000, until_ns=2_000_000_999_999)]


def test_backfill_request_asks_v3_trades_for_the_window_in_time_order():
    request = protocol().backfill_request(Gap(OPTION, since_ns=10, until_ns=20))
    assert request.url == (f"https://api.polygon.io/v3/trades/{OPTION}?timestamp.gte=10&limit={BACKFILL_PAGE}"
                           f"&sort=timestamp&order=asc&timestamp.lte=20&apiKey={KEY}")


def test_backfill_pages_follow_next_url_on_the_configured_host_only():
    p = protocol()
    gap = Gap("MSFT", since_ns=10, until_ns=20)
    result = {"conditions": [12], "exchange": 4, "id": "12345", "participant_timestamp": 1536036818784_000_000 - 1,
              "price": 114.125, "sequence_number": 3681328, "sip_timestamp": 1536036818784_123_456, "size": 100,
              "tape": 3, "trf_id": 202, "trf_timestamp": 1536036818784_100_000}
    body = {"results": [result], "status": "OK", "request_id": "a1",
            "next_url": "https://elsewhere.example/v3/trades/MSFT?cursor=YWJj"}
    rows, rest = p.parse_backfill(gap, orjson.dumps(body), 7)
    # the REST copy of the documented trade has the stream copy's timestamp and id: one key in QuestDB
    assert [row._replace(received_ns=42) for row in rows] == parse(p, [STOCK_TRADE])[1]
    assert rest == Gap("MSFT", since_ns=10, until_ns=20, page="/v3/trades/MSFT?cursor=YWJj")
    assert p.backfill_request(rest).url == f"https://api.polygon.io/v3/trades/MSFT?cursor=YWJj&apiKey={KEY}"
    last_rows, done = p.parse_backfill(rest, orjson.dumps({"status": "OK", "request_id": "a2", "results": []}), 8)
    assert last_rows == [] and done is None


def test_backfill_applies_the_minimum_trade_value():
    p = protocol(min_trade_value=1_000)
    results = [{"exchange": 65, "price": 1.54, "sip_timestamp": 5_000_001, "size": s} for s in (6, 7)]
    rows, _ = p.parse_backfill(Gap(OPTION), orjson.dumps({"results": results, "status": "OK"}), 0)
    assert [r.amount for r in rows] == [7.0]  # 924 dropped, 1 078 kept


@pytest.mark.parametrize("body", [b"<html>", b'{"results": [{"price": 1}]}', b'{"results": "x"}', b"[]"])
def test_a_bad_backfill_page_is_malformed(body):
    with pytest.raises(MalformedFrame):
        protocol().parse_backfill(Gap("MSFT"), body, 0)
