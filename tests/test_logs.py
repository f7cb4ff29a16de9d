"""The service log: one schema for every record (the service's events, libraries', the simulator's, warnings), JSON
or text, read by lnav with the shipped format whatever the file is called; a log file that cannot be opened is a
config error at start."""
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from marketfeed.cli.main import parser
from marketfeed.cli.service import RunFlags
from marketfeed.config.loader import from_dict, to_toml
from marketfeed.config.shipped import shipped_file
from marketfeed.telemetry import logs
from marketfeed.telemetry.logs import as_text, line_of, resolved_format
from tests.support.polling import poll
from tests.support.questdb import REPO, free_port
from tests.support.service import service_config, sim_feed

LEVELS = {"debug", "info", "warning", "error", "critical"}
SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")


def conforming(line: dict) -> dict:
    """The line, once it is proven to follow the schema (README, Logs); a record not logged by event() carries
    `<logger>_<level>` as its event and its text as `message`."""
    assert isinstance(line, dict) and list(line)[:4] == ["ts", "level", "logger", "event"], line
    assert datetime.fromisoformat(line["ts"]).utcoffset() is not None, line
    assert line["level"] in LEVELS and SNAKE_CASE.fullmatch(line["event"]), line
    if not line["logger"].startswith("marketfeed."):
        assert line["event"] == logs.snake_case(f"{line['logger']}_{line['level']}") and "message" in line, line
    return line


def logged(path: Path) -> list[dict]:
    """Every complete line of a JSON log file, each checked against the schema."""
    text = path.read_text() if path.exists() else ""
    complete = text[:text.rfind("\n") + 1]  # a line being written is read next time
    return [conforming(orjson.loads(raw)) for raw in complete.splitlines()]


