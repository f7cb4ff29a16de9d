"""`marketfeed backfill -c FILE --feed NAME [--symbol S …] --from T [--to T] [--channel C …] [--json]`: a historical
range of one feed fetched over the exchange's REST API into QuestDB.

The same REST client (host policy: Retry-After, bans, weights), the same protocol requests and parsers and the
same validation as the service's backfill. The job is journaled like the service's gaps, in a ledger of its own
(<ledger.dir>/backfill/<job>/, so the service's journal keeps one writer): each page is written to QuestDB, then
what is left of its gap is journaled. Killed or interrupted, the same command resumes where the journal says;
a page written twice is absorbed by DEDUP, so it is safe to run while the service runs.

Exit 0: every gap filled; 1: a gap the exchange cannot serve (closed unrecoverable) or one left open after
repeated failures (run the command again to resume); 2: bad arguments or config; 130: interrupted (resumable).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import orjson
from questdb import QuestDBError, Sender
from tqdm import tqdm

from marketfeed.actors.rest_client import Cancelled, RestLimits, fetch
from marketfeed.config.schema import Config, FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.base import BeyondRetention, FeedProtocol, Gap, MalformedFrame
from marketfeed.feeds.rest_policy import VerdictKind
from marketfeed.feeds.validation import RowValidator, Subscribed
from marketfeed.storage.ledger import CloseReason, Journal, Ledger, OpenGap, Origin
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import Table
from marketfeed.storage.verify import parse_since
from marketfeed.storage.writer import close_sender, sender_conf
from marketfeed.supervision.backoff import Backoff
from marketfeed.telemetry.logs import scrub

EXIT_DONE, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PAGE_ATTEMPTS = 8  # failed tries of one page (each already retried by the REST client) before the job stops


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What was asked: the job's identity (its journal directory) leaves out an open end (`--to` now)."""

    feed: FeedConfig
    since_ns: int
    until_ns: int  # 0: until now, fixed when the job first starts
    job_dir: Path

    @classmethod
    def of(cls, config: Config, feed: FeedConfig, since_ns: int, until_ns: int) -> JobSpec:
        identity = orjson.dumps([feed.name, feed.exchange, sorted(feed.symbols), sorted(feed.channels), since_ns,
                                 until_ns])
        digest = hashlib.sha256(identity).hexdigest()[:16]
        return cls(feed, since_ns, until_ns, Path(config.ledger.dir) / "backfill" / f"{feed.name}-{digest}")


class Store:
    """Rows into QuestDB, one transactional request per page; a table is created the first time it is written."""

    def __init__(self, config: Config):
        self.q = config.questdb
        self.created: set[str] = set()
        self.sender: Sender | None = None

    def write(self, table: Table, rows: list) -> None:
        """Raises QuestDBError (or psycopg2.Error/OSError creating the table) when QuestDB cannot take them."""
        if table.name not in self.created:
            create_tables(self.q.pg_dsn, self.q.table_prefix, (table,), self.q.ohlcv_refresh, self.q.decimals)
            self.created.add(table.name)
        if self.sender is None:
            sender = Sender.from_conf(sender_conf(self.q.conf, self.q.decimals))
            sender.establish()
            self.sender = sender
        buffer = self.sender.new_buffer()
        refused = table.append(buffer, table.name_in_db(self.q.table_prefix), rows)
        if refused:
            raise ValueError(f"QuestDB client refused a row: {refused[0]}")
        try:
            self.sender.flush(buffer, transactional=True)
        except QuestDBError:
            self.close()  # a fresh connection for the next try
            raise

    def close(self) -> None:
        sender, self.sender = self.sender, None
        close_sender(sender)


def coverage(gap: Gap, first_ts_ns: int, last_ts_ns: int) -> float:
    """How much of a time window the rows fetched so far span (pages run oldest or newest first)."""
    if not gap.since_ns or not gap.until_ns or gap.until_ns <= gap.since_ns or not last_ts_ns:
        return 0.0
    return max(0.0, min(1.0, (last_ts_ns - first_ts_ns) / (gap.until_ns - gap.since_ns)))


