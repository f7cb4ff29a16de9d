"""Overall health from a gathered report: pure rules, each alert naming its cause.

`AlertRules` remembers what one report cannot show: since when a feed has been disconnected, and
how many errors the last minute brought. It does no I/O; the health actor feeds it reports.
"""
from __future__ import annotations

from collections import deque
from typing import Unpack

from marketfeed.config.schema import AlertConfig
from marketfeed.telemetry.names import known_name
from marketfeed.telemetry.report import (
    Alert,
    AlertDetail,
    BreakerState,
    ChildState,
    FeedState,
    GatheredReport,
    HealthLevel,
    HealthReport,
    NoAnswer,
    silent,
)

ERROR_WINDOW_S = 60.0
MB = 1024 * 1024
# Every cause an alert can name: the marketfeed_health_alerts gauge has a series (0 while quiet) for each.
ALERT_CAUSES = ("actor_unresponsive", "breaker_open", "child_restarting", "error_rate", "feed_disconnected",
                "feed_failed", "gap_open", "instance_conflict", "ledger_write_failed", "memory_high", "message_rate",
                "no_data",
                "rows_waiting", "sink_stalled", "spool_full", "spool_in_use")


def overall(alerts: list[Alert]) -> HealthLevel:
    return max((a["level"] for a in alerts), key=lambda level: level.code, default=HealthLevel.OK)


def error_counts(report: GatheredReport) -> dict[str, int]:
    """Every error counter in a report, by where it comes from (each is monotonic within one actor)."""
    counts = {}
    for name, feed in report.get("feeds", {}).items():
        if not silent(feed):
            counts[f"feed:{name}"] = (feed.get("reconnects", 0) + feed.get("malformed", 0)
                                      + sum(feed.get("rejected", {}).values()))
    for table, buffer in report.get("buffers", {}).items():
        if not silent(buffer):
            counts[f"buffer:{table}"] = buffer.get("failures", 0)
    for sup_name, sup in report.get("supervisors", {}).items():
        if not silent(sup):
            for child, info in sup.get("children", {}).items():
                counts[f"child:{sup_name}/{child}"] = info.get("restarts", 0)
    return counts


