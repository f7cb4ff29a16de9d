"""Buffer actor: one per table. Batches rows and hands each batch, in order, to its writer thread.

The writer (storage/writer.py) writes, spools or dead-letters every batch and reports back; this
actor keeps the counts, the flush timer and the high-water mark of rows in memory.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pykka

from marketfeed.actors.ledger import LedgerOutlet, MarkRows
from marketfeed.config.schema import Config
from marketfeed.storage.batching import Batcher
from marketfeed.storage.tables import TABLES
from marketfeed.storage.writer import FlushWorker, SinkReport, spool_enabled
from marketfeed.supervision.scheduler import scheduler
from marketfeed.supervision.supervisor import ChildContext, Supervised
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event
from marketfeed.telemetry.report import BreakerState, SinkStatus

log = logging.getLogger("marketfeed.buffer")


@dataclass(frozen=True)
class RowBatch:
    """Rows for this actor's table; the sender gives up ownership of the list."""

    rows: list


@dataclass(frozen=True)
class FlushDue:
    generation: int  # ignore timers of batches already flushed


@dataclass(frozen=True)
class FlushDone:
    report: SinkReport


class SinkDirectory:
    """table → the current buffer actor, updated as buffer actors (re)start; read by feed actors.

    `paused(table)`: the table's spool is full under on_full = "pause_feeds"; feeds should stop
    reading until it clears (the gap is then backfilled).
    `behind`: a writer holds more rows than it should (QuestDB is up but slower than the feeds): feed
    readers stop reading, connections open, until it catches up. TCP pushes back on the exchange and
    memory stays bounded without spooling rows that QuestDB is about to take.
    """

    def __init__(self) -> None:
        self._refs: dict = {}
        self._paused: set[str] = set()
        self._behind: set[str] = set()
        self._caught_up = threading.Condition()

    def register(self, table: str, ref) -> None:
        self._refs[table] = ref

    def get(self, table: str):
        return self._refs.get(table)

    def set_paused(self, table: str, paused: bool) -> None:
        (self._paused.add if paused else self._paused.discard)(table)

    def paused(self, table: str) -> bool:
        return table in self._paused

    def set_behind(self, table: str, behind: bool) -> None:
        with self._caught_up:
            (self._behind.add if behind else self._behind.discard)(table)
            if not self._behind:
                self._caught_up.notify_all()

    def behind(self) -> bool:
        return bool(self._behind)

    def wait_caught_up(self, timeout: float) -> bool:
        """Called by feed readers between batches; False: still behind after `timeout` seconds."""
        if not self._behind:
            return True
        with self._caught_up:
            return self._caught_up.wait_for(lambda: not self._behind, timeout)


