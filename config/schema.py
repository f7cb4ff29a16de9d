"""The configuration schema: one frozen dataclass per TOML section, defaults included.

Field metadata may carry `min`/`max` bounds and `choices`; the loader enforces them.
"""
from __future__ import annotations

import re
from dataclasses import Field, dataclass, field
from typing import TypeVar


def bounded(default, *, min=None, max=None, choices=None):  # noqa: A002 - reads like the TOML docs
    return field(default=default, metadata={"min": min, "max": max, "choices": choices})


def secret(*, env: str):
    """A secret string option: hidden from repr. The loader fills it from the option itself, else the file
    its `<name>_file` option names, else $<env>, else the file $<env>_FILE names."""
    return field(default="", repr=False, metadata={"secret": True, "env": env})


def is_secret(option: Field) -> bool:
    """An option declared with secret(): redacted in problems, hidden in logs (config/secrets.py)."""
    return bool(option.metadata.get("secret"))


@dataclass(frozen=True)
class ExchangeOptions:
    """Base of the options one exchange adds to its [[feeds]] tables (feeds/<exchange>.py, feeds/registry.py)."""


_Options = TypeVar("_Options", bound=ExchangeOptions)


class PatternChoices:
    """Choices by pattern, named for a problem by a few examples."""

    def __init__(self, pattern: str, names: tuple[str, ...]):
        self.pattern, self.names = re.compile(pattern), names

    def __contains__(self, value) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def __iter__(self):  # how the loader names the choices in a problem
        return iter(self.names)


