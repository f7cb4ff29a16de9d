"""Health actor: gathers a fresh report from every actor on request (SIGUSR1) and periodically.

Gathering asks every actor with a timeout, so it runs in a short-lived thread the actor owns;
a silent actor is reported as unresponsive rather than stalling the report.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pykka

from config.schema import Config
from supervision.scheduler import scheduler
from supervision.supervisor import ChildContext, GetChildren, GetStatus, Supervised, leaked_thread_count
from telemetry.health_rules import evaluate
from telemetry.logs import event

log = logging.getLogger("marketfeed.health")

ASK_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class HealthRequest:
    reason: str = "signal"


@dataclass(frozen=True)
class ReportReady:
    report: dict


class HealthActor(Supervised):
    kind = "health"

    def __init__(self, ctx: ChildContext | None, config: Config, started_at: float):
        super().__init__(ctx)
        self.config, self.started_at = config, started_at
        self.process = psutil.Process()
        self.gathering = False
        self.pending_reason: str | None = None
        self.reports = 0
        self.last_report: dict | None = None
        self.timer = None

    def started(self) -> None:
        self.timer = scheduler().every(self.config.service.health_interval_s, self.actor_ref, HealthRequest("periodic"))

    def stopping(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def handle(self, message: object) -> object:
        match message:
            case HealthRequest(reason):
                if self.gathering:
                    self.pending_reason = reason  # one more report right after this one
                else:
                    self._gather(reason)
            case ReportReady(report):
                self.gathering = False
                self._publish(report)
                if self.pending_reason is not None:
                    reason, self.pending_reason = self.pending_reason, None
                    self._gather(reason)
            case _:
                return super().handle(message)
        return None

    def status(self) -> dict:
        return {"reports": self.reports}

    def _gather(self, reason: str) -> None:
        self.gathering = True
        root = self.ctx.parent if self.ctx else None
        me = self.actor_ref
        threading.Thread(target=lambda: me.tell(ReportReady(self.build_report(root, reason))),
                         name="health-gather", daemon=True).start()

    def build_report(self, root, reason: str) -> dict:
        """Runs in the gather thread: asks the tree, never this actor itself."""
        feeds, buffers, supervisors = {}, {}, {}
        if root is not None:
            self._walk(root, "root", feeds, buffers, supervisors)
        report = {
            "reason": reason,
            "generated_at": time.time(),
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "feeds": feeds,
            "buffers": buffers,
            "supervisors": supervisors,
            "process": self._process(),
        }
        report["status"], report["alerts"] = evaluate(report)
        return report

    def _walk(self, ref, name: str, feeds: dict, buffers: dict, supervisors: dict) -> None:
        try:
            supervisors[name] = ref.ask(GetStatus(), timeout=ASK_TIMEOUT_S)
            children = ref.ask(GetChildren(), timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            supervisors[name] = {"state": "unresponsive"}
            return
        asks = []
        for child_id, child_ref, is_supervisor in children:
            if is_supervisor:
                self._walk(child_ref, child_id, feeds, buffers, supervisors)
            elif child_ref is not None and child_ref.actor_urn != self.actor_urn:
                try:
                    asks.append((child_id, child_ref.ask(GetStatus(), block=False)))
                except pykka.ActorDeadError:
                    pass
        deadline = time.monotonic() + ASK_TIMEOUT_S
        for child_id, future in asks:
            try:
                status = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except pykka.Timeout:
                status = {"kind": "unknown", "state": "unresponsive"}
            except Exception as exc:  # noqa: BLE001 - an actor that died while asked
                status = {"kind": "unknown", "state": "dead", "last_error": repr(exc)}
            kind = status.pop("kind", "unknown")
            (buffers if kind == "buffer" else feeds if kind == "feed" else supervisors)[child_id] = status

    def _process(self) -> dict:
        p = self.process
        with p.oneshot():
            cpu = p.cpu_times()
            return {
                "rss_bytes": p.memory_info().rss,
                "cpu_seconds": round(cpu.user + cpu.system, 2),
                "threads": p.num_threads(),
                "open_fds": p.num_fds(),
                "leaked_threads": leaked_thread_count(),
            }

    def _publish(self, report: dict) -> None:
        self.reports += 1
        self.last_report = report
        event(log, "health_report", logging.INFO, **report)
        write_atomically(self.config.service.status_file, orjson.dumps(report, option=orjson.OPT_INDENT_2))


def write_atomically(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
