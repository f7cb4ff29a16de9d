"""What is stored, checked: per (table, exchange, symbol[, interval]) row count, duplicate keys, trade-id gaps;
and what the recovery ledger could not fill.

DEDUP UPSERT KEYS cannot catch everything: the same trade id stored under two timestamps is two
keys to QuestDB and one trade to us. Gaps only mean something where the exchange numbers trades
contiguously (the protocol says so): every exchange label such a protocol stores is checked on its
own (Binance's trades and its aggregate trades, "binance-agg", are two sequences); elsewhere they
are reported as None. Time windows (Polygon trades, candles) have no ids to show a hole: what is
missing there is known only to the ledger, as the gaps it closed unfilled.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg2

from marketfeed.feeds import registry
from marketfeed.storage.schema import existing_tables
from marketfeed.storage.tables import CANDLES, TRADES

SAMPLES = 10  # duplicate ids and gap ranges listed per series
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class SeriesReport:
    table: str
    exchange: str
    symbol: str
    interval: str  # candles only
    rows: int
    duplicates: int  # rows beyond the first with the same key
    missing_ids: int | None  # None: the exchange's ids are not contiguous, gaps cannot be told
    first_id: int | None = None
    last_id: int | None = None
    duplicate_ids: list[int] = field(default_factory=list)  # samples
    gaps: list[tuple[int, int]] = field(default_factory=list)  # samples: first..last missing id

    @property
    def clean(self) -> bool:
        return not self.duplicates and not self.missing_ids


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'2024-01-01', '2024-01-01T10:00:00Z', or relative to now: '90s', '15m', '2h', '7d'."""
    now = now or datetime.now(UTC)
    if m := _RELATIVE.match(text.strip()):
        return now - timedelta(seconds=float(m[1]) * _UNIT_S[m[2]])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO time (2024-01-01T10:00:00Z) or 15m, 2h, 7d") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# Exchange labels (the trades table's `exchange` column) whose ids are contiguous per symbol.
CONTIGUOUS_LABELS = frozenset(label for e in registry.EXCHANGES.values() if e.protocol.contiguous_ids
                              for label in e.protocol.stored_labels())


@dataclass(frozen=True)
class UnfilledGap:
    """Rows the recovery ledger closed without filling: the exchange no longer serves them (unrecoverable) or they
    grew older than the configured maximum age (expired). An id range (first_id..last_id) or a time window
    (since_ns..until_ns, e.g. Polygon trades, candles)."""

    feed: str
    table: str
    symbol: str
    stream: str
    reason: str  # why the ledger closed it, with its last error
    first_id: int = 0
    last_id: int | None = None
    since_ns: int = 0
    until_ns: int = 0  # 0: open-ended


def unfilled_since(gaps: Iterable[UnfilledGap], since: datetime | None = None) -> list[UnfilledGap]:
    """The closed unfilled gaps that reach into the checked period (all of them without `since`), oldest first."""
    cutoff = None if since is None else _ns(since)
    return sorted((g for g in gaps if cutoff is None or not g.until_ns or g.until_ns >= cutoff),
                  key=lambda g: (g.since_ns, g.feed, g.stream, g.first_id))


def _ns(t: datetime) -> int:
    return (t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def verify(pg_dsn: str, prefix: str, since: datetime | None = None) -> list[SeriesReport]:
    where = "" if since is None else f"WHERE ts >= '{since.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%fZ}'"
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        existing = existing_tables(cur)
        reports = []
        for table, check in ((TRADES, _check_trades), (CANDLES, _check_candles)):
            if table.name_in_db(prefix) in existing:
                reports += check(cur, table.name_in_db(prefix), where)
    conn.close()
    return reports


def _check_trades(cur, table: str, where: str) -> list[SeriesReport]:
    cur.execute(f"""SELECT exchange, symbol, count(), count_distinct(trade_id), min(trade_id), max(trade_id)
                    FROM {table} {where} ORDER BY exchange, symbol""")
    reports = []
    for exchange, symbol, rows, distinct, first, last in cur.fetchall():
        missing = (last - first + 1 - distinct) if exchange in CONTIGUOUS_LABELS else None
        report = SeriesReport(TRADES.name, exchange, symbol, "", rows, rows - distinct, missing, first, last)
        series = f"exchange = '{_quote(exchange)}' AND symbol = '{_quote(symbol)}'"
        scope = f"{where} AND {series}" if where else f"WHERE {series}"
        if report.duplicates:
            cur.execute(f"""SELECT trade_id FROM (SELECT trade_id, count() n FROM {table} {scope})
                            WHERE n > 1 ORDER BY trade_id LIMIT {SAMPLES}""")
            report.duplicate_ids = [r[0] for r in cur.fetchall()]
        if missing:
            cur.execute(f"""SELECT previous + 1, trade_id - 1 FROM (
                                SELECT trade_id, lag(trade_id) OVER (ORDER BY trade_id) previous
                                FROM (SELECT DISTINCT trade_id FROM {table} {scope}))
                            WHERE trade_id > previous + 1 ORDER BY trade_id LIMIT {SAMPLES}""")
            report.gaps = [(a, b) for a, b in cur.fetchall()]
        reports.append(report)
    return reports


def _check_candles(cur, table: str, where: str) -> list[SeriesReport]:
    cur.execute(f"""SELECT exchange, symbol, interval, count(), count_distinct(ts)
                    FROM {table} {where} ORDER BY exchange, symbol, interval""")
    return [SeriesReport(CANDLES.name, exchange, symbol, interval, rows, rows - distinct, None)
            for exchange, symbol, interval, rows, distinct in cur.fetchall()]


def _quote(value: str) -> str:
    return value.replace("'", "''")


def as_dict(report: SeriesReport) -> dict:
    return {**asdict(report), "clean": report.clean}
