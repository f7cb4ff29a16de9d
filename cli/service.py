"""The process shell of `marketfeed run`: builds the tree, owns the signals, decides the exit code.

The main thread only waits; signal handlers hand their signal to an actor and return.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg2
import pykka

from marketfeed.actors.buffer import BufferActor, SinkDirectory
from marketfeed.actors.feed import FeedActor
from marketfeed.actors.feed_messages import RefreshUniverse
from marketfeed.actors.health import HealthActor, HealthBoard, HealthRequest, UseConfig
from marketfeed.actors.ledger import LedgerActor, LedgerOutlet
from marketfeed.cli.reload import applied, plan
from marketfeed.config.instance import Instance, InstanceError, instance_of, sharded
from marketfeed.config.loader import ConfigError, load
from marketfeed.config.schema import Config, FeedConfig, history_s
from marketfeed.config.secrets import secret_values
from marketfeed.feeds import registry
from marketfeed.feeds.pipeline import FeedMemory
from marketfeed.feeds.universe import Listing, UniverseSpec
from marketfeed.storage.ledger import Journal, RequestBox
from marketfeed.storage.recovery import (
    StoredLast,
    hole_gap,
    last_trade_ids,
    newest_stored_ns,
    restore_streams,
    stored_holes,
    stream_of,
)
from marketfeed.storage.tables import TABLES, TRADES
from marketfeed.supervision.supervisor import (
    AddChild,
    ChildContext,
    ChildSpec,
    GetChildren,
    RemoveChild,
    StartFailed,
    Supervisor,
    start_child,
)
from marketfeed.telemetry import logs
from marketfeed.telemetry.http import OpsServer
from marketfeed.telemetry.logs import event
from marketfeed.telemetry.report import QUERY_SIGNAL, ReportReason
from marketfeed.telemetry.sdnotify import Notifier

log = logging.getLogger("marketfeed.service")

EXIT_OK, EXIT_GAVE_UP, EXIT_CONFIG = 0, 1, 2

# Every row passes through a few container objects (decoded JSON, the row tuple, batch lists), and CPython's
# default gen-0 threshold of 700 ran a collection every few hundred rows, each one walking the batches
# in flight: a fifth of the process's CPU at 40k rows/s (bench/). Nearly all of them are freed by reference
# counting, not by the collector, so it runs 100x less often; cyclic garbage waits longer, and is rare here.
GC_THRESHOLDS = (70_000, 10, 10)


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """`run`'s --log-level, --log-format, --shard and --instance-id: each wins over its [service] key, after a
    reload too."""
    level: str | None = None
    format: str | None = None
    shard: str | None = None
    instance_id: str | None = None

    def over(self, config: Config) -> Config:
        keys: dict[str, Any] = {key: value for key, value in (("log_level", self.level), ("log_format", self.format),
                                              ("shard", self.shard), ("instance_id", self.instance_id))
                if value is not None}
        return dataclasses.replace(config, service=dataclasses.replace(config.service, **keys)) if keys else config


def carries(feed: FeedConfig, symbol: str) -> bool:
    """Whether the feed may carry `symbol`: one of its symbols, or (a whole market, whose listing is read later)
    a name its patterns admit. Restoring a symbol's stored history that the listing then leaves out is harmless."""
    spec = UniverseSpec.of(feed)
    if spec is None:
        return symbol in feed.symbols
    by_name = dataclasses.replace(spec, quote_assets=(), trading_only=False)  # what a name alone can tell
    return by_name.matches(Listing(symbol, "", "", True))


