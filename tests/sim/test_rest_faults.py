"""REST faults over HTTP: each exchange's documented rate-limit, ban and server-error answers, Binance's
request weights, Coinbase's string ids, and the request log that shows when a client asked again."""
from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson
import pytest

from marketfeed.sim import Simulator
from marketfeed.sim.polygon import rest_result

SYMBOLS = {"binance": ["BTCUSDT"], "kraken": ["BTC/USD"], "coinbase": ["BTC-USD"], "polygon": ["AAPL"]}
TRADES = 50  # per symbol, then the market stops: every answer is exact
TOO_MUCH_WEIGHT = ("Too much request weight used; current limit is {} request weight per 1 MINUTE. "
                   "Please use WebSocket Streams for live updates to avoid polling the API.")
BANNED = ("Way too much request weight used; IP banned until {}. "
          "Please use WebSocket Streams for live updates to avoid bans.")
POLYGON_LIMIT = ("You've exceeded the maximum requests per minute, please wait or upgrade your subscription to "
                 "continue. https://polygon.io/pricing")
INTERNAL_ERROR = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
WEIGHT = "X-MBX-USED-WEIGHT-1M"
HISTORICAL = "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1000000&limit=3"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:  # parsed JSON: the tests check its shape
        return orjson.loads(self.body)


def fetch(sim: Simulator, exchange: str, path: str) -> Answer:
    try:
        with urllib.request.urlopen(sim.rest_url(exchange) + path, timeout=5) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read())


@contextlib.contextmanager
def open_sim(**twin_options: dict[str, Any]) -> Iterator[Simulator]:
    """All four twins, each a fresh REST state, the market stopped after TRADES trades."""
    with Simulator(list(SYMBOLS), SYMBOLS, rate=2000, count=TRADES, seed=4, twin_options=twin_options) as sim:
        sim.wait_emitted(TRADES)
        yield sim


@pytest.fixture
def sim():
    with open_sim() as s:
        yield s


def statuses(sim: Simulator, exchange: str) -> list[int]:
    return [entry.status for entry in sim.rest_log(exchange)]


def after_ban(sim: Simulator, timeout: float = 10.0) -> Answer:
    """The first Binance answer that is not a 418, asking every 50 ms (a client that ignores the ban)."""
    deadline = time.monotonic() + timeout
    while (answer := fetch(sim, "binance", HISTORICAL)).status == 418:
        assert time.monotonic() < deadline, "the ban did not end"
        time.sleep(0.05)
    return answer


def served_binance(sim: Simulator, body: Any) -> bool:
    return [t["id"] for t in body] == sim.truth("binance", "BTCUSDT")[:3]


def served_kraken(sim: Simulator, body: Any) -> bool:
    return body["error"] == [] and [t[6] for t in body["result"]["XXBTZUSD"]] == sim.truth("kraken", "BTC/USD")[-3:]


def served_coinbase(sim: Simulator, body: Any) -> bool:
    return [t["trade_id"] for t in body] == sim.truth("coinbase", "BTC-USD")[-3:][::-1]  # newest first


def served_polygon(sim: Simulator, body: Any) -> bool:
    return body["results"] == [rest_result(t) for t in sim.trades("polygon", "AAPL")[:3]]


# exchange → (path, retry_after_s, status, body without request_id, check of the normal answer)
THROTTLED: dict[str, tuple[str, int | None, int, dict, Callable[[Simulator, Any], bool]]] = {
    "binance": (HISTORICAL, 2, 429, {"code": -1003, "msg": TOO_MUCH_WEIGHT.format(6000)}, served_binance),
    "kraken": ("/0/public/Trades?pair=XBTUSD&count=3", None, 200, {"error": ["EAPI:Rate limit exceeded"]},
               served_kraken),
    "coinbase": ("/products/BTC-USD/trades?limit=3", 3, 429, {"message": "Public rate limit exceeded"},
                 served_coinbase),
    "polygon": ("/v3/trades/AAPL?order=asc&limit=3&apiKey=k", None, 429, {"status": "ERROR", "error": POLYGON_LIMIT},
                served_polygon),
}


