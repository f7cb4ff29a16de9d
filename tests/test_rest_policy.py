"""The host policy (fake clock) and each exchange's REST answer classification, from documented answers."""
import orjson
import pytest

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import FeedProtocol, Gap, HttpRequest
from marketfeed.feeds.rest_policy import (
    OK,
    HostPolicy,
    HostRules,
    RestVerdict,
    VerdictKind,
    http_verdict,
    retry_after_s,
)
from marketfeed.storage.tables import CANDLES

T0 = 1_800_000_000.0  # a clock minute starts here
WEIGHT = "x-mbx-used-weight-1m"
BINANCE_RULES = HostRules(min_interval_s=0.2, weight_limit=6000, weight_header=WEIGHT, weight_margin=0.1)
DATE = "Fri, 15 Jan 2027 08:00:00 GMT"  # a server's Date header…
DATE_S = 1_800_000_000.0  # …as Unix time


def policy(rules: HostRules) -> HostPolicy:
    return HostPolicy(rules, rng=lambda: 0.5)  # no jitter


def retry(seconds: float) -> RestVerdict:
    return RestVerdict(VerdictKind.RETRY, seconds, "test")


# --- the host policy

def test_requests_to_a_host_keep_its_minimum_interval():
    p = policy(HostRules(min_interval_s=0.2))
    assert p.delay_s(T0, 1) == 0
    p.sent(T0, 1)
    assert p.delay_s(T0 + 0.05, 1) == pytest.approx(0.15)
    assert p.delay_s(T0 + 0.2, 1) == 0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_429_and_503_holds_every_request_until_it_passes(status):
    p = policy(HostRules())
    p.observe(T0, {}, http_verdict(status, {"retry-after": "30"}, b"", limited_wait_s=1.0))
    assert p.delay_s(T0, 1) == 30 and p.imposed_s(T0) == 30
    assert p.delay_s(T0 + 29.5, 25) == pytest.approx(0.5)
    assert p.delay_s(T0 + 30, 1) == 0 and p.imposed_s(T0 + 30) == 0


def test_a_ban_stops_every_request_until_it_ends_and_a_shorter_wait_does_not_end_it():
    p = policy(BINANCE_RULES)
    ban = RestVerdict(VerdictKind.BANNED, 120, "HTTP 418")
    p.observe(T0, {}, ban)
    assert p.delay_s(T0 + 1, 1) == 119 and p.blocker == ban
    p.observe(T0 + 10, {}, retry(5))
    assert p.delay_s(T0 + 60, 1) == 60 and p.imposed_s(T0 + 119) == 1 and p.blocker == ban
    assert p.delay_s(T0 + 120, 1) == 0


def test_failures_without_a_delay_back_off_exponentially_and_an_answer_starts_over():
    p = policy(HostRules(backoff_min_s=0.5, backoff_max_s=30.0))
    waits = []
    for _ in range(4):
        p.observe(T0, {}, retry(0))
        waits.append(p.delay_s(T0, 1))
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert p.imposed_s(T0) == 0  # our own wait: the exchange asked for none
    p.observe(T0, {}, RestVerdict(VerdictKind.FAILED, reason="HTTP 400"))
    assert p.delay_s(T0, 1) == 0
    p.observe(T0, {}, retry(0))
    assert p.delay_s(T0, 1) == 0.5


def test_binance_weight_from_the_header_is_budgeted_against_the_limit_less_the_margin():
    p = policy(BINANCE_RULES)
    p.observe(T0 + 10, {WEIGHT: "5390"}, OK)  # the budget is 5400
    assert p.delay_s(T0 + 10, 25) == 50  # historicalTrades would pass it: wait for the next clock minute
    assert p.delay_s(T0 + 10, 10) == 0
    assert p.delay_s(T0 + 60, 25) == 0 and p.used_weight(T0 + 60) == 0


def test_weight_sent_counts_before_the_host_says_it():
    p = policy(BINANCE_RULES)
    p.observe(T0, {WEIGHT: "5300"}, OK)
    for k in range(4):
        assert p.delay_s(T0 + k, 25) == 0
        p.sent(T0 + k, 25)
    assert p.used_weight(T0 + 4) == 5400
    assert p.delay_s(T0 + 4, 25) == 56
    p.observe(T0 + 5, {WEIGHT: "100"}, OK)  # the host's own count wins
    assert p.delay_s(T0 + 5, 25) == 0


def test_a_host_without_weights_ignores_weight_headers():
    p = policy(HostRules())
    p.observe(T0, {WEIGHT: "999999"}, OK)
    assert p.delay_s(T0, 25) == 0


