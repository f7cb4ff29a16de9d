"""The pure core of operations: alert rules, reload plans, sd_notify, the health CLI's output, top's screen."""
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import psutil
import pykka
import pytest

from marketfeed.actors.buffer import BufferActor, SinkDirectory
from marketfeed.cli.health import UNKNOWN, exit_code, fresh_report, health, perfdata, render, runs_service, service_pid
from marketfeed.cli.reload import applied, plan
from marketfeed.cli.top import Dashboard, LogTail
from marketfeed.config.loader import from_dict
from marketfeed.config.schema import AlertConfig, Config, ServiceConfig, SinkConfig, SpoolConfig
from marketfeed.supervision.scheduler import Scheduler
from marketfeed.supervision.supervisor import (
    AddChild,
    ChildSpec,
    GetChildren,
    GetStatus,
    RemoveChild,
    Supervised,
    Supervisor,
)
from marketfeed.telemetry.health_rules import AlertRules, liveness, readiness, summary
from marketfeed.telemetry.logs import JsonFormatter
from marketfeed.telemetry.report import BreakerState, ChildState, FeedState, HealthLevel, NoAnswer, ReportReason
from marketfeed.telemetry.sdnotify import Notifier, socket_address
from tests.support.polling import poll

MB = 1024 * 1024


def feed(state="connected", **extra):
    return {"state": state, "messages": 10, "last_message_age_s": 0.1, "reconnects": 0, "malformed": 0,
            "held_rows": 0, **extra}


def buffer(**extra):
    return {"buffered_rows": 0, "rows_written": 5, "last_flush_age_s": 0.2, "failures": 0, "breaker": "closed",
            "spool_bytes": 0, "spool_full": False, **extra}


def report(feeds=None, buffers=None, supervisors=None, rss=50 * MB, uptime=100.0):
    return {"feeds": {"spot-a": feed()} if feeds is None else feeds,
            "buffers": {"trades": buffer()} if buffers is None else buffers,
            "supervisors": supervisors or {}, "uptime_s": uptime, "process": {"rss_bytes": rss}}


def causes(alerts):
    return sorted(a["cause"] for a in alerts)


# --- alert rules

def test_a_healthy_report_is_ok_without_alerts():
    assert AlertRules(AlertConfig()).evaluate(report(), 0.0) == (HealthLevel.OK, [])


def test_a_feed_disconnected_longer_than_the_threshold_is_degraded_and_named():
    rules = AlertRules(AlertConfig(feed_disconnected_s=120))
    down = report(feeds={"spot-a": feed("retrying", last_error="refused"), "spot-b": feed()})
    assert rules.evaluate(down, 1000.0) == (HealthLevel.OK, [])  # just went down: within its grace
    assert rules.evaluate(down, 1100.0)[0] == HealthLevel.OK
    status, alerts = rules.evaluate(down, 1121.0)
    assert status == HealthLevel.DEGRADED
    assert alerts == [{"level": HealthLevel.DEGRADED, "cause": "feed_disconnected", "feed": "spot-a",
                       "state": "retrying", "for_s": 121.0, "threshold_s": 120, "error": "refused"}]
    rules.evaluate(report(), 1122.0)  # reconnected: the clock starts over next time
    assert rules.evaluate(down, 1200.0) == (HealthLevel.OK, [])


def test_a_feed_whose_breaker_is_open_is_degraded_at_once():
    rules = AlertRules(AlertConfig(feed_disconnected_s=120))
    failed = report(feeds={"spot-a": feed("failed", last_error="refused", breaker="open")})
    status, alerts = rules.evaluate(failed, 1000.0)
    assert status == HealthLevel.DEGRADED
    assert alerts == [{"level": HealthLevel.DEGRADED, "cause": "feed_failed", "feed": "spot-a", "breaker": "open",
                       "error": "refused"}]
    assert causes(rules.evaluate(failed, 2000.0)[1]) == ["feed_failed"]  # not reported twice


