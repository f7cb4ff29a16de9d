"""`python -m bench.whole_market [--quick] [--out DIR]`: the whole market in one run, against a QuestDB of its own.

Every Binance symbol quoted in USDT (1,500 generated, `symbols = ["*"]`, `quote_assets = ["USDT"]`) × trade +
kline_1m — 3,000 streams, so ⌈3000 / 1024⌉ = 3 connections — plus every options trade on Polygon's /options
cluster (`T.*`, 1,000 contracts) worth at least MIN_TRADE_VALUE. The simulator runs in a process of its own
(bench/universe_sim.py, on its market clock: klines are built as trades happen, nothing is pre-rendered; wss:// and
https:// with a certificate made for the run, as bench/run.py) and `marketfeed run` in another, so each one's CPU is
measured apart.

The per-symbol rate is stepped up (Plan.rates), each step a fresh simulator, service and tables, until a step
is not sustained (verdict()): the simulator did not send on schedule, the service fell behind (the receive lag grew,
or the rows were not all in QuestDB soon after the last trade was sent), a connection was opened again (a slow
consumer cut off), ids were not complete or the simulator refused something.
Then one step between the highest sustained rate and the first that was not. The whole-market figures are
those of the highest sustained step; every step is kept. Results: DIR/whole_market.json and .md.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil

from bench.report import _n
from bench.run import SAMPLE_S, Certificate, Samples, SimProcess, machine, own_questdb
from marketfeed.config.schema import SinkConfig
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.storage.tables import CANDLES, TRADES
from tests.support.questdb import REPO, QuestDB
from tests.support.service import ServiceProcess, service_config

CHANNELS = ("trade", "kline_1m")  # one stream each per symbol; every trade makes one frame on each
API_KEY = "PKbenchwholemarket"  # the simulator's Polygon twin accepts this key only
MIN_TRADE_VALUE = 100_000.0  # Polygon: price × size × 100 per contract; about one trade in eight reaches it
RSS_TARGET_MB = 250.0  # steady, for the whole market (issue 16)
# Keeping up: a service that handles at least KEEP_UP of the sent rate ends a D-second step at most (1 - KEEP_UP) × D
# behind, plus its pipeline's own latency (batch linger, flush interval 0.1 s, WAL apply, our 0.25 s sampling).
KEEP_UP = 0.95
PIPELINE_S = 1.0
DRAIN_TIMEOUT_S = 60.0  # a step that has not drained by then has fallen behind for good
ON_SCHEDULE = 1.05  # the simulator sent a step's trades within this share of its duration (+ SCHEDULE_SLACK_S)
SCHEDULE_SLACK_S = 0.5
SIM_BOUND_CPU = 0.9  # a simulator this busy (of its one core: one loop thread under the GIL) limits the step


@dataclass(frozen=True)
class Plan:
    binance_symbols: int
    polygon_contracts: int
    max_streams_per_connection: int  # 0: Binance's documented limit (1024)
    duration_s: float  # each step's trades span this long at its rate
    rates: tuple[float, ...]  # trades/s per symbol, stepped through until one is not sustained
    refine: bool  # one more step halfway between the highest sustained rate and the first that was not

    @property
    def streams(self) -> int:
        return self.binance_symbols * len(CHANNELS)

    @property
    def connections(self) -> int:
        """Binance connections the feed must open, as the exchange's stream limit requires, plus Polygon's one."""
        limit = self.max_streams_per_connection or BinanceProtocol.connection_limits.max_streams
        return math.ceil(self.streams / limit) + 1

    def messages_per_tick(self) -> int:
        """Exchange messages per clock tick: a frame per Binance stream, a trade event per Polygon contract."""
        return self.streams + self.polygon_contracts


FULL = Plan(1500, 1000, 0, 20.0, (1, 2, 4, 8, 16, 32, 64), refine=True)
# 60 symbols on streams of 50 per connection: still 3 Binance connections, in a few seconds.
QUICK = Plan(60, 20, 50, 3.0, (5,), refine=False)


class Step:
    """One rate: a simulator process, `marketfeed run` and tables of their own; measure() runs it."""

    def __init__(self, plan: Plan, rate: float, questdb: QuestDB, workdir: Path, certificate: Certificate,
                 number: int):
        self.plan, self.rate, self.questdb, self.certificate = plan, rate, questdb, certificate
        self.count = max(1, round(rate * plan.duration_s))  # trades per symbol
        self.prefix = f"wm{os.getpid()}_{number}_"
        self.trades, self.candles = TRADES.name_in_db(self.prefix), CANDLES.name_in_db(self.prefix)
        self.run_dir = workdir / self.prefix
        self.run_dir.mkdir()

    def feeds(self, urls: dict) -> list[dict]:
        binance, polygon, ca_file = urls["binance"], urls["polygon"], str(self.certificate.cert)
        return [{"name": "binance-usdt", "exchange": "binance", "url": binance["ws"], "rest_url": binance["rest"],
                 "ca_file": ca_file, "symbols": ["*"], "quote_assets": ["USDT"], "channels": list(CHANNELS),
                 "max_streams_per_connection": self.plan.max_streams_per_connection},
                {"name": "polygon-options", "exchange": "polygon", "url": f"{polygon['ws']}/options",
                 "rest_url": polygon["rest"], "ca_file": ca_file, "symbols": ["*"], "api_key": API_KEY,
                 "min_trade_value": MIN_TRADE_VALUE}]

    def measure(self) -> dict:
        plan = self.plan
        universe = {"binance": plan.binance_symbols, "polygon": plan.polygon_contracts}
        sim = SimProcess("bench.universe_sim", universe=universe, rate=self.rate, count=self.count, api_key=API_KEY,
                         min_trade_value=MIN_TRADE_VALUE, tls=[str(self.certificate.cert), str(self.certificate.key)])
        sink = SinkConfig()  # the defaults, not the tests' quick ones
        config = service_config(self.run_dir, self.questdb, self.prefix, self.feeds(sim.urls),
                                sink={"max_rows": sink.max_rows, "flush_interval_s": sink.flush_interval_s})
        began = time.monotonic()
        service = ServiceProcess.start(self.run_dir, config)
        try:
            sim.ask(wait_streams={"binance": plan.streams, "polygon": 1})
            startup_s = time.monotonic() - began
            truth = sim.ask(truth=True)  # of the `count` ticks the run will have: before the clock starts
            run = self.watch(sim, service, truth)
            opened = sim.ask(opened=True)["opened"]
            refusals = sim.ask(refusals=True)["refusals"]
            events = {name: service.events(name) for name in ("universe_resolved", "feed_connected")}
        finally:
            exit_code = service.stop(60)
            sim.stop()
        return {"rate_per_symbol": self.rate, "trades_per_symbol": self.count, "startup_s": startup_s, **run,
                "service_exit_code": exit_code,
                "connections": self.connections(opened, events), "refusals": refusals,
                **self.ids_complete(truth), "load_average_after": os.getloadavg()}

    def watch(self, sim: SimProcess, service: ServiceProcess, truth: dict) -> dict:
        """Start the clock; sample the service, the simulator and the rows in QuestDB until every row is there."""
        expected = sum(n for _, n in truth["binance"].values()) + truth["polygon_qualifying"]
        processes = {"service": psutil.Process(service.proc.pid), "simulator": psutil.Process(sim.proc.pid),
                     "questdb": self.questdb_process}
        service_samples, emitted = Samples(), Samples()  # emitted: the simulator's, its trades per symbol so far
        service_samples.add(processes["service"], 0)
        cpu_start = cpu_seconds(processes)
        started_ns = sim.ask(start=True)["started_ns"]
        began = time.monotonic()
        sent_at = visible_at = None
        cpu_sent = cpu_start
        while visible_at is None:
            time.sleep(SAMPLE_S)
            emitted.add(processes["simulator"], sim.ask(emitted=True)["emitted"])  # first: rows counted later
            if sent_at is None and emitted.rows[-1] >= self.count:
                sent_at, cpu_sent = emitted.at[-1], cpu_seconds(processes)
            rows = self.count_rows(self.trades)
            service_samples.add(processes["service"], rows)
            now = service_samples.at[-1]
            if sent_at is not None and rows >= expected:
                visible_at = now
            elif now - (sent_at or began) > DRAIN_TIMEOUT_S + (0 if sent_at else 2 * self.plan.duration_s):
                break
        cpu_end = cpu_seconds(processes)
        end = visible_at or service_samples.at[-1]
        if sent_at is None:
            cpu_sent = cpu_end
        messages = emitted.rows[-1] * self.plan.messages_per_tick()  # every tick sent (count unless it fell behind)
        send_s = (sent_at or end) - began
        used = {name: cpu_end[name] - cpu_start[name] for name in cpu_end}  # all the work of the step's messages
        while_sending = {name: (cpu_sent[name] - cpu_start[name]) / send_s for name in cpu_end}
        while_sending["other"] = while_sending.pop("machine") - sum(while_sending.values())
        sending = service_samples.between(began + send_s / 2, began + send_s)  # steady: the second half
        on_schedule = sent_at is not None and send_s <= self.plan.duration_s * ON_SCHEDULE + SCHEDULE_SLACK_S
        return {
            "messages": messages, "rows_expected": expected, "rows_visible": service_samples.rows[-1],
            "target_msgs_s": self.rate * self.plan.messages_per_tick(), "sent_msgs_s": messages / send_s,
            "sent_on_schedule": on_schedule, "send_s": send_s,
            "drain_s": None if visible_at is None or sent_at is None else visible_at - sent_at,
            "rows_s": service_samples.rows[-1] / (end - began), "sent_rows_s": expected / send_s,
            "service_cpu_s_per_1000_msgs": 1000 * used["service"] / messages,
            "sim_cpu_s_per_1000_msgs": 1000 * used["simulator"] / messages,
            "cores_busy_while_sending": while_sending,  # of os.cpu_count(): ours, QuestDB's, the machine's other work
            "rss_steady_mb": statistics.median(sending or service_samples.rss_mb),
            "rss_peak_mb": max(service_samples.rss_mb),
            "receive_lag_ms": self.receive_lag_ms(started_ns, truth["start_ms"]),
            "candle_rows": self.count_rows(self.candles),
        }

    @property
    def questdb_process(self) -> psutil.Process:
        return psutil.Process(int((self.questdb.root / "questdb.pid").read_text()))  # bin/questdb's pid file

    def count_rows(self, table: str) -> int:
        try:
            return self.questdb.query(f"SELECT count() FROM {table}")[0][0]
        except Exception:  # noqa: BLE001 - not created yet
            return 0

    def receive_lag_ms(self, started_ns: int, start_ms: int) -> dict:
        """Binance rows' received_at after the time the simulator was due to send them (trade i at clock start + i /
        rate, its event time start_ms + i × 1000 / rate): how far the reader ran behind the market, per second of
        the run (mean and max) and over all of it."""
        start_ns, offset_ns = start_ms * 1_000_000, started_ns - start_ms * 1_000_000
        lag = "cast(received_at AS long) - cast(ts AS long)"
        rows = self.questdb.query(
            f"SELECT cast((cast(ts AS long) - {start_ns}) / 1000000000 AS int) AS second, avg({lag}), max({lag}) "
            f"FROM {self.trades} WHERE exchange = 'binance' ORDER BY second")
        means = [(mean - offset_ns) / 1e6 for _, mean, _ in rows]
        quarter = max(1, len(means) // 4)
        return {"mean": statistics.fmean(means) if means else None,
                "max": max(worst for *_, worst in rows) / 1e6 - offset_ns / 1e6 if rows else None,
                "growth": statistics.fmean(means[-quarter:]) - statistics.fmean(means[:quarter]) if means else None,
                "per_second_mean": [round(m, 1) for m in means],
                "per_second_max": [round((worst - offset_ns) / 1e6, 1) for *_, worst in rows]}

    def connections(self, opened: dict, events: dict) -> dict:
        resolved = {e["feed"]: {"symbols": e["symbols"], "connections": e["connections"]}
                    for e in events["universe_resolved"]}
        connected: dict[str, int] = {}
        for e in events["feed_connected"]:
            connected[e["feed"]] = connected.get(e["feed"], 0) + 1
        return {"planned": self.plan.connections, "sim_opened": opened, "universe_resolved": resolved,
                "feed_connected": connected}

    def ids_complete(self, truth: dict) -> dict:
        """Binance: per symbol the stored ids are exactly the truth's range (count, distinct, min and max in one
        query for every symbol); Polygon: the stored count is the qualifying trades of the truth."""
        stored = {symbol: rest for symbol, *rest in self.questdb.query(
            f"SELECT symbol, count(), count_distinct(trade_id), min(trade_id), max(trade_id) FROM {self.trades} "
            "WHERE exchange = 'binance'")}
        want = {symbol: [n, n, first, first + n - 1] for symbol, (first, n) in truth["binance"].items()}
        wrong = sorted(s for s in want.keys() | stored.keys() if want.get(s) != stored.get(s))
        polygon = self.questdb.query(f"SELECT count() FROM {self.trades} WHERE exchange = 'polygon'")[0][0]
        return {"binance_ids_complete": not wrong, "binance_symbols_wrong": len(wrong),
                "binance_wrong_sample": wrong[:10], "polygon_stored": polygon,
                "polygon_qualifying": truth["polygon_qualifying"],
                "polygon_complete": polygon == truth["polygon_qualifying"]}


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) each process has used so far, and the whole machine's busy seconds ("machine")."""
    seconds = {name: sum(process.cpu_times()[:2]) for name, process in processes.items()}
    machine = psutil.cpu_times()
    seconds["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return seconds


def verdict(step: dict, plan: Plan) -> dict:
    """Whether the step's rate was sustained and, if not, what limited it, one or more of: the simulator (it could
    not send on schedule, busy on its core), the machine (it could not, though not that busy: the cores were taken)
    and the service (the rows fell behind what was sent: receive lag growing, QuestDB behind at the end, or a
    connection cut off as a slow consumer)."""
    behind_s = (1 - KEEP_UP) * plan.duration_s
    drained = step["drain_s"] is not None and step["drain_s"] <= behind_s + PIPELINE_S
    lag_growth_ms = step["receive_lag_ms"].get("growth")
    lag_flat = lag_growth_ms is not None and lag_growth_ms <= behind_s * 1000
    reopened = sum(step["connections"]["sim_opened"].values()) > plan.connections
    complete = step["binance_ids_complete"] and step["polygon_complete"]
    kept_up = drained and lag_flat and not reopened
    sustained = step["sent_on_schedule"] and kept_up and complete and not any(step["refusals"].values())
    limits = []
    if not step["sent_on_schedule"]:  # the simulator busy on its core, or short of one: the machine's cores were taken
        limits.append("simulator" if step["cores_busy_while_sending"]["simulator"] >= SIM_BOUND_CPU else "machine")
    if not kept_up:
        limits.append("service")
    limited_by = " and ".join(limits) or (None if sustained else "ids or refusals")
    return {"drained": drained, "lag_flat": lag_flat, "reopened": reopened, "sustained": sustained,
            "limited_by": limited_by}


def run_steps(plan: Plan, questdb: QuestDB, workdir: Path) -> list[dict]:
    steps: list[dict] = []
    certificate = Certificate.make(workdir)

    def one(rate: float) -> dict:
        print(f"whole market at {rate:g} trades/s per symbol…", flush=True)
        step = Step(plan, rate, questdb, workdir, certificate, len(steps)).measure()
        step |= verdict(step, plan)
        steps.append(step)
        print(orjson.dumps(step).decode(), flush=True)
        return step

    for rate in plan.rates:
        if not one(rate)["sustained"]:
            break
    good = [s["rate_per_symbol"] for s in steps if s["sustained"]]
    bad = [s["rate_per_symbol"] for s in steps if not s["sustained"]]
    if plan.refine and good and bad:
        one((max(good) + min(bad)) / 2)
    return steps


def summary(steps: list[dict]) -> dict:
    """The whole-market figures: the highest sustained step's (none sustained: the slowest step's)."""
    sustained = [s for s in steps if s["sustained"]]
    best = max(sustained, key=lambda s: s["rate_per_symbol"]) if sustained else steps[0]
    first_failed = min((s for s in steps if not s["sustained"]), key=lambda s: s["rate_per_symbol"], default=None)
    return {"highest_sustained_rate_per_symbol": best["rate_per_symbol"] if sustained else None,
            "limited_by": first_failed and first_failed["limited_by"],
            "first_unsustained_rate_per_symbol": first_failed and first_failed["rate_per_symbol"],
            "rss_target_mb": RSS_TARGET_MB, "rss_within_target": best["rss_steady_mb"] <= RSS_TARGET_MB,
            "step": best}


def markdown(results: dict) -> str:
    m, s = results["machine"], results["summary"]
    best, plan = s["step"], results["plan"]
    c, busy = best["connections"], best["cores_busy_while_sending"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, "
         f"{m['questdb']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_average'])} (shared with "
         "other work: compare ratios within one run)."),
        "",
        (f"Whole market: {plan['binance_symbols']:,} Binance USDT symbols × {' + '.join(CHANNELS)} "
         f"({plan['binance_symbols'] * len(CHANNELS):,} streams) + {plan['polygon_contracts']:,} Polygon options "
         f"contracts under T.* (min_trade_value {MIN_TRADE_VALUE:,.0f}), over TLS; simulator and service in separate "
         "processes."),
        "",
        "| measurement | value | target |",
        "| --- | --- | --- |",
        (f"| highest sustained rate | {_n(s['highest_sustained_rate_per_symbol'])} trades/s per symbol = "
         f"{_n(best['target_msgs_s'])} msgs/s | |"),
        ("| first rate not sustained | " + (f"{s['first_unsustained_rate_per_symbol']:g} trades/s per symbol (limited "
                                             f"by: {s['limited_by']})" if s['limited_by'] else
                                             f"none up to {max(plan['rates']):g} trades/s per symbol") + " | |"),
        (f"| connections opened (simulator's log / service's feed_connected) | "
         f"{', '.join(f'{k} {v}' for k, v in c['sim_opened'].items())} / "
         f"{', '.join(f'{k} {v}' for k, v in c['feed_connected'].items())} | {c['planned']} |"),
        (f"| rows/s into QuestDB (trades: every Binance one, the qualifying Polygon ones) | {_n(best['rows_s'])} "
         f"rows/s (sent: {_n(best['sent_rows_s'])} rows/s in {_n(best['sent_msgs_s'])} msgs/s) | |"),
        (f"| service CPU per 1000 msgs | {_n(best['service_cpu_s_per_1000_msgs'], 3)} s "
         f"({busy['service']:.2f} cores while sending) | |"),
        (f"| simulator CPU per 1000 msgs | {_n(best['sim_cpu_s_per_1000_msgs'], 3)} s "
         f"({busy['simulator']:.2f} cores while sending) | |"),
        (f"| service RSS, steady / peak | {_n(best['rss_steady_mb'])} / {_n(best['rss_peak_mb'])} MB "
         f"({'within' if s['rss_within_target'] else 'ABOVE'} target) | steady ≤ {RSS_TARGET_MB:.0f} MB |"),
        f"| startup: process start → all connections subscribed | {best['startup_s']:.1f} s | |",
        (f"| cores busy while sending (of {m['cores']}): service / simulator / QuestDB / other work | "
         f"{' / '.join(f'{v:.2f}' for v in busy.values())} | |"),
        (f"| ids complete | Binance {'yes' if best['binance_ids_complete'] else 'NO'} (every symbol); Polygon "
         f"{best['polygon_stored']:,} stored of {best['polygon_qualifying']:,} qualifying | |"),
        (f"| simulator refusals | {sum(map(len, best['refusals'].values()))} | none |"),
        "",
        ("| trades/s per symbol | msgs/s target / sent | rows/s | drain s | cores: service / sim / QuestDB / other | "
         "RSS MB | receive lag mean / max / growth ms | sustained |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for step in results["steps"]:
        lag = step["receive_lag_ms"]
        lines.append(
            f"| {step['rate_per_symbol']:g} | {_n(step['target_msgs_s'])} / {_n(step['sent_msgs_s'])} | "
            f"{_n(step['rows_s'])} | {_n(step['drain_s'], 1)} | "
            f"{' / '.join(f'{v:.2f}' for v in step['cores_busy_while_sending'].values())} | "
            f"{_n(step['rss_steady_mb'])} | "
            f"{_n(lag.get('mean'))} / {_n(lag.get('max'))} / {_n(lag.get('growth'))} | "
            f"{'yes' if step['sustained'] else 'no: ' + (step['limited_by'] or '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whole_market", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench/results"), help="where whole_market.{json,md} go")
    parser.add_argument("--quick", action="store_true", help="a tiny market for a few seconds: checks it runs")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with own_questdb("marketfeed-whole-market-") as (tmp, questdb):
        results: dict = {"machine": machine(questdb), "plan": asdict(plan), "started_at": started}
        results["steps"] = run_steps(plan, questdb, tmp)
    results["summary"] = summary(results["steps"])
    results["duration_s"] = time.time() - started
    (out / "whole_market.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / "whole_market.md").write_text(markdown(results))
    print(f"results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
