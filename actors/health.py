"""Health actor: gathers a fresh report from every actor on request (SIGUSR1), periodically, and on a
short status tick that refreshes the status file, systemd's STATUS and its watchdog.

Gathering asks every actor with a timeout, so it runs in a short-lived thread the actor owns;
a silent actor is reported as unresponsive rather than stalling the report. The alert rules run
in the actor itself (they remember earlier reports).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pykka

from marketfeed.actors.peers import PeersSeen, PeerWatch
from marketfeed.config.instance import Peer, leads, peer_problems
from marketfeed.config.schema import Config
from marketfeed.storage.tables import TABLES
from marketfeed.supervision.scheduler import Timer, scheduler
from marketfeed.supervision.supervisor import ChildContext, GetChildren, GetStatus, Supervised, leaked_thread_count
from marketfeed.telemetry import metrics
from marketfeed.telemetry.health_rules import ALERT_CAUSES, AlertRules, summary
from marketfeed.telemetry.logs import event, scrub
from marketfeed.telemetry.names import BUFFER_CHILD_PREFIX, FEED_CHILD_PREFIX, known_name
from marketfeed.telemetry.report import (
    BreakerState,
    FeedStatus,
    GatheredReport,
    HealthLevel,
    HealthReport,
    NoAnswer,
    ProcessFigures,
    ReportReason,
    SilentStatus,
    SinkStatus,
    SupervisorStatus,
    silent,
)
from marketfeed.telemetry.sdnotify import Notifier

log = logging.getLogger("marketfeed.health")

ASK_TIMEOUT_S = 0.5
# Which reason wins when several wait behind one gather.
RANK = {ReportReason.TICK: 0, ReportReason.QUERY: 1, ReportReason.PERIODIC: 2, ReportReason.SIGNAL: 3}
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class HealthRequest:
    reason: ReportReason = ReportReason.SIGNAL


@dataclass(frozen=True)
class ReportReady:
    report: GatheredReport


@dataclass(frozen=True)
class UseConfig:
    """A reloaded config: new alert thresholds and intervals."""

    config: Config


class HealthBoard:
    """What outlives one health actor: the alert rules' memory and the latest report (read by HTTP)."""

    def __init__(self, config: Config, instance: Mapping[str, str] | None = None):
        self.rules = AlertRules(config.alerts)
        self.instance = dict(instance or {})  # which instance this is (config/instance.py), in every report
        self.partners: list[str] = []  # from the instances' heartbeats (actors/peers.py)
        self.problems: list[str] = []
        self.peers_error = ""
        # Set while this instance writes candles in progress (config/instance.py leads); the feeds read it. Until the
        # others are known it does: a single instance, the usual case, needs no QuestDB to write them.
        self.writes_live_candles = threading.Event()
        self.writes_live_candles.set()
        self._latest: tuple[HealthReport, float] | None = None

    def publish(self, report: HealthReport) -> None:
        self._latest = (report, time.monotonic())  # one reference swap: readers never see half a report

    def latest(self) -> tuple[HealthReport, float] | None:
        return self._latest


