"""The Polygon twin over real sockets: status/auth/subscribe, batched trade arrays, REST v3 paging."""
from __future__ import annotations

import orjson
import pytest
import websocket
from simclient import backfill, get

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.polygon import PolygonOptions, PolygonProtocol, event_trade
from marketfeed.sim import Simulator
from marketfeed.sim.polygon import rest_result, sip_ns, trade_event

KEY = "PK-twin-key"
OPTION = "O:SPY251219C00650000"
SYMBOLS = ["AAPL", "MSFT", OPTION]


@pytest.fixture
def sim():
    with Simulator(["polygon"], {"polygon": SYMBOLS}, rate=400, count=120, seed=5, clock_paused=True,
                   twin_options={"polygon": {"api_key": KEY}}) as s:
        yield s


def connect(sim: Simulator, cluster: str = "stocks") -> websocket.WebSocket:
    return websocket.create_connection(f"{sim.url('polygon')}/{cluster}", timeout=5)


def send(ws: websocket.WebSocket, action: str, params: str) -> list[dict]:
    ws.send(orjson.dumps({"action": action, "params": params}).decode())
    return orjson.loads(ws.recv())


def test_status_on_connect_then_auth_with_the_expected_key_then_one_ack_per_channel(sim):
    ws = connect(sim)
    try:
        assert orjson.loads(ws.recv()) == [{"ev": "status", "status": "connected", "message": "Connected Successfully"}]
        assert send(ws, "auth", "wrong")[0]["status"] == "auth_failed"
        assert send(ws, "subscribe", "T.AAPL")[0]["status"] == "error"  # not authenticated: nothing routed
        assert sim.connections("polygon")[0].symbols == frozenset()
        assert send(ws, "auth", KEY) == [{"ev": "status", "status": "auth_success", "message": "authenticated"}]
        assert send(ws, "subscribe", "T.AAPL,T.MSFT") == [
            {"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"},
            {"ev": "status", "status": "success", "message": "subscribed to: T.MSFT"},
        ]
        assert sim.connections("polygon")[0].symbols == {"AAPL", "MSFT"}
    finally:
        ws.close()


def test_an_unknown_cluster_is_refused():
    with Simulator(["polygon"], {"polygon": SYMBOLS}) as sim, pytest.raises(websocket.WebSocketBadStatusException):
        connect(sim, "crypto")


def received_trades(ws: websocket.WebSocket, n: int) -> tuple[list[dict], int]:
    """The next n trade events and how many frames carried them."""
    events: list[dict] = []
    frames = 0
    while len(events) < n:
        frame = orjson.loads(ws.recv())
        assert isinstance(frame, list)
        trades = [e for e in frame if e["ev"] == "T"]
        frames += bool(trades)
        events += trades
    return events, frames


def test_trades_come_in_arrays_rendered_from_the_ground_truth(sim):
    ws = connect(sim)
    try:
        ws.recv()
        send(ws, "auth", KEY)
        send(ws, "subscribe", "T.*")
        sim.start_clock()
        events, frames = received_trades(ws, 2 * 120)
    finally:
        ws.close()
    assert frames < len(events)  # several trades per frame
    for symbol in ("AAPL", "MSFT"):
        got = [e for e in events if e["sym"] == symbol]
        assert got == [trade_event(t) for t in sim.trades("polygon", symbol)]  # the whole truth, in order
        assert all(isinstance(e["i"], str) for e in got)
        q = [e["q"] for e in got]
        assert q == sorted(set(q)) and q[-1] - q[0] > len(q) - 1  # increasing, with holes
    assert not any(e["sym"] == OPTION for e in events)  # T.* on /stocks: stocks only
    ids = {(e["x"], e.get("trfi"), e["i"]) for e in events if e["sym"] == "AAPL"}
    assert len(ids) == 120 and len({i for _, _, i in ids}) < 120  # ids repeat across venues and TRFs


def test_the_options_cluster_carries_option_trades_without_ids(sim):
    ws = connect(sim, "options")
    try:
        ws.recv()
        send(ws, "auth", KEY)
        send(ws, "subscribe", f"T.{OPTION},T.AAPL")
        sim.start_clock()
        events, _ = received_trades(ws, 120)
    finally:
        ws.close()
    assert events == [trade_event(t) for t in sim.trades("polygon", OPTION)]
    assert all("i" not in e and "z" not in e for e in events)


def fetch_pages(sim: Simulator, first: str) -> tuple[list[dict], int]:
    results: list[dict] = []
    pages = 0
    url: str | None = f"{sim.rest_url('polygon')}{first}"  # None: no next page
    while url:
        status, body = get(url)
        assert status == 200, body
        results += body["results"]
        pages += 1
        next_url = body.get("next_url")
        assert next_url is None or ("apiKey" not in next_url and next_url.startswith("https://api.polygon.io/"))
        url = next_url and next_url.replace("https://api.polygon.io", sim.rest_url("polygon")) + f"&apiKey={KEY}"
    return results, pages


def test_rest_v3_trades_pages_through_a_window_in_either_order(sim):
    sim.start_clock()
    sim.wait_emitted(120)
    truth = sim.trades("polygon", "MSFT")
    gte, lte = sip_ns(truth[10]), sip_ns(truth[99])
    window = f"/v3/trades/MSFT?timestamp.gte={gte}&timestamp.lte={lte}&limit=7&sort=timestamp&apiKey={KEY}"
    ascending, pages = fetch_pages(sim, window + "&order=asc")
    assert ascending == [rest_result(t) for t in truth[10:100]] and pages == 13
    descending, _ = fetch_pages(sim, window + "&order=desc")
    assert descending == ascending[::-1]
    assert fetch_pages(sim, f"/v3/trades/{OPTION}?timestamp.gt={sip_ns(truth[118])}&apiKey={KEY}&order=asc")[0] == \
        [rest_result(sim.trades("polygon", OPTION)[119])]


@pytest.mark.parametrize("query, status", [("", 401), ("?apiKey=wrong", 401), (f"?apiKey={KEY}&limit=50001", 400),
                                           (f"?apiKey={KEY}&cursor=!!", 400)])
def test_rest_refuses_a_missing_or_wrong_key_and_bad_parameters(sim, query, status):
    assert get(f"{sim.rest_url('polygon')}/v3/trades/AAPL{query}")[0] == status


def test_the_feeds_backfill_loop_fetches_exactly_an_outage_window(sim):
    """PolygonProtocol's requests against the twin: outage_gaps → pages via next_url → the window's trades."""
    sim.start_clock()
    sim.wait_emitted(120)
    feed = FeedConfig("polygon", "polygon", sim.url("polygon"), tuple(SYMBOLS), rest_url=sim.rest_url("polygon"),
                      options=PolygonOptions(api_key=KEY))
    protocol = PolygonProtocol(feed)
    protocol.page_limit = 9
    truth = {s: sim.trades("polygon", s) for s in SYMBOLS}
    since, until = truth["AAPL"][20].time_ms * 1_000_000, truth["AAPL"][80].time_ms * 1_000_000
    for gap in protocol.outage_gaps(tuple(SYMBOLS), since, until):
        rows, pages = backfill(protocol, gap)
        assert rows == [event_trade(trade_event(t), 0) for t in truth[rows[0].symbol][20:81]]
        assert pages == 7  # 61 trades, 9 a page
