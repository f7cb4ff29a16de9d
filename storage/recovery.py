"""Where the stored history ends, and where it has holes: read at start.

A feed's sequence tracker starts from the last ids, so its first live trade after downtime shows
the downtime as a gap, which the feed backfills over REST. Holes below the last id (a process
killed while a gap was being fetched) would never show that way: they are looked for directly.

A restored stream carries all the tracker keeps of a stream it saw live: its last id, the event time
of that id (REST paged by time, Kraken's `since`, starts there) and, where the stream key is more
than a symbol (Binance's "BTCUSDT@aggTrade"), its symbol: REST is asked for symbols, never for keys.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2

from marketfeed.feeds.base import FeedProtocol, Gap
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.feeds.rows import Trade
from marketfeed.storage.schema import existing_tables
from marketfeed.storage.tables import TABLES, TRADES


@dataclass(frozen=True)
class StoredLast:
    """The newest stored trade id of a series, and the event time of the row holding it."""

    trade_id: int
    ts_ns: int  # a QuestDB timestamp read to the µs: never later than the trade, so a `since` from it misses none


def last_trade_ids(pg_dsn: str, prefix: str) -> dict[tuple[str, str], StoredLast]:
    """{(exchange, symbol): highest stored trade id and its time}; empty when the table does not exist yet.

    The time is that of the row holding the highest id, not the newest time: backfilled or late rows make
    them differ. An id stored under two times (a duplicate) gives the earlier one."""
    trades = TRADES.name_in_db(prefix)
    with closing(psycopg2.connect(pg_dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
        if trades not in existing_tables(cur):
            return {}
        cur.execute(f"""SELECT t.exchange, t.symbol, t.trade_id, min(t.ts) FROM {trades} t
                        JOIN (SELECT exchange, symbol, max(trade_id) last FROM {trades}) m
                        ON t.exchange = m.exchange AND t.symbol = m.symbol AND t.trade_id = m.last""")
        ids = {(exchange, symbol): StoredLast(last, _ns(ts)) for exchange, symbol, last, ts in cur.fetchall()}
    return ids


def stream_of(protocol: FeedProtocol, exchange: str, symbol: str) -> str:
    """The id sequence (FeedProtocol.stream_key) of the stored trades of (exchange, symbol)."""
    return protocol.stream_key(Trade(0, exchange, symbol, 0, 0.0, 0.0, "", 0))


def restore_streams(memory: FeedMemory, protocol: FeedProtocol, symbols: Iterable[str],
                    stored: Mapping[tuple[str, str], StoredLast]) -> None:
    """Each stream of a feed (its trade labels × its symbols) starts where its stored history ends."""
    for label in protocol.trade_labels():
        for symbol in symbols:
            if (last := stored.get((label, symbol))) is None:
                continue
            stream = stream_of(protocol, label, symbol)
            memory.last_ids[stream] = last.trade_id
            memory.last_ts[stream] = last.ts_ns
            if stream != symbol:
                memory.stream_symbols[stream] = symbol


def newest_stored_ns(pg_dsn: str, prefix: str) -> dict[tuple[str, str], int]:
    """{(exchange, symbol): event time of its newest stored trade or candle (open time), ns}: where the
    process's downtime began for feeds whose ids cannot show it (time windows, candles)."""
    newest: dict[tuple[str, str], int] = {}
    with closing(psycopg2.connect(pg_dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
        existing = existing_tables(cur)
        for table in (t.name_in_db(prefix) for t in TABLES.values()):
            if table in existing:
                cur.execute(f"SELECT exchange, symbol, max(ts) FROM {table}")
                for exchange, symbol, ts in cur.fetchall():
                    if ts is not None:
                        newest[(exchange, symbol)] = max(newest.get((exchange, symbol), 0), _ns(ts))
    return newest


MAX_HOLES = 1000  # per start: a bounded amount of backfill work, the rest waits for the next start


@dataclass(frozen=True)
class StoredHole:
    exchange: str
    symbol: str
    first_id: int  # first..last missing, inclusive
    last_id: int
    before_ns: int  # event time of the stored trade just before the hole


def stored_holes(pg_dsn: str, prefix: str, exchanges: tuple[str, ...], window_s: float) -> list[StoredHole]:
    """Missing trade ids between stored ones, for exchanges with contiguous ids, among the trades of the
    window_s before the newest stored one: where a process killed mid-backfill left its hole, however
    long it then stayed down. A count per series comes first; only a series short of ids is walked."""
    trades = TRADES.name_in_db(prefix)
    if not exchanges:
        return []
    with closing(psycopg2.connect(pg_dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
        if trades not in existing_tables(cur):
            return []
        cur.execute(f"SELECT max(ts) FROM {trades}")
        newest = cur.fetchall()  # an empty table answers no row at all
        if not newest or newest[0][0] is None:
            return []
        newest = newest[0][0]
        window = f"ts >= '{newest - timedelta(seconds=window_s):%Y-%m-%dT%H:%M:%S.%fZ}'"
        cur.execute(f"""SELECT exchange, symbol FROM (
                            SELECT exchange, symbol, count_distinct(trade_id) ids, min(trade_id) first,
                                   max(trade_id) last
                            FROM {trades} WHERE {window} AND exchange IN ({", ".join(["%s"] * len(exchanges))}))
                        WHERE last - first + 1 > ids""", exchanges)
        holes: list[StoredHole] = []
        for exchange, symbol in cur.fetchall():
            cur.execute(f"""SELECT previous + 1, trade_id - 1, previous_ts FROM (
                                SELECT trade_id, lag(trade_id) OVER (ORDER BY trade_id) previous,
                                       lag(ts) OVER (ORDER BY trade_id) previous_ts
                                FROM {trades} WHERE {window} AND exchange = %s AND symbol = %s)
                            WHERE trade_id > previous + 1 LIMIT {MAX_HOLES - len(holes)}""", (exchange, symbol))
            holes += [StoredHole(exchange, symbol, first, last, _ns(before)) for first, last, before in cur.fetchall()]
            if len(holes) >= MAX_HOLES:
                break
    return holes


def _ns(stored: datetime) -> int:
    """A QuestDB timestamp (µs, returned without a zone: it is UTC) in ns."""
    delta = stored.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) * 1000


def hole_gap(protocol: FeedProtocol, hole: StoredHole) -> Gap:
    """The gap that fetches a stored hole: its ids, and (REST paged by time, Kraken) from the trade before it."""
    return Gap(hole.symbol, hole.first_id, hole.last_id, since_ns=hole.before_ns - 1,
               stream=stream_of(protocol, hole.exchange, hole.symbol))
