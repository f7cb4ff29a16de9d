"""Fault plans: what a connection should do to its next messages, how REST answers. Pure; the server applies them."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

ANY_SYMBOL = None


class FaultPlan:
    """Pending per-connection faults on the trade stream: skips and duplicates, counted down."""

    def __init__(self) -> None:
        self._skips: dict[str | None, int] = {}  # symbol (or ANY_SYMBOL) → trades still to skip
        self._duplicates = 0

    def skip(self, k: int, symbol: str | None = ANY_SYMBOL) -> None:
        self._skips[symbol] = self._skips.get(symbol, 0) + k

    def duplicate(self, k: int) -> None:
        self._duplicates += k

    def copies(self, symbol: str) -> int:
        """How many times to send the next trade of `symbol`: 0 (lost in transit), 1, or 2."""
        for key in (symbol, ANY_SYMBOL):
            if self._skips.get(key):
                self._skips[key] -= 1
                return 0
        if self._duplicates:
            self._duplicates -= 1
            return 2
        return 1


def garbage_frames(k: int, sample: bytes) -> list[bytes]:
    """k malformed frames, cycling through the kinds a parser must survive.

    `sample` is a real frame of the exchange; cutting it gives realistic truncated JSON.
    """
    kinds = (
        b"\x7fnot json at all {",  # invalid JSON
        sample[: max(1, len(sample) // 2)],  # truncated JSON
        b'{"unexpected":["valid","json"],"of":"the wrong shape"}',  # valid JSON, wrong shape
    )
    return [kinds[n % len(kinds)] for n in range(k)]


class RestVerdict(StrEnum):
    SERVE = "serve"  # the twin answers from the ground truth
    LIMITED = "limited"  # the exchange's rate-limit answer (Twin.rest_limited)
    BANNED = "banned"  # Binance's IP ban, HTTP 418 (Twin.rest_banned)
    ERROR = "error"  # a server error (Twin.rest_server_error)


@dataclass(frozen=True)
class RestDecision:
    """How to answer one REST request."""

    verdict: RestVerdict
    retry_after_s: int | None = None  # LIMITED/BANNED: seconds to wait (the Retry-After header); ERROR: optional
    status: int = 200  # ERROR: the status to answer with
    used_weight: int | None = None  # exchanges with weights: this minute's weight, this request included
    banned_until: float = 0.0  # BANNED: the clock time the ban ends


@dataclass(frozen=True)
class WeightLimit:
    """A request-weight budget per minute, and the IP ban that follows ignored 429s (Binance's model).

    Binance documents the budget (exchangeInfo REQUEST_WEIGHT 6000 per minute, every answer carrying
    X-MBX-USED-WEIGHT-1M), 429 with Retry-After when it is spent, and "repeatedly violating rate limits
    and/or failing to back off after receiving 429s will result in an automated IP ban (HTTP status 418)",
    bans lasting "from 2 minutes to 3 days" (developers.binance.com/docs/binance-spot-api-docs/rest-api/limits).
    How many ignored 429s make a ban is not documented: here a 429 answered while the client should still be
    waiting (before the previous 429's Retry-After ran out) is one ignored 429, and `ban_after` of them in a
    row make the last answer a 418 for `ban_s` (default: the shortest documented ban). A ban does not grow
    while it is retried. Minutes are fixed windows of `minute_s` from the plan's start (Binance's are the
    clock's minutes; tests compress them).
    """

    limit: int = 6000
    minute_s: float = 60.0
    ban_after: int = 3
    ban_s: float = 120.0


@dataclass
class _Pending:
    """Injected answers for the next `count` requests, in the order the faults were injected."""

    count: int
    verdict: RestVerdict
    retry_after_s: int | None
    status: int = 200


class RestFaultPlan:
    """One exchange's REST faults and weight budget: each request's answer, the clock passed in. Pure.

    Order per request: an IP ban in force → BANNED; then injected throttles and errors (FIFO, each for
    its count of requests); then, where the exchange weighs requests, the minute's budget → LIMITED until
    the minute ends; else SERVE. Injected answers do not spend weight; requests refused for weight do,
    so X-MBX-USED-WEIGHT-1M may exceed the limit (the weight the IP sent this minute).
    """

    def __init__(self, weights: WeightLimit | None = None, start: float = 0.0):
        """start: the clock time the first minute begins."""
        self.weights = weights
        self._start = start
        self._pending: deque[_Pending] = deque()
        self._banned_until = 0.0
        self._minute = -1
        self._used = 0
        self._waiting_until = 0.0  # the last 429's Retry-After ends here
        self._ignored = 0  # 429s in a row answered before the previous one's Retry-After ran out

    def throttle(self, count: int, retry_after_s: int | None) -> None:
        self._pending.append(_Pending(count, RestVerdict.LIMITED, retry_after_s))

    def fail(self, count: int, status: int, retry_after_s: int | None) -> None:
        self._pending.append(_Pending(count, RestVerdict.ERROR, retry_after_s, status))

    def ban(self, now: float, seconds: float) -> None:
        if self.weights is None:
            raise ValueError("only an exchange with a weight budget (Binance) bans IPs")
        self._banned_until = max(self._banned_until, now + seconds)

    def decide(self, now: float, weight: int) -> RestDecision:
        """The answer to one request of `weight` arriving at `now`."""
        used = self._used_at(now)
        if now < self._banned_until:
            return RestDecision(RestVerdict.BANNED, math.ceil(self._banned_until - now), used_weight=used,
                                banned_until=self._banned_until)
        if self._pending:
            pending = self._pending[0]
            pending.count -= 1
            if not pending.count:
                self._pending.popleft()
            if pending.verdict is RestVerdict.ERROR:
                return RestDecision(RestVerdict.ERROR, pending.retry_after_s, pending.status, used)
            return self._limited(now, pending.retry_after_s, used)
        if self.weights is None:
            return RestDecision(RestVerdict.SERVE)
        self._used += weight
        if self._used > self.weights.limit:
            minute_ends = self._start + (self._minute + 1) * self.weights.minute_s
            return self._limited(now, max(1, math.ceil(minute_ends - now)), self._used)
        return RestDecision(RestVerdict.SERVE, used_weight=self._used)

    def _used_at(self, now: float) -> int | None:
        """This minute's weight so far (None: the exchange weighs nothing); a new minute starts at 0."""
        if self.weights is None:
            return None
        minute = int((now - self._start) // self.weights.minute_s)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        return self._used

    def _limited(self, now: float, retry_after_s: int | None, used: int | None) -> RestDecision:
        if now < self._waiting_until:
            self._ignored += 1
        else:
            self._ignored = 0
        self._waiting_until = now + (retry_after_s or 0)
        if self.weights is not None and self._ignored >= self.weights.ban_after:
            self._ignored = 0
            self._banned_until = now + self.weights.ban_s
            return RestDecision(RestVerdict.BANNED, math.ceil(self.weights.ban_s), used_weight=used,
                                banned_until=self._banned_until)
        return RestDecision(RestVerdict.LIMITED, retry_after_s, used_weight=used)