class HealthActor(Supervised):
    kind = "health"

    def __init__(self, ctx: ChildContext | None, config: Config, started_at: float,
                 board: HealthBoard, notifier: Notifier):
        super().__init__(ctx)
        self.config, self.started_at = config, started_at
        self.board, self.notifier = board, notifier
        self.process = psutil.Process()
        self.gathering = False
        self.pending_reason: ReportReason | None = None
        self.reports = 0
        self.last_status: HealthLevel | None = None
        self.timers: list[Timer] = []
        self.peer_watch: PeerWatch | None = None

    def started(self) -> None:
        self.board.rules.thresholds = self.config.alerts
        metrics.initialise((f.name for f in self.config.feeds), TABLES, self.board.instance)
        self._start_timers()
        me = self.board.instance
        if me:
            peer = Peer(me["id"], me["group"], me["shard"], socket.gethostname(), os.getpid(),
                        self.process.create_time())
            self.peer_watch = PeerWatch(peer, self.config.questdb.pg_dsn, self.config.questdb.table_prefix,
                                        self.actor_ref)
            self.peer_watch.start()

    def owned_threads(self) -> list:
        return [self.peer_watch] if self.peer_watch is not None else []

    def _on_peers(self, seen: PeersSeen) -> None:
        board = self.board
        board.peers_error = seen.error
        if seen.error:
            return
        me = board.instance
        mine = next((p for p in seen.peers if p.id == me["id"] and p.pid == os.getpid()), None)
        if mine is None:
            return  # my own heartbeat is not applied yet: judge at the next beat
        problems, board.partners = peer_problems(mine, list(seen.peers))
        leading = leads(mine, list(seen.peers), time.time())
        if leading != board.writes_live_candles.is_set():
            event(log, "live_candles_writer", instance=me["id"], writes=leading, partners=board.partners)
            board.writes_live_candles.set() if leading else board.writes_live_candles.clear()
        if problems != board.problems:
            event(log, "instance_conflict" if problems else "instance_conflict_resolved",
                  logging.ERROR if problems else logging.INFO, instance=me["id"], problems=problems)
        board.problems = problems

    def stopping(self) -> None:
        self._cancel_timers()
        if self.peer_watch is not None:
            self.peer_watch.stop()
        # The final report. Health stops last (reverse start order): feeds and buffers are gone, no tree to
        # walk, so their part is the last one gathered (at most a status interval old), dated as such.
        report = self.build_report(None, ReportReason.SHUTDOWN)
        latest = self.board.latest()
        if latest is not None:
            last = latest[0]
            report["feeds"], report["buffers"] = last["feeds"], last["buffers"]
            report["supervisors"], report["actors_as_of"] = last["supervisors"], last["generated_at"]
        self._publish(report)

    def stopping_after_crash(self) -> None:
        self._cancel_timers()
        if self.peer_watch is not None:
            self.peer_watch.stop()

    def _start_timers(self) -> None:
        every = scheduler().every
        self.timers = [
            every(self.config.service.health_interval_s, self.actor_ref, HealthRequest(ReportReason.PERIODIC)),
            every(self.tick_interval_s(), self.actor_ref, HealthRequest(ReportReason.TICK)),
        ]

    def _cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()

    def tick_interval_s(self) -> float:
        """Status refresh; at least twice per watchdog period, as sd_watchdog_enabled(3) advises."""
        interval = self.config.service.status_interval_s
        if self.notifier.watchdog_s:
            interval = min(interval, self.notifier.watchdog_s / 2)
        return interval

    def handle(self, message: object) -> object:
        match message:
            case HealthRequest(reason):
                if self.gathering:
                    if self.pending_reason is None or RANK[reason] > RANK[self.pending_reason]:
                        self.pending_reason = reason  # one more report right after this one
                else:
                    self._gather(reason)
            case ReportReady(report):
                self.gathering = False
                self._publish(report)
                if self.pending_reason is not None:
                    reason, self.pending_reason = self.pending_reason, None
                    self._gather(reason)
            case PeersSeen():
                self._on_peers(message)
            case UseConfig(config):
                self.config = config
                metrics.initialise((f.name for f in config.feeds), TABLES, self.board.instance)
                self.board.rules.thresholds = config.alerts
                self._cancel_timers()
                self._start_timers()
            case _:
                return super().handle(message)
        return None

    def status(self) -> dict[str, int]:
        return {"reports": self.reports}

    def _gather(self, reason: ReportReason) -> None:
        self.gathering = True
        root = self.ctx.parent if self.ctx else None
        me = self.actor_ref

        def gather() -> None:
            try:
                me.tell(ReportReady(self.build_report(root, reason)))
            except pykka.ActorDeadError:
                pass  # stopped meanwhile: nobody wants the report

        threading.Thread(target=gather, name="health-gather", daemon=True).start()

    def build_report(self, root: pykka.ActorRef | None, reason: ReportReason) -> GatheredReport:
        """Runs in the gather thread: asks the tree, never this actor itself."""
        gather_started_at = time.time()
        feeds: dict[str, FeedStatus | SilentStatus] = {}
        buffers: dict[str, SinkStatus | SilentStatus] = {}
        supervisors: dict[str, SupervisorStatus | SilentStatus] = {}
        others: dict[str, dict] = {}  # children of other kinds: the ledger
        if root is not None:
            self._walk(root, "root", feeds, buffers, supervisors, others)
        report: GatheredReport = {
            "reason": reason,
            "gather_started_at": gather_started_at,  # `marketfeed health` wants a report begun after its signal
            "generated_at": time.time(),
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "config": self.config.source,
            "instance": {"id": self.board.instance.get("id", ""), "group": self.board.instance.get("group", ""),
                         "shard": self.board.instance.get("shard", ""), "partners": self.board.partners,
                         "problems": self.board.problems, "peers_error": self.board.peers_error,
                         "writes_live_candles": self.board.writes_live_candles.is_set()},
            "feeds": feeds,
            "buffers": buffers,
            "supervisors": supervisors,
            "process": self._process(),
        }
        if "ledger" in others:
            report["ledger"] = others["ledger"]  # type: ignore[typeddict-item]  # the ledger actor's own status
        return report

    def _walk(self, ref: pykka.ActorRef, name: str, feeds: dict[str, FeedStatus | SilentStatus],
              buffers: dict[str, SinkStatus | SilentStatus], supervisors: dict[str, SupervisorStatus | SilentStatus],
              others: dict[str, dict]) -> None:
        try:  # block=True: only then do pykka's types give the reply, not "reply or future"
            supervisors[name] = ref.ask(GetStatus(), block=True, timeout=ASK_TIMEOUT_S)
            children = ref.ask(GetChildren(), block=True, timeout=ASK_TIMEOUT_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            supervisors[name] = {"state": NoAnswer.UNRESPONSIVE}
            return
        asks = []
        for child_id, child_ref, is_supervisor in children:
            if is_supervisor:
                self._walk(child_ref, child_id, feeds, buffers, supervisors, others)
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
                kind = ("feed" if child_id.startswith(FEED_CHILD_PREFIX)
                        else "buffer" if child_id.startswith(BUFFER_CHILD_PREFIX)
                        else "ledger" if child_id == "ledger" else "unknown")
                status = {"kind": kind, "state": NoAnswer.UNRESPONSIVE}
            except Exception as exc:  # noqa: BLE001 - an actor that died while asked
                status = {"kind": "unknown", "state": NoAnswer.DEAD, "last_error": repr(exc)}
            kind = status.pop("kind", "unknown")
            if kind == "ledger":
                others[child_id] = status
            elif kind in ("feed", "buffer"):  # by the name the config, the logs and the metric labels give it
                (feeds if kind == "feed" else buffers)[known_name(child_id)] = status
            else:
                supervisors[child_id] = status

    def _process(self) -> ProcessFigures:
        p = self.process
        with p.oneshot():
            cpu = p.cpu_times()
            return {
                "rss_bytes": p.memory_info().rss,
                "cpu_seconds": round(cpu.user + cpu.system, 2),
                "cpu_percent": p.cpu_percent(interval=None),  # since the previous report
                "threads": p.num_threads(),
                "open_fds": p.num_fds(),
                "uptime_s": round(process_age_s(), 1),
                "leaked_threads": leaked_thread_count(),
            }

    def _publish(self, gathered: GatheredReport) -> None:
        status, alerts = self.board.rules.evaluate(gathered, time.monotonic())
        report: HealthReport = {**gathered, "status": status, "alerts": alerts, "summary": summary(gathered, alerts)}
        self.reports += 1
        self.board.publish(report)
        changed = status != self.last_status
        # The full report (~3.5 KB) on an operator's SIGUSR1, periodically, at shutdown and when the status changes;
        # a `marketfeed health` query (a container healthcheck every 30 s) gets one line.
        if changed or report["reason"] in (ReportReason.SIGNAL, ReportReason.PERIODIC, ReportReason.SHUTDOWN):
            event(log, "health_report", logging.INFO, **report)
        elif report["reason"] == ReportReason.QUERY:
            event(log, "health_query", logging.INFO, status=status, summary=report["summary"])
        if changed:
            event(log, "health_status_changed", logging.INFO if status == HealthLevel.OK else logging.WARNING,
                  status=status, previous=self.last_status, alerts=alerts)
            self.last_status = status
        status_json = scrub(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())  # errors may quote a secret
        write_atomically(self.config.service.status_file, status_json.encode())
        export_gauges(report)
        self.notifier.status(f"{status}: {report['summary']}")
        if not any(a["cause"] == "actor_unresponsive" for a in alerts):
            self.notifier.watchdog()  # a hung actor stops the pings: systemd restarts the service


def export_gauges(report: HealthReport) -> None:
    """The report's verdict and the sink states it carries, as Prometheus gauges."""
    metrics.HEALTH_STATUS.set(report["status"].code)
    counts = Counter(alert["cause"] for alert in report["alerts"])
    for cause in {*ALERT_CAUSES, *counts}:  # every cause has a series: 0 while it is not alerting
        metrics.HEALTH_ALERTS.labels(cause).set(counts[cause])
    for sup in report["supervisors"].values():
        if not silent(sup):
            for child in sup.get("children", {}):  # at 0 before its first restart, so increase() sees that one
                metrics.ACTOR_RESTARTS.labels(sup["name"], known_name(child))
    for table, buffer in report["buffers"].items():
        if not silent(buffer):
            metrics.SPOOL_BYTES.labels(table).set(buffer["spool_bytes"])
            metrics.BREAKER_STATE.labels(table).set(BREAKER_VALUES[buffer["breaker"]])


def process_age_s() -> float:
    """Seconds since this process started, from /proc/self/stat's start time (clock ticks since boot) and the
    boot clock: psutil's create_time() needs /proc/stat's boot time, which the unit's ProcSubset=pid hides."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, after the name
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def write_atomically(path: str, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)  # readers see the old report or the new one, never half of one
