"""OTP's supervisor_SUITE, ported: each test keeps the name of the OTP case it follows.

Children are tiny `Supervised` actors that write what happens to them into a shared journal;
a probe actor stands in for the supervisor's parent and receives its exit report.
"""
from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
from dataclasses import dataclass

import pykka
import pytest
from prometheus_client import REGISTRY

from marketfeed.supervision import supervisor as sup_mod
from marketfeed.supervision.supervisor import (
    ABNORMAL,
    NORMAL,
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    REST_FOR_ONE,
    SHUTDOWN,
    ChildContext,
    ChildExited,
    ChildSpec,
    GetChildren,
    GetStatus,
    InvalidChildSpec,
    Supervised,
    Supervisor,
    check_child_specs,
    leaked_thread_count,
    start_child,
)
from marketfeed.telemetry.report import ChildStatus, SupervisorStatus
from tests.support.polling import poll


# --- messages a test worker receives
@dataclass(frozen=True)
class Die:
    pass


@dataclass(frozen=True)
class Exit:
    reason: str


@dataclass(frozen=True)
class Hang:
    release: threading.Event  # a wait nothing but the test can end: the thread leaks until then


@dataclass(frozen=True)
class BlockInRecv:
    pass


class Worker(Supervised):
    """Journals its start and orderly stop; dies, exits or hangs on command."""

    def __init__(self, ctx: ChildContext, journal: list, fail_start: bool):
        super().__init__(ctx)
        self.child_id, self.journal, self.fail_start = ctx.child_id, journal, fail_start
        self.sock, self.peer = socket.socketpair()

    def started(self) -> None:
        if self.fail_start:
            self.journal.append(("start_failed", self.child_id, self.actor_urn))
            raise RuntimeError("refused to start")
        self.journal.append(("started", self.child_id, self.actor_urn))

    def stopping(self) -> None:
        self.journal.append(("stopped", self.child_id, self.actor_urn))

    def interrupt(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)

    def handle(self, message: object) -> object:
        match message:
            case Die():
                raise RuntimeError("died")
            case Exit(reason):
                self.exit(reason)
            case Hang(release):
                release.wait()
            case BlockInRecv():
                self.sock.recv(1)
            case _:
                return super().handle(message)
        return None


class Parent(pykka.ThreadingActor):
    """Stands in for a supervisor's parent: collects the exit reports it is sent."""

    use_daemon_thread = True

    def __init__(self, inbox: queue.Queue):
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: object) -> None:
        self.inbox.put(message)


def worker(journal: list, fails=lambda attempt: False):
    """A start function; `fails(n)` decides whether the n-th start of this child fails."""
    attempts = itertools.count(1)
    return lambda ctx: Worker.start(ctx, journal, fails(next(attempts)))




class Tree:
    """Starts supervisors under a probe parent, and stops whatever is left at the end of a test."""

    def __init__(self) -> None:
        self.exits: queue.Queue = queue.Queue()
        self.parent = Parent.start(self.exits)
        self.refs: list[pykka.ActorRef] = []

    def start(self, specs, strategy=ONE_FOR_ONE, **options) -> pykka.ActorRef:
        options = {"max_restarts": 3, "within_s": 3600, **options}
        spec = ChildSpec("sup", lambda ctx: Supervisor.start(ctx, "sup", specs, strategy, **options), supervisor=True)
        ref, _ = start_child(spec, self.parent)
        self.refs.append(ref)
        return ref

    def exit_report(self, timeout: float = 10.0) -> ChildExited:
        return self.exits.get(timeout=timeout)

    def close(self) -> None:
        for ref in self.refs:
            ref.stop(block=True, timeout=10)
        self.parent.stop()


@pytest.fixture
def tree():
    t = Tree()
    yield t
    t.close()


def children(sup) -> dict[str, pykka.ActorRef]:
    return {child_id: ref for child_id, ref, _ in sup.ask(GetChildren(), timeout=5)}


def status(sup) -> SupervisorStatus:
    return sup.ask(GetStatus(), timeout=5)


def child_state(sup, child_id: str) -> ChildStatus:
    return status(sup)["children"][child_id]