@pytest.mark.parametrize("exchange", THROTTLED)
def test_throttle_gives_the_exchanges_rate_limit_answer_for_count_requests_then_ends(sim, exchange):
    path, retry_after_s, status, body, served = THROTTLED[exchange]
    sim.rest_throttle(exchange, 2, retry_after_s)
    limited = [fetch(sim, exchange, path) for _ in range(2)]  # the second ignores Retry-After, once: no ban
    normal = fetch(sim, exchange, path)
    for answer in limited:
        assert answer.status == status
        assert {k: v for k, v in answer.json().items() if k != "request_id"} == body
        assert answer.headers["Retry-After"] == (None if retry_after_s is None else str(retry_after_s))
    assert normal.status == 200 and normal.headers["Retry-After"] is None and served(sim, normal.json())
    if exchange == "polygon":  # every answer has its own request id
        assert len({answer.json()["request_id"] for answer in limited}) == 2
    log = sim.rest_log(exchange)
    assert [(e.path, e.query, e.status) for e in log] == [(log[0].path, log[0].query, status)] * 2 + [
        (log[0].path, log[0].query, 200)]
    assert log[0].path == path.split("?")[0] and log[0].time <= log[1].time <= log[2].time


def test_server_errors_carry_each_exchanges_error_shape_and_retry_after_when_given(sim):
    cases = [("binance", HISTORICAL, 503, 4, INTERNAL_ERROR),
             ("binance", HISTORICAL, 500, None, INTERNAL_ERROR),
             ("coinbase", "/products/BTC-USD/trades?limit=3", 500, None, {"message": "Internal Server Error"}),
             ("polygon", "/v3/trades/AAPL?limit=3&apiKey=k", 503, 2,
              {"status": "ERROR", "error": "Service Unavailable"})]
    for exchange, _, status, retry_after_s, _ in cases:
        sim.rest_errors(exchange, 1, status, retry_after_s)
    for exchange, path, status, retry_after_s, body in cases:
        answer = fetch(sim, exchange, path)
        assert answer.status == status and answer.headers["Retry-After"] == (retry_after_s and str(retry_after_s))
        assert {k: v for k, v in answer.json().items() if k != "request_id"} == body
    assert statuses(sim, "binance") == [503, 500] and fetch(sim, "binance", HISTORICAL).status == 200


def test_kraken_says_it_is_unavailable_in_a_200_body_and_its_edge_answers_5xx_without_json(sim):
    path = "/0/public/Trades?pair=XBTUSD&count=3"
    sim.rest_errors("kraken", 1, 200, 5)
    sim.rest_errors("kraken", 1, 502)
    unavailable, edge, normal = (fetch(sim, "kraken", path) for _ in range(3))
    assert (unavailable.status, unavailable.json(), unavailable.headers["Retry-After"]) == (
        200, {"error": ["EService:Unavailable"]}, "5")
    assert (edge.status, edge.headers["Content-Type"], edge.body) == (502, "text/plain", b"Bad Gateway")
    assert served_kraken(sim, normal.json()) and statuses(sim, "kraken") == [200, 502, 200]


def test_faults_queue_in_the_order_given(sim):
    sim.rest_errors("binance", 1)
    sim.rest_throttle("binance", 1, 1)
    sim.rest_errors("binance", 2, 504)
    assert [fetch(sim, "binance", HISTORICAL).status for _ in range(5)] == [503, 429, 504, 504, 200]


def test_answers_an_exchange_never_gives_are_refused_and_leave_nothing_queued(sim):
    refused = [
        (lambda: sim.rest_throttle("binance", 1), "sends Retry-After with a request-limit 429"),
        (lambda: sim.rest_throttle("kraken", 1, 2), "HTTP 200 and an error array"),
        (lambda: sim.rest_ban("coinbase", 5), "bans IPs"),
        (lambda: sim.rest_errors("polygon", 1, 429), "not a server error"),
        (lambda: sim.rest_errors("kraken", 1, 404), "not a server error"),
        (lambda: sim.rest_throttle("coinbase", 0), "at least 1"),
        (lambda: sim.rest_errors("binance", 2, 503, -1), "not negative"),
        (lambda: sim.rest_ban("binance", 0), "positive"),
    ]
    for fault, message in refused:
        with pytest.raises(ValueError, match=message):
            fault()
    assert served_binance(sim, fetch(sim, "binance", HISTORICAL).json())
    assert fetch(sim, "coinbase", "/products/BTC-USD/trades?limit=3").status == 200


