"""`python -m bench`: the physical ceilings and marketfeed end to end in one run, over TLS, into a QuestDB of its own.

Phases: ceilings over one recorded TLS stream (raw TLS read, frame decoder, parser, row building, QuestDB ingest;
the last three in both number modes, DOUBLE and DECIMAL) → marketfeed at the simulator's max rate (DOUBLE and
DECIMAL, 1 feed; DOUBLE with 4 feeds), py-spy profiles of the 1-feed runs → latency at fixed rates → a QuestDB
outage. The simulator serves wss:// and https:// with a self-signed certificate made for the run, as the real
exchanges serve TLS; marketfeed trusts it through feeds.ca_file. Results go to --out as results.json, results.md,
results.png (bench/report.py) and profile-<mode>.svg.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

from bench import ceilings, report
from bench.ceilings import RawRead
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
MODES = {"double": False, "decimal": True}  # questdb.decimals of each number mode


@dataclass(frozen=True)
class Plan:
    receive_frames: int  # frames of the recorded TLS stream every ceiling is measured on
    keep_frames: int  # of those, parsed, built into rows and ingested
    stock_client_frames: int  # frames of the websocket-client reference loop (0: not measured)
    ingest_repeats: int
    max_rate_frames: int  # frames of one max-rate run, over all its symbols
    max_rate_cases: tuple[tuple[str, int], ...]  # (mode, feeds) of the max-rate runs
    latency_rates: tuple[int, ...]
    latency_s: float
    outage_rate: int
    outage_warmup_s: float
    outage_s: float
    repeats: int = 1  # runs of the raw read and of each max-rate case; the median is reported
    outage_sink: tuple[tuple[str, float], ...] = ()  # [sink] keys of the outage run (FULL: the defaults)
    # py-spy on a 1-feed run of its own per mode, never a measured one (False: on the measured run: the quick plan
    # measures nothing)
    profile_apart: bool = True


FULL = Plan(1_000_000, 200_000, 200_000, 5, 600_000, (("double", 1), ("decimal", 1), ("double", 4)),
            (1_000, 10_000, 50_000), 20.0, 10_000, 10.0, 60.0, repeats=3)
# The quick run's breaker tries QuestDB again after 2 s, not the default 30 s: the same path, 25 s less test. No
# latency run: the outage run is a paced run too.
QUICK = Plan(30_000, 10_000, 0, 1, 30_000, (("double", 1), ("decimal", 1)), (), 1.0, 1_000, 1.0, 1.0,
             outage_sink=(("breaker_reset_s", 2.0),), profile_apart=False)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1: the simulator's, and the CA file marketfeed trusts."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> Certificate:
        # The openssl CLI, as tests/test_hostile_feed.py: no Python package needed. P-256: a quick handshake.
        cert, key = directory / "sim-cert.pem", directory / "sim-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return cls(cert, key)


class SimProcess:
    """A simulator in a process of its own (`module`: bench.simproc, or bench.universe_sim's whole market), driven
    over its stdin/stdout by JSON lines."""

    def __init__(self, module: str = "bench.simproc", **spec):
        self.proc = subprocess.Popen([sys.executable, "-m", module, orjson.dumps(spec).decode()], cwd=REPO,
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


class Profiler:
    """py-spy recording one process until it exits (an SVG flame graph, a lane per thread)."""

    def __init__(self, pid: int, path: Path):
        self.path = path
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        self.proc = None if exe is None else subprocess.Popen(
            # --nonblocking: samples without stopping the process. Stopped by ptrace, the questdb client's HTTP
            # request fails with EINTR ("Interrupted system call (os error 4)") and every flush with it.
            [exe, "record", "--pid", str(pid), "--output", str(path), "--format", "flamegraph", "--rate", "100",
             "--threads", "--nonblocking"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict:
        """Once the process has exited: {"file": name} or {"error": why} (not installed, cannot attach)."""
        if self.proc is None:
            return {"error": "py-spy is not installed (pip install py-spy: the bench extra)"}
        try:
            output, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        if self.proc.returncode != 0 or not self.path.exists():
            return {"error": f"py-spy exited {self.proc.returncode}: {output.strip()[-500:]}"}
        return {"file": self.path.name}


class Bench:
    def __init__(self, plan: Plan, workdir: Path, questdb: QuestDB, certificate: Certificate, out: Path):
        self.plan, self.workdir, self.questdb, self.certificate, self.out = plan, workdir, questdb, certificate, out
        self.runs = 0
        self.profiles: dict[str, dict] = {}

    # --- helpers
    def table_prefix(self) -> str:
        self.runs += 1
        return f"bench{os.getpid()}_{self.runs}_"

    def simulator(self, symbols: list[str], per_symbol: int, **paced) -> SimProcess:
        return SimProcess(symbols=symbols, count=per_symbol, tls=[str(self.certificate.cert),
                                                                  str(self.certificate.key)], **paced)

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

    def start_service(self, prefix: str, sim: SimProcess, feeds: int, decimals: bool = False,
                      sink: dict | None = None, acks: bool = True):
        """The service over the simulator; `acks`: it records when QuestDB acknowledged each row (stop_service)."""
        feed_list = [{"name": f"bench-{k}", "exchange": "binance", "url": sim.urls["url"], "rest_url": sim.urls["rest"],
                      "ca_file": str(self.certificate.cert),
                      "symbols": SYMBOLS[k * SYMBOLS_PER_FEED:(k + 1) * SYMBOLS_PER_FEED]} for k in range(feeds)]
        run_dir = self.workdir / prefix
        run_dir.mkdir()
        config = {
            "service": {"status_file": str(run_dir / "status.json"), "pid_file": str(run_dir / "pid"),
                        "log_file": str(run_dir / "marketfeed.log"), "log_level": "warning", "http_listen": ""},
            "questdb": {"conf": self.questdb.conf, "pg_dsn": self.questdb.pg_dsn, "table_prefix": prefix,
                        "decimals": decimals},
            "spool": {"dir": str(run_dir / "spool")},
            "ledger": {"dir": str(run_dir / "ledger")},
            "sink": {"dead_letter_dir": str(run_dir / "deadletter"), **(sink or {})},
            "feeds": feed_list,
        }
        (run_dir / "marketfeed.toml").write_text(to_toml(config))
        create_tables(self.questdb.pg_dsn, prefix, (TRADES,), decimals=decimals)  # not part of the measured window
        proc = subprocess.Popen([sys.executable, "-m", "bench.probe", str(run_dir / "marketfeed.toml"),
                                 *([str(run_dir / "acks.bin")] if acks else [])], cwd=REPO)
        return proc, run_dir

    def stop_service(self, proc: subprocess.Popen, run_dir: Path) -> list[tuple[int, int]]:
        """Stop the probe process; (trade id, QuestDB ack ns) of every row it wrote, when it recorded them."""
        proc.terminate()
        proc.wait(60)
        if not (run_dir / "acks.bin").exists():
            return []
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

    # --- ceilings
    def ceilings(self) -> dict:
        plan = self.plan
        reads = [self.raw_read() for _ in range(plan.repeats)]  # a noisy machine: the median of a few
        frames = plan.receive_frames // SYMBOLS_PER_FEED * SYMBOLS_PER_FEED
        rates = [read.frames_s(frames) for read in reads]
        decoder_rate, messages, payloads = ceilings.decode(reads[0].chunks, plan.keep_frames)
        if messages < frames:
            raise RuntimeError(f"the raw TLS read ended early: {messages} of {frames} frames")
        result: dict = {
            "tls": reads[0].tls,
            "frames": frames,
            "raw_tls_read_msgs_s": statistics.median(rates),
            "raw_tls_read_runs_msgs_s": rates,
            "raw_tls_read_mb_s": statistics.median(read.bytes_s for read in reads) / 2**20,
            "frame_decoder_msgs_s": decoder_rate,
            "websocket_client_recv_msgs_s": self.stock_client() if plan.stock_client_frames else None,
            "modes": {},
        }
        del reads
        tables = {}
        for mode, decimals in MODES.items():
            tables[mode] = TRADES.name_in_db(prefix := self.table_prefix())
            create_tables(self.questdb.pg_dsn, prefix, (TRADES,), decimals=decimals)
        # A round to warm up first (allocator, QuestDB's JIT and partitions), so neither mode pays for going first.
        for warm_up in (True, False):
            for mode, decimals in MODES.items():
                protocol = BinanceProtocol(FeedConfig("bench", "binance", "wss://unused",
                                                      tuple(SYMBOLS[:SYMBOLS_PER_FEED]), decimals=decimals))
                parse_rate, rows = ceilings.parse(protocol, payloads)
                conf, table = self.questdb.conf, tables[mode]
                result["modes"][mode] = {
                    "parse_msgs_s": parse_rate,
                    "row_building_rows_s": ceilings.row_building(conf, decimals, table, rows),
                    "questdb_ingest_rows_s": ceilings.ingest(conf, decimals, table, rows,
                                                             *((1, plan.ingest_repeats) if warm_up else
                                                               (plan.ingest_repeats, 0))),
                }
        return result

    def raw_read(self) -> RawRead:
        """One recorded TLS stream of receive_frames frames, read to its end by one thread."""
        per_symbol = self.plan.receive_frames // SYMBOLS_PER_FEED
        sim = self.simulator(SYMBOLS[:SYMBOLS_PER_FEED], per_symbol)
        done, result = threading.Event(), []
        try:
            url = BinanceProtocol(FeedConfig("bench", "binance", "wss://unused", tuple(SYMBOLS[:SYMBOLS_PER_FEED]))
                                  ).url(sim.urls["url"])
            reader = threading.Thread(target=lambda: result.append(
                ceilings.tls_read(url, str(self.certificate.cert), done)))
            reader.start()
            sim.ask(wait=1)
            sim.ask(start=True)
            while sim.ask(emitted=True)["emitted"] < per_symbol and reader.is_alive():
                time.sleep(0.05)
            done.set()
            reader.join()
        finally:
            sim.stop()
        if not result:
            raise RuntimeError("the raw TLS read failed (see the traceback above)")
        return result[0]

    def stock_client(self) -> float:
        per_symbol = self.plan.stock_client_frames // SYMBOLS_PER_FEED
        sim = self.simulator(SYMBOLS[:SYMBOLS_PER_FEED], per_symbol)
        result: list[float] = []
        try:
            url = BinanceProtocol(FeedConfig("bench", "binance", "wss://unused", tuple(SYMBOLS[:SYMBOLS_PER_FEED]))
                                  ).url(sim.urls["url"])
            client = threading.Thread(target=lambda: result.append(ceilings.websocket_client_recv(
                url, str(self.certificate.cert), per_symbol * SYMBOLS_PER_FEED)))
            client.start()
            sim.ask(wait=1)
            sim.ask(start=True)
            client.join()
        finally:
            sim.stop()
        return result[0]

    # --- end to end
    def median_max_rate(self, mode: str, feeds: int) -> dict:
        """The median of `repeats` max-rate runs (its RSS and CPU with it); every run's rate is kept. The quick plan
        profiles its one 1-feed run; the full plan profiles a run of its own (the measured ones are left alone)."""
        profile = feeds == 1 and mode not in self.profiles
        runs = sorted((self.max_rate(mode, feeds, profile and not self.plan.profile_apart)
                       for _ in range(self.plan.repeats)), key=lambda r: r["rows_s"])
        if profile and self.plan.profile_apart:
            self.max_rate(mode, feeds, profile=True)
        return {**runs[len(runs) // 2], "rows_s_runs": [r["rows_s"] for r in runs]}

    def max_rate(self, mode: str, feeds: int, profile: bool = False) -> dict:
        symbols = SYMBOLS[:feeds * SYMBOLS_PER_FEED]
        per_symbol = self.plan.max_rate_frames // len(symbols)
        total = per_symbol * len(symbols)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        sim = self.simulator(symbols, per_symbol)
        proc, run_dir = self.start_service(prefix, sim, feeds, MODES[mode], acks=False)
        profiler = None
        try:
            sim.ask(wait=feeds)
            if profile:
                profiler = Profiler(proc.pid, self.out / f"profile-{mode}.svg")
            time.sleep(1.0)  # the service settles (imports done, buffers connected) before the clock starts
            cpu_before = psutil.Process(proc.pid).cpu_times()
            began = time.monotonic()
            sim.ask(start=True)
            samples, visible_at = self.watch(proc, table, total, max(60.0, 20 * total / 50_000))
        finally:
            sim.stop()
        complete = visible_at is not None and self.ids_complete(table, symbols, per_symbol)
        self.stop_service(proc, run_dir)
        if profiler is not None:
            self.profiles[mode] = profiler.result()
        cpu = samples.cpu_s[-1] - (cpu_before.user + cpu_before.system)
        elapsed = (visible_at or samples.at[-1]) - began
        steady = samples.between(began + elapsed / 2, began + elapsed)
        return {"mode": mode, "feeds": feeds, "rows": total, "ids_complete": complete, "wall_s": elapsed,
                "rows_s": total / elapsed if complete else 0.0, "cpu_us_per_msg": 1e6 * cpu / total,
                "rss_peak_mb": max(samples.rss_mb), "rss_steady_mb": statistics.median(steady or samples.rss_mb)}

    def latency(self, rate: int) -> dict:
        symbols = SYMBOLS[:SYMBOLS_PER_FEED]
        per_symbol = int(rate / len(symbols) * self.plan.latency_s)
        prefix = self.table_prefix()
        table = TRADES.name_in_db(prefix)
        per_symbol_rate = rate / len(symbols)
        sim = self.simulator(symbols, per_symbol, rate=per_symbol_rate)  # paced, pre-rendered
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
        sim = self.simulator(symbols, per_symbol, rate=rate / len(symbols))
        proc, run_dir = self.start_service(prefix, sim, 1, sink=dict(plan.outage_sink))
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


def ratios(run: dict, c: dict) -> dict[str, float]:
    """An end-to-end rate as a share of each ceiling measured in the same run (those of its number mode)."""
    own = c["modes"][run["mode"]]
    return {"raw_tls_read": run["rows_s"] / c["raw_tls_read_msgs_s"],
            "frame_decoder": run["rows_s"] / c["frame_decoder_msgs_s"],
            "parse": run["rows_s"] / own["parse_msgs_s"],
            "row_building": run["rows_s"] / own["row_building_rows_s"],
            "questdb_ingest": run["rows_s"] / own["questdb_ingest_rows_s"]}


def decimal_cost(c: dict, runs: list[dict]) -> dict[str, float | None]:
    """DECIMAL's rate as a share of DOUBLE's, stage by stage and end to end (1 feed)."""
    double, decimal = c["modes"]["double"], c["modes"]["decimal"]
    one = {r["mode"]: r["rows_s"] for r in runs if r["feeds"] == 1}
    return {**{key: decimal[key] / double[key] for key in double},
            "end_to_end": one["decimal"] / one["double"] if one.get("double") else None}


def machine(questdb: QuestDB) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "questdb": questdb.query("SELECT build()")[0][0].removeprefix("Build Information: ").split(", Commit")[0],
            "load_average": os.getloadavg()}


@contextlib.contextmanager
def own_questdb(prefix: str) -> Iterator[tuple[Path, QuestDB]]:
    """A scratch directory and a QuestDB of the benchmark's own in it, stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        questdb = QuestDB(Path(tmp) / "questdb")
        questdb.start()
        try:
            yield Path(tmp), questdb
        finally:
            questdb.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default=str(REPO / "bench/results"), help="where results.{json,md,png} go")
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations: checks the benchmark runs, measures nothing")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with own_questdb("marketfeed-bench-") as (tmp, questdb):
        bench = Bench(plan, tmp, questdb, Certificate.make(tmp), out)
        results: dict = {"machine": machine(questdb), "plan": plan.__dict__, "started_at": started}
        print("ceilings…", flush=True)
        results["ceilings"] = c = bench.ceilings()
        print(orjson.dumps(c).decode(), flush=True)
        results["max_rate"] = []
        for mode, feeds in plan.max_rate_cases:
            print(f"max rate, {mode}, {feeds} feed(s)…", flush=True)
            run = bench.median_max_rate(mode, feeds)
            run["ratios"] = ratios(run, c)
            results["max_rate"].append(run)
            print(orjson.dumps(run).decode(), flush=True)
        results["decimal_cost"] = decimal_cost(c, results["max_rate"])
        results["profiles"] = bench.profiles
        best_one_feed = results["max_rate"][0]["rows_s"]
        results["latency"] = []
        for rate in plan.latency_rates:
            if rate > 0.9 * best_one_feed:
                results["latency"].append({"rate": rate, "reachable": False})
                continue
            print(f"latency at {rate} msgs/s…", flush=True)
            results["latency"].append(bench.latency(rate))
            print(orjson.dumps(results["latency"][-1]).decode(), flush=True)
        sink, feed = SinkConfig(), FeedConfig("bench", "binance", "wss://unused", ("BTCUSDT",))
        results["flush_settings"] = {"sink.max_rows": sink.max_rows, "sink.flush_interval_s": sink.flush_interval_s,
                                     "feed.batch_rows": feed.batch_rows, "feed.batch_linger_s": feed.batch_linger_s}
        print("QuestDB outage…", flush=True)
        results["outage"] = bench.outage()
        print(orjson.dumps(results["outage"]).decode(), flush=True)
        results["machine"]["load_average_end"] = os.getloadavg()
    results["duration_s"] = time.time() - started
    report.write(results, out)
    print(f"results in {out}", flush=True)
    return 0