def test_a_clock_stepped_back_never_lengthens_a_wait():
    p = policy(BINANCE_RULES)
    p.sent(T0, 1)
    p.observe(T0, {}, retry(30))
    assert p.delay_s(T0 - 3600, 1) == 30


def test_retry_after_as_an_http_date_counts_from_the_answers_date():
    assert retry_after_s({"retry-after": "Fri, 15 Jan 2027 08:02:00 GMT", "date": DATE}) == 120
    assert retry_after_s({"retry-after": "Fri, 15 Jan 2027 08:02:00 GMT"}) == 0  # no Date: unknown
    assert retry_after_s({"retry-after": "soon"}) == 0 and retry_after_s({}) == 0


# --- classification: documented answers of each exchange

def protocol(exchange: str, symbols: tuple[str, ...], **extra) -> FeedProtocol:
    return registry.exchange(exchange).protocol(FeedConfig(
        name=exchange, exchange=exchange, url="wss://x", rest_url="https://api.x", symbols=symbols, **extra))


BINANCE = protocol("binance", ("BTCUSDT",))
KRAKEN = protocol("kraken", ("BTC/USD",))
COINBASE = protocol("coinbase", ("BTC-USD",))
POLYGON = protocol("polygon", ("AAPL",))


def body(value) -> bytes:
    return orjson.dumps(value)


