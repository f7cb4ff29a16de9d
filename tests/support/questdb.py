"""A real QuestDB for the tests: started once per session by bin/questdb on free loopback ports."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuestDB:
    def __init__(self, root: Path):
        self.root = root
        self.http_port, self.pg_port = free_port(), free_port()
        self.env = {**os.environ, "QDB_ROOT": str(root), "QDB_HTTP_PORT": str(self.http_port),
                    "QDB_PG_PORT": str(self.pg_port)}
        self.start_seconds = 0.0

    @property
    def conf(self) -> str:
        return f"http::addr=127.0.0.1:{self.http_port};"

    @property
    def pg_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.pg_port} user=admin password=quest dbname=qdb"

    def start(self) -> None:
        began = time.monotonic()
        subprocess.run([str(REPO / "bin/questdb"), "start"], env=self.env, check=True, capture_output=True, text=True)
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        subprocess.run([str(REPO / "bin/questdb"), "stop"], env=self.env, check=True, capture_output=True)

    def query(self, sql: str, params=None) -> list[tuple]:
        with psycopg2.connect(self.pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        conn.close()
        return rows

    def wal_applied(self, table: str) -> bool:
        rows = self.query("SELECT writerTxn, sequencerTxn, suspended FROM wal_tables() WHERE name = %s", (table,))
        if not rows:
            return False
        writer, sequencer, suspended = rows[0]
        assert not suspended, f"WAL of {table} is suspended"
        return writer == sequencer

    def trade_ids(self, table: str, symbol: str | None = None, exchange: str | None = None) -> list[int]:
        """Stored trade ids (with repeats, so duplicates show), once the WAL is applied."""
        filters = {column: value for column, value in (("symbol", symbol), ("exchange", exchange)) if value}
        where = f"WHERE {' AND '.join(f'{column} = %s' for column in filters)}" if filters else ""
        rows = self.query(f"SELECT trade_id FROM {table} {where} ORDER BY trade_id", tuple(filters.values()) or None)
        return [r[0] for r in rows]

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """Poll until predicate() is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except psycopg2.Error as exc:  # table not created yet, or QuestDB restarting
                last_error = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")

    def wait_trade_ids(self, table: str, expected: list[int], symbol: str | None = None, timeout: float = 30.0,
                       exchange: str | None = None):
        """Wait until the WAL is applied and the stored ids cover `expected`; returns the stored ids."""
        want = len(expected)

        def ready():
            if not self.wal_applied(table):
                return None
            ids = self.trade_ids(table, symbol, exchange)
            return ids if len(ids) >= want else None

        try:
            return self.wait_for(ready, timeout, f"{want} rows in {table}")
        except AssertionError:
            return self.trade_ids(table, symbol, exchange) if self._exists(table) else []

    def _exists(self, table: str) -> bool:
        return bool(self.query("SELECT table_name FROM tables() WHERE table_name = %s", (table,)))
