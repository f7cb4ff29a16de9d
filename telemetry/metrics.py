"""Every Prometheus metric of the service, in one place (names per DESIGN.md §7)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("marketfeed_messages_received_total", "Frames received from exchanges", ["feed"])
MALFORMED = Counter("marketfeed_malformed_frames_total", "Frames that could not be parsed", ["feed"])
RECONNECTS = Counter("marketfeed_reconnects_total", "WebSocket reconnects", ["feed"])
DUPLICATES = Counter("marketfeed_duplicates_dropped_total", "Rows dropped as duplicates", ["feed"])
GAPS = Counter("marketfeed_gaps_detected_total", "Trade id gaps detected", ["feed"])
BACKFILLED = Counter("marketfeed_rows_backfilled_total", "Rows fetched over REST backfill", ["feed"])
FEED_CONNECTED = Gauge("marketfeed_feed_connected", "1 while the feed's WebSocket is open", ["feed"])

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
    "From exchange event time to QuestDB acknowledgement",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUFFERED_ROWS = Gauge("marketfeed_buffered_rows", "Rows waiting in a buffer actor", ["table"])

ACTOR_RESTARTS = Counter("marketfeed_actor_restarts_total", "Actor restarts by a supervisor", ["actor"])
SUPERVISOR_GIVEUPS = Counter("marketfeed_supervisor_giveups_total", "Supervisors that exceeded restart intensity")
