"""The backfill thread of a feed: fetches gaps over the exchange's REST API, one page at a time. I/O only.

The protocol says what to ask and what an answer means; the host's client (actors/rest_client.py) asks
within what the exchange allows. The thread tells the feed actor each page (BackfillRows, carrying the
gap's table) and the end of each gap (BackfillDone): filled, or failed with the page still left, the
exchange's delay and whether asking again can help. Retrying a failed gap is the feed actor's decision.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

import pykka

from marketfeed.actors.feed_messages import BackfillDone, BackfillRows
from marketfeed.actors.rest_client import Cancelled, RestLimits, fetch
from marketfeed.feeds.base import BeyondRetention, FeedProtocol, Gap, MalformedFrame
from marketfeed.feeds.rest_policy import VerdictKind
from marketfeed.telemetry.logs import event, scrub

log = logging.getLogger("marketfeed.feed")


class Backfiller(threading.Thread):
    """Takes gaps from `gaps`; waits on `allowed` (cleared while the feed is paused: no rows to hold).

    stop() ends the thread at its next wait or page, leaving the gap in hand untold (it stays open where
    the feed keeps it); the feed sets `allowed` before stopping it."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, actor_ref, allowed: threading.Event,
                 limits: RestLimits):
        super().__init__(name=f"backfill-{feed_name}", daemon=True)
        self.feed_name, self.protocol, self.actor_ref = feed_name, protocol, actor_ref
        self.allowed, self.limits = allowed, limits
        self.gaps: queue.Queue[Gap | None] = queue.Queue()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.gaps.put(None)

    def run(self) -> None:
        while (gap := self.gaps.get()) is not None:
            try:
                done = self._fill(gap)
                self.actor_ref.tell(done)
            except (Cancelled, pykka.ActorDeadError):  # stopping, or the feed is gone: nobody to tell
                return

    def _fill(self, gap: Gap) -> BackfillDone:
        fetched = 0
        page: Gap | None = gap
        while page is not None:
            self.allowed.wait()
            if self._stopping.is_set():
                raise Cancelled
            try:
                request = self.protocol.backfill_request(page)
                if request is None:
                    return BackfillDone(gap, fetched, "exchange has no backfill", left=page, unrecoverable=True)
                result = fetch(request, self.protocol, self.limits, self._stopping)
                if result.verdict.kind is not VerdictKind.OK:
                    return BackfillDone(gap, fetched, scrub(result.verdict.reason), left=page,
                                        retry_after_s=result.retry_after_s,
                                        unrecoverable=result.verdict.kind is VerdictKind.FAILED)
                rows, next_page = self.protocol.parse_backfill(page, result.body, time.time_ns())
                if rows:
                    self.actor_ref.tell(BackfillRows(gap.table, rows))
            except (Cancelled, pykka.ActorDeadError):
                raise
            except BeyondRetention as exc:  # what is left cannot be had: the rows still served are kept
                if exc.rows:
                    self.actor_ref.tell(BackfillRows(gap.table, exc.rows))
                return BackfillDone(gap, fetched + len(exc.rows), scrub(exc.reason), left=page, unrecoverable=True)
            except MalformedFrame as exc:  # this answer; a later one may parse
                return BackfillDone(gap, fetched, scrub(f"MalformedFrame: {exc.reason}"), left=page)
            except Exception as exc:  # noqa: BLE001 — a bug must end this gap's attempt, never the thread unseen
                error = scrub(f"{type(exc).__name__}: {exc}")
                event(log, "backfill_crashed", logging.ERROR, exc_info=exc, feed=self.feed_name, symbol=gap.symbol,
                      stream=gap.stream, error=error)
                return BackfillDone(gap, fetched, error, left=page)
            fetched += len(rows)
            page = next_page
        return BackfillDone(gap, fetched)
