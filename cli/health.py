"""`marketfeed health`: SIGUSR1 to the running service, wait for the report begun after it, print it.

Exit codes follow the Nagios plugin convention: 0 ok, 1 degraded, 2 critical, 3 unknown (no
process, no answer in time); the first line is the plugin's one-line output with perfdata after `|`.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson

from marketfeed.config.schema import Config
from marketfeed.telemetry.report import FeedState, HealthLevel, HealthReport

UNKNOWN = HealthLevel.UNKNOWN.code
POLL_S = 0.02


def exit_code(report: HealthReport) -> int:
    """The Nagios exit code of the report's status."""
    try:
        return HealthLevel(report.get("status")).code
    except ValueError:  # a status this version does not know
        return UNKNOWN


def statuses(report: HealthReport, section: Literal["feeds", "buffers"]) -> Mapping[str, Mapping[str, Any]]:
    """A section's statuses for display: each read key by key with a default, as an actor that did not
    answer has only its state."""
    return report.get(section, {})


def perfdata(report: HealthReport) -> str:
    """Nagios perfdata: label=value[UOM];warn;crit;min;max, space separated."""
    feeds = statuses(report, "feeds")
    buffers = statuses(report, "buffers")
    process = report.get("process", {})
    connected = sum(1 for f in feeds.values() if f.get("state") == FeedState.CONNECTED)
    values = [
        f"feeds_connected={connected};;;0;{len(feeds)}",
        f"messages={sum(f.get('messages', 0) for f in feeds.values())}c",
        f"rows_written={sum(b.get('rows_written', 0) for b in buffers.values())}c",
        f"buffered_rows={sum(b.get('buffered_rows', 0) for b in buffers.values())};;;0",
        f"spool_bytes={sum(b.get('spool_bytes', 0) for b in buffers.values())}B;;;0",
        f"alerts={len(report.get('alerts', []))};;;0",
        f"rss={process.get('rss_bytes', 0)}B;;;0",
        f"threads={process.get('threads', 0)};;;0",
        f"open_fds={process.get('open_fds', 0)};;;0",
    ]
    return " ".join(values)


def render(report: HealthReport) -> str:
    """The readable report: the plugin line, then alerts, feeds, tables and the process."""
    status = report["status"]
    lines = [f"MARKETFEED {status.upper()} - {report.get('summary', '')} | {perfdata(report)}"]
    for alert in report.get("alerts", []):
        detail = ", ".join(f"{k}={v}" for k, v in alert.items() if k not in ("level", "cause") and v != "")
        lines.append(f"  {alert['level'].upper():9} {alert['cause']}: {detail}")
    lines.append("feeds:")
    for name, f in statuses(report, "feeds").items():
        lines.append(f"  {name:24} {f.get('state', '?'):12} messages={f.get('messages', 0)} "
                     f"last_message_age_s={f.get('last_message_age_s')} reconnects={f.get('reconnects', 0)} "
                     f"gaps={f.get('gaps', 0)} duplicates={f.get('duplicates', 0)}")
    lines.append("tables:")
    for name, b in statuses(report, "buffers").items():
        lines.append(f"  {name:24} buffered={b.get('buffered_rows', 0)} written={b.get('rows_written', 0)} "
                     f"last_flush_age_s={b.get('last_flush_age_s')} failures={b.get('failures', 0)} "
                     f"breaker={b.get('breaker', '-')} spool_bytes={b.get('spool_bytes', 0)}")
    p = report.get("process", {})
    lines.append(f"process: pid={report.get('pid')} rss={p.get('rss_bytes', 0) / 2**20:.1f}MB "
                 f"cpu={p.get('cpu_percent', 0)}% cpu_seconds={p.get('cpu_seconds')} threads={p.get('threads')} "
                 f"open_fds={p.get('open_fds')} uptime_s={p.get('uptime_s')}")
    return "\n".join(lines)


def read_pid(pid_file: str) -> int | None:
    try:
        pid = int(Path(pid_file).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def read_report(status_file: str) -> HealthReport | None:
    try:
        return orjson.loads(Path(status_file).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def fresh_report(config: Config, timeout_s: float) -> tuple[HealthReport | None, str]:
    """(report, "") or (None, why not): signals the service and waits for a report begun after the signal."""
    service = config.service
    pid = read_pid(service.pid_file)
    if pid is None:
        return None, f"no marketfeed process (pid file {service.pid_file})"
    signalled_at = time.time()
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as exc:
        return None, f"cannot signal pid {pid}: {exc}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = read_report(service.status_file)
        if report and report.get("pid") == pid and report.get("gather_started_at", 0) >= signalled_at:
            return report, ""
        time.sleep(POLL_S)
    return None, f"no health report from pid {pid} within {timeout_s:g}s (status file {service.status_file})"


def health(config: Config, as_json: bool, timeout_s: float) -> int:
    report, problem = fresh_report(config, timeout_s)
    if report is None:
        print(f"MARKETFEED UNKNOWN - {problem}")
        return UNKNOWN
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(report))
    return exit_code(report)