def terminate(sup, child_id: str, how: str) -> pykka.ActorRef:
    """OTP's terminate/4: end a child with reason normal, shutdown or abnormal; wait until it is gone."""
    ref = children(sup)[child_id]
    ref.tell(Die() if how == ABNORMAL else Exit(how))
    poll(lambda: not ref.is_alive(), what=f"{child_id} gone")
    return ref


def restarted(sup, child_id: str, old: pykka.ActorRef) -> pykka.ActorRef:
    def new_ref():
        ref = children(sup).get(child_id) if sup.is_alive() else None
        return ref if ref is not None and ref.actor_urn != old.actor_urn else None
    return poll(new_ref, what=f"{child_id} restarted")


def events(journal: list, kind: str) -> list[str]:
    return [child_id for what, child_id, _ in journal if what == kind]


def assert_gave_up(tree: Tree, sup) -> None:
    report = tree.exit_report()
    assert (report.child_id, report.reason) == ("sup", ABNORMAL)
    assert "gave up" in report.error
    poll(lambda: not sup.is_alive(), what="supervisor stopped")


# --- restart types × exit reasons (OTP: permanent_normal … temporary_abnormal)
RESTARTED = {
    ("permanent", NORMAL): True, ("permanent", SHUTDOWN): True, ("permanent", ABNORMAL): True,
    ("transient", NORMAL): False, ("transient", SHUTDOWN): False, ("transient", ABNORMAL): True,
    ("temporary", NORMAL): False, ("temporary", SHUTDOWN): False, ("temporary", ABNORMAL): False,
}


@pytest.mark.parametrize(("restart", "how"), list(RESTARTED), ids=[f"{r}_{h}" for r, h in RESTARTED])
def test_restart_matrix(tree, restart, how):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal), restart=restart)])
    old = terminate(sup, "child1", how)
    if RESTARTED[restart, how]:
        restarted(sup, "child1", old)
        assert child_state(sup, "child1")["restarts"] == 1
    elif restart == "transient":  # not restarted, but its spec is kept: [{child1, undefined, …}]
        poll(lambda: child_state(sup, "child1")["state"] == "stopped", what="child1 stopped")
        assert children(sup) == {}
    else:  # a temporary child's spec is forgotten: []
        poll(lambda: "child1" not in status(sup)["children"], what="child1 forgotten")
        assert children(sup) == {}
    assert sup.is_alive() and tree.exits.empty()


@pytest.mark.parametrize("strategy", [ONE_FOR_ALL, REST_FOR_ONE])
def test_temporary_bystander(tree, strategy):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal), shutdown_timeout_s=0.1),
                      ChildSpec("child2", worker(journal), restart="temporary", shutdown_timeout_s=0.1)],
                     strategy, max_restarts=2, within_s=300)
    old = terminate(sup, "child1", NORMAL)
    restarted(sup, "child1", old)
    assert list(children(sup)) == ["child1"]  # child2 went down with child1 and was not restarted
    assert events(journal, "started") == ["child1", "child2", "child1"]
    assert sup.is_alive() and status(sup)["children"].keys() == {"child1"}


def test_multiple_restarts(tree):
    """Restarts spaced out stay under the limit; the window slides (a fixed bucket would not give up at R4)."""
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal))], max_restarts=2, within_s=1.0)

    def restart_at(offset: float, t0: float) -> None:
        while time.monotonic() < t0 + offset:  # the point of this test is the clock itself
            time.sleep(0.005)
        restarted(sup, "child1", terminate(sup, "child1", ABNORMAL))

    t0 = time.monotonic()
    restart_at(0.0, t0)  # R1
    restart_at(0.6, t0)  # R2
    restart_at(1.2, t0)  # R3: R1 has left the window, two restarts within 1 s
    assert sup.is_alive() and status(sup)["restarts_in_window"] == 2
    terminate(sup, "child1", ABNORMAL)  # R4 at ~1.2 s: R2, R3, R4 all within 1 s → give up
    assert_gave_up(tree, sup)


