"""The blocking half of a buffer actor: a thread that owns the questdb Sender and flushes batches.

The buffer actor hands it one batch at a time and is told the outcome; retryable failures are
retried here with backoff (the actor's inbox stays free), bad data is reported, never retried.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2
from questdb import QuestDBError, Sender

from storage.schema import APPEND, create_tables, table_name
from supervision.backoff import Backoff
from telemetry.logs import event

log = logging.getLogger("marketfeed.sink")


@dataclass(frozen=True)
class FlushOutcome:
    rows: list
    ok: bool
    duration_s: float
    attempts: int
    error: str = ""
    bad_data: bool = False  # QuestDB rejected the rows themselves: retrying cannot help


def sender_conf(conf: str) -> str:
    """The user's client config plus what this writer relies on (explicit flushes only)."""
    conf = conf if conf.endswith(";") else conf + ";"
    if "auto_flush=" not in conf:
        conf += "auto_flush=off;"
    if "protocol_version=" not in conf and conf.startswith("http"):
        conf += "protocol_version=2;"  # no version probe at connect: QuestDB may be down then
    if "retry_timeout=" not in conf:
        conf += "retry_timeout=0;"  # retries are ours, with backoff, so a stop can interrupt them
    return conf


def is_bad_data(exc: QuestDBError) -> bool:
    text = str(exc)
    return '"code":"invalid"' in text or "failed to parse" in text or getattr(exc.code, "name", "") in (
        "InvalidName", "InvalidUtf8", "InvalidTimestamp", "BadDataFrame", "ServerSchemaMismatch", "ServerParseError")


class FlushWorker(threading.Thread):
    def __init__(
        self,
        table: str,
        conf: str,
        pg_dsn: str,
        prefix: str,
        report: Callable[[FlushOutcome], None],
        retry_min_s: float,
        retry_max_s: float,
    ):
        super().__init__(name=f"flush-{prefix}{table}", daemon=True)
        self.table, self.name_in_db = table, table_name(prefix, table)
        self.conf, self.pg_dsn, self.prefix = sender_conf(conf), pg_dsn, prefix
        self.report = report
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self.batches: queue.Queue[list | None] = queue.Queue()
        self.stopping = threading.Event()
        self.give_up_at: float | None = None  # set on shutdown: retries end at this time
        self.tables_ready = False
        self.sender: Sender | None = None

    def submit(self, rows: list) -> None:
        self.batches.put(rows)

    def stop(self, deadline: float) -> None:
        """Finish what is queued, retrying until `deadline` (monotonic) at the latest."""
        self.give_up_at = deadline
        self.batches.put(None)
        self.stopping.set()

    def run(self) -> None:
        try:
            while (rows := self.batches.get()) is not None:
                self.report(self._flush(rows))
        finally:
            if self.sender is not None:
                self.sender.close()

    def _flush(self, rows: list) -> FlushOutcome:
        started, attempts = time.monotonic(), 0
        while True:
            attempts += 1
            try:
                self._ensure_ready()
                buffer = self.sender.new_buffer()
                APPEND[self.table](buffer, self.name_in_db, rows)
                self.sender.flush(buffer, clear=False, transactional=True)
                self.backoff.reset()
                return FlushOutcome(rows, True, time.monotonic() - started, attempts)
            except QuestDBError as exc:
                if is_bad_data(exc):
                    return FlushOutcome(rows, False, time.monotonic() - started, attempts, str(exc), bad_data=True)
                error = str(exc)
            except (psycopg2.Error, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            delay = self.backoff.next_delay()
            event(log, "flush_retry", logging.WARNING, table=self.name_in_db, attempt=attempts,
                  retry_in_s=round(delay, 3), error=error[:300])
            if self.give_up_at is not None and time.monotonic() + delay > self.give_up_at:
                return FlushOutcome(rows, False, time.monotonic() - started, attempts, error)
            self.stopping.wait(delay) if self.give_up_at is None else time.sleep(delay)

    def _ensure_ready(self) -> None:
        if not self.tables_ready:
            create_tables(self.pg_dsn, self.prefix, (self.table,))
            self.tables_ready = True
        if self.sender is None:
            sender = Sender.from_conf(self.conf)
            sender.establish()
            self.sender = sender
