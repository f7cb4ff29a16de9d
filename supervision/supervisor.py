"""An OTP-style supervisor on pykka.

Children are pykka actors built on `Supervised`. A child is started synchronously, as OTP's
start_link: the supervisor waits until the child's `started()` has run (bounded by the spec's
start timeout), so children come up in spec order and a failed start is known at once. A running
child reports every exit to its parent: a handler that raises (abnormal) or its own
`exit(reason)`. The supervisor restarts according to the child's restart type and its strategy,
with exponential backoff between restarts (always on a timer, so its inbox stays free) and a
restart-intensity limit; over the limit it stops its children and fails to its own parent, and
the root calls `on_give_up` so the process can shut down and exit non-zero.

pykka has no way to kill a thread. A child that overruns its shutdown timeout, or stops answering
the periodic liveness ask, is *abandoned*: interrupted (its sockets shut down), marked stopped so
its loop ends as soon as the stuck call returns, and its threads watched; one still alive is
counted as leaked. Actor threads are daemons, so a leaked one cannot keep the process alive.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pykka
from pykka._envelope import Envelope

from marketfeed.supervision.backoff import Backoff, RestartIntensity
from marketfeed.supervision.scheduler import Timer, scheduler
from marketfeed.telemetry import metrics
from marketfeed.telemetry.logs import event
from marketfeed.telemetry.names import known_name
from marketfeed.telemetry.report import ChildState, SupervisorStatus

log = logging.getLogger("marketfeed.supervisor")

PERMANENT, TRANSIENT, TEMPORARY = "permanent", "transient", "temporary"
RESTART_TYPES = (PERMANENT, TRANSIENT, TEMPORARY)
NORMAL, SHUTDOWN, ABNORMAL = "normal", "shutdown", "abnormal"
ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = "one_for_one", "one_for_all", "rest_for_one"
STRATEGIES = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)


class InvalidChildSpec(ValueError):
    """A child spec (or a set of them) that a supervisor refuses, naming the child and the field."""


class StartFailed(Exception):
    """A child's start function raised, its `started()` raised, or it did not finish in time."""


class ChildContext:
    """What a starting child knows (whom to report to, under which id), and how its supervisor
    learns that the child is up: the child's thread signals here once `started()` has run."""

    def __init__(self, parent: pykka.ActorRef | None, child_id: str):
        self.parent, self.child_id = parent, child_id
        self.actor: Supervised | None = None
        self.error = ""
        self._up = threading.Event()

    def signal_started(self, error: str = "") -> None:
        self.error = error
        self._up.set()

    def wait_started(self, timeout_s: float) -> None:
        if not self._up.wait(timeout_s):
            raise StartFailed(f"{self.child_id!r} did not start within {timeout_s}s")
        if self.error:
            raise StartFailed(f"{self.child_id!r} failed to start: {self.error}")


def _positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and math.isfinite(value)


@dataclass(frozen=True)
class ChildSpec:
    id: str
    start: Callable[[ChildContext], pykka.ActorRef]
    restart: str = PERMANENT
    shutdown_timeout_s: float = 5.0  # over it the child is abandoned, never waited for forever
    start_timeout_s: float = 30.0  # a nested supervisor starts its whole subtree within this
    supervisor: bool = False  # a nested supervisor: its status is part of the tree

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidChildSpec(f"child spec id must be a non-empty string, got {self.id!r}")
        if not callable(self.start):
            raise InvalidChildSpec(f"child {self.id!r}: start must be callable, got {self.start!r}")
        if self.restart not in RESTART_TYPES:
            raise InvalidChildSpec(
                f"child {self.id!r}: invalid restart type {self.restart!r}, expected one of {', '.join(RESTART_TYPES)}")
        for name in ("shutdown_timeout_s", "start_timeout_s"):
            value = getattr(self, name)
            if not _positive_finite(value):
                raise InvalidChildSpec(f"child {self.id!r}: invalid {name} {value!r}, expected a finite number >= 0")


def check_child_specs(specs: Sequence[ChildSpec]) -> None:
    """OTP's check_childspecs: every spec valid (checked at construction) and ids unique."""
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise InvalidChildSpec(f"not a child spec: {spec!r}")
        if spec.id in seen:
            raise InvalidChildSpec(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)


def start_child(spec: ChildSpec, parent: pykka.ActorRef | None) -> tuple[pykka.ActorRef, ChildContext]:
    """Start one child and wait until it is up; StartFailed if it is not (a hung start is abandoned)."""
    ctx = ChildContext(parent, spec.id)
    try:
        ref = spec.start(ctx)
    except Exception as exc:  # any failing start function is a failed start
        raise StartFailed(f"{spec.id!r} failed to start: {type(exc).__name__}: {exc}") from exc
    try:
        ctx.wait_started(spec.start_timeout_s)
    except StartFailed:
        if ref.is_alive():
            abandon(ref, ctx)
        raise
    return ref, ctx


