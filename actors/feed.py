"""Feed actor: one per exchange connection. Owns control; its reader thread owns the socket.

reader thread: frames → parser → FrameBatch (one tell per burst)
feed actor:    dedup → sequence check → RowBatch to the buffer actors; gaps → backfill thread
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from actors.buffer import RowBatch, SinkDirectory
from actors.feed_io import Backfiller, FeedReader
from config.schema import FeedConfig
from feeds.base import Gap, MalformedFrame, ParsedRows, protocol_class
from feeds.dedup import DedupWindow
from feeds.sequence import SequenceTracker
from supervision.backoff import Backoff
from supervision.scheduler import scheduler
from supervision.supervisor import ABNORMAL, ChildContext, Supervised
from telemetry import metrics
from telemetry.logs import event

log = logging.getLogger("marketfeed.feed")

TICK_S = 1.0  # watchdog and keepalive resolution


# Messages a feed actor receives (from its own threads and timers).
@dataclass(frozen=True)
class Connected:
    generation: int
    url: str


@dataclass(frozen=True)
class Disconnected:
    generation: int
    reason: str


@dataclass(frozen=True)
class FrameBatch:
    generation: int
    rows: ParsedRows
    frames: int
    data_frames: int
    malformed: tuple[MalformedFrame, ...]
    pongs: int = 0  # Control.PONG replies to our application-level pings


@dataclass(frozen=True)
class BackfillRows:
    rows: list


@dataclass(frozen=True)
class BackfillDone:
    gap: Gap
    rows: int
    error: str


@dataclass(frozen=True)
class Reconnect:
    generation: int


@dataclass(frozen=True)
class Tick:
    pass


class FeedMemory:
    """What a feed knows that outlives one actor incarnation: the last trade id per stream, and
    the event time of the last live trade (where an outage window starts)."""

    def __init__(self) -> None:
        self.last_ids: dict[str, int] = {}
        self.last_trade_ns = 0


class FeedActor(Supervised):
    kind = "feed"

    def __init__(self, ctx: ChildContext | None, feed: FeedConfig, sinks: SinkDirectory, memory: FeedMemory):
        super().__init__(ctx)
        self.feed, self.sinks, self.memory = feed, sinks, memory
        self.protocol = protocol_class(feed.exchange)(feed)
        self.urls = (feed.url, *feed.alt_urls)
        self.url_index = 0
        self.dedup = DedupWindow(feed.dedup_window_s, feed.dedup_max_entries)
        self.sequence = SequenceTracker(memory.last_ids, self.protocol.stream_key)
        self.backoff = Backoff(feed.reconnect_min_s, feed.reconnect_max_s)
        self.reader: FeedReader | None = None
        self.backfiller: Backfiller | None = None
        self.generation = 0
        self.state = "starting"
        self.connected_at: float | None = None
        self.last_data_at: float | None = None
        self.last_ping_at = 0.0
        self.pong_due_at: float | None = None  # a ping is unanswered; reconnect if no PONG by then
        self.outage_since_ns = 0  # set while an outage awaits its window backfill (outage_gaps)
        self.messages = self.data_messages = self.malformed = self.reconnects = 0
        self.gaps = self.backfilled = 0
        self.connect_failures = 0  # in a row; at feed.max_connect_failures the actor fails to its supervisor
        self.last_error = ""
        self.outbox: dict[str, list] = {}
        self.tick_timer = None
        m = metrics
        self.m_messages, self.m_malformed = m.MESSAGES.labels(feed.name), m.MALFORMED.labels(feed.name)
        self.m_dups, self.m_gaps = m.DUPLICATES.labels(feed.name), m.GAPS.labels(feed.name)
        self.m_backfilled, self.m_reconnects = m.BACKFILLED.labels(feed.name), m.RECONNECTS.labels(feed.name)
        self.m_connected = m.FEED_CONNECTED.labels(feed.name)

    # --- lifecycle
    def started(self) -> None:
        if self.feed.backfill:
            self.backfiller = Backfiller(self.feed.name, self.protocol, self.actor_ref)
            self.backfiller.start()
        self.tick_timer = scheduler().every(TICK_S, self.actor_ref, Tick())
        self._connect()

    def stopping(self) -> None:
        self._release()
        self._deliver()  # hand whatever is held to the buffers before they stop
        event(log, "feed_stopped", feed=self.feed.name, messages=self.messages, data_messages=self.data_messages)

    def stopping_after_crash(self) -> None:
        self._release()

    def interrupt(self) -> None:
        self._release()

    def owned_threads(self) -> list:
        return [t for t in (self.reader, self.backfiller) if t is not None]

    def _release(self) -> None:
        if self.tick_timer is not None:
            self.tick_timer.cancel()
        if self.reader is not None:
            self.reader.close()
        if self.backfiller is not None:
            self.backfiller.stop()
        self.m_connected.set(0)

    # --- messages
    def handle(self, message: object) -> object:
        match message:
            case FrameBatch():
                self._on_frames(message)  # rows of a connection already replaced still count
            case BackfillRows(rows):
                fresh = self.dedup.fresh(rows, time.monotonic())
                self.backfilled += len(fresh)
                self.m_backfilled.inc(len(fresh))
                self._send("trades", fresh)
            case BackfillDone(gap, rows, error):
                level = logging.WARNING if error else logging.INFO
                event(log, "backfill_done", level, feed=self.feed.name, symbol=gap.symbol, stream=gap.stream,
                      first_id=gap.first_id, last_id=gap.last_id, since_ns=gap.since_ns, until_ns=gap.until_ns,
                      rows=rows, error=error)
            case Connected(generation, url) if generation == self.generation:
                self.state, self.connected_at = "connected", time.monotonic()
                self.last_data_at = self.connected_at
                self.m_connected.set(1)
                event(log, "feed_connected", feed=self.feed.name, url=url)
            case Disconnected(generation, reason) if generation == self.generation:
                self._on_disconnected(reason)
            case Reconnect(generation) if generation == self.generation:
                self._connect()
            case Tick():
                self._tick()
            case Connected() | Disconnected() | Reconnect():
                pass  # about a connection already replaced
            case _:
                return super().handle(message)
        return None

    def _on_frames(self, batch: FrameBatch) -> None:
        self.messages += batch.frames
        self.m_messages.inc(batch.frames)
        if batch.data_frames:
            self.data_messages += batch.data_frames
            self.last_data_at = time.monotonic()
        if batch.pongs:
            self.pong_due_at = None
        if batch.malformed:
            self.malformed += len(batch.malformed)
            self.m_malformed.inc(len(batch.malformed))
            first = batch.malformed[0]
            event(log, "malformed_frame", logging.WARNING, feed=self.feed.name, count=len(batch.malformed),
                  reason=first.reason, sample=_sample(first.sample))
        rows = batch.rows
        if self.outage_since_ns and batch.data_frames:
            # The first live data after an outage bounds its window: what happened before comes over REST.
            until_ns = min((t.ts_ns for t in rows.trades), default=time.time_ns())
            for gap in self.protocol.outage_gaps(self.feed.symbols, self.outage_since_ns, until_ns):
                self._gap(gap)
            self.outage_since_ns = 0
        if rows.trades:
            self.memory.last_trade_ns = max(self.memory.last_trade_ns, rows.trades[-1].ts_ns)
            before = self.dedup.dropped
            trades = self.dedup.fresh(rows.trades, time.monotonic())
            if self.dedup.dropped != before:
                self.m_dups.inc(self.dedup.dropped - before)
            if self.protocol.contiguous_ids:
                for gap in self.sequence.observe(trades):
                    self._gap(gap)
            self._send("trades", trades)
        if rows.candles:
            self._send("candles", rows.candles)
        if rows.live_candles:
            self._send("candles", rows.live_candles)

    def _gap(self, gap: Gap) -> None:
        self.gaps += 1
        self.m_gaps.inc()
        if gap.last_id is not None:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol, stream=gap.stream,
                  first_id=gap.first_id, last_id=gap.last_id, missing=gap.last_id - gap.first_id + 1)
        else:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol,
                  since_ns=gap.since_ns, until_ns=gap.until_ns)
        if self.backfiller is not None:
            self.backfiller.gaps.put(gap)

    def _send(self, table: str, rows: list) -> None:
        if rows:
            self.outbox.setdefault(table, []).extend(rows)
            self._deliver()

    def _deliver(self) -> None:
        """One tell per table per batch; rows wait here while their buffer actor is restarting."""
        for table, rows in list(self.outbox.items()):
            ref = self.sinks.get(table)
            if ref is None or not rows:
                continue
            try:
                ref.tell(RowBatch(rows))
            except Exception:  # noqa: BLE001 - ActorDeadError: the buffer is restarting, keep the rows
                continue
            del self.outbox[table]

    # --- connection control
    def _connect(self) -> None:
        self.generation += 1
        self.state = "connecting"
        url = self.protocol.url(self.urls[self.url_index % len(self.urls)])
        self.reader = FeedReader(self.feed.name, self.protocol, url, self.generation, self.actor_ref,
                                 self.feed.batch_rows, self.feed.batch_linger_s)
        self.reader.start()

    def _on_disconnected(self, reason: str) -> None:
        self.m_connected.set(0)
        was_connected = self.state == "connected"
        stable = self.connected_at is not None and time.monotonic() - self.connected_at >= 30.0
        if stable:
            self.backoff.reset()
        if not was_connected:
            self.url_index += 1  # a failed connect tries the next alternative URL
        self.reconnects += 1
        self.m_reconnects.inc()
        self.last_error = reason
        self.state = "retrying"
        self.connected_at = None
        self.pong_due_at = None
        if was_connected and not self.outage_since_ns:
            self.outage_since_ns = self.memory.last_trade_ns or time.time_ns()
        self.connect_failures = 0 if was_connected else self.connect_failures + 1
        if self.feed.max_connect_failures and self.connect_failures >= self.feed.max_connect_failures:
            self.exit(ABNORMAL, f"{self.connect_failures} connects in a row failed, the last: {reason}")
            return
        delay = self.backoff.next_delay()
        event(log, "feed_disconnected", logging.WARNING, feed=self.feed.name, reason=reason,
              reconnect_in_s=round(delay, 3))
        scheduler().after(delay, self.actor_ref, Reconnect(self.generation))

    def _tick(self) -> None:
        self._deliver()
        now = time.monotonic()
        if self.state != "connected" or self.reader is None:
            return
        if self.last_data_at is not None and now - self.last_data_at > self.feed.stale_after_s:
            event(log, "feed_stale", logging.WARNING, feed=self.feed.name,
                  silent_s=round(now - self.last_data_at, 1))
            self.reader.close()
            return
        if self.pong_due_at is not None and now > self.pong_due_at:
            event(log, "feed_pong_timeout", logging.WARNING, feed=self.feed.name,
                  timeout_s=self.protocol.pong_timeout_s)
            self.reader.close()
            return
        ping = self.protocol.ping_message
        if ping and now - self.last_ping_at >= self.protocol.ping_interval_s:
            self.last_ping_at = now
            if self.protocol.pong_timeout_s and self.pong_due_at is None:
                self.pong_due_at = now + self.protocol.pong_timeout_s
            try:
                self.reader.send(ping)
            except Exception:  # noqa: BLE001 - a dead socket shows up as Disconnected from the reader
                pass

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "exchange": self.feed.exchange,
            "state": self.state,
            "messages": self.messages,
            "data_messages": self.data_messages,
            "last_message_age_s": None if self.last_data_at is None else round(now - self.last_data_at, 3),
            "reconnects": self.reconnects,
            "malformed": self.malformed,
            "duplicates": self.dedup.dropped,
            "gaps": self.gaps,
            "backfilled": self.backfilled,
            "held_rows": sum(len(r) for r in self.outbox.values()),
            "last_error": self.last_error,
        }


def _sample(sample: bytes | str) -> str:
    return sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