@pytest.mark.parametrize("data, cause, level", [
    (report(feeds={"f": feed(last_message_age_s=301.0)}), "no_data", HealthLevel.DEGRADED),
    (report(feeds={"f": feed(held_rows=1001)}), "rows_waiting", HealthLevel.DEGRADED),
    (report(buffers={"b": buffer(buffered_rows=1001)}), "rows_waiting", HealthLevel.DEGRADED),
    (report(rss=501 * MB), "memory_high", HealthLevel.DEGRADED),
    (report(buffers={"b": buffer(spool_bytes=4096)}), "spool_in_use", HealthLevel.DEGRADED),
    (report(buffers={"b": buffer(spool_bytes=4096, spool_full=True)}), "spool_full", HealthLevel.CRITICAL),
    (report(buffers={"b": buffer(breaker="open")}), "breaker_open", HealthLevel.CRITICAL),
    (report(buffers={"b": buffer(buffered_rows=5, last_flush_age_s=61.0)}), "sink_stalled", HealthLevel.CRITICAL),
    (report(buffers={"b": buffer(buffered_rows=5, last_flush_age_s=None)}, uptime=61.0), "sink_stalled",
     HealthLevel.CRITICAL),
    (report(feeds={"f": {"state": "unresponsive"}}), "actor_unresponsive", HealthLevel.CRITICAL),
    (report(buffers={"b": {"state": "unresponsive"}}), "actor_unresponsive", HealthLevel.CRITICAL),
    (report(supervisors={"feeds": {"state": "unresponsive"}}), "actor_unresponsive", HealthLevel.CRITICAL),
    (report(supervisors={"feeds": {"children": {"feed-a": {"state": "restarting", "restarts": 0}}}}),
     "child_restarting", HealthLevel.DEGRADED),
])
def test_each_rule_names_its_cause(data, cause, level):
    status, alerts = AlertRules(AlertConfig()).evaluate(data, 0.0)
    assert (status, causes(alerts)) == (level, [cause])


def test_thresholds_come_from_the_config():
    data = report(feeds={"f": feed(last_message_age_s=3.0)}, buffers={"b": buffer(buffered_rows=20)}, rss=30 * MB)
    strict = AlertConfig(no_data_s=2.0, buffered_rows=10, rss_mb=20.0)
    assert causes(AlertRules(strict).evaluate(data, 0.0)[1]) == ["memory_high", "no_data", "rows_waiting"]
    assert AlertRules(AlertConfig()).evaluate(data, 0.0) == (HealthLevel.OK, [])


def test_more_than_ten_errors_within_a_minute_is_degraded():
    rules = AlertRules(AlertConfig(errors_per_minute=10))
    def status(now: float, **counters: int) -> HealthLevel:
        return rules.evaluate(report(feeds={"f": feed(**counters)}), now)[0]

    assert status(0.0, reconnects=2) == HealthLevel.OK
    assert status(20.0, reconnects=7, malformed=5) == HealthLevel.OK  # 10 new: not more
    assert status(30.0, reconnects=8, malformed=5) == HealthLevel.DEGRADED  # 11 new
    # A minute later the old errors have left the window; a restarted actor's counter starting over
    # from zero counts only what it saw.
    assert status(95.0, reconnects=8, malformed=5) == HealthLevel.OK
    assert status(100.0, reconnects=3) == HealthLevel.OK


def test_liveness_and_readiness_read_the_latest_report():
    rules = AlertRules(AlertConfig())
    good = report()
    good["status"], good["alerts"] = rules.evaluate(good, 0.0)
    assert liveness(good, 1.0, 10.0) == (True, "alive")
    assert liveness(good, 11.0, 10.0)[0] is False  # the health actor stopped publishing
    assert liveness(None, 0.0, 10.0)[0] is False
    assert readiness(good) == (True, "ready")
    bad = report(feeds={"spot-a": feed("retrying")}, buffers={"trades": buffer(breaker="open")})
    bad["status"], bad["alerts"] = rules.evaluate(bad, 0.0)
    ok, detail = readiness(bad)
    assert not ok and "feed spot-a is retrying" in detail and "breaker_open" in detail
    hung = report(feeds={"spot-a": {"state": "unresponsive"}})
    hung["status"], hung["alerts"] = rules.evaluate(hung, 0.0)
    assert liveness(hung, 0.0, 10.0) == (False, "unresponsive: feed spot-a")


