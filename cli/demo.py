"""`marketfeed demo`: a local QuestDB, the exchange simulator and the service, wired together."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2

from cli.service import run
from config.loader import from_dict, to_toml
from sim import Simulator

REPO = Path(__file__).resolve().parents[1]
DEMO_SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def demo(duration_s: float | None, rate: float) -> int:
    http_port = int(os.environ.get("QDB_HTTP_PORT", "9000"))
    pg_port = int(os.environ.get("QDB_PG_PORT", "8812"))
    subprocess.run([str(REPO / "bin/questdb"), "start"], check=True)
    var = REPO / "var"
    var.mkdir(exist_ok=True)
    sim = Simulator(["binance"], DEMO_SYMBOLS, rate=rate).start()
    pg_dsn = f"host=127.0.0.1 port={pg_port} user=admin password=quest dbname=qdb"
    raw = {
        "service": {"status_file": str(var / "demo-status.json"), "pid_file": str(var / "demo.pid"),
                    "log_file": str(var / "demo.log"), "health_interval_s": 30.0},
        "questdb": {"conf": f"http::addr=127.0.0.1:{http_port};", "pg_dsn": pg_dsn, "table_prefix": "demo_"},
        "feeds": [{"name": "binance-sim", "exchange": "binance", "url": sim.url("binance"),
                   "rest_url": sim.rest_url("binance"), "symbols": DEMO_SYMBOLS}],
    }
    config = from_dict(raw, source="demo")
    _write_config(var / "demo.toml", raw)
    print(f"""
marketfeed demo: simulated Binance ({', '.join(DEMO_SYMBOLS)}, {rate:g} trades/s each) → QuestDB
  QuestDB console   http://127.0.0.1:{http_port}   try: SELECT * FROM demo_trades ORDER BY ts DESC LIMIT 20;
  log (JSON lines)  tail -f {var / 'demo.log'}
  health report     bin/marketfeed health -c {var / 'demo.toml'}   (or: kill -USR1 $(cat {var / 'demo.pid'}))
  status file       {var / 'demo-status.json'}
  stop              Ctrl-C{'' if duration_s is None else f' (or wait {duration_s:g} s)'}
""", flush=True)
    try:
        code = run(config, duration_s)
    finally:
        sim.stop()
    _summary(pg_dsn)
    return code


def _summary(pg_dsn: str) -> None:
    try:
        with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT symbol, count(*), count_distinct(trade_id), min(trade_id), max(trade_id) "
                        "FROM demo_trades GROUP BY symbol ORDER BY symbol")
            rows = cur.fetchall()
        conn.close()
    except psycopg2.Error as exc:
        print(f"could not read demo_trades: {exc}", file=sys.stderr)
        return
    print("stored in QuestDB (demo_trades):")
    for symbol, count, distinct, lo, hi in rows:
        print(f"  {symbol}: {count} rows, {distinct} distinct trade ids ({lo}..{hi})")
    print("QuestDB keeps running for you to explore; stop it with: bin/questdb stop")


def _write_config(path: Path, raw: dict) -> None:
    path.write_text(to_toml(raw))
