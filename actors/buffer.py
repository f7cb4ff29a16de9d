"""Buffer actor: one per table. Batches rows, flushes on size or time through its writer thread."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pykka

from config.schema import Config
from storage.batching import Batcher
from storage.writer import FlushOutcome, FlushWorker
from supervision.scheduler import scheduler
from supervision.supervisor import ChildContext, Supervised
from telemetry import metrics
from telemetry.logs import event

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
    outcome: FlushOutcome


class SinkDirectory:
    """table → the current buffer actor, updated as buffer actors (re)start; read by feed actors."""

    def __init__(self) -> None:
        self._refs: dict = {}

    def register(self, table: str, ref) -> None:
        self._refs[table] = ref

    def get(self, table: str):
        return self._refs.get(table)


class BufferActor(Supervised):
    kind = "buffer"

    def __init__(self, ctx: ChildContext | None, table: str, config: Config, directory: SinkDirectory):
        super().__init__(ctx)
        self.table, self.config, self.directory = table, config, directory
        sink = config.sink
        self.batcher = Batcher(sink.max_rows, sink.flush_interval_s)
        self.generation = 0
        self.in_flight = 0  # rows handed to the writer and not yet acknowledged
        self.rows_written = 0
        self.failures = 0
        self.rows_rejected = 0
        self.last_flush_at: float | None = None
        self.last_error = ""
        self.worker: FlushWorker | None = None
        self.idle = threading.Event()
        self.gauge = metrics.BUFFERED_ROWS.labels(table)

    def started(self) -> None:
        q, sink = self.config.questdb, self.config.sink
        self.worker = FlushWorker(self.table, q.conf, q.pg_dsn, q.table_prefix,
                                  self._report_outcome,
                                  sink.retry_min_s, sink.retry_max_s)
        self.worker.start()
        self.directory.register(self.table, self.actor_ref)

    def _report_outcome(self, outcome: FlushOutcome) -> None:
        """Runs in the writer thread. After the actor stopped, outcomes only need logging."""
        try:
            self.actor_ref.tell(FlushDone(outcome))
        except pykka.ActorDeadError:
            if outcome.ok:
                self.rows_written += len(outcome.rows)
                metrics.ROWS_WRITTEN.labels(self.table).inc(len(outcome.rows))
            else:
                event(log, "rows_not_written", logging.ERROR, table=self.table, rows=len(outcome.rows),
                      error=outcome.error[:300])

    def handle(self, message: object) -> object:
        match message:
            case RowBatch(rows):
                was_empty = not self.batcher
                self.batcher.add(rows, time.monotonic())
                if self.batcher.full():
                    self._flush()
                elif was_empty and self.batcher:
                    scheduler().after(self.config.sink.flush_interval_s, self.actor_ref, FlushDue(self.generation))
            case FlushDue(generation):
                if generation == self.generation:
                    self._flush()
            case FlushDone(outcome):
                self._flushed(outcome)
            case _:
                return super().handle(message)
        self.gauge.set(len(self.batcher) + self.in_flight)
        return None

    def _flush(self) -> None:
        """Hand the waiting rows to the writer; one flush in flight at a time, the rest keeps batching."""
        if self.in_flight or not self.batcher:
            return
        rows = self.batcher.take(self.config.sink.max_rows)
        self.generation += 1
        self.in_flight = len(rows)
        self.worker.submit(rows)
        if self.batcher:  # more than one batch waited: flush the rest as soon as this one is done
            scheduler().after(0, self.actor_ref, FlushDue(self.generation))

    def _flushed(self, outcome: FlushOutcome) -> None:
        self.in_flight = 0
        now = time.monotonic()
        if outcome.ok:
            n = len(outcome.rows)
            self.rows_written += n
            self.last_flush_at = now
            metrics.ROWS_WRITTEN.labels(self.table).inc(n)
            metrics.FLUSH_SECONDS.labels(self.table).observe(outcome.duration_s)
            lag = time.time_ns() - outcome.rows[-1].ts_ns
            metrics.INGEST_LAG.labels(self.table).observe(max(0.0, lag / 1e9))
        else:
            self.failures += 1
            self.last_error = outcome.error[:300]
            metrics.FLUSH_FAILURES.labels(self.table).inc()
            self.rows_rejected += len(outcome.rows)
            event(log, "flush_failed", logging.ERROR, table=self.table, rows=len(outcome.rows),
                  bad_data=outcome.bad_data, error=self.last_error, sample=repr(outcome.rows[0])[:300])
        if self.batcher.due(now):
            self._flush()
        elif self.batcher:
            deadline = self.batcher.deadline()
            scheduler().after(max(0.0, deadline - now), self.actor_ref, FlushDue(self.generation))
        if not self.batcher and not self.in_flight:
            self.idle.set()

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "table": self.table,
            "buffered_rows": len(self.batcher) + self.in_flight,
            "rows_written": self.rows_written,
            "last_flush_age_s": None if self.last_flush_at is None else round(now - self.last_flush_at, 3),
            "failures": self.failures,
            "rows_rejected": self.rows_rejected,
            "last_error": self.last_error,
        }

    def stopping(self) -> None:
        """Orderly stop: everything waiting is flushed before the actor ends (bounded by the deadline)."""
        deadline = time.monotonic() + max(1.0, self.config.service.shutdown_timeout_s - 2.0)
        while self.batcher:
            self.worker.submit(self.batcher.take(self.config.sink.max_rows))
        self.worker.stop(deadline)
        self.worker.join(max(0.0, deadline - time.monotonic()) + 1.0)
        event(log, "buffer_stopped", table=self.table, rows_written=self.rows_written)

    def stopping_after_crash(self) -> None:
        if self.worker is not None:
            self.worker.stop(time.monotonic() + 1.0)