def lnav_messages(log: Path, tmp_path: Path) -> list[dict]:
    """What lnav 0.11 makes of `log` with the shipped format installed in a config dir of its own (-I; HOME and
    XDG_CONFIG_HOME in tmp_path, so the user's ~/.lnav is neither read nor written): one row per message."""
    assert shutil.which("lnav"), "lnav missing: bin/test-deps installs it"
    formats = tmp_path / "lnav-config" / "formats" / "marketfeed"
    formats.mkdir(parents=True)
    (formats / "marketfeed_log.json").write_bytes(shipped_file("lnav-format").read_bytes())
    home = tmp_path / "lnav-home"
    (home / ".config").mkdir(parents=True)  # without one, lnav writes its samples into the working directory
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "TZ": "UTC"}
    sql = ("SELECT log_time, log_level, log_body, log_opid, feed, logger, message, "
           "(SELECT format FROM lnav_file) AS file_format FROM marketfeed_log")
    run = subprocess.run(["lnav", "-n", "-q", "-I", str(formats.parents[1]), "-c", f";{sql}", "-c", ":write-json-to -",
                          str(log)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return orjson.loads(run.stdout) if run.stdout.strip() else []


def as_lnav_reads_it(line: dict) -> dict:
    """A JSON log line as lnav should read it: its time (UTC, ms), level, event as the body, feed as the opid."""
    ts = datetime.fromisoformat(line["ts"]).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return {"log_time": ts, "log_level": line["level"], "log_body": line["event"], "log_opid": line.get("feed"),
            "feed": line.get("feed"), "logger": line["logger"], "message": line.get("message"),
            "file_format": "marketfeed_log"}


def assert_lnav_reads_every_line(log: Path, tmp_path: Path) -> None:
    lines = logged(log)
    expected = sorted((as_lnav_reads_it(line) for line in lines), key=orjson.dumps)
    assert sorted(lnav_messages(log, tmp_path), key=orjson.dumps) == expected


def record(name: str, level: int, msg: str, *args, fields: dict | None = None, exc_info=None) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, "x.py", 1, msg, args, exc_info)
    if fields is not None:
        made.fields = fields
    made.created = 1714564800.123  # 2024-05-01T12:00:00.123Z
    return made


# --- the schema, pure


def test_a_record_not_logged_by_event_gets_logger_and_level_as_its_event_and_its_text_as_message():
    try:
        raise ConnectionResetError("peer gone")
    except ConnectionResetError:
        exc_info = sys.exc_info()
    line = line_of(record("websockets.server", logging.ERROR, "opening handshake failed on %s", "127.0.0.1:9",
                          exc_info=exc_info))
    traceback = line.pop("traceback")
    assert line == {"ts": "2024-05-01T12:00:00.123+00:00", "level": "error", "logger": "websockets.server",
                    "event": "websockets_server_error", "message": "opening handshake failed on 127.0.0.1:9",
                    "error": "ConnectionResetError: peer gone"}
    assert traceback.startswith("Traceback (most recent call last)")
    assert line_of(record("py.warnings", logging.WARNING, "x.py:1: UserWarning: careful\n"))["event"] == \
        "py_warnings_warning"


def test_an_event_keeps_its_name_and_fields_and_no_message():
    line = line_of(record("marketfeed.feed", logging.INFO, "feed_connected", fields={"feed": "binance", "rows": 3}))
    assert line == {"ts": "2024-05-01T12:00:00.123+00:00", "level": "info", "logger": "marketfeed.feed",
                    "event": "feed_connected", "feed": "binance", "rows": 3}


def test_a_text_line_is_time_level_feed_event_then_key_values_and_a_traceback_indented_below():
    line = {"ts": "2024-05-01T12:00:00.123+00:00", "level": "warning", "logger": "marketfeed.feed",
            "event": "gap_detected", "feed": "kraken-sim", "symbol": "BTC/USD", "missing": 3,
            "reason": "sequence jumped", "ids": [4, 5, 6], "last": None}
    assert as_text(line) == ('2024-05-01 12:00:00.123Z WARNING  kraken-sim     gap_detected symbol=BTC/USD missing=3 '
                             'reason="sequence jumped" ids=[4,5,6] last=null')
    crash = {"ts": "2024-05-01T12:00:00.123+00:00", "level": "error", "logger": "pykka", "event": "pykka_error",
             "message": "Unhandled exception in Feed:", "error": "ValueError: x",
             "traceback": "Traceback (most recent call last):\n  File \"a.py\", line 1\nValueError: x\n"}
    assert as_text(crash).split("\n") == [
        ('2024-05-01 12:00:00.123Z ERROR    -              pykka_error message="Unhandled exception in Feed:" '
         'error="ValueError: x"'),
        "    Traceback (most recent call last):", '      File "a.py", line 1', "    ValueError: x"]


@pytest.mark.parametrize(("log_format", "path", "terminal", "resolved"), [
    ("auto", "", True, "text"),          # a person at a terminal
    ("auto", "", False, "json"),         # journald, a pipe, docker logs
    ("auto", "/var/log/m.log", True, "json"),
    ("json", "", True, "json"),
    ("text", "/var/log/m.log", False, "text"),
])
def test_auto_is_text_only_on_a_terminal_without_a_log_file(log_format, path, terminal, resolved):
    assert resolved_format(log_format, path, terminal) == resolved


def test_the_command_line_log_flags_win_over_the_config_and_only_those_given():
    args = parser().parse_args(["run", "-c", "x.toml", "--log-format", "text", "--log-level", "debug"])
    config = from_dict({"service": {"log_level": "error", "log_format": "json"}}, source="test")
    flagged = RunFlags(args.log_level, args.log_format).over(config)
    assert (flagged.service.log_level, flagged.service.log_format) == ("debug", "text")
    assert RunFlags(level="warning").over(config).service.log_format == "json"
    assert RunFlags().over(config) is config
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--log-format", "yaml"])


# --- logs.setup in a process of its own


def test_setup_refuses_a_log_file_in_a_missing_directory_creates_none_and_keeps_the_handler(tmp_path):
    logs.setup("info", str(tmp_path / "first.log"), "json")
    kept = logs._handler
    with pytest.raises(logs.LogFileError, match=f"cannot open {tmp_path}/missing/m.log: its directory "
                                                f"{tmp_path}/missing does not exist"):
        logs.setup("info", str(tmp_path / "missing" / "m.log"))
    assert not (tmp_path / "missing").exists() and logs._handler is kept


def test_run_with_a_log_file_in_a_missing_directory_is_a_config_error_naming_service_log_file(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text(to_toml({"service": {"log_file": str(tmp_path / "logs" / "feed.log"),
                                           "pid_file": str(tmp_path / "m.pid"), "http_listen": ""},
                               "feeds": [sim_feed("binance", None, ["BTCUSDT"], url="wss://127.0.0.1:1/ws")]}))
    run = subprocess.run([sys.executable, "-m", "marketfeed.cli.main", "run", "-c", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", (
        f"config error: service.log_file: cannot open {tmp_path}/logs/feed.log: its directory {tmp_path}/logs "
        "does not exist\n"))
    assert not (tmp_path / "logs").exists() and not (tmp_path / "m.pid").exists()


def test_auto_writes_text_to_a_terminal(tmp_path):
    script = ("import logging; from marketfeed.telemetry import logs; logs.setup('info'); "
              "logs.event(logging.getLogger('marketfeed.feed'), 'feed_connected', feed='binance', url='wss://x/ws')")
    leader, follower = os.openpty()
    try:
        run = subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=follower, stderr=subprocess.PIPE,
                             timeout=60)
        os.close(follower)
        shown = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z INFO     binance        feed_connected url=wss://x/ws"
                        r"\r\n", shown), shown


