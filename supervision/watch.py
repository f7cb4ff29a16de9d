"""The connection watch: is the open connection still alive, and how fast does it talk? Pure, clock passed in.

The feed actor tells it what happened (connected, data, pong, the writer being behind) and asks it once
per tick what to do; the actor applies the answer (close the socket, open a successor, send a ping).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from marketfeed.feeds.validation import RateCeiling


class Verdict(enum.Enum):
    """What the watch wants done with the connection."""

    STALE = "stale"  # no data frame for stale_after_s: close it (the reconnect policy opens another)
    PONG_TIMEOUT = "pong_timeout"  # our ping went unanswered: close it
    ROLL = "roll"  # older than the exchange lets a connection live: open a successor first
    PING = "ping"  # time for an application-level ping


class RateChange(enum.Enum):
    EXCEEDED = "exceeded"  # the connection talks faster than max_messages_per_s: a runaway or hostile peer
    NORMAL = "normal"  # back below the ceiling


@dataclass(frozen=True)
class WatchLimits:
    stale_after_s: float
    ping_interval_s: float = 0.0  # 0: the protocol has no application-level ping
    pong_timeout_s: float = 0.0  # 0: an unanswered ping is not enforced
    max_connection_age_s: float = 0.0  # 0: never rolled
    max_messages_per_s: float = 0.0  # 0: no ceiling


class ConnectionWatch:
    """Liveness of one feed's current connection, and its message rate."""

    def __init__(self, limits: WatchLimits):
        self.limits = limits
        self.rate = RateCeiling(limits.max_messages_per_s)
        self.connected_at: float | None = None  # None: no connection to watch
        self.last_data_at: float | None = None
        self.last_ping_at = 0.0
        self.pong_due_at: float | None = None  # a ping is unanswered; the connection ends if no pong by then
        self.writer_was_behind = False  # at the last tick

    def connected(self, now: float, messages: int) -> None:
        self.connected_at = self.last_data_at = now
        self.pong_due_at = None
        self.rate.restart(messages, now)

    def ended(self) -> None:
        self.connected_at = self.pong_due_at = None

    def data(self, now: float) -> None:
        """A data frame arrived on the current connection."""
        self.last_data_at = now

    def pong(self) -> None:
        self.pong_due_at = None

    def writer(self, now: float, behind: bool) -> None:
        """Each tick: does the reader wait for a writer to catch up? While it does the silence is ours, not the
        exchange's, and it stays ours up to the first tick after: the writer may have caught up just before it,
        with the reader's first batch still on its way (ticks are 1 s apart, stale_after_s may be less)."""
        if behind or self.writer_was_behind:
            self.last_data_at = now
            if self.pong_due_at is not None:
                self.pong_due_at = now + self.limits.pong_timeout_s
        self.writer_was_behind = behind

    def rate_change(self, now: float, messages: int) -> RateChange | None:
        """Take the running message count; a change of the rate flag, if any."""
        if not self.rate.observe(messages, now):
            return None
        return RateChange.EXCEEDED if self.rate.flagged else RateChange.NORMAL

    def decide(self, now: float) -> Verdict | None:
        """What to do with the connection now (one verdict per tick, the gravest first); None: nothing."""
        if self.connected_at is None:
            return None
        limits = self.limits
        if self.last_data_at is not None and now - self.last_data_at > limits.stale_after_s:
            return Verdict.STALE
        if self.pong_due_at is not None and now > self.pong_due_at:
            return Verdict.PONG_TIMEOUT
        if limits.max_connection_age_s and now - self.connected_at >= limits.max_connection_age_s:
            return Verdict.ROLL
        if limits.ping_interval_s and now - self.last_ping_at >= limits.ping_interval_s:
            self.last_ping_at = now
            if limits.pong_timeout_s and self.pong_due_at is None:
                self.pong_due_at = now + limits.pong_timeout_s
            return Verdict.PING
        return None

    def silent_s(self, now: float) -> float | None:
        return None if self.last_data_at is None else now - self.last_data_at

    def age_s(self, now: float) -> float | None:
        return None if self.connected_at is None else now - self.connected_at