class AlertRules:
    def __init__(self, thresholds: AlertConfig):
        self.thresholds = thresholds
        self.disconnected_since: dict[str, float] = {}
        self.error_samples: deque[tuple[float, dict[str, int]]] = deque()

    def evaluate(self, report: GatheredReport, now: float) -> tuple[HealthLevel, list[Alert]]:
        """(overall status, alerts) for a report gathered at `now` (seconds, any monotonic clock)."""
        t = self.thresholds
        alerts: list[Alert] = []

        def alert(level: HealthLevel, cause: str, **detail: Unpack[AlertDetail]) -> None:
            alerts.append({"level": level, "cause": cause, **detail})

        feeds = report.get("feeds", {})
        for name in list(self.disconnected_since):
            if name not in feeds or feeds[name].get("state") in (FeedState.CONNECTED, None):
                del self.disconnected_since[name]
        for name, feed in feeds.items():
            if silent(feed):
                alert(HealthLevel.CRITICAL, "actor_unresponsive", feed=name, state=feed["state"])
                continue
            state = feed["state"]
            if state == FeedState.FAILED:  # the breaker is open: no point waiting out the disconnect threshold
                alert(HealthLevel.DEGRADED, "feed_failed", feed=name, breaker=feed.get("breaker"),
                      error=feed.get("last_error", ""))
            if state != FeedState.CONNECTED:
                since = self.disconnected_since.setdefault(name, now)
                if state != FeedState.FAILED and now - since > t.feed_disconnected_s:
                    alert(HealthLevel.DEGRADED, "feed_disconnected", feed=name, state=state,
                          for_s=round(now - since, 1), threshold_s=t.feed_disconnected_s,
                          error=feed.get("last_error", ""))
            age = feed.get("last_message_age_s")
            if age is not None and age > t.no_data_s:
                alert(HealthLevel.DEGRADED, "no_data", feed=name, silent_s=age, threshold_s=t.no_data_s)
            if feed.get("rate_exceeded"):
                alert(HealthLevel.DEGRADED, "message_rate", feed=name, messages_per_s=feed.get("messages_per_s"))
            if feed.get("held_rows", 0) > t.buffered_rows:
                alert(HealthLevel.DEGRADED, "rows_waiting", feed=name, rows=feed["held_rows"],
                      threshold=t.buffered_rows)

        for table, buffer in report.get("buffers", {}).items():
            if silent(buffer):
                alert(HealthLevel.CRITICAL, "actor_unresponsive", buffer=table, state=buffer["state"])
                continue
            waiting = buffer.get("buffered_rows", 0)
            if buffer.get("breaker") == BreakerState.OPEN:
                alert(HealthLevel.CRITICAL, "breaker_open", buffer=table, error=buffer.get("last_error", ""))
            flush_age = buffer.get("last_flush_age_s")
            if flush_age is None:
                flush_age = report.get("uptime_s", 0.0)  # never flushed: waiting since the start
            if waiting and flush_age > t.sink_stalled_s:
                alert(HealthLevel.CRITICAL, "sink_stalled", buffer=table, rows=waiting, since_flush_s=flush_age,
                      threshold_s=t.sink_stalled_s, error=buffer.get("last_error", ""))
            if waiting > t.buffered_rows:
                alert(HealthLevel.DEGRADED, "rows_waiting", buffer=table, rows=waiting, threshold=t.buffered_rows)
            if buffer.get("spool_full"):
                alert(HealthLevel.CRITICAL, "spool_full", buffer=table, spool_bytes=buffer.get("spool_bytes", 0),
                      rows_dropped=buffer.get("rows_dropped", 0))
            elif buffer.get("spool_bytes", 0) > 0:
                alert(HealthLevel.DEGRADED, "spool_in_use", buffer=table, spool_bytes=buffer["spool_bytes"])

        for name, sup in report.get("supervisors", {}).items():
            if silent(sup):
                if sup["state"] == NoAnswer.UNRESPONSIVE:
                    alert(HealthLevel.CRITICAL, "actor_unresponsive", supervisor=name)
                continue
            for child, info in sup.get("children", {}).items():
                if info.get("state") == ChildState.RESTARTING:
                    alert(HealthLevel.DEGRADED, "child_restarting", supervisor=name, child=known_name(child),
                          error=info.get("last_failure", ""))

        ledger = report.get("ledger")
        if ledger is not None and silent(ledger):
            alert(HealthLevel.CRITICAL, "actor_unresponsive", actor="ledger", state=ledger["state"])
        elif ledger is not None:
            age = ledger.get("oldest_open_gap_age_s")
            if t.gap_age_s and age is not None and age > t.gap_age_s:
                alert(HealthLevel.DEGRADED, "gap_open", open_gaps=ledger.get("open_gaps", 0), oldest_age_s=age,
                      threshold_s=t.gap_age_s)
            if ledger.get("write_failures"):
                alert(HealthLevel.DEGRADED, "ledger_write_failed", error=ledger.get("last_error", ""))

        for problem in report.get("instance", {}).get("problems", []):  # config/instance.py peer_problems
            alert(HealthLevel.DEGRADED, "instance_conflict", problem=problem)

        errors = self._errors_last_minute(error_counts(report), now)
        if errors > t.errors_per_minute:
            alert(HealthLevel.DEGRADED, "error_rate", errors_last_minute=errors, threshold=t.errors_per_minute)

        rss = report.get("process", {}).get("rss_bytes", 0)
        if rss > t.rss_mb * MB:
            alert(HealthLevel.DEGRADED, "memory_high", rss_mb=round(rss / MB, 1), threshold_mb=t.rss_mb)

        return overall(alerts), alerts

    def _errors_last_minute(self, counts: dict[str, int], now: float) -> int:
        """Errors since the oldest sample within the window; a counter that went down (restarted actor)
        counts from zero."""
        samples = self.error_samples
        while len(samples) > 1 and samples[1][0] <= now - ERROR_WINDOW_S:
            samples.popleft()
        base = samples[0][1] if samples else counts
        samples.append((now, counts))
        return sum(n - base.get(k, 0) if n >= base.get(k, 0) else n for k, n in counts.items())


def liveness(report: HealthReport | None, age_s: float, max_age_s: float) -> tuple[bool, str]:
    """/health: the health actor publishes fresh reports and every actor answered it."""
    if report is None:
        return False, "no health report yet"
    if age_s > max_age_s:
        return False, f"last health report is {age_s:.1f}s old"
    unresponsive = [a for a in report.get("alerts", []) if a["cause"] == "actor_unresponsive"]
    if unresponsive:
        return False, "unresponsive: " + ", ".join(_subject(a) for a in unresponsive)
    return True, "alive"


def readiness(report: HealthReport | None) -> tuple[bool, str]:
    """/ready: every feed connected and every sink writable."""
    if report is None:
        return False, "no health report yet"
    problems = [f"feed {name} is {feed.get('state')}" for name, feed in report.get("feeds", {}).items()
                if feed.get("state") != FeedState.CONNECTED]
    problems += [f"sink {_subject(a)}: {a['cause']}" for a in report.get("alerts", [])
                 if a["cause"] in ("breaker_open", "sink_stalled")
                 or (a["cause"] == "actor_unresponsive" and "buffer" in a)]
    if not report.get("buffers"):
        problems.append("no sink running")
    return (not problems), ("; ".join(problems) or "ready")


def _subject(alert: Alert) -> str:
    for key in ("feed", "buffer", "supervisor", "child"):
        if key in alert:
            return f"{key} {alert[key]}"
    return alert["cause"]


def summary(report: GatheredReport, alerts: list[Alert]) -> str:
    """One line for people: systemd's STATUS=, the first line of `marketfeed health`."""
    feeds = report.get("feeds", {})
    connected = sum(1 for f in feeds.values() if f.get("state") == FeedState.CONNECTED)
    written = sum(b.get("rows_written", 0) for b in report.get("buffers", {}).values() if not silent(b))
    text = f"{connected}/{len(feeds)} feeds connected, {written} rows written"
    if alerts:
        text += "; " + ", ".join(f"{a['cause']} ({_subject(a)})" if _subject(a) != a["cause"] else a["cause"]
                                 for a in alerts)
    return text
