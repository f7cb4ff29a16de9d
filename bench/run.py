"""`python -m bench`: ceilings and marketfeed end to end in one run, against a QuestDB of its own.

Phases: ceilings (raw receive, orjson, parser, row building, QuestDB ingest) → marketfeed at the
simulator's max rate with 1 and 4 feeds → latency at fixed rates → a QuestDB outage. Results go to
--out as results.json, results.md and results.png (bench/report.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

from bench import ceilings, report
from marketfeed.config.loader import to_toml
from marketfeed.config.schema import FeedConfig, SinkConfig
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.sim.market import ID_BLOCK  # symbol k's trade i has id (k + 1) * ID_BLOCK + i
from marketfeed.storage.schema import create_tables
from marketfeed.storage.tables import TRADES
from tests.support.questdb import REPO, QuestDB

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "AVAXUSDT"]
SYMBOLS_PER_FEED = 2
SAMPLE_S = 0.25  # RSS, CPU and row-count polling period


@dataclass(frozen=True)
class Plan:
    receive_frames: int  # frames for the receive ceiling
    keep_frames: int  # of those, kept for the parse and row-building ceilings
    ingest_repeats: int
    max_rate_s: float  # target length of a max-rate run (sized from the receive ceiling)
    latency_rates: tuple[int, ...]
    latency_s: float
    outage_rate: int
    outage_warmup_s: float
    outage_s: float
    repeats: int = 1  # runs of the receive ceiling and of each max-rate case; the median is reported
    outage_sink: tuple[tuple[str, float], ...] = ()  # [sink] keys of the outage run (FULL: the defaults)


FULL = Plan(1_000_000, 200_000, 5, 15.0, (1_000, 10_000, 50_000), 20.0, 10_000, 10.0, 60.0, repeats=3)
# The quick run's breaker tries QuestDB again after 2 s, not the default 30 s: the same path, 25 s less test.
QUICK = Plan(30_000, 10_000, 1, 1.0, (1_000,), 1.0, 1_000, 1.0, 1.0, outage_sink=(("breaker_reset_s", 2.0),))


class SimProcess:
    def __init__(self, **spec):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.simproc", orjson.dumps(spec).decode()], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are PIPE
        self.commands, self.replies = self.proc.stdin, self.proc.stdout
        self.urls = self._reply()

    def ask(self, **command) -> dict:
        self.commands.write(orjson.dumps(command).decode() + "\n")
        self.commands.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"simulator process exited ({self.proc.wait()})")
        return orjson.loads(line)

    def stop(self) -> None:
        self.commands.close()
        self.proc.wait(30)


@dataclass
class Samples:
    """RSS and CPU of the measured process over time, and rows visible in QuestDB."""

    at: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def add(self, process: psutil.Process, rows: int) -> None:
        cpu = process.cpu_times()
        self.at.append(time.monotonic())
        self.rss_mb.append(process.memory_info().rss / 2**20)
        self.cpu_s.append(cpu.user + cpu.system)
        self.rows.append(rows)

    def between(self, start: float, end: float) -> list[float]:
        return [rss for t, rss in zip(self.at, self.rss_mb, strict=True) if start <= t <= end]


class Bench:
    def __init__(self, plan: Plan, workdir: Path, questdb: QuestDB):
        self.plan, self.workdir, self.questdb = plan, workdir, questdb
        self.runs = 0

    # --- helpers
    def table_prefix(self) -> str:
        self.runs += 1
        return f"bench{os.getpid()}_{self.runs}_"

    def count_rows(self, table: str) -> int:
        try:
            return self.questdb.query(f"SELECT count() FROM {table}")[0][0]
        except Exception:  # noqa: BLE001 - not created yet, or QuestDB down for the outage phase
            return -1

    def ids_complete(self, table: str, symbols: list[str], count: int) -> bool:
        first = {s: (k + 1) * ID_BLOCK for k, s in enumerate(symbols)}  # the sim's id blocks
        got = {r[0]: r[1:] for r in self.questdb.query(
            f"SELECT symbol, count(), count_distinct(trade_id), min(trade_id), max(trade_id) FROM {table}")}
        return all(got.get(s) == (count, count, first[s], first[s] + count - 1) for s in symbols)

    def start_service(self, prefix: str, sim: SimProcess, feeds: int, sink: dict | None = None):
        feed_list = [{"name": f"bench-{k}", "exchange": "binance", "url": sim.urls["url"], "rest_url": sim.urls["rest"],
                      "symbols": SYMBOLS[k * SYMBOLS_PER_FEED:(k + 1) * SYMBOLS_PER_FEED]} for k in range(feeds)]
        run_dir = self.workdir / prefix
        run_dir.mkdir()
        config = {
            "service": {"status_file": str(run_dir / "status.json"), "pid_file": str(run_dir / "pid"),
                        "log_file": str(run_dir / "marketfeed.log"), "log_level": "warning", "http_listen": ""},
            "questdb": {"conf": self.questdb.conf, "pg_dsn": self.questdb.pg_dsn, "table_prefix": prefix},
            "spool": {"dir": str(run_dir / "spool")},
            "ledger": {"dir": str(run_dir / "ledger")},
            "sink": {"dead_letter_dir": str(run_dir / "deadletter"), **(sink or {})},
            "feeds": feed_list,
        }
        (run_dir / "marketfeed.toml").write_text(to_toml(config))
        create_tables(self.questdb.pg_dsn, prefix, (TRADES,))  # not part of the measured window
        proc = subprocess.Popen([sys.executable, "-m", "bench.probe", str(run_dir / "marketfeed.toml"),
                                 str(run_dir / "acks.bin")], cwd=REPO)
        return proc, run_dir

    def stop_service(self, proc: subprocess.Popen, run_dir: Path) -> list[tuple[int, int]]:
        """Stop the probe process; (trade id, QuestDB ack ns) of every row it wrote."""
        proc.terminate()
        proc.wait(60)
        values = array("q")
        values.frombytes((run_dir / "acks.bin").read_bytes())
        return list(zip(values[::2], values[1::2], strict=True))

    def watch(self, proc, table: str, total: int, timeout: float, on_tick=None) -> tuple[Samples, float | None]:
        """Sample until `total` rows are visible; returns the samples and when that happened (None: timeout)."""
        samples, process = Samples(), psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.count_rows(table)
            samples.add(process, rows)
            if rows >= total:
                return samples, samples.at[-1]
            if on_tick is not None:
                on_tick(samples)
            time.sleep(SAMPLE_S)
        return samples, None

    # --- phases
    def ceilings(self, protocol: BinanceProtocol) -> dict:
        plan = self.plan
        runs = [self.raw_receive(protocol) for _ in range(plan.repeats)]  # a noisy machine: the median of a few
        frames = runs[0]["frames"]
        rates = [run["rate"] for run in runs]
        parser_rate, rows = ceilings.protocol_parse(protocol, frames)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        create_tables(self.questdb.pg_dsn, prefix, (TRADES,))
        return {
            "raw_receive_msgs_s": statistics.median(rates),
            "raw_receive_runs_msgs_s": rates,
            "orjson_parse_msgs_s": ceilings.orjson_parse(frames),
            "binance_parser_msgs_s": parser_rate,
            "row_building_rows_s": ceilings.row_building(self.questdb.conf, table, rows),
            "questdb_ingest_rows_s": ceilings.ingest(self.questdb.conf, table, rows, plan.ingest_repeats),
        }

    def raw_receive(self, protocol: BinanceProtocol) -> dict:
        """One run of the receive ceiling: {"rate": frames/s, "frames": the first keep_frames frames}."""
        plan = self.plan
        per_symbol = plan.receive_frames // SYMBOLS_PER_FEED
        sim = SimProcess(symbols=SYMBOLS[:SYMBOLS_PER_FEED], count=per_symbol)
        try:
            url = protocol.url(sim.urls["url"])
            result: dict = {}
            client = threading.Thread(target=lambda: result.update(zip(
                ("rate", "frames"), ceilings.receive(url, per_symbol * SYMBOLS_PER_FEED, plan.keep_frames),
                strict=True)))
            client.start()
            sim.ask(wait=1)
            sim.ask(start=True)
            client.join()
        finally:
            sim.stop()
        return result

    def median_max_rate(self, feeds: int, expected_rate: float) -> dict:
        """The median of `repeats` max-rate runs (its RSS and CPU with it); every run's rate is kept."""
        runs = sorted((self.max_rate(feeds, expected_rate) for _ in range(self.plan.repeats)),
                      key=lambda r: r["rows_s"])
        return {**runs[len(runs) // 2], "rows_s_runs": [r["rows_s"] for r in runs]}

    def max_rate(self, feeds: int, expected_rate: float) -> dict:
        symbols = SYMBOLS[:feeds * SYMBOLS_PER_FEED]
        per_symbol = max(1000, int(expected_rate * self.plan.max_rate_s / len(symbols)))
        total = per_symbol * len(symbols)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        sim = SimProcess(symbols=symbols, count=per_symbol)
        proc, run_dir = self.start_service(prefix, sim, feeds)
        try:
            sim.ask(wait=feeds)
            time.sleep(1.0)  # the service settles (imports done, buffers connected) before the clock starts
            cpu_before = psutil.Process(proc.pid).cpu_times()
            began = time.monotonic()
            sim.ask(start=True)
            samples, visible_at = self.watch(proc, table, total, max(60.0, 10 * self.plan.max_rate_s))
        finally:
            sim.stop()
        complete = visible_at is not None and self.ids_complete(table, symbols, per_symbol)
        self.stop_service(proc, run_dir)
        cpu = samples.cpu_s[-1] - (cpu_before.user + cpu_before.system)
        elapsed = (visible_at or samples.at[-1]) - began
        steady = samples.between(began + elapsed / 2, began + elapsed)
        return {"feeds": feeds, "rows": total, "ids_complete": complete, "wall_s": elapsed,
                "rows_s": total / elapsed if complete else 0.0, "cpu_s_per_1000": 1000 * cpu / total,
                "rss_peak_mb": max(samples.rss_mb), "rss_steady_mb": statistics.median(steady or samples.rss_mb)}

    def latency(self, rate: int) -> dict:
        symbols = SYMBOLS[:SYMBOLS_PER_FEED]
        per_symbol = int(rate / len(symbols) * self.plan.latency_s)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        per_symbol_rate = rate / len(symbols)
        sim = SimProcess(symbols=symbols, count=per_symbol, rate=per_symbol_rate)  # paced, pre-rendered
        proc, run_dir = self.start_service(prefix, sim, 1)
        try:
            sim.ask(wait=1)
            time.sleep(1.0)
            began = time.monotonic()
            started_ns = sim.ask(start=True)["started_ns"]
            samples, visible_at = self.watch(proc, table, per_symbol * len(symbols),
                                             self.plan.latency_s + 60)
        finally:
            sim.stop()
        # Trade i of every symbol (id block + i) was due at started_ns + i / rate and went out at most
        # sim.server.PACED_CHUNK_S later: latency from the due time, so a late sender counts against us.
        lags_ms = sorted((acked_ns - started_ns - (trade_id % ID_BLOCK) * 1e9 / per_symbol_rate) / 1e6
                         for trade_id, acked_ns in self.stop_service(proc, run_dir))
        sent_s = (visible_at or samples.at[-1]) - began
        return {"rate": rate, "rows": len(lags_ms), "achieved_rate": per_symbol * len(symbols) / sent_s,
                "p50_ms": percentile(lags_ms, 50), "p99_ms": percentile(lags_ms, 99),
                "max_ms": lags_ms[-1] if lags_ms else None}

    def outage(self) -> dict:
        plan, symbols = self.plan, SYMBOLS[:SYMBOLS_PER_FEED]
        rate = plan.outage_rate
        run_s = plan.outage_warmup_s + plan.outage_s + plan.outage_warmup_s
        per_symbol = int(rate / len(symbols) * run_s)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        sim = SimProcess(symbols=symbols, count=per_symbol, rate=rate / len(symbols))
        proc, run_dir = self.start_service(prefix, sim, 1, dict(plan.outage_sink))
        marks: dict[str, float] = {}

        def outage_control(samples: Samples) -> None:
            now = time.monotonic()
            if "down" not in marks and now - marks["began"] >= plan.outage_warmup_s:
                self.questdb.stop()
                marks["down"] = time.monotonic()
            elif "down" in marks and "up" not in marks and now - marks["down"] >= plan.outage_s:
                self.questdb.start()
                marks["up"] = time.monotonic()

        try:
            sim.ask(wait=1)
            time.sleep(1.0)
            marks["began"] = time.monotonic()
            sim.ask(start=True)
            samples, visible_at = self.watch(proc, table, per_symbol * len(symbols), run_s + 180,
                                             outage_control)
        finally:
            sim.stop()
            if "down" in marks and "up" not in marks:
                self.questdb.start()
        complete = visible_at is not None and self.ids_complete(table, symbols, per_symbol)
        self.stop_service(proc, run_dir)
        during = samples.between(marks["down"], marks["up"])
        return {"rate": rate, "outage_s": marks["up"] - marks["down"], "ids_complete_after": complete,
                "recovered_s": (visible_at - marks["up"]) if visible_at else None,
                "rss_peak_mb": max(during), "rss_steady_mb": statistics.median(during),
                "rss_before_mb": statistics.median(samples.between(marks["began"], marks["down"]) or [0.0])}


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "questdb": os.environ.get("QDB_VERSION", "bin/questdb default"), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default=str(REPO / "bench/results"), help="where results.{json,md,png} go")
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations: checks the benchmark runs, measures nothing")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = BinanceProtocol(FeedConfig("bench", "binance", "ws://unused", tuple(SYMBOLS[:SYMBOLS_PER_FEED])))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="marketfeed-bench-") as tmp:
        questdb = QuestDB(Path(tmp) / "questdb")
        questdb.start()
        try:
            bench = Bench(plan, Path(tmp), questdb)
            results: dict = {"machine": machine(), "plan": plan.__dict__, "started_at": started}
            print("ceilings…", flush=True)
            results["ceilings"] = c = bench.ceilings(protocol)
            print(orjson.dumps(c).decode(), flush=True)
            raw = c["raw_receive_msgs_s"]
            results["max_rate"] = []
            for feeds in (1, 4):
                print(f"max rate, {feeds} feed(s)…", flush=True)
                r = bench.median_max_rate(feeds, raw)
                r["ratio_to_raw_receive"] = r["rows_s"] / raw
                results["max_rate"].append(r)
                print(orjson.dumps(r).decode(), flush=True)
            best_one_feed = results["max_rate"][0]["rows_s"]
            results["latency"] = []
            for rate in plan.latency_rates:
                if rate > 0.9 * best_one_feed:
                    results["latency"].append({"rate": rate, "reachable": False})
                    continue
                print(f"latency at {rate} msgs/s…", flush=True)
                results["latency"].append(bench.latency(rate))
                print(orjson.dumps(results["latency"][-1]).decode(), flush=True)
            sink, feed = SinkConfig(), protocol.feed
            results["flush_settings"] = {"sink.max_rows": sink.max_rows, "sink.flush_interval_s": sink.flush_interval_s,
                                         "feed.batch_rows": feed.batch_rows, "feed.batch_linger_s": feed.batch_linger_s}
            print("QuestDB outage…", flush=True)
            results["outage"] = bench.outage()
            print(orjson.dumps(results["outage"]).decode(), flush=True)
        finally:
            questdb.stop()
    results["duration_s"] = time.time() - started
    report.write(results, out)
    print(f"results in {out}", flush=True)
    return 0
