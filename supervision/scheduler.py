"""Timers for actors: pykka has none. One daemon thread tells actors their messages when due."""
from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time

import pykka

log = logging.getLogger(__name__)


# A NaN or infinite time in the heap would kill this thread (Condition.wait refuses it) or break the heap's order,
# silently stopping every timer of the process: refused when scheduled instead.
MIN_INTERVAL_S = 0.001  # a repeating timer faster than this is a busy loop, not a timer
MAX_WAIT_S = 3600.0


def _checked(what: str, seconds: float, least: float = -math.inf) -> float:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= least):
        at_least = "" if least == -math.inf else f", at least {least:g}"
        raise ValueError(f"timer {what} {seconds!r}: must be a finite number of seconds{at_least}")
    return float(seconds)


class Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self) -> None:
        self._heap: list = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def after(self, delay_s: float, ref: pykka.ActorRef, message: object) -> Timer:
        """A delay already past fires now; raises ValueError for one that is not finite."""
        return self._add(time.monotonic() + max(0.0, _checked("delay", delay_s)), None, ref, message)

    def every(self, interval_s: float, ref: pykka.ActorRef, message: object) -> Timer:
        """Raises ValueError for an interval that is not positive or not finite (it would spin the thread)."""
        interval_s = _checked("interval", interval_s, MIN_INTERVAL_S)
        return self._add(time.monotonic() + interval_s, interval_s, ref, message)

    def _add(self, due: float, interval: float | None, ref, message) -> Timer:
        timer = Timer()
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), interval, ref, message, timer))
            self._cond.notify()
        return timer

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    # Capped: a far-off timer must not ask for a wait longer than the lock takes (OverflowError).
                    self._cond.wait(None if not self._heap else min(self._heap[0][0] - time.monotonic(), MAX_WAIT_S))
                due, _, interval, ref, message, timer = heapq.heappop(self._heap)
                if interval is not None and not timer.cancelled:
                    again = max(due + interval, time.monotonic())
                    heapq.heappush(self._heap, (again, next(self._seq), interval, ref, message, timer))
            if timer.cancelled:
                continue
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                timer.cancel()


_default: Scheduler | None = None
_lock = threading.Lock()


def scheduler() -> Scheduler:
    global _default
    with _lock:
        if _default is None:
            _default = Scheduler()
        return _default
