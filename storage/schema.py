"""Table DDL (PostgreSQL wire) and the ILP encoding of each row type.

Every table is WAL with DEDUP UPSERT KEYS, so a replayed batch never duplicates a row.
"""
from __future__ import annotations

import psycopg2
from questdb import TimestampNanos

from feeds.rows import Candle, Trade

TABLES = ("trades", "candles")

DDL = {
    "trades": """CREATE TABLE IF NOT EXISTS {name} (
        ts TIMESTAMP_NS, exchange SYMBOL, symbol SYMBOL, trade_id LONG,
        price DOUBLE, amount DOUBLE, side SYMBOL, received_at TIMESTAMP_NS
    ) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, exchange, symbol, trade_id)""",
    "candles": """CREATE TABLE IF NOT EXISTS {name} (
        ts TIMESTAMP_NS, exchange SYMBOL, symbol SYMBOL, interval SYMBOL,
        open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE,
        closed BOOLEAN, received_at TIMESTAMP_NS
    ) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, exchange, symbol, interval)""",
}


def table_name(prefix: str, table: str) -> str:
    return f"{prefix}{table}"


def create_tables(pg_dsn: str, prefix: str, tables=TABLES) -> None:
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(DDL[table].format(name=table_name(prefix, table)))
    conn.close()


def append_trades(buffer, name: str, rows: list[Trade]) -> None:
    row = buffer.row
    for t in rows:
        row(
            name,
            symbols={"exchange": t.exchange, "symbol": t.symbol, "side": t.side},
            columns={"trade_id": t.trade_id, "price": t.price, "amount": t.amount,
                     "received_at": TimestampNanos(t.received_ns)},
            at=TimestampNanos(t.ts_ns),
        )


def append_candles(buffer, name: str, rows: list[Candle]) -> None:
    row = buffer.row
    for c in rows:
        row(
            name,
            symbols={"exchange": c.exchange, "symbol": c.symbol, "interval": c.interval},
            columns={"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
                     "closed": c.closed, "received_at": TimestampNanos(c.received_ns)},
            at=TimestampNanos(c.ts_ns),
        )


APPEND = {"trades": append_trades, "candles": append_candles}