def test_every_binance_answer_reports_the_weight_used_this_minute_at_each_endpoints_documented_weight(sim):
    requests = [("/api/v3/exchangeInfo", 20), ("/api/v3/klines?symbol=BTCUSDT&interval=1m", 2),
                ("/api/v3/aggTrades?symbol=BTCUSDT&limit=3", 4), (HISTORICAL, 25),
                ("/api/v3/trades?symbol=BTCUSDT", 25), ("/api/v3/nothing", 1),
                ("/api/v3/trades?symbol=DOGEBTC", 25)]  # refused requests count too
    answers = [fetch(sim, "binance", path) for path, _ in requests]
    used = [int(answer.headers[WEIGHT]) for answer in answers]
    assert used == [20, 22, 26, 51, 76, 77, 102]
    assert [answer.status for answer in answers] == [200] * 5 + [404, 400]
    info = answers[0].json()
    assert info["rateLimits"] == [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                   "limit": 6000}]
    assert [(s["symbol"], s["status"]) for s in info["symbols"]] == [("BTCUSDT", "TRADING")]
    assert fetch(sim, "binance", "/api/v3/exchangeInfo?symbol=DOGEBTC").json()["code"] == -1121
    assert WEIGHT not in fetch(sim, "kraken", "/0/public/Trades?pair=XBTUSD").headers  # only Binance weighs


def test_past_the_weight_limit_binance_answers_429_until_the_minute_ends_and_serves_a_client_that_waited():
    with open_sim(binance={"weight_limit": 50, "weight_minute_s": 3.0}) as sim:
        first = [fetch(sim, "binance", HISTORICAL) for _ in range(3)]
        assert [a.status for a in first] == [200, 200, 429]
        assert [a.headers[WEIGHT] for a in first] == ["25", "50", "75"]
        assert first[2].json() == {"code": -1003, "msg": TOO_MUCH_WEIGHT.format(50)}
        retry_after_s = int(first[2].headers["Retry-After"])
        assert 1 <= retry_after_s <= 3  # the rest of the twin's 3 s minute
        time.sleep(retry_after_s)  # a client keeping to Retry-After
        later = fetch(sim, "binance", HISTORICAL)
        assert (later.status, later.headers[WEIGHT]) == (200, "25") and served_binance(sim, later.json())
        log = sim.rest_log("binance")
        assert [e.status for e in log] == [200, 200, 429, 200] and log[3].time - log[2].time >= retry_after_s


def test_429s_ignored_make_a_418_ban_with_retry_after_until_it_ends():
    with open_sim(binance={"weight_limit": 30, "weight_minute_s": 3.0, "ban_after": 2, "ban_s": 3.0}) as sim:
        before_ms = time.time() * 1000
        answers = [fetch(sim, "binance", HISTORICAL) for _ in range(4)]
        after_ms = time.time() * 1000
        assert [a.status for a in answers] == [200, 429, 429, 418]  # the 2nd and 3rd 429 came too early
        ban = answers[3]
        assert (ban.headers["Retry-After"], ban.headers[WEIGHT]) == ("3", "100")
        assert ban.json()["code"] == -1003
        until_ms = int(ban.json()["msg"].split("until ")[1].split(".")[0])
        assert ban.json()["msg"] == BANNED.format(until_ms) and before_ms + 3000 <= until_ms <= after_ms + 3000
        assert after_ban(sim).status == 200  # a new minute: the budget is back
        log = sim.rest_log("binance")
        ends = log[3].time + 3.0
        assert {e.status for e in log[3:-1]} == {418} and log[-2].time < ends <= log[-1].time


def test_a_binance_ban_answers_418_to_everything_until_it_ends(sim):
    before = time.monotonic()
    sim.rest_ban("binance", 2)
    ban = fetch(sim, "binance", HISTORICAL)
    assert (ban.status, ban.headers["Retry-After"]) == (418, "2") and ban.json()["code"] == -1003
    assert ban.json()["msg"].startswith("Way too much request weight used; IP banned until ")
    assert fetch(sim, "binance", "/api/v3/exchangeInfo").status == 418
    assert served_binance(sim, after_ban(sim).json())
    log = sim.rest_log("binance")
    assert {e.status for e in log[:-1]} == {418} and log[-1].status == 200 and log[-1].time >= before + 2


def test_coinbase_can_send_its_rest_trade_ids_as_strings():
    with open_sim(coinbase={"string_ids": True}) as sim:
        answer = fetch(sim, "coinbase", "/products/BTC-USD/trades?limit=3")
        newest = sim.truth("coinbase", "BTC-USD")[-3:][::-1]
        assert [t["trade_id"] for t in answer.json()] == [str(i) for i in newest]
        assert (answer.headers["CB-BEFORE"], answer.headers["CB-AFTER"]) == (str(newest[0]), str(newest[-1]))
        older = fetch(sim, "coinbase", f"/products/BTC-USD/trades?limit=2&after={newest[-1]}").json()
        assert [t["trade_id"] for t in older] == [str(newest[-1] - 2), str(newest[-1] - 1)][::-1]
