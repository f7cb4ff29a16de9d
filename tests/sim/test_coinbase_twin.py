"""Coinbase Exchange twin: subscribe, last_match, matches, heartbeats, errors and paginated REST trades."""
from __future__ import annotations

import itertools
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
import websocket
from simclient import backfill

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Gap
from marketfeed.feeds.coinbase import PROTOCOL
from marketfeed.sim import Simulator

PRODUCTS = ["BTC-USD", "ETH-USD"]
SUBSCRIBE = {"type": "subscribe", "product_ids": PRODUCTS, "channels": ["matches", "heartbeat"]}


@pytest.fixture(scope="module")
def coinbase():
    with Simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=200, seed=3) as sim:
        sim.wait_emitted(20)
        yield sim


@pytest.fixture
def client(coinbase):
    sockets = []

    def connect(subscribe: dict | None = SUBSCRIBE) -> websocket.WebSocket:
        ws = websocket.create_connection(coinbase.url("coinbase"), timeout=5)
        sockets.append(ws)
        if subscribe is not None:
            ws.send(orjson.dumps(subscribe))
        return ws

    yield connect
    for ws in sockets:
        ws.shutdown()


def messages(ws: websocket.WebSocket, n: int, kinds: tuple[str, ...] = ("match",)) -> list[dict]:
    """The next n messages of the given types, skipping the others."""
    found: list[dict] = []
    while len(found) < n:
        msg = orjson.loads(ws.recv())
        if msg["type"] in kinds:
            found.append(msg)
    return found


def get(url: str) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON body, headers) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read()), dict(error.headers)


def test_subscribe_is_answered_then_last_match_opens_each_product(coinbase, client):
    ws = client()
    reply = orjson.loads(ws.recv())
    assert reply == {"type": "subscriptions", "channels": [{"name": "matches", "product_ids": PRODUCTS},
                                                           {"name": "heartbeat", "product_ids": PRODUCTS}]}
    last = [orjson.loads(ws.recv()) for _ in PRODUCTS]
    assert [m["type"] for m in last] == ["last_match", "last_match"]
    assert [m["product_id"] for m in last] == PRODUCTS
    # then the stream goes on from the trade after the last_match, per product, without a hole
    following = messages(ws, 40)
    for m in last:
        ids = [f["trade_id"] for f in following if f["product_id"] == m["product_id"]]
        assert ids == list(range(m["trade_id"] + 1, m["trade_id"] + 1 + len(ids))) and ids


def test_match_carries_the_makers_side_and_a_sequence_that_skips(coinbase, client):
    ws = client({**SUBSCRIBE, "product_ids": ["BTC-USD"], "channels": ["matches"]})
    found = messages(ws, 30, ("match", "last_match"))
    market = coinbase.market("coinbase")["BTC-USD"]
    for m in found:
        trade = market.trade(market.index_of(m["trade_id"]))
        assert m["side"] == ("buy" if trade.buyer_is_maker else "sell")
        assert (m["price"], m["size"]) == (trade.price, trade.qty)
        assert set(m) == {"type", "trade_id", "maker_order_id", "taker_order_id", "side", "size", "price",
                          "product_id", "sequence", "time"}
    steps = [b["sequence"] - a["sequence"] for a, b in itertools.pairwise(found)]
    assert all(step > 0 for step in steps) and any(step > 1 for step in steps)


def test_heartbeat_reports_the_last_trade_id_once_a_second(coinbase, client):
    ws = client({"type": "subscribe", "channels": [{"name": "heartbeat", "product_ids": ["ETH-USD"]}]})
    assert orjson.loads(ws.recv())["channels"] == [{"name": "heartbeat", "product_ids": ["ETH-USD"]}]
    beats: list[tuple[float, dict]] = []
    while len(beats) < 2:  # heartbeat only: no match arrives in between
        msg = orjson.loads(ws.recv())
        assert msg["type"] == "heartbeat"
        beats.append((time.monotonic(), msg))
    assert 0.5 < beats[1][0] - beats[0][0] < 1.5
    first = coinbase.market("coinbase")["ETH-USD"].first_id
    assert first <= beats[1][1]["last_trade_id"] < first + coinbase.emitted("coinbase")
    assert set(beats[1][1]) == {"type", "sequence", "last_trade_id", "product_id", "time"}


