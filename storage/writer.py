"""The blocking half of a buffer actor: a thread that owns the questdb Sender, the spool and the dead letters.

The buffer actor hands it batches in order; for each it tells the actor what became of the rows.
- QuestDB takes the batch (one transactional HTTP request): written.
- QuestDB refuses it as bad data: the batch is split in halves until the refused rows stand alone;
  those go to the dead-letter file, the rest is written.
- QuestDB cannot be reached (transport error, 5xx): the circuit breaker counts a failure and the
  batch goes to the spool; while the spool holds anything, new batches queue behind it there, and
  the spool is replayed oldest first, with backoff, whenever the breaker allows a trial.
- Without a spool (disabled, or the client's own store-and-forward is configured), the batch is
  retried in place with backoff and the breaker, as long as the service runs.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import psycopg2
from questdb import QuestDBError, Sender

from marketfeed.config.schema import Config
from marketfeed.feeds.rows import Row
from marketfeed.storage.deadletter import DeadLetters
from marketfeed.storage.ledger import Mark
from marketfeed.storage.schema import TableMismatch, create_tables
from marketfeed.storage.spool import Spool, SpoolFull
from marketfeed.storage.tables import TABLES, TRADES, Table
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.telemetry.logs import event

log = logging.getLogger("marketfeed.sink")

GROUP_COMMIT_FACTOR = 4  # a request carries at most this many max_rows batches that queued up
QWP_ACK_TIMEOUT_MS = 10_000  # QWP without store-and-forward: a batch counts once the server acked it
_R = TypeVar("_R", bound=Row)  # the rows of one table


class Unavailable(Exception):
    """QuestDB could not take the batch now; retrying later can help."""


class BadData(Exception):
    """QuestDB refused the rows themselves; retrying cannot help."""


@dataclass(frozen=True)
class SinkReport:
    """What became of one batch the actor submitted (rows > 0), or of one replay attempt (rows == 0)."""

    rows: int  # rows of the submitted batch now off the actor's hands
    written: int = 0  # acknowledged by QuestDB (this batch, or replayed from the spool)
    spooled: int = 0
    dead_lettered: int = 0
    dropped: int = 0  # lost: the spool was full, or no spool and shutdown ran out of time
    duration_s: float = 0.0  # of the successful write
    last_ts_ns: int = 0  # event time of the newest row written, for the ingestion-lag metric
    error: str = ""
    breaker: str = "closed"
    spool_bytes: int = 0
    spool_rows: int = 0
    spool_full: bool = False
    marks: tuple[Mark, ...] = ()  # the newest row of each series of the batch, now stored or spooled (the ledger's)


def series_marks(table: Table, rows: list) -> tuple[Mark, ...]:
    """The newest row of each (exchange, symbol) of a batch: its highest trade id (trades) and event time.
    One pass in the writer thread per batch, off the feeds' path."""
    newest: dict[tuple[str, str], list[int]] = {}
    if table is TRADES:
        for ts, exchange, symbol, trade_id, _, _, _, _ in rows:  # unpacked: a fifth cheaper than attribute access
            held = newest.get((exchange, symbol))
            if held is None:
                newest[(exchange, symbol)] = [trade_id, ts]
            else:
                if trade_id > held[0]:
                    held[0] = trade_id
                if ts > held[1]:
                    held[1] = ts
        return tuple(Mark(table.name, exchange, symbol, last_id, ts) for (exchange, symbol), (last_id, ts)
                     in newest.items())
    for row in rows:
        held = newest.get((row.exchange, row.symbol))
        if held is None or row.ts_ns > held[0]:
            newest[(row.exchange, row.symbol)] = [row.ts_ns]
    return tuple(Mark(table.name, exchange, symbol, None, ts) for (exchange, symbol), (ts,) in newest.items())


def transport(conf: str) -> str:
    """The questdb client transport a config string selects: http, https, tcp, tcps, ws, wss, …"""
    return conf.split("::", 1)[0].strip().lower()


def is_qwp(conf: str) -> bool:
    return transport(conf) in ("ws", "wss", "qwpws", "qwpwss")


def conf_keys(conf: str) -> set[str]:
    return {part.split("=", 1)[0].strip() for part in conf.split("::", 1)[-1].split(";") if "=" in part}


