"""`marketfeed demo`: a local QuestDB, the exchange simulator and the service, wired together."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import psycopg2

from marketfeed.cli.service import run
from marketfeed.config.loader import from_dict, to_toml
from marketfeed.sim import Simulator

# Every simulated exchange, with the symbols it names its markets by and feed settings of its own.
DEMO_FEEDS: dict[str, tuple[list[str], dict[str, object]]] = {
    "binance": (["BTCUSDT", "ETHUSDT"], {}),
    "kraken": (["BTC/USD", "ETH/USD"], {"channels": ["trade", "ohlc-1"]}),
    "coinbase": (["BTC-USD", "ETH-USD"], {}),
    "polygon": (["AAPL", "MSFT"], {"api_key": "demo-key-not-secret", "stale_after_s": 120.0}),
}


def run_prefix(started_at: float) -> str:
    """The table prefix of one demo run, from its start time (UTC, to the second).

    Every run has tables of its own: the simulator's ids start over at the same base each run (its market is
    generated from trade 0), so a second run into the same tables would store ~every id twice, and ids seeded
    from the clock would leave the jump between runs as a gap nothing can fill. A run's tables hold exactly that
    run's ground truth: `marketfeed verify -c <state-dir>/demo.toml` is clean after any number of runs."""
    return time.strftime("demo_%Y%m%d_%H%M%S_", time.gmtime(started_at))


def demo(duration_s: float | None, rate: float, http_listen: str, state_dir: str) -> int:
    http_port = int(os.environ.get("QDB_HTTP_PORT", "9000"))
    pg_port = int(os.environ.get("QDB_PG_PORT", "8812"))
    questdb = Path(str(files("marketfeed.bin") / "questdb"))  # package data: a wheel's install has it too
    subprocess.run(["bash", str(questdb), "start"], check=True)
    var = Path(state_dir).resolve()
    var.mkdir(parents=True, exist_ok=True)
    prefix = run_prefix(time.time())
    trades = f"{prefix}trades"
    sim = Simulator(list(DEMO_FEEDS), {ex: symbols for ex, (symbols, _) in DEMO_FEEDS.items()}, rate=rate).start()
    pg_dsn = f"host=127.0.0.1 port={pg_port} user=admin password=quest dbname=qdb"
    raw = {
        "service": {"status_file": str(var / "demo-status.json"), "pid_file": str(var / "demo.pid"),
                    "log_file": str(var / "demo.log"), "health_interval_s": 30.0, "http_listen": http_listen},
        "sink": {"dead_letter_dir": str(var / "deadletter")},
        "spool": {"dir": str(var / "spool")},
        # The ledger's marks and gaps are those of this run's tables (the spool's paths carry the prefix already).
        "ledger": {"dir": str(var / "ledger" / prefix.rstrip("_"))},
        "questdb": {"conf": f"http::addr=127.0.0.1:{http_port};", "pg_dsn": pg_dsn, "table_prefix": prefix},
        "feeds": [{"name": f"{ex}-sim", "exchange": ex, "url": sim.url(ex), "rest_url": sim.rest_url(ex),
                   "symbols": symbols, **extra} for ex, (symbols, extra) in DEMO_FEEDS.items()],
    }
    config = from_dict(raw, source="demo")
    _write_config(var / "demo.toml", raw)
    print(f"""
marketfeed demo: simulated {', '.join(DEMO_FEEDS)} ({rate:g} trades/s per symbol) → QuestDB
  QuestDB console   http://127.0.0.1:{http_port}/index.html   try: SELECT * FROM {trades} ORDER BY ts DESC LIMIT 20;
  this run's tables {trades}, {prefix}candles (each demo run has its own)
  metrics, health   http://{config.service.http_listen}/metrics  /health  /ready
  log (JSON lines)  tail -f {var / 'demo.log'}
  health report     bin/marketfeed health -c {var / 'demo.toml'}   (or: kill -USR1 $(cat {var / 'demo.pid'}))
  check the rows    bin/marketfeed verify -c {var / 'demo.toml'}   (duplicates, id gaps: exit 0 when clean)
  status file       {var / 'demo-status.json'}
  stop              Ctrl-C{'' if duration_s is None else f' (or wait {duration_s:g} s)'}
""", flush=True)
    try:
        code = run(config, duration_s)
    finally:
        sim.stop()
    _summary(pg_dsn, trades, questdb)
    return code


def _summary(pg_dsn: str, trades: str, questdb: Path) -> None:
    try:
        with psycopg2.connect(pg_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT exchange, symbol, count(*), count_distinct(trade_id) "
                        f"FROM {trades} GROUP BY exchange, symbol ORDER BY exchange, symbol")
            rows = cur.fetchall()
        conn.close()
    except psycopg2.Error as exc:
        print(f"could not read {trades}: {exc}", file=sys.stderr)
        return
    print(f"stored in QuestDB ({trades}):")
    for exchange, symbol, count, distinct in rows:
        print(f"  {exchange:9} {symbol:8} {count:7} rows, {distinct:7} distinct trade ids")
    print(f"QuestDB keeps running for you to explore; stop it with: {_stop_command(questdb)}")


def _stop_command(questdb: Path) -> str:
    checkout = questdb.parent.parent
    in_checkout = (checkout / "setup.cfg").is_file() and Path.cwd() == checkout
    return "bin/questdb stop" if in_checkout else f"bash {questdb} stop"


def _write_config(path: Path, raw: dict) -> None:
    path.write_text(to_toml(raw))