def test_invalid_requests_get_error_messages(client):
    ws = client({**SUBSCRIBE, "product_ids": ["GIBBERISH-USD"]})
    assert orjson.loads(ws.recv()) == {"type": "error", "message": "Failed to subscribe",
                                       "reason": "GIBBERISH-USD is not a valid product"}
    ws.send(b"{not json")
    assert orjson.loads(ws.recv())["type"] == "error"


def test_unsubscribe_stops_the_matches(coinbase, client):
    ws = client({**SUBSCRIBE, "channels": ["matches"]})
    messages(ws, 2)
    ws.send(orjson.dumps({**SUBSCRIBE, "type": "unsubscribe", "channels": ["matches"]}))
    connection = coinbase.connections("coinbase")[-1]
    coinbase.wait_until(lambda: not connection.symbols, what="unsubscribed")
    sent = connection.counters.trades_sent
    coinbase.wait_emitted(coinbase.emitted("coinbase") + 10)
    assert connection.counters.trades_sent == sent


def test_skipped_matches_are_served_over_rest(coinbase, client):
    ws = client({**SUBSCRIBE, "product_ids": ["BTC-USD"], "channels": ["matches"]})
    messages(ws, 1)
    connection = coinbase.connections("coinbase")[-1]
    connection.skip_next(5)
    coinbase.wait_until(lambda: len(connection.counters.skipped_ids) == 5, what="5 skipped")
    skipped = connection.counters.skipped_ids
    live = {m["trade_id"] for m in messages(ws, 20)}
    assert not live & set(skipped)
    status, page, _ = get(f"{coinbase.rest_url('coinbase')}/products/BTC-USD/trades?after={skipped[-1] + 1}&limit=5")
    assert status == 200 and [t["trade_id"] for t in page] == skipped[::-1]


def test_rest_pages_newest_first_with_cursor_headers(coinbase):
    base = f"{coinbase.rest_url('coinbase')}/products/ETH-USD/trades"
    first = coinbase.market("coinbase")["ETH-USD"].first_id
    status, page, headers = get(f"{base}?after={first + 10}&limit=4")
    assert status == 200 and [t["trade_id"] for t in page] == [first + 9, first + 8, first + 7, first + 6]
    assert (headers["CB-BEFORE"], headers["CB-AFTER"]) == (str(first + 9), str(first + 6))
    assert set(page[0]) == {"time", "trade_id", "price", "size", "side"}
    _, newer, _ = get(f"{base}?before={first + 9}&limit=3")  # the page before is the newer one
    assert [t["trade_id"] for t in newer] == [first + 12, first + 11, first + 10]
    _, newest, _ = get(f"{base}?limit=2")
    assert newest[0]["trade_id"] >= first + 19 and newest[1]["trade_id"] == newest[0]["trade_id"] - 1
    assert get(f"{base}?after={first}")[1] == []  # nothing older than the first trade
    assert get(f"{coinbase.rest_url('coinbase')}/products/NOPE-USD/trades")[:2] == (404, {"message": "NotFound"})


def test_protocol_backfills_a_long_gap_over_several_pages():
    """The feed's backfill requests against the twin: every id of a 2500-trade gap, each exactly once."""
    with Simulator(["coinbase"], {"coinbase": PRODUCTS}, rate=20_000, count=3000, seed=5) as sim:
        sim.wait_emitted(3000)
        feed = FeedConfig("cb", "coinbase", sim.url("coinbase"), tuple(PRODUCTS), rest_url=sim.rest_url("coinbase"))
        protocol = PROTOCOL(feed)
        first = sim.market("coinbase")["ETH-USD"].first_id
        fetched, pages = backfill(protocol, Gap("ETH-USD", first + 200, first + 2699))
        assert sorted(t.trade_id for t in fetched) == list(range(first + 200, first + 2700))
        assert pages == 3
        truth = {t.trade_id: t for t in sim.trades("coinbase", "ETH-USD")}
        assert all(t.side == ("sell" if truth[t.trade_id].buyer_is_maker else "buy") for t in fetched)