# Real records of the libraries that log into the service's handler — urllib3's retry warning, pykka's unhandled
# actor exception, a Python warning, sd_notify's failure — and, under websockets' and the simulator's own logger
# names, their per-connection INFO chatter (kept out) and an error (kept, normalised).
THIRD_PARTY = '''
import logging, sys, warnings
import pykka, urllib3
from marketfeed.telemetry import logs
from marketfeed.telemetry.sdnotify import Notifier

logs.setup("debug", sys.argv[1], "json")
logs.event(logging.getLogger("marketfeed.feed"), "feed_connected", feed="binance-sim", url="ws://127.0.0.1:1/ws")
logging.getLogger("websockets.server").info("connection open")
logging.getLogger("sim.binance").info("HTTP response sent (200 OK)")
logging.getLogger("sim").debug("binance connection 1 opened: /ws")
try:
    raise ValueError("bad request line")
except ValueError:
    logging.getLogger("websockets.server").error("opening handshake failed", exc_info=True)
try:
    urllib3.PoolManager().request("GET", f"http://127.0.0.1:{sys.argv[2]}/", retries=urllib3.Retry(1, backoff_factor=0))
except urllib3.exceptions.MaxRetryError:
    pass


class Crashes(pykka.ThreadingActor):
    def on_receive(self, message):
        raise RuntimeError("actor failed")


actor = Crashes.start()
actor.tell("crash")
while actor.is_alive():
    pass
warnings.warn("deprecated call")
Notifier("/nonexistent/notify.sock").ready()
'''


