"""Secrets never leave the process: a marker secret in every secret slot, then every output scanned."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import orjson
import pytest

from marketfeed.config.loader import load, to_toml
from marketfeed.config.secrets import conf_items, redact_conf, redact_dsn, secret_values
from marketfeed.sim import Simulator
from marketfeed.telemetry import logs
from tests.support.questdb import REPO
from tests.support.service import ServiceProcess
from tests.support.top import top_screen

MARKER = "Sekr3t-M4rker-7f3a"  # one secret value in every slot: found anywhere = leaked
KEY_MARKER = "ApiK3y-M4rker-19c2"


def test_conf_credentials_are_redacted_and_escaped_semicolons_kept():
    conf = f"https::addr=db:9000;username=ingest;password=a;;{MARKER};token={MARKER};tls_roots=/ca.pem;"
    assert dict(conf_items(conf))["password"] == f"a;{MARKER}"
    shown = redact_conf(conf)
    assert MARKER not in shown and "ingest" not in shown
    assert shown == "https::addr=db:9000;username=***;password=***;token=***;tls_roots=/ca.pem;"


@pytest.mark.parametrize("dsn", [f"host=db user=u password={MARKER} dbname=qdb",
                                 f"host=db password='{MARKER} x' dbname=qdb", f"postgresql://u:{MARKER}@db:8812/qdb"])
def test_dsn_passwords_are_redacted(dsn):
    assert MARKER not in redact_dsn(dsn) and "***" in redact_dsn(dsn)


def test_secret_values_of_a_config_skip_public_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(to_toml({"questdb": {"conf": f"http::addr=h:1;username=admin;password={MARKER};"},
                             "feeds": [{"name": "p", "exchange": "polygon", "url": "ws://h", "symbols": ["A"],
                                        "api_key": KEY_MARKER}]}))
    assert secret_values(load(path, env={})) == {MARKER, KEY_MARKER}  # not "admin", not the default "quest"


def test_log_lines_hide_registered_secrets_even_inside_exceptions(capsys):
    logs.setup("info")
    logs.hide({MARKER})
    try:
        try:
            raise ValueError(f"auth failed for password {MARKER}")
        except ValueError:
            logs.logging.getLogger("marketfeed.test").exception("boom")
        out = capsys.readouterr().out
    finally:
        logs.hide(())
    assert "auth failed for password ***" in out and MARKER not in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MARKETFEED = (sys.executable, "-m", "marketfeed.cli.main")


@pytest.mark.integration  # the service process, though against a QuestDB that is down
def test_a_marker_secret_appears_in_no_output_of_the_service(tmp_path):
    """QuestDB unreachable on purpose: connection errors are the likeliest place for credentials to leak."""
    dead = free_port()
    conf_file, key_file = tmp_path / "questdb-conf", tmp_path / "api-key"
    conf_file.write_text(f"http::addr=127.0.0.1:{dead};username=ingest;password={MARKER};\n")
    key_file.write_text(KEY_MARKER + "\n")
    status_file = tmp_path / "status.json"
    with Simulator(["polygon"], ["AAPL"], rate=50, seed=1) as sim:
        config = {
            "service": {"status_file": str(status_file), "pid_file": str(tmp_path / "pid"),
                        "http_listen": "127.0.0.1:0", "status_interval_s": 0.2, "shutdown_timeout_s": 3.0},
            "questdb": {"pg_dsn": f"host=127.0.0.1 port={dead} user=admin password={MARKER} connect_timeout=1"},
            "sink": {"flush_interval_s": 0.05, "retry_min_s": 0.05, "retry_max_s": 0.2},
            "spool": {"dir": str(tmp_path / "spool")}, "ledger": {"dir": str(tmp_path / "ledger")},
            "feeds": [{"name": "marker", "exchange": "polygon", "url": sim.url("polygon"), "symbols": ["AAPL"],
                       "rest_url": sim.rest_url("polygon"), "api_key_file": str(key_file)}],
        }
        env = {"MARKETFEED_QUESTDB__CONF_FILE": str(conf_file)}
        proc = ServiceProcess.start(tmp_path, config, env)
        try:
            port = proc.wait_event("http_listening")["port"]
            proc.wait_event("feed_connected")
            proc.wait_event("flush_failed", timeout=30)  # QuestDB's errors have been logged
            proc.signal(signal.SIGUSR1)
            proc.wait_event("health_report", timeout=15)
            pages = []
            for path in ("/metrics", "/health", "/ready"):
                try:
                    pages.append(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode())
                except urllib.error.HTTPError as exc:  # 503 while QuestDB is down: its body counts too
                    pages.append(exc.read().decode())
            commands = {name: subprocess.run([*MARKETFEED, name, "-c", str(proc.config_path)], cwd=REPO,
                                             capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
                        for name in ("health", "verify")}  # verify: QuestDB unreachable, its error is shown
            # top: the feeds, buffers and alerts (with their details) of the live report, on a real terminal.
            screen = top_screen(proc.config_path, ("marker", "trades ", "ALERTS"), env)
            text = proc.config_path.read_text()  # a secret of the wrong type: the problem must not echo it
            proc.config_path.write_text(re.sub(r'pg_dsn = (".*")', r"pg_dsn = [\1]", text))
            proc.signal(signal.SIGHUP)
            proc.wait_event("config_reload_rejected")
        finally:
            proc.stop()
        check = subprocess.run([*MARKETFEED, "check-config", "-c", str(proc.config_path)], cwd=REPO,
                               capture_output=True, text=True, env={**env, "PATH": "/usr/bin:/bin"})
    outputs = {"log": "".join(proc.raw), "status file": status_file.read_text(), "http": "\n".join(pages),
               "check-config": check.stdout + check.stderr, "top": screen,
               **{name: run.stdout + run.stderr for name, run in commands.items()}}
    assert commands["health"].returncode in (1, 2) and "marker" in commands["health"].stdout  # it ran
    assert commands["verify"].returncode not in (0, 1) and commands["verify"].stderr  # it failed to reach QuestDB
    assert "questdb.pg_dsn: expected a string, got a value of type list" in outputs["check-config"]  # it really ran
    assert len(proc.events("flush_failed")) >= 1 and '"feeds"' in outputs["status file"]
    for name, text in outputs.items():
        assert MARKER not in text and KEY_MARKER not in text, f"a secret leaked into the {name}"


# --- tracebacks: every thread kind's uncaught exception goes through the JSON logger and its scrubber

CRASHES = '''
import sys, threading, warnings
import pykka
from marketfeed.actors.backfill import Backfiller
from marketfeed.actors.feed_reader import FeedReader, ReaderLimits, ReaderOutlet
from marketfeed.feeds.base import Gap
from marketfeed.telemetry import logs

marker, log_file = sys.argv[1:]
logs.setup("info", log_file)
logs.hide({marker})
URL = f"https://api.polygon.io/v3/trades/AAPL?timestamp.gte=1&apiKey={marker}"


class Boom(Exception):
    pass


class Killed(BaseException):  # past every `except Exception` of a worker's loop
    pass


def kill(*_):
    raise Killed(f"GET {URL}")


class Crashes(pykka.ThreadingActor):
    def on_receive(self, message):
        raise Boom(f"actor failed on {URL}")


class Protocol:  # the backfill thread's first request kills it
    backfill_request = staticmethod(kill)


class Deleted:
    def __del__(self):
        raise Boom(f"finalizer of {URL}")


plain = threading.Thread(target=kill, name="plain-thread")
plain.start(); plain.join()
allowed = threading.Event(); allowed.set()
backfill = Backfiller("marker", Protocol(), None, allowed, None)
backfill.start(); backfill.gaps.put(Gap("AAPL")); backfill.join()
sink = Crashes.start()
reader = FeedReader("reader-marker", URL, None, ReaderOutlet(sink, 1, lambda s: True), ReaderLimits(1, 0.1, 1, 1))
reader._open = kill  # the connection's first step raises past the reader's own handling
reader.start(); reader.join()
try:
    sink.tell("crash")
except pykka.ActorDeadError:  # the reader's last word (its closed() tell) may have crashed the actor already
    pass
while sink.is_alive():
    pass
Deleted()
warnings.warn(f"insecure request to {URL}")
raise Boom(f"main thread gave up on {URL}")
'''


def test_every_thread_kinds_traceback_is_a_scrubbed_json_log_line(tmp_path):
    """A plain thread, the backfill thread, a reader thread, a pykka actor, a finalizer, a warning and the main
    thread each die with the marker key in their message: each is one JSON line naming the exception type,
    the key shown as *** only, and nothing at all on stdout or stderr."""
    script, log_file = tmp_path / "crashes.py", tmp_path / "marketfeed.log"
    script.write_text(CRASHES)
    run = subprocess.run([sys.executable, str(script), KEY_MARKER, str(log_file)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1  # the main thread's exception ended it
    log_text = log_file.read_text()
    lines = [orjson.loads(line) for line in log_text.splitlines()]
    for name, text in {"stdout": run.stdout, "stderr": run.stderr, "log": log_text}.items():
        assert KEY_MARKER not in text, f"the key leaked into {name}"
    assert run.stdout == run.stderr == ""  # no printer bypassed the logger
    died = {line["thread"]: line["error"] for line in lines if line["event"] == "thread_died"}
    assert died.keys() >= {"plain-thread", "backfill-marker", "reader-marker"}, died
    assert all(error.startswith("Killed: GET https://api.polygon.io/") and "apiKey=***" in error
               for error in died.values()), died
    by_event = {line["event"]: line for line in lines}
    actor = next(line for line in lines if line["logger"] == "pykka" and "traceback" in line)
    assert actor["error"].startswith("Boom: actor failed on") and "apiKey=***" in actor["traceback"]
    assert by_event["unraisable_exception"]["error"].startswith("Boom: finalizer of")
    assert next(line for line in lines if line["logger"] == "py.warnings")["message"].count("apiKey=***") == 1
    main = by_event["uncaught_exception"]
    assert main["thread"] == "MainThread" and main["error"] == (
        "Boom: main thread gave up on https://api.polygon.io/v3/trades/AAPL?timestamp.gte=1&apiKey=***")
    assert "Traceback (most recent call last)" in main["traceback"] and 'raise Boom(f"main thread' in main["traceback"]


# Faults injected into a real `marketfeed run` at interpreter start-up (sitecustomize), the key they show the
# feed's own Polygon key: its backfill thread dies on the first page after an outage, the reader of its third
# connection dies, a plain thread and a pykka actor crash once logging is up, and SIGHUP's reload raises on the
# main thread, which ends the process.
FAULTS = '''
import os, threading, time
import pykka
from marketfeed.cli import service
from marketfeed.feeds import polygon

URL = "https://api.polygon.io/v3/trades/AAPL?apiKey=" + os.environ["MARKER_KEY"]
connects = []


class Killed(BaseException):
    pass


def kill(*_):
    raise Killed("GET " + URL)


def subscribe(self, subscribe=polygon.PolygonProtocol.subscribe_messages):
    connects.append(1)
    return kill() if len(connects) == 3 else subscribe(self)


def reload(self):
    raise ValueError("reload failed for " + URL)


class Crashes(pykka.ThreadingActor):
    def on_receive(self, message):
        raise ValueError("actor failed on " + URL)


def once_logging_is_up():
    while threading.excepthook is threading.__excepthook__:
        time.sleep(0.05)
    threading.Thread(target=kill, name="plain-thread").start()
    Crashes.start().tell("crash")


polygon.PolygonProtocol.parse_backfill = kill
polygon.PolygonProtocol.subscribe_messages = subscribe
service.Service.reload = reload
threading.Thread(target=once_logging_is_up, daemon=True).start()
'''


@pytest.mark.integration  # the service process, against a QuestDB that is down
def test_tracebacks_of_every_thread_kind_in_the_service_show_no_key(tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(FAULTS)
    status_file, dead = tmp_path / "status.json", free_port()
    with Simulator(["polygon"], ["AAPL"], rate=50, seed=1) as sim:
        config = {
            "service": {"status_file": str(status_file), "pid_file": str(tmp_path / "pid"), "http_listen": "",
                        "status_interval_s": 0.2, "shutdown_timeout_s": 3.0},
            "questdb": {"conf": f"http::addr=127.0.0.1:{dead};", "pg_dsn": f"host=127.0.0.1 port={dead} user=admin"
                        " connect_timeout=1"},
            "spool": {"dir": str(tmp_path / "spool")}, "ledger": {"dir": str(tmp_path / "ledger")},
            "supervisor": {"min_backoff_s": 0.1, "max_backoff_s": 0.5},
            "feeds": [{"name": "marker", "exchange": "polygon", "url": sim.url("polygon"), "symbols": ["AAPL"],
                       "rest_url": sim.rest_url("polygon"), "api_key": KEY_MARKER, "reconnect_min_s": 0.05}],
        }
        env = {"PYTHONPATH": os.pathsep.join(filter(None, (str(faults), os.environ.get("PYTHONPATH")))),
               "MARKER_KEY": KEY_MARKER}
        proc = ServiceProcess.start(tmp_path, config, env)
        try:
            proc.wait_event("feed_connected")
            proc.wait_event("thread_died", where=lambda line: line["thread"] == "plain-thread")
            # The outage's backfill kills its thread; the restarted feed's reader dies on connecting.
            sim.wait_connections("polygon", 1)[0].drop()
            proc.wait_event("thread_died", where=lambda line: line["thread"] == "backfill-marker")
            proc.wait_event("backfill_thread_died")
            proc.wait_event("thread_died", where=lambda line: line["thread"].startswith("reader"), timeout=30)
            proc.signal(signal.SIGHUP)
            code = proc.wait(30)
        finally:
            proc.stop()
    assert code == 1  # the main thread's exception ended it
    outputs = {"stdout and stderr": "".join(proc.raw), "status file": status_file.read_text()}
    for name, text in outputs.items():
        assert KEY_MARKER not in text, f"the key leaked into the {name}"
    crashes = [line for line in proc.lines if "traceback" in line]
    assert {line["error"].split(":")[0] for line in crashes} >= {"Killed", "ValueError"}
    assert all("apiKey=***" in line["error"] for line in crashes if "apiKey" in line["error"])
    assert any(line["logger"] == "pykka" and line["error"].startswith("ValueError: actor failed") for line in crashes)
    main = proc.events("uncaught_exception")
    assert [line["thread"] for line in main] == ["MainThread"] and main[0]["error"].startswith("ValueError: reload")
    assert [raw for raw in proc.raw if not raw.startswith("{")] == []  # every line the process wrote is JSON