# --- the health CLI's output

def test_perfdata_and_render_follow_the_nagios_plugin_format():
    data = report(feeds={"spot-a": feed(), "spot-b": feed("retrying")})
    rules = AlertRules(AlertConfig(feed_disconnected_s=0))
    rules.evaluate(data, 0.0)
    data["status"], data["alerts"] = rules.evaluate(data, 1.0)
    data["summary"] = summary(data, data["alerts"])
    first, *rest = render(data).splitlines()
    text, _, perf = first.partition(" | ")
    assert text == "MARKETFEED DEGRADED - 1/2 feeds connected, 5 rows written; feed_disconnected (feed spot-b)"
    assert "feeds_connected=1;;;0;2" in perf.split() and "rows_written=5c" in perf.split()
    assert any("DEGRADED  feed_disconnected" in line for line in rest)
    assert exit_code(data) == 1
    assert all("=" in item for item in perfdata(data).split())


def test_no_process_is_unknown(tmp_path):
    config = Config(service=ServiceConfig(pid_file=str(tmp_path / "none.pid"), status_file=str(tmp_path / "s.json")))
    assert fresh_report(config, 0.2) == (None, f"no marketfeed process (pid file {tmp_path / 'none.pid'})")
    (tmp_path / "none.pid").write_text("999999999\n")  # a pid file left behind by a dead process
    assert fresh_report(config, 0.2)[0] is None
    assert UNKNOWN == 3


def exec_done(pid: int, cmdline: list[str]) -> None:
    """Until the child has exec'd, its command line is the forked interpreter's (or empty)."""
    poll(lambda: psutil.Process(pid).cmdline() == cmdline, 10, f"pid {pid} to run {cmdline}")


def test_a_stale_pid_file_naming_an_unrelated_process_signals_nothing_and_is_unknown(tmp_path, capsys):
    pid_file, status_file = tmp_path / "marketfeed.pid", tmp_path / "s.json"
    config = Config(service=ServiceConfig(pid_file=str(pid_file), status_file=str(status_file)))
    with subprocess.Popen(["sleep", "60"]) as unrelated:  # SIGUSR1's default action would end it
        try:
            exec_done(unrelated.pid, ["sleep", "60"])
            pid_file.write_text(f"{unrelated.pid}\n")  # the service died, its pid went to this process
            assert health(config, False, 5.0) == UNKNOWN
            assert capsys.readouterr().out == (f"MARKETFEED UNKNOWN - stale pid file {pid_file}: pid {unrelated.pid} "
                                               "is not a marketfeed service ('sleep 60'); nothing signalled\n")
            assert unrelated.poll() is None
        finally:
            unrelated.terminate()
        # A signal sent earlier would be pending still, and the lower-numbered SIGUSR1 would be delivered first.
        assert unrelated.wait(10) == -signal.SIGTERM


def test_a_marketfeed_process_started_after_the_pid_file_was_written_is_not_the_one_it_names(tmp_path):
    pid_file = tmp_path / "marketfeed.pid"
    # A command line as `python -m marketfeed.cli.main run` has (its own pid file would be elsewhere).
    lookalike = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "marketfeed.cli.main", "run"]
    with subprocess.Popen(lookalike) as process:
        try:
            exec_done(process.pid, lookalike)
            pid_file.write_text(f"{process.pid}\n")
            assert service_pid(str(pid_file)) == (process.pid, "")
            os.utime(pid_file, (time.time() - 600, time.time() - 600))  # written by a process long gone
            stale = (f"stale pid file {pid_file}: pid {process.pid} started after the file was written, "
                     "by another marketfeed; nothing signalled")
            assert service_pid(str(pid_file)) == (None, stale)
        finally:
            process.terminate()
        assert process.wait(10) == -signal.SIGTERM


