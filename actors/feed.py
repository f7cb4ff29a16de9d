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
from marketfeed.actors.feed_connection import FeedConnection, HostPacer, host_pacer
from marketfeed.actors.feed_messages import (
    BackfillDone,
    BackfillRows,
    Connected,
    Disconnected,
    FrameBatch,
    Reconnect,
    RefreshUniverse,
    ShutdownAnnounced,
    SubscriptionRefused,
    Tick,
    UniverseFailed,
    UniverseListed,
)
from marketfeed.actors.feed_reader import FeedReader, ReaderLimits, ReaderOutlet
from marketfeed.actors.ledger import LedgerOutlet, LedgerRecords
from marketfeed.actors.rest_client import RestLimits
from marketfeed.actors.universe import ListingReader
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Gap
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline, Outcome
from marketfeed.feeds.registry import exchange
from marketfeed.feeds.shards import InstanceShard, ShardError, ShardPlan, symbols_per_connection
from marketfeed.feeds.universe import UniverseError, UniverseSpec, select
from marketfeed.storage.deadletter import DeadLetters
from marketfeed.storage.ledger import CloseReason, OpenGap, Origin, Record, RequestBox, UnreadableRequest
from marketfeed.storage.tables import CANDLES
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.pacing import message_interval_s
from marketfeed.supervision.reconnect import Retry
from marketfeed.supervision.scheduler import Timer, scheduler
from marketfeed.supervision.supervisor import ABNORMAL, ChildContext, Supervised
from marketfeed.supervision.watch import RateChange, Verdict
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event, scrub
from marketfeed.telemetry.report import BreakerState, FeedState, FeedStatus

log = logging.getLogger("marketfeed.feed")

