"""Feed actor: one per exchange connection. Owns control; its reader thread owns the socket.

reader thread: frames → parser → FrameBatch (one tell per burst)
feed actor:    dedup → sequence check → RowBatch to the buffer actors; gaps → backfill thread
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from marketfeed.actors.buffer import RowBatch, SinkDirectory
from marketfeed.actors.feed_io import Backfiller, FeedReader
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import Gap, MalformedFrame, ParsedRows
from marketfeed.feeds.dedup import DedupWindow
from marketfeed.feeds.rows import Candle
from marketfeed.feeds.sequence import SequenceTracker
from marketfeed.feeds.validation import RateCeiling, RowValidator, SampleGate, sample_row
from marketfeed.storage.deadletter import DeadLetters
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.supervision.reconnect import CONNECTED, FAILED, ReconnectPolicy, Retry
from marketfeed.supervision.scheduler import scheduler
from marketfeed.supervision.supervisor import ABNORMAL, ChildContext, Supervised
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event, scrub

log = logging.getLogger("marketfeed.feed")

TICK_S = 1.0  # watchdog and keepalive resolution
REJECT_SAMPLE_INTERVAL_S = 60.0  # one dead-letter sample per rejection reason per minute
CONNECTING, PAUSED = "connecting", "paused"


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
class SubscriptionRefused:
    generation: int
    reason: str


@dataclass(frozen=True)
class ShutdownAnnounced:
    generation: int


@dataclass(frozen=True)
class FrameBatch:
    generation: int
    rows: ParsedRows
    frames: int
    data_frames: int
    malformed: tuple[MalformedFrame, ...]
    pongs: int = 0  # Control.PONG replies to our application-level pings
    credit: threading.Semaphore | None = None  # released once handled: bounds the batches in flight


@dataclass(frozen=True)
class BackfillRows:
    rows: list  # one REST page: trades, or closed candles; never empty


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
    """What a feed knows that outlives one actor incarnation: the last trade id per stream, the
    event time of the newest trade or candle seen (where an outage window starts; at process start,
    the newest stored one), holes found at start."""

    def __init__(self) -> None:
        self.last_ids: dict[str, int] = {}
        self.stream_symbols: dict[str, str] = {}  # stream keys that are more than a symbol → their symbol
        self.last_event_ns = 0
        self.stored_holes: list[Gap] = []  # found in QuestDB at start; the first incarnation backfills them


class LiveCandles:
    """In-progress candles, latest state wins per (exchange, symbol, interval); bounded by the
    subscriptions. A closed candle retires the in-progress state of its own and older periods."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, str], Candle] = {}
        self.closed_ts: dict[tuple[str, str, str], int] = {}  # newest closed period per key

    def update(self, candles: list[Candle]) -> None:
        pending, closed_ts = self.pending, self.closed_ts
        for c in candles:
            key = (c.exchange, c.symbol, c.interval)
            if c.ts_ns <= closed_ts.get(key, -1):
                continue  # a late update of a period already closed: the closed row is final
            held = pending.get(key)
            if held is None or c.ts_ns >= held.ts_ns:
                pending[key] = c

    def close(self, candles: list[Candle]) -> None:
        for c in candles:
            key = (c.exchange, c.symbol, c.interval)
            if c.ts_ns > self.closed_ts.get(key, -1):
                self.closed_ts[key] = c.ts_ns
            held = self.pending.get(key)
            if held is not None and held.ts_ns <= c.ts_ns:
                del self.pending[key]

    def take(self) -> list[Candle]:
        rows, self.pending = list(self.pending.values()), {}
        return rows

    def __len__(self) -> int:
        return len(self.pending)


