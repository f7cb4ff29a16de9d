"""`marketfeed run` as a real child process: a generated config, its JSON log lines, its signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from marketfeed.config.loader import to_toml
from marketfeed.sim import Simulator
from tests.support.questdb import REPO, QuestDB


def sim_feed(exchange: str, sim: Simulator | None, symbols: Sequence[str], *, name: str | None = None,
             **settings) -> dict:
    """One [[feeds]] entry reading the exchange's twin in sim, named after the exchange unless `name` says.
    settings add keys or replace any of these; with sim None (nothing listening yet) they carry the URLs."""
    urls = {"url": sim.url(exchange), "rest_url": sim.rest_url(exchange)} if sim is not None else {}
    return {"name": name or exchange, "exchange": exchange, **urls, "symbols": list(symbols), **settings}


def service_config(tmp_path: Path, questdb, table_prefix: str, feeds: list[dict], **sections) -> dict:
    """A config for a test run: the session QuestDB, files under tmp_path, quick timings."""
    config = {
        "service": {"status_file": str(tmp_path / "status.json"), "pid_file": str(tmp_path / "marketfeed.pid"),
                    "log_level": "info", "shutdown_timeout_s": 10.0, "http_listen": ""},
        "questdb": {"conf": questdb.conf, "pg_dsn": questdb.pg_dsn, "table_prefix": table_prefix},
        "sink": {"max_rows": 1000, "flush_interval_s": 0.1, "dead_letter_dir": str(tmp_path / "deadletter")},
        "spool": {"dir": str(tmp_path / "spool")},
        "ledger": {"dir": str(tmp_path / "ledger")},
        "supervisor": {"min_backoff_s": 0.1, "max_backoff_s": 1.0, "liveness_interval_s": 1.0},
        "feeds": feeds,
    }
    return overlay(config, sections)


def overlay(config: dict, sections: Mapping[str, Mapping]) -> dict:
    """config, each of whose sections takes the keys `sections` give it (a section it lacks is added)."""
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


class ServiceProcess:
    """Runs `python -m marketfeed.cli.main run -c FILE`, collecting its log lines as they come."""

    def __init__(self, config_path: Path, env: dict | None = None):
        self.config_path = config_path
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketfeed.cli.main", "run", "-c", str(config_path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, tmp_path: Path, config: dict, env: dict | None = None) -> ServiceProcess:
        path = tmp_path / "marketfeed.toml"
        path.write_text(to_toml(config))
        return cls(path, env)

    def _read(self) -> None:
        assert self.proc.stdout is not None  # stdout=PIPE
        for line in self.proc.stdout:
            with self._lock:
                self.raw.append(line)
                try:
                    self.lines.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    pass

    def events(self, name: str) -> list[dict]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == name]

    def wait_event(self, name: str, timeout: float = 30.0, where=lambda line: True, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.events(name)[after:] if where(line)]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                self._reader.join(2)
                found = [line for line in self.events(name)[after:] if where(line)]
                if found:
                    return found[0]
                raise AssertionError(f"process exited ({self.proc.returncode}) before {name!r}:\n{self.tail()}")
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} log line within {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        with self._lock:
            return "".join(self.raw[-n:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"process did not exit within {timeout}s:\n{self.tail()}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Services:
    """The simulators and `marketfeed run` processes of one test, against one QuestDB: each
    service(feeds, env, **sections) starts a process on a config from service_config, with `sections` over
    the ones given here; close() kills every process still running, then stops every simulator (a
    simulator's stop waits for its open connections to close)."""

    def __init__(self, tmp_path: Path, questdb: QuestDB, table_prefix: str, **sections: dict):
        self.tmp_path, self.questdb, self.table_prefix, self.sections = tmp_path, questdb, table_prefix, sections
        self.processes: list[ServiceProcess] = []
        self.simulators: list[Simulator] = []

    def simulator(self, *args, **options) -> Simulator:
        """A started Simulator(*args, **options), stopped at close()."""
        self.simulators.append(Simulator(*args, **options).start())
        return self.simulators[-1]

    def __call__(self, feeds: list[dict], env: dict | None = None, **sections) -> ServiceProcess:
        config = overlay(service_config(self.tmp_path, self.questdb, self.table_prefix, feeds, **self.sections),
                         sections)
        self.processes.append(ServiceProcess.start(self.tmp_path, config, env))
        return self.processes[-1]

    def instance(self, name: str, feeds: list[dict], env: dict | None = None, **sections) -> ServiceProcess:
        """One of several instances on the same QuestDB and table prefix: its files (config, status, pid, spool,
        ledger, dead letters) under tmp_path/name, its service.instance_id `name`; started again with the same name,
        it finds its own ledger and spool."""
        home = self.tmp_path / name
        home.mkdir(exist_ok=True)
        config = overlay(service_config(home, self.questdb, self.table_prefix, feeds, **self.sections), sections)
        config["service"].setdefault("instance_id", name)
        self.processes.append(ServiceProcess.start(home, config, env))
        return self.processes[-1]

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        for sim in self.simulators:
            sim.stop()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