def client_store_and_forward(conf: str) -> bool:
    """The client keeps unacknowledged batches on disk itself (QWP with sf_dir): our spool steps aside."""
    return is_qwp(conf) and "sf_dir" in conf_keys(conf)


def spool_enabled(config: Config) -> bool:
    return config.spool.enabled and not client_store_and_forward(config.questdb.conf)


def sender_conf(conf: str, decimals: bool = False) -> str:
    """The user's client config plus what this writer relies on (explicit flushes only; with `decimals`, the ILP
    version that carries DECIMAL values)."""
    keys = conf_keys(conf)
    conf = conf if conf.endswith(";") else conf + ";"
    if "auto_flush" not in keys:
        conf += "auto_flush=off;"
    if decimals and not is_qwp(conf) and "protocol_version" not in keys:
        conf += "protocol_version=3;"  # ILP v3 (QuestDB ≥ 9.2): decimals; TCP's default is v1
    if transport(conf) in ("http", "https"):
        if "protocol_version" not in keys and not decimals:
            conf += "protocol_version=2;"  # no version probe at connect: QuestDB may be down then
        if "retry_timeout" not in keys:
            conf += "retry_timeout=0;"  # retries are ours, with backoff and the breaker, so a stop can interrupt them
    return conf


def spooled_rows(table: Table, rows: list, decimals: bool) -> list:
    """Rows read back from the spool with their exact columns as this writer sends them: the spool keeps a Decimal as
    its text and a float as a float, whichever mode wrote them, and questdb.decimals may have changed since."""
    if not table.exact_columns:
        return rows
    def as_sent(value: str | float | Decimal) -> Decimal | float:
        if decimals:
            return Decimal(value if type(value) is str else repr(value))  # repr: the float's shortest text
        return float(value)  # a float, or a Decimal's text

    return [row._replace(**{c: as_sent(getattr(row, c)) for c in table.exact_columns}) for row in rows]


def close_sender(sender: Sender | None) -> None:
    """Drop a sender's connection, nothing flushed: the next write makes a fresh one."""
    if sender is not None:
        try:
            sender.close(flush=False)
        except QuestDBError:
            pass


def is_bad_data(exc: QuestDBError) -> bool:
    """Refused rows (HTTP 400 "invalid", parse and cast errors) as opposed to QuestDB being unavailable."""
    text = str(exc)
    return '"code":"invalid"' in text or "failed to parse" in text or getattr(exc.code, "name", "") in (
        "InvalidName", "InvalidUtf8", "InvalidTimestamp", "BadDataFrame", "ServerSchemaMismatch", "ServerParseError")


def isolate_bad_rows(rows: list[_R], write: Callable[[list[_R]], None]) -> list[tuple[_R, str]]:
    """Write `rows`; when refused as bad data, split in halves until each refused row stands alone.

    Returns the refused rows with their errors; everything else was written. Unavailable propagates:
    halves already written are written again on retry, which DEDUP keys make harmless.
    """
    try:
        write(rows)
        return []
    except BadData as exc:
        if len(rows) == 1:
            return [(rows[0], str(exc))]
        middle = len(rows) // 2
        return isolate_bad_rows(rows[:middle], write) + isolate_bad_rows(rows[middle:], write)