class Service:
    def __init__(self, config: Config, notifier: Notifier | None = None, run_flags: RunFlags = RunFlags(),
                 instance: Instance | None = None):
        self.instance = instance or instance_of(config, socket.gethostname())
        self.config = sharded(config, self.instance.shard)  # its feeds' symbols: this instance's share
        self.run_flags = run_flags
        self.notifier = notifier or Notifier(None)
        # latest report and alert memory, across health actor restarts
        self.board = HealthBoard(config, self.instance.describe())
        self.feeds_ref: pykka.ActorRef[Supervisor] | None = None
        self.http: OpsServer | None = None
        self.reload_requested = threading.Event()
        self.started_at = time.monotonic()
        self.sinks = SinkDirectory()
        self.memories: dict[str, FeedMemory] = {f.name: FeedMemory() for f in config.feeds}
        self.journal = Journal(config.ledger.dir, config.ledger.compact_every)
        self.known_series: set[tuple[str, str]] = set()  # (exchange label, symbol) with rows stored, as far as known
        self.ledger = LedgerOutlet()
        self.root: pykka.ActorRef[Supervisor] | None = None
        self.health_ref: pykka.ActorRef[HealthActor] | None = None
        self.stop_requested = threading.Event()
        self.exit_code = EXIT_OK

    # --- the tree (DESIGN.md §1): health, sinks, feeds; started top to bottom, stopped bottom up
    def _supervisor_options(self) -> dict:
        s = self.config.supervisor
        return dict(max_restarts=s.max_restarts, within_s=s.within_s, min_backoff_s=s.min_backoff_s,
                    max_backoff_s=s.max_backoff_s, reset_after_s=s.reset_after_s,
                    liveness_interval_s=s.liveness_interval_s, liveness_timeout_s=s.liveness_timeout_s)

    def _health_spec(self) -> ChildSpec:
        def start(ctx: ChildContext):
            self.health_ref = HealthActor.start(ctx, self.config, self.started_at, self.board, self.notifier)
            return self.health_ref
        return ChildSpec("health", start, shutdown_timeout_s=5.0)

    def _sink_spec(self) -> ChildSpec:
        timeout = self.config.service.shutdown_timeout_s

        def buffer(table: str) -> ChildSpec:
            return ChildSpec(f"buffer-{table}",
                             lambda ctx: BufferActor.start(ctx, table, self.config, self.sinks, self.ledger),
                             shutdown_timeout_s=timeout)
        buffers = [buffer(table) for table in TABLES]
        return ChildSpec("sinks", lambda ctx: Supervisor.start(ctx, "sinks", buffers, **self._supervisor_options()),
                         shutdown_timeout_s=timeout * len(buffers) + 1, supervisor=True)

    def _feed_child(self, f: FeedConfig) -> ChildSpec:
        return ChildSpec(f"feed-{f.name}", lambda ctx: FeedActor.start(
            ctx, f, self.sinks, self.memories[f.name], self.config.sink.dead_letter_dir, self.ledger,
            self.config.ledger.gap_max_age_h * 3600, RequestBox(self.config.ledger.dir), self.instance.shard,
            self.board.writes_live_candles), shutdown_timeout_s=5.0)

    def _ledger_spec(self) -> ChildSpec:
        def start(ctx: ChildContext):
            ledger, _ = self.journal.load()  # a restarted ledger actor reads back what its predecessor wrote
            return LedgerActor.start(ctx, self.journal, ledger, self.ledger)
        return ChildSpec("ledger", start, shutdown_timeout_s=10.0)

    def _feed_spec(self) -> ChildSpec:
        def start(ctx: ChildContext):
            # The feeds of the current config: a restarted feed supervisor keeps what SIGHUP changed.
            feeds = [self._feed_child(f) for f in self.config.feeds]
            self.feeds_ref = Supervisor.start(ctx, "feeds", feeds, **self._supervisor_options())
            return self.feeds_ref
        return ChildSpec("feeds", start, shutdown_timeout_s=5.0 * max(1, len(self.config.feeds)) + 1, supervisor=True)

    def start(self) -> None:
        self._recover_from_ledger()
        self._recover_last_ids()
        self._plan_history(time.time_ns())
        self._start_http()
        # The ledger before the sinks and feeds that tell it things; stopped after them.
        specs = [self._health_spec(), self._ledger_spec(), self._sink_spec(), self._feed_spec()]
        root = ChildSpec("root", lambda ctx: Supervisor.start(ctx, "root", specs, on_give_up=self._give_up,
                                                              **self._supervisor_options()))
        try:
            self.root, _ = start_child(root, None)  # returns once the whole tree is up, in order
        except StartFailed as exc:
            self._give_up(str(exc))
            return
        event(log, "service_started", pid=os.getpid(), feeds=[f.name for f in self.config.feeds],
              instance=self.instance.describe(),
              config=self.config.source)
        self.notifier.ready(f"started: {len(self.config.feeds)} feeds")

    def _recover_from_ledger(self) -> None:
        """The ledger first, QuestDB never asked: where each series' stored history ends, and every gap still open.
        A QuestDB outage at start then changes nothing: the downtime is an outage window all the same."""
        try:
            ledger, torn = self.journal.load()
        except OSError as exc:  # an unreadable ledger directory: start from QuestDB alone, say so
            event(log, "ledger_unavailable", logging.ERROR, dir=self.config.ledger.dir, error=str(exc))
            return
        for record in torn:
            event(log, "ledger_record_torn", logging.WARNING, dir=self.config.ledger.dir, offset=record.offset,
                  reason=record.reason)
        stored = {(m.exchange, m.symbol): StoredLast(m.last_id, m.last_ts_ns) for m in ledger.marks.values()
                  if m.table == TRADES.name and m.last_id is not None}
        newest: dict[tuple[str, str], int] = {}
        for m in ledger.marks.values():
            newest[(m.exchange, m.symbol)] = max(newest.get((m.exchange, m.symbol), 0), m.last_ts_ns)
        self._restore(stored, newest)
        for f in self.config.feeds:
            self.memories[f.name].stored_ns = {key: m.last_ts_ns for key, m in ledger.marks.items()}
            for opened in ledger.feed_gaps(f.name):
                self.memories[f.name].gaps.open[opened.key] = opened
        event(log, "ledger_loaded", series=len(ledger.marks), open_gaps=len(ledger.open),
              torn_records=len(torn))

    def _restore(self, stored: Mapping[tuple[str, str], StoredLast], newest: Mapping[tuple[str, str], int]) -> None:
        """Each feed's streams start at the newest of what is known (the ledger's or QuestDB's): never later."""
        self.known_series |= set(newest)
        for f in self.config.feeds:
            protocol = registry.exchange(f.exchange).protocol(f)
            memory = self.memories[f.name]
            labels = {protocol.exchange, *protocol.trade_labels()}
            memory.last_event_ns = max([memory.last_event_ns, *(
                newest[(label, symbol)] for (label, symbol) in newest if label in labels and carries(f, symbol))])
            if protocol.contiguous_ids:
                known = {key: last for key, last in stored.items()
                         if (last_id := memory.last_ids.get(stream_of(protocol, *key))) is None
                         or last.trade_id > last_id}
                restore_streams(memory, protocol, sorted({s for _, s in known if carries(f, s)}), known)

    def _plan_history(self, now_ns: int) -> None:
        """feeds.history: a symbol of which nothing is stored (neither the ledger nor QuestDB knows a row) starts
        with that much history, fetched like any gap. QuestDB down and the ledger new: fetched again, DEDUP absorbs."""
        for f in self.config.feeds:
            if not (seconds := history_s(f.history)) or not f.backfill or UniverseSpec.of(f) is not None:
                continue  # a whole market's listings start with nothing stored, no history
            protocol = registry.exchange(f.exchange).protocol(f)
            labels = {protocol.exchange, *protocol.trade_labels()}
            new = tuple(s for s in f.symbols if not any((label, s) in self.known_series for label in labels))
            if new:  # trades run on to the live stream (DEDUP absorbs the overlap); candles closed by now
                gaps = protocol.history_gaps(new, now_ns - int(seconds * 1e9), now_ns)
                self.memories[f.name].history = [dataclasses.replace(g, until_ns=0) if g.table is TRADES else g
                                                 for g in gaps]
                event(log, "history_planned", feed=f.name, symbols=list(new), history=f.history,
                      gaps=len(self.memories[f.name].history))

    def _recover_last_ids(self) -> None:
        """Each feed's sequence starts where the stored history ends (per stream: last id, its time, its symbol),
        so downtime shows as a gap to backfill; so does its outage window (time-windowed trades, candles), from its
        newest stored row."""
        q = self.config.questdb
        try:
            stored = last_trade_ids(q.pg_dsn, q.table_prefix)
            newest = newest_stored_ns(q.pg_dsn, q.table_prefix)
        except psycopg2.Error as exc:  # QuestDB down at start: the ledger's marks stand alone
            event(log, "last_ids_unavailable", logging.WARNING, error=str(exc).strip()[:300])
            return
        self._restore(stored, newest)
        protocols = [(f, p) for f in self.config.feeds
                     if (p := registry.exchange(f.exchange).protocol(f)).contiguous_ids]
        event(log, "last_ids_recovered", feeds={name: m.last_ids for name, m in self.memories.items()})
        if q.hole_scan_h:
            self._recover_holes(protocols)

    def _recover_holes(self, protocols: list) -> None:
        """Holes below the last ids (e.g. a kill while a gap was being fetched) go to their feed's backfill."""
        q = self.config.questdb
        labels = tuple(sorted({label for _, protocol in protocols for label in protocol.trade_labels()}))
        try:
            holes = stored_holes(q.pg_dsn, q.table_prefix, labels, q.hole_scan_h * 3600)
        except psycopg2.Error as exc:
            event(log, "stored_holes_unavailable", logging.WARNING, error=str(exc).strip()[:300])
            return
        for f, protocol in protocols:
            self.memories[f.name].stored_holes = [
                hole_gap(protocol, hole) for hole in holes
                if hole.exchange in protocol.trade_labels() and carries(f, hole.symbol)]
        if holes:
            event(log, "stored_holes_found", logging.WARNING, holes=len(holes),
                  sample=[f"{h.exchange} {h.symbol} {h.first_id}..{h.last_id}" for h in holes[:5]])

    def _start_http(self) -> None:
        listen = self.config.service.http_listen
        if not listen:
            return
        try:
            self.http = OpsServer(listen, self.board.latest, 3 * self.config.service.status_interval_s + 2.0).start()
        except (OSError, ValueError) as exc:  # ingesting matters more than metrics: run on without HTTP
            event(log, "http_unavailable", logging.ERROR, listen=listen, error=str(exc))
            return
        event(log, "http_listening", listen=listen, port=self.http.port)

    def reload(self) -> None:
        """SIGHUP: reopen the log file, then apply a valid new config feed by feed; an invalid one changes nothing."""
        logs.reopen()
        try:
            new = sharded(self.run_flags.over(load(self.config.source)), self.instance.shard)
        except ConfigError as exc:
            event(log, "config_reload_rejected", logging.ERROR, config=self.config.source, problems=exc.problems)
            return
        except InstanceError as exc:  # the shard stays the one the process started with
            event(log, "config_reload_rejected", logging.ERROR, config=self.config.source, problems=[str(exc)])
            return
        logs.hide(secret_values(self.config) | secret_values(new))  # old ones too: running actors may still show them
        change = plan(self.config, new)
        self.config = applied(self.config, new)
        logging.getLogger().setLevel(self.config.service.log_level.upper())
        failed: dict[str, str] = {}  # feed (or "feeds") → why it was not applied
        for name in change.removed:
            self.memories.pop(name, None)
        for f in new.feeds:
            self.memories.setdefault(f.name, FeedMemory())  # a new feed: nothing stored, no gap yet
        feeds = self.feeds_ref
        assert feeds is not None, "SIGHUP is acted on only while the tree runs: start() gave it its feed supervisor"
        try:
            for name in (*change.removed, *(f.name for f in change.changed)):
                feeds.ask(RemoveChild(f"feed-{name}"), block=True, timeout=30)
            for f in (*change.changed, *change.added):
                if error := feeds.ask(AddChild(self._feed_child(f)), block=True, timeout=30):
                    failed[f.name] = error
        except Exception as exc:  # noqa: BLE001 - feed supervisor restarting: it starts from the new config
            failed["feeds"] = repr(exc)
        self._refresh_universes({f.name for f in (*change.added, *change.changed)})
        if self.health_ref is not None:
            self.health_ref.tell(UseConfig(self.config))
        event(log, "config_reloaded", logging.WARNING if failed else logging.INFO, config=self.config.source,
              added=[f.name for f in change.added], removed=list(change.removed),
              changed=[f.name for f in change.changed], restart_needed=list(change.restart_needed), failed=failed)

    def _refresh_universes(self, restarted: set[str]) -> None:
        """SIGHUP also reads every running whole-market feed's listing again (a restarted feed reads it anyway)."""
        assert self.feeds_ref is not None, "called while the tree runs"
        names = {f"feed-{f.name}" for f in self.config.feeds
                 if UniverseSpec.of(f) is not None and f.name not in restarted}
        try:
            children = self.feeds_ref.ask(GetChildren(), block=True, timeout=5)
        except Exception:  # noqa: BLE001 - the feed supervisor is restarting: its feeds read their listings anyway
            return
        for child_id, ref, _ in children:
            if child_id in names:
                ref.tell(RefreshUniverse())

    def _give_up(self, reason: str) -> None:
        event(log, "service_give_up", logging.CRITICAL, reason=reason)
        self.exit_code = EXIT_GAVE_UP
        self.stop_requested.set()

    def request_health(self, reason: ReportReason = ReportReason.SIGNAL) -> None:
        if self.health_ref is not None:
            try:
                self.health_ref.tell(HealthRequest(reason))
            except Exception:  # noqa: BLE001 - health actor restarting: the next signal will do
                pass

    def shutdown(self) -> None:
        """Feeds stop first, buffers flush, health last (reverse start order)."""
        if self.root is None:
            return
        event(log, "service_stopping", exit_code=self.exit_code)
        self.notifier.stopping()
        try:
            self.root.stop(block=True, timeout=self.config.service.shutdown_timeout_s * 3)
        except Exception:  # noqa: BLE001 - over time: exit anyway, abandoned threads are daemons
            event(log, "shutdown_timed_out", logging.ERROR, exc_info=True)
        self.root = None
        if self.http is not None:
            self.http.stop()
        event(log, "service_stopped", exit_code=self.exit_code)


