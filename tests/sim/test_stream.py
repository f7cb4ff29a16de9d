"""The Binance twin's WebSocket side: frames, ids against ground truth, live methods."""
import orjson
import pytest
import websocket
from simclient import SYMBOLS, by_symbol

from marketfeed.sim import Simulator

TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]


def test_combined_stream_frames_match_ground_truth(sim, connect):
    client = connect()
    frames = [client.recv_json() for _ in range(60)]
    assert all(list(f) == ["stream", "data"] and list(f["data"]) == TRADE_KEYS for f in frames)
    assert all(f["stream"] == f["data"]["s"].lower() + "@trade" for f in frames)
    ids = by_symbol([f["data"] for f in frames])
    assert set(ids) == set(SYMBOLS)
    for symbol, seen in ids.items():
        truth = sim.truth("binance", symbol)
        start = truth.index(seen[0])
        assert seen == truth[start : start + len(seen)]  # contiguous, and the ids that happened
        market = sim.market("binance")[symbol]
        for event in (f["data"] for f in frames if f["data"]["s"] == symbol):
            trade = market.trade(market.index_of(event["t"]))
            assert (event["p"], event["q"], event["T"], event["m"]) == (
                trade.price, trade.qty, trade.time_ms, trade.buyer_is_maker
            )
    assert client.handle.counters.trades_sent >= 60


def test_raw_stream_sends_bare_events_of_one_symbol(connect):
    client = connect("/ws/ethusdt@trade")
    events = [client.recv_json() for _ in range(10)]
    assert all(list(e) == TRADE_KEYS and e["s"] == "ETHUSDT" for e in events)
    assert [e["t"] for e in events] == list(range(events[0]["t"], events[0]["t"] + 10))


def test_live_subscribe_list_and_unsubscribe(sim, connect):
    client = connect("/stream")
    client.ws.send('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
    assert client.recv_json() == {"result": None, "id": 1}
    assert {e["s"] for e in client.trades(5)} == {"BTCUSDT"}
    client.ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
    client.ws.send('{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":3}')
    replies: list[dict] = []
    while len(replies) < 2:
        if "id" in (message := client.recv_json()):
            replies.append(message)
    assert replies == [{"result": ["btcusdt@trade"], "id": 2}, {"result": None, "id": 3}]
    assert client.handle.symbols == frozenset()


def test_bad_requests_get_binance_errors(connect):
    client = connect("/ws")
    client.ws.send("not json")
    assert client.recv_json()["error"]["code"] == 3
    client.ws.send('{"method":"SUBSCRIBE","params":["BTC USDT"],"id":9}')
    assert client.recv_json() == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 9}
    client.ws.send(orjson.dumps({"method": "FOO", "id": 10}))
    assert client.recv_json()["error"]["code"] == 2


def test_unknown_path_is_refused_before_the_upgrade(sim):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(sim.url("binance") + "/nope", timeout=5)
    assert refused.value.status_code == 404


def test_an_exchange_without_a_twin_is_refused_by_name():
    with pytest.raises(ValueError, match="no simulator twin for exchange 'nope'"):
        Simulator(["nope"]).start()