# developers.binance.com/docs/binance-spot-api-docs/errors: -1003 TOO_MANY_REQUESTS, -1121 Invalid symbol.
TOO_MUCH_WEIGHT = body({"code": -1003, "msg": "Too much request weight used; current limit is 6000 request weight "
                                              "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                                              "polling the API."})
BANNED = body({"code": -1003, "msg": "Way too much request weight used; IP banned until 1620286253180. "
                                     "Please use WebSocket Streams for live updates to avoid bans."})


@pytest.mark.parametrize(("status", "headers", "answer", "expected"), [
    (200, {WEIGHT: "25"}, b"[]", OK),
    (429, {"retry-after": "30"}, TOO_MUCH_WEIGHT, RestVerdict(VerdictKind.RETRY, 30, "HTTP 429: code -1003: Too "
                                                              + orjson.loads(TOO_MUCH_WEIGHT)["msg"][4:])),
    (418, {"retry-after": "7200"}, BANNED, RestVerdict(VerdictKind.BANNED, 7200, "HTTP 418: code -1003: Way "
                                                       + orjson.loads(BANNED)["msg"][4:])),
    (400, {}, body({"code": -1121, "msg": "Invalid symbol."}),
     RestVerdict(VerdictKind.FAILED, 0, "HTTP 400: code -1121: Invalid symbol.")),
    (503, {}, body({"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
     RestVerdict(VerdictKind.RETRY, 0, "HTTP 503: code -1001: Internal error; unable to process your request. "
                                       "Please try again.")),
    (502, {}, b"<html>Bad Gateway</html>", RestVerdict(VerdictKind.RETRY, 0, "HTTP 502: <html>Bad Gateway</html>")),
])
def test_binance_answers(status, headers, answer, expected):
    assert BINANCE.rest_verdict(status, headers, answer) == expected


def test_a_binance_ban_without_retry_after_lasts_the_shortest_documented_ban():
    verdict = BINANCE.rest_verdict(418, {}, BANNED)
    assert verdict.kind is VerdictKind.BANNED and verdict.retry_after_s == 120


def weight_of(p: FeedProtocol, gap: Gap) -> int:
    request = p.backfill_request(gap)
    assert request is not None
    return p.request_weight(request)


def test_binance_request_weights_are_the_documented_ones_per_endpoint():
    assert weight_of(BINANCE, Gap("BTCUSDT", 1, 2000)) == 25  # historicalTrades
    assert weight_of(BINANCE, Gap("BTCUSDT", 1, stream="BTCUSDT@aggTrade")) == 4
    klines = Gap("BTCUSDT", since_ns=10**18, until_ns=10**18 + 6 * 10**10, stream="BTCUSDT@kline_1m", table=CANDLES)
    assert weight_of(BINANCE, klines) == 2
    assert BINANCE.request_weight(HttpRequest("https://api.x/api/v3/time")) == 1
    assert weight_of(KRAKEN, Gap("BTC/USD", 1)) == 1  # the default: requests not weighed


@pytest.mark.parametrize(("headers", "answer", "expected"), [
    ({}, {"error": [], "result": {"XXBTZUSD": [], "last": "0"}}, OK),
    ({}, {"error": ["EAPI:Rate limit exceeded"]}, RestVerdict(VerdictKind.RETRY, 3.0,
                                                              "Kraken error: EAPI:Rate limit exceeded")),
    ({}, {"error": ["EQuery:Unknown asset pair"]}, RestVerdict(VerdictKind.FAILED, 0,
                                                               "Kraken error: EQuery:Unknown asset pair")),
    ({}, {"error": ["EGeneral:Invalid arguments"]}, RestVerdict(VerdictKind.FAILED, 0,
                                                                "Kraken error: EGeneral:Invalid arguments")),
    ({}, {"error": ["EService:Unavailable"]}, RestVerdict(VerdictKind.RETRY, 0, "Kraken error: EService:Unavailable")),
    ({}, {"error": ["EService:Busy"]}, RestVerdict(VerdictKind.RETRY, 0, "Kraken error: EService:Busy")),
    ({"date": DATE}, {"error": [f"EService:Throttled: [{int(DATE_S) + 20}]"]},
     RestVerdict(VerdictKind.RETRY, 20, f"Kraken error: EService:Throttled: [{int(DATE_S) + 20}]")),
    ({}, {"error": ["WGeneral:Deprecated"], "result": {"XXBTZUSD": [], "last": "0"}}, OK),  # a warning only
])
def test_kraken_errors_arrive_with_http_200_in_the_error_array(headers, answer, expected):
    assert KRAKEN.rest_verdict(200, headers, body(answer)) == expected


def test_kraken_statuses_other_than_200_come_from_its_edge_and_a_bad_body_is_left_to_the_parser():
    assert KRAKEN.rest_verdict(520, {}, b"<html>").kind is VerdictKind.RETRY
    assert KRAKEN.rest_verdict(404, {}, b"").kind is VerdictKind.FAILED
    assert KRAKEN.rest_verdict(200, {}, b"not json") == OK


@pytest.mark.parametrize(("status", "headers", "answer", "expected"), [
    (429, {}, {"message": "Public rate limit exceeded"},
     RestVerdict(VerdictKind.RETRY, 1.0, "HTTP 429: Public rate limit exceeded")),
    (429, {"retry-after": "2"}, {"message": "Public rate limit exceeded"},
     RestVerdict(VerdictKind.RETRY, 2, "HTTP 429: Public rate limit exceeded")),
    (404, {}, {"message": "NotFound"}, RestVerdict(VerdictKind.FAILED, 0, "HTTP 404: NotFound")),
    (400, {}, {"message": "invalid pagination cursor or limit"},
     RestVerdict(VerdictKind.FAILED, 0, "HTTP 400: invalid pagination cursor or limit")),
    (500, {}, {"message": "Internal Server Error"},
     RestVerdict(VerdictKind.RETRY, 0, "HTTP 500: Internal Server Error")),
])
def test_coinbase_answers(status, headers, answer, expected):
    assert COINBASE.rest_verdict(status, headers, body(answer)) == expected


LIMITED = ("You've exceeded the maximum requests per minute, please wait or upgrade your subscription to continue. "
           "https://polygon.io/pricing")


@pytest.mark.parametrize(("status", "headers", "answer", "expected"), [
    (429, {}, {"status": "ERROR", "request_id": "a1", "error": LIMITED},
     RestVerdict(VerdictKind.RETRY, 12.0, f"HTTP 429: {LIMITED}")),
    (429, {"retry-after": "5"}, {"status": "ERROR", "request_id": "a2", "error": LIMITED},
     RestVerdict(VerdictKind.RETRY, 5, f"HTTP 429: {LIMITED}")),
    (401, {}, {"status": "ERROR", "request_id": "a3", "error": "Unknown API Key"},
     RestVerdict(VerdictKind.FAILED, 0, "HTTP 401: Unknown API Key")),
    (403, {}, {"status": "NOT_AUTHORIZED", "request_id": "a4", "message": "You are not entitled to this data."},
     RestVerdict(VerdictKind.FAILED, 0, "HTTP 403: You are not entitled to this data.")),
    (502, {}, {"status": "ERROR", "request_id": "a5", "error": "Bad Gateway"},
     RestVerdict(VerdictKind.RETRY, 0, "HTTP 502: Bad Gateway")),
])
def test_polygon_answers(status, headers, answer, expected):
    assert POLYGON.rest_verdict(status, headers, body(answer)) == expected


def test_an_error_text_is_bounded():
    verdict = COINBASE.rest_verdict(400, {}, b"x" * 10_000)
    assert verdict.kind is VerdictKind.FAILED and len(verdict.reason) < 300