def test_one_for_one(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal)), ChildSpec("child2", worker(journal))], max_restarts=2)
    child2 = children(sup)["child2"]
    restarted(sup, "child1", terminate(sup, "child1", ABNORMAL))
    assert children(sup)["child2"].actor_urn == child2.actor_urn  # the sibling was left alone
    assert events(journal, "stopped") == []
    # The restart frequency: a third restart within the period is one too many.
    restarted(sup, "child2", terminate(sup, "child2", ABNORMAL))
    terminate(sup, "child1", ABNORMAL)
    assert_gave_up(tree, sup)
    assert sorted(events(journal, "stopped")) == ["child2"]  # child1 had crashed; child2 was stopped


def test_one_for_one_escalation(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal, fails=lambda n: n > 1)),
                      ChildSpec("child2", worker(journal))], max_restarts=4, min_backoff_s=0.001, max_backoff_s=0.01)
    terminate(sup, "child1", ABNORMAL)
    assert_gave_up(tree, sup)  # every restart of child1 fails; the fifth failure is over the limit
    assert events(journal, "start_failed") == ["child1"] * 4
    assert events(journal, "stopped") == ["child2"]


def test_one_for_all(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal)), ChildSpec("child2", worker(journal))],
                     ONE_FOR_ALL, max_restarts=2)
    before = children(sup)
    restarted(sup, "child2", restarted(sup, "child1", terminate(sup, "child1", ABNORMAL)))
    after = children(sup)
    assert {r.actor_urn for r in before.values()}.isdisjoint(r.actor_urn for r in after.values())
    assert events(journal, "stopped") == ["child2"]
    assert events(journal, "started") == ["child1", "child2", "child1", "child2"]
    restarted(sup, "child1", terminate(sup, "child1", ABNORMAL))
    terminate(sup, "child1", ABNORMAL)
    assert_gave_up(tree, sup)


def test_rest_for_one(tree):
    journal: list = []
    sup = tree.start([ChildSpec(f"child{i}", worker(journal)) for i in (1, 2, 3)], REST_FOR_ONE, max_restarts=2)
    child1 = children(sup)["child1"]
    old3 = children(sup)["child3"]
    restarted(sup, "child2", terminate(sup, "child2", ABNORMAL))
    restarted(sup, "child3", old3)
    assert children(sup)["child1"].actor_urn == child1.actor_urn
    assert events(journal, "stopped") == ["child3"]
    restarted(sup, "child3", terminate(sup, "child3", ABNORMAL))
    terminate(sup, "child2", ABNORMAL)
    assert_gave_up(tree, sup)


def test_one_for_all_other_child_fails_restart(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal)),
                      ChildSpec("child2", worker(journal, fails=lambda n: n == 2))], ONE_FOR_ALL, max_restarts=3)
    old1 = terminate(sup, "child1", ABNORMAL)
    poll(lambda: len(events(journal, "started")) == 5, what="second round of restarts")
    # child1 came back, child2 failed to: the restarted child1 is terminated and both start again.
    assert [(what, child) for what, child, _ in journal] == [
        ("started", "child1"), ("started", "child2"),  # initial start
        ("stopped", "child2"),  # child1 crashed: its sibling goes down
        ("started", "child1"), ("start_failed", "child2"),  # first try
        ("stopped", "child1"),  # the child1 just restarted is terminated
        ("started", "child1"), ("started", "child2"),  # try again
    ]
    restarted(sup, "child1", old1)
    assert set(children(sup)) == {"child1", "child2"} and status(sup)["gave_up"] is False


def test_rest_for_one_other_child_fails_restart(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal)),
                      ChildSpec("child2", worker(journal, fails=lambda n: n == 2))], REST_FOR_ONE, max_restarts=3)
    terminate(sup, "child1", ABNORMAL)
    poll(lambda: set(children(sup)) == {"child1", "child2"} and len(events(journal, "started")) == 4,
         what="child2 restarted")
    # Only child2 is tried again; the child1 that came back is not restarted a second time.
    assert [(what, child) for what, child, _ in journal] == [
        ("started", "child1"), ("started", "child2"),
        ("stopped", "child2"),
        ("started", "child1"), ("start_failed", "child2"),
        ("started", "child2"),
    ]


