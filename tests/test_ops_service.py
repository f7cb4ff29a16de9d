"""Operating the real service: `marketfeed health`, HTTP endpoints, SIGHUP reload, sd_notify, `marketfeed top`.

Each test runs `marketfeed run` as a child process against the simulator and the session QuestDB.
"""
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from functools import partial

import orjson
import pytest

from marketfeed.config.loader import load, to_toml
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
                and report["buffers"].get("buffer-trades", {}).get("rows_written", 0) > 0:
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

    sim.connections("binance")[0].stall()
    poll(lambda: health(proc).returncode == 1, 20, "degraded health")
    report = orjson.loads(health(proc, "--json").stdout)
    assert report["status"] == "degraded"
    assert [a["cause"] for a in report["alerts"]] == ["no_data"] and report["alerts"][0]["feed"] == "feed-spot"
    assert {"rss_bytes", "cpu_percent", "threads", "open_fds", "uptime_s"} <= set(report["process"])


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
        return report is not None and report["feeds"]["feed-flood"]["messages"] > 20_000

    poll(flooded, 30, "the flood arriving")
    for _ in range(3):
        began = time.monotonic()
        result = health(proc, "--timeout", "5")
        assert result.returncode in (0, 1), result.stdout + proc.tail()
        assert time.monotonic() - began < 5.0 + 2.0  # its own timeout plus interpreter start
    report = orjson.loads(health(proc, "--json", "--timeout", "5").stdout)
    assert report["feeds"]["feed-flood"]["state"] == "connected"


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
    assert shutil.which("promtool"), "promtool missing: bin/test-deps installs it"
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

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
    top_screen(proc.config_path, ("feed-spot-a", "feed-spot-b", "buffer-trades", "MSGS/S", "connected", "ALERTS"))


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


def test_the_prometheus_rules_pass_promtool():
    assert shutil.which("promtool"), "promtool missing: bin/test-deps installs it"
    result = subprocess.run(["promtool", "check", "rules", str(REPO / "config/prometheus/marketfeed.rules.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_config_reports_every_problem_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[alerts]\nno_data_s = -1\nbogus = 1\n[sink]\nmax_rows = "x"\n')
    result = marketfeed("check-config", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    for key in ("alerts.no_data_s", "alerts.bogus", "sink.max_rows"):
        assert any(str(path) in line and key in line for line in lines), (key, lines)
