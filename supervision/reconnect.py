"""Reconnect policy of one feed: backoff with jitter, a circuit breaker, alternative URLs in turn.

Pure: the feed actor tells it what happened (with the time) and does what it answers.
"""
from __future__ import annotations

from dataclasses import dataclass

from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.telemetry.report import BreakerState, FeedState

# The names actors/feed.py and tests/test_feed_policy.py import; FeedState itself once they use it.
CONNECTED, RETRYING, FAILED = FeedState.CONNECTED, FeedState.RETRYING, FeedState.FAILED


@dataclass(frozen=True)
class Retry:
    delay_s: float
    state: FeedState  # RETRYING, or FAILED while the breaker is open (the next try is its half-open trial)


class ReconnectPolicy:
    """A failed connect moves on to the next URL and counts against the breaker; a connection that
    worked and ended reconnects to the same URL. A connection up `stable_after_s` resets the backoff."""

    def __init__(self, urls: tuple[str, ...], backoff: Backoff, breaker: CircuitBreaker, stable_after_s: float = 30.0):
        if not urls:
            raise ValueError("a feed needs at least one URL")
        self.urls, self.backoff, self.breaker, self.stable_after_s = urls, backoff, breaker, stable_after_s
        self.url_index = 0
        self.connected_at: float | None = None

    @property
    def url(self) -> str:
        return self.urls[self.url_index % len(self.urls)]

    @property
    def failures(self) -> int:
        """Connects failed in a row."""
        return self.breaker.failures

    def connected(self, now: float) -> None:
        self.connected_at = now
        self.breaker.success()

    def ended(self, now: float) -> Retry:
        """The connection (or the attempt to open it) ended: when to try again, and the feed's state."""
        if self.connected_at is None:
            self.url_index += 1
            self.breaker.failure(now)
        elif now - self.connected_at >= self.stable_after_s:
            self.backoff.reset()
        self.connected_at = None
        if self.breaker.state(now) == BreakerState.OPEN:
            return Retry(self.breaker.seconds_until_trial(now), FeedState.FAILED)
        return Retry(self.backoff.next_delay(), FeedState.RETRYING)

    def rejected(self, now: float) -> Retry:
        """The exchange refused the subscription: retrying soon cannot help, so open the breaker now."""
        self.connected_at = None
        self.breaker.failure(now)  # re-opens a breaker already open or half-open…
        while self.breaker.opened_at is None:  # …or counts up to its threshold
            self.breaker.failure(now)
        return Retry(self.breaker.seconds_until_trial(now), FeedState.FAILED)
