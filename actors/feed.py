"""Feed actor: one per [[feeds]] entry. Control and effects only; the decisions are pure pieces.

reader thread (actors/feed_reader.py): socket → frames → session → FrameBatch, one tell per burst
feed actor:   FrameBatch → pipeline (feeds/pipeline.py) → rows to the buffer actors, gaps to the backfiller
              Tick → connection watch (supervision/watch.py) → close / roll / ping
              Connected, Disconnected → reconnect policy (supervision/reconnect.py) → Reconnect timer
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from marketfeed.actors.backfill import Backfiller
from marketfeed.actors.buffer import RowBatch, SinkDirectory
from marketfeed.actors.feed_messages import (
    BackfillDone,
    BackfillRows,
    Connected,
    Disconnected,
    FrameBatch,
    Reconnect,
    ShutdownAnnounced,
    SubscriptionRefused,
    Tick,
)
from marketfeed.actors.feed_reader import FeedReader, ReaderLimits, ReaderOutlet
from marketfeed.actors.ledger import LedgerOutlet, LedgerRecords
from marketfeed.actors.rest_client import RestLimits
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Gap
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline, Outcome
from marketfeed.feeds.registry import exchange
from marketfeed.storage.deadletter import DeadLetters
from marketfeed.storage.ledger import CloseReason, OpenGap, Origin, Record, RequestBox, UnreadableRequest
from marketfeed.storage.tables import CANDLES
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.supervision.reconnect import ReconnectPolicy, Retry
from marketfeed.supervision.scheduler import Timer, scheduler
from marketfeed.supervision.supervisor import ABNORMAL, ChildContext, Supervised
from marketfeed.supervision.watch import ConnectionWatch, RateChange, Verdict, WatchLimits
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event, scrub
from marketfeed.telemetry.report import FeedState, FeedStatus

log = logging.getLogger("marketfeed.feed")

TICK_S = 1.0  # watch and keepalive resolution


class Outbox:
    """Rows per table waiting for their buffer actor: one tell per table per delivery; rows wait here while
    the buffer actor is restarting."""

    def __init__(self, sinks: SinkDirectory):
        self.sinks = sinks
        self.rows: dict[str, list] = {}
        self.tables: set[str] = set()  # tables this feed has written: their backpressure pauses it

    def add(self, table: str, rows: list) -> None:
        self.tables.add(table)
        self.rows.setdefault(table, []).extend(rows)

    def deliver(self) -> None:
        for table, rows in list(self.rows.items()):
            ref = self.sinks.get(table)
            if ref is None or not rows:
                continue
            try:
                ref.tell(RowBatch(rows))
            except Exception:  # noqa: BLE001 - ActorDeadError: the buffer is restarting, keep the rows
                continue
            del self.rows[table]

    def holds(self, table: str) -> bool:
        return table in self.rows

    def held(self) -> int:
        return sum(len(r) for r in self.rows.values())


class FeedActor(Supervised):
    kind = "feed"

    def __init__(self, ctx: ChildContext | None, feed: FeedConfig, sinks: SinkDirectory, memory: FeedMemory,
                 dead_letter_dir: str = "var/deadletter", ledger: LedgerOutlet | None = None,
                 gap_max_age_s: float = 0.0, requests: RequestBox | None = None):
        super().__init__(ctx)
        self.feed, self.sinks, self.dead_letter_dir = feed, sinks, dead_letter_dir
        self.ledger, self.gap_max_age_s = ledger or LedgerOutlet(), gap_max_age_s
        self.memory = memory
        self.gaps = memory.gaps  # this feed's open gaps: they outlive the actor (and, journaled, the process)
        self.requests = requests  # gaps handed over from outside (verify --repair)
        self.requests_taken: set[Path] = set()  # opened, their file not yet removed by the ledger writer
        self.fetching: dict[Gap, str] = {}  # gaps handed to the backfill thread → their ledger key
        self.protocol = exchange(feed.exchange).protocol(feed)
        self.pipeline = FeedPipeline(feed, self.protocol, memory)
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
        self.outbox = Outbox(sinks)
        self.reader: FeedReader | None = None
        self.draining: FeedReader | None = None  # the old connection while its successor opens
        self.backfiller: Backfiller | None = None
        self.may_backfill = threading.Event()  # cleared while the feed is paused: backfill waits too
        self.may_backfill.set()
        self.generation = 0
        self.state: FeedState = FeedState.STARTING
        self.messages = self.data_messages = self.malformed = self.reconnects = 0
        self.last_error = self.pause_reason = ""
        self.tick_timer: Timer | None = None
        m, name = metrics, feed.name
        self.m_messages, self.m_malformed = m.MESSAGES.labels(name), m.MALFORMED.labels(name)
        self.m_dups, self.m_gaps = m.DUPLICATES.labels(name), m.GAPS.labels(name)
        self.m_backfilled, self.m_reconnects = m.BACKFILLED.labels(name), m.RECONNECTS.labels(name)
        self.m_connected = m.FEED_CONNECTED.labels(name)
        self.m_rate_exceeded = m.FEED_RATE_EXCEEDED.labels(name)

    # --- lifecycle
    def started(self) -> None:
        if self.feed.backfill:
            self.backfiller = Backfiller(self.feed.name, self.protocol, self.actor_ref, self.may_backfill,
                                         RestLimits.of(self.feed))
            self.backfiller.start()
            for gap in self.pipeline.stored_holes():
                self._gap(gap, Origin.STORED_HOLE)
            history, self.memory.history = self.memory.history, []
            for gap in history:
                self._gap(gap, Origin.HISTORY)
            self._take_requests()
            self._retry_due_gaps()  # those the ledger kept open across a restart
        self.tick_timer = scheduler().every(TICK_S, self.actor_ref, Tick())
        self._connect()

    def stopping(self) -> None:
        self._release()
        self._send_live_candles()
        self.outbox.deliver()  # hand whatever is held to the buffers before they stop
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
                    self._credit_back(message.generation)
            case BackfillRows(table, rows):
                self._apply(self.pipeline.backfill(table, rows, time.time_ns(), time.monotonic()))
            case BackfillDone():
                self._on_backfill_done(message)
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

    def _credit_back(self, generation: int) -> None:
        for reader in (self.reader, self.draining):
            if reader is not None and reader.generation == generation:
                reader.outlet.handled()

    def _on_frames(self, batch: FrameBatch) -> None:
        current = batch.generation == self.generation
        self.messages += batch.frames
        self.m_messages.inc(batch.frames)
        if batch.data_frames:
            self.data_messages += batch.data_frames
            if current:
                self.watch.data(time.monotonic())  # a draining connection must not hide a silent successor
        if batch.pongs and current:
            self.watch.pong()
        if batch.malformed:
            self.malformed += len(batch.malformed)
            self.m_malformed.inc(len(batch.malformed))
            first = batch.malformed[0]
            event(log, "malformed_frame", logging.WARNING, feed=self.feed.name, count=len(batch.malformed),
                  reason=first.reason, sample=_text(first.sample))
        self._apply(self.pipeline.live(batch.rows, current and bool(batch.data_frames), time.time_ns(),
                                       time.monotonic()))
        if self.pipeline.live_candles:
            self._send_live_candles()

    def _apply(self, outcome: Outcome) -> None:
        """The effects of one pipeline step: counts, dead letters, gaps, rows."""
        for rejected in outcome.rejected:
            for reason, count in rejected.reasons.items():
                metrics.ROWS_REJECTED.labels(self.feed.name, reason).inc(count)
            event(log, "rows_rejected", logging.WARNING, feed=self.feed.name, table=rejected.table.name,
                  reasons=rejected.reasons, sample=repr(rejected.first))
            if rejected.samples:
                try:
                    DeadLetters(self.dead_letter_dir, rejected.table.name).write(rejected.samples)
                except (OSError, TypeError, ValueError) as exc:  # the sample is lost, the feed goes on
                    event(log, "dead_letter_failed", logging.ERROR, feed=self.feed.name,
                          error=f"{type(exc).__name__}: {exc}")
        if outcome.duplicates:
            self.m_dups.inc(outcome.duplicates)
        if outcome.backfilled:
            self.m_backfilled.inc(outcome.backfilled)
        for gap in outcome.gaps:
            self._gap(gap, Origin.LIVE_ID_JUMP)
        for gap in outcome.outage_gaps:
            self._gap(gap, Origin.PROCESS_DOWNTIME if outcome.after_restart else Origin.CONNECTION_OUTAGE)
        for table, rows in outcome.rows.items():
            self._send(table, rows)

    def _send_live_candles(self) -> None:
        """Only while the candles buffer takes them: until then the latest state waits, one per key."""
        if self.sinks.get(CANDLES.name) is not None and not self.outbox.holds(CANDLES.name):
            self._send(CANDLES.name, self.pipeline.live_candles.take())

    def _gap(self, gap: Gap, origin: Origin) -> None:
        self.m_gaps.inc()
        if gap.last_id is not None:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol, stream=gap.stream,
                  first_id=gap.first_id, last_id=gap.last_id, missing=gap.last_id - gap.first_id + 1, origin=origin)
        else:
            event(log, "gap_detected", logging.WARNING, feed=self.feed.name, symbol=gap.symbol,
                  since_ns=gap.since_ns, until_ns=gap.until_ns, origin=origin)
        if self.backfiller is None:
            return
        opened, records = self.gaps.open_gap(self.feed.name, gap, origin, time.time_ns())
        self._journal(records)
        self._fetch(opened)

    def _fetch(self, opened: OpenGap) -> None:
        if self.backfiller is not None and opened.key not in self.fetching.values():
            self.fetching[opened.gap] = opened.key
            self.backfiller.gaps.put(opened.gap)

    def _journal(self, records: list[Record]) -> None:
        if records:
            self.ledger.tell(LedgerRecords(tuple(records)))

    def _on_backfill_done(self, done: BackfillDone) -> None:
        """A gap filled closes in the ledger; a failed one waits for its next attempt, or is given up on."""
        gap, now_ns = done.gap, time.time_ns()
        level = logging.WARNING if done.error else logging.INFO
        event(log, "backfill_done", level, feed=self.feed.name, symbol=gap.symbol, stream=gap.stream,
              first_id=gap.first_id, last_id=gap.last_id, since_ns=gap.since_ns, until_ns=gap.until_ns,
              rows=done.rows, error=done.error, retry_after_s=done.retry_after_s or None)
        key = self.fetching.pop(gap, None)
        if key is None:
            return  # a reconnect's look past the last id: a live id jump reveals anything it missed
        if not done.error:
            self._close_gap(key, CloseReason.FILLED, "", now_ns)
        elif done.unrecoverable:
            self._close_gap(key, CloseReason.UNRECOVERABLE, done.error, now_ns)
        else:
            self._journal(self.gaps.failed(key, done.error, now_ns, done.retry_after_s, done.left))

    def _close_gap(self, key: str, reason: CloseReason, detail: str, now_ns: int) -> None:
        opened = self.gaps.open.get(key)
        self._journal(self.gaps.close(key, reason, detail, now_ns))
        metrics.GAPS_CLOSED.labels(self.feed.name, reason.value).inc()
        if reason is not CloseReason.FILLED and opened is not None:
            g = opened.gap
            event(log, "gap_unrecoverable", logging.ERROR, feed=self.feed.name, reason=reason, detail=detail,
                  symbol=g.symbol, stream=g.stream, table=g.table.name, first_id=g.first_id, last_id=g.last_id,
                  since_ns=g.since_ns, until_ns=g.until_ns, origin=opened.origin, attempts=opened.attempts)

    def _retry_due_gaps(self) -> None:
        now_ns = time.time_ns()
        if self.gap_max_age_s:
            for key, opened in list(self.gaps.open.items()):
                if opened.feed == self.feed.name and now_ns - opened.opened_at_ns > self.gap_max_age_s * 1e9:
                    self._close_gap(key, CloseReason.EXPIRED, f"open for more than {self.gap_max_age_s:g} s", now_ns)
        for opened in self.gaps.due(self.feed.name, now_ns):
            self._fetch(opened)

    def _take_requests(self) -> None:
        """Gaps handed to this feed from outside (storage/ledger.py RequestBox): opened and fetched like its own."""
        if self.requests is None:
            return
        for request in self.requests.pending(self.feed.name):
            if isinstance(request, UnreadableRequest):
                if request.path not in self.requests_taken:  # left where it is for the operator, logged once
                    self.requests_taken.add(request.path)
                    event(log, "gap_request_unreadable", logging.ERROR, feed=self.feed.name, file=str(request.path),
                          error=request.error)
                continue
            if request.path in self.requests_taken:
                continue
            self.requests_taken.add(request.path)
            event(log, "gap_request_taken", feed=self.feed.name, file=str(request.path), gaps=len(request.gaps),
                  origin=request.origin)
            for gap in request.gaps:
                self._gap(gap, request.origin)
            self.ledger.tell(LedgerRecords((), done=(str(request.path),)))

    def _backfill(self, gap: Gap) -> None:
        if self.backfiller is not None:
            self.backfiller.gaps.put(gap)

    def _send(self, table: str, rows: list) -> None:
        if rows:
            self.outbox.add(table, rows)
            self.outbox.deliver()
            if self.outbox.held() > self.feed.max_held_rows:
                self._pause(f"{self.outbox.held()} rows held for an unavailable buffer")

    # --- connection control
    def _connect(self) -> None:
        self.generation += 1
        self.state = FeedState.CONNECTING
        url = self.protocol.url(self.reconnect.url)
        outlet = ReaderOutlet(self.actor_ref, self.generation, self.sinks.wait_caught_up)
        self.reader = FeedReader(f"reader-{self.feed.name}-{self.generation}", url, self.protocol.open_session(),
                                 outlet, ReaderLimits.of(self.feed))
        self.reader.start()

    def _roll(self) -> None:
        """Make before break: the current connection keeps streaming until its successor is up."""
        if self.draining is not None:
            self.draining.close()
        self.draining, self.reader = self.reader, None
        self.watch.ended()
        self._connect()

    def _on_connected(self, url: str) -> None:
        now = time.monotonic()
        if self.draining is not None:
            self.draining.close()
            self.draining = None
        self.reconnect.connected(now)
        self.watch.connected(now, self.messages)
        self.m_rate_exceeded.set(0)
        self.state = FeedState.CONNECTED
        self.m_connected.set(1)
        event(log, "feed_connected", feed=self.feed.name, url=url)
        for gap in self.pipeline.reconnected():
            self._backfill(gap)

    def _on_disconnected(self, reason: str) -> None:
        self.m_connected.set(0)
        if self.state is FeedState.CONNECTED:
            self.pipeline.outage_began(time.time_ns())
        self.watch.ended()
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
        """The exchange refused the subscription: report the feed failed, try again only after the breaker's
        cool-down."""
        if self.reader is not None:
            self.reader.close()
        self.generation += 1  # the refused connection's Disconnected is now stale
        self.m_connected.set(0)
        self.reader = None
        self.watch.ended()
        self.last_error = f"subscription refused: {reason}"
        self._retry(self.reconnect.rejected(time.monotonic()), "feed_subscription_refused", reason)

    def _retry(self, retry: Retry, what: str, reason: str) -> None:
        self.state = retry.state
        level = logging.ERROR if retry.state is FeedState.FAILED else logging.WARNING
        event(log, what, level, feed=self.feed.name, reason=reason, state=retry.state,
              failures=self.reconnect.failures, reconnect_in_s=round(retry.delay_s, 3))
        scheduler().after(retry.delay_s, self.actor_ref, Reconnect(self.generation))

    def _pause(self, reason: str) -> None:
        """Backpressure: stop reading rather than hold more; the outage is backfilled after resuming."""
        if self.state is FeedState.PAUSED:
            return
        event(log, "feed_paused", logging.WARNING, feed=self.feed.name, reason=reason)
        self.state, self.pause_reason = FeedState.PAUSED, reason
        self.may_backfill.clear()
        self.m_connected.set(0)
        self.pipeline.outage_began(time.time_ns())
        for reader in (self.reader, self.draining):
            if reader is not None:
                reader.close()
        self.generation += 1  # whatever the closed readers still say is about the past
        self.reader = self.draining = None
        self.watch.ended()

    def _backpressure(self) -> str:
        paused = sorted(t for t in self.outbox.tables if self.sinks.paused(t))
        if paused:
            return f"spool full for {', '.join(paused)}"
        if self.outbox.held() > self.feed.max_held_rows:
            return f"{self.outbox.held()} rows held for an unavailable buffer"
        return ""

    def _tick(self) -> None:
        if self.backfiller is not None and not self.backfiller.is_alive():  # it ends only when stopped: it died
            event(log, "backfill_thread_died", logging.ERROR, feed=self.feed.name, fetching=len(self.fetching))
            self.exit(ABNORMAL, "the backfill thread died")  # restarted with a new one; its gaps stay open, due
            return
        self.outbox.deliver()
        if self.backfiller is not None and self.state is not FeedState.PAUSED:
            self._take_requests()
            self._retry_due_gaps()
        now = time.monotonic()
        self._check_rate(now)
        if self.pipeline.live_candles:
            self._send_live_candles()
        pressure = self._backpressure()
        if self.state is FeedState.PAUSED:
            if not pressure:
                event(log, "feed_resumed", feed=self.feed.name, paused_for=self.pause_reason)
                self.pause_reason = ""
                self.may_backfill.set()
                self._connect()
            return
        if pressure:
            self._pause(pressure)
            return
        if self.state is not FeedState.CONNECTED or self.reader is None:
            return
        if self.sinks.behind():
            self.watch.writer_behind(now)
            return
        verdict = self.watch.decide(now)
        if verdict is Verdict.STALE:
            silent_s = self.watch.silent_s(now)
            event(log, "feed_stale", logging.WARNING, feed=self.feed.name,
                  silent_s=None if silent_s is None else round(silent_s, 1))
            self.reader.close()
        elif verdict is Verdict.PONG_TIMEOUT:
            event(log, "feed_pong_timeout", logging.WARNING, feed=self.feed.name,
                  timeout_s=self.watch.limits.pong_timeout_s)
            self.reader.close()
        elif verdict is Verdict.ROLL:
            age_s = self.watch.age_s(now)
            event(log, "feed_connection_rolled", feed=self.feed.name, age_s=None if age_s is None else round(age_s, 1))
            self._roll()
        elif verdict is Verdict.PING and self.protocol.ping_message is not None:  # without one: ping_interval_s 0
            try:
                self.reader.send(self.protocol.ping_message)
            except Exception:  # noqa: BLE001 - a dead socket shows up as Disconnected from the reader
                pass

    def _check_rate(self, now: float) -> None:
        """Flag the feed while its connection talks faster than max_messages_per_s: a runaway or hostile peer."""
        change = self.watch.rate_change(now, self.messages)
        if change is None:
            return
        exceeded = change is RateChange.EXCEEDED
        self.m_rate_exceeded.set(int(exceeded))
        event(log, "feed_rate_exceeded" if exceeded else "feed_rate_normal",
              logging.WARNING if exceeded else logging.INFO, feed=self.feed.name,
              messages_per_s=round(self.watch.rate.rate, 1), max_messages_per_s=self.feed.max_messages_per_s)

    def status(self) -> FeedStatus:
        now = time.monotonic()
        silent_s = self.watch.silent_s(now)
        return {
            "exchange": self.feed.exchange,
            "state": self.state,
            "url": self.reconnect.url,
            "breaker": self.reconnect.breaker.state(now),
            "connect_failures": self.reconnect.failures,
            "messages": self.messages,
            "data_messages": self.data_messages,
            "last_message_age_s": None if silent_s is None else round(silent_s, 3),
            "reconnects": self.reconnects,
            "malformed": self.malformed,
            "duplicates": self.pipeline.dedup.dropped,
            "gaps": self.pipeline.gaps,
            "backfilled": self.pipeline.backfilled,
            "held_rows": self.outbox.held(),
            "live_candles": len(self.pipeline.live_candles),
            "paused": self.pause_reason,
            "last_error": scrub(self.last_error),
            "rejected": dict(self.pipeline.rejected),
            "rate_exceeded": self.watch.rate.flagged,
            "messages_per_s": round(self.watch.rate.rate, 1),
        }


def _text(sample: bytes | str) -> str:
    return sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