# "immediate" or a QuestDB refresh interval <n>m, <n>h, <n>d (it refuses seconds).
REFRESH_CHOICES = PatternChoices(r"immediate|[1-9][0-9]{0,3}[mhd]", ("immediate", "<n>m", "<n>h", "<n>d"))
# How much history a stream with nothing stored starts with (feeds.history): empty (none) or <n>m, <n>h, <n>d.
# A feed's name: metric label, log field, directory of its gap requests.
FEED_NAME_CHOICES = PatternChoices(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", ("[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",))
INSTANCE_CHOICES = PatternChoices(r"|[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", ("''", "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"))
HISTORY_CHOICES = PatternChoices(r"|[1-9][0-9]{0,4}[mhd]", ("''", "<n>m", "<n>h", "<n>d"))
HISTORY_UNIT_S = {"m": 60, "h": 3600, "d": 86400}
# questdb.table_prefix goes into DDL, queries and spool/dead-letter paths unquoted: only what an unquoted QuestDB
# table name takes (ASCII letters, digits, underscore; not a digit first), short enough that prefix + table + view
# suffix stays far below QuestDB's 127-character file name limit. Empty: no prefix.
TABLE_PREFIX_CHOICES = PatternChoices(r"|[A-Za-z_][A-Za-z0-9_]{0,63}",
                                      ("''", "[A-Za-z_][A-Za-z0-9_]{0,63}"))


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "text")


def history_s(history: str) -> float:
    """feeds.history in seconds (0: none)."""
    return int(history[:-1]) * HISTORY_UNIT_S[history[-1]] if history else 0.0


@dataclass(frozen=True)
class ServiceConfig:
    status_file: str = "var/status.json"  # health report, written atomically
    pid_file: str = "var/marketfeed.pid"  # how `marketfeed health` finds the process
    log_file: str = ""  # empty: stdout; its directory must exist
    log_level: str = bounded("info", choices=LOG_LEVELS)  # --log-level overrides it
    # "auto": text on a terminal (stdout, no log_file), else JSON lines; --log-format overrides it
    log_format: str = bounded("auto", choices=LOG_FORMATS)
    health_interval_s: float = bounded(300.0, min=1.0)
    http_listen: str = "127.0.0.1:8766"  # empty: no HTTP endpoints
    status_interval_s: float = bounded(2.0, min=0.1)  # status file, sd_notify STATUS and watchdog refresh
    shutdown_timeout_s: float = bounded(15.0, min=1.0)
    ca_file: str = ""  # default CA bundle of every feed (feeds.ca_file); empty: the system's trust store
    # The process's umask: what it writes (status, pid, log, spool, dead letters, ledger) is its owner's alone by
    # default (files 0600, directories 0700); "027" lets a group read them.
    umask: str = bounded("077", choices=PatternChoices(r"0?[0-7]{3}", ("077", "027", "<octal>")))
    # Several instances (README, high availability and scale-out): this one's share of every feed's symbols, "K/N"
    # (0 <= K < N; K "auto": the ordinal ending the host name, as a StatefulSet's pods have); "": all of them.
    shard: str = bounded("", choices=PatternChoices(r"|(auto|[0-9]{1,4})/[1-9][0-9]{0,3}", ("''", "K/N", "auto/N")))
    instance_id: str = bounded("", choices=INSTANCE_CHOICES)  # "": the host name; in the report and metrics
    # Instances of one group split the market by shard (their shards must not overlap); instances of different
    # groups with the same shards are an HA pair. "": a group of its own.
    instance_group: str = bounded("", choices=INSTANCE_CHOICES)


@dataclass(frozen=True)
class QuestDBConfig:
    # Both may carry credentials (username/password/token): hidden from repr, redacted wherever shown.
    conf: str = field(default="http::addr=127.0.0.1:9000;", repr=False)  # questdb client configuration string
    pg_dsn: str = field(default="host=127.0.0.1 port=8812 user=admin password=quest dbname=qdb", repr=False)
    table_prefix: str = bounded("", choices=TABLE_PREFIX_CHOICES)  # tables are <prefix>trades, <prefix>candles
    # OHLCV views: refreshed on a timer; "immediate" refreshes them after every commit (costly CPU, README).
    ohlcv_refresh: str = bounded("1m", choices=REFRESH_CHOICES)
    # At start, ids missing among the trades stored in this many hours before the newest are backfilled (0: off).
    hole_scan_h: float = bounded(6.0, min=0.0, max=24.0 * 366)
    # Trades' price and amount as DECIMAL, kept as the exchange sent them (QuestDB ≥ 9.2, ILP protocol v3); false:
    # DOUBLE. A table created in the other mode is refused at its first write (README, Exact decimals).
    decimals: bool = False


@dataclass(frozen=True)
class SinkConfig:
    max_rows: int = bounded(10_000, min=1, max=1_000_000)  # flush when this many rows wait
    flush_interval_s: float = bounded(0.1, min=0.001, max=60.0)  # …or when the oldest waited this long
    retry_min_s: float = bounded(0.2, min=0.01)
    retry_max_s: float = bounded(10.0, min=0.01)
    candles_max_rows: int = bounded(0, min=0, max=1_000_000)  # 0: as max_rows (per-table override)
    candles_flush_interval_s: float = bounded(0.0, min=0.0, max=60.0)  # 0: as flush_interval_s
    breaker_failures: int = bounded(5, min=1)  # consecutive failed flushes that open the circuit breaker
    breaker_reset_s: float = bounded(30.0, min=0.0)  # open → half-open (one trial flush) after this long
    dead_letter_dir: str = "var/deadletter"  # rows QuestDB rejects: <dir>/<table>.jsonl, one JSON line each


@dataclass(frozen=True)
class SpoolConfig:
    """On-disk spool of a buffer actor: where batches wait while QuestDB is unreachable (README, failure behaviour)."""

    enabled: bool = True  # steps aside by itself when questdb.conf sets the client's own sf_dir
    dir: str = "var/spool"  # one subdirectory per table, one file per batch
    max_bytes: int = bounded(1 << 30, min=1 << 16)  # per table; full spool = critical health
    high_water_rows: int = bounded(100_000, min=1)  # rows in memory per table above which batches are spooled
    fsync: str = bounded("batch", choices=("batch", "never"))  # batch: fsync every spooled batch before it counts
    on_full: str = bounded("drop_oldest", choices=("drop_oldest", "pause_feeds"))


@dataclass(frozen=True)
class LedgerConfig:
    """The recovery ledger (README, failure behaviour): the newest stored row of every series and every open gap,
    on local disk, read at start before QuestDB is asked anything."""

    dir: str = "var/ledger"  # journal + snapshot; keep it with the spool, on a disk that survives restarts
    gap_max_age_h: float = bounded(72.0, min=0.0)  # an open gap older than this is given up on (0: never)
    compact_every: int = bounded(10_000, min=100)  # journal records between snapshots


@dataclass(frozen=True)
class SupervisorConfig:
    max_restarts: int = bounded(10, min=0)
    within_s: float = bounded(60.0, min=0.1)
    min_backoff_s: float = bounded(0.5, min=0.0)
    max_backoff_s: float = bounded(30.0, min=0.0)
    reset_after_s: float = bounded(60.0, min=0.0)  # a child up this long gets its backoff reset
    liveness_interval_s: float = bounded(5.0, min=0.1)
    liveness_timeout_s: float = bounded(5.0, min=0.1)


@dataclass(frozen=True)
class FeedConfig:
    name: str
    exchange: str
    url: str
    symbols: tuple[str, ...]
    rest_url: str = ""
    channels: tuple[str, ...] = ("trade",)
    alt_urls: tuple[str, ...] = ()
    stale_after_s: float = bounded(30.0, min=0.1)  # no data frame for this long: reconnect
    reconnect_min_s: float = bounded(0.5, min=0.0)
    reconnect_max_s: float = bounded(30.0, min=0.0)
    max_connect_failures: int = bounded(0, min=0)  # this many failed connects in a row: the feed actor fails (0: never)
    breaker_failures: int = bounded(3, min=1)  # failed connects in a row that open the feed's circuit breaker…
    breaker_reset_s: float = bounded(60.0, min=0.0)  # …which allows one trial connect after this long (half-open)
    max_held_rows: int = bounded(100_000, min=1)  # rows held for an unavailable buffer; above it the feed stops reading
    # Open a fresh connection before this age (0: the exchange's limit).
    max_connection_age_s: float = bounded(0.0, min=0.0)
    # Protocols with an application-level ping (Kraken): how often, and how long a pong may take (0: the protocol's).
    ping_interval_s: float = bounded(0.0, min=0.0)
    pong_timeout_s: float = bounded(0.0, min=0.0)
    dedup_window_s: float = bounded(120.0, min=0.0)
    dedup_max_entries: int = bounded(10_000, min=0)
    batch_rows: int = bounded(2_000, min=1)  # reader thread hands rows on at this size…
    batch_linger_s: float = bounded(0.005, min=0.0)  # …or once the oldest waited this long
    backfill: bool = True
    # A stream with nothing stored yet (a new table, a new symbol) starts with this much history over REST.
    history: str = bounded("", choices=HISTORY_CHOICES)
    # Hostile input and secrets (README, Security).
    ca_file: str = ""  # CA bundle for wss:// and https:// (empty: service.ca_file, else the system's)
    follow_redirects: bool = False  # on: a connect's redirect is followed to a url/alt_urls host, never wss→ws
    handshake_timeout_s: float = bounded(10.0, min=0.5)  # connect + TLS + upgrade, all redirects: one deadline
    max_frame_bytes: int = bounded(16 << 20, min=1024)  # a bigger WebSocket message closes the connection
    max_json_bytes: int = bounded(4 << 20, min=64)  # a bigger message is a malformed frame, never parsed
    max_messages_per_s: float = bounded(0.0, min=0.0)  # above this the feed is flagged in health (0: no ceiling)
    max_backfill_bytes: int = bounded(16 << 20, min=1024)  # a bigger REST response fails that backfill
    max_future_skew_s: float = bounded(60.0, min=0.0)  # rows stamped later than now + this are rejected
    max_string_len: int = bounded(64, min=1)  # longer symbols (or other strings) in a row are rejected
    # A trade id further ahead of its stream's last than this is refused until REST shows the exchange has it
    # (0: trust any jump). Busy pairs trade ~2,000/s at peaks: a million is minutes of market; a longer outage
    # costs one REST question, a fake id (10^12) moves nothing.
    max_id_jump: int = bounded(1_000_000, min=0)
    # The whole market (feeds/universe.py): with a pattern in `symbols` ("*", "BTC*", "*USDT"), what the exchange's
    # listing endpoint lists that matches, narrowed by these; the loader refuses them without a pattern.
    quote_assets: tuple[str, ...] = ()  # quoted in one of these (e.g. ["USDT"]); empty: any
    exclude_symbols: tuple[str, ...] = ()  # none of these patterns
    trading_only: bool = True  # only what the exchange says trades now
    universe_refresh_s: float = bounded(3600.0, min=0.0)  # the listing is read again this often (≥ 60; 0: never)
    # Streams one connection carries at most: 0, the exchange's documented limit (Binance 1024); only lower it.
    max_streams_per_connection: int = bounded(0, min=0)
    # The exchange's own keys, which sit beside these in the TOML table; None: that exchange's defaults.
    options: ExchangeOptions | None = None
    # Not a [[feeds]] key: the loader sets it from questdb.decimals (parse prices and amounts as Decimal, exactly).
    decimals: bool = False

    def options_of(self, kind: type[_Options]) -> _Options:
        """`options` as the exchange's own type, which its protocol names; its defaults when none were given
        (a FeedConfig built in code). The loader always gives the exchange's own (feeds/registry.py)."""
        if self.options is None:
            return kind()
        if not isinstance(self.options, kind):
            raise TypeError(f"feed {self.name!r}: options are {type(self.options).__name__}, not {kind.__name__}")
        return self.options


@dataclass(frozen=True)
class AlertConfig:
    """Thresholds of the health rules (telemetry/health_rules.py); defaults from the service's history."""

    feed_disconnected_s: float = bounded(120.0, min=0.0)  # a feed not connected for longer: degraded
    no_data_s: float = bounded(300.0, min=0.0)  # no data frame for longer: degraded
    buffered_rows: int = bounded(1000, min=0)  # more rows waiting in a buffer: degraded
    errors_per_minute: int = bounded(10, min=0)  # more errors (reconnects, malformed, flush failures) in 60 s
    rss_mb: float = bounded(500.0, min=1.0)  # resident memory above this: degraded
    sink_stalled_s: float = bounded(60.0, min=0.0)  # rows waiting and no successful flush for longer: critical
    gap_age_s: float = bounded(900.0, min=0.0)  # the oldest open gap older than this: degraded


@dataclass(frozen=True)
class Config:
    service: ServiceConfig = ServiceConfig()
    questdb: QuestDBConfig = QuestDBConfig()
    sink: SinkConfig = SinkConfig()
    spool: SpoolConfig = SpoolConfig()
    ledger: LedgerConfig = LedgerConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    alerts: AlertConfig = AlertConfig()
    feeds: tuple[FeedConfig, ...] = ()
    source: str = ""  # the file it came from, for messages