TICK_S = 1.0  # watch and keepalive resolution
LISTING_RETRY_MIN_S, LISTING_RETRY_MAX_S = 5.0, 300.0  # a failed listing read is retried with this backoff
LISTING_MAX_BYTES = 64 << 20  # Binance's exchangeInfo of every symbol is several MB, well above one REST page
# How bad a connection's state is: the feed reports its worst connection.
_STATE_RANK = {FeedState.CONNECTED: 0, FeedState.STARTING: 1, FeedState.CONNECTING: 2, FeedState.RETRYING: 3,
               FeedState.FAILED: 4, FeedState.PAUSED: 5}


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
                 gap_max_age_s: float = 0.0, requests: RequestBox | None = None, shard: InstanceShard | None = None,
                 writes_live_candles: threading.Event | None = None):
        super().__init__(ctx)
        self.feed, self.sinks, self.dead_letter_dir = feed, sinks, dead_letter_dir
        self.ledger, self.gap_max_age_s = ledger or LedgerOutlet(), gap_max_age_s
        self.memory = memory
        self.gaps = memory.gaps  # this feed's open gaps: they outlive the actor (and, journaled, the process)
        self.requests = requests  # gaps handed over from outside (verify --repair)
        self.shard = shard  # this instance's share of a whole market's listing (a plain list comes cut already)
        self.writes_live_candles = writes_live_candles  # None: always; clear: an HA partner writes them
        self.requests_taken: set[Path] = set()  # opened, their file not yet removed by the ledger writer
        self.fetching: dict[Gap, str] = {}  # gaps handed to the backfill thread → their ledger key
        self.protocol = exchange(feed.exchange).protocol(feed)
        self.pipeline = FeedPipeline(feed, self.protocol, memory)
        limits = self.protocol.connection_limits
        self.plan = ShardPlan(symbols_per_connection(limits.max_streams, self.protocol.streams_per_symbol(),
                                                     feed.max_streams_per_connection), limits.max_connections)
        self.pacer: HostPacer = host_pacer(feed.exchange, feed.url, limits.max_connects, limits.connect_window_s)
        self.reader_limits = ReaderLimits.of(feed, message_interval_s(limits.max_client_messages_per_s))
        spec = UniverseSpec.of(feed)  # None: the configured symbols are the universe, as are a wildcard's (Polygon)
        self.universe = spec if spec is not None and self.protocol.listing_request() is not None else None
        self.listing: ListingReader | None = None
        self.listing_backoff = Backoff(LISTING_RETRY_MIN_S, LISTING_RETRY_MAX_S)
        self.universe_error = ""
        self.connections: dict[int, FeedConnection] = {}
        self.generations = 0  # every reader of the feed is numbered: news of a replaced one is ignored
        self.outbox = Outbox(sinks)
        self.backfiller: Backfiller | None = None
        self.may_backfill = threading.Event()  # cleared while the feed is paused: backfill waits too
        self.may_backfill.set()
        self.paused = False
        self.messages = self.data_messages = self.malformed = self.reconnects = 0
        self.pause_reason = ""
        self.tick_timer: Timer | None = None
        self.refresh_timer: Timer | None = None
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
        if self.universe is None:
            self._carry(self.feed.symbols)
        else:
            self._read_listing()
            if self.feed.universe_refresh_s:
                self.refresh_timer = scheduler().every(self.feed.universe_refresh_s, self.actor_ref,
                                                       RefreshUniverse())

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
        readers = [r for c in self.connections.values() for r in c.readers()]
        return [t for t in (*readers, self.backfiller, self.listing) if t is not None]

    def _release(self) -> None:
        for timer in (self.tick_timer, self.refresh_timer):
            if timer is not None:
                timer.cancel()
        for connection in self.connections.values():
            connection.close()
        if self.listing is not None:
            self.listing.stop()
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
            case Connected(generation, url) if (c := self._current(generation)) is not None:
                self._on_connected(c, url)
            case Disconnected(generation, reason) if (c := self._current(generation)) is not None:
                self._on_disconnected(c, reason)
            case SubscriptionRefused(generation, reason) if (c := self._current(generation)) is not None:
                self._on_refused(c, reason)
            case ShutdownAnnounced(generation) if (c := self._current(generation)) is not None:
                event(log, "feed_shutdown_announced", feed=self.feed.name, connection=c.index)
                self._roll(c)
            case Reconnect(generation) if (c := self._current(generation)) is not None:
                self._connect(c)
            case Tick():
                self._tick()
            case UniverseListed(listings):
                self._on_listing(listings)
            case UniverseFailed(reason, retry_after_s):
                self._on_listing_failed(reason, retry_after_s)
            case RefreshUniverse():
                self._read_listing()
            case Connected() | Disconnected() | SubscriptionRefused() | ShutdownAnnounced() | Reconnect():
                pass  # about a connection already replaced
            case _:
                return super().handle(message)
        return None

    def _current(self, generation: int) -> FeedConnection | None:
        """The connection whose newest reader has this number, if it is still the newest."""
        for connection in self.connections.values():
            if connection.generation == generation:
                return connection
        return None

    def _credit_back(self, generation: int) -> None:
        for connection in self.connections.values():
            for reader in connection.readers():
                if reader.generation == generation:
                    reader.outlet.handled()
                    return

    def _on_frames(self, batch: FrameBatch) -> None:
        connection = self._current(batch.generation)
        current = connection is not None and connection.reader is not None
        self.messages += batch.frames
        self.m_messages.inc(batch.frames)
        if connection is not None:
            connection.messages += batch.frames
        if batch.data_frames:
            self.data_messages += batch.data_frames
            if connection is not None:
                connection.watch.data(time.monotonic())  # a draining connection must not hide a silent successor
        if batch.pongs and connection is not None:
            connection.watch.pong()
        if batch.malformed:
            self.malformed += len(batch.malformed)
            self.m_malformed.inc(len(batch.malformed))
            first = batch.malformed[0]
            event(log, "malformed_frame", logging.WARNING, feed=self.feed.name, count=len(batch.malformed),
                  reason=first.reason, sample=_text(first.sample))
        index = connection.index if connection is not None else -1
        self._apply(self.pipeline.live(batch.rows, current and bool(batch.data_frames), time.time_ns(),
                                       time.monotonic(), index))
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
        """Only while the candles buffer takes them: until then the latest state waits, one per key. An instance
        whose HA partner writes the candles in progress drops them (it still stores every closed one)."""
        if self.writes_live_candles is not None and not self.writes_live_candles.is_set():
            self.pipeline.live_candles.take()
        elif self.sinks.get(CANDLES.name) is not None and not self.outbox.holds(CANDLES.name):
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

    # --- the universe: which symbols, over which connections
    def _read_listing(self) -> None:
        if self.listing is not None and self.listing.is_alive():
            return  # a read is under way: its answer serves this refresh too
        limits = RestLimits.of(self.feed)
        self.listing = ListingReader(self.feed.name, self.protocol, self.actor_ref,
                                     RestLimits(max_bytes=max(limits.max_bytes, LISTING_MAX_BYTES),
                                                ca_file=limits.ca_file))
        self.listing.start()

    def _on_listing(self, listings) -> None:
        assert self.universe is not None, "only a feed with a universe reads the listing"
        try:
            symbols = select(self.universe, listings)
        except UniverseError as exc:
            self._on_listing_failed(str(exc), 0.0)
            return
        if self.shard is not None:
            listed, symbols = len(symbols), self.shard.share(symbols)
            if not symbols:
                self._on_listing_failed(f"service.shard {self.shard} takes none of the {listed} symbols selected", 0.0)
                return
        self.listing_backoff.reset()
        self.universe_error = ""
        self._carry(symbols)

    def _on_listing_failed(self, reason: str, retry_after_s: float) -> None:
        """Retried with backoff; until a listing is read, the feed carries what it carried before (at start:
        nothing), and health names the reason."""
        self.universe_error = reason
        delay = max(self.listing_backoff.next_delay(), retry_after_s)
        event(log, "universe_read_failed", logging.ERROR if not self.connections else logging.WARNING,
              feed=self.feed.name, reason=reason, retry_in_s=round(delay, 1), carried=len(self.plan.symbols()))
        scheduler().after(delay, self.actor_ref, RefreshUniverse())

    def _carry(self, symbols: tuple[str, ...]) -> None:
        """Make the feed's connections carry exactly `symbols`: only connections whose share changes are touched
        (a changed one rolls over to its new share, make before break)."""
        first = not self.connections
        try:
            change = self.plan.update(symbols)
        except ShardError as exc:
            self._on_listing_failed(str(exc), 0.0) if self.universe is not None else self.exit(ABNORMAL, str(exc))
            return
        if not change:
            return
        self.pipeline.universe(tuple(sorted(self.plan.symbols())))
        for index in change.closed:
            connection = self.connections.pop(index)
            connection.close()
            self.pipeline.connection_closed(index)
        for index, share in change.opened.items():
            connection = self.connections[index] = FeedConnection(index, self.feed, share)
            self.pipeline.connection_opened(index, share)
            if not self.paused:
                self._connect(connection)
        if first:
            self.pipeline.first_plan_done()
        for index, share in change.changed.items():
            connection = self.connections[index]
            connection.resubscribe(share)
            self.pipeline.connection_opened(index, share)
            if connection.reader is not None and not self.paused:
                self._roll(connection)
        metrics.FEED_SYMBOLS.labels(self.feed.name).set(len(self.plan.symbols()))
        self._connection_states()
        event(log, "universe_changed" if not first else "universe_resolved", feed=self.feed.name,
              symbols=len(self.plan.symbols()), connections=len(self.connections), added=len(change.added),
              removed=len(change.removed), added_sample=list(change.added[:10]),
              removed_sample=list(change.removed[:10]), connections_opened=len(change.opened),
              connections_changed=len(change.changed), connections_closed=len(change.closed))

    # --- connection control
    def _connect(self, connection: FeedConnection) -> None:
        self.generations += 1
        connection.generation = self.generations
        now = time.monotonic()
        wait = self.pacer.attempt(now)
        if wait:  # the host's connection-rate window is full (a reconnect storm): wait for a free attempt
            connection.state = FeedState.RETRYING
            event(log, "feed_connect_paced", feed=self.feed.name, connection=connection.index,
                  wait_s=round(wait, 2))
            scheduler().after(wait, self.actor_ref, Reconnect(connection.generation))
            self._connection_states()
            return
        connection.state = FeedState.CONNECTING
        self._connection_states()
        url = connection.protocol.url(connection.reconnect.url)
        outlet = ReaderOutlet(self.actor_ref, connection.generation, self.sinks.wait_caught_up)
        connection.reader = FeedReader(f"reader-{self.feed.name}-{connection.index}-{connection.generation}", url,
                                       connection.protocol.open_session(), outlet, self.reader_limits)
        connection.reader.start()

    def _roll(self, connection: FeedConnection) -> None:
        """Make before break: the current connection keeps streaming until its successor is up."""
        if connection.draining is not None:
            connection.draining.close()
        connection.draining, connection.reader = connection.reader, None
        connection.watch.ended()
        self._connect(connection)

    def _on_connected(self, connection: FeedConnection, url: str) -> None:
        now = time.monotonic()
        if connection.draining is not None:
            connection.draining.close()
            connection.draining = None
        connection.reconnect.connected(now)
        connection.watch.connected(now, connection.messages)
        connection.state = FeedState.CONNECTED
        self._connection_states()
        self.m_rate_exceeded.set(int(any(c.watch.rate.flagged for c in self.connections.values())))
        event(log, "feed_connected", feed=self.feed.name, url=url, connection=connection.index,
              symbols=len(connection.symbols))
        for gap in self.pipeline.reconnected(connection.index):
            self._backfill(gap)

    def _on_disconnected(self, connection: FeedConnection, reason: str) -> None:
        if connection.state is FeedState.CONNECTED:
            self.pipeline.outage_began(time.time_ns(), connection.index)
        connection.watch.ended()
        connection.reader = None
        if connection.draining is not None:  # the successor failed: the old connection ends with it
            connection.draining.close()
            connection.draining = None
        connection.reconnects += 1
        self.reconnects += 1
        self.m_reconnects.inc()
        connection.last_error = reason
        retry = connection.reconnect.ended(time.monotonic())
        limit = self.feed.max_connect_failures
        if limit and connection.reconnect.failures >= limit:
            self.exit(ABNORMAL, f"{connection.reconnect.failures} connects in a row failed, the last: {reason}")
            return
        self._retry(connection, retry, "feed_disconnected", reason)

    def _on_refused(self, connection: FeedConnection, reason: str) -> None:
        """The exchange refused the subscription: report the connection failed, try again only after the
        breaker's cool-down."""
        connection.close()
        self.generations += 1
        connection.generation = self.generations  # the refused connection's Disconnected is now stale
        connection.reader = connection.draining = None
        connection.watch.ended()
        connection.last_error = f"subscription refused: {reason}"
        self._retry(connection, connection.reconnect.rejected(time.monotonic()), "feed_subscription_refused", reason)

    def _retry(self, connection: FeedConnection, retry: Retry, what: str, reason: str) -> None:
        connection.state = retry.state
        self._connection_states()
        level = logging.ERROR if retry.state is FeedState.FAILED else logging.WARNING
        event(log, what, level, feed=self.feed.name, connection=connection.index, reason=reason, state=retry.state,
              failures=connection.reconnect.failures, reconnect_in_s=round(retry.delay_s, 3))
        scheduler().after(retry.delay_s, self.actor_ref, Reconnect(connection.generation))

    def _connection_states(self) -> None:
        counts = dict.fromkeys(metrics.CONNECTION_STATES, 0)
        for c in self.connections.values():
            counts[c.state] += 1
        for state, count in counts.items():
            metrics.FEED_CONNECTIONS.labels(self.feed.name, state).set(count)
        self.m_connected.set(int(bool(self.connections) and not self.paused and all(
            c.state is FeedState.CONNECTED for c in self.connections.values())))

    def _pause(self, reason: str) -> None:
        """Backpressure: stop reading rather than hold more; the outage is backfilled after resuming."""
        if self.paused:
            return
        event(log, "feed_paused", logging.WARNING, feed=self.feed.name, reason=reason)
        self.paused, self.pause_reason = True, reason
        self.may_backfill.clear()
        self.m_connected.set(0)
        now_ns = time.time_ns()
        for connection in self.connections.values():
            self.pipeline.outage_began(now_ns, connection.index)
            connection.close()
            self.generations += 1
            connection.generation = self.generations  # whatever the closed readers still say is about the past
            connection.reader = connection.draining = None
            connection.state = FeedState.PAUSED
            connection.watch.ended()
        self._connection_states()

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
        listing = self.listing
        if listing is not None and not listing.answered and not listing.is_alive():
            self.listing = None  # it died without a word (the thread hook logged how): read again later
            event(log, "listing_thread_died", logging.ERROR, feed=self.feed.name)
            self._on_listing_failed("the listing thread died", 0.0)
        self.outbox.deliver()
        if self.backfiller is not None and not self.paused:
            self._take_requests()
            self._retry_due_gaps()
        now = time.monotonic()
        if self.pipeline.live_candles:
            self._send_live_candles()
        pressure = self._backpressure()
        if self.paused:
            if not pressure:
                event(log, "feed_resumed", feed=self.feed.name, paused_for=self.pause_reason)
                self.paused, self.pause_reason = False, ""
                self.may_backfill.set()
                for connection in self.connections.values():
                    self._connect(connection)
            return
        if pressure:
            self._pause(pressure)
            return
        behind = self.sinks.behind()
        for connection in list(self.connections.values()):
            self._check_rate(connection, now)
            if connection.state is FeedState.CONNECTED and connection.reader is not None:
                connection.watch.writer(now, behind)
                if not behind:
                    self._watch(connection, now)

    def _watch(self, connection: FeedConnection, now: float) -> None:
        assert connection.reader is not None, "only a connection with a reader is watched"
        verdict = connection.watch.decide(now)
        if verdict is Verdict.STALE:
            silent_s = connection.watch.silent_s(now)
            event(log, "feed_stale", logging.WARNING, feed=self.feed.name, connection=connection.index,
                  silent_s=None if silent_s is None else round(silent_s, 1))
            connection.reader.close()
        elif verdict is Verdict.PONG_TIMEOUT:
            event(log, "feed_pong_timeout", logging.WARNING, feed=self.feed.name, connection=connection.index,
                  timeout_s=connection.watch.limits.pong_timeout_s)
            connection.reader.close()
        elif verdict is Verdict.ROLL:
            age_s = connection.watch.age_s(now)
            event(log, "feed_connection_rolled", feed=self.feed.name, connection=connection.index,
                  age_s=None if age_s is None else round(age_s, 1))
            self._roll(connection)
        elif verdict is Verdict.PING and connection.protocol.ping_message is not None:  # without: interval 0
            try:
                connection.reader.send(connection.protocol.ping_message)
            except Exception:  # noqa: BLE001 - a dead socket shows up as Disconnected from the reader
                pass

    def _check_rate(self, connection: FeedConnection, now: float) -> None:
        """Flag the feed while a connection talks faster than max_messages_per_s: a runaway or hostile peer."""
        change = connection.watch.rate_change(now, connection.messages)
        if change is None:
            return
        exceeded = change is RateChange.EXCEEDED
        self.m_rate_exceeded.set(int(any(c.watch.rate.flagged for c in self.connections.values())))
        event(log, "feed_rate_exceeded" if exceeded else "feed_rate_normal",
              logging.WARNING if exceeded else logging.INFO, feed=self.feed.name, connection=connection.index,
              messages_per_s=round(connection.watch.rate.rate, 1), max_messages_per_s=self.feed.max_messages_per_s)

    def _state(self) -> FeedState:
        if self.paused:
            return FeedState.PAUSED
        if not self.connections:
            return FeedState.FAILED if self.universe_error else FeedState.STARTING
        return max((c.state for c in self.connections.values()), key=_STATE_RANK.__getitem__)

    def status(self) -> FeedStatus:
        now = time.monotonic()
        connections = sorted(self.connections.values(), key=lambda c: c.index)
        breakers = [c.reconnect.breaker.state(now) for c in connections]
        statuses = [c.status(now, b) for c, b in zip(connections, breakers, strict=True)]
        ages = [s["last_message_age_s"] for s in statuses]
        errors = [c.last_error for c in connections if c.last_error]
        return {
            "exchange": self.feed.exchange,
            "state": self._state(),
            "url": connections[0].reconnect.url if connections else self.feed.url,
            "breaker": _worst_breaker(breakers),
            "connect_failures": max((c.reconnect.failures for c in connections), default=0),
            "messages": self.messages,
            "data_messages": self.data_messages,
            "last_message_age_s": None if not ages or None in ages else max(a for a in ages if a is not None),
            "reconnects": self.reconnects,
            "malformed": self.malformed,
            "duplicates": self.pipeline.dedup.dropped,
            "gaps": self.pipeline.gaps,
            "backfilled": self.pipeline.backfilled,
            "held_rows": self.outbox.held(),
            "live_candles": len(self.pipeline.live_candles),
            "paused": self.pause_reason,
            "last_error": scrub(self.universe_error or (errors[-1] if errors else "")),
            "rejected": dict(self.pipeline.rejected),
            "rate_exceeded": any(c.watch.rate.flagged for c in connections),
            "messages_per_s": round(sum(c.watch.rate.rate for c in connections), 1),
            "symbols": len(self.plan.symbols()),
            "universe_error": scrub(self.universe_error),
            "connections": statuses,
        }


def _worst_breaker(states: list[BreakerState]) -> BreakerState:
    for state in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        if state in states:
            return state
    return BreakerState.CLOSED


def _text(sample: bytes | str) -> str:
    return sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