def _stacks_to_log() -> None:
    """On a fatal signal (systemd's watchdog aborts) faulthandler writes every thread's stack to the log."""
    faulthandler.enable(file=logs.stdout_stream(), all_threads=True)


def dump_thread_stacks() -> None:
    """SIGUSR2: one `thread_stack` log line per thread. Taken on the main thread with the GIL held —
    faulthandler's own all-thread dump reads running threads' frames unlocked and can crash the process."""
    frames = sys._current_frames()
    for thread in threading.enumerate():
        # enumerate() lists started threads only, so each has an ident; one started since has no frame.
        if thread.ident is not None and (frame := frames.get(thread.ident)) is not None:
            event(log, "thread_stack", thread=thread.name, daemon=thread.daemon,
                  stack="".join(traceback.format_stack(frame)))


def run(config: Config, duration_s: float | None = None, run_flags: RunFlags = RunFlags()) -> int:
    """`marketfeed run`: serve until SIGTERM/SIGINT, the root supervisor gives up, or duration_s passes.
    Exit 2 (a config error) when the log file cannot be opened."""
    config = run_flags.over(config)
    try:
        instance = instance_of(config, socket.gethostname())
        sharded(config, instance.shard)
    except InstanceError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    os.umask(int(config.service.umask, 8))  # before the first file is written: the log
    try:
        logs.setup(config.service.log_level, config.service.log_file, config.service.log_format)
    except logs.LogFileError as exc:
        print(f"config error: service.log_file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _stacks_to_log()
    service = Service(config, Notifier.from_env(), run_flags, instance)
    pid_file = Path(config.service.pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")

    signal.signal(signal.SIGTERM, lambda *_: service.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: service.stop_requested.set())
    signal.signal(signal.SIGUSR1, lambda *_: service.request_health(ReportReason.SIGNAL))
    signal.signal(QUERY_SIGNAL, lambda *_: service.request_health(ReportReason.QUERY))
    signal.signal(signal.SIGHUP, lambda *_: service.reload_requested.set())
    stacks_requested = threading.Event()
    signal.signal(signal.SIGUSR2, lambda *_: stacks_requested.set())
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        service.start()
        gc.freeze()  # what start-up built lives as long as the process: no collection needs to walk it again
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not service.stop_requested.wait(
                1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if stacks_requested.is_set():
                stacks_requested.clear()
                dump_thread_stacks()
            if service.reload_requested.is_set():
                service.reload_requested.clear()
                service.reload()
                _stacks_to_log()  # the log file may have been reopened
        service.shutdown()
    finally:
        if pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    return service.exit_code
