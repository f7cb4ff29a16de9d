"""The process shell of `marketfeed run`: builds the tree, owns the signals, decides the exit code.

The main thread only waits; signal handlers hand their signal to an actor and return.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from pathlib import Path

from actors.buffer import BufferActor, SinkDirectory
from actors.feed import FeedActor, FeedMemory
from actors.health import HealthActor, HealthRequest
from config.schema import Config
from storage.schema import TABLES
from supervision.supervisor import ChildContext, ChildSpec, Supervisor
from telemetry import logs
from telemetry.logs import event

log = logging.getLogger("marketfeed.service")

EXIT_OK, EXIT_GAVE_UP = 0, 1


class Service:
    def __init__(self, config: Config):
        self.config = config
        self.started_at = time.monotonic()
        self.sinks = SinkDirectory()
        self.memories: dict[str, FeedMemory] = {f.name: FeedMemory() for f in config.feeds}
        self.root = None
        self.health_ref = None
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
            self.health_ref = HealthActor.start(ctx, self.config, self.started_at)
            return self.health_ref
        return ChildSpec("health", start, shutdown_timeout_s=5.0)

    def _sink_spec(self) -> ChildSpec:
        timeout = self.config.service.shutdown_timeout_s
        buffers = [
            ChildSpec(f"buffer-{table}", lambda ctx, t=table: BufferActor.start(ctx, t, self.config, self.sinks),
                      shutdown_timeout_s=timeout)
            for table in TABLES
        ]
        return ChildSpec("sinks", lambda ctx: Supervisor.start(ctx, "sinks", buffers, **self._supervisor_options()),
                         shutdown_timeout_s=timeout * len(buffers) + 1, supervisor=True)

    def _feed_spec(self) -> ChildSpec:
        feeds = [
            ChildSpec(f"feed-{f.name}",
                      lambda ctx, f=f: FeedActor.start(ctx, f, self.sinks, self.memories[f.name]),
                      shutdown_timeout_s=5.0)
            for f in self.config.feeds
        ]
        return ChildSpec("feeds", lambda ctx: Supervisor.start(ctx, "feeds", feeds, **self._supervisor_options()),
                         shutdown_timeout_s=5.0 * len(feeds) + 1, supervisor=True)

    def start(self) -> None:
        specs = [self._health_spec(), self._sink_spec(), self._feed_spec()]
        self.root = Supervisor.start(None, "root", specs, on_give_up=self._give_up, **self._supervisor_options())
        event(log, "service_started", pid=os.getpid(), feeds=[f.name for f in self.config.feeds],
              config=self.config.source)

    def _give_up(self, reason: str) -> None:
        event(log, "service_give_up", logging.CRITICAL, reason=reason)
        self.exit_code = EXIT_GAVE_UP
        self.stop_requested.set()

    def request_health(self, reason: str = "signal") -> None:
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
        try:
            self.root.stop(block=True, timeout=self.config.service.shutdown_timeout_s * 3)
        except Exception:  # noqa: BLE001 - over time: exit anyway, abandoned threads are daemons
            log.exception("shutdown timed out")
        self.root = None
        event(log, "service_stopped", exit_code=self.exit_code)


def run(config: Config, duration_s: float | None = None) -> int:
    """`marketfeed run`: serve until SIGTERM/SIGINT, the root supervisor gives up, or duration_s passes."""
    logs.setup(config.service.log_level, config.service.log_file)
    faulthandler.enable(file=logs.stdout_stream(), all_threads=True)
    service = Service(config)
    pid_file = Path(config.service.pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")

    signal.signal(signal.SIGTERM, lambda *_: service.stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: service.stop_requested.set())
    signal.signal(signal.SIGUSR1, lambda *_: service.request_health("signal"))
    signal.signal(signal.SIGHUP, lambda *_: logs.reopen())
    faulthandler.register(signal.SIGUSR2, file=logs.stdout_stream(), all_threads=True)
    try:
        service.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not service.stop_requested.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                break
        service.shutdown()
    finally:
        if pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    return service.exit_code