def test_order_of_children(tree):
    journal: list = []
    ids = ["ch7", "ch3", "ch10", "ch2", "ch5"]  # not sorted alphabetically on purpose
    sup = tree.start([ChildSpec(i, worker(journal)) for i in ids], REST_FOR_ONE, max_restarts=2)
    assert events(journal, "started") == ids
    assert list(children(sup)) == ids
    restarted(sup, "ch5", restarted(sup, "ch10", terminate(sup, "ch10", ABNORMAL)))
    assert events(journal, "stopped") == ["ch5", "ch2"]  # the rest, in reverse start order
    assert events(journal, "started")[len(ids):] == ["ch10", "ch2", "ch5"]  # restarted in start order
    journal.clear()
    sup.stop(block=True, timeout=10)
    assert events(journal, "stopped") == list(reversed(ids))


def test_sup_stop_timeout(tree):
    """A child stuck in a handler is abandoned at its shutdown timeout; the shutdown does not hang."""
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal), shutdown_timeout_s=1.0),
                      ChildSpec("child2", worker(journal), shutdown_timeout_s=0.2)])
    stuck, release = children(sup)["child2"], threading.Event()
    leaked_before = leaked_thread_count()
    stuck.tell(Hang(release))
    began = time.monotonic()
    sup.stop(block=True, timeout=10)
    assert time.monotonic() - began < 5.0  # bounded by the timeouts, not by the stuck handler
    assert events(journal, "stopped") == ["child1"]  # child2 never got to stop in order
    assert not stuck.is_alive()
    assert leaked_thread_count() == leaked_before + 1  # an Event.wait cannot be interrupted: leaked
    release.set()
    poll(lambda: leaked_thread_count() == leaked_before, what="leaked thread gone once released")


def test_hanging_restart_loop(tree):
    """A child that fails every restart still lets its supervisor shut down."""
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal, fails=lambda n: n > 1))],
                     max_restarts=100, within_s=10, min_backoff_s=0.01, max_backoff_s=0.05)
    terminate(sup, "child1", ABNORMAL)
    poll(lambda: len(events(journal, "start_failed")) >= 3, what="restart loop")
    assert child_state(sup, "child1")["state"] == "restarting"
    assert "refused to start" in child_state(sup, "child1")["last_failure"]
    sup.stop(block=True, timeout=5)
    assert not sup.is_alive() and tree.exits.empty()  # stopped on request, not a failure


def test_unresponsive_child_is_replaced_and_its_blocked_recv_woken(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal))], liveness_interval_s=0.05, liveness_timeout_s=0.2)
    leaked_before = leaked_thread_count()
    old = children(sup)["child1"]
    old.tell(BlockInRecv())
    restarted(sup, "child1", old)
    assert child_state(sup, "child1")["last_failure"] == "unresponsive for 0.2s"
    assert not old.is_alive()
    # socket.shutdown woke the recv, so the old thread ended instead of leaking.
    poll(lambda: leaked_thread_count() == leaked_before, what="old thread ended")


def test_unresponsive_child_that_cannot_be_woken_is_counted_as_leaked(tree):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal))], liveness_interval_s=0.05, liveness_timeout_s=0.2)
    leaked_before = leaked_thread_count()
    old, release = children(sup)["child1"], threading.Event()
    old.tell(Hang(release))
    restarted(sup, "child1", old)
    assert leaked_thread_count() == leaked_before + 1
    assert REGISTRY.get_sample_value("marketfeed_leaked_threads") == leaked_before + 1
    release.set()
    poll(lambda: leaked_thread_count() == leaked_before, what="released thread ended")


def test_backoff_grows_between_restarts_and_resets_once_stable(tree, caplog):
    journal: list = []
    sup = tree.start([ChildSpec("child1", worker(journal))], max_restarts=10, min_backoff_s=0.05,
                     max_backoff_s=1.0, reset_after_s=0.3)
    caplog.set_level("INFO", logger="marketfeed.supervisor")
    for _ in range(3):
        restarted(sup, "child1", terminate(sup, "child1", ABNORMAL))
    stable_since = time.monotonic()
    poll(lambda: time.monotonic() - stable_since > 0.35, what="child stable")  # waiting for the clock itself
    restarted(sup, "child1", terminate(sup, "child1", ABNORMAL))
    delays = [r.fields["delay_s"] for r in caplog.records if r.getMessage() == "child_restart_scheduled"]
    # 0.05, 0.1, 0.2 with ±20% jitter, then back to 0.05 after a stable spell.
    bounds = [(0.04, 0.06), (0.08, 0.12), (0.16, 0.24), (0.04, 0.06)]
    assert len(delays) == 4 and all(lo <= d <= hi for d, (lo, hi) in zip(delays, bounds, strict=True)), delays