class FlushWorker(threading.Thread):
    def __init__(self, table: str, config: Config, report: Callable[[SinkReport], None]):
        q, sink, spool = config.questdb, config.sink, config.spool
        self.table = TABLES[table]
        self.name_in_db = self.table.name_in_db(q.table_prefix)
        super().__init__(name=f"flush-{self.name_in_db}", daemon=True)
        self.conf, self.pg_dsn, self.prefix = sender_conf(q.conf, q.decimals), q.pg_dsn, q.table_prefix
        self.ohlcv_refresh, self.decimals = q.ohlcv_refresh, q.decimals
        self.qwp, self.client_sf = is_qwp(q.conf), client_store_and_forward(q.conf)
        self.report = report
        self.backoff = Backoff(sink.retry_min_s, sink.retry_max_s)
        self.breaker = CircuitBreaker(sink.breaker_failures, sink.breaker_reset_s)
        self.dead_letters = DeadLetters(sink.dead_letter_dir, self.name_in_db)
        self.spool = (Spool(f"{spool.dir}/{self.name_in_db}", spool.max_bytes, spool.fsync == "batch")
                      if spool_enabled(config) else None)
        self.drop_oldest = spool.on_full == "drop_oldest"
        self.spool_full = False
        self.batches: queue.Queue[tuple[list, bool] | None] = queue.Queue()
        self.held: list[tuple[list, bool] | None] = []  # taken from the queue while coalescing: next in line
        self.max_request_rows = GROUP_COMMIT_FACTOR * sink.max_rows
        self.stopping = threading.Event()
        self.give_up_at: float | None = None  # set on shutdown: in-place retries end at this time
        self.next_trial = 0.0  # monotonic time of the next spool replay attempt
        self.tables_ready = False
        self.sender: Sender | None = None

    # --- the actor's side
    def submit(self, rows: list, overflow: bool = False) -> None:
        """Queue a batch; `overflow`: the actor's memory passed its high-water mark, spool it if we can."""
        self.batches.put((rows, overflow))

    def stop(self, deadline: float) -> None:
        """Finish what is queued (written or spooled), retrying in place until `deadline` at the latest."""
        self.give_up_at = deadline
        self.batches.put(None)
        self.stopping.set()

    # --- the thread
    def run(self) -> None:
        try:
            while True:
                wait = self._replay_wait()
                try:  # new batches first: they join the spool's tail, so memory stays bounded during a replay
                    item = self._next_batch(wait)
                except queue.Empty:
                    if wait == 0.0 and self.spool is not None:  # 0.0: the spool holds a batch to replay now
                        self._replay_oldest(self.spool)
                    continue
                if item is None:
                    break
                self._accept(*self._coalesce(*item))
        finally:
            self._close_sender()

    def _next_batch(self, wait: float | None) -> tuple[list, bool] | None:
        if self.held:
            return self.held.pop()
        return self.batches.get_nowait() if wait == 0.0 else self.batches.get(timeout=wait)

    def _coalesce(self, rows: list, overflow: bool) -> tuple[list, bool]:
        """Group commit: batches that queued behind this one while the last request ran join it.

        QuestDB's cost is mostly per transaction, not per row: when the writer falls behind, fewer and
        larger requests let it catch up instead of spiralling into the spool. Idle, nothing queues."""
        if overflow:
            return rows, overflow
        while len(rows) < self.max_request_rows:
            try:
                item = self.batches.get_nowait()
            except queue.Empty:
                break
            if item is None or item[1]:  # the stop, or a batch for the spool: next in line, on its own
                self.held.append(item)
                break
            rows.extend(item[0])  # the actor gave up its lists
        return rows, overflow

    def _replay_wait(self) -> float | None:
        """0: replay now; seconds until the next replay trial; None: nothing to replay."""
        if self.spool is None or not len(self.spool) or self.stopping.is_set():
            return None
        now = time.monotonic()
        return max(self.next_trial - now, self.breaker.seconds_until_trial(now), 0.0)

    def _accept(self, rows: list, overflow: bool) -> None:
        if self.spool is not None and (len(self.spool) or overflow or not self.breaker.allow(time.monotonic())):
            report = SinkReport(len(rows), **self._to_spool(self.spool, rows))  # behind what waits: order is kept
        elif self.spool is None:
            report = self._write_retrying(rows)
        else:
            try:
                report = SinkReport(len(rows), **self._write(rows))
            except Unavailable as exc:
                self._failed(exc)
                report = SinkReport(len(rows), error=str(exc)[:300], **self._to_spool(self.spool, rows))
        if not report.dropped:  # written or spooled: durable, so a restart may start after these rows
            report = dataclasses.replace(report, marks=series_marks(self.table, rows))
        self._report(report)

    def _replay_oldest(self, spool: Spool) -> None:
        rows = spooled_rows(self.table, spool.oldest(self.table.row_type), self.decimals)
        try:
            outcome = self._write(rows)
        except Unavailable as exc:
            self._failed(exc)
            self.next_trial = time.monotonic() + self.backoff.next_delay()
            self._report(SinkReport(0, error=str(exc)[:300]))
            return
        spool.remove_oldest()
        self.spool_full = False
        self._report(SinkReport(0, **outcome))

    def _write_retrying(self, rows: list) -> SinkReport:
        """No spool: keep the batch and retry in place until it lands or shutdown runs out of time."""
        while True:
            try:
                return SinkReport(len(rows), **self._write(rows))
            except Unavailable as exc:
                self._failed(exc)
                now = time.monotonic()
                delay = max(self.backoff.next_delay(), self.breaker.seconds_until_trial(now))
                if self.give_up_at is not None and now + delay > self.give_up_at:
                    return SinkReport(len(rows), dropped=len(rows), error=str(exc)[:300])
                self._report(SinkReport(0, error=str(exc)[:300]))
                self.stopping.wait(delay) if self.give_up_at is None else time.sleep(delay)

    def _failed(self, exc: Unavailable) -> None:
        self.breaker.failure(time.monotonic())
        self._close_sender()  # a fresh connection next time
        event(log, "flush_failed", logging.WARNING, table=self.name_in_db, error=str(exc)[:300],
              breaker=self.breaker.state(time.monotonic()), consecutive_failures=self.breaker.failures)

    def _to_spool(self, spool: Spool, rows: list) -> dict:
        dropped = 0
        while True:
            try:
                spool.append(rows)
                return {"spooled": len(rows), "dropped": dropped}
            except SpoolFull as exc:
                self.spool_full = True
                if not self.drop_oldest or not len(spool):
                    event(log, "spool_full", logging.CRITICAL, table=self.name_in_db, dropped_rows=len(rows),
                          policy="pause_feeds" if not self.drop_oldest else "drop_oldest", error=str(exc))
                    return {"dropped": dropped + len(rows)}
                removed = spool.remove_oldest()
                dropped += removed
                event(log, "spool_full", logging.CRITICAL, table=self.name_in_db, dropped_rows=removed,
                      policy="drop_oldest")

    # --- one write: encode, one transactional request, bad rows isolated
    def _write(self, rows: list) -> dict:
        """Written and dead-lettered row counts; raises Unavailable."""
        started = time.monotonic()
        rejected = isolate_bad_rows(rows, self._flush)
        if rejected:
            self.dead_letters.write(rejected)
            event(log, "rows_dead_lettered", logging.ERROR, table=self.name_in_db, rows=len(rejected),
                  file=str(self.dead_letters.path), error=rejected[0][1][:300], sample=repr(rejected[0][0])[:300])
        self.breaker.success()
        self.backoff.reset()
        written = len(rows) - len(rejected)
        return {"written": written, "dead_lettered": len(rejected), "duration_s": time.monotonic() - started,
                "last_ts_ns": rows[-1].ts_ns if written else 0}

    def _flush(self, rows: list) -> None:
        """One request carrying `rows`. Raises BadData or Unavailable."""
        try:
            sender = self._ready_sender()
            buffer = sender.new_buffer()
            refused = self.table.append(buffer, self.name_in_db, rows)
            if refused:  # the client itself refused to encode a row (bad timestamp, bad name…)
                raise BadData(refused[0])
            if not self.qwp:
                sender.flush(buffer, clear=False, transactional=True)
            else:
                fsn = sender.flush_and_keep_and_get_fsn(buffer)
                # With sf_dir the frame is on disk in the client's store: the client delivers it.
                if not self.client_sf and fsn is not None and not sender.await_acked_fsn(fsn, QWP_ACK_TIMEOUT_MS):
                    raise Unavailable(f"QWP: no ack within {QWP_ACK_TIMEOUT_MS} ms")
        except QuestDBError as exc:
            raise (BadData if is_bad_data(exc) else Unavailable)(str(exc)) from None
        except (psycopg2.Error, OSError, TableMismatch) as exc:  # a mismatch holds the rows until the table is fixed
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None

    def _ready_sender(self) -> Sender:
        """The connected sender, the table created first."""
        if not self.tables_ready:
            create_tables(self.pg_dsn, self.prefix, (self.table,), self.ohlcv_refresh, self.decimals)
            self.tables_ready = True
        if self.sender is None:
            sender = Sender.from_conf(self.conf)
            sender.establish()
            self.sender = sender
        return self.sender

    def _close_sender(self) -> None:
        sender, self.sender = self.sender, None
        close_sender(sender)

    def _report(self, report: SinkReport) -> None:
        spool = self.spool
        self.report(dataclasses.replace(
            report, breaker=self.breaker.state(time.monotonic()), spool_full=self.spool_full,
            spool_bytes=spool.bytes if spool is not None else 0, spool_rows=spool.rows if spool is not None else 0))
