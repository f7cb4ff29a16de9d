"""Operating the real service: `marketfeed health`, HTTP endpoints, SIGHUP reload, sd_notify, `marketfeed top`.

Each test runs `marketfeed run` as a child process against the simulator and the session QuestDB.
"""
import gzip
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from functools import partial
from importlib import metadata

import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from marketfeed.config.loader import load, to_toml
from marketfeed.config.schema import AlertConfig
from tests.support.polling import poll
from tests.support.questdb import REPO, free_port
from tests.support.service import ServiceProcess, Services, sim_feed
from tests.support.top import top_screen

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
QUICK = {"status_interval_s": 0.3, "http_listen": "127.0.0.1:0"}
binance_feed = partial(sim_feed, "binance", symbols=SYMBOLS)


def marketfeed(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marketfeed.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def health(proc: ServiceProcess, *extra: str) -> subprocess.CompletedProcess:
    return marketfeed("health", "-c", str(proc.config_path), *extra)


def status_file(proc: ServiceProcess) -> dict | None:
    path = proc.config_path.parent / "status.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


@pytest.fixture
def service(tmp_path, questdb, table_prefix):
    """As conftest's, but every service writes its status file every 0.3 s and serves HTTP on a free port."""
    with Services(tmp_path, questdb, table_prefix, service=QUICK) as services:
        yield services


@pytest.fixture
def sim(service):
    return service.simulator(["binance"], SYMBOLS, rate=50, seed=3)


def connected(proc: ServiceProcess, n: int = 1) -> dict:
    """Wait until the status file shows n connected feeds and rows written; returns that report."""
    def ready():
        report = status_file(proc)
        if report and sum(f.get("state") == "connected" for f in report["feeds"].values()) == n \
                and report["buffers"].get("trades", {}).get("rows_written", 0) > 0:
            return report
        return None
    try:
        return poll(ready, 30, f"{n} connected feeds writing rows")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus file: {status_file(proc)}\nlog:\n{proc.tail()}") from None


def test_health_is_ok_then_degraded_when_a_feed_stalls(sim, service):
    proc = service([binance_feed(sim, name="spot")], alerts={"no_data_s": 1.0})
    connected(proc)
    ok = health(proc)
    assert ok.returncode == 0, ok.stdout + proc.tail()
    first = ok.stdout.splitlines()[0]
    assert first.startswith("MARKETFEED OK - 1/1 feeds connected") and "| feeds_connected=1;;;0;1" in first
    assert "  spot " in ok.stdout and "feed-spot" not in ok.stdout  # the feed's configured name, as logs say it
    assert "  trades " in ok.stdout and "buffer-" not in ok.stdout  # a buffer by its table, as the table label
    assert "None" not in ok.stdout
    # A query is one log line; the full report goes to the log on an operator's SIGUSR1 (and status changes).
    query = proc.wait_event("health_query", where=lambda e: e["status"] == "ok")
    assert set(query) - {"ts", "level", "logger", "event", "pid", "thread"} <= {"status", "summary"}, query
    assert not [e for e in proc.events("health_report") if e["reason"] == "query"]
    proc.signal(signal.SIGUSR1)
    assert set(proc.wait_event("health_report", where=lambda e: e["reason"] == "signal")["feeds"]) == {"spot"}

    sim.connections("binance")[0].stall()
    poll(lambda: health(proc).returncode == 1, 20, "degraded health")
    report = orjson.loads(health(proc, "--json").stdout)
    assert report["status"] == "degraded"
    assert [a["cause"] for a in report["alerts"]] == ["no_data"] and report["alerts"][0]["feed"] == "spot"
    assert {"rss_bytes", "cpu_percent", "threads", "open_fds", "uptime_s"} <= set(report["process"])
    changed = proc.wait_event("health_report", where=lambda e: e["status"] == "degraded")  # the change, in full
    assert changed["alerts"][0]["cause"] == "no_data"


def test_health_is_critical_while_questdb_is_down(sim, service):
    down = {"conf": f"http::addr=127.0.0.1:{free_port()};", "pg_dsn": f"host=127.0.0.1 port={free_port()}"}
    proc = service([binance_feed(sim, name="spot")], questdb=down, alerts={"sink_stalled_s": 1.0})
    result = poll(lambda: (r := health(proc)).returncode == 2 and r, 30, "critical health")
    assert result.stdout.startswith("MARKETFEED CRITICAL - 1/1 feeds connected")
    assert "sink_stalled" in result.stdout or "breaker_open" in result.stdout


def test_health_without_a_process_is_unknown(tmp_path):
    config = tmp_path / "marketfeed.toml"
    config.write_text(to_toml({"service": {"pid_file": str(tmp_path / "gone.pid"),
                                           "status_file": str(tmp_path / "status.json")}}))
    result = marketfeed("health", "-c", str(config))
    assert result.returncode == 3
    assert result.stdout.startswith("MARKETFEED UNKNOWN - no marketfeed process")


def test_health_answers_in_time_while_the_simulator_floods_the_service(service):
    flood = service.simulator(["binance"], SYMBOLS, rate=20_000, seed=5)
    # Binance times are whole ms and the simulator keeps them strictly increasing, so at 20k trades/s
    # simulated time runs ahead of the clock: the future-timestamp check would (rightly) reject it all.
    proc = service([binance_feed(flood, name="flood", max_future_skew_s=1e9)])
    connected(proc)

    def flooded() -> bool:
        report = status_file(proc)
        return report is not None and report["feeds"]["flood"]["messages"] > 20_000

    poll(flooded, 30, "the flood arriving")
    for _ in range(3):
        # 0 or 1: a report begun after the query came within the command's 5 s (none in time would be 3, unknown);
        # the wall time of the command itself is the interpreter's, not the service's (a loaded host takes seconds).
        result = health(proc, "--timeout", "5")
        assert result.returncode in (0, 1), result.stdout + proc.tail()
    report = orjson.loads(health(proc, "--json", "--timeout", "5").stdout)
    assert report["feeds"]["flood"]["state"] == "connected"


def test_http_metrics_health_and_ready(sim, service):
    proc = service([binance_feed(sim, name="spot")])
    port = proc.wait_event("http_listening")["port"]
    connected(proc)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    assert get("/health")[0] == 200
    poll(lambda: get("/ready")[0] == 200, 10, "/ready")
    code, body = get("/metrics")
    text = body.decode()
    assert code == 200
    for name in ("marketfeed_messages_received_total", "marketfeed_rows_written_total",
                 "marketfeed_flush_duration_seconds_bucket", "marketfeed_ingestion_lag_seconds_bucket",
                 "marketfeed_buffered_rows", "marketfeed_health_status"):
        assert name in text
    # Series exist before their first event (the config names the feed, every table has a buffer), so panels and
    # increase() have them from the start; the build's version and the instance are labels.
    host = socket.gethostname()
    for sample in ('marketfeed_reconnects_total{feed="spot"} 0.0', 'marketfeed_malformed_frames_total{feed="spot"} 0.0',
                   'marketfeed_flush_failures_total{table="candles"} 0.0',
                   'marketfeed_gaps_closed_total{feed="spot",reason="expired"} 0.0',
                   'marketfeed_breaker_state{table="candles"} 0.0', 'marketfeed_health_alerts{cause="no_data"} 0.0',
                   'marketfeed_actor_restarts_total{actor="spot",supervisor="feeds"} 0.0',
                   'marketfeed_actor_restarts_total{actor="trades",supervisor="sinks"} 0.0',
                   (f'marketfeed_build_info{{group="{host}",instance="{host}",shard="",'  # the host: no instance_id
                   f'version="{metadata.version("marketfeed")}"}} 1.0')):
        assert sample in text.splitlines(), sample
    # Every dashboard panel has a series to show on a healthy service, before any of its events happened.
    dashboard = orjson.loads((REPO / "config/grafana/marketfeed-dashboard.json").read_bytes())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 20
    sampled = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    for expr in exprs:
        for name in re.findall(r"\b((?:marketfeed|process)_[a-z_]+)\b", expr):
            assert name in sampled, f"dashboard panel {expr!r}: no {name} series"
    assert "feed-" not in text and "buffer-" not in text  # feeds and tables by the names people configured
    assert shutil.which("promtool"), "promtool missing: bin/test-deps installs it"
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    # As Prometheus scrapes: OpenMetrics, gzipped, the same series.
    scrape = urllib.request.Request(base + "/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(scrape, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert r.headers["Content-Encoding"] == "gzip"
        openmetrics = gzip.decompress(r.read()).decode()
    families = {f.name: f for f in parse_openmetrics(openmetrics)}
    assert {(s.labels["supervisor"], s.labels["actor"]) for s in families["marketfeed_actor_restarts"].samples
            if s.name.endswith("_total")} >= {("feeds", "spot"), ("sinks", "trades"), ("sinks", "candles")}
    assert {f.name.removesuffix("_total") for f in parse_text(text)} >= set(families)

    # Every metric the shipped rules and dashboard use is one the service exports.
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE marketfeed_")}
    for shipped in ("config/prometheus/marketfeed.rules.yml", "config/grafana/marketfeed-dashboard.json"):
        used = set(re.findall(r"marketfeed_[a-z_]+", (REPO / shipped).read_text()))
        used = {re.sub(r"_(bucket|count|sum)$", "", u) for u in used}
        exported_names = exported | {e.removesuffix("_total") for e in exported}
        assert used <= exported | exported_names, f"{shipped}: {sorted(used - exported_names - exported)}"

    sim.connections("binance")[0].drop()  # a disconnected feed: not ready, still alive
    poll(lambda: get("/ready")[0] == 503 or None, 10, "/ready to fail")
    assert get("/health")[0] == 200


def test_sighup_adds_a_feed_without_touching_the_running_one(sim, service, tmp_path):
    proc = service([binance_feed(sim, name="first")])
    connected(proc)
    (first,) = sim.connections("binance")

    text = proc.config_path.read_text()
    proc.config_path.write_text(text + to_toml({"feeds": [binance_feed(sim, name="second")]}))  # one more feed
    proc.signal(signal.SIGHUP)
    reloaded = proc.wait_event("config_reloaded")
    assert reloaded["added"] == ["second"] and reloaded["removed"] == [] and reloaded["changed"] == []
    connected(proc, 2)
    assert len(sim.connections("binance")) == 2
    assert not first.closed and first in sim.connections("binance")  # its connection survived

    proc.config_path.write_text(text.replace("[sink]", "[sink]\nflush_every = 5"))  # invalid: rejected
    proc.signal(signal.SIGHUP)
    rejected = proc.wait_event("config_reload_rejected")
    assert any(str(proc.config_path) in p and "sink.flush_every" in p for p in rejected["problems"]), rejected
    connected(proc, 2)  # the old config keeps running: both feeds still connected
    assert first in sim.connections("binance") and not first.closed
    assert proc.proc.poll() is None


def test_notify_socket_gets_ready_then_watchdog_then_stopping(sim, service):
    name = f"@marketfeed-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name[1:].encode())
        server.settimeout(20)
        proc = service([binance_feed(sim, name="spot")], env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"})
        messages = []

        def receive(prefix):
            while True:
                message = server.recv(4096).decode()
                messages.append(message)
                if message.startswith(prefix):
                    return message

        ready = receive("READY=1")
        assert f"MAINPID={proc.proc.pid}" in ready
        receive("WATCHDOG=1")
        receive("WATCHDOG=1")
        proc.signal(signal.SIGTERM)
        receive("STOPPING=1")
        assert proc.wait() == 0
    kinds = [m.split("=")[0] for m in messages]
    assert kinds.index("READY") < kinds.index("WATCHDOG") < kinds.index("STOPPING")
    assert any(m.startswith("STATUS=ok") for m in messages)


def test_top_renders_the_feeds_on_screen(sim, service, tmp_path):
    proc = service([binance_feed(sim, name="spot-a"), binance_feed(sim, name="spot-b")])
    connected(proc, 2)
    screen = top_screen(proc.config_path, ("spot-a", "spot-b", "trades ", "candles ", "MSGS/S", "connected", "ALERTS"))
    assert "feed-" not in screen and "buffer-" not in screen  # feeds and tables by the names people configured


def test_the_systemd_unit_verifies_cleanly(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: bin/test-deps installs it"
    # The unit runs /usr/local/bin/marketfeed (README's install step); here this checkout's launcher stands in.
    unit = (REPO / "config/marketfeed.service").read_text().replace("/usr/local/bin/marketfeed",
                                                                    str(REPO / "bin/marketfeed"))
    path = tmp_path / "marketfeed.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert result.stderr == "" and result.returncode == 0
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "DynamicUser=yes" in unit
    # The exposure score (0 safest, 10 unprotected): 2.0 at most, what is left being the network it needs.
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                              capture_output=True, text=True)
    score = re.search(r"Overall exposure level for marketfeed\.service: (\d+\.\d+)", security.stdout)
    assert score and float(score[1]) <= 2.0, security.stdout[-3000:] + security.stderr
    # The paths the example config names are the ones the unit makes (so its systemd steps need no overrides).
    example = load(str(REPO / "config/marketfeed.example.toml"), env={})
    assert example.service.pid_file.startswith("/run/marketfeed/") and "RuntimeDirectory=marketfeed" in unit
    assert example.service.status_file.startswith("/run/marketfeed/") and "StateDirectory=marketfeed" in unit
    for state in (example.spool.dir, example.ledger.dir, example.sink.dead_letter_dir):
        assert state.startswith("/var/lib/marketfeed/"), state
    assert example.service.log_file == "" and "MARKETFEED_" not in unit  # journald; no environment overrides


RULES = REPO / "config/prometheus/marketfeed.rules.yml"


def test_the_prometheus_rules_pass_promtool():
    assert shutil.which("promtool"), "promtool missing: bin/test-deps installs it"
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def rule_summaries() -> dict[str, str]:
    """alert name → its summary template, read from the shipped rules (one `summary:` per rule)."""
    text = RULES.read_text()
    names = re.findall(r"^ +- alert: (\w+)$", text, re.MULTILINE)
    summaries = re.findall(r'^ +summary: "(.*)"$', text, re.MULTILINE)
    assert len(names) == len(summaries)
    return dict(zip(names, summaries, strict=True))


def firing(name: str, severity: str, **labels: str) -> dict:
    """A promtool exp_alerts entry: the rule's labels and its summary rendered for them."""
    summary = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], rule_summaries()[name])
    return {"exp_labels": {"severity": severity, **labels}, "exp_annotations": {"summary": summary}}


def test_the_alert_rules_fire_as_the_health_rules_do_for_healthy_degraded_and_critical_services(tmp_path):
    """promtool test rules against the health rules' thresholds (AlertConfig defaults), each series at its
    threshold on a healthy service and just past it on a degraded one. The healthy service has a candle feed:
    candles lag by their interval, as ingestion lag measures from a row's time (a candle's open)."""
    t = AlertConfig()
    job = {"job": "marketfeed", "instance": "m:8766"}

    def series(name: str, values: str, **labels: str) -> dict:
        body = ",".join(f'{k}="{v}"' for k, v in {**job, **labels}.items())
        return {"series": f"{name}{{{body}}}", "values": values}

    def lag(table: str, seconds: float) -> list[dict]:
        """A lag histogram whose every observation (10 a scrape) is `seconds`."""
        buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf]
        return [series("marketfeed_ingestion_lag_seconds_bucket", "0+10x80" if le >= seconds else "0x80",
                       table=table, le="+Inf" if le == math.inf else str(le))
                for le in buckets]

    def service(*, status: int, connected: int, messages: str, buffered: int, errors_per_scrape: float,
                rss_mb: float, gap_age_s: float, breaker: int, spool_bytes: int, spool_full: int,
                restarts: str = "0x80") -> list[dict]:
        per_feed = [(feed, c) for feed, c in (("binance-sim", 1), ("kraken-sim", connected))]
        return [
            series("up", "1x80"),
            series("process_start_time_seconds", "0x80"),
            series("marketfeed_health_status", f"{status}x80"),
            *(series("marketfeed_feed_connected", f"{c}x80", feed=feed) for feed, c in per_feed),
            series("marketfeed_messages_received_total", "0+50x80", feed="binance-sim"),
            series("marketfeed_messages_received_total", messages, feed="kraken-sim"),
            series("marketfeed_reconnects_total", f"0+{errors_per_scrape}x80", feed="kraken-sim"),
            series("marketfeed_malformed_frames_total", "0x80", feed="kraken-sim"),
            series("marketfeed_flush_failures_total", "0x80", table="trades"),
            series("marketfeed_actor_restarts_total", restarts, supervisor="feeds", actor="kraken-sim"),
            series("marketfeed_gaps_detected_total", "0x80", feed="binance-sim"),
            series("marketfeed_buffered_rows", f"{buffered}x80", table="trades"),
            series("marketfeed_buffered_rows", "0x80", table="candles"),
            series("process_resident_memory_bytes", f"{int(rss_mb * 1024 * 1024)}x80"),
            series("marketfeed_oldest_gap_age_seconds", f"{gap_age_s}x80"),
            series("marketfeed_breaker_state", f"{breaker}x80", table="trades"),
            series("marketfeed_spool_bytes", f"{spool_bytes}x80", table="trades"),
            series("marketfeed_spool_full", f"{spool_full}x80", table="trades"),
            *lag("trades", 0.05), *lag("candles", 61.0),  # 1-minute candles, stored once closed
        ]

    # 15 s scrapes: errors_per_scrape × 4 is the increase over a minute.
    healthy = service(status=0, connected=1, messages="0+50x80", buffered=t.buffered_rows,
                      errors_per_scrape=t.errors_per_minute / 4, rss_mb=t.rss_mb, gap_age_s=t.gap_age_s,
                      breaker=0, spool_bytes=0, spool_full=0)
    degraded = service(status=1, connected=0, messages="0+50x20 1000x60", buffered=t.buffered_rows + 1,
                       errors_per_scrape=t.errors_per_minute / 4 + 1, rss_mb=t.rss_mb + 1, gap_age_s=t.gap_age_s + 1,
                       breaker=0, spool_bytes=0, spool_full=0, restarts="0+1x80")
    critical = service(status=2, connected=1, messages="0+50x80", buffered=0, errors_per_scrape=0, rss_mb=100,
                       gap_age_s=0, breaker=2, spool_bytes=4096, spool_full=1)
    names = rule_summaries()
    at = "20m"  # past every `for:` and range; degraded's kraken feed went silent at 5 m, disconnected since 0

    def case(input_series: list[dict], expected: dict[str, list[dict]]) -> dict:
        assert set(expected) <= set(names)
        return {"interval": "15s", "input_series": input_series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected.get(name, [])}
                                    for name in names]}

    instance = {"instance": "m:8766", "job": "marketfeed"}
    kraken = {**instance, "feed": "kraken-sim"}
    tests = [
        case(healthy, {}),
        case(degraded, {
            "MarketfeedHealthDegraded": [firing("MarketfeedHealthDegraded", "warning", **instance)],
            "MarketfeedFeedDisconnected": [firing("MarketfeedFeedDisconnected", "warning", **kraken)],
            "MarketfeedNoData": [firing("MarketfeedNoData", "warning", **kraken)],
            "MarketfeedRowsWaiting": [firing("MarketfeedRowsWaiting", "warning", **instance, table="trades")],
            "MarketfeedErrorRate": [firing("MarketfeedErrorRate", "warning", instance="m:8766")],
            "MarketfeedMemoryHigh": [firing("MarketfeedMemoryHigh", "warning", **instance)],
            "MarketfeedGapOpen": [firing("MarketfeedGapOpen", "warning", **instance)],
            "MarketfeedActorRestarts": [firing("MarketfeedActorRestarts", "warning", **instance, supervisor="feeds",
                                               actor="kraken-sim")],
        }),
        case(critical, {
            "MarketfeedHealthCritical": [firing("MarketfeedHealthCritical", "critical", **instance)],
            "MarketfeedBreakerOpen": [firing("MarketfeedBreakerOpen", "critical", **instance, table="trades")],
            "MarketfeedSpoolFull": [firing("MarketfeedSpoolFull", "critical", **instance, table="trades")],
            "MarketfeedSpoolInUse": [firing("MarketfeedSpoolInUse", "warning", **instance, table="trades")],
        }),
    ]
    path = tmp_path / "marketfeed.rules.test.yml"  # JSON is YAML
    path.write_bytes(orjson.dumps({"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": tests}))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    # The thresholds written in the rules are the defaults the tests above used.
    text = RULES.read_text()
    for key, shown in (("feed_disconnected_s", 120), ("no_data_s", 300), ("buffered_rows", 1000),
                       ("errors_per_minute", 10), ("rss_mb", 500), ("gap_age_s", 900)):
        assert getattr(t, key) == shown and f"# alerts.{key} = {shown}" in text, key


def test_check_config_reports_every_problem_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[alerts]\nno_data_s = -1\nbogus = 1\n[sink]\nmax_rows = "x"\n')
    result = marketfeed("check-config", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    for key in ("alerts.no_data_s", "alerts.bogus", "sink.max_rows"):
        assert any(str(path) in line and key in line for line in lines), (key, lines)
