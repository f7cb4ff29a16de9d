"""Connection limits the exchanges enforce: rate gates and the record of every refusal. Pure; the clock is passed in.

A twin declares its documented limits (sim/<exchange>.py cites the numbers); the server keeps one gate per
connection or per client IP, asks it about each connection attempt or client message, and records a
Refusal whenever a limit is hit, so a test can assert that a client never triggered one.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Limit(StrEnum):
    CONNECTION_RATE = "connection_rate"  # connection attempts per client IP (Binance, Coinbase)
    MESSAGE_RATE = "message_rate"  # messages a client sends (Binance per connection, Coinbase per IP)
    STREAMS = "streams"  # streams one connection listens to (Binance: 1024)
    CONNECTIONS = "connections"  # simultaneous connections (Polygon: one per cluster and API key)
    SUBSCRIPTIONS = "subscriptions"  # subscriptions of one product and channel (Coinbase: 10)


@dataclass(frozen=True)
class Refusal:
    """A limit the simulator enforced: what, on which connection, when."""

    limit: Limit
    detail: str
    connection_id: int | None  # None: refused before the connection was made (at the handshake)
    time: float  # time.monotonic()


class Gate(Protocol):
    def admit(self, now: float) -> bool:
        """Whether one more event at `now` is within the limit; an admitted event counts against it."""
        ...


@dataclass(frozen=True)
class Window:
    """At most `limit` events within any `seconds` (a sliding window): Binance's "N per M seconds"."""

    limit: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.limit} per {self.seconds:g} s"

    def gate(self) -> WindowGate:
        return WindowGate(self)


class WindowGate:
    def __init__(self, window: Window):
        self.window = window
        self._times: deque[float] = deque()  # admitted events still inside the window

    def admit(self, now: float) -> bool:
        times, window = self._times, self.window
        while times and times[0] <= now - window.seconds:
            times.popleft()
        if len(times) >= window.limit:
            return False  # a refused event does not count: the limit is on what was let through
        times.append(now)
        return True


@dataclass(frozen=True)
class Bucket:
    """A lazily filled token bucket: `rate` events per second, bursts of up to `burst` (Coinbase's model)."""

    rate: float
    burst: int

    def __str__(self) -> str:
        return f"{self.rate:g}/s in bursts of {self.burst}"

    def gate(self) -> BucketGate:
        return BucketGate(self)


class BucketGate:
    def __init__(self, bucket: Bucket):
        self.bucket = bucket
        self._tokens = float(bucket.burst)
        self._last: float | None = None

    def admit(self, now: float) -> bool:
        bucket = self.bucket
        if self._last is not None:
            self._tokens = min(float(bucket.burst), self._tokens + (now - self._last) * bucket.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class MessageLimit:
    """How an exchange limits the messages a client sends."""

    rate: Window | Bucket
    per_ip: bool  # one gate for every connection of a client IP (else one per connection)
    control_frames: bool  # pings and pongs count as messages (Binance), not only text and binary frames
