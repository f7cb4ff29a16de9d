"""Table DDL (PostgreSQL wire) and the ILP encoding of each row type.

Every table is WAL with DEDUP UPSERT KEYS, so a replayed batch never duplicates a row. Trades
come with materialized views of 1-minute and 1-hour OHLCV bars (SAMPLE BY), which QuestDB refreshes
incrementally: on a timer by default, since refreshing after every commit costs the server more CPU
than the ingestion itself (README, Tables and views).
"""
from __future__ import annotations

import psycopg2
from questdb import QuestDBError, TimestampNanos

from marketfeed.config.schema import REFRESH_CHOICES, QuestDBConfig
from marketfeed.feeds.rows import Candle, Trade

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


OHLCV_VIEW = """CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {refresh} AS (
        SELECT ts, exchange, symbol, first(price) AS open, max(price) AS high, min(price) AS low,
               last(price) AS close, sum(amount) AS volume, count() AS trades
        FROM {name} SAMPLE BY {interval}
    ) PARTITION BY {partition}"""

VIEWS = {"trades": (("1m", "DAY"), ("1h", "MONTH"))}  # interval, partitioning

REFRESH_UNITS = {"m": "MINUTE", "h": "HOUR", "d": "DAY"}  # as materialized_views() reports them


def table_name(prefix: str, table: str) -> str:
    return f"{prefix}{table}"


def existing_tables(cur) -> set[str]:
    """The names of the tables QuestDB has (a cursor of an open connection)."""
    cur.execute("SELECT table_name FROM tables()")
    return {row[0] for row in cur.fetchall()}


def refresh_clause(refresh: str) -> str:
    """The REFRESH clause for questdb.ohlcv_refresh: "immediate" or an interval such as "1m"."""
    if refresh not in REFRESH_CHOICES:
        raise ValueError(f"OHLCV refresh {refresh!r} is not one of {', '.join(REFRESH_CHOICES)}")
    return "REFRESH IMMEDIATE" if refresh == "immediate" else f"REFRESH EVERY {refresh}"


def refresh_state(refresh: str) -> tuple[str, int, str | None]:
    """(refresh_type, timer_interval, timer_interval_unit) as materialized_views() reports `refresh`."""
    if refresh == "immediate":
        return "immediate", 0, None
    return "timer", int(refresh[:-1]), REFRESH_UNITS[refresh[-1]]


def create_tables(pg_dsn: str, prefix: str, tables=TABLES, ohlcv_refresh=QuestDBConfig.ohlcv_refresh) -> None:
    """Create what is missing; bring existing views to `ohlcv_refresh` (a changed setting applies at the next start)."""
    clause = refresh_clause(ohlcv_refresh)
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                name = table_name(prefix, table)
                cur.execute(DDL[table].format(name=name))
                views = {f"{name}_ohlcv_{interval}": (interval, part) for interval, part in VIEWS.get(table, ())}
                for view, (interval, part) in views.items():
                    cur.execute(OHLCV_VIEW.format(view=view, name=name, interval=interval, partition=part,
                                                  refresh=clause))
                if views:
                    _set_refresh(cur, name, views, ohlcv_refresh)
    conn.close()


def _set_refresh(cur, name: str, views, refresh: str) -> None:
    """ALTER those of `views` (ours, not a user's own views on the table) whose refresh differs."""
    cur.execute("SELECT view_name, refresh_type, timer_interval, timer_interval_unit "
                "FROM materialized_views() WHERE base_table_name = %s", (name,))
    for view, *state in cur.fetchall():
        if view in views and tuple(state) != refresh_state(refresh):
            cur.execute(f"ALTER MATERIALIZED VIEW {view} SET {refresh_clause(refresh)}")


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
