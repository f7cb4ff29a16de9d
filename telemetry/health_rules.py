"""Overall health from a gathered report: pure rules, each alert naming its cause."""
from __future__ import annotations

OK, DEGRADED, CRITICAL = "ok", "degraded", "critical"
SEVERITY = {OK: 0, DEGRADED: 1, CRITICAL: 2}


def evaluate(report: dict) -> tuple[str, list[dict]]:
    alerts: list[dict] = []

    def alert(level: str, cause: str, **detail) -> None:
        alerts.append({"level": level, "cause": cause, **detail})

    for name, feed in report.get("feeds", {}).items():
        if feed.get("state") == "unresponsive":
            alert(CRITICAL, "actor_unresponsive", feed=name)
        elif feed.get("state") != "connected":
            alert(DEGRADED, "feed_not_connected", feed=name, state=feed.get("state"), error=feed.get("last_error", ""))
    for table, buffer in report.get("buffers", {}).items():
        if buffer.get("state") == "unresponsive":
            alert(CRITICAL, "actor_unresponsive", buffer=table)
        elif buffer.get("last_error") and buffer.get("failures"):
            alert(DEGRADED, "flush_failures", buffer=table, failures=buffer["failures"], error=buffer["last_error"])
    for name, sup in report.get("supervisors", {}).items():
        for child, info in sup.get("children", {}).items():
            if info.get("state") == "restarting":
                alert(DEGRADED, "child_restarting", supervisor=name, child=child, error=info.get("last_failure", ""))
    status = max((a["level"] for a in alerts), key=SEVERITY.__getitem__, default=OK)
    return status, alerts
