"""The backfill thread of a feed: fetches gaps over the exchange's REST API, one page at a time. I/O only.

The protocol says what to ask and what an answer means; the thread asks within the request rate and
tells the feed actor each page (BackfillRows, carrying the gap's table) and the end of each gap.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from marketfeed.actors.feed_messages import BackfillDone, BackfillRows
from marketfeed.actors.feed_reader import tls_context
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import FeedProtocol, Gap, HttpRequest, MalformedFrame
from marketfeed.supervision.backoff import Backoff
from marketfeed.telemetry.logs import event

log = logging.getLogger("marketfeed.feed")


@dataclass(frozen=True)
class BackfillLimits:
    min_interval_s: float = 0.2  # the REST API's request-rate limit: at least this long between requests
    attempts: int = 5
    timeout_s: float = 10.0
    max_bytes: int = 16 << 20  # a bigger answer fails that gap
    ca_file: str = ""

    @classmethod
    def of(cls, feed: FeedConfig, protocol: FeedProtocol) -> BackfillLimits:
        return cls(min_interval_s=protocol.backfill_min_interval_s, max_bytes=feed.max_backfill_bytes,
                   ca_file=feed.ca_file)


class Backfiller(threading.Thread):
    """Takes gaps from `gaps`; waits on `allowed` (cleared while the feed is paused: no rows to hold)."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, actor_ref, allowed: threading.Event,
                 limits: BackfillLimits):
        super().__init__(name=f"backfill-{feed_name}", daemon=True)
        self.feed_name, self.protocol, self.actor_ref = feed_name, protocol, actor_ref
        self.allowed, self.limits = allowed, limits
        self.gaps: queue.Queue[Gap | None] = queue.Queue()
        self._last_request = 0.0
        self.tls = tls_context(limits.ca_file)

    def stop(self) -> None:
        self.gaps.put(None)

    def run(self) -> None:
        while (gap := self.gaps.get()) is not None:
            requested, fetched, error = gap, 0, ""
            page: Gap | None = gap
            while page is not None:
                self.allowed.wait()
                request = self.protocol.backfill_request(page)
                if request is None:
                    error = "exchange has no backfill"
                    break
                try:
                    body = self._get(request)
                    rows, page = self.protocol.parse_backfill(page, body, time.time_ns())
                except (OSError, MalformedFrame) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    break
                fetched += len(rows)
                if rows:
                    self.actor_ref.tell(BackfillRows(requested.table, rows))
            self.actor_ref.tell(BackfillDone(requested, fetched, error))

    def _get(self, request: HttpRequest) -> bytes:
        limits = self.limits
        backoff = Backoff(0.5, 10.0)
        error: OSError | None = None
        for attempt in range(1, limits.attempts + 1):
            wait = self._last_request + limits.min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the exchange's request-rate limit; this thread only does backfill
            self._last_request = time.monotonic()
            try:
                req = urllib.request.Request(request.url, headers=dict(request.headers))
                with urllib.request.urlopen(req, timeout=limits.timeout_s, context=self.tls) as response:
                    body = response.read(limits.max_bytes + 1)
                if len(body) > limits.max_bytes:  # not retried: the next answer would be as big
                    raise MalformedFrame(f"REST response above max_backfill_bytes ({limits.max_bytes})", body)
                return body
            except urllib.error.HTTPError as exc:
                if exc.code not in (418, 429) and exc.code < 500:
                    raise
                error = exc
            except OSError as exc:
                error = exc
            if attempt < limits.attempts:
                delay = backoff.next_delay()
                event(log, "backfill_retry", logging.WARNING, feed=self.feed_name, attempt=attempt,
                      retry_in_s=round(delay, 2), error=str(error))
                time.sleep(delay)
        assert error is not None
        raise error
