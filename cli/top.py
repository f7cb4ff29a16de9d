"""`marketfeed top`: a live terminal dashboard from the status file and the JSON log.

The service refreshes the status file every `status_interval_s`; rates are the difference between
two successive reports. `Dashboard` and `LogTail` are plain classes; curses is only the screen.
"""
from __future__ import annotations

import curses
import os
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO, Literal

import orjson

from marketfeed.cli.health import connections, read_report, statuses
from marketfeed.config.schema import Config
from marketfeed.telemetry.report import BreakerState, FeedState, HealthReport

REFRESH_S = 0.5
LOG_LINES = 6
STYLES = ("normal", "title", "header", "ok", "degraded", "critical")


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _age(seconds) -> str:
    """A last-flush or last-message age: "never" before the first one."""
    return "never" if seconds is None else f"{_num(seconds)}s"


class Dashboard:
    """Turns successive health reports into screen lines: (text, style)."""

    def __init__(self) -> None:
        self.report: HealthReport | None = None
        self.previous: HealthReport | None = None

    def update(self, report: HealthReport) -> None:
        if self.report is None or report.get("gather_started_at") != self.report.get("gather_started_at"):
            self.previous, self.report = self.report, report

    def _rate(self, section: Literal["feeds", "buffers"], name: str, key: str) -> float | None:
        if self.previous is None or self.report is None:
            return None
        dt = self.report["generated_at"] - self.previous["generated_at"]
        before = statuses(self.previous, section).get(name, {}).get(key)
        now = statuses(self.report, section).get(name, {}).get(key)
        if dt <= 0 or before is None or now is None or now < before:
            return None
        return (now - before) / dt

    def lines(self, now: float, log_lines: list[dict]) -> list[tuple[str, str]]:
        r = self.report
        if r is None:
            return [("marketfeed top — waiting for the status file…", "title")]
        p = r.get("process", {})
        age = now - r.get("generated_at", now)
        status = r.get("status", "?")
        title = (f"marketfeed  pid {_num(r.get('pid'))}  {status.upper()}  up {_num(p.get('uptime_s'), 0)}s  "
                 f"rss {p.get('rss_bytes', 0) / 2**20:.0f}MB  cpu {_num(p.get('cpu_percent'))}%  "
                 f"threads {_num(p.get('threads'))}  fds {_num(p.get('open_fds'))}  report {age:.1f}s old   (q quits)")
        out = [
            (title, status if status in STYLES else "title"),
            ("", "normal"),
            ((f"{'FEED':26}{'STATE':12}{'MSGS/S':>10}{'LAG S':>8}{'HELD':>8}{'RECONN':>8}{'GAPS':>6}{'DUPS':>7}"
              f"{'SYMS':>7}{'CONNS':>8}"), "header"),
        ]
        for name, f in statuses(r, "feeds").items():
            text = (f"{name[:25]:26}{f.get('state', '?')[:11]:12}{_num(self._rate('feeds', name, 'messages')):>10}"
                    f"{_age(f.get('last_message_age_s')):>8}{f.get('held_rows', 0):>8}{f.get('reconnects', 0):>8}"
                    f"{f.get('gaps', 0):>6}{f.get('duplicates', 0):>7}{f.get('symbols', 0):>7}{connections(f):>8}")
            out.append((text, "normal" if f.get("state") == FeedState.CONNECTED else "degraded"))
        out += [("", "normal"),
                ((f"{'TABLE':26}{'BREAKER':12}{'ROWS/S':>10}{'BUFFERED':>10}{'LAST FLUSH':>12}"
                  f"{'FAILS':>7}{'SPOOL B':>10}"), "header")]
        for name, b in statuses(r, "buffers").items():
            text = (f"{name[:25]:26}{b.get('breaker', b.get('state', '-'))[:11]:12}"
                    f"{_num(self._rate('buffers', name, 'rows_written')):>10}{b.get('buffered_rows', 0):>10}"
                    f"{_age(b.get('last_flush_age_s')):>12}{b.get('failures', 0):>7}"
                    f"{b.get('spool_bytes', 0):>10}")
            out.append((text, "critical" if b.get("breaker") == BreakerState.OPEN else "normal"))
        out += [("", "normal"), (f"ALERTS ({len(r.get('alerts', []))})", "header")]
        for a in r.get("alerts", []):
            detail = " ".join(f"{k}={v}" for k, v in a.items() if k not in ("level", "cause") and v != "")
            out.append((f"  {a['level'].upper():9}{a['cause']}  {detail}", a["level"]))
        if not r.get("alerts"):
            out.append(("  none", "ok"))
        out += [("", "normal"), ("RECENT LOG (warnings and errors)", "header")]
        for line in log_lines:
            fields = " ".join(f"{k}={v}" for k, v in line.items() if k not in ("ts", "level", "logger", "event"))
            out.append((f"  {line.get('ts', '')[11:23]} {line.get('level', ''):8}{line.get('event', '')}  {fields}",
                        "critical" if line.get("level") in ("error", "critical") else "degraded"))
        return out


class LogTail:
    """Follows the JSON log file (across logrotate), keeping the last warnings and errors."""

    def __init__(self, path: str, keep: int = LOG_LINES):
        self.path = Path(path) if path else None
        self.lines: deque[dict] = deque(maxlen=keep)
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._partial = b""

    def poll(self) -> list[dict]:
        if self.path is None:
            return list(self.lines)
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            return list(self.lines)
        if self._file is None or inode != self._inode:  # first look, or rotated: read the new file from its start
            if self._file is not None:
                self._file.close()
            self._file, self._inode, self._partial = open(self.path, "rb"), inode, b""
            self._file.seek(max(0, os.path.getsize(self.path) - 64 * 1024))
        chunk = self._partial + self._file.read()
        *complete, self._partial = chunk.split(b"\n")
        for raw in complete:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a cut first line, or not ours
            if isinstance(line, dict) and line.get("level") in ("warning", "error", "critical"):
                self.lines.append(line)
        return list(self.lines)


def top(config: Config) -> int:
    dashboard = Dashboard()
    log = LogTail(config.service.log_file)

    def draw(screen) -> None:
        curses.curs_set(0)
        curses.use_default_colors()
        colors = {"title": curses.COLOR_CYAN, "ok": curses.COLOR_GREEN, "degraded": curses.COLOR_YELLOW,
                  "critical": curses.COLOR_RED, "header": -1}
        attrs = {"normal": curses.A_NORMAL}
        for i, (style, color) in enumerate(colors.items(), start=1):
            curses.init_pair(i, color, -1)
            attrs[style] = curses.color_pair(i) | curses.A_BOLD
        screen.timeout(int(REFRESH_S * 1000))
        while True:
            report = read_report(config.service.status_file)
            if report is not None:
                dashboard.update(report)
            height, width = screen.getmaxyx()
            screen.erase()
            for y, (text, style) in enumerate(dashboard.lines(time.time(), log.poll())[:height]):
                screen.addnstr(y, 0, text, width - 1, attrs.get(style, curses.A_NORMAL))
            screen.refresh()
            if screen.getch() in (ord("q"), ord("Q")):
                return

    try:
        curses.wrapper(draw)
    except KeyboardInterrupt:
        pass
    return 0
