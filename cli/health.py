"""`marketfeed health`: QUERY_SIGNAL to the running service, wait for the report begun after it, print it.

Exit codes follow the Nagios plugin convention: 0 ok, 1 degraded, 2 critical, 3 unknown (no
process, no answer in time); the first line is the plugin's one-line output with perfdata after `|`.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
import psutil

from marketfeed.config.schema import Config
from marketfeed.telemetry.report import QUERY_SIGNAL, FeedState, HealthLevel, HealthReport

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
        f"rss={process.get('rss_bytes') or 0}B;;;0",
        f"threads={process.get('threads') or 0};;;0",
        f"open_fds={process.get('open_fds') or 0};;;0",
    ]
    return " ".join(values)


def shown(value: object, missing: str = "-") -> str:
    """A value for people: what is not known (None: never flushed, no message yet, an actor that did not say) is
    `missing`, never "None"."""
    return missing if value is None else str(value)


def connections(feed: Mapping[str, Any]) -> str:
    """A feed's connections as "connected/all" (a whole market runs several; per-symbol detail: --json only)."""
    conns = feed.get("connections") or []
    up = sum(1 for c in conns if c.get("state") == FeedState.CONNECTED)
    return f"{up}/{len(conns)}"


def render(report: HealthReport) -> str:
    """The readable report: the plugin line, then alerts, feeds, tables and the process."""
    status = report["status"]
    lines = [f"MARKETFEED {status.upper()} - {report.get('summary', '')} | {perfdata(report)}"]
    for alert in report.get("alerts", []):
        detail = ", ".join(f"{k}={v}" for k, v in alert.items()
                           if k not in ("level", "cause") and v not in ("", None))
        lines.append(f"  {alert['level'].upper():9} {alert['cause']}: {detail}")
    lines.append("feeds:")
    for name, f in statuses(report, "feeds").items():
        lines.append(f"  {name:24} {f.get('state', '?'):12} messages={f.get('messages', 0)} "
                     f"last_message_age_s={shown(f.get('last_message_age_s'), 'never')} "
                     f"reconnects={f.get('reconnects', 0)} gaps={f.get('gaps', 0)} duplicates={f.get('duplicates', 0)} "
                     f"symbols={f.get('symbols', 0)} connections={connections(f)}"
                     + (f" universe_error={f['universe_error']!r}" if f.get("universe_error") else ""))
        conns = f.get("connections") or []
        for c in conns if len(conns) > 1 else []:
            lines.append(f"    connection {c.get('index')}: {c.get('state', '?')} symbols={c.get('symbols', 0)} "
                         f"reconnects={c.get('reconnects', 0)} "
                         f"last_message_age_s={shown(c.get('last_message_age_s'), 'never')}"
                         + (f" last_error={c['last_error']!r}" if c.get("last_error") else ""))
    lines.append("tables:")
    for name, b in statuses(report, "buffers").items():
        lines.append(f"  {name:24} buffered={b.get('buffered_rows', 0)} written={b.get('rows_written', 0)} "
                     f"last_flush_age_s={shown(b.get('last_flush_age_s'), 'never')} failures={b.get('failures', 0)} "
                     f"breaker={shown(b.get('breaker'))} spool_bytes={b.get('spool_bytes', 0)}")
    p = report.get("process", {})
    lines.append(f"process: pid={shown(report.get('pid'))} rss={p.get('rss_bytes', 0) / 2**20:.1f}MB "
                 f"cpu={shown(p.get('cpu_percent', 0))}% cpu_seconds={shown(p.get('cpu_seconds'))} "
                 f"threads={shown(p.get('threads'))} open_fds={shown(p.get('open_fds'))} "
                 f"uptime_s={shown(p.get('uptime_s'))}")
    return "\n".join(lines)


# The commands that run the service, whose process the pid file names; `marketfeed` as the console script (any
# path) or as `python -m marketfeed…`.
SERVICE_COMMANDS = frozenset(("run", "demo"))
# The pid file is written after the process starts; psutil derives a start time from the boot time, which /proc
# gives to the second.
START_SLACK_S = 2.0


def runs_service(cmdline: list[str]) -> bool:
    """Whether a process's command line runs the marketfeed service (not health, verify, or anything else)."""
    for i, arg in enumerate(cmdline):
        module = i > 0 and cmdline[i - 1] == "-m" and (arg == "marketfeed" or arg.startswith("marketfeed."))
        if module or Path(arg).name == "marketfeed":
            return cmdline[i + 1:i + 2] != [] and cmdline[i + 1] in SERVICE_COMMANDS
    return False


def service_pid(pid_file: str) -> tuple[int | None, str]:
    """(pid, "") of the service process the pid file names, or (None, why not). A pid file left behind names a pid
    that may since belong to any process: that one is never signalled (the signal would kill a `sleep`)."""
    path = Path(pid_file)
    try:
        pid = int(path.read_text().strip())
        written_at = path.stat().st_mtime
        process = psutil.Process(pid)
        cmdline, started_at = process.cmdline(), process.create_time()
    except (OSError, ValueError, psutil.NoSuchProcess):  # ZombieProcess is a NoSuchProcess
        return None, f"no marketfeed process (pid file {pid_file})"
    except psutil.AccessDenied:
        return None, f"cannot tell whether pid {pid} is marketfeed (pid file {pid_file}): access denied"
    if not runs_service(cmdline):
        return None, (f"stale pid file {pid_file}: pid {pid} is not a marketfeed service "
                      f"({' '.join(cmdline)[:120]!r}); nothing signalled")
    if started_at > written_at + START_SLACK_S:
        return None, (f"stale pid file {pid_file}: pid {pid} started after the file was written, "
                      "by another marketfeed; nothing signalled")
    return pid, ""


def read_report(status_file: str) -> HealthReport | None:
    try:
        return orjson.loads(Path(status_file).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def fresh_report(config: Config, timeout_s: float) -> tuple[HealthReport | None, str]:
    """(report, "") or (None, why not): signals the service and waits for a report begun after the signal."""
    service = config.service
    pid, problem = service_pid(service.pid_file)
    if pid is None:
        return None, problem
    signalled_at = time.time()
    try:
        os.kill(pid, QUERY_SIGNAL)
    except OSError as exc:
        return None, f"cannot signal pid {pid}: {exc}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = read_report(service.status_file)
        if report and report.get("pid") == pid and report.get("gather_started_at", 0) >= signalled_at:
            return report, ""
        time.sleep(POLL_S)
    return None, f"no health report from pid {pid} within {timeout_s:g}s (status file {service.status_file})"


def health(config: Config, as_json: bool, timeout_s: float, healthcheck: bool = False) -> int:
    """healthcheck: exit 0 (ok, degraded: still serving) or 1 (critical, unknown), as a container healthcheck wants."""
    report, problem = fresh_report(config, timeout_s)
    if report is None:
        print(f"MARKETFEED UNKNOWN - {problem}")
        return 1 if healthcheck else UNKNOWN
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(report).splitlines()[0] if healthcheck else render(report))
    code = exit_code(report)
    return int(code > HealthLevel.DEGRADED.code) if healthcheck else code