def test_status_and_metrics_show_restarts_and_give_ups(tree):
    journal: list = []

    def restarts() -> float:  # a feed's restarts under its configured name, not its child id feed-<name>
        labels = {"supervisor": "sup", "actor": "metered"}
        return REGISTRY.get_sample_value("marketfeed_actor_restarts_total", labels) or 0.0

    def giveups() -> float:
        return REGISTRY.get_sample_value("marketfeed_supervisor_giveups_total") or 0.0

    restarts_before, giveups_before = restarts(), giveups()
    sup = tree.start([ChildSpec("feed-metered", worker(journal))], max_restarts=1)
    restarted(sup, "feed-metered", terminate(sup, "feed-metered", ABNORMAL))
    assert child_state(sup, "feed-metered") == {"state": "running", "restarts": 1,
                                                "last_failure": "RuntimeError: died"}
    assert restarts() == restarts_before + 1
    terminate(sup, "feed-metered", ABNORMAL)
    assert_gave_up(tree, sup)
    assert giveups() == giveups_before + 1


def test_root_give_up_calls_on_give_up_after_stopping_its_children():
    journal: list = []
    reasons: queue.Queue = queue.Queue()
    spec = ChildSpec("root", lambda ctx: Supervisor.start(ctx, "root", [ChildSpec("child1", worker(journal))],
                                                          max_restarts=0, within_s=1, on_give_up=reasons.put))
    root, _ = start_child(spec, None)
    try:
        terminate(root, "child1", ABNORMAL)
        assert "more than 0 restarts" in reasons.get(timeout=10)
        assert status(root)["children"]["child1"]["state"] == "stopped" and children(root) == {}
    finally:
        root.stop(block=True, timeout=10)


def test_a_supervisor_whose_child_fails_to_start_fails_to_start(tree):
    journal: list = []
    with pytest.raises(sup_mod.StartFailed, match="refused to start"):
        tree.start([ChildSpec("child1", worker(journal)), ChildSpec("child2", worker(journal, fails=lambda n: True))])
    assert events(journal, "stopped") == ["child1"]  # what had started is stopped again


def test_child_specs():
    start = worker([])
    with pytest.raises(InvalidChildSpec, match=r"child 'c': invalid restart type 'prmanent'"):
        ChildSpec("c", start, restart="prmanent")
    with pytest.raises(InvalidChildSpec, match=r"child 'c': invalid shutdown_timeout_s -10"):
        ChildSpec("c", start, shutdown_timeout_s=-10)
    with pytest.raises(InvalidChildSpec, match=r"invalid shutdown_timeout_s inf"):
        ChildSpec("c", start, shutdown_timeout_s=float("inf"))  # never waited for forever
    with pytest.raises(InvalidChildSpec, match=r"invalid start_timeout_s None"):
        ChildSpec("c", start, start_timeout_s=None)  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(InvalidChildSpec, match=r"start must be callable"):
        ChildSpec("c", "mfa")  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(InvalidChildSpec, match=r"non-empty string"):
        ChildSpec("", start)
    with pytest.raises(InvalidChildSpec, match=r"duplicate child id 'c'"):
        check_child_specs([ChildSpec("c", start), ChildSpec("c", start, restart="temporary")])
    with pytest.raises(InvalidChildSpec, match=r"duplicate child id 'c'"):
        Supervisor(None, "s", [ChildSpec("c", start), ChildSpec("c", start)])
    with pytest.raises(ValueError, match=r"strategy must be one of"):
        Supervisor(None, "s", [], strategy="none_for_one")
    with pytest.raises(ValueError, match=r"max_restarts >= 0"):
        Supervisor(None, "s", [], max_restarts=-1)
    with pytest.raises(ValueError, match=r"within_s > 0"):
        Supervisor(None, "s", [], within_s=0)
    check_child_specs([ChildSpec("a", start), ChildSpec("b", start, restart="transient", shutdown_timeout_s=0)])
