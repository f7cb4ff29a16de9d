"""Table DDL (PostgreSQL wire) and the ILP encoding of each row type.

Every table is WAL with DEDUP UPSERT KEYS, so a replayed batch never duplicates a row. Trades
come with materialized views of 1-minute and 1-hour OHLCV bars (SAMPLE BY), which QuestDB keeps
up to date incrementally as trades land.
"""
from __future__ import annotations

import psycopg2
from questdb import QuestDBError, TimestampNanos

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


OHLCV_VIEW = """CREATE MATERIALIZED VIEW IF NOT EXISTS {name}_ohlcv_{interval} AS (
        SELECT ts, exchange, symbol, first(price) AS open, max(price) AS high, min(price) AS low,
               last(price) AS close, sum(amount) AS volume, count() AS trades
        FROM {name} SAMPLE BY {interval}
    ) PARTITION BY {partition}"""

VIEWS = {"trades": (("1m", "DAY"), ("1h", "MONTH"))}  # interval, partitioning


def table_name(prefix: str, table: str) -> str:
    return f"{prefix}{table}"


def create_tables(pg_dsn: str, prefix: str, tables=TABLES) -> None:
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                name = table_name(prefix, table)
                cur.execute(DDL[table].format(name=name))
                for interval, partition in VIEWS.get(table, ()):
                    cur.execute(OHLCV_VIEW.format(name=name, interval=interval, partition=partition))
    conn.close()


# The client refuses a row it cannot encode and leaves the buffer as before that row.
ENCODING_ERRORS = (QuestDBError, TypeError, ValueError, OverflowError)


def append_trades(buffer, name: str, rows: list[Trade]) -> list[str]:
    """Encode rows into the buffer; returns the errors of rows the client refused (left out)."""
    row, refused = buffer.row, []
    for t in rows:
        try:
            row(
                name,
                symbols={"exchange": t.exchange, "symbol": t.symbol, "side": t.side},
                columns={"trade_id": t.trade_id, "price": t.price, "amount": t.amount,
                         "received_at": TimestampNanos(t.received_ns)},
                at=TimestampNanos(t.ts_ns),
            )
        except ENCODING_ERRORS as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
    return refused


def append_candles(buffer, name: str, rows: list[Candle]) -> list[str]:
    row, refused = buffer.row, []
    for c in rows:
        try:
            row(
                name,
                symbols={"exchange": c.exchange, "symbol": c.symbol, "interval": c.interval},
                columns={"open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume,
                         "closed": c.closed, "received_at": TimestampNanos(c.received_ns)},
                at=TimestampNanos(c.ts_ns),
            )
        except ENCODING_ERRORS as exc:
            refused.append(f"{type(exc).__name__}: {exc}")
    return refused


APPEND = {"trades": append_trades, "candles": append_candles}