class Progress:
    """A bar on a terminal (stderr), else one JSON line per page and per gap on stdout."""

    def __init__(self, as_json: bool, stream: TextIO = sys.stdout):
        self.as_json, self.stream = as_json, stream
        self.bar: tqdm | None = None
        self.shown = 0.0

    def start(self, gaps: int, resumed: bool) -> None:
        if self.as_json:
            self._line({"event": "start", "gaps": gaps, "resumed": resumed})
            return
        self.bar = tqdm(total=gaps, unit="gap", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total} gaps [{elapsed}<{remaining}{postfix}]")

    def page(self, gap: OpenGap, rows: int, total_rows: int, done: float) -> None:
        if self.as_json:
            self._line({"event": "page", "gap": gap.key, "table": gap.gap.table.name, "stream": gap.gap.stream
                        or gap.gap.symbol, "rows": rows, "rows_total": total_rows, "progress": round(done, 4)})
        elif self.bar is not None:
            self.bar.update(done - self.shown)
            self.shown = done
            self.bar.set_postfix_str(f"{gap.gap.stream or gap.gap.symbol}, {total_rows} rows", refresh=False)

    def gap_done(self, gap: OpenGap, outcome: str, detail: str, gaps_done: int) -> None:
        if self.as_json:
            self._line({"event": "gap_done", "gap": gap.key, "outcome": outcome, "detail": detail})
        elif self.bar is not None:
            self.bar.update(gaps_done - self.shown)
            self.shown = gaps_done
            if outcome != "filled":
                self.bar.write(f"{gap.gap.stream or gap.gap.symbol} ({gap.gap.table.name}): {outcome}: {detail}")

    def end(self, summary: dict[str, object]) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.as_json:
            self._line({"event": "done", **summary})
        else:
            print(", ".join(f"{k} {v}" for k, v in summary.items()), file=sys.stderr)

    def _line(self, body: dict[str, object]) -> None:
        self.stream.write(orjson.dumps(body).decode() + "\n")
        self.stream.flush()


class BackfillJob:
    """Runs one job to its end: every gap filled, given up on (unrecoverable), or left open for a later run."""

    def __init__(self, config: Config, spec: JobSpec, progress: Progress, cancel: threading.Event,
                 clock: Callable[[], int] = time.time_ns):
        self.config, self.spec, self.progress, self.cancel, self.clock = config, spec, progress, cancel, clock
        self.protocol: FeedProtocol = registry.exchange(spec.feed.exchange).protocol(spec.feed)
        self.limits = RestLimits.of(spec.feed)
        self.validator = RowValidator(spec.feed.symbols, spec.feed.max_future_skew_s, spec.feed.max_string_len,
                                      Subscribed.of(self.protocol))
        self.journal = Journal(spec.job_dir)
        self.store = Store(config)
        self.rows = self.rejected = 0
        self.outcomes: dict[str, int] = {}

    def run(self) -> int:
        ledger, resumed = self._ledger()
        gaps = sorted(ledger.open.values(), key=lambda g: (g.gap.table.name, g.gap.stream, g.gap.symbol))
        self.progress.start(len(gaps), resumed)
        try:
            for n, opened in enumerate(gaps):
                outcome, detail = self._fill(ledger, opened, n)
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                self.progress.gap_done(opened, outcome, detail, n + 1)
        except Cancelled:
            self.progress.end(self._summary("interrupted: run the same command again to resume"))
            return EXIT_INTERRUPTED
        finally:
            self.store.close()
        complete = set(self.outcomes) <= {CloseReason.FILLED.value}
        self.progress.end(self._summary("done" if complete else "incomplete"))
        return EXIT_DONE if complete else EXIT_INCOMPLETE

    def _summary(self, state: str) -> dict[str, object]:
        return {"state": state, "rows": self.rows, "rejected_rows": self.rejected, **self.outcomes,
                "journal": str(self.spec.job_dir)}

    def _ledger(self) -> tuple[Ledger, bool]:
        """The job's journal: its open gaps to resume, or a new job (a finished one is started afresh)."""
        ledger, _torn = self.journal.load()
        if ledger.open:
            return ledger, True
        if ledger.closed_counts:
            shutil.rmtree(self.spec.job_dir)
            self.journal = Journal(self.spec.job_dir)
            ledger, _torn = self.journal.load()
        until_ns = self.spec.until_ns or self.clock()
        records = []
        for gap in self.protocol.history_gaps(self.spec.feed.symbols, self.spec.since_ns, until_ns):
            records += ledger.open_gap(self.spec.feed.name, gap, Origin.OPERATOR, self.clock())[1]
        self.journal.append(records)
        return ledger, False

    def _fill(self, ledger: Ledger, opened: OpenGap, done_before: int) -> tuple[str, str]:
        """One gap, page by page: each page stored, then journaled as fetched."""
        page: Gap | None = opened.gap
        first_ts = last_ts = 0
        backoff = Backoff(1.0, 60.0)
        failures = 0
        while page is not None:
            if self.cancel.is_set():
                raise Cancelled
            error, wait_s, lost = "", 0.0, ""
            rows: list = []
            next_page: Gap | None = None
            try:
                request = self.protocol.backfill_request(page)
                if request is None:
                    return self._close(ledger, opened, CloseReason.UNRECOVERABLE, "exchange has no backfill")
                result = fetch(request, self.protocol, self.limits, self.cancel)
                if result.verdict.kind is VerdictKind.FAILED:
                    return self._close(ledger, opened, CloseReason.UNRECOVERABLE, scrub(result.verdict.reason))
                if result.verdict.kind is not VerdictKind.OK:
                    error, wait_s = scrub(result.verdict.reason), result.retry_after_s
                else:
                    rows, next_page = self.protocol.parse_backfill(page, result.body, self.clock())
            except BeyondRetention as exc:
                rows, lost = exc.rows, scrub(exc.reason)
            except MalformedFrame as exc:
                error = scrub(f"MalformedFrame: {exc.reason}")
            if not error:
                error = self._store(opened.gap.table, rows)
            if error:
                failures += 1
                if failures >= PAGE_ATTEMPTS:
                    self.journal.append(ledger.failed(opened.key, error, self.clock(), left=page))
                    return "left_open", error
                if self.cancel.wait(max(wait_s, backoff.next_delay())):
                    raise Cancelled
                continue
            failures = 0
            backoff.reset()
            if rows:
                stamps = [row.ts_ns for row in rows]
                first_ts = min(first_ts or stamps[0], *stamps)
                last_ts = max(last_ts, *stamps)
            if lost:
                return self._close(ledger, opened, CloseReason.UNRECOVERABLE, lost)
            if next_page is None:
                return self._close(ledger, opened, CloseReason.FILLED, f"{self.rows} rows")
            self.journal.append(ledger.advance(opened.key, next_page))
            self.progress.page(opened, len(rows), self.rows,
                               done_before + coverage(opened.gap, first_ts, last_ts))
            page = next_page
        return self._close(ledger, opened, CloseReason.FILLED, "")

    def _store(self, table: Table, rows: list) -> str:
        """Validated rows into QuestDB; the error that kept them out, if any."""
        good, rejected = self.validator.split(rows, self.clock())
        self.rejected += len(rejected)
        if not good:
            return ""
        try:
            self.store.write(table, good)
        except Exception as exc:  # noqa: BLE001 - QuestDB, psycopg2 or the network: this page is tried again
            return scrub(f"QuestDB: {type(exc).__name__}: {exc}")[:300]
        self.rows += len(good)
        return ""

    def _close(self, ledger: Ledger, opened: OpenGap, reason: CloseReason, detail: str) -> tuple[str, str]:
        self.journal.append(ledger.close(opened.key, reason, detail, self.clock()))
        return reason.value, detail


