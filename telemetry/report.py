"""The vocabulary of status reports: the states and levels they name, and the shape of each part.

Each actor's `status()` returns one of these dicts; the health actor gathers them into a
`HealthReport`, which is logged, written to the status file and served over HTTP. The values are
the strings those JSON documents (and the people and scripts reading them) have always used: a
StrEnum is its value in JSON and compares equal to it, so a report read back from the status file,
with plain strings, is judged the same way. (As dict keys orjson refuses them: keys stay names.)
"""
from __future__ import annotations

import signal
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, NotRequired, TypedDict, final

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13; only the type checker reads it


class FeedState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"  # disconnected; the next try comes after a backoff
    FAILED = "failed"  # the breaker is open; the next try is its half-open trial
    PAUSED = "paused"  # not reading: a table's spool is full under on_full = "pause_feeds"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ChildState(StrEnum):
    """A supervised child as its supervisor sees it."""

    RUNNING = "running"
    RESTARTING = "restarting"  # down, its restart waits out the backoff
    STOPPED = "stopped"


class NoAnswer(StrEnum):
    """The state written in place of an actor's status when it did not answer the health actor."""

    UNRESPONSIVE = "unresponsive"  # no answer within the ask timeout
    DEAD = "dead"  # it died while asked


class HealthLevel(StrEnum):
    """A report's status and each alert's level, in rising severity."""

    OK = "ok"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    UNKNOWN = "unknown"  # `marketfeed health` got no fresh report to judge: never a report's own status

    @property
    def code(self) -> int:
        """The Nagios plugin exit code of `marketfeed health`, the marketfeed_health_status gauge, and the
        order of severity the rules pick a report's status by."""
        return _NAGIOS_CODES[self]


_NAGIOS_CODES = {HealthLevel.OK: 0, HealthLevel.DEGRADED: 1, HealthLevel.CRITICAL: 2, HealthLevel.UNKNOWN: 3}


# What `marketfeed health` sends: a real-time signal of its own, so that the service tells a query (one log line) from
# an operator's SIGUSR1 (the full report in the log). Its default action, too, ends a process: the pid is checked.
QUERY_SIGNAL = signal.SIGRTMIN + 1


class ReportReason(StrEnum):
    """What asked for a report: which reports are logged, and which wins when several wait behind one gather."""

    SIGNAL = "signal"  # SIGUSR1, from an operator: the full report is logged
    QUERY = "query"  # QUERY_SIGNAL, from `marketfeed health`: the status file gets the report, the log one line
    PERIODIC = "periodic"
    TICK = "tick"  # the status refresh: not logged
    SHUTDOWN = "shutdown"  # the final report


class ConnectionStatus(TypedDict):
    """One connection of a feed (actors/feed_connection.py)."""

    index: int
    state: FeedState
    url: str
    breaker: BreakerState
    symbols: int  # how many symbols it carries
    messages: int
    reconnects: int
    last_message_age_s: float | None
    last_error: str


class FeedStatus(TypedDict):
    """A feed actor's `status()`."""

    exchange: str
    state: FeedState
    url: str
    breaker: BreakerState
    connect_failures: int
    messages: int
    data_messages: int
    last_message_age_s: float | None  # None: no data message yet
    reconnects: int
    malformed: int
    duplicates: int
    gaps: int
    backfilled: int
    held_rows: int
    live_candles: int
    paused: str  # why the feed is paused, "" while it is not
    last_error: str
    rejected: dict[str, int]  # rows refused by validation, by reason
    rate_exceeded: bool
    messages_per_s: float
    symbols: int  # the universe: every symbol the feed carries
    universe_error: str  # why the listing could not be read ("" when it was, or the symbols are a fixed list)
    connections: list[ConnectionStatus]


