"""Ledger actor: journals what the feeds and buffers must not forget. Its writer thread owns the journal file.

Buffers tell it the newest row of each series they stored (`MarkRows`, coalesced: journaled at most once a
second — a start point a little early only re-fetches rows DEDUP absorbs); feeds tell it the records of
their gaps (`LedgerRecords`: opened, failed, closed), journaled within 100 ms. The state it was loaded
with is read by the service at start, before QuestDB is asked anything.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pykka

from marketfeed.storage.ledger import Journal, Ledger, LedgerStats, Mark, Record
from marketfeed.supervision.supervisor import ChildContext, Supervised
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event

log = logging.getLogger("marketfeed.ledger")

RECORDS_LINGER_S = 0.1  # gap records wait at most this long for company before one write + fsync
MARKS_INTERVAL_S = 0.1  # marks are journaled at most this often (each flush brings new ones)
MAX_UNWRITTEN = 100_000  # records kept for the next write while the disk refuses them; then the oldest go


@dataclass(frozen=True)
class MarkRows:
    marks: tuple[Mark, ...]


@dataclass(frozen=True)
class LedgerRecords:
    records: tuple[Record, ...]
    done: tuple[str, ...] = ()  # request files (storage/ledger.py RequestBox) to remove once these are on disk


class LedgerOutlet:
    """The current ledger actor, for buffers and feeds; what is told while it restarts is lost, which only
    makes a restart start a little early (marks) or re-detect a gap (records)."""

    def __init__(self) -> None:
        self.ref: pykka.ActorRef[LedgerActor] | None = None

    def tell(self, message: MarkRows | LedgerRecords) -> None:
        ref = self.ref
        if ref is None:
            return
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            pass


class JournalWriter(threading.Thread):
    """Appends records in batches, fsynced; keeps a replica of the ledger for compaction and status."""

    def __init__(self, journal: Journal, ledger: Ledger):
        super().__init__(name="ledger-writer", daemon=True)
        self.journal, self.ledger = journal, ledger
        self.lock = threading.Lock()  # guards self.ledger against status() from the actor thread
        self.queue: queue.Queue[LedgerRecords | MarkRows | None] = queue.Queue()
        self.pending_marks: dict[tuple[str, str, str], Mark] = {}
        self.marks_due = 0.0
        self.failures = 0
        self.last_error = ""
        self.unwritten: list[Record] = []  # applied to the replica, not yet on disk: written ahead of the next batch
        self.done: list[str] = []  # request files whose records are (once unwritten is empty) on disk

    def stop(self) -> None:
        self.queue.put(None)

    def run(self) -> None:
        stopping = False
        while not stopping:
            records: list[Record] = []
            linger_until: float | None = None
            while True:  # gather: the first gap record waits RECORDS_LINGER_S for company; marks until due
                wake = [t for t in (linger_until, self.marks_due if self.pending_marks else None) if t is not None]
                try:
                    item = self.queue.get(timeout=max(0.0, min(wake) - time.monotonic()) if wake else None)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if isinstance(item, MarkRows):
                    for mark in item.marks:
                        self.pending_marks[(mark.table, mark.exchange, mark.symbol)] = mark
                else:
                    records += item.records
                    self.done += item.done
                    if linger_until is None:
                        linger_until = time.monotonic() + RECORDS_LINGER_S
            now = time.monotonic()
            if self.pending_marks and (stopping or now >= self.marks_due):
                with self.lock:
                    records += self.ledger.mark(self.pending_marks.values())
                self.pending_marks, self.marks_due = {}, now + MARKS_INTERVAL_S
            self._write(records)
            if self.done and not self.unwritten:
                for path in self.done:
                    Path(path).unlink(missing_ok=True)
                self.done = []

    def _write(self, records: list[Record]) -> None:
        with self.lock:
            for record in records:
                if record.get("op") != "mark":  # marks were applied by ledger.mark()
                    self.ledger.apply(record)
        batch = self.unwritten + records
        if not batch:
            return
        try:
            self.journal.append(batch)
            self.unwritten = []
            metrics.LEDGER_RECORDS.inc(len(batch))
            if self.journal.records_since_compact >= self.journal.compact_every:
                with self.lock:
                    self.journal.compact(self.ledger)
        except (OSError, ValueError, TypeError) as exc:  # counted, logged; the next batch writes these first
            self.unwritten = batch[-MAX_UNWRITTEN:]
            self.last_error = f"{type(exc).__name__}: {exc}"
            event(log, "ledger_write_failed", logging.ERROR, records=len(batch), error=self.last_error)
            metrics.LEDGER_WRITE_FAILURES.inc()
            self.failures += 1  # last: whoever sees the count also finds the log line

    def stats(self) -> LedgerStats:
        with self.lock:
            return self.ledger.stats(time.time_ns())


class LedgerActor(Supervised):
    kind = "ledger"

    def __init__(self, ctx: ChildContext | None, journal: Journal, ledger: Ledger, outlet: LedgerOutlet):
        super().__init__(ctx)
        self.outlet = outlet
        self.writer = JournalWriter(journal, ledger)

    def started(self) -> None:
        self.writer.start()
        self.outlet.ref = self.actor_ref

    def stopping(self) -> None:
        self.writer.stop()
        self.writer.join(5.0)

    def stopping_after_crash(self) -> None:
        self.writer.stop()

    def owned_threads(self) -> list[threading.Thread]:
        return [self.writer]

    def handle(self, message: object) -> object:
        match message:
            case MarkRows() | LedgerRecords():
                self.writer.queue.put(message)
            case _:
                return super().handle(message)
        return None

    def status(self) -> dict[str, object]:
        stats = self.writer.stats()
        metrics.GAPS_OPEN.set(stats.open_gaps)
        metrics.OLDEST_GAP_AGE.set(stats.oldest_open_age_s or 0.0)
        return {"open_gaps": stats.open_gaps, "oldest_open_gap_age_s": stats.oldest_open_age_s,
                "closed_gaps": dict(stats.closed), "write_failures": self.writer.failures,
                "last_error": self.writer.last_error}
