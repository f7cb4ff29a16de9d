"""One connection of a feed: its share of the symbols and what keeps it alive. State only; the feed actor acts.

A feed carries its symbols over as many connections as the exchange's limits require (feeds/shards.py). Each
has its own reader thread, reconnect policy with breaker, and watch (stale, pong, age, rate), so one connection's
trouble never touches another's. Connection attempts to one host share a pacer (supervision/pacing.py): every
feed to that host in this process counts against the exchange's per-IP limit.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from urllib.parse import urlsplit

from marketfeed.actors.feed_reader import FeedReader
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import FeedProtocol
from marketfeed.feeds.registry import exchange
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.supervision.pacing import ConnectPacer
from marketfeed.supervision.reconnect import ReconnectPolicy
from marketfeed.supervision.watch import ConnectionWatch, WatchLimits
from marketfeed.telemetry.report import ConnectionStatus, FeedState


class FeedConnection:
    """The shell state of connection `index`: the protocol for its symbols, its reader (and the one it replaces
    during a make-before-break roll), its policies and counters."""

    def __init__(self, index: int, feed: FeedConfig, symbols: tuple[str, ...]):
        self.index = index
        self.feed = feed
        self.symbols = symbols
        self.protocol = shard_protocol(feed, symbols)
        self.reconnect = ReconnectPolicy(
            (feed.url, *feed.alt_urls),
            Backoff(feed.reconnect_min_s, feed.reconnect_max_s),
            CircuitBreaker(feed.breaker_failures, feed.breaker_reset_s),
        )
        protocol = self.protocol
        self.watch = ConnectionWatch(WatchLimits(
            stale_after_s=feed.stale_after_s,
            ping_interval_s=(feed.ping_interval_s or protocol.ping_interval_s) if protocol.ping_message else 0.0,
            pong_timeout_s=feed.pong_timeout_s or protocol.pong_timeout_s,
            max_connection_age_s=feed.max_connection_age_s or protocol.max_connection_age_s,
            max_messages_per_s=feed.max_messages_per_s,
        ))
        self.reader: FeedReader | None = None
        self.draining: FeedReader | None = None  # the old connection while its successor opens
        self.generation = 0  # the reader's number (feed-wide): news of an older one is ignored
        self.state = FeedState.STARTING
        self.messages = self.reconnects = 0
        self.last_error = ""

    def resubscribe(self, symbols: tuple[str, ...]) -> None:
        """The connection's share changed: its next reader subscribes to these."""
        self.symbols = symbols
        self.protocol = shard_protocol(self.feed, symbols)

    def readers(self) -> list[FeedReader]:
        return [r for r in (self.reader, self.draining) if r is not None]

    def close(self) -> None:
        for reader in self.readers():
            reader.close()

    def status(self, now: float, breaker_state) -> ConnectionStatus:
        silent_s = self.watch.silent_s(now)
        return {
            "index": self.index,
            "state": self.state,
            "url": self.reconnect.url,
            "breaker": breaker_state,
            "symbols": len(self.symbols),
            "messages": self.messages,
            "reconnects": self.reconnects,
            "last_message_age_s": None if silent_s is None else round(silent_s, 3),
            "last_error": self.last_error,
        }


def shard_protocol(feed: FeedConfig, symbols: tuple[str, ...]) -> FeedProtocol:
    """The exchange protocol of a connection carrying `symbols` of the feed (URL and subscribe messages for them)."""
    return exchange(feed.exchange).protocol(replace(feed, symbols=symbols))


class HostPacer:
    """A ConnectPacer shared by the feed actors (each on its own thread) connecting to one host."""

    def __init__(self, pacer: ConnectPacer):
        self.pacer, self.lock = pacer, threading.Lock()

    def attempt(self, now: float) -> float:
        with self.lock:
            return self.pacer.attempt(now)


_pacers: dict[str, HostPacer] = {}
_pacers_lock = threading.Lock()


def host_pacer(exchange_name: str, url: str, max_connects: int, window_s: float) -> HostPacer:
    """The pacer of every connection attempt to `url`'s host from this process (the exchange counts per IP)."""
    key = f"{exchange_name}@{urlsplit(url).hostname or url}"
    with _pacers_lock:
        pacer = _pacers.get(key)
        if pacer is None:
            pacer = _pacers[key] = HostPacer(ConnectPacer(max_connects, window_s))
        return pacer
