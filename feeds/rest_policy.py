"""What an exchange's REST answer means, and when the next request to its host may go. Pure: clock passed in.

The documented behaviour followed here:
- Retry-After (RFC 9110 §10.2.3) is delay-seconds or an HTTP-date; with a 503 it says how long the service
  is expected to be unavailable, with a 429 (RFC 6585 §4) how long to wait before a new request.
- Binance (developers.binance.com/docs/binance-spot-api-docs/rest-api/limits): every answer carries
  X-MBX-USED-WEIGHT-1M, the IP's request weight used this minute, against REQUEST_WEIGHT 6000 per minute;
  minutes are the clock's ("a 1 MINUTE interval starts every minute", …/websocket-api/rate-limits). A broken
  limit is 429, "it's your obligation as an API to back off"; "repeatedly violating rate limits and/or failing
  to back off after receiving 429s will result in an automated IP ban (HTTP status 418)", from 2 minutes to
  3 days; "a Retry-After header is sent with a 418 or 429 responses and will give the number of seconds
  required to wait, in the case of a 429, to prevent a ban, or, in the case of a 418, until the ban is over".
  Limits are per IP: every feed of a host in this process shares one HostPolicy.
- Other 4xx are "malformed requests; the issue is on the sender's side": asking again cannot help; 5xx are
  the server's: ask again later.
Each exchange's own error shapes (Kraken's error arrays with HTTP 200, …) are classified by its protocol
(FeedProtocol.rest_verdict), on top of http_verdict here.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import orjson

from marketfeed.supervision.backoff import Backoff

ERROR_TEXT_CHARS = 200  # an error body's text in a reason: enough for any exchange's message, never a page
WEIGHT_MINUTE_S = 60.0


class VerdictKind(StrEnum):
    OK = "ok"
    RETRY = "retry"  # ask again: after retry_after_s if the exchange said, else after our own backoff
    BANNED = "banned"  # the host refuses every request until retry_after_s has passed: send none meanwhile
    FAILED = "failed"  # asking again cannot help (bad symbol, bad key, unknown endpoint)


@dataclass(frozen=True)
class RestVerdict:
    """One REST answer, classified."""

    kind: VerdictKind
    retry_after_s: float = 0.0  # RETRY/BANNED: the exchange's own delay, from the answer (0: it said none)
    reason: str = ""  # what the exchange said, for logs and the ledger


OK = RestVerdict(VerdictKind.OK)


def http_verdict(status: int, headers: Mapping[str, str], body: bytes, limited_wait_s: float) -> RestVerdict:
    """The meaning of an answer by its HTTP status. headers: names in lower case.

    limited_wait_s: the wait after a 429 that names no Retry-After (the exchange's documented refill time)."""
    if 200 <= status < 300:
        return OK
    text = error_text(body)
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 429:
        return RestVerdict(VerdictKind.RETRY, retry_after_s(headers) or limited_wait_s, reason)
    if status >= 500:
        return RestVerdict(VerdictKind.RETRY, retry_after_s(headers), reason)
    return RestVerdict(VerdictKind.FAILED, 0.0, reason)  # other 4xx, and redirects: REST pages never move


def error_text(body: bytes) -> str:
    """The message of an error body: Binance's {"code", "msg"}, Coinbase's {"message"}, Polygon's {"error"} or
    {"message"}; else the body's start as text."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        message = next((str(value[key]) for key in ("msg", "message", "error") if value.get(key)), "")
        text = f"code {value['code']}: {message}" if value.get("code") is not None else message
        if text:
            return text[:ERROR_TEXT_CHARS]
    return " ".join(body[:ERROR_TEXT_CHARS].decode("utf-8", "replace").split())


def retry_after_s(headers: Mapping[str, str]) -> float:
    """Retry-After in seconds from the answer: delay-seconds, or an HTTP-date less the answer's own Date
    (the server's clock against itself, so ours does not matter); 0: absent or unreadable."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return server_delay_s(parsedate_to_datetime(value).timestamp(), headers)
    except ValueError:
        return 0.0


def server_delay_s(at_s: float, headers: Mapping[str, str]) -> float:
    """Seconds from the answer's Date header to the server's Unix time `at_s`; 0 without a readable Date."""
    try:
        date = parsedate_to_datetime(headers.get("date", "")).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, at_s - date)


@dataclass(frozen=True)
class HostRules:
    """What one exchange host allows (from its protocol)."""

    min_interval_s: float = 0.0  # at least this long between two requests to the host
    weight_limit: int = 0  # request weight per clock minute (0: requests are not weighed)
    weight_header: str = ""  # the answer header (lower case) that says the weight used this minute
    weight_margin: float = 0.1  # this share of the limit is left to whatever else shares our IP
    backoff_min_s: float = 0.5  # our own backoff, after a failure the exchange named no delay for
    backoff_max_s: float = 30.0


class HostPolicy:
    """When the next request to one host may go. `now` is the wall clock in seconds (time.time()): Binance's
    weight minutes are the clock's minutes. A clock stepped back never makes a wait longer than was asked.

    The shell asks delay_s before a request, says sent() when it sends one and observe() for each answer;
    calls must not overlap (the shell holds a lock: feeds of one host share its policy).
    """

    def __init__(self, rules: HostRules, rng: Callable[[], float] = random.random):
        self.rules = rules
        self._backoff = Backoff(rules.backoff_min_s, rules.backoff_max_s, rng=rng)
        self._last_sent: float | None = None
        self._blocked_until = self._blocked_for = 0.0  # the exchange's: Retry-After, a ban
        self._backoff_until = self._backoff_for = 0.0  # ours
        self.blocker: RestVerdict | None = None  # the answer behind the exchange's block
        self._minute = -1  # the clock minute _used counts
        self._used = 0

    def delay_s(self, now: float, weight: int) -> float:
        """How long to wait before sending a request of `weight` (0: send it now)."""
        interval = self.rules.min_interval_s
        since_sent = _left(self._last_sent + interval, interval, now) if self._last_sent is not None else 0.0
        return max(since_sent, self.imposed_s(now), _left(self._backoff_until, self._backoff_for, now),
                   self._weight_wait(now, weight))

    def imposed_s(self, now: float) -> float:
        """How long the exchange itself asked us to send nothing (Retry-After, a ban); 0: it asked nothing."""
        return _left(self._blocked_until, self._blocked_for, now)

    def used_weight(self, now: float) -> int:
        """The weight used this clock minute, as last said by the host plus what was sent since."""
        return self._used if self._minute == _minute(now) else 0

    def sent(self, now: float, weight: int) -> None:
        self._last_sent = now
        self._used = self.used_weight(now) + weight  # in flight: counted before the host says it
        self._minute = _minute(now)

    def observe(self, now: float, headers: Mapping[str, str], verdict: RestVerdict) -> None:
        """An answer (headers: names in lower case), or a transport failure (no headers, a RETRY verdict)."""
        used = headers.get(self.rules.weight_header) if self.rules.weight_header else None
        if used is not None and used.isdigit():
            self._minute, self._used = _minute(now), int(used)  # the host's count: other clients of our IP too
        match verdict.kind:
            case VerdictKind.OK | VerdictKind.FAILED:  # the host answered: our backoff starts over
                self._backoff.reset()
                self._backoff_until = self._backoff_for = 0.0
            case VerdictKind.BANNED:
                self._block(now, verdict.retry_after_s or self.rules.backoff_max_s, verdict)
            case VerdictKind.RETRY if verdict.retry_after_s:
                self._block(now, verdict.retry_after_s, verdict)
            case VerdictKind.RETRY:
                self._backoff_for = self._backoff.next_delay()
                self._backoff_until = now + self._backoff_for

    def _block(self, now: float, seconds: float, verdict: RestVerdict) -> None:
        if now + seconds > self._blocked_until or not self.imposed_s(now):
            self._blocked_until, self._blocked_for, self.blocker = now + seconds, seconds, verdict

    def _weight_wait(self, now: float, weight: int) -> float:
        """Past the minute's budget (the limit less the margin): wait for the next clock minute."""
        used = self.used_weight(now)
        if not self.rules.weight_limit or not used or used + weight <= self.rules.weight_limit * (
                1 - self.rules.weight_margin):
            return 0.0
        return _left((self._minute + 1) * WEIGHT_MINUTE_S, WEIGHT_MINUTE_S, now)


def _minute(now: float) -> int:
    return int(now // WEIGHT_MINUTE_S)


def _left(until: float, longest: float, now: float) -> float:
    """Seconds from now to `until`, never more than `longest` (the wall clock may have stepped back)."""
    return max(0.0, min(until - now, longest))