def backfill(config: Config, feed_name: str, symbols: list[str], since: str, until: str | None,
             channels: list[str], as_json: bool) -> int:
    feed = next((f for f in config.feeds if f.name == feed_name), None)
    if feed is None:
        print(f"backfill: no feed named {feed_name!r} in {config.source} "
              f"(feeds: {', '.join(f.name for f in config.feeds)})", file=sys.stderr)
        return EXIT_USAGE
    unknown = [c for c in channels if c not in feed.channels]
    if unknown:
        print(f"backfill: feed {feed_name!r} has no channel {', '.join(unknown)} "
              f"(channels: {', '.join(feed.channels)})", file=sys.stderr)
        return EXIT_USAGE
    try:
        since_ns = _ns(since)
        until_ns = _ns(until) if until else 0
    except ValueError as exc:
        print(f"backfill: {exc}".replace("--since", "--from"), file=sys.stderr)
        return EXIT_USAGE
    if until_ns and until_ns <= since_ns:
        print("backfill: --to must be later than --from", file=sys.stderr)
        return EXIT_USAGE
    feed = dataclasses.replace(feed, symbols=tuple(symbols) or feed.symbols, channels=tuple(channels) or feed.channels)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    progress = Progress(as_json or not sys.stderr.isatty())
    job = BackfillJob(config, JobSpec.of(config, feed, since_ns, until_ns), progress, cancel)
    try:
        return job.run()
    except KeyboardInterrupt:  # Ctrl-C outside a wait: the journal holds every page stored so far
        print("backfill: interrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ns(text: str) -> int:
    t = parse_since(text)
    return int(t.timestamp() * 1e6) * 1000
