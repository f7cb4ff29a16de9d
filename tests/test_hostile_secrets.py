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
            screen = top_screen(proc.config_path, ("feed-marker", "buffer-trades", "ALERTS"), env)
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
    assert commands["health"].returncode in (1, 2) and "feed-marker" in commands["health"].stdout  # it ran
    assert commands["verify"].returncode not in (0, 1) and commands["verify"].stderr  # it failed to reach QuestDB
    assert "questdb.pg_dsn: expected a string, got a value of type list" in outputs["check-config"]  # it really ran
    assert len(proc.events("flush_failed")) >= 1 and '"feeds"' in outputs["status file"]
    for name, text in outputs.items():
        assert MARKER not in text and KEY_MARKER not in text, f"a secret leaked into the {name}"