class FeedActor(Supervised):
    kind = "feed"

    def __init__(self, ctx: ChildContext | None, feed: FeedConfig, sinks: SinkDirectory, memory: FeedMemory,
                 dead_letter_dir: str = "var/deadletter"):
        super().__init__(ctx)
        self.feed, self.sinks, self.memory = feed, sinks, memory
        self.validator = RowValidator(feed.symbols, feed.max_future_skew_s, feed.max_string_len)
        self.rejected: dict[str, int] = {}  # rows refused by validation, by reason
        self.reject_samples, self.dead_letter_dir = SampleGate(REJECT_SAMPLE_INTERVAL_S), dead_letter_dir
        self.rate_ceiling = RateCeiling(feed.max_messages_per_s)
        self.protocol = registry.exchange(feed.exchange).protocol(feed)
        self.reconnect = ReconnectPolicy(
            (feed.url, *feed.alt_urls),
            Backoff(feed.reconnect_min_s, feed.reconnect_max_s),
            CircuitBreaker(feed.breaker_failures, feed.breaker_reset_s),
        )
        self.dedup = DedupWindow(feed.dedup_window_s, feed.dedup_max_entries)
        self.sequence = SequenceTracker(memory.last_ids, self.protocol.stream_key, memory.stream_symbols)
        self.live_candles = LiveCandles()
        self.reader: FeedReader | None = None
        self.draining: FeedReader | None = None  # the old connection while its successor opens
        self.backfiller: Backfiller | None = None
        self.may_backfill = threading.Event()  # cleared while the feed is paused: backfill waits too
        self.may_backfill.set()
        self.generation = 0
        self.state = "starting"
        self.connected_at: float | None = None
        self.last_data_at: float | None = None
        self.last_ping_at = 0.0
        self.ping_interval_s = feed.ping_interval_s or self.protocol.ping_interval_s
        self.pong_timeout_s = feed.pong_timeout_s or self.protocol.pong_timeout_s
        self.pong_due_at: float | None = None  # a ping is unanswered; reconnect if no PONG by then
        # Set while an outage awaits its window backfill (outage_gaps). A new incarnation begins with one:
        # since the last trade its predecessor (or, at process start, QuestDB) saw.
        self.outage_since_ns = memory.last_event_ns
        self.messages = self.data_messages = self.malformed = self.reconnects = 0
        self.gaps = self.backfilled = 0
        self.last_error = ""
        self.pause_reason = ""
        self.tables: set[str] = set()  # tables this feed has written: their backpressure pauses it
        self.outbox: dict[str, list] = {}
        self.tick_timer = None
        m = metrics
        self.m_messages, self.m_malformed = m.MESSAGES.labels(feed.name), m.MALFORMED.labels(feed.name)
        self.m_dups, self.m_gaps = m.DUPLICATES.labels(feed.name), m.GAPS.labels(feed.name)
        self.m_backfilled, self.m_reconnects = m.BACKFILLED.labels(feed.name), m.RECONNECTS.labels(feed.name)
        self.m_connected = m.FEED_CONNECTED.labels(feed.name)
        self.m_rate_exceeded = m.FEED_RATE_EXCEEDED.labels(feed.name)

    # --- lifecycle
    def started(self) -> None:
        if self.feed.backfill:
            self.backfiller = Backfiller(self.feed.name, self.protocol, self.actor_ref, self.may_backfill,
                                         min_interval_s=self.protocol.backfill_min_interval_s)
            self.backfiller.start()
            holes, self.memory.stored_holes = self.memory.stored_holes, []
            for gap in holes:
                self._gap(gap)
        self.tick_timer = scheduler().every(TICK_S, self.actor_ref, Tick())
        self._connect()

    def stopping(self) -> None:
        self._release()
        self._send_live_candles()
        self._deliver()  # hand whatever is held to the buffers before they stop
        event(log, "feed_stopped", feed=self.feed.name, messages=self.messages, data_messages=self.data_messages)

    def stopping_after_crash(self) -> None:
        self._release()

    def interrupt(self) -> None:
        self._release()

    def owned_threads(self) -> list:
        return [t for t in (self.reader, self.draining, self.backfiller) if t is not None]

    def _release(self) -> None:
        if self.tick_timer is not None:
            self.tick_timer.cancel()
        for reader in (self.reader, self.draining):
            if reader is not None:
                reader.close()
        if self.backfiller is not None:
            self.may_backfill.set()
            self.backfiller.stop()
        self.m_connected.set(0)

    # --- messages
    def handle(self, message: object) -> object:
        match message:
            case FrameBatch():
                try:
                    self._on_frames(message)  # rows of a connection already replaced still count
                finally:
                    if message.credit is not None:
                        message.credit.release()
            case BackfillRows(rows) if type(rows[0]) is Candle:  # closed while the connection was down
                candles = self._valid("candles", rows)
                self.live_candles.close(candles)
                self.backfilled += len(candles)
                self.m_backfilled.inc(len(candles))
                self._send("candles", candles)
            case BackfillRows(rows):
                rows = self._valid("trades", rows)
                self.sequence.fill(rows)
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
                self._on_connected(url)
            case Disconnected(generation, reason) if generation == self.generation:
                self._on_disconnected(reason)
            case SubscriptionRefused(generation, reason) if generation == self.generation:
                self._on_refused(reason)
            case ShutdownAnnounced(generation) if generation == self.generation:
                event(log, "feed_shutdown_announced", feed=self.feed.name)
                self._roll()
            case Reconnect(generation) if generation == self.generation:
                self._connect()
            case Tick():
                self._tick()
            case Connected() | Disconnected() | SubscriptionRefused() | ShutdownAnnounced() | Reconnect():
                pass  # about a connection already replaced
            case _:
                return super().handle(message)
        return None

    def _on_frames(self, batch: FrameBatch) -> None:
        self.messages += batch.frames
        self.m_messages.inc(batch.frames)
        if batch.data_frames:
            self.data_messages += batch.data_frames
            if batch.generation == self.generation:
                self.last_data_at = time.monotonic()  # a draining connection must not hide a silent successor
        if batch.pongs and batch.generation == self.generation:
            self.pong_due_at = None
        if batch.malformed:
            self.malformed += len(batch.malformed)
            self.m_malformed.inc(len(batch.malformed))
            first = batch.malformed[0]
            event(log, "malformed_frame", logging.WARNING, feed=self.feed.name, count=len(batch.malformed),
                  reason=first.reason, sample=_sample(first.sample))
        rows = batch.rows
        rows.trades = self._valid("trades", rows.trades)
        rows.candles = self._valid("candles", rows.candles)
        rows.live_candles = self._valid("candles", rows.live_candles)
        if self.outage_since_ns and batch.data_frames and batch.generation == self.generation:
            # The first burst after an outage bounds its window: what happened before comes over REST. Its
            # newest trade, not its oldest: a resubscribe snapshot (Kraken) may reach back into the outage.
            until_ns = max((t.ts_ns for t in rows.trades), default=time.time_ns())
            for gap in self.protocol.outage_gaps(self.feed.symbols, self.outage_since_ns, until_ns):
                self._gap(gap)
            self.outage_since_ns = 0
        if rows.trades:
            self.memory.last_event_ns = max(self.memory.last_event_ns, rows.trades[-1].ts_ns)
            before = self.dedup.dropped
            trades = self.dedup.fresh(rows.trades, time.monotonic())
            if self.dedup.dropped != before:
                self.m_dups.inc(self.dedup.dropped - before)
            if self.protocol.contiguous_ids:
                for gap in self.sequence.observe(trades):
                    self._gap(gap)
            self._send("trades", trades)
        if rows.live_candles:
            self.memory.last_event_ns = max(self.memory.last_event_ns, rows.live_candles[-1].ts_ns)
            self.live_candles.update(rows.live_candles)
        if rows.candles:
            self.live_candles.close(rows.candles)
            self._send("candles", rows.candles)
        if self.live_candles:
            self._send_live_candles()

    def _valid(self, table: str, rows: list) -> list:
        """The rows that may be stored; the rest are counted by reason, logged, and sampled to the dead-letter file."""
        if not rows:
            return rows
        valid, rejected = self.validator.split(rows, time.time_ns())
        if not rejected:
            return valid
        reasons: dict[str, int] = {}
        for _, reason in rejected:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
            metrics.ROWS_REJECTED.labels(self.feed.name, reason).inc(count)
        now = time.monotonic()
        samples = [(sample_row(row), f"rejected by validation: {reason} (feed {self.feed.name})")
                   for row, reason in rejected if self.reject_samples.due(reason, now)]
        event(log, "rows_rejected", logging.WARNING, feed=self.feed.name, table=table, reasons=reasons,
              sample=repr(sample_row(rejected[0][0])))
        if samples:
            try:
                DeadLetters(self.dead_letter_dir, table).write(samples)
            except (OSError, TypeError, ValueError) as exc:  # the sample is lost, the feed goes on
                event(log, "dead_letter_failed", logging.ERROR, feed=self.feed.name,
                      error=f"{type(exc).__name__}: {exc}")
        return valid

    def _send_live_candles(self) -> None:
        """Only while the candles buffer takes them: until then the latest state waits, one per key."""
        if self.sinks.get("candles") is not None and "candles" not in self.outbox:
            self._send("candles", self.live_candles.take())

    def _gap(self, gap: Gap) -> None:
        self.gaps += 1
        self.m_gaps.inc()
        if gap.last_id is not None:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol, stream=gap.stream,
                  first_id=gap.first_id, last_id=gap.last_id, missing=gap.last_id - gap.first_id + 1)
        else:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol,
                  since_ns=gap.since_ns, until_ns=gap.until_ns)
        self._backfill(gap)

    def _backfill(self, gap: Gap) -> None:
        if self.backfiller is not None:
            self.backfiller.gaps.put(gap)

    def _send(self, table: str, rows: list) -> None:
        if rows:
            self.tables.add(table)
            self.outbox.setdefault(table, []).extend(rows)
            self._deliver()
            if self._held_rows() > self.feed.max_held_rows:
                self._pause(f"{self._held_rows()} rows held for an unavailable buffer")

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

    def _held_rows(self) -> int:
        return sum(len(r) for r in self.outbox.values())

    # --- connection control
    def _connect(self) -> None:
        self.generation += 1
        self.state = CONNECTING
        url = self.protocol.url(self.reconnect.url)
        self.reader = FeedReader(self.feed.name, self.protocol, url, self.generation, self.actor_ref, self.sinks,
                                 self.feed.batch_rows, self.feed.batch_linger_s)
        self.reader.start()

    def _roll(self) -> None:
        """Make before break: the current connection keeps streaming until its successor is up."""
        if self.draining is not None:
            self.draining.close()
        self.draining, self.reader = self.reader, None
        self._connect()

    def _on_connected(self, url: str) -> None:
        now = time.monotonic()
        if self.draining is not None:
            self.draining.close()
            self.draining = None
        self.reconnect.connected(now)
        self.rate_ceiling.restart(self.messages, now)
        self.m_rate_exceeded.set(0)
        self.state, self.connected_at, self.last_data_at = CONNECTED, now, now
        self.pong_due_at = None
        self.m_connected.set(1)
        event(log, "feed_connected", feed=self.feed.name, url=url)
        if self.protocol.contiguous_ids:
            # Whatever happened since the last id seen, even if no live trade follows to reveal it.
            for gap in self.sequence.since_last():
                self._backfill(gap)

    def _on_disconnected(self, reason: str) -> None:
        self.m_connected.set(0)
        was_connected = self.state == CONNECTED
        if was_connected and not self.outage_since_ns:
            self.outage_since_ns = self.memory.last_event_ns or time.time_ns()
        self.connected_at = self.pong_due_at = None
        self.reader = None
        if self.draining is not None:  # the successor failed: the old connection ends with it
            self.draining.close()
            self.draining = None
        self.reconnects += 1
        self.m_reconnects.inc()
        self.last_error = reason
        retry = self.reconnect.ended(time.monotonic())
        limit = self.feed.max_connect_failures
        if limit and self.reconnect.failures >= limit:
            self.exit(ABNORMAL, f"{self.reconnect.failures} connects in a row failed, the last: {reason}")
            return
        self._retry(retry, "feed_disconnected", reason)

    def _on_refused(self, reason: str) -> None:
        """The exchange refused the subscription: report the feed failed, try again only after the breaker's cool-down."""
        if self.reader is not None:
            self.reader.close()
        self.generation += 1  # the refused connection's Disconnected is now stale
        self.m_connected.set(0)
        self.reader, self.connected_at, self.pong_due_at = None, None, None
        self.last_error = f"subscription refused: {reason}"
        self._retry(self.reconnect.rejected(time.monotonic()), "feed_subscription_refused", reason)

    def _retry(self, retry: Retry, what: str, reason: str) -> None:
        self.state = retry.state
        level = logging.ERROR if retry.state == FAILED else logging.WARNING
        event(log, what, level, feed=self.feed.name, reason=reason, state=retry.state,
              failures=self.reconnect.failures, reconnect_in_s=round(retry.delay_s, 3))
        scheduler().after(retry.delay_s, self.actor_ref, Reconnect(self.generation))

    def _pause(self, reason: str) -> None:
        """Backpressure: stop reading rather than hold more; the outage is backfilled after resuming."""
        if self.state == PAUSED:
            return
        event(log, "feed_paused", logging.WARNING, feed=self.feed.name, reason=reason)
        self.state, self.pause_reason = PAUSED, reason
        self.may_backfill.clear()
        self.m_connected.set(0)
        if self.outage_since_ns == 0:
            self.outage_since_ns = self.memory.last_event_ns or time.time_ns()
        for reader in (self.reader, self.draining):
            if reader is not None:
                reader.close()
        self.generation += 1  # whatever the closed readers still say is about the past
        self.reader = self.draining = None

    def _backpressure(self) -> str:
        paused = sorted(t for t in self.tables if self.sinks.paused(t))
        if paused:
            return f"spool full for {', '.join(paused)}"
        if self._held_rows() > self.feed.max_held_rows:
            return f"{self._held_rows()} rows held for an unavailable buffer"
        return ""

    def _tick(self) -> None:
        self._deliver()
        self._check_rate(time.monotonic())
        if self.live_candles:
            self._send_live_candles()
        now = time.monotonic()
        pressure = self._backpressure()
        if self.state == PAUSED:
            if not pressure:
                event(log, "feed_resumed", feed=self.feed.name, paused_for=self.pause_reason)
                self.pause_reason = ""
                self.may_backfill.set()
                self._connect()
            return
        if pressure:
            self._pause(pressure)
            return
        if self.state != CONNECTED or self.reader is None:
            return
        if self.sinks.behind():  # the reader waits for a writer to catch up: the silence is ours
            self.last_data_at = now
            if self.pong_due_at is not None:
                self.pong_due_at = now + self.pong_timeout_s
            return
        if self.last_data_at is not None and now - self.last_data_at > self.feed.stale_after_s:
            event(log, "feed_stale", logging.WARNING, feed=self.feed.name,
                  silent_s=round(now - self.last_data_at, 1))
            self.reader.close()
            return
        if self.pong_due_at is not None and now > self.pong_due_at:
            event(log, "feed_pong_timeout", logging.WARNING, feed=self.feed.name, timeout_s=self.pong_timeout_s)
            self.reader.close()
            return
        max_age = self.feed.max_connection_age_s or self.protocol.max_connection_age_s
        if max_age and self.connected_at is not None and now - self.connected_at >= max_age:
            event(log, "feed_connection_rolled", feed=self.feed.name, age_s=round(now - self.connected_at, 1))
            self._roll()
            return
        ping = self.protocol.ping_message
        if ping and now - self.last_ping_at >= self.ping_interval_s:
            self.last_ping_at = now
            if self.pong_timeout_s and self.pong_due_at is None:
                self.pong_due_at = now + self.pong_timeout_s
            try:
                self.reader.send(ping)
            except Exception:  # noqa: BLE001 - a dead socket shows up as Disconnected from the reader
                pass

    def _check_rate(self, now: float) -> None:
        """Flag the feed while its connection talks faster than max_messages_per_s: a runaway or hostile peer."""
        if self.rate_ceiling.observe(self.messages, now):
            flagged = self.rate_ceiling.flagged
            self.m_rate_exceeded.set(int(flagged))
            event(log, "feed_rate_exceeded" if flagged else "feed_rate_normal",
                  logging.WARNING if flagged else logging.INFO, feed=self.feed.name, messages_per_s=round(self.rate_ceiling.rate, 1),
                  max_messages_per_s=self.feed.max_messages_per_s)

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "exchange": self.feed.exchange,
            "state": self.state,
            "url": self.reconnect.url,
            "breaker": self.reconnect.breaker.state(now),
            "connect_failures": self.reconnect.failures,
            "messages": self.messages,
            "data_messages": self.data_messages,
            "last_message_age_s": None if self.last_data_at is None else round(now - self.last_data_at, 3),
            "reconnects": self.reconnects,
            "malformed": self.malformed,
            "duplicates": self.dedup.dropped,
            "gaps": self.gaps,
            "backfilled": self.backfilled,
            "held_rows": self._held_rows(),
            "live_candles": len(self.live_candles),
            "paused": self.pause_reason,
            "last_error": scrub(self.last_error),
            "rejected": dict(self.rejected),
            "rate_exceeded": self.rate_ceiling.flagged,
            "messages_per_s": round(self.rate_ceiling.rate, 1),
        }


def _sample(sample: bytes | str) -> str:
    return sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
