"""The listing thread of a whole-market feed: reads the exchange's listing endpoint once, tells the feed. I/O only.

What the listing means (which symbols the feed carries) is decided by the feed actor with feeds/universe.py;
this thread only asks, within the host's REST limits and the overall deadline of actors/rest_client.py.
"""
from __future__ import annotations

import logging
import threading

import pykka

from marketfeed.actors.feed_messages import UniverseFailed, UniverseListed
from marketfeed.actors.rest_client import Cancelled, RestLimits, fetch
from marketfeed.feeds.base import FeedProtocol, MalformedFrame
from marketfeed.feeds.rest_policy import VerdictKind
from marketfeed.telemetry.logs import event, scrub

log = logging.getLogger("marketfeed.feed")


class ListingReader(threading.Thread):
    """One read of the listing; stop() abandons it at its next wait (the feed is stopping)."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, actor_ref, limits: RestLimits):
        super().__init__(name=f"listing-{feed_name}", daemon=True)
        self.feed_name, self.protocol, self.actor_ref, self.limits = feed_name, protocol, actor_ref, limits
        self._stopping = threading.Event()
        self.answered = False  # set before its answer is told: a thread dead without it died without a word

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            answer = self._read()
            self.answered = True
            self.actor_ref.tell(answer)
        except (Cancelled, pykka.ActorDeadError):
            return

    def _read(self) -> UniverseListed | UniverseFailed:
        request = self.protocol.listing_request()
        if request is None:
            return UniverseFailed("the exchange has no listing endpoint")
        try:
            result = fetch(request, self.protocol, self.limits, self._stopping)
            if result.verdict.kind is not VerdictKind.OK:
                return UniverseFailed(scrub(result.verdict.reason), result.retry_after_s)
            return UniverseListed(tuple(self.protocol.parse_listing(result.body)))
        except Cancelled:
            raise
        except MalformedFrame as exc:
            return UniverseFailed(scrub(f"MalformedFrame: {exc.reason}"))
        except Exception as exc:  # noqa: BLE001 — a bug ends this read, never the thread unseen
            error = scrub(f"{type(exc).__name__}: {exc}")
            event(log, "listing_read_crashed", logging.ERROR, exc_info=exc, feed=self.feed_name, error=error)
            return UniverseFailed(error)
