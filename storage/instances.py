"""The instances table: each instance's heartbeat, so instances writing into one QuestDB see each other. I/O only.

One row per instance every few seconds (<prefix>instances, TTL 2 days): who it is, its group and shard, where it
runs. Reading the rows of the last PEER_WINDOW_S tells an instance its HA partners and its conflicts
(config/instance.py peer_problems).
"""
from __future__ import annotations

from contextlib import closing
from datetime import UTC, datetime

import psycopg2

from marketfeed.config.instance import Peer
from marketfeed.storage.tables import quoted

PEER_WINDOW_S = 30.0  # an instance not heard of for this long is gone

DDL = ("CREATE TABLE IF NOT EXISTS {name} (ts TIMESTAMP, instance SYMBOL, grp SYMBOL, shard SYMBOL, host SYMBOL, "
       "pid INT, started_at TIMESTAMP) TIMESTAMP(ts) PARTITION BY DAY TTL 2 DAYS WAL")


def heartbeat(pg_dsn: str, prefix: str, me: Peer, now_s: float) -> list[Peer]:
    """Write my row, read everyone's of the last PEER_WINDOW_S (mine too). Raises psycopg2.Error."""
    name = quoted(f"{prefix}instances")
    with closing(psycopg2.connect(pg_dsn, connect_timeout=5)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(DDL.format(name=name))
            cur.execute(f"INSERT INTO {name} VALUES (%s::TIMESTAMP, %s, %s, %s, %s, %s, %s::TIMESTAMP)",
                        (_micros(now_s), me.id, me.group, me.shard, me.host, me.pid, _micros(me.started_at_s)))
            cur.execute(f"SELECT instance, grp, shard, host, pid, started_at, ts FROM {name} "
                        "WHERE ts > %s::TIMESTAMP LATEST ON ts PARTITION BY instance, host, pid",
                        (_micros(now_s - PEER_WINDOW_S),))
            return [Peer(i, g, s or "", h, p, _seconds(started), _seconds(ts))
                    for i, g, s, h, p, started, ts in cur.fetchall()]


def _seconds(stamp: datetime) -> float:
    return stamp.replace(tzinfo=UTC).timestamp()  # QuestDB's timestamps are UTC, handed over naive


def _micros(seconds: float) -> int:
    return int(seconds * 1_000_000)
