"""Where the stored history ends: the last trade id per (exchange, symbol), read at start.

A feed's sequence tracker starts from these ids, so its first live trade after downtime shows
the downtime as a gap, which the feed backfills over REST.
"""
from __future__ import annotations

import psycopg2

from storage.schema import table_name


def last_trade_ids(pg_dsn: str, prefix: str) -> dict[tuple[str, str], int]:
    """{(exchange, symbol): highest stored trade id}; empty when the table does not exist yet."""
    trades = table_name(prefix, "trades")
    with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM tables() WHERE table_name = %s", (trades,))
        if not cur.fetchall():
            return {}
        cur.execute(f"SELECT exchange, symbol, max(trade_id) FROM {trades}")
        ids = {(exchange, symbol): last for exchange, symbol, last in cur.fetchall() if last is not None}
    conn.close()
    return ids