# --- abandoned threads: pykka cannot kill a thread, so we watch the ones we gave up on.
_abandoned: list[threading.Thread] = []
_abandoned_lock = threading.Lock()


def leaked_thread_count() -> int:
    """Threads of abandoned actors that are still alive."""
    with _abandoned_lock:
        _abandoned[:] = [t for t in _abandoned if t.is_alive()]
        return len(_abandoned)


metrics.LEAKED_THREADS.set_function(leaked_thread_count)


def abandon(ref: pykka.ActorRef, ctx: ChildContext | None) -> None:
    """Give up on an actor that will not stop or answer: unblock it, and stop waiting for it."""
    actor = ctx.actor if ctx is not None else None
    if actor is None:
        return
    # Stopped before interrupted: the loop must see it as soon as the stuck call returns. Asks already
    # queued then fail with ActorDeadError. The Ping wakes a loop that had meanwhile gone idle in its inbox
    # (pykka has no public way to put a message past a stopped actor's ref).
    pykka.ActorRegistry.unregister(ref)
    actor.actor_stopped.set()
    actor.actor_inbox.put(Envelope(Ping()))
    try:
        actor.interrupt()
    except Exception:  # best effort on an actor that is already broken
        log.exception("interrupt failed")
    with _abandoned_lock:
        _abandoned.extend(t for t in (actor.thread, *actor.owned_threads()) if t is not None and t.is_alive())


# --- messages a supervisor receives
@dataclass(frozen=True)
class ChildExited:
    child_id: str
    ref: pykka.ActorRef
    reason: str
    error: str = ""


@dataclass(frozen=True)
class RestartDue:
    child_ids: tuple[str, ...]
    restart_round: int  # a restart folded into a later, larger one is ignored when its message arrives


@dataclass(frozen=True)
class LivenessTick:
    pass


@dataclass(frozen=True)
class AddChild:
    """OTP's start_child: start one more child, last in start order. Reply: "" or why it was not added."""

    spec: ChildSpec


@dataclass(frozen=True)
class RemoveChild:
    """OTP's terminate_child + delete_child: stop a child in order and forget its spec. Reply: whether it existed."""

    child_id: str


@dataclass(frozen=True)
class GetChildren:
    """Reply: [(child_id, ref, is_supervisor)] of the running children, in start order."""


# --- messages every supervised actor answers
@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class GetStatus:
    """Reply: the actor's status dict, with its `kind`."""


class Supervised(pykka.ThreadingActor):
    """Base of every actor in the tree: signals its start, reports its exits to its parent."""

    use_daemon_thread = True  # a hung actor must not keep the process alive
    kind = "actor"

    def __init__(self, ctx: ChildContext | None):
        super().__init__()
        self.ctx = ctx
        self._exit: tuple[str, str] | None = None
        self.thread: threading.Thread | None = None
        if ctx is not None:
            ctx.actor = self

    # --- hooks for subclasses
    def started(self) -> None:
        """Setup after the actor thread starts; raising here is a failed start."""

    def stopping(self) -> None:
        """Cleanup on an orderly stop (not after a crash)."""

    def stopping_after_crash(self) -> None:
        """Release resources (sockets, threads) after a crash or failed start; no flushing, the state is suspect."""

    def status(self) -> Mapping[str, object]:
        return {}

    def handle(self, message: object) -> object:
        raise TypeError(f"{type(self).__name__} got an unknown message {message!r}")

    def interrupt(self) -> None:
        """Called from another thread when this actor is abandoned: unblock whatever it waits on
        (socket.shutdown wakes a thread blocked in recv; close alone does not)."""

    def owned_threads(self) -> list[threading.Thread]:
        """Threads besides its own that must end when this actor is abandoned (counted if they leak)."""
        return []

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
            try:
                self.stopping_after_crash()
            finally:
                if self.ctx is not None:
                    self.ctx.signal_started(f"{type(exc).__name__}: {exc}")
            raise  # pykka logs it and stops the actor
        if self.ctx is not None:
            self.ctx.signal_started()

    def on_stop(self) -> None:
        try:
            self.stopping()
        finally:
            if self._exit is not None:
                self._report_exit(*self._exit)

    def on_failure(self, exception_type, exception_value, traceback) -> None:
        try:
            self.stopping_after_crash()
        finally:
            self._report_exit(ABNORMAL, f"{exception_type.__name__}: {exception_value}")

    def _report_exit(self, reason: str, error: str) -> None:
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
    ctx: ChildContext | None = None
    state: ChildState = ChildState.STOPPED
    restarts: int = 0
    last_failure: str = ""
    started_at: float = 0.0
    ping: pykka.Future | None = None
    ping_sent_at: float = 0.0
    restart_round: int = 0
    restart_timer: Timer | None = field(default=None, repr=False)