@pytest.mark.parametrize("cmdline, service", [
    (["/usr/local/bin/marketfeed", "run", "-c", "/etc/marketfeed/marketfeed.toml"], True),
    (["/opt/venv/bin/python", "/opt/venv/bin/marketfeed", "run"], True),
    (["python3", "-m", "marketfeed.cli.main", "demo", "--duration", "5"], True),
    (["/usr/local/bin/marketfeed", "health", "-c", "run"], False),
    (["python3", "-m", "marketfeed.sim"], False), (["sleep", "60"], False), (["vim", "marketfeed.toml"], False),
    (["marketfeed"], False), ([], False),
])
def test_only_a_command_line_running_the_service_counts_as_marketfeed(cmdline, service):
    assert runs_service(cmdline) is service


@pytest.mark.parametrize("status, code", [("ok", 0), ("degraded", 1), ("critical", 2), ("unknown", 3), ("bogus", 3),
                                          (None, 3)])
def test_the_exit_code_is_the_nagios_code_of_the_status(status, code):
    data = report()
    data["status"] = status  # as read back from the status file: plain strings, maybe of another version
    assert exit_code(data) == code


def test_the_vocabulary_is_written_as_its_plain_strings():
    """The status file and the log lines keep their bytes: a StrEnum is its value in JSON."""
    typed = {"reason": ReportReason.TICK, "status": HealthLevel.DEGRADED,
             "feeds": {"f": {"state": FeedState.RETRYING, "breaker": BreakerState.HALF_OPEN}},
             "supervisors": {"s": {"state": NoAnswer.UNRESPONSIVE},
                             "t": {"children": {"c": {"state": ChildState.RESTARTING}}}}}
    plain = {"reason": "tick", "status": "degraded",
             "feeds": {"f": {"state": "retrying", "breaker": "half_open"}},
             "supervisors": {"s": {"state": "unresponsive"}, "t": {"children": {"c": {"state": "restarting"}}}}}
    assert orjson.dumps(typed, option=orjson.OPT_INDENT_2) == orjson.dumps(plain, option=orjson.OPT_INDENT_2)

    def log_line(fields):
        record = logging.LogRecord("marketfeed.health", logging.INFO, __file__, 1, "health_report", None, None)
        record.created, record.fields = 0.0, fields
        return JsonFormatter().format(record)

    assert log_line(typed) == log_line(plain)


# --- reload plans

FEEDS = [{"name": "a", "exchange": "binance", "url": "ws://127.0.0.1:1", "symbols": ["BTCUSDT"]},
         {"name": "b", "exchange": "binance", "url": "ws://127.0.0.1:2", "symbols": ["BTCUSDT"]},
         {"name": "c", "exchange": "binance", "url": "ws://127.0.0.1:3", "symbols": ["BTCUSDT"]}]


def test_a_reload_plan_names_added_removed_and_changed_feeds_only():
    old = from_dict({"feeds": FEEDS})
    new = from_dict({"feeds": [FEEDS[0], {**FEEDS[1], "symbols": ["ETHUSDT"]},
                               {"name": "d", "exchange": "binance", "url": "ws://127.0.0.1:4", "symbols": ["X"]}],
                     "alerts": {"no_data_s": 9}, "sink": {"max_rows": 5}, "service": {"status_file": "x.json",
                                                                                      "log_level": "debug"}})
    change = plan(old, new)
    assert [f.name for f in change.added] == ["d"]
    assert change.removed == ("c",)
    assert [f.name for f in change.changed] == ["b"]
    assert change.restart_needed == ("sink", "service.status_file")
    running = applied(old, new)
    assert running.feeds == new.feeds and running.alerts.no_data_s == 9 and running.service.log_level == "debug"
    assert running.sink == old.sink and running.service.status_file == old.service.status_file
    assert not plan(old, from_dict({"feeds": FEEDS})).feeds_touched


# --- sd_notify

@pytest.mark.parametrize("abstract", [True, False])
def test_notify_datagrams_reach_the_socket(tmp_path, abstract):
    name = f"@marketfeed-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(socket_address(name))
        server.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_s == 4.0
        assert notifier.ready("started") and notifier.watchdog() and notifier.stopping()
        got = [server.recv(4096).decode() for _ in range(3)]
    assert got == [f"READY=1\nMAINPID={os.getpid()}\nSTATUS=started", "WATCHDOG=1", "STOPPING=1"]
    notifier.close()


