"""An OTP-style supervisor on pykka.

Children are pykka actors built on `Supervised`, which reports every exit to the parent: a
handler that raises (abnormal), or the child's own `exit(reason)`. The supervisor restarts
according to the child's restart type and its strategy, with exponential backoff between
restarts and a restart-intensity limit; over the limit it stops its children and fails to its
own parent, and the root calls `on_give_up` so the process can exit non-zero.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import pykka

from supervision.backoff import Backoff, RestartIntensity
from supervision.scheduler import scheduler
from telemetry import metrics
from telemetry.logs import event

log = logging.getLogger("marketfeed.supervisor")

PERMANENT, TRANSIENT, TEMPORARY = "permanent", "transient", "temporary"
RESTART_TYPES = (PERMANENT, TRANSIENT, TEMPORARY)
NORMAL, SHUTDOWN, ABNORMAL = "normal", "shutdown", "abnormal"
ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = "one_for_one", "one_for_all", "rest_for_one"
STRATEGIES = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)

# Actors that may be hung: the supervisor interrupts them from its own thread (see Supervised.interrupt).
_live_actors: weakref.WeakValueDictionary[str, Supervised] = weakref.WeakValueDictionary()
leaked_threads: set[threading.Thread] = set()


@dataclass(frozen=True)
class ChildContext:
    """What a starting child knows: whom to report to, and under which id."""

    parent: pykka.ActorRef | None
    child_id: str


@dataclass(frozen=True)
class ChildSpec:
    id: str
    start: Callable[[ChildContext], pykka.ActorRef]
    restart: str = PERMANENT
    shutdown_timeout_s: float = 5.0
    supervisor: bool = False  # a nested supervisor: its status is part of the tree

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise ValueError(f"child spec id must be a non-empty string, got {self.id!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"child {self.id!r}: restart must be one of {RESTART_TYPES}, got {self.restart!r}")
        if not (self.shutdown_timeout_s >= 0):
            raise ValueError(f"child {self.id!r}: shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s!r}")
        if not callable(self.start):
            raise ValueError(f"child {self.id!r}: start must be callable")


# Messages a supervisor receives.
@dataclass(frozen=True)
class ChildExited:
    child_id: str
    ref: pykka.ActorRef
    reason: str
    error: str = ""


@dataclass(frozen=True)
class RestartDue:
    child_ids: tuple[str, ...]


@dataclass(frozen=True)
class LivenessTick:
    pass


@dataclass(frozen=True)
class GetChildren:
    """Reply: [(child_id, ref, is_supervisor)] of the running children."""


# Messages every supervised actor answers.
@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class GetStatus:
    """Reply: the actor's status dict, with its `kind`."""


class Supervised(pykka.ThreadingActor):
    """Base of every actor in the tree: reports its exits to its parent."""

    use_daemon_thread = True  # a hung actor must not keep the process alive
    kind = "actor"

    def __init__(self, ctx: ChildContext | None):
        super().__init__()
        self.ctx = ctx
        self._exit: tuple[str, str] | None = None
        self.thread: threading.Thread | None = None
        _live_actors[self.actor_urn] = self

    # --- hooks for subclasses
    def started(self) -> None:
        """Setup after the actor thread starts; raising here is an abnormal exit."""

    def stopping(self) -> None:
        """Cleanup on an orderly stop (not after a crash)."""

    def status(self) -> dict:
        return {}

    def handle(self, message: object) -> object:
        raise TypeError(f"{type(self).__name__} got an unknown message {message!r}")

    def interrupt(self) -> None:
        """Called from another thread when this actor is hung: unblock whatever it waits on."""

    # --- lifecycle
    def exit(self, reason: str = NORMAL, error: str = "") -> None:
        """Stop by choice: `normal` and `shutdown` are clean exits, `abnormal` a failure."""
        self._exit = (reason, error)
        self.stop()

    def on_start(self) -> None:
        self.thread = threading.current_thread()
        try:
            self.started()
        except Exception as exc:
            self._report(ABNORMAL, f"start failed: {exc!r}")
            raise

    def on_stop(self) -> None:
        try:
            self.stopping()
        finally:
            if self._exit is not None:
                self._report(*self._exit)

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        try:
            self.stopping_after_crash()
        finally:
            self._report(ABNORMAL, f"{exception_type.__name__}: {exception_value}")

    def stopping_after_crash(self) -> None:
        """Release resources (sockets, threads) after a crash; no flushing, the state is suspect."""

    def _report(self, reason: str, error: str) -> None:
        if self.ctx is not None and self.ctx.parent is not None:
            try:
                self.ctx.parent.tell(ChildExited(self.ctx.child_id, self.actor_ref, reason, error))
            except pykka.ActorDeadError:
                pass  # the parent is gone already: we are being shut down with it

    def on_receive(self, message: object) -> object:
        if isinstance(message, Ping):
            return "pong"
        if isinstance(message, GetStatus):
            return {"kind": self.kind, **self.status()}
        return self.handle(message)