class SinkStatus(TypedDict):
    """A buffer actor's `status()`: its table's sink."""

    table: str
    buffered_rows: int
    rows_written: int
    last_flush_age_s: float | None  # None: nothing flushed yet
    failures: int
    last_error: str
    breaker: BreakerState
    spool: Literal["on", "off"]
    spool_bytes: int
    spool_rows: int
    spool_full: bool
    rows_spooled: int
    rows_dead_lettered: int
    rows_dropped: int
    behind: bool


class ChildStatus(TypedDict):
    state: ChildState
    restarts: int
    last_failure: str


class SupervisorStatus(TypedDict):
    """A supervisor's `status()`."""

    name: str
    strategy: str
    restarts_in_window: int
    gave_up: bool
    children: dict[str, ChildStatus]


@final  # no other keys: a status that has "state" NoAnswer is this one, never a silent FeedStatus
class SilentStatus(TypedDict):
    """In the report in place of the status of an actor that did not answer."""

    state: NoAnswer
    last_error: NotRequired[str]


_SILENT = frozenset(NoAnswer)


def silent(status: FeedStatus | SinkStatus | SupervisorStatus | LedgerStatus | SilentStatus) -> TypeIs[SilentStatus]:
    """Whether `status` stands for an actor that did not answer (plain strings read back from JSON too)."""
    return status.get("state") in _SILENT


class ProcessFigures(TypedDict):
    rss_bytes: int
    cpu_seconds: float
    cpu_percent: float  # since the previous report
    threads: int
    open_fds: int
    uptime_s: float
    leaked_threads: int  # threads of abandoned actors still alive


class AlertDetail(TypedDict, total=False):
    """What an alert says besides its level and cause: its subject (feed, buffer, supervisor, child) and figures."""

    feed: str
    buffer: str
    supervisor: str
    child: str
    actor: str
    open_gaps: int
    oldest_age_s: float
    state: str
    breaker: str | None
    error: str
    for_s: float
    threshold_s: float
    silent_s: float
    messages_per_s: float | None
    rows: int
    threshold: int
    since_flush_s: float
    spool_bytes: int
    rows_dropped: int
    errors_last_minute: int
    rss_mb: float
    threshold_mb: float
    problem: str  # instance_conflict: what two instances share that they must not


class Alert(AlertDetail):
    level: HealthLevel
    cause: str


class LedgerStatus(TypedDict):
    """The ledger actor's `status()`: the recovery ledger's gaps."""

    open_gaps: int
    oldest_open_gap_age_s: float | None
    closed_gaps: dict[str, int]  # by reason: filled, unrecoverable, expired
    write_failures: int
    last_error: str


class InstanceStatus(TypedDict):
    """Which instance this is (config/instance.py), and the others heartbeating into the same QuestDB."""

    id: str
    group: str
    shard: str  # "K/N", "" for every symbol
    partners: list[str]  # instances of other groups with this shard: an HA pair (or more)
    problems: list[str]  # my instance id used twice, shards of my group overlapping mine
    peers_error: str  # why the instances table could not be read ("" when it was)
    writes_live_candles: bool  # this instance writes its shard's candles in progress (one of an HA pair does)


class GatheredReport(TypedDict):
    """What the health actor gathers from the tree, before the rules judge it."""

    reason: ReportReason
    gather_started_at: float  # `marketfeed health` wants a report begun after its signal
    generated_at: float
    pid: int
    uptime_s: float
    config: str  # the config file
    instance: InstanceStatus
    feeds: dict[str, FeedStatus | SilentStatus]
    buffers: dict[str, SinkStatus | SilentStatus]
    supervisors: dict[str, SupervisorStatus | SilentStatus]
    ledger: NotRequired[LedgerStatus | SilentStatus]
    process: ProcessFigures
    actors_as_of: NotRequired[float]  # the final report: when its actors' part was gathered


class HealthReport(GatheredReport):
    """The report as published: the status file, the health_report log line, /health and /ready."""

    status: HealthLevel
    alerts: list[Alert]
    summary: str
