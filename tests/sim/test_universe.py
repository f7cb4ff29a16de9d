"""Whole markets: listing endpoints, listing changes during a run, the exchanges' connection limits, T.*, and a
3,000-symbol universe routed to the right connections."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import websocket
from simclient import get

from marketfeed.sim import Limit, Simulator, universe
from marketfeed.sim.cli import add_universes
from marketfeed.sim.limits import Bucket, Window
from marketfeed.sim.polygon import MAX_CONNECTIONS, sequence_number

KEY = "PK-universe"


@contextmanager
def ws_client(url: str) -> Iterator[websocket.WebSocket]:
    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True)
    try:
        yield ws
    finally:
        ws.shutdown()


def recv(ws: websocket.WebSocket) -> Any:  # parsed JSON: the tests check its shape
    return orjson.loads(ws.recv())


def close_code(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read until the server's close frame: (code, reason); the frames before it are dropped."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0], data[2:].decode()


def binance_trades(ws: websocket.WebSocket, n: int) -> list[dict]:
    """The next n trade events of a combined stream, skipping method replies."""
    events: list[dict] = []
    while len(events) < n:
        frame = recv(ws)
        if "data" in frame and frame["data"]["e"] == "trade":
            events.append(frame["data"])
    return events


# ---- listing endpoints ----

def test_listing_endpoints_list_every_symbol_in_the_documented_shapes():
    binance = ["BTCUSDT", "ETHBTC", *universe("binance", 40)]
    symbols = {"binance": binance, "kraken": ["BTC/USD", "DOGE/USD", "SOL/EUR", *universe("kraken", 5)],
               "coinbase": ["BTC-USD", *universe("coinbase", 5)]}
    with Simulator(["binance", "kraken", "coinbase"], symbols, clock_paused=True) as sim:
        status, info = get(sim.rest_url("binance") + "/api/v3/exchangeInfo")
        assert status == 200 and [s["symbol"] for s in info["symbols"]] == binance
        assert {(s["symbol"], s["baseAsset"], s["quoteAsset"], s["status"]) for s in info["symbols"][:3]} == {
            ("BTCUSDT", "BTC", "USDT", "TRADING"), ("ETHBTC", "ETH", "BTC", "TRADING"),
            ("SYM0001USDT", "SYM0001", "USDT", "TRADING")}
        assert {"isSpotTradingAllowed", "permissionSets", "filters", "orderTypes"} <= set(info["symbols"][0])
        assert sim.rest_log("binance")[-1].status == 200
        _, some = get(sim.rest_url("binance") + '/api/v3/exchangeInfo?symbols=["ETHBTC","BTCUSDT"]')
        assert [s["symbol"] for s in some["symbols"]] == ["ETHBTC", "BTCUSDT"]
        assert get(sim.rest_url("binance") + '/api/v3/exchangeInfo?symbols=["NOPE"]') == (400, {
            "code": -1121, "msg": "Invalid symbol."})

        status, pairs = get(sim.rest_url("kraken") + "/0/public/AssetPairs")
        assert status == 200 and pairs["error"] == [] and len(pairs["result"]) == 8
        btc, doge, sol = pairs["result"]["XXBTZUSD"], pairs["result"]["XDGUSD"], pairs["result"]["SOLEUR"]
        assert (btc["altname"], btc["wsname"], btc["base"], btc["quote"], btc["status"]) == (
            "XBTUSD", "XBT/USD", "XXBT", "ZUSD", "online")
        assert (doge["wsname"], doge["base"], sol["wsname"], sol["quote"]) == ("XDG/USD", "XXDG", "SOL/EUR", "ZEUR")
        assert pairs["result"]["SYM0001USD"]["wsname"] == "SYM0001/USD"
        _, one = get(sim.rest_url("kraken") + "/0/public/AssetPairs?pair=XBTUSD,SOLEUR")
        assert list(one["result"]) == ["XXBTZUSD", "SOLEUR"]
        assert get(sim.rest_url("kraken") + "/0/public/AssetPairs?pair=NOPEUSD")[1] == {
            "error": ["EQuery:Unknown asset pair"]}

        status, products = get(sim.rest_url("coinbase") + "/products")
        assert status == 200 and [p["id"] for p in products] == symbols["coinbase"]
        assert {k: products[0][k] for k in ("id", "base_currency", "quote_currency", "status", "trading_disabled")} \
            == {"id": "BTC-USD", "base_currency": "BTC", "quote_currency": "USD", "status": "online",
                "trading_disabled": False}
        assert get(sim.rest_url("coinbase") + "/products/SYM0002-USD")[1]["id"] == "SYM0002-USD"
        assert get(sim.rest_url("coinbase") + "/products/NOPE-USD") == (404, {"message": "NotFound"})


def test_kraken_v2_takes_v2_pair_names_and_refuses_the_v1_wsname_as_kraken_does():
    with Simulator(["kraken"], {"kraken": ["BTC/USD", "DOGE/USD"]}) as sim, \
            ws_client(sim.url("kraken") + "/v2") as ws:
        assert recv(ws)["channel"] == "status"
        ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["XBT/USD", "XDG/USD"],
                                                                 "snapshot": False}}))
        refusals = [recv(ws), recv(ws)]
        assert [(r["success"], r["error"]) for r in refusals] == [
            (False, "Currency pair not supported XBT/USD"), (False, "Currency pair not supported XDG/USD")]
        ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"],
                                                                 "snapshot": False}}))
        assert recv(ws)["success"] is True


# ---- listing changes ----

def test_a_symbol_listed_mid_run_trades_from_its_listing_and_a_delisted_one_stops_at_its_last_trade():
    with Simulator(["binance"], {"binance": ["BTCUSDT", "ETHUSDT"]}, rate=100, seed=2) as sim, \
            ws_client(sim.url("binance") + "/stream") as ws:
        ws.send('{"method":"SUBSCRIBE","params":["btcusdt@trade","newusdt@trade"],"id":1}')  # NEWUSDT: not yet
        assert recv(ws) == {"result": None, "id": 1}
        sim.wait_emitted(20)
        sim.list_symbol("binance", "NEWUSDT")
        new = sim.market("binance")["NEWUSDT"]
        assert new.first_id == 3 * 1_000_000  # a block of its own, after the two listed from the start
        assert sim.listed("binance") == ["BTCUSDT", "ETHUSDT", "NEWUSDT"]
        _, info = get(sim.rest_url("binance") + "/api/v3/exchangeInfo")
        assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT", "NEWUSDT"]
        seen = [e for e in binance_trades(ws, 200) if e["s"] == "NEWUSDT"]
        truth = sim.truth("binance", "NEWUSDT")
        assert seen and [e["t"] for e in seen] == truth[: len(seen)] and truth[0] == new.first_id  # from its trade 0
        assert len(truth) < sim.emitted("binance")  # it started later than the exchange's clock

        sim.delist_symbol("binance", "BTCUSDT")
        ended = sim.truth("binance", "BTCUSDT")
        sim.wait_emitted(sim.emitted("binance") + 30)
        assert sim.truth("binance", "BTCUSDT") == ended  # its truth ends at its last trade
        after = binance_trades(ws, 60)
        assert {e["s"] for e in after[-20:]} == {"NEWUSDT"}
        assert all(e["t"] in ended for e in after if e["s"] == "BTCUSDT")  # only trades from before, in flight
        _, info = get(sim.rest_url("binance") + "/api/v3/exchangeInfo")
        assert [s["symbol"] for s in info["symbols"]] == ["ETHUSDT", "NEWUSDT"]
        assert get(sim.rest_url("binance") + "/api/v3/trades?symbol=BTCUSDT&limit=1")[1][0]["id"] == ended[-1]
        sim.delist_symbol("binance", "ETHUSDT", still_listed=True)
        _, info = get(sim.rest_url("binance") + "/api/v3/exchangeInfo?symbolStatus=BREAK")
        assert [(s["symbol"], s["status"]) for s in info["symbols"]] == [("ETHUSDT", "BREAK")]
        with pytest.raises(ValueError, match="relisting is not simulated"):
            sim.list_symbol("binance", "BTCUSDT")
        assert sim.refusals("binance") == []


def test_kraken_coinbase_and_polygon_follow_the_listing():
    symbols = {"kraken": ["BTC/USD"], "coinbase": ["BTC-USD"], "polygon": ["O:SPY251219C00650000"]}
    with Simulator(["kraken", "coinbase", "polygon"], symbols, rate=100, seed=4) as sim:
        sim.list_symbol("kraken", "NEW/USD")
        sim.list_symbol("coinbase", "NEW-USD")
        assert "NEWUSD" in get(sim.rest_url("kraken") + "/0/public/AssetPairs")[1]["result"]
        assert [p["id"] for p in get(sim.rest_url("coinbase") + "/products")[1]] == ["BTC-USD", "NEW-USD"]
        with ws_client(sim.url("kraken") + "/v2") as ws:
            recv(ws)
            ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["NEW/USD"],
                                                                     "snapshot": False}}))
            assert recv(ws)["success"] is True
            assert recv(ws)["data"][0]["symbol"] == "NEW/USD"
        sim.delist_symbol("kraken", "NEW/USD")
        sim.delist_symbol("coinbase", "NEW-USD", still_listed=True)
        assert "NEWUSD" not in get(sim.rest_url("kraken") + "/0/public/AssetPairs")[1]["result"]
        delisted = get(sim.rest_url("coinbase") + "/products/NEW-USD")[1]
        assert (delisted["status"], delisted["trading_disabled"]) == ("delisted", True)

        with ws_client(sim.url("polygon") + "/options") as ws:
            recv(ws)
            ws.send(orjson.dumps({"action": "auth", "params": KEY}))
            recv(ws)
            ws.send(orjson.dumps({"action": "subscribe", "params": "T.*"}))
            recv(ws)
            sim.list_symbol("polygon", "O:SPY251219P00600000")
            sim.list_symbol("polygon", "AAPL")  # a stock: not on the options cluster
            (connection,) = sim.connections("polygon")
            assert connection.symbols == {"O:SPY251219C00650000", "O:SPY251219P00600000"}
            sim.delist_symbol("polygon", "O:SPY251219C00650000")
            assert connection.symbols == {"O:SPY251219P00600000"}
        for exchange in symbols:
            assert sim.refusals(exchange) == []


# ---- limits: each refused at limit + 1, not at the limit ----

def test_binance_refuses_a_subscribe_beyond_1024_streams_by_closing_the_connection():
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, clock_paused=True) as sim, \
            ws_client(sim.url("binance") + "/stream?streams=btcusdt@trade") as ws:
        streams = [f"s{k:04d}usdt@trade" for k in range(1023)]  # 1 + 1023: exactly at the limit
        ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        assert recv(ws) == {"result": None, "id": 1}
        ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
        assert len(recv(ws)["result"]) == 1024
        assert sim.refusals("binance") == []
        ws.send('{"method":"SUBSCRIBE","params":["ethusdt@trade"],"id":3}')  # the 1025th
        assert close_code(ws) == (1008, "Too many streams")
        (refusal,) = sim.refusals("binance")
        assert (refusal.limit, refusal.connection_id) == (Limit.STREAMS, 1)


def test_binance_refuses_a_url_beyond_its_stream_limit_at_the_handshake():
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, clock_paused=True,
                   twin_options={"binance": {"max_streams": 3}}) as sim:
        with ws_client(sim.url("binance") + "/stream?streams=a@trade/b@trade/c@trade"):
            assert sim.refusals("binance") == []
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(sim.url("binance") + "/stream?streams=a@trade/b@trade/c@trade/d@trade")
        assert refused.value.status_code == 400
        assert [(r.limit, r.connection_id) for r in sim.refusals("binance")] == [(Limit.STREAMS, None)]


def test_binance_closes_a_connection_on_its_6th_message_pings_and_pongs_included():
    # a minute-long window: the test's speed cannot matter, the count does
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, clock_paused=True,
                   twin_options={"binance": {"message_window_s": 60.0}}) as sim, \
            ws_client(sim.url("binance") + "/stream") as ws:
        for k in range(3):
            ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": k}))
            assert recv(ws) == {"result": [], "id": k}
        ws.pong("unsolicited")
        ws.ping("5th")  # at the limit
        assert ws.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PONG, b"5th")  # answered: all 5 counted
        assert sim.refusals("binance") == []
        ws.send('{"method":"LIST_SUBSCRIPTIONS","id":9}')  # the 6th
        assert close_code(ws) == (1008, "Too many requests")
        assert [(r.limit, r.connection_id) for r in sim.refusals("binance")] == [(Limit.MESSAGE_RATE, 1)]


def test_binance_refuses_the_connection_attempt_beyond_its_budget_per_ip_with_429():
    with Simulator(["binance"], {"binance": ["BTCUSDT"]}, clock_paused=True,
                   twin_options={"binance": {"max_connection_attempts": 3}}) as sim:
        for _ in range(3):
            with ws_client(sim.url("binance") + "/ws"):
                pass
        assert sim.refusals("binance") == []
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(sim.url("binance") + "/ws")
        assert refused.value.status_code == 429
        assert [(r.limit, r.connection_id) for r in sim.refusals("binance")] == [(Limit.CONNECTION_RATE, None)]


def polygon_auth(ws: websocket.WebSocket) -> Any:
    recv(ws)
    ws.send(orjson.dumps({"action": "auth", "params": KEY}))
    return recv(ws)


def test_polygon_allows_one_connection_per_cluster_and_key_and_evicts_the_oldest_beyond():
    with Simulator(["polygon"], {"polygon": ["AAPL", "O:SPY251219C00650000"]}, clock_paused=True,
                   twin_options={"polygon": {"api_key": KEY}}) as sim, \
            ws_client(sim.url("polygon") + "/stocks") as first, ws_client(sim.url("polygon") + "/options") as other:
        assert polygon_auth(first)[0]["status"] == "auth_success"
        assert polygon_auth(other)[0]["status"] == "auth_success"  # another cluster: its own connection
        assert sim.refusals("polygon") == []
        first_id = sim.connections("polygon")[0].id
        with ws_client(sim.url("polygon") + "/stocks") as second:
            assert polygon_auth(second)[0]["status"] == "auth_success"
            assert recv(first) == [{"ev": "status", "status": "max_connections", "message": MAX_CONNECTIONS}]
            assert close_code(first)[0] == 1008
            second.send(orjson.dumps({"action": "subscribe", "params": "T.AAPL"}))
            assert recv(second)[0]["status"] == "success"
        assert [(r.limit, r.connection_id) for r in sim.refusals("polygon")] == [(Limit.CONNECTIONS, first_id)]


def test_coinbase_rejects_the_11th_subscription_of_one_product_and_channel_and_keeps_the_connection():
    with Simulator(["coinbase"], {"coinbase": ["BTC-USD", "ETH-USD"]}, clock_paused=True) as sim:
        subscribe = orjson.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["matches"]})
        clients = []
        try:
            for _ in range(11):
                clients.append(websocket.create_connection(sim.url("coinbase"), timeout=10))
                clients[-1].send(subscribe)
            replies = [recv(ws) for ws in clients]
            assert [r["type"] for r in replies] == ["subscriptions"] * 10 + ["error"]
            assert replies[-1]["message"] == "Failed to subscribe"
            clients[-1].send(orjson.dumps({"type": "subscribe", "product_ids": ["ETH-USD"], "channels": ["matches"]}))
            assert recv(clients[-1])["type"] == "subscriptions"  # still open, other products are fine
            refusals = sim.refusals("coinbase")
            assert [r.limit for r in refusals] == [Limit.SUBSCRIPTIONS]
            clients.pop(0).close()  # a subscription freed…
            sim.wait_until(lambda: len(sim.connections("coinbase")) == 10, what="the close")
            clients[-1].send(subscribe)  # …is taken again
            assert recv(clients[-1])["type"] == "subscriptions"
        finally:
            for ws in clients:
                ws.shutdown()


def test_coinbase_limits_connection_attempts_and_messages_per_ip_with_token_buckets():
    options = {"connection_burst": 2, "connection_rate": 0.001, "message_burst": 3, "message_rate": 0.001}
    with Simulator(["coinbase"], {"coinbase": ["BTC-USD"]}, clock_paused=True,
                   twin_options={"coinbase": options}) as sim:
        with ws_client(sim.url("coinbase")) as ws, ws_client(sim.url("coinbase")):
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                websocket.create_connection(sim.url("coinbase"))
            assert refused.value.status_code == 429
            for _ in range(3):
                ws.send(orjson.dumps({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["matches"]}))
                assert recv(ws)["type"] == "subscriptions"
            ws.send(orjson.dumps({"type": "unsubscribe", "product_ids": ["BTC-USD"], "channels": ["matches"]}))
            assert recv(ws)["message"] == "Too many messages"
            assert close_code(ws)[0] == 1008
        assert [r.limit for r in sim.refusals("coinbase")] == [Limit.CONNECTION_RATE, Limit.MESSAGE_RATE]


def test_rate_gates_admit_up_to_the_limit_and_recover_as_documented():
    window = Window(3, 1.0).gate()
    assert [window.admit(t) for t in (0.0, 0.1, 0.2, 0.3, 0.9)] == [True, True, True, False, False]
    assert window.admit(1.0) and not window.admit(1.05)  # 0.0 left the window; 0.1 has not yet
    bucket = Bucket(rate=2.0, burst=3).gate()
    assert [bucket.admit(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.admit(0.5) and not bucket.admit(0.5)  # one token back after half a second


# ---- whole universes ----

def test_polygon_t_star_delivers_the_trades_of_every_contract_and_no_stock():
    contracts = universe("polygon", 300)
    with Simulator(["polygon"], {"polygon": [*contracts, "AAPL"]}, rate=50, count=4, clock_paused=True) as sim, \
            ws_client(sim.url("polygon") + "/options") as ws:
        polygon_auth(ws)
        ws.send(orjson.dumps({"action": "subscribe", "params": "T.*"}))
        recv(ws)
        sim.start_clock()
        seen: dict[str, list[int]] = {}
        while sum(map(len, seen.values())) < 4 * len(contracts):
            for event in recv(ws):
                seen.setdefault(event["sym"], []).append(event["q"])
        assert seen == {c: [sequence_number(t) for t in sim.trades("polygon", c)] for c in contracts}
        assert sim.refusals("polygon") == []


def test_a_3000_symbol_universe_routes_each_trade_to_the_connection_subscribed_to_it():
    symbols = universe("binance", 3000)
    with Simulator(["binance"], {"binance": symbols}, rate=20, count=3, clock_paused=True) as sim:
        shards = [symbols[k:k + 1000] for k in range(0, 3000, 1000)]
        clients = [websocket.create_connection(sim.url("binance") + "/stream", timeout=10) for _ in shards]
        try:
            for k, (ws, shard) in enumerate(zip(clients, shards, strict=True)):
                ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": [f"{s.lower()}@trade" for s in shard],
                                      "id": k}))
                assert recv(ws) == {"result": None, "id": k}
            sim.start_clock()
            for ws, shard in zip(clients, shards, strict=True):
                got: dict[str, list[int]] = {}
                for event in binance_trades(ws, 3 * len(shard)):
                    got.setdefault(event["s"], []).append(event["t"])
                assert got == {s: sim.truth("binance", s) for s in shard}
        finally:
            for ws in clients:
                ws.shutdown()
        assert sim.refusals("binance") == []


def test_the_cli_adds_a_generated_universe_per_exchange():
    assert add_universes(["binance=3"], {"binance": ["BTCUSDT"], "kraken": ["BTC/USD"]}) == {
        "binance": ["BTCUSDT", "SYM0001USDT", "SYM0002USDT", "SYM0003USDT"], "kraken": ["BTC/USD"]}
    with pytest.raises(ValueError, match="'coinbase' is not one of the --exchange twins"):
        add_universes(["coinbase=3"], {"binance": []})
    with pytest.raises(ValueError, match="positive whole number"):
        add_universes(["binance=lots"], {"binance": []})