@dataclass
class _Child:
    spec: ChildSpec
    backoff: Backoff
    ref: pykka.ActorRef | None = None
    state: str = "stopped"  # running | restarting | stopped
    restarts: int = 0
    last_failure: str = ""
    started_at: float = 0.0
    ping: pykka.Future | None = None
    ping_sent_at: float = 0.0
    restart_timer: object = field(default=None, repr=False)


class Supervisor(Supervised):
    kind = "supervisor"

    def __init__(
        self,
        ctx: ChildContext | None,
        name: str,
        specs: list[ChildSpec],
        strategy: str = ONE_FOR_ONE,
        max_restarts: int = 3,
        within_s: float = 5.0,
        min_backoff_s: float = 0.0,
        max_backoff_s: float = 0.0,
        reset_after_s: float = 60.0,
        liveness_interval_s: float = 0.0,
        liveness_timeout_s: float = 5.0,
        on_give_up: Callable[[str], None] | None = None,
    ):
        super().__init__(ctx)
        if strategy not in STRATEGIES:
            raise ValueError(f"supervisor {name!r}: strategy must be one of {STRATEGIES}, got {strategy!r}")
        ids = [s.id for s in specs]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            raise ValueError(f"supervisor {name!r}: duplicate child ids {dups}")
        self.name, self.strategy = name, strategy
        self.reset_after_s = reset_after_s
        self.liveness_interval_s, self.liveness_timeout_s = liveness_interval_s, liveness_timeout_s
        self.on_give_up = on_give_up
        self.intensity = RestartIntensity(max_restarts, within_s)
        self._children: dict[str, _Child] = {
            s.id: _Child(s, Backoff(min_backoff_s, max(min_backoff_s, max_backoff_s))) for s in specs
        }
        self._liveness_timer = None
        self.gave_up = False

    # --- lifecycle
    def started(self) -> None:
        for child in self._children.values():
            try:
                self._start(child)
            except Exception:
                self._stop_children(list(self._children.values()))
                raise
        if self.liveness_interval_s > 0:
            self._liveness_timer = scheduler().every(self.liveness_interval_s, self.actor_ref, LivenessTick())

    def stopping(self) -> None:
        self._stop_all()

    def stopping_after_crash(self) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        if self._liveness_timer is not None:
            self._liveness_timer.cancel()
        for child in self._children.values():
            if child.restart_timer is not None:
                child.restart_timer.cancel()
        self._stop_children(list(self._children.values()))

    # --- messages
    def handle(self, message: object) -> object:
        match message:
            case ChildExited():
                self._on_child_exited(message)
            case RestartDue(child_ids):
                self._restart(child_ids)
            case LivenessTick():
                self._check_liveness()
            case GetChildren():
                return [(c.spec.id, c.ref, c.spec.supervisor) for c in self._children.values() if c.state == "running"]
            case _:
                return super().handle(message)
        return None

    def status(self) -> dict:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "restarts_in_window": len(self.intensity),
            "children": {
                c.spec.id: {"state": c.state, "restarts": c.restarts, "last_failure": c.last_failure}
                for c in self._children.values()
            },
        }

    # --- restarts
    def _on_child_exited(self, msg: ChildExited) -> None:
        child = self._children.get(msg.child_id)
        if child is None or child.ref is None or child.ref.actor_urn != msg.ref.actor_urn or child.state != "running":
            return  # an exit we caused, or of a generation already replaced
        child.ref, child.ping = None, None
        restart = child.spec.restart == PERMANENT or (child.spec.restart == TRANSIENT and msg.reason == ABNORMAL)
        event(
            log,
            "child_exited",
            logging.WARNING if msg.reason == ABNORMAL else logging.INFO,
            supervisor=self.name,
            child=msg.child_id,
            reason=msg.reason,
            error=msg.error,
            restart=restart,
        )
        if msg.reason == ABNORMAL:
            child.last_failure = msg.error
        if not restart:
            child.state = "stopped"
            if child.spec.restart == TEMPORARY:
                del self._children[child.spec.id]
            return
        self._failed(child)

    def _failed(self, child: _Child) -> None:
        """A child must be restarted: apply the strategy, the intensity limit and the backoff."""
        now = time.monotonic()
        if not self.intensity.record(now):
            self._give_up(f"more than {self.intensity.max_restarts} restarts within {self.intensity.within_s}s")
            return
        order = list(self._children.values())
        if self.strategy == ONE_FOR_ONE:
            group = [child]
        elif self.strategy == ONE_FOR_ALL:
            group = order
        else:
            group = order[order.index(child):]
        others = [c for c in group if c is not child and c.state == "running"]
        self._stop_children(others)
        for c in others:
            if c.spec.restart == TEMPORARY:
                del self._children[c.spec.id]  # OTP: a temporary sibling is not restarted
        group = [c for c in group if c is child or c.state == "restarting" or (c in others and c.spec.id in self._children)]
        if child.started_at and now - child.started_at >= self.reset_after_s:
            child.backoff.reset()
        delay = child.backoff.next_delay()
        for c in group:
            c.state = "restarting"
        ids = tuple(c.spec.id for c in group)
        event(log, "child_restart_scheduled", supervisor=self.name, children=list(ids), delay_s=round(delay, 3))
        if delay <= 0:
            self.actor_ref.tell(RestartDue(ids))
        else:
            child.restart_timer = scheduler().after(delay, self.actor_ref, RestartDue(ids))

    def _restart(self, child_ids: tuple[str, ...]) -> None:
        for i, child_id in enumerate(child_ids):
            child = self._children.get(child_id)
            if child is None or child.state != "restarting":
                continue
            try:
                self._start(child)
            except Exception as exc:
                child.last_failure = f"restart failed: {exc!r}"
                event(log, "child_restart_failed", logging.WARNING, supervisor=self.name, child=child_id, error=repr(exc))
                if not self.intensity.record(time.monotonic()):
                    self._give_up(f"restart of {child_id!r} keeps failing")
                    return
                # Retry later from this child on, without blocking the inbox meanwhile.
                child.restart_timer = scheduler().after(child.backoff.next_delay(), self.actor_ref, RestartDue(child_ids[i:]))
                return
            child.restarts += 1
            metrics.ACTOR_RESTARTS.labels(child_id).inc()
            event(log, "child_restarted", supervisor=self.name, child=child_id, restarts=child.restarts)

    def _start(self, child: _Child) -> None:
        child.ref = child.spec.start(ChildContext(self.actor_ref, child.spec.id))
        child.state, child.started_at, child.ping = "running", time.monotonic(), None

    def _give_up(self, reason: str) -> None:
        self.gave_up = True
        metrics.SUPERVISOR_GIVEUPS.inc()
        event(log, "supervisor_give_up", logging.ERROR, supervisor=self.name, reason=reason)
        if self.on_give_up is not None:
            self.on_give_up(reason)  # the root: the process shuts down in order and exits 1
        else:
            self.exit(ABNORMAL, f"supervisor {self.name} gave up: {reason}")

    # --- stopping
    def _stop_children(self, children: list[_Child]) -> None:
        """Stop in reverse start order, each within its shutdown timeout; a child over it is abandoned."""
        for child in reversed(children):
            ref, child.ref, child.state, child.ping = child.ref, None, "stopped", None
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_timeout_s)
            except pykka.Timeout:
                self._abandon(child.spec.id, ref)

    def _abandon(self, child_id: str, ref: pykka.ActorRef) -> None:
        actor = _live_actors.get(ref.actor_urn)
        event(log, "child_abandoned", logging.ERROR, supervisor=self.name, child=child_id)
        if actor is not None:
            try:
                actor.interrupt()
            except Exception:  # noqa: BLE001 - best effort on an actor that is already broken
                log.exception("interrupt failed")
            actor.actor_stopped.set()
            if actor.thread is not None and actor.thread.is_alive():
                leaked_threads.add(actor.thread)

    # --- liveness
    def _check_liveness(self) -> None:
        now = time.monotonic()
        for child in list(self._children.values()):
            if child.state != "running" or child.ref is None:
                continue
            if child.ping is not None:
                try:
                    child.ping.get(timeout=0)
                except pykka.Timeout:
                    if now - child.ping_sent_at < self.liveness_timeout_s:
                        continue
                    self._hung(child)
                    continue
                except Exception:  # noqa: BLE001 - a dead actor's exit report is on its way
                    continue
            try:
                child.ping, child.ping_sent_at = child.ref.ask(Ping(), block=False), now
            except pykka.ActorDeadError:
                child.ping = None

    def _hung(self, child: _Child) -> None:
        event(log, "child_unresponsive", logging.ERROR, supervisor=self.name, child=child.spec.id,
              timeout_s=self.liveness_timeout_s)
        ref = child.ref
        child.ref, child.ping = None, None
        child.last_failure = f"unresponsive for {self.liveness_timeout_s}s"
        self._abandon(child.spec.id, ref)
        self._failed(child)


def leaked_thread_count() -> int:
    return sum(1 for t in leaked_threads if t.is_alive())
