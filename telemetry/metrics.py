"""Every Prometheus metric of the service, in one place (names per DESIGN.md §7)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("marketfeed_messages_received_total", "Frames received from exchanges", ["feed"])
MALFORMED = Counter("marketfeed_malformed_frames_total", "Frames that could not be parsed", ["feed"])
RECONNECTS = Counter("marketfeed_reconnects_total", "WebSocket reconnects", ["feed"])
DUPLICATES = Counter("marketfeed_duplicates_dropped_total", "Rows dropped as duplicates", ["feed"])
GAPS = Counter("marketfeed_gaps_detected_total", "Trade id gaps detected", ["feed"])
BACKFILLED = Counter("marketfeed_rows_backfilled_total", "Rows fetched over REST backfill", ["feed"])
FEED_CONNECTED = Gauge("marketfeed_feed_connected", "1 while every WebSocket of the feed is open", ["feed"])
# A whole-market feed runs several connections: counted by state, never labelled per connection or symbol, so the
# series stay as many as feeds × states however large the universe grows.
FEED_CONNECTIONS = Gauge("marketfeed_feed_connections", "The feed's WebSocket connections, by state", ["feed", "state"])
FEED_SYMBOLS = Gauge("marketfeed_feed_symbols", "Symbols the feed carries (its resolved universe)", ["feed"])
# telemetry.report.FeedState (metrics stays free of the report module)
CONNECTION_STATES = ("starting", "connecting", "connected", "retrying", "failed", "paused")
ROWS_REJECTED = Counter("marketfeed_rows_rejected_total", "Rows refused by validation before the buffer",
                        ["feed", "reason"])
FEED_RATE_EXCEEDED = Gauge("marketfeed_feed_rate_exceeded", "1 while a feed receives more than its max_messages_per_s",
                           ["feed"])

ROWS_WRITTEN = Counter("marketfeed_rows_written_total", "Rows acknowledged by QuestDB", ["table"])
FLUSH_FAILURES = Counter("marketfeed_flush_failures_total", "Failed flushes to QuestDB", ["table"])
FLUSH_SECONDS = Histogram(
    "marketfeed_flush_duration_seconds",
    "Time of one flush to QuestDB",
    ["table"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGEST_LAG = Histogram(
    "marketfeed_ingestion_lag_seconds",
    "From a row's timestamp to QuestDB acknowledgement: a trade's event time; a candle's open time, so candles "
    "lag by their interval and more",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUFFERED_ROWS = Gauge("marketfeed_buffered_rows", "Rows waiting in a buffer actor", ["table"])
ROWS_SPOOLED = Counter("marketfeed_rows_spooled_total", "Rows written to the on-disk spool", ["table"])
ROWS_DEAD_LETTERED = Counter("marketfeed_rows_dead_lettered_total",
                             "Rows QuestDB refused, kept in the dead-letter file", ["table"])
ROWS_DROPPED = Counter("marketfeed_rows_dropped_total", "Rows lost because the spool was full (or absent at shutdown)",
                       ["table"])
SPOOL_FULL = Gauge("marketfeed_spool_full", "1 while a table's spool is full", ["table"])

# actor: a feed by its configured name, a buffer by its table, others by their child id (telemetry.names);
# supervisor: the one that restarted it, so a feed and a table of one name stay two series.
ACTOR_RESTARTS = Counter("marketfeed_actor_restarts_total", "Actor restarts by a supervisor", ["supervisor", "actor"])
SUPERVISOR_GIVEUPS = Counter("marketfeed_supervisor_giveups_total", "Supervisors that exceeded restart intensity")
LEAKED_THREADS = Gauge("marketfeed_leaked_threads", "Threads of abandoned (hung) actors still alive")

SPOOL_BYTES = Gauge("marketfeed_spool_bytes", "Bytes of rows spooled to disk while QuestDB is unreachable", ["table"])
BREAKER_STATE = Gauge("marketfeed_breaker_state", "Sink circuit breaker: 0 closed, 1 half-open, 2 open", ["table"])
HEALTH_STATUS = Gauge("marketfeed_health_status", "Overall health: 0 ok, 1 degraded, 2 critical")
HEALTH_ALERTS = Gauge("marketfeed_health_alerts", "Active health alerts by cause", ["cause"])

# The recovery ledger (actors/ledger.py): gaps survive restarts until filled or given up on.
GAPS_OPEN = Gauge("marketfeed_gaps_open", "Gaps waiting to be backfilled (the ledger's open gaps)")
OLDEST_GAP_AGE = Gauge("marketfeed_oldest_gap_age_seconds", "Age of the oldest open gap (0: none)")
GAPS_CLOSED = Counter("marketfeed_gaps_closed_total", "Gaps closed, by reason (filled, unrecoverable, expired)",
                      ["feed", "reason"])
LEDGER_RECORDS = Counter("marketfeed_ledger_records_total", "Records appended to the recovery ledger's journal")
LEDGER_WRITE_FAILURES = Counter("marketfeed_ledger_write_failures_total", "Failed appends to the ledger's journal")

BUILD_INFO = Gauge("marketfeed_build_info", "Always 1; the running marketfeed's version, and which instance it is "
                   "(service.instance_id, instance_group, shard), as labels", ["version", "instance", "group", "shard"])

PER_FEED = (MESSAGES, MALFORMED, RECONNECTS, DUPLICATES, GAPS, BACKFILLED, FEED_CONNECTED, FEED_RATE_EXCEEDED,
            FEED_SYMBOLS)
PER_TABLE = (ROWS_WRITTEN, FLUSH_FAILURES, FLUSH_SECONDS, INGEST_LAG, BUFFERED_ROWS, ROWS_SPOOLED, ROWS_DEAD_LETTERED,
             ROWS_DROPPED, SPOOL_FULL, SPOOL_BYTES, BREAKER_STATE)
GAP_CLOSE_REASONS = ("filled", "unrecoverable", "expired")  # storage.ledger.CloseReason


def package_version() -> str:
    try:
        return version("marketfeed")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def initialise(feeds: Iterable[str], tables: Iterable[str], instance: Mapping[str, str] | None = None) -> None:
    """Every labelled series the config implies, at zero: panels and increase() see a series before its first
    event (a counter born at its first increment loses that increment to increase()). Idempotent; a reload calls
    it again for the feeds it adds."""
    who = instance or {}
    BUILD_INFO.labels(package_version(), who.get("id", ""), who.get("group", ""), who.get("shard", "")).set(1)
    for feed in feeds:
        for metric in PER_FEED:
            metric.labels(feed)
        for reason in GAP_CLOSE_REASONS:
            GAPS_CLOSED.labels(feed, reason)
        for state in CONNECTION_STATES:
            FEED_CONNECTIONS.labels(feed, state)
    for table in tables:
        for table_metric in PER_TABLE:
            table_metric.labels(table)