class BufferActor(Supervised):
    kind = "buffer"

    def __init__(self, ctx: ChildContext | None, table: str, config: Config, directory: SinkDirectory,
                 ledger: LedgerOutlet | None = None):
        super().__init__(ctx)
        self.table, self.config, self.directory = table, config, directory
        self.ledger = ledger or LedgerOutlet()
        self.batcher = Batcher(*TABLES[table].flush_policy(config.sink))
        self.high_water = config.spool.high_water_rows
        self.behind = False  # rows waiting here and in the writer above half the high-water mark
        self.pause_on_full = config.spool.on_full == "pause_feeds"
        self.generation = 0
        self.in_flight = 0  # rows handed to the writer and not yet reported on
        self.rows_written = self.rows_spooled = self.rows_dead_lettered = self.rows_dropped = 0
        self.failures = 0
        self.last_flush_at: float | None = None
        self.last_error = ""
        self.sink = SinkReport(0)  # the writer's latest breaker and spool state
        self.worker: FlushWorker | None = None
        self.gauge = metrics.BUFFERED_ROWS.labels(table)

    def started(self) -> None:
        self.worker = FlushWorker(self.table, self.config, self._report)
        self.worker.start()
        self.directory.register(self.table, self.actor_ref)

    def _report(self, report: SinkReport) -> None:
        """Runs in the writer thread. After the actor stopped, reports are only counted and logged."""
        try:
            self.actor_ref.tell(FlushDone(report))
        except pykka.ActorDeadError:
            self._count(report)
            if report.dropped:
                event(log, "rows_not_written", logging.ERROR, table=self.table, rows=report.dropped,
                      error=report.error)

    def handle(self, message: object) -> object:
        match message:
            case RowBatch(rows):
                was_empty = not self.batcher
                self.batcher.add(rows, time.monotonic())
                if self.batcher.full():
                    self._flush(everything=False)
                elif was_empty and self.batcher:
                    scheduler().after(self.batcher.flush_interval_s, self.actor_ref, FlushDue(self.generation))
            case FlushDue(generation):
                if generation == self.generation:
                    self._flush(everything=True)
            case FlushDone(report):
                self._reported(report)
                if report.marks:
                    self.ledger.tell(MarkRows(report.marks))
            case _:
                return super().handle(message)
        waiting = len(self.batcher) + self.in_flight
        self.gauge.set(waiting)
        if (waiting > self.high_water // 2) != self.behind:
            self.behind = not self.behind
            self.directory.set_behind(self.table, self.behind)
        return None

    def _flush(self, everything: bool) -> None:
        """Hand full batches (and on time, the rest) to the writer, each one HTTP request."""
        assert self.worker is not None  # started() made it
        max_rows = self.batcher.max_rows
        while len(self.batcher) >= max_rows or (everything and self.batcher):
            rows = self.batcher.take(max_rows)
            # Above the high-water mark the writer spools instead of writing: memory stays bounded.
            self.worker.submit(rows, overflow=self.in_flight >= self.high_water)
            self.in_flight += len(rows)
        self.generation += 1
        deadline = self.batcher.deadline()
        if deadline is not None:  # rows still wait
            scheduler().after(max(0.0, deadline - time.monotonic()), self.actor_ref, FlushDue(self.generation))

    def _reported(self, report: SinkReport) -> None:
        self.in_flight -= report.rows
        self._count(report)
        if report.written:
            self.last_flush_at = time.monotonic()
            metrics.FLUSH_SECONDS.labels(self.table).observe(report.duration_s)
            metrics.INGEST_LAG.labels(self.table).observe(max(0.0, (time.time_ns() - report.last_ts_ns) / 1e9))
        if report.error:
            self.failures += 1
            self.last_error = report.error
            metrics.FLUSH_FAILURES.labels(self.table).inc()
        self.sink = report
        metrics.SPOOL_FULL.labels(self.table).set(int(report.spool_full))
        self.directory.set_paused(self.table, self.pause_on_full and report.spool_full)

    def _count(self, report: SinkReport) -> None:
        self.rows_written += report.written
        self.rows_spooled += report.spooled
        self.rows_dead_lettered += report.dead_lettered
        self.rows_dropped += report.dropped
        for metric, n in ((metrics.ROWS_WRITTEN, report.written), (metrics.ROWS_SPOOLED, report.spooled),
                          (metrics.ROWS_DEAD_LETTERED, report.dead_lettered), (metrics.ROWS_DROPPED, report.dropped)):
            if n:
                metric.labels(self.table).inc(n)

    def status(self) -> SinkStatus:
        now = time.monotonic()
        sink = self.sink
        return {
            "table": self.table,
            "buffered_rows": len(self.batcher) + self.in_flight,
            "rows_written": self.rows_written,
            "last_flush_age_s": None if self.last_flush_at is None else round(now - self.last_flush_at, 3),
            "failures": self.failures,
            "last_error": self.last_error,
            "breaker": BreakerState(sink.breaker),
            "spool": "on" if spool_enabled(self.config) else "off",
            "spool_bytes": sink.spool_bytes,
            "spool_rows": sink.spool_rows,
            "spool_full": sink.spool_full,
            "rows_spooled": self.rows_spooled,
            "rows_dead_lettered": self.rows_dead_lettered,
            "rows_dropped": self.rows_dropped,
            "behind": self.behind,
        }

    def stopping(self) -> None:
        """Orderly stop: every waiting row is written or spooled before the actor ends (within the deadline)."""
        assert self.worker is not None  # started() made it: a failed start never stops in order
        self.directory.set_behind(self.table, False)  # no reader waits for an actor that is gone
        deadline = time.monotonic() + max(1.0, self.config.service.shutdown_timeout_s - 2.0)
        while self.batcher:
            rows = self.batcher.take(self.batcher.max_rows)
            self.worker.submit(rows)
            self.in_flight += len(rows)
        self.worker.stop(deadline)
        self.worker.join(max(0.0, deadline - time.monotonic()) + 1.0)
        event(log, "buffer_stopped", table=self.table, rows_written=self.rows_written,
              rows_spooled=self.rows_spooled, spool_rows=self.worker.spool.rows if self.worker.spool else 0)

    def stopping_after_crash(self) -> None:
        self.directory.set_behind(self.table, False)
        if self.worker is not None:
            self.worker.stop(time.monotonic() + 1.0)
