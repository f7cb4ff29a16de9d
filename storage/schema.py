"""Creating the tables (storage/tables.py says what they are) and their views over the PostgreSQL wire.

OHLCV views are refreshed incrementally: on a timer by default, since refreshing after every commit costs
the server more CPU than the ingestion itself (README, Tables and views).

CREATE TABLE IF NOT EXISTS leaves a table as it was: with questdb.decimals, a trades table created with DOUBLE
prices would refuse every Decimal as bad data, so that is found here and refused first (TableMismatch). The other
way round works: QuestDB converts a double into a DECIMAL column.
"""
from __future__ import annotations

from collections.abc import Iterable

import psycopg2

from marketfeed.config.schema import REFRESH_CHOICES, QuestDBConfig
from marketfeed.storage.tables import TABLES, Table

REFRESH_UNITS = {"m": "MINUTE", "h": "HOUR", "d": "DAY"}  # as materialized_views() reports them


class TableMismatch(Exception):
    """An existing table's columns cannot take what this configuration writes."""


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


def create_tables(pg_dsn: str, prefix: str, tables: Iterable[Table] = tuple(TABLES.values()),
                  ohlcv_refresh: str = QuestDBConfig.ohlcv_refresh, decimals: bool = QuestDBConfig.decimals) -> None:
    """Create what is missing; bring existing views to `ohlcv_refresh` (a changed setting applies at the next start).
    With `decimals` (questdb.decimals), raises TableMismatch for an existing table whose exact columns are not
    DECIMAL."""
    clause = refresh_clause(ohlcv_refresh)
    conn = psycopg2.connect(pg_dsn, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in tables:
                name = table.name_in_db(prefix)
                cur.execute(table.ddl(name, decimals))
                if decimals and table.exact_columns:
                    _check_exact(cur, table, name)
                for view in table.views:
                    cur.execute(view.ddl(name, clause))
                if table.views:
                    _set_refresh(cur, name, {view.name_in_db(name) for view in table.views}, ohlcv_refresh)
    finally:
        conn.close()


def _check_exact(cur, table: Table, name: str) -> None:
    cur.execute('SELECT "column", type FROM table_columns(%s)', (name,))
    wrong = [f"{column} is {kind}" for column, kind in cur.fetchall()
             if column in table.exact_columns and not kind.startswith("DECIMAL")]
    if wrong:
        raise TableMismatch(f"table {name}: {', '.join(wrong)}, but questdb.decimals = true writes DECIMAL values, "
                            "which QuestDB refuses there: migrate the table (README, Exact decimals) or set "
                            "questdb.decimals = false")


def _set_refresh(cur, name: str, views: set[str], refresh: str) -> None:
    """ALTER those of `views` (ours, not a user's own views on the table) whose refresh differs."""
    cur.execute("SELECT view_name, refresh_type, timer_interval, timer_interval_unit "
                "FROM materialized_views() WHERE base_table_name = %s", (name,))
    for view, *state in cur.fetchall():
        if view in views and tuple(state) != refresh_state(refresh):
            cur.execute(f"ALTER MATERIALIZED VIEW {view} SET {refresh_clause(refresh)}")