def test_every_line_of_a_log_with_library_records_follows_the_schema_and_lnav_reads_each(tmp_path):
    script, log = tmp_path / "third_party.py", tmp_path / "service.jsonl"
    script.write_text(THIRD_PARTY)
    run = subprocess.run([sys.executable, str(script), str(log), str(free_port())], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == run.stderr == "", run.stderr
    lines = logged(log)
    by_logger = {line["logger"]: line for line in lines}
    assert set(by_logger) == {"marketfeed.feed", "websockets.server", "urllib3.connectionpool", "pykka", "py.warnings",
                              "marketfeed.sdnotify"}, lines
    assert [line["message"] for line in lines if line["logger"] == "websockets.server"] == ["opening handshake failed"]
    assert by_logger["websockets.server"]["error"] == "ValueError: bad request line"
    assert by_logger["urllib3.connectionpool"]["event"] == "urllib3_connectionpool_warning"
    assert by_logger["urllib3.connectionpool"]["message"].startswith("Retrying (Retry(total=0")
    crash = next(line for line in lines if line["logger"] == "pykka" and "traceback" in line)
    assert crash["event"] == "pykka_error" and "RuntimeError: actor failed" in crash["traceback"]
    assert "UserWarning: deprecated call" in by_logger["py.warnings"]["message"]
    assert by_logger["marketfeed.sdnotify"]["event"] == "marketfeed_sdnotify_warning"
    assert by_logger["marketfeed.sdnotify"]["message"].startswith("sd_notify failed: ")
    assert_lnav_reads_every_line(log, tmp_path)


# --- the real service


def test_the_demo_log_follows_the_schema_line_by_line_and_lnav_reads_each_with_its_feed_as_opid(questdb, tmp_path):
    """`marketfeed demo` (simulator and service in one process, as a user runs it) against the session QuestDB; a
    NOTIFY_SOCKET nobody listens on makes sd_notify log its free-text warning into the same log. The log is
    var/demo.log: no file-name rule can be what lets lnav recognise it."""
    var = tmp_path / "var"
    demo = subprocess.Popen([sys.executable, "-m", "marketfeed.cli.main", "demo", "--duration", "300", "--rate", "20",
                             "--http-listen", f"127.0.0.1:{free_port()}", "--state-dir", str(var)], cwd=REPO,
                            env={**questdb.env, "NOTIFY_SOCKET": str(tmp_path / "nobody.sock")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = var / "demo.log"
    try:
        def connected_and_warned() -> bool:
            lines = logged(log)
            feeds = {line["feed"] for line in lines if line["event"] == "feed_connected"}
            return feeds == {"binance-sim", "kraken-sim", "coinbase-sim", "polygon-sim"} and any(
                line["logger"] == "marketfeed.sdnotify" for line in lines)
        poll(connected_and_warned, 120, "every demo feed connected and sd_notify's warning logged", interval=0.2)
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert demo.returncode == 0, output[-3000:]
    lines = logged(log)
    assert {line["event"] for line in lines} >= {"service_started", "feed_connected", "marketfeed_sdnotify_warning",
                                                 "service_stopped"}
    assert_lnav_reads_every_line(log, tmp_path)


def test_run_log_flags_give_text_lines_at_their_level_and_a_reload_keeps_them(questdb, table_prefix, tmp_path):
    """The config says JSON at warning; `--log-format text --log-level info` shows the INFO lines as text, on a pipe
    (where auto means JSON), and after SIGHUP (a reload reading the config again) still does."""
    from marketfeed.sim import Simulator

    sim = Simulator(["binance"], {"binance": ["BTCUSDT"]}, rate=20).start()
    try:
        config = tmp_path / "m.toml"
        feeds = [sim_feed("binance", sim, ["BTCUSDT"])]
        config.write_text(to_toml(service_config(tmp_path, questdb, table_prefix, feeds,
                                                 service={"log_level": "warning", "log_format": "json"})))
        proc = subprocess.Popen([sys.executable, "-m", "marketfeed.cli.main", "run", "-c", str(config),
                                 "--log-format", "text", "--log-level", "info"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        shown: list[str] = []
        reader = threading.Thread(target=lambda: shown.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()

        def line_with(event: str) -> str:
            return poll(lambda: next((line for line in list(shown) if f" {event}" in line), None), 60,
                        f"a {event} line")

        try:
            started = line_with("feed_connected")
            proc.send_signal(signal.SIGHUP)
            reloaded = line_with("config_reloaded")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            reader.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        sim.stop()
    assert code == 0, "".join(shown[-30:])
    text_line = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR|CRITICAL) +\S+ +[a-z][a-z0-9_]*( .*)?\n"
    assert [line for line in shown if not re.fullmatch(text_line, line)] == []  # no JSON, no stray output
    url = r"\"ws://127\.0\.0\.1:\d+/stream\?streams=btcusdt@trade\""  # quoted: it holds a "="
    assert re.match(rf"\S+ \S+ INFO     binance +feed_connected url={url} ", started), started
    assert " INFO " in reloaded and any(" service_stopped " in line for line in shown), "".join(shown)