def test_outside_systemd_notify_does_nothing():
    notifier = Notifier.from_env({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    other_pid = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_s is None  # the watchdog is meant for another process


# --- top

def test_the_dashboard_shows_feeds_tables_rates_and_alerts():
    board = Dashboard()
    first = report(feeds={"spot-a": feed(messages=100)}, buffers={"trades": buffer(rows_written=50)})
    first.update(gather_started_at=1.0, generated_at=10.0, status=HealthLevel.OK, alerts=[], pid=42)
    second = report(feeds={"spot-a": feed(messages=300)}, buffers={"trades": buffer(rows_written=250)})
    second.update(gather_started_at=2.0, generated_at=12.0, status=HealthLevel.DEGRADED, pid=42,
                  alerts=[{"level": HealthLevel.DEGRADED, "cause": "no_data", "feed": "spot-a"}])
    board.update(first)
    board.update(second)
    lines = board.lines(13.0, [{"ts": "2024-01-01T00:00:00.000+00:00", "level": "error", "event": "flush_failed"}])
    text = "\n".join(t for t, _ in lines)
    assert "DEGRADED" in lines[0][0] and "report 1.0s old" in lines[0][0]
    feed_line = next(t for t in text.splitlines() if t.startswith("spot-a"))
    assert "connected" in feed_line and "100.0" in feed_line  # 200 messages in 2 s
    assert "100.0" in next(t for t in text.splitlines() if t.startswith("trades"))
    assert ("  DEGRADED no_data  feed=spot-a", HealthLevel.DEGRADED) in lines
    assert any("flush_failed" in t and style == HealthLevel.CRITICAL for t, style in lines)


def test_the_log_tail_keeps_warnings_and_follows_rotation(tmp_path):
    path = tmp_path / "marketfeed.log"
    path.write_text('{"level": "info", "event": "a"}\n{"level": "warning", "event": "b"}\n{"level": "err')
    tail = LogTail(str(path))
    assert [line["event"] for line in tail.poll()] == ["b"]
    with open(path, "a") as f:
        f.write('or", "event": "c"}\n')
    assert [line["event"] for line in tail.poll()] == ["b", "c"]
    path.rename(tmp_path / "marketfeed.log.1")  # logrotate
    path.write_text('{"level": "error", "event": "d"}\n')
    assert [line["event"] for line in tail.poll()] == ["b", "c", "d"]


# --- AddChild / RemoveChild

class Worker(Supervised):
    kind = "worker"


def worker_spec(child_id: str) -> ChildSpec:
    return ChildSpec(child_id, lambda ctx: Worker.start(ctx), shutdown_timeout_s=2.0)


def ask(ref: pykka.ActorRef, message: object) -> Any:
    """The reply within 5 s (block=True: only then do pykka's types give the reply, not "reply or future")."""
    return ref.ask(message, block=True, timeout=5)


def test_children_are_added_and_removed_without_touching_the_others():
    sup = Supervisor.start(None, "s", [worker_spec("a")])
    try:
        (_, a_ref, _), = ask(sup, GetChildren())
        assert ask(sup, AddChild(worker_spec("b"))) == ""
        assert "exists already" in ask(sup, AddChild(worker_spec("b")))
        children = ask(sup, GetChildren())
        assert [c[0] for c in children] == ["a", "b"] and children[0][1] is a_ref  # "a" was not restarted
        b_ref = children[1][1]
        assert ask(b_ref, GetStatus())["kind"] == "worker"
        assert ask(sup, RemoveChild("b")) is True
        assert ask(sup, RemoveChild("b")) is False
        with pytest.raises(pykka.ActorDeadError):
            ask(b_ref, GetStatus())
        assert [c[0] for c in ask(sup, GetChildren())] == ["a"]
        assert a_ref.is_alive()
    finally:
        sup.stop()


def test_a_buffer_actor_that_crashes_is_restarted(tmp_path):
    """Its exit reaches the supervisor (BufferActor's own `_report` once hid the one Supervised reports exits
    with: a crashed buffer actor was never restarted)."""
    config = Config(sink=SinkConfig(dead_letter_dir=str(tmp_path / "deadletter")),
                    spool=SpoolConfig(dir=str(tmp_path / "spool")))
    spec = ChildSpec("buffer-trades", lambda ctx: BufferActor.start(ctx, "trades", config, SinkDirectory()))
    sup = Supervisor.start(None, "sinks", [spec])
    try:
        (_, buffer_ref, _), = ask(sup, GetChildren())
        buffer_ref.tell("no such message")  # its handler raises
        poll(lambda: ask(sup, GetStatus())["children"]["buffer-trades"]["restarts"] == 1, timeout=10, what="restart")
        assert ask(sup, GetStatus())["children"]["buffer-trades"]["last_failure"].startswith("TypeError")
    finally:
        sup.stop()


def test_a_child_that_cannot_start_is_not_added():
    def broken(ctx):
        raise RuntimeError("no socket")

    sup = Supervisor.start(None, "s", [])
    try:
        assert "no socket" in ask(sup, AddChild(ChildSpec("x", broken)))
        assert ask(sup, GetChildren()) == []
        assert "x" not in ask(sup, GetStatus())["children"]
    finally:
        sup.stop()


# --- timers

class Recorder(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.got = threading.Event()

    def on_receive(self, message: Any) -> None:
        self.got.set()


@pytest.fixture(scope="module")
def timers() -> Scheduler:
    return Scheduler()  # its own: a thread killed here would not take the process-wide one down with it


@pytest.mark.parametrize("method, seconds", [("after", math.nan), ("after", math.inf), ("after", -math.inf),
                                             ("every", math.nan), ("every", math.inf), ("every", 0.0)])
def test_a_non_finite_or_non_positive_timer_is_refused_and_the_timers_thread_lives_on(timers, method, seconds):
    recorder = Recorder.start()
    try:
        with pytest.raises(ValueError, match="must be a finite number of seconds"):
            getattr(timers, method)(seconds, recorder, "x")
        timers.after(1e12, recorder, "far off")  # beyond what a lock wait takes: capped, not an OverflowError
        timers.after(0.01, recorder, "soon")
        assert recorder.proxy().got.get().wait(10)
        assert timers._thread.is_alive()
    finally:
        recorder.stop()


# --- the command line

def test_the_config_defaults_to_the_system_one_when_it_exists(tmp_path):
    from marketfeed.cli.main import LOCAL_CONFIG, default_config

    system = tmp_path / "marketfeed.toml"
    assert default_config(str(system)) == LOCAL_CONFIG == "marketfeed.toml"
    system.write_text("")
    assert default_config(str(system)) == str(system)


def test_healthcheck_exit_codes_are_dockers(tmp_path, capsys):
    config = Config(service=ServiceConfig(pid_file=str(tmp_path / "none.pid"), status_file=str(tmp_path / "s.json")))
    assert health(config, False, 0.1, healthcheck=True) == 1  # no service: unhealthy
    assert capsys.readouterr().out.startswith("MARKETFEED UNKNOWN")


def test_what_is_not_known_yet_reads_never_or_a_dash_not_none():
    data = report(feeds={"spot": feed(last_message_age_s=None)},
                  buffers={"trades": buffer(last_flush_age_s=None, rows_written=0)})
    data["status"], data["alerts"] = AlertRules(AlertConfig()).evaluate(data, 0.0)
    data["process"] = {"rss_bytes": MB, "cpu_seconds": None, "threads": None}
    text = render(data)
    assert "None" not in text
    assert "last_message_age_s=never" in text and "last_flush_age_s=never" in text and "threads=-" in text
    board = Dashboard()
    data.update(gather_started_at=1.0, generated_at=1.0, pid=None)
    board.update(data)
    screen = "\n".join(line for line, _ in board.lines(2.0, []))
    assert "None" not in screen and "never" in screen