class Supervisor(Supervised):
    kind = "supervisor"

    def __init__(
        self,
        ctx: ChildContext | None,
        name: str,
        specs: Sequence[ChildSpec],
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
        if liveness_interval_s < 0 or liveness_timeout_s <= 0:
            raise ValueError(f"supervisor {name!r}: liveness needs interval >= 0 and timeout > 0")
        check_child_specs(specs)
        self.name, self.strategy = name, strategy
        self.reset_after_s = reset_after_s
        self.liveness_interval_s, self.liveness_timeout_s = liveness_interval_s, liveness_timeout_s
        self.on_give_up = on_give_up
        self.intensity = RestartIntensity(max_restarts, within_s)
        self._backoff_bounds = (min_backoff_s, max_backoff_s)
        Backoff(*self._backoff_bounds)  # invalid bounds fail here, even with no children yet
        self._children: dict[str, _Child] = {s.id: _Child(s, Backoff(*self._backoff_bounds)) for s in specs}
        self._liveness_timer: Timer | None = None
        self._restart_rounds = 0
        self.gave_up = False

    # --- lifecycle
    def started(self) -> None:
        for child in self._children.values():
            self._start(child)  # StartFailed: on_start stops the ones already started, then we fail
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
            self._cancel_restart(child)
        self._stop_children(list(self._children.values()))

    # --- messages
    def handle(self, message: object) -> object:
        match message:
            case ChildExited():
                self._on_child_exited(message)
            case RestartDue(child_ids, restart_round):
                self._restart(child_ids, restart_round)
            case LivenessTick():
                self._check_liveness()
            case AddChild(spec):
                return self._add(spec)
            case RemoveChild(child_id):
                return self._remove(child_id)
            case GetChildren():
                return [(c.spec.id, c.ref, c.spec.supervisor) for c in self._children.values() if c.ref is not None]
            case _:
                return super().handle(message)
        return None

    def status(self) -> SupervisorStatus:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "restarts_in_window": len(self.intensity),
            "gave_up": self.gave_up,
            "children": {
                c.spec.id: {"state": c.state, "restarts": c.restarts, "last_failure": c.last_failure}
                for c in self._children.values()
            },
        }

    def _add(self, spec: ChildSpec) -> str:
        if spec.id in self._children:
            return f"child {spec.id!r} exists already"
        child = _Child(spec, Backoff(*self._backoff_bounds))
        try:
            self._start(child)
        except StartFailed as exc:
            return str(exc)
        self._children[spec.id] = child
        return ""

    def _remove(self, child_id: str) -> bool:
        child = self._children.pop(child_id, None)
        if child is None:
            return False
        self._cancel_restart(child)
        self._stop_children([child])
        return True

    # --- failures
    def _on_child_exited(self, msg: ChildExited) -> None:
        child = self._children.get(msg.child_id)
        if self.gave_up or child is None or child.ref is None or child.ref.actor_urn != msg.ref.actor_urn:
            return  # an exit we caused, or of an incarnation already replaced
        restart = child.spec.restart == PERMANENT or (child.spec.restart == TRANSIENT and msg.reason == ABNORMAL)
        event(log, "child_exited", logging.WARNING if msg.reason == ABNORMAL else logging.INFO,
              supervisor=self.name, child=known_name(msg.child_id), reason=msg.reason, error=msg.error, restart=restart)
        if msg.reason == ABNORMAL:
            child.last_failure = msg.error
        self._down(child)
        if not restart:
            if child.spec.restart == TEMPORARY:
                del self._children[child.spec.id]  # OTP keeps no spec of a temporary child
            return
        self._failed(child)

    def _down(self, child: _Child) -> None:
        """A running child is gone; if it had been up long enough, its backoff starts over."""
        if time.monotonic() - child.started_at >= self.reset_after_s:
            child.backoff.reset()
        child.ref, child.ctx, child.ping, child.state = None, None, None, ChildState.STOPPED

    def _failed(self, child: _Child) -> None:
        """`child` must be restarted: count it against the intensity, apply the strategy, back off."""
        if not self.intensity.record(time.monotonic()):
            self._give_up(f"more than {self.intensity.max_restarts} restarts within {self.intensity.within_s}s",
                          child.spec.id)
            return
        group = self._group(child)
        # Siblings go down in reverse start order; temporary ones are not restarted (OTP: temporary_bystander).
        self._stop_children([c for c in group if c is not child])
        for c in group:
            if c is not child and c.spec.restart == TEMPORARY:
                del self._children[c.spec.id]
        group = [c for c in group if c.spec.id in self._children]
        delay = child.backoff.next_delay()
        self._restart_rounds += 1
        timer = scheduler().after(delay, self.actor_ref,
                                  RestartDue(tuple(c.spec.id for c in group), self._restart_rounds))
        for c in group:
            self._cancel_restart(c)  # a pending restart of a smaller group is folded into this one
            c.state, c.restart_round, c.restart_timer = ChildState.RESTARTING, self._restart_rounds, timer
        event(log, "child_restart_scheduled", supervisor=self.name, child=known_name(child.spec.id),
              children=[c.spec.id for c in group], delay_s=round(delay, 3))

    def _group(self, child: _Child) -> list[_Child]:
        """The children a failure of `child` takes down with it, in start order."""
        order = list(self._children.values())
        if self.strategy == ONE_FOR_ALL:
            return order
        if self.strategy == REST_FOR_ONE:
            return order[order.index(child):]
        return [child]

    def _restart(self, child_ids: tuple[str, ...], restart_round: int) -> None:
        for child_id in child_ids:  # in start order
            child = self._children.get(child_id)
            if child is None or child.state != ChildState.RESTARTING or child.restart_round != restart_round:
                continue
            child.restart_timer = None
            try:
                self._start(child)
            except StartFailed as exc:
                # OTP's try_again_restart: counts as a restart and the strategy applies again from this
                # child (one_for_all stops the siblings just restarted), later, from a timer.
                child.state, child.last_failure = ChildState.STOPPED, str(exc)
                event(log, "child_restart_failed", logging.WARNING, supervisor=self.name, child=known_name(child_id),
                      error=str(exc))
                self._failed(child)
                return
            child.restarts += 1
            metrics.ACTOR_RESTARTS.labels(self.name, known_name(child_id)).inc()
            event(log, "child_restarted", supervisor=self.name, child=known_name(child_id), restarts=child.restarts)

    def _start(self, child: _Child) -> None:
        child.ref, child.ctx = start_child(child.spec, self.actor_ref)
        child.state, child.started_at, child.ping = ChildState.RUNNING, time.monotonic(), None

    def _cancel_restart(self, child: _Child) -> None:
        if child.restart_timer is not None:
            child.restart_timer.cancel()
            child.restart_timer = None

    def _give_up(self, reason: str, child_id: str) -> None:
        """OTP: over the intensity a supervisor terminates all its children, then itself."""
        self.gave_up = True
        metrics.SUPERVISOR_GIVEUPS.inc()
        event(log, "supervisor_give_up", logging.ERROR, supervisor=self.name, child=known_name(child_id), reason=reason)
        self._stop_all()
        for child in self._children.values():
            child.state = ChildState.STOPPED
        if self.on_give_up is not None:
            self.on_give_up(reason)  # the root: the process shuts down in order and exits 1
        else:
            self.exit(ABNORMAL, f"supervisor {self.name} gave up: {reason}")

    # --- stopping
    def _stop_children(self, children: list[_Child]) -> None:
        """Stop in reverse start order, each within its shutdown timeout; a child over it is abandoned."""
        for child in reversed(children):
            ref, ctx = child.ref, child.ctx
            child.ref, child.ctx, child.ping = None, None, None
            if child.state == ChildState.RUNNING:
                child.state = ChildState.STOPPED
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_timeout_s)
            except pykka.Timeout:
                event(log, "child_abandoned", logging.ERROR, supervisor=self.name, child=known_name(child.spec.id),
                      shutdown_timeout_s=child.spec.shutdown_timeout_s)
                abandon(ref, ctx)

    # --- liveness
    def _check_liveness(self) -> None:
        now = time.monotonic()
        for child in list(self._children.values()):
            if child.ref is None:
                continue
            if child.ping is not None:
                try:
                    child.ping.get(timeout=0)
                except pykka.Timeout:
                    if now - child.ping_sent_at >= self.liveness_timeout_s:
                        self._hung(child, child.ref)
                    continue
                except Exception:  # noqa: BLE001 - a dead actor's exit report is on its way
                    continue
            try:
                child.ping, child.ping_sent_at = child.ref.ask(Ping(), block=False), now
            except pykka.ActorDeadError:
                child.ping = None

    def _hung(self, child: _Child, ref: pykka.ActorRef) -> None:
        event(log, "child_unresponsive", logging.ERROR, supervisor=self.name, child=known_name(child.spec.id),
              timeout_s=self.liveness_timeout_s)
        ctx = child.ctx
        child.last_failure = f"unresponsive for {self.liveness_timeout_s}s"
        self._down(child)
        abandon(ref, ctx)
        if child.spec.restart == TEMPORARY:
            del self._children[child.spec.id]
            return
        self._failed(child)
